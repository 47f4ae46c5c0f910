//! A bounded soak under attack (priority 5): a 3-node network serves a normal writer while an attacker holds
//! thousands of half-open and idle TLS connections to every node and floods them with forged joins. Writes
//! must keep committing, no node may die, memory must stay bounded, and the flood must not grow the ledger
//! beyond the bounded Pending records it may cause.
//!
//! CI runs a short version. `scripts/soak.sh` runs a long one and prints the figures; the knobs are the
//! environment variables `SOAK_SECS` (default 12), `SOAK_CONNECTIONS` (per node and kind, default 300) and
//! `SOAK_JOINERS` (concurrent forged joiners, default 4).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use synod_client::TxStatus;
use synod_tests::{bounded, Forger, Network, NodeProc};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Lets this test process hold thousands of sockets (its soft limit may be 1024).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer, which lives on this stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn rss_kib(node: &NodeProc) -> anyhow::Result<u64> {
    let pid = node.pid().context("the node runs")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

fn open_fds(node: &NodeProc) -> anyhow::Result<usize> {
    let pid = node.pid().context("the node runs")?;
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

fn ledger_bytes(node: &NodeProc) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(node.dir.join("ledger"))? {
        let meta = e?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Keeps up to `n` connections open to `addr` until `stop`: plain TCP (half-open: never a TLS byte), or TLS
/// handshakes completed and then silent. Connections the node closes are opened again. Returns how many
/// connections were opened in all.
async fn hold_connections(
    addr: std::net::SocketAddr,
    n: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut opened = 0u64;
    let mut held: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        held.retain(|h| !h.is_finished());
        while held.len() < n && !stop.load(Ordering::Relaxed) {
            let Ok(Ok(tcp)) =
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await
            else {
                break;
            };
            opened += 1;
            let tls = tls.clone();
            let stop = stop.clone();
            held.push(tokio::spawn(async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = [0u8; 256];
                let read = |stop: Arc<AtomicBool>| async move {
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                };
                match tls {
                    None => {
                        let mut tcp = tcp;
                        tokio::select! {
                            _ = tcp.read(&mut buf) => {} // the node closed it
                            _ = read(stop) => {}
                        }
                    }
                    Some(config) => {
                        let name = ServerName::IpAddress(addr.ip().into());
                        let Ok(mut tls) = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
                        else {
                            return;
                        };
                        tokio::select! {
                            _ = tls.read(&mut buf) => {}
                            _ = read(stop) => {}
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for h in held {
        let _ = h.await;
    }
    opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_under_connection_and_join_floods_keeps_committing_writes() -> anyhow::Result<()> {
    raise_fd_limit();
    let secs = env_u64("SOAK_SECS", 12);
    let per_node = env_u64("SOAK_CONNECTIONS", 300) as usize;
    let joiners = env_u64("SOAK_JOINERS", 4) as usize;
    bounded(secs + 240, async move {
        let mut net = Network::start(3, &[]).await?;
        let p = net.primary().await?;
        let writer = net.user_client(p)?;
        // Connected before the flood, as a running application is: a connection opened during it may find every
        // one of the node's TLS handshake slots held by the attackers' silent connections (by design, until their
        // handshake timeout), and be closed at accept.
        writer.commit().await?;
        for i in 0..3 {
            net.nodes[i].is_running();
        }
        let rss_before: Vec<u64> = net.nodes.iter().map(rss_kib).collect::<Result<_, _>>()?;
        let ledger_before: Vec<u64> = net.nodes.iter().map(ledger_bytes).collect::<Result<_, _>>()?;
        let pending_before = pending(&net.nodes[p]).await?;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&net.service_cert)?)?;
        let tls = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut attackers = Vec::new();
        for node in &net.nodes {
            let addr: std::net::SocketAddr = node.addr.parse()?;
            attackers.push(tokio::spawn(hold_connections(addr, per_node, None, stop.clone())));
            attackers.push(tokio::spawn(hold_connections(
                addr,
                per_node,
                Some(tls.clone()),
                stop.clone(),
            )));
        }
        let (join_answers, join_refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut flooders = Vec::new();
        for j in 0..joiners {
            let target = NodeTarget::of(&net.nodes[j % net.nodes.len()]);
            let (stop, answers, refused) = (stop.clone(), join_answers.clone(), join_refused.clone());
            flooders.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(forger) = Forger::new() else { continue };
                    if let Ok(r) = forger.join_at(&target.url, &target.service_cert_pem, "flood").await {
                        answers.fetch_add(1, Ordering::Relaxed);
                        if r.status == 429 || r.status == 503 {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }

        // The normal client writes throughout; every window of the run must see writes committed.
        let start = Instant::now();
        let (mut written, mut last, mut max_gap) = (0u64, None, Duration::ZERO);
        let mut last_ok = Instant::now();
        let mut peak_fds = vec![0usize; net.nodes.len()];
        while start.elapsed() < Duration::from_secs(secs) {
            let body = serde_json::json!({"id": written, "msg": "soak"});
            match writer.post_json("/app/log/private", &body).await {
                Ok(r) if r.status == 201 => {
                    written += 1;
                    last = Some(r.tx_id()?);
                    max_gap = max_gap.max(last_ok.elapsed());
                    last_ok = Instant::now();
                }
                Ok(r) => anyhow::bail!("a write failed under attack: {} {}", r.status, r.text()),
                Err(e) => anyhow::bail!("a write failed under attack: {e}"),
            }
            if written % 50 == 0 {
                for (i, n) in net.nodes.iter().enumerate() {
                    peak_fds[i] = peak_fds[i].max(open_fds(n)?);
                }
            }
        }
        let last = last.context("no write succeeded")?;
        ensure!(
            writer.wait_for_commit(last, Duration::from_secs(30)).await? == TxStatus::Committed,
            "the last write committed"
        );
        let rss_attack: Vec<u64> = net.nodes.iter().map(rss_kib).collect::<Result<_, _>>()?;
        stop.store(true, Ordering::Relaxed);
        let mut opened = 0;
        for a in attackers {
            opened += a.await?;
        }
        for f in flooders {
            f.await?;
        }
        for (i, n) in net.nodes.iter_mut().enumerate() {
            ensure!(n.is_running(), "node {i} died under attack:\n{}", n.log_tail(30));
        }
        let ledger_after: Vec<u64> = net.nodes.iter().map(ledger_bytes).collect::<Result<_, _>>()?;
        let pending_after = pending(&net.nodes[p]).await?;
        let answers = join_answers.load(Ordering::Relaxed);
        let refused = join_refused.load(Ordering::Relaxed);
        println!(
            "soak: {secs} s, {per_node} half-open + {per_node} idle TLS connections held per node ({opened} opened), \
             {answers} forged joins ({refused} refused with 429/503); {written} writes ({:.0}/s), longest gap \
             between acknowledged writes {} ms, last write committed; peak descriptors per node {peak_fds:?}; \
             RSS KiB before {rss_before:?}, under attack {rss_attack:?}; ledger bytes before {ledger_before:?}, \
             after {ledger_after:?}; Pending records {pending_before} -> {pending_after}",
            written as f64 / secs as f64,
            max_gap.as_millis(),
        );
        ensure!(written > 0, "writes committed under attack");
        ensure!(
            pending_after <= pending_before + 6 * joiners.min(3) + (secs as usize / 10 + 1) * 3,
            "forged joins are bounded by the per-address rate: {pending_after} Pending records"
        );
        for (i, rss) in rss_attack.iter().enumerate() {
            ensure!(*rss < 1024 * 1024, "node {i} uses {rss} KiB under attack");
        }
        Ok(())
    })
    .await
}

async fn pending(node: &NodeProc) -> anyhow::Result<usize> {
    let nodes: serde_json::Value = node.client(None)?.get_json("/gov/service/nodes").await?;
    Ok(nodes["value"]
        .as_array()
        .context("nodes")?
        .iter()
        .filter(|n| n["status"] == "Pending")
        .count())
}

/// What a flooding task needs of a node (the node itself stays with the test).
struct NodeTarget {
    url: String,
    service_cert_pem: String,
}

impl NodeTarget {
    fn of(node: &NodeProc) -> NodeTarget {
        NodeTarget {
            url: node.url(),
            service_cert_pem: node.service_cert_pem().unwrap_or_default(),
        }
    }
}
