//! Committed transactions read back from the ledger chunk files, writes in clear: what historical queries
//! (`/app/log/*/historical`, `ccf.historical`) and the change feed (`/app/kv/{map}/changes`) read.
//!
//! ```text
//!  chunk files ─▶ FrameReader (frames before the one wanted skipped by their headers, a torn or unwritten end
//!                 of the open chunk is "not yet") ─▶ LedgerTx { tx id, public writes, private writes unsealed }
//!     LedgerReader::chunk(seqno)   the decoded chunk holding seqno; closed chunks cached (LRU, bounded bytes)
//!     Cursor + LedgerReader::read  a forward stream from any seqno, one frame at a time (feeds; never cached)
//!     value_at / versions          the queries, over chunk()
//! ```
//!
//! Only what the node's applier has written is read (`written`, the last seqno whose frame is in the files): the
//! callers also stop at the service commit, so nothing Pending is ever served. Bounded: at most [`READS_MAX`]
//! blocking reads at once (the caller answers 503 past it), at most [`CACHE_BYTES_MAX`] of decoded chunks kept, a
//! backward search for a value visits at most [`BACK_SCAN_CHUNKS_MAX`] chunks, a version listing scans at most
//! [`SPAN_MAX`] seqnos and returns at most [`VERSIONS_MAX`] versions or [`ANSWER_BYTES_MAX`] bytes of values.
//! Synchronous: run it off the async runtime.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prost::Message as _;
use synod_core::ledger::{
    decode_frames, list_chunks, ChunkName, KeyWrite, LedgerEntry, WriteSet, FRAME_HEADER, KIND_SIGNATURE,
};
use synod_core::txid::TxId;
use synod_kv::seal::Sealer;

use crate::ledger_files::Writes;
use crate::limits::{Slot, Slots};

/// Blocking reads of the ledger files at once (historical queries and the change feeds' reads together).
pub const READS_MAX: usize = 4;
/// Decoded closed chunks kept in memory, in (estimated) bytes.
pub const CACHE_BYTES_MAX: u64 = 32 << 20;
/// A decoded chunk larger than this is used once and not kept.
pub const CACHED_CHUNK_BYTES_MAX: u64 = 12 << 20;
/// Chunks a search for the value of a key as of a seqno visits, going back from that seqno.
pub const BACK_SCAN_CHUNKS_MAX: usize = 4;
/// Seqnos one version listing scans (a longer span is paged).
pub const SPAN_MAX: u64 = 10_000;
/// Versions one listing returns.
pub const VERSIONS_MAX: usize = 1000;
/// Bytes of values one listing returns (past it, the listing is paged).
pub const ANSWER_BYTES_MAX: usize = 16 << 20;
/// Largest frame read back (the node never writes one this large: requests are bounded far below it).
const FRAME_BYTES_MAX: u64 = 1 << 30;
/// Bytes a decoded write costs beyond its key and value (an estimate, for the cache bound).
const WRITE_OVERHEAD: u64 = 64;
/// Times the chunk files are listed again when one moves while being opened (the open chunk is renamed when it
/// closes).
const LIST_ATTEMPTS: usize = 3;

/// Why committed transactions cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The node's ledger starts after this seqno (it joined, or was caught up, from a snapshot).
    #[error("seqno {seqno} precedes this node's ledger, which starts at seqno {first} (after a snapshot); ask a node that holds it")]
    NotInLedger {
        /// The seqno asked for.
        seqno: u64,
        /// The first seqno the node's ledger holds.
        first: u64,
    },
    /// The seqno is not in the files yet (the applier has not written it): retry shortly.
    #[error("seqno {0} is not written to the ledger files yet; retry shortly")]
    NotYetWritten(u64),
    /// Every read slot is taken.
    #[error("{READS_MAX} historical reads are running already; retry shortly")]
    Busy,
    /// The files are unreadable or inconsistent.
    #[error("ledger: {0}")]
    Ledger(String),
}

fn ledger_err(e: impl std::fmt::Display) -> ReadError {
    ReadError::Ledger(e.to_string())
}

/// One committed transaction read back from the ledger.
#[derive(Clone, Debug)]
pub struct LedgerTx {
    /// Its id.
    pub tx_id: TxId,
    /// Whether it is a signature transaction.
    pub is_signature: bool,
    /// Whether its chunk ends with it.
    pub ends_chunk: bool,
    /// Its writes in clear (private ones empty when the reader was asked for public writes only).
    pub writes: Writes,
}

impl LedgerTx {
    /// The writes to `map`, in key order (empty when the transaction does not write it).
    pub fn writes_to(&self, map: &str) -> &[KeyWrite] {
        self.writes
            .public
            .maps
            .iter()
            .chain(&self.writes.private.maps)
            .find(|m| m.name == map)
            .map_or(&[], |m| &m.writes[..])
    }

    /// The write to `key` of `map`, if the transaction made one: `Some(None)` is a delete.
    pub fn write_of(&self, map: &str, key: &[u8]) -> Option<Option<&[u8]>> {
        let writes = self.writes_to(map);
        writes
            .binary_search_by(|w| w.key.as_slice().cmp(key))
            .ok()
            .map(|i| writes[i].value.as_deref())
    }

    fn estimated_bytes(&self) -> u64 {
        let maps = self.writes.public.maps.iter().chain(&self.writes.private.maps);
        maps.flat_map(|m| &m.writes)
            .map(|w| (w.key.len() + w.value.as_ref().map_or(0, Vec::len)) as u64 + WRITE_OVERHEAD)
            .sum::<u64>()
            + WRITE_OVERHEAD
    }
}

fn decode_tx(entry: &LedgerEntry, sealer: &Sealer, private: bool) -> Result<LedgerTx, ReadError> {
    let tx = entry.decode_transaction().map_err(ledger_err)?;
    let bad = |what: &str, e: &dyn std::fmt::Display| ledger_err(format!("seqno {}: {what}: {e}", tx.seqno));
    let public = tx.public_write_set().map_err(|e| bad("public writes", &e))?;
    let private = if !private || tx.private_sealed.is_empty() {
        WriteSet::default()
    } else {
        let clear = sealer
            .unseal(tx.tx_id(), &tx.private_sealed)
            .map_err(|e| bad("private writes", &e))?;
        WriteSet::decode(clear.as_slice()).map_err(|e| bad("private writes", &e))?
    };
    Ok(LedgerTx {
        tx_id: tx.tx_id(),
        is_signature: tx.kind == KIND_SIGNATURE,
        ends_chunk: tx.chunk_end || tx.snapshot_point,
        writes: Writes { public, private },
    })
}

/// Reads the frames of one chunk file in order, from its start or from any seqno (earlier frames are skipped by
/// their headers alone). At the end of what is written (the open chunk's end, possibly a frame being written)
/// it answers "nothing yet" and stays where it is, so it can continue once more is written.
struct FrameReader {
    file: BufReader<File>,
    path: PathBuf,
    /// Seqno of the frame at `offset`.
    next: u64,
    offset: u64,
}

enum Step<T> {
    Frame(T),
    /// The file ends here for now.
    End,
}

impl FrameReader {
    fn open(path: &Path, start: u64) -> io::Result<FrameReader> {
        Ok(FrameReader {
            file: BufReader::with_capacity(64 << 10, File::open(path)?),
            path: path.to_path_buf(),
            next: start,
            offset: 0,
        })
    }

    fn io_err(&self, e: io::Error) -> ReadError {
        ledger_err(format!("{}: {e}", self.path.display()))
    }

    /// Reads exactly `buf.len()` bytes, or finds the end of the file (then rewinds to the current frame).
    fn read_or_end(&mut self, buf: &mut [u8]) -> Result<bool, ReadError> {
        match self.file.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.file
                    .seek(SeekFrom::Start(self.offset))
                    .map_err(|e| self.io_err(e))?;
                Ok(false)
            }
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// The next frame's header and body length.
    fn header(&mut self) -> Result<Step<([u8; FRAME_HEADER], u64)>, ReadError> {
        let mut header = [0u8; FRAME_HEADER];
        if !self.read_or_end(&mut header)? {
            return Ok(Step::End);
        }
        let len = u64::from(u32::from_le_bytes([header[0], header[1], header[2], header[3]]));
        if len > FRAME_BYTES_MAX {
            return Err(ledger_err(format!(
                "{}: a frame of {len} bytes at offset {}",
                self.path.display(),
                self.offset
            )));
        }
        Ok(Step::Frame((header, len)))
    }

    /// Skips frames up to (not including) `seqno`; `End` if the file ends first.
    fn skip_to(&mut self, seqno: u64) -> Result<Step<()>, ReadError> {
        while self.next < seqno {
            let Step::Frame((_, len)) = self.header()? else {
                return Ok(Step::End);
            };
            let skip = i64::try_from(len).map_err(ledger_err)?;
            self.file.seek_relative(skip).map_err(|e| self.io_err(e))?;
            self.offset += FRAME_HEADER as u64 + len;
            self.next += 1;
        }
        Ok(Step::Frame(()))
    }

    /// The next whole frame's entry.
    fn entry(&mut self) -> Result<Step<LedgerEntry>, ReadError> {
        let Step::Frame((header, len)) = self.header()? else {
            return Ok(Step::End);
        };
        // The whole frame, so that the format's own decoder checks its CRC.
        let mut frame = vec![0u8; FRAME_HEADER + usize::try_from(len).map_err(ledger_err)?];
        frame[..FRAME_HEADER].copy_from_slice(&header);
        if !self.read_or_end(&mut frame[FRAME_HEADER..])? {
            return Ok(Step::End);
        }
        let entry = match decode_frames(&frame).next() {
            Some(Ok(f)) => f.entry,
            Some(Err(e)) => {
                return Err(ledger_err(format!(
                    "{}: frame at offset {}: {e} (run `synod ledger audit`)",
                    self.path.display(),
                    self.offset
                )))
            }
            None => return Err(ledger_err("empty frame")),
        };
        self.offset += FRAME_HEADER as u64 + len;
        self.next += 1;
        Ok(Step::Frame(entry))
    }
}

/// The decoded transactions of one chunk (a closed one whole; the open one up to what was written).
#[derive(Debug)]
pub struct DecodedChunk {
    /// First seqno of the chunk.
    pub start: u64,
    /// Whether the chunk is closed (it holds all its transactions).
    pub closed: bool,
    /// Its transactions, from `start`.
    pub txs: Vec<LedgerTx>,
    bytes: u64,
}

impl DecodedChunk {
    /// Last seqno held.
    pub fn last(&self) -> u64 {
        self.start + self.txs.len() as u64 - 1
    }

    /// The transaction at `seqno`, if held.
    pub fn get(&self, seqno: u64) -> Option<&LedgerTx> {
        let i = usize::try_from(seqno.checked_sub(self.start)?).ok()?;
        self.txs.get(i)
    }
}

#[derive(Default)]
struct Cache {
    /// Most recently used first.
    chunks: VecDeque<Arc<DecodedChunk>>,
    bytes: u64,
}

/// A forward read position in the ledger, for [`LedgerReader::read`]: the next seqno and the chunk file open at
/// it (kept across reads, so a live reader reads each new frame once).
pub struct Cursor {
    next: u64,
    open: Option<(FrameReader, Option<u64>)>,
}

impl Cursor {
    /// A cursor at `seqno`.
    pub fn at(seqno: u64) -> Cursor {
        Cursor {
            next: seqno.max(1),
            open: None,
        }
    }

    /// The next seqno it reads.
    pub fn next(&self) -> u64 {
        self.next
    }
}

/// The latest write to a key at or before a seqno.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AsOf {
    /// Written (`Some(value)`) or deleted (`None`) by the transaction `tx_id`.
    Written {
        /// The transaction that wrote it.
        tx_id: TxId,
        /// The value; `None` for a delete.
        value: Option<Vec<u8>>,
    },
    /// Never written since the start of the ledger (seqno 1).
    NeverWritten,
}

/// One version of a key: the write made by a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// The transaction.
    pub tx_id: TxId,
    /// The value written; `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// A page of versions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    /// In seqno order.
    pub versions: Vec<Version>,
    /// Where the next page starts, if the listing stopped before the end of the range asked for.
    pub next: Option<u64>,
}

/// Why a query cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Reading the files failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The value was set before the `BACK_SCAN_CHUNKS_MAX` chunks searched.
    #[error("no write to this key in seqnos {searched_from}..={seqno} ({BACK_SCAN_CHUNKS_MAX} ledger chunks searched): its value was set earlier; list its versions with the range query to find it")]
    ScanLimit {
        /// Lowest seqno searched.
        searched_from: u64,
        /// The seqno asked about.
        seqno: u64,
    },
    /// The search reached the start of a ledger that begins after a snapshot without finding a write.
    #[error("no write to this key in seqnos {first}..={seqno}, and this node's ledger starts at {first} (after a snapshot): its value was set before; ask a node that holds it")]
    BeforeLedger {
        /// First seqno of the node's ledger.
        first: u64,
        /// The seqno asked about.
        seqno: u64,
    },
}

/// Reads committed transactions from a ledger directory (see the module docs).
pub struct LedgerReader {
    dir: PathBuf,
    sealer: Sealer,
    cache: Mutex<Cache>,
    reads: Slots,
}

impl LedgerReader {
    /// A reader of the chunk files in `dir`, unsealing private writes with `sealer`.
    pub fn new(dir: PathBuf, sealer: Sealer) -> LedgerReader {
        LedgerReader {
            dir,
            sealer,
            cache: Mutex::new(Cache::default()),
            reads: Slots::new(READS_MAX),
        }
    }

    /// A read slot, taken before a (blocking) read starts, so that the caller can answer 503 at once.
    pub fn reserve(&self) -> Result<Slot, ReadError> {
        self.reads.try_take().ok_or(ReadError::Busy)
    }

    /// The chunk file holding `seqno` (listed afresh: chunks are renamed when they close).
    fn find_chunk(&self, seqno: u64) -> Result<(ChunkName, PathBuf), ReadError> {
        let chunks = list_chunks(&self.dir).map_err(ledger_err)?;
        let first = chunks.first().map(|(n, _)| n.start);
        if let Some(found) = chunks
            .into_iter()
            .find(|(n, _)| n.start <= seqno && n.end.is_none_or(|end| seqno <= end))
        {
            return Ok(found);
        }
        match first {
            Some(first) if seqno < first => Err(ReadError::NotInLedger { seqno, first }),
            _ => Err(ReadError::NotYetWritten(seqno)),
        }
    }

    /// Opens the chunk holding `seqno`, positioned at it.
    fn open_at(&self, seqno: u64) -> Result<(FrameReader, Option<u64>), ReadError> {
        for _ in 0..LIST_ATTEMPTS {
            let (name, path) = self.find_chunk(seqno)?;
            let mut reader = match FrameReader::open(&path, name.start) {
                Ok(r) => r,
                // Renamed between the listing and the open (the open chunk closed): list again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ledger_err(format!("{}: {e}", path.display()))),
            };
            return match reader.skip_to(seqno)? {
                Step::Frame(()) => Ok((reader, name.end)),
                Step::End => Err(ReadError::NotYetWritten(seqno)),
            };
        }
        Err(ledger_err("the chunk files kept moving while being opened"))
    }

    /// Reads forward from `cursor` up to seqno `to` (at most `written`, the last seqno the node wrote), at
    /// most `max` transactions; only public writes unless `private`. Returns fewer than asked when the files do
    /// not hold more yet.
    pub fn read(
        &self,
        cursor: &mut Cursor,
        to: u64,
        max: usize,
        private: bool,
        _slot: &Slot,
    ) -> Result<Vec<LedgerTx>, ReadError> {
        let mut out = Vec::new();
        let mut reopened = false;
        while cursor.next <= to && out.len() < max {
            if cursor.open.is_none() {
                cursor.open = Some(self.open_at(cursor.next)?);
            }
            let Some((reader, end)) = cursor.open.as_mut() else {
                break;
            };
            match reader.entry()? {
                Step::Frame(entry) => {
                    let tx = decode_tx(&entry, &self.sealer, private)?;
                    if tx.tx_id.seqno != cursor.next {
                        return Err(ledger_err(format!(
                            "{}: seqno {} where {} was expected",
                            reader.path.display(),
                            tx.tx_id.seqno,
                            cursor.next
                        )));
                    }
                    cursor.next += 1;
                    if tx.ends_chunk || *end == Some(tx.tx_id.seqno) {
                        cursor.open = None;
                    }
                    out.push(tx);
                }
                Step::End => {
                    // The written seqno says the frame is written: the file held is not the one being written
                    // any more (the ledger restarted after a snapshot). Look again, once.
                    cursor.open = None;
                    if reopened {
                        break;
                    }
                    reopened = true;
                }
            }
        }
        Ok(out)
    }

    fn cached(&self, seqno: u64) -> Option<Arc<DecodedChunk>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let i = cache
            .chunks
            .iter()
            .position(|c| c.start <= seqno && seqno <= c.last())?;
        let chunk = cache.chunks.remove(i)?;
        cache.chunks.push_front(chunk.clone());
        Some(chunk)
    }

    fn keep(&self, chunk: &Arc<DecodedChunk>) {
        if !chunk.closed || chunk.bytes > CACHED_CHUNK_BYTES_MAX {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.chunks.iter().any(|c| c.start == chunk.start) {
            return;
        }
        cache.bytes += chunk.bytes;
        cache.chunks.push_front(chunk.clone());
        while cache.bytes > CACHE_BYTES_MAX {
            let Some(old) = cache.chunks.pop_back() else {
                break;
            };
            cache.bytes = cache.bytes.saturating_sub(old.bytes);
        }
    }

    /// The decoded chunk holding `seqno` (at most `written`): a closed chunk whole (cached), the open one up to
    /// `written` (read afresh).
    pub fn chunk(&self, seqno: u64, written: u64, slot: &Slot) -> Result<Arc<DecodedChunk>, ReadError> {
        if seqno > written || seqno == 0 {
            return Err(ReadError::NotYetWritten(seqno));
        }
        if let Some(chunk) = self.cached(seqno) {
            return Ok(chunk);
        }
        let (name, path) = self.find_chunk(seqno)?;
        let mut cursor = Cursor::at(name.start);
        let upto = name.end.unwrap_or(written).min(written);
        let mut txs = Vec::new();
        loop {
            let batch = self.read(&mut cursor, upto, usize::MAX, true, slot)?;
            let done = batch.is_empty() || batch.last().is_some_and(|t| t.ends_chunk);
            txs.extend(batch);
            if done || cursor.next > upto {
                break;
            }
        }
        if txs.first().is_none_or(|t| t.tx_id.seqno != name.start) {
            return Err(ReadError::NotYetWritten(seqno));
        }
        let closed = txs.last().is_some_and(|t| t.ends_chunk) || name.end.is_some_and(|e| e < cursor.next);
        let chunk = Arc::new(DecodedChunk {
            start: name.start,
            closed,
            bytes: txs.iter().map(LedgerTx::estimated_bytes).sum(),
            txs,
        });
        if chunk.get(seqno).is_none() {
            return Err(if path.exists() {
                ReadError::NotYetWritten(seqno)
            } else {
                ledger_err(format!("{} moved while being read", path.display()))
            });
        }
        self.keep(&chunk);
        Ok(chunk)
    }

    /// The latest write to `key` of `map` at or before `seqno` (≤ `written`), searching back from `seqno` through
    /// at most [`BACK_SCAN_CHUNKS_MAX`] chunks.
    pub fn value_at(
        &self,
        map: &str,
        key: &[u8],
        seqno: u64,
        written: u64,
        slot: &Slot,
    ) -> Result<AsOf, QueryError> {
        let mut upto = seqno;
        for i in 0..BACK_SCAN_CHUNKS_MAX {
            let chunk = match self.chunk(upto, written, slot) {
                Err(ReadError::NotInLedger { first, .. }) if i > 0 => {
                    return Err(QueryError::BeforeLedger { first, seqno })
                }
                other => other?,
            };
            for s in (chunk.start..=upto).rev() {
                let tx = chunk
                    .get(s)
                    .ok_or_else(|| ledger_err(format!("seqno {s} is missing from its chunk")))?;
                if let Some(value) = tx.write_of(map, key) {
                    return Ok(AsOf::Written {
                        tx_id: tx.tx_id,
                        value: value.map(<[u8]>::to_vec),
                    });
                }
            }
            if chunk.start == 1 {
                return Ok(AsOf::NeverWritten);
            }
            upto = chunk.start - 1;
        }
        Err(QueryError::ScanLimit {
            searched_from: upto + 1,
            seqno,
        })
    }

    /// The writes to `key` of `map` in seqnos `from..=to` (`to` ≤ `written`), in order: at most `limit` (≤
    /// [`VERSIONS_MAX`]) versions, [`ANSWER_BYTES_MAX`] bytes of values and [`SPAN_MAX`] seqnos scanned; `next`
    /// says where to continue when it stopped before `to`.
    pub fn versions(
        &self,
        map: &str,
        key: &[u8],
        (from, to): (u64, u64),
        limit: usize,
        written: u64,
        slot: &Slot,
    ) -> Result<Versions, QueryError> {
        let limit = limit.clamp(1, VERSIONS_MAX);
        let from = from.max(1);
        let end = to.min(written).min(from.saturating_add(SPAN_MAX - 1));
        let mut page = Versions::default();
        let mut bytes = 0usize;
        let mut at = from;
        let full = |page: &Versions, bytes: usize| page.versions.len() >= limit || bytes >= ANSWER_BYTES_MAX;
        while at <= end && !full(&page, bytes) {
            let chunk = self.chunk(at, written, slot)?;
            let last = end.min(chunk.last());
            while at <= last && !full(&page, bytes) {
                let tx = chunk
                    .get(at)
                    .ok_or_else(|| ledger_err(format!("seqno {at} is missing from its chunk")))?;
                if let Some(value) = tx.write_of(map, key) {
                    bytes = bytes.saturating_add(value.map_or(0, <[u8]>::len));
                    page.versions.push(Version {
                        tx_id: tx.tx_id,
                        value: value.map(<[u8]>::to_vec),
                    });
                }
                at += 1;
            }
        }
        page.next = (at <= to).then_some(at);
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use synod_core::ledger::{encode_frame, make_entry, MapWrites, Transaction, KIND_TX};
    use synod_kv::seal::LedgerSecret;

    use super::*;
    use crate::ledger_files::writer::LedgerWriter;
    use crate::ledger_files::CommittedEntry;

    const MAP: &str = "records";
    const PUBLIC: &str = "public:records";

    /// A transaction writing `key` := `value` (None: delete) in the private map and the public one, ending its
    /// chunk when `chunk_end` (then it is a signature, as in a real ledger).
    fn entry(sealer: &Sealer, seqno: u64, key: u8, value: Option<&str>, chunk_end: bool) -> CommittedEntry {
        let tx_id = TxId::new(2, seqno);
        let write = |name: &str| MapWrites {
            name: name.into(),
            writes: vec![KeyWrite {
                key: vec![key],
                value: value.map(|v| v.as_bytes().to_vec()),
            }],
        };
        let (public, private) = if chunk_end {
            (WriteSet::default(), WriteSet::default())
        } else {
            (
                WriteSet {
                    maps: vec![write(PUBLIC)],
                },
                WriteSet {
                    maps: vec![write(MAP)],
                },
            )
        };
        let sealed = sealer.seal(tx_id, &private.encode_to_vec()).expect("seal");
        let t = Transaction {
            view: 2,
            seqno,
            kind: if chunk_end { KIND_SIGNATURE } else { KIND_TX },
            public_writes: public.encode_to_vec(),
            private_sealed: if chunk_end { vec![] } else { sealed },
            chunk_end,
            ..Default::default()
        };
        CommittedEntry {
            tx_id,
            frame: encode_frame(&make_entry(&t, "ce", &[0; 32])),
            writes: Arc::new(Writes::default()),
            is_signature: chunk_end,
            chunk_end,
        }
    }

    /// A ledger of `n` transactions: seqno s writes key s % 3 := "v<s>", every 10th is a chunk-ending signature,
    /// and seqno 25 deletes key 1.
    fn ledger(n: u64) -> (tempfile::TempDir, Sealer, LedgerWriter) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sealer = Sealer::new(&LedgerSecret::generate().expect("secret"));
        let mut w = LedgerWriter::open(dir.path()).expect("open").writer;
        let entries: Vec<_> = (1..=n)
            .map(|s| {
                let value = format!("v{s}");
                let value = (s != 25).then_some(value.as_str());
                let key = if s == 25 { 1 } else { (s % 3) as u8 };
                entry(&sealer, s, key, value, s % 10 == 0)
            })
            .collect();
        w.append(&entries).expect("append");
        w.sync().expect("sync");
        (dir, sealer, w)
    }

    fn written(seqno: u64, value: &str) -> AsOf {
        AsOf::Written {
            tx_id: TxId::new(2, seqno),
            value: Some(value.as_bytes().to_vec()),
        }
    }

    #[test]
    fn reads_ranges_across_closed_chunks_and_into_the_open_one() {
        let (dir, sealer, _w) = ledger(47);
        let reader = LedgerReader::new(dir.path().to_path_buf(), sealer);
        let slot = reader.reserve().expect("slot");
        let mut cursor = Cursor::at(8);
        let mut seen = Vec::new();
        loop {
            let batch = reader.read(&mut cursor, 45, 7, true, &slot).expect("read");
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 7, "bounded by max");
            seen.extend(batch);
        }
        let seqnos: Vec<u64> = seen.iter().map(|t| t.tx_id.seqno).collect();
        assert_eq!(seqnos, (8..=45).collect::<Vec<_>>());
        assert_eq!(
            seen[0].write_of(MAP, &[2]),
            Some(Some(&b"v8"[..])),
            "private writes unsealed"
        );
        assert_eq!(seen[17].write_of(MAP, &[1]), Some(None), "seqno 25 deletes");
        // Public only: the private writes are not even unsealed.
        let mut cursor = Cursor::at(41);
        let public = reader.read(&mut cursor, 47, 100, false, &slot).expect("read");
        assert_eq!(public.len(), 7);
        assert_eq!(public[0].write_of(MAP, &[2]), None);
        assert_eq!(public[0].write_of(PUBLIC, &[2]), Some(Some(&b"v41"[..])));
        // The open chunk is read up to what is written, and continues once more is.
        assert!(reader
            .read(&mut cursor, 47, 100, false, &slot)
            .expect("read")
            .is_empty());
        let mut cursor = Cursor::at(46);
        let first = reader.read(&mut cursor, 46, 100, false, &slot).expect("read");
        assert_eq!(first.len(), 1);
        let rest = reader.read(&mut cursor, 47, 100, false, &slot).expect("read");
        assert_eq!(rest.iter().map(|t| t.tx_id.seqno).collect::<Vec<_>>(), vec![47]);
    }

    #[test]
    fn a_live_cursor_follows_appends_and_chunk_closes() {
        let (dir, sealer, mut w) = ledger(43);
        let reader = LedgerReader::new(dir.path().to_path_buf(), sealer.clone());
        let slot = reader.reserve().expect("slot");
        let mut cursor = Cursor::at(42);
        assert_eq!(
            reader
                .read(&mut cursor, 43, 100, true, &slot)
                .expect("read")
                .len(),
            2
        );
        // A frame being written (only part of it on disk) is not read yet.
        let next = entry(&sealer, 44, 0, Some("v44"), false);
        let path = dir.path().join("ledger_41");
        let mut bytes = std::fs::read(&path).expect("read");
        let torn = bytes.len();
        bytes.extend_from_slice(&next.frame[..10]);
        std::fs::write(&path, &bytes).expect("write");
        assert!(reader
            .read(&mut cursor, 44, 100, true, &slot)
            .expect("read")
            .is_empty());
        // Its writer finishes it; later entries close the chunk (renamed) and open the next one.
        bytes.truncate(torn);
        std::fs::write(&path, &bytes).expect("write");
        w.append(&[next]).expect("append");
        w.append(
            &(45..=52)
                .map(|s| entry(&sealer, s, 0, Some("x"), s == 50))
                .collect::<Vec<_>>(),
        )
        .expect("append");
        w.sync().expect("sync");
        let got = reader.read(&mut cursor, 52, 100, true, &slot).expect("read");
        assert_eq!(
            got.iter().map(|t| t.tx_id.seqno).collect::<Vec<_>>(),
            (44..=52).collect::<Vec<_>>()
        );
        assert!(dir.path().join("ledger_41-50.committed").exists());
    }

    #[test]
    fn values_as_of_a_seqno_and_versions_come_from_the_files() {
        let (dir, sealer, _w) = ledger(47);
        let reader = LedgerReader::new(dir.path().to_path_buf(), sealer);
        let slot = reader.reserve().expect("slot");
        let at = |key: u8, seqno: u64| reader.value_at(MAP, &[key], seqno, 47, &slot);
        assert_eq!(at(2, 8).expect("value"), written(8, "v8"));
        assert_eq!(at(2, 9).expect("value"), written(8, "v8"));
        // Across a chunk boundary (21..=30 then 11..=20), in the open chunk, after a delete.
        assert_eq!(at(1, 23).expect("value"), written(22, "v22"));
        assert_eq!(at(0, 22).expect("value"), written(21, "v21"));
        assert_eq!(at(1, 45).expect("value"), written(43, "v43"));
        assert_eq!(
            at(1, 26).expect("value"),
            AsOf::Written {
                tx_id: TxId::new(2, 25),
                value: None
            }
        );
        assert_eq!(at(5, 12).expect("value"), AsOf::NeverWritten);
        assert!(matches!(
            at(5, 47),
            Err(QueryError::ScanLimit {
                searched_from: 11,
                seqno: 47
            })
        ));
        assert!(matches!(
            at(2, 48),
            Err(QueryError::Read(ReadError::NotYetWritten(48)))
        ));
        let all = reader
            .versions(MAP, &[1], (1, 47), 100, 47, &slot)
            .expect("versions");
        let seqnos: Vec<u64> = all.versions.iter().map(|v| v.tx_id.seqno).collect();
        assert_eq!(seqnos, vec![1, 4, 7, 13, 16, 19, 22, 25, 28, 31, 34, 37, 43, 46]);
        assert_eq!(all.versions[7].value, None);
        assert_eq!(all.next, None);
        let page = reader
            .versions(MAP, &[1], (1, 47), 4, 47, &slot)
            .expect("versions");
        assert_eq!(page.versions.len(), 4);
        assert_eq!(page.next, Some(14));
        let rest = reader
            .versions(MAP, &[1], (14, 100), 100, 47, &slot)
            .expect("versions");
        assert_eq!(rest.versions.len(), 10);
        assert_eq!(rest.next, Some(48), "stopped at what is written");
    }

    /// What reading one default-sized chunk costs: `cargo test --release -p synod-node chunk_read_cost --
    /// --ignored --nocapture`.
    #[test]
    #[ignore]
    fn chunk_read_cost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sealer = Sealer::new(&LedgerSecret::generate().expect("secret"));
        let mut w = LedgerWriter::open(dir.path()).expect("open").writer;
        let value = "x".repeat(64);
        let mut n = 0u64;
        let mut bytes = 0usize;
        while bytes < 5_000_000 {
            n += 1;
            let e = entry(&sealer, n, (n % 251) as u8, Some(&value), false);
            bytes += e.frame.len();
            w.append(&[e]).expect("append");
        }
        n += 1;
        w.append(&[entry(&sealer, n, 0, None, true)]).expect("append");
        w.sync().expect("sync");
        let reader = LedgerReader::new(dir.path().to_path_buf(), sealer);
        let slot = reader.reserve().expect("slot");
        let start = std::time::Instant::now();
        let chunk = reader.chunk(n / 2, n, &slot).expect("chunk");
        let decode = start.elapsed();
        let start = std::time::Instant::now();
        let mut cursor = Cursor::at(1);
        let mut streamed = 0;
        while streamed < n {
            streamed += reader
                .read(&mut cursor, n, 1000, false, &slot)
                .expect("read")
                .len() as u64;
        }
        let stream = start.elapsed();
        let start = std::time::Instant::now();
        reader.chunk(n / 3, n, &slot).expect("cached");
        println!(
            "{n} transactions, {bytes} bytes: chunk() {:.1} ms (private writes unsealed), a feed's public-only \
             read {:.1} ms, a cached chunk {:.3} ms; ~{} MiB decoded",
            decode.as_secs_f64() * 1e3,
            stream.as_secs_f64() * 1e3,
            start.elapsed().as_secs_f64() * 1e3,
            chunk.bytes >> 20
        );
    }

    #[test]
    fn reads_are_bounded_and_a_ledger_after_a_snapshot_says_so() {
        let (dir, sealer, mut w) = ledger(47);
        let reader = LedgerReader::new(dir.path().to_path_buf(), sealer.clone());
        let slots: Vec<_> = (0..READS_MAX).map(|_| reader.reserve().expect("slot")).collect();
        assert!(matches!(reader.reserve(), Err(ReadError::Busy)));
        drop(slots);
        let slot = reader.reserve().expect("slot");
        // A span larger than SPAN_MAX is paged.
        let page = reader
            .versions(MAP, &[1], (1, 1 + 3 * SPAN_MAX), 10, 47, &slot)
            .expect("versions");
        assert_eq!(page.versions.len(), 10);
        // The cache keeps closed chunks only, within its bound.
        reader.chunk(5, 47, &slot).expect("chunk");
        reader.chunk(45, 47, &slot).expect("open chunk");
        let cache = reader.cache.lock().expect("lock");
        assert!(cache.chunks.iter().all(|c| c.closed) && cache.bytes <= CACHE_BYTES_MAX);
        drop(cache);
        // The ledger restarts after a snapshot at 60: what came before is not in it any more.
        w.reset_after_snapshot(60).expect("reset");
        w.append(
            &(61..=63)
                .map(|s| entry(&sealer, s, 1, Some("late"), false))
                .collect::<Vec<_>>(),
        )
        .expect("append");
        w.sync().expect("sync");
        let reader = LedgerReader::new(dir.path().to_path_buf(), sealer);
        let err = reader.value_at(MAP, &[1], 20, 63, &slot).unwrap_err();
        assert!(
            matches!(
                err,
                QueryError::Read(ReadError::NotInLedger { seqno: 20, first: 61 })
            ),
            "{err}"
        );
        let err = reader.value_at(MAP, &[2], 62, 63, &slot).unwrap_err();
        assert!(matches!(err, QueryError::BeforeLedger { first: 61, .. }), "{err}");
        assert_eq!(
            reader.value_at(MAP, &[1], 62, 63, &slot).expect("value"),
            written(62, "late")
        );
    }
}
