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

/// The entries' bytes one merged append may carry (raft-rs's own `max_size_per_msg`).
const MERGED_APPEND_BYTES_MAX: usize = 1 << 20;

/// Merges each append that continues the previous message to the same peer into it, so that a turn that ordered
/// N transactions sends each follower one message, not N (raft-rs makes one per proposal; its own `batch_append`
/// also merges an append into one without entries, whose index it does not continue, and synod-sim caught a
/// follower told to commit past its log). An append `m` joins the previous message `p` to its peer only when both
/// are appends of the same leader and term, `p` carries entries, `m` starts right after `p`'s last entry (its index
/// and log term are that entry's; an `m` without entries only brings a newer commit), no other message to that
/// peer lies between them, and the entries stay within `MERGED_APPEND_BYTES_MAX`; the merged append carries `m`'s
/// commit (a follower commits no further than what it holds). The follower then does what it did with both, and
/// answers once, with the last index: the leader's progress and in-flight window take that answer for both.
pub fn merge_appends(messages: Vec<raft::eraftpb::Message>) -> Vec<raft::eraftpb::Message> {
    use raft::eraftpb::MessageType;
    let mut out: Vec<raft::eraftpb::Message> = Vec::with_capacity(messages.len());
    // Per peer: the index in `out` of the last message to it, and the entries' bytes it carries.
    let mut last_to: Vec<(u64, usize, usize)> = Vec::new();
    for m in messages {
        let bytes: usize = m.entries.iter().map(|e| e.data.len() + e.context.len()).sum();
        let previous = last_to.iter_mut().find(|(to, _, _)| *to == m.to);
        if let Some((_, i, carried)) = previous {
            let p = &mut out[*i];
            let continues = m.get_msg_type() == MessageType::MsgAppend
                && p.get_msg_type() == MessageType::MsgAppend
                && p.from == m.from
                && p.term == m.term
                && p.entries
                    .last()
                    .is_some_and(|e| e.index == m.index && e.term == m.log_term)
                && *carried + bytes <= MERGED_APPEND_BYTES_MAX;
            if continues {
                let commit = m.commit;
                let mut entries = p.take_entries();
                entries.extend(m.entries);
                p.set_entries(entries);
                p.commit = p.commit.max(commit);
                *carried += bytes;
                continue;
            }
            (*i, *carried) = (out.len(), bytes);
        } else {
            last_to.push((m.to, out.len(), bytes));
        }
        out.push(m);
    }
    out
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
    use raft::eraftpb::{Message, MessageType};
    use synod_kv::seal::LedgerSecret;

    use super::*;

    fn append(to: u64, term: u64, index: u64, log_term: u64, entries: &[(u64, u64)], commit: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        (m.to, m.from, m.term, m.index, m.log_term, m.commit) = (to, 1, term, index, log_term, commit);
        let entries: Vec<Entry> = entries
            .iter()
            .map(|&(index, term)| Entry {
                index,
                term,
                data: vec![0; 10].into(),
                ..Default::default()
            })
            .collect();
        m.set_entries(entries.into());
        m
    }

    fn shape(messages: &[Message]) -> Vec<(u64, u64, Vec<u64>, u64)> {
        let shape = |m: &Message| {
            (
                m.to,
                m.index,
                m.entries.iter().map(|e| e.index).collect(),
                m.commit,
            )
        };
        messages.iter().map(shape).collect()
    }

    #[test]
    fn appends_that_continue_each_other_merge_per_peer() {
        let merged = merge_appends(vec![
            append(2, 5, 10, 5, &[(11, 5)], 9),
            append(3, 5, 10, 5, &[(11, 5)], 9),
            append(2, 5, 11, 5, &[(12, 5)], 10),
            append(3, 5, 11, 5, &[(12, 5)], 10),
            append(2, 5, 12, 5, &[(13, 5), (14, 5)], 11),
            // Only a newer commit, where the entries end.
            append(2, 5, 14, 5, &[], 12),
            append(3, 5, 13, 5, &[], 12),
        ]);
        assert_eq!(
            shape(&merged),
            vec![
                (2, 10, vec![11, 12, 13, 14], 12),
                (3, 10, vec![11, 12], 10),
                (3, 13, vec![], 12)
            ]
        );
    }

    #[test]
    fn appends_that_do_not_continue_stay_apart() {
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        heartbeat.to = 2;
        let messages = vec![
            append(2, 5, 10, 5, &[(11, 5)], 9),
            // A gap, a different log term, into one without entries (raft-rs's own batching merges those), another
            // term.
            append(2, 5, 12, 5, &[(13, 5)], 9),
            append(2, 5, 13, 4, &[(14, 5)], 9),
            append(2, 5, 20, 5, &[], 10),
            append(2, 5, 14, 5, &[(15, 5)], 10),
            append(2, 6, 15, 5, &[(16, 6)], 10),
            // Another message to the peer in between.
            heartbeat,
            append(2, 6, 16, 6, &[(17, 6)], 10),
        ];
        let before = shape(&messages);
        assert_eq!(shape(&merge_appends(messages)), before);
        // Within the size bound only.
        let mut big = append(2, 5, 10, 5, &[(11, 5)], 9);
        big.mut_entries()[0].data = vec![0; MERGED_APPEND_BYTES_MAX].into();
        let merged = merge_appends(vec![big, append(2, 5, 11, 5, &[(12, 5)], 9)]);
        assert_eq!(merged.len(), 2);
    }

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
