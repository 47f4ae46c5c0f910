//! JavaScript applications: a bundle in CCF's format (`app.json` endpoints + ES modules), deployed by a
//! `set_js_app` proposal into `public:ccf.gov.js_app`, served under `/app/...` by every node.
//!
//! ```text
//!  /app/<path> (no native route) ─▶ auth (authn_policies) ─▶ inline on this async worker, in a CPU slice
//!      │                                                    (or a JS worker thread: slice used up, endpoint
//!      │                                                     demoted, historical read, bundle not compiled yet)
//!      ▼
//!  execute(tx): bundle = tx.get(js_app) ─▶ endpoint (method, path template) ─▶ engine for this bundle version
//!      (cached per thread) ─▶ handler(request) ─▶ {statusCode, headers, body}; not 2xx ⇒ its writes are discarded
//! ```
//!
//! The bundle is read inside the request's own transaction, so a request runs entirely on one version of the app
//! and replacing the app is atomic. Engines (QuickJS runtime + compiled modules) are reused across requests on the
//! same thread until the app changes; one that was stopped (time or heap limit, slice) is thrown away.
//!
//! **Inline first.** Handing every request to a worker thread and back cost more than most handlers (two thread
//! wake-ups per request on a loaded machine). A request therefore runs first on the async worker that received it,
//! with a CPU slice ([`INLINE_SLICE`]): a handler that needs more is stopped, its transaction dropped (as after an
//! OCC conflict, nothing it did is visible) and run again on a JS worker with its full time limit, and its
//! endpoint goes to the workers directly for [`DEMOTION_MS`]. An async worker is thus held at most one slice per
//! request, and a slow or looping endpoint costs it one slice per demotion period.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use synod_core::maps;
use synod_kv::Tx;

use crate::js::{
    BodyKind, Compiled, Engine, HandlerCaller, HandlerRequest, HandlerResponse, HistoricalRefusal,
    HistoricalSource, HistoricalVersion, JsError, JsLimits, KvPolicy, VersionPage,
};
use crate::rpc::{extract, with_tx_id, ApiError, AppState, Peer};
use crate::service::{Attempt, ExecError, Node};

/// CPU time a handler may use on the async worker that received its request before it is handed to a JS worker.
/// Short enough that the async worker's other connections barely notice; long enough for what handlers usually
/// do (the logging app's write takes ~20 µs).
pub const INLINE_SLICE: Duration = Duration::from_millis(2);
/// How long an endpoint whose handler used up its slice goes straight to the JS workers, in milliseconds.
pub const DEMOTION_MS: u64 = 1000;

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
    /// The endpoint's OpenAPI operation object (CCF's `openapi`), merged into `GET /app/api`.
    #[serde(default)]
    pub openapi: Option<serde_json::Value>,
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

#[derive(Debug, Deserialize)]
struct Deployed {
    bundle: BundleSpec,
    version: String,
    /// The endpoints' paths in the order requests are matched against them (set by [`parse`]).
    #[serde(skip)]
    routes: Vec<Route>,
}

/// One path of the bundle, split once for matching.
#[derive(Debug)]
struct Route {
    template: String,
    segments: Vec<Segment>,
    /// Lower-case method → endpoint.
    methods: BTreeMap<String, Arc<Endpoint>>,
}

#[derive(Debug)]
enum Segment {
    Literal(String),
    Param(String),
}

/// An endpoint of the deployed version, with what this node learned about its handler.
#[derive(Debug)]
struct Endpoint {
    spec: EndpointSpec,
    /// Until when (ms of [`uptime_ms`]) requests go straight to the JS workers: its handler used up its slice.
    demoted_until_ms: AtomicU64,
}

/// Milliseconds since the first call (a monotonic clock for demotions).
fn uptime_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn parse(raw: &[u8]) -> Result<Deployed, ApiError> {
    let mut deployed: Deployed = serde_json::from_slice(raw)
        .map_err(|e| ApiError::internal(format!("the deployed JavaScript app does not parse: {e}")))?;
    deployed.routes = deployed
        .bundle
        .metadata
        .endpoints
        .iter()
        .map(|(template, methods)| Route {
            template: template.clone(),
            segments: template
                .trim_matches('/')
                .split('/')
                .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => Segment::Param(name.to_string()),
                    None => Segment::Literal(s.to_string()),
                })
                .collect(),
            methods: methods
                .iter()
                .map(|(method, spec)| {
                    let endpoint = Endpoint {
                        spec: spec.clone(),
                        demoted_until_ms: AtomicU64::new(0),
                    };
                    (method.to_lowercase(), Arc::new(endpoint))
                })
                .collect(),
        })
        .collect();
    // Templates without parameters first, so `/accounts/total` wins over `/accounts/{id}`.
    deployed.routes.sort_by_key(|r| r.template.matches('{').count());
    Ok(deployed)
}

thread_local! {
    static ENGINE: RefCell<Option<(String, Engine)>> = const { RefCell::new(None) };
}

/// Bytecode of the current app version, compiled once per process and shared by every thread's engine.
static COMPILED: std::sync::Mutex<Option<(String, Arc<Compiled>)>> = std::sync::Mutex::new(None);

/// The bytecode of `deployed`, if it was compiled already.
fn compiled_already(deployed: &Deployed) -> Option<Arc<Compiled>> {
    let cache = COMPILED.lock().unwrap_or_else(|p| p.into_inner());
    cache
        .as_ref()
        .filter(|(version, _)| version == &deployed.version)
        .map(|(_, bytes)| bytes.clone())
}

fn compiled(deployed: &Deployed) -> Result<Arc<Compiled>, JsError> {
    if let Some(bytes) = compiled_already(deployed) {
        return Ok(bytes);
    }
    let modules: Vec<(String, String)> = deployed
        .bundle
        .modules
        .iter()
        .map(|m| (m.name.trim_start_matches('/').to_string(), m.module.clone()))
        .collect();
    let bytes = Arc::new(crate::js::compile(&modules)?);
    *COMPILED.lock().unwrap_or_else(|p| p.into_inner()) = Some((deployed.version.clone(), bytes.clone()));
    Ok(bytes)
}

/// The path parameters of `path` (split at `/`) if it matches `route`.
fn matches(route: &Route, path: &[&str]) -> Option<Vec<(String, String)>> {
    if route.segments.len() != path.len() {
        return None;
    }
    let mut params = Vec::new();
    for (segment, part) in route.segments.iter().zip(path) {
        match segment {
            Segment::Param(name) => params.push((name.clone(), percent_decode(part)?)),
            Segment::Literal(literal) if literal == part => {}
            Segment::Literal(_) => return None,
        }
    }
    Some(params)
}

fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
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

/// An endpoint found for a request.
#[derive(Clone, Debug)]
struct Matched {
    /// Index of its path in [`Deployed::routes`].
    route: usize,
    endpoint: Arc<Endpoint>,
    /// The path parameters.
    params: Vec<(String, String)>,
}

/// The endpoint of `deployed` for `method` and `path` (relative to `/app`).
/// `Err(true)` when the path exists with other methods (405), `Err(false)` when it does not (404).
fn find(deployed: &Deployed, method: &Method, path: &str) -> Result<Matched, bool> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = method.as_str().to_ascii_lowercase();
    let mut path_exists = false;
    for (i, route) in deployed.routes.iter().enumerate() {
        let Some(params) = matches(route, &parts) else {
            continue;
        };
        path_exists = true;
        if let Some(endpoint) = route.methods.get(&method) {
            return Ok(Matched {
                route: i,
                endpoint: endpoint.clone(),
                params,
            });
        }
    }
    Err(path_exists)
}

/// The parsed bundle, keyed by the seqno that wrote it (parsing it per request would cost more than the request).
static PARSED: std::sync::Mutex<Option<(u64, Arc<Deployed>)>> = std::sync::Mutex::new(None);

/// The bundle written at seqno `version` (`raw` its bytes, read only when it is not cached).
fn parsed(
    version: Option<u64>,
    raw: impl FnOnce() -> Option<Vec<u8>>,
) -> Result<Option<Arc<Deployed>>, ApiError> {
    if let Some(v) = version {
        if let Some((cached, deployed)) = PARSED.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if *cached == v {
                return Ok(Some(deployed.clone()));
            }
        }
    }
    let Some(raw) = raw() else {
        return Ok(None);
    };
    let deployed = Arc::new(parse(&raw)?);
    if let Some(v) = version {
        *PARSED.lock().unwrap_or_else(|p| p.into_inner()) = Some((v, deployed.clone()));
    }
    Ok(Some(deployed))
}

/// The deployed app as `tx` sees it (the read is recorded: replacing the app conflicts with this transaction),
/// with the seqno that wrote it.
fn load(tx: &mut Tx) -> Result<(Option<u64>, Option<Arc<Deployed>>), ApiError> {
    let version = tx.version_of(maps::JS_APP, b"");
    let deployed = parsed(version, || tx.get(maps::JS_APP, b""))?;
    Ok((version, deployed))
}

/// The deployed app in `state`, with the seqno that wrote it (outside any transaction).
fn load_state(state: &synod_kv::State) -> Result<(Option<u64>, Option<Arc<Deployed>>), ApiError> {
    let entry = state.entry(maps::JS_APP, b"");
    let version = entry.map(|e| e.version);
    let deployed = parsed(version, || entry.map(|e| e.value.to_vec()))?;
    Ok((version, deployed))
}

/// OpenAPI path items of the deployed bundle's endpoints (`/app` + each template), for `GET /app/api`: each
/// operation is documented from its metadata (authentication) and its own `openapi` object, merged over it. An
/// undeployed or unreadable bundle documents nothing.
pub fn openapi_paths(state: &synod_kv::State) -> serde_json::Map<String, serde_json::Value> {
    let mut paths = serde_json::Map::new();
    let Ok((_, Some(deployed))) = load_state(state) else {
        return paths;
    };
    for (template, methods) in &deployed.bundle.metadata.endpoints {
        let path = format!("/app{template}");
        let mut item = serde_json::Map::new();
        for (method, spec) in methods {
            let security: Vec<serde_json::Value> = spec
                .authn_policies
                .iter()
                .filter(|p| p.as_str() != "no_auth")
                .map(|p| serde_json::json!({ p.clone(): [] }))
                .collect();
            let mut op = serde_json::json!({
                "operationId": crate::rpc::openapi::operation_id(method, &path),
                "summary": format!("{}.{} (JavaScript)", spec.js_module, spec.js_function),
                "parameters": crate::rpc::openapi::path_parameters(&path),
                "security": security,
                "responses": crate::rpc::openapi::responses(),
            });
            if let (Some(own), Some(op)) = (
                spec.openapi.as_ref().and_then(|v| v.as_object()),
                op.as_object_mut(),
            ) {
                for (k, v) in own {
                    op.insert(k.clone(), v.clone());
                }
            }
            item.insert(method.to_lowercase(), op);
        }
        paths.insert(path, serde_json::Value::Object(item));
    }
    paths
}

struct Call {
    method: Method,
    /// The path relative to `/app`.
    path: String,
    /// The whole path (`request.path`).
    app_path: String,
    url: String,
    query: String,
    headers: HeaderMap,
    caller: Option<HandlerCaller>,
    body: bytes::Bytes,
    primary: bool,
    /// The endpoint matched before the transaction, with the app version it was matched in.
    matched: Option<(u64, Matched)>,
}

impl Call {
    /// The authentication policies the caller was checked against.
    fn policies(&self) -> &[String] {
        self.matched
            .as_ref()
            .map_or(&[], |(_, m)| m.endpoint.spec.authn_policies.as_slice())
    }
}

/// Where a call runs.
enum Mode {
    /// On the async worker that received the request, within a CPU slice; `deferred` is set if the handler asked
    /// for something an async worker must not wait for (a historical read).
    Inline { deferred: Rc<Cell<bool>> },
    /// On a JS worker, with the full time limit.
    Worker,
}

/// Why a call did not produce a response.
enum RunError {
    /// Answer the client with this.
    Api(ApiError),
    /// Run it again on a JS worker (inline only): the handler used up its slice (`demote`: its endpoint, whose
    /// next requests go straight to the workers for a while), or read history, or the bundle is not compiled yet.
    Defer {
        /// The endpoint to demote.
        demote: Option<Arc<Endpoint>>,
    },
}

impl From<ApiError> for RunError {
    fn from(e: ApiError) -> RunError {
        RunError::Api(e)
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> ApiError {
        match e {
            RunError::Api(e) => e,
            RunError::Defer { .. } => ApiError::internal("a JavaScript call was deferred but not run again"),
        }
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Api(e) => write!(f, "{}", e.message),
            RunError::Defer { .. } => write!(f, "deferred to a JavaScript worker"),
        }
    }
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

/// Runs a handler, timing it for `synod_js_execution_seconds`.
fn timed<T>(node: &Node, run: impl FnOnce() -> T) -> T {
    let started = std::time::Instant::now();
    let result = run();
    node.metrics.js_run(started.elapsed());
    result
}

/// The endpoint `call` asks for: matched before the transaction if the app is the same version, else again.
fn matched(call: &Call, version: Option<u64>, deployed: &Deployed) -> Result<Matched, ApiError> {
    let pre = call
        .matched
        .as_ref()
        .filter(|(v, _)| Some(*v) == version)
        .map(|(_, m)| m.clone());
    match pre {
        Some(m) => Ok(m),
        None => find(deployed, &call.method, &call.path).map_err(|path_exists| {
            if path_exists {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "method not allowed on this endpoint",
                )
            } else {
                ApiError::not_found(format!("no such endpoint: {} /app{}", call.method, call.path))
            }
        }),
    }
}

/// Runs the handler in this thread's engine for the deployed version (compiled or made afresh as needed); a
/// stopped script discards the engine, and inline calls that run out of their slice are deferred.
fn run_engine(
    tx: &mut Tx,
    deployed: &Deployed,
    endpoint: &Arc<Endpoint>,
    request: HandlerRequest<'_>,
    (limits, last_committed, slice): (JsLimits, (u64, u64), Option<Duration>),
    mode: &Mode,
) -> Result<HandlerResponse, RunError> {
    let spec = &endpoint.spec;
    ENGINE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.as_ref().map(|(v, _)| v != &deployed.version).unwrap_or(true) {
            *cached = None;
            let bytecode = match mode {
                // Compiling a bundle is not bounded by a slice: leave it to a worker.
                Mode::Inline { .. } => compiled_already(deployed).ok_or(RunError::Defer { demote: None })?,
                Mode::Worker => compiled(deployed).map_err(js_failure)?,
            };
            let engine = Engine::from_bytecode(limits, &bytecode).map_err(js_failure)?;
            *cached = Some((deployed.version.clone(), engine));
        }
        let (_, engine) = cached.as_ref().ok_or_else(|| ApiError::internal("no engine"))?;
        let module = spec.js_module.trim_start_matches('/');
        let r = engine.call_handler(
            tx,
            KvPolicy::Application,
            last_committed,
            module,
            &spec.js_function,
            request,
            slice,
        );
        if matches!(
            r,
            Err(JsError::Timeout(_)) | Err(JsError::OutOfMemory(_)) | Err(JsError::SliceExpired(_))
        ) {
            // A stopped script can leave the runtime in any state: start afresh next time.
            *cached = None;
        }
        if let Mode::Inline { deferred } = mode {
            if let Err(JsError::SliceExpired(_)) = r {
                return Err(RunError::Defer {
                    demote: Some(endpoint.clone()),
                });
            }
            if deferred.get() {
                return Err(RunError::Defer { demote: None });
            }
        }
        r.map_err(|e| {
            let forbidden = matches!(&e, JsError::Exception { message, .. } if message.contains("belongs to the framework") || message.contains("internal to the framework"));
            if forbidden {
                RunError::Api(ApiError::forbidden(format!("JavaScript exception: {e}")))
            } else {
                RunError::Api(js_failure(e))
            }
        })
    })
}

fn run_in_tx(
    tx: &mut Tx,
    call: &Call,
    limits: JsLimits,
    last_committed: (u64, u64),
    mode: &Mode,
) -> Result<HandlerResponse, RunError> {
    let (version, deployed) = load(tx)?;
    let deployed =
        deployed.ok_or_else(|| ApiError::not_found("no such endpoint (no JavaScript app is deployed)"))?;
    // The endpoint matched before the transaction stands if the app is the same version; else match again.
    let Matched {
        route,
        endpoint,
        params,
    } = matched(call, version, &deployed)?;
    let spec = &endpoint.spec;
    let template = deployed
        .routes
        .get(route)
        .map(|r| r.template.as_str())
        .ok_or_else(|| ApiError::internal("matched a route the app does not have"))?;
    // The app changed since the caller was authenticated: authenticate again against the version that runs.
    if spec.authn_policies != call.policies() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "AppChanged",
            "the application changed while this request was authenticated; retry",
        )
        .into());
    }
    if spec.forwarding_required.as_deref() == Some("always") && !call.primary {
        return Err(ApiError::not_primary().into());
    }
    let slice = match mode {
        Mode::Inline { .. } => Some(INLINE_SLICE),
        Mode::Worker => None,
    };
    let request = HandlerRequest {
        method: call.method.as_str(),
        url: &call.url,
        path: &call.app_path,
        query: &call.query,
        route: template,
        headers: &call.headers,
        params: &params,
        caller: call.caller.as_ref(),
        body: &call.body,
    };
    let before = tx.clone();
    let result = run_engine(
        tx,
        &deployed,
        &endpoint,
        request,
        (limits, last_committed, slice),
        mode,
    );
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
        ))
        .into());
    }
    if spec.forwarding_required.as_deref() == Some("never") && !call.primary && !tx.is_read_only() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotPrimary",
            "this endpoint is never forwarded and writes: call the primary",
        )
        .into());
    }
    Ok(response)
}

/// `ccf.historical` for a call on an async worker: historical reads may wait on the ledger files, which an async
/// worker must not, so the first one marks the call to be run again on a JS worker (whatever the handler does with
/// the refusal, its outcome is dropped).
struct DeferHistorical(Rc<Cell<bool>>);

impl DeferHistorical {
    fn refuse(&self) -> HistoricalRefusal {
        self.0.set(true);
        HistoricalRefusal {
            status: 503,
            code: "HistoricalReadBusy".into(),
            message: "retrying on a JavaScript worker".into(),
        }
    }
}

impl HistoricalSource for DeferHistorical {
    fn value_at(&self, _: &str, _: &[u8], _: u64) -> Result<Option<HistoricalVersion>, HistoricalRefusal> {
        Err(self.refuse())
    }

    fn versions(
        &self,
        _: &str,
        _: &[u8],
        _: u64,
        _: u64,
        _: usize,
    ) -> Result<VersionPage, HistoricalRefusal> {
        Err(self.refuse())
    }

    fn receipt(&self, _: u64, _: u64) -> Result<String, HistoricalRefusal> {
        Err(self.refuse())
    }
}

fn caller(
    app: &AppState,
    state: &synod_kv::State,
    peer: &Peer,
    policies: &[String],
) -> Result<Option<HandlerCaller>, ApiError> {
    if policies.is_empty() || policies.iter().any(|p| p == "no_auth") {
        return Ok(None);
    }
    let mut last_error = None;
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
                    .map(|c| String::from_utf8_lossy(c).into_owned());
                let data_json = state
                    .get(info, id.as_bytes())
                    .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                    .map(|v| v[data_field].clone())
                    .filter(|v| !v.is_null())
                    .map(|v| v.to_string());
                return Ok(Some(HandlerCaller {
                    policy: policy.clone(),
                    id,
                    data_json,
                    cert,
                }));
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error
        .unwrap_or_else(|| ApiError::unauthorized("no authentication policy of this endpoint is satisfied")))
}

/// What running a call produced (the response and the transaction's outcome), or why it did not.
type JobResult = Result<(HandlerResponse, crate::consensus::machine::Outcome), ExecError<RunError>>;

/// One request for a JavaScript worker.
struct Job {
    node: Arc<crate::service::Node>,
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
                        let result = crate::apps::history::with_node_history(&node, || {
                            node.execute(|tx| {
                                timed(&node, || run_in_tx(tx, &call, limits, committed, &Mode::Worker))
                            })
                        });
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

/// Runs `call` on this (async worker) thread within [`INLINE_SLICE`]; `None` when it must run on a JS worker
/// instead: its handler used up its slice (its endpoint is then demoted) or read history, or the bundle is not
/// compiled yet. The handler runs synchronously (its engine lives on this thread); ordering its writes is awaited,
/// so the async worker serves other connections meanwhile.
async fn run_inline(
    node: &Arc<crate::service::Node>,
    call: &Call,
    limits: JsLimits,
    committed: (u64, u64),
) -> Option<JobResult> {
    for _ in 0..crate::service::CONFLICT_RETRIES_MAX {
        // Everything that is not Send (the engine, the deferral flag) lives and dies inside this block.
        let attempt = {
            let deferred = Rc::new(Cell::new(false));
            let mode = Mode::Inline {
                deferred: deferred.clone(),
            };
            crate::js::with_historical(Rc::new(DeferHistorical(deferred.clone())), || {
                node.attempt(&mut |tx: &mut Tx| timed(node, || run_in_tx(tx, call, limits, committed, &mode)))
            })
        };
        let (response, tx) = match attempt {
            Ok(Attempt::Done(response, outcome)) => return Some(Ok((response, outcome))),
            Ok(Attempt::Order(response, tx)) => (response, tx),
            Err(ExecError::Handler(RunError::Defer { demote })) => {
                if let Some(endpoint) = demote {
                    demote_endpoint(&endpoint);
                }
                return None;
            }
            Err(e) => return Some(Err(e)),
        };
        match node.order_async(tx).await {
            Ok(Some(outcome)) => return Some(Ok((response, outcome))),
            Ok(None) => continue,
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Err(ExecError::TooManyConflicts))
}

/// The handler used up its slice: its endpoint's next requests go straight to the workers for a while.
fn demote_endpoint(endpoint: &Endpoint) {
    let until = uptime_ms().saturating_add(DEMOTION_MS);
    if endpoint.demoted_until_ms.swap(until, Ordering::Relaxed) < uptime_ms() {
        tracing::info!(
            module = %endpoint.spec.js_module,
            function = %endpoint.spec.js_function,
            "a JavaScript handler used up its {} µs inline slice: its endpoint runs on the JS workers for {DEMOTION_MS} ms",
            INLINE_SLICE.as_micros()
        );
    }
}

/// Serves a request under `/app` that no native route took.
pub async fn dispatch(State(app): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let Some(path) = parts.uri.path().strip_prefix("/app").map(str::to_string) else {
        return Err(ApiError::not_found("no such endpoint"));
    };
    let (primary, committed, version, matched, caller) = {
        // The snapshot is dropped before the handler runs: holding it would keep every version the primary
        // makes meanwhile alive, and make this task free them.
        let (state, primary, committed) = {
            let view = app.node.view();
            (view.state.clone(), view.is_primary, view.committed)
        };
        // Match once here (for the authentication policy); the transaction re-matches only if the app changed
        // since.
        let (version, deployed) = load_state(&state)?;
        let matched = deployed.and_then(|d| find(&d, &parts.method, &path).ok());
        let policies = matched
            .as_ref()
            .map_or(&[][..], |m| m.endpoint.spec.authn_policies.as_slice());
        let default_peer;
        let peer = match parts.extensions.get::<Peer>() {
            Some(peer) => peer,
            None => {
                default_peer = Peer::default();
                &default_peer
            }
        };
        let caller = caller(&app, &state, peer, policies)?;
        if !crate::rpc::service_open(&state) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceNotOpen",
                "the service is not open yet",
            ));
        }
        (primary, committed, version, matched, caller)
    };
    let body = extract::body_bytes(body, app.max_body_bytes).await?;
    let node = app.node.clone();
    let limits = node.js_limits();
    let committed = (committed.view, committed.seqno);
    // Inline unless the endpoint is demoted (a request that matches nothing runs no JavaScript: inline too).
    let inline = matched
        .as_ref()
        .is_none_or(|m| m.endpoint.demoted_until_ms.load(Ordering::Relaxed) <= uptime_ms());
    let call = Call {
        method: parts.method,
        app_path: format!("/app{path}"),
        path,
        // A request's URI is its path and query, unless a client sent an absolute URI.
        url: match (parts.uri.authority(), parts.uri.path_and_query()) {
            (None, Some(pq)) => pq.as_str().to_string(),
            _ => parts.uri.to_string(),
        },
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers,
        caller,
        body,
        primary,
        matched: version.zip(matched),
    };
    let inline = if inline {
        run_inline(&node, &call, limits, committed).await
    } else {
        None
    };
    let result = match inline {
        Some(result) => result,
        None => {
            let (reply, answer) = tokio::sync::oneshot::channel();
            pool().send(Job {
                node,
                call,
                limits,
                committed,
                reply,
            })?;
            answer
                .await
                .map_err(|_| ApiError::internal("the JavaScript worker stopped"))?
        }
    };
    let (response, ordered) = result.map_err(ApiError::from)?;
    Ok(with_tx_id(ordered.tx_id(), respond(response)))
}

fn respond(r: HandlerResponse) -> Response {
    let mut headers = HeaderMap::new();
    let default_type = match r.kind {
        BodyKind::Json => Some("application/json"),
        BodyKind::Text => Some("text/plain"),
        BodyKind::Binary => Some("application/octet-stream"),
        BodyKind::None => None,
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

    /// The parameters of `path` under `template`, through a one-endpoint bundle.
    fn params_of(template: &str, path: &str) -> Option<BTreeMap<String, String>> {
        let raw = serde_json::json!({
            "bundle": {
                "metadata": { "endpoints": { template: { "get": { "js_module": "m", "js_function": "f" } } } },
                "modules": [],
            },
            "version": "1",
        });
        let deployed = parse(raw.to_string().as_bytes()).expect("bundle");
        find(&deployed, &Method::GET, path)
            .ok()
            .map(|m| m.params.into_iter().collect())
    }

    #[test]
    fn path_templates_match_with_parameters() {
        assert_eq!(
            params_of("/log/{id}", "/log/42").map(|p| p["id"].clone()),
            Some("42".into())
        );
        assert_eq!(
            params_of("/log/{id}", "/log/a%20b").map(|p| p["id"].clone()),
            Some("a b".into())
        );
        assert!(params_of("/log/{id}", "/log").is_none());
        assert!(params_of("/log/{id}", "/log/%zz").is_none());
        assert!(params_of("/log/private", "/log/public").is_none());
        assert!(params_of("/a/b", "/a/b").is_some());
    }

    #[test]
    fn templates_without_parameters_match_first() {
        // "/log/{id}" sorts before "/log/~" by bytes: the literal template must still win.
        let raw = serde_json::json!({
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
        let found =
            |path: &str| find(&deployed, &Method::GET, path).map(|m| m.endpoint.spec.js_function.clone());
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
