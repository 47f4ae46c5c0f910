//! Historical queries and the change feed over a running node: the node's commit, state and the last seqno written
//! to its ledger files around [`crate::ledger_files::reader`], mapped to HTTP answers. Shared by the logging app's `/historical` endpoints,
//! `ccf.historical` in JavaScript handlers, and `/app/kv/{map}/changes`.
//!
//! ```text
//!  value of K as of committed S: committed state says K's last write is at v ≤ S ─▶ that value (no file read)
//!                                otherwise ─▶ search back from S in the files (≤ BACK_SCAN_CHUNKS_MAX chunks)
//!  versions of K in A..=B:       B cut at the commit and at A + SPAN_MAX − 1 ─▶ chunks overlapping A..=B
//!  change feed from S:           cursor over the files ─▶ JSON lines ─▶ bounded channel ─▶ chunked body;
//!                                waits on the commit watch; heartbeats; ends at its lifetime
//! ```
//!
//! Only Committed transactions are read: everything at or before the service commit and in the files (the
//! applier writes a committed entry to the files moments after the commit moves; queries wait for it briefly).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use serde_json::json;
use synod_core::maps;
use synod_core::txid::TxId;

use crate::js::{HistoricalRefusal, HistoricalSource, HistoricalVersion, VersionPage};
use crate::ledger_files::reader::{AsOf, Cursor, LedgerReader, QueryError, ReadError, Versions};
use crate::limits::Slot;
use crate::rpc::ApiError;
use crate::service::Node;

/// How long a query waits for the applier to write a committed seqno to the files.
pub const DURABLE_WAIT_MS: u64 = 500;
const DURABLE_POLL_MS: u64 = 5;
/// `Retry-After` of the historical 503s, in seconds.
const RETRY_S: u32 = 1;
/// Body chunks queued for one change feed: a reader slower than the commits holds the feed here (the producer
/// waits), never more.
pub const FEED_BUFFER_CHUNKS: usize = 4;
/// A feed's body chunk is sent once it holds this many bytes (a transaction's lines are never split).
const FEED_CHUNK_BYTES: usize = 64 << 10;
/// Transactions one read of the files decodes for a feed.
const FEED_TXS_PER_READ: usize = 1000;
/// A feed with nothing to send writes a heartbeat line this often (under the idle timeout of the node and of
/// proxies).
pub const FEED_HEARTBEAT_MS: u64 = 5_000;
/// A feed ends after this long (its last line says where to resume), so that slots come back.
pub const FEED_LIFETIME_S: u64 = 15 * 60;
/// How often a feed looks again while the files lag the commit or every read slot is busy.
const FEED_POLL_MS: u64 = 20;

/// The node's ledger reader.
pub fn reader(node: &Node) -> &LedgerReader {
    node.sync_previous_service();
    node.historical.reader(node.sealer())
}

/// The answer to a failed read of the files.
pub fn read_error(e: ReadError) -> ApiError {
    match e {
        ReadError::NotInLedger { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "TransactionBeforeSnapshot", e.to_string())
        }
        ReadError::NotYetWritten(_) => ApiError::busy("HistoricalNotReady", e.to_string(), RETRY_S),
        ReadError::Busy => ApiError::busy("HistoricalReadBusy", e.to_string(), RETRY_S),
        ReadError::Ledger(m) => ApiError::internal(m),
    }
}

fn query_error(e: QueryError) -> ApiError {
    match e {
        QueryError::Read(e) => read_error(e),
        QueryError::ScanLimit { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "HistoricalRangeTooLarge",
            e.to_string(),
        ),
        QueryError::BeforeLedger { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "TransactionBeforeSnapshot", e.to_string())
        }
    }
}

fn not_committed(seqno: u64, committed: TxId) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "TransactionPendingOrUnknown",
        format!("seqno {seqno} is not committed yet (the service commit is {committed}); historical queries read Committed transactions only"),
    )
}

/// A read slot, or 503 `HistoricalReadBusy`.
pub fn reserve(node: &Node) -> Result<Slot, ApiError> {
    reader(node).reserve().map_err(read_error)
}

/// Runs a blocking historical read off the async runtime, holding a read slot taken first (503 at once when
/// every slot is busy).
pub async fn blocking<T: Send + 'static>(
    node: &Arc<Node>,
    f: impl FnOnce(&Node, &Slot) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let slot = reserve(node)?;
    let node = node.clone();
    tokio::task::spawn_blocking(move || f(&node, &slot))
        .await
        .map_err(|e| ApiError::internal(format!("historical read: {e}")))?
}

/// Waits until the files hold `seqno` (at most [`DURABLE_WAIT_MS`]); returns the written seqno.
fn wait_written(node: &Node, seqno: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_millis(DURABLE_WAIT_MS);
    loop {
        let written = node.ledger_written();
        if written >= seqno || Instant::now() >= deadline {
            return written;
        }
        std::thread::sleep(Duration::from_millis(DURABLE_POLL_MS));
    }
}

/// The value of `key` in `map` right after the committed transaction at `seqno`, and the transaction that wrote
/// it; `None` when the key had no value then (never written, or deleted). Blocking.
pub fn value_at(
    node: &Node,
    map: &str,
    key: &[u8],
    seqno: u64,
    slot: &Slot,
) -> Result<Option<(TxId, Vec<u8>)>, ApiError> {
    let (committed, current) = {
        let (map, key) = (map.to_string(), key.to_vec());
        node.ask(move |core| {
            let current = core
                .committed_state()
                .entry(&map, &key)
                .map(|e| (core.tx_id_at(e.version), e.value.to_vec()));
            (core.committed(), current)
        })?
    };
    if seqno > committed.seqno {
        return Err(not_committed(seqno, committed));
    }
    // No write since `seqno`: the committed state holds the answer.
    if let Some((written, value)) = current {
        if written.seqno <= seqno {
            return Ok(Some((written, value)));
        }
    }
    let written = wait_written(node, seqno);
    match reader(node).value_at(map, key, seqno, written, slot) {
        Ok(AsOf::Written {
            tx_id,
            value: Some(value),
        }) => Ok(Some((tx_id, value))),
        Ok(AsOf::Written { value: None, .. }) | Ok(AsOf::NeverWritten) => Ok(None),
        Err(e) => Err(query_error(e)),
    }
}

/// The committed writes to `key` of `map` in seqnos `from..=to`, paged (see [`LedgerReader::versions`]); the
/// range is cut at the service commit (`next` then says where to continue). Blocking.
pub fn versions(
    node: &Node,
    map: &str,
    key: &[u8],
    (from, to): (u64, u64),
    limit: usize,
    slot: &Slot,
) -> Result<Versions, ApiError> {
    if from == 0 || to < from {
        return Err(ApiError::invalid_input(
            "from_seqno must be at least 1 and to_seqno at least from_seqno",
        ));
    }
    let committed = node.view().committed;
    let end = to.min(committed.seqno);
    if end < from {
        return Ok(Versions {
            versions: Vec::new(),
            next: Some(from),
        });
    }
    let written = wait_written(node, end);
    let mut page = reader(node)
        .versions(map, key, (from, end), limit, written, slot)
        .map_err(query_error)?;
    if page.next.is_none() && end < to {
        page.next = Some(end + 1);
    }
    Ok(page)
}

/// `ccf.historical` over a node (set for the JavaScript workers' calls).
struct NodeHistory(Arc<Node>);

fn refusal(e: ApiError) -> HistoricalRefusal {
    HistoricalRefusal {
        status: e.status.as_u16(),
        code: e.code.to_string(),
        message: e.message,
    }
}

impl HistoricalSource for NodeHistory {
    fn value_at(
        &self,
        map: &str,
        key: &[u8],
        seqno: u64,
    ) -> Result<Option<HistoricalVersion>, HistoricalRefusal> {
        let slot = reserve(&self.0).map_err(refusal)?;
        let found = value_at(&self.0, map, key, seqno, &slot).map_err(refusal)?;
        Ok(found.map(|(tx_id, value)| HistoricalVersion {
            view: tx_id.view,
            seqno: tx_id.seqno,
            value: Some(value),
        }))
    }

    fn versions(
        &self,
        map: &str,
        key: &[u8],
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<VersionPage, HistoricalRefusal> {
        let slot = reserve(&self.0).map_err(refusal)?;
        let page = versions(&self.0, map, key, (from, to), limit, &slot).map_err(refusal)?;
        let list = page
            .versions
            .into_iter()
            .map(|v| HistoricalVersion {
                view: v.tx_id.view,
                seqno: v.tx_id.seqno,
                value: v.value,
            })
            .collect();
        Ok((list, page.next))
    }

    fn receipt(&self, view: u64, seqno: u64) -> Result<String, HistoricalRefusal> {
        let receipt = crate::rpc::node_endpoints::json_receipt_blocking(&self.0, TxId::new(view, seqno))
            .map_err(refusal)?;
        serde_json::to_string(&receipt).map_err(|e| refusal(ApiError::internal(e.to_string())))
    }
}

/// Runs `f` (a JavaScript worker's call) with `ccf.historical` reading `node`'s ledger.
pub fn with_node_history<T>(node: &Arc<Node>, f: impl FnOnce() -> T) -> T {
    crate::js::with_historical(Rc::new(NodeHistory(node.clone())), f)
}

/// A change feed's query.
#[derive(Clone, Debug)]
pub struct FeedRequest {
    /// The public map.
    pub map: String,
    /// The first seqno streamed.
    pub from: u64,
    /// The stream ends once past this seqno (else it runs until its lifetime or the client leaves).
    pub to: Option<u64>,
}

/// `GET /app/kv/{map}/changes`: checks the request, takes a feed slot and starts streaming (the caller has
/// authenticated the user and checked that the map is public and readable).
pub fn change_feed(node: &Arc<Node>, request: FeedRequest) -> Result<Response, ApiError> {
    if request.from == 0 || request.to.is_some_and(|to| to < request.from) {
        return Err(ApiError::invalid_input(
            "from_seqno must be at least 1 and to_seqno at least from_seqno",
        ));
    }
    debug_assert!(maps::is_public(&request.map));
    let base = node.view().ledger_base;
    if request.from <= base {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "TransactionBeforeSnapshot",
            format!(
                "seqno {} precedes this node's ledger, which starts at seqno {} (after a snapshot); ask a node that holds it",
                request.from,
                base + 1
            ),
        ));
    }
    let slot = node.historical.feed_slot().ok_or_else(|| {
        ApiError::busy(
            "TooManyChangeFeeds",
            format!(
                "{} change feeds are open on this node already; retry later",
                crate::historical::FEEDS_MAX
            ),
            RETRY_S,
        )
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(FEED_BUFFER_CHUNKS);
    tokio::spawn(feed(node.clone(), request, tx, slot));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn line(out: &mut Vec<u8>, value: &serde_json::Value) {
    // Serializing a `Value` to a vector cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
    out.push(b'\n');
}

/// The lines of one transaction's writes to `map`.
fn write_lines(out: &mut Vec<u8>, map: &str, tx: &crate::ledger_files::reader::LedgerTx) {
    let writes = tx.writes_to(map);
    for (i, w) in writes.iter().enumerate() {
        line(
            out,
            &json!({
                "seqno": tx.tx_id.seqno,
                "transaction_id": tx.tx_id.to_string(),
                "key": hex::encode(&w.key),
                "value": w.value.as_deref().and_then(|v| std::str::from_utf8(v).ok()),
                "value_base64": w.value.as_deref().map(|v| base64::engine::general_purpose::STANDARD.encode(v)),
                "index": i,
                "count": writes.len(),
            }),
        );
    }
}

/// What a feed's read of the files gave back: the cursor and the transactions.
type FeedRead = (
    Cursor,
    Result<Vec<crate::ledger_files::reader::LedgerTx>, ReadError>,
);

/// The producer of one change feed: reads committed transactions from the files, sends their writes to the map
/// as lines, then waits for the commit to move; ends when the client leaves, at `to`, on an error (said in a
/// last line) or at its lifetime.
async fn feed(
    node: Arc<Node>,
    request: FeedRequest,
    out: tokio::sync::mpsc::Sender<bytes::Bytes>,
    _slot: Slot,
) {
    let started = Instant::now();
    let lifetime = Duration::from_secs(FEED_LIFETIME_S);
    let heartbeat = Duration::from_millis(FEED_HEARTBEAT_MS);
    let poll = Duration::from_millis(FEED_POLL_MS);
    let mut commits = node.commit_watch();
    let mut cursor = Some(Cursor::at(request.from));
    let mut last_sent = Instant::now();
    loop {
        let Some(current) = cursor.take() else {
            return;
        };
        let next = current.next();
        if started.elapsed() >= lifetime {
            let _ = out
                .send(feed_line(json!({"end": "lifetime", "next_seqno": next})))
                .await;
            return;
        }
        if request.to.is_some_and(|to| next > to) {
            let _ = out
                .send(feed_line(json!({"end": "to_seqno", "next_seqno": next})))
                .await;
            return;
        }
        let committed = node.view().committed;
        let written = node.ledger_written();
        let upto = committed.seqno.min(written).min(request.to.unwrap_or(u64::MAX));
        if next <= upto {
            match feed_read(&node, &request, &out, current, upto, &mut last_sent).await {
                FeedStep::Moved(moved) => cursor = Some(moved),
                FeedStep::Stop => return,
            }
            continue;
        }
        cursor = Some(current);
        // Nothing to read: wait for the commit to move, the next heartbeat, or the client to leave.
        let lagging = next <= committed.seqno.min(request.to.unwrap_or(u64::MAX));
        let until_heartbeat = heartbeat.saturating_sub(last_sent.elapsed());
        let wait = if lagging {
            poll.min(until_heartbeat)
        } else {
            until_heartbeat
        };
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    return; // the node is stopping
                }
            }
            _ = tokio::time::sleep(wait) => {}
            _ = out.closed() => return,
        }
        if last_sent.elapsed() >= heartbeat {
            let committed = node.view().committed;
            if out
                .send(feed_line(
                    json!({"heartbeat": committed.to_string(), "next_seqno": next}),
                ))
                .await
                .is_err()
            {
                return;
            }
            last_sent = Instant::now();
        }
    }
}

/// One JSON line of a feed.
fn feed_line(value: serde_json::Value) -> bytes::Bytes {
    let mut bytes = Vec::new();
    line(&mut bytes, &value);
    bytes::Bytes::from(bytes)
}

/// Where a feed's read left it.
enum FeedStep {
    /// Read on (or wait) from this cursor.
    Moved(Cursor),
    /// The feed ended: the client left, or an error was sent.
    Stop,
}

/// Reads the committed transactions after `current` up to `upto` from the ledger files (one bounded read slot, on
/// a blocking thread) and sends their writes to `out`.
async fn feed_read(
    node: &Arc<Node>,
    request: &FeedRequest,
    out: &tokio::sync::mpsc::Sender<bytes::Bytes>,
    current: Cursor,
    upto: u64,
    last_sent: &mut Instant,
) -> FeedStep {
    let poll = Duration::from_millis(FEED_POLL_MS);
    let Ok(slot) = reserve(node) else {
        tokio::time::sleep(poll).await;
        return FeedStep::Moved(current);
    };
    let reading = node.clone();
    let read = tokio::task::spawn_blocking(move || -> FeedRead {
        let mut current = current;
        let txs = reader(&reading).read(&mut current, upto, FEED_TXS_PER_READ, false, &slot);
        (current, txs)
    })
    .await;
    let (moved, txs) = match read {
        Ok(read) => read,
        Err(e) => {
            let e = ApiError::internal(format!("reading the ledger: {e}"));
            let _ = out
                .send(feed_line(
                    json!({"error": {"code": e.code, "message": e.message}}),
                ))
                .await;
            return FeedStep::Stop;
        }
    };
    let txs = match txs {
        Ok(txs) => txs,
        // A chunk renamed or created just now: look again shortly.
        Err(ReadError::NotYetWritten(_)) => {
            tokio::time::sleep(poll).await;
            return FeedStep::Moved(moved);
        }
        Err(e) => {
            let e = read_error(e);
            let _ = out
                .send(feed_line(json!({
                    "error": {"code": e.code, "message": e.message},
                    "next_seqno": moved.next(),
                })))
                .await;
            return FeedStep::Stop;
        }
    };
    let mut chunk = Vec::new();
    for (i, tx) in txs.iter().enumerate() {
        write_lines(&mut chunk, &request.map, tx);
        let last = i + 1 == txs.len();
        if chunk.len() >= FEED_CHUNK_BYTES || (last && !chunk.is_empty()) {
            if out.send(std::mem::take(&mut chunk).into()).await.is_err() {
                return FeedStep::Stop;
            }
            *last_sent = Instant::now();
        }
    }
    if txs.is_empty() {
        // The files do not show what the written seqno says is there yet: look again shortly.
        tokio::time::sleep(poll).await;
    }
    FeedStep::Moved(moved)
}
