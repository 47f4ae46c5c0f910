//! Joining and leaving: `POST /node/join` (a new node presents its key in TLS and attestation evidence binding it),
//! and `GET /node/snapshot` (the newest committed snapshot with the proof that it is committed). Retiring a node is
//! governance's `remove_node`.

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
use crate::channels::PeerInfo;
use crate::core::CoreError;
use crate::join::{JoinRequest, JoinResponse, SnapshotOffer, SnapshotResponse};
use crate::service::{committed_snapshots, node_info, now_secs};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/node/join", post(join))
        .route("/node/snapshot", get(snapshot))
}

fn core_error(e: CoreError) -> ApiError {
    match e {
        CoreError::NotPrimary => ApiError::not_primary(),
        CoreError::Refused(m) => ApiError::new(StatusCode::FORBIDDEN, "NodeRetired", m),
        other => ApiError::internal(other.to_string()),
    }
}

/// The service's endorsement of the key a joining node presented in TLS.
fn endorse(app: &AppState, der: &[u8], name: &str, rpc: std::net::SocketAddr) -> Result<String, ApiError> {
    cert::endorse_public_key(der, name, &[rpc.ip()], &["localhost".into()], &app.node.service)
        .map_err(|e| ApiError::invalid_input(format!("cannot endorse the node's key: {e}")))
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
    let mut existing: Option<serde_json::Value> = state
        .get(maps::NODES_INFO, node_id.as_bytes())
        .and_then(|v| serde_json::from_slice(v).ok());
    // With a consortium, a new node waits (Pending) until the members trust it by vote; without one, the start
    // configuration (the allowed code ids) is what decides.
    let governed = state.map(maps::MEMBERS_CERTS).is_some_and(|m| !m.is_empty());
    // Decided on `existing`; a join that finds, inside its transaction, that the node appeared meanwhile decides
    // again on what is there (at most once more: that record is never absent).
    let info = loop {
        break match existing {
            Some(info) if info["status"] == "Retired" => {
                return Err(forbidden(
                    "NodeRetired",
                    format!("node {node_id} was retired and cannot rejoin"),
                ))
            }
            Some(info) if info["status"] == "Pending" => {
                return Ok(Json(pending_answer(&node_id)).into_response());
            }
            // Trusted, and already endorsed and added: a retried join gets the same answer again.
            Some(info) if info["endorsed"] == true => info,
            // Trusted by the members since it asked: only now is its key endorsed and does it enter Raft.
            Some(mut info) => {
                let endorsed = endorse(&app, &der, &req.node_name, rpc)?;
                info["cert"] = json!(endorsed);
                info["endorsed"] = json!(true);
                app.node
                    .with_core(|c| c.add_node(&node_id, &info, now_secs()))
                    .map_err(core_error)?;
                tracing::info!(node_id, "a trusted node was endorsed and added");
                info
            }
            None if governed => {
                let mut info = node_info(
                    &req.node_name,
                    &cert::der_to_pem(&der),
                    "Pending",
                    rpc,
                    node_address,
                    &verified.measurement,
                );
                info["endorsed"] = json!(false);
                // Another join, or governance (say, retiring it), may have written this node since `state`
                // was read: never overwrite it.
                let (current, _) = app.node.execute(|tx| {
                    let current = tx
                        .get(maps::NODES_INFO, node_id.as_bytes())
                        .and_then(|v| serde_json::from_slice::<serde_json::Value>(&v).ok());
                    if current.is_none() {
                        tx.put(maps::NODES_INFO, node_id.as_bytes(), info.to_string().as_bytes());
                    }
                    Ok::<_, ApiError>(current)
                })?;
                if current.is_some() {
                    existing = current;
                    continue;
                }
                tracing::info!(node_id, name = %req.node_name, "a node asked to join: Pending until trusted by vote");
                return Ok(Json(pending_answer(&node_id)).into_response());
            }
            None => {
                let endorsed = endorse(&app, &der, &req.node_name, rpc)?;
                let mut info = node_info(
                    &req.node_name,
                    &endorsed,
                    "Trusted",
                    rpc,
                    node_address,
                    &verified.measurement,
                );
                info["endorsed"] = json!(true);
                app.node
                    .with_core(|c| c.add_node(&node_id, &info, now_secs()))
                    .map_err(core_error)?;
                tracing::info!(node_id, name = %req.node_name, "a node joined");
                info
            }
        };
    };
    let nodes = state
        .map(maps::NODES_INFO)
        .into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(k, e)| {
            let info: serde_json::Value = serde_json::from_slice(&e.value).ok()?;
            Some(PeerInfo {
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

fn pending_answer(node_id: &str) -> JoinResponse {
    JoinResponse {
        node_id: node_id.to_string(),
        status: "Pending".into(),
        ..Default::default()
    }
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
    // Snapshots can be large: read and encode on a blocking thread, not on the async runtime.
    let snapshot = tokio::task::spawn_blocking(move || {
        std::fs::read(&path)
            .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes))
            .map_err(|e| ApiError::internal(format!("reading {}: {e}", path.display())))
    })
    .await
    .map_err(|e| ApiError::internal(format!("reading the snapshot: {e}")))??;
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
        snapshot,
        evidence_entry: b64(&evidence.encode_to_vec()),
        receipt,
    })
    .into_response())
}
