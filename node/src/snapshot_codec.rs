//! Snapshots: the committed state at a snapshot point (a signature transaction the primary flagged), with what a
//! node needs to continue from it without the ledger before it: the Merkle tree's frontier, the view history and
//! the Raft configuration.
//!
//! ```text
//!  seqno S (signature, snapshot_point) applied ─▶ SnapshotFile (deterministic bytes) ─▶ snapshots/snapshot_S
//!  primary records {S, sha256(file)} in public:ccf.internal.snapshot_evidence at E > S
//!  E covered by a committed signature ─▶ snapshot_S_E.committed   (only these are served or installed)
//! ```
//!
//! The encoding is deterministic (maps and keys in order, private values sealed with nonces derived from
//! (S, map, key)), so every node writes the same bytes and one digest names the snapshot everywhere.

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, SnapshotMetadata};
use synod_core::hash::Digest;
use synod_core::maps;
use synod_kv::seal::Sealer;
use synod_kv::{Bytes, Entry, State};

pub use synod_core::snapshot::*;

/// Snapshot errors.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Bytes that are not a snapshot.
    #[error("malformed snapshot: {0}")]
    Malformed(String),
    /// A private value that does not open with this service's ledger secret.
    #[error("snapshot value of {map} key {key} does not unseal: {source}")]
    Unseal {
        /// The private map.
        map: String,
        /// The key, hex.
        key: String,
        /// Why.
        source: synod_kv::seal::SealError,
    },
    /// Sealing a private value failed.
    #[error("sealing a snapshot value: {0}")]
    Seal(#[from] synod_kv::seal::SealError),
}

/// What a snapshot holds, decoded.
pub struct Decoded {
    /// The file as stored.
    pub file: SnapshotFile,
    /// The state at the snapshot point.
    pub state: State,
    /// The Merkle frontier.
    pub frontier: Vec<Digest>,
}

/// Serializes `state` (at `seqno`) deterministically.
pub fn encode(
    state: &State,
    view: u64,
    conf_state: Vec<u8>,
    frontier: &[Digest],
    views: &[(u64, u64)],
    sealer: &Sealer,
) -> Result<Vec<u8>, SnapshotError> {
    let seqno = state.version();
    let mut file = SnapshotFile {
        seqno,
        view,
        conf_state,
        frontier: frontier.iter().map(|d| d.to_vec()).collect(),
        views: views
            .iter()
            .filter(|(_, first)| *first <= seqno)
            .map(|&(view, first_seqno)| ViewStart { view, first_seqno })
            .collect(),
        maps: Vec::new(),
    };
    for name in state.map_names() {
        let mut map = SnapshotMap {
            name: name.to_string(),
            entries: Vec::new(),
        };
        let public = maps::is_public(name);
        for (key, entry) in state.map(name).into_iter().flat_map(|m| m.iter()) {
            let value = if public {
                entry.value.to_vec()
            } else {
                sealer
                    .seal_snapshot_value(seqno, name, key, &entry.value)
                    .map_err(SnapshotError::Seal)?
            };
            map.entries.push(SnapshotEntry {
                key: key.to_vec(),
                value,
                version: entry.version,
            });
        }
        file.maps.push(map);
    }
    Ok(file.encode_to_vec())
}

/// Raft's metadata for a snapshot at `seqno` in `view` with configuration `conf_state` (protobuf).
pub fn raft_metadata(seqno: u64, view: u64, conf_state: &[u8]) -> Result<SnapshotMetadata, SnapshotError> {
    let cs = ConfState::parse_from_bytes(conf_state)
        .map_err(|e| SnapshotError::Malformed(format!("configuration: {e}")))?;
    let mut meta = SnapshotMetadata {
        index: seqno,
        term: view,
        ..Default::default()
    };
    meta.set_conf_state(cs);
    Ok(meta)
}

/// Raft's metadata for a snapshot file, read from its header alone (the state is neither decoded nor unsealed).
pub fn raft_metadata_of(bytes: &[u8]) -> Result<SnapshotMetadata, SnapshotError> {
    let h = SnapshotHeader::decode(bytes).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    raft_metadata(h.seqno, h.view, &h.conf_state)
}

/// Decodes and opens a snapshot.
pub fn decode(bytes: &[u8], sealer: &Sealer) -> Result<Decoded, SnapshotError> {
    let file = SnapshotFile::decode(bytes).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    let frontier = file
        .frontier_digests()
        .ok_or_else(|| SnapshotError::Malformed("frontier digest".into()))?;
    let mut state = State::with_version(file.seqno);
    for map in &file.maps {
        state.load_map(&map.name);
        let public = maps::is_public(&map.name);
        for e in &map.entries {
            let value = if public {
                e.value.clone()
            } else {
                sealer
                    .unseal_snapshot_value(file.seqno, &map.name, &e.key, &e.value)
                    .map_err(|source| SnapshotError::Unseal {
                        map: map.name.clone(),
                        key: hex::encode(&e.key),
                        source,
                    })?
            };
            if e.version > file.seqno {
                return Err(SnapshotError::Malformed(format!(
                    "a key of {} is newer than the snapshot",
                    map.name
                )));
            }
            state.load_entry(
                &map.name,
                Bytes::from(&e.key[..]),
                Entry {
                    value: Bytes::from(value),
                    version: e.version,
                },
            );
        }
    }
    Ok(Decoded {
        file,
        state,
        frontier,
    })
}

#[cfg(test)]
mod tests {
    use synod_core::ledger::{KeyWrite, MapWrites, WriteSet};
    use synod_kv::seal::LedgerSecret;

    use super::*;

    fn state() -> State {
        let mut s = State::default();
        let ws = WriteSet {
            maps: vec![
                MapWrites {
                    name: "public:records".into(),
                    writes: vec![KeyWrite {
                        key: b"a".to_vec(),
                        value: Some(b"public-value".to_vec()),
                    }],
                },
                MapWrites {
                    name: "records".into(),
                    writes: vec![KeyWrite {
                        key: b"b".to_vec(),
                        value: Some(b"private-value".to_vec()),
                    }],
                },
            ],
        };
        s.apply(7, &ws.maps).expect("apply");
        s
    }

    #[test]
    fn snapshots_are_deterministic_sealed_and_round_trip() {
        let sealer = Sealer::new(&LedgerSecret([1; 32]));
        let s = state();
        let bytes =
            encode(&s, 3, vec![1, 2], &[[9; 32]], &[(1, 1), (3, 5), (4, 9)], &sealer).expect("encode");
        assert_eq!(
            bytes,
            encode(&s, 3, vec![1, 2], &[[9; 32]], &[(1, 1), (3, 5)], &sealer).expect("again")
        );
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(contains(b"public-value") && !contains(b"private-value"));
        let d = decode(&bytes, &sealer).expect("decode");
        assert_eq!(d.state.get("records", b"b"), Some(&b"private-value"[..]));
        assert_eq!(d.state.version(), 7);
        assert_eq!(d.frontier, vec![[9; 32]]);
        assert_eq!(
            d.file.views.len(),
            2,
            "views after the snapshot are not part of it"
        );
        assert!(decode(&bytes, &Sealer::new(&LedgerSecret([2; 32]))).is_err());
        assert!(decode(b"\xff\xff", &sealer).is_err());
        assert_eq!(parse_committed_name(&file_name(10, Some(12))), Some((10, 12)));
        assert_eq!(parse_committed_name(&file_name(10, None)), None);
    }
}
