//! The four ways a node comes up ([`Boot`]): a new service, a node that joined, a recovered service, and a node
//! resuming from its data directory. Each hands `Node::start` the same [`Booted`]; channels and threads then start
//! the same way for all.

use synod_core::tables::{ServiceInfo, ServiceStatus};

use super::*;

/// What every boot reads: the node's settings, files and platform, and the addresses it publishes.
pub(super) struct BootContext<'a> {
    pub cfg: &'a NodeConfig,
    pub paths: &'a Paths,
    pub storage: &'a Storage,
    /// The Raft log, written only by boot until the store thread takes it.
    pub raft: &'a RefCell<RaftLog>,
    pub platform: &'a dyn Platform,
    pub rpc_published: &'a str,
    pub node_address: &'a str,
    pub core: CoreConfig,
}

impl BootContext<'_> {
    /// A new service identity, and this node's identity endorsed by it (a service founded or recovered here).
    fn new_identities(&self) -> anyhow::Result<(Identity, Identity)> {
        let service = cert::generate_self_signed_with(self.cfg.curve, "Synod service", true)?;
        let (ips, names) = crate::config::certificate_names(self.rpc_published);
        let node = cert::generate_endorsed_with(self.cfg.curve, &self.cfg.node_name, &ips, &names, &service)?;
        Ok((service, node))
    }

    /// The nodes-table entry of this node as the one founding a service (new or recovered): Trusted, endorsed,
    /// with its own attestation evidence (also returned).
    fn founding_node_info(
        &self,
        ids: &Identities,
        keys: &Keys,
    ) -> anyhow::Result<(serde_json::Value, QuoteInfo)> {
        let mut info = NodeInfo::new(
            &self.cfg.node_name,
            &ids.node.cert_pem,
            NodeStatus::Trusted,
            self.rpc_published,
            self.node_address,
            &self.platform.measurement(),
        );
        info.endorsed = true;
        info.encryption_pub_key = Some(encryption_public_pem(&ids.encryption_key_pem)?);
        let own = own_evidence(self.platform, &keys.node_id)?;
        info.quote_info = Some(serde_json::to_value(&own)?);
        Ok((info.to_value(), own))
    }
}

/// What a boot hands the shell.
pub(super) struct Booted {
    pub ids: Identities,
    pub core: Core,
    /// Committed entries the stores missed before a restart, written before anything else.
    pub replay: Vec<CommittedEntry>,
    /// The ledger writer (a resumed node already opened and read its ledger).
    pub ledger: LedgerWriter,
    /// Peers known at join time.
    pub peers: Vec<PeerInfo>,
    /// The state a snapshot installed, for the stores.
    pub joined_state: Option<State>,
    /// The founding node's evidence, recorded at genesis; the others produce theirs at start.
    pub evidence: Option<QuoteInfo>,
}

/// Brings the node up the way `boot` says.
pub(super) fn boot(ctx: &BootContext<'_>, boot: Boot) -> anyhow::Result<Booted> {
    match boot {
        Boot::NewService {
            users,
            members,
            recovery_threshold,
            join_token_digest,
        } => new_service(ctx, users, members, recovery_threshold, join_token_digest),
        Boot::Joined { ids, snapshot, peers } => joined(ctx, ids, snapshot, peers),
        Boot::Recover { ledger, snapshots } => recovered(ctx, ledger, snapshots),
        Boot::Resume => resumed(ctx),
    }
}

/// A new service in an empty data directory: identities, genesis with the members and users given.
fn new_service(
    ctx: &BootContext<'_>,
    users: Vec<PathBuf>,
    member_specs: Vec<crate::config::MemberSpec>,
    recovery_threshold: Option<u64>,
    join_token_digest: Option<String>,
) -> anyhow::Result<Booted> {
    refuse_existing_ledger(ctx.paths, "refusing to create a new service over it")?;
    let (service, node) = ctx.new_identities()?;
    let ids = Identities {
        service,
        node,
        secret: LedgerSecret::generate()?,
        schedule: Vec::new(),
        encryption_key_pem: new_encryption_key()?,
    };
    save_identities(ctx.paths, &ids)?;
    let keys = keys_of(&ids)?;
    let (info, own) = ctx.founding_node_info(&ids, &keys)?;
    let evidence = Some(own);
    let certs: Vec<PathBuf> = member_specs.iter().map(|m| m.cert.clone()).collect();
    let members = read_identities(&certs)?;
    let mut member_encryption_keys = Vec::new();
    for (spec, (id, _)) in member_specs.iter().zip(&members) {
        if let Some(path) = &spec.encryption_key {
            let pem = read(path)?;
            synod_core::recovery::EncryptionPublicKey::from_pem(&pem)
                .with_context(|| format!("{}", path.display()))?;
            member_encryption_keys.push((id.clone(), pem));
        }
    }
    let threshold = recovery_threshold.unwrap_or(1);
    if !member_encryption_keys.is_empty() && threshold as usize > member_encryption_keys.len() {
        bail!(
            "--recovery-threshold {threshold} exceeds the {} members given an encryption key",
            member_encryption_keys.len()
        );
    }
    // With a consortium, the members open the service by vote; without one, it opens at once.
    let status = if members.is_empty() {
        ServiceStatus::Open
    } else {
        ServiceStatus::Opening
    };
    let genesis = Genesis {
        service_info: serde_json::to_value(ServiceInfo {
            cert: ids.service.cert_pem.clone(),
            status: Some(status),
            curve: Some(ctx.cfg.curve.as_str().to_string()),
            recovery_threshold: Some(threshold),
            other: serde_json::Map::new(),
        })?,
        member_encryption_keys,
        ledger_secret: ids.secret.clone(),
        users: read_identities(&users)?,
        members,
        node_info: info,
        code_ids: vec![ctx.platform.measurement()],
        constitution: crate::governance::DEFAULT_CONSTITUTION.to_string(),
        join_token_digest,
    };
    let sealer = sealer_of(&ids);
    let core = Core::new_service(keys, sealer, ctx.core, &genesis, now_secs())?;
    tracing::info!(dir = %ctx.paths.dir.display(), "created a new service");
    Ok(Booted {
        ids,
        core,
        replay: Vec::new(),
        ledger: LedgerWriter::open(&ctx.paths.ledger())?.writer,
        peers: Vec::new(),
        joined_state: None,
        evidence,
    })
}

/// A node that joined: the identities it received and the snapshot it starts from, if any.
fn joined(
    ctx: &BootContext<'_>,
    ids: Identities,
    snapshot: Option<Vec<u8>>,
    peers: Vec<PeerInfo>,
) -> anyhow::Result<Booted> {
    let mut joined_state = None;
    save_identities(ctx.paths, &ids)?;
    let sealer = sealer_of(&ids);
    let core = match &snapshot {
        // Decoded once (a million keys' values are decrypted here), for the disk and the core.
        Some(bytes) => {
            let decoded = snapshot_codec::decode(bytes, &sealer).context("decoding the snapshot")?;
            reset_to_snapshot(ctx.paths, &mut ctx.raft.borrow_mut(), bytes, &decoded)?;
            joined_state = Some(decoded.state.clone());
            Core::joining_from_snapshot(keys_of(&ids)?, sealer, ctx.core, bytes, decoded)?
        }
        None => Core::joining(keys_of(&ids)?, sealer, ctx.core, None)?,
    };
    Ok(Booted {
        ids,
        core,
        replay: Vec::new(),
        ledger: LedgerWriter::open(&ctx.paths.ledger())?.writer,
        peers,
        joined_state,
        evidence: None,
    })
}

/// A lost service recovered from its ledger files: a new identity over its verified public state, status
/// `Recovering` (docs/RECOVERY.md).
fn recovered(ctx: &BootContext<'_>, old: PathBuf, old_snapshots: Option<PathBuf>) -> anyhow::Result<Booted> {
    refuse_existing_ledger(ctx.paths, "recover into an empty data directory")?;
    let recovered = crate::service::recovery::recover_public(&old, old_snapshots.as_deref())
        .context("recovering the public ledger")?;
    tracing::info!(
        last = %recovered.last,
        signatures = recovered.signatures,
        "the previous service's public ledger verifies"
    );
    let (service, node) = ctx.new_identities()?;
    let previous_der = cert::pem_to_der(&recovered.service_cert_pem)?;
    let endorsement = cert::endorse_public_key(&previous_der, "Synod service", &[], &[], &service)?;
    // The new secret covers what the new service writes: the previous service's seqnos are under
    // secrets only the members can recover.
    let secret = LedgerSecret::generate()?;
    let ids = Identities {
        service,
        node,
        schedule: vec![(recovered.last.seqno + 1, secret.clone())],
        secret,
        encryption_key_pem: new_encryption_key()?,
    };
    save_identities(ctx.paths, &ids)?;
    crate::service::recovery::copy_ledger_prefix(&old, &ctx.paths.ledger(), recovered.last.seqno)?;
    let ledger_base = keep_base_snapshot(ctx, &recovered)?;
    let keys = keys_of(&ids)?;
    let sealer = sealer_of(&ids);
    let (bytes, decoded) = recovery_snapshot(ctx, &recovered, &keys, &sealer)?;
    let seqno = recovered.last.seqno;
    let joined_state = Some(decoded.state.clone());
    let (info, own) = ctx.founding_node_info(&ids, &keys)?;
    let evidence = Some(own);
    let node_id = keys.node_id.clone();
    let record = crate::governance::recovery::RecoveryRecord {
        service_cert_pem: &ids.service.cert_pem,
        endorsement: endorsement.clone(),
        node: (&node_id, info),
        last_seqno: seqno,
        snapshot_digest: hex::encode(snapshot_codec::digest(&bytes)),
        curve: ctx.cfg.curve.as_str(),
    };
    let (core, recovery_tx) = Core::recovered_service(
        keys,
        sealer,
        ctx.core,
        (&bytes, decoded),
        ledger_base,
        now_secs(),
        |tx| crate::governance::recovery::write_recovery(tx, &record).map_err(|e| e.to_string()),
    )?;
    tracing::info!(previous_last = seqno, recovery = %recovery_tx, "recovered the previous service's public state");
    let writer = LedgerWriter::open_after(&ctx.paths.ledger(), seqno)?.writer;
    Ok(Booted {
        ids,
        core,
        replay: Vec::new(),
        ledger: writer,
        peers: Vec::new(),
        joined_state,
        evidence,
    })
}

/// Keeps the snapshot the previous ledger continues (for the audit, and for the private replay: its private values
/// open once the members recover the secret). Not a committed name: never served or used to restart from. Returns
/// the seqno the copied ledger continues (0: it starts at 1).
fn keep_base_snapshot(
    ctx: &BootContext<'_>,
    recovered: &crate::service::recovery::PublicRecovery,
) -> anyhow::Result<u64> {
    match &recovered.base_snapshot {
        Some((seqno, bytes)) => {
            write_private(
                &ctx.paths
                    .snapshots()
                    .join(snapshot_codec::file_name(*seqno, None)),
                bytes,
            )?;
            Ok(*seqno)
        }
        None => Ok(0),
    }
}

/// The recovered public state as the new service's first snapshot, this node its only voter: written, and the
/// Raft log reset to start after it.
fn recovery_snapshot(
    ctx: &BootContext<'_>,
    recovered: &crate::service::recovery::PublicRecovery,
    keys: &Keys,
    sealer: &Sealer,
) -> anyhow::Result<(Vec<u8>, snapshot_codec::Decoded)> {
    let conf = raft::eraftpb::ConfState {
        voters: vec![crate::consensus::raft_id(&keys.node_id)],
        ..Default::default()
    };
    let bytes = snapshot_codec::encode(
        &recovered.state,
        recovered.last.view,
        protobuf::Message::write_to_bytes(&conf)?,
        &recovered.frontier,
        &recovered.views,
        sealer,
    )?;
    let seqno = recovered.last.seqno;
    write_private(
        &ctx.paths.snapshots().join(snapshot_codec::file_name(seqno, None)),
        &bytes,
    )?;
    write_atomically(&ctx.paths.file(RECOVERED_FROM), seqno.to_string().as_bytes())?;
    let decoded = snapshot_codec::decode(&bytes, sealer).context("decoding the recovery snapshot")?;
    let meta = snapshot_codec::raft_metadata(seqno, recovered.last.view, &decoded.file.conf_state)?;
    let hs = raft::eraftpb::HardState {
        term: recovered.last.view,
        commit: seqno,
        ..Default::default()
    };
    reset_log_to_snapshot(ctx.paths, &mut ctx.raft.borrow_mut(), &bytes, &meta, &hs)?;
    Ok((bytes, decoded))
}

/// The node this data directory holds: its stored state and Raft log, the ledger replayed from the newest
/// usable snapshot.
fn resumed(ctx: &BootContext<'_>) -> anyhow::Result<Booted> {
    let ids = load_identities(ctx.paths).context("this data directory holds no node identity")?;
    let sealer = sealer_of(&ids);
    let mut log = persist::load(&ctx.paths.raft())?;
    let mut state = ctx
        .storage
        .load_state(&sealer)
        .context("loading the stored state")?;
    let compacted = log.compacted().index;
    // Only the open chunk is read here: how far the ledger goes is all the next check needs.
    let mut opened = LedgerWriter::open_after(&ctx.paths.ledger(), u64::MAX).context("reading the ledger")?;
    let ledger_last = opened.writer.last_seqno();
    // A snapshot install cut short leaves the state, the commit index or the ledger behind the log's
    // start: redo it from the snapshot file (every step of the install can be repeated).
    if compacted > 0
        && (state.version() < compacted || log.hard_state().commit < compacted || ledger_last < compacted)
    {
        let path = find_snapshot(ctx.paths, compacted)
            .with_context(|| format!("the Raft log starts after snapshot {compacted}, which is missing"))?;
        let bytes = std::fs::read(&path)?;
        drop(opened);
        state = install_snapshot_on_disk(
            ctx.paths,
            ctx.storage,
            &mut ctx.raft.borrow_mut(),
            &sealer,
            &bytes,
        )?
        .state;
        log = persist::load(&ctx.paths.raft())?;
        opened = LedgerWriter::open_after(&ctx.paths.ledger(), u64::MAX).context("reading the ledger")?;
    }
    let ledger_base = opened.start - 1;
    let (base, base_snapshot) = restore_base(ctx.paths, ledger_base, state.version())?;
    drop(opened);
    let opened = LedgerWriter::open_after(&ctx.paths.ledger(), base).context("reading the ledger")?;
    tracing::info!(
        from_snapshot = base,
        entries = opened.entries.len(),
        "replaying the ledger after the newest usable snapshot"
    );
    let restore = Restore {
        log,
        state,
        ledger: opened.entries,
        base_snapshot,
        ledger_base,
    };
    let (mut core, replay) =
        Core::restore(keys_of(&ids)?, sealer, ctx.core, restore).context("restoring from the ledger")?;
    if let Some((cs, index)) = core.take_restored_conf() {
        ctx.raft.borrow_mut().write(&LogWrite {
            conf_state: Some(&cs),
            conf_index: Some(index),
            ..Default::default()
        })?;
    }
    tracing::info!(committed = %core.committed(), last = core.last_seqno(), "resumed");
    Ok(Booted {
        ids,
        core,
        replay,
        ledger: opened.writer,
        peers: Vec::new(),
        joined_state: None,
        evidence: None,
    })
}
