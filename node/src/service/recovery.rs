//! The node's side of disaster recovery (docs/RECOVERY.md): reading a lost service's ledger files (its public
//! state up to the last signature, then, once the members' shares rebuilt its secrets, its private state) and
//! replaying the private state through the new service. The rules over transactions (shares, secrets, records)
//! are `crate::governance::recovery`.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message as _;
use synod_core::hash::Digest;
use synod_core::ledger::{
    decode_frames, list_chunks, verify_signature_transaction, WriteSet, KIND_SIGNATURE,
};
use synod_core::maps;
use synod_core::merkle::MerkleTree;
use synod_core::snapshot::{BaseSnapshot, BaseSnapshotError};
use synod_core::tables::ServiceInfo;
use synod_core::txid::TxId;
use synod_kv::seal::Sealer;
use synod_kv::State;

use crate::governance::recovery::{finish_recovery, previous_service, state_json, RecoveryError};

/// Copies the chunks of `from` holding seqnos `1..=last` into `to` as committed chunks, the last one cut at
/// `last`: the recovered service's ledger starts with the previous service's, so its receipts still verify.
pub fn copy_ledger_prefix(from: &Path, to: &Path, last: u64) -> Result<(), LedgerRecoveryError> {
    use synod_core::ledger::ChunkName;
    let err = |path: &Path, reason: String| LedgerRecoveryError {
        path: path.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(to).map_err(|e| err(to, e.to_string()))?;
    let chunks = list_chunks(from).map_err(|e| err(from, e.to_string()))?;
    for (name, path) in chunks.iter().filter(|(n, _)| n.start <= last) {
        let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
        let mut keep = 0usize;
        let mut end = name.start - 1;
        for frame in decode_frames(&bytes) {
            let frame = frame.map_err(|e| err(path, e.to_string()))?;
            let seqno = frame
                .entry
                .decode_transaction()
                .map_err(|e| err(path, e.to_string()))?
                .seqno;
            if seqno > last {
                break;
            }
            keep = (frame.offset + frame.len) as usize;
            end = seqno;
        }
        let target = to.join(
            ChunkName {
                start: name.start,
                end: Some(end),
                committed: true,
            }
            .file_name(),
        );
        crate::service::write_atomically(&target, &bytes[..keep])
            .map_err(|e| err(&target, format!("{e:#}")))?;
    }
    std::fs::File::open(to)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(to, e.to_string()))
}

/// The public state of a previous service recovered from its ledger files.
pub struct PublicRecovery {
    /// Public maps at `last`.
    pub state: State,
    /// The Merkle tree's frontier after `last`.
    pub frontier: Vec<Digest>,
    /// (view, first seqno) of every view.
    pub views: Vec<(u64, u64)>,
    /// The last signature transaction: the recovered ledger ends there.
    pub last: TxId,
    /// The previous service identity (PEM), as its state records it.
    pub service_cert_pem: String,
    /// Signatures verified.
    pub signatures: u64,
    /// The snapshot the ledger continues (seqno and file bytes), when it does not start at seqno 1.
    pub base_snapshot: Option<(u64, Vec<u8>)>,
}

/// Why the previous ledger cannot be recovered.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct LedgerRecoveryError {
    /// The file (or directory).
    pub path: std::path::PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// Where the public recovery of a ledger starts.
#[derive(Default)]
struct Start {
    state: State,
    tree: MerkleTree,
    views: Vec<(u64, u64)>,
    /// The base snapshot's seqno and digest until a signed evidence transaction proves it.
    unproven: Option<(u64, String)>,
    base_snapshot: Option<(u64, Vec<u8>)>,
}

/// A ledger that starts after snapshot `base` (a node that joined from one) continues from its public state; the
/// snapshot counts only once the ledger proves it (its evidence, covered by a signature).
fn start_after_snapshot(
    dir: &Path,
    snapshots: Option<&Path>,
    base: u64,
) -> Result<Start, LedgerRecoveryError> {
    let err = |path: &Path, reason: String| LedgerRecoveryError {
        path: path.to_path_buf(),
        reason,
    };
    let missing = || {
        err(
            dir,
            format!(
                "the ledger starts at seqno {}, after snapshot {base}: give the directory holding it \
                 (--snapshot DIR; default: the ledger's ../snapshots)",
                base + 1
            ),
        )
    };
    let unusable = |e: BaseSnapshotError| match e {
        BaseSnapshotError::Missing { .. } => missing(),
        BaseSnapshotError::Unusable { path, reason } => err(&path, reason),
    };
    let snapshots = snapshots
        .map(Path::to_path_buf)
        .or_else(|| dir.parent().map(|p| p.join("snapshots")))
        .ok_or_else(missing)?;
    let found = BaseSnapshot::load(&snapshots, base).map_err(unusable)?;
    let tree = found.tree().map_err(unusable)?;
    let file = &found.file;
    let mut state = State::with_version(base);
    for map in file.maps.iter().filter(|m| maps::is_public(&m.name)) {
        state.load_map(&map.name);
        for e in &map.entries {
            let entry = synod_kv::Entry {
                value: e.value.as_slice().into(),
                version: e.version,
            };
            state.load_entry(&map.name, e.key.as_slice().into(), entry);
        }
    }
    Ok(Start {
        state,
        tree,
        views: file.views.iter().map(|v| (v.view, v.first_seqno)).collect(),
        unproven: Some((base, hex::encode(found.digest()))),
        base_snapshot: Some((base, found.bytes)),
    })
}

/// Reads the previous service's ledger in `dir` up to its last signature transaction, checking every entry's
/// place and every signature (against the Merkle tree over the entries before it, by a node the service identity
/// of the time endorsed), and folds the public writes. Entries after the last signature are not vouched for by
/// anyone and are dropped, as CCF drops them.
pub fn recover_public(dir: &Path, snapshots: Option<&Path>) -> Result<PublicRecovery, LedgerRecoveryError> {
    let err = |path: &Path, reason: String| LedgerRecoveryError {
        path: path.to_path_buf(),
        reason,
    };
    let chunks = list_chunks(dir).map_err(|e| err(dir, e.to_string()))?;
    let first = chunks
        .first()
        .map(|(name, _)| name.start)
        .ok_or_else(|| err(dir, "no ledger chunk files".into()))?;
    let Start {
        mut state,
        mut tree,
        mut views,
        mut unproven,
        base_snapshot,
    } = if first > 1 {
        start_after_snapshot(dir, snapshots, first - 1)?
    } else {
        Start::default()
    };
    let mut expected = first;
    let mut evidence_seen = false;
    // What the last verified signature covers; entries after it are applied to `state` only to be discarded.
    let mut signed: Option<PublicRecovery> = None;
    let mut signatures = 0;
    'chunks: for (_, path) in &chunks {
        let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
        for frame in decode_frames(&bytes) {
            let Ok(frame) = frame else {
                // A torn or damaged frame: nothing after it can be placed. What the last signature covers stands.
                break 'chunks;
            };
            let fail = |reason: String| err(path, format!("seqno {expected}: {reason}"));
            let tx = frame
                .entry
                .decode_transaction()
                .map_err(|e| fail(e.to_string()))?;
            if tx.seqno != expected {
                return Err(fail(format!("found seqno {}", tx.seqno)));
            }
            let public = tx.public_write_set().map_err(|e| fail(e.to_string()))?;
            // The identity a signature must be endorsed by: the service's at the time (a ledger that was itself
            // recovered changes identity part-way).
            let mut signer_identity = None;
            if tx.kind == KIND_SIGNATURE {
                let service_pem = state_json::<ServiceInfo>(&state, maps::SERVICE_INFO, "")
                    .map(|info| info.cert)
                    .filter(|cert| !cert.is_empty())
                    .ok_or_else(|| fail("a signature before any service identity".into()))?;
                let service_der =
                    synod_core::cert::pem_to_der(&service_pem).map_err(|e| fail(e.to_string()))?;
                let root = tree
                    .root()
                    .ok_or_else(|| fail("a signature over an empty ledger".into()))?;
                verify_signature_transaction(&public, tx.tx_id(), &root, &service_der)
                    .map_err(|e| fail(format!("signature: {e}")))?;
                signatures += 1;
                if evidence_seen {
                    unproven = None;
                }
                signer_identity = Some(service_pem);
            } else if let Some((base, digest)) = &unproven {
                if let Some(ev) = synod_core::snapshot::SnapshotEvidence::for_snapshot(&public, *base) {
                    if ev.digest != *digest {
                        return Err(fail(format!(
                            "the ledger's evidence for snapshot {base} names another digest"
                        )));
                    }
                    evidence_seen = true;
                }
            }
            if views.last().map(|v| v.0) != Some(tx.view) {
                if views.last().is_some_and(|v| v.0 > tx.view) {
                    return Err(fail(format!("view {} after a later view", tx.view)));
                }
                views.push((tx.view, tx.seqno));
            }
            state
                .apply(tx.seqno, public.maps.iter())
                .map_err(|e| fail(e.to_string()))?;
            tree.append(frame.entry.leaf().map_err(|e| fail(e.to_string()))?);
            if let Some(service_pem) = signer_identity {
                signed = Some(PublicRecovery {
                    state: state.clone(),
                    frontier: tree.frontier(),
                    views: views.clone(),
                    last: tx.tx_id(),
                    service_cert_pem: service_pem,
                    signatures,
                    base_snapshot: None,
                });
            }
            expected += 1;
        }
    }
    if let Some((base, _)) = unproven {
        return Err(err(
            dir,
            format!("snapshot {base} that the ledger starts from is not proven by a signed evidence transaction in it"),
        ));
    }
    let mut recovered =
        signed.ok_or_else(|| err(dir, "no signature transaction: nothing is vouched for".into()))?;
    recovered.base_snapshot = base_snapshot;
    Ok(recovered)
}

/// Private maps: name → key → value.
pub type PrivateMaps = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

/// The private maps of the previous service at `until`, folded from the private writes of its ledger files in
/// `dir` (opened with `sealer`, which holds the recovered secrets): key → value per map, deleted keys dropped.
/// Memory is what the private state holds, never the ledger.
pub fn private_state(
    dir: &Path,
    base_snapshot: Option<&Path>,
    until: u64,
    sealer: &Sealer,
) -> Result<PrivateMaps, LedgerRecoveryError> {
    let err = |path: &Path, reason: String| LedgerRecoveryError {
        path: path.to_path_buf(),
        reason,
    };
    let mut private = PrivateMaps::new();
    // A ledger that starts after a snapshot: its private values (sealed under the secret of its seqno) first.
    if let Some(path) = base_snapshot {
        let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
        let file = synod_core::snapshot::SnapshotFile::decode(bytes.as_slice())
            .map_err(|e| err(path, format!("not a snapshot: {e}")))?;
        for map in file.maps.iter().filter(|m| !maps::is_public(&m.name)) {
            let values = private.entry(map.name.clone()).or_default();
            for e in &map.entries {
                let clear = sealer
                    .unseal_snapshot_value(file.seqno, &map.name, &e.key, &e.value)
                    .map_err(|x| err(path, format!("{}: {x}", map.name)))?;
                values.insert(e.key.clone(), clear);
            }
        }
    }
    let chunks = list_chunks(dir).map_err(|e| err(dir, e.to_string()))?;
    for (_, path) in chunks.iter().filter(|(n, _)| n.start <= until) {
        let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
        for frame in decode_frames(&bytes) {
            let frame = frame.map_err(|e| err(path, e.to_string()))?;
            let tx = frame
                .entry
                .decode_transaction()
                .map_err(|e| err(path, e.to_string()))?;
            if tx.seqno > until {
                break;
            }
            if tx.private_sealed.is_empty() {
                continue;
            }
            let fail = |reason: String| err(path, format!("seqno {}: {reason}", tx.seqno));
            let clear = sealer
                .unseal(tx.tx_id(), &tx.private_sealed)
                .map_err(|e| fail(e.to_string()))?;
            let writes = WriteSet::decode(clear.as_slice()).map_err(|e| fail(e.to_string()))?;
            for mw in writes.maps {
                let map = private.entry(mw.name).or_default();
                for w in mw.writes {
                    match w.value {
                        Some(v) => map.insert(w.key, v),
                        None => map.remove(&w.key),
                    };
                }
            }
        }
    }
    private.retain(|_, m| !m.is_empty());
    Ok(private)
}

/// Bytes of recovered private values per transaction: recovery writes stay ordinary-sized transactions.
pub const PRIVATE_BATCH_BYTES: usize = 1 << 20;
/// How long the private recovery keeps trying to order its transactions (this node must be the primary).
const PRIVATE_RECOVERY_PATIENCE_S: u64 = 600;

/// Replays the previous service's private state on a background thread if its secrets are recovered and it is not
/// replayed yet, unless the replay runs already. Only the node started with `synod-node recover` holds the
/// previous ledger's files; elsewhere this does nothing.
pub fn start_private_recovery(node: &std::sync::Arc<crate::service::Node>) {
    let due =
        previous_service(&node.view().state).is_some_and(|p| p.secrets_recovered && !p.private_recovered);
    if !due || !node.holds_recovered_ledger() || node.private_recovery_started() {
        return;
    }
    let node = node.clone();
    let spawned = std::thread::Builder::new()
        .name("private-recovery".into())
        .spawn(move || match run_private_recovery(&node) {
            Ok(()) => tracing::info!("private recovery done: the service is open"),
            Err(e) => {
                tracing::error!("private recovery failed: {e:#}");
                node.private_recovery_stopped();
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the private recovery: {e}");
    }
}

fn run_private_recovery(node: &crate::service::Node) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(PRIVATE_RECOVERY_PATIENCE_S);
    let state = node.view().state.clone();
    let previous = previous_service(&state).context("this service recovers no previous service")?;
    node.sync_previous_service();
    let sealer = node.sealer().clone();
    // The snapshot the copied ledger continues, if it does not start at 1.
    let first = list_chunks(&node.ledger_dir())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .first()
        .map_or(1, |(name, _)| name.start);
    let base = (first > 1)
        .then(|| synod_core::snapshot::find_in(&node.snapshots_dir(), first - 1))
        .flatten();
    let private = private_state(&node.ledger_dir(), base.as_deref(), previous.last_seqno, &sealer)?;
    let keys: usize = private.values().map(BTreeMap::len).sum();
    tracing::info!(
        maps = private.len(),
        keys,
        "replaying the previous service's private state"
    );
    // Batches of whole key/value pairs, in map and key order.
    type Batch<'a> = Vec<(&'a str, &'a [u8], &'a [u8])>;
    let mut batches: Vec<Batch<'_>> = vec![Vec::new()];
    let mut bytes = 0;
    for (map, entries) in &private {
        for (k, v) in entries {
            if bytes + k.len() + v.len() > PRIVATE_BATCH_BYTES && !batches.last().is_some_and(Vec::is_empty) {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += k.len() + v.len();
            batches.last_mut().expect("never empty").push((map, k, v));
        }
    }
    let latest = node.sealer().latest();
    let last = batches.len() - 1;
    for (i, batch) in batches.iter().enumerate() {
        loop {
            let finish = i == last;
            let result = node.execute(|tx| {
                for (map, k, v) in batch {
                    tx.put(map, k, v);
                }
                if finish {
                    finish_recovery(tx, &latest)?;
                }
                Ok::<_, RecoveryError>(())
            });
            match result {
                Ok(_) => break,
                Err(crate::service::ExecError::Handler(e)) => return Err(e.into()),
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!("private recovery: {e}; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Err(e) => return Err(anyhow::anyhow!("private recovery gave up: {e}")),
            }
        }
    }
    Ok(())
}
