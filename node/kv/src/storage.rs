//! Committed state at rest in RocksDB: every map entry with its version, and the seqno the state reflects, written
//! together in one atomic batch per group of committed transactions. Private values are sealed at rest.
//!
//! Column family `state`: `u32 BE len(map) ‖ map ‖ key` → `u64 BE version ‖ value` (value sealed for private maps).
//! Column family `meta`: `applied_seqno` → u64 BE; `map:<name>` → empty (maps stay known once created).
//!
//! The ledger is the record: batches are written without fsync, since RocksDB's WAL keeps each batch atomic and
//! anything lost in a power failure is replayed from the ledger after `applied_seqno` on restart.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, IteratorMode, MemtableFactory, Options, WriteBatch,
    WriteOptions, DB,
};
use synod_core::ledger::WriteSet;
use synod_core::maps;

use crate::seal::{map_key as state_key, SealError, Sealer};
use crate::{Bytes, Entry, State};

const CF_STATE: &str = "state";
const CF_META: &str = "meta";
/// The stored bytes of a Raft log in the format before it moved out of RocksDB (protobuf messages of raft-rs).
pub struct LegacyRaftLog {
    /// `HardState`, if written.
    pub hard_state: Option<Vec<u8>>,
    /// `ConfState`, if written.
    pub conf_state: Option<Vec<u8>>,
    /// The index of the last configuration change applied.
    pub conf_index: Option<u64>,
    /// `SnapshotMetadata` of the compaction point, if any.
    pub compacted: Option<Vec<u8>>,
    /// `Entry`s in index order.
    pub entries: Vec<Vec<u8>>,
}

/// Column families that held Raft's log and hard state until they moved to files of their own
/// (`synod_node::consensus::persist`): still opened (RocksDB opens every column family a database has), read once
/// to move an older data directory's log out, then emptied.
const CF_RAFT_LOG: &str = "raft_log";
const CF_RAFT_STATE: &str = "raft_state";
/// Its keys in `raft_state`.
const RAFT_HARD_STATE: &[u8] = b"hard_state";
const RAFT_CONF_STATE: &[u8] = b"conf_state";
const RAFT_CONF_INDEX: &[u8] = b"conf_index";
const RAFT_COMPACTED: &[u8] = b"compacted";
const APPLIED_SEQNO: &[u8] = b"applied_seqno";
/// Table files RocksDB keeps open at once.
pub const STORAGE_OPEN_FILES_MAX: i32 = 256;
/// One column family's memtable, in bytes (flushed to a table file when full).
const MEMTABLE_BYTES: usize = 8 << 20;
/// All memtables together, in bytes.
const MEMTABLES_BYTES_MAX: usize = 32 << 20;
/// Write-ahead log files kept, in bytes (see [`Storage::open`]).
const WAL_BYTES_MAX: u64 = 64 << 20;
/// The block cache every column family shares, in bytes.
const BLOCK_CACHE_BYTES: usize = 16 << 20;
const MAP_PREFIX: &[u8] = b"map:";

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    /// Stored bytes that this code did not write.
    #[error("corrupt stored state: {0}")]
    Corrupt(String),
    /// A private value could not be sealed or opened.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The batch does not continue the stored state.
    #[error("committing seqno {seqno} onto stored state at {applied}")]
    OutOfOrder {
        /// First seqno of the batch.
        seqno: u64,
        /// The stored state's seqno.
        applied: u64,
    },
}

/// The RocksDB database holding committed state (and, from replication on, Raft's log).
#[derive(Clone)]
pub struct Storage {
    db: Arc<DB>,
}

/// The meta-column key recording that map `name` exists (so empty maps survive a restart).
fn map_marker(name: &str) -> Vec<u8> {
    let mut marker = MAP_PREFIX.to_vec();
    marker.extend_from_slice(name.as_bytes());
    marker
}

/// `version ‖ value`, the value sealed at rest if the map is private.
fn stored_value(
    version: u64,
    map: &str,
    key: &[u8],
    value: &[u8],
    sealer: &Sealer,
) -> Result<Vec<u8>, StorageError> {
    let mut stored = version.to_be_bytes().to_vec();
    if maps::is_public(map) {
        stored.extend_from_slice(value);
    } else {
        stored.extend(sealer.seal_at_rest(map, key, value)?);
    }
    Ok(stored)
}

fn split_state_key(k: &[u8]) -> Option<(&str, &[u8])> {
    let len = u32::from_be_bytes(k.get(..4)?.try_into().ok()?) as usize;
    let map = std::str::from_utf8(k.get(4..4 + len)?).ok()?;
    Some((map, &k[4 + len..]))
}

fn u64_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

impl Storage {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Storage, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // A bounded number of table files open at once: the node reserves file descriptors for RocksDB, the
        // ledger and snapshots before it sizes its client connection cap (docs/SECURITY.md).
        opts.set_max_open_files(STORAGE_OPEN_FILES_MAX);
        // Memory RocksDB may hold, whatever the ledger's length: memtables (every committed write passes through
        // them) and the block cache, shared by every column family. RocksDB's defaults allow 64 MiB memtables per
        // column family, which a node under load fills before the first flush.
        opts.set_db_write_buffer_size(MEMTABLES_BYTES_MAX);
        // The write-ahead log is replayed at start: a column family written rarely (the state's metadata) keeps
        // every log file since its last flush alive, so without this bound a restart after millions of writes
        // replays gigabytes. Past it, RocksDB flushes the column families that hold the oldest log.
        opts.set_max_total_wal_size(WAL_BYTES_MAX);
        // The vector memtables below take one writer at a time (RocksDB's write group leader inserts for all).
        opts.set_allow_concurrent_memtable_write(false);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES)?;
        let cf_options = |name: &str| {
            let mut cf = Options::default();
            cf.set_write_buffer_size(MEMTABLE_BYTES);
            cf.set_max_write_buffer_number(2);
            if name == CF_STATE {
                // Written on every commit, read only when the node starts or installs a snapshot: a vector
                // memtable appends each write and sorts once, when flushed or first read. The default skip
                // list spent ~3 µs per insert here (cache misses down its levels), 4 % of all CPU under load.
                cf.set_memtable_factory(MemtableFactory::Vector);
            }
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            cf.set_block_based_table_factory(&table);
            cf
        };
        let cfs = [CF_STATE, CF_META, CF_RAFT_LOG, CF_RAFT_STATE]
            .map(|name| ColumnFamilyDescriptor::new(name, cf_options(name)));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Storage { db: Arc::new(db) })
    }

    /// Whether this database holds a Raft log of the format before it moved to files of its own.
    pub fn holds_legacy_raft_log(&self) -> Result<bool, StorageError> {
        Ok(self
            .db
            .get_cf(self.cf(CF_RAFT_STATE)?, RAFT_CONF_STATE)?
            .is_some())
    }

    /// That Raft log's stored bytes, for the node to move into its own files.
    pub fn legacy_raft_log(&self) -> Result<LegacyRaftLog, StorageError> {
        let state = self.cf(CF_RAFT_STATE)?;
        let get = |key: &[u8]| self.db.get_cf(state, key);
        let mut entries = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_RAFT_LOG)?, rocksdb::IteratorMode::Start)
        {
            entries.push(item?.1.to_vec());
        }
        Ok(LegacyRaftLog {
            hard_state: get(RAFT_HARD_STATE)?,
            conf_state: get(RAFT_CONF_STATE)?,
            conf_index: get(RAFT_CONF_INDEX)?.as_deref().and_then(u64_be),
            compacted: get(RAFT_COMPACTED)?,
            entries,
        })
    }

    /// Deletes that Raft log, once the node holds it in its own files.
    pub fn drop_legacy_raft_log(&self) -> Result<(), StorageError> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range_cf::<&[u8]>(self.cf(CF_RAFT_LOG)?, &[], &[0xff; 9]);
        for key in [RAFT_HARD_STATE, RAFT_CONF_STATE, RAFT_CONF_INDEX, RAFT_COMPACTED] {
            batch.delete_cf(self.cf(CF_RAFT_STATE)?, key);
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        Ok(self.db.write_opt(batch, &opts)?)
    }

    /// A column family by name.
    pub fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StorageError::Corrupt(format!("missing column family {name}")))
    }

    /// The seqno of the last committed transaction the stored state reflects (0 when empty).
    pub fn applied_seqno(&self) -> Result<u64, StorageError> {
        match self.db.get_cf(self.cf(CF_META)?, APPLIED_SEQNO)? {
            None => Ok(0),
            Some(v) => u64_be(&v).ok_or_else(|| StorageError::Corrupt("applied_seqno is not 8 bytes".into())),
        }
    }

    /// Loads the whole committed state into memory, opening private values.
    pub fn load_state(&self, sealer: &Sealer) -> Result<State, StorageError> {
        let mut state = State::with_version(self.applied_seqno()?);
        for item in self.db.iterator_cf(self.cf(CF_META)?, IteratorMode::Start) {
            let (k, _) = item?;
            if let Some(name) = k.strip_prefix(MAP_PREFIX) {
                let name = std::str::from_utf8(name).map_err(|_| StorageError::Corrupt("map name".into()))?;
                state.load_map(name);
            }
        }
        for item in self.db.iterator_cf(self.cf(CF_STATE)?, IteratorMode::Start) {
            let (k, v) = item?;
            let (map, key) = split_state_key(&k).ok_or_else(|| StorageError::Corrupt("state key".into()))?;
            let version = v
                .get(..8)
                .and_then(u64_be)
                .ok_or_else(|| StorageError::Corrupt("state value".into()))?;
            let stored = &v[8..];
            let value = if maps::is_public(map) {
                stored.to_vec()
            } else {
                sealer.unseal_at_rest(map, key, stored)?
            };
            state.load_entry(
                map,
                Bytes::from(key),
                Entry {
                    value: Bytes::from(value),
                    version,
                },
            );
        }
        Ok(state)
    }

    /// Writes the write sets of consecutive committed transactions `(seqno, public, private)` and the new
    /// applied seqno in one atomic batch.
    pub fn apply_committed(
        &self,
        rows: &[(u64, &WriteSet, &WriteSet)],
        sealer: &Sealer,
    ) -> Result<(), StorageError> {
        let applied = self.applied_seqno()?;
        // Rows the store already holds are skipped: after a crash the node re-sends what it cannot know was written.
        let rows: Vec<_> = rows.iter().filter(|(seqno, _, _)| *seqno > applied).collect();
        if rows.is_empty() {
            return Ok(());
        }
        let (state_cf, meta_cf) = (self.cf(CF_STATE)?, self.cf(CF_META)?);
        let mut batch = WriteBatch::default();
        let mut last = applied;
        let mut written_maps = BTreeSet::new();
        for &&(seqno, public, private) in &rows {
            if seqno <= last {
                return Err(StorageError::OutOfOrder { seqno, applied: last });
            }
            last = seqno;
            for mw in public.maps.iter().chain(private.maps.iter()) {
                written_maps.insert(mw.name.as_str());
                for w in &mw.writes {
                    let k = state_key(&mw.name, &w.key);
                    match &w.value {
                        None => batch.delete_cf(state_cf, k),
                        Some(v) => {
                            batch.put_cf(state_cf, k, stored_value(seqno, &mw.name, &w.key, v, sealer)?)
                        }
                    }
                }
            }
        }
        // One marker per map per batch, not one per transaction that writes it.
        for name in written_maps {
            batch.put_cf(meta_cf, map_marker(name), []);
        }
        batch.put_cf(meta_cf, APPLIED_SEQNO, last.to_be_bytes());
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Replaces the whole stored state by `state` (a node installing a snapshot).
    pub fn replace_state(&self, state: &State, sealer: &Sealer) -> Result<(), StorageError> {
        let (state_cf, meta_cf) = (self.cf(CF_STATE)?, self.cf(CF_META)?);
        let mut batch = WriteBatch::default();
        for cf in [state_cf, meta_cf] {
            for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                batch.delete_cf(cf, item?.0);
            }
        }
        for name in state.map_names() {
            batch.put_cf(meta_cf, map_marker(name), []);
            for (key, entry) in state.map(name).into_iter().flat_map(|m| m.iter()) {
                let stored = stored_value(entry.version, name, key, &entry.value, sealer)?;
                batch.put_cf(state_cf, state_key(name, key), stored);
            }
        }
        batch.put_cf(meta_cf, APPLIED_SEQNO, state.version().to_be_bytes());
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// The underlying database, for the consensus log that shares it.
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }
}

#[cfg(test)]
mod tests {
    use synod_core::ledger::{KeyWrite, MapWrites};

    use super::*;
    use crate::seal::LedgerSecret;

    #[test]
    fn a_raft_log_of_the_old_format_is_recognised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        assert!(!storage.holds_legacy_raft_log().expect("fresh"));
        let cf = storage.cf(CF_RAFT_STATE).expect("cf");
        storage.db().put_cf(cf, RAFT_CONF_STATE, b"").expect("put");
        assert!(storage.holds_legacy_raft_log().expect("legacy"));
    }

    fn ws(map: &str, writes: &[(&[u8], Option<&[u8]>)]) -> WriteSet {
        WriteSet {
            maps: vec![MapWrites {
                name: map.into(),
                writes: writes
                    .iter()
                    .map(|(k, v)| KeyWrite {
                        key: k.to_vec(),
                        value: v.map(<[u8]>::to_vec),
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn committed_state_round_trips_and_private_values_are_sealed_at_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sealer = Sealer::new(&LedgerSecret([9; 32]));
        let empty = WriteSet::default();
        {
            let storage = Storage::open(dir.path()).expect("open");
            let p1 = ws("public:records", &[(b"a", Some(b"public-marker-value"))]);
            let s1 = ws(
                "records",
                &[(b"x", Some(b"secret-marker-value")), (b"y", Some(b"gone soon"))],
            );
            storage.apply_committed(&[(3, &p1, &s1)], &sealer).expect("apply");
            let s2 = ws("records", &[(b"y", None)]);
            storage
                .apply_committed(&[(4, &empty, &s2)], &sealer)
                .expect("apply");
            storage
                .apply_committed(&[(4, &empty, &s2)], &sealer)
                .expect("a repeated row is skipped");
            storage
                .db()
                .flush_cf(storage.cf(CF_STATE).expect("cf"))
                .expect("flush");
        }
        let storage = Storage::open(dir.path()).expect("reopen");
        assert_eq!(storage.applied_seqno().expect("seqno"), 4);
        let state = storage.load_state(&sealer).expect("load");
        assert_eq!(state.version(), 4);
        assert_eq!(state.get("records", b"x"), Some(&b"secret-marker-value"[..]));
        assert_eq!(state.entry("records", b"x").map(|e| e.version), Some(3));
        assert_eq!(state.get("records", b"y"), None);
        assert_eq!(
            state.get("public:records", b"a"),
            Some(&b"public-marker-value"[..])
        );

        // What RocksDB holds (compressed or not on disk): the private value only sealed.
        let raw = |map: &str, key: &[u8]| {
            storage
                .db()
                .get_cf(storage.cf(CF_STATE).expect("cf"), state_key(map, key))
                .expect("get")
                .expect("present")
        };
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        assert!(contains(&raw("public:records", b"a"), b"public-marker-value"));
        assert!(
            !contains(&raw("records", b"x"), b"secret-marker-value"),
            "a private value is stored in clear"
        );

        let wrong = Sealer::new(&LedgerSecret([8; 32]));
        assert!(storage.load_state(&wrong).is_err());

        let mut replacement = State::default();
        let ws = ws("records", &[(b"z", Some(b"from a snapshot"))]);
        replacement.apply(40, &ws.maps).expect("apply");
        storage.replace_state(&replacement, &sealer).expect("replace");
        let state = storage.load_state(&sealer).expect("load");
        assert_eq!(state.version(), 40);
        assert_eq!(state.get("records", b"x"), None);
        assert_eq!(state.get("records", b"z"), Some(&b"from a snapshot"[..]));
    }
}
