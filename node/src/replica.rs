//! The replica's pure core: orders transactions, turns them into ledger entries, keeps the Merkle tree and the
//! signatures, and decides what is committed. No sockets, disks or clocks: the caller hands in the time and
//! reports durability, as raft-rs's `Ready` loop does.
//!
//! ```text
//!  commit_tx ─▶ entry (private maps sealed, leaf) ─▶ pending frames ─(writer: write + fsync)─▶ on_durable(seqno)
//!      │                                                                   │
//!      └─ every sig_tx_interval txs, or on the caller's timer: emit_signature   commit := last durable signature
//! ```
//!
//! Invariants (checked, not assumed): `committed.seqno <= durable_seqno <= last_seqno`; every committed seqno is
//! covered by a signature; a signature's root equals the tree root over every entry before it.

use std::collections::{BTreeMap, VecDeque};

use ed25519_dalek::SigningKey;
use prost::Message as _;
use synod_core::hash::Digest;
use synod_core::ledger::{
    encode_frame, make_entry, parse_signature_write_set, signature_write_set, LedgerEntry, SignatureRecord,
    Transaction, WriteSet, KIND_SIGNATURE, KIND_TX,
};
use synod_core::merkle::{MerkleTree, ProofStep};
use synod_core::receipt::{JsonReceipt, LeafComponents};
use synod_core::txid::{evaluate_tx_status, TxId, TxStatus};
use synod_core::{cose, maps};
use synod_kv::seal::Sealer;
use synod_kv::{Conflict, State, Tx};

/// Claims digest of a transaction that registers no application claims (CCF's "no claims" is all zeroes).
pub const NO_CLAIMS: Digest = [0u8; 32];

/// Errors of the pure core.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The transaction read something another committed transaction has changed since; run it again.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// Sealing or unsealing a private write set failed.
    #[error("sealing: {0}")]
    Seal(String),
    /// Building a COSE signature failed.
    #[error("COSE: {0}")]
    Cose(String),
    /// The ledger handed to recovery is not one this core could have written.
    #[error("ledger at seqno {seqno}: {reason}")]
    BadLedger { seqno: u64, reason: String },
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
    /// Building the proof failed (an internal error).
    #[error("{0}")]
    Internal(String),
}

/// The keys the core signs with.
pub struct Keys {
    /// This node's Ed25519 key; signs Merkle roots in signature transactions.
    pub node_key: SigningKey,
    /// This node's certificate (PEM), endorsed by the service identity.
    pub node_cert_pem: String,
    /// Hex SHA-256 of the node's public key DER.
    pub node_id: String,
    /// The service identity's key; signs the COSE signature over each root.
    pub service_key: SigningKey,
    /// The service certificate (DER).
    pub service_cert_der: Vec<u8>,
}

/// Tunables of the core.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaConfig {
    /// A signature transaction follows at most this many transactions.
    pub sig_tx_interval: u64,
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

/// An encoded ledger frame waiting to be written.
#[derive(Clone, Debug)]
pub struct PendingFrame {
    /// Seqno of the entry.
    pub seqno: u64,
    /// Whether the entry is a signature transaction (chunks may only end on one).
    pub is_signature: bool,
    /// The frame bytes (see synod_core::ledger::encode_frame).
    pub bytes: Vec<u8>,
}

/// The write sets of one committed transaction, for the applied-state store.
#[derive(Clone, Debug)]
pub struct CommittedWrites {
    /// Seqno of the transaction.
    pub seqno: u64,
    /// Writes to public maps.
    pub public: WriteSet,
    /// Writes to private maps (in clear; the store seals them at rest).
    pub private: WriteSet,
}

/// The result of committing a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was written; the id is the version that was read.
    ReadOnly(TxId),
    /// Written as this transaction (Pending until a signature covering it is durable).
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

/// Per-entry history: the Merkle tree, write-set digests (for receipts), views and signatures.
#[derive(Default)]
struct History {
    tree: MerkleTree,
    write_set_digests: Vec<Digest>,
    /// (view, first seqno in that view), increasing.
    views: Vec<(u64, u64)>,
    sigs: BTreeMap<u64, SigInfo>,
}

impl History {
    fn append(&mut self, tx_id: TxId, leaf: Digest, write_set_digest: Digest) {
        if self.views.last().map(|(v, _)| *v) != Some(tx_id.view) {
            self.views.push((tx_id.view, tx_id.seqno));
        }
        self.tree.append(leaf);
        self.write_set_digests.push(write_set_digest);
    }

    fn last_seqno(&self) -> u64 {
        self.tree.len()
    }

    fn view_of(&self, seqno: u64) -> Option<u64> {
        if seqno == 0 || seqno > self.last_seqno() {
            return None;
        }
        let idx = self.views.partition_point(|(_, first)| *first <= seqno);
        self.views.get(idx.checked_sub(1)?).map(|(v, _)| *v)
    }
}

/// The replica's state machine (see the module docs).
pub struct Replica {
    keys: Keys,
    sealer: Sealer,
    cfg: ReplicaConfig,
    view: u64,
    state: State,
    history: History,
    committed: TxId,
    durable_seqno: u64,
    unsigned: u64,
    pending: Vec<PendingFrame>,
    uncommitted: VecDeque<CommittedWrites>,
    startup_seqno: u64,
}

impl Replica {
    fn empty(keys: Keys, sealer: Sealer, cfg: ReplicaConfig) -> Replica {
        Replica {
            keys,
            sealer,
            cfg,
            view: 0,
            state: State::default(),
            history: History::default(),
            committed: TxId::default(),
            durable_seqno: 0,
            unsigned: 0,
            pending: Vec::new(),
            uncommitted: VecDeque::new(),
            startup_seqno: 0,
        }
    }

    /// Creates a new service: the genesis transaction (`1.1`: service info, users, members) and its signature.
    pub fn genesis(
        keys: Keys,
        sealer: Sealer,
        cfg: ReplicaConfig,
        service_info: &serde_json::Value,
        users: &[(String, String)],
        members: &[(String, String)],
        now_secs: i64,
    ) -> Result<Replica, ReplicaError> {
        let mut replica = Replica::empty(keys, sealer, cfg);
        replica.view = 1;
        let mut tx = Tx::new(replica.state.clone());
        tx.put(
            maps::SERVICE_INFO,
            b"service",
            service_info.to_string().as_bytes(),
        );
        for (id, pem) in users {
            tx.put(maps::USERS_CERTS, id.as_bytes(), pem.as_bytes());
        }
        for (id, pem) in members {
            tx.put(maps::MEMBERS_CERTS, id.as_bytes(), pem.as_bytes());
        }
        replica.commit_tx(tx, now_secs)?;
        replica.emit_signature(now_secs)?;
        Ok(replica)
    }

    /// Rebuilds the core from the applied state (RocksDB, at `state.version()`) and the ledger's entries, which
    /// must start at seqno 1 and end on a signature (the caller drops any unsigned tail). Returns the write sets
    /// of entries the applied state had not seen yet, so the caller can persist them.
    pub fn recover(
        keys: Keys,
        sealer: Sealer,
        cfg: ReplicaConfig,
        state: State,
        entries: &[LedgerEntry],
    ) -> Result<(Replica, Vec<CommittedWrites>), ReplicaError> {
        let applied = state.version();
        let mut replica = Replica::empty(keys, sealer, cfg);
        replica.state = state;
        let mut to_persist = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let expected = i as u64 + 1;
            let bad = |reason: String| ReplicaError::BadLedger {
                seqno: expected,
                reason,
            };
            let t = entry.decode_transaction().map_err(|e| bad(e.to_string()))?;
            let tx_id = t.tx_id();
            if tx_id.seqno != expected {
                return Err(bad(format!("found seqno {}", tx_id.seqno)));
            }
            if tx_id.view < replica.view {
                return Err(bad(format!("view {} after view {}", tx_id.view, replica.view)));
            }
            replica.view = tx_id.view;
            let public = t.public_write_set().map_err(|e| bad(e.to_string()))?;
            if t.kind == KIND_SIGNATURE {
                let info = signature_info(tx_id, &public).map_err(bad)?;
                let root = replica.history.tree.root().unwrap_or([0; 32]);
                if info.root != root {
                    return Err(bad(
                        "signed root differs from the Merkle root of the ledger".into()
                    ));
                }
                replica.history.sigs.insert(tx_id.seqno, info);
            }
            let leaf = entry.leaf().map_err(|e| bad(e.to_string()))?;
            replica.history.append(tx_id, leaf, entry.write_set_digest());
            if tx_id.seqno > applied {
                let private = replica.unseal_private(&t)?;
                replica
                    .state
                    .apply(tx_id.seqno, &combined(&public, &private))
                    .map_err(|e| bad(e.to_string()))?;
                to_persist.push(CommittedWrites {
                    seqno: tx_id.seqno,
                    public,
                    private,
                });
            }
        }
        let last = replica.history.last_seqno();
        if applied > last {
            return Err(ReplicaError::Invariant(format!(
                "applied state is at seqno {applied} but the ledger ends at {last}"
            )));
        }
        if last > 0 && !replica.history.sigs.contains_key(&last) {
            return Err(ReplicaError::Invariant(
                "recovered ledger does not end on a signature".into(),
            ));
        }
        replica.committed = TxId {
            view: replica.view,
            seqno: last,
        };
        replica.durable_seqno = last;
        Ok((replica, to_persist))
    }

    /// Starts a new view (as a Raft leader does after an election): records this node in
    /// `public:ccf.gov.nodes.info` and signs, so entries lost from the previous view can only evaluate `Invalid`.
    pub fn start_view(&mut self, node_info: &serde_json::Value, now_secs: i64) -> Result<TxId, ReplicaError> {
        self.view += 1;
        self.startup_seqno = self.history.last_seqno() + 1;
        let mut tx = Tx::new(self.state.clone());
        let node_id = self.keys.node_id.clone();
        tx.put(
            maps::NODES_INFO,
            node_id.as_bytes(),
            node_info.to_string().as_bytes(),
        );
        self.commit_tx(tx, now_secs)?;
        self.emit_signature(now_secs)?
            .ok_or_else(|| ReplicaError::Invariant("no signature at view start".into()))
    }

    /// A snapshot of the current (latest, possibly uncommitted) state to run a transaction on.
    pub fn snapshot(&self) -> State {
        self.state.clone()
    }

    /// Validates and orders a transaction. A conflict means the caller must run it again on a new snapshot.
    pub fn commit_tx(&mut self, tx: Tx, now_secs: i64) -> Result<Outcome, ReplicaError> {
        tx.validate(&self.state)?;
        if tx.is_read_only() {
            return Ok(Outcome::ReadOnly(self.tx_id_at(tx.read_version())));
        }
        let (public, private) = tx.write_sets();
        let tx_id = self.append(KIND_TX, public, private)?;
        self.unsigned += 1;
        if self.unsigned >= self.cfg.sig_tx_interval {
            self.emit_signature(now_secs)?;
        }
        Ok(Outcome::Written(tx_id))
    }

    /// Appends a signature transaction over the current root if anything is unsigned.
    pub fn emit_signature(&mut self, now_secs: i64) -> Result<Option<TxId>, ReplicaError> {
        if self.unsigned == 0 {
            return Ok(None);
        }
        let root = self
            .history
            .tree
            .root()
            .ok_or_else(|| ReplicaError::Invariant("signing an empty tree".into()))?;
        let tx_id = TxId {
            view: self.view,
            seqno: self.history.last_seqno() + 1,
        };
        let record = SignatureRecord::sign(
            &self.keys.node_key,
            &self.keys.node_id,
            &self.keys.node_cert_pem,
            tx_id,
            &root,
        );
        let cose = cose::sign_root(
            &root,
            &self.keys.service_key,
            &self.keys.service_cert_der,
            tx_id,
            now_secs,
        )
        .map_err(|e| ReplicaError::Cose(e.to_string()))?;
        let public = signature_write_set(&record, &cose)
            .map_err(|e| ReplicaError::Invariant(format!("signature record: {e}")))?;
        let appended = self.append(KIND_SIGNATURE, public, WriteSet::default())?;
        debug_assert_eq!(appended, tx_id);
        self.history.sigs.insert(
            tx_id.seqno,
            SigInfo {
                tx_id,
                root,
                record,
                cose,
            },
        );
        self.unsigned = 0;
        Ok(Some(tx_id))
    }

    fn append(&mut self, kind: u32, public: WriteSet, private: WriteSet) -> Result<TxId, ReplicaError> {
        let tx_id = TxId {
            view: self.view,
            seqno: self.history.last_seqno() + 1,
        };
        let private_sealed = if private.maps.is_empty() {
            Vec::new()
        } else {
            self.sealer
                .seal(tx_id, &private.encode_to_vec())
                .map_err(|e| ReplicaError::Seal(e.to_string()))?
        };
        let transaction = Transaction {
            view: tx_id.view,
            seqno: tx_id.seqno,
            kind,
            public_writes: public.encode_to_vec(),
            private_sealed,
            ..Default::default()
        };
        let entry = make_entry(&transaction, &self.sealer.commit_evidence(tx_id), &NO_CLAIMS);
        let write_set_digest = entry.write_set_digest();
        let leaf = entry
            .leaf()
            .map_err(|e| ReplicaError::Invariant(format!("leaf of {tx_id}: {e}")))?;
        self.state
            .apply(tx_id.seqno, &combined(&public, &private))
            .map_err(|e| ReplicaError::Invariant(format!("applying {tx_id}: {e}")))?;
        self.history.append(tx_id, leaf, write_set_digest);
        self.pending.push(PendingFrame {
            seqno: tx_id.seqno,
            is_signature: kind == KIND_SIGNATURE,
            bytes: encode_frame(&entry),
        });
        self.uncommitted.push_back(CommittedWrites {
            seqno: tx_id.seqno,
            public,
            private,
        });
        Ok(tx_id)
    }

    fn unseal_private(&self, t: &Transaction) -> Result<WriteSet, ReplicaError> {
        if t.private_sealed.is_empty() {
            return Ok(WriteSet::default());
        }
        let clear =
            self.sealer
                .unseal(t.tx_id(), &t.private_sealed)
                .map_err(|e| ReplicaError::BadLedger {
                    seqno: t.seqno,
                    reason: format!("private writes: {e}"),
                })?;
        WriteSet::decode(clear.as_slice()).map_err(|e| ReplicaError::BadLedger {
            seqno: t.seqno,
            reason: format!("private writes: {e}"),
        })
    }

    /// Frames ordered since the last call, for the ledger writer.
    pub fn take_pending(&mut self) -> Vec<PendingFrame> {
        std::mem::take(&mut self.pending)
    }

    /// Whether frames are waiting for the writer.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The writer made every entry up to `seqno` durable. Advances the commit to the last signature at or before
    /// it and returns the write sets that became committed, in order.
    pub fn on_durable(&mut self, seqno: u64) -> Result<Vec<CommittedWrites>, ReplicaError> {
        if seqno > self.history.last_seqno() || seqno < self.durable_seqno {
            return Err(ReplicaError::Invariant(format!(
                "durable seqno {seqno} outside [{}, {}]",
                self.durable_seqno,
                self.history.last_seqno()
            )));
        }
        self.durable_seqno = seqno;
        let Some((&sig_seqno, info)) = self.history.sigs.range(..=seqno).next_back() else {
            return Ok(Vec::new());
        };
        if sig_seqno <= self.committed.seqno {
            return Ok(Vec::new());
        }
        self.committed = info.tx_id;
        let mut out = Vec::new();
        while self.uncommitted.front().is_some_and(|w| w.seqno <= sig_seqno) {
            out.extend(self.uncommitted.pop_front());
        }
        Ok(out)
    }

    /// Transactions ordered since the last signature.
    pub fn unsigned(&self) -> u64 {
        self.unsigned
    }

    /// The last committed transaction id.
    pub fn committed(&self) -> TxId {
        self.committed
    }

    /// The current view.
    pub fn view(&self) -> u64 {
        self.view
    }

    /// The last ordered seqno.
    pub fn last_seqno(&self) -> u64 {
        self.history.last_seqno()
    }

    /// The seqno of the last signature transaction.
    pub fn last_signed_seqno(&self) -> u64 {
        self.history.sigs.keys().next_back().copied().unwrap_or(0)
    }

    /// First seqno ordered in the current run of this node.
    pub fn startup_seqno(&self) -> u64 {
        self.startup_seqno
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.keys.node_id
    }

    /// The id of the transaction at `seqno` in this node's log (view 0 before genesis).
    pub fn tx_id_at(&self, seqno: u64) -> TxId {
        TxId {
            view: self.history.view_of(seqno).unwrap_or(0),
            seqno,
        }
    }

    /// CCF's transaction status for `tx` as this node sees it.
    pub fn tx_status(&self, tx: TxId) -> TxStatus {
        evaluate_tx_status(tx, self.history.view_of(tx.seqno), self.committed)
    }

    fn covering_signature(&self, tx: TxId) -> Result<(&SigInfo, Option<Vec<ProofStep>>), ReceiptUnavailable> {
        let status = self.tx_status(tx);
        if status != TxStatus::Committed {
            return Err(ReceiptUnavailable::NotCommitted(tx, status));
        }
        if let Some(info) = self.history.sigs.get(&tx.seqno) {
            return Ok((info, None));
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
        let index = usize::try_from(tx.seqno - 1).map_err(|e| ReceiptUnavailable::Internal(e.to_string()))?;
        let write_set_digest = self
            .history
            .write_set_digests
            .get(index)
            .ok_or_else(|| ReceiptUnavailable::Internal(format!("no write set digest for {tx}")))?;
        Ok(LeafComponents {
            write_set_digest: hex::encode(write_set_digest),
            commit_evidence: self.sealer.commit_evidence(tx),
            claims_digest: hex::encode(NO_CLAIMS),
        })
    }

    /// CCF's JSON receipt for a committed transaction.
    pub fn json_receipt(&self, tx: TxId) -> Result<JsonReceipt, ReceiptUnavailable> {
        let (info, path) = self.covering_signature(tx)?;
        let base = JsonReceipt {
            cert: info.record.cert.clone(),
            is_signature_transaction: path.is_none(),
            leaf_components: None,
            node_id: info.record.node_id.clone(),
            proof: None,
            signature: info.record.signature.clone(),
            root: None,
        };
        Ok(match path {
            None => JsonReceipt {
                root: Some(info.record.root.clone()),
                ..base
            },
            Some(path) => JsonReceipt {
                leaf_components: Some(self.leaf_components(tx)?),
                proof: Some(path.iter().map(synod_core::receipt::ProofElement::from).collect()),
                ..base
            },
        })
    }

    /// The COSE receipt (CCF profile) for a committed, non-signature transaction.
    pub fn cose_receipt(&self, tx: TxId) -> Result<Vec<u8>, ReceiptUnavailable> {
        let (info, path) = self.covering_signature(tx)?;
        let path = path.ok_or(ReceiptUnavailable::SignatureTransaction(tx))?;
        cose::build_receipt(&info.cose, &self.leaf_components(tx)?, &path)
            .map_err(|e| ReceiptUnavailable::Internal(e.to_string()))
    }
}

fn combined(public: &WriteSet, private: &WriteSet) -> WriteSet {
    WriteSet {
        maps: public.maps.iter().chain(private.maps.iter()).cloned().collect(),
    }
}

fn signature_info(tx_id: TxId, public: &WriteSet) -> Result<SigInfo, String> {
    let (record, cose) = parse_signature_write_set(public).map_err(|e| e.to_string())?;
    let root = record.root_digest().map_err(|e| e.to_string())?;
    Ok(SigInfo {
        tx_id,
        root,
        record,
        cose,
    })
}

#[cfg(test)]
mod tests {
    use synod_core::cert;
    use synod_core::ledger::decode_frames;
    use synod_kv::seal::LedgerSecret;

    use super::*;

    const NOW: i64 = 1_700_000_000;

    struct Fixture {
        service: cert::Identity,
        sealer: Sealer,
    }

    impl Fixture {
        fn new() -> Fixture {
            let service = cert::generate_self_signed("test service", true).expect("service identity");
            let sealer = Sealer::new(&LedgerSecret([7u8; 32]));
            Fixture { service, sealer }
        }

        fn keys(&self) -> Keys {
            let node = cert::generate_endorsed("n0", &["127.0.0.1".parse().expect("ip")], &[], &self.service)
                .expect("node identity");
            let node_der = cert::pem_to_der(&node.cert_pem).expect("der");
            Keys {
                node_key: cert::signing_key_from_pem(&node.key_pem).expect("node key"),
                node_id: cert::public_key_id_hex(&node_der).expect("node id"),
                node_cert_pem: node.cert_pem,
                service_key: cert::signing_key_from_pem(&self.service.key_pem).expect("service key"),
                service_cert_der: cert::pem_to_der(&self.service.cert_pem).expect("der"),
            }
        }

        fn replica(&self, sig_tx_interval: u64) -> Replica {
            let mut r = Replica::genesis(
                self.keys(),
                self.sealer.clone(),
                ReplicaConfig { sig_tx_interval },
                &serde_json::json!({"status": "Open"}),
                &[("user0".into(), "pem".into())],
                &[],
                NOW,
            )
            .expect("genesis");
            r.start_view(&serde_json::json!({}), NOW).expect("view");
            r
        }
    }

    fn write(r: &mut Replica, map: &str, key: &[u8], value: &[u8]) -> TxId {
        let mut tx = Tx::new(r.snapshot());
        tx.put(map, key, value);
        r.commit_tx(tx, NOW).expect("commit").tx_id()
    }

    fn make_durable(r: &mut Replica, frames: &mut Vec<PendingFrame>) -> Vec<CommittedWrites> {
        frames.extend(r.take_pending());
        r.on_durable(r.last_seqno()).expect("durable")
    }

    fn entries(frames: &[PendingFrame]) -> Vec<LedgerEntry> {
        frames
            .iter()
            .map(|f| {
                decode_frames(&f.bytes)
                    .next()
                    .expect("one frame")
                    .expect("valid frame")
                    .entry
            })
            .collect()
    }

    #[test]
    fn genesis_then_view_two_starts_with_a_signature() {
        let fx = Fixture::new();
        let mut r = fx.replica(100);
        assert_eq!(r.view(), 2);
        // 1.1 genesis, 1.2 signature, 2.3 node info, 2.4 signature
        assert_eq!(r.last_seqno(), 4);
        assert_eq!(r.last_signed_seqno(), 4);
        assert_eq!(
            r.committed(),
            TxId::default(),
            "nothing is committed before it is durable"
        );
        make_durable(&mut r, &mut Vec::new());
        assert_eq!(r.committed(), TxId { view: 2, seqno: 4 });
    }

    #[test]
    fn a_write_is_pending_until_a_durable_signature_covers_it() {
        let fx = Fixture::new();
        let mut r = fx.replica(100);
        let mut frames = Vec::new();
        make_durable(&mut r, &mut frames);
        let id = write(&mut r, "records", b"k", b"v");
        assert_eq!(r.tx_status(id), TxStatus::Pending);
        // Durable but not signed: still pending (only signatures commit).
        make_durable(&mut r, &mut frames);
        assert_eq!(r.tx_status(id), TxStatus::Pending);
        let sig = r.emit_signature(NOW).expect("sign").expect("something to sign");
        assert_eq!(r.tx_status(id), TxStatus::Pending, "signed but not durable");
        let committed = make_durable(&mut r, &mut frames);
        assert_eq!(r.tx_status(id), TxStatus::Committed);
        assert_eq!(r.committed(), sig);
        assert_eq!(
            committed.iter().map(|w| w.seqno).collect::<Vec<_>>(),
            vec![id.seqno, sig.seqno]
        );
        assert_eq!(
            r.tx_status(TxId {
                view: 1,
                seqno: id.seqno
            }),
            TxStatus::Invalid
        );
        assert_eq!(r.tx_status(TxId { view: 2, seqno: 1000 }), TxStatus::Unknown);
    }

    #[test]
    fn signature_follows_every_sig_tx_interval_transactions() {
        let fx = Fixture::new();
        let mut r = fx.replica(3);
        let before = r.last_signed_seqno();
        for i in 0..3u8 {
            write(&mut r, "records", &[i], b"v");
        }
        assert_eq!(r.last_signed_seqno(), before + 4);
        assert_eq!(r.unsigned(), 0);
    }

    #[test]
    fn conflicting_transaction_is_refused_not_applied() {
        let fx = Fixture::new();
        let mut r = fx.replica(100);
        write(&mut r, "records", b"k", b"0");
        let mut a = Tx::new(r.snapshot());
        let mut b = Tx::new(r.snapshot());
        assert_eq!(a.get("records", b"k"), Some(b"0".to_vec()));
        assert_eq!(b.get("records", b"k"), Some(b"0".to_vec()));
        a.put("records", b"k", b"a");
        b.put("records", b"k", b"b");
        r.commit_tx(a, NOW).expect("first commits");
        let seqno = r.last_seqno();
        assert!(matches!(r.commit_tx(b, NOW), Err(ReplicaError::Conflict(_))));
        assert_eq!(r.last_seqno(), seqno, "a conflict orders nothing");
        assert_eq!(r.snapshot().get("records", b"k"), Some(&b"a"[..]));
    }

    #[test]
    fn receipts_verify_offline_with_the_service_certificate() {
        let fx = Fixture::new();
        let mut r = fx.replica(100);
        let mut frames = Vec::new();
        let ids: Vec<TxId> = (0..5u8)
            .map(|i| write(&mut r, "public:records", &[i], b"hello"))
            .collect();
        r.emit_signature(NOW).expect("sign");
        make_durable(&mut r, &mut frames);
        let service_der = cert::pem_to_der(&fx.service.cert_pem).expect("der");
        for id in ids {
            let json = r.json_receipt(id).expect("json receipt");
            let verified = synod_core::receipt::verify_json(&json, &service_der).expect("json verifies");
            assert_eq!(verified.tx_id, Some(id));
            let cose = r.cose_receipt(id).expect("cose receipt");
            synod_core::cose::verify_receipt(&cose, &service_der).expect("cose verifies");
        }
        let sig = TxId {
            view: 2,
            seqno: r.last_signed_seqno(),
        };
        let json = r.json_receipt(sig).expect("signature receipt");
        assert!(json.is_signature_transaction);
        synod_core::receipt::verify_json(&json, &service_der).expect("signature receipt verifies");
        assert!(matches!(
            r.cose_receipt(sig),
            Err(ReceiptUnavailable::SignatureTransaction(_))
        ));
    }

    #[test]
    fn no_receipt_before_commit() {
        let fx = Fixture::new();
        let mut r = fx.replica(100);
        let id = write(&mut r, "records", b"k", b"v");
        assert!(matches!(
            r.json_receipt(id),
            Err(ReceiptUnavailable::NotCommitted(_, TxStatus::Pending))
        ));
    }

    #[test]
    fn private_values_are_sealed_in_the_ledger() {
        let fx = Fixture::new();
        let mut r = fx.replica(100);
        write(&mut r, "records", b"k", b"secret-plaintext-marker");
        write(&mut r, "public:records", b"k", b"public-plaintext-marker");
        let bytes: Vec<u8> = r.take_pending().into_iter().flat_map(|f| f.bytes).collect();
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(!contains(b"secret-plaintext-marker"));
        assert!(contains(b"public-plaintext-marker"));
    }

    #[test]
    fn recovery_rebuilds_state_tree_and_commit_from_the_ledger() {
        let fx = Fixture::new();
        let mut r = fx.replica(4);
        let mut frames = Vec::new();
        for i in 0..10u8 {
            write(&mut r, "records", &[i], &[i, i]);
        }
        r.emit_signature(NOW).expect("sign");
        make_durable(&mut r, &mut frames);
        let (recovered, to_persist) = Replica::recover(
            fx.keys(),
            fx.sealer.clone(),
            ReplicaConfig { sig_tx_interval: 4 },
            State::default(),
            &entries(&frames),
        )
        .expect("recover");
        assert_eq!(to_persist.len() as u64, r.last_seqno());
        assert_eq!(recovered.committed(), r.committed());
        assert_eq!(recovered.history.tree.root(), r.history.tree.root());
        for i in 0..10u8 {
            assert_eq!(recovered.snapshot().get("records", &[i]), Some(&[i, i][..]));
        }
    }

    #[test]
    fn after_recovery_lost_transactions_are_invalid_and_seqnos_continue() {
        let fx = Fixture::new();
        let mut r = fx.replica(100);
        let mut frames = Vec::new();
        make_durable(&mut r, &mut frames);
        let lost = write(&mut r, "records", b"k", b"v"); // never signed: dropped by recovery
        let signed = r.last_signed_seqno() as usize;
        let (mut recovered, _) = Replica::recover(
            fx.keys(),
            fx.sealer.clone(),
            ReplicaConfig { sig_tx_interval: 100 },
            State::default(),
            &entries(&frames)[..signed],
        )
        .expect("recover");
        recovered
            .start_view(&serde_json::json!({}), NOW)
            .expect("new view");
        make_durable(&mut recovered, &mut Vec::new());
        assert_eq!(recovered.view(), 3);
        assert_eq!(recovered.tx_status(lost), TxStatus::Invalid);
        assert!(recovered.committed().seqno >= lost.seqno);
        assert_eq!(recovered.snapshot().get("records", b"k"), None);
    }

    #[test]
    fn recovery_refuses_a_ledger_with_a_wrong_signed_root() {
        let fx = Fixture::new();
        let mut r = fx.replica(100);
        let mut frames = Vec::new();
        write(&mut r, "records", b"k", b"v");
        r.emit_signature(NOW).expect("sign");
        make_durable(&mut r, &mut frames);
        let mut entries = entries(&frames);
        // Swap in a different, well-formed entry 5 (as if rewritten by someone without the keys).
        let mut other = fx.replica(100);
        write(&mut other, "records", b"k", b"forged");
        entries[4] = super::tests::entries(&other.take_pending())[4].clone();
        let err = Replica::recover(
            fx.keys(),
            fx.sealer.clone(),
            ReplicaConfig { sig_tx_interval: 100 },
            State::default(),
            &entries,
        );
        assert!(
            matches!(err, Err(ReplicaError::BadLedger { .. })),
            "{:?}",
            err.err()
        );
    }
}
