#![deny(missing_docs)]
//! Synod's key-value store: ordered named maps and optimistic transactions over immutable snapshots.
//!
//! ```text
//!   State (persistent maps, version = last applied seqno) ──clone (O(1))──▶ Tx::new(snapshot)
//!        ▲                                                                     │ get / range / put / delete
//!        │ apply(seqno, write set)                                            ▼
//!   commit: tx.validate(&latest) ── Conflict ⇒ run the transaction again on a new snapshot
//! ```
//!
//! The core is pure: no disk, no clock, no locks. `seal` encrypts private write sets and values at rest; `storage`
//! persists committed state in RocksDB. Maps are ordered by key bytes (CCF's are not; etcd users expect ranges).
//!
//! Concurrency control is optimistic and serializable: a transaction records the version of every key it read
//! (absent keys included) and the exact contents of every range it scanned; it commits only if all of them are
//! unchanged in the latest state, so it never applies writes computed from stale reads.

pub mod seal;
pub mod storage;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use imbl::OrdMap;
use synod_core::ledger::{KeyWrite, MapWrites, WriteSet};
use synod_core::maps;

/// A key or value as stored: shared so snapshots and tree nodes copy pointers, not bytes.
pub type Bytes = Arc<[u8]>;

/// A stored value and the seqno of the transaction that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Bytes,
    /// Seqno of the transaction that last wrote the key.
    pub version: u64,
}

/// One ordered map.
pub type Map = OrdMap<Bytes, Entry>;

/// Errors applying write sets to a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Write sets must be applied in seqno order.
    #[error("applying seqno {seqno} to a state already at version {version}")]
    OutOfOrder {
        /// The write set's seqno.
        seqno: u64,
        /// The state's version.
        version: u64,
    },
}

/// The transaction read something that a transaction committed since has changed; it must run again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conflict on map {map}: {what} changed since it was read")]
pub struct Conflict {
    /// The map.
    pub map: String,
    /// What changed (a key in hex, a range, or the map's existence).
    pub what: String,
}

/// An immutable snapshot of every map at one version. Cloning is O(1).
#[derive(Clone, Debug, Default)]
pub struct State {
    maps: OrdMap<String, Map>,
    version: u64,
    /// Changes whenever the state is rebuilt from an older one (a rolled-back suffix), so that a transaction
    /// read from the abandoned history can never validate against the new one, even at equal versions.
    lineage: u64,
}

fn bound_ref(b: &Bound<Bytes>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(&k[..]),
        Bound::Excluded(k) => Bound::Excluded(&k[..]),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl State {
    /// An empty state at version `version` (used when loading persisted state).
    pub fn with_version(version: u64) -> State {
        State {
            maps: OrdMap::new(),
            version,
            lineage: 0,
        }
    }

    /// Marks this state as a new history (after a rollback): transactions read before it will conflict.
    pub fn new_lineage(&mut self, lineage: u64) {
        self.lineage = lineage;
    }

    /// The history this state belongs to (see [`State::new_lineage`]).
    pub fn lineage(&self) -> u64 {
        self.lineage
    }

    /// Seqno of the last applied write set (0 when empty).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The value of `key` in `map`.
    pub fn get(&self, map: &str, key: &[u8]) -> Option<&[u8]> {
        self.entry(map, key).map(|e| &e.value[..])
    }

    /// The value and version of `key` in `map`.
    pub fn entry(&self, map: &str, key: &[u8]) -> Option<&Entry> {
        self.maps.get(map)?.get(key)
    }

    /// Whether the map was ever written (it stays known once created, even when emptied).
    pub fn map_exists(&self, map: &str) -> bool {
        self.maps.contains_key(map)
    }

    /// Names of every map, in order.
    pub fn map_names(&self) -> impl Iterator<Item = &str> {
        self.maps.keys().map(String::as_str)
    }

    /// One map, if it exists.
    pub fn map(&self, map: &str) -> Option<&Map> {
        self.maps.get(map)
    }

    /// Up to `limit` entries of `map` with `from <= key` and `key < to` (or `key <= to` for `Included`).
    pub fn range_entries(
        &self,
        map: &str,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        limit: usize,
    ) -> Vec<(Bytes, Entry)> {
        match self.maps.get(map) {
            Some(m) => m
                .range::<_, [u8]>((from, to))
                .take(limit)
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Applies one transaction's writes (its public and private map writes, in any order) as seqno `seqno`
    /// (which must be past the current version). Takes the maps by reference so callers need not merge them.
    pub fn apply<'a>(
        &mut self,
        seqno: u64,
        writes: impl IntoIterator<Item = &'a MapWrites>,
    ) -> Result<(), KvError> {
        if seqno <= self.version {
            return Err(KvError::OutOfOrder {
                seqno,
                version: self.version,
            });
        }
        for mw in writes {
            let map = self.maps.entry(mw.name.clone()).or_default();
            for w in &mw.writes {
                match &w.value {
                    Some(v) => {
                        map.insert(
                            Bytes::from(&w.key[..]),
                            Entry {
                                value: Bytes::from(&v[..]),
                                version: seqno,
                            },
                        );
                    }
                    None => {
                        map.remove(&w.key[..]);
                    }
                }
            }
        }
        self.version = seqno;
        Ok(())
    }

    /// Inserts a loaded entry without version checks (loading persisted state only).
    pub fn load_entry(&mut self, map: &str, key: Bytes, entry: Entry) {
        self.maps.entry(map.to_string()).or_default().insert(key, entry);
    }

    /// Marks a map as existing (loading persisted state only).
    pub fn load_map(&mut self, map: &str) {
        self.maps.entry(map.to_string()).or_default();
    }
}

/// A range the transaction scanned: its bounds, closed at the last returned key when the limit cut it short.
#[derive(Clone, Debug)]
struct RangeRead {
    map: String,
    from: Bound<Bytes>,
    to: Bound<Bytes>,
    seen: Vec<(Bytes, u64)>,
}

/// A transaction: reads from one snapshot, buffers writes, and remembers what it read for validation.
#[derive(Clone, Debug)]
pub struct Tx {
    base: State,
    reads: BTreeMap<(String, Vec<u8>), Option<u64>>,
    ranges: Vec<RangeRead>,
    existence: BTreeMap<String, bool>,
    writes: BTreeMap<String, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl Tx {
    /// A transaction over `snapshot`.
    pub fn new(snapshot: State) -> Tx {
        Tx {
            base: snapshot,
            reads: BTreeMap::new(),
            ranges: Vec::new(),
            existence: BTreeMap::new(),
            writes: BTreeMap::new(),
        }
    }

    /// Version of the snapshot the transaction reads.
    pub fn read_version(&self) -> u64 {
        self.base.version()
    }

    /// True when the transaction wrote nothing.
    pub fn is_read_only(&self) -> bool {
        self.writes.is_empty()
    }

    fn own_write(&self, map: &str, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.writes.get(map)?.get(key)
    }

    /// Reads `key` from `map`: the transaction's own write if any, else the snapshot.
    pub fn get(&mut self, map: &str, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(w) = self.own_write(map, key) {
            return w.clone();
        }
        self.read_entry(map, key).map(|e| e.value.to_vec())
    }

    /// The snapshot's entry at `key`, recording the read (its version, or absence) for validation.
    fn read_entry(&mut self, map: &str, key: &[u8]) -> Option<&Entry> {
        let entry = self.base.entry(map, key);
        self.reads
            .insert((map.to_string(), key.to_vec()), entry.map(|e| e.version));
        entry
    }

    /// The version (seqno of its last write) of `key` in the snapshot, recorded as a read; `None` when absent or
    /// written by this transaction. Lets a caller cache what it derives from a value without copying it.
    pub fn version_of(&mut self, map: &str, key: &[u8]) -> Option<u64> {
        if self.own_write(map, key).is_some() {
            return None;
        }
        self.read_entry(map, key).map(|e| e.version)
    }

    /// The stored value of `key` in the snapshot (shared, not copied), recorded as a read; `None` when absent or
    /// written by this transaction. Two reads return the same `Bytes` exactly when the value was not rewritten.
    pub fn stored(&mut self, map: &str, key: &[u8]) -> Option<Bytes> {
        if self.own_write(map, key).is_some() {
            return None;
        }
        self.read_entry(map, key).map(|e| e.value.clone())
    }

    /// Whether `key` is present in `map`.
    pub fn has(&mut self, map: &str, key: &[u8]) -> bool {
        self.get(map, key).is_some()
    }

    /// Whether `map` exists (was ever written, or is written by this transaction).
    pub fn map_exists(&mut self, map: &str) -> bool {
        if self.writes.contains_key(map) {
            return true;
        }
        let exists = self.base.map_exists(map);
        self.existence.insert(map.to_string(), exists);
        exists
    }

    /// Writes `value` at `key` in `map`.
    pub fn put(&mut self, map: &str, key: &[u8], value: &[u8]) {
        self.writes
            .entry(map.to_string())
            .or_default()
            .insert(key.to_vec(), Some(value.to_vec()));
    }

    /// Deletes `key` from `map` (a no-op write if absent).
    pub fn delete(&mut self, map: &str, key: &[u8]) {
        self.writes
            .entry(map.to_string())
            .or_default()
            .insert(key.to_vec(), None);
    }

    /// Up to `limit` entries with `from <= key < to` (`to` None: to the end), in key order, including this
    /// transaction's own writes.
    pub fn range(
        &mut self,
        map: &str,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let to_bound = to.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if limit > 0 {
            let own = self.writes.get(map);
            let mut base = self
                .base
                .map(map)
                .map(|m| m.range::<_, [u8]>((Bound::Included(from), to_bound)).peekable());
            let mut own_iter = own.map(|w| w.range::<[u8], _>((Bound::Included(from), to_bound)).peekable());
            loop {
                let next_base = base
                    .as_mut()
                    .and_then(|it| it.peek().map(|(k, _)| Bytes::clone(k)));
                let next_own = own_iter
                    .as_mut()
                    .and_then(|it| it.peek().map(|(k, _)| k.as_slice().to_vec()));
                let take_own = match (&next_base, &next_own) {
                    (None, None) => break,
                    (Some(_), None) => false,
                    (None, Some(_)) => true,
                    (Some(b), Some(o)) => o.as_slice() <= &b[..],
                };
                if take_own {
                    let Some((k, v)) = own_iter.as_mut().and_then(|it| it.next()) else {
                        break;
                    };
                    // An own write shadows the snapshot's entry at the same key.
                    if next_base.as_ref().map(|b| &b[..]) == Some(k.as_slice()) {
                        base.as_mut().and_then(|it| it.next());
                    }
                    if let Some(v) = v {
                        out.push((k.clone(), v.clone()));
                    }
                } else {
                    let Some((k, e)) = base.as_mut().and_then(|it| it.next()) else {
                        break;
                    };
                    out.push((k.to_vec(), e.value.to_vec()));
                }
                if out.len() == limit {
                    break;
                }
            }
        }
        // The scanned interval: up to the last returned key when the limit cut it short, else the whole range.
        let from_b = Bound::Included(Bytes::from(from));
        let stop = if limit > 0 && out.len() == limit {
            Bound::Included(Bytes::from(&out[limit - 1].0[..]))
        } else {
            to.map_or(Bound::Unbounded, |t| Bound::Excluded(Bytes::from(t)))
        };
        let seen = range_versions(&self.base, map, &from_b, &stop);
        self.ranges.push(RangeRead {
            map: map.to_string(),
            from: from_b,
            to: stop,
            seen,
        });
        out
    }

    /// Checks every read against `latest`; Ok means committing now is equivalent to running on `latest`.
    pub fn validate(&self, latest: &State) -> Result<(), Conflict> {
        if latest.lineage != self.base.lineage {
            return Err(Conflict {
                map: String::new(),
                what: "the state's history (rolled back)".into(),
            });
        }
        if latest.version() == self.base.version() {
            return Ok(()); // nothing was applied since the snapshot was taken
        }
        for ((map, key), version) in &self.reads {
            if latest.entry(map, key).map(|e| e.version) != *version {
                return Err(Conflict {
                    map: map.clone(),
                    what: format!("key {}", hex::encode(key)),
                });
            }
        }
        for (map, exists) in &self.existence {
            if latest.map_exists(map) != *exists {
                return Err(Conflict {
                    map: map.clone(),
                    what: "its existence".into(),
                });
            }
        }
        for r in &self.ranges {
            if range_versions(latest, &r.map, &r.from, &r.to) != r.seen {
                return Err(Conflict {
                    map: r.map.clone(),
                    what: "a scanned range".into(),
                });
            }
        }
        Ok(())
    }

    /// The writes split into (public maps, private maps), maps in name order and keys in byte order. Consumes
    /// the transaction: its buffered keys and values move into the write sets instead of being copied.
    pub fn into_write_sets(self) -> (WriteSet, WriteSet) {
        let mut public = WriteSet::default();
        let mut private = WriteSet::default();
        for (name, writes) in self.writes {
            let public_map = maps::is_public(&name);
            let mw = MapWrites {
                name,
                writes: writes
                    .into_iter()
                    .map(|(key, value)| KeyWrite { key, value })
                    .collect(),
            };
            if public_map {
                public.maps.push(mw);
            } else {
                private.maps.push(mw);
            }
        }
        (public, private)
    }

    /// Names of the maps this transaction writes.
    pub fn written_maps(&self) -> impl Iterator<Item = &str> {
        self.writes.keys().map(String::as_str)
    }
}

fn range_versions(state: &State, map: &str, from: &Bound<Bytes>, to: &Bound<Bytes>) -> Vec<(Bytes, u64)> {
    match state.map(map) {
        Some(m) => m
            .range::<_, [u8]>((bound_ref(from), bound_ref(to)))
            .map(|(k, e)| (k.clone(), e.version))
            .collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_one(state: &mut State, map: &str, key: &[u8], value: &[u8]) {
        let mut tx = Tx::new(state.clone());
        tx.put(map, key, value);
        commit(state, &tx).expect("blind write never conflicts");
    }

    fn commit(state: &mut State, tx: &Tx) -> Result<(), Conflict> {
        tx.validate(state)?;
        let (public, private) = tx.clone().into_write_sets();
        let seqno = state.version() + 1;
        state
            .apply(seqno, public.maps.iter().chain(&private.maps))
            .expect("apply");
        Ok(())
    }

    #[test]
    fn reads_see_own_writes_and_snapshots_are_isolated() {
        let mut s = State::default();
        put_one(&mut s, "m", b"a", b"1");
        let snapshot = s.clone();
        put_one(&mut s, "m", b"a", b"2");
        let mut tx = Tx::new(snapshot);
        assert_eq!(
            tx.get("m", b"a"),
            Some(b"1".to_vec()),
            "reads its snapshot, not later writes"
        );
        tx.put("m", b"a", b"3");
        assert_eq!(tx.get("m", b"a"), Some(b"3".to_vec()));
        tx.delete("m", b"a");
        assert_eq!(tx.get("m", b"a"), None);
        assert!(!tx.has("m", b"a"));
        assert_eq!(s.get("m", b"a"), Some(&b"2"[..]));
    }

    #[test]
    fn lost_update_is_a_conflict() {
        let mut s = State::default();
        put_one(&mut s, "m", b"k", b"0");
        let mut a = Tx::new(s.clone());
        let mut b = Tx::new(s.clone());
        let va = a.get("m", b"k").expect("present");
        let vb = b.get("m", b"k").expect("present");
        a.put("m", b"k", &[va, b"+a".to_vec()].concat());
        b.put("m", b"k", &[vb, b"+b".to_vec()].concat());
        commit(&mut s, &a).expect("first commits");
        let err = commit(&mut s, &b).expect_err("second read a stale value");
        assert_eq!(err.map, "m");
        assert_eq!(s.get("m", b"k"), Some(&b"0+a"[..]));
    }

    #[test]
    fn reading_an_absent_key_conflicts_with_its_insertion() {
        let mut s = State::default();
        let mut a = Tx::new(s.clone());
        assert_eq!(a.get("m", b"k"), None);
        a.put("m", b"other", b"x");
        put_one(&mut s, "m", b"k", b"inserted");
        assert!(commit(&mut s, &a).is_err());
    }

    #[test]
    fn disjoint_keys_and_blind_writes_do_not_conflict() {
        let mut s = State::default();
        put_one(&mut s, "m", b"a", b"0");
        put_one(&mut s, "m", b"b", b"0");
        let mut a = Tx::new(s.clone());
        let mut b = Tx::new(s.clone());
        a.get("m", b"a");
        a.put("m", b"a", b"1");
        b.get("m", b"b");
        b.put("m", b"b", b"1");
        let mut blind = Tx::new(s.clone());
        blind.put("m", b"a", b"blind");
        commit(&mut s, &a).expect("a");
        commit(&mut s, &b).expect("b touches another key");
        commit(&mut s, &blind).expect("blind writes read nothing");
        assert_eq!(s.get("m", b"a"), Some(&b"blind"[..]));
    }

    #[test]
    fn range_merges_own_writes_in_order_and_respects_bounds() {
        let mut s = State::default();
        for k in [b"a", b"c", b"e", b"g"] {
            put_one(&mut s, "m", k, k);
        }
        let mut tx = Tx::new(s.clone());
        tx.put("m", b"b", b"B");
        tx.put("m", b"c", b"C");
        tx.delete("m", b"e");
        let all = tx.range("m", b"", None, 100);
        let keys: Vec<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![&b"a"[..], b"b", b"c", b"g"]);
        assert_eq!(all[2].1, b"C");
        let page = tx.range("m", b"b", Some(b"g"), 2);
        assert_eq!(
            page,
            vec![(b"b".to_vec(), b"B".to_vec()), (b"c".to_vec(), b"C".to_vec())]
        );
        assert!(tx.range("m", b"a", None, 0).is_empty());
        assert!(tx.range("nope", b"", None, 10).is_empty());
    }

    #[test]
    fn phantom_insert_into_a_scanned_range_is_a_conflict() {
        let mut s = State::default();
        put_one(&mut s, "m", b"a", b"1");
        put_one(&mut s, "m", b"c", b"1");
        let mut scan = Tx::new(s.clone());
        let n = scan.range("m", b"a", Some(b"z"), 100).len();
        scan.put("m", b"count", n.to_string().as_bytes());
        put_one(&mut s, "m", b"b", b"phantom");
        assert!(commit(&mut s, &scan).is_err());
    }

    #[test]
    fn insert_beyond_a_limited_page_does_not_conflict() {
        let mut s = State::default();
        for k in [b"a", b"b", b"c"] {
            put_one(&mut s, "m", k, b"1");
        }
        let mut scan = Tx::new(s.clone());
        assert_eq!(scan.range("m", b"a", None, 2).len(), 2); // saw a, b
        scan.put("m", b"x", b"1");
        put_one(&mut s, "m", b"bb", b"after the page");
        commit(&mut s, &scan).expect("the page [a, b] is unchanged");
    }

    #[test]
    fn map_existence_is_validated() {
        let mut s = State::default();
        let mut tx = Tx::new(s.clone());
        assert!(!tx.map_exists("m"));
        tx.put("other", b"k", b"v");
        put_one(&mut s, "m", b"k", b"v");
        assert!(commit(&mut s, &tx).is_err());
        // Emptied maps stay known.
        let mut del = Tx::new(s.clone());
        del.delete("m", b"k");
        commit(&mut s, &del).expect("delete");
        assert!(s.map_exists("m"));
        assert_eq!(s.get("m", b"k"), None);
    }

    #[test]
    fn write_sets_split_public_and_private_in_order() {
        let mut tx = Tx::new(State::default());
        tx.put("zeta", b"2", b"v");
        tx.put("public:b", b"k", b"v");
        tx.put("alpha", b"9", b"v");
        tx.put("alpha", b"1", b"v");
        tx.delete("public:a", b"gone");
        let (public, private) = tx.into_write_sets();
        let names = |ws: &WriteSet| ws.maps.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&public), vec!["public:a", "public:b"]);
        assert_eq!(names(&private), vec!["alpha", "zeta"]);
        assert_eq!(private.maps[0].writes[0].key, b"1");
        assert_eq!(public.maps[0].writes[0].value, None);
    }

    #[test]
    fn apply_refuses_going_backwards() {
        let mut s = State::default();
        put_one(&mut s, "m", b"k", b"v");
        assert!(s.apply(1, &WriteSet::default().maps).is_err());
        assert_eq!(s.entry("m", b"k").map(|e| e.version), Some(1));
    }
}
