//! Priority 10, end to end: certificate lifetimes set by governance, renewed under load without a failed request
//! (docs/RECOVERY.md, "Certificate lifetimes").

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use synod_tests::{bounded, Network, NodeProc};

const DAY: i64 = 86_400;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The certificate `node` presents in a TLS handshake now, and its validity.
async fn presented(node: &NodeProc, service_cert_pem: &str) -> anyhow::Result<(Vec<u8>, (i64, i64))> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(service_cert_pem.as_bytes()) {
        roots.add(der?)?;
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let addr: std::net::SocketAddr = node.addr.parse()?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no certificate presented")?
        .to_vec();
    let validity = synod_core::cert::validity_of(&der)?;
    Ok((der, validity))
}

#[tokio::test(flavor = "multi_thread")]
async fn governance_renews_node_and_service_certificates_under_load_without_a_failed_request(
) -> anyhow::Result<()> {
    bounded(300, async {
        let mut net = Network::start(3, &[]).await?;
        let old_service_cert = std::fs::read_to_string(&net.service_cert)?;
        let (_, (_, forever)) = presented(&net.nodes[0], &old_service_cert).await?;
        ensure!(
            forever - now() > 3650 * DAY,
            "before any policy, certificates do not end in practice"
        );

        // Writers on every node, each opening a new connection from time to time, for the whole renewal.
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut writers = Vec::new();
        for w in 0..6u64 {
            let nodes: Vec<_> = (0..3).map(|i| net.user_client(i)).collect::<Result<_, _>>()?;
            let (stop, done) = (stop.clone(), done.clone());
            writers.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let client = &nodes[(i % 3) as usize];
                    let key = w * 1_000_000 + i;
                    match client
                        .post_json("/app/log/private", &json!({"id": key, "msg": "load"}))
                        .await
                    {
                        Ok(r) if r.status == 201 => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.push(format!("{} {}", r.status, r.text())),
                        Err(e) => failures.push(e.to_string()),
                    }
                    i += 1;
                }
                failures
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;

        let p = net.primary().await?;
        net.pass(
            p,
            "set_all_nodes_certificate_validity",
            json!({"validity_period_days": 30}),
        )
        .await?;
        net.pass(
            p,
            "set_service_certificate_validity",
            json!({"validity_period_days": 90}),
        )
        .await?;
        // Every node presents a 30-day certificate from its next handshake on, without a restart.
        for node in &net.nodes {
            let mut last = (0, 0);
            for _ in 0..100 {
                last = presented(node, &old_service_cert).await?.1;
                if last.1 - last.0 == 30 * DAY - 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ensure!(last.1 - last.0 == 30 * DAY - 1, "{} presents {last:?}", node.addr);
            ensure!((last.0 - now()).abs() < 600, "valid from now: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            let failures = w.await?;
            ensure!(
                failures.is_empty(),
                "requests failed during the renewal: {failures:?}"
            );
        }
        ensure!(
            done.load(Ordering::Relaxed) > 50,
            "too little load to mean anything"
        );

        // The renewed service certificate: same key, so clients pinned to either keep working.
        let network: Value = net.nodes[p].client(None)?.get_json("/node/network").await?;
        let new_service_cert = network["service_certificate"]
            .as_str()
            .context("service cert")?
            .to_string();
        ensure!(new_service_cert != old_service_cert);
        let der = synod_core::cert::pem_to_der(&new_service_cert)?;
        let (from, until) = synod_core::cert::validity_of(&der)?;
        ensure!(until - from == 90 * DAY - 1, "{from} {until}");
        let user = net.user_client(p)?;
        let tx = synod_tests::post_log(&user, 7, "after renewal", Duration::from_secs(30)).await?;
        user.wait_for_commit(tx, Duration::from_secs(30)).await?;
        let receipt = user.receipt(tx, false).await?;
        synod_client::verify_receipt_bytes(&receipt, &old_service_cert)?;
        synod_client::verify_receipt_bytes(&receipt, &new_service_cert)?;
        std::fs::write(&net.service_cert, &new_service_cert)?;
        net.user_client(p)?.get("/app/log/private?id=7").await?;

        // A node joining later is endorsed under the policy, and one node's certificate alone can be renewed.
        let j = net.join_node(&[]).await?;
        let (_, (from, until)) = presented(&net.nodes[j], &new_service_cert).await?;
        ensure!(until - from == 30 * DAY - 1, "the joiner: {from} {until}");
        let node_id: Value = net.nodes[j].client(None)?.get_json("/node/state").await?;
        let node_id = node_id["node_id"].as_str().context("node id")?.to_string();
        net.pass(
            p,
            "set_node_certificate_validity",
            json!({"node_id": node_id, "validity_period_days": 7}),
        )
        .await?;
        let mut last = (0, 0);
        for _ in 0..100 {
            last = presented(&net.nodes[j], &new_service_cert).await?.1;
            if last.1 - last.0 == 7 * DAY - 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(last.1 - last.0 == 7 * DAY - 1, "{last:?}");
        // Out of the allowed range: refused by the constitution, nothing changes.
        let out = net.gov_cli(
            p,
            0,
            &[
                "propose",
                "--action",
                "set_all_nodes_certificate_validity",
                "--args",
                r#"{"validity_period_days": 400}"#,
            ],
        )?;
        ensure!(!out.status.success(), "a 400-day validity was proposed");
        net.stop_all()?;
        Ok(())
    })
    .await
}
