//! Forwarding: a backup sends a request that may write (any method but GET, HEAD, OPTIONS) to the primary before
//! running it, as CCF forwards write endpoints; it runs reads itself, and if a read's transaction turns out to
//! write, the handler answers with a [`ForwardToPrimary`] marker and this layer forwards it then. Requests travel
//! over the node-to-node channel (mutual TLS between service-endorsed nodes, already open for Raft), with the
//! caller's certificate, which the primary believes because only a Trusted node can send on that channel. The
//! client sees the primary's answer as if it had called the primary (CCF's behaviour).
//!
//! ```text
//!  client ─▶ backup: buffer body ─(may write)──────────────────▶ ForwardedRequest ══channel══▶ primary
//!                               └─(read) handler ─(it wrote)─▶ marker ─┘
//!                                      answer ◀─ ForwardedResponse ◀══channel══ router (as the caller) ◀─┘
//! ```
//!
//! It used to be a second HTTPS request, which cost backups about twice the server CPU of a write sent to the
//! primary (a TLS client, HTTP encoding and parsing on both ends, per request).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use super::{ApiError, AppState, Peer};
use crate::channels::{ForwardHandler, ForwardedRequest, ForwardedResponse};

/// How long a backup waits for the primary's answer.
const FORWARD_TIMEOUT_MS: u64 = 30_000;
/// Requests a backup forwards to the primary at once; past it, 503 with Retry-After.
pub const FORWARDS_MAX: usize = 256;
/// Forwarded requests the primary runs at once; past it, they are answered 503 at once.
pub const FORWARDED_RUNNING_MAX: usize = 256;
/// Largest answer sent back over a channel (a forwarded request is a write: its answer is small).
const FORWARDED_ANSWER_BYTES_MAX: usize = 16 << 20;

/// Response extension: this request must run on the primary.
#[derive(Clone, Copy, Debug)]
pub struct ForwardToPrimary;

/// What forwarding needs of the original request (kept instead of a copy of all of it).
struct Original {
    method: axum::http::Method,
    uri: axum::http::Uri,
    content_type: Option<HeaderValue>,
    accept: Option<HeaderValue>,
    /// The caller's certificate, vouched for to the primary.
    caller: Option<Arc<Vec<u8>>>,
    /// The client's address, for the primary's per-client limits.
    client_addr: Option<std::net::SocketAddr>,
}

/// Whether a request may write: anything but GET, HEAD and OPTIONS. A backup sends these to the primary before
/// running them (as CCF forwards write endpoints): run here first, a request that fails before it writes (a
/// DELETE of a record this backup has not applied yet, a ballot on a proposal it has not seen) would be answered
/// from the backup's stale state instead of the primary's.
fn may_write(method: &axum::http::Method) -> bool {
    !matches!(
        *method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    )
}

/// Middleware: runs the request here, or forwards it to the primary: at once for a request that may write
/// received by a backup, else if the handler asks to (a read-only method whose transaction wrote).
pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    // Every route's body is bounded here (handlers read the buffered copy).
    let bytes = match super::extract::body_bytes(body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let peer = parts.extensions.get::<Peer>();
    let forwarded = peer.is_some_and(|p| p.forwarded);
    let original = Original {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        content_type: parts.headers.get(axum::http::header::CONTENT_TYPE).cloned(),
        accept: parts.headers.get(axum::http::header::ACCEPT).cloned(),
        caller: peer.and_then(|p| p.cert_der.clone()),
        client_addr: peer.and_then(|p| p.addr),
    };
    if may_write(&original.method) && !state.node.view().is_primary {
        if forwarded {
            return primary_changed();
        }
        return match forward(&state, &original, bytes).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    let local = Request::from_parts(parts, Body::from(bytes.clone()));
    let response = next.run(local).await;
    if response.extensions().get::<ForwardToPrimary>().is_none() {
        return response;
    }
    if forwarded {
        return primary_changed();
    }
    match forward(&state, &original, bytes).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// A forwarded request reached a node that is no longer the primary: it is not run here (that would answer from
/// a backup's state) nor forwarded again; the client retries.
fn primary_changed() -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "NotPrimary",
        "the primary changed; retry",
    )
    .into_response()
}

fn header_text(v: &Option<HeaderValue>) -> Option<String> {
    v.as_ref().and_then(|v| v.to_str().ok()).map(str::to_string)
}

async fn forward(state: &AppState, original: &Original, body: bytes::Bytes) -> Result<Response, ApiError> {
    let unavailable = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", m);
    let _slot = state.forwards.try_take().ok_or_else(|| {
        ApiError::busy(
            "ServiceBusy",
            format!("{FORWARDS_MAX} requests are being forwarded to the primary already; retry"),
            1,
        )
    })?;
    let (primary, me) = (state.node.view().primary, state.node.raft_id());
    if primary == 0 || primary == me {
        return Err(unavailable(
            "no primary is known right now (an election may be under way); retry".into(),
        ));
    }
    let request = ForwardedRequest {
        id: 0,
        method: original.method.to_string(),
        path_and_query: original
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        content_type: header_text(&original.content_type),
        accept: header_text(&original.accept),
        caller_cert: original.caller.as_ref().map(|c| c.as_ref().clone()),
        body: body.to_vec(),
        client_addr: original.client_addr.map(|a| a.to_string()),
    };
    let answer = state
        .node
        .channels()
        .forward(primary, request, FORWARD_TIMEOUT_MS)
        .await
        .map_err(|e| unavailable(format!("forwarding to the primary: {e}; retry")))?;
    let status = StatusCode::from_u16(u16::try_from(answer.status).unwrap_or(500))
        .map_err(|e| ApiError::internal(format!("the primary answered status {}: {e}", answer.status)))?;
    let mut response = Response::builder().status(status);
    for (name, value) in [
        (axum::http::header::CONTENT_TYPE.as_str(), &answer.content_type),
        (super::TX_ID_HEADER, &answer.tx_id),
        (axum::http::header::RETRY_AFTER.as_str(), &answer.retry_after),
    ] {
        if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            response = response.header(name, v);
        }
    }
    response
        .body(Body::from(answer.body))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Installs, on this node's channels, what runs the requests backups forward here: each through the router as the
/// caller it was forwarded for (marked forwarded, so it is never forwarded again), at most
/// [`FORWARDED_RUNNING_MAX`] at once, its answer sent back on the channel.
pub fn serve_forwarded(state: AppState, router: Router) {
    let running = crate::limits::Slots::new(FORWARDED_RUNNING_MAX);
    let channels = state.node.channels().clone();
    let request_timeout = Duration::from_millis(state.node.config().limits.http_request_timeout_ms);
    // The handler is called on the channels' runtime thread: the request runs with the clients' ones instead.
    let runtime = state.node.runtime().clone();
    let handler: ForwardHandler = Arc::new(move |from, request: ForwardedRequest| {
        let id = request.id;
        let Some(slot) = running.try_take() else {
            let busy = ApiError::busy(
                "ServiceBusy",
                format!("the primary runs {FORWARDED_RUNNING_MAX} forwarded requests already; retry"),
                1,
            );
            channels.respond(from, error_answer(id, &busy));
            return;
        };
        let (router, channels) = (router.clone(), channels.clone());
        runtime.spawn(async move {
            let _slot = slot;
            let answer = match tokio::time::timeout(request_timeout, run_forwarded(router, request)).await {
                Ok(answer) => answer,
                Err(_) => error_answer(
                    id,
                    &ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "RequestTimeout",
                        "the primary did not answer the forwarded request in time; a write may still commit",
                    ),
                ),
            };
            channels.respond(from, answer);
        });
    });
    state.node.channels().set_forward_handler(handler);
}

fn forwarded_request(request: ForwardedRequest) -> Result<Request, ApiError> {
    let method = axum::http::Method::from_bytes(request.method.as_bytes())
        .map_err(|e| ApiError::invalid_input(format!("forwarded method: {e}")))?;
    let mut builder = Request::builder()
        .method(method)
        .uri(request.path_and_query.as_str());
    for (name, value) in [
        (axum::http::header::CONTENT_TYPE, &request.content_type),
        (axum::http::header::ACCEPT, &request.accept),
    ] {
        if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            builder = builder.header(name, v);
        }
    }
    let mut req = builder
        .body(Body::from(request.body))
        .map_err(|e| ApiError::invalid_input(format!("forwarded request: {e}")))?;
    // The sending node is endorsed: the address it saw is the client's.
    let addr = request.client_addr.as_deref().and_then(|a| a.parse().ok());
    req.extensions_mut().insert(Peer {
        forwarded: true,
        addr,
        ..Peer::with_cert(request.caller_cert.map(Arc::new))
    });
    Ok(req)
}

async fn run_forwarded(router: Router, request: ForwardedRequest) -> ForwardedResponse {
    let id = request.id;
    let req = match forwarded_request(request) {
        Ok(req) => req,
        Err(e) => return error_answer(id, &e),
    };
    let response = match router.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let body = match http_body_util::Limited::new(body, FORWARDED_ANSWER_BYTES_MAX)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) => {
            return error_answer(
                id,
                &ApiError::internal(format!("the answer could not be forwarded back: {e}")),
            )
        }
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    ForwardedResponse {
        id,
        status: u32::from(parts.status.as_u16()),
        content_type: header(axum::http::header::CONTENT_TYPE.as_str()),
        tx_id: header(super::TX_ID_HEADER),
        retry_after: header(axum::http::header::RETRY_AFTER.as_str()),
        body,
    }
}

/// The channel answer of an error, in the JSON shape every endpoint answers with.
fn error_answer(id: u64, e: &ApiError) -> ForwardedResponse {
    ForwardedResponse {
        id,
        status: u32::from(e.status.as_u16()),
        content_type: Some("application/json".into()),
        tx_id: None,
        retry_after: e.retry_after_s.map(|s| s.to_string()),
        body: e.body().to_string().into_bytes(),
    }
}
