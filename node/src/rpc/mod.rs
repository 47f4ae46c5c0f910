//! HTTPS front end: rustls with optional client certificates (a user is known by the SHA-256 of its certificate),
//! hyper HTTP/1.1 connections, and the axum router that maps CCF's paths to the node and app endpoints.
//!
//! ```text
//!  TCP accept ─▶ TLS handshake (peer cert kept) ─▶ hyper conn ─▶ Peer (or the caller a node forwarded for)
//!      ─▶ forwarding layer ─▶ axum router ─▶ handler ─(writes on a backup)─▶ forwarded to the primary
//! ```

pub mod conn;
mod dashboard;
pub mod error;
pub mod extract;
pub mod forward;
mod gov_endpoints;
mod join_endpoints;
pub mod node_endpoints;
pub mod openapi;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::TokioIo;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use synod_core::cert;
use synod_core::maps;
use synod_core::tables::ServiceStatus;
use synod_core::txid::TxId;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::limits;
use crate::service::Node;
pub use error::ApiError;

/// Header carrying the transaction id of a response (CCF's name).
pub const TX_ID_HEADER: &str = "x-ms-ccf-transaction-id";

/// What every handler can reach, in one shared allocation: axum clones the state for every request and for each
/// layer it passes, and one reference count to update is cheaper than one per field (cloning and dropping five
/// were ~3 % of a node's HTTP threads under load).
#[derive(Clone)]
pub struct AppState(Arc<AppShared>);

/// The fields of [`AppState`].
pub struct AppShared {
    /// The node.
    pub node: Arc<Node>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// The service certificate (DER).
    pub service_cert_der: Vec<u8>,
    /// New Pending joins per client address.
    pub join_limiter: limits::RateLimiter,
    /// Snapshot downloads in progress.
    pub snapshot_downloads: limits::Slots,
    /// Requests being forwarded to the primary.
    pub forwards: limits::Slots,
}

impl std::ops::Deref for AppState {
    type Target = AppShared;

    fn deref(&self) -> &AppShared {
        &self.0
    }
}

impl AppState {
    /// Shared state for the router.
    pub fn new(node: Arc<Node>) -> anyhow::Result<AppState> {
        let service_cert_der = cert::pem_to_der(&node.service_cert_pem)?;
        let cfg = node.config();
        let joins = cfg.limits.joins_per_min;
        Ok(AppState(Arc::new(AppShared {
            max_body_bytes: cfg.max_body_bytes,
            join_limiter: limits::RateLimiter::new(joins, joins),
            snapshot_downloads: limits::Slots::new(cfg.limits.snapshot_downloads_max as usize),
            forwards: limits::Slots::new(forward::FORWARDS_MAX),
            node,
            service_cert_der,
        })))
    }
}

/// Who a request speaks for: the TLS client certificate, or the caller a trusted node forwarded it for.
#[derive(Clone, Default)]
pub struct Peer {
    /// DER of the caller's certificate.
    pub cert_der: Option<Arc<Vec<u8>>>,
    /// Hex SHA-256 of `cert_der` (how users and members are known): computed once with it, not per request.
    pub cert_id: Option<String>,
    /// Whether a node forwarded this request.
    pub forwarded: bool,
    /// Key id of the connection's certificate if the service endorsed it: checked once per TLS connection, not per request.
    pub endorsed_node: Option<String>,
    /// The client's address (per-client rate limits); on a forwarded request, the address the backup saw.
    pub addr: Option<std::net::SocketAddr>,
}

impl Peer {
    /// A caller known by `cert_der` (if any), not forwarded.
    pub fn with_cert(cert_der: Option<Arc<Vec<u8>>>) -> Peer {
        let cert_id = cert_der.as_deref().map(|der| cert::cert_fingerprint_hex(der));
        Peer {
            cert_der,
            cert_id,
            forwarded: false,
            endorsed_node: None,
            addr: None,
        }
    }
}

/// An authenticated user.
pub struct User {
    /// Hex SHA-256 of the user's certificate DER.
    pub id: String,
}

impl AppState {
    /// Requires a client certificate registered in `public:ccf.gov.users.certs`, and the service open.
    pub fn authenticate_user(&self, peer: &Peer) -> Result<User, ApiError> {
        self.authenticate_user_in(&self.node.view().state.clone(), peer)
    }

    /// [`AppState::authenticate_user`] against a state the caller already holds.
    pub fn authenticate_user_in(&self, state: &synod_kv::State, peer: &Peer) -> Result<User, ApiError> {
        let id = registered(state, peer, maps::USERS_CERTS, "user")?;
        if !service_open(state) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceNotOpen",
                "the service is not open yet: its members must accept a transition_service_to_open proposal",
            ));
        }
        Ok(User { id: id.to_string() })
    }

    /// Requires a client certificate registered in `public:ccf.gov.members.certs`.
    pub fn authenticate_member(&self, peer: &Peer) -> Result<User, ApiError> {
        self.authenticate_member_in(&self.node.view().state.clone(), peer)
    }

    /// [`AppState::authenticate_member`] against a state the caller already holds.
    pub fn authenticate_member_in(&self, state: &synod_kv::State, peer: &Peer) -> Result<User, ApiError> {
        let id = registered(state, peer, maps::MEMBERS_CERTS, "member")?;
        Ok(User { id: id.to_string() })
    }
}

/// The caller's certificate id, if `certs` (the users' or members' table) holds it; `who` names the table's kind.
fn registered<'a>(
    state: &synod_kv::State,
    peer: &'a Peer,
    certs: &str,
    who: &str,
) -> Result<&'a str, ApiError> {
    let id = peer.cert_id.as_deref().ok_or_else(|| {
        ApiError::unauthorized(format!("this endpoint requires a {who}'s TLS client certificate"))
    })?;
    if state.get(certs, id.as_bytes()).is_none() {
        return Err(ApiError::unauthorized(format!(
            "the client certificate (id {id}) is not a known {who}"
        )));
    }
    Ok(id)
}

/// Whether the service is open. The answer is cached by the stored value itself (the same shared bytes until
/// `public:ccf.gov.service.info` is rewritten): that value carries the certificate, and parsing it per request
/// would be the costliest part of a small request.
pub fn service_open(state: &synod_kv::State) -> bool {
    static CACHED: std::sync::Mutex<Option<(synod_kv::Bytes, bool)>> = std::sync::Mutex::new(None);
    let Some(entry) = state.entry(maps::SERVICE_INFO, b"") else {
        return false;
    };
    let mut cached = CACHED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((value, open)) = cached.as_ref() {
        if Arc::ptr_eq(value, &entry.value) {
            return *open;
        }
    }
    #[derive(serde::Deserialize)]
    struct Status {
        status: ServiceStatus,
    }
    let open = serde_json::from_slice::<Status>(&entry.value).is_ok_and(|s| s.status == ServiceStatus::Open);
    *cached = Some((entry.value.clone(), open));
    open
}

/// Attaches `x-ms-ccf-transaction-id` to a response.
pub fn with_tx_id(tx_id: TxId, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    if let Ok(value) = HeaderValue::from_str(&tx_id.to_string()) {
        response.headers_mut().insert(TX_ID_HEADER, value);
    }
    response
}

/// The full router: node and governance endpoints, receipts, and the applications' `apps` (composed by the
/// caller: applications sit above this layer; their router also answers the paths no route took).
pub fn router(state: AppState, apps: Router<AppState>) -> Router {
    Router::new()
        .merge(node_endpoints::routes())
        .merge(dashboard::routes())
        .merge(openapi::routes())
        .merge(join_endpoints::routes())
        .merge(gov_endpoints::routes())
        .merge(apps)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "method not allowed on this endpoint",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

/// Counts each request by its route template (JavaScript endpoints under one label) for `/node/metrics`.
async fn count_request(
    state: axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    // The matched template is shared (cloning it copies a pointer): no allocation per request.
    let matched = request.extensions().get::<axum::extract::MatchedPath>().cloned();
    let unmatched = if request.uri().path().starts_with("/app/") {
        "/app/*"
    } else {
        "unmatched"
    };
    let response = next.run(request).await;
    let route = matched.as_ref().map_or(unmatched, |m| m.as_str());
    state.node.metrics.request(
        method.as_str(),
        route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Accepts any client certificate: the TLS layer checks that the client holds the certificate's key, and
/// authorization happens per endpoint against the governance tables (users are self-signed, as in CCF).
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server's TLS configuration: the node certificate, client certificates optional.
pub fn tls_config(node: &Node) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyClientCert {
        provider: provider.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(node.node_cert.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How often a connection's idle watchdog looks at it.
const IDLE_CHECK_MS: u64 = 1_000;

/// Serves HTTPS on `listener` until the task is dropped, within the bounds of `--rpc-connections-max`,
/// `--rpc-handshakes-max` and the timeouts (see [`conn`]).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    state: AppState,
) -> anyhow::Result<()> {
    let limits = state.node.config().limits.clone();
    let fds = conn::raise_fd_limit();
    // Besides client connections, descriptors go to inbound node channels and to forwarding's own connections.
    let others = limits.node_connections_max + forward::FORWARDS_MAX as u64;
    let cap = conn::connection_cap(limits.rpc_connections_max, fds, others);
    if cap < limits.rpc_connections_max {
        tracing::warn!(
            fds,
            cap,
            "the file-descriptor limit cannot hold --rpc-connections-max={} next to the ledger and store: \
             lowered",
            limits.rpc_connections_max
        );
    }
    let connections = limits::Slots::new(cap as usize);
    let handshakes = limits::Slots::new(limits.rpc_handshakes_max as usize);
    let acceptor = TlsAcceptor::from(tls);
    let mut refused: u64 = 0;
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // At a bound, the newcomer is closed at once: it costs nothing more, and what is established keeps
        // working.
        let slots = connections
            .try_take()
            .and_then(|c| Some((c, handshakes.try_take()?)));
        let Some((connection_slot, handshake_slot)) = slots else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused,
                    connections = connections.in_use(),
                    handshakes = handshakes.in_use(),
                    "connection or handshake cap reached: closing new connections"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            addr,
            (connection_slot, handshake_slot),
            acceptor.clone(),
            router.clone(),
            state.clone(),
            limits.clone(),
        ));
    }
}

/// One client connection: the TLS handshake within its slot and timeout, then HTTP/1.1 requests until the client
/// leaves, idles past `--http-idle-timeout-ms` or stalls.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    addr: std::net::SocketAddr,
    slots: (limits::Slot, limits::Slot),
    acceptor: TlsAcceptor,
    router: Router,
    state: AppState,
    limits: crate::config::Limits,
) {
    let (_connection_slot, handshake_slot) = slots;
    let handshake = tokio::time::timeout(
        Duration::from_millis(limits.tls_handshake_timeout_ms),
        acceptor.accept(stream),
    );
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake: {e}");
            return;
        }
        Err(_) => return,
    };
    drop(handshake_slot);
    let cert_der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Arc::new(c.to_vec()));
    let endorsed_node = cert_der.as_ref().and_then(|der| {
        cert::verify_endorsement(der, &state.service_cert_der).ok()?;
        cert::public_key_id_hex(der).ok()
    });
    let connection = Peer {
        endorsed_node,
        addr: Some(addr),
        ..Peer::with_cert(cert_der)
    };
    let service = request_service(
        router,
        connection,
        Duration::from_millis(limits.http_request_timeout_ms),
    );
    let activity = conn::Activity::new();
    let io = TokioIo::new(conn::Tracked::new(tls, activity.clone()));
    let header_timeout = Duration::from_millis(limits.http_header_timeout_ms);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let idle_max = Duration::from_millis(limits.http_idle_timeout_ms);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection: {e}");
                }
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(IDLE_CHECK_MS)) => {
                match conn::idle_verdict(activity.idle(), idle_max, header_timeout) {
                    conn::IdleVerdict::Keep => {}
                    conn::IdleVerdict::CloseGracefully if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    conn::IdleVerdict::CloseGracefully => {}
                    conn::IdleVerdict::Drop => return,
                }
            }
        }
    }
}

/// Answers each request of a connection with the router, as `connection`'s caller, within `request_timeout`.
fn request_service(
    router: Router,
    connection: Peer,
    request_timeout: Duration,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(connection.clone());
        let answer = tokio::time::timeout(request_timeout, router.clone().oneshot(req));
        async move {
            Ok::<_, std::convert::Infallible>(match answer.await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                // Whatever the request was doing is abandoned; a write it ordered may still commit,
                // so this is not an answer to retry blindly.
                Err(_) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "RequestTimeout",
                    format!(
                        "the request was not read and answered within {} ms \
                             (--http-request-timeout-ms); a write may still commit: check /node/tx",
                        request_timeout.as_millis()
                    ),
                )
                .into_response(),
            })
        }
    })
}
