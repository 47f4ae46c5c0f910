//! The node's ledger files: the chunk writer ([`writer`]) that appends committed entries, and the bounded reader
//! ([`reader`]) that serves historical values, versions and change feeds from them. The entry the replica hands to
//! the writer ([`CommittedEntry`]) is defined here, below consensus, so that the files never depend on the replica.

pub mod reader;
pub mod writer;

use std::sync::Arc;

use synod_core::ledger::{encode_frame, LedgerEntry, MapWrites, Transaction, WriteSet, KIND_SIGNATURE};
use synod_core::txid::TxId;

/// The writes of one transaction, in clear.
#[derive(Clone, Debug, Default)]
pub struct Writes {
    /// Writes to public maps.
    pub public: WriteSet,
    /// Writes to private maps.
    pub private: WriteSet,
}

impl Writes {
    /// Every map written, public then private: what the KV state applies.
    pub(crate) fn maps(&self) -> impl Iterator<Item = &MapWrites> {
        self.public.maps.iter().chain(&self.private.maps)
    }

    pub(crate) fn touches(&self, map: &str) -> bool {
        self.public
            .maps
            .iter()
            .chain(self.private.maps.iter())
            .any(|m| m.name == map)
    }
}

/// A Raft-committed entry, for the ledger files and the stored state.
#[derive(Clone, Debug)]
pub struct CommittedEntry {
    /// Its id.
    pub tx_id: TxId,
    /// The ledger frame (identical on every node).
    pub frame: Vec<u8>,
    /// Its writes.
    pub writes: Arc<Writes>,
    /// Whether it is a signature transaction.
    pub is_signature: bool,
    /// Whether the ledger chunk ends after it.
    pub chunk_end: bool,
}

impl CommittedEntry {
    pub(crate) fn new(le: &LedgerEntry, tx: &Transaction, writes: Arc<Writes>) -> CommittedEntry {
        CommittedEntry {
            tx_id: tx.tx_id(),
            frame: encode_frame(le),
            writes,
            is_signature: tx.kind == KIND_SIGNATURE,
            // A snapshot point always ends its chunk (as `flags_of` records it).
            chunk_end: tx.chunk_end || tx.snapshot_point,
        }
    }
}
