//! Priority 2, end to end: networks of real `synod-node` processes replicating over mutually authenticated TLS on
//! 127.0.0.1. Each test names the user step of the issue it covers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use serde_json::json;
use synod_client::{Body, Client, Method, TxId, TxStatus};
use synod_tests::{bounded, post_log, Network};
use tokio::sync::Mutex;

const COMMIT_WAIT: Duration = Duration::from_secs(30);

async fn post(client: &Client, id: u64, msg: &str) -> anyhow::Result<TxId> {
    post_log(client, id, msg, Duration::from_secs(20)).await
}

/// Issue 14: nodes on P-256 or Ed25519 keys (and a service on the same curve) join over mutual TLS, replicate,
/// forward and serve receipts (the default, P-384, is what every other test runs).
#[tokio::test]
async fn nodes_on_the_other_curves_join_replicate_and_sign() -> anyhow::Result<()> {
    bounded(150, async {
        for curve in ["secp256r1", "ed25519"] {
            let mut net = Network::start(2, &["--curve", curve]).await?;
            let p = net.primary().await?;
            let via_backup = post(&net.user_client((p + 1) % 2)?, 1, curve).await?;
            net.wait_committed_everywhere(via_backup).await?;
            let cert = std::fs::read_to_string(&net.service_cert)?;
            for i in 0..2 {
                let receipt = net.user_client(i)?.receipt(via_backup, true).await?;
                synod_client::verify_receipt_bytes(&receipt, &cert)
                    .with_context(|| format!("{curve}, node {i}"))?;
            }
        }
        Ok(())
    })
    .await
}

/// Steps 1, 2 and 5: a 3-node network commits once a majority has the write; a write sent to a backup is
/// forwarded to the primary; reads are served locally; ledgers are identical and audit clean.
#[tokio::test]
async fn three_nodes_commit_writes_sent_to_any_node() -> anyhow::Result<()> {
    bounded(180, async {
        let mut net = Network::start(3, &["--ledger-chunk-bytes", "20000"]).await?;
        let p = net.primary().await?;
        let backup = (p + 1) % 3;
        let on_primary = post(&net.user_client(p)?, 1, "via the primary").await?;
        let via_backup = post(&net.user_client(backup)?, 2, "via a backup").await?;
        ensure!(
            via_backup.seqno > on_primary.seqno,
            "the backup forwarded to the primary, which ordered it"
        );
        net.wait_committed_everywhere(via_backup).await?;
        for i in 0..3 {
            let c = net.user_client(i)?;
            for (id, msg) in [(1, "via the primary"), (2, "via a backup")] {
                let r = c.get(&format!("/app/log/private?id={id}")).await?;
                ensure!(
                    r.status == 200 && r.json_value()?["msg"] == msg,
                    "node {i} read {id}: {}",
                    r.text()
                );
            }
        }
        // A bad write sent to a backup gets the primary's error, unchanged.
        let r = net
            .user_client(backup)?
            .call(
                Method::POST,
                "/app/log/private",
                Some(Body::Bytes {
                    content_type: Some("application/json".into()),
                    bytes: b"{nope".to_vec(),
                }),
                &[],
            )
            .await?;
        ensure!(r.status == 400, "{}", r.text());
        // Enough writes to close a few chunks, through every node.
        let mut last = TxId::default();
        for i in 0..150u64 {
            last = post(&net.user_client((i % 3) as usize)?, 100 + i, &"x".repeat(200)).await?;
        }
        net.wait_committed_everywhere(last).await?;
        let info = net
            .user_client(backup)?
            .get_json::<serde_json::Value>("/node/network/nodes")
            .await?;
        ensure!(info["nodes"].as_array().map_or(0, |a| a.len()) == 3, "{info}");
        net.stop_and_check_ledgers()
    })
    .await
}

/// Step 3: `kill -9` of the primary under load: a new primary is elected, clients move on, no write reported
/// Committed is lost, and writes lost in the view change report Invalid.
#[tokio::test]
async fn killing_the_primary_under_load_loses_no_committed_write() -> anyhow::Result<()> {
    bounded(240, async {
        let mut net = Network::start(3, &["--ledger-chunk-bytes", "20000"]).await?;
        let old = net.primary().await?;
        let old_view = net
            .user_client(old)?
            .get_json::<serde_json::Value>("/node/network")
            .await?["current_view"]
            .as_u64()
            .context("view")?;
        let acked: Arc<Mutex<BTreeMap<u64, TxId>>> = Arc::default();
        let issued: Arc<Mutex<Vec<TxId>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4u64 {
            let c = net.failover_client()?;
            let (acked, issued, stop) = (acked.clone(), issued.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                for i in 0u64.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let key = w * 1_000_000 + i;
                    let body = Body::Json(json!({"id": key, "msg": format!("v{key}")}));
                    let Ok(r) = c
                        .call_with_retry(
                            Method::POST,
                            "/app/log/private",
                            Some(body),
                            &[],
                            Duration::from_secs(20),
                        )
                        .await
                    else {
                        continue;
                    };
                    let Ok(id) = r.tx_id() else { continue };
                    issued.lock().await.push(id);
                    if let Ok(TxStatus::Committed) = c.wait_for_commit(id, COMMIT_WAIT).await {
                        acked.lock().await.insert(key, id);
                    }
                }
            }));
        }
        for _ in 0..1000 {
            if acked.lock().await.len() >= 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        net.nodes[old].kill9();
        let before_kill = acked.lock().await.len();
        // Writes go on through the new primary.
        for _ in 0..3000 {
            if acked.lock().await.len() >= before_kill + 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            let _ = w.await;
        }
        let new = net.primary().await?;
        ensure!(new != old, "a new primary was elected");
        let acked = acked.lock().await.clone();
        ensure!(
            acked.len() >= before_kill + 100,
            "writes did not resume after the failover ({} acked)",
            acked.len()
        );
        let c = net.user_client(new)?;
        let view = c.get_json::<serde_json::Value>("/node/network").await?["current_view"]
            .as_u64()
            .context("view")?;
        ensure!(view > old_view, "view {view} after {old_view}");
        for (key, id) in &acked {
            let r = c.get(&format!("/app/log/private?id={key}")).await?;
            ensure!(r.status == 200, "committed write {key} ({id}) lost: {}", r.text());
            ensure!(c.tx_status(*id).await? == TxStatus::Committed);
        }
        let mut invalid = 0;
        for id in issued.lock().await.iter() {
            match c.wait_for_commit(*id, COMMIT_WAIT).await {
                Ok(TxStatus::Committed) => {}
                Err(synod_client::Error::TxInvalid(_)) => invalid += 1,
                other => anyhow::bail!("{id}: {other:?}"),
            }
        }
        println!(
            "{} writes acknowledged, {invalid} lost in the view change and reported Invalid",
            acked.len()
        );
        // The old primary comes back as a backup and catches up; every ledger agrees.
        net.nodes[old].restart()?;
        let last = post(&net.failover_client()?, 7, "after the failover").await?;
        net.wait_committed_everywhere(last).await?;
        let r = net.user_client(old)?.get("/app/log/private?id=7").await?;
        ensure!(r.status == 200, "{}", r.text());
        net.stop_and_check_ledgers()
    })
    .await
}

/// Step 3 (backups): a backup killed with `kill -9` comes back and catches up.
#[tokio::test]
async fn a_killed_backup_restarts_and_catches_up() -> anyhow::Result<()> {
    bounded(180, async {
        let mut net = Network::start(3, &["--ledger-chunk-bytes", "4000"]).await?;
        let p = net.primary().await?;
        let b = (p + 1) % 3;
        net.nodes[b].kill9();
        let c = net.user_client(p)?;
        let mut last = TxId::default();
        for i in 0..50u64 {
            last = post(&c, i, "while a backup was down").await?;
        }
        ensure!(
            c.wait_for_commit(last, COMMIT_WAIT).await? == TxStatus::Committed,
            "two of three still commit"
        );
        net.nodes[b].restart()?;
        net.wait_committed_everywhere(last).await?;
        let r = net.user_client(b)?.get("/app/log/private?id=49").await?;
        ensure!(r.status == 200, "{}", r.text());
        net.stop_and_check_ledgers()
    })
    .await
}

/// Nodes that publish DNS names instead of IP addresses (as Kubernetes pods do: their IPs change when they
/// restart, their names stay) record and use those names: peers resolve them to replicate, a backup restarts and
/// catches up, the nodes table and `/node/primary` name them, and each node's certificate is valid for its name.
#[tokio::test]
async fn nodes_published_by_dns_name_replicate_and_fail_over() -> anyhow::Result<()> {
    bounded(180, async {
        let mut net = Network::start_named(3, &["--ledger-chunk-bytes", "4000"]).await?;
        let p = net.primary().await?;
        let nodes = net.nodes[p]
            .client(None)?
            .get_json::<serde_json::Value>("/node/network/nodes")
            .await?;
        let text = nodes.to_string();
        for n in &net.nodes {
            ensure!(
                text.contains(&n.published_addr()),
                "{} not recorded: {text}",
                n.published_addr()
            );
        }
        let c = net.user_client(p)?;
        let mut last = TxId::default();
        for i in 0..20u64 {
            last = post(&c, i, "named").await?;
        }
        net.wait_committed_everywhere(last).await?;
        // A backup killed and restarted catches up through its peers' names.
        let b = (p + 1) % 3;
        net.nodes[b].kill9();
        for i in 20..40u64 {
            last = post(&c, i, "while a backup was down").await?;
        }
        net.nodes[b].restart()?;
        net.wait_committed_everywhere(last).await?;
        // A client that reaches a node by its name verifies the node's certificate for that name.
        let url = format!("https://{}", net.nodes[b].published_addr());
        let (cert, key) = (
            std::fs::read_to_string(&net.user.cert)?,
            std::fs::read_to_string(&net.user.key)?,
        );
        let named = Client::new(
            &url,
            &std::fs::read_to_string(&net.service_cert)?,
            Some((&cert, &key)),
        )?;
        let r = named.get("/app/log/private?id=39").await?;
        ensure!(r.status == 200, "{}", r.text());
        net.stop_and_check_ledgers()
    })
    .await
}

/// Step 4: a new node joins from a committed snapshot plus the ledger suffix, not by replaying all history, and
/// becomes a voter; its ledger starts after the snapshot and still audits clean.
#[tokio::test]
async fn a_node_joins_from_a_snapshot() -> anyhow::Result<()> {
    bounded(180, async {
        let mut net = Network::start(2, &["--snapshot-tx-interval", "50"]).await?;
        let p = net.primary().await?;
        let c = net.user_client(p)?;
        let mut last = TxId::default();
        for i in 0..200u64 {
            last = post(&c, i, "history").await?;
        }
        net.wait_committed_everywhere(last).await?;
        // Let the snapshot's evidence commit.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let j = net.join_node(&[]).await?;
        net.wait_for_voters(3).await?;
        let state = net.nodes[j]
            .client(None)?
            .get_json::<serde_json::Value>("/node/state")
            .await?;
        let start = state["history_start_seqno"].as_u64().context("history start")?;
        ensure!(
            start > 50,
            "the new node replayed from seqno {start}, not from a snapshot"
        );
        let after = post(&c, 1000, "after the join").await?;
        net.wait_committed_everywhere(after).await?;
        let r = net.user_client(j)?.get("/app/log/private?id=5").await?;
        ensure!(
            r.status == 200 && r.json_value()?["msg"] == "history",
            "{}",
            r.text()
        );
        let receipt = net.user_client(j)?.receipt(after, false).await?;
        synod_client::verify_receipt_bytes(&receipt, &std::fs::read_to_string(&net.service_cert)?)?;
        let snapshots: Vec<_> = std::fs::read_dir(net.nodes[j].dir.join("snapshots"))?
            .filter_map(|e| e.ok())
            .collect();
        ensure!(!snapshots.is_empty(), "the snapshot it started from is kept");
        net.stop_and_check_ledgers()
    })
    .await
}

/// Reconfiguration: the members retire a backup by vote (`remove_node`); it leaves Raft, reports Retired, and can
/// be shut down while the rest keeps committing.
#[tokio::test]
async fn retiring_a_backup_by_vote() -> anyhow::Result<()> {
    bounded(180, async {
        let mut net = Network::start(3, &[]).await?;
        let p = net.primary().await?;
        let b = (p + 1) % 3;
        let retiree = net.nodes[b]
            .client(None)?
            .get_json::<serde_json::Value>("/node/state")
            .await?["node_id"]
            .as_str()
            .context("node id")?
            .to_string();
        net.pass(p, "remove_node", json!({"node_id": retiree})).await?;
        net.wait_for_voters(2).await?;
        let mut retired = false;
        for _ in 0..100 {
            let s = net.nodes[b]
                .client(None)?
                .get_json::<serde_json::Value>("/node/state")
                .await?;
            if s["state"] == "Retired" {
                retired = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(retired, "the retired node does not report Retired");
        net.nodes[b].terminate()?;
        let id = post(&net.user_client(p)?, 1, "after the retirement").await?;
        ensure!(net.user_client(p)?.wait_for_commit(id, COMMIT_WAIT).await? == TxStatus::Committed);
        let nodes = net
            .user_client(p)?
            .get_json::<serde_json::Value>("/node/network/nodes")
            .await?;
        let status = nodes["nodes"]
            .as_array()
            .context("nodes")?
            .iter()
            .find(|n| n["node_id"] == retiree.as_str())
            .map(|n| n["status"].clone());
        ensure!(status == Some(json!("Retired")), "{nodes}");
        Ok(())
    })
    .await
}

/// Issue 12: a write sent to a backup was run there first, and one that failed before writing was answered from
/// the backup's stale state: deleting a record just written through the primary answered 404 and deleted nothing.
/// Requests that may write now go to the primary before they run.
#[tokio::test]
async fn a_delete_sent_to_a_backup_right_after_a_write_deletes_the_record() -> anyhow::Result<()> {
    bounded(120, async {
        let mut net = Network::start(3, &[]).await?;
        let p = net.primary().await?;
        let (primary, backup) = (net.user_client(p)?, net.user_client((p + 1) % 3)?);
        for k in 0..40u64 {
            post(&primary, k, "to be deleted").await?;
            let r = backup
                .call(Method::DELETE, &format!("/app/log/private?id={k}"), None, &[])
                .await?;
            ensure!(
                r.status == 200,
                "DELETE of record {k} through a backup right after its write: {} {}",
                r.status,
                r.text()
            );
        }
        let r = primary.get("/app/log/private?id=39").await?;
        ensure!(r.status == 404, "the record is gone: {} {}", r.status, r.text());
        Ok(())
    })
    .await
}
