//! One client connection's life, bounded in time: the TLS handshake within `--tls-handshake-timeout-ms`, each
//! request's headers within `--http-header-timeout-ms` (hyper's timer), each request answered within
//! `--http-request-timeout-ms`, and the connection closed after `--http-idle-timeout-ms` without traffic (a
//! watchdog that reads [`Activity`]). With the caps on connections and handshakes (in `rpc::serve`), a client
//! can hold at most a bounded number of file descriptors, each for a bounded time.
//!
//! ```text
//!  accept ─(connection + handshake slot)─▶ TLS ≤ handshake timeout ─(handshake slot freed)─▶ hyper http1
//!     each read/write ─▶ Activity ◀─ watchdog: idle ≥ T: graceful close; idle ≥ T + header timeout: dropped
//! ```

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// File descriptors kept for the node itself (RocksDB's table files, the Raft log's segment and the spare being
/// filled, ledger chunks, snapshots, node-to-node channels, the runtime's own) before client connections are
/// counted.
pub const FDS_RESERVED: u64 = 256 + synod_kv::storage::STORAGE_OPEN_FILES_MAX as u64;

/// When a connection last moved a byte, in milliseconds since it was accepted.
#[derive(Clone, Debug)]
pub struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    /// Activity starting now.
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Time since the last byte moved.
    pub fn idle(&self) -> Duration {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new()
    }
}

/// A stream that records in [`Activity`] every read or write that moved bytes.
pub struct Tracked<S> {
    inner: S,
    activity: Activity,
}

impl<S> Tracked<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, activity: Activity) -> Tracked<S> {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What the idle watchdog does about a connection idle for `idle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleVerdict {
    /// Leave it.
    Keep,
    /// Ask it to close once the request in flight (if any) is answered.
    CloseGracefully,
    /// Drop it now: it ignored the graceful close (a client that stopped reading its answer).
    Drop,
}

/// The watchdog's rule: graceful close after `idle_max` without traffic, forced close `grace` later.
pub fn idle_verdict(idle: Duration, idle_max: Duration, grace: Duration) -> IdleVerdict {
    if idle >= idle_max.saturating_add(grace) {
        IdleVerdict::Drop
    } else if idle >= idle_max {
        IdleVerdict::CloseGracefully
    } else {
        IdleVerdict::Keep
    }
}

/// Raises this process's soft file-descriptor limit to its hard limit and returns the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer, which lives on this stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// The client connection cap actually used: the configured one, lowered if the file-descriptor limit `fds`
/// cannot also hold the node's reserve and `others` (node-to-node and forwarding connections).
pub fn connection_cap(configured: u64, fds: u64, others: u64) -> u64 {
    let available = fds.saturating_sub(FDS_RESERVED + others);
    configured.min(available).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_are_closed_gracefully_then_dropped() {
        let (max, grace) = (Duration::from_secs(60), Duration::from_secs(10));
        assert_eq!(
            idle_verdict(Duration::from_secs(59), max, grace),
            IdleVerdict::Keep
        );
        assert_eq!(
            idle_verdict(Duration::from_secs(60), max, grace),
            IdleVerdict::CloseGracefully
        );
        assert_eq!(
            idle_verdict(Duration::from_secs(70), max, grace),
            IdleVerdict::Drop
        );
    }

    #[test]
    fn the_connection_cap_leaves_descriptors_for_the_ledger_and_store() {
        // Plenty of descriptors: the configured cap holds.
        assert_eq!(connection_cap(1024, 1 << 20, 64), 1024);
        // The common soft limit of 1024 would let clients take every descriptor: the cap is lowered.
        let cap = connection_cap(1024, 1024, 64);
        assert!(cap + FDS_RESERVED + 64 <= 1024, "cap {cap}");
        // Never zero, even when the limit is absurdly low.
        assert_eq!(connection_cap(1024, 10, 64), 1);
    }

    #[tokio::test]
    async fn tracked_streams_record_traffic() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (a, mut b) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut tracked = Tracked::new(a, activity.clone());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let idle_before = activity.idle();
        b.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        tracked.read_exact(&mut buf).await.expect("read");
        assert!(activity.idle() < idle_before, "a read resets the idle time");
    }
}
