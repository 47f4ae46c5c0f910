//! The ledger on disk: append-only chunk files in CCF's naming (`ledger_<start>` while open,
//! `ledger_<start>-<end>.committed` once closed on a durable signature). This module owns the file I/O only;
//! the format lives in `synod_core::ledger`, shared with the offline auditor.
//!
//! Recovery reads every chunk, cuts a torn trailing frame, and drops every entry after the last signature
//! transaction: such entries were never reported Committed, and keeping them would let a later view reuse their
//! seqnos with different contents.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use synod_core::ledger::{decode_frames, list_chunks, ChunkName, FrameError, LedgerEntry, KIND_SIGNATURE};

use crate::replica::PendingFrame;

/// Errors reading or writing ledger files.
#[derive(Debug, thiserror::Error)]
pub enum LedgerIoError {
    /// An operating-system error on a file.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The ledger is damaged somewhere other than a torn tail; `synod ledger audit` tells more.
    #[error("{path}: corrupt entry at offset {offset}: {reason} (run `synod ledger audit`)")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The chunk files do not form one sequence.
    #[error("ledger directory: {0}")]
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
    bytes: u64,
}

/// Appends frames to the current chunk and rotates chunks on signatures.
pub struct LedgerWriter {
    dir: PathBuf,
    chunk_bytes_max: u64,
    current: Option<OpenChunk>,
    last_seqno: u64,
    dir_dirty: bool,
}

/// What recovery found: the entries up to and including the last signature.
pub struct Recovered {
    /// The writer, positioned after the last signature.
    pub writer: LedgerWriter,
    /// Every entry from seqno 1 to the last signature.
    pub entries: Vec<LedgerEntry>,
    /// Entries dropped because no signature covered them.
    pub dropped_unsigned: u64,
}

struct Located {
    entry: LedgerEntry,
    chunk: usize,
    end_offset: u64,
    is_signature: bool,
}

impl LedgerWriter {
    /// Opens `dir` (created if missing), recovers its entries and truncates what no signature covers.
    pub fn open(dir: &Path, chunk_bytes_max: u64) -> Result<Recovered, LedgerIoError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let chunks = list_chunks(dir).map_err(|e| LedgerIoError::Layout(e.to_string()))?;
        let mut located: Vec<Located> = Vec::new();
        let mut chunk_lens = Vec::new();
        for (i, (_, path)) in chunks.iter().enumerate() {
            let bytes = fs::read(path).map_err(io_err(path))?;
            let mut valid_len = 0u64;
            for frame in decode_frames(&bytes) {
                match frame {
                    Ok(frame) => {
                        let is_signature = frame
                            .entry
                            .decode_transaction()
                            .map(|t| t.kind == KIND_SIGNATURE)
                            .map_err(|e| LedgerIoError::Corrupt {
                                path: path.clone(),
                                offset: frame.offset,
                                reason: e.to_string(),
                            })?;
                        valid_len = frame.offset + frame.len;
                        located.push(Located {
                            entry: frame.entry,
                            chunk: i,
                            end_offset: valid_len,
                            is_signature,
                        });
                    }
                    // A torn write can only be the very end of what was being appended.
                    Err(FrameError::Truncated { .. }) if i + 1 == chunks.len() => break,
                    Err(e) => {
                        return Err(LedgerIoError::Corrupt {
                            path: path.clone(),
                            offset: valid_len,
                            reason: e.to_string(),
                        })
                    }
                }
            }
            chunk_lens.push(valid_len);
        }

        let keep = located.iter().rposition(|l| l.is_signature).map_or(0, |i| i + 1);
        let dropped_unsigned = (located.len() - keep) as u64;
        let (cut_chunk, cut_offset) = match keep.checked_sub(1) {
            Some(last) => (Some(located[last].chunk), located[last].end_offset),
            None => (None, 0),
        };
        // Remove whatever lies beyond the cut: later chunks entirely, the cut chunk's tail.
        for (i, (_, path)) in chunks.iter().enumerate() {
            match cut_chunk {
                Some(c) if i < c => {}
                Some(c) if i == c => {
                    if chunk_lens[i] != cut_offset
                        || fs::metadata(path).map_err(io_err(path))?.len() != cut_offset
                    {
                        let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
                        f.set_len(cut_offset).map_err(io_err(path))?;
                        f.sync_all().map_err(io_err(path))?;
                    }
                }
                _ => fs::remove_file(path).map_err(io_err(path))?,
            }
        }
        let entries: Vec<LedgerEntry> = located.into_iter().take(keep).map(|l| l.entry).collect();
        let last_seqno = entries.len() as u64;

        let mut writer = LedgerWriter {
            dir: dir.to_path_buf(),
            chunk_bytes_max,
            current: None,
            last_seqno,
            dir_dirty: true,
        };
        if let Some(c) = cut_chunk {
            let (name, path) = &chunks[c];
            if name.end.is_none() {
                // The open chunk continues.
                let file = OpenOptions::new().append(true).open(path).map_err(io_err(path))?;
                writer.current = Some(OpenChunk {
                    file,
                    path: path.clone(),
                    start: name.start,
                    bytes: cut_offset,
                });
            } else if !name.committed {
                // Closed on a signature that was made durable before the crash: it is committed.
                let committed = ChunkName {
                    committed: true,
                    ..name.clone()
                };
                let to = dir.join(committed.file_name());
                fs::rename(path, &to).map_err(io_err(path))?;
            }
        }
        writer.sync()?;
        Ok(Recovered {
            writer,
            entries,
            dropped_unsigned,
        })
    }

    /// Seqno of the last entry written.
    pub fn last_seqno(&self) -> u64 {
        self.last_seqno
    }

    /// Appends frames in order; closes the chunk after a signature once it is over the size threshold.
    pub fn append(&mut self, frames: &[PendingFrame]) -> Result<(), LedgerIoError> {
        for frame in frames {
            if frame.seqno != self.last_seqno + 1 {
                return Err(LedgerIoError::Layout(format!(
                    "appending seqno {} after {}",
                    frame.seqno, self.last_seqno
                )));
            }
            let chunk = match self.current.take() {
                Some(chunk) => chunk,
                None => self.new_chunk(frame.seqno)?,
            };
            let chunk = self.current.insert(chunk);
            chunk.file.write_all(&frame.bytes).map_err(io_err(&chunk.path))?;
            chunk.bytes += frame.bytes.len() as u64;
            self.last_seqno = frame.seqno;
            if frame.is_signature && chunk.bytes >= self.chunk_bytes_max {
                self.close_chunk()?;
            }
        }
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
        Ok(OpenChunk {
            file,
            path,
            start,
            bytes: 0,
        })
    }

    /// Single node: the closing signature is durable once the chunk is synced, so the chunk is committed.
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
    use prost::Message as _;
    use synod_core::ledger::{encode_frame, Transaction, KIND_TX};

    use super::*;

    fn frame(seqno: u64, is_signature: bool) -> PendingFrame {
        let transaction = Transaction {
            view: 2,
            seqno,
            kind: if is_signature { KIND_SIGNATURE } else { KIND_TX },
            public_writes: vec![0u8; 100],
            private_sealed: Vec::new(),
            ..Default::default()
        };
        let entry = LedgerEntry {
            transaction: transaction.encode_to_vec(),
            commit_evidence_digest: vec![1; 32],
            claims_digest: vec![0; 32],
        };
        PendingFrame {
            seqno,
            is_signature,
            bytes: encode_frame(&entry),
        }
    }

    /// Seqnos 1..=n with a signature every `sig_every`.
    fn frames(n: u64, sig_every: u64) -> Vec<PendingFrame> {
        (1..=n).map(|s| frame(s, s % sig_every == 0)).collect()
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
    fn chunks_close_on_signatures_past_the_size_threshold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LedgerWriter::open(dir.path(), 500).expect("open").writer;
        w.append(&frames(12, 4)).expect("append");
        w.sync().expect("sync");
        // Frames are ~160 bytes: the first signature past 500 bytes is seqno 4, then 8, then 12.
        assert_eq!(
            names(dir.path()),
            vec![
                "ledger_1-4.committed",
                "ledger_5-8.committed",
                "ledger_9-12.committed"
            ]
        );
        w.append(&frames(13, 4)[12..]).expect("append");
        w.sync().expect("sync");
        assert!(names(dir.path()).contains(&"ledger_13".to_string()));
    }

    #[test]
    fn recovery_drops_the_unsigned_tail_and_a_torn_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LedgerWriter::open(dir.path(), 1 << 20).expect("open").writer;
        w.append(&frames(10, 4)).expect("append"); // signatures at 4 and 8; 9, 10 unsigned
        w.sync().expect("sync");
        drop(w);
        let path = dir.path().join("ledger_1");
        let mut bytes = fs::read(&path).expect("read");
        bytes.extend_from_slice(&frame(11, false).bytes[..20]); // a torn write
        fs::write(&path, &bytes).expect("write");

        let recovered = LedgerWriter::open(dir.path(), 1 << 20).expect("recover");
        assert_eq!(recovered.entries.len(), 8);
        assert_eq!(recovered.dropped_unsigned, 2);
        let mut w = recovered.writer;
        assert_eq!(w.last_seqno(), 8);
        w.append(&frames(12, 4)[8..])
            .expect("seqnos continue after the cut");
        w.sync().expect("sync");
        assert_eq!(
            LedgerWriter::open(dir.path(), 1 << 20)
                .expect("reopen")
                .entries
                .len(),
            12
        );
    }

    #[test]
    fn recovery_refuses_corruption_before_the_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LedgerWriter::open(dir.path(), 1 << 20).expect("open").writer;
        w.append(&frames(8, 4)).expect("append");
        w.sync().expect("sync");
        drop(w);
        let path = dir.path().join("ledger_1");
        let mut bytes = fs::read(&path).expect("read");
        bytes[200] ^= 0xff;
        fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            LedgerWriter::open(dir.path(), 1 << 20),
            Err(LedgerIoError::Corrupt { .. })
        ));
    }

    #[test]
    fn appending_out_of_order_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LedgerWriter::open(dir.path(), 1 << 20).expect("open").writer;
        assert!(w.append(&[frame(2, false)]).is_err());
    }
}
