//! The load generator behind `synod-load`: K concurrent clients (each its own connection and task) issue N writes
//! in total, each request timed from send to answer, then the last write is waited for until Committed, so the
//! throughput reported is of *committed* writes, the number that matters for a ledger. The system under test is a
//! [`LoadTarget`]: [`SynodTarget`] (the logging app) or [`EtcdTarget`] (etcd v3's HTTP/JSON gateway), so that both
//! are measured the same way, with the same keys, values and concurrency. [`compare`] puts the `--json` summaries
//! of several runs side by side.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use synod_core::txid::TxId;

use crate::client::{classify_transport, read_body_capped, Client};
use crate::commit::CommitFollower;
use crate::connection::Connection;
use crate::error::{Error, Result};

/// A system that accepts writes and can say when they are committed.
pub trait LoadTarget: Send + Sync + 'static {
    /// Describes the target in reports, e.g. `synod https://127.0.0.1:8000/app/log/private`.
    fn describe(&self) -> String;

    /// Writes `value` under `key`; returns the write's transaction id when the target has one to wait for
    /// (`None` when the answer already means committed).
    fn write(&self, key: u64, value: &[u8]) -> impl Future<Output = Result<Option<TxId>>> + Send;

    /// Waits until `last` (the highest transaction id any write returned) is committed, for at most `timeout`.
    fn wait_committed(
        &self,
        last: Option<TxId>,
        timeout: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// A client whose `GET /node/commit` tells when writes commit, for targets whose answers do not already
    /// mean committed (the commit latency of the others is their request latency).
    fn commit_probe(&self) -> Option<Client> {
        None
    }

    /// Waits until the write that returned `tx` is committed (`--wait-commit`: a client that needs durability
    /// sends its next write only then). Targets that answer once committed never return a `tx` to wait for.
    fn wait_write_committed(&self, tx: TxId, timeout: Duration) -> impl Future<Output = Result<()>> + Send {
        let _ = (tx, timeout);
        async { Ok(()) }
    }

    /// Opens the target's connection (with one cheap request, or just its handshake), before the clock starts
    /// (see [`run_load`]).
    fn warm_up(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
}

/// Synod: writes are `POST {path}` with `{"id": key, "msg": value}` (the logging app) on a kept-open
/// [`Connection`] per client, committed once `/node/tx` says so.
#[derive(Clone)]
pub struct SynodTarget {
    client: Client,
    path: String,
    follower: Option<Arc<CommitFollower>>,
    /// The connection writes go on, opened by `warm_up` (or the first write) and kept: one per client.
    connection: Arc<tokio::sync::Mutex<Connection>>,
}

impl SynodTarget {
    /// A target writing to `path` (e.g. `/app/log/private`) to `client`'s current node (the connection opens
    /// later: an error here is a node URL no connection can be made from).
    pub fn new(client: Client, path: &str) -> Result<SynodTarget> {
        let connection = Arc::new(tokio::sync::Mutex::new(client.connection()?));
        Ok(SynodTarget {
            client,
            path: path.to_string(),
            follower: None,
            connection,
        })
    }

    /// Waits for each write's commit through `follower` (shared by the clients of one node).
    pub fn with_follower(mut self, follower: Arc<CommitFollower>) -> SynodTarget {
        self.follower = Some(follower);
        self
    }
}

impl LoadTarget for SynodTarget {
    fn describe(&self) -> String {
        format!("synod {}{}", self.client.node_url(), self.path)
    }

    async fn write(&self, key: u64, value: &[u8]) -> Result<Option<TxId>> {
        let body = serde_json::to_vec(&json!({ "id": key, "msg": String::from_utf8_lossy(value) }))
            .map_err(|e| Error::Config(format!("request body: {e}")))?;
        let response = self
            .connection
            .lock()
            .await
            .post(&self.path, "application/json", &body)
            .await?;
        Ok(Some(response.error_for_status()?.tx_id()?))
    }

    async fn wait_committed(&self, last: Option<TxId>, timeout: Duration) -> Result<()> {
        if let Some(tx_id) = last {
            self.client.wait_for_commit(tx_id, timeout).await?;
        }
        Ok(())
    }

    fn commit_probe(&self) -> Option<Client> {
        Some(self.client.clone())
    }

    async fn wait_write_committed(&self, tx: TxId, timeout: Duration) -> Result<()> {
        match &self.follower {
            Some(follower) => follower.wait(tx, timeout).await?,
            None => self.client.wait_for_commit(tx, timeout).await?,
        };
        Ok(())
    }

    async fn warm_up(&self) -> Result<()> {
        self.connection.lock().await.open().await
    }
}

/// Largest etcd answer read, in bytes (a put answer is about 100).
const MAX_ETCD_RESPONSE_BYTES: usize = 64 * 1024;

/// How long an etcd client waits for a TCP connection.
const ETCD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// etcd v3 through its HTTP/JSON gateway: a write is `POST {endpoint}/v3/kv/put` with
/// `{"key": base64("log/<id>"), "value": base64(value)}` ([`etcd_put_body`]). etcd answers a put only after its Raft
/// majority has committed it, so there is no transaction id to wait for: [`LoadTarget::write`] returns `None` and
/// [`LoadTarget::wait_committed`] returns at once. Plain HTTP (the benchmark's cluster has no TLS); each target
/// has its own connection pool, so one target is one client connection, as with [`SynodTarget`].
#[derive(Clone, Debug)]
pub struct EtcdTarget {
    http: reqwest::Client,
    endpoint: String,
    put_url: String,
    timeout: Duration,
}

/// The etcd key a write to Synod key id `key` uses: `log/<id>`.
pub fn etcd_key(key: u64) -> String {
    format!("log/{key}")
}

/// The JSON body of the etcd put of `value` under key id `key` (key and value base64, as the gateway wants bytes).
pub fn etcd_put_body(key: u64, value: &[u8]) -> serde_json::Value {
    // Standard base64 with padding (RFC 4648 section 4), what protobuf's JSON mapping uses for `bytes`.
    json!({ "key": BASE64.encode(etcd_key(key)), "value": BASE64.encode(value) })
}

/// The name of a gRPC status code, as the etcd gateway reports them in `{"code": N}`.
fn grpc_code_name(code: i64) -> String {
    let name = match code {
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => return format!("grpc-{code}"),
    };
    name.to_string()
}

/// An error answer of the etcd gateway (`{"error", "message", "code"}`) as [`Error::Api`], anything else as
/// [`Error::UnexpectedResponse`].
fn etcd_error(status: reqwest::StatusCode, body: &[u8]) -> Error {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.get("message")
            .or_else(|| v.get("error"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    });
    match message {
        Some(message) => Error::Api {
            status,
            code: parsed
                .as_ref()
                .and_then(|v| v.get("code"))
                .and_then(serde_json::Value::as_i64)
                .map_or_else(|| "Unknown".to_string(), grpc_code_name),
            message,
        },
        None => Error::UnexpectedResponse {
            status,
            message: format!(
                "etcd answered without an error message: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ),
        },
    }
}

impl EtcdTarget {
    /// A target for the etcd member whose client URL is `endpoint` (`http://host:port`), each request bounded by
    /// `timeout`.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<EtcdTarget> {
        let url = reqwest::Url::parse(endpoint)
            .map_err(|e| Error::Config(format!("invalid etcd endpoint {endpoint:?}: {e}")))?;
        if url.scheme() != "http" {
            return Err(Error::Config(format!(
                "etcd endpoint {endpoint:?} is not http:// (the benchmark's etcd cluster serves plain HTTP)"
            )));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(Error::Config(format!(
                "etcd endpoint {endpoint:?} must be http://host:port, without a path"
            )));
        }
        // reqwest insists on a TLS configuration even for plain HTTP, and without one it would need a process-wide
        // crypto provider: give it one that trusts nothing (no https endpoint is accepted above anyway).
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::TlsConfig(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .connect_timeout(ETCD_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Config(format!("cannot build the etcd HTTP client: {e}")))?;
        let endpoint = endpoint.trim_end_matches('/').to_string();
        Ok(EtcdTarget {
            http,
            put_url: format!("{endpoint}/v3/kv/put"),
            endpoint,
            timeout,
        })
    }

    /// The member's client URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn put(&self, body: &serde_json::Value) -> Result<(reqwest::StatusCode, Vec<u8>)> {
        self.exchange(self.http.post(&self.put_url).json(body), &self.put_url)
            .await
    }

    /// Sends `request` (to `url`) within the timeout and reads its answer, capped.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<(reqwest::StatusCode, Vec<u8>)> {
        let mut response = request
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| classify_transport(e, url, self.timeout))?;
        let status = response.status();
        let bytes = read_body_capped(&mut response, MAX_ETCD_RESPONSE_BYTES, "etcd answer", |e| {
            classify_transport(e, url, self.timeout)
        })
        .await?;
        Ok((status, bytes))
    }
}

impl LoadTarget for EtcdTarget {
    fn describe(&self) -> String {
        format!("etcd {}", self.put_url)
    }

    async fn write(&self, key: u64, value: &[u8]) -> Result<Option<TxId>> {
        let (status, body) = self.put(&etcd_put_body(key, value)).await?;
        if !status.is_success() {
            return Err(etcd_error(status, &body));
        }
        // A put answer is `{"header": {"cluster_id", "member_id", "revision", "raft_term"}}`.
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| Error::UnexpectedResponse {
                status,
                message: format!("etcd put answer is not JSON: {e}"),
            })?;
        if answer.pointer("/header/revision").is_none() {
            return Err(Error::UnexpectedResponse {
                status,
                message: format!("etcd put answer without header.revision: {answer}"),
            });
        }
        Ok(None)
    }

    async fn wait_committed(&self, _last: Option<TxId>, _timeout: Duration) -> Result<()> {
        // etcd answered each put after its Raft majority committed it.
        Ok(())
    }

    async fn warm_up(&self) -> Result<()> {
        // Any answer means the connection is open (the pool keeps it for the writes).
        let url = format!("{}/version", self.endpoint);
        self.exchange(self.http.get(&url), &url).await.map(|_| ())
    }
}

/// etcd v3 through its native gRPC API (the `etcd-client` crate, as etcd's own Go clients talk to it): a write is a
/// `Put` of `log/<id>`, answered once committed. One gRPC channel per target, so one target is one client
/// connection, as with [`SynodTarget`]. Built only with the `etcd-grpc` feature (it needs `protoc`).
#[cfg(feature = "etcd-grpc")]
pub struct EtcdGrpcTarget {
    kv: tokio::sync::Mutex<etcd_client::KvClient>,
    endpoint: String,
    timeout: Duration,
}

#[cfg(feature = "etcd-grpc")]
impl EtcdGrpcTarget {
    /// A client of the member at `endpoint` (`http://host:port`), each request bounded by `timeout`.
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<EtcdGrpcTarget> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(ETCD_CONNECT_TIMEOUT)
            .with_timeout(timeout);
        let client = etcd_client::Client::connect([endpoint], Some(options))
            .await
            .map_err(|e| Error::Config(format!("cannot connect to etcd at {endpoint}: {e}")))?;
        Ok(EtcdGrpcTarget {
            kv: tokio::sync::Mutex::new(client.kv_client()),
            endpoint: endpoint.to_string(),
            timeout,
        })
    }
}

#[cfg(feature = "etcd-grpc")]
impl LoadTarget for EtcdGrpcTarget {
    fn describe(&self) -> String {
        format!("etcd-grpc {}", self.endpoint)
    }

    async fn write(&self, key: u64, value: &[u8]) -> Result<Option<TxId>> {
        let mut kv = self.kv.lock().await;
        let put = kv.put(etcd_key(key), value.to_vec(), None);
        match tokio::time::timeout(self.timeout, put).await {
            Ok(Ok(_)) => Ok(None),
            Ok(Err(e)) => Err(Error::UnexpectedResponse {
                status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
                message: format!("etcd put: {e}"),
            }),
            Err(_) => Err(Error::Config(format!(
                "etcd put did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    async fn wait_committed(&self, _last: Option<TxId>, _timeout: Duration) -> Result<()> {
        // etcd answered each put after its Raft majority committed it.
        Ok(())
    }

    async fn warm_up(&self) -> Result<()> {
        let mut kv = self.kv.lock().await;
        match tokio::time::timeout(self.timeout, kv.get("log/warm-up", None)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::Config(format!("etcd at {}: {e}", self.endpoint))),
            Err(_) => Err(Error::Config(format!("etcd at {} did not answer", self.endpoint))),
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Writes to issue in total (across all clients).
    pub requests: u64,
    /// Size of each written value in bytes.
    pub value_bytes: usize,
    /// Keys are drawn from `0..keys`.
    pub keys: u64,
    /// Seed of the deterministic key sequence.
    pub seed: u64,
    /// No new request is started after this long (requests in flight finish, within their own timeout).
    pub max_duration: Duration,
    /// Bound on waiting for the last write to be committed.
    pub commit_timeout: Duration,
    /// Each client waits for its write to be Committed before it sends the next (as an etcd client, whose put
    /// answers once committed); commit latency is then what each client waited.
    pub wait_commit: bool,
}

impl Default for LoadConfig {
    fn default() -> LoadConfig {
        LoadConfig {
            requests: 10_000,
            value_bytes: 64,
            keys: 10_000,
            seed: 1,
            max_duration: Duration::from_secs(300),
            commit_timeout: Duration::from_secs(30),
            wait_commit: false,
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadReport {
    /// A short name for comparisons (`synod-load --label`), if one was given.
    pub label: Option<String>,
    /// [`LoadTarget::describe`] of the targets (the distinct ones, comma-separated).
    pub target: String,
    /// Requests issued (successes and errors).
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Value size.
    pub value_bytes: usize,
    /// Size of the key space.
    pub keys: u64,
    /// Seed of the key sequence.
    pub seed: u64,
    /// From the first request to the last write being Committed (or to the last answer if that wait failed).
    pub elapsed_s: f64,
    /// Successful writes / `elapsed_s`; None when the last write could not be seen committed.
    pub committed_writes_per_s: Option<f64>,
    /// Median request latency (successful requests), milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Largest latency, milliseconds.
    pub max_ms: f64,
    /// Median time from sending a write to its being Committed, milliseconds (None if not measured).
    pub commit_p50_ms: Option<f64>,
    /// 99th percentile time from sending a write to its being Committed, milliseconds.
    pub commit_p99_ms: Option<f64>,
    /// The longest time the commit stood still during the run (see [`longest_commit_stall`]).
    pub commit_stall: Option<CommitStall>,
    /// The highest transaction id a write returned.
    pub last_tx_id: Option<TxId>,
    /// True when `max_duration` stopped the run before all requests were issued.
    pub stopped_by_duration: bool,
    /// The first request error, as an example.
    pub first_error: Option<String>,
    /// Why the last write was not seen committed, if it was not.
    pub commit_error: Option<String>,
}

impl LoadReport {
    /// Successful writes.
    pub fn successes(&self) -> u64 {
        self.requests - self.errors
    }

    /// The summary `synod-load --json` prints (and [`compare`] reads).
    pub fn summary(&self) -> LoadSummary {
        LoadSummary {
            label: self.label.clone().unwrap_or_else(|| self.target.clone()),
            target: self.target.clone(),
            requests: self.requests,
            errors: self.errors,
            clients: self.clients,
            value_bytes: self.value_bytes,
            keys: self.keys,
            seed: self.seed,
            elapsed_s: round3(self.elapsed_s),
            committed_writes_per_s: self.committed_writes_per_s.map(round3),
            p50_ms: round3(self.p50_ms),
            p99_ms: round3(self.p99_ms),
            max_ms: round3(self.max_ms),
            commit_p50_ms: self.commit_p50_ms.map(round3),
            commit_p99_ms: self.commit_p99_ms.map(round3),
            commit_stall_ms: self.commit_stall.map(|s| round3(s.ms)),
            commit_stall_at_unix_ms: self.commit_stall.map(|s| s.at_unix_ms),
        }
    }

    /// The one-object JSON summary `synod-load --json` prints: [`LoadReport::summary`].
    pub fn to_json(&self) -> serde_json::Value {
        // A struct of strings and numbers always serialises.
        serde_json::to_value(self.summary()).unwrap_or_default()
    }

    /// A few lines for a person.
    pub fn human(&self) -> String {
        let mut s = String::new();
        if let Some(label) = &self.label {
            s += &format!("label             {label}\n");
        }
        s += &format!(
            "target            {}\nclients           {}\nvalue bytes       {}\nkeys              {}\n\
             requests          {} ({} errors)\n",
            self.target, self.clients, self.value_bytes, self.keys, self.requests, self.errors
        );
        s += &format!(
            "latency           p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms\n",
            self.p50_ms, self.p99_ms, self.max_ms
        );
        if let (Some(p50), Some(p99)) = (self.commit_p50_ms, self.commit_p99_ms) {
            s += &format!("commit latency    p50 {p50:.3} ms, p99 {p99:.3} ms (send to Committed)\n");
        }
        if let Some(stall) = self.commit_stall {
            s += &format!(
                "commit stall      longest {:.3} ms without a commit, from {} UTC\n",
                stall.ms,
                utc_time_of_day(stall.at_unix_ms)
            );
        }
        match (self.committed_writes_per_s, &self.commit_error) {
            (Some(rate), _) => {
                s += &format!(
                    "committed writes  {} in {:.3} s: {:.1} writes/s (last tx {})\n",
                    self.successes(),
                    self.elapsed_s,
                    rate,
                    self.last_tx_id.map_or_else(|| "-".into(), |t| t.to_string())
                )
            }
            (None, Some(e)) => s += &format!("committed writes  unknown: {e}\n"),
            (None, None) => s += "committed writes  unknown\n",
        }
        if self.stopped_by_duration {
            s += "stopped early     the duration cap was reached\n";
        }
        if let Some(e) = &self.first_error {
            s += &format!("first error       {e}\n");
        }
        s
    }
}

/// The one-object summary of a run: what `synod-load --json` prints, and what [`compare`] reads back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    /// Short name of the run (`--label`, else the target).
    #[serde(default)]
    pub label: String,
    /// What was measured ([`LoadTarget::describe`]).
    pub target: String,
    /// Requests issued (successes and errors).
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Value size in bytes.
    pub value_bytes: usize,
    /// Size of the key space.
    pub keys: u64,
    /// Seed of the key sequence (runs with the same seed, key space and request count write the same keys).
    pub seed: u64,
    /// Seconds from the first request to the last write being committed.
    pub elapsed_s: f64,
    /// Committed writes per second; None (`null`) when the last write was not seen committed.
    pub committed_writes_per_s: Option<f64>,
    /// Median request latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile request latency, milliseconds.
    pub p99_ms: f64,
    /// Largest request latency, milliseconds.
    pub max_ms: f64,
    /// Median time from send to Committed, milliseconds (the request latency for targets that answer once
    /// committed; absent in older outputs).
    #[serde(default)]
    pub commit_p50_ms: Option<f64>,
    /// 99th percentile time from send to Committed, milliseconds.
    #[serde(default)]
    pub commit_p99_ms: Option<f64>,
    /// The longest time the commit stood still during the run, milliseconds (see [`longest_commit_stall`]).
    #[serde(default)]
    pub commit_stall_ms: Option<f64>,
    /// When that stall began, in milliseconds since the Unix epoch (to find it in the nodes' logs).
    #[serde(default)]
    pub commit_stall_at_unix_ms: Option<u64>,
}

impl LoadSummary {
    /// The name shown in comparisons: the label, else the target.
    pub fn name(&self) -> &str {
        if self.label.is_empty() {
            &self.target
        } else {
            &self.label
        }
    }

    /// The parameters that must be equal for two runs to be compared: clients, requests, value size, key space,
    /// seed.
    pub fn parameters(&self) -> (usize, u64, usize, u64, u64) {
        (
            self.clients,
            self.requests,
            self.value_bytes,
            self.keys,
            self.seed,
        )
    }
}

/// A side-by-side comparison of runs, as [`compare`] makes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The table, the ratios and any warning, for a person.
    pub text: String,
    /// True when every run has the same clients, requests, value size, key space and seed, and none had errors or
    /// an unknown commit rate.
    pub fair: bool,
    /// Committed writes/s of each run divided by the last run's (None where either rate is unknown).
    pub ratios: Vec<Option<f64>>,
}

fn fmt_rate(rate: Option<f64>) -> String {
    rate.map_or_else(|| "unknown".to_string(), |r| format!("{r:.1}"))
}

/// Compares runs: a table of committed writes/s, p50, p99 and max latency and errors, then, for each run but the
/// last, the ratio of its committed writes/s to the last run's and both p99s (so `compare([synod, etcd])` gives
/// synod ÷ etcd). Warns when the runs do not share clients, requests, value size, key space and seed.
pub fn compare(runs: &[LoadSummary]) -> Comparison {
    let Some(base) = runs.last() else {
        return Comparison {
            text: "nothing to compare\n".into(),
            fair: false,
            ratios: Vec::new(),
        };
    };
    let ratio = |run: &LoadSummary| match (run.committed_writes_per_s, base.committed_writes_per_s) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let ratios: Vec<Option<f64>> = runs.iter().map(ratio).collect();
    let width = runs
        .iter()
        .map(|r| r.name().chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let ms = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"));
    let mut text = format!(
        "{:<width$}  {:>18}  {:>9}  {:>9}  {:>9}  {:>12}  {:>12}  {:>6}  {:>9}\n",
        "run",
        "committed writes/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "commit p50",
        "commit p99",
        "errors",
        "÷ last",
    );
    for (run, r) in runs.iter().zip(&ratios) {
        text += &format!(
            "{:<width$}  {:>18}  {:>9.3}  {:>9.3}  {:>9.3}  {:>12}  {:>12}  {:>6}  {:>9}\n",
            run.name(),
            fmt_rate(run.committed_writes_per_s),
            run.p50_ms,
            run.p99_ms,
            run.max_ms,
            ms(run.commit_p50_ms),
            ms(run.commit_p99_ms),
            run.errors,
            r.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}x")),
        );
    }
    let same = runs.iter().all(|r| r.parameters() == base.parameters());
    let (clients, requests, value_bytes, keys, seed) = base.parameters();
    if same {
        text += &format!(
            "parameters        {clients} clients, {requests} requests, {value_bytes}-byte values, {keys} keys, seed {seed} (all runs)\n"
        );
    } else {
        text += "WARNING           the runs do not share their parameters (clients, requests, value bytes, keys, seed):\n";
        for run in runs {
            let (c, r, v, k, seed) = run.parameters();
            text += &format!("                  {}: {c}, {r}, {v}, {k}, {seed}\n", run.name());
        }
    }
    for (run, r) in runs.iter().zip(&ratios).take(runs.len() - 1) {
        text += &format!(
            "ratio             {} / {}: {} committed writes/s ({} vs {}); p99 {:.3} ms vs {:.3} ms; \
             commit p99 {} ms vs {} ms\n",
            run.name(),
            base.name(),
            r.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}x")),
            fmt_rate(run.committed_writes_per_s),
            fmt_rate(base.committed_writes_per_s),
            run.p99_ms,
            base.p99_ms,
            ms(run.commit_p99_ms),
            ms(base.commit_p99_ms),
        );
    }
    let clean = runs
        .iter()
        .all(|r| r.errors == 0 && r.committed_writes_per_s.is_some());
    if !clean {
        text += "WARNING           some run had errors or no known commit rate\n";
    }
    Comparison {
        text,
        fair: same && clean,
        ratios,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// SplitMix64: a tiny, well-mixed deterministic sequence (no `rand` needed).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of request `index` of a run with `seed` over `0..keys` (deterministic).
pub fn key_for(seed: u64, index: u64, keys: u64) -> u64 {
    splitmix64(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ index) % keys.max(1)
}

/// The value of request `index`: `len` printable ASCII bytes that differ from request to request.
pub fn value_for(index: u64, len: usize) -> Vec<u8> {
    let offset = (index % 26) as u8;
    (0..len).map(|i| b'a' + ((i as u8 % 26) + offset) % 26).collect()
}

#[derive(Default)]
struct WorkerStats {
    latencies_us: Vec<u64>,
    /// Send to Committed, for the writes a client waited for (`wait_commit`).
    commit_latencies_us: Vec<u64>,
    /// When each successful write that returned a transaction id was sent, and that id.
    written: Vec<(Instant, TxId)>,
    errors: u64,
    first_error: Option<String>,
    last_tx: Option<TxId>,
}

async fn worker<T: LoadTarget>(
    target: T,
    config: Arc<LoadConfig>,
    next: Arc<AtomicU64>,
    deadline: Instant,
) -> (T, WorkerStats) {
    let mut stats = WorkerStats::default();
    loop {
        if Instant::now() >= deadline {
            break;
        }
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= config.requests {
            break;
        }
        let key = key_for(config.seed, index, config.keys);
        let value = value_for(index, config.value_bytes);
        let sent = Instant::now();
        let mut outcome = target.write(key, &value).await;
        let latency = sent.elapsed();
        if let (true, Ok(Some(tx))) = (config.wait_commit, &outcome) {
            match target.wait_write_committed(*tx, config.commit_timeout).await {
                Ok(()) => stats.commit_latencies_us.push(micros(sent.elapsed())),
                Err(e) => outcome = Err(e),
            }
        }
        match outcome {
            Ok(tx) => {
                stats.latencies_us.push(micros(latency));
                if let Some(tx) = tx {
                    stats.written.push((sent, tx));
                    if stats
                        .last_tx
                        .is_none_or(|last| (tx.seqno, tx.view) > (last.seqno, last.view))
                    {
                        stats.last_tx = Some(tx);
                    }
                }
            }
            Err(e) => {
                stats.errors += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some(e.to_string());
                }
            }
        }
    }
    (target, stats)
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    // Nearest-rank percentile.
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

/// How long one commit long poll waits (the probe stops at most this long after the load).
const COMMIT_PROBE_WAIT: Duration = Duration::from_millis(100);
/// Pause after a failed probe, so a node that refuses does not turn the probe into a busy loop.
const COMMIT_PROBE_RETRY: Duration = Duration::from_millis(5);

/// Follows `client`'s node's commit until `stop` with long polls of `GET /node/commit?after_seqno=` (an answer
/// comes as soon as the commit moves: one request per advance, so probing costs the node little and misses no
/// moment), recording (when, commit seqno).
async fn probe_commits(client: Client, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<(Instant, u64)> {
    let mut samples = Vec::new();
    let mut seen = 0;
    while !stop.load(Ordering::Relaxed) {
        match client.commit_after(seen, COMMIT_PROBE_WAIT).await {
            Ok(tx) => {
                samples.push((Instant::now(), tx.seqno));
                seen = seen.max(tx.seqno);
            }
            Err(_) => tokio::time::sleep(COMMIT_PROBE_RETRY).await,
        }
    }
    samples
}

/// The longest stretch of a run in which no node's commit moved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CommitStall {
    /// How long, in milliseconds.
    pub ms: f64,
    /// When it began, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// The longest time between two successive advances of the commit (the highest seqno any node reported) that
/// happened between `from` and `to`, and when it began: a p99 says how many writes waited, this says for how long
/// the service stood still and when, to be found in the nodes' logs. `samples` are sorted by time.
fn longest_commit_stall(
    samples: &[(Instant, u64)],
    from: Instant,
    to: Instant,
) -> Option<(Duration, Instant)> {
    let mut highest = 0;
    let mut previous: Option<Instant> = None;
    let mut longest: Option<(Duration, Instant)> = None;
    for &(at, seqno) in samples {
        if seqno <= highest {
            continue;
        }
        highest = seqno;
        if at < from || at > to {
            continue;
        }
        if let Some(before) = previous {
            let gap = at.saturating_duration_since(before);
            if longest.is_none_or(|(g, _)| gap > g) {
                longest = Some((gap, before));
            }
        }
        previous = Some(at);
    }
    longest
}

/// `HH:MM:SS.mmm` of a time in milliseconds since the Unix epoch, in UTC.
fn utc_time_of_day(unix_ms: u64) -> String {
    let ms_of_day = unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

/// Commit latencies (µs, sorted) of `written` from the probes' samples: a write is committed at the first sample,
/// on any node, at or after which some node's commit reached its seqno (Invalid writes never do; they are left
/// out).
fn commit_latencies_us(written: &[(Instant, TxId)], mut samples: Vec<(Instant, u64)>) -> Vec<u64> {
    samples.sort_by_key(|(t, _)| *t);
    let mut highest = 0;
    let reached: Vec<(Instant, u64)> = samples
        .into_iter()
        .map(|(t, seqno)| {
            highest = highest.max(seqno);
            (t, highest)
        })
        .collect();
    let mut out: Vec<u64> = written
        .iter()
        .filter_map(|(sent, tx)| {
            let i = reached.partition_point(|(_, c)| *c < tx.seqno);
            let (at, _) = reached.get(i)?;
            Some(
                at.saturating_duration_since(*sent)
                    .as_micros()
                    .try_into()
                    .unwrap_or(u64::MAX),
            )
        })
        .collect();
    out.sort_unstable();
    out
}

/// Runs the load: one task per target (so `targets.len()` concurrent clients, each with its own connection; the
/// targets may point at different nodes of one network), then waits, through the first target, for the highest
/// returned tx id to be Committed.
pub async fn run_load<T: LoadTarget>(targets: Vec<T>, config: &LoadConfig) -> Result<LoadReport> {
    let clients = targets.len();
    if targets.is_empty() {
        return Err(Error::Config("the load needs at least one client".into()));
    }
    let mut described: Vec<String> = Vec::new();
    for d in targets.iter().map(LoadTarget::describe) {
        if !described.contains(&d) {
            described.push(d);
        }
    }
    let description = described.join(", ");
    if config.keys == 0 {
        return Err(Error::Config("the key space must hold at least one key".into()));
    }
    // Every client's connection is opened before the clock starts, as etcd's own benchmark dials its clients
    // first: no client's first write pays for connecting (for Synod a TLS handshake with P-384 certificates; 64 at
    // once took up to ~200 ms on the 2-core benchmark machine, and were the runs' slowest writes).
    let warming: Vec<_> = targets
        .into_iter()
        .map(|t| {
            tokio::spawn(async move {
                let warmed = t.warm_up().await;
                (t, warmed)
            })
        })
        .collect();
    let mut targets = Vec::with_capacity(clients);
    for task in warming {
        let (target, warmed) = task
            .await
            .map_err(|e| Error::Config(format!("a load client failed: {e}")))?;
        warmed?;
        targets.push(target);
    }
    let shared = Arc::new(config.clone());
    let next = Arc::new(AtomicU64::new(0));
    // One commit probe per node the clients write to.
    let stop_probes = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut probed: Vec<String> = Vec::new();
    let mut probes = Vec::new();
    // Clients that wait for their own commits measure commit latency themselves.
    let probed_targets = targets.iter().filter(|_| !config.wait_commit);
    for probe in probed_targets.filter_map(LoadTarget::commit_probe) {
        if !probed.contains(&probe.node_url().to_string()) {
            probed.push(probe.node_url().to_string());
            probes.push(tokio::spawn(probe_commits(probe, stop_probes.clone())));
        }
    }
    let start = Instant::now();
    let start_wall = std::time::SystemTime::now();
    let deadline = start + config.max_duration;
    let tasks: Vec<_> = targets
        .into_iter()
        .map(|t| tokio::spawn(worker(t, shared.clone(), next.clone(), deadline)))
        .collect();
    let mut first_target = None;
    let mut latencies = Vec::new();
    let mut waited = Vec::new();
    let mut written = Vec::new();
    let (mut errors, mut first_error, mut last_tx) = (0u64, None, None::<TxId>);
    for task in tasks {
        let (target, stats) = task
            .await
            .map_err(|e| Error::Config(format!("a load client failed: {e}")))?;
        first_target.get_or_insert(target);
        latencies.extend(stats.latencies_us);
        waited.extend(stats.commit_latencies_us);
        written.extend(stats.written);
        errors += stats.errors;
        if first_error.is_none() {
            first_error = stats.first_error;
        }
        if let Some(tx) = stats.last_tx {
            if last_tx.is_none_or(|last| (tx.seqno, tx.view) > (last.seqno, last.view)) {
                last_tx = Some(tx);
            }
        }
    }
    let issued = next.load(Ordering::Relaxed).min(config.requests);
    let stopped_by_duration = issued < config.requests;
    let successes = latencies.len() as u64;
    let commit = match &first_target {
        Some(target) if successes > 0 => target.wait_committed(last_tx, config.commit_timeout).await,
        _ => Err(Error::Config("no write succeeded".into())),
    };
    let end = Instant::now();
    let elapsed = end.duration_since(start).as_secs_f64();
    latencies.sort_unstable();
    stop_probes.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for probe in probes {
        samples.extend(probe.await.unwrap_or_default());
    }
    samples.sort_by_key(|(t, _)| *t);
    let commit_stall = longest_commit_stall(&samples, start, end).map(|(gap, at)| CommitStall {
        ms: gap.as_secs_f64() * 1000.0,
        at_unix_ms: (start_wall + at.duration_since(start))
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    });
    let commit_latencies = if config.wait_commit && !waited.is_empty() {
        waited.sort_unstable();
        waited
    } else if probed.is_empty() {
        latencies.clone() // answered once committed
    } else {
        commit_latencies_us(&written, samples)
    };
    let commit_percentile =
        |p: f64| (!commit_latencies.is_empty()).then(|| percentile_ms(&commit_latencies, p));
    let (committed_writes_per_s, commit_error) = match commit {
        Ok(()) if elapsed > 0.0 => (Some(successes as f64 / elapsed), None),
        Ok(()) => (None, Some("no time elapsed".to_string())),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(LoadReport {
        label: None,
        target: description,
        requests: successes + errors,
        errors,
        clients,
        value_bytes: config.value_bytes,
        keys: config.keys,
        seed: config.seed,
        elapsed_s: elapsed,
        committed_writes_per_s,
        p50_ms: percentile_ms(&latencies, 50.0),
        p99_ms: percentile_ms(&latencies, 99.0),
        max_ms: latencies.last().map_or(0.0, |&us| us as f64 / 1000.0),
        commit_p50_ms: commit_percentile(50.0),
        commit_p99_ms: commit_percentile(99.0),
        commit_stall,
        last_tx_id: last_tx,
        stopped_by_duration,
        first_error,
        commit_error,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An in-memory target: every write gets the next seqno; commits are instant; every 10th key fails.
    #[derive(Clone, Default)]
    struct Memory {
        seqno: Arc<AtomicU64>,
        written: Arc<Mutex<Vec<(u64, usize)>>>,
        waited_for: Arc<Mutex<Option<TxId>>>,
        each_waited: Arc<Mutex<Vec<TxId>>>,
    }

    impl LoadTarget for Memory {
        fn describe(&self) -> String {
            "memory".into()
        }

        async fn write(&self, key: u64, value: &[u8]) -> Result<Option<TxId>> {
            if key % 10 == 9 {
                return Err(Error::Config("key ends in 9".into()));
            }
            self.written.lock().unwrap().push((key, value.len()));
            Ok(Some(TxId::new(2, self.seqno.fetch_add(1, Ordering::SeqCst) + 1)))
        }

        async fn wait_committed(&self, last: Option<TxId>, _timeout: Duration) -> Result<()> {
            *self.waited_for.lock().unwrap() = last;
            Ok(())
        }

        async fn wait_write_committed(&self, tx: TxId, _timeout: Duration) -> Result<()> {
            self.each_waited.lock().unwrap().push(tx);
            tokio::task::yield_now().await;
            Ok(())
        }
    }

    /// `--wait-commit`: every successful write is waited for before the client's next one, and commit latency is
    /// what the clients waited (never less than the answer's latency).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_that_wait_for_commit_measure_it_themselves() {
        let target = Memory::default();
        let config = LoadConfig {
            requests: 200,
            keys: 100,
            wait_commit: true,
            ..LoadConfig::default()
        };
        let report = run_load(vec![target.clone(); 4], &config).await.unwrap();
        let waited = target.each_waited.lock().unwrap().clone();
        assert_eq!(waited.len() as u64, report.successes());
        let mut seqnos: Vec<u64> = waited.iter().map(|t| t.seqno).collect();
        seqnos.sort_unstable();
        assert_eq!(seqnos, (1..=report.successes()).collect::<Vec<_>>());
        assert!(report.commit_p50_ms.unwrap() >= report.p50_ms);
        assert!(report.commit_p99_ms.unwrap() >= report.p99_ms);
    }

    #[test]
    fn keys_and_values_are_deterministic() {
        let a: Vec<u64> = (0..100).map(|i| key_for(7, i, 50)).collect();
        let b: Vec<u64> = (0..100).map(|i| key_for(7, i, 50)).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&k| k < 50));
        assert_ne!(a, (0..100).map(|i| key_for(8, i, 50)).collect::<Vec<_>>());
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert!(distinct.len() > 30, "keys spread over the space");
        assert_eq!(value_for(3, 100).len(), 100);
        assert!(value_for(3, 100).iter().all(u8::is_ascii_lowercase));
        assert_eq!(key_for(1, 5, 1), 0);
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), 50.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&v, 100.0), 100.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_every_request_once_across_clients() {
        let target = Memory::default();
        let config = LoadConfig {
            requests: 500,
            value_bytes: 16,
            keys: 100,
            seed: 3,
            ..LoadConfig::default()
        };
        let report = run_load(vec![target.clone(); 8], &config).await.unwrap();
        let expected_errors = (0..500).filter(|&i| key_for(3, i, 100) % 10 == 9).count() as u64;
        assert_eq!(report.requests, 500);
        assert_eq!(report.errors, expected_errors);
        assert_eq!(report.clients, 8);
        assert_eq!(target.written.lock().unwrap().len() as u64, 500 - expected_errors);
        assert!(target.written.lock().unwrap().iter().all(|&(_, len)| len == 16));
        assert_eq!(report.last_tx_id, Some(TxId::new(2, 500 - expected_errors)));
        assert_eq!(*target.waited_for.lock().unwrap(), report.last_tx_id);
        assert!(report.committed_writes_per_s.unwrap() > 0.0);
        assert!(!report.stopped_by_duration);
        assert!(report.first_error.as_deref().unwrap().contains("ends in 9"));
        let json = report.to_json();
        for key in [
            "target",
            "requests",
            "errors",
            "clients",
            "value_bytes",
            "elapsed_s",
            "committed_writes_per_s",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "label",
            "keys",
            "seed",
            "commit_p50_ms",
            "commit_p99_ms",
            "commit_stall_ms",
            "commit_stall_at_unix_ms",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(json.as_object().unwrap().len(), 17);
        assert_eq!(
            json["commit_stall_ms"],
            serde_json::Value::Null,
            "no probe, no stall measured"
        );
        assert_eq!(
            json["commit_p99_ms"], json["p99_ms"],
            "a target without a commit probe commits when it answers"
        );
        assert_eq!(json["label"], "memory", "the label defaults to the target");
        assert_eq!(json["keys"], 100);
        let back: LoadSummary = serde_json::from_value(json).unwrap();
        assert_eq!(back, report.summary());
    }

    #[tokio::test]
    async fn duration_cap_stops_the_run() {
        let config = LoadConfig {
            requests: u64::MAX,
            max_duration: Duration::from_millis(50),
            ..LoadConfig::default()
        };
        let report = run_load(vec![Memory::default()], &config).await.unwrap();
        assert!(report.stopped_by_duration);
        assert!(report.requests > 0);
        assert!(run_load(Vec::<Memory>::new(), &config).await.is_err());
    }
    fn summary(label: &str, rate: Option<f64>, p99_ms: f64) -> LoadSummary {
        LoadSummary {
            label: label.into(),
            target: format!("{label} target"),
            requests: 1000,
            errors: 0,
            clients: 8,
            value_bytes: 64,
            keys: 100,
            seed: 1,
            elapsed_s: 1.0,
            committed_writes_per_s: rate,
            p50_ms: 1.0,
            p99_ms,
            max_ms: 9.0,
            commit_p50_ms: Some(2.0),
            commit_p99_ms: Some(p99_ms * 2.0),
            commit_stall_ms: None,
            commit_stall_at_unix_ms: None,
        }
    }

    #[test]
    fn the_longest_commit_stall_is_the_widest_gap_between_advances_within_the_run() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Two nodes' samples, sorted by time: the commit moves at 10, 12, 20, 95 and 100 ms (a node reporting a
        // seqno another already passed is no advance); 120 ms is after the run.
        let samples = [
            (at(10), 5),
            (at(12), 7),
            (at(15), 6),
            (at(20), 9),
            (at(60), 9),
            (at(95), 12),
            (at(100), 13),
            (at(120), 40),
        ];
        let (gap, from) = longest_commit_stall(&samples, at(0), at(110)).expect("a stall");
        assert_eq!((gap, from), (Duration::from_millis(75), at(20)));
        assert_eq!(
            longest_commit_stall(&samples, at(0), at(200)),
            Some((Duration::from_millis(75), at(20))),
            "the 20 ms before the last advance are shorter"
        );
        assert_eq!(
            longest_commit_stall(&samples[..1], at(0), at(200)),
            None,
            "one advance has no gap"
        );
        assert_eq!(utc_time_of_day(86_400_000 * 3 + 3_723_004), "01:02:03.004");
    }

    #[test]
    fn a_write_commits_at_the_first_sample_reaching_its_seqno_on_any_node() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let written = [
            (at(0), TxId::new(2, 10)),
            (at(1), TxId::new(2, 12)),
            (at(2), TxId::new(2, 40)),
        ];
        // Two nodes' samples, interleaved: node A reaches 11 at 5 ms, node B 12 at 7 ms, nobody 40.
        let samples = vec![(at(7), 12), (at(3), 9), (at(5), 11), (at(9), 11)];
        let latencies = commit_latencies_us(&written, samples);
        assert_eq!(
            latencies,
            vec![5_000, 6_000],
            "the write at 40 never committed and is left out"
        );
    }

    #[test]
    fn compare_divides_by_the_last_run() {
        let runs = [
            summary("synod", Some(3000.0), 4.5),
            summary("etcd", Some(6000.0), 2.25),
        ];
        let c = compare(&runs);
        assert_eq!(c.ratios, vec![Some(0.5), Some(1.0)]);
        assert!(c.fair, "{}", c.text);
        assert!(
            c.text.contains("3000.0") && c.text.contains("6000.0"),
            "{}",
            c.text
        );
        assert!(c.text.contains("synod / etcd: 0.50x"), "{}", c.text);
        assert!(c.text.contains("p99 4.500 ms vs 2.250 ms"), "{}", c.text);
        assert!(
            c.text
                .contains("8 clients, 1000 requests, 64-byte values, 100 keys, seed 1"),
            "{}",
            c.text
        );
        assert!(!c.text.contains("WARNING"), "{}", c.text);

        let mut other = summary("etcd", Some(6000.0), 2.0);
        other.value_bytes = 128;
        let c = compare(&[summary("synod", None, 4.0), other]);
        assert_eq!(c.ratios, vec![None, Some(1.0)]);
        assert!(!c.fair);
        assert!(c.text.contains("do not share"), "{}", c.text);
        assert!(c.text.contains("n/a"), "{}", c.text);

        let c = compare(&[]);
        assert!(!c.fair && c.ratios.is_empty());
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(BASE64.encode(plain), encoded);
            assert_eq!(
                mock_etcd::base64_decode(encoded).as_deref(),
                Some(plain.as_bytes())
            );
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(mock_etcd::base64_decode(&BASE64.encode(&all)), Some(all));
        assert_eq!(mock_etcd::base64_decode("Zm9"), None);
    }

    #[test]
    fn etcd_bodies_and_endpoints() {
        let body = etcd_put_body(42, b"hello");
        // base64("log/42"), base64("hello")
        assert_eq!(body, json!({"key": "bG9nLzQy", "value": "aGVsbG8="}));
        assert_eq!(etcd_key(7), "log/7");
        let t = EtcdTarget::new("http://127.0.0.1:2379/", Duration::from_secs(1)).unwrap();
        assert_eq!(t.endpoint(), "http://127.0.0.1:2379");
        assert_eq!(t.describe(), "etcd http://127.0.0.1:2379/v3/kv/put");
        for bad in [
            "https://127.0.0.1:2379",
            "127.0.0.1:2379",
            "http://127.0.0.1:2379/v3",
            "http://h:1/?q",
        ] {
            assert!(
                matches!(
                    EtcdTarget::new(bad, Duration::from_secs(1)),
                    Err(Error::Config(_))
                ),
                "{bad} accepted"
            );
        }
        let e = etcd_error(
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error":"etcdserver: too many requests","message":"etcdserver: too many requests","code":14}"#,
        );
        assert_eq!(e.api_code(), Some("Unavailable"));
        assert!(e.is_retryable(false));
        let e = etcd_error(reqwest::StatusCode::BAD_GATEWAY, b"<html>");
        assert!(matches!(e, Error::UnexpectedResponse { .. }), "{e:?}");
    }

    /// A stand-in for etcd's HTTP/JSON gateway: stores puts, counts connections; key `log/13` answers 503 in the
    /// gateway's error shape and key `log/14` answers 200 with a body that is not a put answer.
    pub(crate) mod mock_etcd {
        use std::collections::BTreeMap;
        use std::convert::Infallible;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};

        use http_body_util::{BodyExt as _, Full};
        use hyper::body::{Bytes, Incoming};
        use hyper::{Request, Response};
        use hyper_util::rt::TokioIo;
        use serde_json::json;

        /// Decodes standard padded base64 (the gateway's encoding of bytes); None if malformed.
        pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(text).ok()
        }

        /// What one mock member saw.
        #[derive(Default)]
        pub(crate) struct State {
            pub(crate) connections: AtomicU64,
            pub(crate) puts: Mutex<BTreeMap<String, Vec<u8>>>,
            pub(crate) put_count: AtomicU64,
        }

        fn answer(status: u16, body: String) -> Response<Full<Bytes>> {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("valid response")
        }

        async fn handle(
            state: Arc<State>,
            req: Request<Incoming>,
        ) -> Result<Response<Full<Bytes>>, Infallible> {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            if parts.method != hyper::Method::POST || parts.uri.path() != "/v3/kv/put" {
                return Ok(answer(404, "Not Found".into()));
            }
            let parsed: Option<(String, Vec<u8>)> = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let key = base64_decode(v["key"].as_str()?)?;
                    let value = base64_decode(v["value"].as_str()?)?;
                    Some((String::from_utf8(key).ok()?, value))
                });
            let Some((key, value)) = parsed else {
                let msg = "bad put body";
                return Ok(answer(
                    400,
                    json!({"error": msg, "message": msg, "code": 3}).to_string(),
                ));
            };
            Ok(match key.as_str() {
                "log/13" => {
                    let msg = "etcdserver: too many requests";
                    answer(503, json!({"error": msg, "message": msg, "code": 14}).to_string())
                }
                "log/14" => answer(200, "{}".into()),
                _ => {
                    let revision = state.put_count.fetch_add(1, Ordering::SeqCst) + 2;
                    state.puts.lock().expect("lock").insert(key, value);
                    answer(
                        200,
                        json!({"header": {"cluster_id": "1", "member_id": "2",
                                          "revision": revision.to_string(), "raft_term": "2"}})
                        .to_string(),
                    )
                }
            })
        }

        /// Starts a member on a free port of 127.0.0.1; returns its URL and state.
        pub(crate) async fn start() -> (String, Arc<State>) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let state = Arc::new(State::default());
            let shared = state.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let state = shared.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            (url, state)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_target_against_a_mock_gateway() {
        let (url, state) = mock_etcd::start().await;
        let target = EtcdTarget::new(&url, Duration::from_secs(5)).unwrap();
        assert_eq!(target.write(5, b"abc").await.unwrap(), None);
        assert_eq!(
            state.puts.lock().unwrap().get("log/5").map(Vec::as_slice),
            Some(&b"abc"[..])
        );
        let e = target.write(13, b"x").await.unwrap_err();
        assert_eq!(e.status(), Some(reqwest::StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(e.api_code(), Some("Unavailable"));
        assert!(e.to_string().contains("too many requests"), "{e}");
        let e = target.write(14, b"x").await.unwrap_err();
        assert!(matches!(e, Error::UnexpectedResponse { .. }), "{e:?}");
        target
            .wait_committed(None, Duration::from_millis(1))
            .await
            .unwrap();

        // A whole run: same keys and values as for Synod, errors counted, nothing to wait for.
        let config = LoadConfig {
            requests: 300,
            value_bytes: 24,
            keys: 50,
            seed: 4,
            ..LoadConfig::default()
        };
        let targets: Vec<_> = (0..4)
            .map(|_| EtcdTarget::new(&url, Duration::from_secs(5)).unwrap())
            .collect();
        let report = run_load(targets, &config).await.unwrap();
        let failing = |k: u64| k == 13 || k == 14;
        let expected_errors = (0..300).filter(|&i| failing(key_for(4, i, 50))).count() as u64;
        assert_eq!(
            (report.requests, report.errors, report.clients),
            (300, expected_errors, 4)
        );
        assert_eq!(report.last_tx_id, None);
        assert!(report.committed_writes_per_s.is_some(), "{report:?}");
        assert_eq!(report.target, format!("etcd {url}/v3/kv/put"));
        let puts = state.puts.lock().unwrap();
        let expected_keys: std::collections::BTreeSet<String> = (0..300)
            .map(|i| key_for(4, i, 50))
            .filter(|&k| !failing(k))
            .map(etcd_key)
            .chain(["log/5".to_string()])
            .collect();
        assert_eq!(
            puts.keys().cloned().collect::<std::collections::BTreeSet<_>>(),
            expected_keys
        );
        assert!(puts.values().all(|v| v.len() == 24 || v == b"abc"));
        // About one connection per client (plus the first target's), not one per request: a busy machine may see a
        // connection re-opened now and then, so bound it instead of counting exactly.
        let connections = state.connections.load(Ordering::SeqCst);
        assert!(
            (5..=10).contains(&connections),
            "{connections} connections for 4 clients and 300 requests"
        );
    }
}
