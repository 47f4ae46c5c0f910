//! `/node/*` (no authentication) and `/app/receipt` (users): transaction status, commit, node, network and
//! consensus state, and receipts, with CCF's paths and JSON shapes.

use axum::extract::{Extension, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use synod_core::maps;
use synod_core::txid::TxStatus;

use super::{extract, ApiError, AppState, Peer};
use crate::consensus::machine::ReceiptUnavailable;
use crate::consensus::raft_id;
use crate::historical::HistoricalError;
use synod_core::merkle::ProofStep;
use synod_core::receipt::{JsonReceipt, LeafComponents};
use synod_core::tables::{NodeInfo, NodeStatus, ProposalState, ServiceInfo, ServiceStatus};
use synod_core::txid::TxId;

/// The `/node/*` and `/app/receipt` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/node/tx", get(tx_status))
        .route("/node/commit", get(commit))
        .route("/node/state", get(node_state))
        .route("/node/network", get(network))
        .route("/node/network/nodes", get(network_nodes))
        .route("/node/primary", get(primary).head(primary_head))
        .route("/node/consensus", get(consensus))
        .route("/node/version", get(version))
        .route("/node/service/previous_identity", get(previous_identity))
        .route("/node/metrics", get(metrics))
        .route("/node/quotes/self", get(quote_self))
        .route("/node/quotes", get(quotes))
        .route("/app/receipt", get(receipt))
}

#[derive(Deserialize)]
struct TxQuery {
    transaction_id: String,
    /// Long poll: answer as soon as the status is no longer Pending or Unknown, or after this many milliseconds.
    wait_ms: Option<u64>,
}

/// Longest `wait_ms` honoured by `GET /node/tx` (well inside the request timeout).
pub const TX_WAIT_MS_MAX: u64 = 10_000;

/// A long poll: `look`s until `done` accepts what it saw or `wait_ms` (at most [`TX_WAIT_MS_MAX`]) passes, looking
/// again whenever the service commit or the view moves; answers the last look.
async fn long_poll<T, F, Fut>(
    app: &AppState,
    wait_ms: Option<u64>,
    mut look: F,
    done: impl Fn(&T) -> bool,
) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let wait = std::time::Duration::from_millis(wait_ms.unwrap_or(0).min(TX_WAIT_MS_MAX));
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first look, so a commit between the look and the wait is not missed.
    let mut commits = app.node.commit_watch();
    loop {
        let seen = look().await?;
        if done(&seen) {
            return Ok(seen);
        }
        match tokio::time::timeout_at(deadline, commits.changed()).await {
            Ok(Ok(())) => continue,
            // Timed out, or the node is stopping: answer what is known.
            _ => return Ok(seen),
        }
    }
}

async fn tx_status(State(app): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let q: TxQuery = extract::query(q)?;
    let tx = extract::tx_id(&q.transaction_id)?;
    let status = long_poll(
        &app,
        q.wait_ms,
        || async { Ok(app.node.ask_async(move |core| core.tx_status(tx)).await?) },
        |status| !matches!(status, TxStatus::Pending | TxStatus::Unknown),
    )
    .await?;
    Ok(Json(json!({ "status": status, "transaction_id": tx })).into_response())
}

#[derive(Deserialize)]
struct CommitQuery {
    /// Long poll: answer as soon as the commit is past this seqno, or after `wait_ms`.
    after_seqno: Option<u64>,
    wait_ms: Option<u64>,
}

/// The last committed transaction; with `after_seqno`, a long poll that answers once the commit passes it (a
/// commit-following client asks again with what it saw: one request per commit advance, none in between).
async fn commit(State(app): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let q: CommitQuery = extract::query(q)?;
    let committed = long_poll(
        &app,
        q.wait_ms,
        || async { Ok(app.node.view().committed) },
        |committed| q.after_seqno.is_none_or(|after| committed.seqno > after),
    )
    .await?;
    Ok(super::with_tx_id(
        committed,
        Json(json!({ "transaction_id": committed })),
    ))
}

async fn node_state(State(app): State<AppState>) -> Result<Response, ApiError> {
    let (last_signed, history_start) = app
        .node
        .ask_async(|core| (core.last_signed_seqno(), core.history_start()))
        .await?;
    let view = app.node.view();
    let state = if view.is_member {
        "PartOfNetwork"
    } else if view
        .committed_state
        .get(maps::NODES_INFO, app.node.node_id().as_bytes())
        .and_then(NodeInfo::from_slice)
        .is_some_and(|i| i.status == NodeStatus::Retired)
    {
        "Retired"
    } else {
        "Pending"
    };
    Ok(Json(json!({
        "node_id": app.node.node_id(),
        "state": state,
        "last_signed_seqno": last_signed,
        "startup_seqno": app.node.startup_seqno(),
        "history_start_seqno": history_start,
    }))
    .into_response())
}

fn service_status(app: &AppState) -> String {
    app.node
        .view()
        .committed_state
        .get(maps::SERVICE_INFO, b"")
        .and_then(ServiceInfo::from_slice)
        .and_then(|info| info.status)
        .unwrap_or(ServiceStatus::Opening)
        .to_string()
}

/// The primary's node id and client-facing address, if a primary is known.
fn primary_peer(app: &AppState) -> Option<(String, String)> {
    let primary = app.node.view().primary;
    if primary == 0 {
        return None;
    }
    if primary == app.node.raft_id() {
        return Some((app.node.node_id().to_string(), app.node.rpc_published.clone()));
    }
    app.node
        .directory
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&primary)
        .map(|p| (p.node_id.clone(), p.rpc_address.clone()))
}

fn primary_node_id(app: &AppState) -> Option<String> {
    primary_peer(app).map(|(node_id, _)| node_id)
}

async fn network(State(app): State<AppState>) -> Response {
    let status = service_status(&app);
    let primary = primary_node_id(&app);
    Json(json!({
        "service_certificate": app.node.current_service_cert(),
        "service_status": status,
        "current_view": app.node.view().view,
        "primary_id": primary,
    }))
    .into_response()
}

async fn network_nodes(State(app): State<AppState>) -> Response {
    let primary = primary_node_id(&app);
    let view = app.node.view();
    let (voters, learners) = &view.configuration;
    let mut nodes = Vec::new();
    if let Some(m) = view.committed_state.map(maps::NODES_INFO) {
        for (k, e) in m.iter() {
            let node_id = String::from_utf8_lossy(k).to_string();
            let info: serde_json::Value = serde_json::from_slice(&e.value).unwrap_or_default();
            let id = raft_id(&node_id);
            let role = if voters.contains(&id) {
                "Voter"
            } else if learners.contains(&id) {
                "Learner"
            } else {
                "None"
            };
            nodes.push(json!({
                "node_id": node_id,
                "name": info["name"],
                "status": info["status"],
                "primary": primary.as_deref() == Some(node_id.as_str()),
                "consensus_role": role,
                "rpc_interfaces": { "primary_rpc_interface": { "published_address": info["rpc_address"] } },
                "node_address": info["node_address"],
                "measurement": info["measurement"],
            }));
        }
    }
    Json(json!({ "nodes": nodes })).into_response()
}

/// CCF's quote shape: the evidence of one node.
fn quote_json(
    node_id: &str,
    quote_info: &serde_json::Value,
    measurement: &serde_json::Value,
) -> serde_json::Value {
    let mut quote = json!({
        "node_id": node_id,
        "format": quote_info["format"],
        "raw": quote_info["quote"],
        "endorsements": quote_info["endorsements"],
        "measurement": measurement,
    });
    if quote_info["uvm_endorsements"].is_string() {
        quote["uvm_endorsements"] = quote_info["uvm_endorsements"].clone();
    }
    quote
}

/// This node's attestation evidence (produced at start), binding its TLS key (`synod attest` checks it).
async fn quote_self(State(app): State<AppState>) -> Result<Response, ApiError> {
    let quote_info =
        serde_json::to_value(&app.node.evidence).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(quote_json(
        app.node.node_id(),
        &quote_info,
        &json!(app.node.platform.measurement()),
    ))
    .into_response())
}

/// The evidence every Trusted node presented when it joined (the first node: its own at genesis).
async fn quotes(State(app): State<AppState>) -> Response {
    let view = app.node.view();
    let mut quotes = Vec::new();
    if let Some(nodes) = view.committed_state.map(maps::NODES_INFO) {
        for (id, value) in nodes.iter() {
            let Some(info) = NodeInfo::from_slice(&value.value) else {
                continue;
            };
            if let Some(quote) = info
                .quote_info
                .filter(|q| q.is_object() && info.status == NodeStatus::Trusted)
            {
                let node_id = String::from_utf8_lossy(id);
                quotes.push(quote_json(&node_id, &quote, &json!(info.measurement)));
            }
        }
    }
    Json(json!({ "quotes": quotes })).into_response()
}

async fn primary(State(app): State<AppState>) -> Result<Response, ApiError> {
    let (primary, address) = primary_peer(&app).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NoPrimary",
            "no primary is known right now; retry",
        )
    })?;
    Ok(Json(json!({
        "primary_id": primary,
        "url": format!("https://{address}"),
        "current_view": app.node.view().view,
        "is_this_node": primary == app.node.node_id(),
    }))
    .into_response())
}

/// CCF's `HEAD /node/primary`: 200 on the primary, 404 elsewhere (load balancers use it).
async fn primary_head(State(app): State<AppState>) -> StatusCode {
    if app.node.view().is_primary {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn consensus(State(app): State<AppState>) -> Result<Response, ApiError> {
    let details = app
        .node
        .ask_async(|core| {
            let (voters, learners) = core.configuration();
            let progress: Vec<_> = core
                .progress()
                .into_iter()
                .map(|(id, matched)| json!({ "raft_id": id, "matched": matched }))
                .collect();
            json!({
                "node_id": core.node_id(),
                "raft_id": core.raft_id(),
                "role": if core.is_primary() { "Leader" } else { "Follower" },
                "current_view": core.view(),
                "primary_raft_id": core.primary(),
                "last_seqno": core.last_seqno(),
                "raft_commit_seqno": core.raft_commit(),
                "committed": core.committed(),
                "voters": voters,
                "learners": learners,
                "progress": progress,
            })
        })
        .await?;
    Ok(Json(json!({ "details": details })).into_response())
}

/// Prometheus metrics (text exposition format). Open, as CCF's: it reveals nothing the other `/node` endpoints do
/// not; what it reads from disk is cached for a second, so scrapes in a loop cost little.
async fn metrics(State(app): State<AppState>) -> Response {
    let view = app.node.view();
    let peers = app
        .node
        .directory
        .read()
        .map(|d| {
            d.values()
                .filter(|p| p.status == NodeStatus::Trusted.as_str())
                .count()
        })
        .unwrap_or(0);
    let open_proposals = view
        .committed_state
        .map(maps::PROPOSALS_INFO)
        .map(|m| {
            m.iter()
                .filter(|(_, e)| {
                    serde_json::from_slice::<serde_json::Value>(&e.value)
                        .is_ok_and(|v| v["state"] == ProposalState::Open)
                })
                .count() as u64
        })
        .unwrap_or(0);
    let data_dir = app.node.config().data_dir.clone();
    let (ledger, snapshot_age_s) = app.node.metrics.disk(|| crate::metrics::read_disk(&data_dir));
    let gauges = crate::metrics::Gauges {
        view: view.view,
        is_primary: view.is_primary,
        commit_seqno: view.committed.seqno,
        peers: (peers, app.node.connected_peers()),
        ledger,
        snapshot_age_s,
        open_proposals,
        rss_bytes: crate::metrics::rss_bytes(),
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.node.metrics.render(&gauges),
    )
        .into_response()
}

async fn version() -> Response {
    let v = env!("CARGO_PKG_VERSION");
    Json(json!({ "ccf_version": format!("synod-{v}"), "synod_version": v })).into_response()
}

async fn receipt(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    app.authenticate_user(&peer)?;
    let q: TxQuery = extract::query(q)?;
    let tx = extract::tx_id(&q.transaction_id)?;
    let wants_cose = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/cose"));
    Ok(match receipt_of(&app, tx, wants_cose).await? {
        Receipt::Json(receipt) => Json(receipt).into_response(),
        Receipt::Cose(bytes) => ([(header::CONTENT_TYPE, "application/cose")], bytes).into_response(),
    })
}

/// A receipt in either of its encodings.
pub enum Receipt {
    /// CCF's JSON receipt.
    Json(JsonReceipt),
    /// The COSE receipt (CCF profile).
    Cose(Vec<u8>),
}

/// Seconds a client waits when a receipt cannot be rebuilt right now.
const HISTORICAL_RETRY_S: u32 = 1;

/// The receipt of a committed transaction: from the core's memory, or, for a transaction whose history was
/// flushed, rebuilt from the ledger files (synchronously, within the bounds of [`crate::historical`]).
pub async fn receipt_of(app: &AppState, tx: TxId, cose: bool) -> Result<Receipt, ApiError> {
    let answer = app
        .node
        .ask_async(move |core| {
            if cose {
                core.cose_receipt(tx).map(Receipt::Cose)
            } else {
                core.json_receipt(tx).map(Receipt::Json)
            }
        })
        .await?;
    match answer {
        Err(ReceiptUnavailable::Flushed(_)) => historical_receipt(app, tx, cose).await,
        other => other.map_err(|e| receipt_error(tx, e)),
    }
}

async fn historical_receipt(app: &AppState, tx: TxId, cose: bool) -> Result<Receipt, ApiError> {
    let node = app.node.clone();
    let commit_evidence = historical_evidence(&node, tx)?;
    let slot = node.historical.reserve().map_err(historical_error)?;
    let range = tokio::task::spawn_blocking(move || node.historical.range_for(tx.seqno, &slot))
        .await
        .map_err(|e| ApiError::internal(format!("rebuilding a receipt: {e}")))?
        .map_err(historical_error)?;
    rebuilt_receipt(&range, tx, cose, commit_evidence)
}

/// The proof of `tx` in a signed range rebuilt from the ledger files (`None` for the signature itself).
fn range_proof(
    range: &crate::historical::SignedRange,
    tx: TxId,
    commit_evidence: String,
) -> Result<Option<(Vec<ProofStep>, LeafComponents)>, ApiError> {
    Ok(range
        .proof(tx.seqno)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map(|(path, digest)| {
            (
                path,
                crate::consensus::machine::leaf_components(&digest, commit_evidence),
            )
        }))
}

/// The JSON receipt a rebuilt range gives, with CCF's `service_endorsements` when a previous identity signed it.
fn range_json_receipt(
    range: &crate::historical::SignedRange,
    proof: Option<(Vec<ProofStep>, LeafComponents)>,
) -> JsonReceipt {
    JsonReceipt {
        service_endorsements: (!range.endorsements.is_empty()).then(|| range.endorsements.clone()),
        ..crate::consensus::machine::json_receipt(&range.sig, proof)
    }
}

/// The receipt of `tx` from the signed range rebuilt from the ledger files that proves it.
fn rebuilt_receipt(
    range: &crate::historical::SignedRange,
    tx: TxId,
    cose: bool,
    commit_evidence: String,
) -> Result<Receipt, ApiError> {
    match (cose, range_proof(range, tx, commit_evidence)?) {
        (false, proof) => Ok(Receipt::Json(range_json_receipt(range, proof))),
        (true, Some((path, leaf))) => crate::consensus::machine::cose_receipt(&range.sig, &path, &leaf)
            .map(Receipt::Cose)
            .map_err(|e| receipt_error(tx, e)),
        (true, None) => Err(receipt_error(tx, ReceiptUnavailable::SignatureTransaction(tx))),
    }
}

/// The commit evidence of a transaction whose history was flushed: with the secret of its seqno (it may be a
/// previous service's, recovered or not yet). Also lets the receipt builder verify previous identities' signatures.
fn historical_evidence(node: &crate::service::Node, tx: TxId) -> Result<String, ApiError> {
    node.sync_previous_service();
    node.sealer()
        .commit_evidence_at(tx)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "ReceiptUnavailable", e.to_string()))
}

/// CCF's `GET /node/service/previous_identity`, with this identity's endorsement of it: a receipt the previous
/// service issued verifies against the current identity through the endorsement.
async fn previous_identity(State(app): State<AppState>) -> Result<Response, ApiError> {
    let previous =
        crate::governance::recovery::previous_service(&app.node.view().state).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                "this service did not recover a previous one",
            )
        })?;
    Ok(Json(json!({
        "previous_service_identity": previous.previous_service_identity,
        "endorsement": previous.endorsement,
        "previous_last_seqno": previous.last_seqno,
        "private_recovered": previous.private_recovered,
    }))
    .into_response())
}

fn historical_error(e: HistoricalError) -> ApiError {
    match e {
        HistoricalError::Busy | HistoricalError::NotYetWritten(_) => {
            ApiError::busy("HistoricalReceiptNotReady", e.to_string(), HISTORICAL_RETRY_S)
        }
        HistoricalError::NotInLedger(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "TransactionBeforeSnapshot", e.to_string())
        }
        HistoricalError::NoFrontier(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "ReceiptUnavailable", e.to_string())
        }
        HistoricalError::Ledger(m) => ApiError::internal(m),
    }
}

/// [`receipt_of`] in JSON, blocking (for callers already off the async runtime: JavaScript handlers).
pub fn json_receipt_blocking(node: &crate::service::Node, tx: TxId) -> Result<JsonReceipt, ApiError> {
    let answer = node.ask(move |core| core.json_receipt(tx))?;
    match answer {
        Err(ReceiptUnavailable::Flushed(_)) => {
            let commit_evidence = historical_evidence(node, tx)?;
            let slot = node.historical.reserve().map_err(historical_error)?;
            let range = node
                .historical
                .range_for(tx.seqno, &slot)
                .map_err(historical_error)?;
            Ok(range_json_receipt(
                &range,
                range_proof(&range, tx, commit_evidence)?,
            ))
        }
        other => other.map_err(|e| receipt_error(tx, e)),
    }
}

fn receipt_error(tx: TxId, e: ReceiptUnavailable) -> ApiError {
    match e {
        ReceiptUnavailable::NotCommitted(_, TxStatus::Invalid) => ApiError::new(
            StatusCode::NOT_FOUND,
            "TransactionInvalid",
            format!("transaction {tx} is Invalid: it was lost in a view change and will never be committed"),
        ),
        ReceiptUnavailable::NotCommitted(_, status) => ApiError::new(
            StatusCode::NOT_FOUND,
            "TransactionPendingOrUnknown",
            format!("transaction {tx} is {status:?}; receipts exist only for Committed transactions"),
        ),
        ReceiptUnavailable::SignatureTransaction(_) => ApiError::invalid_input(e.to_string()),
        ReceiptUnavailable::BeforeSnapshot(..) => {
            ApiError::new(StatusCode::NOT_FOUND, "TransactionBeforeSnapshot", e.to_string())
        }
        ReceiptUnavailable::Flushed(_) | ReceiptUnavailable::Internal(_) => ApiError::internal(e.to_string()),
    }
}
