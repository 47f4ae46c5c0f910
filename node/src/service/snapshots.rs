//! The node's snapshot files: written by the snapshotter, committed once their evidence commits, offered to
//! followers, installed from the primary or a join, and found again at restart. The format is
//! `crate::snapshot_codec`; where snapshots are taken is decided in the ledger (`crate::consensus::machine`).

use super::*;

/// The committed snapshot file for `seqno` (or a snapshot received at that seqno), if on disk.
pub fn find_snapshot(paths: &Paths, seqno: u64) -> Option<PathBuf> {
    snapshot_codec::find_in(&paths.snapshots(), seqno)
}

/// Committed snapshots on disk, newest first: (seqno, evidence seqno, path).
pub fn committed_snapshots(paths: &Paths) -> Vec<(u64, u64, PathBuf)> {
    let mut found: Vec<(u64, u64, PathBuf)> = std::fs::read_dir(paths.snapshots())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_str()?.to_string();
                    let (s, ev) = snapshot_codec::parse_committed_name(&name)?;
                    Some((s, ev, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found
}

/// Where a restart's history starts: the newest committed snapshot the stored state has reached that lies within
/// the ledger (so only the ledger after it is read and replayed), else the snapshot the ledger starts after (which
/// must exist), else genesis. Returns its seqno and bytes.
pub(super) fn restore_base(
    paths: &Paths,
    ledger_base: u64,
    state_version: u64,
) -> anyhow::Result<(u64, Option<Vec<u8>>)> {
    for (seqno, _, path) in committed_snapshots(paths) {
        if seqno >= ledger_base && seqno <= state_version && seqno > 0 {
            match std::fs::read(&path) {
                Ok(bytes) => return Ok((seqno, Some(bytes))),
                Err(e) => tracing::warn!("cannot read {}: {e}; trying an older snapshot", path.display()),
            }
        }
    }
    // A recovered node never replays the previous service's ledger: its private writes may not open.
    let recovered = std::fs::read_to_string(paths.file(RECOVERED_FROM)).ok();
    if let Some(seqno) = recovered.and_then(|s| s.trim().parse::<u64>().ok()) {
        let path = find_snapshot(paths, seqno)
            .with_context(|| format!("the recovery snapshot {seqno} is missing"))?;
        return Ok((seqno, Some(std::fs::read(path)?)));
    }
    if ledger_base == 0 {
        return Ok((0, None));
    }
    let path = find_snapshot(paths, ledger_base).with_context(|| {
        format!(
            "the ledger starts at {} but snapshot {ledger_base} is missing",
            ledger_base + 1
        )
    })?;
    Ok((ledger_base, Some(std::fs::read(path)?)))
}

/// Installs a snapshot on disk: the file, the Raft log reset to it, the stored state and the ledger restart.
/// Safe to repeat after a crash part-way (resume redoes it when the state lags the log).
pub(super) fn install_snapshot_on_disk(
    paths: &Paths,
    storage: &Storage,
    raft: &mut RaftLog,
    sealer: &Sealer,
    bytes: &[u8],
) -> anyhow::Result<snapshot_codec::Decoded> {
    let decoded = snapshot_codec::decode(bytes, sealer).context("decoding the snapshot")?;
    reset_to_snapshot(paths, raft, bytes, &decoded)?;
    storage.replace_state(&decoded.state, sealer)?;
    Ok(decoded)
}

/// [`install_snapshot_on_disk`] but the stored state: the snapshot file, the Raft log and the ledger.
pub(super) fn reset_to_snapshot(
    paths: &Paths,
    raft: &mut RaftLog,
    bytes: &[u8],
    decoded: &snapshot_codec::Decoded,
) -> anyhow::Result<()> {
    let seqno = decoded.file.seqno;
    let meta = snapshot_codec::raft_metadata(seqno, decoded.file.view, &decoded.file.conf_state)
        .context("snapshot configuration")?;
    let stored = raft.hard_state();
    let hs = raft::eraftpb::HardState {
        term: decoded.file.view.max(stored.term),
        vote: stored.vote,
        commit: seqno,
        ..Default::default()
    };
    reset_log_to_snapshot(paths, raft, bytes, &meta, &hs)?;
    LedgerWriter::open(&paths.ledger())?
        .writer
        .reset_after_snapshot(seqno)?;
    Ok(())
}

/// Keeps the snapshot file (as `.received` unless already on disk) and resets the Raft log to start after it,
/// with `hs` in the same write so a crash right after never leaves the commit behind the log's start.
pub(super) fn reset_log_to_snapshot(
    paths: &Paths,
    raft: &mut RaftLog,
    bytes: &[u8],
    meta: &SnapshotMetadata,
    hs: &raft::eraftpb::HardState,
) -> anyhow::Result<()> {
    let seqno = meta.index;
    std::fs::create_dir_all(paths.snapshots())?;
    if find_snapshot(paths, seqno).is_none() {
        write_private(
            &paths.snapshots().join(format!("snapshot_{seqno}.received")),
            bytes,
        )?;
    }
    raft.write(&LogWrite {
        clear: true,
        compacted: Some(meta),
        conf_state: Some(meta.get_conf_state()),
        conf_index: Some(seqno),
        hard_state: Some(hs),
        ..Default::default()
    })?;
    Ok(())
}

/// Offers the newest committed snapshot to followers that fall behind. A file damaged on disk is not offered: it
/// is checked whole once, here.
pub(super) fn offer_newest_snapshot(paths: &Paths, sealer: &Sealer, core: &mut Core) {
    let Some((_, _, path)) = committed_snapshots(paths).into_iter().next() else {
        return;
    };
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    let offered = snapshot_codec::decode(&bytes, sealer)
        .map_err(|e| e.to_string())
        .and_then(|_| core.offer_snapshot(bytes).map_err(|e| e.to_string()));
    if let Err(e) = offered {
        tracing::warn!("cannot offer snapshot {}: {e}", path.display());
    }
}

impl Node {
    /// Marks this node's snapshot file at `seqno` committed, if it is written and matches the evidence.
    pub(super) fn commit_snapshot_file(
        &self,
        seqno: u64,
        evidence_seqno: u64,
        digest: String,
    ) -> anyhow::Result<Option<Input>> {
        let written = self
            .paths
            .snapshots()
            .join(snapshot_codec::file_name(seqno, None));
        let Ok(bytes) = std::fs::read(&written) else {
            // This node's snapshotter is behind: finish when it has written the file.
            return Ok(Some(Input::SnapshotNotWritten {
                seqno,
                evidence_seqno,
                digest,
            }));
        };
        if hex::encode(snapshot_codec::digest(&bytes)) != digest {
            tracing::error!(
                seqno,
                "this node's snapshot differs from the primary's evidence; not using it"
            );
            return Ok(None);
        }
        let committed = self
            .paths
            .snapshots()
            .join(snapshot_codec::file_name(seqno, Some(evidence_seqno)));
        std::fs::rename(&written, &committed)?;
        tracing::info!(seqno, evidence = evidence_seqno, "snapshot committed");
        for (_, _, old) in committed_snapshots(&self.paths).into_iter().skip(SNAPSHOTS_KEPT) {
            let _ = std::fs::remove_file(old);
        }
        Ok(Some(Input::SnapshotFileCommitted { seqno, bytes }))
    }

    pub(super) fn write_snapshot(&self, job: SnapshotJob) -> anyhow::Result<()> {
        let seqno = job.state.version();
        let started = Instant::now();
        let bytes = job.encode(&self.sealer)?;
        let digest = snapshot_codec::digest(&bytes);
        let encoded = started.elapsed();
        write_private(
            &self
                .paths
                .snapshots()
                .join(snapshot_codec::file_name(seqno, None)),
            &bytes,
        )?;
        tracing::info!(
            seqno,
            bytes = bytes.len(),
            encode_ms = encoded.as_millis() as u64,
            write_ms = (started.elapsed() - encoded).as_millis() as u64,
            "wrote a snapshot"
        );
        // Must not be lost, so it waits for room, without holding the lock wake() takes.
        let inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _ = inbox.send(LoopEvent::SnapshotWritten { seqno, digest });
        Ok(())
    }
}
