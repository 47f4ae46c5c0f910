//! Raft's log and hard state, in segment files of their own (`<data dir>/raft/`) rather than in RocksDB.
//!
//! Every write of entries is synced before it counts, and a write's commit waits for it on the primary and on a
//! majority. An fdatasync of a file that grows writes its inode as well as its data, a second device write per
//! sync: measured here, 220 µs a sync when appending to a growing file (RocksDB's write-ahead log), 120 µs when
//! overwriting a file written before. So segments are written over in place: a segment whose entries are all
//! compacted becomes the spare, the next segment (as RocksDB's `recycle_log_file_num` does), and a helper thread
//! zero-fills one when none was recycled by the time the current segment is half full. Records are written with
//! direct I/O, in whole blocks (see [`RaftLog::write_at_end`]): through the page cache, a small write into a file
//! cached in large folios writes the whole folio back.
//!
//! A segment `<seq>.seg` is a run of records: a 16-byte header (CRC-32 of what follows it, payload length, the
//! segment's salt; little-endian) and a payload of operations. The salt is random, drawn when the segment starts,
//! and its first record, a checkpoint naming the segment (and holding the hard state, configuration, compaction
//! point and where the previous segment ended), sets it. A header with another salt (zeros, or what a recycled
//! segment held before), or a CRC that fails, ends a segment: a write cut short by a crash is dropped, as RocksDB's
//! point-in-time recovery drops it, and a record left by the segment's previous use, or forged inside a client's
//! data, is never read as one, since nobody outside knows the salt. Opening the log starts a new segment, so that
//! nothing is written after what a crash left past the end of the last one. A segment goes once every entry it
//! holds is compacted; one that ends short of where the next one's checkpoint says it did is corruption.
//!
//! One record per call: the writes of several Raft `Ready`s grouped under one sync are one record, so they reach
//! the log together or not at all. Unsynced, a record reaches the disk no later than the next synced one (the
//! segments are synced in order) and survives the process being killed (it is in the kernel's cache).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

use super::log_store::LogStore;

/// Bytes of a segment (zero-filled or recycled). A record that does not fit in what is left starts the next one;
/// one larger than a whole segment gets a segment that grows to hold it.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// A sync at least this slow is logged: every commit waits for one on the primary and on a majority.
const SLOW_SYNC_MS: u128 = 100;

/// Warns when a sync of the Raft log took [`SLOW_SYNC_MS`] or more: the disk, not the node, held every write
/// waiting (on a machine whose nodes share a disk, all of them log it at once).
fn warn_if_slow(started: std::time::Instant, bytes: usize) {
    let ms = started.elapsed().as_millis();
    if ms >= SLOW_SYNC_MS {
        tracing::warn!(
            waited_ms = ms as u64,
            bytes,
            "a Raft log sync took {ms} ms: the disk is slow, and writes wait for it"
        );
    }
}

/// Bytes of a record's header.
const HEADER: usize = 16;
/// Direct I/O's unit: offsets, lengths and buffer addresses are multiples of it.
const BLOCK: usize = 4096;
/// A record longer than this is corruption (a batch holds at most 256 Readies of at most a few MiB each).
const RECORD_BYTES_MAX: usize = 1 << 30;
/// A record buffer up to this size is kept for the next write.
const BUFFER_KEPT_BYTES: usize = 4 << 20;
/// The spare segment: zero-filled or recycled, not yet in use.
const SPARE: &str = "spare";
/// A spare being zero-filled; removed at open (a crash may leave it half written).
const SPARE_TMP: &str = "spare.tmp";

// Operations a record holds, applied in the order written.
const OP_ENTRIES: u8 = 1;
const OP_HARD_STATE: u8 = 2;
const OP_CONF_STATE: u8 = 3;
const OP_CONF_INDEX: u8 = 4;
const OP_COMPACTED: u8 = 5;
const OP_CLEAR: u8 = 6;
const OP_PREVIOUS_END: u8 = 7;
const OP_SEGMENT: u8 = 8;

/// Why the Raft log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("raft log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The files hold something no write of this module produces.
    #[error("raft log {path}: corrupt: {what}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> LogError {
    LogError::Corrupt {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

/// What one `Ready` asks to persist, applied in this order: clear, compact, append, states.
#[derive(Default)]
pub struct LogWrite<'a> {
    /// Entries to append; any stored entry at or after the first one's index is overwritten.
    pub entries: &'a [Entry],
    /// New hard state.
    pub hard_state: Option<&'a HardState>,
    /// New configuration.
    pub conf_state: Option<&'a ConfState>,
    /// Index of the last configuration change the new configuration includes.
    pub conf_index: Option<u64>,
    /// A new compaction point (after installing a snapshot, or compacting): entries up to it are dropped.
    pub compacted: Option<&'a SnapshotMetadata>,
    /// Whether to drop every stored entry first (installing a snapshot).
    pub clear: bool,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.seg"))
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// The segments in `dir`, by sequence number.
fn list_segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut seqs = Vec::new();
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(seqs),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for item in read {
        let name = item.map_err(io_err(dir))?.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        match u64::from_str_radix(hex, 16) {
            Ok(seq) if hex.len() == 16 => seqs.push(seq),
            _ => return Err(corrupt(&dir.join(&name), "not a segment name")),
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Whether `dir` holds the Raft log of a node that ran before (one that stored a configuration).
pub fn exists(dir: &Path) -> Result<bool, LogError> {
    Ok(replay(dir, false)?.conf_written)
}

/// Moves a Raft log of the format before this one (in RocksDB) into `dir`, then deletes it there. An earlier
/// attempt cut short left the RocksDB copy in place: whatever it wrote in `dir` is discarded and the move redone.
pub fn migrate_legacy(storage: &synod_kv::storage::Storage, dir: &Path) -> Result<(), LogError> {
    let db_err = |e: synod_kv::storage::StorageError| corrupt(dir, format!("the RocksDB Raft log: {e}"));
    let old = storage.legacy_raft_log().map_err(db_err)?;
    let hard_state: Option<HardState> = parse_stored(dir, "hard state", &old.hard_state)?;
    let conf_state: Option<ConfState> = parse_stored(dir, "configuration", &old.conf_state)?;
    let compacted: Option<SnapshotMetadata> = parse_stored(dir, "compaction point", &old.compacted)?;
    let mut entries = Vec::with_capacity(old.entries.len());
    let first = compacted.as_ref().map_or(0, |c| c.index) + 1;
    for (expected, bytes) in (first..).zip(&old.entries) {
        let e = Entry::parse_from_bytes(bytes).map_err(|e| corrupt(dir, format!("entry: {e}")))?;
        if e.index != expected {
            return Err(corrupt(
                dir,
                format!("entry {} where {expected} was expected", e.index),
            ));
        }
        entries.push(e);
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(dir)(e)),
        _ => {}
    }
    let mut log = RaftLog::open(dir)?;
    log.write(&LogWrite {
        entries: &entries,
        hard_state: hard_state.as_ref(),
        conf_state: conf_state.as_ref(),
        conf_index: old.conf_index,
        compacted: compacted.as_ref(),
        clear: false,
    })?;
    drop(log);
    storage.drop_legacy_raft_log().map_err(db_err)?;
    tracing::info!(
        entries = entries.len(),
        "moved the Raft log out of RocksDB into {}",
        dir.display()
    );
    Ok(())
}

fn parse_stored<M: protobuf::Message>(
    dir: &Path,
    what: &str,
    bytes: &Option<Vec<u8>>,
) -> Result<Option<M>, LogError> {
    bytes
        .as_deref()
        .map(|b| M::parse_from_bytes(b).map_err(|e| corrupt(dir, format!("{what}: {e}"))))
        .transpose()
}

/// Reads the log in `dir` back (empty if there is none).
pub fn load(dir: &Path) -> Result<LogStore, LogError> {
    let r = replay(dir, true)?;
    let mut log = LogStore::restore(r.hard_state, r.conf_state, r.compacted, r.entries.into());
    log.set_conf_index(r.conf_index);
    Ok(log)
}

/// A segment still needed.
struct Segment {
    seq: u64,
    /// The highest index of an entry it holds that a later clear has not dropped (0 for none).
    max_index: u64,
}

/// The state a run of records leaves.
#[derive(Default)]
struct Replay {
    hard_state: HardState,
    conf_state: ConfState,
    conf_written: bool,
    conf_index: u64,
    compacted: SnapshotMetadata,
    /// The entries after the compaction point (or after `hole`), when asked for.
    entries: VecDeque<Entry>,
    /// The last index held (the compaction point if none is).
    last: u64,
    /// Entries `compacted.index + 1 ..= hole` are in segments already removed: a compaction later in the log must
    /// cover them (0: no hole).
    hole: u64,
    segments: Vec<Segment>,
    /// Where the last segment's records end.
    end: u64,
    /// A last segment without even its checkpoint.
    abandoned: Option<PathBuf>,
}

/// A cursor over one record's payload.
struct Payload<'a> {
    bytes: &'a [u8],
    path: &'a Path,
}

impl<'a> Payload<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LogError> {
        if self.bytes.len() < n {
            return Err(corrupt(self.path, "a record ends inside an operation"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, LogError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, LogError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64, LogError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    fn sized(&mut self) -> Result<&'a [u8], LogError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn message<M: protobuf::Message>(&mut self, what: &str) -> Result<M, LogError> {
        let bytes = self.sized()?;
        M::parse_from_bytes(bytes).map_err(|e| corrupt(self.path, format!("{what}: {e}")))
    }
}

impl Replay {
    fn apply(
        &mut self,
        mut p: Payload<'_>,
        keep: bool,
        previous_end: Option<(u64, u64)>,
    ) -> Result<(), LogError> {
        let path = p.path;
        while !p.bytes.is_empty() {
            match p.u8()? {
                OP_ENTRIES => {
                    let count = p.u32()?;
                    let mut batch = Vec::new();
                    let mut first = None;
                    for i in 0..u64::from(count) {
                        let index = p.u64()?;
                        let bytes = p.sized()?;
                        let start = *first.get_or_insert(index);
                        if index != start + i {
                            return Err(corrupt(
                                path,
                                format!("entry {index} where {} was expected", start + i),
                            ));
                        }
                        if keep && index > self.compacted.index {
                            let e = Entry::parse_from_bytes(bytes)
                                .map_err(|e| corrupt(path, format!("entry: {e}")))?;
                            if e.index != index {
                                return Err(corrupt(path, format!("entry {} stored as {index}", e.index)));
                            }
                            batch.push(e);
                        }
                    }
                    if let Some(first) = first {
                        self.append(first, first + u64::from(count) - 1, batch);
                    }
                }
                OP_HARD_STATE => self.hard_state = p.message("hard state")?,
                OP_CONF_STATE => {
                    self.conf_state = p.message("configuration")?;
                    self.conf_written = true;
                }
                OP_CONF_INDEX => self.conf_index = p.u64()?,
                OP_COMPACTED => {
                    let meta: SnapshotMetadata = p.message("compaction point")?;
                    while self.entries.front().is_some_and(|e| e.index <= meta.index) {
                        self.entries.pop_front();
                    }
                    self.last = self.last.max(meta.index);
                    if self.hole <= meta.index {
                        self.hole = 0;
                    }
                    self.compacted = meta;
                }
                OP_CLEAR => {
                    self.entries.clear();
                    self.hole = 0;
                    self.last = self.compacted.index;
                    for s in &mut self.segments {
                        s.max_index = 0;
                    }
                }
                OP_SEGMENT => {
                    p.u64()?;
                }
                OP_PREVIOUS_END => {
                    let (seq, end) = (p.u64()?, p.u64()?);
                    if let Some((found_seq, found_end)) = previous_end {
                        if (seq, end) != (found_seq, found_end) {
                            return Err(corrupt(
                                path,
                                format!(
                                    "segment {found_seq:x} ends at {found_end}, where this one says {seq:x} ended at {end}"
                                ),
                            ));
                        }
                    }
                }
                op => return Err(corrupt(path, format!("unknown operation {op}"))),
            }
        }
        Ok(())
    }

    /// Entries `first ..= end` (held in `batch` when kept, those after the compaction point) overwrite the log
    /// from `first` on.
    fn append(&mut self, first: u64, end: u64, batch: Vec<Entry>) {
        if let Some(s) = self.segments.last_mut() {
            s.max_index = s.max_index.max(end);
        }
        let floor = self.compacted.index;
        if end <= floor {
            return;
        }
        let start = first.max(floor + 1);
        if start > self.last + 1 || start <= self.hole {
            // Either the entries before these were in a removed segment (a compaction further on covers them),
            // or these overwrite entries of the hole: nothing held before them stays.
            self.entries.clear();
            self.hole = if start > floor + 1 { start - 1 } else { 0 };
        } else if let Some(front) = self.entries.front().map(|e| e.index) {
            self.entries.truncate(start.saturating_sub(front) as usize);
        }
        self.entries.extend(batch);
        self.last = end;
    }
}

/// Reads every record of every segment in `dir`, keeping the entries if `keep`.
fn replay(dir: &Path, keep: bool) -> Result<Replay, LogError> {
    let seqs = list_segments(dir)?;
    let mut r = Replay::default();
    let mut previous_end = None;
    for (i, &seq) in seqs.iter().enumerate() {
        let path = segment_path(dir, seq);
        if i > 0 && seq != seqs[i - 1] + 1 {
            return Err(corrupt(
                &path,
                format!("segment {:x} is missing", seqs[i - 1] + 1),
            ));
        }
        r.segments.push(Segment { seq, max_index: 0 });
        let file = File::open(&path).map_err(io_err(&path))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let mut offset = 0u64;
        let mut payload = Vec::new();
        let mut header = [0u8; HEADER];
        // Set by the checkpoint that opens the segment.
        let mut salt = None;
        loop {
            match reader.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(io_err(&path)(e)),
            }
            let crc = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default()) as usize;
            let record_salt = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
            if salt.is_some_and(|s| s != record_salt) || len > RECORD_BYTES_MAX {
                break;
            }
            payload.resize(len, 0);
            match reader.read_exact(&mut payload) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(io_err(&path)(e)),
            }
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&header[4..]);
            hasher.update(&payload);
            if hasher.finalize() != crc {
                break;
            }
            if salt.is_none() {
                // Only a checkpoint naming this segment starts it (not one a recycled file held before).
                let mut named = [OP_SEGMENT; 9];
                named[1..].copy_from_slice(&seq.to_le_bytes());
                if !payload.starts_with(&named) {
                    break;
                }
                salt = Some(record_salt);
            }
            // The first segment's predecessor is gone: nothing to check its end against.
            let check = if offset == 0 { previous_end } else { None };
            r.apply(
                Payload {
                    bytes: &payload,
                    path: &path,
                },
                keep,
                check,
            )?;
            offset += (HEADER + len) as u64;
        }
        if offset == 0 {
            if i + 1 == seqs.len() {
                // A crash between starting a segment and writing its checkpoint: the log ends before it.
                r.segments.pop();
                r.abandoned = Some(path);
                break;
            }
            return Err(corrupt(&path, "the segment holds no record"));
        }
        previous_end = Some((seq, offset));
        r.end = offset;
    }
    if r.hole > r.compacted.index {
        return Err(corrupt(
            dir,
            format!(
                "entries {}..={} are missing (removed with a segment but never compacted)",
                r.compacted.index + 1,
                r.hole
            ),
        ));
    }
    Ok(r)
}

/// Appends a message with its length before it.
fn put_sized(buf: &mut Vec<u8>, m: &impl protobuf::Message) {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    // Writing an in-memory message to a Vec cannot fail.
    let _ = m.write_to_vec(buf);
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Appends one operation holding a message.
fn put_message(buf: &mut Vec<u8>, op: u8, m: &impl protobuf::Message) {
    buf.push(op);
    put_sized(buf, m);
}

/// The log's segment files, open for appending. One writer: the node's store thread (and boot, before it).
pub struct RaftLog {
    dir: PathBuf,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    file: File,
    /// Where the next record goes in the current segment.
    offset: u64,
    /// Whether the current segment was zero-filled or recycled: written over in place, not grown.
    in_place: bool,
    /// The current segment's salt (see the module docs).
    salt: u64,
    /// Whether the current segment is written with direct I/O (see [`RaftLog::write_at_end`]).
    direct: bool,
    /// The bytes of the current segment's last partial block (direct I/O writes whole blocks).
    tail: Vec<u8>,
    /// A buffer holding a block-aligned window for direct I/O.
    aligned: Vec<u8>,
    hard_state: HardState,
    conf_state: Option<ConfState>,
    conf_index: u64,
    compacted: SnapshotMetadata,
    /// Whether `<dir>/spare` is ready to become the next segment.
    spare: bool,
    /// The thread zero-filling a spare.
    filling: Option<JoinHandle<Result<(), LogError>>>,
    /// The segment during which a spare was last asked for.
    fill_tried: u64,
    buf: Vec<u8>,
}

impl RaftLog {
    /// Opens the log in `dir`, creating it (empty) if there is none.
    pub fn open(dir: &Path) -> Result<RaftLog, LogError> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// [`RaftLog::open`] with segments of `segment_bytes` (tests use small ones).
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<RaftLog, LogError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        // The salts stay secret only if the segments do (see the module docs).
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io_err(dir))?;
        match std::fs::remove_file(dir.join(SPARE_TMP)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(dir)(e)),
            _ => {}
        }
        let r = replay(dir, false)?;
        if let Some(path) = &r.abandoned {
            std::fs::remove_file(path).map_err(io_err(path))?;
            sync_dir(dir)?;
        }
        let mut log = RaftLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            // A placeholder until the first segment starts, below.
            file: File::open(dir).map_err(io_err(dir))?,
            offset: 0,
            in_place: false,
            salt: 0,
            direct: false,
            tail: Vec::new(),
            aligned: Vec::new(),
            hard_state: r.hard_state,
            conf_state: r.conf_written.then_some(r.conf_state),
            conf_index: r.conf_index,
            compacted: r.compacted,
            spare: dir.join(SPARE).exists(),
            filling: None,
            fill_tried: 0,
            buf: Vec::new(),
            segments: r.segments.into(),
        };
        // Never written after what a crash may have left past the last whole record: a new segment starts.
        let next = match log.segments.back() {
            Some(last) => {
                let path = segment_path(dir, last.seq);
                log.file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                log.offset = r.end;
                last.seq + 1
            }
            None => 1,
        };
        let previous_end = (next > 1).then_some(r.end);
        log.start_segment(next, previous_end)?;
        Ok(log)
    }

    /// Whether the log holds a configuration: a node ran here before (as [`exists`] says, without a reopen).
    pub fn holds_configuration(&self) -> bool {
        self.conf_state.is_some()
    }

    /// The hard state last written.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Writes one batch, synced.
    pub fn write(&mut self, w: &LogWrite<'_>) -> Result<(), LogError> {
        self.write_batch(std::slice::from_ref(w), true)
    }

    /// Writes several, in order, as one record (a store thread that fell behind catches up with one sync instead
    /// of one per write), synced if `sync`. Nothing to write writes nothing.
    pub fn write_batch(&mut self, writes: &[LogWrite<'_>], sync: bool) -> Result<(), LogError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(HEADER, 0);
        for w in writes {
            encode(&mut buf, w);
        }
        let result = self.append(&mut buf, writes, sync);
        // A node catching up writes large batches: their buffer is not kept for the small ones after.
        if buf.capacity() <= BUFFER_KEPT_BYTES {
            self.buf = buf;
        }
        result
    }

    fn append(&mut self, buf: &mut [u8], writes: &[LogWrite<'_>], sync: bool) -> Result<(), LogError> {
        if buf.len() > HEADER {
            self.collect_spare();
            let fits = self.offset + buf.len() as u64 <= self.segment_bytes;
            // A segment that grows costs an inode write per sync: leave it as soon as a spare is ready.
            if !fits || (!self.in_place && self.spare) {
                let next = self.segments.back().map_or(1, |s| s.seq + 1);
                self.start_segment(next, Some(self.offset))?;
            }
            self.seal(buf);
            self.write_at_end(buf)?;
            for w in writes {
                self.track(w);
            }
        }
        if sync {
            let path = self.current_path();
            let started = std::time::Instant::now();
            self.file.sync_data().map_err(io_err(&path))?;
            warn_if_slow(started, buf.len());
            // Only a synced compaction may let the segments it covers go.
            if writes.iter().any(|w| w.compacted.is_some()) {
                self.drop_compacted()?;
            }
        }
        self.want_spare();
        Ok(())
    }

    /// Writes `record` at the end of the current segment. With direct I/O, whole blocks: the last partial block
    /// again (the records already in it, unchanged, so a torn write cannot damage them), the record, zeros to the
    /// block's end. Through the page cache instead, a small write into a large folio (a file written in big
    /// chunks is cached in folios of up to 2 MiB) dirties the whole folio: measured here, 2 MiB written back per
    /// 2 KB record.
    fn write_at_end(&mut self, record: &[u8]) -> Result<(), LogError> {
        let path = self.current_path();
        if !self.direct {
            self.file
                .write_all_at(record, self.offset)
                .map_err(io_err(&path))?;
            self.offset += record.len() as u64;
            return Ok(());
        }
        let start = self.offset - self.tail.len() as u64;
        let used = self.tail.len() + record.len();
        let padded = used.div_ceil(BLOCK) * BLOCK;
        if self.aligned.len() < padded + BLOCK {
            self.aligned = vec![0; padded + BLOCK];
        }
        let at = self.aligned.as_ptr().align_offset(BLOCK);
        let window = &mut self.aligned[at..at + padded];
        window[..self.tail.len()].copy_from_slice(&self.tail);
        window[self.tail.len()..used].copy_from_slice(record);
        window[used..].fill(0);
        self.file.write_all_at(window, start).map_err(io_err(&path))?;
        let whole = used / BLOCK * BLOCK;
        self.tail.clear();
        self.tail.extend_from_slice(&window[whole..used]);
        if self.aligned.len() > BUFFER_KEPT_BYTES {
            self.aligned = Vec::new();
        }
        self.offset += record.len() as u64;
        Ok(())
    }

    fn current_path(&self) -> PathBuf {
        segment_path(&self.dir, self.segments.back().map_or(0, |s| s.seq))
    }

    /// Fills in a record's header: its length, the current segment's salt and the CRC.
    fn seal(&self, buf: &mut [u8]) {
        let len = (buf.len() - HEADER) as u32;
        buf[4..8].copy_from_slice(&len.to_le_bytes());
        buf[8..16].copy_from_slice(&self.salt.to_le_bytes());
        let crc = crc32fast::hash(&buf[4..]);
        buf[0..4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Mirrors a written batch into what the next checkpoint records.
    fn track(&mut self, w: &LogWrite<'_>) {
        if w.clear {
            for s in &mut self.segments {
                s.max_index = 0;
            }
        }
        if let Some(meta) = w.compacted {
            self.compacted = meta.clone();
        }
        if let (Some(last), Some(s)) = (w.entries.last(), self.segments.back_mut()) {
            s.max_index = s.max_index.max(last.index);
        }
        if let Some(hs) = w.hard_state {
            self.hard_state = hs.clone();
        }
        if let Some(cs) = w.conf_state {
            self.conf_state = Some(cs.clone());
        }
        if let Some(index) = w.conf_index {
            self.conf_index = index;
        }
    }

    /// Ends the current segment (synced whole) and starts segment `seq` with a checkpoint.
    fn start_segment(&mut self, seq: u64, previous_end: Option<u64>) -> Result<(), LogError> {
        if previous_end.is_some() {
            let path = self.current_path();
            self.file.sync_data().map_err(io_err(&path))?;
        }
        let path = segment_path(&self.dir, seq);
        if self.spare {
            let spare = self.dir.join(SPARE);
            std::fs::rename(&spare, &path).map_err(io_err(&spare))?;
            self.spare = false;
        }
        let open = |flags| {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(flags)
                .open(&path)
        };
        // A file system without direct I/O (tmpfs, before Linux 6.6) gets buffered writes.
        let (file, direct) = match open(libc::O_DIRECT) {
            Ok(file) => (file, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(0).map_err(io_err(&path))?, false),
            Err(e) => return Err(io_err(&path)(e)),
        };
        self.in_place = file.metadata().map_err(io_err(&path))?.len() >= self.segment_bytes;
        sync_dir(&self.dir)?;
        let previous = self.segments.back().map(|s| s.seq);
        self.file = file;
        self.direct = direct;
        self.offset = 0;
        self.tail.clear();
        self.segments.push_back(Segment { seq, max_index: 0 });
        let mut salt = [0u8; 8];
        getrandom::getrandom(&mut salt).map_err(|e| io_err(&path)(std::io::Error::other(e)))?;
        self.salt = u64::from_le_bytes(salt);
        let mut buf = vec![0; HEADER];
        buf.push(OP_SEGMENT);
        buf.extend_from_slice(&seq.to_le_bytes());
        put_message(&mut buf, OP_HARD_STATE, &self.hard_state);
        if let Some(cs) = &self.conf_state {
            put_message(&mut buf, OP_CONF_STATE, cs);
        }
        buf.push(OP_CONF_INDEX);
        buf.extend_from_slice(&self.conf_index.to_le_bytes());
        put_message(&mut buf, OP_COMPACTED, &self.compacted);
        if let (Some(prev), Some(end)) = (previous, previous_end) {
            buf.push(OP_PREVIOUS_END);
            buf.extend_from_slice(&prev.to_le_bytes());
            buf.extend_from_slice(&end.to_le_bytes());
        }
        self.seal(&mut buf);
        self.write_at_end(&buf)?;
        self.file.sync_data().map_err(io_err(&path))?;
        self.drop_compacted()?;
        self.want_spare();
        Ok(())
    }

    /// Starts zero-filling a spare when the next segment will be needed and no compacted one was recycled: once
    /// the current segment is half full, or at once while it grows. At most once per segment, so a fill that
    /// fails (a full disk) is not tried again on every write.
    fn want_spare(&mut self) {
        let seq = self.segments.back().map_or(0, |s| s.seq);
        if self.spare
            || self.filling.is_some()
            || self.fill_tried == seq
            || (self.in_place && self.offset < self.segment_bytes / 2)
        {
            return;
        }
        self.fill_tried = seq;
        self.fill_spare();
    }

    /// Removes the oldest segments while all they hold is compacted; one becomes the spare if there is none.
    fn drop_compacted(&mut self) -> Result<(), LogError> {
        let mut changed = false;
        while self.segments.len() > 1 && self.segments[0].max_index <= self.compacted.index {
            let Some(s) = self.segments.pop_front() else { break };
            let path = segment_path(&self.dir, s.seq);
            let len = std::fs::metadata(&path).map_err(io_err(&path))?.len();
            if !self.spare && self.filling.is_none() && len >= self.segment_bytes {
                std::fs::rename(&path, self.dir.join(SPARE)).map_err(io_err(&path))?;
                self.spare = true;
            } else {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            }
            changed = true;
        }
        if changed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Notes a finished zero-filling.
    fn collect_spare(&mut self) {
        if !self.filling.as_ref().is_some_and(|t| t.is_finished()) {
            return;
        }
        match self.filling.take().map(JoinHandle::join) {
            Some(Ok(Ok(()))) => self.spare = true,
            Some(Ok(Err(e))) => {
                tracing::warn!(error = %e, "could not prepare a Raft log segment; the next one grows as it is written")
            }
            _ => tracing::warn!("the thread preparing a Raft log segment panicked"),
        }
    }

    /// Zero-fills the next segment in the background.
    fn fill_spare(&mut self) {
        let (dir, bytes) = (self.dir.clone(), self.segment_bytes);
        let spawned = std::thread::Builder::new()
            .name("raft-log-spare".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let tmp = dir.join(SPARE_TMP);
                let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
                let zeros = vec![0u8; 1 << 20];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    file.write_all(&zeros[..n]).map_err(io_err(&tmp))?;
                    left -= n as u64;
                }
                file.sync_all().map_err(io_err(&tmp))?;
                // Written with direct I/O from now on: its cached zeros would only be dropped write by write.
                // SAFETY: an advice call on a descriptor this thread owns, with no memory passed.
                unsafe {
                    libc::posix_fadvise(
                        std::os::fd::AsRawFd::as_raw_fd(&file),
                        0,
                        0,
                        libc::POSIX_FADV_DONTNEED,
                    );
                }
                std::fs::rename(&tmp, dir.join(SPARE)).map_err(io_err(&tmp))?;
                sync_dir(&dir)?;
                tracing::info!(
                    bytes,
                    took_ms = started.elapsed().as_millis() as u64,
                    "prepared the next Raft log segment"
                );
                Ok(())
            });
        match spawned {
            Ok(t) => self.filling = Some(t),
            Err(e) => tracing::warn!(error = %e, "could not start preparing a Raft log segment"),
        }
    }
}

impl Drop for RaftLog {
    fn drop(&mut self) {
        // A spare half-filled when the node stops is removed at the next open; waiting here keeps a node that
        // reopens its log at once from racing the thread.
        if let Some(t) = self.filling.take() {
            let _ = t.join();
        }
    }
}

/// Appends a write's operations to a record's payload, in the order replay applies them.
fn encode(buf: &mut Vec<u8>, w: &LogWrite<'_>) {
    if w.clear {
        buf.push(OP_CLEAR);
    }
    if let Some(meta) = w.compacted {
        put_message(buf, OP_COMPACTED, meta);
    }
    if !w.entries.is_empty() {
        buf.push(OP_ENTRIES);
        buf.extend_from_slice(&(w.entries.len() as u32).to_le_bytes());
        for e in w.entries {
            buf.extend_from_slice(&e.index.to_le_bytes());
            put_sized(buf, e);
        }
    }
    if let Some(hs) = w.hard_state {
        put_message(buf, OP_HARD_STATE, hs);
    }
    if let Some(cs) = w.conf_state {
        put_message(buf, OP_CONF_STATE, cs);
    }
    if let Some(index) = w.conf_index {
        buf.push(OP_CONF_INDEX);
        buf.extend_from_slice(&index.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use raft::Storage as _;

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 100].into(),
            ..Default::default()
        }
    }

    fn append(log: &mut RaftLog, from: u64, to: u64, term: u64) {
        let ents: Vec<Entry> = (from..=to).map(|i| entry(i, term)).collect();
        log.write(&LogWrite {
            entries: &ents,
            ..Default::default()
        })
        .expect("append");
    }

    fn compact(log: &mut RaftLog, index: u64, term: u64) {
        let meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        log.write(&LogWrite {
            compacted: Some(&meta),
            ..Default::default()
        })
        .expect("compact");
    }

    impl RaftLog {
        /// Waits for the spare being zero-filled, if any.
        fn wait_spare(&mut self) {
            if let Some(t) = self.filling.take() {
                t.join().expect("thread").expect("spare");
                self.spare = true;
            }
        }
    }

    fn segments(dir: &Path) -> Vec<u64> {
        list_segments(dir).expect("list")
    }

    #[test]
    fn log_round_trips_with_overwrites_compaction_and_clear() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!exists(dir.path()).expect("exists"));
        let mut log = RaftLog::open(dir.path()).expect("open");
        assert!(!exists(dir.path()).expect("no configuration yet"));
        assert!(!log.holds_configuration());
        let cs = ConfState {
            voters: vec![7],
            ..Default::default()
        };
        let hs = HardState {
            term: 2,
            vote: 7,
            commit: 3,
            ..Default::default()
        };
        let ents: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
        log.write(&LogWrite {
            entries: &ents,
            hard_state: Some(&hs),
            conf_state: Some(&cs),
            conf_index: Some(1),
            ..Default::default()
        })
        .expect("write");
        append(&mut log, 4, 4, 2);
        compact(&mut log, 2, 1);
        drop(log);
        assert!(exists(dir.path()).expect("exists"));
        let store = load(dir.path()).expect("load");
        assert_eq!((store.first(), store.last()), (3, 4));
        assert_eq!(store.term(4).expect("term"), 2);
        assert_eq!(store.term(2).expect("compacted term"), 1);
        assert_eq!(store.hard_state(), &hs);
        assert_eq!(store.conf_state().voters, vec![7]);
        assert_eq!(store.conf_index(), 1);
        // Installing a snapshot behind the log's end drops every stored entry, not only those it covers.
        let mut log = RaftLog::open(dir.path()).expect("reopen");
        assert!(log.holds_configuration());
        assert_eq!(log.hard_state(), &hs);
        let installed = SnapshotMetadata {
            index: 3,
            term: 1,
            ..Default::default()
        };
        log.write(&LogWrite {
            clear: true,
            compacted: Some(&installed),
            ..Default::default()
        })
        .expect("clear");
        let store = load(dir.path()).expect("load");
        assert_eq!((store.first(), store.last()), (4, 3), "empty after the snapshot");
        append(&mut log, 4, 6, 3);
        let store = load(dir.path()).expect("load");
        assert_eq!((store.first(), store.last()), (4, 6));
    }

    #[test]
    fn segments_rotate_into_zero_filled_spares_and_go_once_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open_with(dir.path(), 4096).expect("open");
        log.wait_spare();
        // The first segment grows; the next write moves to the zero-filled spare, and the first one, holding no
        // entry, goes.
        append(&mut log, 1, 1, 1);
        assert!(log.in_place);
        assert_eq!(segments(dir.path()), vec![2]);
        for i in 2..=100 {
            log.wait_spare();
            append(&mut log, i, i, 1);
        }
        let many = segments(dir.path()).len();
        assert!(many > 3, "{many} segments");
        // Overwriting a suffix: the log holds the new entries, not the old ones.
        append(&mut log, 90, 92, 2);
        compact(&mut log, 60, 1);
        let left = segments(dir.path());
        assert!(left.len() < many, "compaction removed segments: {left:?}");
        drop(log);
        let store = load(dir.path()).expect("load");
        assert_eq!((store.first(), store.last()), (61, 92));
        assert_eq!(store.term(91).expect("term"), 2);
        assert_eq!(store.term(89).expect("term"), 1);
        // Compacting everything leaves the current segment only.
        let mut log = RaftLog::open_with(dir.path(), 4096).expect("reopen");
        compact(&mut log, 92, 2);
        log.wait_spare();
        append(&mut log, 93, 93, 2);
        assert!(segments(dir.path()).len() <= 2, "{:?}", segments(dir.path()));
        let store = load(dir.path()).expect("load");
        assert_eq!((store.first(), store.last()), (93, 93));
    }

    #[test]
    fn a_torn_record_ends_the_log_and_what_follows_it_is_never_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(dir.path()).expect("open");
        append(&mut log, 1, 3, 1);
        let torn_at = log.offset;
        append(&mut log, 4, 4, 1);
        // A whole record after the torn one, as a crash can leave (written, never synced).
        append(&mut log, 5, 5, 1);
        let path = log.current_path();
        drop(log);
        let file = OpenOptions::new().write(true).open(&path).expect("open segment");
        file.write_all_at(&[0xff; 4], torn_at + HEADER as u64 + 8)
            .expect("tear");
        drop(file);
        let store = load(dir.path()).expect("load");
        assert_eq!(
            store.last(),
            3,
            "the torn record ends the log, and the whole one after it is never read"
        );
        let mut log = RaftLog::open(dir.path()).expect("reopen");
        append(&mut log, 4, 4, 2);
        drop(log);
        let store = load(dir.path()).expect("load");
        assert_eq!(store.last(), 4);
        assert_eq!(store.term(4).expect("term"), 2);
        assert!(
            store.entry(5).is_none(),
            "entry 5 of the old segment stays unread"
        );
    }

    #[test]
    fn a_recycled_segment_shows_nothing_of_its_previous_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open_with(dir.path(), 4096).expect("open");
        log.wait_spare();
        let mut last = 0;
        let mut next = |log: &mut RaftLog, term| {
            last += 1;
            append(log, last, last, term);
            log.wait_spare();
            last
        };
        // Into the zero-filled segment 2, then on into 3: 2 is full of records, each with a valid CRC.
        while log.segments.back().map(|s| s.seq) != Some(3) {
            next(&mut log, 1);
        }
        assert!(!log.spare && log.filling.is_none(), "no spare asked for yet");
        let upto = next(&mut log, 1);
        compact(&mut log, upto, 1);
        assert!(log.spare, "the compacted segment 2 became the spare");
        assert!(log.filling.is_none(), "nothing zero-filled");
        while log.segments.back().map(|s| s.seq) != Some(4) {
            next(&mut log, 2);
        }
        let last = next(&mut log, 2);
        drop(log);
        let store = load(dir.path()).expect("load");
        assert_eq!((store.first(), store.last()), (upto + 1, last));
        assert_eq!(store.term(last).expect("term"), 2);
    }

    #[test]
    fn a_raft_log_in_rocksdb_moves_into_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = synod_kv::storage::Storage::open(&dir.path().join("db")).expect("db");
        let (log_cf, state_cf) = (
            storage.cf("raft_log").expect("cf"),
            storage.cf("raft_state").expect("cf"),
        );
        let put = |cf, key: &[u8], value: Vec<u8>| storage.db().put_cf(cf, key, value).expect("put");
        let hs = HardState {
            term: 3,
            vote: 7,
            commit: 5,
            ..Default::default()
        };
        let cs = ConfState {
            voters: vec![7],
            ..Default::default()
        };
        let compacted = SnapshotMetadata {
            index: 2,
            term: 1,
            ..Default::default()
        };
        put(state_cf, b"hard_state", hs.write_to_bytes().expect("hs"));
        put(state_cf, b"conf_state", cs.write_to_bytes().expect("cs"));
        put(state_cf, b"conf_index", 1u64.to_be_bytes().to_vec());
        put(state_cf, b"compacted", compacted.write_to_bytes().expect("meta"));
        for i in 3..=6u64 {
            put(
                log_cf,
                &i.to_be_bytes(),
                entry(i, 3).write_to_bytes().expect("entry"),
            );
        }
        assert!(storage.holds_legacy_raft_log().expect("legacy"));
        let raft = dir.path().join("raft");
        // An earlier move cut short left a log here: it is redone from RocksDB's copy.
        let mut partial = RaftLog::open(&raft).expect("open");
        append(&mut partial, 1, 1, 9);
        drop(partial);
        migrate_legacy(&storage, &raft).expect("migrate");
        assert!(!storage.holds_legacy_raft_log().expect("moved"));
        assert!(exists(&raft).expect("exists"));
        let store = load(&raft).expect("load");
        assert_eq!((store.first(), store.last()), (3, 6));
        assert_eq!(store.term(6).expect("term"), 3);
        assert_eq!(store.hard_state(), &hs);
        assert_eq!(store.conf_state().voters, vec![7]);
        assert_eq!(store.conf_index(), 1);
    }

    #[test]
    fn missing_or_cut_segments_are_corruption_and_an_empty_last_one_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open_with(dir.path(), 4096).expect("open");
        for i in 1..=120 {
            append(&mut log, i, i, 1);
        }
        drop(log);
        let segs = segments(dir.path());
        assert!(segs.len() >= 3, "{segs:?}");
        // A segment with nothing, not even its checkpoint (a crash right after creating it): the log ends before.
        let next = segs[segs.len() - 1] + 1;
        File::create(segment_path(dir.path(), next)).expect("create");
        assert_eq!(load(dir.path()).expect("load").last(), 120);
        // Opening removes it, and starts a segment of that number afresh.
        drop(RaftLog::open_with(dir.path(), 4096).expect("open"));
        assert_eq!(load(dir.path()).expect("load").last(), 120);
        assert_eq!(segments(dir.path()).last(), Some(&next));
        // A segment cut short of where the next one says it ended.
        let second = segment_path(dir.path(), segs[1]);
        let file = OpenOptions::new().write(true).open(&second).expect("open");
        let len = file.metadata().expect("metadata").len();
        file.set_len(len.min(200)).expect("cut");
        drop(file);
        assert!(matches!(load(dir.path()), Err(LogError::Corrupt { .. })));
        // A segment missing in the middle.
        std::fs::remove_file(&second).expect("remove");
        let err = load(dir.path()).err().expect("corrupt");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
