//! Priority 6, end to end: historical queries (a record as of a past transaction, every version of a record,
//! receipts rebuilt from the ledger) across chunk and snapshot boundaries, restarts and joins; and the change
//! feed (`/app/kv/{map}/changes`): complete, in order, resumable without gap or duplicate, across a failover.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use synod_client::{Client, Method, TxId};
use synod_tests::{
    bounded, post_log, post_public, IdentityFiles, Network, NodeProc, SingleNode, SMALL_LEDGER,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const COMMIT_WAIT: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_secs(30);

/// The committed chunk files of `ledger`, once there are at least `n` (the files follow the commit closely).
async fn wait_for_chunks(ledger: &Path, n: usize) -> anyhow::Result<usize> {
    let mut found = 0;
    for _ in 0..500 {
        found = synod_tests::committed_chunks(ledger)?.len();
        if found >= n {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!(
        "expected at least {n} committed chunk files, found {found}: {:?}",
        std::fs::read_dir(ledger)?
            .filter_map(|e| e.ok())
            .map(|e| (e.file_name(), e.metadata().map(|m| m.len()).unwrap_or(0)))
            .collect::<Vec<_>>()
    )
}

/// One write the test made: the transaction, the record id, and the message (None: a delete).
#[derive(Clone, Debug)]
struct Written {
    tx: TxId,
    id: u64,
    msg: Option<String>,
}

/// What record `id` held right after seqno `seqno`, by the test's own log: (seqno of the write, message).
fn expected_at(log: &[Written], id: u64, seqno: u64) -> Option<(u64, String)> {
    let last = log.iter().rev().find(|w| w.id == id && w.tx.seqno <= seqno)?;
    last.msg.clone().map(|m| (last.tx.seqno, m))
}

async fn get(c: &Client, path: &str) -> anyhow::Result<(u16, Value)> {
    let r = c.call_with_retry(Method::GET, path, None, &[], RETRY).await?;
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        r.json_value().unwrap_or_else(|_| json!(r.text()))
    };
    Ok((r.status.as_u16(), v))
}

async fn delete_log(c: &Client, id: u64) -> anyhow::Result<TxId> {
    let r = c
        .call_with_retry(
            Method::DELETE,
            &format!("/app/log/private?id={id}"),
            None,
            &[],
            RETRY,
        )
        .await?;
    ensure!(r.status == 200, "DELETE: {} {}", r.status, r.text());
    Ok(r.tx_id()?)
}

/// Writes `n` versions of records 1..=5 (with a delete of record 5 every 20 writes), in order.
async fn write_versions(c: &Client, log: &mut Vec<Written>, n: usize, tag: &str) -> anyhow::Result<TxId> {
    let mut last = TxId::default();
    for i in 0..n {
        let id = (i % 5) as u64 + 1;
        if i % 20 == 19
            && log
                .iter()
                .rev()
                .find(|w| w.id == 5)
                .is_some_and(|w| w.msg.is_some())
        {
            last = delete_log(c, 5).await?;
            log.push(Written {
                tx: last,
                id: 5,
                msg: None,
            });
            continue;
        }
        let msg = format!("{tag}-{i}-of-{id}");
        last = post_log(c, id, &msg, RETRY).await?;
        log.push(Written {
            tx: last,
            id,
            msg: Some(msg),
        });
    }
    Ok(last)
}

/// Checks `/app/log/private/historical` for record `id` as of `tx` against the log, and its receipt.
async fn check_as_of(c: &Client, log: &[Written], id: u64, tx: TxId, cert: &str) -> anyhow::Result<()> {
    let (status, v) = get(
        c,
        &format!("/app/log/private/historical?id={id}&transaction_id={tx}"),
    )
    .await?;
    match expected_at(log, id, tx.seqno) {
        Some((seqno, msg)) => {
            ensure!(status == 200, "record {id} as of {tx}: {status} {v}");
            ensure!(
                v["msg"] == msg.as_str()
                    && v["write_seqno"] == seqno
                    && v["transaction_id"] == tx.to_string(),
                "record {id} as of {tx}: expected {msg:?} written at {seqno}, got {v}"
            );
            let receipt = serde_json::to_vec(&v["receipt"])?;
            synod_client::verify_receipt_bytes(&receipt, cert)
                .with_context(|| format!("the receipt of {tx} does not verify: {}", v["receipt"]))?;
        }
        None => ensure!(
            status == 404 && v["error"]["code"] == "ResourceNotFound",
            "record {id} had no value as of {tx}: {status} {v}"
        ),
    }
    Ok(())
}

/// Every version of record `id` in `1..=to`, paged with `limit`, as (seqno, message or null).
async fn all_versions(c: &Client, id: u64, to: u64, limit: usize) -> anyhow::Result<Vec<(u64, Value)>> {
    let mut out = Vec::new();
    let mut from = 1;
    for _ in 0..10_000 {
        let (status, v) = get(
            c,
            &format!(
                "/app/log/private/historical/range?id={id}&from_seqno={from}&to_seqno={to}&limit={limit}"
            ),
        )
        .await?;
        ensure!(status == 200, "range of {id} from {from}: {status} {v}");
        let entries = v["entries"].as_array().context("entries")?;
        ensure!(entries.len() <= limit, "a page holds at most the limit");
        for e in entries {
            out.push((e["seqno"].as_u64().context("seqno")?, e["msg"].clone()));
        }
        match v["next"].as_u64() {
            Some(next) => {
                ensure!(next > from, "next {next} does not move on from {from}");
                from = next;
            }
            None => return Ok(out),
        }
    }
    bail!("the range of record {id} did not end")
}

fn versions_in_log(log: &[Written], id: u64, from: u64) -> Vec<(u64, Value)> {
    log.iter()
        .filter(|w| w.id == id && w.tx.seqno >= from)
        .map(|w| (w.tx.seqno, w.msg.clone().map_or(Value::Null, Value::from)))
        .collect()
}

async fn check_receipt(c: &Client, tx: TxId, cert: &str) -> anyhow::Result<()> {
    let receipt = c.wait_for_receipt(tx, false, COMMIT_WAIT).await?;
    synod_client::verify_receipt_bytes(&receipt, cert).with_context(|| format!("receipt of {tx}"))?;
    Ok(())
}

/// Historical reads and receipts over a ledger of many chunks and snapshots: every past value and version equals
/// what was written then, receipts of the first transactions (long flushed from memory) are rebuilt from the
/// files and verify; the same after a restart (which reads only the ledger after the newest snapshot); a node that
/// joined from a snapshot answers TransactionBeforeSnapshot before it and serves the rest.
#[tokio::test]
async fn historical_values_versions_and_receipts_across_chunks_snapshots_restarts_and_joins(
) -> anyhow::Result<()> {
    bounded(420, async {
        let mut net = Network::start(1, &SMALL_LEDGER).await?;
        let cert = std::fs::read_to_string(&net.service_cert)?;
        let c = net.user_client(0)?;
        let mut log = Vec::new();
        let last = write_versions(&c, &mut log, 400, "first").await?;
        c.wait_for_commit(last, COMMIT_WAIT).await?;
        wait_for_chunks(&net.nodes[0].dir.join("ledger"), 6).await?;

        // Every 7th transaction, as seen by its own record and by another one.
        for w in log.iter().step_by(7) {
            check_as_of(&c, &log, w.id, w.tx, &cert).await?;
            check_as_of(&c, &log, (w.id % 5) + 1, w.tx, &cert).await?;
        }
        // A record never written: known absent near the start of the ledger; further on, the search back is
        // bounded and says so.
        check_as_of(&c, &log, 77, log[3].tx, &cert).await?;
        let (status, v) = get(
            &c,
            &format!("/app/log/private/historical?id=77&transaction_id={last}"),
        )
        .await?;
        ensure!(
            status == 413 && v["error"]["code"] == "HistoricalRangeTooLarge",
            "{status} {v}"
        );
        for id in 1..=5 {
            ensure!(
                all_versions(&c, id, last.seqno, 7).await? == versions_in_log(&log, id, 1),
                "the versions of record {id} differ from what was written"
            );
        }
        for w in &log[..5] {
            check_receipt(&c, w.tx, &cert).await?;
        }
        // Only Committed transactions: a future seqno is unknown, a past one with another view Invalid.
        let (status, v) = get(
            &c,
            &format!(
                "/app/log/private/historical?id=1&transaction_id={}.{}",
                last.view,
                last.seqno + 10_000
            ),
        )
        .await?;
        ensure!(
            status == 404 && v["error"]["code"] == "TransactionPendingOrUnknown",
            "{status} {v}"
        );
        if last.view > 1 {
            let wrong = TxId::new(last.view - 1, log[3].tx.seqno);
            if log[3].tx.view == last.view {
                let (status, v) = get(
                    &c,
                    &format!("/app/log/private/historical?id=1&transaction_id={wrong}"),
                )
                .await?;
                ensure!(
                    status == 404 && v["error"]["code"] == "TransactionInvalid",
                    "{status} {v}"
                );
            }
        }
        let (status, v) = get(
            &c,
            "/app/log/private/historical/range?id=1&from_seqno=5&to_seqno=4",
        )
        .await?;
        ensure!(status == 400, "{status} {v}");
        let (status, v) = get(&c, "/app/log/private/historical/range?id=1&limit=100000").await?;
        ensure!(status == 400, "{status} {v}");
        // A span longer than one request scans is paged.
        let (status, v) = get(
            &c,
            "/app/log/private/historical/range?id=1&from_seqno=1&to_seqno=1000000",
        )
        .await?;
        ensure!(status == 200 && v["next"].is_u64(), "{status} {v}");

        // A restart reads only the ledger after the newest snapshot; the past is still read from the files.
        net.nodes[0].restart()?;
        let c = net.user_client(0)?;
        let after_restart = write_versions(&c, &mut log, 40, "restarted").await?;
        c.wait_for_commit(after_restart, COMMIT_WAIT).await?;
        for w in log.iter().step_by(23) {
            check_as_of(&c, &log, w.id, w.tx, &cert).await?;
        }
        for w in &log[..3] {
            check_receipt(&c, w.tx, &cert).await?;
        }
        ensure!(all_versions(&c, 2, after_restart.seqno, 50).await? == versions_in_log(&log, 2, 1));

        // A node that joins from a snapshot has no ledger before it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let j = net.join_node(&[]).await?;
        net.wait_for_voters(2).await?;
        let p = net.primary().await?;
        let cp = net.user_client(p)?;
        let joined_at = log.len();
        let after_join = write_versions(&cp, &mut log, 30, "joined").await?;
        net.wait_committed_everywhere(after_join).await?;
        let cj = net.user_client(j)?;
        let state: Value = net.nodes[j].client(None)?.get_json("/node/state").await?;
        let start = state["history_start_seqno"].as_u64().context("history start")?;
        ensure!(
            start > 50,
            "the new node replayed from seqno {start}, not from a snapshot"
        );
        let early = log[2].tx;
        let (status, v) = get(
            &cj,
            &format!("/app/log/private/historical?id=1&transaction_id={early}"),
        )
        .await?;
        ensure!(
            status == 404 && v["error"]["code"] == "TransactionBeforeSnapshot",
            "{status} {v}"
        );
        let (status, v) = get(&cj, "/app/log/private/historical/range?id=1&from_seqno=1").await?;
        ensure!(
            status == 404 && v["error"]["code"] == "TransactionBeforeSnapshot",
            "{status} {v}"
        );
        // Its ledger starts after the snapshot it joined from: values set since are read from it.
        let ledger_start = synod_core::ledger::list_chunks(&net.nodes[j].dir.join("ledger"))?
            .first()
            .context("a chunk")?
            .0
            .start;
        for w in log[joined_at..].iter().step_by(3) {
            check_as_of(&cj, &log, w.id, w.tx, &cert).await?;
            let other = (w.id % 5) + 1;
            if expected_at(&log, other, w.tx.seqno).is_some_and(|(seqno, _)| seqno >= ledger_start) {
                check_as_of(&cj, &log, other, w.tx, &cert).await?;
            }
        }
        ensure!(
            all_versions_from(&cj, 3, log[joined_at].tx.seqno, after_join.seqno).await?
                == versions_in_log(&log, 3, log[joined_at].tx.seqno)
        );
        Ok(())
    })
    .await
}

async fn all_versions_from(c: &Client, id: u64, from: u64, to: u64) -> anyhow::Result<Vec<(u64, Value)>> {
    let (status, v) = get(
        c,
        &format!("/app/log/private/historical/range?id={id}&from_seqno={from}&to_seqno={to}&limit=1000"),
    )
    .await?;
    ensure!(status == 200 && v["next"].is_null(), "{status} {v}");
    Ok(v["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .map(|e| (e["seqno"].as_u64().unwrap_or(0), e["msg"].clone()))
        .collect())
}

// ---- the change feed ----

/// One line of a change feed that reports a write: (seqno, key hex, value text or null).
type Change = (u64, String, Value);

/// A change feed read as it streams, over one HTTPS connection (HTTP/1.1, chunked).
struct FeedStream {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    raw: Vec<u8>,
    data: Vec<u8>,
    /// Bytes left in the current chunk; `None` between chunks.
    chunk_left: Option<usize>,
    ended: bool,
}

fn tls_config(cert_pem: &str, user: &IdentityFiles) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(der?)?;
    }
    let certs = CertificateDer::pem_slice_iter(user.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(user.key_pem.as_bytes())?;
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl FeedStream {
    async fn open(node: &NodeProc, user: &IdentityFiles, path: &str) -> anyhow::Result<FeedStream> {
        let config = tls_config(&node.service_cert_pem()?, user)?;
        let addr: std::net::SocketAddr = node.addr.parse()?;
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\naccept: application/x-ndjson\r\n\r\n",
            node.addr
        );
        tls.write_all(request.as_bytes()).await?;
        let mut stream = FeedStream {
            tls,
            raw: Vec::new(),
            data: Vec::new(),
            chunk_left: None,
            ended: false,
        };
        let head_end = loop {
            if let Some(i) = stream.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            ensure!(
                stream.fill().await?,
                "the node closed the connection before answering"
            );
        };
        let head = String::from_utf8_lossy(&stream.raw[..head_end]).to_string();
        stream.raw.drain(..head_end + 4);
        if !head.starts_with("HTTP/1.1 200") {
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.fill()).await;
            bail!("{head}\n{}", String::from_utf8_lossy(&stream.raw));
        }
        ensure!(
            head.to_lowercase().contains("transfer-encoding: chunked"),
            "not streamed: {head}"
        );
        Ok(stream)
    }

    async fn fill(&mut self) -> anyhow::Result<bool> {
        let mut buf = [0u8; 16 << 10];
        let n = self.tls.read(&mut buf).await?;
        self.raw.extend_from_slice(&buf[..n]);
        Ok(n > 0)
    }

    /// Moves what `raw` holds of the chunked body into `data`.
    fn decode(&mut self) -> anyhow::Result<()> {
        loop {
            match self.chunk_left {
                None => {
                    let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                        return Ok(());
                    };
                    let size = std::str::from_utf8(&self.raw[..i])?;
                    let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                        .with_context(|| format!("chunk size {size:?}"))?;
                    self.raw.drain(..i + 2);
                    if size == 0 {
                        self.ended = true;
                        return Ok(());
                    }
                    self.chunk_left = Some(size);
                }
                Some(0) => {
                    if self.raw.len() < 2 {
                        return Ok(());
                    }
                    self.raw.drain(..2);
                    self.chunk_left = None;
                }
                Some(left) => {
                    if self.raw.is_empty() {
                        return Ok(());
                    }
                    let n = left.min(self.raw.len());
                    self.data.extend(self.raw.drain(..n));
                    self.chunk_left = Some(left - n);
                }
            }
        }
    }

    /// The next line, or None when the stream ended (or the connection closed).
    async fn next_line(&mut self) -> anyhow::Result<Option<Value>> {
        loop {
            self.decode()?;
            if let Some(i) = self.data.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.data.drain(..=i).collect();
                return Ok(Some(serde_json::from_slice(&line)?));
            }
            if self.ended {
                return Ok(None);
            }
            match self.fill().await {
                Ok(true) => {}
                Ok(false) | Err(_) => return Ok(None),
            }
        }
    }
}

fn change_of(line: &Value) -> anyhow::Result<Option<Change>> {
    if line.get("heartbeat").is_some() || line.get("end").is_some() {
        return Ok(None);
    }
    if line.get("error").is_some() {
        bail!("the feed failed: {line}");
    }
    let seqno = line["seqno"].as_u64().context("seqno")?;
    let key = line["key"].as_str().context("key")?.to_string();
    ensure!(
        line["transaction_id"]
            .as_str()
            .is_some_and(|t| t.ends_with(&format!(".{seqno}"))),
        "{line}"
    );
    if let Some(text) = line["value"].as_str() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(line["value_base64"].as_str().context("value_base64")?)?;
        ensure!(
            decoded == text.as_bytes(),
            "value and value_base64 disagree: {line}"
        );
    }
    Ok(Some((seqno, key, line["value"].clone())))
}

/// A whole bounded feed (`to_seqno` given), read with the ordinary client.
async fn read_feed(c: &Client, map: &str, from: u64, to: u64) -> anyhow::Result<Vec<Change>> {
    let r = c
        .call_with_retry(
            Method::GET,
            &format!("/app/kv/{map}/changes?from_seqno={from}&to_seqno={to}"),
            None,
            &[],
            RETRY,
        )
        .await?;
    ensure!(r.status == 200, "feed: {} {}", r.status, r.text());
    let text = r.text();
    let mut out = Vec::new();
    let mut ended = false;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)?;
        if v["end"] == "to_seqno" {
            ensure!(v["next_seqno"] == to + 1, "{v}");
            ended = true;
        }
        out.extend(change_of(&v)?);
    }
    ensure!(ended, "the feed did not say it ended at to_seqno: {text}");
    Ok(out)
}

/// The committed writes to `map` in a stopped node's ledger, up to seqno `to`: the ground truth.
fn ledger_writes(ledger: &Path, map: &str, to: u64) -> anyhow::Result<Vec<Change>> {
    let mut out = Vec::new();
    for (_, path) in synod_core::ledger::list_chunks(ledger)? {
        let bytes = std::fs::read(&path)?;
        for frame in synod_core::ledger::decode_frames(&bytes) {
            let tx = frame?.entry.decode_transaction()?;
            if tx.seqno > to {
                continue;
            }
            for m in tx.public_write_set()?.maps.into_iter().filter(|m| m.name == map) {
                for w in m.writes {
                    let value = w.value.map_or(Value::Null, |v| {
                        String::from_utf8(v).map_or(Value::Null, Value::from)
                    });
                    out.push((tx.seqno, hex::encode(&w.key), value));
                }
            }
        }
    }
    Ok(out)
}

const FEED_MAP: &str = "public:records";

/// The change feed streams every committed write of a map in order from the ledger files, resumes after a
/// disconnection with no gap and no duplicate, follows new commits live and sends heartbeats while idle.
#[tokio::test]
async fn the_change_feed_streams_history_then_live_and_resumes_without_gap() -> anyhow::Result<()> {
    bounded(240, async {
        let net = SingleNode::start(&SMALL_LEDGER)?;
        let c = net.user_client()?;
        let mut expected: Vec<Change> = Vec::new();
        let mut last = TxId::default();
        for i in 0..200u64 {
            let id = i % 17;
            if i % 30 == 29 {
                let r = c
                    .call_with_retry(
                        Method::DELETE,
                        &format!("/app/log/public?id={id}"),
                        None,
                        &[],
                        RETRY,
                    )
                    .await?;
                if r.status == 200 {
                    last = r.tx_id()?;
                    expected.push((last.seqno, hex::encode(id.to_be_bytes()), Value::Null));
                    continue;
                }
            }
            let msg = format!("public-{i}");
            last = post_public(&c, id, &msg, RETRY).await?;
            expected.push((last.seqno, hex::encode(id.to_be_bytes()), Value::from(msg)));
            // Private writes in between are not in the public map's feed.
            if i % 10 == 0 {
                post_log(&c, i, "private", RETRY).await?;
            }
        }
        c.wait_for_commit(last, COMMIT_WAIT).await?;

        // The whole history, in order.
        ensure!(
            read_feed(&c, FEED_MAP, 1, last.seqno).await? == expected,
            "the feed from seqno 1 differs"
        );

        // Cut after 77 writes, resumed from the seqno after the last one read.
        let mut stream = FeedStream::open(
            &net.node,
            &net.user,
            &format!("/app/kv/{FEED_MAP}/changes?from_seqno=1"),
        )
        .await?;
        let mut got = Vec::new();
        while got.len() < 77 {
            let line = stream.next_line().await?.context("the feed ended early")?;
            ensure!(line["count"] == 1 && line["index"] == 0, "{line}");
            got.extend(change_of(&line)?);
        }
        drop(stream);
        let resume = got.last().context("a line")?.0 + 1;
        got.extend(read_feed(&c, FEED_MAP, resume, last.seqno).await?);
        ensure!(got == expected, "a resumed feed has a gap or a duplicate");

        // Live: a feed from the next seqno sees new commits, and heartbeats while nothing happens.
        let mut stream = FeedStream::open(
            &net.node,
            &net.user,
            &format!("/app/kv/{FEED_MAP}/changes?from_seqno={}", last.seqno + 1),
        )
        .await?;
        let mut live = Vec::new();
        for i in 0..5u64 {
            let tx = post_public(&c, 100 + i, &format!("live-{i}"), RETRY).await?;
            live.push((
                tx.seqno,
                hex::encode((100 + i).to_be_bytes()),
                Value::from(format!("live-{i}")),
            ));
        }
        let mut seen = Vec::new();
        let mut heartbeat = false;
        while seen.len() < live.len() || !heartbeat {
            let line = stream.next_line().await?.context("the live feed ended")?;
            heartbeat |= line.get("heartbeat").is_some();
            seen.extend(change_of(&line)?);
        }
        ensure!(seen == live, "live changes: {seen:?}");

        // Bad requests, private and internal maps are refused before anything streams.
        for (path, status) in [
            ("/app/kv/records/changes?from_seqno=1", 403),
            ("/app/kv/public:ccf.internal.signatures/changes?from_seqno=1", 403),
            ("/app/kv/public:records/changes?from_seqno=0", 400),
            ("/app/kv/public:records/changes?from_seqno=5&to_seqno=4", 400),
        ] {
            let (got, v) = get(&c, path).await?;
            ensure!(got == status, "{path}: {got} {v}");
        }
        // At most 16 feeds at once: the next one is told to come back, and gets in once one closes.
        let live_path = format!("/app/kv/{FEED_MAP}/changes?from_seqno={}", last.seqno + 1);
        let mut open = vec![stream];
        while open.len() < 16 {
            open.push(FeedStream::open(&net.node, &net.user, &live_path).await?);
        }
        let r = c.get(&live_path).await?;
        ensure!(
            r.status == 503
                && r.api_error().is_some_and(|e| e.code == "TooManyChangeFeeds")
                && r.header("retry-after").is_some(),
            "{} {}",
            r.status,
            r.text()
        );
        open.pop();
        let mut reopened = None;
        for _ in 0..250 {
            match FeedStream::open(&net.node, &net.user, &live_path).await {
                Ok(s) => {
                    reopened = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        ensure!(reopened.is_some(), "a closed feed's slot did not come back");
        drop(open);
        let anonymous = net.node.client(None)?;
        let r = anonymous
            .get(&format!("/app/kv/{FEED_MAP}/changes?from_seqno=1&to_seqno=2"))
            .await?;
        ensure!(r.status == 401, "{}", r.status);
        Ok(())
    })
    .await
}

/// Across a failover: a feed read from the primary until it is killed, resumed on another node from the seqno
/// after the last line, gives exactly the committed writes, in order (what a surviving node's ledger holds).
#[tokio::test]
async fn a_change_feed_resumed_on_another_node_after_a_failover_has_no_gap_or_duplicate() -> anyhow::Result<()>
{
    bounded(300, async {
        let mut net = Network::start(3, &["--ledger-chunk-bytes", "20000"]).await?;
        let p = net.primary().await?;
        let cp = net.user_client(p)?;
        let mut last = TxId::default();
        for i in 0..60u64 {
            last = post_public(&cp, i % 13, &format!("before-{i}"), RETRY).await?;
        }
        cp.wait_for_commit(last, COMMIT_WAIT).await?;
        let mut stream = FeedStream::open(
            &net.nodes[p],
            &net.user,
            &format!("/app/kv/{FEED_MAP}/changes?from_seqno=1"),
        )
        .await?;
        let mut read = Vec::new();
        while read.len() < 40 {
            let line = stream.next_line().await?.context("the feed ended early")?;
            read.extend(change_of(&line)?);
        }
        // More writes, and the primary dies while the feed streams them.
        for i in 0..20u64 {
            post_public(&cp, i % 13, &format!("during-{i}"), RETRY).await?;
        }
        net.nodes[p].kill9();
        while let Ok(Some(line)) = stream.next_line().await {
            read.extend(change_of(&line)?);
        }
        // Writes go on through the new primary (a write caught in the election may fail: it is written again
        // under a new message; whether the first one committed or not, the ledger says).
        let q = net.primary().await?;
        ensure!(q != p, "a new primary was elected");
        let cq = net.user_client(q)?.with_request_timeout(Duration::from_secs(5));
        let mut written = 0u64;
        for attempt in 0..300u64 {
            if written == 30 {
                break;
            }
            match post_public(&cq, attempt % 13, &format!("after-{attempt}"), RETRY).await {
                Ok(tx) => {
                    last = tx;
                    written += 1;
                }
                Err(e) => eprintln!("write {attempt} during the failover: {e:#}"),
            }
        }
        ensure!(written == 30, "writes did not resume after the failover");
        net.wait_committed_everywhere(last).await?;
        let b = (0..3).find(|&i| i != p && i != q).unwrap_or(q);
        let cb = net.user_client(b)?;
        let committed = cb.commit().await?;
        let resume = read.last().map_or(1, |c| c.0 + 1);
        read.extend(read_feed(&cb, FEED_MAP, resume, committed.seqno).await?);
        net.stop_all()?;
        let truth = ledger_writes(&net.nodes[b].dir.join("ledger"), FEED_MAP, committed.seqno)?;
        ensure!(truth.len() >= 90, "the ledger holds {} writes", truth.len());
        let seqnos: BTreeMap<u64, usize> = read.iter().fold(BTreeMap::new(), |mut m, c| {
            *m.entry(c.0).or_default() += 1;
            m
        });
        ensure!(seqnos.values().all(|&n| n == 1), "a write was streamed twice");
        ensure!(
            read == truth,
            "the feed differs from the committed writes:\nfeed  {read:?}\ntruth {truth:?}"
        );
        Ok(())
    })
    .await
}
