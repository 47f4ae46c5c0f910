//! A seeded, deterministic simulation of a whole cluster: 3–7 real [`Core`]s in one thread, on a simulated
//! network, disk and clock whose every choice comes from one seed, so a failing seed replays exactly. The faults:
//! messages dropped, duplicated, delayed and so reordered; symmetric and one-way partitions; crashes that lose
//! everything not yet durable (Raft log writes still in flight, ledger and state not yet synced) and restart
//! through [`Core::restore`]; a clock per node; nodes joining and (with four or more) one retiring, the primary
//! included. The load: writes to the primary, status reads of every write on every node.
//!
//! ```text
//!  seed ─▶ Rng ─▶ each step (1 simulated ms): faults ─▶ per live node: tick / signature / one Ready
//!                 (messages out now; the write durable after a disk delay, then on_persisted; committed entries
//!                  to the ledger, synced later) ─▶ deliver due messages ─▶ client writes ─▶ invariants
//! ```
//!
//! Invariants checked after every step (each violation is named): election safety (one primary per view); the
//! committed ledgers of all nodes are prefixes of one another (log matching, state machine safety) and a node's
//! committed ledger never changes (durability across crashes); commit only moves forward within a node's life
//! and always lands on a signature; a transaction seen Committed is never seen Invalid and vice versa; at the
//! end, after the faults stop, every node catches up, and every write seen Committed is in every ledger at its
//! seqno and view (liveness and no lost write), and every retirement has taken effect on every node.

use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Message, SnapshotMetadata};
use synod_core::cert::{self, Identity};
use synod_core::hash::sha256;
use synod_core::ledger::{decode_frames, LedgerEntry, KIND_SIGNATURE};
use synod_core::txid::{TxId, TxStatus};
use synod_kv::seal::{LedgerSecret, Sealer};
use synod_kv::{State, Tx};

use crate::consensus::log_store::LogStore;
use crate::consensus::machine::{Core, CoreConfig, CoreError, Genesis, Keys, Restore, SignatureTiming};
use crate::consensus::replica::{Command, Input, PersistJob, Replica, ReplicaTiming};
use crate::consensus::{raft_id, RaftTiming};

/// The COSE `iat` every simulated signature carries (no wall clock inside a simulation).
const NOW_SECS: i64 = 1_700_000_000;
/// The replicas' timers, in simulated milliseconds.
const REPLICA_TIMING: ReplicaTiming = ReplicaTiming {
    tick_ms: 10,
    signature: SignatureTiming {
        interval_ms: 10,
        in_flight_max: 2,
        min_gap_ms: 2,
    },
};
/// Transactions between snapshots: several per run, so followers that fall behind are caught up with one.
const SNAPSHOT_TX_INTERVAL: u64 = 150;
/// Milliseconds without faults at the start: a service whose genesis is not durable anywhere yet does not exist,
/// and a crash then would only end the run.
const WARMUP_MS: u64 = 500;
/// The map the simulated clients write.
const MAP: &str = "public:sim";

/// The simulation's only source of choices.
pub use synod_core::testing::Rng;

/// A fault the harness itself can inject into the node's I/O, to show that the invariants catch what they
/// should (docs/RELIABILITY.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Report Raft log writes persisted before they are durable (skip the fsync): a crash then loses entries a
    /// majority acknowledged.
    SkipFsync,
    /// Never tell Raft whether a snapshot message reached its peer (the bug `report_snapshot` fixed): a leader
    /// whose snapshot was lost waits in Snapshot state for that follower until the next election.
    SkipSnapshotReport,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes, 3 to 7.
    pub nodes: usize,
    /// Simulated milliseconds with faults and load.
    pub steps: u64,
    /// Milliseconds after the faults stop in which every node must catch up.
    pub heal_steps: u64,
    /// The seed.
    pub seed: u64,
    /// Whether to inject faults (without: a plain run, for a baseline).
    pub faults: bool,
    /// A bug to inject on purpose.
    pub mutation: Option<Mutation>,
}

impl SimConfig {
    /// The defaults for `seed`: 3 nodes, 3 s with faults, 3 s to heal.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            nodes: 3,
            steps: 3_000,
            heal_steps: 3_000,
            seed,
            faults: true,
            mutation: None,
        }
    }
}

/// Faults injected in one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Messages dropped.
    pub dropped: u64,
    /// Messages delivered twice.
    pub duplicated: u64,
    /// Messages delayed past others (so reordered).
    pub delayed: u64,
    /// Partitions made (each heals later).
    pub partitions: u64,
    /// Crashes (each restarts later).
    pub crashes: u64,
    /// Crashes in which part of what was in flight to the disk reached it (a torn write).
    pub torn_writes: u64,
    /// Periods in which a node's disk was slow (writes taking 20–200 ms).
    pub slow_disks: u64,
}

impl FaultCounts {
    /// All faults.
    pub fn total(&self) -> u64 {
        self.dropped
            + self.duplicated
            + self.delayed
            + self.partitions
            + self.crashes
            + self.torn_writes
            + self.slow_disks
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Steps run (faults and heal).
    pub steps: u64,
    /// Faults injected.
    pub faults: FaultCounts,
    /// Writes the primary acknowledged (ordered).
    pub writes_acked: u64,
    /// Writes seen Committed and checked present at the end.
    pub writes_committed: u64,
    /// Snapshots committed on some node (its own file matched the primary's evidence).
    pub snapshots_committed: u64,
    /// Snapshots installed from a primary (followers caught up after compaction).
    pub snapshots_installed: u64,
    /// Receipts verified against the service certificate and the committed ledger.
    pub receipts_checked: u64,
    /// Nodes retired by the members and removed from the configuration (then stopped for good).
    pub nodes_retired: u64,
    /// Invariant violations, named, in the order found (the run stops at the first few).
    pub violations: Vec<String>,
}

/// A Raft log write handed out by the replica, in flight to the simulated disk.
struct PendingWrite {
    due: u64,
    job: PersistJob,
}

/// A snapshot file on the simulated disk.
struct SnapshotFile {
    bytes: Vec<u8>,
    /// The seqno of its evidence once committed; None while only written.
    evidence: Option<u64>,
    /// Received from the primary (an install), not written by this node.
    received: bool,
}

/// What a node has on its simulated disk: survives a crash.
#[derive(Default)]
struct Disk {
    hard_state: HardState,
    /// A hard state written without a sync (only its commit moved): durable with the next synced write, lost in a
    /// crash before it.
    unsynced_hard_state: Option<HardState>,
    conf_state: ConfState,
    conf_index: u64,
    /// Where the stored Raft log starts after (a compaction or an installed snapshot).
    compacted: SnapshotMetadata,
    /// Stored Raft log entries, from `compacted.index + 1`.
    log: Vec<Entry>,
    /// The seqno the ledger files start after (an installed snapshot's).
    ledger_base: u64,
    /// Committed ledger frames synced to the ledger files, from `ledger_base + 1`.
    ledger: Vec<Vec<u8>>,
    /// The stored state and how far it reflects the ledger.
    state: State,
    /// Snapshot files by seqno.
    snapshots: BTreeMap<u64, SnapshotFile>,
}

impl Disk {
    /// The log compacted up to `meta`; the node keeps its two newest committed snapshots.
    fn compact(&mut self, meta: SnapshotMetadata) {
        // The compaction is a synced write: what was written before it is durable too.
        if let Some(hs) = self.unsynced_hard_state.take() {
            self.hard_state = hs;
        }
        let drop = meta.index.saturating_sub(self.compacted.index) as usize;
        self.log.drain(..drop.min(self.log.len()));
        self.compacted = meta;
        let committed: Vec<u64> = self
            .snapshots
            .iter()
            .filter(|(_, f)| f.evidence.is_some())
            .map(|(&s, _)| s)
            .collect();
        for s in committed.iter().rev().skip(2) {
            self.snapshots.remove(s);
        }
    }

    /// The primary's evidence for snapshot `seqno` committed: the file written here is committed, if it is the
    /// one the evidence names (`Err` if it is not); nothing to do for a file committed or received already.
    fn commit_snapshot(
        &mut self,
        seqno: u64,
        evidence_seqno: u64,
        digest: String,
    ) -> Result<Option<Input>, ()> {
        Ok(match self.snapshots.get_mut(&seqno) {
            Some(f) if f.evidence.is_none() && !f.received => {
                if hex::encode(crate::snapshot_codec::digest(&f.bytes)) != digest {
                    return Err(());
                }
                f.evidence = Some(evidence_seqno);
                Some(Input::SnapshotFileCommitted {
                    seqno,
                    bytes: f.bytes.clone(),
                })
            }
            Some(_) => None,
            None => Some(Input::SnapshotNotWritten {
                seqno,
                evidence_seqno,
                digest,
            }),
        })
    }

    /// A committed frame reaches the ledger files and the stored state, if it is the next one (what a crash lost
    /// before it is written again at restart, in order). One past the next is a gap the node's ledger writer
    /// refuses: returned as a problem.
    fn sync_frame(&mut self, frame: Vec<u8>, writes: &crate::ledger_files::Writes) -> Option<String> {
        let seqno = frame_tx(&frame).map_or(0, |t| t.seqno);
        if seqno > self.ledger_last() + 1 {
            return Some(format!(
                "ledger gap: committed frame {seqno} after {}",
                self.ledger_last()
            ));
        }
        if seqno == self.ledger_last() + 1 {
            self.ledger.push(frame);
            self.store_state(seqno, writes);
        }
        None
    }

    /// A committed frame's writes reach the stored state (RocksDB), if they are the next.
    fn store_state(&mut self, seqno: u64, writes: &crate::ledger_files::Writes) {
        if seqno == self.state.version() + 1 {
            let _ = self
                .state
                .apply(seqno, writes.public.maps.iter().chain(&writes.private.maps));
        }
    }

    /// The last seqno of the synced ledger.
    fn ledger_last(&self) -> u64 {
        self.ledger_base + self.ledger.len() as u64
    }
}

struct SimNode {
    keys_seed: [u8; 32],
    cfg: CoreConfig,
    replica: Option<Replica>,
    disk: Disk,
    /// Raft log writes not durable yet (lost in a crash).
    writes: Vec<PendingWrite>,
    /// Snapshot files being written (lost in a crash): due, seqno, bytes.
    snapshot_writes: Vec<(u64, u64, Vec<u8>)>,
    /// Committed frames applied but not yet synced to the ledger files (lost in a crash).
    unsynced: Vec<(Vec<u8>, Arc<crate::ledger_files::Writes>)>,
    next_ledger_sync: u64,
    /// Step at which a crashed node restarts.
    restart_at: u64,
    /// Whether the node has joined yet (nodes past the first three join during the run).
    started: bool,
    /// When a node that has not joined yet asks to (the members trust it, then the primary adds it).
    join_at: u64,
    /// The members' vote that trusts it (a transaction that may yet be lost in a view change).
    trust_tx: Option<TxId>,
    /// When the members retire it, if they do.
    retire_at: Option<u64>,
    /// Its Retired record (a transaction that may yet be lost in a view change).
    retire_tx: Option<TxId>,
    /// Retired and out of the configuration: stopped for good, as an operator stops a retired node.
    retired: bool,
    /// The commit this life of the node has reported (it never goes back within a life).
    commit: TxId,
    /// Up to which seqno its committed ledger has been checked against the canonical one already.
    checked: usize,
    /// Its clock's rate, in millionths of the simulation's (clock skew: timers run fast or slow per node).
    clock_ppm: u64,
    /// Until when its disk is slow, and by how much each write is late meanwhile.
    slow_disk: (u64, u64),
}

impl SimNode {
    /// The node's own clock at simulated time `now`.
    fn clock(&self, now: u64) -> u64 {
        now * self.clock_ppm / 1_000_000
    }

    /// How late a disk write started at `now` is.
    fn disk_delay(&self, now: u64) -> u64 {
        let base = 1 + (self.keys_seed[0] as u64 % 3);
        if now < self.slow_disk.0 {
            base + self.slow_disk.1
        } else {
            base
        }
    }

    fn core(&self) -> Option<&Core> {
        self.replica.as_ref().map(Replica::core)
    }

    fn core_mut(&mut self) -> Option<&mut Core> {
        self.replica.as_mut().map(Replica::core_mut)
    }
}

/// An in-flight message with its delivery time (ordered by time, then by sending order).
#[derive(PartialEq, Eq)]
struct InFlight {
    due: u64,
    seq: u64,
    msg: MessageBytes,
}

/// The final statuses seen for a write, on any node, at any time.
#[derive(Clone, Debug, Default)]
struct Seen {
    committed: bool,
    invalid: bool,
    /// Where and when the first of them was seen (for the report).
    first: Option<String>,
}

/// A message kept encoded, so that the heap's order never depends on raft-rs's types.
#[derive(PartialEq, Eq)]
struct MessageBytes {
    to: u64,
    from: u64,
    /// A snapshot message (the channel tells the sender whether it was delivered).
    snapshot: bool,
    bytes: Vec<u8>,
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // A min-heap on (due, seq).
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

struct Sim {
    cfg: SimConfig,
    rng: Rng,
    service: Identity,
    sealer: Sealer,
    nodes: Vec<SimNode>,
    ids: Vec<u64>,
    /// Each node's id (the hex digest of its key), derived once from its seed.
    node_ids: Vec<String>,
    net: BinaryHeap<InFlight>,
    seq: u64,
    /// Links that drop everything, (from, to), until a step.
    cut: BTreeMap<(u64, u64), u64>,
    now: u64,
    faults: FaultCounts,
    /// The primary of each view seen.
    leaders: BTreeMap<u64, u64>,
    /// The longest committed ledger any node has held: every node's must be a prefix of it.
    canonical: Vec<Vec<u8>>,
    /// Acknowledged writes, and which final statuses were seen for them.
    acked: BTreeMap<TxId, Seen>,
    violations: Vec<String>,
    /// Snapshot messages' fates for their senders, as the node-to-node channel reports them: (from, to,
    /// delivered).
    snapshot_reports: Vec<(u64, u64, bool)>,
    /// Snapshots committed on a node (its own file matched the evidence).
    snapshots_committed: u64,
    /// Snapshots installed from a primary.
    snapshots_installed: u64,
    /// The service certificate (DER), receipts' trust anchor.
    service_der: Vec<u8>,
    /// Receipts verified.
    receipts_checked: u64,
    /// Nodes retired and removed.
    nodes_retired: u64,
}

fn keys_seed(seed: u64, index: usize) -> [u8; 32] {
    sha256(format!("synod-sim node {index} of seed {seed}").as_bytes())
}

fn keys_of(service: &Identity, name: &str, seed: &[u8; 32]) -> Result<Keys, String> {
    let node = cert::generate_endorsed_from_seed(name, &[], &[], service, seed).map_err(|e| e.to_string())?;
    let der = cert::pem_to_der(&node.cert_pem).map_err(|e| e.to_string())?;
    Ok(Keys {
        node_key: cert::signing_key_from_pem(&node.key_pem).map_err(|e| e.to_string())?,
        node_id: cert::public_key_id_hex(&der).map_err(|e| e.to_string())?,
        node_cert_pem: node.cert_pem,
        service_key: cert::signing_key_from_pem(&service.key_pem).map_err(|e| e.to_string())?,
        service_cert_der: cert::pem_to_der(&service.cert_pem).map_err(|e| e.to_string())?,
        encryption_key: None,
        service_key_pem: String::new(),
    })
}

fn frame_tx(frame: &[u8]) -> Option<synod_core::ledger::Transaction> {
    let entry: LedgerEntry = decode_frames(frame).next()?.ok()?.entry;
    entry.decode_transaction().ok()
}

impl Sim {
    fn new(cfg: SimConfig) -> Result<Sim, String> {
        let service =
            cert::generate_self_signed_from_seed("sim service", true, &sha256(&cfg.seed.to_le_bytes()))
                .map_err(|e| e.to_string())?;
        let sealer = Sealer::new(&LedgerSecret(sha256(b"synod-sim ledger secret")));
        let mut sim = Sim {
            rng: Rng::new(cfg.seed),
            cfg,
            service,
            sealer,
            nodes: Vec::new(),
            ids: Vec::new(),
            node_ids: Vec::new(),
            net: BinaryHeap::new(),
            seq: 0,
            cut: BTreeMap::new(),
            now: 0,
            faults: FaultCounts::default(),
            leaders: BTreeMap::new(),
            canonical: Vec::new(),
            acked: BTreeMap::new(),
            violations: Vec::new(),
            snapshot_reports: Vec::new(),
            snapshots_committed: 0,
            snapshots_installed: 0,
            service_der: Vec::new(),
            receipts_checked: 0,
            nodes_retired: 0,
        };
        sim.service_der = cert::pem_to_der(&sim.service.cert_pem).map_err(|e| e.to_string())?;
        for i in 0..sim.cfg.nodes {
            let seed = keys_seed(sim.cfg.seed, i);
            let keys = keys_of(&sim.service, &format!("n{i}"), &seed)?;
            sim.ids.push(raft_id(&keys.node_id));
            sim.node_ids.push(keys.node_id);
            // Distinct, fixed election timeouts: raft-rs would otherwise draw them from an unseeded generator.
            let election = 10 + 3 * i;
            let ccfg = CoreConfig {
                sig_tx_interval: 100,
                ledger_chunk_bytes: 20_000,
                snapshot_tx_interval: SNAPSHOT_TX_INTERVAL,
                timing: RaftTiming {
                    election_ticks: election,
                    election_ticks_max: election + 1,
                    heartbeat_ticks: 2,
                    ..RaftTiming::default()
                },
            };
            sim.nodes.push(SimNode {
                keys_seed: seed,
                cfg: ccfg,
                replica: None,
                disk: Disk::default(),
                writes: Vec::new(),
                snapshot_writes: Vec::new(),
                unsynced: Vec::new(),
                next_ledger_sync: 0,
                restart_at: 0,
                started: false,
                join_at: 0,
                trust_tx: None,
                retire_at: None,
                retire_tx: None,
                retired: false,
                commit: TxId::default(),
                checked: 0,
                // Within 5% of the simulation's clock, fixed per node by its seed.
                clock_ppm: 950_000 + u64::from(u16::from_le_bytes([seed[2], seed[3]])) % 100_001,
                slow_disk: (0, 0),
            });
        }
        // Node 0 creates the service; the others join as trusted nodes it adds.
        let keys = keys_of(&sim.service, "n0", &sim.nodes[0].keys_seed)?;
        let genesis = Genesis {
            service_info: serde_json::json!({"status": "Open"}),
            users: vec![],
            members: vec![],
            node_info: serde_json::json!({"status": "Trusted", "endorsed": true}),
            code_ids: vec![],
            constitution: String::new(),
            join_token_digest: None,
            // No recovery members: no shares are made of it.
            member_encryption_keys: vec![],
            ledger_secret: synod_kv::seal::LedgerSecret([0; 32]),
        };
        let core = Core::new_service(keys, sim.sealer.clone(), sim.nodes[0].cfg, &genesis, NOW_SECS)
            .map_err(|e| e.to_string())?;
        sim.nodes[0].replica = Some(Replica::new(core, REPLICA_TIMING, 0, 0));
        sim.nodes[0].started = true;
        // Two more join at once; the rest during the faults, as members trust them and primaries add them.
        for i in 1..sim.cfg.nodes {
            sim.nodes[i].join_at = if i < 3 {
                0
            } else {
                WARMUP_MS + sim.rng.below(sim.cfg.steps.max(2 * WARMUP_MS) / 2)
            };
        }
        // With four nodes or more, the members retire one during the faults (perhaps the primary, which then hands
        // over); three stay.
        if sim.cfg.nodes >= 4 {
            let victim = sim.rng.below(sim.cfg.nodes as u64) as usize;
            sim.nodes[victim].retire_at =
                Some(WARMUP_MS + sim.rng.below(sim.cfg.steps.max(2 * WARMUP_MS) / 2));
        }
        for i in 1..3.min(sim.cfg.nodes) {
            sim.trust(i)?;
            sim.add(i)?;
        }
        // The genesis transaction's own signature commits the first two joiners' votes with it.
        Ok(sim)
    }

    fn primary(&mut self) -> Option<&mut Core> {
        self.nodes
            .iter_mut()
            .filter_map(|n| n.core_mut())
            .find(|c| c.is_primary())
    }

    fn node_id(&self, i: usize) -> String {
        self.node_ids[i].clone()
    }

    /// The members' vote for node `i`, as the primary orders it: its record becomes Trusted (not endorsed yet).
    fn trust(&mut self, i: usize) -> Result<Option<TxId>, String> {
        let node_id = self.node_id(i);
        let Some(core) = self.primary() else {
            return Ok(None);
        };
        let mut tx = Tx::new(core.snapshot());
        tx.put(
            synod_core::maps::NODES_INFO,
            node_id.as_bytes(),
            br#"{"status":"Trusted","endorsed":false}"#,
        );
        Ok(core.commit_tx(tx, NOW_SECS).ok().map(|o| o.tx_id()))
    }

    /// Node `i`'s join poll at the primary: its key is endorsed and it is added; it starts from an empty log.
    fn add(&mut self, i: usize) -> Result<bool, String> {
        let node_id = self.node_id(i);
        let info = serde_json::json!({"status": "Trusted", "endorsed": true});
        let Some(core) = self.primary() else {
            return Ok(false);
        };
        if core.add_node(&node_id, &info, NOW_SECS).is_err() {
            return Ok(false);
        }
        let keys = keys_of(&self.service, &format!("n{i}"), &self.nodes[i].keys_seed)?;
        // The join answer offers the primary's newest committed snapshot; the node starts from it, as `join.rs`
        // does, and Raft catches it up from there.
        let offer = self
            .nodes
            .iter()
            .find(|n| n.core().is_some_and(Core::is_primary))
            .and_then(|p| p.disk.snapshots.values().rev().find(|f| f.evidence.is_some()))
            .map(|f| f.bytes.clone());
        let n = &mut self.nodes[i];
        let core = match offer {
            None => Core::joining(keys, self.sealer.clone(), n.cfg, None).map_err(|e| e.to_string())?,
            Some(bytes) => {
                let decoded =
                    crate::snapshot_codec::decode(&bytes, &self.sealer).map_err(|e| e.to_string())?;
                let seqno = decoded.file.seqno;
                let meta =
                    crate::snapshot_codec::raft_metadata(seqno, decoded.file.view, &decoded.file.conf_state)
                        .map_err(|e| e.to_string())?;
                let hard_state = HardState {
                    term: meta.term,
                    commit: seqno,
                    ..Default::default()
                };
                install(
                    &mut n.disk,
                    crate::consensus::machine::InstalledSnapshot {
                        bytes: bytes.clone(),
                        state: decoded.state.clone(),
                        meta,
                    },
                    hard_state,
                );
                Core::joining_from_snapshot(keys, self.sealer.clone(), n.cfg, &bytes, decoded)
                    .map_err(|e| e.to_string())?
            }
        };
        let durable = n.disk.ledger_last();
        n.replica = Some(Replica::new(core, REPLICA_TIMING, n.clock(self.now), durable));
        n.started = true;
        Ok(true)
    }

    /// Nodes whose time to join has come ask: the members vote (again, if a view change lost the vote), and once
    /// the vote is committed the node's join poll has the primary add it, as the join endpoint does.
    fn joins(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if n.started || n.retired || n.join_at > self.now {
                continue;
            }
            let status = match (n.trust_tx, self.primary()) {
                (Some(tx), Some(core)) => Some(core.tx_status(tx)),
                _ => None,
            };
            match (self.nodes[i].trust_tx, status) {
                (None, _) | (Some(_), Some(TxStatus::Invalid)) => {
                    self.nodes[i].trust_tx = self.trust(i)?;
                }
                (Some(_), Some(TxStatus::Committed)) => {
                    self.add(i)?;
                }
                _ => {}
            }
            self.nodes[i].join_at = self.now + 5 + self.rng.below(30);
        }
        Ok(())
    }

    /// Nodes whose time to retire has come: the primary orders their Retired record (again, if a view change lost
    /// it); once it is committed and a primary other than the node has it out of its configuration, the operator
    /// stops the node for good.
    fn retirements(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if n.retired || !n.started || n.retire_at.is_none_or(|at| at > self.now) {
                continue;
            }
            let (node_id, raft, retire_tx) = (self.node_id(i), self.ids[i], n.retire_tx);
            let Some(core) = self.primary() else { continue };
            match retire_tx.map(|tx| core.tx_status(tx)) {
                None | Some(TxStatus::Invalid) => {
                    // Refused while the node's own record is not ordered yet, or while no primary can order.
                    let tx = core.retire_node(&node_id, NOW_SECS).ok();
                    self.nodes[i].retire_tx = tx;
                }
                Some(TxStatus::Committed) => {
                    let (voters, learners) = core.configuration();
                    if core.raft_id() != raft && !voters.contains(&raft) && !learners.contains(&raft) {
                        let n = &mut self.nodes[i];
                        n.replica = None;
                        n.started = false;
                        n.retired = true;
                        self.nodes_retired += 1;
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn index_of(&self, raft: u64) -> Option<usize> {
        self.ids.iter().position(|&id| id == raft)
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 10 {
            self.violations.push(format!("step {}: {what}", self.now));
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        let mut msgs = msgs;
        // raft-rs iterates a HashMap to address messages: sort them so the order is the seed's alone.
        msgs.sort_by_key(|m| (m.to, m.get_msg_type() as i32, m.index, m.term));
        for m in msgs {
            let Ok(bytes) = m.write_to_bytes() else { continue };
            let snapshot = m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot;
            let faults = self.cfg.faults && self.now < self.cfg.steps && self.now >= WARMUP_MS;
            if self
                .cut
                .get(&(m.from, m.to))
                .is_some_and(|&until| until > self.now)
            {
                if snapshot {
                    self.snapshot_reports.push((m.from, m.to, false));
                }
                continue;
            }
            if faults && self.rng.chance(20_000) {
                self.faults.dropped += 1;
                if snapshot {
                    self.snapshot_reports.push((m.from, m.to, false));
                }
                continue;
            }
            let copies = if faults && self.rng.chance(10_000) {
                self.faults.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = if faults && self.rng.chance(50_000) {
                    self.faults.delayed += 1;
                    1 + self.rng.below(40)
                } else {
                    1 + self.rng.below(2)
                };
                self.seq += 1;
                self.net.push(InFlight {
                    due: self.now + delay,
                    seq: self.seq,
                    msg: MessageBytes {
                        to: m.to,
                        from: m.from,
                        snapshot,
                        bytes: bytes.clone(),
                    },
                });
            }
        }
    }

    fn inject_faults(&mut self) {
        if !self.cfg.faults || self.now >= self.cfg.steps || self.now < WARMUP_MS {
            return;
        }
        // A partition: symmetric or one-way, around one node, for up to 1.5 s.
        if self.rng.chance(1_000) {
            let victim = self.ids[self.rng.below(self.ids.len() as u64) as usize];
            let until = self.now + 100 + self.rng.below(1_400);
            let one_way = self.rng.chance(500_000);
            for &other in &self.ids {
                if other == victim {
                    continue;
                }
                self.cut.insert((victim, other), until);
                if !one_way {
                    self.cut.insert((other, victim), until);
                }
            }
            self.faults.partitions += 1;
        }
        // A slow disk: one node's writes take 20–200 ms more, for up to 2 s.
        if self.rng.chance(500) {
            let i = self.rng.below(self.nodes.len() as u64) as usize;
            let (until, extra) = (self.now + 200 + self.rng.below(1_800), 20 + self.rng.below(180));
            self.nodes[i].slow_disk = (until, extra);
            self.faults.slow_disks += 1;
        }
        // A crash of one live node (never more than a minority of the started ones down at once), restarted
        // within 1 s.
        if self.rng.chance(800) {
            let started = self.nodes.iter().filter(|n| n.started).count();
            let down = self
                .nodes
                .iter()
                .filter(|n| n.started && n.replica.is_none())
                .count();
            let i = self.rng.below(self.nodes.len() as u64) as usize;
            if self.nodes[i].replica.is_some() && (down + 1) * 2 < started {
                self.crash(i);
                self.nodes[i].restart_at = self.now + 50 + self.rng.below(950);
                self.faults.crashes += 1;
            }
        }
    }

    /// Loses everything not durable: the core, Raft log writes in flight, ledger frames not synced — except,
    /// sometimes, a prefix of them that reached the disk before the crash (a torn write: never more than the
    /// disk had been given, always in order).
    fn crash(&mut self, i: usize) {
        if self.rng.chance(300_000) {
            let n = &mut self.nodes[i];
            let writes = self.rng.below(n.writes.len() as u64 + 1) as usize;
            for w in n.writes.drain(..writes) {
                persist(&mut n.disk, &w.job);
            }
            let frames = self.rng.below(n.unsynced.len() as u64 + 1) as usize;
            let mut problems = Vec::new();
            for (frame, writes) in n.unsynced.drain(..frames) {
                problems.extend(n.disk.sync_frame(frame, &writes));
            }
            // RocksDB's write-ahead log and the ledger chunk are different files: the kernel may have written
            // back the stored state of frames whose ledger frames it had not (the state then leads the ledger,
            // and the commit index read back, whose write only a later sync would have made durable).
            if self.rng.chance(500_000) {
                let ahead = self.rng.below(n.unsynced.len() as u64 + 1) as usize;
                for (frame, writes) in n.unsynced.drain(..ahead) {
                    let seqno = frame_tx(&frame).map_or(0, |t| t.seqno);
                    n.disk.store_state(seqno, &writes);
                }
            }
            self.faults.torn_writes += 1;
            for p in problems {
                self.violation(p);
            }
        }
        let n = &mut self.nodes[i];
        n.replica = None;
        n.disk.unsynced_hard_state = None;
        n.writes.clear();
        n.snapshot_writes.clear();
        n.unsynced.clear();
        n.commit = TxId::default();
    }

    /// Restarts node `i` from its disk, as the node's start-up does: the Raft log, the stored state, the newest
    /// usable committed snapshot and the ledger after it, through [`Core::restore`].
    fn restart(&mut self, i: usize) -> Result<(), String> {
        let keys = keys_of(&self.service, &format!("n{i}"), &self.nodes[i].keys_seed)?;
        let n = &mut self.nodes[i];
        let mut log = LogStore::restore(
            n.disk.hard_state.clone(),
            n.disk.conf_state.clone(),
            n.disk.compacted.clone(),
            n.disk.log.clone(),
        );
        log.set_conf_index(n.disk.conf_index);
        let ledger_base = n.disk.ledger_base;
        let version = n.disk.state.version();
        // The newest committed snapshot within the ledger that the stored state has reached, else the one the
        // ledger starts after, else genesis (the node's restore_base).
        let base = n
            .disk
            .snapshots
            .iter()
            .rev()
            .find(|(&s, f)| f.evidence.is_some() && s >= ledger_base && s <= version && s > 0)
            .map(|(&s, f)| (s, Some(f.bytes.clone())));
        let (base, base_snapshot) = match base {
            Some(b) => b,
            None if ledger_base == 0 => (0, None),
            None => {
                let f = n.disk.snapshots.get(&ledger_base).ok_or_else(|| {
                    format!("node {i}: the ledger starts after snapshot {ledger_base}, which is missing")
                })?;
                (ledger_base, Some(f.bytes.clone()))
            }
        };
        let ledger: Vec<LedgerEntry> = n
            .disk
            .ledger
            .iter()
            .skip((base - ledger_base) as usize)
            .filter_map(|f| Some(decode_frames(f).next()?.ok()?.entry))
            .collect();
        let restore = Restore {
            log,
            state: n.disk.state.clone(),
            ledger,
            base_snapshot,
            ledger_base,
        };
        let (mut core, replay) =
            Core::restore(keys, self.sealer.clone(), n.cfg, restore).map_err(|e| format!("restore: {e}"))?;
        if let Some((cs, index)) = core.take_restored_conf() {
            n.disk.conf_state = cs;
            n.disk.conf_index = index;
        }
        // What the stores missed is written again, as the node's start-up does.
        for c in replay {
            let seqno = c.tx_id.seqno;
            if seqno > n.disk.ledger_last() + 1 {
                return Err(format!(
                    "node {i}: restart writes ledger frame {seqno} after {}",
                    n.disk.ledger_last()
                ));
            }
            if seqno > n.disk.ledger_last() {
                n.disk.ledger.push(c.frame.clone());
            }
            if seqno > n.disk.state.version() {
                let _ = n
                    .disk
                    .state
                    .apply(seqno, c.writes.public.maps.iter().chain(&c.writes.private.maps));
            }
        }
        // The newest committed snapshot is offered to followers that fall behind, as the node does.
        if let Some(f) = n.disk.snapshots.values().rev().find(|f| f.evidence.is_some()) {
            core.offer_snapshot(f.bytes.clone())
                .map_err(|e| format!("offer snapshot: {e}"))?;
        }
        n.replica = Some(Replica::new(
            core,
            REPLICA_TIMING,
            n.clock(self.now),
            n.disk.ledger_last(),
        ));
        Ok(())
    }

    /// One simulated millisecond of node `i`: restart if due; the disk writes and snapshot files that became
    /// durable reported; one turn of its replica; its commands executed on the simulated disk and network.
    fn step_node(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].replica.is_none() {
            if self.nodes[i].started && self.nodes[i].restart_at <= self.now {
                self.restart(i)?;
            } else {
                return Ok(());
            }
        }
        let now = self.now;
        let skip_fsync = self.cfg.mutation == Some(Mutation::SkipFsync);
        let mut out: Vec<Message> = Vec::new();
        let mut problems = Vec::new();
        {
            let n = &mut self.nodes[i];
            let (clock, disk_delay) = (n.clock(now), n.disk_delay(now));
            let Some(replica) = n.replica.as_mut() else {
                return Ok(());
            };
            let err = |what: &str, e: CoreError| format!("{what}: {e}");
            // Disk writes that became durable: Persisted, then the messages that waited for them.
            let (done, waiting): (Vec<PendingWrite>, Vec<PendingWrite>) = std::mem::take(&mut n.writes)
                .into_iter()
                .partition(|w| w.due <= now);
            n.writes = waiting;
            for w in done {
                made_durable(&mut n.disk, w, replica, &mut out, skip_fsync)?;
            }
            let (written, writing): (Vec<_>, Vec<_>) = std::mem::take(&mut n.snapshot_writes)
                .into_iter()
                .partition(|w| w.0 <= now);
            n.snapshot_writes = writing;
            for (_, seqno, bytes) in written {
                let digest = crate::snapshot_codec::digest(&bytes);
                n.disk.snapshots.insert(
                    seqno,
                    SnapshotFile {
                        bytes,
                        evidence: None,
                        received: false,
                    },
                );
                replica
                    .handle(Input::SnapshotWritten { seqno, digest }, NOW_SECS)
                    .map_err(|e| err("snapshot written", e))?;
            }
            replica.set_ledger_durable(n.disk.ledger_last());
            replica.turn(clock, NOW_SECS).map_err(|e| err("turn", e))?;
            let mut fx = Effects {
                i,
                now,
                disk_delay,
                skip_fsync,
                seed_byte: n.keys_seed[1],
                disk: &mut n.disk,
                writes: &mut n.writes,
                snapshot_writes: &mut n.snapshot_writes,
                unsynced: &mut n.unsynced,
                out: &mut out,
                problems: &mut problems,
                sealer: &self.sealer,
                installed: &mut self.snapshots_installed,
                committed: &mut self.snapshots_committed,
            };
            loop {
                let commands = replica.take_commands();
                if commands.is_empty() {
                    break;
                }
                for command in commands {
                    if let Some(input) = fx.run(replica, command)? {
                        replica.handle(input, NOW_SECS).map_err(|e| err("snapshot", e))?;
                    }
                }
            }
            // The signatures appended this turn are checked once its commands are out, as the node's loop does.
            replica.verify_appended().map_err(|e| err("signatures", e))?;
            // The ledger is synced every few milliseconds, as the applier does.
            if now >= n.next_ledger_sync {
                for (frame, writes) in std::mem::take(&mut n.unsynced) {
                    problems.extend(n.disk.sync_frame(frame, &writes));
                }
                n.next_ledger_sync = now + 5;
            }
        }
        self.send(out);
        for p in problems {
            self.violation(p);
        }
        Ok(())
    }

    fn deliver(&mut self) -> Result<(), String> {
        while self.net.peek().is_some_and(|m| m.due <= self.now) {
            let Some(m) = self.net.pop() else { break };
            let cut = self
                .cut
                .get(&(m.msg.from, m.msg.to))
                .is_some_and(|&until| until > self.now);
            let receiver = self
                .index_of(m.msg.to)
                .filter(|&j| self.nodes[j].replica.is_some());
            let (Some(j), false) = (receiver, cut) else {
                if m.msg.snapshot {
                    self.snapshot_reports.push((m.msg.from, m.msg.to, false));
                }
                continue;
            };
            let msg = Message::parse_from_bytes(&m.msg.bytes).map_err(|e| e.to_string())?;
            if let Some(replica) = self.nodes[j].replica.as_mut() {
                replica
                    .handle(Input::Raft(msg), NOW_SECS)
                    .map_err(|e| format!("step: {e}"))?;
            }
            if m.msg.snapshot {
                self.snapshot_reports.push((m.msg.from, m.msg.to, true));
            }
        }
        for (from, to, delivered) in std::mem::take(&mut self.snapshot_reports) {
            if self.cfg.mutation == Some(Mutation::SkipSnapshotReport) {
                continue;
            }
            let Some(replica) = self.index_of(from).and_then(|i| self.nodes[i].replica.as_mut()) else {
                continue;
            };
            replica
                .handle(Input::SnapshotSent { to, delivered }, NOW_SECS)
                .map_err(|e| format!("report snapshot: {e}"))?;
        }
        Ok(())
    }

    fn client(&mut self) -> Result<(), String> {
        if self.now >= self.cfg.steps || !self.rng.chance(300_000) {
            return Ok(());
        }
        let key = self.rng.below(64);
        let value = self.rng.next_u64();
        let Some(core) = self.primary() else { return Ok(()) };
        let mut tx = Tx::new(core.snapshot());
        tx.put(MAP, &key.to_be_bytes(), &value.to_be_bytes());
        match core.commit_tx(tx, NOW_SECS) {
            Ok(outcome) => {
                self.acked.entry(outcome.tx_id()).or_default();
            }
            Err(
                crate::consensus::machine::CoreError::NotPrimary | crate::consensus::machine::CoreError::Busy,
            ) => {}
            Err(crate::consensus::machine::CoreError::Conflict(_)) => {}
            Err(e) => return Err(format!("commit_tx: {e}")),
        }
        Ok(())
    }

    fn check(&mut self) {
        self.check_election_safety();
        self.check_ledgers();
        self.check_commits();
        self.check_statuses();
    }

    /// Election safety: one primary per view.
    fn check_election_safety(&mut self) {
        let mut found = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(core) = n.core() {
                if core.is_primary() {
                    found.push((core.view(), self.ids[i]));
                }
            }
        }
        for (view, id) in found {
            match self.leaders.get(&view) {
                Some(&other) if other != id => self.violation(format!(
                    "election safety: view {view} has two primaries, {other:x} and {id:x}"
                )),
                _ => {
                    self.leaders.insert(view, id);
                }
            }
        }
    }

    /// Committed ledgers: one history, never rewritten (a node's synced ledger only grows, so only what it
    /// added since the last check is compared). A node that installed a snapshot holds the ledger after it.
    fn check_ledgers(&mut self) {
        let mut problems = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let (base, ledger) = (n.disk.ledger_base as usize, &n.disk.ledger);
            let last = base + ledger.len();
            if last < n.checked {
                problems.push(format!(
                    "durability: node {i}'s committed ledger shrank to seqno {last}"
                ));
                n.checked = last;
            }
            let common = last.min(self.canonical.len());
            if let Some(at) = (n.checked.max(base)..common).find(|&k| ledger[k - base] != self.canonical[k]) {
                problems.push(format!(
                    "state machine safety: node {i}'s committed entry {} differs from another node's",
                    at + 1
                ));
            }
            // The canonical ledger grows from a node whose ledger continues it (not one that skipped ahead).
            if last > self.canonical.len() && base <= self.canonical.len() {
                let from = self.canonical.len() - base;
                self.canonical.extend_from_slice(&ledger[from..]);
            }
            n.checked = last;
        }
        for p in problems {
            self.violation(p);
        }
    }

    /// Commit: forward only within a life, always on a signature this node holds or will hold.
    fn check_commits(&mut self) {
        let mut problems = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let Some(core) = n.core() else { continue };
            let commit = core.committed();
            if commit.seqno < n.commit.seqno {
                problems.push(format!(
                    "commit of node {i} went back from {} to {commit}",
                    n.commit
                ));
            }
            n.commit = commit;
            if commit.seqno > 0 {
                if let Some(frame) = self.canonical.get(commit.seqno as usize - 1) {
                    match frame_tx(frame) {
                        Some(t) if t.kind == KIND_SIGNATURE && t.view == commit.view => {}
                        _ => problems.push(format!("node {i} commits {commit}, which is not a signature")),
                    }
                }
            }
        }
        for p in problems {
            self.violation(p);
        }
    }

    /// Statuses: Committed and Invalid never both (every 50 steps).
    fn check_statuses(&mut self) {
        if self.now.is_multiple_of(50) {
            let cores: Vec<&Core> = self.nodes.iter().filter_map(|n| n.core()).collect();
            let mut problems = Vec::new();
            for (tx, seen) in self.acked.iter_mut() {
                for (i, core) in cores.iter().enumerate() {
                    let status = core.tx_status(*tx);
                    match status {
                        TxStatus::Committed => seen.committed = true,
                        TxStatus::Invalid => seen.invalid = true,
                        _ => continue,
                    }
                    seen.first.get_or_insert_with(|| {
                        format!(
                            "first seen {status:?} at step {} on live node {i} (log {}, commit {})",
                            self.now,
                            core.tx_id_at(tx.seqno),
                            core.committed()
                        )
                    });
                }
                if seen.committed && seen.invalid {
                    let views: Vec<String> = cores
                        .iter()
                        .map(|c| {
                            format!(
                                "{:?} (log {}, commit {})",
                                c.tx_status(*tx),
                                c.tx_id_at(tx.seqno),
                                c.committed()
                            )
                        })
                        .collect();
                    problems.push(format!(
                        "{tx} was seen both Committed and Invalid ({}); now {views:?}",
                        seen.first.as_deref().unwrap_or_default()
                    ));
                }
            }
            for p in problems {
                self.violation(p);
            }
        }
    }

    /// Every 100 ms, a receipt for a write seen Committed, from a live node that holds it Committed, must verify
    /// against the service certificate and prove the entry the committed ledger holds at its seqno.
    fn check_receipt(&mut self) {
        if !self.now.is_multiple_of(100) {
            return;
        }
        let committed: Vec<TxId> = self
            .acked
            .iter()
            .filter(|(_, seen)| seen.committed)
            .map(|(tx, _)| *tx)
            .collect();
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].replica.is_some())
            .collect();
        if committed.is_empty() || live.is_empty() {
            return;
        }
        let tx = committed[self.rng.below(committed.len() as u64) as usize];
        let i = live[self.rng.below(live.len() as u64) as usize];
        let Some(core) = self.nodes[i].core() else { return };
        if core.tx_status(tx) != TxStatus::Committed {
            return;
        }
        // A receipt whose proof left memory is rebuilt from the ledger files by the node's shell, not the core.
        let Ok(receipt) = core.json_receipt(tx) else {
            return;
        };
        let expected = self
            .canonical
            .get(tx.seqno as usize - 1)
            .and_then(|f| decode_frames(f).next()?.ok())
            .and_then(|f| f.entry.write_set_digest_and_leaf().ok())
            .map(|(_, leaf)| leaf);
        let problem = match synod_core::receipt::verify_json(&receipt, &self.service_der) {
            Err(e) => Some(format!(
                "receipts: node {i}'s receipt for {tx} does not verify: {e}"
            )),
            Ok(v) if expected.is_some() && v.leaf != expected => Some(format!(
                "receipts: node {i}'s receipt for {tx} proves another entry than the committed ledger's"
            )),
            Ok(_) => None,
        };
        if let Some(p) = problem {
            self.violation(p);
        } else {
            self.receipts_checked += 1;
        }
    }

    /// One simulated millisecond of the whole cluster.
    fn one_step(&mut self) -> Result<(), String> {
        self.inject_faults();
        for i in 0..self.nodes.len() {
            self.step_node(i)?;
        }
        self.deliver()?;
        self.joins()?;
        self.retirements()?;
        self.client()?;
        self.check();
        self.check_receipt();
        Ok(())
    }

    fn run(mut self) -> Result<SimReport, String> {
        let total = self.cfg.steps + self.cfg.heal_steps;
        while self.now < total && self.violations.is_empty() {
            // A node that refuses to step or to restart (its core found its own state broken) is a violation of
            // the seed, named with its reason.
            if let Err(e) = self.one_step() {
                self.violation(format!("a node stopped: {e}"));
                break;
            }
            self.now += 1;
        }
        if self.violations.is_empty() {
            self.final_checks();
        }
        let writes_committed = self.acked.values().filter(|s| s.committed).count() as u64;
        Ok(SimReport {
            seed: self.cfg.seed,
            steps: self.now,
            faults: self.faults,
            writes_acked: self.acked.len() as u64,
            writes_committed,
            snapshots_committed: self.snapshots_committed,
            snapshots_installed: self.snapshots_installed,
            receipts_checked: self.receipts_checked,
            nodes_retired: self.nodes_retired,
            violations: self.violations,
        })
    }

    /// After the heal: everyone up, caught up to the same commit, holding every write seen Committed.
    fn final_checks(&mut self) {
        let commits: Vec<Option<TxId>> = self
            .nodes
            .iter()
            .map(|n| n.core().map(|c| c.committed()))
            .collect();
        let best = commits.iter().flatten().map(|c| c.seqno).max().unwrap_or(0);
        for (i, c) in commits.iter().enumerate() {
            if self.nodes[i].retired {
                continue;
            }
            match c {
                None => self.violation(format!("liveness: node {i} is still down after the heal")),
                Some(c) if c.seqno < best => self.violation(format!(
                    "liveness: node {i} is at commit {c}, others at seqno {best}, {} ms after the faults stopped",
                    self.cfg.heal_steps
                )),
                _ => {}
            }
        }
        let statuses: Vec<(TxId, bool)> = self
            .acked
            .iter()
            .map(|(tx, seen)| (*tx, seen.committed))
            .collect();
        for (tx, committed) in statuses {
            let now: Vec<TxStatus> = self
                .nodes
                .iter()
                .filter_map(|n| n.core())
                .map(|c| c.tx_status(tx))
                .collect();
            if committed && now.iter().any(|s| *s != TxStatus::Committed) {
                self.violation(format!("lost write: {tx} was Committed, now {now:?}"));
                continue;
            }
            if committed {
                let frame = self
                    .canonical
                    .get(tx.seqno as usize - 1)
                    .and_then(|f| frame_tx(f));
                if frame.map(|t| t.view) != Some(tx.view) {
                    self.violation(format!("lost write: {tx} is not in the committed ledger"));
                }
            }
        }
        let short: Vec<(usize, usize)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.retired)
            .map(|(i, n)| (i, n.disk.ledger_last() as usize))
            .filter(|(_, len)| (*len as u64) < best)
            .collect();
        for (i, len) in short {
            self.violation(format!(
                "liveness: node {i}'s ledger holds {len} entries, the commit is at seqno {best}"
            ));
        }
        // Retirements: each one asked for took effect, and no node still counts a retired node in.
        let mut problems = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.retire_at.is_some() && !n.retired {
                problems.push(format!(
                    "liveness: node {i} is still in the configuration {} ms after the faults stopped (its Retired \
                     record: {:?})",
                    self.cfg.heal_steps, n.retire_tx
                ));
            }
            if !n.retired {
                continue;
            }
            for (j, other) in self.nodes.iter().enumerate() {
                let Some(core) = other.core() else { continue };
                let (voters, learners) = core.configuration();
                if voters.contains(&self.ids[i]) || learners.contains(&self.ids[i]) {
                    problems.push(format!(
                        "retirement: node {j} still has retired node {i} in its configuration"
                    ));
                }
            }
        }
        for p in problems {
            self.violation(p);
        }
    }
}

/// What a node's commands act on during one of its steps: its simulated disk and queues, the messages it sends,
/// and the simulation's counters (its replica is borrowed beside them).
struct Effects<'a> {
    i: usize,
    now: u64,
    disk_delay: u64,
    skip_fsync: bool,
    seed_byte: u8,
    disk: &'a mut Disk,
    writes: &'a mut Vec<PendingWrite>,
    snapshot_writes: &'a mut Vec<(u64, u64, Vec<u8>)>,
    unsynced: &'a mut Vec<(Vec<u8>, Arc<crate::ledger_files::Writes>)>,
    out: &'a mut Vec<Message>,
    problems: &'a mut Vec<String>,
    sealer: &'a Sealer,
    installed: &'a mut u64,
    committed: &'a mut u64,
}

impl Effects<'_> {
    /// Carries out one command as the node's threads would; the input it answers the replica with, if any.
    fn run(&mut self, replica: &mut Replica, command: Command) -> Result<Option<Input>, String> {
        Ok(match command {
            Command::Send(messages) => {
                self.out.extend(messages);
                None
            }
            Command::Persist(job) => {
                if self.skip_fsync {
                    // The bug: reported durable at once, durable only later.
                    replica
                        .handle(Input::Persisted(job.number), NOW_SECS)
                        .map_err(|e| format!("persisted: {e}"))?;
                    self.out.extend(job.then_send.iter().cloned());
                }
                // In order, as the store thread writes them: never before the one queued earlier. A write
                // without a sync takes no disk time.
                let delay = if job.must_sync { self.disk_delay } else { 0 };
                let due = self.writes.last().map_or(0, |w| w.due).max(self.now + delay);
                self.writes.push(PendingWrite { due, job });
                None
            }
            Command::Install { snapshot, hard_state } => {
                // The store thread runs it after the writes before it: they become durable first.
                durable_now(self.disk, self.writes, replica, self.out, self.skip_fsync)?;
                install(self.disk, snapshot, hard_state);
                *self.installed += 1;
                self.unsynced.clear();
                None
            }
            Command::Apply(entries) => {
                self.unsynced
                    .extend(entries.into_iter().map(|c| (c.frame, c.writes)));
                None
            }
            Command::WriteSnapshot(job) => {
                let bytes = job.encode(self.sealer).map_err(|e| format!("snapshot: {e}"))?;
                // One file at a time, as the node's snapshotter queue (a second one is skipped).
                if self.snapshot_writes.is_empty() {
                    self.snapshot_writes.push((
                        self.now + self.disk_delay + 1 + (self.seed_byte as u64 % 5),
                        job.state.version(),
                        bytes,
                    ));
                }
                None
            }
            Command::CommitSnapshot {
                seqno,
                evidence_seqno,
                digest,
            } => match self.disk.commit_snapshot(seqno, evidence_seqno, digest) {
                Ok(Some(input)) => {
                    if matches!(input, Input::SnapshotFileCommitted { .. }) {
                        *self.committed += 1;
                    }
                    Some(input)
                }
                Ok(None) => return Ok(None),
                Err(()) => {
                    self.problems.push(format!(
                        "snapshot files differ: node {}'s snapshot {seqno} is not the one the primary's evidence records",
                        self.i
                    ));
                    return Ok(None);
                }
            },
            Command::Compact(meta) => {
                // Likewise after the writes before it (the hard state that committed the entries).
                durable_now(self.disk, self.writes, replica, self.out, self.skip_fsync)?;
                self.disk.compact(meta);
                None
            }
            Command::RefreshPeers
            | Command::PrimaryChanged(_)
            | Command::CommitMoved { .. }
            | Command::SaveSecrets(_) => None,
        })
    }
}

/// Makes every Raft log write in flight durable now, in order, as the store thread has before it runs what the
/// replica handed out after them (an install or a compaction).
fn durable_now(
    disk: &mut Disk,
    writes: &mut Vec<PendingWrite>,
    replica: &mut Replica,
    out: &mut Vec<Message>,
    skip_fsync: bool,
) -> Result<(), String> {
    for w in std::mem::take(writes) {
        made_durable(disk, w, replica, out, skip_fsync)?;
    }
    Ok(())
}

/// A Raft log write reaches the disk: the replica hears it is persisted and the messages that waited for it
/// leave (with the skip-fsync mutation it heard so when the write was handed out).
fn made_durable(
    disk: &mut Disk,
    w: PendingWrite,
    replica: &mut Replica,
    out: &mut Vec<Message>,
    skip_fsync: bool,
) -> Result<(), String> {
    persist(disk, &w.job);
    if !skip_fsync {
        replica
            .handle(Input::Persisted(w.job.number), NOW_SECS)
            .map_err(|e| format!("persisted: {e}"))?;
        out.extend(w.job.then_send);
    }
    Ok(())
}

/// Makes a Raft log write durable on the simulated disk (or, without a sync, its hard state written but not yet
/// durable).
fn persist(disk: &mut Disk, w: &PersistJob) {
    if w.must_sync {
        if let Some(hs) = disk.unsynced_hard_state.take() {
            disk.hard_state = hs;
        }
    }
    if let Some(first) = w.entries.first() {
        let keep = first.index.saturating_sub(disk.compacted.index + 1) as usize;
        disk.log.truncate(keep);
        disk.log.extend(w.entries.iter().cloned());
    }
    match (&w.hard_state, w.must_sync) {
        (Some(hs), true) => disk.hard_state = hs.clone(),
        (Some(hs), false) => disk.unsynced_hard_state = Some(hs.clone()),
        (None, _) => {}
    }
    if let Some(cs) = &w.conf_state {
        disk.conf_state = cs.clone();
    }
    if let Some(index) = w.conf_index {
        disk.conf_index = index;
    }
}

/// Installs a snapshot from the primary on the simulated disk: the file, the Raft log reset to start after it, the
/// ledger restarted after it and the stored state replaced (the node's store thread and applier).
fn install(disk: &mut Disk, snapshot: crate::consensus::machine::InstalledSnapshot, hard_state: HardState) {
    let seqno = snapshot.meta.index;
    disk.snapshots.entry(seqno).or_insert(SnapshotFile {
        bytes: snapshot.bytes,
        evidence: None,
        received: true,
    });
    disk.log.clear();
    disk.conf_state = snapshot.meta.get_conf_state().clone();
    disk.conf_index = seqno;
    disk.compacted = snapshot.meta;
    disk.hard_state = hard_state;
    disk.unsynced_hard_state = None;
    disk.ledger.clear();
    disk.ledger_base = seqno;
    disk.state = snapshot.state;
}

/// Runs one seed. A panic inside a node (raft-rs asserts its own invariants, e.g. that it never commits past its
/// log, and panics when they break) is a violation of the run, not a failure of the harness.
pub fn run(cfg: SimConfig) -> Result<SimReport, String> {
    if !(3..=7).contains(&cfg.nodes) {
        return Err(format!("{} nodes: the simulation runs 3 to 7", cfg.nodes));
    }
    let seed = cfg.seed;
    let sim = Sim::new(cfg)?;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || sim.run())) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Ok(SimReport {
                seed,
                steps: 0,
                faults: FaultCounts::default(),
                writes_acked: 0,
                writes_committed: 0,
                snapshots_committed: 0,
                snapshots_installed: 0,
                receipts_checked: 0,
                nodes_retired: 0,
                violations: vec![format!("a node stopped on a broken invariant: {what}")],
            })
        }
    }
}

/// A short digest of a report, to compare two runs of the same seed.
pub fn fingerprint(r: &SimReport) -> String {
    format!(
        "{}:{}:{:?}:{}:{}:{}:{}:{}:{:?}",
        r.seed,
        r.steps,
        r.faults,
        r.writes_acked,
        r.writes_committed,
        r.snapshots_committed,
        r.snapshots_installed,
        r.nodes_retired,
        r.violations
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_exactly() {
        let mut cfg = SimConfig::new(7);
        cfg.steps = 800;
        cfg.heal_steps = 1_500;
        let a = run(cfg.clone()).expect("run");
        let b = run(cfg).expect("run again");
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert!(a.faults.total() > 0, "faults were injected: {:?}", a.faults);
    }

    #[test]
    fn a_few_seeds_hold_every_invariant() {
        for seed in 1..=6 {
            let mut cfg = SimConfig::new(seed);
            cfg.nodes = 3 + (seed as usize % 3);
            cfg.steps = 1_500;
            cfg.heal_steps = 2_500;
            let r = run(cfg).expect("run");
            assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
            assert!(r.writes_committed > 0, "seed {seed}: nothing committed: {r:?}");
        }
    }
}
/// `SEED=S NODES=N cargo test -p synod-node --lib simulation::trace -- --ignored --nocapture` prints every node's
/// view, commit, log and configuration every 500 simulated ms of one seed: where to start with a failing seed.
#[cfg(test)]
mod trace {
    use super::*;

    #[test]
    #[ignore]
    fn trace_a_seed() {
        let seed: u64 = std::env::var("SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(22);
        let nodes: usize = std::env::var("NODES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5);
        let mut cfg = SimConfig::new(seed);
        cfg.nodes = nodes;
        if let Some(steps) = std::env::var("STEPS").ok().and_then(|s| s.parse().ok()) {
            cfg.steps = steps;
            cfg.heal_steps = steps.max(2_000);
        }
        let mut sim = Sim::new(cfg).expect("sim");
        let total = sim.cfg.steps + sim.cfg.heal_steps;
        while sim.now < total {
            sim.one_step().expect("step");
            if sim.now.is_multiple_of(250) {
                let st: Vec<String> = sim
                    .nodes
                    .iter()
                    .map(|n| match n.core() {
                        None => format!(
                            "down(started {} trust {:?} join_at {})",
                            n.started, n.trust_tx, n.join_at
                        ),
                        Some(c) => format!(
                            "{}{} commit {} last {} conf {:?}",
                            if c.is_primary() { "P" } else { "" },
                            c.view(),
                            c.committed(),
                            c.last_seqno(),
                            c.configuration().0.len()
                        ),
                    })
                    .collect();
                eprintln!("{} {:?}", sim.now, st);
            }
            sim.now += 1;
        }
        sim.final_checks();
        eprintln!("{:?}", sim.violations);
    }
}
