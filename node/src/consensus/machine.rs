//! The replica's pure core: raft-rs's `RawNode` plus everything Synod derives from the Raft log — the Merkle
//! history and signatures, the committed and speculative KV states, commit as the service reports it, snapshot
//! points and reconfiguration. No sockets, disks or clocks: the shell feeds messages, ticks and the time, persists
//! what [`Core::ready`] hands out, and reports back with [`Core::on_persisted`] (raft-rs's async `Ready` loop).
//!
//! ```text
//!  commit_tx (primary) ─▶ ledger entry (private writes sealed) ─▶ RawNode::propose ─▶ history (leaf) + state
//!  step(msg) / tick ───▶ RawNode ─▶ sync_log: history follows the Raft log (appends, truncations, snapshots)
//!  ready() ─▶ messages, entries + hard state to persist, committed entries ─▶ committed_state, ledger, RocksDB
//!                                                       signature committed ─▶ service commit = that tx id
//! ```
//!
//! Invariants (checked, not assumed): every entry's seqno/view is its Raft index/term; a signature's root equals
//! the Merkle root over every entry before it (checked on every node, for every signature); the service commit is
//! always a committed signature; the speculative state is only ever ahead of the committed one on the primary.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, Snapshot, SnapshotMetadata,
};
use raft::{GetEntriesContext, RawNode, StateRole};
use synod_core::cert::PrivateKey;
use synod_core::hash::Digest;
use synod_core::ledger::{
    check_signature_shape, make_entry, signature_write_set, verify_signature_crypto, LedgerEntry,
    SignatureRecord, Transaction, WriteSet, FRAME_HEADER, KIND_SIGNATURE, KIND_TX,
};
use synod_core::maps;
use synod_core::merkle::{MerkleTree, ProofStep};
use synod_core::receipt::{JsonReceipt, LeafComponents, ProofElement};
use synod_core::tables::{NodeInfo, NodeStatus};
use synod_core::txid::{evaluate_tx_status, TxId, TxStatus};
use synod_kv::seal::Sealer;
use synod_kv::{Conflict, State, Tx};

use crate::consensus::log_store::LogStore;
use crate::consensus::{ledger_entry_of, raft_config, raft_id, raft_logger, RaftTiming};
use crate::ledger_files::{CommittedEntry, Writes};
use crate::snapshot_codec::{self, SnapshotEvidence, SNAPSHOT_EVIDENCE};

/// `cs` with its id lists sorted. raft-rs builds them from hash sets, so their order depends on how a node came by
/// its configuration (a joiner's differed from the others'); snapshot files must be byte-identical on every node,
/// or a node's own snapshot never matches the primary's evidence and is never committed (found by `synod-sim`).
fn canonical_conf_state(cs: &ConfState) -> ConfState {
    let mut cs = cs.clone();
    cs.voters.sort_unstable();
    cs.learners.sort_unstable();
    cs.voters_outgoing.sort_unstable();
    cs.learners_next.sort_unstable();
    cs
}

/// Ticks between snapshot points forced for a member no offered snapshot can catch up (50 ticks: 2.5 s by default).
const FORCED_SNAPSHOT_TICKS: u32 = 50;
/// Marks of the primary's speculative state kept at most (see `Core::marks`): one per Ready, and a Ready's
/// entries commit within a few of them; past this, new Readies take none and their writes are applied instead.
const MARKS_MAX: usize = 64;

/// Claims digest of a transaction that registers no application claims (CCF's "no claims" is all zeroes).
pub const NO_CLAIMS: Digest = [0u8; 32];

/// Errors of the core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The transaction read something a transaction ordered since has changed; run it again.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// Only the primary orders writes.
    #[error("this node is not the primary")]
    NotPrimary,
    /// The primary holds as many ordered but uncommitted bytes as it may (`--uncommitted-bytes-max`): nothing
    /// was ordered; retry once replication catches up.
    #[error("too many ordered transactions are waiting to commit")]
    Busy,
    /// Sealing or unsealing private writes failed.
    #[error("sealing: {0}")]
    Seal(#[from] synod_kv::seal::SealError),
    /// Building a COSE signature failed.
    #[error("COSE: {0}")]
    Cose(#[from] synod_core::receipt::cose::CoseError),
    /// An entry of the log is not one a correct primary could have written.
    #[error("bad entry at seqno {seqno}: {reason}")]
    BadEntry {
        /// Where.
        seqno: u64,
        /// What is wrong.
        reason: String,
    },
    /// raft-rs refused.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The operation does not apply to the state as it is now (a retired node cannot be added back).
    #[error("{0}")]
    Refused(String),
    /// An invariant does not hold; the node must stop rather than write a wrong ledger.
    #[error("invariant violated: {0}")]
    Invariant(String),
}

/// Why a receipt cannot be produced.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptUnavailable {
    /// The transaction is not committed (yet, or ever): its status says which.
    #[error("transaction {0} is {1:?}, not Committed")]
    NotCommitted(TxId, TxStatus),
    /// A signature transaction's proof is its own signature: it has a JSON receipt only.
    #[error("{0} is a signature transaction: it has a JSON receipt only (its signature is the proof)")]
    SignatureTransaction(TxId),
    /// This node started from a snapshot after the transaction.
    #[error("{0} precedes this node's snapshot at seqno {1}; ask a node that holds it")]
    BeforeSnapshot(TxId, u64),
    /// The transaction's history was flushed from memory: its receipt is rebuilt from the ledger files.
    #[error("{0} is no longer in memory; its receipt is read back from the ledger files")]
    Flushed(TxId),
    /// Building the proof failed (an internal error).
    #[error("{0}")]
    Internal(String),
}

/// The keys the core signs with.
pub struct Keys {
    /// This node's key; signs Merkle roots in signature transactions.
    pub node_key: PrivateKey,
    /// This node's certificate (PEM), endorsed by the service identity.
    pub node_cert_pem: String,
    /// Hex SHA-256 of the node's public key DER.
    pub node_id: String,
    /// The service identity's key; signs the COSE signature over each root.
    pub service_key: PrivateKey,
    /// The service certificate (DER).
    pub service_cert_der: Vec<u8>,
    /// This node's RSA encryption key: opens the ledger secret a rekey encrypts to it (`None` in simulations,
    /// which never rekey).
    pub encryption_key: Option<synod_core::recovery::EncryptionPrivateKey>,
    /// The service key (PKCS#8 PEM), to renew certificates with (empty in simulations, which never renew).
    pub service_key_pem: String,
}

/// Tunables of the core.
#[derive(Clone, Copy, Debug)]
pub struct CoreConfig {
    /// A signature transaction follows at most this many transactions.
    pub sig_tx_interval: u64,
    /// The primary ends a ledger chunk at the first signature past this many bytes.
    pub ledger_chunk_bytes: u64,
    /// The primary marks a snapshot point at the first signature this many seqnos after the last (0: never).
    pub snapshot_tx_interval: u64,
    /// Raft timing.
    pub timing: RaftTiming,
}

/// When the primary signs besides every `sig_tx_interval` transactions (see [`Core::signature_due`]).
#[derive(Clone, Copy, Debug)]
pub struct SignatureTiming {
    /// At least this often while anything is unsigned.
    pub interval_ms: u64,
    /// Sooner, while fewer than this many signatures are uncommitted...
    pub in_flight_max: usize,
    /// ...but not sooner than this after the last one.
    pub min_gap_ms: u64,
}

/// What a signature transaction signed, kept for receipts.
#[derive(Clone, Debug)]
pub struct SigInfo {
    /// The signature transaction's id.
    pub tx_id: TxId,
    /// The Merkle root over every entry before it.
    pub root: Digest,
    /// The record written to `public:ccf.internal.signatures`.
    pub record: SignatureRecord,
    /// The COSE Sign1 written to `public:ccf.internal.cose_signatures`.
    pub cose: Vec<u8>,
}

/// Everything a snapshot at a snapshot point needs; serializing it is the shell's (slow) job.
pub struct SnapshotJob {
    /// The state at the snapshot point (an O(1) clone).
    pub state: State,
    /// View of the snapshot point.
    pub view: u64,
    /// Merkle frontier over seqnos 1..=seqno.
    pub frontier: Vec<Digest>,
    /// View history up to the snapshot point.
    pub views: Vec<(u64, u64)>,
    /// Raft configuration at the snapshot point.
    pub conf_state: ConfState,
}

impl SnapshotJob {
    /// The snapshot file's bytes (deterministic: every node writes the same file for the same point).
    pub fn encode(&self, sealer: &Sealer) -> Result<Vec<u8>, snapshot_codec::SnapshotError> {
        let conf = self
            .conf_state
            .write_to_bytes()
            .map_err(|e| snapshot_codec::SnapshotError::Malformed(format!("configuration: {e}")))?;
        snapshot_codec::encode(&self.state, self.view, conf, &self.frontier, &self.views, sealer)
    }
}

/// Things the shell reacts to, besides a `Ready`.
pub enum Event {
    /// Take a snapshot (every node does, at the same seqnos).
    SnapshotDue(SnapshotJob),
    /// The snapshot at `seqno` with this digest is committed (its evidence at `evidence_seqno` is).
    SnapshotCommitted {
        /// Snapshot seqno.
        seqno: u64,
        /// Seqno of the evidence transaction.
        evidence_seqno: u64,
        /// Hex digest.
        digest: String,
    },
    /// The nodes table or the Raft configuration changed: refresh peer addresses.
    NodesChanged,
    /// The ledger secret schedule changed (a rekey appended or rolled back): keep it (the node's own record, read
    /// at restart).
    SecretsChanged(Vec<(u64, synod_kv::seal::LedgerSecret)>),
}

/// A snapshot this node installed from the primary (Raft caught it up with one).
pub struct InstalledSnapshot {
    /// The snapshot file's bytes.
    pub bytes: Vec<u8>,
    /// Its decoded state.
    pub state: State,
    /// Raft's snapshot metadata (index = seqno).
    pub meta: SnapshotMetadata,
}

/// One round of work for the shell (raft-rs's `Ready`, with Synod's additions).
#[derive(Default)]
pub struct CoreReady {
    /// Pass to [`Core::on_persisted`] once persisted.
    pub number: u64,
    /// Send now.
    pub messages: Vec<Message>,
    /// Send only after persisting.
    pub persisted_messages: Vec<Message>,
    /// Append to the stored log (overwriting any stored suffix from the first one's index).
    pub entries: Vec<Entry>,
    /// New hard state to store.
    pub hard_state: Option<HardState>,
    /// New configuration to store.
    pub conf_state: Option<ConfState>,
    /// Index of the last configuration change in `conf_state`.
    pub conf_index: Option<u64>,
    /// A snapshot to install before anything else.
    pub installed: Option<InstalledSnapshot>,
    /// Committed entries, in order, for the ledger and the stored state.
    pub committed: Vec<CommittedEntry>,
    /// Whether what is stored must be durable before the Ready counts as persisted: entries, a new term or vote,
    /// a configuration (raft-rs's `must_sync`, as etcd's `MustSync`). A hard state whose commit alone moved may
    /// reach the disk with the next synced write: a node that loses it learns the commit again from the primary.
    pub must_sync: bool,
}

/// The result of committing a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was written; the id is the version that was read.
    ReadOnly(TxId),
    /// Written as this transaction (Pending until a committed signature covers it).
    Written(TxId),
}

impl Outcome {
    /// The transaction id either way.
    pub fn tx_id(&self) -> TxId {
        match self {
            Outcome::ReadOnly(id) | Outcome::Written(id) => *id,
        }
    }
}

const FLAG_SIGNATURE: u8 = 1;
const FLAG_CHUNK_END: u8 = 2;
const FLAG_SNAPSHOT: u8 = 4;

/// Per-entry history of this node's log since its base: Merkle tree, write-set digests, frame sizes, flags and
/// signatures (plus the views since genesis, one pair per view). The base moves forward as committed history is
/// flushed ([`History::flush_to`]): what lies before it is read back from the ledger files when needed, so memory
/// follows the entries since the last flush, not the ledger's length.
struct History {
    tree: MerkleTree,
    /// (view, first seqno in that view), increasing.
    views: Vec<(u64, u64)>,
    digests: Vec<Digest>,
    frame_lens: Vec<u32>,
    flags: Vec<u8>,
    sigs: BTreeMap<u64, SigInfo>,
    /// Signatures appended from the primary whose cryptographic checks are not made yet: off the append, so that
    /// the acknowledgement never waits for them; made once the turn that appended them has handed out its disk
    /// write and messages ([`Core::verify_appended`]), while the disk and the peers work, or at the latest when they
    /// commit ([`Core::verify_deferred`]); no receipt uses a signature before it is committed.
    unverified: BTreeSet<u64>,
    /// The last snapshot point and chunk end at or before the base (the flags before it are gone).
    flushed_snapshot: u64,
    flushed_chunk_end: u64,
}

impl History {
    /// A history starting after `tree`'s base, which is a snapshot point (or 0).
    fn new(tree: MerkleTree, views: Vec<(u64, u64)>) -> History {
        let base = tree.base();
        History {
            tree,
            views,
            digests: Vec::new(),
            frame_lens: Vec::new(),
            flags: Vec::new(),
            sigs: BTreeMap::new(),
            unverified: BTreeSet::new(),
            flushed_snapshot: base,
            flushed_chunk_end: base,
        }
    }

    /// Forgets the entries up to `seqno` (committed, and a signature, so the new base keeps its signature):
    /// the tree keeps its frontier, and roots and proofs past `seqno` are unchanged.
    fn flush_to(&mut self, seqno: u64) {
        let Some(n) = self
            .local(seqno)
            .map(|i| i + 1)
            .filter(|&n| n <= self.digests.len())
        else {
            return;
        };
        if let Some(i) = self.flags[..n].iter().rposition(|f| f & FLAG_SNAPSHOT != 0) {
            self.flushed_snapshot = self.base() + 1 + i as u64;
        }
        if let Some(i) = self.flags[..n].iter().rposition(|f| f & FLAG_CHUNK_END != 0) {
            self.flushed_chunk_end = self.base() + 1 + i as u64;
        }
        self.digests.drain(..n);
        self.frame_lens.drain(..n);
        self.flags.drain(..n);
        self.sigs = self.sigs.split_off(&seqno);
        self.unverified = self.unverified.split_off(&seqno);
        self.tree.flush(seqno);
        debug_assert_eq!(self.base(), seqno);
        debug_assert_eq!(self.digests.len() as u64, self.last() - self.base());
    }

    fn base(&self) -> u64 {
        self.tree.base()
    }

    fn last(&self) -> u64 {
        self.tree.len()
    }

    fn local(&self, seqno: u64) -> Option<usize> {
        usize::try_from(seqno.checked_sub(self.base() + 1)?).ok()
    }

    fn view_of(&self, seqno: u64) -> Option<u64> {
        if seqno == 0 || seqno > self.last() {
            return None;
        }
        let idx = self.views.partition_point(|(_, first)| *first <= seqno);
        self.views.get(idx.checked_sub(1)?).map(|(v, _)| *v)
    }

    fn append(&mut self, tx_id: TxId, leaf: Digest, digest: Digest, frame_len: u32, flags: u8) {
        if self.views.last().map(|(v, _)| *v) != Some(tx_id.view) {
            self.views.push((tx_id.view, tx_id.seqno));
        }
        self.tree.append(leaf);
        self.digests.push(digest);
        self.frame_lens.push(frame_len);
        self.flags.push(flags);
    }

    fn truncate(&mut self, last: u64) {
        let last = last.max(self.base());
        self.tree.truncate(last);
        let keep = (last - self.base()) as usize;
        self.digests.truncate(keep);
        self.frame_lens.truncate(keep);
        self.flags.truncate(keep);
        self.sigs.split_off(&(last + 1));
        self.unverified.split_off(&(last + 1));
        while self.views.last().is_some_and(|(_, first)| *first > last) {
            self.views.pop();
        }
    }

    fn last_flagged(&self, flag: u8) -> u64 {
        let flushed = match flag {
            FLAG_SNAPSHOT => self.flushed_snapshot,
            FLAG_CHUNK_END => self.flushed_chunk_end,
            _ => self.base(),
        };
        self.flags
            .iter()
            .rposition(|f| f & flag != 0)
            .map_or(flushed, |i| self.base() + 1 + i as u64)
    }

    fn bytes_since_chunk_end(&self) -> u64 {
        let from = self.last_flagged(FLAG_CHUNK_END) - self.base();
        self.frame_lens[from as usize..].iter().map(|&l| l as u64).sum()
    }

    /// Every signature entry is in `sigs` (and the snapshot base is one), so this is a lookup, not a scan.
    fn last_signature(&self) -> u64 {
        self.sigs
            .keys()
            .next_back()
            .map_or(self.base(), |&s| s.max(self.base()))
    }
}

/// The replica core (see the module docs).
pub struct Core {
    raft: RawNode<LogStore>,
    id: u64,
    keys: Keys,
    sealer: Sealer,
    cfg: CoreConfig,
    history: History,
    committed_state: State,
    state: State,
    is_leader: bool,
    lineage: u64,
    /// The primary's own uncommitted writes, by seqno (with the view they were made in).
    own: BTreeMap<u64, (u64, Arc<Writes>)>,
    /// Uncommitted entries as they were decoded and checked when appended, by seqno (with their view): Raft's
    /// entry at that seqno and view is the same one when it commits, which then need not decode it and recompute
    /// its commit evidence a second time.
    decoded: BTreeMap<u64, (u64, LedgerEntry, Transaction)>,
    /// The primary's speculative state as it was after some of its Readies (O(1) clones, increasing versions,
    /// each holding exactly the log up to its version): the committed state becomes one when the commit reaches
    /// it instead of applying the same writes a second time ([`Core::settle`]). At most `MARKS_MAX`.
    marks: VecDeque<State>,
    commit: TxId,
    /// Snapshot evidence seen committed by Raft, waiting for a signature: evidence seqno → evidence.
    evidence: BTreeMap<u64, SnapshotEvidence>,
    /// A snapshot received from the primary, decoded, to hand to the shell with the next ready.
    installing: Option<InstalledSnapshot>,
    /// A member can only be caught up with a snapshot newer than any taken: the next signature is a snapshot
    /// point, even on an idle service.
    snapshot_wanted: bool,
    /// The number of a Ready that installs a snapshot and is not durable yet.
    install_in_flight: Option<u64>,
    /// Ticks before another snapshot point may be forced for a stranded member.
    forced_snapshot_wait: u32,
    /// Index of the last snapshot received from the primary and decoded.
    installed_index: u64,
    /// A configuration restore brought up to date, for the shell to persist.
    restored_conf: Option<(ConfState, u64)>,
    /// Configuration changes waiting until Raft accepts them (one may be pending at a time).
    conf_queue: VecDeque<ConfChange>,
    events: Vec<Event>,
    /// The last committed chunk end: history up to it is flushed at the next one (so memory holds about two
    /// chunks of history, and receipts for the latest chunk never touch the disk).
    flush_candidate: u64,
    /// A node left the configuration while this node led: rekey, so what follows is sealed under a secret the
    /// removed node never held.
    rekey_due: bool,
    /// When the primary last looked for certificates to renew (seconds).
    renewal_checked_secs: i64,
    /// The seqno this node's ledger files start after (0, or the snapshot it joined or was caught up from):
    /// receipts for flushed transactions after it are rebuilt from those files.
    ledger_base: u64,
    /// The last signature seen by [`Core::signature_due`] and when (in the caller's milliseconds).
    sig_clock: (u64, u64),
}

/// Maps an error about the entry at `seqno` to [`CoreError::BadEntry`].
fn bad_entry<E: std::fmt::Display>(seqno: u64) -> impl Fn(E) -> CoreError {
    move |e| CoreError::BadEntry {
        seqno,
        reason: e.to_string(),
    }
}

/// A snapshot the core cannot start from, as [`CoreError::BadEntry`].
fn bad_snapshot(reason: impl std::fmt::Display) -> CoreError {
    CoreError::BadEntry {
        seqno: 0,
        reason: format!("snapshot: {reason}"),
    }
}

fn writes_of(tx: &Transaction, sealer: &Sealer) -> Result<Writes, CoreError> {
    let bad = |reason: String| CoreError::BadEntry {
        seqno: tx.seqno,
        reason,
    };
    let public = tx.public_write_set().map_err(|e| bad(e.to_string()))?;
    let private = if tx.private_sealed.is_empty() {
        WriteSet::default()
    } else {
        let clear = sealer
            .unseal(tx.tx_id(), &tx.private_sealed)
            .map_err(|e| bad(format!("private writes: {e}")))?;
        WriteSet::decode(clear.as_slice()).map_err(|e| bad(format!("private writes: {e}")))?
    };
    Ok(Writes { public, private })
}

/// Follows a rekey (`crate::governance::recovery::rekey`) in the entry at `seqno`: the entries after it open and are sealed
/// under the new secret, which the entry carries encrypted to this node. Returns whether the schedule changed.
fn follow_rekey(sealer: &Sealer, keys: &Keys, tx: &Transaction) -> Result<bool, CoreError> {
    if !tx.may_write_public(maps::ENCRYPTED_LEDGER_SECRETS) {
        return Ok(false);
    }
    let bad = |reason: String| CoreError::BadEntry {
        seqno: tx.seqno,
        reason,
    };
    let public = tx.public_write_set().map_err(|e| bad(e.to_string()))?;
    match crate::governance::recovery::rekeyed_secret(&public, &keys.node_id, keys.encryption_key.as_ref()) {
        Ok(Some(secret)) => {
            sealer.rekey(tx.seqno + 1, secret);
            tracing::info!(
                seqno = tx.seqno,
                "ledger rekeyed: later entries are sealed under the new secret"
            );
            Ok(true)
        }
        Ok(None) if sealer.schedule().iter().any(|(from, _)| *from == tx.seqno + 1) => Ok(false),
        Ok(None) => {
            // A node the rekey left out (retired as it happened): it cannot open what follows, and stops there.
            tracing::error!(
                seqno = tx.seqno,
                "the ledger was rekeyed without this node: it cannot follow the service past this entry"
            );
            Ok(false)
        }
        Err(e) => Err(bad(format!("rekey: {e}"))),
    }
}

fn flags_of(tx: &Transaction) -> u8 {
    let mut f = 0;
    if tx.kind == KIND_SIGNATURE {
        f |= FLAG_SIGNATURE;
    }
    if tx.chunk_end || tx.snapshot_point {
        f |= FLAG_CHUNK_END;
    }
    if tx.snapshot_point {
        f |= FLAG_SNAPSHOT;
    }
    f
}

/// Reads a signature transaction's record and checks it against the root it must sign, with the auditor's check:
/// node signature, the node's endorsement and the service's COSE signature (so a receipt built from it verifies).
fn check_signature(
    tx_id: TxId,
    public: &WriteSet,
    expected_root: Option<Digest>,
    service_cert_der: &[u8],
) -> Result<SigInfo, String> {
    let info = shape_signature(tx_id, public, expected_root)?;
    verify_sig_info(&info, service_cert_der)?;
    Ok(info)
}

/// The cryptographic half of [`check_signature`], which [`Core::verify_deferred`] runs at commit.
fn verify_sig_info(info: &SigInfo, service_cert_der: &[u8]) -> Result<(), String> {
    verify_signature_crypto(
        &info.record,
        &info.cose,
        &info.root,
        info.tx_id,
        Some(service_cert_der),
    )
    .map_err(|e| e.to_string())
}

/// [`check_signature`] without the cryptography (see [`History::unverified`]).
fn shape_signature(tx_id: TxId, public: &WriteSet, expected_root: Option<Digest>) -> Result<SigInfo, String> {
    let expected_root = expected_root.ok_or("signature over an empty log")?;
    let shaped = check_signature_shape(public, tx_id, &expected_root).map_err(|e| e.to_string())?;
    Ok(SigInfo {
        tx_id,
        root: shaped.root,
        record: shaped.record,
        cose: shaped.cose_sign1,
    })
}

/// When the signatures of an appended signature transaction are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SigCheck {
    /// Before it is appended: entries read back at start-up.
    Now,
    /// When it commits ([`Core::verify_deferred`]): entries from the primary, whose acknowledgement would
    /// otherwise wait for the checks (~2 ms on P-384).
    AtCommit,
}

#[cfg(test)]
mod check_signature_tests {
    use super::*;
    use synod_core::cert;

    // A signature write set as the primary makes it, with `mutate` applied to its COSE Sign1.
    fn signature(tx_id: TxId, root: &Digest, mutate: impl FnOnce(&mut Vec<u8>)) -> (WriteSet, Vec<u8>) {
        let service = cert::generate_self_signed("service", true).unwrap();
        let node = cert::generate_endorsed("n0", &[], &["localhost".into()], &service).unwrap();
        let service_der = cert::pem_to_der(&service.cert_pem).unwrap();
        let node_der = cert::pem_to_der(&node.cert_pem).unwrap();
        let node_key = cert::signing_key_from_pem(&node.key_pem).unwrap();
        let service_key = cert::signing_key_from_pem(&service.key_pem).unwrap();
        let record = SignatureRecord::sign(
            &node_key,
            &cert::public_key_id_hex(&node_der).unwrap(),
            &node.cert_pem,
            tx_id,
            root,
        );
        let mut cose =
            synod_core::receipt::cose::sign_root(root, &service_key, &service_der, tx_id, 1).unwrap();
        mutate(&mut cose);
        (signature_write_set(&record, &cose, None).unwrap(), service_der)
    }

    #[test]
    fn node_refuses_a_signature_whose_cose_signature_is_forged() {
        let (tx_id, root) = (TxId::new(2, 9), [7u8; 32]);
        let (genuine, service_der) = signature(tx_id, &root, |_| {});
        let info = check_signature(tx_id, &genuine, Some(root), &service_der).unwrap();
        assert_eq!(info.root, root);
        // The node signature is intact; only the service's COSE signature over the root is wrong.
        let (forged, service_der) = signature(tx_id, &root, |cose| {
            let last = cose.len() - 1;
            cose[last] ^= 0x01;
        });
        let err = check_signature(tx_id, &forged, Some(root), &service_der).unwrap_err();
        assert!(err.contains("COSE"), "{err}");
        // Deferred to commit, the same signature passes the shape check and fails the cryptographic one.
        let info = shape_signature(tx_id, &forged, Some(root)).unwrap();
        let err = verify_sig_info(&info, &service_der).unwrap_err();
        assert!(err.contains("COSE"), "{err}");
        assert!(
            shape_signature(tx_id, &forged, Some([8u8; 32])).is_err(),
            "a wrong root needs no crypto"
        );
    }
}

/// What starting a new service records in its first transaction.
pub struct Genesis {
    /// `public:ccf.gov.service.info`.
    pub service_info: serde_json::Value,
    /// (user id, certificate PEM).
    pub users: Vec<(String, String)>,
    /// (member id, certificate PEM).
    pub members: Vec<(String, String)>,
    /// This node's entry in `public:ccf.gov.nodes.info`.
    pub node_info: serde_json::Value,
    /// Initial `public:ccf.gov.nodes.code_ids`: measurement → status.
    pub code_ids: Vec<String>,
    /// The constitution (JavaScript module).
    pub constitution: String,
    /// Development mode (no members): hex SHA-256 of the join token joining nodes must present.
    pub join_token_digest: Option<String>,
    /// (member id, RSA encryption public key PEM) of the founding recovery members.
    pub member_encryption_keys: Vec<(String, String)>,
    /// The ledger secret, of which the recovery members get shares at genesis.
    pub ledger_secret: synod_kv::seal::LedgerSecret,
}

/// Where a restored core comes from.
pub struct Restore {
    /// The Raft log as persisted.
    pub log: LogStore,
    /// The state as persisted (its version is the last applied seqno).
    pub state: State,
    /// Ledger entries from the ledger files, starting right after `base`.
    pub ledger: Vec<LedgerEntry>,
    /// The snapshot `ledger` starts after, if it does not start at 1: its bytes.
    pub base_snapshot: Option<Vec<u8>>,
    /// The seqno the ledger files start after (at most the base snapshot's: earlier files are not replayed but
    /// still serve receipts).
    pub ledger_base: u64,
}

impl Core {
    fn assemble(
        raft: RawNode<LogStore>,
        keys: Keys,
        sealer: Sealer,
        cfg: CoreConfig,
        history: History,
        state: State,
    ) -> Core {
        let id = raft.raft.id;
        Core {
            raft,
            id,
            keys,
            sealer,
            cfg,
            history,
            committed_state: state.clone(),
            state,
            is_leader: false,
            lineage: 0,
            own: BTreeMap::new(),
            decoded: BTreeMap::new(),
            marks: VecDeque::new(),
            commit: TxId::default(),
            evidence: BTreeMap::new(),
            installing: None,
            snapshot_wanted: false,
            install_in_flight: None,
            forced_snapshot_wait: 0,
            installed_index: 0,
            restored_conf: None,
            conf_queue: VecDeque::new(),
            events: Vec::new(),
            flush_candidate: 0,
            rekey_due: false,
            renewal_checked_secs: 0,
            ledger_base: 0,
            sig_clock: (0, 0),
        }
    }

    /// Creates a new service with this node as its only voter, and orders the genesis transaction and its
    /// signature (`1.1` is the first primary's empty entry, `1.2` genesis, `1.3` its signature).
    pub fn new_service(
        keys: Keys,
        sealer: Sealer,
        cfg: CoreConfig,
        genesis: &Genesis,
        now_secs: i64,
    ) -> Result<Core, CoreError> {
        let id = raft_id(&keys.node_id);
        let raft = RawNode::new(
            &raft_config(id, 0, cfg.timing),
            LogStore::new_cluster(id),
            &raft_logger(),
        )?;
        let mut core = Core::assemble(
            raft,
            keys,
            sealer,
            cfg,
            History::new(MerkleTree::new(), Vec::new()),
            State::default(),
        );
        core.raft.campaign()?;
        core.after_raft()?;
        if !core.is_leader {
            return Err(CoreError::Invariant(
                "a single-voter service did not elect itself".into(),
            ));
        }
        let mut tx = Tx::new(core.state.clone());
        tx.put(
            maps::SERVICE_INFO,
            b"",
            genesis.service_info.to_string().as_bytes(),
        );
        for (id, pem) in &genesis.users {
            tx.put(maps::USERS_CERTS, id.as_bytes(), pem.as_bytes());
        }
        for (id, pem) in &genesis.members {
            tx.put(maps::MEMBERS_CERTS, id.as_bytes(), pem.as_bytes());
            // The founding members are the consortium that opens the service: Active from the start.
            tx.put(
                maps::MEMBERS_INFO,
                id.as_bytes(),
                br#"{"status":"Active","member_data":null}"#,
            );
        }
        tx.put(maps::CONSTITUTION, b"", genesis.constitution.as_bytes());
        tx.put(
            maps::NODES_INFO,
            core.keys.node_id.as_bytes(),
            genesis.node_info.to_string().as_bytes(),
        );
        for code in &genesis.code_ids {
            tx.put(maps::NODES_CODE_IDS, code.as_bytes(), br#""AllowedToJoin""#);
        }
        if let Some(digest) = &genesis.join_token_digest {
            tx.put(maps::JOIN_TOKEN_DIGEST, b"", digest.as_bytes());
        }
        for (id, pem) in &genesis.member_encryption_keys {
            tx.put(maps::MEMBERS_ENCRYPTION_KEYS, id.as_bytes(), pem.as_bytes());
        }
        crate::governance::recovery::refresh_shares(&mut tx, &genesis.ledger_secret, Some(1), true)
            .map_err(|e| CoreError::Invariant(format!("issuing recovery shares: {e}")))?;
        core.commit_tx(tx, now_secs)?;
        core.emit_signature(now_secs)?;
        // The first voter is in this node's stored configuration only; a node that joins and replays the log
        // from 1 learns it from this entry (Raft accepts it once the primary's first entry is applied).
        core.queue_conf_change(id, ConfChangeType::AddNode);
        Ok(core)
    }

    /// A node that has joined (or is joining) an existing service, with an empty log or one starting at a
    /// snapshot it was given.
    pub fn joining(
        keys: Keys,
        sealer: Sealer,
        cfg: CoreConfig,
        snapshot_bytes: Option<&[u8]>,
    ) -> Result<Core, CoreError> {
        let id = raft_id(&keys.node_id);
        match snapshot_bytes {
            None => {
                let raft = RawNode::new(
                    &raft_config(id, 0, cfg.timing),
                    LogStore::default(),
                    &raft_logger(),
                )?;
                let history = History::new(MerkleTree::new(), Vec::new());
                Ok(Core::assemble(raft, keys, sealer, cfg, history, State::default()))
            }
            Some(bytes) => {
                let decoded = snapshot_codec::decode(bytes, &sealer).map_err(bad_snapshot)?;
                Self::joining_from_snapshot(keys, sealer, cfg, bytes, decoded)
            }
        }
    }

    /// [`Core::joining`] from a snapshot the caller decoded already (decoding a large one is most of the work).
    pub fn joining_from_snapshot(
        keys: Keys,
        sealer: Sealer,
        cfg: CoreConfig,
        bytes: &[u8],
        decoded: snapshot_codec::Decoded,
    ) -> Result<Core, CoreError> {
        let id = raft_id(&keys.node_id);
        let (history, state, meta) = Self::from_decoded(decoded)?;
        let mut log = LogStore::default();
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.data = bytes.to_vec().into();
        log.install_snapshot(snap);
        let applied = state.version();
        let raft = RawNode::new(&raft_config(id, applied, cfg.timing), log, &raft_logger())?;
        let mut core = Core::assemble(raft, keys, sealer, cfg, history, state);
        core.commit = core.last_committed_signature();
        core.ledger_base = applied;
        Ok(core)
    }

    /// A recovered service: the only voter of a new configuration over the previous service's public state (a
    /// snapshot at its last signature), primary at once, whose first transaction `recovery` writes (see
    /// `crate::governance::recovery::write_recovery`) and is signed like genesis. Returns the core and that transaction's id.
    pub fn recovered_service(
        keys: Keys,
        sealer: Sealer,
        cfg: CoreConfig,
        (bytes, decoded): (&[u8], snapshot_codec::Decoded),
        ledger_base: u64,
        now_secs: i64,
        recovery: impl FnOnce(&mut Tx) -> Result<(), String>,
    ) -> Result<(Core, TxId), CoreError> {
        let mut core = Self::joining_from_snapshot(keys, sealer, cfg, bytes, decoded)?;
        // The previous service's ledger files are copied (from 1, or from after the snapshot they continue):
        // receipts of its transactions come from them.
        core.ledger_base = ledger_base;
        core.raft.campaign()?;
        core.after_raft()?;
        if !core.is_leader {
            return Err(CoreError::Invariant(
                "a recovered single-voter service did not elect itself".into(),
            ));
        }
        let mut tx = Tx::new(core.state.clone());
        recovery(&mut tx).map_err(CoreError::Invariant)?;
        let outcome = core.commit_tx(tx, now_secs)?;
        core.emit_signature(now_secs)?;
        Ok((core, outcome.tx_id()))
    }

    fn from_snapshot_bytes(
        bytes: &[u8],
        sealer: &Sealer,
    ) -> Result<(History, State, SnapshotMetadata), CoreError> {
        let decoded = snapshot_codec::decode(bytes, sealer).map_err(bad_snapshot)?;
        Self::from_decoded(decoded)
    }

    fn from_decoded(
        decoded: snapshot_codec::Decoded,
    ) -> Result<(History, State, SnapshotMetadata), CoreError> {
        let seqno = decoded.file.seqno;
        let tree = MerkleTree::from_frontier(seqno, &decoded.frontier).map_err(bad_snapshot)?;
        let views = decoded
            .file
            .views
            .iter()
            .map(|v| (v.view, v.first_seqno))
            .collect();
        let meta = snapshot_codec::raft_metadata(seqno, decoded.file.view, &decoded.file.conf_state)
            .map_err(bad_snapshot)?;
        let mut history = History::new(tree, views);
        // The snapshot point is a signature: its record is in the state, so receipts and commit work from it.
        if let Some(record) = decoded.state.get(maps::SIGNATURES, b"") {
            if let Ok(record) = serde_json::from_slice::<SignatureRecord>(record) {
                if record.seqno == seqno {
                    if let (Ok(root), Some(cose)) = (
                        record.root_digest(),
                        decoded.state.get(maps::COSE_SIGNATURES, b""),
                    ) {
                        let tx_id = TxId::new(record.view, record.seqno);
                        history.sigs.insert(
                            seqno,
                            SigInfo {
                                tx_id,
                                root,
                                record,
                                cose: cose.to_vec(),
                            },
                        );
                    }
                }
            }
        }
        Ok((history, decoded.state, meta))
    }

    /// Rebuilds the core after a restart from the persisted Raft log, the persisted state and the ledger files.
    /// Returns the committed entries the stores had not recorded yet (the shell writes them again, idempotently).
    pub fn restore(
        keys: Keys,
        sealer: Sealer,
        cfg: CoreConfig,
        mut r: Restore,
    ) -> Result<(Core, Vec<CommittedEntry>), CoreError> {
        let id = raft_id(&keys.node_id);
        let base_snapshot = r.base_snapshot;
        let (mut history, _, _) = match &base_snapshot {
            Some(bytes) => Self::from_snapshot_bytes(bytes, &sealer)?,
            None => (
                History::new(MerkleTree::new(), Vec::new()),
                State::default(),
                SnapshotMetadata::default(),
            ),
        };
        let mut entries: Vec<(LedgerEntry, Transaction)> = Vec::new();
        for le in r.ledger {
            let tx = le.decode_transaction().map_err(bad_entry(0))?;
            entries.push((le, tx));
        }
        let ledger_last = history.base() + entries.len() as u64;
        let from_log = (ledger_last + 1).max(r.log.first());
        if from_log > ledger_last + 1 {
            return Err(CoreError::Invariant(format!(
                "the ledger ends at {ledger_last} but the Raft log starts at {}",
                r.log.first()
            )));
        }
        for idx in from_log..=r.log.last() {
            let e = r
                .log
                .entry(idx)
                .ok_or_else(|| CoreError::Invariant(format!("log entry {idx} missing")))?;
            let (le, tx) = ledger_entry_of(e, &sealer).map_err(bad_entry(idx))?;
            entries.push((le, tx));
        }
        let service_der = keys.service_cert_der.clone();
        for (i, (le, tx)) in entries.iter().enumerate() {
            let seqno = history.base() + 1 + i as u64;
            if tx.seqno != seqno {
                return Err(CoreError::BadEntry {
                    seqno,
                    reason: format!("found seqno {}", tx.seqno),
                });
            }
            Self::append_history(&mut history, le, tx, &service_der, None, SigCheck::Now)?;
            follow_rekey(&sealer, &keys, tx)?;
        }
        // The stored state holds committed entries only, so it may lead the commit index read back: after a power
        // cut the Raft log's hard state, synced only with entries, can be behind what RocksDB kept (and the
        // ledger files behind both). What the state holds is committed; the ledger catches up to it below.
        let commit_index = r
            .log
            .hard_state()
            .commit
            .max(r.state.version())
            .min(history.last());
        if commit_index > r.log.hard_state().commit {
            let hs = HardState {
                commit: commit_index,
                ..r.log.hard_state().clone()
            };
            r.log.set_hard_state(hs);
        }
        let mut state = r.state;
        let ledger_catch_up = Self::catch_up(
            &entries,
            history.base(),
            &mut state,
            ledger_last,
            commit_index,
            &sealer,
        )?;
        // Configuration changes committed before the crash but never applied to Raft (the commit index and the
        // entries can be persisted one Ready before they are handed out as committed): apply them now, in order.
        let pending_conf =
            Self::missed_conf_changes(&entries, history.base(), r.log.conf_index() + 1, commit_index)?;
        let single_voter = r.log.conf_state().voters == vec![id] && r.log.conf_state().learners.is_empty();
        let raft = RawNode::new(&raft_config(id, commit_index, cfg.timing), r.log, &raft_logger())?;
        let mut core = Core::assemble(raft, keys, sealer, cfg, history, state);
        // The snapshot history starts from is committed (this node's own, or one a primary sent): offer it, so
        // that a follower behind this log's start is sent a snapshot it can continue from. The shell offers a
        // newer committed one if it has one.
        if let Some(bytes) = base_snapshot {
            core.offer_snapshot(bytes)?;
        }
        for (seqno, cc) in pending_conf {
            let cs = core.raft.apply_conf_change(&cc)?;
            core.raft.mut_store().set_conf_state(cs.clone());
            core.raft.mut_store().set_conf_index(seqno);
            tracing::info!(seqno, voters = ?cs.voters, learners = ?cs.learners, "applied a configuration change missed before a restart");
            core.restored_conf = Some((cs, seqno));
        }
        core.commit = core.last_committed_signature();
        core.ledger_base = r.ledger_base;
        core.flush_candidate = core.history.base();
        if single_voter {
            // Nobody else can be primary: do not wait an election timeout.
            core.raft.campaign()?;
        }
        core.after_raft()?;
        Ok((core, ledger_catch_up))
    }

    /// The committed entries the stores missed before a restart: those the state does not reflect yet are applied
    /// to `state` and written with their writes; those only the ledger files lack are written alone.
    fn catch_up(
        entries: &[(LedgerEntry, Transaction)],
        base: u64,
        state: &mut State,
        ledger_last: u64,
        commit_index: u64,
        sealer: &Sealer,
    ) -> Result<Vec<CommittedEntry>, CoreError> {
        let mut replay = Vec::new();
        let first_replay = state.version() + 1;
        for seqno in first_replay..=commit_index {
            let i = (seqno - base - 1) as usize;
            let (le, tx) = entries
                .get(i)
                .ok_or_else(|| CoreError::Invariant(format!("no entry {seqno} to replay")))?;
            let writes = writes_of(tx, sealer)?;
            state
                .apply(seqno, writes.maps())
                .map_err(|e| CoreError::Invariant(e.to_string()))?;
            replay.push(CommittedEntry::new(le, tx, Arc::new(writes)));
        }
        // Entries between the ledger files' end and the commit index that the state already reflected still
        // need writing to the ledger.
        let mut ledger_catch_up = Vec::new();
        for seqno in (ledger_last + 1)..first_replay.min(commit_index + 1) {
            let i = (seqno - base - 1) as usize;
            if let Some((le, tx)) = entries.get(i) {
                ledger_catch_up.push(CommittedEntry::new(le, tx, Arc::new(Writes::default())));
            }
        }
        ledger_catch_up.extend(replay);
        Ok(ledger_catch_up)
    }

    /// The configuration changes among the committed entries from `from` on (those after the log's last
    /// applied one).
    fn missed_conf_changes(
        entries: &[(LedgerEntry, Transaction)],
        base: u64,
        from: u64,
        commit_index: u64,
    ) -> Result<Vec<(u64, ConfChange)>, CoreError> {
        let mut pending_conf = Vec::new();
        for seqno in from.max(base + 1)..=commit_index {
            let i = (seqno - base - 1) as usize;
            let Some((_, tx)) = entries.get(i) else { continue };
            let public = tx.public_write_set().map_err(bad_entry(seqno))?;
            let cc_bytes = public
                .maps
                .iter()
                .find(|m| m.name == crate::consensus::RECONFIGURATION)
                .and_then(|m| m.writes.first())
                .and_then(|w| w.value.clone());
            if let Some(bytes) = cc_bytes {
                let cc = ConfChange::parse_from_bytes(&bytes).map_err(bad_entry(seqno))?;
                pending_conf.push((seqno, cc));
            }
        }
        Ok(pending_conf)
    }

    fn last_committed_signature(&self) -> TxId {
        let applied = self.committed_state.version();
        self.history
            .sigs
            .range(..=applied)
            .next_back()
            .map(|(_, s)| s.tx_id)
            .unwrap_or_default()
    }

    /// Appends an entry to the history; a signature is checked, unless it is `own`, the one this node just made
    /// over its own tree (checking it would only re-verify what it signed): its shape at once, its signatures as
    /// `check` says.
    fn append_history(
        history: &mut History,
        le: &LedgerEntry,
        tx: &Transaction,
        service_der: &[u8],
        own: Option<SigInfo>,
        check: SigCheck,
    ) -> Result<(), CoreError> {
        let tx_id = tx.tx_id();
        let bad = |reason: String| CoreError::BadEntry {
            seqno: tx_id.seqno,
            reason,
        };
        if tx.kind == KIND_SIGNATURE {
            let info = match own {
                Some(info) => info,
                None => {
                    let public = tx.public_write_set().map_err(|e| bad(e.to_string()))?;
                    match check {
                        SigCheck::Now => {
                            check_signature(tx_id, &public, history.tree.root(), service_der).map_err(bad)?
                        }
                        SigCheck::AtCommit => {
                            let info = shape_signature(tx_id, &public, history.tree.root()).map_err(bad)?;
                            history.unverified.insert(tx_id.seqno);
                            info
                        }
                    }
                }
            };
            history.sigs.insert(tx_id.seqno, info);
        } else if tx.kind != KIND_TX {
            return Err(bad(format!("unknown transaction kind {}", tx.kind)));
        }
        let (write_set, leaf) = le.write_set_digest_and_leaf().map_err(|e| bad(e.to_string()))?;
        let frame_len = (FRAME_HEADER + le.encoded_len()) as u32;
        history.append(tx_id, leaf, write_set, frame_len, flags_of(tx));
        Ok(())
    }

    // ---- driving Raft ----

    /// Advances Raft's logical clock by one tick (elections, heartbeats), and retries queued reconfigurations.
    pub fn tick(&mut self) -> Result<(), CoreError> {
        // A node whose snapshot install is not durable yet does not campaign: raft-rs already counts the
        // snapshot as stored but not as applied, and before campaigning it would read the entries the snapshot
        // replaced, which are gone, and stop (found by synod-sim).
        if self.install_in_flight.is_none() {
            self.raft.tick();
        }
        self.after_raft()?;
        if self.is_leader {
            self.propose_queued_conf_changes();
            self.add_missing_learners();
            self.want_snapshot_for_stranded_members();
            self.promote_caught_up_learners();
            self.remove_retired_nodes();
        }
        Ok(())
    }

    /// Hands a message from a peer to Raft. Messages Raft refuses (stale, unknown peer) are dropped.
    pub fn step(&mut self, msg: Message) -> Result<(), CoreError> {
        if self.install_in_flight.is_some() && msg.get_msg_type() == raft::eraftpb::MessageType::MsgTimeoutNow
        {
            return Ok(()); // a leadership transfer would campaign too (see `tick`)
        }
        if let Err(e) = self.raft.step(msg) {
            tracing::debug!("raft dropped a message: {e}");
        }
        self.after_raft()
    }

    /// The shell's word on a snapshot message sent to `to`: delivered, or dropped (Raft then sends it again
    /// instead of leaving the follower paused until the next election).
    pub fn report_snapshot(&mut self, to: u64, delivered: bool) -> Result<(), CoreError> {
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raft.report_snapshot(to, status);
        self.after_raft()
    }

    /// Whether [`Core::ready`] has work.
    pub fn has_ready(&self) -> bool {
        self.raft.has_ready()
    }

    /// Whether Raft committed entries that no Ready handed out yet (a peer's answer just moved the commit).
    pub fn commit_waiting(&self) -> bool {
        let log = &self.raft.raft.raft_log;
        log.committed > log.applied
    }

    /// Raft's work for the shell, if any. The caller must persist it, send the messages, then call
    /// [`Core::on_persisted`] with its number.
    pub fn ready(&mut self) -> Result<Option<CoreReady>, CoreError> {
        if !self.raft.has_ready() {
            return Ok(None);
        }
        let mut rd = self.raft.ready();
        let mut out = CoreReady {
            number: rd.number(),
            must_sync: rd.must_sync(),
            ..Default::default()
        };
        if !rd.snapshot().is_empty() {
            self.install_in_flight = Some(rd.number());
            let snap = rd.snapshot().clone();
            self.raft.mut_store().install_snapshot(snap);
            out.installed = self.installing.take();
        }
        if !rd.entries().is_empty() {
            self.raft
                .mut_store()
                .append(rd.entries())
                .map_err(|e| CoreError::Raft(raft::Error::Store(e)))?;
            out.entries = rd.take_entries();
        }
        if let Some(hs) = rd.hs() {
            self.raft.mut_store().set_hard_state(hs.clone());
            out.hard_state = Some(hs.clone());
        }
        out.messages = super::merge_appends(rd.take_messages());
        out.persisted_messages = rd.take_persisted_messages();
        let committed = rd.take_committed_entries();
        self.raft.advance_append_async(rd);
        self.apply_committed(committed, &mut out)?;
        out.must_sync |= out.conf_state.is_some() || out.conf_index.is_some() || out.installed.is_some();
        self.after_raft()?;
        Ok(Some(out))
    }

    /// The shell persisted the ready numbered `number` (and every one before it).
    pub fn on_persisted(&mut self, number: u64) -> Result<(), CoreError> {
        self.raft.on_persist_ready(number);
        if self.install_in_flight.is_some_and(|n| n <= number) {
            self.install_in_flight = None;
        }
        // An installed snapshot is applied (its state is the committed state) once it is durable: tell raft-rs, or
        // it counts the entries the snapshot replaced as unapplied and reads them — compacted — before it
        // campaigns, and stops (found by synod-sim).
        let log = &self.raft.raft.raft_log;
        if self.installed_index > log.applied && self.installed_index <= log.persisted.min(log.committed) {
            self.raft.advance_apply_to(self.installed_index);
        }
        self.after_raft()
    }

    /// A configuration that [`Core::restore`] brought up to date (with its change index), to persist once.
    pub fn take_restored_conf(&mut self) -> Option<(ConfState, u64)> {
        self.restored_conf.take()
    }

    /// The hard state as the log store holds it (after a snapshot install: commit at least the snapshot's seqno).
    pub fn stored_hard_state(&self) -> HardState {
        self.raft.store().hard_state().clone()
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Brings history and states in line with Raft after anything that may have changed its log or role.
    fn after_raft(&mut self) -> Result<(), CoreError> {
        self.sync_log()?;
        // A primary that applied its own removal steps down, as etcd's StepDownOnRemoval: raft-rs's leader would
        // panic outside its own progress set. It happens when a retired primary that handed over is elected again
        // before its successor commits the removal (found by synod-sim).
        if self.raft.raft.state == StateRole::Leader && self.raft.raft.prs().get(self.id).is_none() {
            tracing::warn!(
                view = self.raft.raft.term,
                "this primary left the configuration: stepping down"
            );
            let term = self.raft.raft.term;
            self.raft.raft.become_follower(term, raft::INVALID_ID);
        }
        let is_leader = self.raft.raft.state == StateRole::Leader;
        if is_leader != self.is_leader {
            self.is_leader = is_leader;
            self.lineage += 1;
            self.state = self.committed_state.clone();
            self.state.new_lineage(self.lineage);
            self.own.clear();
            self.marks.clear();
            tracing::info!(view = self.raft.raft.term, primary = is_leader, "role changed");
        }
        if self.is_leader {
            self.catch_up_state()?;
            let newest = self
                .marks
                .back()
                .map_or(self.committed_state.version(), State::version);
            if self.state.version() == self.history.last()
                && self.state.version() > newest
                && self.marks.len() < MARKS_MAX
            {
                self.marks.push_back(self.state.clone());
            }
        }
        Ok(())
    }

    /// Makes the history match Raft's log: installs a received snapshot, drops an overwritten suffix, appends.
    fn sync_log(&mut self) -> Result<(), CoreError> {
        let snapshot = self.raft.raft.raft_log.unstable_snapshot().clone();
        if let Some(snap) = snapshot {
            let index = snap.get_metadata().index;
            if index > self.installed_index && index > self.committed_state.version() {
                self.installed_index = index;
                let (history, state, meta) = Self::from_snapshot_bytes(&snap.data, &self.sealer)?;
                self.history = history;
                self.ledger_base = index;
                self.committed_state = state.clone();
                self.state = state.clone();
                self.own.clear();
                self.decoded.clear();
                self.marks.clear();
                self.commit = self.last_committed_signature();
                self.installing = Some(InstalledSnapshot {
                    bytes: snap.data.to_vec(),
                    state,
                    meta,
                });
                tracing::info!(seqno = index, "installing a snapshot from the primary");
            }
        }
        let log = &self.raft.raft.raft_log;
        let last = log.last_index();
        let mut keep = self.history.last().min(last);
        while keep > self.history.base() {
            match log.term(keep) {
                Ok(term) if Some(term) != self.history.view_of(keep) => keep -= 1,
                _ => break, // matching, or compacted (compacted entries are committed and never diverge)
            }
        }
        if keep < self.history.last() {
            if keep < self.committed_state.version() {
                return Err(CoreError::Invariant(format!(
                    "Raft overwrote committed entry {} (applied {})",
                    keep + 1,
                    self.committed_state.version()
                )));
            }
            tracing::info!(
                from = keep + 1,
                to = self.history.last(),
                "rolling back an uncommitted suffix"
            );
            self.history.truncate(keep);
            self.own.split_off(&(keep + 1));
            self.decoded.split_off(&(keep + 1));
            while self.marks.back().is_some_and(|m| m.version() > keep) {
                self.marks.pop_back();
            }
            if self.sealer.truncate(keep) {
                self.events.push(Event::SecretsChanged(self.sealer.schedule()));
            }
            if self.state.version() > keep {
                self.lineage += 1;
                self.state = self.committed_state.clone();
                self.state.new_lineage(self.lineage);
            }
        }
        if last > keep {
            let ents =
                self.raft
                    .raft
                    .raft_log
                    .slice(keep + 1, last + 1, None, GetEntriesContext::empty(false))?;
            for e in &ents {
                let (le, tx) = ledger_entry_of(e, &self.sealer).map_err(bad_entry(e.index))?;
                Self::append_history(
                    &mut self.history,
                    &le,
                    &tx,
                    &self.keys.service_cert_der,
                    None,
                    SigCheck::AtCommit,
                )?;
                // Before the next entry: its commit evidence may be under the secret this one brings.
                self.follow_rekey(&tx)?;
                self.decoded.insert(e.index, (e.term, le, tx));
            }
        }
        debug_assert_eq!(
            self.history.last(),
            self.raft.raft.raft_log.last_index(),
            "the history mirrors Raft's log, entry for entry"
        );
        Ok(())
    }

    /// On the primary, applies log entries the speculative state has not seen (entries Raft made itself, or
    /// everything after the commit when it just became primary).
    fn catch_up_state(&mut self) -> Result<(), CoreError> {
        let from = self.state.version() + 1;
        let last = self.history.last();
        if from > last {
            return Ok(());
        }
        let ents = self
            .raft
            .raft
            .raft_log
            .slice(from, last + 1, None, GetEntriesContext::empty(false))?;
        for e in &ents {
            let (_, tx) = ledger_entry_of(e, &self.sealer).map_err(bad_entry(e.index))?;
            let writes = writes_of(&tx, &self.sealer)?;
            self.state
                .apply(e.index, writes.maps())
                .map_err(|err| CoreError::Invariant(err.to_string()))?;
            self.own.insert(e.index, (e.term, Arc::new(writes)));
        }
        debug_assert_eq!(
            self.state.version(),
            last,
            "the primary's speculative state has seen its whole log"
        );
        Ok(())
    }

    /// Applies a committed configuration change to Raft and hands the new configuration out to persist.
    fn apply_conf_entry(&mut self, e: &Entry, out: &mut CoreReady) -> Result<(), CoreError> {
        let cc = ConfChange::parse_from_bytes(&e.data).map_err(bad_entry(e.index))?;
        let cs = self.raft.apply_conf_change(&cc)?;
        self.raft.mut_store().set_conf_state(cs.clone());
        self.raft.mut_store().set_conf_index(e.index);
        out.conf_index = Some(e.index);
        tracing::info!(seqno = e.index, voters = ?cs.voters, learners = ?cs.learners, "configuration changed");
        if cc.get_change_type() == ConfChangeType::RemoveNode && self.is_leader {
            self.rekey_due = true;
        }
        out.conf_state = Some(cs);
        self.events.push(Event::NodesChanged);
        Ok(())
    }

    fn apply_committed(&mut self, entries: Vec<Entry>, out: &mut CoreReady) -> Result<(), CoreError> {
        let mut last_applied = None;
        // Committed writes not applied to the committed state yet: `settle` applies them, or takes a mark.
        let mut unsettled: Vec<(u64, Arc<Writes>)> = Vec::new();
        for e in entries {
            last_applied = Some(e.index);
            if e.index <= self.committed_state.version() {
                // Covered by an installed snapshot or by the stored state, whose writes are in already. A
                // configuration change in it that Raft has not applied yet (the state can be stored ahead of the
                // hard state that committed it) still must be, in order, exactly once.
                if matches!(e.get_entry_type(), EntryType::EntryConfChange)
                    && e.index > self.raft.store().conf_index()
                {
                    self.apply_conf_entry(&e, out)?;
                }
                continue;
            }
            let (le, tx) = match self.decoded.remove(&e.index) {
                Some((view, le, tx)) if view == e.term => (le, tx),
                _ => ledger_entry_of(&e, &self.sealer).map_err(bad_entry(e.index))?,
            };
            let writes = match self.own.remove(&e.index) {
                Some((view, w)) if view == e.term => w,
                _ => Arc::new(writes_of(&tx, &self.sealer)?),
            };
            unsettled.push((e.index, writes.clone()));
            let tx_id = TxId::new(e.term, e.index);
            if matches!(e.get_entry_type(), EntryType::EntryConfChange) {
                self.apply_conf_entry(&e, out)?;
            }
            // The allowed measurements decide which peers the channels talk to, as the nodes table does.
            // The service info too: a renewed service certificate is picked up the same way.
            if writes.touches(maps::NODES_INFO)
                || writes.touches(maps::NODES_CODE_IDS)
                || writes.touches(maps::SERVICE_INFO)
            {
                self.events.push(Event::NodesChanged);
            }
            if writes.touches(SNAPSHOT_EVIDENCE) {
                self.settle(&mut unsettled)?;
                if let Some(ev) = self
                    .committed_state
                    .get(SNAPSHOT_EVIDENCE, b"")
                    .and_then(|v| serde_json::from_slice::<SnapshotEvidence>(v).ok())
                {
                    self.evidence.insert(e.index, ev);
                }
            }
            if tx.kind == KIND_SIGNATURE && (tx.chunk_end || tx.snapshot_point) {
                if self.flush_candidate > self.history.base() {
                    self.history.flush_to(self.flush_candidate);
                }
                self.flush_candidate = tx_id.seqno;
            }
            if tx.kind == KIND_SIGNATURE {
                self.verify_deferred(tx_id.seqno)?;
                if tx_id.seqno < self.commit.seqno {
                    return Err(CoreError::Invariant(format!(
                        "commit going back from {} to {tx_id}",
                        self.commit
                    )));
                }
                self.commit = tx_id;
                let done: Vec<u64> = self.evidence.range(..tx_id.seqno).map(|(k, _)| *k).collect();
                for evidence_seqno in done {
                    if let Some(ev) = self.evidence.remove(&evidence_seqno) {
                        self.events.push(Event::SnapshotCommitted {
                            seqno: ev.seqno,
                            evidence_seqno,
                            digest: ev.digest,
                        });
                    }
                }
            }
            if tx.snapshot_point {
                self.settle(&mut unsettled)?;
                let frontier = self
                    .history
                    .tree
                    .frontier_at(e.index)
                    .map_err(|err| CoreError::Invariant(format!("snapshot frontier: {err}")))?;
                self.events.push(Event::SnapshotDue(SnapshotJob {
                    state: self.committed_state.clone(),
                    view: e.term,
                    frontier,
                    views: self.history.views.clone(),
                    conf_state: canonical_conf_state(self.raft.store().conf_state()),
                }));
            }
            out.committed.push(CommittedEntry::new(&le, &tx, writes));
        }
        self.settle(&mut unsettled)?;
        if let Some(applied) = last_applied {
            // Entries committed without being appended here (covered by the stored state) leave theirs behind.
            while self
                .decoded
                .first_key_value()
                .is_some_and(|(seqno, _)| *seqno <= applied)
            {
                self.decoded.pop_first();
            }
            self.raft.advance_apply_to(applied);
        }
        debug_assert!(
            self.commit.seqno <= self.committed_state.version(),
            "the service commit {} is a signature the committed state has applied ({})",
            self.commit,
            self.committed_state.version()
        );
        Ok(())
    }

    /// Brings the committed state to the last of `unsettled` (committed writes in seqno order, right after it):
    /// the newest mark they reach replaces it (on the primary, its own writes are then applied once, not twice),
    /// and the writes after that mark are applied.
    fn settle(&mut self, unsettled: &mut Vec<(u64, Arc<Writes>)>) -> Result<(), CoreError> {
        let Some(&(last, _)) = unsettled.last() else {
            return Ok(());
        };
        let mut mark = None;
        while self.marks.front().is_some_and(|m| m.version() <= last) {
            mark = self.marks.pop_front();
        }
        let mut from = 0;
        if let Some(mut m) = mark.filter(|m| m.version() > self.committed_state.version()) {
            m.new_lineage(self.committed_state.lineage());
            from = unsettled.partition_point(|(seqno, _)| *seqno <= m.version());
            self.committed_state = m;
        }
        for (seqno, writes) in unsettled.drain(..).skip(from) {
            self.committed_state
                .apply(seqno, writes.maps())
                .map_err(|err| CoreError::Invariant(format!("applying committed {seqno}: {err}")))?;
        }
        Ok(())
    }

    /// Runs the deferred cryptographic checks of every signature appended so far. The executor calls it once a
    /// turn's commands are carried out: a backup's checks (two P-384 verifications, ~0.3 ms) then overlap the
    /// disk write and the primary's round trip instead of delaying the commit's publication.
    pub fn verify_appended(&mut self) -> Result<(), CoreError> {
        self.verify_deferred(u64::MAX)
    }

    /// Runs the deferred cryptographic checks of the signatures up to `through`, at the latest as it commits: a
    /// signature that fails stops this node (as it would have at append), before anything it signs is reported
    /// committed.
    fn verify_deferred(&mut self, through: u64) -> Result<(), CoreError> {
        while let Some(seqno) = self.history.unverified.first().copied().filter(|s| *s <= through) {
            self.history.unverified.remove(&seqno);
            let info = self.history.sigs.get(&seqno).ok_or_else(|| {
                CoreError::Invariant(format!("deferred signature {seqno} is not in the history"))
            })?;
            verify_sig_info(info, &self.keys.service_cert_der)
                .map_err(|reason| CoreError::BadEntry { seqno, reason })?;
        }
        Ok(())
    }

    // ---- the primary's work ----

    /// Validates and orders a transaction (primary only). A conflict means: run it again on a new snapshot.
    pub fn commit_tx(&mut self, tx: Tx, now_secs: i64) -> Result<Outcome, CoreError> {
        if tx.is_read_only() {
            return Ok(Outcome::ReadOnly(self.tx_id_at(tx.read_version())));
        }
        if !self.is_leader {
            return Err(CoreError::NotPrimary);
        }
        tx.validate(&self.state)?;
        let (public, private) = tx.into_write_sets();
        let tx_id = self.propose_entry(KIND_TX, Writes { public, private }, false, false, None)?;
        if self.unsigned() >= self.cfg.sig_tx_interval {
            self.emit_signature(now_secs)?;
        }
        Ok(Outcome::Written(tx_id))
    }

    fn propose_entry(
        &mut self,
        kind: u32,
        writes: Writes,
        chunk_end: bool,
        snapshot_point: bool,
        own_signature: Option<SigInfo>,
    ) -> Result<TxId, CoreError> {
        let tx_id = TxId::new(self.raft.raft.term, self.raft.raft.raft_log.last_index() + 1);
        if self.history.last() + 1 != tx_id.seqno {
            return Err(CoreError::Invariant(format!(
                "history at {} proposing {tx_id}",
                self.history.last()
            )));
        }
        let private_sealed = if writes.private.maps.is_empty() {
            Vec::new()
        } else {
            self.sealer
                .seal(tx_id, &writes.private.encode_to_vec())
                .map_err(CoreError::Seal)?
        };
        let transaction = Transaction {
            view: tx_id.view,
            seqno: tx_id.seqno,
            kind,
            public_writes: writes.public.encode_to_vec(),
            private_sealed,
            chunk_end,
            snapshot_point,
        };
        let entry = make_entry(&transaction, &self.sealer.commit_evidence(tx_id), &NO_CLAIMS);
        let body = entry.encode_to_vec();
        if let Err(e) = self.raft.propose(Vec::new(), body) {
            return Err(match e {
                // raft-rs drops a leader's proposal during a leadership transfer, or when it would take the
                // uncommitted entries past max_uncommitted_size: only the latter is back-pressure.
                raft::Error::ProposalDropped
                    if self.raft.raft.state == StateRole::Leader
                        && self.raft.raft.lead_transferee.is_none() =>
                {
                    CoreError::Busy
                }
                raft::Error::ProposalDropped => CoreError::NotPrimary,
                other => CoreError::Raft(other),
            });
        }
        let log = &self.raft.raft.raft_log;
        if log.last_index() != tx_id.seqno || log.last_term() != tx_id.view {
            return Err(CoreError::Invariant(format!(
                "proposed {tx_id} but Raft's log ends at {}.{}",
                log.last_term(),
                log.last_index()
            )));
        }
        Self::append_history(
            &mut self.history,
            &entry,
            &transaction,
            &self.keys.service_cert_der,
            own_signature,
            SigCheck::Now,
        )?;
        self.follow_rekey(&transaction)?;
        self.state
            .apply(tx_id.seqno, writes.maps())
            .map_err(|e| CoreError::Invariant(format!("applying {tx_id}: {e}")))?;
        self.own.insert(tx_id.seqno, (tx_id.view, Arc::new(writes)));
        self.decoded.insert(tx_id.seqno, (tx_id.view, entry, transaction));
        Ok(tx_id)
    }

    /// Orders a signature transaction over the current root if anything is unsigned (primary only).
    pub fn emit_signature(&mut self, now_secs: i64) -> Result<Option<TxId>, CoreError> {
        if self.unsigned() == 0 && !self.snapshot_wanted {
            return Ok(None);
        }
        let root = self
            .history
            .tree
            .root()
            .ok_or_else(|| CoreError::Invariant("signing an empty tree".into()))?;
        let tx_id = TxId::new(self.raft.raft.term, self.history.last() + 1);
        let record = SignatureRecord::sign(
            &self.keys.node_key,
            &self.keys.node_id,
            &self.keys.node_cert_pem,
            tx_id,
            &root,
        );
        let cose = synod_core::receipt::cose::sign_root(
            &root,
            &self.keys.service_key,
            &self.keys.service_cert_der,
            tx_id,
            now_secs,
        )
        .map_err(CoreError::Cose)?;
        let frontier = self.history.tree.frontier();
        let own = SigInfo {
            tx_id,
            root,
            record: record.clone(),
            cose: cose.clone(),
        };
        let public = signature_write_set(&record, &cose, Some(&frontier))
            .map_err(|e| CoreError::Invariant(format!("signature record: {e}")))?;
        // Governance's trigger_snapshot / trigger_ledger_chunk: a trigger written after the last snapshot point
        // (or chunk end) takes effect at this signature.
        let triggered = |name: &[u8], since: u64| {
            self.state
                .entry(maps::GOV_TRIGGERS, name)
                .is_some_and(|e| e.version > since)
        };
        let last_snapshot = self.history.last_flagged(FLAG_SNAPSHOT);
        let snapshot_point = (self.cfg.snapshot_tx_interval > 0
            && tx_id.seqno - last_snapshot >= self.cfg.snapshot_tx_interval)
            || triggered(b"snapshot", last_snapshot)
            || self.snapshot_wanted;
        let chunk_end = snapshot_point
            || self.history.bytes_since_chunk_end() >= self.cfg.ledger_chunk_bytes
            || triggered(b"ledger_chunk", self.history.last_flagged(FLAG_CHUNK_END));
        let proposed = self.propose_entry(
            KIND_SIGNATURE,
            Writes {
                public,
                private: WriteSet::default(),
            },
            chunk_end,
            snapshot_point,
            Some(own),
        );
        let appended = match proposed {
            Ok(tx_id) => tx_id,
            // Nothing was ordered: the next signature timer tries again (once replication made room, or under
            // the next primary).
            Err(CoreError::Busy | CoreError::NotPrimary) => return Ok(None),
            Err(e) => return Err(e),
        };
        if appended != tx_id {
            return Err(CoreError::Invariant(format!(
                "signature ordered as {appended}, expected {tx_id}"
            )));
        }
        if snapshot_point {
            self.snapshot_wanted = false;
        }
        Ok(Some(tx_id))
    }

    /// The shell wrote the snapshot at `seqno`: the primary records its digest (the evidence) in the ledger.
    pub fn snapshot_written(
        &mut self,
        seqno: u64,
        digest: &Digest,
        now_secs: i64,
    ) -> Result<Option<TxId>, CoreError> {
        if !self.is_leader {
            return Ok(None);
        }
        let evidence = SnapshotEvidence {
            seqno,
            digest: hex::encode(digest),
        };
        let mut tx = Tx::new(self.state.clone());
        tx.put(
            SNAPSHOT_EVIDENCE,
            b"",
            &serde_json::to_vec(&evidence).map_err(|e| CoreError::Invariant(e.to_string()))?,
        );
        match self.commit_tx(tx, now_secs) {
            Ok(outcome) => Ok(Some(outcome.tx_id())),
            // Not ordered (leadership moving, or the uncommitted bound reached): this snapshot stays
            // uncommitted and the next snapshot point makes another.
            Err(CoreError::Busy | CoreError::NotPrimary) => {
                tracing::warn!(
                    seqno,
                    "could not order the snapshot's evidence now; it is skipped"
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    // ---- reconfiguration (primary) ----

    /// Records a node in the nodes table and adds it to Raft as a learner (it becomes a voter once caught up
    /// and trusted).
    pub fn add_node(
        &mut self,
        node_id: &str,
        info: &serde_json::Value,
        now_secs: i64,
    ) -> Result<TxId, CoreError> {
        let mut tx = Tx::new(self.state.clone());
        // A node retired meanwhile (say, while its join poll was in flight) is not brought back.
        let current: Option<serde_json::Value> = tx
            .get(maps::NODES_INFO, node_id.as_bytes())
            .and_then(|v| serde_json::from_slice(&v).ok());
        if current.is_some_and(|c| c["status"] == NodeStatus::Retired) {
            return Err(CoreError::Refused(format!("node {node_id} is retired")));
        }
        tx.put(maps::NODES_INFO, node_id.as_bytes(), info.to_string().as_bytes());
        let tx_id = self.commit_tx(tx, now_secs)?.tx_id();
        self.queue_conf_change(raft_id(node_id), ConfChangeType::AddLearnerNode);
        Ok(tx_id)
    }

    /// Marks a node Retired, as governance's `remove_node` does; it leaves Raft once that is committed.
    pub fn retire_node(&mut self, node_id: &str, now_secs: i64) -> Result<TxId, CoreError> {
        let mut tx = Tx::new(self.state.clone());
        let mut info: serde_json::Value = tx
            .get(maps::NODES_INFO, node_id.as_bytes())
            .and_then(|v| serde_json::from_slice(&v).ok())
            .ok_or_else(|| CoreError::Invariant(format!("no node {node_id}")))?;
        info["status"] = NodeStatus::Retired.into();
        tx.put(maps::NODES_INFO, node_id.as_bytes(), info.to_string().as_bytes());
        // As governance's remove_node: only the record. Once it is committed, the primary removes the node
        // (`remove_retired_nodes`), or hands over first if it is the node.
        Ok(self.commit_tx(tx, now_secs)?.tx_id())
    }

    fn queue_conf_change(&mut self, node: u64, change_type: ConfChangeType) {
        let mut cc = ConfChange {
            node_id: node,
            ..Default::default()
        };
        cc.set_change_type(change_type);
        self.conf_queue.push_back(cc);
        self.propose_queued_conf_changes();
    }

    /// Whether a queued change still changes anything: the queue may outlive the state it was made for (a change
    /// queued by a previous term of leadership, a node retired or already added since).
    fn conf_change_needed(&self, cc: &ConfChange) -> bool {
        let cs = self.raft.store().conf_state();
        let in_config = cs.voters.contains(&cc.node_id) || cs.learners.contains(&cc.node_id);
        // The speculative state: the node record that queued the change may not be committed yet.
        let status = Self::node_status_in(&self.state, cc.node_id);
        match cc.get_change_type() {
            ConfChangeType::AddLearnerNode => !in_config && status == Some(NodeStatus::Trusted),
            ConfChangeType::AddNode => status != Some(NodeStatus::Retired),
            // A primary never removes itself: raft-rs's leader panics once it is out of its own progress set
            // (found by synod-sim). It hands over first (`remove_retired_nodes`) and the next primary removes it.
            ConfChangeType::RemoveNode => in_config && cc.node_id != self.id,
        }
    }

    fn propose_queued_conf_changes(&mut self) {
        // Raft takes one configuration change at a time (a second one would be turned into an empty entry): the
        // rest wait until the pending one is applied.
        while let Some(cc) = self.conf_queue.front().cloned() {
            if !self.is_leader || self.raft.raft.has_pending_conf() {
                return;
            }
            if !self.conf_change_needed(&cc) {
                self.conf_queue.pop_front();
                continue;
            }
            let before = self.raft.raft.raft_log.last_index();
            if self.raft.propose_conf_change(Vec::new(), cc).is_err() {
                return;
            }
            let last = self.raft.raft.raft_log.last_index();
            let accepted = last > before
                && self
                    .raft
                    .raft
                    .raft_log
                    .slice(last, last + 1, None, GetEntriesContext::empty(false))
                    .ok()
                    .and_then(|e| {
                        e.first()
                            .map(|e| e.get_entry_type() == EntryType::EntryConfChange)
                    })
                    .unwrap_or(false);
            if let Err(e) = self.after_raft() {
                tracing::error!("after a configuration change: {e}");
            }
            if !accepted {
                return;
            }
            self.conf_queue.pop_front();
        }
    }

    /// Trusted nodes of the committed nodes table that are not in the configuration become learners. The change
    /// the primary queued when it added the node lives only in its memory: if leadership moved before it
    /// committed, the node (already holding the service's secrets) would wait outside the configuration for ever.
    fn add_missing_learners(&mut self) {
        let cs = self.raft.store().conf_state().clone();
        let Some(nodes) = self.committed_state.map(maps::NODES_INFO) else {
            return;
        };
        let missing: Vec<u64> = nodes
            .iter()
            .filter_map(|(k, e)| {
                let id = raft_id(std::str::from_utf8(k).ok()?);
                let info: serde_json::Value = serde_json::from_slice(&e.value).ok()?;
                (info["status"] == NodeStatus::Trusted
                    && !cs.voters.contains(&id)
                    && !cs.learners.contains(&id))
                .then_some(id)
            })
            .filter(|id| !self.conf_queue.iter().any(|cc| cc.node_id == *id))
            .collect();
        for id in missing {
            tracing::info!(
                node = id,
                "a Trusted node is outside the configuration: adding it as a learner"
            );
            self.queue_conf_change(id, ConfChangeType::AddLearnerNode);
        }
    }

    /// raft-rs refuses a snapshot whose configuration leaves the receiving node out. A member added after the
    /// newest snapshot point, whose next entries this log no longer holds (it joined from an older snapshot, or
    /// without one, and the log was compacted meanwhile), can only be caught up with a snapshot taken since its
    /// configuration change: ask for one (found by synod-sim: such a learner waited for ever on an idle service).
    fn want_snapshot_for_stranded_members(&mut self) {
        // At most once per FORCED_SNAPSHOT_TICKS: a snapshot point taken since may still be on its way to being
        // offered, or may never be (a node that skipped writing it).
        if self.snapshot_wanted {
            return;
        }
        if self.forced_snapshot_wait > 0 {
            self.forced_snapshot_wait -= 1;
            return;
        }
        let first = self.raft.store().first();
        let offered = self
            .raft
            .store()
            .offered_snapshot()
            .map(|s| s.get_metadata().get_conf_state().clone())
            .unwrap_or_default();
        let named = |id: &u64| offered.voters.contains(id) || offered.learners.contains(id);
        let stranded = self
            .raft
            .raft
            .prs()
            .iter()
            .find(|(id, pr)| **id != self.id && pr.matched + 1 < first && !named(id))
            .map(|(id, _)| *id);
        if let Some(id) = stranded {
            tracing::info!(
                node = id,
                "a member needs entries this log no longer holds: taking a snapshot at the next signature"
            );
            self.snapshot_wanted = true;
            self.forced_snapshot_wait = FORCED_SNAPSHOT_TICKS;
        }
    }

    fn promote_caught_up_learners(&mut self) {
        let committed = self.raft.raft.raft_log.committed;
        let learners: Vec<u64> = self.raft.store().conf_state().learners.clone();
        for learner in learners {
            let caught_up = self
                .raft
                .raft
                .prs()
                .get(learner)
                .is_some_and(|p| p.matched + 16 >= committed && p.matched > 0);
            let queued = self.conf_queue.iter().any(|cc| cc.node_id == learner);
            if caught_up && !queued && self.node_status_by_raft_id(learner) == Some(NodeStatus::Trusted) {
                tracing::info!(learner, "promoting a caught-up learner to voter");
                self.queue_conf_change(learner, ConfChangeType::AddNode);
            }
        }
    }

    /// Nodes the nodes table says are Retired leave Raft; a retired primary first hands over to a caught-up voter.
    fn remove_retired_nodes(&mut self) {
        let cs = self.raft.store().conf_state().clone();
        for &id in cs.voters.iter().chain(cs.learners.iter()) {
            if self.node_status_by_raft_id(id) != Some(NodeStatus::Retired) {
                continue;
            }
            if id == self.id {
                let target = cs
                    .voters
                    .iter()
                    .filter(|v| **v != self.id)
                    .max_by_key(|v| self.raft.raft.prs().get(**v).map_or(0, |p| p.matched))
                    .copied();
                if let Some(target) = target {
                    tracing::info!(to = target, "this primary was retired: handing over");
                    self.raft.transfer_leader(target);
                }
                continue;
            }
            let queued = self.conf_queue.iter().any(|cc| cc.node_id == id);
            if !queued {
                tracing::info!(node = id, "removing a retired node from the configuration");
                self.queue_conf_change(id, ConfChangeType::RemoveNode);
            }
        }
    }

    fn node_status_by_raft_id(&self, id: u64) -> Option<NodeStatus> {
        Self::node_status_in(&self.committed_state, id)
    }

    fn node_status_in(state: &State, id: u64) -> Option<NodeStatus> {
        state.map(maps::NODES_INFO)?.iter().find_map(|(k, e)| {
            let node_id = std::str::from_utf8(k).ok()?;
            if raft_id(node_id) != id {
                return None;
            }
            NodeInfo::from_slice(&e.value).map(|info| info.status)
        })
    }

    // ---- reading ----

    /// The state a transaction should run on: the speculative one on the primary, the committed one elsewhere.
    pub fn snapshot(&self) -> State {
        if self.is_leader {
            self.state.clone()
        } else {
            self.committed_state.clone()
        }
    }

    /// The committed state (Raft-committed entries applied).
    pub fn committed_state(&self) -> &State {
        &self.committed_state
    }

    /// Whether this node is the primary.
    pub fn is_primary(&self) -> bool {
        self.is_leader
    }

    /// Raft id of the primary this node knows of (0: none).
    pub fn primary(&self) -> u64 {
        self.raft.raft.leader_id
    }

    /// This node's Raft id.
    pub fn raft_id(&self) -> u64 {
        self.id
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.keys.node_id
    }

    /// The last committed transaction id (a signature).
    pub fn committed(&self) -> TxId {
        self.commit
    }

    /// The current view (Raft term).
    pub fn view(&self) -> u64 {
        self.raft.raft.term
    }

    /// The last seqno in this node's log.
    pub fn last_seqno(&self) -> u64 {
        self.history.last()
    }

    /// Raft's commit index (entries known replicated to a majority; not all are signed yet).
    pub fn raft_commit(&self) -> u64 {
        self.raft.raft.raft_log.committed
    }

    /// The seqno of the last signature in this node's log.
    pub fn last_signed_seqno(&self) -> u64 {
        self.history.last_signature()
    }

    /// The first seqno this node holds history for (after its snapshot).
    pub fn history_start(&self) -> u64 {
        self.history.base() + 1
    }

    /// Ordered transactions not covered by a signature yet (primary; 0 on a backup, which never signs).
    pub fn unsigned(&self) -> u64 {
        if self.is_leader {
            self.history.last() - self.history.last_signature()
        } else {
            0
        }
    }

    /// The Raft configuration: (voters, learners).
    pub fn configuration(&self) -> (Vec<u64>, Vec<u64>) {
        let cs = self.raft.store().conf_state();
        (cs.voters.clone(), cs.learners.clone())
    }

    /// Replication progress of every peer (primary only): (raft id, matched index).
    pub fn progress(&self) -> Vec<(u64, u64)> {
        if !self.is_leader {
            return Vec::new();
        }
        let mut p: Vec<(u64, u64)> = self
            .raft
            .raft
            .prs()
            .iter()
            .map(|(id, pr)| (*id, pr.matched))
            .collect();
        p.sort();
        p
    }

    /// Whether this node is in the Raft configuration (false once retired, or before it was added).
    pub fn is_member(&self) -> bool {
        let cs = self.raft.store().conf_state();
        cs.voters.contains(&self.id) || cs.learners.contains(&self.id)
    }

    /// The id of the transaction at `seqno` in this node's log (view 0 if unknown).
    pub fn tx_id_at(&self, seqno: u64) -> TxId {
        TxId::new(self.history.view_of(seqno).unwrap_or(0), seqno)
    }

    /// CCF's transaction status for `tx` as this node sees it.
    pub fn tx_status(&self, tx: TxId) -> TxStatus {
        evaluate_tx_status(tx, self.history.view_of(tx.seqno), self.commit)
    }

    /// The ledger entry at `seqno`, while the Raft log still holds it.
    pub fn ledger_entry(&self, seqno: u64) -> Option<LedgerEntry> {
        let e = self
            .raft
            .raft
            .raft_log
            .slice(seqno, seqno + 1, None, GetEntriesContext::empty(false))
            .ok()?;
        ledger_entry_of(e.first()?, &self.sealer).ok().map(|(le, _)| le)
    }

    /// Whether the primary should sign now, at `now_ms` (any monotonic milliseconds): something is unsigned, and
    /// either `interval_ms` passed since the last signature, or fewer than `in_flight_max` signatures await commit
    /// and `min_gap_ms` passed. So a lone write is signed at once and commits after one round of replication,
    /// while under load signatures follow each other as closely as the gap allows without piling up, and the
    /// interval bounds the worst case. The caller asks on every turn of its loop; signatures made by the
    /// transaction count (in [`Core::commit_tx`]) are noticed here and restart the clock.
    pub fn signature_due(&mut self, now_ms: u64, timing: SignatureTiming) -> bool {
        let last = self.history.last_signature();
        if last != self.sig_clock.0 {
            self.sig_clock = (last, now_ms);
        }
        if self.unsigned() == 0 && !(self.snapshot_wanted && self.is_leader) {
            return false;
        }
        let since = now_ms.saturating_sub(self.sig_clock.1);
        let in_flight = self.history.sigs.range(self.raft_commit() + 1..).count();
        since >= timing.interval_ms || (in_flight < timing.in_flight_max && since >= timing.min_gap_ms)
    }

    /// [`follow_rekey`] for an entry this core appends; a new schedule is handed out to be kept.
    fn follow_rekey(&mut self, tx: &Transaction) -> Result<(), CoreError> {
        if follow_rekey(&self.sealer, &self.keys, tx)? {
            self.events.push(Event::SecretsChanged(self.sealer.schedule()));
        }
        Ok(())
    }

    /// Rekeys the ledger if a node left the configuration (see `crate::governance::recovery::rekey`); a rekey that cannot be
    /// made (a trusted node without an encryption key) is reported, not fatal.
    pub fn rekey_if_due(&mut self, now_secs: i64) -> Result<(), CoreError> {
        if !self.rekey_due || !self.is_leader {
            return Ok(());
        }
        self.rekey_due = false;
        let mut tx = Tx::new(self.state.clone());
        let (from, latest) = self.sealer.latest();
        if let Err(e) = crate::governance::recovery::rekey(&mut tx, (from, &latest)) {
            tracing::warn!("a node left but the ledger cannot be rekeyed: {e}");
            return Ok(());
        }
        match self.commit_tx(tx, now_secs) {
            Ok(outcome) => {
                tracing::info!(tx = %outcome.tx_id(), "rekeyed the ledger after a node left");
                Ok(())
            }
            Err(CoreError::Busy | CoreError::NotPrimary | CoreError::Conflict(_)) => {
                self.rekey_due = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// On the primary, at most once a minute: renews the certificates governance gave a lifetime once a third of
    /// it is left (`crate::governance::renewal::renew_expiring`), so they never lapse while the service runs.
    pub fn renew_certificates_if_due(&mut self, now_secs: i64) -> Result<(), CoreError> {
        const EVERY_SECS: i64 = 60;
        if !self.is_leader
            || self.keys.service_key_pem.is_empty()
            || now_secs - self.renewal_checked_secs < EVERY_SECS
        {
            return Ok(());
        }
        self.renewal_checked_secs = now_secs;
        let mut tx = Tx::new(self.state.clone());
        match crate::governance::renewal::renew_expiring(&mut tx, &self.keys.service_key_pem, now_secs) {
            Ok(0) => Ok(()),
            Ok(n) => match self.commit_tx(tx, now_secs) {
                Ok(outcome) => {
                    tracing::info!(certificates = n, tx = %outcome.tx_id(), "renewed certificates before they lapse");
                    Ok(())
                }
                // Looked at again at the next check.
                Err(CoreError::Busy | CoreError::NotPrimary | CoreError::Conflict(_)) => Ok(()),
                Err(e) => Err(e),
            },
            Err(e) => {
                tracing::warn!("cannot renew certificates: {e}");
                Ok(())
            }
        }
    }

    /// Signs with the certificate `pem` from now on (governance renewed it; same key): receipts carry it.
    pub fn set_node_cert(&mut self, pem: String) {
        self.keys.node_cert_pem = pem;
    }

    /// The sealer (its schedule is shared with every clone).
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The seqno this node's ledger files start after (see [`Core::history_start`] for what memory holds).
    pub fn ledger_base(&self) -> u64 {
        self.ledger_base
    }

    /// Index of the snapshot offered to lagging followers, if any.
    pub fn offered_snapshot_index(&self) -> Option<u64> {
        self.raft
            .store()
            .offered_snapshot()
            .map(|s| s.get_metadata().index)
    }

    /// Offers a committed snapshot to followers whose next entry was compacted away. Reads only the snapshot's
    /// header: this runs under the core lock, and the caller wrote or checked the bytes.
    pub fn offer_snapshot(&mut self, bytes: Vec<u8>) -> Result<(), CoreError> {
        let meta = snapshot_codec::raft_metadata_of(&bytes).map_err(|e| CoreError::BadEntry {
            seqno: 0,
            reason: format!("snapshot: {e}"),
        })?;
        // Never an older one than offered: a follower behind this log's start needs one at least that new.
        if self
            .raft
            .store()
            .offered_snapshot()
            .is_some_and(|s| s.get_metadata().index > meta.index)
        {
            return Ok(());
        }
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.data = bytes.into();
        self.raft.mut_store().set_snapshot(snap);
        Ok(())
    }

    /// Drops Raft log entries up to `index` (a committed snapshot's seqno, already in the ledger files). Returns
    /// the new compaction point to persist, if anything was dropped.
    pub fn compact_log(&mut self, index: u64) -> Result<Option<SnapshotMetadata>, CoreError> {
        // Never past what raft-rs has applied: it reads the entries it has not applied yet again (the core skips
        // those its state already holds), and a compacted one stops it.
        if index > self.committed_state.version()
            || index > self.raft.raft.raft_log.applied
            || index < self.raft.store().first()
        {
            return Ok(None);
        }
        // raft-rs refuses a snapshot whose configuration leaves the receiving node out. A node added after the
        // snapshot point (a learner catching up) could then only be caught up by the entries after its own
        // start: keep them until a snapshot that includes it commits (found by synod-sim).
        if let Some(offered) = self.raft.store().offered_snapshot() {
            let meta = offered.get_metadata();
            let cs = meta.get_conf_state();
            let in_snapshot = |id: &u64| {
                cs.voters.contains(id) || cs.learners.contains(id) || cs.voters_outgoing.contains(id)
            };
            let now = self.raft.store().conf_state();
            if meta.index == index && !now.voters.iter().chain(&now.learners).all(in_snapshot) {
                tracing::info!(
                    seqno = index,
                    "not compacting the Raft log: a node joined after this snapshot point"
                );
                return Ok(None);
            }
        }
        self.raft
            .mut_store()
            .compact(index)
            .map_err(|e| CoreError::Raft(raft::Error::Store(e)))?;
        Ok(Some(self.raft.store().compacted().clone()))
    }

    fn covering_signature(&self, tx: TxId) -> Result<(&SigInfo, Option<Vec<ProofStep>>), ReceiptUnavailable> {
        let status = self.tx_status(tx);
        if status != TxStatus::Committed {
            return Err(ReceiptUnavailable::NotCommitted(tx, status));
        }
        if let Some(info) = self.history.sigs.get(&tx.seqno) {
            return Ok((info, None));
        }
        if tx.seqno <= self.history.base() {
            return Err(if tx.seqno > self.ledger_base {
                ReceiptUnavailable::Flushed(tx)
            } else {
                ReceiptUnavailable::BeforeSnapshot(tx, self.ledger_base)
            });
        }
        let (_, info) = self
            .history
            .sigs
            .range(tx.seqno + 1..)
            .next()
            .ok_or_else(|| ReceiptUnavailable::Internal(format!("no signature covers committed {tx}")))?;
        let path = self
            .history
            .tree
            .path(tx.seqno - 1, info.tx_id.seqno - 1)
            .map_err(|e| ReceiptUnavailable::Internal(e.to_string()))?;
        Ok((info, Some(path)))
    }

    fn leaf_components(&self, tx: TxId) -> Result<LeafComponents, ReceiptUnavailable> {
        let digest = self
            .history
            .local(tx.seqno)
            .and_then(|i| self.history.digests.get(i))
            .ok_or_else(|| ReceiptUnavailable::Internal(format!("no write set digest for {tx}")))?;
        Ok(leaf_components(digest, self.sealer.commit_evidence(tx)))
    }

    /// CCF's JSON receipt for a committed transaction.
    pub fn json_receipt(&self, tx: TxId) -> Result<JsonReceipt, ReceiptUnavailable> {
        let (info, path) = self.covering_signature(tx)?;
        let proof = match path {
            None => None,
            Some(path) => Some((path, self.leaf_components(tx)?)),
        };
        Ok(json_receipt(info, proof))
    }

    /// The COSE receipt (CCF profile) for a committed, non-signature transaction.
    pub fn cose_receipt(&self, tx: TxId) -> Result<Vec<u8>, ReceiptUnavailable> {
        let (info, path) = self.covering_signature(tx)?;
        let path = path.ok_or(ReceiptUnavailable::SignatureTransaction(tx))?;
        cose_receipt(info, &path, &self.leaf_components(tx)?)
    }

    /// The commit evidence of `tx` (revealed in its receipt).
    pub fn commit_evidence(&self, tx: TxId) -> String {
        self.sealer.commit_evidence(tx)
    }
}

/// A receipt's leaf components: the transaction's write-set digest, its commit evidence, and no claims.
pub fn leaf_components(write_set_digest: &Digest, commit_evidence: String) -> LeafComponents {
    LeafComponents {
        write_set_digest: hex::encode(write_set_digest),
        commit_evidence,
        claims_digest: hex::encode(NO_CLAIMS),
    }
}

/// CCF's JSON receipt from the covering signature and, unless the transaction is that signature, the inclusion
/// proof of its leaf.
pub fn json_receipt(info: &SigInfo, proof: Option<(Vec<ProofStep>, LeafComponents)>) -> JsonReceipt {
    let base = JsonReceipt {
        cert: info.record.cert.clone(),
        is_signature_transaction: proof.is_none(),
        leaf_components: None,
        node_id: info.record.node_id.clone(),
        proof: None,
        signature: info.record.signature.clone(),
        root: None,
        service_endorsements: None,
    };
    match proof {
        None => JsonReceipt {
            root: Some(info.record.root.clone()),
            ..base
        },
        Some((path, leaf)) => JsonReceipt {
            leaf_components: Some(leaf),
            proof: Some(path.iter().map(ProofElement::from).collect()),
            ..base
        },
    }
}

/// The COSE receipt (CCF profile) from the covering signature and the inclusion proof of the leaf.
pub fn cose_receipt(
    info: &SigInfo,
    path: &[ProofStep],
    leaf: &LeafComponents,
) -> Result<Vec<u8>, ReceiptUnavailable> {
    synod_core::receipt::cose::build_receipt(&info.cose, leaf, path)
        .map_err(|e| ReceiptUnavailable::Internal(e.to_string()))
}

#[cfg(test)]
mod sim;
