//! Priority 4, end to end: JavaScript bundles deployed by vote on a real 3-node network, served by every node,
//! replaced atomically, sandboxed, and leaving the same ledger and receipt trail as native writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use serde_json::{json, Value};
use synod_client::{Body, Client, Method, TxStatus};
use synod_tests::{bounded, ensure_audits_clean, post_log, Network};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

async fn call(c: &Client, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
    let r = c
        .call_with_retry(method, path, body.map(Body::Json), &[], Duration::from_secs(20))
        .await?;
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        r.json_value().unwrap_or_else(|_| json!(r.text()))
    };
    Ok((r.status.as_u16(), v))
}

/// The logging bundle: deployed by vote, served by every node (writes through backups forwarded), with the
/// native app's API; JS writes are committed, in receipts and in the ledger like native ones.
#[tokio::test]
async fn the_logging_bundle_is_deployed_by_vote_and_served_by_every_node() -> anyhow::Result<()> {
    bounded(240, async {
        let mut net = Network::start(3, &[]).await?;
        let c0 = net.user_client(0)?;
        let (status, _) = call(&c0, Method::GET, "/app/js/log/private?id=1", None).await?;
        ensure!(status == 404, "no app before the vote: {status}");
        net.deploy_bundle(&repo("js-apps/logging")).await?;
        let mut last = None;
        for i in 0..3usize {
            let c = net.user_client(i)?;
            let r = c
                .post_json(
                    "/app/js/log/private",
                    &json!({"id": i, "msg": format!("via node {i}")}),
                )
                .await?;
            ensure!(r.status == 201, "node {i}: {} {}", r.status, r.text());
            last = Some(r.tx_id()?);
        }
        let last = last.context("a write")?;
        net.wait_committed_everywhere(last).await?;
        for i in 0..3usize {
            let c = net.user_client(i)?;
            for id in 0..3 {
                let (status, v) =
                    call(&c, Method::GET, &format!("/app/js/log/private?id={id}"), None).await?;
                ensure!(
                    status == 200 && v["msg"] == format!("via node {id}"),
                    "node {i} id {id}: {status} {v}"
                );
            }
        }
        let (status, v) = call(&c0, Method::GET, "/app/js/log/private/range?from=0&limit=2", None).await?;
        ensure!(
            status == 200 && v["entries"].as_array().map_or(0, |a| a.len()) == 2 && v["next"] == 2,
            "{v}"
        );
        let (status, v) = call(&c0, Method::GET, "/app/js/log/caller", None).await?;
        ensure!(status == 200 && v["policy"] == "user_cert", "{v}");
        let (status, v) = call(&c0, Method::POST, "/app/js/log/private", Some(json!({"id": "x"}))).await?;
        ensure!(
            status == 400 && v["error"]["code"] == "InvalidInput",
            "{status} {v}"
        );
        let r = c0
            .call_with_retry(
                Method::DELETE,
                "/app/js/log/private?id=0",
                None,
                &[],
                Duration::from_secs(20),
            )
            .await?;
        ensure!(r.status == 200, "{} {}", r.status, r.text());
        // Node 0 may be a backup, answering from what it has applied.
        c0.wait_for_commit(r.tx_id()?, Duration::from_secs(20)).await?;
        let (status, _) = call(&c0, Method::GET, "/app/js/log/private?id=0", None).await?;
        ensure!(status == 404);
        // A JS write has a receipt like any other.
        let receipt = c0.wait_for_receipt(last, false, Duration::from_secs(20)).await?;
        synod_client::verify_receipt_bytes(&receipt, &std::fs::read_to_string(&net.service_cert)?)?;
        // The native app is still there beside it.
        let r = c0
            .post_json("/app/log/private", &json!({"id": 1, "msg": "native"}))
            .await?;
        ensure!(r.status == 201);
        // Private JS records are sealed in the ledger; public ones are in clear.
        let r = c0
            .post_json("/app/js/log/public", &json!({"id": 5, "msg": "js-public-marker"}))
            .await?;
        let r2 = c0
            .post_json(
                "/app/js/log/private",
                &json!({"id": 6, "msg": "js-private-marker"}),
            )
            .await?;
        c0.wait_for_commit(r2.tx_id()?, Duration::from_secs(20)).await?;
        ensure!(r.status == 201);
        net.stop_all()?;
        let mut ledger = Vec::new();
        for e in std::fs::read_dir(net.nodes[0].dir.join("ledger"))? {
            ledger.extend(std::fs::read(e?.path()).unwrap_or_default());
        }
        let contains = |needle: &[u8]| ledger.windows(needle.len()).any(|w| w == needle);
        ensure!(contains(b"js-public-marker") && !contains(b"js-private-marker"));
        ensure_audits_clean(&net.nodes[0].dir.join("ledger"), &net.service_cert)
    })
    .await
}

/// Replacing the app is atomic: every answer comes from one whole version, and once the replacement is
/// accepted only the new one answers; removing the app removes its endpoints.
#[tokio::test]
async fn replacing_the_app_is_atomic() -> anyhow::Result<()> {
    bounded(240, async {
        let mut net = Network::start(3, &[]).await?;
        net.deploy_bundle(&repo("tests/js/versioned/v1")).await?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut readers = Vec::new();
        for i in 0..3usize {
            let c = net.user_client(i)?;
            let stop = stop.clone();
            readers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok((200, v)) = call(&c, Method::GET, "/app/version", None).await {
                        seen.push(v);
                    }
                }
                seen
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        net.deploy_bundle(&repo("tests/js/versioned/v2")).await?;
        let c0 = net.user_client(0)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for r in readers {
            all.extend(r.await?);
        }
        ensure!(!all.is_empty());
        for v in &all {
            let version = v["version"].as_str().context("version")?;
            ensure!(
                v["module"] == format!("lib-{version}"),
                "an answer mixed two versions: {v}"
            );
        }
        for i in 0..3usize {
            let c = net.user_client(i)?;
            let (_, v) = call(&c, Method::GET, "/app/version", None).await?;
            ensure!(v["version"] == "v2", "node {i} still serves {v}");
            let (status, _) = call(&c, Method::GET, "/app/only-in-v1", None).await?;
            ensure!(status == 404, "v1's endpoint survived on node {i}");
            let (status, _) = call(&c, Method::GET, "/app/only-in-v2", None).await?;
            ensure!(status == 200);
        }
        net.pass(0, "remove_js_app", json!({})).await?;
        // A write ordered after the removal, committed at node 0: node 0 has applied the removal too.
        let after = post_log(&c0, 0, "after the removal", Duration::from_secs(20)).await?;
        c0.wait_for_commit(after, Duration::from_secs(20)).await?;
        let (status, _) = call(&c0, Method::GET, "/app/version", None).await?;
        ensure!(status == 404, "removed app still served: {status}");
        Ok(())
    })
    .await
}

/// Sandboxing: writing a governance table is refused, a handler that loops or exhausts memory (its own or buffers
/// made by the natives) is stopped with a 500, an exception returns 500 with its message, a non-2xx answer writes
/// nothing — and the node keeps serving other requests meanwhile.
#[tokio::test]
async fn misbehaving_handlers_are_stopped_without_hurting_others() -> anyhow::Result<()> {
    bounded(240, async {
        let mut net =
            Network::start(1, &["--js-time-ms-max", "300", "--js-heap-bytes-max", "33554432"]).await?;
        net.deploy_bundle(&repo("tests/js/misbehaving")).await?;
        let c = net.user_client(0)?;
        let (status, v) = call(&c, Method::POST, "/app/bad/gov", None).await?;
        ensure!(
            status == 403 && v["error"]["message"].as_str().unwrap_or("").contains("framework"),
            "{status} {v}"
        );
        let (status, v) = call(&c, Method::GET, "/app/bad/users", None).await?;
        ensure!(
            status == 200 && v["users"] == 1,
            "apps read public governance tables; the intruder was not added: {v}"
        );
        let (status, _) = call(&c, Method::GET, "/app/bad/internal", None).await?;
        ensure!(status == 403, "internal tables are not readable: {status}");

        // A loop is stopped while other requests go on.
        let looping = {
            let c = c.clone();
            tokio::spawn(async move { call(&c, Method::POST, "/app/bad/loop", None).await })
        };
        for i in 0..5u64 {
            let r = c
                .post_json("/app/log/private", &json!({"id": i, "msg": "meanwhile"}))
                .await?;
            ensure!(r.status == 201, "a native write during the loop: {}", r.status);
        }
        let (status, v) = looping.await??;
        ensure!(
            status == 500
                && v["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("longer than 300 ms"),
            "{status} {v}"
        );
        let (status, v) = call(&c, Method::POST, "/app/bad/memory", None).await?;
        ensure!(
            status == 500 && v["error"]["message"].as_str().unwrap_or("").contains("heap"),
            "{status} {v}"
        );
        // Buffers made by the natives (strToBuf, kv.get) count against the heap limit.
        for path in ["/app/bad/buffers", "/app/bad/kvbuffers"] {
            let (status, v) = call(&c, Method::POST, path, None).await?;
            ensure!(
                status == 500 && v["error"]["message"].as_str().unwrap_or("").contains("heap"),
                "{path}: {status} {v}"
            );
        }
        let (status, _) = call(&c, Method::GET, "/app/bad/history", None).await?;
        ensure!(
            status == 403,
            "the members' signed requests are not readable: {status}"
        );
        let (status, v) = call(&c, Method::POST, "/app/bad/throw", None).await?;
        ensure!(
            status == 500
                && v["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("failed on purpose"),
            "{status} {v}"
        );
        let (status, v) = call(&c, Method::POST, "/app/bad/refuse", None).await?;
        ensure!(status == 409 && v["error"]["code"] == "Refused", "{status} {v}");
        let (status, v) = call(&c, Method::GET, "/app/bad/probe", None).await?;
        ensure!(
            status == 200 && v["written"] == json!([]),
            "a failed handler's writes were applied: {v}"
        );
        // The engine recovered: the app still answers after its runtime was stopped twice.
        let (status, v) = call(&c, Method::GET, "/app/bad/users", None).await?;
        ensure!(status == 200 && v["users"] == 1, "{status} {v}");
        let r = c
            .post_json("/app/log/private", &json!({"id": 99, "msg": "still serving"}))
            .await?;
        ensure!(c.wait_for_commit(r.tx_id()?, Duration::from_secs(20)).await? == TxStatus::Committed);
        Ok(())
    })
    .await
}

/// The SmallBank bundle: concurrent transfers through every node never create or lose money, and an overdraft
/// is refused without a trace.
#[tokio::test]
async fn smallbank_transfers_are_atomic_under_concurrency() -> anyhow::Result<()> {
    bounded(240, async {
        let mut net = Network::start(3, &[]).await?;
        net.deploy_bundle(&repo("js-apps/smallbank")).await?;
        let c = net.user_client(0)?;
        for a in 0..5 {
            let (status, v) = call(
                &c,
                Method::POST,
                "/app/smallbank/accounts",
                Some(json!({"name": format!("a{a}"), "checking": 1000, "savings": 500})),
            )
            .await?;
            ensure!(status == 201, "{status} {v}");
        }
        let mut workers = Vec::new();
        for w in 0..6u64 {
            let c = net.user_client((w % 3) as usize)?;
            workers.push(tokio::spawn(async move {
                let mut ok = 0;
                for i in 0..20u64 {
                    let from = format!("a{}", (w + i) % 5);
                    let to = format!("a{}", (w + i + 1) % 5);
                    if let Ok((200, _)) = call(
                        &c,
                        Method::POST,
                        "/app/smallbank/transfer",
                        Some(json!({"from": from, "to": to, "amount": 7})),
                    )
                    .await
                    {
                        ok += 1;
                    }
                }
                ok
            }));
        }
        let mut transfers = 0;
        for w in workers {
            transfers += w.await?;
        }
        ensure!(transfers > 0);
        let (status, v) = call(
            &c,
            Method::POST,
            "/app/smallbank/transfer",
            Some(json!({"from": "a0", "to": "a1", "amount": 1_000_000})),
        )
        .await?;
        ensure!(
            status == 400 && v["error"]["code"] == "InsufficientFunds",
            "{status} {v}"
        );
        let (status, v) = call(&c, Method::GET, "/app/smallbank/total", None).await?;
        ensure!(
            status == 200 && v["total"] == 7500 && v["accounts"] == 5,
            "money created or lost: {v}"
        );
        let (_, v) = call(
            &c,
            Method::POST,
            "/app/smallbank/amalgamate",
            Some(json!({"from": "a4", "to": "a0"})),
        )
        .await?;
        ensure!(v["to"] == "a0", "{v}");
        let (_, v) = call(&c, Method::GET, "/app/smallbank/total", None).await?;
        ensure!(v["total"] == 7500, "{v}");
        Ok(())
    })
    .await
}

/// `ccf.historical` in the logging bundle: a record as of a past transaction (with its receipt) and every version
/// of a record, read back from the ledger files across chunks, as the native app's historical endpoints do; only
/// for Committed transactions.
#[tokio::test]
async fn the_logging_bundle_reads_the_committed_past_through_ccf_historical() -> anyhow::Result<()> {
    bounded(240, async {
        let mut net = Network::start(
            1,
            &["--ledger-chunk-bytes", "20000", "--snapshot-tx-interval", "50"],
        )
        .await?;
        net.deploy_bundle(&repo("js-apps/logging")).await?;
        let c = net.user_client(0)?;
        let cert = std::fs::read_to_string(&net.service_cert)?;
        // (transaction, id, message) of every write, in order.
        let mut log = Vec::new();
        for i in 0..200u64 {
            let id = i % 4;
            let msg = format!("js-{i}");
            let r = c
                .post_json("/app/js/log/private", &json!({"id": id, "msg": msg}))
                .await?;
            ensure!(r.status == 201, "{} {}", r.status, r.text());
            log.push((r.tx_id()?, id, msg));
        }
        let last = log.last().context("a write")?.0;
        c.wait_for_commit(last, Duration::from_secs(30)).await?;
        let expected = |id: u64, seqno: u64| {
            log.iter()
                .rev()
                .find(|(tx, i, _)| *i == id && tx.seqno <= seqno)
                .map(|(tx, _, m)| (tx.seqno, m.clone()))
        };
        for (tx, id, _) in log.iter().step_by(9) {
            for asked in [*id, (id + 1) % 4] {
                let (status, v) = call(
                    &c,
                    Method::GET,
                    &format!("/app/js/log/private/historical?id={asked}&transaction_id={tx}"),
                    None,
                )
                .await?;
                match expected(asked, tx.seqno) {
                    Some((seqno, msg)) => {
                        ensure!(
                            status == 200 && v["msg"] == msg.as_str() && v["write_seqno"] == seqno,
                            "record {asked} as of {tx}: {status} {v}"
                        );
                        synod_client::verify_receipt_bytes(&serde_json::to_vec(&v["receipt"])?, &cert)?;
                    }
                    None => ensure!(
                        status == 404 && v["error"]["code"] == "ResourceNotFound",
                        "{status} {v}"
                    ),
                }
            }
        }
        // Every version of record 1, paged.
        let mut versions = Vec::new();
        let mut from = 1u64;
        loop {
            let (status, v) = call(
                &c,
                Method::GET,
                &format!(
                    "/app/js/log/private/historical/range?id=1&from_seqno={from}&to_seqno={}&limit=9",
                    last.seqno
                ),
                None,
            )
            .await?;
            ensure!(status == 200, "{status} {v}");
            for e in v["entries"].as_array().context("entries")? {
                versions.push((
                    e["seqno"].as_u64().context("seqno")?,
                    e["msg"].as_str().unwrap_or("").to_string(),
                ));
            }
            match v["next"].as_u64() {
                Some(next) => from = next,
                None => break,
            }
        }
        let written: Vec<(u64, String)> = log
            .iter()
            .filter(|(_, id, _)| *id == 1)
            .map(|(tx, _, m)| (tx.seqno, m.clone()))
            .collect();
        ensure!(versions == written, "versions of record 1: {versions:?}");
        // Committed transactions only, with the native endpoints' codes.
        let (status, v) = call(
            &c,
            Method::GET,
            &format!(
                "/app/js/log/private/historical?id=1&transaction_id={}.{}",
                last.view,
                last.seqno + 10_000
            ),
            None,
        )
        .await?;
        ensure!(
            status == 404 && v["error"]["code"] == "TransactionPendingOrUnknown",
            "{status} {v}"
        );
        let (status, v) = call(
            &c,
            Method::GET,
            "/app/js/log/private/historical?id=1&transaction_id=x",
            None,
        )
        .await?;
        ensure!(status == 400, "{status} {v}");
        Ok(())
    })
    .await
}

/// OpenAPI documents at CCF's paths, valid OpenAPI 3.1 (checked with the `openapi-spec-validator` PyPI package):
/// every native endpoint in the registry exists on a running node (the registry cannot drift from the router), and
/// the deployed bundle's endpoints appear in `/app/api` with their own `openapi` metadata.
#[tokio::test]
async fn openapi_documents_describe_every_endpoint_and_validate() -> anyhow::Result<()> {
    bounded(240, async {
        let mut net = Network::start(1, &[]).await?;
        net.deploy_bundle(&repo("js-apps/logging")).await?;
        let c = net.user_client(0)?;
        let dir = tempfile::tempdir()?;
        for (i, doc) in ["/node/api", "/gov/api", "/app/api"].iter().enumerate() {
            let (status, v) = call(&c, Method::GET, doc, None).await?;
            ensure!(status == 200 && v["openapi"] == "3.1.0", "{doc}: {status} {v}");
            std::fs::write(dir.path().join(format!("{i}.json")), v.to_string())?;
        }
        let (_, app) = call(&c, Method::GET, "/app/api", None).await?;
        ensure!(
            app["paths"]["/app/js/log/private"]["post"]["security"] == json!([{"user_cert": []}]),
            "{app}"
        );
        ensure!(
            app["paths"]["/app/log/{visibility}"]["post"].is_object(),
            "native app endpoints too: {app}"
        );
        let check = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import json, sys\nfrom openapi_spec_validator import validate\n\
                 for f in sys.argv[1:]:\n    validate(json.load(open(f)))\nprint('valid')",
            )
            .args((0..3).map(|i| dir.path().join(format!("{i}.json"))))
            .output()?;
        ensure!(
            check.status.success(),
            "invalid OpenAPI (scripts/setup.sh installs openapi-spec-validator): {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        // Every documented endpoint is routed: nothing answers the router's "no such endpoint" or 405.
        let mut documented = 0;
        for doc in ["/node/api", "/gov/api", "/app/api"] {
            let (_, v) = call(&c, Method::GET, doc, None).await?;
            for (template, item) in v["paths"].as_object().context("paths")? {
                let path = template
                    .split('/')
                    .map(|s| match (s.find('{'), s.find('}')) {
                        // A value each parameter accepts, so that what answers is the endpoint itself.
                        (Some(a), Some(b)) => {
                            let value = if &s[a + 1..b] == "visibility" {
                                "public"
                            } else {
                                "x"
                            };
                            format!("{}{value}{}", &s[..a], &s[b + 1..])
                        }
                        _ => s.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                for method in item.as_object().context("path item")?.keys() {
                    let r = c
                        .call(
                            Method::from_bytes(method.to_uppercase().as_bytes())?,
                            &path,
                            None,
                            &[],
                        )
                        .await?;
                    let text = r.text();
                    ensure!(
                        r.status.as_u16() != 405 && !text.contains("no such endpoint"),
                        "{method} {template} is documented but not routed: {} {text}",
                        r.status
                    );
                    documented += 1;
                }
            }
        }
        ensure!(documented > 40, "only {documented} operations documented");
        Ok(())
    })
    .await
}
