//! `/node/*` (no authentication) and `/app/receipt` (users): transaction status, commit, node and network state,
//! and receipts, with CCF's paths and JSON shapes.

use axum::extract::{Extension, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use synod_core::txid::TxStatus;

use super::{extract, ApiError, AppState, Peer};
use crate::replica::ReceiptUnavailable;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/node/tx", get(tx_status))
        .route("/node/commit", get(commit))
        .route("/node/state", get(node_state))
        .route("/node/network", get(network))
        .route("/node/version", get(version))
        .route("/app/receipt", get(receipt))
}

#[derive(Deserialize)]
struct TxQuery {
    transaction_id: String,
}

async fn tx_status(State(app): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let q: TxQuery = extract::query(q)?;
    let tx = extract::tx_id(&q.transaction_id)?;
    let status = app.node.replica().tx_status(tx);
    Ok(Json(json!({ "status": status, "transaction_id": tx })).into_response())
}

async fn commit(State(app): State<AppState>) -> Response {
    let committed = app.node.replica().committed();
    super::with_tx_id(committed, Json(json!({ "transaction_id": committed })))
}

async fn node_state(State(app): State<AppState>) -> Response {
    let replica = app.node.replica();
    Json(json!({
        "node_id": replica.node_id(),
        "state": "PartOfNetwork",
        "last_signed_seqno": replica.last_signed_seqno(),
        "startup_seqno": replica.startup_seqno(),
    }))
    .into_response()
}

async fn network(State(app): State<AppState>) -> Response {
    let replica = app.node.replica();
    Json(json!({
        "service_certificate": app.node.service_cert_pem,
        "service_status": "Open",
        "current_view": replica.view(),
        "primary_id": replica.node_id(),
    }))
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
    let replica = app.node.replica();
    let answer = if wants_cose {
        replica
            .cose_receipt(tx)
            .map(|bytes| ([(header::CONTENT_TYPE, "application/cose")], bytes).into_response())
    } else {
        replica
            .json_receipt(tx)
            .map(|receipt| Json(receipt).into_response())
    };
    answer.map_err(|e| match e {
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
        ReceiptUnavailable::Internal(message) => ApiError::internal(message),
    })
}
