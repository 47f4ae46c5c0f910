//! Consensus: the replica's state machine ([`machine`]: Raft glue, Merkle history, signatures, commit), its one
//! owner ([`replica`]), the Raft log ([`log_store`], [`persist`]), and the Raft glue they share here: raft-rs
//! configuration, node ids, the mapping from Raft entries to ledger entries, and a slog→tracing bridge.
//!
//! Every Raft entry is a ledger entry and its index is the seqno, its term the view: tx id `view.seqno` is
//! Raft's `term.index`. Entries raft-rs makes itself (the empty entry of a new leader, configuration changes) map
//! to deterministic ledger entries, so every node derives the same bytes and the same Merkle leaf from them.

pub mod log_store;
pub mod machine;
pub mod persist;
pub mod replica;

use prost::Message as _;
use raft::eraftpb::{Entry, EntryType};
use synod_core::hash::sha256;
use synod_core::ledger::{make_entry, KeyWrite, LedgerEntry, MapWrites, Transaction, WriteSet, KIND_TX};
use synod_core::txid::TxId;
use synod_kv::seal::Sealer;

use crate::consensus::machine::NO_CLAIMS;

/// Map recording each Raft configuration change (the raft-rs `ConfChange`, protobuf) at key "".
pub const RECONFIGURATION: &str = "public:ccf.internal.reconfiguration";

/// Raft timing and flow-control knobs, in ticks.
#[derive(Clone, Copy, Debug)]
pub struct RaftTiming {
    /// Ticks without a heartbeat before a follower campaigns (randomised up to twice this).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Bytes of uncommitted entries a leader holds before it drops proposals (raft-rs `max_uncommitted_size`).
    pub uncommitted_bytes_max: u64,
    /// Election timeouts are drawn from `election_ticks..election_ticks_max` (0: raft-rs's default, twice
    /// `election_ticks`). A seeded simulation gives each node a range of one value: raft-rs draws from an
    /// unseeded random generator, which would make runs unrepeatable.
    pub election_ticks_max: usize,
}

impl Default for RaftTiming {
    fn default() -> RaftTiming {
        RaftTiming {
            election_ticks: 10,
            heartbeat_ticks: 2,
            uncommitted_bytes_max: 64 << 20,
            election_ticks_max: 0,
        }
    }
}

/// The Raft id of a node: the first 8 bytes of its node id (hex SHA-256 of its public key), never 0.
pub fn raft_id(node_id: &str) -> u64 {
    let bytes = hex::decode(node_id.get(..16).unwrap_or_default()).unwrap_or_default();
    let id = bytes
        .try_into()
        .map(u64::from_be_bytes)
        .unwrap_or_else(|_| u64::from_be_bytes(sha256(node_id.as_bytes())[..8].try_into().unwrap_or([1; 8])));
    id.max(1)
}

/// raft-rs configuration for node `id` that has applied up to `applied`.
pub fn raft_config(id: u64, applied: u64, timing: RaftTiming) -> raft::Config {
    raft::Config {
        id,
        applied,
        election_tick: timing.election_ticks,
        heartbeat_tick: timing.heartbeat_ticks,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        max_committed_size_per_ready: 16 << 20,
        max_uncommitted_size: timing.uncommitted_bytes_max,
        min_election_tick: timing.election_ticks,
        max_election_tick: timing.election_ticks_max,
        ..Default::default()
    }
}

/// Why a Raft entry is not a valid ledger entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The data does not decode.
    #[error("entry {0}: {1}")]
    Malformed(TxId, String),
}

/// The ledger entry a Raft entry stands for, and its transaction.
pub fn ledger_entry_of(entry: &Entry, sealer: &Sealer) -> Result<(LedgerEntry, Transaction), EntryError> {
    let tx_id = TxId::new(entry.term, entry.index);
    let bad = |m: String| EntryError::Malformed(tx_id, m);
    match entry.get_entry_type() {
        EntryType::EntryNormal if !entry.data.is_empty() => {
            let le = LedgerEntry::decode(&entry.data[..]).map_err(|e| bad(e.to_string()))?;
            let tx = le.decode_transaction().map_err(|e| bad(e.to_string()))?;
            if tx.tx_id() != tx_id {
                return Err(bad(format!("carries transaction {}", tx.tx_id())));
            }
            if le.commit_evidence_digest != sha256(sealer.commit_evidence(tx_id).as_bytes()) {
                return Err(bad(
                    "commit evidence digest does not match this service's ledger secret".into(),
                ));
            }
            if le.claims_digest.len() != 32 {
                return Err(bad("claims digest is not 32 bytes".into()));
            }
            Ok((le, tx))
        }
        EntryType::EntryNormal => Ok(synthesized(tx_id, WriteSet::default(), sealer)),
        EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
            let ws = WriteSet {
                maps: vec![MapWrites {
                    name: RECONFIGURATION.into(),
                    writes: vec![KeyWrite {
                        key: Vec::new(),
                        value: Some(entry.data.to_vec()),
                    }],
                }],
            };
            Ok(synthesized(tx_id, ws, sealer))
        }
    }
}

fn synthesized(tx_id: TxId, public: WriteSet, sealer: &Sealer) -> (LedgerEntry, Transaction) {
    let tx = Transaction {
        view: tx_id.view,
        seqno: tx_id.seqno,
        kind: KIND_TX,
        public_writes: if public.maps.is_empty() {
            Vec::new()
        } else {
            public.encode_to_vec()
        },
        ..Default::default()
    };
    (make_entry(&tx, &sealer.commit_evidence(tx_id), &NO_CLAIMS), tx)
}

/// Forwards raft-rs's slog records to `tracing` (raft-rs's "info" is chatty: it becomes debug).
pub struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{}", record.msg()),
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::debug!(target: "raft", "{}", record.msg()),
            _ => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

/// A slog logger for raft-rs that writes through `tracing`.
pub fn raft_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

#[cfg(test)]
mod tests {
    use synod_kv::seal::LedgerSecret;

    use super::*;

    #[test]
    fn raft_ids_come_from_node_ids() {
        assert_eq!(raft_id("00000000000000ff00"), 255);
        assert_eq!(raft_id("0000000000000000aa"), 1, "never 0");
        assert_ne!(raft_id("zz"), 0);
    }

    #[test]
    fn entries_raft_makes_map_to_identical_ledger_entries_everywhere() {
        let a = Sealer::new(&LedgerSecret([1; 32]));
        let empty = Entry {
            term: 3,
            index: 9,
            ..Default::default()
        };
        let (l1, t1) = ledger_entry_of(&empty, &a).expect("no-op");
        let (l2, _) = ledger_entry_of(&empty, &a).expect("no-op");
        assert_eq!(l1, l2);
        assert_eq!(t1.tx_id(), TxId::new(3, 9));
        let mut cc = Entry {
            term: 3,
            index: 10,
            data: vec![1, 2, 3].into(),
            ..Default::default()
        };
        cc.set_entry_type(EntryType::EntryConfChange);
        let (_, t) = ledger_entry_of(&cc, &a).expect("conf change");
        assert_eq!(t.public_write_set().expect("ws").maps[0].name, RECONFIGURATION);
        // A normal entry must carry its own tx id and this service's commit evidence.
        let (le, _) = ledger_entry_of(
            &Entry {
                term: 3,
                index: 11,
                ..Default::default()
            },
            &a,
        )
        .expect("no-op");
        let wrong_place = Entry {
            term: 3,
            index: 12,
            data: le.encode_to_vec().into(),
            ..Default::default()
        };
        assert!(ledger_entry_of(&wrong_place, &a).is_err());
        let right = Entry {
            term: 3,
            index: 11,
            data: le.encode_to_vec().into(),
            ..Default::default()
        };
        assert!(ledger_entry_of(&right, &a).is_ok());
        assert!(ledger_entry_of(&right, &Sealer::new(&LedgerSecret([2; 32]))).is_err());
    }
}
