//! The snapshot file format and its evidence, shared by the node (which writes and installs snapshots) and the
//! offline auditor (which checks a ledger that starts after one). A snapshot holds the state at a snapshot point
//! plus what continuing from it needs: the Merkle frontier, the view history and the Raft configuration. Private
//! values inside are sealed (the node's `snapshot` module seals and opens them).

use serde::{Deserialize, Serialize};

use std::path::{Path, PathBuf};

use prost::Message as _;

use crate::hash::{sha256, Digest};
use crate::ledger::WriteSet;
use crate::merkle::MerkleTree;

/// Map recording the digest of each snapshot, written by the primary after it took one.
pub const SNAPSHOT_EVIDENCE: &str = "public:ccf.internal.snapshot_evidence";

/// One key of a map in a snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotEntry {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value (sealed for private maps).
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    /// Seqno of the last write.
    #[prost(uint64, tag = "3")]
    pub version: u64,
}

/// One map in a snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotMap {
    /// The map's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Entries in key order.
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<SnapshotEntry>,
}

/// The first seqno of a view.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ViewStart {
    /// The view.
    #[prost(uint64, tag = "1")]
    pub view: u64,
    /// Its first seqno.
    #[prost(uint64, tag = "2")]
    pub first_seqno: u64,
}

/// A snapshot file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotFile {
    /// Seqno of the snapshot point (the state includes it).
    #[prost(uint64, tag = "1")]
    pub seqno: u64,
    /// View of the snapshot point.
    #[prost(uint64, tag = "2")]
    pub view: u64,
    /// Raft configuration at the snapshot point (raft-rs `ConfState`, protobuf).
    #[prost(bytes = "vec", tag = "3")]
    pub conf_state: Vec<u8>,
    /// Merkle frontier over seqnos 1..=seqno.
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub frontier: Vec<Vec<u8>>,
    /// Where each view started, up to the snapshot point.
    #[prost(message, repeated, tag = "5")]
    pub views: Vec<ViewStart>,
    /// Every map, in name order.
    #[prost(message, repeated, tag = "6")]
    pub maps: Vec<SnapshotMap>,
}

impl SnapshotFile {
    /// The Merkle frontier as digests; `None` if one is not 32 bytes.
    pub fn frontier_digests(&self) -> Option<Vec<Digest>> {
        self.frontier
            .iter()
            .map(|d| d.as_slice().try_into().ok())
            .collect()
    }
}

/// The fields of a [`SnapshotFile`] that precede its state: decoding this reads a snapshot's point and
/// configuration without decoding (or unsealing) its maps, which prost skips.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotHeader {
    /// Seqno of the snapshot point.
    #[prost(uint64, tag = "1")]
    pub seqno: u64,
    /// View of the snapshot point.
    #[prost(uint64, tag = "2")]
    pub view: u64,
    /// Raft configuration at the snapshot point.
    #[prost(bytes = "vec", tag = "3")]
    pub conf_state: Vec<u8>,
}

/// The evidence the primary records after taking a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEvidence {
    /// Seqno of the snapshot.
    pub seqno: u64,
    /// Hex SHA-256 of the snapshot file.
    pub digest: String,
}

impl SnapshotEvidence {
    /// The evidence a transaction's public writes record for the snapshot at `seqno`, if they record one.
    pub fn for_snapshot(public: &WriteSet, seqno: u64) -> Option<SnapshotEvidence> {
        let raw = SnapshotEvidence::recorded_in(public)?;
        serde_json::from_slice::<SnapshotEvidence>(raw)
            .ok()
            .filter(|ev| ev.seqno == seqno)
    }

    /// The raw evidence a transaction's public writes record, if it records one.
    pub fn recorded_in(public: &WriteSet) -> Option<&[u8]> {
        public
            .maps
            .iter()
            .find(|m| m.name == SNAPSHOT_EVIDENCE)
            .and_then(|m| m.writes.first())
            .and_then(|w| w.value.as_deref())
    }
}

/// SHA-256 of a snapshot file: the digest its evidence records.
pub fn digest(bytes: &[u8]) -> Digest {
    sha256(bytes)
}

/// `snapshot_<seqno>` (written, not yet committed) or `snapshot_<seqno>_<evidence>.committed` (CCF's names).
pub fn file_name(seqno: u64, evidence_seqno: Option<u64>) -> String {
    match evidence_seqno {
        Some(e) => format!("snapshot_{seqno}_{e}.committed"),
        None => format!("snapshot_{seqno}"),
    }
}

/// Parses a committed snapshot's file name into (seqno, evidence seqno).
pub fn parse_committed_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("snapshot_")?.strip_suffix(".committed")?;
    let (s, e) = rest.split_once('_')?;
    Some((s.parse().ok()?, e.parse().ok()?))
}

/// The snapshot file in `dir` for seqno `seqno` (committed, written or received), if any.
pub fn find_in(dir: &std::path::Path, seqno: u64) -> Option<std::path::PathBuf> {
    let exact = format!("snapshot_{seqno}");
    let prefix = format!("snapshot_{seqno}_");
    let received = format!("{exact}.received");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) || n == exact || n == received)
        })
}

/// The snapshot a ledger continues when it does not start at seqno 1 (a node that joined from it): the Merkle tree
/// and the view history restart from it. Read by the offline audit and by disaster recovery; what proves it is a
/// signed evidence transaction in the ledger, which each of them checks.
#[derive(Debug)]
pub struct BaseSnapshot {
    /// Where it was found.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its contents.
    pub file: SnapshotFile,
}

/// Why a ledger's base snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BaseSnapshotError {
    /// No snapshot file at that seqno in the directory.
    #[error("snapshot {seqno} is not in {}", dir.display())]
    Missing {
        /// The seqno the ledger continues.
        seqno: u64,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// The file is unreadable, not a snapshot, or not the one the ledger continues.
    #[error("{}: {reason}", path.display())]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl BaseSnapshot {
    /// Reads and checks the snapshot at `seqno` in `dir`.
    pub fn load(dir: &Path, seqno: u64) -> Result<BaseSnapshot, BaseSnapshotError> {
        let path = find_in(dir, seqno).ok_or_else(|| BaseSnapshotError::Missing {
            seqno,
            dir: dir.to_path_buf(),
        })?;
        let unusable = |reason: String| BaseSnapshotError::Unusable {
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|e| unusable(e.to_string()))?;
        let file =
            SnapshotFile::decode(bytes.as_slice()).map_err(|e| unusable(format!("not a snapshot: {e}")))?;
        if file.seqno != seqno {
            return Err(unusable(format!("holds seqno {}, not {seqno}", file.seqno)));
        }
        Ok(BaseSnapshot { path, bytes, file })
    }

    /// The Merkle tree over every entry up to the snapshot, from its frontier.
    pub fn tree(&self) -> Result<MerkleTree, BaseSnapshotError> {
        let unusable = |reason: String| BaseSnapshotError::Unusable {
            path: self.path.clone(),
            reason,
        };
        let frontier = self
            .file
            .frontier_digests()
            .ok_or_else(|| unusable("a frontier digest is not 32 bytes".into()))?;
        MerkleTree::from_frontier(self.file.seqno, &frontier).map_err(|e| unusable(e.to_string()))
    }

    /// Its digest, as its evidence in the ledger names it.
    pub fn digest(&self) -> Digest {
        digest(&self.bytes)
    }
}
