#![deny(missing_docs)]
//! Synod's replica. One binary, `synod-node`, runs it: see docs/API.md for its command line and endpoints and
//! docs/ARCHITECTURE.md for how a write becomes a replicated, committed, signed ledger entry.
//!
//! Modules by layer, lowest first (docs/ARCHITECTURE.md "Dependency graph", checked in CI): [`config`],
//! [`limits`], [`metrics`]; [`platform`], [`snapshot_codec`], [`ledger_files`]; [`js`]; [`governance`] (pure
//! rules in a transaction); [`consensus`] (the replica's state machine and its owner, pure); [`channels`],
//! [`historical`], [`simulation`]; [`service`] (the I/O shell: threads, boots, recovery); [`join`]; [`rpc`]
//! (HTTPS); [`apps`]. This root composes them.

pub mod apps;
pub mod channels;
pub mod config;
pub mod consensus;
pub mod governance;
pub mod historical;
pub mod join;
pub mod js;
pub mod ledger_files;
pub mod limits;
pub mod metrics;
pub mod platform;
pub mod rpc;
pub mod service;
pub mod simulation;
pub mod snapshot_codec;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::{JoinConfig, NodeConfig, StartConfig};
use crate::service::{write_atomically, Boot, Node};

/// How often the server checks whether the node stopped on a fatal error.
const FATAL_POLL_MS: u64 = 100;

async fn bind(cfg: &NodeConfig) -> anyhow::Result<(TcpListener, std::net::TcpListener)> {
    let rpc = TcpListener::bind(cfg.rpc_address)
        .await
        .with_context(|| format!("binding {}", cfg.rpc_address))?;
    let node = std::net::TcpListener::bind(cfg.node_address)
        .with_context(|| format!("binding {}", cfg.node_address))?;
    Ok((rpc, node))
}

fn holds_a_node(cfg: &NodeConfig) -> anyhow::Result<bool> {
    let paths = service::Paths {
        dir: cfg.data_dir.clone(),
    };
    if consensus::persist::exists(&paths.raft())? {
        return Ok(true);
    }
    // A node whose Raft log is still in RocksDB (moved to the node's own files as it starts).
    if !paths.db().exists() {
        return Ok(false);
    }
    let storage = synod_kv::storage::Storage::open(&paths.db()).context("opening the node's database")?;
    Ok(storage.holds_legacy_raft_log()?)
}

/// `synod-node start`: creates a service in an empty data directory, or resumes the node it holds.
pub async fn run_start(cfg: StartConfig) -> anyhow::Result<()> {
    let (rpc, node_listener) = bind(&cfg.node).await?;
    let boot = if holds_a_node(&cfg.node)? {
        if !cfg.user_certs.is_empty() || !cfg.member_certs.is_empty() {
            tracing::warn!("--user-cert/--member-cert are read only when a service is created; ignored");
        }
        Boot::Resume
    } else {
        let join_token_digest = if cfg.member_certs.is_empty() {
            let path = (cfg.join_token_file.clone()).unwrap_or_else(|| cfg.node.data_dir.join("join_token"));
            let token = join::load_or_create_join_token(&path)?;
            tracing::warn!(
                join_token = %path.display(),
                "creating a service without members"
            );
            Some(join::join_token_digest(&token))
        } else {
            if cfg.join_token_file.is_some() {
                tracing::warn!(
                    "--join-token-file is for services without members; the members trust nodes by vote"
                );
            }
            None
        };
        Boot::NewService {
            users: cfg.user_certs.clone(),
            members: cfg.member_certs.clone(),
            recovery_threshold: cfg.recovery_threshold,
            join_token_digest,
        }
    };
    serve(cfg.node, boot, rpc, node_listener).await
}

/// `synod-node recover`: recovers a lost service from its ledger files into a new data directory (a new service
/// identity in `Recovering`; docs/RECOVERY.md), or resumes the node DATA_DIR holds.
pub async fn run_recover(cfg: config::RecoverConfig) -> anyhow::Result<()> {
    let (rpc, node_listener) = bind(&cfg.node).await?;
    let boot = if holds_a_node(&cfg.node)? {
        tracing::warn!("DATA_DIR holds a node already: resuming it (--ledger is not read)");
        Boot::Resume
    } else {
        Boot::Recover {
            ledger: cfg.ledger,
            snapshots: cfg.snapshot,
        }
    };
    serve(cfg.node, boot, rpc, node_listener).await
}

/// `synod-node join`: joins the service at `--target`, or resumes a node that joined before.
pub async fn run_join(cfg: JoinConfig) -> anyhow::Result<()> {
    let (rpc, node_listener) = bind(&cfg.node).await?;
    let boot = if holds_a_node(&cfg.node)? {
        Boot::Resume
    } else {
        let platform = platform::for_config(&cfg.node)?;
        let node_published = match &cfg.node.node_published_address {
            Some(a) => a.clone(),
            None => node_listener.local_addr()?.to_string(),
        };
        let rpc_published = match &cfg.node.rpc_published_address {
            Some(a) => a.clone(),
            None => rpc.local_addr()?.to_string(),
        };
        let joined = join::join(&cfg, rpc_published, node_published, platform.as_ref()).await?;
        Boot::Joined {
            ids: joined.ids,
            snapshot: joined.snapshot,
            peers: joined.peers,
        }
    };
    serve(cfg.node, boot, rpc, node_listener).await
}

async fn serve(
    cfg: NodeConfig,
    boot: Boot,
    listener: TcpListener,
    node_listener: std::net::TcpListener,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    let runtime = tokio::runtime::Handle::current();
    let node = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || Node::start(&cfg, boot, addr, node_listener, runtime)).await??
    };
    if node.development_mode() {
        tracing::warn!(
            "DEVELOPMENT MODE: this service has no members. Nothing is decided by a consortium: it opened without a \
             vote and any node presenting the join token (and an allowed measurement) receives the service's \
             secrets. Do not keep real data in it; create services with --member-cert (docs/SECURITY.md)."
        );
    }
    let tls = rpc::tls_config(&node)?;
    let state = rpc::AppState::new(node.clone())?;
    let router = rpc::router(state.clone(), apps::routes());
    rpc::forward::serve_forwarded(state.clone(), router.clone());
    write_atomically(&cfg.data_dir.join("rpc_address"), addr.to_string().as_bytes())?;
    tracing::info!(node_address = %node.node_address, "listening on https://{addr}");

    let result = tokio::select! {
        r = rpc::serve(listener, tls, router, state) => r,
        _ = shutdown_signal() => {
            tracing::info!("stopping");
            Ok(())
        }
        reason = watch_fatal(node.clone()) => Err(anyhow::anyhow!("node stopped: {reason}")),
    };
    let stopping = node.clone();
    tokio::task::spawn_blocking(move || stopping.shutdown()).await?;
    result
}

async fn watch_fatal(node: Arc<Node>) -> String {
    loop {
        if let Some(reason) = node.fatal_error() {
            return reason;
        }
        tokio::time::sleep(Duration::from_millis(FATAL_POLL_MS)).await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
