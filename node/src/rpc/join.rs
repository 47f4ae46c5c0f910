//! Joining and leaving: `POST /node/join` (a new node presents its key in TLS and attestation evidence binding it),
//! `GET /node/snapshot` (the newest committed snapshot with the proof that it is committed) and `POST /node/retire`
//! (a member retires a node; governance takes this over with `remove_node`).

use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use prost::Message as _;
use serde::Deserialize;
use serde_json::json;
use synod_core::cert;
use synod_core::maps;

use super::{extract, ApiError, AppState, Peer};
use crate::attestation;
use crate::core::CoreError;
use crate::join::{JoinRequest, JoinResponse, NodeEntry, SnapshotOffer, SnapshotResponse};
use crate::service::{committed_snapshots, node_info, now_secs};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/node/join", post(join))
        .route("/node/snapshot", get(snapshot))
        .route("/node/retire", post(retire))
}

fn core_error(e: CoreError) -> ApiError {
    match e {
        CoreError::NotPrimary => ApiError {
            forward: true,
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "NotPrimary",
                "this node is not the primary; retry",
            )
        },
        other => ApiError::internal(other.to_string()),
    }
}

fn forbidden(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

async fn join(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    body: Body,
) -> Result<Response, ApiError> {
    let der = peer
        .cert_der
        .clone()
        .ok_or_else(|| ApiError::unauthorized("joining requires the node's TLS client certificate"))?;
    let req: JoinRequest = extract::json_body(body, app.max_body_bytes).await?;
    let verified =
        attestation::verify(&req.quote_info).map_err(|e| forbidden("InvalidQuote", e.to_string()))?;
    let node_id = cert::public_key_id_hex(&der).map_err(|e| ApiError::invalid_input(e.to_string()))?;
    if hex::encode(verified.report_data) != node_id {
        return Err(forbidden(
            "InvalidQuote",
            "the evidence's report data does not bind the key presented in TLS".into(),
        ));
    }
    let rpc: std::net::SocketAddr = req
        .rpc_address
        .parse()
        .map_err(|e| ApiError::invalid_input(format!("rpc_address: {e}")))?;
    let node_address: std::net::SocketAddr = req
        .node_address
        .parse()
        .map_err(|e| ApiError::invalid_input(format!("node_address: {e}")))?;
    let state = app.node.core().snapshot();
    if state
        .get(maps::NODES_CODE_IDS, verified.measurement.as_bytes())
        .is_none()
    {
        return Err(forbidden(
            "CodeIdNotFound",
            format!(
                "measurement {} is not allowed to join this service",
                verified.measurement
            ),
        ));
    }
    let existing: Option<serde_json::Value> = state
        .get(maps::NODES_INFO, node_id.as_bytes())
        .and_then(|v| serde_json::from_slice(v).ok());
    let info = match existing {
        Some(info) if info["status"] == "Retired" => {
            return Err(forbidden(
                "NodeRetired",
                format!("node {node_id} was retired and cannot rejoin"),
            ))
        }
        // A retried join (its answer was lost): the same answer again.
        Some(info) => info,
        None => {
            let endorsed = cert::endorse_public_key(
                &der,
                &req.node_name,
                &[rpc.ip()],
                &["localhost".into()],
                &app.node.service,
            )
            .map_err(|e| ApiError::invalid_input(format!("cannot endorse the node's key: {e}")))?;
            let info = node_info(
                &req.node_name,
                &endorsed,
                "Trusted",
                rpc,
                node_address,
                &verified.measurement,
            );
            app.node
                .with_core(|c| c.add_node(&node_id, &info, now_secs()))
                .map_err(core_error)?;
            tracing::info!(node_id, name = %req.node_name, "a node joined");
            info
        }
    };
    let nodes = state
        .map(maps::NODES_INFO)
        .into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(k, e)| {
            let info: serde_json::Value = serde_json::from_slice(&e.value).ok()?;
            Some(NodeEntry {
                node_id: String::from_utf8_lossy(k).to_string(),
                node_address: info["node_address"].as_str()?.to_string(),
                rpc_address: info["rpc_address"].as_str()?.to_string(),
                status: info["status"].as_str().unwrap_or_default().to_string(),
            })
        })
        .collect();
    let snapshot = committed_snapshots(&app.node.paths)
        .first()
        .map(|(seqno, evidence_seqno, _)| SnapshotOffer {
            seqno: *seqno,
            evidence_seqno: *evidence_seqno,
            url: format!("https://{}", app.node.rpc_address),
        });
    let secret = app
        .node
        .ledger_secret()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let answer = JoinResponse {
        node_id,
        status: info["status"].as_str().unwrap_or_default().to_string(),
        endorsed_certificate: info["cert"].as_str().unwrap_or_default().to_string(),
        service_certificate: app.node.service_cert_pem.clone(),
        service_key: app.node.service.key_pem.clone(),
        ledger_secret: base64::engine::general_purpose::STANDARD.encode(secret.0),
        nodes,
        snapshot,
    };
    Ok(Json(answer).into_response())
}

#[derive(Deserialize)]
struct SnapshotQuery {
    seqno: Option<u64>,
}

async fn snapshot(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let der = peer
        .cert_der
        .ok_or_else(|| ApiError::unauthorized("snapshots are served to nodes of this service"))?;
    let node_id = cert::public_key_id_hex(&der).map_err(|e| ApiError::invalid_input(e.to_string()))?;
    if app
        .node
        .core()
        .snapshot()
        .get(maps::NODES_INFO, node_id.as_bytes())
        .is_none()
    {
        return Err(ApiError::unauthorized(format!(
            "{node_id} is not a node of this service"
        )));
    }
    let q: SnapshotQuery = extract::query(q)?;
    let found = committed_snapshots(&app.node.paths)
        .into_iter()
        .find(|(s, _, _)| q.seqno.is_none_or(|want| want == *s))
        .ok_or_else(|| ApiError::not_found("no committed snapshot here"))?;
    let (seqno, evidence_seqno, path) = found;
    let bytes =
        std::fs::read(&path).map_err(|e| ApiError::internal(format!("reading {}: {e}", path.display())))?;
    let core = app.node.core();
    let evidence = core.ledger_entry(evidence_seqno).ok_or_else(|| {
        ApiError::not_found(format!("the evidence of snapshot {seqno} is no longer held here"))
    })?;
    let tx = core.tx_id_at(evidence_seqno);
    let receipt = core
        .json_receipt(tx)
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    Ok(Json(SnapshotResponse {
        seqno,
        evidence_seqno,
        snapshot: b64(&bytes),
        evidence_entry: b64(&evidence.encode_to_vec()),
        receipt,
    })
    .into_response())
}

#[derive(Deserialize)]
struct RetireRequest {
    node_id: String,
}

async fn retire(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    body: Body,
) -> Result<Response, ApiError> {
    app.authenticate_member(&peer)?;
    let req: RetireRequest = extract::json_body(body, app.max_body_bytes).await?;
    let state = app.node.core().snapshot();
    let info: serde_json::Value = state
        .get(maps::NODES_INFO, req.node_id.as_bytes())
        .and_then(|v| serde_json::from_slice(v).ok())
        .ok_or_else(|| ApiError::not_found(format!("no node {}", req.node_id)))?;
    if info["status"] == "Retired" {
        return Err(ApiError::invalid_input(format!(
            "node {} is already retired",
            req.node_id
        )));
    }
    let primary = {
        let core = app.node.core();
        core.is_primary() && core.node_id() == req.node_id
    };
    if primary {
        return Err(ApiError::invalid_input(
            "this node is the primary: retire backups, or retire it once another node is primary",
        ));
    }
    let tx = app
        .node
        .with_core(|c| c.retire_node(&req.node_id, now_secs()))
        .map_err(core_error)?;
    Ok(super::with_tx_id(
        tx,
        Json(json!({ "transaction_id": tx, "node_id": req.node_id, "status": "Retired" })),
    ))
}
