//! Priority 5, end to end: each test plays an attacker with network access only (a self-made key, forged
//! `virtual` evidence, floods of connections and joins) against real `synod-node` processes, and checks that
//! the service neither hands out its secrets, nor grows without bound, nor stops. docs/SECURITY.md has the
//! threat model these tests follow.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use base64::Engine as _;
use synod_client::{Client, Response};
use synod_tests::{bounded, post_log, synod_cli, Forger, IdentityFiles, Network, NodeProc, SingleNode};

const WRITE_WAIT: Duration = Duration::from_secs(20);

fn error_code(r: &Response) -> String {
    r.api_error().map(|e| e.code).unwrap_or_default()
}

async fn nodes_with_status(node: &NodeProc, status: &str) -> anyhow::Result<usize> {
    let nodes: serde_json::Value = node.client(None)?.get_json("/gov/service/nodes").await?;
    Ok(nodes["value"]
        .as_array()
        .context("nodes")?
        .iter()
        .filter(|n| n["status"] == status)
        .count())
}

fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let meta = e?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

fn open_fds(node: &NodeProc) -> anyhow::Result<usize> {
    let pid = node.pid().context("the node runs")?;
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Hole 1: without members, `virtual` evidence (unsigned, its measurement published) made anyone Trusted and
/// handed them the service key and ledger secret. Now only the operator's join token admits a node.
#[tokio::test]
async fn a_memberless_service_admits_only_nodes_with_the_operators_join_token() -> anyhow::Result<()> {
    bounded(120, async {
        let net = SingleNode::start(&[])?;
        ensure!(
            std::fs::read_to_string(net.node.dir.with_extension("log"))?.contains("DEVELOPMENT MODE"),
            "a member-less service says at start-up that it is for development"
        );
        let token_file = net.node.dir.join("join_token");
        use std::os::unix::fs::PermissionsExt as _;
        ensure!(std::fs::metadata(&token_file)?.permissions().mode() & 0o777 == 0o600);

        for token in [None, Some("0".repeat(64))] {
            let forger = Forger::new()?;
            let r = forger.join(&net.node, "evil", token.as_deref()).await?;
            ensure!(
                r.status == 403 && error_code(&r) == "InvalidJoinToken",
                "forged join with token {token:?}: {} {}",
                r.status,
                r.text()
            );
            for secret in ["service_key", "ledger_secret", "PRIVATE KEY"] {
                ensure!(!r.text().contains(secret), "the refusal carries no {secret}");
            }
        }
        ensure!(nodes_with_status(&net.node, "Trusted").await? == 1);
        ensure!(nodes_with_status(&net.node, "Pending").await? == 0);

        // The operator's own node, given the token, joins and serves what the first node commits.
        let service_cert = net.node.dir.join("service_cert.pem");
        let n1 = NodeProc::spawn(
            "join",
            &net.tmp.path().join("n1"),
            &[
                "--target".into(),
                net.node.url(),
                "--service-cert".into(),
                service_cert.display().to_string(),
                "--join-token-file".into(),
                token_file.display().to_string(),
            ],
        )?;
        post_log(&net.user_client()?, 7, "joined with the token", WRITE_WAIT).await?;
        let reader = n1.client(Some(&net.user))?;
        let deadline = Instant::now() + WRITE_WAIT;
        loop {
            let r = reader.get("/app/log/private?id=7").await?;
            if r.status == 200 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the joined node never served the write: {}",
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    })
    .await
}

/// Hole 2: each forged join with a fresh key wrote a Pending record (with a name as large as the body limit)
/// into the ledger for ever. Now names are bounded, Pending records are capped and expire, and new ones are
/// rate-limited per client address; a flood past the limits writes nothing.
#[tokio::test]
async fn forged_joins_are_bounded_in_size_number_age_and_rate() -> anyhow::Result<()> {
    bounded(120, async {
        let keys = tempfile::tempdir()?;
        let member = IdentityFiles::generate(keys.path(), "member0")?;
        let member_cert = member.cert.display().to_string();

        // Size, number and age (the rate limit out of the way).
        let net = SingleNode::start(&[
            "--member-cert",
            &member_cert,
            "--joins-per-min",
            "1000",
            "--pending-joins-max",
            "3",
            // Long enough that the four joins below land within it on a loaded machine (expiry counts whole
            // seconds, so the window is over TTL - 1 s).
            "--pending-join-ttl-s",
            "6",
        ])?;
        for name in ["x".repeat(65), "bad name".into(), String::new()] {
            let r = Forger::new()?.join(&net.node, &name, None).await?;
            ensure!(r.status == 400, "node name {name:?}: {} {}", r.status, r.text());
        }
        for i in 0..3 {
            let r = Forger::new()?.join(&net.node, &format!("f{i}"), None).await?;
            ensure!(
                r.status == 200 && r.json_value()?["status"] == "Pending",
                "{}",
                r.text()
            );
        }
        let r = Forger::new()?.join(&net.node, "f3", None).await?;
        ensure!(
            r.status == 503 && error_code(&r) == "TooManyPendingJoins" && r.header("retry-after").is_some(),
            "past --pending-joins-max: {} {}",
            r.status,
            r.text()
        );
        ensure!(nodes_with_status(&net.node, "Pending").await? == 3);
        // Never trusted within the TTL: the next join sweeps them out of the nodes table.
        tokio::time::sleep(Duration::from_millis(7_100)).await;
        let r = Forger::new()?.join(&net.node, "f4", None).await?;
        ensure!(r.status == 200, "{}", r.text());
        ensure!(
            nodes_with_status(&net.node, "Pending").await? == 1,
            "expired Pending joins were removed"
        );

        // Rate: new Pending records per client address.
        let net = SingleNode::start(&["--member-cert", &member_cert, "--joins-per-min", "2"])?;
        let first = Forger::new()?;
        ensure!(first.join(&net.node, "r0", None).await?.status == 200);
        ensure!(Forger::new()?.join(&net.node, "r1", None).await?.status == 200);
        let r = Forger::new()?.join(&net.node, "r2", None).await?;
        ensure!(
            r.status == 429 && r.header("retry-after").is_some(),
            "past --joins-per-min: {} {}",
            r.status,
            r.text()
        );
        // A Pending node polling for its decision is not a new record, so it is never limited.
        let again = first.join(&net.node, "r0", None).await?;
        ensure!(again.status == 200 && again.json_value()?["status"] == "Pending");
        // A flood past the limit does not grow the ledger at all.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ledger = net.node.dir.join("ledger");
        let before = dir_bytes(&ledger)?;
        for i in 0..100 {
            let r = Forger::new()?.join(&net.node, &format!("flood{i}"), None).await?;
            ensure!(r.status == 429, "flood {i}: {} {}", r.status, r.text());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        ensure!(
            dir_bytes(&ledger)? == before,
            "the refused flood wrote to the ledger"
        );
        ensure!(nodes_with_status(&net.node, "Pending").await? == 2);
        Ok(())
    })
    .await
}

/// Hole 3: connections had no timeout and no cap, so a few thousand half-open TLS connections exhausted the
/// node's file descriptors. Now handshakes, idle connections and their number are bounded, and an
/// established client keeps working through the flood.
#[tokio::test]
async fn connection_floods_are_bounded_and_do_not_stop_the_node() -> anyhow::Result<()> {
    bounded(120, async {
        let net = SingleNode::start(&[
            "--rpc-connections-max",
            "40",
            "--rpc-handshakes-max",
            "10",
            "--tls-handshake-timeout-ms",
            "1000",
            "--http-idle-timeout-ms",
            "2000",
        ])?;
        let client = net.user_client()?;
        post_log(&client, 1, "before the flood", WRITE_WAIT).await?;
        let baseline = open_fds(&net.node)?;

        // Half-open connections: TCP only, never a TLS byte.
        let addr: std::net::SocketAddr = net.node.addr.parse()?;
        let mut held = Vec::new();
        for _ in 0..500 {
            held.push(std::net::TcpStream::connect(addr)?);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let during = open_fds(&net.node)?;
        ensure!(
            during <= baseline + 10 + 2,
            "the node holds {during} descriptors during the flood (baseline {baseline}, handshake cap 10)"
        );
        // The established connection is not affected.
        post_log(&client, 2, "during the flood", WRITE_WAIT).await?;

        // Past the handshake timeout the half-open connections are gone: newcomers get in again.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let fresh = net.user_client()?;
        post_log(&fresh, 3, "after the flood", WRITE_WAIT).await?;

        // Idle TLS connections: opened, used once, then left silent.
        let mut idle = Vec::new();
        for _ in 0..20 {
            let c = net.user_client()?;
            ensure!(c.get("/node/commit").await?.status == 200);
            idle.push(c);
        }
        ensure!(open_fds(&net.node)? >= baseline + 15, "the idle connections are open");
        tokio::time::sleep(Duration::from_millis(4_000)).await;
        let after_idle = open_fds(&net.node)?;
        ensure!(
            after_idle <= baseline + 2,
            "idle connections are closed after --http-idle-timeout-ms: {after_idle} descriptors, baseline {baseline}"
        );
        drop(held);
        let mut node = net.node;
        ensure!(node.is_running(), "the node survived:\n{}", node.log_tail(20));
        Ok(())
    })
    .await
}

/// Hole 4: `/node/snapshot` served the whole state to any key with a (forged) Pending join. Now only Trusted
/// nodes of the service get snapshots, streamed, and only `--snapshot-downloads-max` at once.
#[tokio::test]
async fn snapshots_are_served_to_trusted_nodes_only() -> anyhow::Result<()> {
    bounded(120, async {
        let net = Network::start(1, &["--snapshot-tx-interval", "10"]).await?;
        let node = &net.nodes[0];
        let user = net.user_client(0)?;
        for i in 0..25 {
            post_log(&user, i, "secret record", WRITE_WAIT).await?;
        }
        let snapshots = node.dir.join("snapshots");
        let deadline = Instant::now() + WRITE_WAIT;
        let committed = loop {
            let found = std::fs::read_dir(&snapshots)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .find(|n| n.ends_with(".committed"));
            if let Some(name) = found {
                break name;
            }
            ensure!(Instant::now() < deadline, "no snapshot was committed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };

        let forger = Forger::new()?;
        let r = forger.join(node, "pending", None).await?;
        ensure!(
            r.status == 200 && r.json_value()?["status"] == "Pending",
            "{}",
            r.text()
        );
        for path in [
            "/node/snapshot".to_string(),
            format!("/node/snapshot/{committed}"),
        ] {
            for (who, client) in [("a Pending node", forger.client(node)?), ("a user", user.clone())] {
                let r = client.get(&path).await?;
                ensure!(
                    r.status == 401 || r.status == 403,
                    "{path} for {who}: {} {}",
                    r.status,
                    r.text()
                );
            }
        }

        // A Trusted node (here: the node's own endorsed identity) gets the proof and the streamed bytes.
        let trusted = Client::new(
            &node.url(),
            &node.service_cert_pem()?,
            Some((
                &std::fs::read_to_string(node.dir.join("node_cert.pem"))?,
                &std::fs::read_to_string(node.dir.join("node_key.pem"))?,
            )),
        )?;
        let info = trusted.get("/node/snapshot").await?;
        ensure!(info.status == 200, "{}", info.text());
        let name = info.json_value()?["name"].as_str().context("name")?.to_string();
        let bytes = trusted.get(&format!("/node/snapshot/{name}")).await?;
        ensure!(bytes.status == 200, "{}", bytes.text());
        ensure!(
            bytes.body == std::fs::read(snapshots.join(&name))?,
            "the streamed bytes are the file"
        );
        Ok(())
    })
    .await
}

/// Hole 10 (part): a node whose ledger secret file disappeared made a new secret and carried on, sealing under
/// a key no other node holds. Now it refuses to start.
#[tokio::test]
async fn a_node_without_its_ledger_secret_refuses_to_start() -> anyhow::Result<()> {
    bounded(60, async {
        let mut net = SingleNode::start(&[])?;
        post_log(&net.user_client()?, 1, "sealed", WRITE_WAIT).await?;
        net.node.terminate()?;
        std::fs::remove_file(net.node.dir.join("ledger_secret"))?;
        ensure!(net.node.restart().is_err(), "the node must not start");
        let log = std::fs::read_to_string(net.node.dir.with_extension("log"))?;
        ensure!(
            log.contains("the ledger secret is missing"),
            "the node says why:\n{}",
            net.node.log_tail(40)
        );
        ensure!(
            !net.node.dir.join("ledger_secret").exists(),
            "no new secret was made"
        );
        Ok(())
    })
    .await
}

/// Issue 13: hardware evidence in a join is verified before anything else: real SGX evidence whose collateral
/// expired is refused with the date, a real SEV-SNP report that verifies but binds another key is refused for
/// that, a changed byte of it for its signature, and an unknown format by name. Nothing is recorded.
#[tokio::test]
async fn joins_with_hardware_evidence_are_verified_and_bound_to_the_tls_key() -> anyhow::Result<()> {
    bounded(60, async {
        let net = SingleNode::start(&[])?;
        let (url, cert) = (net.node.url(), net.node.service_cert_pem()?);
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/core/tests/fixtures/attestation");
        let sgx = serde_json::json!({
            "format": "OE_SGX_v1",
            "quote": b64(&std::fs::read(fixtures.join("sgx_quote.bin"))?),
            "endorsements": b64(&std::fs::read(fixtures.join("sgx_quote_collateral.json"))?),
        });
        let report = hex::decode(std::fs::read_to_string(fixtures.join("snp_report_milan.hex"))?.trim())?;
        let snp_endorsements = b64(&std::fs::read(fixtures.join("snp_endorsements_milan.pem"))?);
        let snp = serde_json::json!({"format": "AMD_SEV_SNP_v1", "quote": b64(&report), "endorsements": snp_endorsements});
        let mut tampered = report.clone();
        tampered[0x90] ^= 1;
        let snp_tampered =
            serde_json::json!({"format": "AMD_SEV_SNP_v1", "quote": b64(&tampered), "endorsements": snp_endorsements});
        let unknown = serde_json::json!({"format": "TDX_v9", "quote": ""});
        for (evidence, expected) in [
            (sgx, "SGX collateral (TCB info) expired at 2025-07-19T10:56:11Z"),
            (snp, "report data does not bind the key presented in TLS"),
            (snp_tampered, "bad signature: the VCEK does not sign the report"),
            (unknown, "unsupported attestation format \"TDX_v9\""),
        ] {
            let r = Forger::new()?
                .join_with_evidence(&url, &cert, "hw", None, evidence)
                .await?;
            let e = r.api_error().context("an error body")?;
            ensure!(
                r.status == 403 && e.code == "InvalidQuote" && e.message.contains(expected),
                "{expected}: {} {}",
                r.status,
                r.text()
            );
        }
        ensure!(nodes_with_status(&net.node, "Pending").await? == 0);
        Ok(())
    })
    .await
}

/// Issue 13: a client verifies a node before trusting it. `GET /node/quotes/self` is the node's fresh evidence,
/// `GET /node/quotes` what each Trusted node presented; `synod attest` checks the evidence binds the TLS key the
/// node presented and states the expected measurement, and only then writes the service certificate.
#[tokio::test]
async fn a_client_attests_a_node_before_pinning_the_service_certificate() -> anyhow::Result<()> {
    bounded(60, async {
        let net = SingleNode::start(&[])?;
        let c = net.user_client()?;
        let own: serde_json::Value = c.get_json("/node/quotes/self").await?;
        ensure!(own["format"] == "Insecure_Virtual", "{own}");
        // The list reads the committed nodes table: give genesis the time to commit (a slow machine, a debug build).
        let mut all: serde_json::Value = c.get_json("/node/quotes").await?;
        for _ in 0..100 {
            if all["quotes"].as_array().is_some_and(|q| !q.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            all = c.get_json("/node/quotes").await?;
        }
        let quotes = all["quotes"].as_array().context("quotes")?;
        ensure!(
            quotes.len() == 1 && quotes[0]["node_id"] == own["node_id"],
            "{all}"
        );
        let measurement = own["measurement"].as_str().context("measurement")?.to_string();

        let dir = tempfile::tempdir()?;
        let pinned = dir.path().join("pinned.pem");
        let url = net.node.url();
        let pinned_arg = pinned.display().to_string();
        let out = synod_cli(&[
            "attest",
            &url,
            "--measurement",
            &measurement,
            "--out",
            &pinned_arg,
        ])?;
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ensure!(out.status.success() && doc["ok"] == true, "{doc}");
        ensure!(
            doc["node_id"] == own["node_id"] && doc["evidence"]["platform"] == "virtual",
            "{doc}"
        );
        ensure!(std::fs::read_to_string(&pinned)? == net.node.service_cert_pem()?);

        let wrong = "ab".repeat(32);
        for (args, reason) in [
            (vec!["--measurement", wrong.as_str()], "is not the expected"),
            (
                vec!["--measurement", measurement.as_str(), "--platform", "snp"],
                "not Some(Snp)",
            ),
        ] {
            let refused = dir.path().join("refused.pem");
            let refused_arg = refused.display().to_string();
            let out = synod_cli(
                &[
                    &["attest", url.as_str(), "--out", refused_arg.as_str()][..],
                    &args[..],
                ]
                .concat(),
            )?;
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            ensure!(!out.status.success() && doc["ok"] == false, "{doc}");
            ensure!(
                doc["error"].as_str().is_some_and(|e| e.contains(reason)),
                "{reason}: {doc}"
            );
            ensure!(!refused.exists(), "nothing is pinned for a refused node");
        }
        Ok(())
    })
    .await
}
