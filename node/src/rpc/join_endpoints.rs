//! Joining and leaving over HTTPS: `POST /node/join` (a new node presents its key in TLS and attestation evidence
//! binding it; decided by `crate::join::admission`), and `GET /node/snapshot` (the newest committed snapshot with the proof that it is committed). Retiring a node is
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

use super::{extract, ApiError, AppState, Peer};
use crate::consensus::machine::CoreError;
use crate::join::admission::{self, Refusal};
use crate::join::{JoinRequest, SnapshotResponse};
use crate::service::committed_snapshots;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/node/join", post(join))
        .route("/node/snapshot", get(snapshot))
        .route("/node/snapshot/{name}", get(snapshot_file))
}

fn core_error(e: CoreError) -> ApiError {
    match e {
        CoreError::NotPrimary => ApiError::not_primary(),
        CoreError::Busy => ApiError::busy("ServiceBusy", e.to_string(), 1),
        CoreError::Refused(m) => ApiError::new(StatusCode::FORBIDDEN, "NodeRetired", m),
        other => ApiError::internal(other.to_string()),
    }
}

/// The HTTP answer to a refused join.
fn refusal(r: Refusal) -> ApiError {
    match r {
        Refusal::InvalidInput(m) => ApiError::invalid_input(m),
        Refusal::Forbidden { code, message } => ApiError::new(StatusCode::FORBIDDEN, code, message),
        Refusal::TooManyRequests {
            message,
            retry_after_s,
        } => ApiError::too_many_requests(message, retry_after_s),
        Refusal::TooManyPending {
            message,
            retry_after_s,
        } => ApiError::busy("TooManyPendingJoins", message, retry_after_s),
        Refusal::Core(e) => core_error(e),
        Refusal::Ask(e) => e.into(),
        Refusal::Exec(e) => e.into(),
    }
}

/// `POST /node/join`: decided by `crate::join::admission`.
async fn join(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    body: Body,
) -> Result<Response, ApiError> {
    let der = peer
        .cert_der
        .clone()
        .ok_or_else(|| ApiError::unauthorized("joining requires the node's TLS client certificate"))?;
    admission::check_certificate(&der).map_err(refusal)?;
    let req: JoinRequest = extract::json_body(body, app.max_body_bytes).await?;
    let answer = admission::admit(&app.node, &app.join_limiter, peer.addr, &der, req)
        .await
        .map_err(refusal)?;
    Ok(Json(answer).into_response())
}

#[derive(Deserialize)]
struct SnapshotQuery {
    seqno: Option<u64>,
}

/// Seconds a node is told to wait when every snapshot download slot is taken.
const DOWNLOADS_BUSY_RETRY_S: u32 = 5;

/// The caller's node id if it is a Trusted node of this service: its TLS certificate is endorsed by the service
/// (checked at the handshake) and the nodes table says Trusted. A Pending node holds no endorsed certificate.
fn trusted_node(app: &AppState, peer: &Peer) -> Result<String, ApiError> {
    let node_id = peer.endorsed_node.clone().ok_or_else(|| {
        ApiError::unauthorized("snapshots are served to Trusted nodes of this service only")
    })?;
    if !admission::trust_committed(&app.node, &node_id) {
        return Err(ApiError::forbidden(format!(
            "node {node_id} is not a Trusted node of this service"
        )));
    }
    Ok(node_id)
}

/// `GET /node/snapshot[?seqno=S]`: which committed snapshot this node serves, with the proof that it is
/// committed; its bytes are streamed by `GET /node/snapshot/{name}`.
async fn snapshot(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    trusted_node(&app, &peer)?;
    let q: SnapshotQuery = extract::query(q)?;
    let (seqno, evidence_seqno, path) = committed_snapshots(&app.node.paths)
        .into_iter()
        .find(|(s, _, _)| q.seqno.is_none_or(|want| want == *s))
        .ok_or_else(|| ApiError::not_found("no committed snapshot here"))?;
    let size = std::fs::metadata(&path)
        .map_err(|e| ApiError::internal(format!("reading {}: {e}", path.display())))?
        .len();
    let (evidence, tx) = app
        .node
        .ask_async(move |core| (core.ledger_entry(evidence_seqno), core.tx_id_at(evidence_seqno)))
        .await?;
    let evidence = evidence.ok_or_else(|| {
        ApiError::not_found(format!("the evidence of snapshot {seqno} is no longer held here"))
    })?;
    let super::node_endpoints::Receipt::Json(receipt) =
        super::node_endpoints::receipt_of(&app, tx, false).await?
    else {
        return Err(ApiError::internal("a JSON receipt was asked for"));
    };
    Ok(Json(SnapshotResponse {
        seqno,
        evidence_seqno,
        size,
        name: crate::snapshot_codec::file_name(seqno, Some(evidence_seqno)),
        evidence_entry: base64::engine::general_purpose::STANDARD.encode(evidence.encode_to_vec()),
        receipt,
    })
    .into_response())
}

/// `GET /node/snapshot/{name}`: the committed snapshot file, streamed (never read whole into memory), to at
/// most `--snapshot-downloads-max` nodes at once.
async fn snapshot_file(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    trusted_node(&app, &peer)?;
    // Only a name this node lists as committed is opened: nothing from the request reaches the file system.
    let (_, _, path) = committed_snapshots(&app.node.paths)
        .into_iter()
        .find(|(s, e, _)| crate::snapshot_codec::file_name(*s, Some(*e)) == name)
        .ok_or_else(|| ApiError::not_found(format!("no committed snapshot named {name:?} here")))?;
    let slot = app.snapshot_downloads.try_take().ok_or_else(|| {
        ApiError::busy(
            "TooManySnapshotDownloads",
            format!(
                "{} snapshot downloads are in progress (--snapshot-downloads-max); retry later",
                app.snapshot_downloads.max()
            ),
            DOWNLOADS_BUSY_RETRY_S,
        )
    })?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(format!("opening {}: {e}", path.display())))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(format!("reading {}: {e}", path.display())))?
        .len();
    // The slot travels with the body: it is freed when the download ends, however it ends.
    let stream = futures_util::StreamExt::map(tokio_util::io::ReaderStream::new(file), move |chunk| {
        let _held = &slot;
        chunk
    });
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
        .header(axum::http::header::CONTENT_LENGTH, size)
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::internal(e.to_string()))
}
