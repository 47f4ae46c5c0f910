//! The ledger on disk: append-only chunk files in CCF's naming (`ledger_<start>` while open,
//! `ledger_<start>-<end>.committed` once closed). Only Raft-committed entries are written here, so nothing is ever
//! truncated except a torn final frame; a chunk ends where the primary flagged it, so every node's committed chunks
//! are byte-identical. The format lives in `synod_core::ledger`, shared with the offline auditor.
//!
//! A node that joins from (or is caught up with) a snapshot at seqno S keeps no ledger before it: its ledger
//! starts with `ledger_<S+1>`, and earlier chunks, if any, move to `superseded-<S>/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use synod_core::ledger::{decode_frames, list_chunks, ChunkName, FrameError, LedgerEntry};

use crate::ledger_files::CommittedEntry;

/// Errors reading or writing ledger files.
#[derive(Debug, thiserror::Error)]
pub enum LedgerIoError {
    /// An operating-system error on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The ledger is damaged somewhere other than a torn tail; `synod ledger audit` tells more.
    #[error("{path}: corrupt entry at offset {offset}: {reason} (run `synod ledger audit`)")]
    Corrupt {
        /// The chunk.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What.
        reason: String,
    },
    /// The chunk files do not form one sequence, or an append does not continue it.
    #[error("ledger: {0}")]
    Layout(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LedgerIoError + '_ {
    move |source| LedgerIoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct OpenChunk {
    file: File,
    path: PathBuf,
    start: u64,
}

/// Renames a closed chunk to its `.committed` name (only committed entries are ever written).
fn rename_committed(dir: &Path, name: &ChunkName, path: &Path) -> Result<(), LedgerIoError> {
    let to = dir.join(
        ChunkName {
            committed: true,
            ..name.clone()
        }
        .file_name(),
    );
    fs::rename(path, &to).map_err(io_err(path))
}

/// Appends committed frames and closes chunks where the entries say.
pub struct LedgerWriter {
    dir: PathBuf,
    current: Option<OpenChunk>,
    last_seqno: u64,
    dir_dirty: bool,
}

/// What opening found.
pub struct Opened {
    /// The writer, positioned after the last entry.
    pub writer: LedgerWriter,
    /// The entries after the seqno opening was asked to start after, in order.
    pub entries: Vec<LedgerEntry>,
    /// Seqno of the first entry (1, or one past the snapshot the ledger starts after).
    pub start: u64,
}

impl LedgerWriter {
    /// Opens `dir` (created if missing), reads all its entries and cuts a torn final frame.
    pub fn open(dir: &Path) -> Result<Opened, LedgerIoError> {
        LedgerWriter::open_after(dir, 0)
    }

    /// Opens `dir` (created if missing) and reads only the entries after seqno `after`: closed chunks that end at
    /// or before it are checked by their names alone, so a restart reads the ledger suffix it replays, not the
    /// whole ledger. The open chunk is always read (a torn final frame is cut).
    pub fn open_after(dir: &Path, after: u64) -> Result<Opened, LedgerIoError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let chunks = list_chunks(dir).map_err(|e| LedgerIoError::Layout(e.to_string()))?;
        let start = chunks.first().map_or(1, |(n, _)| n.start);
        let mut entries = Vec::new();
        let mut writer = LedgerWriter {
            dir: dir.to_path_buf(),
            current: None,
            last_seqno: start - 1,
            dir_dirty: true,
        };
        for (i, (name, path)) in chunks.iter().enumerate() {
            if name.start != writer.last_seqno + 1 {
                return Err(LedgerIoError::Layout(format!(
                    "{} does not continue at seqno {}",
                    name.file_name(),
                    writer.last_seqno + 1
                )));
            }
            let last_chunk = i + 1 == chunks.len();
            if let Some(end) = name.end.filter(|&end| end <= after && !last_chunk) {
                if end < name.start {
                    return Err(LedgerIoError::Layout(format!(
                        "{} ends before it starts",
                        name.file_name()
                    )));
                }
                writer.last_seqno = end;
                if !name.committed {
                    rename_committed(dir, name, path)?;
                }
                continue;
            }
            let (bytes, valid_len) =
                writer.read_chunk(path, after, last_chunk && name.end.is_none(), &mut entries)?;
            match name.end {
                None if last_chunk => {
                    if valid_len != bytes.len() as u64 {
                        let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
                        f.set_len(valid_len).map_err(io_err(path))?;
                        f.sync_all().map_err(io_err(path))?;
                    }
                    let file = OpenOptions::new().append(true).open(path).map_err(io_err(path))?;
                    writer.current = Some(OpenChunk {
                        file,
                        path: path.clone(),
                        start: name.start,
                    });
                }
                None => {
                    return Err(LedgerIoError::Layout(format!(
                        "{} is open but not the last chunk",
                        name.file_name()
                    )))
                }
                Some(end) => {
                    if end != writer.last_seqno {
                        return Err(LedgerIoError::Layout(format!(
                            "{} ends at {}",
                            name.file_name(),
                            writer.last_seqno
                        )));
                    }
                    if !name.committed {
                        rename_committed(dir, name, path)?;
                    }
                }
            }
        }
        writer.sync()?;
        Ok(Opened {
            writer,
            entries,
            start,
        })
    }

    /// Reads one chunk's frames in seqno order, keeping the entries after `after`; `may_be_torn`: the open last
    /// chunk, whose final frame a crash may have cut short. Returns the bytes and the length of the valid frames.
    fn read_chunk(
        &mut self,
        path: &Path,
        after: u64,
        may_be_torn: bool,
        entries: &mut Vec<LedgerEntry>,
    ) -> Result<(Vec<u8>, u64), LedgerIoError> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        let mut valid_len = 0u64;
        for frame in decode_frames(&bytes) {
            match frame {
                Ok(frame) => {
                    let seqno = frame
                        .entry
                        .decode_transaction()
                        .map_err(|e| LedgerIoError::Corrupt {
                            path: path.to_path_buf(),
                            offset: frame.offset,
                            reason: e.to_string(),
                        })?
                        .seqno;
                    if seqno != self.last_seqno + 1 {
                        return Err(LedgerIoError::Corrupt {
                            path: path.to_path_buf(),
                            offset: frame.offset,
                            reason: format!("seqno {seqno} where {} was expected", self.last_seqno + 1),
                        });
                    }
                    self.last_seqno = seqno;
                    valid_len = frame.offset + frame.len;
                    if seqno > after {
                        entries.push(frame.entry);
                    }
                }
                // A torn write can only be the very end of the open chunk.
                Err(FrameError::Truncated { .. }) if may_be_torn => break,
                Err(e) => {
                    return Err(LedgerIoError::Corrupt {
                        path: path.to_path_buf(),
                        offset: valid_len,
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok((bytes, valid_len))
    }

    /// Seqno of the last entry written.
    pub fn last_seqno(&self) -> u64 {
        self.last_seqno
    }

    /// Appends committed entries in order (entries already written are skipped); closes the chunk where an entry
    /// says so.
    pub fn append(&mut self, entries: &[CommittedEntry]) -> Result<(), LedgerIoError> {
        // One write per chunk per call, not one per entry: under load a system call per entry was ~1.5 % of the
        // machine (the kernel's buffered-write path, for ~130-byte frames).
        let mut pending = Vec::new();
        let mut last = self.last_seqno;
        for e in entries {
            let seqno = e.tx_id.seqno;
            if seqno <= last {
                continue;
            }
            if seqno != last + 1 {
                self.write_frames(&pending, last)?;
                return Err(LedgerIoError::Layout(format!(
                    "appending seqno {seqno} after {last}"
                )));
            }
            pending.extend_from_slice(&e.frame);
            last = seqno;
            if e.chunk_end {
                self.write_frames(&pending, last)?;
                pending.clear();
                self.close_chunk()?;
            }
        }
        self.write_frames(&pending, last)
    }

    /// Writes consecutive frames ending with seqno `last` to the open chunk (opened if none is).
    fn write_frames(&mut self, frames: &[u8], last: u64) -> Result<(), LedgerIoError> {
        if frames.is_empty() {
            return Ok(());
        }
        let chunk = match self.current.take() {
            Some(chunk) => chunk,
            None => self.new_chunk(self.last_seqno + 1)?,
        };
        let chunk = self.current.insert(chunk);
        chunk.file.write_all(frames).map_err(io_err(&chunk.path))?;
        self.last_seqno = last;
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<(), LedgerIoError> {
        if let Some(chunk) = &self.current {
            chunk.file.sync_data().map_err(io_err(&chunk.path))?;
        }
        if self.dir_dirty {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Restarts the ledger after a snapshot at `base`: earlier chunks move to `superseded-<base>/`, and an empty
    /// `ledger_<base+1>` records where the ledger now starts.
    pub fn reset_after_snapshot(&mut self, base: u64) -> Result<(), LedgerIoError> {
        self.current = None;
        let chunks = list_chunks(&self.dir).map_err(|e| LedgerIoError::Layout(e.to_string()))?;
        if !chunks.is_empty() {
            let aside = self.dir.join(format!("superseded-{base}"));
            fs::create_dir_all(&aside).map_err(io_err(&aside))?;
            for (name, path) in chunks {
                let to = aside.join(name.file_name());
                fs::rename(&path, &to).map_err(io_err(&path))?;
            }
        }
        self.last_seqno = base;
        let chunk = self.new_chunk(base + 1)?;
        self.current = Some(chunk);
        self.sync()
    }

    fn new_chunk(&mut self, start: u64) -> Result<OpenChunk, LedgerIoError> {
        let path = self.dir.join(
            ChunkName {
                start,
                end: None,
                committed: false,
            }
            .file_name(),
        );
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.dir_dirty = true;
        Ok(OpenChunk { file, path, start })
    }

    fn close_chunk(&mut self) -> Result<(), LedgerIoError> {
        let Some(chunk) = self.current.take() else {
            return Ok(());
        };
        chunk.file.sync_data().map_err(io_err(&chunk.path))?;
        let name = ChunkName {
            start: chunk.start,
            end: Some(self.last_seqno),
            committed: true,
        };
        let to = self.dir.join(name.file_name());
        fs::rename(&chunk.path, &to).map_err(io_err(&chunk.path))?;
        self.dir_dirty = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use synod_core::ledger::{encode_frame, make_entry, Transaction, KIND_SIGNATURE, KIND_TX};
    use synod_core::txid::TxId;

    use super::*;
    use crate::ledger_files::Writes;

    fn entry(seqno: u64, chunk_end: bool) -> CommittedEntry {
        let t = Transaction {
            view: 2,
            seqno,
            kind: if chunk_end { KIND_SIGNATURE } else { KIND_TX },
            public_writes: vec![0u8; 100],
            chunk_end,
            ..Default::default()
        };
        CommittedEntry {
            tx_id: TxId::new(2, seqno),
            frame: encode_frame(&make_entry(&t, "ce", &[0; 32])),
            writes: Arc::new(Writes::default()),
            is_signature: chunk_end,
            chunk_end,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn chunks_close_where_entries_say_and_reopen_after_a_torn_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LedgerWriter::open(dir.path()).expect("open").writer;
        let ents: Vec<_> = (1..=10).map(|s| entry(s, s == 4 || s == 8)).collect();
        w.append(&ents).expect("append");
        w.append(&ents[..3]).expect("already written entries are skipped");
        w.sync().expect("sync");
        assert_eq!(
            names(dir.path()),
            vec!["ledger_1-4.committed", "ledger_5-8.committed", "ledger_9"]
        );
        drop(w);
        let path = dir.path().join("ledger_9");
        let mut bytes = fs::read(&path).expect("read");
        bytes.extend_from_slice(&entry(11, false).frame[..20]);
        fs::write(&path, &bytes).expect("write");
        let opened = LedgerWriter::open(dir.path()).expect("reopen");
        assert_eq!((opened.entries.len(), opened.start), (10, 1));
        let mut w = opened.writer;
        assert!(w.append(&[entry(13, false)]).is_err(), "a gap is refused");
        w.append(&[entry(11, true)]).expect("continues after the cut");
        assert!(names(dir.path()).contains(&"ledger_9-11.committed".to_string()));
    }

    #[test]
    fn a_ledger_can_restart_after_a_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LedgerWriter::open(dir.path()).expect("open").writer;
        w.append(&(1..=5).map(|s| entry(s, s == 4)).collect::<Vec<_>>())
            .expect("append");
        w.reset_after_snapshot(20).expect("reset");
        w.append(&[entry(21, false)]).expect("append after the snapshot");
        w.sync().expect("sync");
        drop(w);
        let opened = LedgerWriter::open(dir.path()).expect("reopen");
        assert_eq!(
            (opened.start, opened.entries.len(), opened.writer.last_seqno()),
            (21, 1, 21)
        );
        assert!(dir
            .path()
            .join("superseded-20")
            .join("ledger_1-4.committed")
            .exists());
    }

    #[test]
    fn opening_after_a_seqno_reads_only_the_chunks_it_needs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LedgerWriter::open(dir.path()).expect("open").writer;
        let ents: Vec<_> = (1..=10).map(|s| entry(s, s == 4 || s == 8)).collect();
        w.append(&ents).expect("append");
        w.sync().expect("sync");
        drop(w);
        // A chunk wholly before the start is not even read: damage there goes unnoticed (the auditor's job).
        let first = dir.path().join("ledger_1-4.committed");
        fs::write(&first, b"not a ledger chunk").expect("damage");
        let opened = LedgerWriter::open_after(dir.path(), 6).expect("open after 6");
        let seqnos: Vec<u64> = opened
            .entries
            .iter()
            .map(|e| e.decode_transaction().expect("tx").seqno)
            .collect();
        assert_eq!(seqnos, vec![7, 8, 9, 10]);
        assert_eq!((opened.start, opened.writer.last_seqno()), (1, 10));
        let mut w = opened.writer;
        w.append(&[entry(11, true)]).expect("continues");
        // Reading everything does find the damage.
        assert!(LedgerWriter::open(dir.path()).is_err());
    }

    #[test]
    fn corruption_before_the_tail_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LedgerWriter::open(dir.path()).expect("open").writer;
        w.append(&(1..=8).map(|s| entry(s, false)).collect::<Vec<_>>())
            .expect("append");
        w.sync().expect("sync");
        drop(w);
        let path = dir.path().join("ledger_1");
        let mut bytes = fs::read(&path).expect("read");
        bytes[200] ^= 0xff;
        fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            LedgerWriter::open(dir.path()),
            Err(LedgerIoError::Corrupt { .. })
        ));
    }
}
