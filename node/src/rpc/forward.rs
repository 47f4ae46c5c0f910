//! Forwarding: a backup runs every request locally; when the transaction would write, the handler answers with a
//! [`ForwardToPrimary`] marker and this layer sends the original request to the primary over HTTPS, authenticated
//! as this node, with the caller's certificate in a header the primary trusts only from a node. The client sees
//! the primary's answer as if it had called the primary (CCF's behaviour).
//!
//! ```text
//!  client ─▶ backup: buffer body ─▶ handler ─(would write)─▶ marker ─▶ POST https://primary/... ─▶ answer
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::{ApiError, AppState, Peer};
use crate::consensus::raft_id;

/// Header carrying the original caller's certificate (base64 DER) on a forwarded request.
pub const FORWARDED_CALLER: &str = "x-synod-forwarded-caller";
/// Header marking a forwarded request (it is never forwarded again).
pub const FORWARDED: &str = "x-synod-forwarded";
const FORWARD_TIMEOUT_MS: u64 = 30_000;
/// Requests a backup forwards to the primary at once (each may hold a connection, so a file descriptor, of its
/// own); past it, 503 with Retry-After.
pub const FORWARDS_MAX: usize = 256;

/// Response extension: this request must run on the primary.
#[derive(Clone, Copy, Debug)]
pub struct ForwardToPrimary;

/// An HTTPS client that authenticates as this node and trusts only the service identity.
pub fn node_client(
    node_cert_pem: &str,
    node_key_pem: &str,
    service_cert_pem: &str,
) -> anyhow::Result<reqwest::Client> {
    let tls = crate::channels::node_client_config(node_cert_pem, node_key_pem, service_cert_pem)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_millis(FORWARD_TIMEOUT_MS))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?)
}

/// The caller a request speaks for: its own TLS certificate, or — when a trusted node forwarded it — the
/// certificate that node vouches for.
pub fn resolve_peer(state: &AppState, connection: &Peer, headers: &axum::http::HeaderMap) -> Peer {
    if !headers.contains_key(FORWARDED_CALLER) && !headers.contains_key(FORWARDED) {
        return connection.clone();
    }
    // Only a Trusted node of the service vouches for callers: a retired node still holds an endorsed certificate.
    // The endorsement was verified at the handshake; trust status can change, so it is read per request.
    let from_node = connection.endorsed_node.as_ref().is_some_and(|id| {
        let directory = state.node.directory.read().unwrap_or_else(|p| p.into_inner());
        directory.get(&raft_id(id)).is_some_and(|p| p.status == "Trusted")
    });
    if !from_node {
        return connection.clone(); // a client cannot claim to be forwarded
    }
    let caller = headers
        .get(FORWARDED_CALLER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .map(Arc::new);
    Peer {
        forwarded: true,
        ..Peer::with_cert(caller)
    }
}

/// What forwarding needs of the original request (kept instead of a copy of all of it).
struct Original {
    method: axum::http::Method,
    uri: axum::http::Uri,
    content_type: Option<HeaderValue>,
    accept: Option<HeaderValue>,
    /// The caller's certificate, vouched for to the primary.
    caller: Option<Arc<Vec<u8>>>,
}

/// Middleware: runs the request here, and forwards it to the primary if the handler asks to.
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
    };
    let local = Request::from_parts(parts, Body::from(bytes.clone()));
    let response = next.run(local).await;
    if response.extensions().get::<ForwardToPrimary>().is_none() {
        return response;
    }
    if forwarded {
        // The primary moved on since the backup forwarded this: let the client retry.
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotPrimary",
            "the primary changed; retry",
        )
        .into_response();
    }
    match forward(&state, &original, bytes).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
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
    let primary = state.node.core().primary();
    let address = state
        .node
        .directory
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&primary)
        .map(|p| p.rpc_address.clone())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            unavailable("no primary is known right now (an election may be under way); retry".into())
        })?;
    let path = original.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("https://{address}{path}");
    let mut request = state
        .forward_client
        .request(original.method.clone(), &url)
        .body(body);
    for (name, value) in [
        (axum::http::header::CONTENT_TYPE, &original.content_type),
        (axum::http::header::ACCEPT, &original.accept),
    ] {
        if let Some(v) = value {
            request = request.header(name, v.clone());
        }
    }
    let caller = original
        .caller
        .as_ref()
        .map(|d| base64::engine::general_purpose::STANDARD.encode(d.as_slice()))
        .unwrap_or_default();
    request = request.header(FORWARDED, "1").header(FORWARDED_CALLER, caller);
    let answer = request
        .send()
        .await
        .map_err(|e| unavailable(format!("forwarding to the primary at {address}: {e}")))?;
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer
        .bytes()
        .await
        .map_err(|e| unavailable(format!("reading the primary's answer: {e}")))?;
    let mut response = Response::builder().status(status.as_u16());
    for (name, value) in headers.iter() {
        let keep = name == "content-type" || name.as_str() == super::TX_ID_HEADER;
        if keep {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_str().as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) {
                response = response.header(n, v);
            }
        }
    }
    response
        .body(Body::from(bytes))
        .map_err(|e| ApiError::internal(e.to_string()))
}
