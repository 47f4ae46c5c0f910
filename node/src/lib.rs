//! Synod's replica. One binary, `synod-node`, runs it: see docs/API.md for its command line and endpoints and
//! docs/ARCHITECTURE.md for how a write becomes a committed, signed ledger entry.
//!
//! Modules, pure first: [`replica`] (ordering, Merkle tree, signatures, commit), then the I/O shell:
//! [`ledger`] (chunk files), [`service`] (threads, start-up, recovery), [`rpc`] (HTTPS) and [`apps`].

pub mod apps;
pub mod config;
pub mod consensus;
pub mod core;
pub mod ledger;
pub mod replica;
pub mod rpc;
pub mod service;
pub mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::NodeConfig;
use crate::service::Node;

/// How often the server checks whether the node stopped on a fatal error.
const FATAL_POLL_MS: u64 = 100;

/// Runs a node until SIGINT/SIGTERM or a fatal error.
pub async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(cfg.rpc_address)
        .await
        .with_context(|| format!("binding {}", cfg.rpc_address))?;
    let addr = listener.local_addr()?;
    let node = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || Node::start(&cfg, addr)).await??
    };
    let tls = rpc::tls_config(&node)?;
    let router = rpc::router(rpc::AppState {
        node: node.clone(),
        max_body_bytes: cfg.max_body_bytes,
    });
    write_atomically(&cfg.data_dir.join("rpc_address"), addr.to_string().as_bytes())?;
    tracing::info!("listening on https://{addr}");

    let result = tokio::select! {
        r = rpc::serve(listener, tls, router) => r,
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

fn write_atomically(path: &std::path::Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
