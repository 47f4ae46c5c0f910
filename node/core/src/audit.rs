//! Offline ledger audit: re-reads every chunk, rebuilds the Merkle tree and checks every signature over it. Names
//! the first entry that is wrong, so an operator knows where a ledger was damaged or altered.
//!
//! Only what a signature covers is vouched for: entries after the last signature (the unsigned tail) fail the
//! audit unless [`AuditOptions::allow_unsigned_tail`] accepts them (a live node's open chunk), and the evidence of
//! the snapshot a ledger starts from counts only when a signature after it verifies.

use std::path::{Path, PathBuf};

use crate::hash::Digest;
use crate::ledger::{
    self, decode_frames, verify_signature_transaction, verify_signature_transaction_node_only, FrameError,
    SignatureCheckError, KIND_SIGNATURE, KIND_TX,
};
use crate::merkle::MerkleTree;
use crate::snapshot::{BaseSnapshot, BaseSnapshotError, SnapshotEvidence};
use crate::txid::TxId;

/// What a clean audit saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReport {
    /// Entries read.
    pub entries: u64,
    /// Signature transactions verified.
    pub signatures: u64,
    /// Seqno of the last entry (0 for an empty ledger).
    pub last_seqno: u64,
    /// The last signature transaction.
    pub last_signed: Option<TxId>,
    /// Entries after the last signature, which nothing vouches for (only with
    /// [`AuditOptions::allow_unsigned_tail`]; otherwise the audit fails on them).
    pub unsigned_tail: Option<UnsignedTail>,
    /// Chunk files read.
    pub chunks: usize,
    /// Offset of a partial frame at the end of the last open chunk (a torn write from a crash), if any.
    pub torn_tail_offset: Option<u64>,
    /// The snapshot the ledger continues (its seqno), when it does not start at 1.
    pub base_snapshot: Option<u64>,
}

impl AuditReport {
    /// Number of entries in the unsigned tail (0 when the ledger ends on a signature).
    pub fn unsigned_entries(&self) -> u64 {
        self.unsigned_tail.as_ref().map_or(0, UnsignedTail::count)
    }
}

/// The entries after the last signature: no signature covers them, so they could have been written by anyone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsignedTail {
    /// First unsigned seqno.
    pub from: u64,
    /// Last unsigned seqno (the ledger's last entry).
    pub to: u64,
    /// The chunk holding the first unsigned entry.
    pub file: PathBuf,
    /// Byte offset of the first unsigned entry's frame in that chunk.
    pub offset: u64,
}

impl UnsignedTail {
    /// Number of unsigned entries.
    pub fn count(&self) -> u64 {
        self.to - self.from + 1
    }
}

/// What the audit accepts beyond a fully signed ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditOptions {
    /// Accept entries after the last signature (reported in [`AuditReport::unsigned_tail`]): a running node's open
    /// chunk legitimately ends with committed entries whose signature is not written yet.
    pub allow_unsigned_tail: bool,
}

/// The first problem found.
#[derive(Debug, thiserror::Error)]
#[error("{}: entry at offset {offset}{}: {reason}", file.display(), seqno.map(|s| format!(" (seqno {s})")).unwrap_or_default())]
pub struct AuditError {
    /// The chunk file (or directory for layout errors).
    pub file: PathBuf,
    /// Byte offset of the bad entry's frame.
    pub offset: u64,
    /// The seqno at that position, when known.
    pub seqno: Option<u64>,
    /// What is wrong.
    pub reason: String,
    /// Set when the audit failed only because of the unsigned tail it names.
    pub unsigned_tail: Option<UnsignedTail>,
}

impl AuditError {
    fn at(file: &Path, offset: u64, seqno: Option<u64>, reason: String) -> AuditError {
        AuditError {
            file: file.to_path_buf(),
            offset,
            seqno,
            reason,
            unsigned_tail: None,
        }
    }
}

// The snapshot a ledger continues, and where (if anywhere) its evidence was found.
struct BaseEvidence {
    seqno: u64,
    digest: Digest,
    // (chunk, offset, seqno) of the evidence transaction.
    evidence: Option<(PathBuf, u64, u64)>,
    // A verified signature after the evidence covers it.
    signed: bool,
}

struct Auditor<'a> {
    service_cert_der: Option<&'a [u8]>,
    // Identities of services this one recovered (DER), each trusted for the seqnos up to its last.
    previous: Vec<(Vec<u8>, u64)>,
    tree: MerkleTree,
    view: u64,
    last_sig: Option<TxId>,
    last_sig_seqno_in_tree: u64,
    // (chunk, offset, seqno) of the first entry after the last signature.
    tail_start: Option<(PathBuf, u64, u64)>,
    // The snapshot the ledger continues, if it does not start at seqno 1.
    base: Option<BaseEvidence>,
    report: AuditReport,
}

impl Auditor<'_> {
    // Checks one signature transaction against the tree over every entry before it, with the node's own check.
    fn check_signature(&self, tx_id: TxId, public: &ledger::WriteSet) -> Result<(), String> {
        let expected = self.tree.root().ok_or("signature over an empty ledger")?;
        let checked = match self.service_cert_der {
            Some(service) => verify_signature_transaction(public, tx_id, &expected, service).or_else(|e| {
                // Signed under a service identity this one recovered, before the recovery: fine.
                self.previous
                    .iter()
                    .filter(|(_, last)| tx_id.seqno <= *last)
                    .find_map(|(der, _)| verify_signature_transaction(public, tx_id, &expected, der).ok())
                    .ok_or(e)
            }),
            None => verify_signature_transaction_node_only(public, tx_id, &expected),
        };
        match checked {
            Ok(_) => Ok(()),
            Err(SignatureCheckError::RootMismatch { .. }) => Err(format!(
                "signed root does not match the ledger: an entry between seqno {} and {} was altered",
                self.last_sig_seqno_in_tree + 1,
                tx_id.seqno - 1
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Audits every chunk in `dir` and fails on an unsigned tail; see [`audit_ledger_with`].
pub fn audit_ledger(dir: &Path, service_cert_der: Option<&[u8]>) -> Result<AuditReport, AuditError> {
    audit_ledger_with(dir, service_cert_der, AuditOptions::default())
}

/// Audits every chunk in `dir`; with `service_cert_der`, also checks node endorsements and COSE signatures. A
/// ledger that starts after a snapshot (a node that joined from one) is audited from that snapshot, looked for in
/// `dir/../snapshots/`, whose evidence must be in the ledger and covered by a signature.
pub fn audit_ledger_with(
    dir: &Path,
    service_cert_der: Option<&[u8]>,
    options: AuditOptions,
) -> Result<AuditReport, AuditError> {
    audit_ledger_observed(dir, service_cert_der, options, &mut |_| {})
}

/// The files [`audit_ledger_observed`] will read, with their sizes (to size a progress bar).
pub fn ledger_chunk_sizes(dir: &Path) -> Vec<u64> {
    ledger::list_chunks(dir)
        .map(|chunks| {
            chunks
                .iter()
                .map(|(_, path)| std::fs::metadata(path).map_or(0, |m| m.len()))
                .collect()
        })
        .unwrap_or_default()
}

/// What a recovered service records of the service it continues (`public:ccf.internal.previous_service_identity`).
#[derive(serde::Deserialize)]
struct PreviousService {
    last_seqno: u64,
    previous_service_identity: String,
    endorsement: String,
}

/// The chain of service identities a ledger continues, from `service_der` back: every recovery recorded in the
/// ledger whose endorsement of the previous identity verifies against an identity already in the chain (the given
/// one first). Each previous identity is trusted for the seqnos up to the previous service's last one.
fn identity_chain(chunks: &[(ledger::ChunkName, PathBuf)], service_der: &[u8]) -> Vec<(Vec<u8>, u64)> {
    let mut records = Vec::new();
    for (_, path) in chunks {
        let Ok(bytes) = std::fs::read(path) else {
            continue; // the audit itself reports unreadable chunks
        };
        for frame in decode_frames(&bytes).map_while(Result::ok) {
            let Ok(tx) = frame.entry.decode_transaction() else {
                continue;
            };
            if !tx.may_write_public(crate::maps::PREVIOUS_SERVICE) {
                continue;
            }
            let Ok(public) = tx.public_write_set() else {
                continue;
            };
            let written = public
                .maps
                .iter()
                .filter(|m| m.name == crate::maps::PREVIOUS_SERVICE)
                .flat_map(|m| &m.writes)
                .filter_map(|w| serde_json::from_slice::<PreviousService>(w.value.as_deref()?).ok());
            records.extend(written);
        }
    }
    let mut chain: Vec<(Vec<u8>, u64)> = Vec::new();
    loop {
        let before = chain.len();
        for r in &records {
            let (Ok(previous), Ok(endorsement)) = (
                crate::cert::pem_to_der(&r.previous_service_identity),
                crate::cert::pem_to_der(&r.endorsement),
            ) else {
                continue;
            };
            if chain.iter().any(|(der, _)| *der == previous) {
                continue;
            }
            let endorsed_by = std::iter::once(service_der).chain(chain.iter().map(|(der, _)| der.as_slice()));
            let vouched = crate::cert::same_public_key(&endorsement, &previous).unwrap_or(false)
                && endorsed_by
                    .into_iter()
                    .any(|by| crate::cert::verify_endorsement(&endorsement, by).is_ok());
            if vouched {
                chain.push((previous, r.last_seqno));
            }
        }
        if chain.len() == before {
            return chain;
        }
    }
}

/// [`audit_ledger_with`], telling `audited` the size in bytes of each chunk once it is checked.
pub fn audit_ledger_observed(
    dir: &Path,
    service_cert_der: Option<&[u8]>,
    options: AuditOptions,
    audited: &mut dyn FnMut(u64),
) -> Result<AuditReport, AuditError> {
    let chunks = ledger::list_chunks(dir).map_err(|e| AuditError::at(dir, 0, None, e.to_string()))?;
    let mut a = Auditor::new(service_cert_der, &chunks);
    let first_start = chunks.first().map_or(1, |c| c.0.start);
    if first_start != 1 {
        a.start_from_snapshot(dir, first_start)?;
    }
    let count = chunks.len();
    for (i, (name, path)) in chunks.iter().enumerate() {
        let read = a.audit_chunk(name, path, i + 1 == count)?;
        audited(read);
    }
    a.finish(dir, options)
}

impl<'a> Auditor<'a> {
    fn new(service_cert_der: Option<&'a [u8]>, chunks: &[(ledger::ChunkName, PathBuf)]) -> Auditor<'a> {
        Auditor {
            service_cert_der,
            previous: service_cert_der
                .map(|s| identity_chain(chunks, s))
                .unwrap_or_default(),
            tree: MerkleTree::new(),
            view: 0,
            last_sig: None,
            last_sig_seqno_in_tree: 0,
            tail_start: None,
            base: None,
            report: AuditReport {
                entries: 0,
                signatures: 0,
                last_seqno: 0,
                last_signed: None,
                unsigned_tail: None,
                chunks: chunks.len(),
                torn_tail_offset: None,
                base_snapshot: None,
            },
        }
    }

    /// A ledger continuing a snapshot: the tree restarts from the snapshot's frontier, and the snapshot itself
    /// must be proven by a signed evidence transaction in the audited entries.
    fn start_from_snapshot(&mut self, dir: &Path, first_start: u64) -> Result<(), AuditError> {
        let layout_err = |reason: String| AuditError::at(dir, 0, None, reason);
        let snapshots = dir.parent().map(|p| p.join("snapshots")).unwrap_or_default();
        let base = BaseSnapshot::load(&snapshots, first_start - 1).map_err(|e| match e {
            BaseSnapshotError::Missing { seqno, dir } => layout_err(format!(
                "ledger starts at seqno {first_start}: it continues snapshot {seqno}, not found in {}",
                dir.display()
            )),
            unusable => layout_err(unusable.to_string()),
        })?;
        self.tree = base.tree().map_err(|e| layout_err(e.to_string()))?;
        let seqno = base.file.seqno;
        self.view = base.file.view;
        self.report.last_seqno = seqno;
        self.last_sig_seqno_in_tree = seqno;
        self.report.base_snapshot = Some(seqno);
        self.base = Some(BaseEvidence {
            seqno,
            digest: base.digest(),
            evidence: None,
            signed: false,
        });
        Ok(())
    }

    /// Audits one chunk (`last`: the ledger's last one, which may end in a torn frame while open). Returns its
    /// size in bytes.
    fn audit_chunk(&mut self, name: &ledger::ChunkName, path: &Path, last: bool) -> Result<u64, AuditError> {
        let err =
            |offset: u64, seqno: Option<u64>, reason: String| AuditError::at(path, offset, seqno, reason);
        let bytes = std::fs::read(path).map_err(|e| err(0, None, format!("cannot read: {e}")))?;
        let expected_start = self.report.last_seqno + 1;
        if name.start != expected_start {
            return Err(err(
                0,
                Some(expected_start),
                format!("chunk starts at {}, expected {expected_start}", name.start),
            ));
        }
        let mut last_kind = None;
        let mut end_offset = 0;
        for frame in decode_frames(&bytes) {
            let expected = self.report.last_seqno + 1;
            let frame = match frame {
                Ok(f) => f,
                Err(FrameError::Truncated { offset }) if last && name.end.is_none() => {
                    self.report.torn_tail_offset = Some(offset);
                    break;
                }
                Err(FrameError::Truncated { offset }) => {
                    return Err(err(offset, Some(expected), "truncated entry".into()))
                }
                Err(FrameError::Corrupt { offset, reason }) => {
                    return Err(err(offset, Some(expected), reason))
                }
            };
            let kind = self
                .audit_entry(path, &frame, expected)
                .map_err(|reason| err(frame.offset, Some(expected), reason))?;
            last_kind = Some(kind);
            end_offset = frame.offset + frame.len;
        }
        if let Some(end) = name.end {
            if end != self.report.last_seqno {
                return Err(err(
                    end_offset,
                    None,
                    format!(
                        "chunk name ends at {end} but its last entry is {}",
                        self.report.last_seqno
                    ),
                ));
            }
            if last_kind != Some(KIND_SIGNATURE) {
                return Err(err(
                    end_offset,
                    Some(end),
                    "closed chunk does not end on a signature transaction".into(),
                ));
            }
        }
        Ok(bytes.len() as u64)
    }

    /// Checks one entry in its place (seqno, view, signature or snapshot evidence) and folds it into the tree.
    /// Returns its kind.
    fn audit_entry(&mut self, path: &Path, frame: &ledger::Frame, expected: u64) -> Result<u32, String> {
        let tx = frame.entry.decode_transaction().map_err(|e| e.to_string())?;
        if tx.seqno != expected {
            return Err(format!("entry has seqno {}", tx.seqno));
        }
        if tx.view < self.view {
            return Err(format!("view {} after view {}", tx.view, self.view));
        }
        let public = tx.public_write_set().map_err(|e| e.to_string())?;
        match tx.kind {
            KIND_SIGNATURE => {
                self.check_signature(tx.tx_id(), &public)?;
                self.last_sig = Some(tx.tx_id());
                self.tail_start = None;
                self.report.signatures += 1;
                if let Some(b) = self.base.as_mut() {
                    b.signed |= b.evidence.is_some();
                }
            }
            KIND_TX => {
                if let Some(b) = self.base.as_mut().filter(|b| b.evidence.is_none()) {
                    if let Some(ev) = SnapshotEvidence::for_snapshot(&public, b.seqno) {
                        if ev.digest != hex::encode(b.digest) {
                            return Err(format!(
                                "the ledger's evidence for snapshot {} names another digest",
                                b.seqno
                            ));
                        }
                        b.evidence = Some((path.to_path_buf(), frame.offset, tx.seqno));
                    }
                }
                if self.tail_start.is_none() {
                    self.tail_start = Some((path.to_path_buf(), frame.offset, tx.seqno));
                }
            }
            other => return Err(format!("unknown transaction kind {other}")),
        }
        let leaf = frame.entry.leaf().map_err(|e| e.to_string())?;
        self.tree.append(leaf);
        if tx.kind == KIND_SIGNATURE {
            self.last_sig_seqno_in_tree = tx.seqno;
        }
        self.view = tx.view;
        self.report.entries += 1;
        self.report.last_seqno = tx.seqno;
        Ok(tx.kind)
    }

    /// What the whole ledger must show once read: a signed proof of the snapshot it continues, and no unsigned
    /// tail unless `options` accepts one.
    fn finish(mut self, dir: &Path, options: AuditOptions) -> Result<AuditReport, AuditError> {
        if let Some(b) = self.base.take().filter(|b| !b.signed) {
            return Err(match b.evidence {
                // Unsigned evidence is no evidence: anyone can append an entry naming the digest of the snapshot
                // they placed next to the ledger.
                Some((file, offset, at)) => AuditError::at(
                    &file,
                    offset,
                    Some(at),
                    format!(
                        "the evidence for snapshot {} that the ledger starts from is not covered by any signature",
                        b.seqno
                    ),
                ),
                None => AuditError::at(
                    dir,
                    0,
                    None,
                    format!(
                        "snapshot {} that the ledger starts from is not proven by an evidence transaction in it",
                        b.seqno
                    ),
                ),
            });
        }
        self.report.last_signed = self.last_sig;
        self.report.unsigned_tail = self.tail_start.map(|(file, offset, from)| UnsignedTail {
            from,
            to: self.report.last_seqno,
            file,
            offset,
        });
        if let Some(tail) = self
            .report
            .unsigned_tail
            .as_ref()
            .filter(|_| !options.allow_unsigned_tail)
        {
            let after = self.last_sig.map_or_else(
                || "no signature at all".to_string(),
                |t| format!("the last signature, {t}"),
            );
            return Err(AuditError {
                file: tail.file.clone(),
                offset: tail.offset,
                seqno: Some(tail.from),
                reason: format!(
                    "unsigned tail: {} entries (seqno {} to {}) after {after}: no signature covers them",
                    tail.count(),
                    tail.from,
                    tail.to
                ),
                unsigned_tail: Some(tail.clone()),
            });
        }
        Ok(self.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert;
    use crate::testing::write_sample_ledger;

    #[test]
    fn clean_ledger_audits() {
        let dir = tempfile::tempdir().unwrap();
        let sample = write_sample_ledger(dir.path(), 30, 7);
        let service = cert::pem_to_der(&sample.service.cert_pem).unwrap();
        let report = audit_ledger(dir.path(), Some(&service)).unwrap();
        assert_eq!(report.entries, sample.entries.len() as u64);
        assert_eq!(
            report.signatures,
            sample.entries.iter().filter(|e| e.is_signature).count() as u64
        );
        assert_eq!(report.unsigned_tail, None);
        assert!(report.chunks > 1);
        assert_eq!(report.last_signed.unwrap().seqno, report.last_seqno);

        let other = crate::cert::generate_self_signed("other", true).unwrap();
        let err = audit_ledger(dir.path(), Some(&cert::pem_to_der(&other.cert_pem).unwrap())).unwrap_err();
        assert!(err.reason.contains("signing node"), "{err}");
    }

    #[test]
    fn every_flipped_byte_names_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let sample = write_sample_ledger(dir.path(), 12, 5);
        let service = cert::pem_to_der(&sample.service.cert_pem).unwrap();
        for e in sample.entries.iter() {
            let path = &sample.chunks[e.chunk];
            let original = std::fs::read(path).unwrap();
            for i in (e.offset..e.offset + e.len).step_by(5) {
                let mut bad = original.clone();
                bad[i as usize] ^= 0x20;
                std::fs::write(path, &bad).unwrap();
                // The unsigned tail is allowed so that a torn final signature shows as the torn tail it is.
                let allow = AuditOptions {
                    allow_unsigned_tail: true,
                };
                let err = match audit_ledger_with(dir.path(), Some(&service), allow) {
                    Err(err) => err,
                    // A grown length field on the very last frame of an open chunk is indistinguishable from a
                    // torn write; the report then names that frame as the torn tail.
                    Ok(report) => {
                        assert_eq!(
                            report.torn_tail_offset,
                            Some(e.offset),
                            "byte {i} of {:?} undetected",
                            e.tx_id
                        );
                        continue;
                    }
                };
                assert_eq!(&err.file, path);
                assert_eq!(err.offset, e.offset, "byte {i} of {:?}: {err}", e.tx_id);
                assert_eq!(err.seqno, Some(e.tx_id.seqno), "{err}");
            }
            std::fs::write(path, &original).unwrap();
        }
    }

    #[test]
    fn re_checksummed_alteration_is_caught_by_the_signature() {
        let dir = tempfile::tempdir().unwrap();
        let sample = write_sample_ledger(dir.path(), 8, 4);
        let e = &sample.entries[1];
        let path = &sample.chunks[e.chunk];
        let mut bytes = std::fs::read(path).unwrap();
        let frame = decode_frames(&bytes[e.offset as usize..])
            .next()
            .unwrap()
            .unwrap();
        let mut entry = frame.entry;
        entry.claims_digest = vec![9; 32];
        let new_frame = ledger::encode_frame(&entry);
        assert_eq!(new_frame.len() as u64, e.len);
        bytes[e.offset as usize..(e.offset + e.len) as usize].copy_from_slice(&new_frame);
        std::fs::write(path, &bytes).unwrap();
        let err = audit_ledger(dir.path(), None).unwrap_err();
        assert!(err.reason.contains("between seqno 1 and 4"), "{err}");
        assert_eq!(err.seqno, Some(5));
    }

    #[test]
    fn torn_tail_of_open_chunk_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let sample = write_sample_ledger(dir.path(), 5, 10);
        let last = sample.chunks.last().unwrap();
        let mut bytes = std::fs::read(last).unwrap();
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(last, &bytes).unwrap();
        let report = audit_ledger(dir.path(), None).unwrap();
        assert!(report.torn_tail_offset.is_some());
    }
}
