//! Raft's log as raft-rs reads it: an in-memory suffix of entries after the last compaction point, the hard state
//! and the configuration. Pure: the node's I/O shell mirrors every change into RocksDB (`consensus::persist`) and
//! rebuilds this from there on restart.
//!
//! ```text
//!   [compacted ... snapshot.index] [entries: snapshot.index + 1 ..= last]
//! ```
//!
//! The latest committed Synod snapshot is kept here too, so that raft-rs can send it to a follower whose next
//! entry was compacted away.

use std::collections::VecDeque;
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// The in-memory Raft log (see the module docs).
#[derive(Default)]
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index of the last configuration change `conf_state` includes (persisted with it), so a restart knows
    /// which replayed changes it still has to apply.
    conf_index: u64,
    /// Index and term of the last compacted entry (0, 0 for a log that starts at 1).
    compacted: SnapshotMetadata,
    entries: VecDeque<Entry>,
    snapshot: Option<Arc<Snapshot>>,
}

impl LogStore {
    /// A log for a new single-voter service (this node alone).
    pub fn new_cluster(voter: u64) -> LogStore {
        let mut store = LogStore::default();
        store.conf_state.voters = vec![voter];
        store
    }

    /// A log restored from persisted parts.
    pub fn restore(
        hard_state: HardState,
        conf_state: ConfState,
        compacted: SnapshotMetadata,
        entries: Vec<Entry>,
    ) -> LogStore {
        LogStore {
            hard_state,
            conf_state,
            conf_index: 0,
            compacted,
            entries: entries.into(),
            snapshot: None,
        }
    }

    /// First index still held (compacted index + 1).
    pub fn first(&self) -> u64 {
        self.compacted.index + 1
    }

    /// Last index held.
    pub fn last(&self) -> u64 {
        self.entries.back().map_or(self.compacted.index, |e| e.index)
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let i = index.checked_sub(self.first())?;
        self.entries.get(usize::try_from(i).ok()?)
    }

    /// Index and term of the compaction point.
    pub fn compacted(&self) -> &SnapshotMetadata {
        &self.compacted
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The configuration.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Appends entries, dropping any held suffix they overwrite. Returns the first overwritten index, if any.
    pub fn append(&mut self, ents: &[Entry]) -> Result<Option<u64>, StorageError> {
        let Some(first) = ents.first() else {
            return Ok(None);
        };
        if first.index < self.first() || first.index > self.last() + 1 {
            return Err(StorageError::Other(
                format!(
                    "appending at {} to a log holding {}..={}",
                    first.index,
                    self.first(),
                    self.last()
                )
                .into(),
            ));
        }
        let overwritten = (first.index <= self.last()).then_some(first.index);
        self.entries.truncate((first.index - self.first()) as usize);
        self.entries.extend(ents.iter().cloned());
        Ok(overwritten)
    }

    /// Records a new hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Records a new configuration.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Index of the last configuration change the configuration includes.
    pub fn conf_index(&self) -> u64 {
        self.conf_index
    }

    /// Records the index of the last configuration change applied.
    pub fn set_conf_index(&mut self, index: u64) {
        self.conf_index = index;
    }

    /// Drops entries up to and including `index` (which must be held or compacted already).
    pub fn compact(&mut self, index: u64) -> Result<(), StorageError> {
        if index < self.first() {
            return Ok(());
        }
        let term = self
            .entry(index)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable)?;
        let drop = (index + 1 - self.first()) as usize;
        self.entries.drain(..drop);
        self.compacted.index = index;
        self.compacted.term = term;
        Ok(())
    }

    /// Replaces the whole log by a snapshot's position: what a follower does when it installs one.
    pub fn install_snapshot(&mut self, snapshot: Snapshot) {
        let meta = snapshot.get_metadata();
        self.entries.clear();
        self.compacted = SnapshotMetadata {
            index: meta.index,
            term: meta.term,
            ..Default::default()
        };
        self.conf_state = meta.get_conf_state().clone();
        self.conf_index = self.conf_index.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.snapshot = Some(Arc::new(snapshot));
    }

    /// Offers `snapshot` (a committed Synod snapshot) to followers that fell behind the compaction point.
    pub fn set_snapshot(&mut self, snapshot: Snapshot) {
        self.snapshot = Some(Arc::new(snapshot));
    }

    /// The snapshot offered to followers.
    pub fn offered_snapshot(&self) -> Option<&Arc<Snapshot>> {
        self.snapshot.as_ref()
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let mut ents: Vec<Entry> = self.entries.range(lo..hi).cloned().collect();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.compacted.index {
            return Ok(self.compacted.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entry(idx)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match &self.snapshot {
            Some(s) if s.get_metadata().index >= request_index => Ok((**s).clone()),
            _ => Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn append_overwrites_a_suffix_and_compaction_keeps_the_term() {
        let mut s = LogStore::new_cluster(1);
        assert_eq!((s.first(), s.last()), (1, 0));
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .expect("append");
        assert_eq!(s.append(&[entry(3, 2), entry(4, 2)]).expect("overwrite"), Some(3));
        assert_eq!(s.term(3).expect("term"), 2);
        assert!(s.append(&[entry(7, 2)]).is_err(), "a gap is refused");
        s.compact(2).expect("compact");
        assert_eq!(s.first(), 3);
        assert_eq!(s.term(2).expect("compacted term"), 1);
        assert!(matches!(
            s.entries(2, 4, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(
            s.entries(3, 5, None, GetEntriesContext::empty(false))
                .expect("entries")
                .len(),
            2
        );
        assert!(s.snapshot(0, 2).is_err(), "no snapshot to offer yet");
    }

    #[test]
    fn installing_a_snapshot_resets_the_log() {
        let mut s = LogStore::new_cluster(1);
        s.append(&[entry(1, 1), entry(2, 1)]).expect("append");
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 10;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
        s.install_snapshot(snap);
        assert_eq!((s.first(), s.last()), (11, 10));
        assert_eq!(s.term(10).expect("term"), 3);
        assert_eq!(s.conf_state().voters, vec![1, 2]);
        assert_eq!(s.snapshot(5, 2).expect("offered").get_metadata().index, 10);
        s.append(&[entry(11, 3)]).expect("continues after the snapshot");
    }
}
