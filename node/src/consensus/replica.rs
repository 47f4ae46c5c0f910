//! The replica: the one owner of a [`Core`] and of the bookkeeping around it (timers, snapshots waiting for their
//! file or for the ledger to reach them, what was last published). Each input and each turn hands out
//! [`Command`]s; a small executor runs them — the node's with threads, disks and sockets (`service.rs`), the
//! simulation's with a simulated disk and network (`simulation.rs`). Both run this same code, so what the
//! simulation checks is the bookkeeping the node runs, not a copy of it. No I/O here.
//!
//! ```text
//!  Input (peer message, persisted, snapshot written/sent, ...) ─▶ Replica::handle ─┐
//!  calls from handlers (commit_tx, reads) ─▶ Replica::core_mut ───────────────────┤
//!  Replica::turn(now): tick, signature, compaction, one Ready ─────────────────────┴─▶ Vec<Command> ─▶ executor
//! ```
//!
//! The executor's duties: run `Persist`, `Install` and `Compact` in the order given (one FIFO queue) and answer
//! each `Persist` with [`Input::Persisted`] once durable, then send its `then_send` messages; send `Send` at once;
//! apply `Apply` to the ledger and stored state in order and report how far that is durable with
//! [`Replica::set_ledger_durable`]; write `WriteSnapshot` and answer [`Input::SnapshotWritten`]; for
//! `CommitSnapshot`, mark the written file committed and answer [`Input::SnapshotFileCommitted`], or
//! [`Input::SnapshotNotWritten`] if its file is not written yet.

use std::collections::BTreeMap;

use raft::eraftpb::{ConfState, Entry, HardState, Message, SnapshotMetadata};
use synod_core::txid::TxId;

use crate::consensus::machine::{Core, CoreError, Event, InstalledSnapshot, SignatureTiming, SnapshotJob};
use crate::ledger_files::CommittedEntry;

/// Snapshots whose commit waits for this node's own file: only the newest few are remembered (a snapshot the
/// snapshotter skipped is never written).
const PENDING_SNAPSHOT_COMMITS_MAX: usize = 2;

/// The replica's timers.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaTiming {
    /// Milliseconds per Raft tick.
    pub tick_ms: u64,
    /// When signatures are due.
    pub signature: SignatureTiming,
}

/// A Raft log write for the executor to make durable.
#[derive(Debug, Default)]
pub struct PersistJob {
    /// Answer [`Input::Persisted`] with it.
    pub number: u64,
    /// Entries to append (overwriting any stored suffix from the first one's index).
    pub entries: Vec<Entry>,
    /// New hard state.
    pub hard_state: Option<HardState>,
    /// New configuration.
    pub conf_state: Option<ConfState>,
    /// Index of the last configuration change in `conf_state`.
    pub conf_index: Option<u64>,
    /// Messages that may leave only once this is written (durable, if `must_sync`).
    pub then_send: Vec<Message>,
    /// Whether it must be synced ([`crate::consensus::machine::CoreReady::must_sync`]); if not, it is written
    /// without a sync and becomes durable with the next synced write.
    pub must_sync: bool,
}

/// What the replica asks its executor to do.
pub enum Command {
    /// Send these messages now.
    Send(Vec<Message>),
    /// Install a snapshot from the primary: reset the Raft log to it (with this hard state), the ledger and the
    /// stored state; ordered with the persists.
    Install {
        /// The snapshot.
        snapshot: InstalledSnapshot,
        /// The hard state to store with the reset log.
        hard_state: HardState,
    },
    /// Make a Raft log write durable (ordered with `Install` and `Compact`).
    Persist(PersistJob),
    /// Append committed entries to the ledger and the stored state, in order.
    Apply(Vec<CommittedEntry>),
    /// Write a snapshot file (every node does, at the same seqnos).
    WriteSnapshot(SnapshotJob),
    /// The snapshot at `seqno` is committed: mark this node's file so.
    CommitSnapshot {
        /// Snapshot seqno.
        seqno: u64,
        /// Seqno of its evidence.
        evidence_seqno: u64,
        /// Hex digest the evidence records.
        digest: String,
    },
    /// Drop stored Raft log entries up to this snapshot point (ordered with the persists).
    Compact(SnapshotMetadata),
    /// The nodes table or the configuration changed: refresh peers.
    RefreshPeers,
    /// Keep the ledger secret schedule (a rekey was appended or rolled back).
    SaveSecrets(Vec<(u64, synod_kv::seal::LedgerSecret)>),
    /// The known primary changed (0: none).
    PrimaryChanged(u64),
    /// The service commit or the view moved.
    CommitMoved {
        /// The view.
        view: u64,
        /// The service commit.
        committed: TxId,
    },
}

/// What the executor and the peers tell the replica.
pub enum Input {
    /// A peer's Raft message.
    Raft(Message),
    /// A [`PersistJob`] is durable.
    Persisted(u64),
    /// Whether a snapshot message reached its peer.
    SnapshotSent {
        /// The peer.
        to: u64,
        /// Whether it arrived.
        delivered: bool,
    },
    /// This node wrote its snapshot at `seqno`.
    SnapshotWritten {
        /// Seqno.
        seqno: u64,
        /// Its digest.
        digest: [u8; 32],
    },
    /// A `CommitSnapshot` was done: these are the committed file's bytes (offered to followers that fall behind).
    SnapshotFileCommitted {
        /// Seqno.
        seqno: u64,
        /// The file.
        bytes: Vec<u8>,
    },
    /// A `CommitSnapshot` found no file yet: do it once the file is written.
    SnapshotNotWritten {
        /// Snapshot seqno.
        seqno: u64,
        /// Seqno of its evidence.
        evidence_seqno: u64,
        /// Hex digest.
        digest: String,
    },
}

/// The one owner of a [`Core`] (see the module doc).
pub struct Replica {
    core: Core,
    timing: ReplicaTiming,
    next_tick_ms: u64,
    /// A committed snapshot's seqno, compacted once the ledger is durable up to it.
    pending_compaction: Option<u64>,
    /// Committed snapshots whose file is not written yet: seqno → (evidence seqno, digest).
    pending_commits: BTreeMap<u64, (u64, String)>,
    ledger_durable: u64,
    known_primary: u64,
    published: (u64, TxId),
    commands: Vec<Command>,
}

impl Replica {
    /// Takes ownership of `core`; `ledger_durable` is how far the ledger files reach.
    pub fn new(core: Core, timing: ReplicaTiming, now_ms: u64, ledger_durable: u64) -> Replica {
        Replica {
            core,
            timing,
            next_tick_ms: now_ms + timing.tick_ms,
            pending_compaction: None,
            pending_commits: BTreeMap::new(),
            ledger_durable,
            known_primary: 0,
            published: (0, TxId::default()),
            commands: Vec::new(),
        }
    }

    /// The core, to read.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The core, for calls that change it (ordering transactions, adding nodes); the next turn hands out what
    /// they caused.
    pub fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    /// The ledger files are durable up to `seqno` (compaction waits for it).
    pub fn set_ledger_durable(&mut self, seqno: u64) {
        self.ledger_durable = self.ledger_durable.max(seqno);
    }

    /// The commands handed out so far.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }

    /// When the next turn is due even if nothing arrives (the tick; signatures are checked at least as often).
    pub fn next_deadline_ms(&self, now_ms: u64) -> u64 {
        self.next_tick_ms
            .min(now_ms + self.timing.signature.interval_ms.max(1))
    }

    /// Whether Raft has a Ready waiting (the executor then turns again at once).
    pub fn has_ready(&self) -> bool {
        self.core.has_ready()
    }

    /// Handles one input.
    pub fn handle(&mut self, input: Input, now_secs: i64) -> Result<(), CoreError> {
        match input {
            Input::Raft(m) => self.core.step(m)?,
            Input::Persisted(number) => self.core.on_persisted(number)?,
            Input::SnapshotSent { to, delivered } => {
                if !delivered {
                    tracing::info!(
                        peer = to,
                        "a snapshot message was not delivered: Raft sends it again"
                    );
                }
                self.core.report_snapshot(to, delivered)?;
            }
            Input::SnapshotWritten { seqno, digest } => {
                if let Some(e) = self.core.snapshot_written(seqno, &digest, now_secs)? {
                    tracing::info!(seqno, evidence = %e, "recorded snapshot evidence");
                }
                if let Some((evidence_seqno, digest)) = self.pending_commits.remove(&seqno) {
                    self.commands.push(Command::CommitSnapshot {
                        seqno,
                        evidence_seqno,
                        digest,
                    });
                }
            }
            Input::SnapshotFileCommitted { seqno, bytes } => {
                self.core.offer_snapshot(bytes)?;
                self.pending_compaction = Some(self.pending_compaction.map_or(seqno, |s| s.max(seqno)));
            }
            Input::SnapshotNotWritten {
                seqno,
                evidence_seqno,
                digest,
            } => {
                self.pending_commits.insert(seqno, (evidence_seqno, digest));
                while self.pending_commits.len() > PENDING_SNAPSHOT_COMMITS_MAX {
                    self.pending_commits.pop_first();
                }
            }
        }
        Ok(())
    }

    /// One turn: the tick and the signature if due, compaction if the ledger reached it, then at most one Ready,
    /// so that no stream of new entries keeps the timers waiting (signatures once came only by transaction count
    /// under load). Returns whether Raft has another Ready waiting.
    pub fn turn(&mut self, now_ms: u64, now_secs: i64) -> Result<bool, CoreError> {
        if now_ms >= self.next_tick_ms {
            self.core.tick()?;
            self.next_tick_ms = now_ms + self.timing.tick_ms;
        }
        if self.core.signature_due(now_ms, self.timing.signature) {
            self.core.emit_signature(now_secs)?;
        }
        self.core.rekey_if_due(now_secs)?;
        self.core.renew_certificates_if_due(now_secs)?;
        if let Some(s) = self.pending_compaction.filter(|&s| s <= self.ledger_durable) {
            self.pending_compaction = None;
            if let Some(meta) = self.core.compact_log(s)? {
                self.commands.push(Command::Compact(meta));
            }
        }
        self.one_ready()?;
        Ok(self.core.has_ready())
    }

    /// Hands out one Ready if Raft committed entries no Ready handed out yet, without the timers and the signature:
    /// the executor calls it before work that may take a while (running a batch of transactions), so that a
    /// commit the peers' answers made is published at once. Returns whether it handed one out.
    pub fn hand_out_commit(&mut self) -> Result<bool, CoreError> {
        if !self.core.commit_waiting() {
            return Ok(false);
        }
        self.one_ready()
    }

    /// Checks the signatures appended from the primary ([`Core::verify_appended`]); call it once a turn's commands
    /// are carried out, so that the checks overlap the disk write and the peers' answers.
    pub fn verify_appended(&mut self) -> Result<(), CoreError> {
        self.core.verify_appended()
    }

    /// Signs what is ordered and hands out every Ready (stopping, so that it reaches the disk and the peers).
    pub fn drain(&mut self, now_secs: i64) -> Result<(), CoreError> {
        self.core.emit_signature(now_secs)?;
        while self.one_ready()? {}
        Ok(())
    }

    /// Hands out the core's events and one Ready, if any; returns whether there was one.
    fn one_ready(&mut self) -> Result<bool, CoreError> {
        let rd = self.core.ready()?;
        for event in self.core.take_events() {
            self.commands.push(match event {
                Event::SnapshotDue(job) => Command::WriteSnapshot(job),
                Event::SnapshotCommitted {
                    seqno,
                    evidence_seqno,
                    digest,
                } => Command::CommitSnapshot {
                    seqno,
                    evidence_seqno,
                    digest,
                },
                Event::NodesChanged => Command::RefreshPeers,
                Event::SecretsChanged(schedule) => Command::SaveSecrets(schedule),
            });
        }
        let Some(rd) = rd else {
            self.publish();
            return Ok(false);
        };
        if !rd.messages.is_empty() {
            self.commands.push(Command::Send(rd.messages));
        }
        if let Some(snapshot) = rd.installed {
            // Everything before the snapshot is superseded; the commit stored with the reset log is at least the
            // snapshot's, so a crash right after never leaves the commit behind the log's start.
            let mut hard_state = rd
                .hard_state
                .clone()
                .unwrap_or_else(|| self.core.stored_hard_state());
            hard_state.commit = hard_state.commit.max(snapshot.meta.index);
            hard_state.term = hard_state.term.max(snapshot.meta.term);
            self.commands.push(Command::Install { snapshot, hard_state });
        }
        self.commands.push(Command::Persist(PersistJob {
            number: rd.number,
            entries: rd.entries,
            hard_state: rd.hard_state,
            conf_state: rd.conf_state,
            conf_index: rd.conf_index,
            then_send: rd.persisted_messages,
            must_sync: rd.must_sync,
        }));
        if !rd.committed.is_empty() {
            self.commands.push(Command::Apply(rd.committed));
        }
        self.publish();
        Ok(true)
    }

    fn publish(&mut self) {
        let primary = self.core.primary();
        if primary != self.known_primary {
            self.known_primary = primary;
            self.commands.push(Command::PrimaryChanged(primary));
        }
        let now = (self.core.view(), self.core.committed());
        if now != self.published {
            self.published = now;
            self.commands.push(Command::CommitMoved {
                view: now.0,
                committed: now.1,
            });
        }
    }
}
