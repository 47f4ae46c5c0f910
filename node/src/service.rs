//! The node's I/O shell around the pure [`Replica`]: start-up (genesis or recovery), the ledger writer thread
//! (group commit: write + fdatasync whatever was ordered meanwhile), the applier thread (committed write sets →
//! RocksDB) and the signature timer.
//!
//! ```text
//!  rpc handlers ──execute()──▶ Mutex<Replica> ──pending frames──▶ writer thread ──durable seqno──▶ Replica
//!                                   ▲                                                    │ committed write sets
//!                     signer: every sig_ms_interval                                applier thread ─▶ RocksDB
//! ```
//!
//! Any I/O failure on the ledger or the store stops the node: continuing could report a write Committed that is
//! not on disk.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use synod_core::cert::{self, Identity};
use synod_kv::seal::{LedgerSecret, Sealer};
use synod_kv::storage::Storage;
use synod_kv::Tx;

use crate::config::NodeConfig;
use crate::ledger::LedgerWriter;
use crate::replica::{CommittedWrites, Keys, Outcome, Replica, ReplicaConfig, ReplicaError};

/// How often a transaction that conflicts is run again before the request fails.
pub const CONFLICT_RETRIES_MAX: usize = 64;

/// Why running a transaction failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError<E> {
    /// The handler itself refused (bad input, not found, ...); nothing was written.
    #[error("{0}")]
    Handler(E),
    /// The transaction kept conflicting with concurrent ones.
    #[error("transaction conflicted {CONFLICT_RETRIES_MAX} times in a row")]
    TooManyConflicts,
    /// The node is stopping or broken.
    #[error("{0}")]
    Unavailable(String),
}

struct Shared {
    replica: Mutex<Replica>,
    work: Condvar,
    stopping: AtomicBool,
    fatal: Mutex<Option<String>>,
}

/// A running node: the replica plus the threads that do its I/O.
pub struct Node {
    shared: Arc<Shared>,
    /// The service certificate (PEM).
    pub service_cert_pem: String,
    /// This node's TLS identity (endorsed by the service identity).
    pub node_identity: Identity,
    threads: Mutex<Vec<JoinHandle<()>>>,
    sig_interval: Duration,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn read_identities(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    paths
        .iter()
        .map(|p| {
            let pem = read(p)?;
            let der = cert::pem_to_der(&pem)
                .with_context(|| format!("{} is not a PEM certificate", p.display()))?;
            Ok((cert::cert_fingerprint_hex(&der), pem))
        })
        .collect()
}

impl Node {
    /// Opens (or creates) the service in `cfg.data_dir` and starts the writer, applier and signer threads.
    pub fn start(cfg: &NodeConfig, rpc_addr: SocketAddr) -> anyhow::Result<Arc<Node>> {
        let dir = &cfg.data_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let service_cert_path = dir.join("service_cert.pem");
        let service_key_path = dir.join("service_key.pem");
        let ledger_dir = dir.join("ledger");
        let fresh = !service_cert_path.exists();
        let service = if fresh {
            if ledger_dir.exists() && std::fs::read_dir(&ledger_dir)?.next().is_some() {
                bail!(
                    "{} holds a ledger but no service_cert.pem: refusing to create a new service over it",
                    dir.display()
                );
            }
            let identity = cert::generate_self_signed("Synod service", true)?;
            write_private(&service_key_path, identity.key_pem.as_bytes())?;
            write_private(&service_cert_path, identity.cert_pem.as_bytes())?;
            tracing::info!(dir = %dir.display(), "created a new service identity");
            identity
        } else {
            Identity {
                cert_pem: read(&service_cert_path)?,
                key_pem: read(&service_key_path)?,
            }
        };
        let service_cert_der = cert::pem_to_der(&service.cert_pem)?;
        let secret = LedgerSecret::load_or_create(&dir.join("ledger_secret"))?;
        let sealer = Sealer::new(&secret);

        // A node gets a fresh identity at every start (as a CCF node does when it rejoins or recovers), endorsed
        // by the service and valid for the address it listens on.
        let ip = if rpc_addr.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            rpc_addr.ip()
        };
        let node_identity =
            cert::generate_endorsed(&cfg.node_name, &[ip], &["localhost".to_string()], &service)?;
        write_private(&dir.join("node_key.pem"), node_identity.key_pem.as_bytes())?;
        write_private(&dir.join("node_cert.pem"), node_identity.cert_pem.as_bytes())?;
        let node_cert_der = cert::pem_to_der(&node_identity.cert_pem)?;
        let keys = Keys {
            node_key: cert::signing_key_from_pem(&node_identity.key_pem)?,
            node_cert_pem: node_identity.cert_pem.clone(),
            node_id: cert::public_key_id_hex(&node_cert_der)?,
            service_key: cert::signing_key_from_pem(&service.key_pem)?,
            service_cert_der,
        };
        let node_id = keys.node_id.clone();

        let storage = Storage::open(&dir.join("db")).context("opening the applied-state store")?;
        let recovered =
            LedgerWriter::open(&ledger_dir, cfg.ledger_chunk_bytes).context("recovering the ledger")?;
        if recovered.dropped_unsigned > 0 {
            tracing::warn!(
                dropped = recovered.dropped_unsigned,
                "dropped ledger entries after the last signature (never committed)"
            );
        }
        let rcfg = ReplicaConfig {
            sig_tx_interval: cfg.sig_tx_interval,
        };
        let mut replica = if recovered.entries.is_empty() {
            let users = read_identities(&cfg.user_certs)?;
            let members = read_identities(&cfg.member_certs)?;
            let info = serde_json::json!({ "cert": service.cert_pem, "status": "Open" });
            Replica::genesis(keys, sealer.clone(), rcfg, &info, &users, &members, now_secs())?
        } else {
            if !cfg.user_certs.is_empty() || !cfg.member_certs.is_empty() {
                tracing::warn!("--user-cert/--member-cert are read only when a service is created; ignored");
            }
            let state = storage.load_state(&sealer).context("loading the applied state")?;
            let (replica, to_persist) =
                Replica::recover(keys, sealer.clone(), rcfg, state, &recovered.entries)
                    .context("replaying the ledger")?;
            persist(&storage, &sealer, &to_persist)?;
            tracing::info!(committed = %replica.committed(), "recovered from the ledger");
            replica
        };
        let node_info = serde_json::json!({
            "cert": node_identity.cert_pem,
            "status": "Trusted",
            "name": cfg.node_name,
            "rpc_address": rpc_addr.to_string(),
        });
        let view_start = replica.start_view(&node_info, now_secs())?;
        tracing::info!(node_id = %node_id, view = replica.view(), signature = %view_start, "started view");

        let shared = Arc::new(Shared {
            replica: Mutex::new(replica),
            work: Condvar::new(),
            stopping: AtomicBool::new(false),
            fatal: Mutex::new(None),
        });
        let (apply_tx, apply_rx) = mpsc::channel::<Vec<CommittedWrites>>();
        let mut threads = Vec::new();
        let writer_shared = shared.clone();
        let mut writer = recovered.writer;
        threads.push(
            std::thread::Builder::new()
                .name("ledger-writer".into())
                .spawn(move || {
                    if let Err(e) = writer_loop(&writer_shared, &mut writer, &apply_tx) {
                        writer_shared.die(format!("ledger writer: {e:#}"));
                    }
                })
                .context("spawning the ledger writer")?,
        );
        let applier_shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("applier".into())
                .spawn(move || {
                    for batch in apply_rx {
                        if let Err(e) = persist(&storage, &sealer, &batch) {
                            applier_shared.die(format!("applied-state store: {e:#}"));
                            return;
                        }
                    }
                })
                .context("spawning the applier")?,
        );
        let node = Arc::new(Node {
            shared: shared.clone(),
            service_cert_pem: service.cert_pem,
            node_identity,
            threads: Mutex::new(threads),
            sig_interval: Duration::from_millis(cfg.sig_ms_interval.max(1)),
        });
        let signer = node.clone();
        node.lock_threads().push(
            std::thread::Builder::new()
                .name("signer".into())
                .spawn(move || signer.signer_loop())
                .context("spawning the signer")?,
        );
        Ok(node)
    }

    fn lock_threads(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the replica for reading its state (status, receipts, commit).
    pub fn replica(&self) -> MutexGuard<'_, Replica> {
        self.shared.lock()
    }

    /// The reason the node stopped working, if it did.
    pub fn fatal_error(&self) -> Option<String> {
        self.shared
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `f` as a transaction, re-running it on conflicts, and orders its writes.
    pub fn execute<T, E>(
        &self,
        mut f: impl FnMut(&mut Tx) -> Result<T, E>,
    ) -> Result<(T, Outcome), ExecError<E>> {
        for _ in 0..CONFLICT_RETRIES_MAX {
            if let Some(reason) = self.fatal_error() {
                return Err(ExecError::Unavailable(reason));
            }
            if self.shared.stopping.load(Ordering::Acquire) {
                return Err(ExecError::Unavailable("the node is stopping".into()));
            }
            let (mut tx, read_id) = {
                let replica = self.shared.lock();
                let snapshot = replica.snapshot();
                let read_id = replica.tx_id_at(snapshot.version());
                (Tx::new(snapshot), read_id)
            };
            let value = f(&mut tx).map_err(ExecError::Handler)?;
            // Reads of one snapshot are consistent on their own: nothing to validate or order.
            if tx.is_read_only() {
                return Ok((value, Outcome::ReadOnly(read_id)));
            }
            let mut replica = self.shared.lock();
            match replica.commit_tx(tx, now_secs()) {
                Ok(outcome) => {
                    if matches!(outcome, Outcome::Written(_)) {
                        self.shared.work.notify_one();
                    }
                    return Ok((value, outcome));
                }
                Err(ReplicaError::Conflict(_)) => continue,
                Err(e) => {
                    drop(replica);
                    self.shared.die(format!("ordering a transaction: {e}"));
                    return Err(ExecError::Unavailable(e.to_string()));
                }
            }
        }
        Err(ExecError::TooManyConflicts)
    }

    fn signer_loop(&self) {
        while !self.shared.stopping.load(Ordering::Acquire) {
            std::thread::sleep(self.sig_interval);
            self.sign_now();
        }
    }

    fn sign_now(&self) {
        let mut replica = self.shared.lock();
        match replica.emit_signature(now_secs()) {
            Ok(Some(_)) => self.shared.work.notify_one(),
            Ok(None) => {}
            Err(e) => {
                drop(replica);
                self.shared.die(format!("signing: {e}"));
            }
        }
    }

    /// Stops accepting transactions, signs and flushes what was ordered, and joins the threads.
    pub fn shutdown(&self) {
        self.sign_now();
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.work.notify_all();
        let threads = std::mem::take(&mut *self.lock_threads());
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Replica> {
        // A panic while holding the lock is a bug elsewhere; the replica's state is still consistent because
        // every mutation completes before the guard drops.
        self.replica.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn die(&self, reason: String) {
        tracing::error!("{reason}; the node stops");
        *self.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.stopping.store(true, Ordering::Release);
        self.work.notify_all();
    }
}

fn writer_loop(
    shared: &Shared,
    writer: &mut LedgerWriter,
    apply: &mpsc::Sender<Vec<CommittedWrites>>,
) -> anyhow::Result<()> {
    loop {
        let frames = {
            let mut replica = shared.lock();
            while !replica.has_pending() && !shared.stopping.load(Ordering::Acquire) {
                replica = shared.work.wait(replica).unwrap_or_else(|p| p.into_inner());
            }
            let frames = replica.take_pending();
            if frames.is_empty() {
                return Ok(()); // stopping, and everything ordered is on disk
            }
            frames
        };
        writer.append(&frames)?;
        writer.sync()?;
        let committed = shared.lock().on_durable(writer.last_seqno())?;
        if !committed.is_empty() && apply.send(committed).is_err() {
            bail!("the applier stopped");
        }
        if shared.fatal.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Ok(());
        }
    }
}

fn persist(storage: &Storage, sealer: &Sealer, batch: &[CommittedWrites]) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = batch.iter().map(|w| (w.seqno, &w.public, &w.private)).collect();
    storage.apply_committed(&rows, sealer)?;
    Ok(())
}
