//! Priority 6: a node joins a service holding a million keys from its newest committed snapshot plus the ledger
//! suffix, never the whole history. Prints how long the joiner took from its trust vote to serving and to
//! answering reads of the newest keys; asserts only what it serves.
//!
//! `SYNOD_JOIN_KEYS` sets the number of keys (default 1,000,000). Timed on release binaries by
//! `scripts/bench-join.sh` (`SYNOD_BIN_DIR=target/release`); this test runs the debug ones.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use serde_json::{json, Value};
use synod_client::{Client, TxId};
use synod_tests::{bounded, Network};

/// Accounts opened per transaction (the bundle's maximum).
const BATCH: u64 = 10_000;
/// Balance of every account, in cents.
const CHECKING: u64 = 7;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn keys() -> u64 {
    std::env::var("SYNOD_JOIN_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Seqnos of the committed snapshots in `dir`.
fn committed_snapshots(dir: &Path) -> anyhow::Result<Vec<u64>> {
    let mut seqnos = Vec::new();
    for entry in std::fs::read_dir(dir.join("snapshots"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some((seqno, _)) = synod_core::snapshot::parse_committed_name(&name) {
            seqnos.push(seqno);
        }
    }
    Ok(seqnos)
}

async fn account(c: &Client, name: &str) -> anyhow::Result<Option<Value>> {
    let r = c.get(&format!("/app/smallbank/accounts/{name}")).await?;
    match r.status.as_u16() {
        200 => Ok(Some(r.json_value()?)),
        404 => Ok(None),
        s => anyhow::bail!("GET account {name}: {s} {}", r.text()),
    }
}

async fn open_batch(c: &Client, from: u64) -> anyhow::Result<TxId> {
    let count = BATCH.min(keys() - from);
    let body = json!({"prefix": "a", "from": from, "count": count, "checking": CHECKING});
    let r = c.post_json("/app/smallbank/accounts/batch", &body).await?;
    ensure!(
        r.status.as_u16() == 201,
        "batch at {from}: {} {}",
        r.status,
        r.text()
    );
    Ok(r.tx_id()?)
}

#[tokio::test]
async fn a_node_joins_a_million_key_service_from_its_snapshot() -> anyhow::Result<()> {
    bounded(900, async {
        let keys = keys();
        let mut net = Network::start(1, &["--snapshot-tx-interval", "20"]).await?;
        net.deploy_bundle(&repo("js-apps/smallbank")).await?;
        let c = net.user_client(0)?;
        let started = Instant::now();
        let mut last = None;
        for from in (0..keys).step_by(BATCH as usize) {
            last = Some(open_batch(&c, from).await?);
        }
        let last = last.context("no keys")?;
        net.wait_committed_everywhere(last).await?;
        let loaded = started.elapsed();
        // Small writes until a snapshot taken after the last batch is committed (a snapshot of a million keys takes
        // a debug build many seconds to write).
        let mut filler = 0;
        let deadline = Instant::now() + Duration::from_secs(300);
        while !committed_snapshots(&net.nodes[0].dir)?
            .iter()
            .any(|s| *s >= last.seqno)
        {
            ensure!(Instant::now() < deadline, "no committed snapshot covers seqno {}", last.seqno);
            let body = json!({"name": format!("filler{filler}"), "checking": 1});
            let r = c.post_json("/app/smallbank/accounts", &body).await?;
            ensure!(r.status.as_u16() == 201, "{} {}", r.status, r.text());
            filler += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let snapshotted = started.elapsed() - loaded;

        let i = net.spawn_joiner(&[])?;
        let node_id = net.wait_pending(i).await?;
        let trusted = Instant::now();
        net.pass(0, "transition_node_to_trusted", json!({ "node_id": node_id }))
            .await?;
        let voted = trusted.elapsed();
        net.nodes[i].wait_listening()?;
        let serving = trusted.elapsed();
        let joiner = net.user_client(i)?;
        let newest = format!("a{}", keys - 1);
        let deadline = Instant::now() + Duration::from_secs(120);
        while account(&joiner, &newest).await?.is_none() {
            ensure!(Instant::now() < deadline, "the joiner never served {newest}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let caught_up = trusted.elapsed();

        // It started from the snapshot, not from the beginning of the ledger.
        let state = joiner.get("/node/state").await?.json_value()?;
        let startup = state["startup_seqno"].as_u64().context("startup_seqno")?;
        ensure!(startup >= last.seqno, "the joiner started at seqno {startup}, before the last batch");
        // And serves the same state: the first, last and some accounts between, and none past the last.
        for k in [0, 1, keys / 3, keys / 2, keys - 2, keys - 1] {
            let a = account(&joiner, &format!("a{k}")).await?.with_context(|| format!("a{k} missing"))?;
            ensure!(a["checking"] == CHECKING, "a{k}: {a}");
        }
        ensure!(account(&joiner, &format!("a{keys}")).await?.is_none());
        println!(
            "join: {keys} keys loaded in {:.1} s, a snapshot covering them committed {:.1} s later ({filler} filler \
             writes); joiner started at seqno {startup}; from the \
             trust vote: vote passed {:.2} s, serving {:.2} s, newest key readable {:.2} s",
            loaded.as_secs_f64(),
            snapshotted.as_secs_f64(),
            voted.as_secs_f64(),
            serving.as_secs_f64(),
            caught_up.as_secs_f64(),
        );
        // Where the joiner's time went (its log is timestamped).
        for line in net.nodes[i].log_tail(60).lines() {
            if ["join", "snapshot", "listening", "serving", "resumed"].iter().any(|w| line.contains(w)) {
                println!("joiner: {line}");
            }
        }
        Ok(())
    })
    .await
}
