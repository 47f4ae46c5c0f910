//! Priority 1, end to end: one real `synod-node` process, driven over HTTPS by the real client and CLI.
//! Each test names the user step of the issue it covers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use base64::Engine as _;
use serde_json::json;
use synod_client::{Body, Client, Method, TxId, TxStatus};
use synod_tests::{
    audit_ledger, bounded, committed_chunks, ensure_audits_clean, synod_cli, IdentityFiles, SingleNode,
};
use tokio::sync::Mutex;

const COMMIT_WAIT: Duration = Duration::from_secs(20);

async fn post(client: &Client, path: &str, body: serde_json::Value) -> anyhow::Result<TxId> {
    let r = client.post_json(path, &body).await?;
    ensure!(r.status == 201, "POST {path}: {} {}", r.status, r.text());
    let header = r.tx_id()?;
    let in_body: TxId = r.json_value()?["transaction_id"]
        .as_str()
        .context("transaction_id")?
        .parse()?;
    ensure!(header == in_body, "header and body disagree");
    Ok(header)
}

/// Step 1: the logging app, private and public, write / read / delete.
#[tokio::test]
async fn logging_app_writes_reads_and_deletes() -> anyhow::Result<()> {
    bounded(60, async {
        let net = SingleNode::start(&[])?;
        let c = net.user_client()?;
        for vis in ["private", "public"] {
            let id = post(
                &c,
                &format!("/app/log/{vis}"),
                json!({"id": 42, "msg": format!("hello {vis}")}),
            )
            .await?;
            ensure!(id.view >= 1 && id.seqno > 1, "{id}");
            let r = c.get(&format!("/app/log/{vis}?id=42")).await?;
            ensure!(r.status == 200, "{}", r.text());
            ensure!(r.json_value()?["msg"] == format!("hello {vis}"));
            let r = c
                .call(Method::DELETE, &format!("/app/log/{vis}?id=42"), None, &[])
                .await?;
            ensure!(r.status == 200, "{}", r.text());
            let deleted = r.tx_id()?;
            ensure!(deleted.seqno > id.seqno);
            let r = c.get(&format!("/app/log/{vis}?id=42")).await?;
            ensure!(r.status == 404 && r.api_error().context("error body")?.code == "ResourceNotFound");
            let r = c
                .call(Method::DELETE, &format!("/app/log/{vis}?id=42"), None, &[])
                .await?;
            ensure!(r.status == 404, "deleting an absent record: {}", r.status);
        }
        // Ordered range reads with pagination over the private map.
        for i in 0..25u64 {
            post(
                &c,
                "/app/log/private",
                json!({"id": i * 10, "msg": format!("m{i}")}),
            )
            .await?;
        }
        let mut seen = Vec::new();
        let mut from = 0u64;
        loop {
            let page = c
                .get_json::<serde_json::Value>(&format!("/app/log/private/range?from={from}&limit=7"))
                .await?;
            for e in page["entries"].as_array().context("entries")? {
                seen.push(e["id"].as_u64().context("id")?);
            }
            match page["next"].as_u64() {
                Some(next) => from = next,
                None => break,
            }
        }
        ensure!(seen == (0..25).map(|i| i * 10).collect::<Vec<_>>(), "{seen:?}");
        Ok(())
    })
    .await
}

/// Step 2: `/node/tx` goes Pending → Committed; Unknown and Invalid where they apply; `/node/commit`.
#[tokio::test]
async fn tx_status_goes_pending_then_committed() -> anyhow::Result<()> {
    bounded(60, async {
        // Signatures only every 5 transactions (and practically never by time, nor when the pipeline drains): the
        // first write stays Pending.
        let net = SingleNode::start(&[
            "--sig-tx-interval",
            "5",
            "--sig-ms-interval",
            "3600000",
            "--sig-ms-min",
            "3600000",
        ])?;
        let c = net.user_client()?;
        let first = post(&c, "/app/log/public", json!({"id": 1, "msg": "a"})).await?;
        ensure!(c.tx_status(first).await? == TxStatus::Pending);
        ensure!(c.tx_status(TxId::new(first.view, first.seqno + 100)).await? == TxStatus::Unknown);
        ensure!(c.tx_status(TxId::new(first.view - 1, first.seqno)).await? == TxStatus::Invalid);
        let r = c.receipt(first, false).await;
        ensure!(r.is_err(), "no receipt for a Pending tx");
        // The commit long poll: nothing commits, so it answers the standing commit once its wait is over.
        let before = c.commit().await?;
        ensure!(before.seqno < first.seqno);
        let polled = c.commit_after(before.seqno, Duration::from_millis(200)).await?;
        ensure!(polled == before, "{polled} vs {before}");
        ensure!(
            c.commit_after(0, Duration::from_secs(5)).await? == before,
            "past the seqno: at once"
        );
        let r = c.get("/node/commit?after_seqno=soon").await?;
        ensure!(
            r.status == 400 && r.api_error().context("error")?.code == "InvalidInput",
            "{}",
            r.text()
        );
        // A follower started now wakes its waiter when the signature after the 5th write commits the first.
        let follower = synod_client::CommitFollower::start(c.clone());
        let waiter = {
            let follower = Arc::new(follower);
            let f = follower.clone();
            (
                tokio::spawn(async move { f.wait(first, COMMIT_WAIT).await }),
                follower,
            )
        };
        for i in 2..=5 {
            post(&c, "/app/log/public", json!({"id": i, "msg": "b"})).await?;
        }
        ensure!(waiter.0.await?? == TxStatus::Committed);
        ensure!(waiter.1.commit().is_some_and(|t| t.seqno > first.seqno));
        ensure!(c.wait_for_commit(first, COMMIT_WAIT).await? == TxStatus::Committed);
        let committed = c.commit().await?;
        ensure!(
            committed.seqno > first.seqno,
            "a signature after the first write commits it: {committed}"
        );
        let r = c.get("/node/tx?transaction_id=nonsense").await?;
        ensure!(r.status == 400 && r.api_error().context("error")?.code == "InvalidTransactionId");
        Ok(())
    })
    .await
}

/// Runs CCF's verifiers from the `ccf` PyPI package (installed by scripts/setup.sh) on a receipt file.
fn verify_with_ccf_package(
    mode: &str,
    receipt: &std::path::Path,
    service_cert: &std::path::Path,
    claims_digest: &str,
) -> anyhow::Result<std::process::Output> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/verify_receipt_ccf.py");
    std::process::Command::new("python3")
        .arg(script)
        .arg(mode)
        .arg(receipt)
        .arg(service_cert)
        .arg(claims_digest)
        .output()
        .context("python3 with the ccf package (scripts/setup.sh installs it)")
}

/// Issue 14: a service on each of the other curves serves users holding keys on every curve (TLS client
/// authentication), records its curve, and hands out receipts that verify — with CCF's own verifiers on P-256 too.
#[tokio::test]
async fn every_curve_serves_users_on_every_curve_and_verifiable_receipts() -> anyhow::Result<()> {
    use synod_core::cert::Curve;
    bounded(150, async {
        for curve in [Curve::P256, Curve::Ed25519] {
            let keys = tempfile::tempdir()?;
            let users = Curve::ALL
                .iter()
                .map(|c| IdentityFiles::generate_on(keys.path(), &format!("user-{c}"), *c))
                .collect::<Result<Vec<_>, _>>()?;
            let mut args = vec!["--curve".to_string(), curve.to_string()];
            for u in &users {
                args.extend(["--user-cert".to_string(), u.cert.display().to_string()]);
            }
            let net = SingleNode::start(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
            let service_pem = net.node.service_cert_pem()?;
            ensure!(synod_core::cert::curve_of(&service_pem)? == curve);
            let info: serde_json::Value = net.user_client()?.get_json("/gov/service/info").await?;
            ensure!(info["curve"] == curve.as_str(), "{info}");
            for (i, user) in users.iter().enumerate() {
                let c = net.node.client(Some(user))?;
                let id = post(&c, "/app/log/private", json!({"id": i, "msg": curve.as_str()})).await?;
                ensure!(c.wait_for_commit(id, COMMIT_WAIT).await? == TxStatus::Committed);
                for cose in [false, true] {
                    let receipt = c.receipt(id, cose).await?;
                    synod_client::verify_receipt_bytes(&receipt, &service_pem)
                        .with_context(|| format!("{curve} service, user on {}", Curve::ALL[i]))?;
                }
                if curve == Curve::P256 && i == 0 {
                    let cert = net.tmp.path().join("service_cert.pem");
                    std::fs::write(&cert, &service_pem)?;
                    let json_receipt = c.receipt(id, false).await?;
                    let claims = serde_json::from_slice::<serde_json::Value>(&json_receipt)?
                        ["leaf_components"]["claims_digest"]
                        .as_str()
                        .context("claims_digest")?
                        .to_string();
                    for (mode, bytes) in [("json", json_receipt), ("cose", c.receipt(id, true).await?)] {
                        let path = net.tmp.path().join(format!("p256.{mode}"));
                        std::fs::write(&path, &bytes)?;
                        let out = verify_with_ccf_package(mode, &path, &cert, &claims)?;
                        ensure!(
                            out.status.success(),
                            "ccf package, P-256 {mode} receipt: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                }
            }
        }
        Ok(())
    })
    .await
}

/// Step 3: receipts in both forms verify offline with only the service certificate (our CLI and pycose), and a
/// changed byte is refused.
#[tokio::test]
async fn receipts_verify_offline_and_tampering_is_refused() -> anyhow::Result<()> {
    bounded(90, async {
        let net = SingleNode::start(&[])?;
        let c = net.user_client()?;
        let id = post(&c, "/app/log/private", json!({"id": 7, "msg": "receipt me"})).await?;
        ensure!(c.wait_for_commit(id, COMMIT_WAIT).await? == TxStatus::Committed);
        let dir = net.tmp.path();
        let cert = dir.join("service_cert.pem");
        std::fs::write(&cert, net.node.service_cert_pem()?)?;
        let cert_arg = cert.display().to_string();
        for (cose, name) in [(false, "r.json"), (true, "r.cose")] {
            let bytes = c.receipt(id, cose).await?;
            let path = dir.join(name);
            std::fs::write(&path, &bytes)?;
            let out = synod_cli(&[
                "receipt",
                "verify",
                &path.display().to_string(),
                "--service-cert",
                &cert_arg,
            ])?;
            ensure!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            ensure!(
                String::from_utf8_lossy(&out.stdout).contains(&id.to_string()),
                "names the tx"
            );
            for i in [0, bytes.len() / 4, bytes.len() / 2, bytes.len() - 3] {
                let mut bad = bytes.clone();
                bad[i] ^= 0x02;
                std::fs::write(&path, &bad)?;
                let out = synod_cli(&[
                    "receipt",
                    "verify",
                    &path.display().to_string(),
                    "--service-cert",
                    &cert_arg,
                ])?;
                ensure!(
                    !out.status.success(),
                    "{name}: byte {i} changed and still accepted"
                );
            }
            if cose {
                std::fs::write(&path, &bytes)?;
                let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../node/core/tests/verify_receipt_pycose.py");
                let out = std::process::Command::new("python3")
                    .arg(script)
                    .arg(&path)
                    .arg(&cert)
                    .output()?;
                ensure!(
                    out.status.success(),
                    "pycose refused the node's COSE receipt: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        // CCF's own verifiers (the `ccf` PyPI package) accept both forms unchanged, and refuse a changed signature.
        let json_bytes = c.receipt(id, false).await?;
        let cose_bytes = c.receipt(id, true).await?;
        let receipt: serde_json::Value = serde_json::from_slice(&json_bytes)?;
        let claims_digest = receipt["leaf_components"]["claims_digest"]
            .as_str()
            .context("claims_digest")?
            .to_string();
        let mut forged = receipt.clone();
        let mut sig = base64::engine::general_purpose::STANDARD
            .decode(receipt["signature"].as_str().context("signature")?)?;
        let last = sig.len() - 1;
        sig[last] ^= 0x01;
        forged["signature"] = json!(base64::engine::general_purpose::STANDARD.encode(sig));
        let mut forged_cose = cose_bytes.clone();
        let last = forged_cose.len() - 1;
        forged_cose[last] ^= 0x01;
        for (mode, bytes, genuine) in [
            ("json", json_bytes.clone(), true),
            ("cose", cose_bytes.clone(), true),
            ("json", serde_json::to_vec(&forged)?, false),
            ("cose", forged_cose, false),
        ] {
            let path = dir.join(format!("ccf.{mode}"));
            std::fs::write(&path, &bytes)?;
            let out = verify_with_ccf_package(mode, &path, &cert, &claims_digest)?;
            ensure!(
                out.status.success() == genuine,
                "ccf package, {mode} receipt (genuine: {genuine}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The CLI fetches and writes receipts too.
        let out_path = dir.join("cli.json");
        let out = synod_cli(&[
            "--url",
            &net.node.url(),
            "--service-cert",
            &cert_arg,
            "--cert",
            &net.user.cert.display().to_string(),
            "--key",
            &net.user.key.display().to_string(),
            "receipt",
            "get",
            &id.to_string(),
            "--out",
            &out_path.display().to_string(),
        ])?;
        ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        synod_client::verify_receipt_file(&out_path, &net.node.service_cert_pem()?)?;
        Ok(())
    })
    .await
}

/// Step 4: `kill -9` under load loses nothing that was reported Committed; the ledger continues in a new view;
/// what was lost evaluates to Invalid, never Committed.
#[tokio::test]
async fn kill_9_under_load_loses_no_committed_write() -> anyhow::Result<()> {
    bounded(120, async {
        let mut net = SingleNode::start(&[])?;
        let c = net.user_client()?;
        let acked: Arc<Mutex<BTreeMap<u64, (String, TxId)>>> = Arc::default();
        let issued: Arc<Mutex<Vec<TxId>>> = Arc::default();
        let mut writers = Vec::new();
        for w in 0..4u64 {
            let (c, acked, issued) = (c.clone(), acked.clone(), issued.clone());
            writers.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let key = w * 1_000_000 + i;
                    let msg = format!("v{key}");
                    let Ok(r) = c
                        .post_json("/app/log/private", &json!({"id": key, "msg": msg}))
                        .await
                    else {
                        break;
                    };
                    let Ok(id) = r.tx_id() else { break };
                    issued.lock().await.push(id);
                    if matches!(
                        c.wait_for_commit(id, Duration::from_secs(3)).await,
                        Ok(TxStatus::Committed)
                    ) {
                        acked.lock().await.insert(key, (msg, id));
                    } else {
                        break;
                    }
                }
            }));
        }
        // Kill once a fair number of writes were acknowledged, mid-stream.
        for _ in 0..500 {
            if acked.lock().await.len() >= 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        net.node.kill9();
        for w in writers {
            let _ = w.await;
        }
        let acked = acked.lock().await.clone();
        ensure!(
            acked.len() >= 50,
            "load did not get going: {} acknowledged",
            acked.len()
        );
        let last_view = acked.values().map(|(_, id)| id.view).max().context("acked")?;

        net.node.restart()?;
        let c = net.user_client()?;
        for (key, (msg, id)) in &acked {
            let r = c.get(&format!("/app/log/private?id={key}")).await?;
            ensure!(r.status == 200, "committed write {key} ({id}) lost: {}", r.text());
            ensure!(r.json_value()?["msg"] == msg.as_str());
            ensure!(
                c.tx_status(*id).await? == TxStatus::Committed,
                "{id} no longer Committed"
            );
        }
        let next = post(&c, "/app/log/private", json!({"id": 1, "msg": "after restart"})).await?;
        ensure!(
            next.view > last_view,
            "a restart starts a new view: {next} after view {last_view}"
        );
        let max_seqno = acked.values().map(|(_, id)| id.seqno).max().context("acked")?;
        ensure!(next.seqno > max_seqno, "seqnos keep increasing");
        ensure!(c.wait_for_commit(next, COMMIT_WAIT).await? == TxStatus::Committed);
        // Only once the new view has committed something is a write the kill lost known to be Invalid (before,
        // its status may be Unknown).
        for id in issued.lock().await.iter() {
            let status = c.tx_status(*id).await?;
            ensure!(
                matches!(status, TxStatus::Committed | TxStatus::Invalid),
                "{id} is {status:?} after restart"
            );
        }

        // A clean stop (SIGTERM) and another restart keep everything as well.
        net.node.terminate()?;
        net.node.restart()?;
        let c = net.user_client()?;
        let r = c.get("/app/log/private?id=1").await?;
        ensure!(r.status == 200 && r.json_value()?["msg"] == "after restart");
        Ok(())
    })
    .await
}

/// Step 5: the ledger audits clean offline, and a changed byte is named by the audit.
#[tokio::test]
async fn ledger_audits_clean_and_a_changed_byte_is_named() -> anyhow::Result<()> {
    bounded(90, async {
        // Small chunks so the ledger spans several files.
        let mut net = SingleNode::start(&["--ledger-chunk-bytes", "4000", "--sig-tx-interval", "10"])?;
        let c = net.user_client()?;
        let mut last = TxId::default();
        for i in 0..60u64 {
            last = post(&c, "/app/log/private", json!({"id": i, "msg": "x".repeat(100)})).await?;
        }
        c.wait_for_commit(last, COMMIT_WAIT).await?;
        net.node.terminate()?;
        let ledger = net.node.dir.join("ledger");
        let cert = net.node.dir.join("service_cert.pem");
        let audit = |dir: &std::path::Path| audit_ledger(dir, &cert);
        ensure_audits_clean(&ledger, &cert)?;
        let committed_chunks = committed_chunks(&ledger)?.len();
        ensure!(
            committed_chunks >= 2,
            "expected several committed chunks, got {committed_chunks}: {:?}",
            std::fs::read_dir(&ledger)?
                .filter_map(|e| e.ok())
                .map(|e| (e.file_name(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                .collect::<Vec<_>>()
        );

        // Flip one byte in a copy of the ledger: the audit fails and names the file and seqno.
        let copy = net.tmp.path().join("ledger-copy");
        std::fs::create_dir_all(&copy)?;
        let mut files: Vec<_> = std::fs::read_dir(&ledger)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in &files {
            std::fs::copy(f, copy.join(f.file_name().context("name")?))?;
        }
        let victim = copy.join(files[files.len() / 2].file_name().context("name")?);
        let mut bytes = std::fs::read(&victim)?;
        let at = bytes.len() / 2;
        bytes[at] ^= 0x10;
        std::fs::write(&victim, &bytes)?;
        let out = audit(&copy)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(!out.status.success(), "a changed ledger audited clean");
        let victim_name = victim.file_name().context("name")?.to_string_lossy().to_string();
        ensure!(
            text.contains(&victim_name) && text.contains("seqno"),
            "audit output does not name the entry: {text}"
        );
        Ok(())
    })
    .await
}

/// Bad input gets a clear JSON error and writes nothing.
#[tokio::test]
async fn bad_input_gets_clear_errors() -> anyhow::Result<()> {
    bounded(60, async {
        let net = SingleNode::start(&["--max-body-bytes", "1024"])?;
        let c = net.user_client()?;
        // Start-up writes (the first primary's configuration entry and its signature) settle first.
        let mut before = c.commit().await?;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = c.commit().await?;
            if now == before {
                break;
            }
            before = now;
        }
        let raw = |bytes: &[u8]| Body::Bytes {
            content_type: Some("application/json".into()),
            bytes: bytes.to_vec(),
        };
        let cases: Vec<(Method, &str, Option<Body>, u16, &str)> = vec![
            (
                Method::POST,
                "/app/log/private",
                Some(raw(b"{not json")),
                400,
                "InvalidInput",
            ),
            (
                Method::POST,
                "/app/log/private",
                Some(raw(br#"{"id": "x", "msg": "m"}"#)),
                400,
                "InvalidInput",
            ),
            (
                Method::POST,
                "/app/log/private",
                Some(raw(br#"{"msg": "m"}"#)),
                400,
                "InvalidInput",
            ),
            (
                Method::POST,
                "/app/log/private",
                Some(raw(&vec![b' '; 4096])),
                413,
                "RequestBodyTooLarge",
            ),
            (Method::GET, "/app/log/private?id=abc", None, 400, "InvalidInput"),
            (
                Method::GET,
                "/app/log/nowhere?id=1",
                None,
                404,
                "ResourceNotFound",
            ),
            (
                Method::GET,
                "/app/kv/public:nothing-here",
                None,
                404,
                "UnknownMap",
            ),
            (Method::GET, "/app/kv/records", None, 403, "Forbidden"),
            (
                Method::GET,
                "/app/receipt?transaction_id=2.99999",
                None,
                404,
                "TransactionPendingOrUnknown",
            ),
            (
                Method::GET,
                "/app/receipt?transaction_id=2-5",
                None,
                400,
                "InvalidTransactionId",
            ),
            (Method::GET, "/no/such/path", None, 404, "ResourceNotFound"),
            (Method::PUT, "/app/log/private", None, 405, "MethodNotAllowed"),
        ];
        for (method, path, body, status, code) in cases {
            let r = c.call(method.clone(), path, body, &[]).await?;
            let err = r
                .api_error()
                .with_context(|| format!("{method} {path}: no JSON error: {}", r.text()))?;
            ensure!(
                r.status == status && err.code == code,
                "{method} {path}: {} {} {}",
                r.status,
                err.code,
                err.message
            );
            ensure!(!err.message.is_empty());
        }
        // No client certificate, or an unknown one: 401.
        let anonymous = net.node.client(None)?;
        let r = anonymous
            .post_json("/app/log/private", &json!({"id": 1, "msg": "m"}))
            .await?;
        ensure!(r.status == 401 && r.api_error().context("error")?.code == "InvalidAuthenticationInfo");
        let stranger = synod_tests::IdentityFiles::generate(net.tmp.path(), "stranger")?;
        let r = net
            .node
            .client(Some(&stranger))?
            .get("/app/log/private?id=1")
            .await?;
        ensure!(r.status == 401, "unknown certificate: {}", r.status);
        // A client cannot pass as another by claiming a node forwarded its request: only a Trusted node's
        // certificate makes the primary believe the forwarded-caller header.
        let user_der_b64: String = net
            .user
            .cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let forged = [
            ("x-synod-forwarded-caller", user_der_b64.as_str()),
            ("x-synod-forwarded", "1"),
        ];
        let r = net
            .node
            .client(Some(&stranger))?
            .call(Method::GET, "/app/log/private?id=1", None, &forged)
            .await?;
        ensure!(
            r.status == 401,
            "forged forwarded caller: {} {}",
            r.status,
            r.text()
        );
        // None of it wrote anything: the commit only moves with signatures of real writes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        ensure!(c.commit().await? == before, "bad requests wrote something");
        let r = c.get("/app/log/private?id=1").await?;
        ensure!(r.status == 404);
        Ok(())
    })
    .await
}

/// The `synod` CLI must not pull server dependencies (RocksDB, QuickJS) into its build.
#[test]
fn client_cli_has_no_server_dependencies() -> anyhow::Result<()> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "-p",
            "synod-client",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    ensure!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    for banned in ["rocksdb", "quickjs", "synod-node", "synod-kv"] {
        ensure!(!tree.contains(banned), "synod-client depends on {banned}");
    }
    Ok(())
}

/// One decoded entry of a ledger directory: its chunk, where it sits and what it is.
struct LedgerPos {
    chunk: std::path::PathBuf,
    start: u64,
    offset: u64,
    seqno: u64,
    signature: bool,
}

fn ledger_positions(ledger: &std::path::Path) -> anyhow::Result<Vec<LedgerPos>> {
    let mut out = Vec::new();
    for (name, path) in synod_core::ledger::list_chunks(ledger)? {
        let bytes = std::fs::read(&path)?;
        for frame in synod_core::ledger::decode_frames(&bytes) {
            let frame = frame?;
            let tx = frame.entry.decode_transaction()?;
            out.push(LedgerPos {
                chunk: path.clone(),
                start: name.start,
                offset: frame.offset,
                seqno: tx.seqno,
                signature: tx.kind == synod_core::ledger::KIND_SIGNATURE,
            });
        }
    }
    Ok(out)
}

/// Copies `ledger` into `to` without the entry at `seqno` and everything after it, as a node's ledger would look
/// had it stopped there: that chunk becomes the open one.
fn copy_cut_before(ledger: &std::path::Path, to: &std::path::Path, seqno: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    let positions = ledger_positions(ledger)?;
    let cut = positions.iter().find(|p| p.seqno == seqno).context("cut point")?;
    for (name, path) in synod_core::ledger::list_chunks(ledger)? {
        if name.start < cut.start {
            std::fs::copy(&path, to.join(name.file_name()))?;
        }
    }
    let bytes = std::fs::read(&cut.chunk)?;
    let open = synod_core::ledger::ChunkName {
        start: cut.start,
        end: None,
        committed: false,
    };
    std::fs::write(to.join(open.file_name()), &bytes[..cut.offset as usize])?;
    Ok(())
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Security issue item 8: `synod ledger audit` vouches only for what a signature covers. A real ledger cut right
/// before a signature fails the audit and names its unsigned tail (`--allow-unsigned-tail` accepts it and still
/// reports it), and the evidence of the snapshot a ledger continues proves nothing until a signature covers it.
#[tokio::test]
async fn ledger_audit_refuses_unsigned_tail_and_unsigned_snapshot_evidence() -> anyhow::Result<()> {
    bounded(90, async {
        let mut net = SingleNode::start(&["--sig-tx-interval", "5", "--snapshot-tx-interval", "20"])?;
        let c = net.user_client()?;
        let mut last = TxId::default();
        for i in 0..40u64 {
            last = post(&c, "/app/log/public", json!({"id": i, "msg": "x"})).await?;
        }
        c.wait_for_commit(last, COMMIT_WAIT).await?;
        // A snapshot is committed once its evidence is; the node names the file after the evidence's seqno.
        let snapshots = net.node.dir.join("snapshots");
        let committed_snapshot = || -> Option<(std::path::PathBuf, u64, u64)> {
            std::fs::read_dir(&snapshots)
                .ok()?
                .filter_map(|e| e.ok())
                .find_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let (s, ev) = synod_core::snapshot::parse_committed_name(&name)?;
                    Some((e.path(), s, ev))
                })
        };
        while committed_snapshot().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        net.node.terminate()?;
        let ledger = net.node.dir.join("ledger");
        let cert = net.node.dir.join("service_cert.pem");
        ensure_audits_clean(&ledger, &cert)?;

        // Cut a copy right before its last signature that follows a transaction: that transaction and any before
        // it back to the previous signature are the unsigned tail.
        let positions = ledger_positions(&ledger)?;
        let sig = positions
            .windows(2)
            .filter(|w| w[1].signature && !w[0].signature)
            .map(|w| w[1].seqno)
            .next_back()
            .context("a signature after a transaction")?;
        let previous = positions
            .iter()
            .filter(|p| p.signature && p.seqno < sig)
            .map(|p| p.seqno)
            .next_back()
            .context("an earlier signature")?;
        let (from, to) = (previous + 1, sig - 1);
        let cut = net.tmp.path().join("cut").join("ledger");
        copy_cut_before(&ledger, &cut, sig)?;
        let out = audit_ledger(&cut, &cert)?;
        let text = output_text(&out);
        ensure!(!out.status.success(), "an unsigned tail audited clean: {text}");
        ensure!(
            text.contains(&format!(
                "unsigned tail: {} entries (seqno {from} to {to})",
                to - from + 1
            )),
            "the audit does not name the unsigned tail: {text}"
        );
        let out = synod_tests::audit_ledger_args(&cut, &cert, &["--allow-unsigned-tail"])?;
        let text = output_text(&out);
        ensure!(out.status.success(), "--allow-unsigned-tail refused: {text}");
        ensure!(
            text.contains(&format!(
                "unsigned tail:   {} entries (seqno {from} to {to})",
                to - from + 1
            )),
            "an accepted unsigned tail is not reported: {text}"
        );

        // The ledger as a node that joined from the snapshot keeps it: chunks after the snapshot point, and the
        // snapshot next to them. It audits clean; cut before the signature that covers the evidence, it does not.
        let (snapshot, at, evidence) = committed_snapshot().context("committed snapshot")?;
        let joined = net.tmp.path().join("joined");
        std::fs::create_dir_all(joined.join("ledger"))?;
        std::fs::create_dir_all(joined.join("snapshots"))?;
        std::fs::copy(
            &snapshot,
            joined
                .join("snapshots")
                .join(snapshot.file_name().context("name")?),
        )?;
        for (name, path) in synod_core::ledger::list_chunks(&ledger)? {
            if name.start > at {
                std::fs::copy(&path, joined.join("ledger").join(name.file_name()))?;
            }
        }
        ensure_audits_clean(&joined.join("ledger"), &cert)?;
        let covering = positions
            .iter()
            .find(|p| p.signature && p.seqno > evidence)
            .context("a signature after the evidence")?
            .seqno;
        let unsigned = net.tmp.path().join("unsigned-evidence");
        std::fs::create_dir_all(unsigned.join("snapshots"))?;
        std::fs::copy(
            &snapshot,
            unsigned
                .join("snapshots")
                .join(snapshot.file_name().context("name")?),
        )?;
        copy_cut_before(&joined.join("ledger"), &unsigned.join("ledger"), covering)?;
        let out =
            synod_tests::audit_ledger_args(&unsigned.join("ledger"), &cert, &["--allow-unsigned-tail"])?;
        let text = output_text(&out);
        ensure!(
            !out.status.success(),
            "unsigned snapshot evidence was accepted: {text}"
        );
        ensure!(
            text.contains(&format!("the evidence for snapshot {at}"))
                && text.contains("not covered by any signature"),
            "the audit does not say the evidence is unsigned: {text}"
        );
        Ok(())
    })
    .await
}

/// `GET /node/metrics` speaks Prometheus' text format: requests by route and status, commit latency of the writes
/// this primary ordered, Raft role and commit, ledger size, process memory.
#[tokio::test]
async fn metrics_are_served_in_prometheus_format() -> anyhow::Result<()> {
    bounded(60, async {
        let net = SingleNode::start(&["--snapshot-tx-interval", "10"])?;
        let c = net.user_client()?;
        let mut last = TxId::default();
        for i in 0..25u64 {
            last = post(&c, "/app/log/public", json!({"id": i, "msg": "m"})).await?;
        }
        c.wait_for_commit(last, COMMIT_WAIT).await?;
        ensure!(c.get("/app/log/public?id=999").await?.status == 404);
        let r = c.get("/node/metrics").await?;
        ensure!(r.status == 200, "{}", r.text());
        let text = r.text();
        let sample = |name: &str| -> Option<f64> {
            text.lines()
                .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        };
        for line in [
            "synod_http_requests_total{route=\"/app/log/{visibility}\",method=\"POST\",status=\"201\"} 25",
            "synod_http_requests_total{route=\"/app/log/{visibility}\",method=\"GET\",status=\"404\"} 1",
            "synod_raft_is_primary 1",
            "# TYPE synod_commit_latency_seconds histogram",
        ] {
            ensure!(text.contains(line), "missing {line}:\n{text}");
        }
        ensure!(
            sample("synod_commit_latency_seconds_count").is_some_and(|n| n >= 25.0),
            "{text}"
        );
        ensure!(
            sample("synod_commit_seqno").is_some_and(|n| n >= last.seqno as f64),
            "{text}"
        );
        ensure!(sample("synod_ledger_bytes").is_some_and(|n| n > 0.0), "{text}");
        ensure!(
            sample("synod_process_resident_memory_bytes").is_some_and(|n| n > 1e6),
            "{text}"
        );
        for l in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            ensure!(
                l.rsplit(' ').next().is_some_and(|v| v.parse::<f64>().is_ok()),
                "bad sample: {l}"
            );
        }
        Ok(())
    })
    .await
}

/// `--log-format json`: every log line is one JSON object with a timestamp, a level and a message, for log
/// collectors.
#[tokio::test]
async fn json_logs_are_one_object_per_line() -> anyhow::Result<()> {
    bounded(60, async {
        let mut net = SingleNode::start(&["--log-format", "json"])?;
        let c = net.user_client()?;
        post(&c, "/app/log/public", json!({"id": 1, "msg": "m"})).await?;
        net.node.terminate()?;
        let tail = net.node.log_tail(200);
        let lines: Vec<&str> = tail.lines().filter(|l| !l.trim().is_empty()).collect();
        ensure!(lines.len() >= 3, "too few log lines:\n{tail}");
        for line in lines {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
            ensure!(
                v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(),
                "{line}"
            );
        }
        ensure!(tail.contains("\"message\":\"stopping\""), "{tail}");
        Ok(())
    })
    .await
}

/// `synod ledger audit` shows a progress bar on a terminal (here a pseudo-terminal made by `script`) and nothing
/// but its report otherwise.
#[tokio::test]
async fn ledger_audit_shows_progress_on_a_terminal_only() -> anyhow::Result<()> {
    bounded(60, async {
        let mut net = SingleNode::start(&[])?;
        let c = net.user_client()?;
        for i in 0..10u64 {
            post(&c, "/app/log/public", json!({"id": i, "msg": "m"})).await?;
        }
        net.node.terminate()?;
        let ledger = net.node.dir.join("ledger");
        let plain = audit_ledger(&ledger, &net.node.dir.join("service_cert.pem"))?;
        let text =
            String::from_utf8_lossy(&plain.stdout).to_string() + &String::from_utf8_lossy(&plain.stderr);
        ensure!(plain.status.success() && !text.contains("auditing"), "{text}");
        let synod = synod_tests::bin("synod")?;
        let command = format!("{} ledger audit {}", synod.display(), ledger.display());
        let Ok(tty) = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .output()
        else {
            eprintln!("no `script` here to make a terminal: skipped");
            return Ok(());
        };
        let text = String::from_utf8_lossy(&tty.stdout);
        ensure!(tty.status.success(), "{text}");
        ensure!(text.contains("auditing") && text.contains("ledger OK"), "{text}");
        Ok(())
    })
    .await
}
