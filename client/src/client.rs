//! HTTPS client for a Synod network. The node's TLS certificate is trusted only because the service certificate
//! endorses it (the service certificate is the one pinned root; the system's roots are never consulted), and a
//! user is known by the TLS client certificate it presents. Connections are kept alive in reqwest's pool.
//!
//! [`Client::call`] returns every HTTP answer as a [`Response`], errors included (a CLI prints them);
//! the typed helpers ([`Client::tx_status`], [`Client::commit`], [`Client::receipt`], ...) turn an error answer into
//! [`Error::Api`]. Connection failures are [`Error::Unreachable`] / [`Error::ConnectionLost`], which
//! [`Client::call_with_retry`] retries across the network's nodes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use synod_core::txid::{TxId, TxStatus};

use crate::error::{Error, Result};
use crate::network::Network;

/// The response header naming a request's transaction (CCF's name).
pub const TX_ID_HEADER: &str = "x-ms-ccf-transaction-id";

/// Default bound on one request, from sending it to reading the whole answer.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on establishing a connection (TCP and TLS).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response body accepted; a node never sends more, so more means something is wrong.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

const COMMIT_POLL_START: Duration = Duration::from_millis(2);
const COMMIT_POLL_MAX: Duration = Duration::from_millis(50);
/// Longest long poll of `/node/tx` (the node caps it at 10 s too).
const COMMIT_LONG_POLL_MAX: Duration = Duration::from_secs(5);
const RETRY_BACKOFF_START: Duration = Duration::from_millis(20);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// A request body.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// Sent as `application/json`.
    Json(serde_json::Value),
    /// Sent as is, with this content type (if any).
    Bytes {
        /// The `content-type` header to send, if any.
        content_type: Option<String>,
        /// The bytes.
        bytes: Vec<u8>,
    },
}

impl From<serde_json::Value> for Body {
    fn from(value: serde_json::Value) -> Body {
        Body::Json(value)
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body::Bytes {
            content_type: None,
            bytes,
        }
    }
}

/// A node's complete answer: status, headers and body.
#[derive(Clone, Debug)]
pub struct Response {
    /// HTTP status (compares with a `u16`: `response.status == 201`).
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
    /// The URL that answered.
    pub url: String,
}

/// The error body every node error has: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// Machine-readable code.
    pub code: String,
    /// Message for a person.
    pub message: String,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ApiErrorBody,
}

#[derive(Deserialize)]
struct TxStatusAnswer {
    status: TxStatus,
}

#[derive(Deserialize)]
struct TxIdAnswer {
    transaction_id: TxId,
}

impl Response {
    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// True when the `content-type` is JSON.
    pub fn is_json(&self) -> bool {
        self.header("content-type")
            .is_some_and(|ct| ct.split(';').next().is_some_and(|m| m.trim().ends_with("json")))
    }

    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Parses the body as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| Error::UnexpectedResponse {
            status: self.status,
            message: format!("body is not the expected JSON ({e}): {}", self.snippet()),
        })
    }

    /// Parses the body as any JSON value.
    pub fn json_value(&self) -> Result<serde_json::Value> {
        self.json()
    }

    /// The transaction named by the `x-ms-ccf-transaction-id` header.
    pub fn tx_id(&self) -> Result<TxId> {
        let value = self
            .header(TX_ID_HEADER)
            .ok_or_else(|| Error::UnexpectedResponse {
                status: self.status,
                message: format!("no {TX_ID_HEADER} header"),
            })?;
        value.parse().map_err(|e| Error::UnexpectedResponse {
            status: self.status,
            message: format!("{TX_ID_HEADER}: {e}"),
        })
    }

    /// The CCF error body, if this is an error answer in that shape.
    pub fn api_error(&self) -> Option<ApiErrorBody> {
        if self.is_success() {
            return None;
        }
        serde_json::from_slice::<ErrorEnvelope>(&self.body)
            .ok()
            .map(|e| e.error)
    }

    /// The error this answer stands for: [`Error::Api`] when the body has CCF's error shape, otherwise
    /// [`Error::UnexpectedResponse`].
    pub fn to_error(&self) -> Error {
        match self.api_error() {
            Some(ApiErrorBody { code, message }) => Error::Api {
                status: self.status,
                code,
                message,
            },
            None => Error::UnexpectedResponse {
                status: self.status,
                message: self.snippet(),
            },
        }
    }

    /// `Ok(self)` for a 2xx answer (and 1xx/3xx), the error it stands for (see [`Response::to_error`]) for 4xx/5xx.
    pub fn error_for_status(self) -> Result<Response> {
        if self.status.is_client_error() || self.status.is_server_error() {
            Err(self.to_error())
        } else {
            Ok(self)
        }
    }

    fn snippet(&self) -> String {
        let text = self.text();
        let text = text.trim();
        if text.is_empty() {
            return "(empty body)".into();
        }
        match text.char_indices().nth(300) {
            Some((i, _)) => format!("{}…", &text[..i]),
            None => text.to_string(),
        }
    }
}

/// A client of one Synod network: HTTPS to one node at a time, failing over to the others in
/// [`Client::call_with_retry`]. Cheap to clone; clones share the connection pool and the current node.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    urls: Arc<[String]>,
    /// `urls`, parsed once.
    bases: Arc<[reqwest::Url]>,
    current: Arc<AtomicUsize>,
    service_cert_pem: Arc<str>,
    request_timeout: Duration,
    /// The TLS configuration `http` uses, for [`crate::Connection`]s.
    tls: Arc<rustls::ClientConfig>,
}

fn tls_config(service_cert_pem: &str, identity: Option<(&str, &str)>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(service_cert_pem.as_bytes()) {
        let der = der.map_err(|e| Error::TlsConfig(format!("service certificate: {e}")))?;
        roots
            .add(der)
            .map_err(|e| Error::TlsConfig(format!("service certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::TlsConfig(
            "service certificate: no CERTIFICATE block in the PEM".into(),
        ));
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::TlsConfig(e.to_string()))?
            .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::TlsConfig(format!("client certificate: {e}")))?;
            if certs.is_empty() {
                return Err(Error::TlsConfig(
                    "client certificate: no CERTIFICATE block in the PEM".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| Error::TlsConfig(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| Error::TlsConfig(format!("client certificate and key: {e}")))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An error and all its causes, looking inside `io::Error`s too: their `source()` skips the error they wrap, and
/// connectors wrap TLS errors in `io::Error`s, sometimes twice.
fn causes<'a>(e: &'a (dyn std::error::Error + 'static)) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut all = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        all.push(err);
        let mut inner = err;
        while let Some(wrapped) = inner.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            let wrapped: &(dyn std::error::Error + 'static) = wrapped;
            all.push(wrapped);
            inner = wrapped;
        }
        cur = err.source();
    }
    all
}

/// The messages of an error and its causes, without repeats, so that the real cause (connection refused, unknown
/// issuer) is named.
fn chain_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    // reqwest's own message ("error sending request for url (...)") says nothing the caller's error does not.
    for cause in causes(e).into_iter().filter(|c| !c.is::<reqwest::Error>()) {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).iter().any(|c| c.is::<rustls::Error>())
}

/// `base` (a node URL: no query, no fragment) followed by `path_and_query`, as parsing the two written one after
/// the other gives it, without parsing the scheme and host again for every request (that was ~6 % of a load
/// generator's CPU).
fn request_url(base: &reqwest::Url, path_and_query: &str) -> reqwest::Url {
    let (rest, fragment) = match path_and_query.split_once('#') {
        Some((rest, fragment)) => (rest, Some(fragment)),
        None => (path_and_query, None),
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let mut url = base.clone();
    url.set_path(&format!("{}{path}", base.path().trim_end_matches('/')));
    url.set_query(query);
    url.set_fragment(fragment);
    url
}

fn classify(e: reqwest::Error, url: &str, timeout: Duration) -> Error {
    if is_tls_failure(&e) {
        Error::Tls {
            url: url.to_string(),
            reason: chain_message(&e),
        }
    } else {
        classify_transport(e, url, timeout)
    }
}

/// Classifies a failed HTTP exchange that is not a TLS failure (or, for plain HTTP, whatever it is): a bad request
/// or redirect loop, no connection (safe to retry), a timeout, or a connection lost after sending (a write may
/// have been applied).
pub(crate) fn classify_transport(e: reqwest::Error, url: &str, timeout: Duration) -> Error {
    let url = url.to_string();
    let reason = chain_message(&e);
    if e.is_builder() || e.is_redirect() {
        Error::Transport { url, reason }
    } else if e.is_connect() {
        Error::Unreachable { url, reason }
    } else if e.is_timeout() {
        Error::Timeout { url, after: timeout }
    } else {
        Error::ConnectionLost { url, reason }
    }
}

/// Reads the whole body of `response`, refusing one larger than `limit` bytes (announced or actual) with
/// [`Error::UnexpectedResponse`] "`{what}` larger than `limit` bytes"; `classify` turns a failed read into an error.
pub(crate) async fn read_body_capped(
    response: &mut reqwest::Response,
    limit: usize,
    what: &str,
    classify: impl Fn(reqwest::Error) -> Error,
) -> Result<Vec<u8>> {
    let status = response.status();
    let too_large = || Error::UnexpectedResponse {
        status,
        message: format!("{what} larger than {limit} bytes"),
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(&classify)? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl Client {
    /// A client of the node at `url` (`https://host:port`) that trusts only `service_cert_pem` and, with
    /// `identity = Some((cert_pem, key_pem))`, presents that client certificate (Ed25519 PKCS#8 key).
    pub fn new(url: &str, service_cert_pem: &str, identity: Option<(&str, &str)>) -> Result<Client> {
        Client::with_urls(&[url], service_cert_pem, identity)
    }

    /// A client of several nodes of one network: requests go to the first; [`Client::call_with_retry`] fails over
    /// to the others in order.
    pub fn with_urls(
        urls: &[impl AsRef<str>],
        service_cert_pem: &str,
        identity: Option<(&str, &str)>,
    ) -> Result<Client> {
        let (urls, bases): (Vec<String>, Vec<reqwest::Url>) = urls
            .iter()
            .map(|u| crate::network::check_url(u.as_ref()))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        if urls.is_empty() {
            return Err(Error::Config("no node URL given".into()));
        }
        let tls = tls_config(service_cert_pem, identity)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::TlsConfig(chain_message(&e)))?;
        Ok(Client {
            http,
            urls: urls.into(),
            bases: bases.into(),
            current: Arc::new(AtomicUsize::new(0)),
            service_cert_pem: service_cert_pem.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            tls: Arc::new(tls),
        })
    }

    /// A client of a network described by `network.json`: `node` (default: the first node) first, then the
    /// others for failover; authenticated as `user` (default: the first user, none if the network has none).
    pub fn from_network(network: &Network, node: Option<&str>, user: Option<&str>) -> Result<Client> {
        let urls = network.urls_starting_at(node)?;
        let service_cert = network.service_cert_pem()?;
        let pems = network.user(user)?.map(|u| u.read_pems()).transpose()?;
        Client::with_urls(
            &urls,
            &service_cert,
            pems.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
        )
    }

    /// The same client with another bound on each request (sending it and reading the whole answer).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Client {
        self.request_timeout = timeout;
        self
    }

    /// The bound on each request.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The URL of the node requests currently go to.
    pub fn node_url(&self) -> &str {
        &self.urls[self.current_index()]
    }

    /// Every node URL this client knows, in failover order.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The pinned service certificate (PEM).
    pub fn service_cert_pem(&self) -> &str {
        &self.service_cert_pem
    }

    /// The URL of the node requests currently go to, parsed.
    pub(crate) fn current_base(&self) -> &reqwest::Url {
        &self.bases[self.current_index()]
    }

    /// The TLS configuration (trust and identity) of this client's connections.
    pub(crate) fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    fn current_index(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.urls.len()
    }

    async fn send(
        &self,
        index: usize,
        method: &Method,
        path_and_query: &str,
        body: Option<&Body>,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Response> {
        if !path_and_query.starts_with('/') {
            return Err(Error::Config(format!(
                "request path {path_and_query:?} must start with '/'"
            )));
        }
        let url = request_url(&self.bases[index], path_and_query);
        let mut header_map = HeaderMap::new();
        let body_bytes = match body {
            None => None,
            Some(Body::Json(value)) => {
                header_map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Some(serde_json::to_vec(value).map_err(|e| Error::Config(format!("request body: {e}")))?)
            }
            Some(Body::Bytes { content_type, bytes }) => {
                if let Some(ct) = content_type {
                    let ct = HeaderValue::from_str(ct)
                        .map_err(|e| Error::Config(format!("content type {ct:?}: {e}")))?;
                    header_map.insert(CONTENT_TYPE, ct);
                }
                Some(bytes.clone())
            }
        };
        for (name, value) in headers {
            let header = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| Error::Config(format!("header name {name:?}: {e}")))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|e| Error::Config(format!("header {name:?} value {value:?}: {e}")))?;
            if header == CONTENT_TYPE {
                header_map.insert(header, value);
            } else {
                header_map.append(header, value);
            }
        }
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .headers(header_map)
            .timeout(timeout);
        if let Some(bytes) = body_bytes {
            request = request.body(bytes);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| classify(e, url.as_str(), timeout))?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let body = read_body_capped(&mut response, MAX_RESPONSE_BYTES, "body", |e| {
            classify(e, url.as_str(), timeout)
        })
        .await?;
        Ok(Response {
            status,
            headers,
            body,
            url: url.into(),
        })
    }

    /// Sends one request to the current node and returns its answer, whatever the HTTP status. `path_and_query`
    /// starts with `/`; `headers` are extra `(name, value)` pairs (a `content-type` replaces the body's).
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Body>,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        self.send(
            self.current_index(),
            &method,
            path_and_query,
            body.as_ref(),
            headers,
            self.request_timeout,
        )
        .await
    }

    /// Like [`Client::call`], but for up to `budget` retries what is safe to retry, moving to the next node of the
    /// network each time: connection failures before the request was sent and 503 answers always; lost
    /// connections and timeouts only for GET/HEAD/OPTIONS (a write may have been applied). A node that answers
    /// becomes the current node. When the budget is spent, returns the last error (or the last 503 answer).
    pub async fn call_with_retry(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Body>,
        headers: &[(&str, &str)],
        budget: Duration,
    ) -> Result<Response> {
        let start = Instant::now();
        let idempotent = is_idempotent(&method);
        let mut backoff = RETRY_BACKOFF_START;
        let mut failed_in_round = 0;
        loop {
            let index = self.current_index();
            let remaining = budget.saturating_sub(start.elapsed());
            let timeout = self.request_timeout.min(remaining.max(Duration::from_millis(1)));
            let outcome = self
                .send(index, &method, path_and_query, body.as_ref(), headers, timeout)
                .await;
            let retry = match &outcome {
                Ok(response) => response.status == StatusCode::SERVICE_UNAVAILABLE,
                Err(e) => e.is_retryable(idempotent),
            };
            if !retry || start.elapsed() >= budget {
                return outcome;
            }
            // Move on to the next node (unless a concurrent caller already did).
            let next = (index + 1) % self.urls.len();
            let _ = self
                .current
                .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
            failed_in_round += 1;
            if failed_in_round >= self.urls.len() {
                // Every node failed once: wait before the next round.
                failed_in_round = 0;
                let pause = backoff.min(budget.saturating_sub(start.elapsed()));
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            }
        }
    }

    /// GET `path_and_query` from the current node.
    pub async fn get(&self, path_and_query: &str) -> Result<Response> {
        self.call(Method::GET, path_and_query, None, &[]).await
    }

    /// POST `body` as JSON to the current node.
    pub async fn post_json(&self, path_and_query: &str, body: &impl Serialize) -> Result<Response> {
        let value = serde_json::to_value(body).map_err(|e| Error::Config(format!("request body: {e}")))?;
        self.call(Method::POST, path_and_query, Some(Body::Json(value)), &[])
            .await
    }

    /// GET a JSON document; an error answer becomes [`Error::Api`].
    pub async fn get_json<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T> {
        self.get(path_and_query).await?.error_for_status()?.json()
    }

    async fn tx_status_within(&self, tx_id: TxId, budget: Duration, wait: Duration) -> Result<TxStatus> {
        let path = format!("/node/tx?transaction_id={tx_id}&wait_ms={}", wait.as_millis());
        let response = self
            .call_with_retry(Method::GET, &path, None, &[], budget)
            .await?;
        Ok(response.error_for_status()?.json::<TxStatusAnswer>()?.status)
    }

    /// The status of a transaction as the current node sees it (`GET /node/tx`).
    pub async fn tx_status(&self, tx_id: TxId) -> Result<TxStatus> {
        let path = format!("/node/tx?transaction_id={tx_id}");
        Ok(self
            .get(&path)
            .await?
            .error_for_status()?
            .json::<TxStatusAnswer>()?
            .status)
    }

    /// The last committed transaction (`GET /node/commit`).
    pub async fn commit(&self) -> Result<TxId> {
        Ok(self.get_json::<TxIdAnswer>("/node/commit").await?.transaction_id)
    }

    /// The commit once it passes `after_seqno` (`GET /node/commit?after_seqno=…&wait_ms=…`, a long poll), or the
    /// commit as it stands after `wait`: follow the commit by asking again with the seqno seen.
    pub async fn commit_after(&self, after_seqno: u64, wait: Duration) -> Result<TxId> {
        let path = format!(
            "/node/commit?after_seqno={after_seqno}&wait_ms={}",
            wait.as_millis()
        );
        Ok(self.get_json::<TxIdAnswer>(&path).await?.transaction_id)
    }

    /// Waits until the transaction is Committed, and returns `Committed`: long polls of `/node/tx` (the node
    /// answers as soon as the status moves on, or after `wait_ms`), falling back to polling every 2 ms backing
    /// off to 50 ms against a node that answers at once. Fails with [`Error::TxInvalid`] if it becomes Invalid,
    /// and with [`Error::CommitTimeout`] after `timeout`. Connection failures and 503s while waiting (a node
    /// restarting) are retried, on the other nodes too, until the timeout.
    pub async fn wait_for_commit(&self, tx_id: TxId, timeout: Duration) -> Result<TxStatus> {
        let start = Instant::now();
        let mut pause = COMMIT_POLL_START;
        let mut last_status = None;
        loop {
            let remaining = timeout.saturating_sub(start.elapsed());
            let wait = remaining.min(COMMIT_LONG_POLL_MAX);
            let asked = Instant::now();
            match self.tx_status_within(tx_id, remaining, wait).await {
                Ok(TxStatus::Committed) => return Ok(TxStatus::Committed),
                Ok(TxStatus::Invalid) => return Err(Error::TxInvalid(tx_id)),
                Ok(status) => last_status = Some(status),
                Err(e) if e.is_retryable(true) => {}
                Err(e) => return Err(e),
            }
            if start.elapsed() + pause > timeout {
                return Err(Error::CommitTimeout {
                    tx_id,
                    waited: start.elapsed(),
                    last_status,
                });
            }
            // A node that held the request for the wait needs no pause before the next one.
            if asked.elapsed() < wait / 2 {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(COMMIT_POLL_MAX);
            }
        }
    }

    /// The receipt of a committed transaction (`GET /app/receipt`): CCF JSON, or COSE Sign1 bytes with
    /// `cose`. Requires a user identity. Check it with [`crate::verify_receipt_bytes`].
    pub async fn receipt(&self, tx_id: TxId, cose: bool) -> Result<Vec<u8>> {
        let path = format!("/app/receipt?transaction_id={tx_id}");
        let accept = if cose {
            "application/cose"
        } else {
            "application/json"
        };
        let response = self
            .call(Method::GET, &path, None, &[(ACCEPT.as_str(), accept)])
            .await?;
        Ok(response.error_for_status()?.body)
    }

    /// Waits for the transaction to be Committed (see [`Client::wait_for_commit`]), then fetches its receipt.
    pub async fn wait_for_receipt(&self, tx_id: TxId, cose: bool, timeout: Duration) -> Result<Vec<u8>> {
        self.wait_for_commit(tx_id, timeout).await?;
        self.receipt(tx_id, cose).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_urls_are_what_parsing_base_and_path_together_gives() {
        let paths = [
            "/",
            "/app/log/private?id=1",
            "/node/tx?transaction_id=2.15&wait_ms=100",
            "/a b?x=y z",
            "/a%20b/%zz",
            "/ü/\u{1F600}?q=ü",
            "/a/../b/./c",
            "//x/y",
            "/a:b",
            "/p?q#f",
            "/p#f?q",
            "/a\\b",
            "/?",
            "/#",
            "/p??q",
        ];
        for base in [
            "https://127.0.0.1:8000",
            "https://node.example:9443/prefix",
            "https://[::1]:1/a/b",
        ] {
            let parsed = reqwest::Url::parse(base).expect("base");
            // A node URL given with a trailing slash (the client keeps it parsed as given, and trimmed as text).
            let slashed = reqwest::Url::parse(&format!("{base}/")).expect("base with a slash");
            for path in paths {
                let want = reqwest::Url::parse(&format!("{base}{path}")).expect("joined");
                assert_eq!(request_url(&parsed, path), want, "{base} + {path}");
                assert_eq!(request_url(&slashed, path), want, "{base}/ + {path}");
            }
        }
    }

    fn response(status: u16, body: &str, headers: &[(&'static str, &str)]) -> Response {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        Response {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: body.as_bytes().to_vec(),
            url: "https://127.0.0.1:1/x".into(),
        }
    }

    #[test]
    fn error_answers_become_typed_errors() {
        let r = response(
            404,
            r#"{"error": {"code": "ResourceNotFound", "message": "no such record"}}"#,
            &[],
        );
        assert_eq!(r.api_error().unwrap().code, "ResourceNotFound");
        match r.clone().error_for_status().unwrap_err() {
            Error::Api {
                status,
                code,
                message,
            } => {
                assert_eq!(status, 404);
                assert_eq!(code, "ResourceNotFound");
                assert_eq!(message, "no such record");
            }
            other => panic!("{other:?}"),
        }
        let r = response(502, "<html>bad gateway</html>", &[]);
        assert!(matches!(
            r.error_for_status(),
            Err(Error::UnexpectedResponse { .. })
        ));
        let r = response(
            503,
            r#"{"error": {"code": "ServiceUnavailable", "message": "stopping"}}"#,
            &[],
        );
        let e = r.error_for_status().unwrap_err();
        assert!(e.is_retryable(false));
        assert_eq!(e.api_code(), Some("ServiceUnavailable"));
        assert!(response(201, "{}", &[]).error_for_status().is_ok());
    }

    #[test]
    fn tx_id_header_and_json() {
        let r = response(
            201,
            r#"{"transaction_id": "2.15"}"#,
            &[(TX_ID_HEADER, "2.15"), ("content-type", "application/json")],
        );
        assert_eq!(r.tx_id().unwrap(), TxId::new(2, 15));
        assert!(r.is_json());
        assert_eq!(r.json::<TxIdAnswer>().unwrap().transaction_id, TxId::new(2, 15));
        assert!(response(201, "", &[(TX_ID_HEADER, "2.x")]).tx_id().is_err());
        assert!(response(201, "", &[]).tx_id().is_err());
        assert!(response(200, "not json", &[]).json_value().is_err());
    }

    #[test]
    fn rejects_bad_configuration() {
        let service = synod_core::cert::generate_self_signed("service", true).unwrap();
        let user = synod_core::cert::generate_self_signed("user0", false).unwrap();
        let pem = &service.cert_pem;
        assert!(Client::new("https://127.0.0.1:1", pem, None).is_ok());
        let c = Client::new("https://127.0.0.1:1/", pem, Some((&user.cert_pem, &user.key_pem))).unwrap();
        assert_eq!(c.node_url(), "https://127.0.0.1:1");
        assert!(matches!(
            Client::new("http://127.0.0.1:1", pem, None),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Client::new("nonsense", pem, None),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Client::new("https://127.0.0.1:1", "garbage", None),
            Err(Error::TlsConfig(_))
        ));
        assert!(matches!(
            Client::new("https://127.0.0.1:1", pem, Some((&user.cert_pem, "garbage"))),
            Err(Error::TlsConfig(_))
        ));
        assert!(matches!(
            Client::new("https://127.0.0.1:1", pem, Some(("garbage", &user.key_pem))),
            Err(Error::TlsConfig(_))
        ));
        assert!(Client::with_urls(&[] as &[&str], pem, None).is_err());
    }

    #[tokio::test]
    async fn unreachable_node_is_a_retryable_connection_error() {
        let service = synod_core::cert::generate_self_signed("service", true).unwrap();
        // A port nobody listens on: bind, learn the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(&format!("https://127.0.0.1:{port}"), &service.cert_pem, None).unwrap();
        let err = client.get("/node/commit").await.unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        assert!(err.is_connection() && err.is_retryable(false));
        let start = Instant::now();
        let err = client
            .call_with_retry(
                Method::POST,
                "/app/log/private",
                None,
                &[],
                Duration::from_millis(200),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "{:?}",
            start.elapsed()
        );
        assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
        let err = client.get("no-slash").await.unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
    }
}
