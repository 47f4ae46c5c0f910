//! Receipts for transactions whose history the core flushed from memory, rebuilt from the ledger files (CCF's
//! historical queries do the same). Every signature records the Merkle frontier of the tree it signs
//! (`public:ccf.internal.tree`), so the proof of a transaction needs only the entries between the signature
//! before it (P) and the one after it (S), never the ledger from the start:
//!
//! ```text
//!  chunk files ─▶ P's frontier (tree of P−1 leaves) + leaves P..S−1 ─▶ root == S's signed root?
//!               ─▶ SignedRange { S's signature, tree, write-set digests } ─▶ proof of any seqno in P+1..S−1
//! ```
//!
//! Bounded: at most [`RANGES_CACHED`] ranges are kept (each about a signature interval of digests), at most
//! [`BUILDS_MAX`] are built at once (the caller answers 503 past it), and a build reads at most the chunk holding
//! the transaction and the last entry of the chunk before. Synchronous: a build takes the time to read one
//! chunk (a few milliseconds for the default 5 MB chunks).
//!
//! It also holds the node's [`LedgerReader`] (historical values and versions, change feeds: `crate::apps::history`)
//! and the change feeds' slots ([`FEEDS_MAX`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use synod_core::hash::Digest;
use synod_core::ledger::{
    decode_frames, list_chunks, signature_tree_frontier, verify_signature_transaction, ChunkName,
    LedgerEntry, Transaction, VerifiedSignature, KIND_SIGNATURE,
};
use synod_core::merkle::{MerkleTree, ProofStep};
use synod_core::txid::TxId;
use synod_kv::seal::Sealer;

use crate::consensus::machine::SigInfo;
use crate::ledger_files::reader::LedgerReader;
use crate::limits::{Slot, Slots};

/// Signed ranges kept in memory.
pub const RANGES_CACHED: usize = 32;
/// Ranges built at once.
pub const BUILDS_MAX: usize = 2;
/// Change feeds (`/app/kv/{map}/changes`) open at once.
pub const FEEDS_MAX: usize = 16;

/// Why a receipt cannot be rebuilt from the ledger files.
#[derive(Debug, thiserror::Error)]
pub enum HistoricalError {
    /// No chunk file holds the transaction (the node's ledger starts after it).
    #[error("seqno {0} is not in this node's ledger files")]
    NotInLedger(u64),
    /// The chunk holding it is not closed yet: the node is still writing it.
    #[error("seqno {0} is not written to a closed ledger chunk yet; retry shortly")]
    NotYetWritten(u64),
    /// The signature before the transaction records no tree frontier (a ledger written by an older version).
    #[error("the signature at seqno {0} records no Merkle frontier (an older ledger): this receipt cannot be rebuilt")]
    NoFrontier(u64),
    /// Every build slot is taken.
    #[error("{BUILDS_MAX} receipts are being rebuilt from the ledger already; retry shortly")]
    Busy,
    /// The files are unreadable or do not verify.
    #[error("ledger: {0}")]
    Ledger(String),
}

/// The proofs a signature S gives for the transactions since the signature before it.
pub struct SignedRange {
    /// First seqno this range proves.
    first: u64,
    /// The covering signature.
    pub sig: SigInfo,
    tree: MerkleTree,
    /// Write-set digests of seqnos `first..sig.tx_id.seqno`.
    digests: Vec<Digest>,
    /// For a range a previous service identity signed (before a recovery): the current identity's endorsement
    /// of it (PEM), CCF's `service_endorsements`. Empty otherwise.
    pub endorsements: Vec<String>,
}

impl SignedRange {
    /// Whether the range proves `seqno` (its signature included).
    pub fn covers(&self, seqno: u64) -> bool {
        (self.first..=self.sig.tx_id.seqno).contains(&seqno)
    }

    /// The inclusion proof of `seqno` in the tree the signature signs, and its write-set digest; `None` for the
    /// signature itself (its record is its receipt).
    pub fn proof(&self, seqno: u64) -> Result<Option<(Vec<ProofStep>, Digest)>, HistoricalError> {
        if seqno == self.sig.tx_id.seqno {
            return Ok(None);
        }
        let digest = seqno
            .checked_sub(self.first)
            .and_then(|i| self.digests.get(usize::try_from(i).ok()?))
            .ok_or_else(|| HistoricalError::Ledger(format!("seqno {seqno} is outside this range")))?;
        let path = self
            .tree
            .path(seqno - 1, self.sig.tx_id.seqno - 1)
            .map_err(|e| HistoricalError::Ledger(e.to_string()))?;
        Ok(Some((path, *digest)))
    }
}

/// Rebuilds and caches signed ranges from a node's ledger directory (see the module docs); also holds the
/// node's [`LedgerReader`] (historical values, change feeds) and the change feeds' slots.
pub struct Historical {
    ledger_dir: PathBuf,
    service_cert_der: Vec<u8>,
    /// Previous service identities (DER) a recovered service's ledger holds signatures of, each with the
    /// endorsements (PEM, oldest first) leading from it to the current identity.
    previous: std::sync::RwLock<Vec<(Vec<u8>, Vec<String>)>>,
    cache: Mutex<VecDeque<Arc<SignedRange>>>,
    builds: Slots,
    /// Made on first use: it needs the ledger secret, which the node holds.
    reader: OnceLock<LedgerReader>,
    feeds: Slots,
}

struct Decoded {
    entry: LedgerEntry,
    tx: Transaction,
}

fn ledger_err(e: impl std::fmt::Display) -> HistoricalError {
    HistoricalError::Ledger(e.to_string())
}

fn read_chunk(path: &Path) -> Result<Vec<Decoded>, HistoricalError> {
    let bytes = std::fs::read(path).map_err(|e| ledger_err(format!("{}: {e}", path.display())))?;
    decode_frames(&bytes)
        .map(|frame| {
            let entry = frame.map_err(ledger_err)?.entry;
            let tx = entry.decode_transaction().map_err(ledger_err)?;
            Ok(Decoded { entry, tx })
        })
        .collect()
}

/// The Merkle tree as the signature `p` found it (its frontier, over every entry before it), or an empty tree
/// when the range starts at the ledger's beginning.
fn tree_before(p: Option<&Decoded>) -> Result<MerkleTree, HistoricalError> {
    let Some(p) = p else {
        return Ok(MerkleTree::new());
    };
    let public = p.tx.public_write_set().map_err(ledger_err)?;
    let frontier = signature_tree_frontier(&public)
        .map_err(ledger_err)?
        .ok_or(HistoricalError::NoFrontier(p.tx.seqno))?;
    MerkleTree::from_frontier(p.tx.seqno - 1, &frontier).map_err(ledger_err)
}

impl Historical {
    /// Receipts from the chunk files in `ledger_dir`, checked against `service_cert_der`.
    pub fn new(ledger_dir: PathBuf, service_cert_der: Vec<u8>) -> Historical {
        Historical {
            ledger_dir,
            service_cert_der,
            previous: std::sync::RwLock::new(Vec::new()),
            cache: Mutex::new(VecDeque::new()),
            builds: Slots::new(BUILDS_MAX),
            reader: OnceLock::new(),
            feeds: Slots::new(FEEDS_MAX),
        }
    }

    /// The reader of committed transactions in the ledger files, unsealing with `sealer` (the node's).
    pub fn reader(&self, sealer: &Sealer) -> &LedgerReader {
        self.reader
            .get_or_init(|| LedgerReader::new(self.ledger_dir.clone(), sealer.clone()))
    }

    /// A change feed's slot, held for the feed's life; `None` when [`FEEDS_MAX`] feeds are open.
    pub fn feed_slot(&self) -> Option<Slot> {
        self.feeds.try_take()
    }

    /// Signatures by these previous identities (DER, with the endorsements leading to the current identity) verify
    /// too.
    pub fn set_previous_identities(&self, previous: Vec<(Vec<u8>, Vec<String>)>) {
        *self.previous.write().unwrap_or_else(|p| p.into_inner()) = previous;
    }

    fn cached(&self, seqno: u64) -> Option<Arc<SignedRange>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.iter().find(|r| r.covers(seqno)).cloned()
    }

    /// A build slot, taken before the (blocking) build starts so that the caller can answer 503 at once.
    pub fn reserve(&self) -> Result<Slot, HistoricalError> {
        self.builds.try_take().ok_or(HistoricalError::Busy)
    }

    /// The range proving `seqno`, from the cache or rebuilt from the files (blocking: run it off the async
    /// runtime, holding a slot from [`Historical::reserve`]).
    pub fn range_for(&self, seqno: u64, _slot: &Slot) -> Result<Arc<SignedRange>, HistoricalError> {
        if let Some(range) = self.cached(seqno) {
            return Ok(range);
        }
        let range = Arc::new(self.build(seqno)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.push_front(range.clone());
        cache.truncate(RANGES_CACHED);
        Ok(range)
    }

    /// Whether `seqno`'s range is cached (answered without touching the files).
    pub fn is_cached(&self, seqno: u64) -> bool {
        self.cached(seqno).is_some()
    }

    fn build(&self, seqno: u64) -> Result<SignedRange, HistoricalError> {
        let chunks = list_chunks(&self.ledger_dir).map_err(ledger_err)?;
        let holding = |c: &ChunkName| c.start <= seqno && c.end.is_some_and(|e| seqno <= e);
        let Some(i) = chunks.iter().position(|(name, _)| holding(name)) else {
            let last_closed = chunks.iter().filter_map(|(n, _)| n.end).max().unwrap_or(0);
            let first = chunks.first().map_or(1, |(n, _)| n.start);
            return Err(if seqno >= first && seqno > last_closed {
                HistoricalError::NotYetWritten(seqno)
            } else {
                HistoricalError::NotInLedger(seqno)
            });
        };
        let entries = read_chunk(&chunks[i].1)?;
        let start = chunks[i].0.start;
        let at = usize::try_from(seqno - start).map_err(ledger_err)?;
        // S: the first signature at or after the transaction (a closed chunk ends with one).
        let s = (at..entries.len())
            .find(|&j| entries[j].tx.kind == KIND_SIGNATURE)
            .ok_or_else(|| ledger_err(format!("no signature after seqno {seqno} in its chunk")))?;
        // P: the last signature before it, in this chunk or the last entry of the chunk before (also a signature).
        let before_in_chunk = (0..at).rev().find(|&j| entries[j].tx.kind == KIND_SIGNATURE);
        let p_entry: Option<Decoded> = match before_in_chunk {
            Some(_) => None,
            None if start == 1 => None,
            None => {
                let (prev_name, prev_path) = chunks
                    .get(i.wrapping_sub(1))
                    .filter(|(n, _)| n.end == Some(start - 1))
                    .ok_or(HistoricalError::NotInLedger(start - 1))?;
                let mut prev = read_chunk(prev_path)?;
                let last = prev
                    .pop()
                    .ok_or_else(|| ledger_err(format!("{} is empty", prev_name.file_name())))?;
                Some(last)
            }
        };
        let p: Option<&Decoded> = before_in_chunk.map(|j| &entries[j]).or(p_entry.as_ref());
        let mut tree = tree_before(p)?;
        let first = p.map_or(1, |p| p.tx.seqno + 1);
        // The leaves of seqnos P..S−1 (1..S−1 without a P), appended to P's frontier.
        let leaves: Vec<&Decoded> = match (before_in_chunk, &p_entry) {
            (Some(j), _) => entries[j..s].iter().collect(),
            (None, Some(last_before)) => std::iter::once(last_before).chain(&entries[..s]).collect(),
            (None, None) => entries[..s].iter().collect(),
        };
        let mut digests = Vec::with_capacity(leaves.len());
        for d in leaves {
            let (write_set, leaf) = d.entry.write_set_digest_and_leaf().map_err(ledger_err)?;
            tree.append(leaf);
            if d.tx.seqno >= first {
                digests.push(write_set);
            }
        }
        let sig_entry = &entries[s];
        let sig_tx_id = sig_entry.tx.tx_id();
        if tree.len() + 1 != sig_tx_id.seqno {
            return Err(ledger_err(format!(
                "the tree holds {} leaves before the signature at {sig_tx_id}",
                tree.len()
            )));
        }
        let root = tree
            .root()
            .ok_or_else(|| ledger_err("an empty tree is never signed"))?;
        let (verified, endorsements) = self.verify_signature(sig_entry, &root)?;
        Ok(SignedRange {
            first,
            sig: SigInfo {
                tx_id: TxId::new(verified.record.view, verified.record.seqno),
                root,
                record: verified.record,
                cose: verified.cose_sign1,
            },
            tree,
            digests,
            endorsements,
        })
    }

    /// Verifies a signature transaction over `root`: by the current service identity, or by a previous one this
    /// service recovered (whose endorsements a receipt then carries).
    fn verify_signature(
        &self,
        sig_entry: &Decoded,
        root: &Digest,
    ) -> Result<(VerifiedSignature, Vec<String>), HistoricalError> {
        let sig_tx_id = sig_entry.tx.tx_id();
        let public = sig_entry.tx.public_write_set().map_err(ledger_err)?;
        match verify_signature_transaction(&public, sig_tx_id, root, &self.service_cert_der) {
            Ok(v) => Ok((v, Vec::new())),
            Err(e) => {
                let previous = self.previous.read().unwrap_or_else(|p| p.into_inner());
                previous
                    .iter()
                    .find_map(|(der, endorsements)| {
                        let v = verify_signature_transaction(&public, sig_tx_id, root, der).ok()?;
                        Some((v, endorsements.clone()))
                    })
                    .ok_or_else(|| ledger_err(format!("signature at {sig_tx_id}: {e}")))
            }
        }
    }
}
