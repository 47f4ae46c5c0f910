//! The load generator behind `synod-load`: K concurrent clients (each its own connection and task) issue N writes
//! in total, each request timed from send to answer, then the last write is waited for until Committed, so the
//! throughput reported is of *committed* writes, the number that matters for a ledger. The system under test is a
//! [`LoadTarget`], so that other systems (an etcd HTTP gateway, say) can be measured the same way beside Synod.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use synod_core::txid::TxId;

use crate::client::{Body, Client};
use crate::error::{Error, Result};
use crate::Method;

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
}

/// Synod: writes are `POST {path}` with `{"id": key, "msg": value}` (the logging app), committed once `/node/tx`
/// says so.
#[derive(Clone, Debug)]
pub struct SynodTarget {
    client: Client,
    path: String,
}

impl SynodTarget {
    /// A target writing to `path` (e.g. `/app/log/private`) through `client`.
    pub fn new(client: Client, path: &str) -> SynodTarget {
        SynodTarget {
            client,
            path: path.to_string(),
        }
    }
}

impl LoadTarget for SynodTarget {
    fn describe(&self) -> String {
        format!("synod {}{}", self.client.node_url(), self.path)
    }

    async fn write(&self, key: u64, value: &[u8]) -> Result<Option<TxId>> {
        let body = json!({ "id": key, "msg": String::from_utf8_lossy(value) });
        let response = self
            .client
            .call(Method::POST, &self.path, Some(Body::Json(body)), &[])
            .await?;
        Ok(Some(response.error_for_status()?.tx_id()?))
    }

    async fn wait_committed(&self, last: Option<TxId>, timeout: Duration) -> Result<()> {
        if let Some(tx_id) = last {
            self.client.wait_for_commit(tx_id, timeout).await?;
        }
        Ok(())
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
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadReport {
    /// [`LoadTarget::describe`].
    pub target: String,
    /// Requests issued (successes and errors).
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Value size.
    pub value_bytes: usize,
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

    /// The one-object JSON summary `synod-load --json` prints.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "target": self.target,
            "requests": self.requests,
            "errors": self.errors,
            "clients": self.clients,
            "value_bytes": self.value_bytes,
            "elapsed_s": round3(self.elapsed_s),
            "committed_writes_per_s": self.committed_writes_per_s.map(round3),
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "max_ms": round3(self.max_ms),
        })
    }

    /// A few lines for a person.
    pub fn human(&self) -> String {
        let mut s = format!(
            "target            {}\nclients           {}\nvalue bytes       {}\nrequests          {} ({} errors)\n",
            self.target, self.clients, self.value_bytes, self.requests, self.errors
        );
        s += &format!(
            "latency           p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms\n",
            self.p50_ms, self.p99_ms, self.max_ms
        );
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
        let outcome = target.write(key, &value).await;
        let latency = sent.elapsed();
        match outcome {
            Ok(tx) => {
                stats
                    .latencies_us
                    .push(latency.as_micros().try_into().unwrap_or(u64::MAX));
                if let Some(tx) = tx {
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

fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    // Nearest-rank percentile.
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

/// Runs the load: one task per target (so `targets.len()` concurrent clients, each with its own connection),
/// then waits, through the first target, for the highest returned tx id to be Committed.
pub async fn run_load<T: LoadTarget>(targets: Vec<T>, config: &LoadConfig) -> Result<LoadReport> {
    let clients = targets.len();
    let description = targets
        .first()
        .map(LoadTarget::describe)
        .ok_or_else(|| Error::Config("the load needs at least one client".into()))?;
    if config.keys == 0 {
        return Err(Error::Config("the key space must hold at least one key".into()));
    }
    let shared = Arc::new(config.clone());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + config.max_duration;
    let tasks: Vec<_> = targets
        .into_iter()
        .map(|t| tokio::spawn(worker(t, shared.clone(), next.clone(), deadline)))
        .collect();
    let mut first_target = None;
    let mut latencies = Vec::new();
    let (mut errors, mut first_error, mut last_tx) = (0u64, None, None::<TxId>);
    for task in tasks {
        let (target, stats) = task
            .await
            .map_err(|e| Error::Config(format!("a load client failed: {e}")))?;
        first_target.get_or_insert(target);
        latencies.extend(stats.latencies_us);
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
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let (committed_writes_per_s, commit_error) = match commit {
        Ok(()) if elapsed > 0.0 => (Some(successes as f64 / elapsed), None),
        Ok(()) => (None, Some("no time elapsed".to_string())),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(LoadReport {
        target: description,
        requests: successes + errors,
        errors,
        clients,
        value_bytes: config.value_bytes,
        elapsed_s: elapsed,
        committed_writes_per_s,
        p50_ms: percentile_ms(&latencies, 50.0),
        p99_ms: percentile_ms(&latencies, 99.0),
        max_ms: latencies.last().map_or(0.0, |&us| us as f64 / 1000.0),
        last_tx_id: last_tx,
        stopped_by_duration,
        first_error,
        commit_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An in-memory target: every write gets the next seqno; commits are instant; every 10th key fails.
    #[derive(Clone, Default)]
    struct Memory {
        seqno: Arc<AtomicU64>,
        written: Arc<Mutex<Vec<(u64, usize)>>>,
        waited_for: Arc<Mutex<Option<TxId>>>,
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
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(json.as_object().unwrap().len(), 10);
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
}
