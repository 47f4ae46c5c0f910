//! The node's I/O shell around the [`Replica`] (the one owner of the pure [`Core`]): start-up (the new, joined,
//! recovered and resumed boots of `boot.rs`), the Raft thread that owns the replica and executes its commands, the
//! store thread (Raft log writes, in order), the applier (committed entries → ledger chunks + RocksDB) and the
//! snapshotter.
//!
//! ```text
//!  peers ══TLS══▶ inbox ─▶ Raft thread: Replica::handle / calls / turn ─▶ commands
//!  rpc handlers ─ask()──▶ calls (bounded; full → 503)       │ read the published View without asking
//!                                 Send ─▶ channels           │
//!                                 Persist / Install / Compact / Apply ─▶ store thread (fsync) ─▶ Persisted
//!                                                                       └─▶ applier ─▶ ledger files + RocksDB
//!                                 WriteSnapshot ─▶ snapshotter ─▶ snapshots/ ─▶ SnapshotWritten ─▶ evidence
//! ```
//!
//! Handlers never touch the core: they read the [`View`] the Raft thread publishes after every turn (and before
//! it answers calls, so a client that saw its write acknowledged reads it), and send what needs the core itself
//! (ordering a transaction, receipts, statuses) as a call through the bounded call queue (separate from the peers'
//! inbox, so that clients, whom anyone can be, never crowd out Raft messages). Any I/O failure on the
//! ledger or the stores stops the node: continuing could report a write Committed that is not on disk.

mod boot;
mod identities;
pub mod recovery;
mod snapshots;

pub use identities::*;
pub use snapshots::*;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use raft::eraftpb::{Message, SnapshotMetadata};
use serde::{Deserialize, Serialize};
use synod_core::cert::{self, Identity};
use synod_core::maps;
use synod_core::tables::{NodeInfo, NodeStatus};
use synod_core::txid::TxId;
use synod_kv::seal::{LedgerSecret, Sealer};
use synod_kv::storage::Storage;
use synod_kv::{State, Tx};

use crate::channels::{ChannelTls, Channels, Directory, PeerInfo};
use crate::config::NodeConfig;
use crate::consensus::machine::{Core, CoreConfig, CoreError, Genesis, Keys, Outcome, Restore, SnapshotJob};
use crate::consensus::persist::{self, LogWrite, RaftLog};
use crate::consensus::replica::{Command, Input, PersistJob, Replica, ReplicaTiming};
use crate::consensus::{raft_id, RaftTiming};
use crate::ledger_files::writer::LedgerWriter;
use crate::ledger_files::CommittedEntry;
use crate::platform::{Platform, QuoteInfo};
use crate::snapshot_codec;

/// How often a transaction that conflicts is run again before the request fails.
pub const CONFLICT_RETRIES_MAX: usize = 64;
/// Committed snapshots kept on disk.
const SNAPSHOTS_KEPT: usize = 2;
/// File in a recovered node's data directory: the seqno of the snapshot its history starts from (the previous
/// service's ledger before it is never replayed: its private writes are under a secret the node may not hold).
const RECOVERED_FROM: &str = "recovered_from";
/// Events queued for the event loop (peers' Raft messages, wake-ups). When full, Raft messages are dropped (Raft
/// retransmits) and wake-ups are redundant: the loop is busy with what is queued.
const INBOX_EVENTS_MAX: usize = 16 * 1024;
/// Handlers' calls queued for the Raft thread, in a queue of their own so that a flood of client requests (which
/// anyone can send) never takes the places of peers' Raft messages. When full, handlers answer 503.
const CALLS_MAX: usize = 4 * 1024;
/// Calls the Raft thread runs between two looks at its peers' messages and its timers.
const CALLS_PER_TURN: usize = 1024;
/// Inbox events (peers' messages, wake-ups) taken per turn of the Raft thread.
const INBOX_PER_TURN: usize = 4096;
/// How long a stopping primary waits for its last signature to commit.
const STOP_COMMIT_WAIT_MS: u64 = 2_000;
/// Jobs queued for the store thread (Raft log writes, snapshot installs, compactions, committed batches). When
/// full, the Raft thread waits for the disk.
const STORE_JOBS_MAX: usize = 64;
/// Batches of committed entries queued for the applier. When full, the event loop waits for the disk: slow
/// storage slows ordering down (max_uncommitted_size then turns writes away with 503) instead of growing memory.
const APPLY_BATCHES_MAX: usize = 64;
/// Snapshots queued for the snapshotter. Each holds a version of the whole state; one more due while one is
/// queued is skipped (the next snapshot point comes `--snapshot-tx-interval` later).
const SNAPSHOT_JOBS_MAX: usize = 1;

/// Why running a transaction failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError<E> {
    /// The handler itself refused (bad input, not found, ...); nothing was written.
    #[error("{0}")]
    Handler(E),
    /// The transaction writes and this node is not the primary: forward it.
    #[error("this node is not the primary")]
    NotPrimary,
    /// The primary holds as many uncommitted transactions as it may: nothing was ordered; retry shortly.
    #[error("too many ordered transactions are waiting to commit (--uncommitted-bytes-max); retry")]
    Busy,
    /// The transaction kept conflicting with concurrent ones.
    #[error("transaction conflicted {CONFLICT_RETRIES_MAX} times in a row")]
    TooManyConflicts,
    /// The node is stopping or broken.
    #[error("{0}")]
    Unavailable(String),
}

/// Why a call to the replica did not run.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The Raft thread's inbox is full: nothing ran; retry shortly.
    #[error("the node is busy (its Raft thread's queue is full); retry")]
    Busy,
    /// The node is stopping or broken.
    #[error("the node is stopping")]
    Stopped,
}

impl<E> From<AskError> for ExecError<E> {
    fn from(e: AskError) -> ExecError<E> {
        match e {
            AskError::Busy => ExecError::Busy,
            AskError::Stopped => ExecError::Unavailable(e.to_string()),
        }
    }
}

/// A call run on the Raft thread; what it returns answers the caller once the view is published.
type Call = Box<dyn FnOnce(&mut Core) -> Box<dyn FnOnce() + Send> + Send>;

enum LoopEvent {
    Raft(Message),
    Wake,
    /// Whether a snapshot message reached its peer.
    SnapshotSent {
        to: u64,
        delivered: bool,
    },
    SnapshotWritten {
        seqno: u64,
        digest: [u8; 32],
    },
}

/// Work for the store thread, in the order the replica handed it out.
enum StoreJob {
    Install {
        snapshot: crate::consensus::machine::InstalledSnapshot,
        hard_state: raft::eraftpb::HardState,
    },
    Persist(PersistJob),
    Compact(SnapshotMetadata),
    Apply(Vec<CommittedEntry>),
}

/// One run of a transaction's function ([`Node::attempt`]).
pub enum Attempt<T> {
    /// It only read: done.
    Done(T, Outcome),
    /// It wrote: this transaction is to be ordered.
    Order(T, Tx),
}

/// What handlers read without asking the replica (see the module doc).
#[derive(Clone, Default)]
pub struct View {
    /// The state transactions run on: the speculative one on the primary, the committed one elsewhere.
    pub state: State,
    /// The id of the version `state` is at.
    pub read_id: TxId,
    /// The committed state.
    pub committed_state: State,
    /// Whether this node is the primary.
    pub is_primary: bool,
    /// Raft id of the primary this node knows of (0: none).
    pub primary: u64,
    /// The current view (Raft term).
    pub view: u64,
    /// The service commit.
    pub committed: TxId,
    /// Whether this node is in the Raft configuration.
    pub is_member: bool,
    /// Voters and learners.
    pub configuration: (Vec<u64>, Vec<u64>),
    /// The seqno the ledger in memory starts after (historical reads before it need another node).
    pub ledger_base: u64,
}

impl View {
    fn of(core: &Core) -> View {
        let state = core.snapshot();
        View {
            read_id: core.tx_id_at(state.version()),
            state,
            committed_state: core.committed_state().clone(),
            is_primary: core.is_primary(),
            primary: core.primary(),
            view: core.view(),
            committed: core.committed(),
            is_member: core.is_member(),
            configuration: core.configuration(),
            ledger_base: core.ledger_base(),
        }
    }

    /// Whether this view still describes `core` (checked without building a new one: the Raft thread asks after
    /// every turn). Every configuration change is a committed entry, so the committed state's version covers it.
    fn describes(&self, core: &Core) -> bool {
        self.is_primary == core.is_primary()
            && self.state.version() == core.snapshot().version()
            && self.committed_state.version() == core.committed_state().version()
            && (self.primary, self.view, self.committed, self.ledger_base)
                == (core.primary(), core.view(), core.committed(), core.ledger_base())
            && self.is_member == core.is_member()
    }
}

enum ApplyJob {
    Apply(Vec<CommittedEntry>),
    /// Replace the stored state and restart the ledger after an installed snapshot; acknowledged when done.
    Reset {
        state: State,
        done: mpsc::SyncSender<anyhow::Result<()>>,
    },
    /// Store the state of the snapshot a node joined from, before anything applied after it. Done here, not
    /// before the node serves: storing a million keys takes a second or two, and a crash before it is done is
    /// repaired at restart (the stored state lags the Raft log's start, so the install is redone).
    StoreJoinedState(State),
}

/// A node's files.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The data directory.
    pub dir: PathBuf,
}

impl Paths {
    /// Ledger chunks.
    pub fn ledger(&self) -> PathBuf {
        self.dir.join("ledger")
    }
    /// Snapshot files.
    pub fn snapshots(&self) -> PathBuf {
        self.dir.join("snapshots")
    }
    /// RocksDB.
    pub fn db(&self) -> PathBuf {
        self.dir.join("db")
    }
    /// The Raft log's segments.
    pub fn raft(&self) -> PathBuf {
        self.dir.join("raft")
    }
    /// A file in the data directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

struct Shared {
    view: RwLock<Arc<View>>,
    stopping: AtomicBool,
    fatal: Mutex<Option<String>>,
    /// The last seqno the applier wrote to the ledger files: readable there (historical reads, change feeds).
    ledger_written: AtomicU64,
    /// The last seqno fsynced to the ledger files: the Raft log may be compacted up to it.
    ledger_durable: AtomicU64,
}

/// The primary's turn pacing (`--raft-batch-us`). Under load, a turn started at once for every request that arrives
/// orders one or two writes: each turn is then an append to every backup, a synced Raft-log write on every node, and
/// wake-ups of a dozen threads, for two writes. After a turn that took [`PACED_TURN_CALLS`] requests or more, the
/// next one starts no sooner than `gap` after it, so that what arrives meanwhile (requests, peers' answers, synced
/// writes) is handled as one batch. A lone request (light load) still gets a turn at once: it never waits.
struct TurnPacing {
    gap: Duration,
    /// When the last turn that took enough requests started.
    busy_since: Option<Instant>,
}

/// Requests one turn must take for the next to be paced: one is a client waiting alone, two already a queue.
const PACED_TURN_CALLS: usize = 2;

impl TurnPacing {
    fn new(gap: Duration) -> TurnPacing {
        TurnPacing {
            gap,
            busy_since: None,
        }
    }

    /// How long to wait, at `now`, before the next turn.
    fn pause(&self, now: Instant) -> Option<Duration> {
        let end = self.busy_since? + self.gap;
        (end > now).then(|| end - now)
    }

    /// Records a turn that started at `started` and took `calls` requests (paced only on the primary: a backup
    /// takes no writes, and its turns follow the primary's).
    fn turn(&mut self, started: Instant, calls: usize, primary: bool) {
        if primary && calls >= PACED_TURN_CALLS && !self.gap.is_zero() {
            self.busy_since = Some(started);
        }
    }
}

/// A wait for room in a queue this long is logged: the Raft thread sends no heartbeats while it waits, and a
/// wait of 10–20 ticks lets the backups elect another primary.
const QUEUE_WAIT_WARN: Duration = Duration::from_millis(100);

/// Sends `job` on a bounded queue, waiting for room if it is full (so that slow storage slows the sender down
/// instead of growing memory), and warns when that wait took [`QUEUE_WAIT_WARN`] or more: `who` names the waiter
/// and what it waited for, for an operator looking for why a node stalled. Fails only if the receiver is gone.
fn send_waiting<T>(queue: &SyncSender<T>, job: T, who: &'static str) -> Result<(), mpsc::SendError<T>> {
    let job = match queue.try_send(job) {
        Ok(()) => return Ok(()),
        Err(TrySendError::Disconnected(job)) => return Err(mpsc::SendError(job)),
        Err(TrySendError::Full(job)) => job,
    };
    let started = Instant::now();
    let sent = queue.send(job);
    let waited = started.elapsed();
    if waited >= QUEUE_WAIT_WARN {
        tracing::warn!(
            waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            "{who}"
        );
    }
    sent
}

/// A bounded queue seen from its sender, with a backlog of its own bounded in bytes: while the queue is full, jobs
/// wait here instead of holding the sender, so that a disk holding one sync for a while does not hold the Raft thread
/// too (it goes on sending heartbeats and appends and taking the backups' answers, which commit writes whatever this
/// node's own sync is doing; a stalled primary used to stop heartbeating after 64 jobs, and a stall of 10–20 ticks
/// let the backups elect another). Jobs reach the queue in the order they were pushed. Past `bytes_max` held, the
/// sender waits for room as before ([`send_waiting`]).
struct Backlog<T> {
    queue: SyncSender<T>,
    /// Jobs and their weights (weighed once: a job's weight walks its entries).
    held: std::collections::VecDeque<(T, u64)>,
    held_bytes: u64,
    bytes_max: u64,
    weigh: fn(&T) -> u64,
    /// When the queue was last found full with nothing held, for the warning once it caught up.
    behind_since: Option<Instant>,
    who: &'static str,
}

impl<T> Backlog<T> {
    /// In front of `queue`, holding at most `bytes_max` as `weigh` counts them; `who` names the sender and the
    /// queue in warnings.
    fn new(queue: SyncSender<T>, bytes_max: u64, weigh: fn(&T) -> u64, who: &'static str) -> Backlog<T> {
        Backlog {
            queue,
            held: std::collections::VecDeque::new(),
            held_bytes: 0,
            bytes_max,
            weigh,
            behind_since: None,
            who,
        }
    }

    /// Queues `job` after those held, holding it if the queue is full; waits for room only past the bound.
    fn push(&mut self, job: T) -> Result<(), mpsc::SendError<T>> {
        self.flush()?;
        let job = if self.held.is_empty() {
            match self.queue.try_send(job) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(job)) => return Err(mpsc::SendError(job)),
                Err(TrySendError::Full(job)) => job,
            }
        } else {
            job
        };
        self.behind_since.get_or_insert_with(Instant::now);
        let weight = (self.weigh)(&job);
        self.held_bytes += weight;
        self.held.push_back((job, weight));
        while self.held_bytes > self.bytes_max && self.hand_over_oldest()? {}
        Ok(())
    }

    /// Hands the oldest held job over, waiting for room; false if none was held.
    fn hand_over_oldest(&mut self) -> Result<bool, mpsc::SendError<T>> {
        let Some((job, weight)) = self.held.pop_front() else {
            return Ok(false);
        };
        self.held_bytes -= weight;
        send_waiting(&self.queue, job, self.who)?;
        Ok(true)
    }

    /// Hands held jobs over while the queue has room.
    fn flush(&mut self) -> Result<(), mpsc::SendError<T>> {
        while let Some((job, weight)) = self.held.pop_front() {
            match self.queue.try_send(job) {
                Ok(()) => self.held_bytes -= weight,
                Err(TrySendError::Full(job)) => {
                    self.held.push_front((job, weight));
                    return Ok(());
                }
                Err(TrySendError::Disconnected(job)) => return Err(mpsc::SendError(job)),
            }
        }
        if let Some(since) = self.behind_since.take() {
            let behind = since.elapsed();
            if behind >= QUEUE_WAIT_WARN {
                tracing::warn!(
                    behind_ms = u64::try_from(behind.as_millis()).unwrap_or(u64::MAX),
                    "{}: its queue was full; jobs waited in the backlog meanwhile",
                    self.who
                );
            }
        }
        Ok(())
    }

    /// Whether jobs are held (the queue was full at the last push or flush).
    fn is_behind(&self) -> bool {
        !self.held.is_empty()
    }

    /// Hands every held job over, waiting for room (when the sender stops).
    fn flush_all(&mut self) -> Result<(), mpsc::SendError<T>> {
        while self.hand_over_oldest()? {}
        self.behind_since = None;
        Ok(())
    }
}

impl StoreJob {
    /// The bytes a held job keeps in memory (entries and snapshots; the rest is small).
    fn bytes(&self) -> u64 {
        let n = match self {
            StoreJob::Install { snapshot, .. } => snapshot.bytes.len(),
            StoreJob::Persist(job) => job.entries.iter().map(|e| e.data.len() + 64).sum(),
            StoreJob::Compact(_) => 64,
            StoreJob::Apply(entries) => entries.iter().map(|e| 2 * e.frame.len() + 64).sum(),
        };
        n as u64
    }
}

/// Handlers' calls for the Raft thread: a bounded queue of their own, and at most one wake-up in the peers' inbox
/// however many calls wait, so that no number of client requests can fill the inbox.
struct CallQueue {
    calls: Mutex<SyncSender<Call>>,
    inbox: Mutex<SyncSender<LoopEvent>>,
    wake_pending: AtomicBool,
}

impl CallQueue {
    fn new(inbox: SyncSender<LoopEvent>, max: usize) -> (CallQueue, Receiver<Call>) {
        let (tx, rx) = mpsc::sync_channel(max);
        let queue = CallQueue {
            calls: Mutex::new(tx),
            inbox: Mutex::new(inbox),
            wake_pending: AtomicBool::new(false),
        };
        (queue, rx)
    }

    /// Queues `call` and wakes the Raft thread, or says why not (full: busy; closed: stopped).
    fn push(&self, call: Call) -> Result<(), AskError> {
        match self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_send(call)
        {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(AskError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(AskError::Stopped),
        }
        // `take` clears the flag before it looks at the queue: a call queued after that finds it clear and wakes.
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            // A full inbox needs no wake-up: the loop has work and takes calls on every turn.
            let _ = self
                .inbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .try_send(LoopEvent::Wake);
        }
        Ok(())
    }

    /// Runs up to `max` queued calls through `run`; true when more are left.
    fn take(&self, queued: &Receiver<Call>, max: usize, mut run: impl FnMut(Call)) -> bool {
        self.wake_pending.store(false, Ordering::SeqCst);
        for (taken, call) in queued.try_iter().enumerate() {
            run(call);
            if taken + 1 == max {
                return true;
            }
        }
        false
    }
}

impl Shared {
    fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publishes the core's view if it changed.
    fn publish(&self, core: &Core) {
        if self.view().describes(core) {
            return;
        }
        let fresh = Arc::new(View::of(core));
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    fn die(&self, reason: String) {
        tracing::error!("{reason}; the node stops");
        let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if fatal.is_none() {
            *fatal = Some(reason);
        }
        self.stopping.store(true, Ordering::Release);
    }
}

/// How the node comes up.
pub enum Boot {
    /// Create a new service (an empty data directory).
    NewService {
        /// User certificates (PEM paths) recorded at genesis.
        users: Vec<PathBuf>,
        /// Members (certificate and encryption key paths) recorded at genesis.
        members: Vec<crate::config::MemberSpec>,
        /// Recovery shares needed (default 1).
        recovery_threshold: Option<u64>,
        /// Development mode (no members): the digest of the join token joiners must present.
        join_token_digest: Option<String>,
    },
    /// Joined an existing service: identities from the join, and the snapshot it started from, if any.
    Joined {
        /// Identities received.
        ids: Identities,
        /// The committed snapshot to start from.
        snapshot: Option<Vec<u8>>,
        /// Peers known at join time.
        peers: Vec<PeerInfo>,
    },
    /// Resume the node in an existing data directory.
    Resume,
    /// Recover a lost service from its ledger files: a new service identity over its public state (docs/RECOVERY.md).
    Recover {
        /// The previous service's ledger directory.
        ledger: PathBuf,
        /// Where the snapshot it starts after is, if it does not start at 1 (default: its `../snapshots`).
        snapshots: Option<PathBuf>,
    },
}

/// A running node.
pub struct Node {
    shared: Arc<Shared>,
    /// Its files.
    pub paths: Paths,
    /// The service certificate (PEM).
    pub service_cert_pem: String,
    /// The service identity (PEM cert and key).
    pub service: Identity,
    /// This node's TLS identity (endorsed by the service identity).
    pub node_identity: Identity,
    /// The TLS certificate this node presents (to clients and peers), renewed in place by governance.
    pub node_cert: Arc<crate::channels::NodeCert>,
    /// The attestation platform.
    pub platform: Arc<dyn Platform>,
    /// This node's evidence, binding its TLS key: produced once at start (`GET /node/quotes/self` serves it, so
    /// no request makes the platform produce a quote).
    pub evidence: QuoteInfo,
    /// Known peers (shared with the channels and RPC forwarding).
    pub directory: Directory,
    /// Receipts for transactions flushed from memory, rebuilt from the ledger files.
    pub historical: crate::historical::Historical,
    /// The service commit and the view, published whenever they move (long polls on `/node/tx` wait on it).
    commits: tokio::sync::watch::Sender<(u64, TxId)>,
    /// Prometheus metrics (`GET /node/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// This node's address for clients, as bound.
    pub rpc_address: SocketAddr,
    /// This node's address for clients as published (`host:port`).
    pub rpc_published: String,
    /// This node's address for peers as published (`host:port`).
    pub node_address: String,
    channels: Arc<Channels>,
    /// The runtime the channels run on (see [`ChannelRuntime`]).
    _channel_runtime: ChannelRuntime,
    /// The runtime serving clients (forwarded requests run there too).
    runtime: tokio::runtime::Handle,
    inbox: Mutex<SyncSender<LoopEvent>>,
    calls: CallQueue,
    threads: Mutex<Vec<JoinHandle<()>>>,
    cfg: NodeConfig,
    storage: Storage,
    /// The Raft log, written by the store thread.
    raft: Mutex<RaftLog>,
    sealer: Sealer,
    ledger_secret: LedgerSecret,
    /// First seqno this run of the node ordered or received.
    startup_seqno: u64,
    /// This node's id.
    node_id: String,
    /// This node's Raft id.
    raft_id: u64,
    /// The private recovery of a previous service runs (`crate::service::recovery::start_private_recovery`).
    private_recovery: AtomicBool,
    /// Version of the previous-service record whose secrets and identities are installed
    /// ([`Node::sync_previous_service`]).
    previous_synced: Mutex<Option<u64>>,
}

/// Seconds since the epoch (for COSE `iat`).
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Writes a file atomically with mode 0600, synced.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    synod_kv::seal::write_private(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn core_config(cfg: &NodeConfig) -> CoreConfig {
    CoreConfig {
        sig_tx_interval: cfg.sig_tx_interval,
        ledger_chunk_bytes: cfg.ledger_chunk_bytes,
        snapshot_tx_interval: cfg.snapshot_tx_interval,
        timing: RaftTiming {
            uncommitted_bytes_max: cfg.limits.uncommitted_bytes_max,
            ..RaftTiming::default()
        },
    }
}

/// The evidence of the node whose id (hex SHA-256 of its TLS key) is `node_id`.
fn own_evidence(platform: &dyn Platform, node_id: &str) -> anyhow::Result<QuoteInfo> {
    let digest = synod_core::hash::digest_from_hex(node_id).context("a node id is a SHA-256 digest")?;
    Ok(platform.evidence(&digest)?)
}

/// Fails if `paths` holds a ledger without a node (Raft state) over it: creating a service there would mix two
/// histories.
fn refuse_existing_ledger(paths: &Paths, advice: &str) -> anyhow::Result<()> {
    if paths.ledger().exists() && std::fs::read_dir(paths.ledger())?.next().is_some() {
        bail!(
            "{} holds a ledger but no Raft state: {advice}",
            paths.dir.display()
        );
    }
    Ok(())
}

/// This node's RSA encryption key file.
const ENCRYPTION_KEY_FILE: &str = "node_enc_privk.pem";
/// The node's ledger secret schedule after its first secret: JSON `[{"from", "secret": base64}]`.
const SCHEDULE_FILE: &str = "ledger_secrets.json";

/// The addresses this node publishes (node-to-node, then client-facing): as configured, or the bound ones.
fn published_addresses(cfg: &NodeConfig, bound_node: SocketAddr, rpc: SocketAddr) -> (String, String) {
    let node_address = cfg
        .node_published_address
        .clone()
        .unwrap_or_else(|| bound_node.to_string());
    let rpc_published = cfg
        .rpc_published_address
        .clone()
        .unwrap_or_else(|| rpc.to_string());
    (node_address, rpc_published)
}

/// The peers a node knows at start: those it was handed at join time, then the committed nodes table's.
fn directory_of(peers: Vec<PeerInfo>, committed: &State, self_id: u64) -> Directory {
    let directory: Directory = Arc::new(RwLock::new(HashMap::new()));
    {
        let mut d = directory.write().unwrap_or_else(|p| p.into_inner());
        for p in peers {
            d.insert(raft_id(&p.node_id), p);
        }
    }
    refresh_directory(&directory, committed, self_id);
    directory
}

/// The node-to-node channels' own runtime, one thread: Raft messages and their acknowledgements then never wait
/// behind clients' HTTP requests for a worker of the main runtime (under load, each hop between two nodes' Raft
/// threads waited ~1.5 ms there). Shut down in the background when the node is dropped, which may happen on
/// another runtime's thread.
struct ChannelRuntime(Option<tokio::runtime::Runtime>);

impl ChannelRuntime {
    /// Starts it; also returns a handle to spawn on it.
    fn start() -> anyhow::Result<(ChannelRuntime, tokio::runtime::Handle)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("channels")
            .enable_all()
            .build()
            .context("starting the channels' runtime")?;
        let handle = runtime.handle().clone();
        Ok((ChannelRuntime(Some(runtime)), handle))
    }
}

impl Drop for ChannelRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Starts the node-to-node channels and their listener on `runtime`: Raft messages and snapshot reports go to the
/// event loop's inbox.
#[allow(clippy::too_many_arguments)]
fn start_channels(
    cfg: &NodeConfig,
    tls: ChannelTls,
    self_id: u64,
    directory: Directory,
    node_listener: std::net::TcpListener,
    inbox_tx: &SyncSender<LoopEvent>,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<Arc<Channels>> {
    let channels = Arc::new(
        Channels::new(self_id, directory, &tls, runtime.clone())?
            .with_source_address(cfg.node_source_address),
    );
    let report_tx = Mutex::new(inbox_tx.clone());
    channels.set_snapshot_report(Arc::new(move |to, delivered| {
        let _ = report_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_send(LoopEvent::SnapshotSent { to, delivered });
    }));
    let deliver_tx = Mutex::new(inbox_tx.clone());
    let deliver: Arc<dyn Fn(Message) + Send + Sync> = Arc::new(move |m| {
        let sent = deliver_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_send(LoopEvent::Raft(m));
        if let Err(TrySendError::Full(_)) = sent {
            tracing::debug!("event loop inbox full: dropping a Raft message (it is retransmitted)");
        }
    });
    node_listener.set_nonblocking(true)?;
    let server_config = tls.server_config()?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(node_listener)?
    };
    runtime.spawn(crate::channels::serve(
        listener,
        server_config,
        channels.clone(),
        deliver,
        cfg.limits.node_connections_max as usize,
    ));
    Ok(channels)
}

/// Starts the node's threads: the store, the applier (which owns the ledger writer), the snapshotter, and the Raft
/// thread that owns the replica.
fn spawn_threads(
    node: &Arc<Node>,
    core: Core,
    ledger: LedgerWriter,
    joined_state: Option<State>,
    inbox_rx: Receiver<LoopEvent>,
    calls_rx: Receiver<Call>,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let (apply_tx, apply_rx) = mpsc::sync_channel::<ApplyJob>(APPLY_BATCHES_MAX);
    if let Some(state) = joined_state {
        apply_tx
            .send(ApplyJob::StoreJoinedState(state))
            .map_err(|_| anyhow::anyhow!("the applier queue is closed"))?;
    }
    let (snap_tx, snap_rx) = mpsc::sync_channel::<SnapshotJob>(SNAPSHOT_JOBS_MAX);
    let (store_tx, store_rx) = mpsc::sync_channel::<StoreJob>(STORE_JOBS_MAX);
    // Unbounded, but never longer than the store queue: one answer per Persist job.
    let (persisted_tx, persisted_rx) = mpsc::channel::<u64>();
    let mut threads = Vec::new();
    {
        let node2 = node.clone();
        threads.push(std::thread::Builder::new().name("store".into()).spawn(move || {
            if let Err(e) = node2.store_loop(store_rx, &apply_tx, &persisted_tx) {
                node2.shared.die(format!("store: {e:#}"));
            }
        })?);
    }
    {
        let shared = node.shared.clone();
        let storage = node.storage.clone();
        let sealer = node.sealer.clone();
        threads.push(
            std::thread::Builder::new()
                .name("applier".into())
                .spawn(move || {
                    if let Err(e) = applier_loop(&shared, ledger, &storage, &sealer, apply_rx) {
                        shared.die(format!("applier: {e:#}"));
                    }
                })?,
        );
    }
    {
        let node2 = node.clone();
        threads.push(
            std::thread::Builder::new()
                .name("snapshotter".into())
                .spawn(move || {
                    for job in snap_rx {
                        if let Err(e) = node2.write_snapshot(job) {
                            tracing::error!("snapshot: {e:#}");
                        }
                    }
                })?,
        );
    }
    {
        let node2 = node.clone();
        let timing = ReplicaTiming {
            tick_ms: node.cfg.tick_ms,
            signature: crate::consensus::machine::SignatureTiming {
                interval_ms: node.cfg.sig_ms_interval,
                in_flight_max: node.cfg.sig_in_flight_max,
                min_gap_ms: node.cfg.sig_ms_min,
            },
        };
        let replica = Replica::new(core, timing, 0, node.ledger_durable());
        threads.push(std::thread::Builder::new().name("raft".into()).spawn(move || {
            let result = node2.event_loop(replica, inbox_rx, calls_rx, persisted_rx, store_tx, snap_tx);
            if let Err(e) = result {
                node2.shared.die(format!("event loop: {e:#}"));
            }
        })?);
    }
    Ok(threads)
}

impl Node {
    /// Brings the node up (see [`Boot`]) and starts its threads and channels.
    pub fn start(
        cfg: &NodeConfig,
        boot: Boot,
        rpc_address: SocketAddr,
        node_listener: std::net::TcpListener,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Arc<Node>> {
        let paths = Paths {
            dir: cfg.data_dir.clone(),
        };
        std::fs::create_dir_all(&paths.dir).with_context(|| format!("creating {}", paths.dir.display()))?;
        std::fs::create_dir_all(paths.snapshots())?;
        let bound_node_address = node_listener.local_addr()?;
        let (node_address, rpc_published) = published_addresses(cfg, bound_node_address, rpc_address);
        let platform: Arc<dyn Platform> = crate::platform::for_config(cfg)?;
        let storage = Storage::open(&paths.db()).context("opening the node's database")?;
        if storage.holds_legacy_raft_log()? {
            persist::migrate_legacy(&storage, &paths.raft())?;
        }
        // Opening reads the log once; whether a node ran here is what it read.
        let raft = RaftLog::open(&paths.raft())?;
        if raft.holds_configuration() && !matches!(boot, Boot::Resume) {
            bail!(
                "{} already holds a node; start it again without creating or joining",
                paths.dir.display()
            );
        }
        let raft = RefCell::new(raft);
        let ctx = boot::BootContext {
            cfg,
            paths: &paths,
            storage: &storage,
            raft: &raft,
            platform: platform.as_ref(),
            rpc_published: &rpc_published,
            node_address: &node_address,
            core: core_config(cfg),
        };
        let booted = boot::boot(&ctx, boot)?;
        let boot::Booted {
            ids,
            mut core,
            replay,
            mut ledger,
            peers,
            joined_state,
            evidence,
        } = booted;
        // The core's own sealer: its schedule is shared, so a rekey the replica sees reaches every thread.
        let sealer = core.sealer().clone();
        save_schedule(&paths, &sealer.schedule())?;
        let startup_seqno = core.last_seqno() + 1;
        let self_id = core.raft_id();
        let directory = directory_of(peers, core.committed_state(), self_id);

        let node_cert = crate::channels::NodeCert::new(&ids.node.cert_pem, &ids.node.key_pem)?;
        let (inbox_tx, inbox_rx) = mpsc::sync_channel::<LoopEvent>(INBOX_EVENTS_MAX);
        let (channel_runtime, channel_handle) = ChannelRuntime::start()?;
        let channels = start_channels(
            cfg,
            ChannelTls {
                node_cert: node_cert.clone(),
                service_cert_pem: ids.service.cert_pem.clone(),
            },
            self_id,
            directory.clone(),
            node_listener,
            &inbox_tx,
            channel_handle,
        )?;
        write_atomically(
            &paths.file("node_address"),
            bound_node_address.to_string().as_bytes(),
        )?;

        // The applier owns the ledger writer; what the stores missed before a restart is written first.
        ledger.append(&replay)?;
        ledger.sync()?;
        persist_state(&storage, &sealer, &replay)?;
        offer_newest_snapshot(&paths, &sealer, &mut core);
        let shared = Arc::new(Shared {
            view: RwLock::new(Arc::new(View::of(&core))),
            stopping: AtomicBool::new(false),
            fatal: Mutex::new(None),
            ledger_written: AtomicU64::new(ledger.last_seqno()),
            ledger_durable: AtomicU64::new(ledger.last_seqno()),
        });
        let (calls, calls_rx) = CallQueue::new(inbox_tx.clone(), CALLS_MAX);
        let node = Arc::new(Node {
            shared: shared.clone(),
            paths: paths.clone(),
            service_cert_pem: ids.service.cert_pem.clone(),
            service: ids.service.clone(),
            node_identity: ids.node.clone(),
            node_cert,
            evidence: match evidence {
                Some(e) => e,
                None => own_evidence(platform.as_ref(), core.node_id())?,
            },
            platform,
            directory,
            historical: crate::historical::Historical::new(
                paths.ledger(),
                cert::pem_to_der(&ids.service.cert_pem)?,
            ),
            commits: tokio::sync::watch::Sender::new((0, TxId::default())),
            metrics: Arc::default(),
            rpc_address,
            rpc_published,
            node_address,
            channels,
            _channel_runtime: channel_runtime,
            runtime,
            inbox: Mutex::new(inbox_tx.clone()),
            calls,
            threads: Mutex::new(Vec::new()),
            cfg: cfg.clone(),
            storage: storage.clone(),
            raft: Mutex::new(raft.into_inner()),
            sealer: sealer.clone(),
            ledger_secret: ids.secret.clone(),
            startup_seqno,
            node_id: core.node_id().to_string(),
            raft_id: self_id,
            private_recovery: AtomicBool::new(false),
            previous_synced: Mutex::new(None),
        });

        let threads = spawn_threads(&node, core, ledger, joined_state, inbox_rx, calls_rx)?;
        *node.threads.lock().unwrap_or_else(|p| p.into_inner()) = threads;
        // A recovery interrupted after the shares were combined carries on.
        crate::service::recovery::start_private_recovery(&node);
        Ok(node)
    }

    /// Takes up the certificates governance renewed (`crate::governance::renewal`): this node's own, presented from the next
    /// TLS handshake on, and the service's; both are kept in the data directory. Returns the node's new
    /// certificate, which its signatures carry from now on.
    fn adopt_renewed_certificates(&self, committed: &State) -> Option<String> {
        let info = |map: &str, key: &[u8]| {
            committed
                .get(map, key)
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                .and_then(|v| v["cert"].as_str().map(str::to_string))
        };
        if let Some(service) = info(maps::SERVICE_INFO, b"") {
            let path = self.paths.file("service_cert.pem");
            if std::fs::read_to_string(&path).ok().as_deref() != Some(service.as_str()) {
                if let Err(e) = write_private(&path, service.as_bytes()) {
                    tracing::warn!("cannot keep the renewed service certificate: {e:#}");
                }
            }
        }
        let mine = info(maps::NODES_INFO, self.node_id.as_bytes())?;
        if mine == self.node_cert.cert_pem() {
            return None;
        }
        // Only a certificate for this node's key that the service endorsed: anything else would break its TLS.
        let endorsed = cert::pem_to_der(&mine).ok().is_some_and(|der| {
            cert::pem_to_der(&self.service_cert_pem)
                .is_ok_and(|service| cert::verify_endorsement(&der, &service).is_ok())
        });
        if !endorsed {
            return None;
        }
        if let Err(e) = self.node_cert.replace(&mine) {
            tracing::warn!("cannot present the renewed certificate: {e:#}");
            return None;
        }
        if let Err(e) = write_private(&self.paths.file("node_cert.pem"), mine.as_bytes()) {
            tracing::warn!("cannot keep the renewed certificate: {e:#}");
        }
        let until = cert::pem_to_der(&mine)
            .ok()
            .and_then(|der| cert::validity_of(&der).ok())
            .map(|(_, until)| until);
        tracing::info!(?until, "presenting a renewed node certificate");
        Some(mine)
    }

    /// `public:ccf.gov.service.info` as the state records it now (null before genesis).
    pub fn service_info(&self) -> serde_json::Value {
        self.view()
            .state
            .get(maps::SERVICE_INFO, b"")
            .and_then(|v| serde_json::from_slice(v).ok())
            .unwrap_or_default()
    }

    /// The service certificate as the state records it now (governance may have renewed it since this node
    /// started).
    pub fn current_service_cert(&self) -> String {
        self.service_info()["cert"]
            .as_str()
            .map_or_else(|| self.service_cert_pem.clone(), str::to_string)
    }

    /// This node was started with `synod-node recover`: it holds the previous service's ledger files.
    pub fn holds_recovered_ledger(&self) -> bool {
        self.paths.file(RECOVERED_FROM).exists()
    }

    /// Marks the private recovery started; false if it was already.
    pub fn private_recovery_started(&self) -> bool {
        self.private_recovery.swap(true, Ordering::AcqRel)
    }

    /// The private recovery stopped without finishing: a later share submission or restart may start it again.
    pub fn private_recovery_stopped(&self) {
        self.private_recovery.store(false, Ordering::Release);
    }

    /// For a recovered service, before reading the ledger's history: the previous services' seqnos open with their
    /// recovered secrets (in the sealer's shared schedule, so the ledger reader sees them too), and receipts rebuilt
    /// from the ledger verify their signatures. Redone only when the record of the previous service changes (when
    /// its secrets are recovered), not on every read.
    pub fn sync_previous_service(&self) {
        let state = self.view().state.clone();
        let version = state.entry(maps::PREVIOUS_SERVICE, b"").map(|e| e.version);
        let mut synced = self.previous_synced.lock().unwrap_or_else(|p| p.into_inner());
        if *synced == version {
            return;
        }
        if let Some(previous) = crate::governance::recovery::previous_service(&state) {
            crate::governance::recovery::install_past_secrets(&state, &self.sealer);
            let identities = previous
                .chain()
                .into_iter()
                .filter_map(|(pem, endorsements)| Some((cert::pem_to_der(&pem).ok()?, endorsements)))
                .collect();
            self.historical.set_previous_identities(identities);
        }
        *synced = version;
    }

    /// The node's snapshot directory.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.paths.snapshots()
    }

    /// The node's ledger directory.
    pub fn ledger_dir(&self) -> PathBuf {
        self.paths.ledger()
    }

    fn wake(&self) {
        // Never blocks (callers include async handlers): a full inbox means the loop has work anyway.
        let _ = self
            .inbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_send(LoopEvent::Wake);
    }

    /// What the Raft thread last published: states, roles, commit (never waits for the Raft thread).
    pub fn view(&self) -> Arc<View> {
        self.shared.view()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's Raft id.
    pub fn raft_id(&self) -> u64 {
        self.raft_id
    }

    /// Queues `f` for the Raft thread, which answers through `answer` once the view is published.
    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> T + Send + 'static,
        answer: impl FnOnce(T) + Send + 'static,
    ) -> Result<(), AskError> {
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(AskError::Stopped);
        }
        let call: Call = Box::new(move |core| {
            let value = f(core);
            Box::new(move || answer(value))
        });
        self.calls.push(call)
    }

    /// Runs `f` on the core, on the Raft thread, and waits for its answer (from threads that may block).
    pub fn ask<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> T + Send + 'static,
    ) -> Result<T, AskError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(f, move |v| {
            let _ = tx.send(v);
        })?;
        rx.recv().map_err(|_| AskError::Stopped)
    }

    /// [`Node::ask`] for async handlers: waits without blocking the runtime's thread.
    pub async fn ask_async<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> T + Send + 'static,
    ) -> Result<T, AskError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(f, move |v| {
            let _ = tx.send(v);
        })?;
        rx.await.map_err(|_| AskError::Stopped)
    }

    /// The node-to-node channels (forwarding rides them too).
    pub fn channels(&self) -> &Arc<Channels> {
        &self.channels
    }

    /// The runtime serving clients, where work the channels hand over (forwarded requests) runs.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Whether the service has no members (development mode: see docs/SECURITY.md).
    /// (A node that joined and has not yet received any state does not know: false.)
    pub fn development_mode(&self) -> bool {
        let state = &self.view().state;
        state.version() > 0 && state.map(maps::MEMBERS_CERTS).is_none_or(|m| m.is_empty())
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The reason the node stopped working, if it did.
    pub fn fatal_error(&self) -> Option<String> {
        self.shared
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Bounds on JavaScript handlers.
    pub fn js_limits(&self) -> crate::js::JsLimits {
        crate::js::JsLimits {
            heap_bytes_max: self.cfg.js_heap_bytes_max,
            time_ms_max: self.cfg.js_time_ms_max,
            ..Default::default()
        }
    }

    /// First seqno of this run of the node.
    pub fn startup_seqno(&self) -> u64 {
        self.startup_seqno
    }

    /// The last seqno the applier made durable in the ledger files (the Raft log is compacted up to it).
    pub fn ledger_durable(&self) -> u64 {
        self.shared.ledger_durable.load(Ordering::Acquire)
    }

    /// The last seqno the applier wrote to the ledger files (historical reads and change feeds stop there; a
    /// restart rewrites from the Raft log whatever the files lose before their next sync).
    pub fn ledger_written(&self) -> u64 {
        self.shared.ledger_written.load(Ordering::Acquire)
    }

    /// The ledger secret's sealer (for the join protocol's answers).
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The ledger secret (to hand to a joining node).
    pub fn ledger_secret(&self) -> &LedgerSecret {
        &self.ledger_secret
    }

    /// Runs `f` as a transaction, re-running it on conflicts, and orders its writes (primary only: a write on a
    /// backup answers [`ExecError::NotPrimary`] so the caller can forward it). Blocks the calling thread while
    /// the Raft thread orders it: for threads that may block (JavaScript workers); async handlers use
    /// [`Node::execute_async`].
    pub fn execute<T, E>(
        &self,
        mut f: impl FnMut(&mut Tx) -> Result<T, E>,
    ) -> Result<(T, Outcome), ExecError<E>> {
        for _ in 0..CONFLICT_RETRIES_MAX {
            let (value, tx) = match self.attempt(&mut f)? {
                Attempt::Done(value, outcome) => return Ok((value, outcome)),
                Attempt::Order(value, tx) => (value, tx),
            };
            let now = now_secs();
            let ordered = self.ask(move |core| core.commit_tx(tx, now))?;
            if let Some(outcome) = self.ordered(ordered)? {
                return Ok((value, outcome));
            }
        }
        Err(ExecError::TooManyConflicts)
    }

    /// Orders `tx` (a write [`Node::attempt`] returned), waiting for the Raft thread without blocking the
    /// runtime's thread: its outcome, or None when it conflicted (attempt it again).
    pub async fn order_async<E>(&self, tx: Tx) -> Result<Option<Outcome>, ExecError<E>> {
        let now = now_secs();
        let ordered = self.ask_async(move |core| core.commit_tx(tx, now)).await?;
        self.ordered(ordered)
    }

    /// [`Node::execute`] for async handlers: waits for the Raft thread without blocking the runtime's thread.
    pub async fn execute_async<T, E>(
        &self,
        mut f: impl FnMut(&mut Tx) -> Result<T, E>,
    ) -> Result<(T, Outcome), ExecError<E>> {
        for _ in 0..CONFLICT_RETRIES_MAX {
            let (value, tx) = match self.attempt(&mut f)? {
                Attempt::Done(value, outcome) => return Ok((value, outcome)),
                Attempt::Order(value, tx) => (value, tx),
            };
            if let Some(outcome) = self.order_async(tx).await? {
                return Ok((value, outcome));
            }
        }
        Err(ExecError::TooManyConflicts)
    }

    /// Runs `f` once on the published view: done if it only read, else its transaction to order
    /// ([`Node::order_async`]; [`Node::execute_async`] does both, re-running on conflicts). For callers whose
    /// `f` cannot be held across an await (a JavaScript engine lives on its thread).
    pub fn attempt<T, E>(
        &self,
        f: &mut impl FnMut(&mut Tx) -> Result<T, E>,
    ) -> Result<Attempt<T>, ExecError<E>> {
        if let Some(reason) = self.fatal_error() {
            return Err(ExecError::Unavailable(reason));
        }
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(ExecError::Unavailable("the node is stopping".into()));
        }
        // The published view is at most one turn old; a transaction that read something changed since
        // conflicts at commit_tx and runs again.
        let view = self.view();
        let mut tx = Tx::new(view.state.clone());
        let value = f(&mut tx).map_err(ExecError::Handler)?;
        if tx.is_read_only() {
            return Ok(Attempt::Done(value, Outcome::ReadOnly(view.read_id)));
        }
        if !view.is_primary {
            return Err(ExecError::NotPrimary);
        }
        Ok(Attempt::Order(value, tx))
    }

    /// What ordering answered: the outcome, None for a conflict (run again), or why it failed.
    fn ordered<E>(&self, result: Result<Outcome, CoreError>) -> Result<Option<Outcome>, ExecError<E>> {
        match result {
            Ok(outcome) => {
                self.metrics.ordered(outcome.tx_id());
                Ok(Some(outcome))
            }
            Err(CoreError::Conflict(_)) => Ok(None),
            Err(CoreError::NotPrimary) => Err(ExecError::NotPrimary),
            Err(CoreError::Busy) => Err(ExecError::Busy),
            Err(e) => {
                self.shared.die(format!("ordering a transaction: {e}"));
                Err(ExecError::Unavailable(e.to_string()))
            }
        }
    }

    /// Peers with an open outgoing node-to-node connection.
    pub fn connected_peers(&self) -> usize {
        self.channels.connected_peers()
    }

    /// A receiver that changes whenever the service commit or the view moves.
    pub fn commit_watch(&self) -> tokio::sync::watch::Receiver<(u64, TxId)> {
        self.commits.subscribe()
    }

    /// The Raft thread: owns the replica, feeds it what arrives, answers calls and executes its commands.
    fn event_loop(
        &self,
        mut replica: Replica,
        inbox: Receiver<LoopEvent>,
        calls: Receiver<Call>,
        persisted: Receiver<u64>,
        store: SyncSender<StoreJob>,
        snapshots: SyncSender<SnapshotJob>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let clock = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut store = Backlog::new(
            store,
            self.cfg.limits.uncommitted_bytes_max,
            StoreJob::bytes,
            "the Raft thread waited for the store thread (Raft log, disk)",
        );
        let store = &mut store;
        while replica.turn(clock(), now_secs())? {
            self.execute_commands(&mut replica, store, &snapshots)?;
        }
        self.execute_commands(&mut replica, store, &snapshots)?;
        let mut answers: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
        let mut calls_left = false;
        let mut pacing = TurnPacing::new(Duration::from_micros(self.cfg.raft_batch_us));
        while !self.shared.stopping.load(Ordering::Acquire) {
            if let Some(pause) = pacing.pause(Instant::now()) {
                std::thread::sleep(pause);
            }
            let turn_started = Instant::now();
            let now = clock();
            let deadline = if replica.has_ready() || calls_left {
                now
            } else if store.is_behind() {
                // The store thread wakes this loop after each sync; this bounds the wait after its other jobs.
                replica.next_deadline_ms(now).min(now + 1)
            } else {
                replica.next_deadline_ms(now)
            };
            if !self.take_events(
                &mut replica,
                &inbox,
                &persisted,
                deadline.saturating_sub(now),
                false,
            )? {
                break;
            }
            store
                .flush()
                .map_err(|_| anyhow::anyhow!("the store thread stopped"))?;
            if replica.hand_out_commit()? {
                self.execute_commands(&mut replica, store, &snapshots)?;
            }
            calls_left = self.calls.take(&calls, CALLS_PER_TURN, |call| {
                answers.push(call(replica.core_mut()));
            });
            pacing.turn(turn_started, answers.len(), replica.core().is_primary());
            if !answers.is_empty() {
                // Published before answering: a client told its write was ordered reads it at once.
                self.shared.publish(replica.core());
                for answer in answers.drain(..) {
                    answer();
                }
            }
            replica.set_ledger_durable(self.shared.ledger_durable.load(Ordering::Acquire));
            replica.turn(clock(), now_secs())?;
            self.execute_commands(&mut replica, store, &snapshots)?;
            replica.verify_appended()?;
        }
        // Stopping: sign what is ordered and let it reach the disk and the peers, then, for a bounded while, let
        // the peers' answers commit it, so that a stopped primary's ledger ends on a signature (the ledger files
        // hold committed entries only). Nothing new is ordered: snapshot evidence arriving now is dropped.
        replica.drain(now_secs())?;
        self.execute_commands(&mut replica, store, &snapshots)?;
        let give_up = clock().saturating_add(STOP_COMMIT_WAIT_MS);
        while replica.core().is_primary() && replica.core().raft_commit() < replica.core().last_seqno() {
            let now = clock();
            if now >= give_up {
                tracing::warn!(
                    commit = replica.core().raft_commit(),
                    last = replica.core().last_seqno(),
                    "stopping before the last signature committed; it is in the Raft log and commits on restart"
                );
                break;
            }
            if !self.take_events(&mut replica, &inbox, &persisted, (give_up - now).min(10), true)? {
                break;
            }
            replica.turn(clock(), now_secs())?;
            self.execute_commands(&mut replica, store, &snapshots)?;
        }
        store
            .flush_all()
            .map_err(|_| anyhow::anyhow!("the store thread stopped"))?;
        Ok(())
    }

    /// Waits up to `wait_ms` for what arrived (peers' messages, finished snapshots, persisted log writes) and feeds
    /// it to the replica; returns false once the inbox is closed. Stopping, only Raft's own traffic is taken.
    fn take_events(
        &self,
        replica: &mut Replica,
        inbox: &Receiver<LoopEvent>,
        persisted: &Receiver<u64>,
        wait_ms: u64,
        stopping: bool,
    ) -> anyhow::Result<bool> {
        let mut events = Vec::new();
        match inbox.recv_timeout(Duration::from_millis(wait_ms)) {
            Ok(ev) => events.push(ev),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(false),
        }
        while events.len() < INBOX_PER_TURN {
            match inbox.try_recv() {
                Ok(ev) => events.push(ev),
                Err(_) => break,
            }
        }
        while let Ok(number) = persisted.try_recv() {
            replica.handle(Input::Persisted(number), now_secs())?;
        }
        for ev in events {
            let input = match ev {
                LoopEvent::Raft(m) => Input::Raft(m),
                LoopEvent::Wake => continue,
                LoopEvent::SnapshotSent { to, delivered } => Input::SnapshotSent { to, delivered },
                LoopEvent::SnapshotWritten { .. } if stopping => continue,
                LoopEvent::SnapshotWritten { seqno, digest } => Input::SnapshotWritten { seqno, digest },
            };
            replica.handle(input, now_secs())?;
        }
        Ok(true)
    }

    /// Executes the replica's commands (see `replica.rs` for what each asks).
    fn execute_commands(
        &self,
        replica: &mut Replica,
        store: &mut Backlog<StoreJob>,
        snapshots: &SyncSender<SnapshotJob>,
    ) -> anyhow::Result<()> {
        let mut published = false;
        loop {
            let commands = replica.take_commands();
            if commands.is_empty() {
                break;
            }
            for command in commands {
                let job = match command {
                    Command::Send(messages) => {
                        for m in &messages {
                            self.channels.send(m);
                        }
                        continue;
                    }
                    Command::Install { snapshot, hard_state } => StoreJob::Install { snapshot, hard_state },
                    Command::Persist(job) => StoreJob::Persist(job),
                    Command::Compact(meta) => StoreJob::Compact(meta),
                    Command::Apply(entries) => StoreJob::Apply(entries),
                    Command::WriteSnapshot(job) => {
                        let seqno = job.state.version();
                        if let Err(TrySendError::Full(_)) = snapshots.try_send(job) {
                            tracing::warn!(
                                seqno,
                                "the snapshotter is still busy with the previous snapshot: skipping this one"
                            );
                        }
                        continue;
                    }
                    Command::CommitSnapshot {
                        seqno,
                        evidence_seqno,
                        digest,
                    } => {
                        if let Some(input) = self.commit_snapshot_file(seqno, evidence_seqno, digest)? {
                            replica.handle(input, now_secs())?;
                        }
                        continue;
                    }
                    Command::SaveSecrets(schedule) => {
                        save_schedule(&self.paths, &schedule)?;
                        continue;
                    }
                    Command::RefreshPeers => {
                        let core = replica.core();
                        refresh_directory(&self.directory, core.committed_state(), core.raft_id());
                        if let Some(pem) = self.adopt_renewed_certificates(core.committed_state()) {
                            replica.core_mut().set_node_cert(pem);
                        }
                        continue;
                    }
                    Command::PrimaryChanged(primary) => {
                        self.channels.abandon_forwards(primary);
                        continue;
                    }
                    Command::CommitMoved { view, committed } => {
                        if !published {
                            self.shared.publish(replica.core());
                            published = true;
                        }
                        self.metrics.committed(committed);
                        self.commits.send_if_modified(|seen| {
                            let moved = *seen != (view, committed);
                            *seen = (view, committed);
                            moved
                        });
                        continue;
                    }
                };
                // Held while the store thread is behind; past the bound, slow storage slows ordering down instead
                // of growing memory.
                store
                    .push(job)
                    .map_err(|_| anyhow::anyhow!("the store thread stopped"))?;
            }
        }
        if !published {
            self.shared.publish(replica.core());
        }
        Ok(())
    }

    /// The store thread: Raft log writes, snapshot installs and compactions in the replica's order, each synced;
    /// committed batches passed on to the applier after the writes before them.
    fn store_loop(
        &self,
        jobs: Receiver<StoreJob>,
        apply: &SyncSender<ApplyJob>,
        persisted: &mpsc::Sender<u64>,
    ) -> anyhow::Result<()> {
        /// Raft log writes made durable with one sync at most.
        const PERSISTS_PER_SYNC_MAX: usize = 256;
        // Held for the thread's life: nothing else writes the log once the node runs.
        let mut raft = self.raft.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = None;
        loop {
            let job = match next.take() {
                Some(job) => job,
                None => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            match job {
                StoreJob::Install { snapshot, hard_state } => {
                    let seqno = snapshot.meta.index;
                    reset_log_to_snapshot(
                        &self.paths,
                        &mut raft,
                        &snapshot.bytes,
                        &snapshot.meta,
                        &hard_state,
                    )?;
                    let (done_tx, done_rx) = mpsc::sync_channel(1);
                    apply
                        .send(ApplyJob::Reset {
                            state: snapshot.state,
                            done: done_tx,
                        })
                        .map_err(|_| anyhow::anyhow!("the applier stopped"))?;
                    done_rx
                        .recv()
                        .map_err(|_| anyhow::anyhow!("the applier stopped"))??;
                    self.shared.ledger_written.store(seqno, Ordering::Release);
                    self.shared.ledger_durable.store(seqno, Ordering::Release);
                    tracing::info!(seqno, "installed a snapshot from the primary");
                }
                StoreJob::Persist(first) => {
                    // Whatever else waits is written with it, in order, under one sync.
                    let mut batch = vec![first];
                    while batch.len() < PERSISTS_PER_SYNC_MAX {
                        match jobs.try_recv() {
                            Ok(StoreJob::Persist(job)) => batch.push(job),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let writes: Vec<LogWrite<'_>> = batch
                        .iter()
                        .map(|job| LogWrite {
                            entries: &job.entries,
                            hard_state: job.hard_state.as_ref(),
                            conf_state: job.conf_state.as_ref(),
                            conf_index: job.conf_index,
                            ..Default::default()
                        })
                        .collect();
                    // A Ready whose hard state moved only its commit (a third of them under load) needs no
                    // fsync: each one here is a flush of the disk.
                    let sync = batch.iter().any(|job| job.must_sync);
                    raft.write_batch(&writes, sync)?;
                    drop(writes);
                    for job in batch {
                        for m in &job.then_send {
                            self.channels.send(m);
                        }
                        // The Raft thread may have stopped after handing out its last signature: what it handed
                        // out is still written, or the ledger would end on an unsigned tail.
                        let _ = persisted.send(job.number);
                    }
                    self.wake();
                }
                StoreJob::Compact(meta) => {
                    raft.write(&LogWrite {
                        compacted: Some(&meta),
                        ..Default::default()
                    })?;
                    tracing::info!(
                        seqno = meta.index,
                        "compacted the Raft log up to a committed snapshot"
                    );
                }
                StoreJob::Apply(entries) => send_waiting(
                    apply,
                    ApplyJob::Apply(entries),
                    "the store thread waited for the applier (ledger files, state store)",
                )
                .map_err(|_| anyhow::anyhow!("the applier stopped"))?,
            }
        }
        Ok(())
    }

    /// Stops accepting transactions, signs and flushes what was ordered, and joins the threads.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.wake();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn refresh_directory(directory: &Directory, state: &State, self_id: u64) {
    let mut fresh = HashMap::new();
    let mut knows_self = false;
    if let Some(m) = state.map(maps::NODES_INFO) {
        for (k, e) in m.iter() {
            let Ok(node_id) = std::str::from_utf8(k) else {
                continue;
            };
            let id = raft_id(node_id);
            if id == self_id {
                knows_self = true;
                continue;
            }
            let Some(info) = NodeInfo::from_slice(&e.value) else {
                continue;
            };
            let mut peer = PeerInfo::of(node_id, &info);
            // Attested channels: a node whose measurement governance removed is cut off, both ways.
            let code_allowed = info.measurement.is_empty()
                || state
                    .get(maps::NODES_CODE_IDS, info.measurement.as_bytes())
                    .is_some();
            if info.status == NodeStatus::Trusted && !code_allowed {
                peer.status = crate::channels::CODE_NOT_ALLOWED.into();
            }
            fresh.insert(id, peer);
        }
    }
    let mut d = directory.write().unwrap_or_else(|p| p.into_inner());
    // Peers learnt at join time stay while the nodes table lags behind (it does not know this node yet). Once it
    // does, it is the whole truth: nodes it no longer holds (expired Pending joins) leave the directory.
    if !knows_self {
        for (id, info) in d.drain() {
            fresh.entry(id).or_insert(info);
        }
    }
    *d = fresh;
}

fn persist_state(storage: &Storage, sealer: &Sealer, batch: &[CommittedEntry]) -> anyhow::Result<()> {
    // Entries replayed for the ledger only (their writes empty) are at or below the stored seqno: skipped.
    let rows: Vec<_> = batch
        .iter()
        .map(|c| (c.tx_id.seqno, &c.writes.public, &c.writes.private))
        .collect();
    Ok(storage.apply_committed(&rows, sealer)?)
}

/// How long ledger-file appends may wait for their fdatasync. Only the Raft log's compaction waits for them
/// (`ledger_durable`: until then the Raft log, synced on every write of entries, holds every entry, and a restart
/// writes whatever the files lack from it), so under load the applier syncs once per interval instead of once per
/// batch, and keeps off the disk the Raft log's syncs, on every write's commit path, wait for.
const LEDGER_SYNC_INTERVAL: Duration = Duration::from_millis(50);

fn applier_loop(
    shared: &Shared,
    mut ledger: LedgerWriter,
    storage: &Storage,
    sealer: &Sealer,
    jobs: Receiver<ApplyJob>,
) -> anyhow::Result<()> {
    // When the oldest append not yet synced was made.
    let mut unsynced_since: Option<Instant> = None;
    loop {
        let first = match unsynced_since {
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            Some(since) => match jobs.recv_timeout(LEDGER_SYNC_INTERVAL.saturating_sub(since.elapsed())) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    sync_ledger(&mut ledger, shared)?;
                    unsynced_since = None;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut batch: Vec<CommittedEntry> = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                ApplyJob::Apply(entries) => batch.extend(entries),
                ApplyJob::StoreJoinedState(state) => {
                    flush(&mut ledger, storage, sealer, &mut batch, shared)?;
                    storage
                        .replace_state(&state, sealer)
                        .context("storing the joined snapshot's state")?;
                }
                ApplyJob::Reset { state, done } => {
                    flush(&mut ledger, storage, sealer, &mut batch, shared)?;
                    let result = storage
                        .replace_state(&state, sealer)
                        .map_err(anyhow::Error::from)
                        .and_then(|_| {
                            ledger
                                .reset_after_snapshot(state.version())
                                .map_err(anyhow::Error::from)
                        });
                    let failed = result.as_ref().err().map(|e| format!("{e:#}"));
                    let _ = done.send(result);
                    if let Some(e) = failed {
                        bail!("installing a snapshot: {e}");
                    }
                }
            }
            if batch.len() < 10_000 {
                next = jobs.try_recv().ok();
            }
        }
        flush(&mut ledger, storage, sealer, &mut batch, shared)?;
        let since = *unsynced_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= LEDGER_SYNC_INTERVAL {
            sync_ledger(&mut ledger, shared)?;
            unsynced_since = None;
        }
    }
    sync_ledger(&mut ledger, shared)
}

/// Appends `batch` to the ledger files (synced later, by [`sync_ledger`]) and writes its state.
fn flush(
    ledger: &mut LedgerWriter,
    storage: &Storage,
    sealer: &Sealer,
    batch: &mut Vec<CommittedEntry>,
    shared: &Shared,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    ledger.append(batch)?;
    shared
        .ledger_written
        .store(ledger.last_seqno(), Ordering::Release);
    persist_state(storage, sealer, batch)?;
    batch.clear();
    Ok(())
}

/// Makes the ledger files durable and tells the Raft log how far it may now be compacted.
fn sync_ledger(ledger: &mut LedgerWriter, shared: &Shared) -> anyhow::Result<()> {
    ledger.sync()?;
    shared
        .ledger_durable
        .store(ledger.last_seqno(), Ordering::Release);
    Ok(())
}

/// Writes a file atomically and durably (`synod_kv::seal::write_durably`, with `File::create`'s mode): the
/// address files tests and scripts wait for, recovery's markers and the ledger chunks it salvages.
pub fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    synod_kv::seal::write_durably(path, contents, 0o666)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop_call() -> Call {
        Box::new(|_| Box::new(|| {}))
    }

    /// A full queue holds the sender until there is room (the receiver took a job), a closed one fails at once.
    #[test]
    fn a_full_queue_waits_for_room_and_a_closed_one_fails() {
        let (tx, rx) = mpsc::sync_channel::<u32>(1);
        assert!(send_waiting(&tx, 1, "test").is_ok());
        let drain = std::thread::spawn(move || {
            let taken = (rx.recv().ok(), rx.recv().ok());
            (taken, rx)
        });
        assert!(send_waiting(&tx, 2, "test").is_ok());
        let (taken, rx) = drain.join().unwrap();
        assert_eq!(taken, (Some(1), Some(2)));
        drop(rx);
        assert!(send_waiting(&tx, 3, "test").is_err());
    }

    /// A full queue does not hold the sender: jobs wait in the backlog, in order, and reach the queue as it makes
    /// room; past the byte bound the oldest are handed over waiting, as before; a closed queue fails.
    #[test]
    fn a_full_queue_holds_jobs_in_order_up_to_the_bound_without_holding_the_sender() {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(1);
        let mut backlog = Backlog::new(tx, 10, |job: &Vec<u8>| job.len() as u64, "test");
        for job in [vec![1; 4], vec![2; 4], vec![3; 4]] {
            backlog.push(job).unwrap();
        }
        assert!(
            backlog.is_behind(),
            "the queue holds one job; two wait in the backlog"
        );
        assert_eq!(backlog.held_bytes, 8);
        // 8 held + 8 pushed is past the 10 bytes: the oldest are handed over, waiting for room, until 8 are held.
        let taker = std::thread::spawn(move || {
            let taken: Vec<Vec<u8>> = (0..3).map(|_| rx.recv().unwrap()).collect();
            (taken, rx)
        });
        backlog.push(vec![4; 8]).unwrap();
        let (taken, rx) = taker.join().unwrap();
        assert_eq!(
            taken,
            vec![vec![1; 4], vec![2; 4], vec![3; 4]],
            "in the order pushed"
        );
        assert_eq!(backlog.held_bytes, 8);
        backlog.flush().unwrap();
        assert!(!backlog.is_behind(), "the queue had room again");
        assert_eq!(rx.try_recv().unwrap(), vec![4; 8]);
        backlog.push(vec![5]).unwrap();
        backlog.push(vec![6]).unwrap();
        let taker = std::thread::spawn(move || (rx.recv().unwrap(), rx.recv().unwrap(), rx));
        backlog.flush_all().unwrap();
        let (a, b, rx) = taker.join().unwrap();
        assert_eq!((a, b), (vec![5], vec![6]));
        drop(rx);
        assert!(backlog.push(vec![7]).is_err(), "a closed queue fails");
    }

    /// Only a primary's turn that took a queue of requests paces the next; a lone request, a backup's turn or a
    /// gap of 0 never waits, and the wait ends `gap` after the busy turn started, whatever came between.
    #[test]
    fn turns_are_paced_only_after_a_queue_of_requests() {
        let gap = Duration::from_micros(500);
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let mut pacing = TurnPacing::new(gap);
        assert_eq!(pacing.pause(at(0)), None);
        pacing.turn(at(0), 1, true);
        assert_eq!(pacing.pause(at(10)), None, "a lone request");
        pacing.turn(at(10), 5, false);
        assert_eq!(pacing.pause(at(20)), None, "a backup");
        pacing.turn(at(100), PACED_TURN_CALLS, true);
        assert_eq!(pacing.pause(at(100)), Some(gap));
        // A turn in between (peers' answers, no requests) does not move the end of the wait.
        pacing.turn(at(300), 0, true);
        assert_eq!(pacing.pause(at(400)), Some(Duration::from_micros(200)));
        assert_eq!(pacing.pause(at(600)), None);
        assert_eq!(pacing.pause(at(900)), None);

        let mut off = TurnPacing::new(Duration::ZERO);
        off.turn(at(0), 100, true);
        assert_eq!(off.pause(at(0)), None);
    }

    /// A flood of calls (which any client can cause) fills only the call queue: it answers busy, and the peers'
    /// inbox holds one wake-up and room for every Raft message.
    #[test]
    fn calls_never_crowd_peers_out_of_the_inbox() {
        let (inbox_tx, inbox_rx) = mpsc::sync_channel::<LoopEvent>(4);
        let (calls, queued) = CallQueue::new(inbox_tx.clone(), 8);
        for _ in 0..8 {
            assert!(calls.push(noop_call()).is_ok());
        }
        assert!(matches!(calls.push(noop_call()), Err(AskError::Busy)));
        for _ in 0..3 {
            assert!(inbox_tx.try_send(LoopEvent::Raft(Message::default())).is_ok());
        }
        let wakes = inbox_rx
            .try_iter()
            .filter(|e| matches!(e, LoopEvent::Wake))
            .count();
        assert_eq!(wakes, 1);

        // The loop takes at most `max` per turn and says more are left; a call queued later wakes it again.
        let mut ran = 0;
        assert!(calls.take(&queued, 5, |_| ran += 1));
        assert!(!calls.take(&queued, 5, |_| ran += 1));
        assert_eq!(ran, 8);
        assert!(calls.push(noop_call()).is_ok());
        assert!(matches!(inbox_rx.try_recv(), Ok(LoopEvent::Wake)));
        drop(queued);
        assert!(matches!(calls.push(noop_call()), Err(AskError::Stopped)));
    }
}
