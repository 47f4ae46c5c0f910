//! Prometheus metrics (`GET /node/metrics`, text exposition format 0.0.4): what an operator graphs and alerts on.
//! Counters and histograms are updated where things happen (the HTTP layer, the JS runtime, ordering); gauges are
//! read from the node when scraped. Every label set is bounded: routes are the router's templates (JavaScript
//! endpoints share one label), methods the few HTTP has, statuses at most 600.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use synod_core::txid::TxId;

/// Histogram buckets, in seconds (1 ms to 10 s).
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Request label sets kept (route × method × status); past it, requests count under `route="other"`.
const REQUEST_SERIES_MAX: usize = 2_048;
/// Transactions awaiting commit whose latency is measured; past it the oldest are not measured.
const COMMIT_WAITERS_MAX: usize = 65_536;

/// A cumulative histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bucket, count) in BUCKETS.iter().zip(&self.counts) {
            if secs <= *bucket {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bucket, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bucket}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// The node's metrics.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<Requests>,
    request_seconds: Histogram,
    commit_seconds: Histogram,
    js_seconds: Histogram,
    waiting: Mutex<VecDeque<(TxId, Instant)>>,
    disk: Mutex<Option<(Instant, Disk)>>,
}

/// What the data directory holds: ledger (bytes, files), and the newest committed snapshot's age in seconds.
pub type Disk = ((u64, u64), Option<u64>);

/// How long what was read from disk is reused.
const DISK_CACHE: Duration = Duration::from_secs(1);

/// Reads the ledger's size and the newest committed snapshot's age from `data_dir`.
pub fn read_disk(data_dir: &std::path::Path) -> Disk {
    let files = |dir: &str| {
        std::fs::read_dir(data_dir.join(dir))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name().to_string_lossy().to_string(), e.metadata().ok()?)))
            .collect::<Vec<_>>()
    };
    let ledger = files("ledger");
    let bytes = ledger.iter().map(|(_, m)| m.len()).sum();
    let newest = files("snapshots")
        .into_iter()
        .filter(|(name, _)| synod_core::snapshot::parse_committed_name(name).is_some())
        .filter_map(|(_, m)| m.modified().ok())
        .max();
    let age = newest.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs());
    ((bytes, ledger.len() as u64), age)
}

/// Request counts by route template, then method and status. Looked up by the route as borrowed, so counting a
/// request seen before allocates nothing.
#[derive(Default)]
struct Requests {
    by_route: BTreeMap<String, BTreeMap<(&'static str, u16), u64>>,
    /// (route, method, status) series kept; past [`REQUEST_SERIES_MAX`], new ones count under `route="other"`.
    series: usize,
}

impl Requests {
    fn count(&mut self, route: &str, method: &'static str, status: u16) {
        let known = self
            .by_route
            .get(route)
            .is_some_and(|counts| counts.contains_key(&(method, status)));
        let route = if known || self.series < REQUEST_SERIES_MAX {
            route
        } else {
            "other"
        };
        if !self.by_route.contains_key(route) {
            self.by_route.insert(route.to_string(), BTreeMap::new());
        }
        let Some(counts) = self.by_route.get_mut(route) else {
            return;
        };
        let n = counts.entry((method, status)).or_insert_with(|| {
            self.series += 1;
            0
        });
        *n += 1;
    }
}

/// What the node reports when scraped (read at that moment).
pub struct Gauges {
    /// The Raft term.
    pub view: u64,
    /// Whether this node is the primary.
    pub is_primary: bool,
    /// The service commit's seqno.
    pub commit_seqno: u64,
    /// Trusted peers known, and those with an open outgoing connection.
    pub peers: (usize, usize),
    /// Bytes and files of the ledger directory.
    pub ledger: (u64, u64),
    /// Seconds since the newest committed snapshot was written, if any.
    pub snapshot_age_s: Option<u64>,
    /// Open governance proposals.
    pub open_proposals: u64,
    /// Resident memory, bytes.
    pub rss_bytes: Option<u64>,
}

impl Metrics {
    /// Counts a request answered `status` by `route` (a router template) and the time it took.
    pub fn request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.request_seconds.observe(took);
        // Any token is a valid HTTP method: only the standard ones get their own label.
        let method = match method {
            "GET" => "GET",
            "HEAD" => "HEAD",
            "POST" => "POST",
            "PUT" => "PUT",
            "DELETE" => "DELETE",
            "PATCH" => "PATCH",
            "OPTIONS" => "OPTIONS",
            _ => "OTHER",
        };
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .count(route, method, status);
    }

    /// What `read` reads from disk, at most once a second.
    pub fn disk(&self, read: impl FnOnce() -> Disk) -> Disk {
        let mut cached = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        match *cached {
            Some((at, disk)) if at.elapsed() < DISK_CACHE => disk,
            _ => {
                let disk = read();
                *cached = Some((Instant::now(), disk));
                disk
            }
        }
    }

    /// Times one JavaScript handler run.
    pub fn js_run(&self, took: Duration) {
        self.js_seconds.observe(took);
    }

    /// Notes a transaction this node ordered, to time it until it is committed.
    pub fn ordered(&self, tx: TxId) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.len() >= COMMIT_WAITERS_MAX {
            waiting.pop_front();
        }
        waiting.push_back((tx, Instant::now()));
    }

    /// The service commit moved to `commit`: transactions ordered in its view up to it are committed (those of
    /// an earlier view may have been rolled back, and are not timed).
    pub fn committed(&self, commit: TxId) {
        let now = Instant::now();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        while waiting.front().is_some_and(|(tx, _)| tx.seqno <= commit.seqno) {
            if let Some((tx, at)) = waiting.pop_front() {
                if tx.view == commit.view {
                    self.commit_seconds.observe(now.duration_since(at));
                }
            }
        }
    }

    /// The exposition text.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP synod_http_requests_total HTTP requests answered, by route, method and status.\n",
        );
        out.push_str("# TYPE synod_http_requests_total counter\n");
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let series = requests.by_route.iter().flat_map(|(route, counts)| {
            counts
                .iter()
                .map(move |((method, status), n)| (route, method, status, n))
        });
        for (route, method, status, n) in series {
            let _ = writeln!(
                out,
                "synod_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        self.request_seconds.render(
            &mut out,
            "synod_http_request_duration_seconds",
            "Time to answer an HTTP request.",
        );
        self.commit_seconds.render(
            &mut out,
            "synod_commit_latency_seconds",
            "Time from ordering a transaction on this primary to its commit.",
        );
        self.js_seconds.render(
            &mut out,
            "synod_js_execution_seconds",
            "Time one JavaScript handler ran.",
        );
        let mut samples: Vec<(&str, &str, &str, String)> = vec![
            ("synod_raft_term", "gauge", "The current view (Raft term).", g.view.to_string()),
            ("synod_raft_is_primary", "gauge", "1 on the primary, 0 elsewhere.", u8::from(g.is_primary).to_string()),
            ("synod_commit_seqno", "gauge", "The service commit's sequence number.", g.commit_seqno.to_string()),
            (
                "synod_committed_transactions_total",
                "counter",
                "Transactions committed since the service began (the commit's seqno); rate() gives committed tx/s.",
                g.commit_seqno.to_string(),
            ),
            ("synod_peers", "gauge", "Trusted peers this node knows of.", g.peers.0.to_string()),
            (
                "synod_peers_connected",
                "gauge",
                "Peers with an open outgoing node-to-node connection.",
                g.peers.1.to_string(),
            ),
            ("synod_ledger_bytes", "gauge", "Size of the ledger files.", g.ledger.0.to_string()),
            ("synod_ledger_chunks", "gauge", "Ledger files (chunks).", g.ledger.1.to_string()),
            (
                "synod_governance_open_proposals",
                "gauge",
                "Governance proposals open for ballots.",
                g.open_proposals.to_string(),
            ),
        ];
        if let Some(age) = g.snapshot_age_s {
            samples.push((
                "synod_snapshot_age_seconds",
                "gauge",
                "Seconds since the newest committed snapshot was written.",
                age.to_string(),
            ));
        }
        if let Some(rss) = g.rss_bytes {
            samples.push((
                "synod_process_resident_memory_bytes",
                "gauge",
                "Resident memory.",
                rss.to_string(),
            ));
        }
        for (name, kind, help, value) in samples {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Resident memory of this process (Linux), bytes.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_cumulatively_and_commit_latency_counts_its_view_only() {
        let m = Metrics::default();
        m.request("GET", "/node/commit", 200, Duration::from_millis(3));
        m.request("GET", "/node/commit", 200, Duration::from_millis(30));
        m.request("POST", "/app/*", 503, Duration::from_millis(1));
        m.ordered(TxId::new(2, 10));
        m.ordered(TxId::new(2, 11));
        m.ordered(TxId::new(3, 12));
        m.committed(TxId::new(3, 11));
        m.committed(TxId::new(3, 12));
        m.js_run(Duration::from_micros(500));
        let g = Gauges {
            view: 3,
            is_primary: true,
            commit_seqno: 12,
            peers: (2, 1),
            ledger: (1000, 2),
            snapshot_age_s: Some(5),
            open_proposals: 1,
            rss_bytes: Some(1 << 20),
        };
        let text = m.render(&g);
        for line in [
            "synod_http_requests_total{route=\"/node/commit\",method=\"GET\",status=\"200\"} 2",
            "synod_http_requests_total{route=\"/app/*\",method=\"POST\",status=\"503\"} 1",
            "synod_http_request_duration_seconds_bucket{le=\"0.005\"} 2",
            "synod_http_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            // Two view-2 transactions were overtaken by a view-3 commit: only the view-3 one is timed.
            "synod_commit_latency_seconds_count 1",
            "synod_js_execution_seconds_bucket{le=\"0.001\"} 1",
            "synod_raft_is_primary 1",
            "synod_committed_transactions_total 12",
            "synod_peers_connected 1",
            "synod_snapshot_age_seconds 5",
        ] {
            assert!(text.contains(line), "missing {line}:\n{text}");
        }
        // Every sample line is `name{labels} value` or `name value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }

    #[test]
    fn request_series_are_bounded() {
        let m = Metrics::default();
        for i in 0..REQUEST_SERIES_MAX + 10 {
            m.request("GET", &format!("/r{i}"), 200, Duration::ZERO);
        }
        let requests = m.requests.lock().unwrap();
        assert_eq!(requests.series, REQUEST_SERIES_MAX + 1);
        assert_eq!(requests.by_route["other"][&("GET", 200)], 10);
    }
}
