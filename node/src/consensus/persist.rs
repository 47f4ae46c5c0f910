//! Raft's log and hard state in RocksDB (column families `raft_log` and `raft_state` of the node's database).
//! One write batch per Raft `Ready` (or per group of them): the entries it appends (after deleting any suffix they
//! overwrite), the new hard state and configuration; synced unless all it changes is the commit index. Restart
//! reads it back into a [`LogStore`].

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use synod_kv::storage::{Storage, StorageError, CF_RAFT_LOG, CF_RAFT_STATE};

use super::log_store::LogStore;

const HARD_STATE: &[u8] = b"hard_state";
const CONF_STATE: &[u8] = b"conf_state";
const CONF_INDEX: &[u8] = b"conf_index";
const COMPACTED: &[u8] = b"compacted";

/// What one `Ready` asks to persist.
#[derive(Default)]
pub struct LogWrite<'a> {
    /// Entries to append; any stored entry at or after the first one's index is deleted first.
    pub entries: &'a [Entry],
    /// The last index stored before this write (to know the overwritten range).
    pub previous_last: u64,
    /// New hard state.
    pub hard_state: Option<&'a HardState>,
    /// New configuration.
    pub conf_state: Option<&'a ConfState>,
    /// Index of the last configuration change the new configuration includes.
    pub conf_index: Option<u64>,
    /// A new compaction point (after installing a snapshot, or compacting): entries up to it are deleted.
    pub compacted: Option<&'a SnapshotMetadata>,
    /// Whether to delete every stored entry first (installing a snapshot).
    pub clear: bool,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("raft {what}: {e}"))
}

/// Writes one batch, synced.
pub fn write(storage: &Storage, w: &LogWrite<'_>) -> Result<(), StorageError> {
    write_batch(storage, std::slice::from_ref(w), true)
}

/// Writes several, in order, as one batch (a store thread that fell behind catches up with one fsync instead of
/// one per write), synced if `sync`. Unsynced, the batch reaches the disk no later than
/// the next synced write (RocksDB's write-ahead log is one file, synced as a prefix) and survives the process
/// being killed (it is in the kernel's cache); only a power cut before that sync can lose it. Nothing written
/// at all makes no write.
pub fn write_batch(storage: &Storage, writes: &[LogWrite<'_>], sync: bool) -> Result<(), StorageError> {
    let mut batch = WriteBatch::default();
    for w in writes {
        add_to_batch(storage, &mut batch, w)?;
    }
    if batch.is_empty() && !sync {
        return Ok(());
    }
    let mut opts = WriteOptions::default();
    opts.set_sync(sync);
    storage.db().write_opt(batch, &opts)?;
    Ok(())
}

fn add_to_batch(storage: &Storage, batch: &mut WriteBatch, w: &LogWrite<'_>) -> Result<(), StorageError> {
    let (log_cf, state_cf) = (storage.cf(CF_RAFT_LOG)?, storage.cf(CF_RAFT_STATE)?);
    if w.clear {
        // Keys are 8-byte big-endian indexes: a 9-byte 0xff.. end is past all of them.
        batch.delete_range_cf::<&[u8]>(log_cf, &[], &[0xff; 9]);
    }
    if let Some(meta) = w.compacted {
        batch.delete_range_cf(log_cf, 0u64.to_be_bytes(), (meta.index + 1).to_be_bytes());
        batch.put_cf(
            state_cf,
            COMPACTED,
            meta.write_to_bytes().map_err(|e| corrupt("metadata", e))?,
        );
    }
    if let Some(first) = w.entries.first() {
        if first.index <= w.previous_last {
            batch.delete_range_cf(
                log_cf,
                first.index.to_be_bytes(),
                (w.previous_last + 1).to_be_bytes(),
            );
        }
    }
    for e in w.entries {
        batch.put_cf(
            log_cf,
            e.index.to_be_bytes(),
            e.write_to_bytes().map_err(|err| corrupt("entry", err))?,
        );
    }
    if let Some(hs) = w.hard_state {
        batch.put_cf(
            state_cf,
            HARD_STATE,
            hs.write_to_bytes().map_err(|e| corrupt("hard state", e))?,
        );
    }
    if let Some(cs) = w.conf_state {
        batch.put_cf(
            state_cf,
            CONF_STATE,
            cs.write_to_bytes().map_err(|e| corrupt("conf state", e))?,
        );
    }
    if let Some(index) = w.conf_index {
        batch.put_cf(state_cf, CONF_INDEX, index.to_be_bytes());
    }
    Ok(())
}

/// Whether this database holds a Raft log (a node that ran before).
pub fn exists(storage: &Storage) -> Result<bool, StorageError> {
    Ok(storage
        .db()
        .get_cf(storage.cf(CF_RAFT_STATE)?, CONF_STATE)?
        .is_some())
}

/// Reads the persisted log back.
pub fn load(storage: &Storage) -> Result<LogStore, StorageError> {
    let (log_cf, state_cf) = (storage.cf(CF_RAFT_LOG)?, storage.cf(CF_RAFT_STATE)?);
    let get = |key: &[u8]| storage.db().get_cf(state_cf, key);
    let hard_state = match get(HARD_STATE)? {
        Some(b) => HardState::parse_from_bytes(&b).map_err(|e| corrupt("hard state", e))?,
        None => HardState::default(),
    };
    let conf_state = match get(CONF_STATE)? {
        Some(b) => ConfState::parse_from_bytes(&b).map_err(|e| corrupt("conf state", e))?,
        None => ConfState::default(),
    };
    let compacted = match get(COMPACTED)? {
        Some(b) => SnapshotMetadata::parse_from_bytes(&b).map_err(|e| corrupt("metadata", e))?,
        None => SnapshotMetadata::default(),
    };
    let mut entries = Vec::new();
    let log = storage.db().iterator_cf(log_cf, IteratorMode::Start);
    for (expected, item) in (compacted.index + 1..).zip(log) {
        let (_, v) = item?;
        let e = Entry::parse_from_bytes(&v).map_err(|err| corrupt("entry", err))?;
        if e.index != expected {
            return Err(corrupt(
                "log",
                format!("entry {} where {expected} was expected", e.index),
            ));
        }
        entries.push(e);
    }
    let conf_index = match get(CONF_INDEX)? {
        Some(b) => u64::from_be_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| corrupt("conf index", "not 8 bytes"))?,
        ),
        None => 0,
    };
    let mut log = LogStore::restore(hard_state, conf_state, compacted, entries);
    log.set_conf_index(conf_index);
    Ok(log)
}

#[cfg(test)]
mod tests {
    use raft::Storage as _;

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    #[test]
    fn log_round_trips_with_overwrites_and_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        assert!(!exists(&storage).expect("exists"));
        let cs = ConfState {
            voters: vec![7],
            ..Default::default()
        };
        let hs = HardState {
            term: 2,
            vote: 7,
            commit: 3,
            ..Default::default()
        };
        let ents: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
        write(
            &storage,
            &LogWrite {
                entries: &ents,
                hard_state: Some(&hs),
                conf_state: Some(&cs),
                ..Default::default()
            },
        )
        .expect("write");
        let over = [entry(4, 2)];
        write(
            &storage,
            &LogWrite {
                entries: &over,
                previous_last: 5,
                ..Default::default()
            },
        )
        .expect("overwrite");
        let compacted = SnapshotMetadata {
            index: 2,
            term: 1,
            ..Default::default()
        };
        write(
            &storage,
            &LogWrite {
                compacted: Some(&compacted),
                ..Default::default()
            },
        )
        .expect("compact");
        drop(storage);
        let storage = Storage::open(dir.path()).expect("reopen");
        assert!(exists(&storage).expect("exists"));
        let log = load(&storage).expect("load");
        assert_eq!((log.first(), log.last()), (3, 4));
        assert_eq!(log.term(4).expect("term"), 2);
        assert_eq!(log.term(2).expect("compacted term"), 1);
        assert_eq!(log.hard_state(), &hs);
        assert_eq!(log.conf_state().voters, vec![7]);
        // Installing a snapshot behind the log's end clears every stored entry, not only those it covers.
        let installed = SnapshotMetadata {
            index: 3,
            term: 1,
            ..Default::default()
        };
        write(
            &storage,
            &LogWrite {
                clear: true,
                compacted: Some(&installed),
                ..Default::default()
            },
        )
        .expect("clear");
        let log = load(&storage).expect("load");
        assert_eq!((log.first(), log.last()), (4, 3), "empty after the snapshot");
    }
}
