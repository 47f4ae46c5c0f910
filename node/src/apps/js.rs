//! JavaScript applications: a bundle in CCF's format (`app.json` endpoints + ES modules), deployed by a
//! `set_js_app` proposal into `public:ccf.gov.js_app`, served under `/app/...` by every node.
//!
//! ```text
//!  /app/<path> (no native route) ─▶ auth (authn_policies) ─▶ blocking thread ─▶ execute(tx):
//!      bundle = tx.get(js_app)  ─▶ endpoint (method, path template) ─▶ engine for this bundle version (cached per
//!      thread) ─▶ handler(request) ─▶ {statusCode, headers, body}; not 2xx ⇒ its writes are discarded
//! ```
//!
//! The bundle is read inside the request's own transaction, so a request runs entirely on one version of the app
//! and replacing the app is atomic. Engines (QuickJS runtime + compiled modules) are reused across requests on the
//! same thread until the app changes; one that was stopped (time or heap limit) is thrown away.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use synod_core::maps;
use synod_kv::Tx;

use crate::js::{Compiled, Engine, HandlerRequest, HandlerResponse, JsError, JsLimits, KvPolicy};
use crate::rpc::{extract, with_tx_id, ApiError, AppState, Peer};

/// One endpoint of `app.json` (`endpoints[path][method]`).
#[derive(Clone, Debug, Deserialize)]
pub struct EndpointSpec {
    /// Module (by its name in the bundle).
    pub js_module: String,
    /// Exported function.
    pub js_function: String,
    /// `user_cert`, `member_cert`, `any_cert`, `no_auth`; empty means no authentication.
    #[serde(default)]
    pub authn_policies: Vec<String>,
    /// `sometimes` (default: forward when the transaction writes), `always`, `never`.
    #[serde(default)]
    pub forwarding_required: Option<String>,
    /// `readwrite` (default) or `readonly`.
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
struct BundleModule {
    name: String,
    module: String,
}

#[derive(Clone, Debug, Deserialize)]
struct BundleSpec {
    metadata: Metadata,
    modules: Vec<BundleModule>,
}

#[derive(Clone, Debug, Deserialize)]
struct Metadata {
    #[serde(default)]
    endpoints: BTreeMap<String, BTreeMap<String, EndpointSpec>>,
}

#[derive(Clone, Debug, Deserialize)]
struct Deployed {
    bundle: BundleSpec,
    version: String,
    /// The endpoints' path templates in the order requests are matched against them (set by [`parse`]).
    #[serde(skip)]
    templates: Vec<String>,
}

fn parse(raw: &[u8]) -> Result<Deployed, ApiError> {
    let mut deployed: Deployed = serde_json::from_slice(raw)
        .map_err(|e| ApiError::internal(format!("the deployed JavaScript app does not parse: {e}")))?;
    // Templates without parameters first, so `/accounts/total` wins over `/accounts/{id}`.
    deployed.templates = deployed.bundle.metadata.endpoints.keys().cloned().collect();
    deployed.templates.sort_by_key(|t| t.matches('{').count());
    Ok(deployed)
}

thread_local! {
    static ENGINE: RefCell<Option<(String, Engine)>> = const { RefCell::new(None) };
}

/// Bytecode of the current app version, compiled once per process and shared by every thread's engine.
static COMPILED: std::sync::Mutex<Option<(String, std::sync::Arc<Compiled>)>> = std::sync::Mutex::new(None);

fn compiled(deployed: &Deployed) -> Result<std::sync::Arc<Compiled>, JsError> {
    let mut cache = COMPILED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((version, bytes)) = cache.as_ref() {
        if version == &deployed.version {
            return Ok(bytes.clone());
        }
    }
    let modules: Vec<(String, String)> = deployed
        .bundle
        .modules
        .iter()
        .map(|m| (m.name.trim_start_matches('/').to_string(), m.module.clone()))
        .collect();
    let bytes = std::sync::Arc::new(crate::js::compile(&modules)?);
    *cache = Some((deployed.version.clone(), bytes.clone()));
    Ok(bytes)
}

fn matches(template: &str, path: &str) -> Option<BTreeMap<String, String>> {
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    if t.len() != p.len() {
        return None;
    }
    let mut params = BTreeMap::new();
    for (ts, ps) in t.iter().zip(p.iter()) {
        match ts.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => {
                let value = percent_decode(ps)?;
                params.insert(name.to_string(), value);
            }
            None if ts == ps => {}
            None => return None,
        }
    }
    Some(params)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The endpoint of `deployed` for `method` and `path` (relative to `/app`): its template, spec and parameters.
/// `Err(true)` when the path exists with other methods (405), `Err(false)` when it does not (404).
fn find(
    deployed: &Deployed,
    method: &Method,
    path: &str,
) -> Result<(String, EndpointSpec, BTreeMap<String, String>), bool> {
    let mut path_exists = false;
    for template in &deployed.templates {
        let Some(params) = matches(template, path) else {
            continue;
        };
        path_exists = true;
        let methods = &deployed.bundle.metadata.endpoints[template];
        if let Some(spec) = methods.get(&method.as_str().to_lowercase()) {
            return Ok((template.clone(), spec.clone(), params));
        }
    }
    Err(path_exists)
}

/// The parsed bundle, keyed by the seqno that wrote it (parsing it per request would cost more than the request).
static PARSED: std::sync::Mutex<Option<(u64, Arc<Deployed>)>> = std::sync::Mutex::new(None);

fn load(tx: &mut Tx) -> Result<Option<Arc<Deployed>>, ApiError> {
    let version = tx.version_of(maps::JS_APP, b"");
    if let Some(v) = version {
        if let Some((cached, deployed)) = PARSED.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if *cached == v {
                return Ok(Some(deployed.clone()));
            }
        }
    }
    let Some(raw) = tx.get(maps::JS_APP, b"") else {
        return Ok(None);
    };
    let deployed = Arc::new(parse(&raw)?);
    if let Some(v) = version {
        *PARSED.lock().unwrap_or_else(|p| p.into_inner()) = Some((v, deployed.clone()));
    }
    Ok(Some(deployed))
}

/// An endpoint found for a request: its path template, spec and path parameters.
type Matched = (String, EndpointSpec, BTreeMap<String, String>);

struct Call {
    method: Method,
    path: String,
    request_template: serde_json::Value,
    body: bytes::Bytes,
    primary: bool,
    /// The endpoint matched before the transaction, with the app version it was matched in.
    matched: Option<(u64, Matched)>,
    /// The authentication policies the caller was checked against.
    policies: Vec<String>,
}

/// What a JS request produced.
struct JsOutcome {
    response: HandlerResponse,
}

fn js_failure(e: JsError) -> ApiError {
    let message = match &e {
        JsError::Exception { message, stack } => match stack {
            Some(stack) if !stack.is_empty() => format!("JavaScript exception: {message}\n{stack}"),
            _ => format!("JavaScript exception: {message}"),
        },
        other => other.to_string(),
    };
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
}

fn run_in_tx(
    tx: &mut Tx,
    call: &Call,
    limits: JsLimits,
    last_committed: (u64, u64),
) -> Result<JsOutcome, ApiError> {
    let version = tx.version_of(maps::JS_APP, b"");
    let deployed =
        load(tx)?.ok_or_else(|| ApiError::not_found("no such endpoint (no JavaScript app is deployed)"))?;
    // The endpoint matched before the transaction stands if the app is the same version; else match again.
    let pre = call
        .matched
        .as_ref()
        .filter(|(v, _)| Some(*v) == version)
        .map(|(_, m)| m.clone());
    let (template, spec, params) = pre
        .map(Ok)
        .unwrap_or_else(|| find(&deployed, &call.method, &call.path))
        .map_err(|path_exists| {
            if path_exists {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "method not allowed on this endpoint",
                )
            } else {
                ApiError::not_found(format!("no such endpoint: {} /app{}", call.method, call.path))
            }
        })?;
    // The app changed since the caller was authenticated: authenticate again against the version that runs.
    if spec.authn_policies != call.policies {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "AppChanged",
            "the application changed while this request was authenticated; retry",
        ));
    }
    if spec.forwarding_required.as_deref() == Some("always") && !call.primary {
        return Err(ApiError::not_primary());
    }
    let mut request = call.request_template.clone();
    request["params"] = json!(params);
    request["route"] = json!(template);
    let request_json = request.to_string();
    let before = tx.clone();
    let result = ENGINE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.as_ref().map(|(v, _)| v != &deployed.version).unwrap_or(true) {
            let bytecode = compiled(&deployed).map_err(js_failure)?;
            let engine = Engine::from_bytecode(limits, &bytecode).map_err(js_failure)?;
            *cached = Some((deployed.version.clone(), engine));
        }
        let (_, engine) = cached.as_ref().ok_or_else(|| ApiError::internal("no engine"))?;
        let module = spec.js_module.trim_start_matches('/');
        let r = engine.call_handler(tx, KvPolicy::Application, last_committed, module, &spec.js_function, HandlerRequest { json: &request_json, body: &call.body });
        if matches!(r, Err(JsError::Timeout(_)) | Err(JsError::OutOfMemory(_))) {
            // A stopped script can leave the runtime in any state: start afresh next time.
            *cached = None;
        }
        r.map_err(|e| {
            let forbidden = matches!(&e, JsError::Exception { message, .. } if message.contains("belongs to the framework") || message.contains("internal to the framework"));
            if forbidden {
                ApiError::forbidden(format!("JavaScript exception: {e}"))
            } else {
                js_failure(e)
            }
        })
    });
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            *tx = before;
            return Err(e);
        }
    };
    let ok = (200..300).contains(&response.status);
    if !ok && response.apply_writes != Some(true) || response.apply_writes == Some(false) {
        *tx = before;
    }
    if spec.mode.as_deref() == Some("readonly") && !tx.is_read_only() {
        return Err(ApiError::internal(format!(
            "{} {template} is readonly but its handler wrote",
            call.method
        )));
    }
    if spec.forwarding_required.as_deref() == Some("never") && !call.primary && !tx.is_read_only() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotPrimary",
            "this endpoint is never forwarded and writes: call the primary",
        ));
    }
    Ok(JsOutcome { response })
}

fn caller(
    app: &AppState,
    state: &synod_kv::State,
    peer: &Peer,
    policies: &[String],
) -> Result<serde_json::Value, ApiError> {
    if policies.is_empty() || policies.iter().any(|p| p == "no_auth") {
        return Ok(serde_json::Value::Null);
    }
    let mut last_error = ApiError::unauthorized("no authentication policy of this endpoint is satisfied");
    for policy in policies {
        let attempt = match policy.as_str() {
            "user_cert" => app
                .authenticate_user_in(state, peer)
                .map(|u| (u.id, maps::USERS_CERTS, maps::USERS_INFO, "user_data")),
            "member_cert" => app
                .authenticate_member_in(state, peer)
                .map(|u| (u.id, maps::MEMBERS_CERTS, maps::MEMBERS_INFO, "member_data")),
            "any_cert" => match &peer.cert_id {
                Some(id) => Ok((id.clone(), "", "", "")),
                None => Err(ApiError::unauthorized(
                    "this endpoint requires a TLS client certificate",
                )),
            },
            other => Err(ApiError::internal(format!(
                "unsupported authentication policy {other:?}"
            ))),
        };
        match attempt {
            Ok((id, certs, info, data_field)) => {
                let cert = state
                    .get(certs, id.as_bytes())
                    .map(|c| String::from_utf8_lossy(c).to_string());
                let data = state
                    .get(info, id.as_bytes())
                    .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                    .map(|v| v[data_field].clone())
                    .unwrap_or(serde_json::Value::Null);
                return Ok(json!({ "policy": policy, "id": id, "data": data, "cert": cert }));
            }
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

type JobResult = Result<(JsOutcome, crate::core::Outcome), crate::service::ExecError<ApiError>>;

/// One request for a JavaScript worker.
struct Job {
    node: std::sync::Arc<crate::service::Node>,
    call: Call,
    limits: JsLimits,
    committed: (u64, u64),
    reply: tokio::sync::oneshot::Sender<JobResult>,
}

/// Requests waiting for one JavaScript worker at most. Each waits for those before it (each bounded by
/// --js-time-ms-max); beyond this a client is better told to come back than kept waiting, and the node's memory
/// must not grow with a flood of requests.
const JS_QUEUE_PER_WORKER: usize = 16;
/// `Retry-After` when every worker's queue is full, in seconds.
const JS_BUSY_RETRY_AFTER_S: u32 = 1;

/// JavaScript workers: a fixed set of threads, each with its engine (kept across requests until the app changes).
/// Handlers are bounded by --js-time-ms-max, so a stuck handler holds one worker for at most that long; native
/// endpoints and consensus never wait for them.
struct Pool<J> {
    /// One bounded queue per worker (round-robin): no lock is shared between workers waiting for work.
    workers: Vec<std::sync::mpsc::SyncSender<J>>,
    next: std::sync::atomic::AtomicUsize,
}

impl<J> Pool<J> {
    /// Queues `job` for the next worker, or the first one after it with room; `503 ServiceBusy` with
    /// `Retry-After` when every queue is full.
    fn send(&self, job: J) -> Result<(), ApiError> {
        let n = self.workers.len();
        if n == 0 {
            return Err(ApiError::internal("no JavaScript worker"));
        }
        let first = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
        let mut job = job;
        let mut stopped = 0;
        for i in (first..n).chain(0..first) {
            match self.workers[i].try_send(job) {
                Ok(()) => return Ok(()),
                Err(std::sync::mpsc::TrySendError::Full(j)) => job = j,
                Err(std::sync::mpsc::TrySendError::Disconnected(j)) => {
                    stopped += 1;
                    job = j;
                }
            }
        }
        if stopped == n {
            return Err(ApiError::internal("the JavaScript workers stopped"));
        }
        Err(ApiError::busy(
            "ServiceBusy",
            format!(
                "every JavaScript worker has {JS_QUEUE_PER_WORKER} requests waiting; retry after {JS_BUSY_RETRY_AFTER_S} s"
            ),
            JS_BUSY_RETRY_AFTER_S,
        ))
    }
}

fn pool() -> &'static Pool<Job> {
    static POOL: std::sync::OnceLock<Pool<Job>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let count = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2) * 2;
        let mut workers = Vec::new();
        for i in 0..count {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(JS_QUEUE_PER_WORKER);
            let spawned = std::thread::Builder::new()
                .name(format!("js-{i}"))
                .spawn(move || {
                    for Job {
                        node,
                        call,
                        limits,
                        committed,
                        reply,
                    } in rx
                    {
                        let result = node.execute(|tx| run_in_tx(tx, &call, limits, committed));
                        let _ = reply.send(result);
                    }
                });
            match spawned {
                Ok(_) => workers.push(tx),
                Err(e) => tracing::error!("cannot start JavaScript worker {i}: {e}"),
            }
        }
        Pool {
            workers,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    })
}

/// Serves a request under `/app` that no native route took.
pub async fn dispatch(State(app): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let peer = parts.extensions.get::<Peer>().cloned().unwrap_or_default();
    let Some(path) = parts.uri.path().strip_prefix("/app").map(str::to_string) else {
        return Err(ApiError::not_found("no such endpoint"));
    };
    let (state, primary, committed) = {
        let core = app.node.core();
        (core.snapshot(), core.is_primary(), core.committed())
    };
    // Match once here (for the authentication policy); the transaction re-matches only if the app changed since.
    let mut probe = Tx::new(state.clone());
    let version = probe.version_of(maps::JS_APP, b"");
    let matched = load(&mut probe)?.and_then(|d| find(&d, &parts.method, &path).ok());
    let policies: Vec<String> = matched
        .as_ref()
        .map(|(_, spec, _)| spec.authn_policies.clone())
        .unwrap_or_default();
    let caller = caller(&app, &state, &peer, &policies)?;
    if !crate::rpc::service_open(&state) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceNotOpen",
            "the service is not open yet",
        ));
    }
    let body = extract::body_bytes(body, app.max_body_bytes).await?;
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_string(), json!(v))))
        .collect();
    let template = json!({
        "headers": headers,
        "query": parts.uri.query().unwrap_or(""),
        "url": parts.uri.to_string(),
        "method": parts.method.as_str(),
        "path": format!("/app{path}"),
        "caller": caller,
    });
    let node = app.node.clone();
    let limits = node.js_limits();
    let call = Call {
        method: parts.method.clone(),
        path,
        request_template: template,
        body,
        primary,
        matched: version.zip(matched),
        policies,
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    pool().send(Job {
        node,
        call,
        limits,
        committed: (committed.view, committed.seqno),
        reply,
    })?;
    let result = answer
        .await
        .map_err(|_| ApiError::internal("the JavaScript worker stopped"))?;
    let (outcome, ordered) = result.map_err(ApiError::from)?;
    Ok(with_tx_id(ordered.tx_id(), respond(outcome.response)))
}

fn respond(r: HandlerResponse) -> Response {
    let mut headers = HeaderMap::new();
    let default_type = match r.kind.as_str() {
        "json" => Some("application/json"),
        "text" => Some("text/plain"),
        "binary" => Some("application/octet-stream"),
        _ => None,
    };
    if let Some(t) = default_type {
        headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static(t));
    }
    for (k, v) in &r.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.to_lowercase().as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.insert(name, value);
        }
    }
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, headers, Body::from(r.body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates_match_with_parameters() {
        assert_eq!(
            matches("/log/{id}", "/log/42").map(|p| p["id"].clone()),
            Some("42".into())
        );
        assert_eq!(
            matches("/log/{id}", "/log/a%20b").map(|p| p["id"].clone()),
            Some("a b".into())
        );
        assert!(matches("/log/{id}", "/log").is_none());
        assert!(matches("/log/private", "/log/public").is_none());
        assert!(matches("/a/b", "/a/b").is_some());
    }

    #[test]
    fn templates_without_parameters_match_first() {
        // "/log/{id}" sorts before "/log/~" by bytes: the literal template must still win.
        let raw = json!({
            "bundle": {
                "metadata": { "endpoints": {
                    "/log/{id}": { "get": { "js_module": "m", "js_function": "byId" } },
                    "/log/~": { "get": { "js_module": "m", "js_function": "tilde" } },
                } },
                "modules": [],
            },
            "version": "1",
        });
        let deployed = parse(raw.to_string().as_bytes()).unwrap();
        let found = |path: &str| find(&deployed, &Method::GET, path).map(|(_, spec, _)| spec.js_function);
        assert_eq!(found("/log/~"), Ok("tilde".to_string()));
        assert_eq!(found("/log/7"), Ok("byId".to_string()));
        assert_eq!(find(&deployed, &Method::POST, "/log/7").err(), Some(true));
        assert_eq!(find(&deployed, &Method::GET, "/nowhere").err(), Some(false));
    }

    #[test]
    fn full_js_worker_queues_answer_busy_instead_of_growing() {
        // Two workers that never take their work (as when every handler runs to its time limit).
        let (queues, _stalled): (Vec<_>, Vec<_>) = (0..2)
            .map(|_| std::sync::mpsc::sync_channel::<u32>(JS_QUEUE_PER_WORKER))
            .unzip();
        let pool = Pool {
            workers: queues,
            next: std::sync::atomic::AtomicUsize::new(0),
        };
        for job in 0..2 * JS_QUEUE_PER_WORKER as u32 {
            pool.send(job).expect("room in some queue");
        }
        let err = pool.send(0).expect_err("every queue is full");
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.code, "ServiceBusy");
        assert_eq!(err.retry_after_s, Some(JS_BUSY_RETRY_AFTER_S));
        let response = err.into_response();
        assert_eq!(
            response.headers().get(axum::http::header::RETRY_AFTER),
            Some(&HeaderValue::from(JS_BUSY_RETRY_AFTER_S))
        );
    }
}
