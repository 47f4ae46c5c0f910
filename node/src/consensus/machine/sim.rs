//! A whole cluster of cores in one thread: messages are delivered by a loop, persistence is instant, and a
//! partition or a crash is a flag. Tests read like the scenarios they check (Raft paper sections in brackets).

use std::collections::{BTreeSet, VecDeque};

use synod_core::cert::{self, Identity};
use synod_core::ledger::decode_frames;
use synod_core::txid::{TxId, TxStatus};
use synod_kv::seal::{LedgerSecret, Sealer};
use synod_kv::Tx;

use super::*;

const NOW: i64 = 1_700_000_000;

struct SimNode {
    core: Core,
    alive: bool,
    /// The term and vote of the last hard state its Readies stored.
    term_vote: (u64, u64),
    /// Readies that stored a hard state without needing a sync (only the commit moved).
    unsynced_hard_states: u64,
    /// Committed ledger frames in order.
    frames: Vec<Vec<u8>>,
    snapshots: Vec<(u64, Vec<u8>)>,
    committed_snapshots: Vec<u64>,
}

struct Sim {
    service: Identity,
    sealer: Sealer,
    cfg: CoreConfig,
    nodes: Vec<SimNode>,
    /// Raft ids that can neither send nor receive.
    cut: BTreeSet<u64>,
    inflight: VecDeque<Message>,
    /// Snapshot messages to lose on the way (the next ones sent), and whether the sender hears of it, as the node's
    /// channels tell Raft (`Core::report_snapshot`).
    snapshots_to_drop: usize,
    report_dropped_snapshots: bool,
}

fn keys_for(service: &Identity, name: &str) -> Keys {
    let node = cert::generate_endorsed(name, &["127.0.0.1".parse().expect("ip")], &[], service)
        .expect("node identity");
    let der = cert::pem_to_der(&node.cert_pem).expect("der");
    Keys {
        node_key: cert::signing_key_from_pem(&node.key_pem).expect("key"),
        node_id: cert::public_key_id_hex(&der).expect("id"),
        node_cert_pem: node.cert_pem,
        service_key: cert::signing_key_from_pem(&service.key_pem).expect("service key"),
        service_cert_der: cert::pem_to_der(&service.cert_pem).expect("der"),
        encryption_key: None,
        service_key_pem: String::new(),
    }
}

impl Sim {
    fn new(snapshot_tx_interval: u64) -> Sim {
        Sim::with_timing(snapshot_tx_interval, RaftTiming::default())
    }

    fn with_timing(snapshot_tx_interval: u64, timing: RaftTiming) -> Sim {
        Sim::with(snapshot_tx_interval, 5, timing)
    }

    fn with(snapshot_tx_interval: u64, sig_tx_interval: u64, timing: RaftTiming) -> Sim {
        let service = cert::generate_self_signed("sim service", true).expect("service");
        let sealer = Sealer::new(&LedgerSecret([5; 32]));
        let cfg = CoreConfig {
            sig_tx_interval,
            ledger_chunk_bytes: 2000,
            snapshot_tx_interval,
            timing: RaftTiming {
                election_ticks: 10,
                heartbeat_ticks: 2,
                ..timing
            },
        };
        let keys = keys_for(&service, "n0");
        let genesis = Genesis {
            service_info: serde_json::json!({"status": "Open"}),
            users: vec![],
            members: vec![],
            node_info: serde_json::json!({"status": "Trusted"}),
            code_ids: vec![],
            constitution: String::new(),
            join_token_digest: None,
            // No recovery members: no shares are made of it.
            member_encryption_keys: vec![],
            ledger_secret: synod_kv::seal::LedgerSecret([0; 32]),
        };
        let core = Core::new_service(keys, sealer.clone(), cfg, &genesis, NOW).expect("genesis");
        let mut sim = Sim {
            service,
            sealer,
            cfg,
            nodes: Vec::new(),
            cut: BTreeSet::new(),
            inflight: VecDeque::new(),
            snapshots_to_drop: 0,
            report_dropped_snapshots: true,
        };
        sim.nodes.push(SimNode {
            core,
            alive: true,
            term_vote: (0, 0),
            unsynced_hard_states: 0,
            frames: Vec::new(),
            snapshots: Vec::new(),
            committed_snapshots: Vec::new(),
        });
        sim.run(5);
        sim
    }

    /// A primary and two nodes joined through it, all voters by now.
    fn three_nodes() -> Sim {
        let mut sim = Sim::new(0);
        sim.join("n1", None);
        sim.join("n2", None);
        sim.run(30);
        sim
    }

    fn index_of(&self, raft_id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.core.raft_id() == raft_id)
    }

    /// Adds a node through the primary (it joins with an empty log, or from `snapshot`).
    fn join(&mut self, name: &str, snapshot: Option<&[u8]>) -> usize {
        let keys = keys_for(&self.service, name);
        let node_id = keys.node_id.clone();
        let core = Core::joining(keys, self.sealer.clone(), self.cfg, snapshot).expect("joining core");
        self.nodes.push(SimNode {
            core,
            alive: true,
            term_vote: (0, 0),
            unsynced_hard_states: 0,
            frames: Vec::new(),
            snapshots: Vec::new(),
            committed_snapshots: Vec::new(),
        });
        let p = self.primary().expect("a primary");
        self.nodes[p]
            .core
            .add_node(&node_id, &serde_json::json!({"status": "Trusted"}), NOW)
            .expect("add node");
        self.nodes.len() - 1
    }

    fn primary(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.alive && n.core.is_primary() && !self.cut.contains(&n.core.raft_id()))
    }

    fn step_once(&mut self, tick: bool) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            if tick {
                self.nodes[i].core.tick().expect("tick");
                let _ = self.nodes[i].core.emit_signature(NOW).expect("signature");
            }
            while let Some(rd) = self.nodes[i].core.ready().expect("ready") {
                // Entries, a new term or vote, a configuration or an install are synced; only a moved commit is not.
                let node = &mut self.nodes[i];
                let term_vote = rd.hard_state.as_ref().map(|hs| (hs.term, hs.vote));
                let durable_needed = !rd.entries.is_empty()
                    || term_vote.is_some_and(|tv| tv != node.term_vote)
                    || rd.conf_state.is_some()
                    || rd.installed.is_some();
                assert!(
                    rd.must_sync || !durable_needed,
                    "node {i}: a Ready that must be synced is not"
                );
                node.term_vote = term_vote.unwrap_or(node.term_vote);
                if rd.hard_state.is_some() && !rd.must_sync {
                    node.unsynced_hard_states += 1;
                }
                self.inflight.extend(rd.messages);
                self.nodes[i].core.on_persisted(rd.number).expect("persisted");
                self.inflight.extend(rd.persisted_messages);
                if let Some(installed) = rd.installed {
                    self.nodes[i].frames.clear(); // its ledger restarts after the snapshot
                    self.nodes[i]
                        .snapshots
                        .push((installed.meta.index, installed.bytes));
                }
                for c in rd.committed {
                    self.nodes[i].frames.push(c.frame);
                }
            }
            for event in self.nodes[i].core.take_events() {
                match event {
                    Event::SnapshotDue(job) => {
                        let seqno = job.state.version();
                        let bytes = snapshot_codec::encode(
                            &job.state,
                            job.view,
                            job.conf_state.write_to_bytes().expect("conf state"),
                            &job.frontier,
                            &job.views,
                            &self.sealer,
                        )
                        .expect("encode snapshot");
                        let digest = snapshot_codec::digest(&bytes);
                        self.nodes[i].snapshots.push((seqno, bytes));
                        self.nodes[i]
                            .core
                            .snapshot_written(seqno, &digest, NOW)
                            .expect("evidence");
                    }
                    Event::SnapshotCommitted { seqno, .. } => {
                        self.nodes[i].committed_snapshots.push(seqno);
                        if let Some((_, bytes)) =
                            self.nodes[i].snapshots.iter().find(|(s, _)| *s == seqno).cloned()
                        {
                            self.nodes[i].core.offer_snapshot(bytes).expect("offer snapshot");
                            self.nodes[i].core.compact_log(seqno).expect("compact");
                        }
                    }
                    _ => {}
                }
            }
        }
        while let Some(msg) = self.inflight.pop_front() {
            if self.cut.contains(&msg.from) || self.cut.contains(&msg.to) {
                continue;
            }
            if msg.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot && self.snapshots_to_drop > 0 {
                self.snapshots_to_drop -= 1;
                if self.report_dropped_snapshots {
                    if let Some(sender) = self.index_of(msg.from) {
                        self.nodes[sender]
                            .core
                            .report_snapshot(msg.to, false)
                            .expect("report");
                    }
                }
                continue;
            }
            if let Some(j) = self.index_of(msg.to) {
                if self.nodes[j].alive {
                    self.nodes[j].core.step(msg).expect("step");
                }
            }
        }
    }

    fn run(&mut self, ticks: usize) {
        for _ in 0..ticks {
            self.step_once(true);
            for _ in 0..3 {
                self.step_once(false);
            }
        }
    }

    fn write(&mut self, key: &[u8], value: &[u8]) -> TxId {
        let p = self.primary().expect("a primary");
        self.write_on(p, key, value).expect("commit")
    }

    /// A write of `records[key]` on node `i`, whatever it believes of its role.
    fn write_on(&mut self, i: usize, key: &[u8], value: &[u8]) -> Result<TxId, CoreError> {
        let core = &mut self.nodes[i].core;
        let mut tx = Tx::new(core.snapshot());
        tx.put("records", key, value);
        Ok(core.commit_tx(tx, NOW)?.tx_id())
    }

    fn status_everywhere(&self, tx: TxId) -> Vec<TxStatus> {
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.core.tx_status(tx))
            .collect()
    }
}

/// One map's entries: key, value, and the seqno that wrote it.
type MapContents = Vec<(Vec<u8>, Vec<u8>, u64)>;

/// Every map of `state`, key by key.
fn contents(state: &State) -> Vec<(String, MapContents)> {
    state
        .map_names()
        .map(|name| {
            let entries = state.map(name).into_iter().flat_map(|m| m.iter());
            let entries = entries.map(|(k, e)| (k.to_vec(), e.value.to_vec(), e.version));
            (name.to_string(), entries.collect())
        })
        .collect()
}

#[test]
fn the_primary_committed_state_taken_from_its_speculative_one_is_what_applying_gives() {
    let mut sim = Sim::three_nodes();
    let p = sim.primary().expect("a primary");
    // Writes, overwrites and deletes, with Readies (and so marks) between some of them but not others, so that
    // commits land both on marks and between them.
    for round in 0..40u8 {
        for i in 0..(round % 4 + 1) {
            let key = [round.wrapping_mul(7).wrapping_add(i) % 11];
            let core = &mut sim.nodes[p].core;
            let mut tx = Tx::new(core.snapshot());
            if (round + i) % 5 == 0 {
                tx.delete("records", &key);
            } else {
                tx.put("records", &key, &[round, i]);
            }
            core.commit_tx(tx, NOW).expect("commit");
        }
        sim.step_once(round % 3 == 0);
    }
    sim.run(10);
    let primary = contents(sim.nodes[p].core.committed_state());
    assert!(primary
        .iter()
        .any(|(name, entries)| name == "records" && !entries.is_empty()));
    for n in &sim.nodes {
        assert_eq!(
            n.core.committed_state().version(),
            sim.nodes[p].core.committed_state().version()
        );
        assert_eq!(contents(n.core.committed_state()), primary);
    }
}

#[test]
fn three_nodes_replicate_commit_and_hold_identical_ledgers() {
    let mut sim = Sim::three_nodes();
    let (voters, learners) = sim.nodes[0].core.configuration();
    assert_eq!(
        (voters.len(), learners.len()),
        (3, 0),
        "both learners were promoted once caught up"
    );
    let ids: Vec<TxId> = (0..20u8).map(|i| sim.write(&[i], b"v")).collect();
    sim.run(10);
    for id in &ids {
        assert!(
            sim.status_everywhere(*id)
                .iter()
                .all(|s| *s == TxStatus::Committed),
            "{id}"
        );
    }
    for n in &sim.nodes {
        assert_eq!(n.core.committed_state().get("records", &[7]), Some(&b"v"[..]));
        assert_eq!(
            n.frames, sim.nodes[0].frames,
            "committed ledgers are byte-identical"
        );
    }
    // Every frame decodes and the receipts of any node verify with the service certificate.
    let service_der = cert::pem_to_der(&sim.service.cert_pem).expect("der");
    for n in &sim.nodes {
        let r = n.core.json_receipt(ids[19]).expect("receipt on every node");
        synod_core::receipt::verify_json(&r, &service_der).expect("verifies");
        // Small chunks: older history was flushed, and its receipts come from the ledger files.
        assert!(matches!(
            n.core.json_receipt(ids[3]),
            Err(ReceiptUnavailable::Flushed(_))
        ));
    }
    let bytes: Vec<u8> = sim.nodes[1].frames.concat();
    assert_eq!(decode_frames(&bytes).count(), sim.nodes[1].frames.len());
    // Commits learnt after the entries were stored are written without a sync, on the primary and the backups.
    for (i, n) in sim.nodes.iter().enumerate() {
        assert!(n.unsynced_hard_states > 0, "node {i}");
    }
}

/// What `Replica::hand_out_commit` relies on: once the followers' answers commit a signature, the primary knows a
/// commit is waiting, and the next Ready hands it out (the node's loop publishes it before running queued calls).
#[test]
fn a_commit_made_by_the_followers_answers_is_known_to_wait_for_the_next_ready() {
    let mut sim = Sim::three_nodes();
    let write = sim.write(b"k", b"v");
    let signature = sim.nodes[0]
        .core
        .emit_signature(NOW)
        .expect("sign")
        .expect("something to sign");
    assert!(!sim.nodes[0].core.commit_waiting());
    let mut steps = 0;
    while !sim.nodes[0].core.commit_waiting() {
        assert!(steps < 5, "the followers' answers came back within a few steps");
        sim.step_once(false);
        steps += 1;
    }
    assert!(sim.nodes[0].core.raft_commit() >= signature.seqno);
    assert!(
        sim.nodes[0].core.committed().seqno < write.seqno,
        "not handed out yet"
    );
    let ready = sim.nodes[0]
        .core
        .ready()
        .expect("ready")
        .expect("a Ready with the commit");
    assert!(!ready.committed.is_empty());
    assert_eq!(sim.nodes[0].core.committed(), signature);
    assert!(!sim.nodes[0].core.commit_waiting());
    assert_eq!(sim.nodes[0].core.tx_status(write), TxStatus::Committed);
}

#[test]
fn a_new_primary_is_elected_and_the_old_primarys_unreplicated_writes_become_invalid() {
    let mut sim = Sim::three_nodes();
    let old = sim.primary().expect("primary");
    let kept = sim.write(b"kept", b"1");
    sim.run(5);
    assert_eq!(sim.nodes[old].core.tx_status(kept), TxStatus::Committed);
    // §5.2/§5.4: cut the primary off; what it orders alone never commits.
    sim.cut.insert(sim.nodes[old].core.raft_id());
    let lost = {
        let core = &mut sim.nodes[old].core;
        let mut tx = Tx::new(core.snapshot());
        tx.put("records", b"lost", b"1");
        core.commit_tx(tx, NOW).expect("ordered locally").tx_id()
    };
    sim.run(60);
    let new = sim.primary().expect("a new primary");
    assert_ne!(new, old);
    assert!(sim.nodes[new].core.view() > lost.view);
    let after = sim.write(b"after", b"1");
    sim.run(5);
    assert_eq!(sim.nodes[new].core.tx_status(after), TxStatus::Committed);
    // Heal: the old primary rolls back its suffix and follows.
    sim.cut.clear();
    sim.run(30);
    for n in &sim.nodes {
        assert_eq!(
            n.core.tx_status(lost),
            TxStatus::Invalid,
            "lost write on {}",
            n.core.node_id()
        );
        assert_eq!(n.core.tx_status(kept), TxStatus::Committed);
        assert_eq!(n.core.committed_state().get("records", b"lost"), None);
        assert_eq!(n.frames, sim.nodes[new].frames);
    }
}

#[test]
fn a_node_joins_from_a_committed_snapshot_and_serves_receipts_after_it() {
    let mut sim = Sim::new(20);
    sim.join("n1", None);
    sim.run(30);
    for i in 0..60u8 {
        sim.write(&[i], b"before the snapshot");
        if i % 10 == 0 {
            sim.run(2);
        }
    }
    sim.run(20);
    let p = sim.primary().expect("primary");
    let committed = *sim.nodes[p]
        .committed_snapshots
        .last()
        .expect("a committed snapshot");
    let bytes = sim.nodes[p]
        .snapshots
        .iter()
        .find(|(s, _)| *s == committed)
        .expect("file")
        .1
        .clone();
    assert_eq!(
        sim.nodes[1]
            .snapshots
            .iter()
            .find(|(s, _)| *s == committed)
            .map(|(_, b)| b),
        Some(&bytes),
        "every node writes the same snapshot bytes"
    );
    let j = sim.join("n2", Some(&bytes));
    sim.run(30);
    let after = sim.write(b"after", b"1");
    sim.run(10);
    let joined = &sim.nodes[j].core;
    assert_eq!(joined.ledger_base(), committed);
    assert_eq!(
        joined.committed_state().get("records", &[5]),
        Some(&b"before the snapshot"[..])
    );
    assert_eq!(joined.tx_status(after), TxStatus::Committed);
    let service_der = cert::pem_to_der(&sim.service.cert_pem).expect("der");
    synod_core::receipt::verify_json(&joined.json_receipt(after).expect("receipt"), &service_der)
        .expect("verifies");
    // Its ledger starts on the chunk boundary after the snapshot and matches the others' frames from there.
    let others = &sim.nodes[p].frames;
    let theirs = &sim.nodes[j].frames;
    assert_eq!(&others[others.len() - theirs.len()..], &theirs[..]);
    let (voters, _) = sim.nodes[p].core.configuration();
    assert_eq!(voters.len(), 3);
}

#[test]
fn a_lagging_follower_is_caught_up_with_a_snapshot_when_the_log_was_compacted() {
    let mut sim = Sim::new(20);
    sim.join("n1", None);
    sim.join("n2", None);
    sim.run(30);
    let lagging = 2;
    sim.nodes[lagging].alive = false;
    for i in 0..100u8 {
        sim.write(&[i], b"v");
        if i % 10 == 0 {
            sim.run(2);
        }
    }
    sim.run(20);
    let p = sim.primary().expect("primary");
    assert!(
        sim.nodes[p].core.offered_snapshot_index().is_some(),
        "the primary compacted and offers a snapshot"
    );
    sim.nodes[lagging].alive = true;
    sim.run(40);
    let n = &sim.nodes[lagging].core;
    assert_eq!(n.committed_state().get("records", &[99]), Some(&b"v"[..]));
    assert!(
        n.ledger_base() > 0,
        "caught up from a snapshot, not by replaying the log"
    );
}

/// Compacts the primary's log while node 2 is away; returns the simulation and the last key written.
fn compacted_while_node_2_was_away(report_dropped: bool) -> Sim {
    let mut sim = Sim::new(20);
    sim.report_dropped_snapshots = report_dropped;
    sim.join("n1", None);
    sim.join("n2", None);
    sim.run(30);
    sim.nodes[2].alive = false;
    for i in 0..100u8 {
        sim.write(&[i], b"v");
        if i % 10 == 0 {
            sim.run(2);
        }
    }
    sim.run(20);
    sim.nodes[2].alive = true;
    sim
}

#[test]
fn a_lost_snapshot_message_is_reported_and_sent_again_without_an_election() {
    let mut sim = compacted_while_node_2_was_away(true);
    let p = sim.primary().expect("primary");
    let view = sim.nodes[p].core.view();
    sim.snapshots_to_drop = 1;
    sim.run(40);
    assert_eq!(sim.snapshots_to_drop, 0, "a snapshot message was lost");
    let n = &sim.nodes[2].core;
    assert_eq!(
        n.committed_state().get("records", &[99]),
        Some(&b"v"[..]),
        "caught up"
    );
    assert_eq!(sim.nodes[p].core.view(), view, "without an election");
    // Without the report, Raft keeps the follower paused, waiting for a snapshot that never comes.
    let mut sim = compacted_while_node_2_was_away(false);
    sim.snapshots_to_drop = 1;
    sim.run(40);
    assert_eq!(sim.nodes[2].core.committed_state().get("records", &[99]), None);
}

#[test]
fn retiring_a_node_removes_it_from_the_configuration() {
    let mut sim = Sim::new(0);
    let n1 = sim.join("n1", None);
    sim.join("n2", None);
    sim.run(30);
    let p = sim.primary().expect("primary");
    let id = sim.nodes[n1].core.node_id().to_string();
    sim.nodes[p].core.retire_node(&id, NOW).expect("retire");
    sim.run(20);
    let (voters, _) = sim.nodes[p].core.configuration();
    assert_eq!(voters.len(), 2);
    assert!(!sim.nodes[n1].core.is_member());
    // The two remaining voters still commit.
    let id = sim.write(b"k", b"v");
    sim.run(5);
    assert_eq!(sim.nodes[p].core.tx_status(id), TxStatus::Committed);
}

/// Four voters, settled; returns the simulation and its primary.
fn four_voters() -> (Sim, usize) {
    let mut sim = Sim::new(0);
    for name in ["n1", "n2", "n3"] {
        sim.join(name, None);
    }
    sim.run(40);
    let p = sim.primary().expect("primary");
    (sim, p)
}

/// After `old` (raft id `removed`) left: another node is primary, its configuration lacks `removed`, three voters
/// remain and they commit.
fn removed_and_the_rest_commit(sim: &mut Sim, old: usize, removed: u64) {
    let p = sim.primary().expect("a new primary");
    assert_ne!(p, old, "the removed primary handed over or stepped down");
    let (voters, learners) = sim.nodes[p].core.configuration();
    assert!(!voters.contains(&removed) && !learners.contains(&removed));
    assert_eq!(voters.len(), 3);
    let tx = sim.write(b"k", b"v");
    sim.run(5);
    assert_eq!(sim.nodes[p].core.tx_status(tx), TxStatus::Committed);
}

/// Found by synod-sim: a primary that queued its own removal applied it and then panicked inside raft-rs (a leader
/// outside its own progress set). It hands over instead, and the next primary removes it.
#[test]
fn a_retired_primary_hands_over_and_the_next_primary_removes_it() {
    let (mut sim, old) = four_voters();
    let id = sim.nodes[old].core.node_id().to_string();
    let retired = sim.nodes[old].core.raft_id();
    sim.nodes[old].core.retire_node(&id, NOW).expect("retire");
    sim.run(60);
    removed_and_the_rest_commit(&mut sim, old, retired);
}

/// Found by synod-sim: a retired primary that handed over can be elected again before its successor commits its
/// removal, then commit and apply that removal itself. Its raft-rs leader then panicked (outside its own progress
/// set); it steps down instead and the others elect a primary.
#[test]
fn a_primary_that_applies_its_own_removal_steps_down() {
    let (mut sim, old) = four_voters();
    let removed = sim.nodes[old].core.raft_id();
    let id = sim.nodes[old].core.node_id().to_string();
    sim.nodes[old].core.retire_node(&id, NOW).expect("retire");
    // What its successor would propose, committed by the old primary itself.
    let mut cc = ConfChange {
        node_id: removed,
        ..Default::default()
    };
    cc.set_change_type(ConfChangeType::RemoveNode);
    sim.nodes[old]
        .core
        .raft
        .propose_conf_change(Vec::new(), cc)
        .expect("propose its own removal");
    sim.run(80);
    removed_and_the_rest_commit(&mut sim, old, removed);
}

#[test]
fn governance_triggers_end_a_chunk_and_take_a_snapshot_at_the_next_signature() {
    let mut sim = Sim::new(0);
    sim.run(5);
    let p = sim.primary().expect("primary");
    let before = sim.nodes[p].snapshots.len();
    let chunks_before = sim.nodes[p].frames.len();
    {
        let core = &mut sim.nodes[p].core;
        let mut tx = Tx::new(core.snapshot());
        tx.put(synod_core::maps::GOV_TRIGGERS, b"snapshot", b"\"proposal\"");
        core.commit_tx(tx, NOW).expect("trigger");
        core.emit_signature(NOW).expect("sign");
    }
    sim.run(10);
    assert_eq!(
        sim.nodes[p].snapshots.len(),
        before + 1,
        "one snapshot taken at the triggered signature"
    );
    assert!(sim.nodes[p].frames.len() > chunks_before);
    // Only once: later signatures do not take another.
    sim.write(b"k", b"v");
    sim.run(10);
    assert_eq!(sim.nodes[p].snapshots.len(), before + 1);
}

#[test]
fn a_primary_that_cannot_commit_turns_writes_away_instead_of_holding_them_all() {
    let mut sim = Sim::with_timing(
        0,
        RaftTiming {
            uncommitted_bytes_max: (2 << 20) + 1,
            ..RaftTiming::default()
        },
    );
    sim.join("n1", None);
    sim.join("n2", None);
    sim.run(30);
    let p = sim.primary().expect("a primary");
    // Both backups are cut off: nothing the primary orders can commit.
    for i in 0..sim.nodes.len() {
        if i != p {
            sim.cut.insert(sim.nodes[i].core.raft_id());
        }
    }
    let value = vec![7u8; 64 * 1024];
    let mut ordered = 0u32;
    let busy = loop {
        let core = &mut sim.nodes[p].core;
        let mut tx = Tx::new(core.snapshot());
        tx.put("records", &ordered.to_be_bytes(), &value);
        match core.commit_tx(tx, NOW) {
            Ok(_) => ordered += 1,
            Err(e) => break e,
        }
        assert!(ordered < 1000, "the uncommitted bound never applied");
    };
    assert!(matches!(busy, CoreError::Busy), "{busy}");
    assert!(ordered >= 8, "writes were ordered up to the bound, got {ordered}");
    // A signature that does not fit is skipped, not a fatal error: the timer tries again later.
    assert!(sim.nodes[p].core.emit_signature(NOW).is_ok());
    // Once the backups are back, everything ordered commits and writes are taken again.
    sim.cut.clear();
    sim.run(20);
    let primary = sim.primary().expect("a primary");
    assert!(sim.nodes[primary].core.committed().seqno > u64::from(ordered));
    sim.write(b"after", b"v");
}

/// Writes a node's committed frames as ledger chunk files, cut where the entries say (as the applier does).
fn write_ledger(frames: &[Vec<u8>], dir: &std::path::Path) {
    let mut writer = crate::ledger_files::writer::LedgerWriter::open(dir)
        .expect("open")
        .writer;
    let entries: Vec<CommittedEntry> = frames
        .iter()
        .map(|frame| {
            let le = decode_frames(frame)
                .next()
                .expect("a frame")
                .expect("valid")
                .entry;
            let tx = le.decode_transaction().expect("tx");
            CommittedEntry::new(&le, &tx, Arc::new(Writes::default()))
        })
        .collect();
    writer.append(&entries).expect("append");
    writer.sync().expect("sync");
}

#[test]
fn memory_follows_recent_history_and_older_receipts_are_rebuilt_from_the_ledger() {
    let mut sim = Sim::three_nodes();
    let mut ids = Vec::new();
    for i in 0..400u32 {
        ids.push(sim.write(&i.to_be_bytes(), &[7u8; 64]));
        if i % 20 == 0 {
            sim.run(2);
        }
    }
    sim.run(10);
    let service_der = cert::pem_to_der(&sim.service.cert_pem).expect("der");
    let p = sim.primary().expect("primary");
    let core = &sim.nodes[p].core;
    let last = ids.last().copied().expect("ids");
    assert_eq!(core.tx_status(last), TxStatus::Committed);
    // Held in memory: about two chunks' worth of entries (2000-byte chunks here), not the 400 writes.
    let held = core.last_seqno() + 1 - core.history_start();
    assert!(held < 100, "{held} entries of history in memory");
    let dir = tempfile::tempdir().expect("tempdir");
    write_ledger(&sim.nodes[p].frames, dir.path());
    let historical = crate::historical::Historical::new(dir.path().to_path_buf(), service_der.clone());
    let mut rebuilt = 0;
    for tx in &ids {
        let from_memory = core.json_receipt(*tx);
        let receipt = match from_memory {
            Ok(r) => r,
            Err(ReceiptUnavailable::Flushed(_)) => {
                rebuilt += 1;
                let slot = historical.reserve().expect("slot");
                let range = historical.range_for(tx.seqno, &slot).expect("range");
                let (path, digest) = range.proof(tx.seqno).expect("proof").expect("not a signature");
                json_receipt(
                    &range.sig,
                    Some((path, leaf_components(&digest, core.commit_evidence(*tx)))),
                )
            }
            Err(e) => panic!("{tx}: {e}"),
        };
        let verified = synod_core::receipt::verify_json(&receipt, &service_der).expect("verifies");
        assert_eq!(verified.tx_id, Some(*tx));
    }
    assert!(rebuilt > 300, "{rebuilt} receipts came from the ledger files");
    // Signature transactions flushed from memory have their record as receipt.
    let first_sig = sim.nodes[p].frames.iter().find_map(|f| {
        let tx = decode_frames(f).next()?.ok()?.entry.decode_transaction().ok()?;
        (tx.kind == synod_core::ledger::KIND_SIGNATURE && tx.seqno > 10).then_some(tx.seqno)
    });
    let slot = historical.reserve().expect("slot");
    let seqno = first_sig.expect("a signature");
    let range = historical.range_for(seqno, &slot).expect("range");
    assert!(range.proof(seqno).expect("proof").is_none());
}

#[test]
fn signatures_come_on_time_under_sustained_load_and_at_once_when_idle() {
    // Simulated milliseconds: one step of the loop per millisecond, as the node's loop asks signature_due on
    // every turn. Signatures by count are out of the way (a huge sig_tx_interval).
    let interval_ms = 10;
    let timing = SignatureTiming {
        interval_ms,
        in_flight_max: 1,
        min_gap_ms: 1,
    };
    let mut sim = Sim::with(0, 1_000_000, RaftTiming::default());
    sim.join("n1", None);
    sim.join("n2", None);
    sim.run(30);
    let p = sim.primary().expect("primary");
    let mut now_ms = 0u64;
    let mut signed_at = Vec::new();
    let turn = |sim: &mut Sim, now_ms: u64, signed_at: &mut Vec<u64>| {
        let core = &mut sim.nodes[p].core;
        if core.signature_due(now_ms, timing) {
            core.emit_signature(NOW).expect("sign");
            signed_at.push(now_ms);
        }
    };
    // Sustained load: a write every millisecond, and replies arrive only every 4 ms, so a signature is always in
    // flight: signatures must come from the interval, never starved.
    for step in 0..600u32 {
        now_ms += 1;
        sim.write(&step.to_be_bytes(), b"load");
        turn(&mut sim, now_ms, &mut signed_at);
        if step % 4 == 0 {
            sim.step_once(false);
        }
        if step % 50 == 0 {
            // Raft's tick without the simulation's own signature-on-tick: only signature_due decides here.
            for n in sim.nodes.iter_mut() {
                n.core.tick().expect("tick");
            }
        }
    }
    let gaps: Vec<u64> = signed_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        signed_at.len() >= 600 / interval_ms as usize / 2,
        "{} signatures",
        signed_at.len()
    );
    assert!(
        gaps.iter().all(|&g| g <= interval_ms),
        "a signature at least every {interval_ms} ms under load: {gaps:?}"
    );
    sim.run(10);
    // Idle: a lone write is signed on the next turn (its pipeline drained), not after the interval.
    now_ms += 100;
    turn(&mut sim, now_ms, &mut signed_at);
    let before = signed_at.len();
    let lone = sim.write(b"lone", b"write");
    now_ms += 1;
    turn(&mut sim, now_ms, &mut signed_at);
    assert_eq!(signed_at.len(), before + 1, "signed at once");
    // One round of replication (append, acknowledge, apply), no timer: committed.
    for _ in 0..4 {
        sim.step_once(false);
    }
    assert_eq!(sim.nodes[p].core.tx_status(lone), TxStatus::Committed);
}

#[test]
fn a_trusted_node_whose_configuration_change_was_lost_with_its_primary_is_added_by_the_next_one() {
    let mut sim = Sim::three_nodes();
    // The members trusted n3 (committed), and the primary endorsed it and queued its configuration change; then
    // it was cut off before anything of that replicated: the next primary sees a Trusted node outside the
    // configuration, which already holds the service's secrets and waits.
    let keys = keys_for(&sim.service, "n3");
    let node_id = keys.node_id.clone();
    let p = sim.primary().expect("primary");
    {
        let core = &mut sim.nodes[p].core;
        let mut tx = Tx::new(core.snapshot());
        tx.put(
            maps::NODES_INFO,
            node_id.as_bytes(),
            br#"{"status":"Trusted","endorsed":false}"#,
        );
        core.commit_tx(tx, NOW).expect("trust");
    }
    sim.run(10);
    let n3 = raft_id(&node_id);
    let core = Core::joining(keys, sim.sealer.clone(), sim.cfg, None).expect("joining core");
    sim.nodes.push(SimNode {
        core,
        alive: true,
        term_vote: (0, 0),
        unsynced_hard_states: 0,
        frames: Vec::new(),
        snapshots: Vec::new(),
        committed_snapshots: Vec::new(),
    });
    let old = sim.nodes[p].core.raft_id();
    sim.nodes[p]
        .core
        .add_node(
            &node_id,
            &serde_json::json!({"status": "Trusted", "endorsed": true}),
            NOW,
        )
        .expect("add");
    sim.cut.insert(old);
    sim.run(60);
    let q = sim.primary().expect("a new primary");
    assert_ne!(sim.nodes[q].core.raft_id(), old);
    let (voters, learners) = sim.nodes[q].core.configuration();
    assert!(
        voters.contains(&n3) || learners.contains(&n3),
        "the new primary put n3 in the configuration: voters {voters:?} learners {learners:?}"
    );
    let last = sim.write(b"after", b"failover");
    sim.run(20);
    let joined = sim.nodes.len() - 1;
    assert_eq!(
        sim.nodes[joined].core.tx_status(last),
        TxStatus::Committed,
        "n3 replicates"
    );
}

/// Raft scenarios written as text files (`node/src/consensus/machine/scenarios/*.txt`, CCF's style of driver), run on [`Sim`].
/// One command per line; `#` starts a comment. Nodes are named by `join`; `n0` is the service's first node.
///
/// ```text
/// join NAME                        a node joins through the primary
/// run TICKS                        ticks every live node (messages delivered in between)
/// write KEY VALUE [on NODE] [as TX]  a write on the primary (or NODE, even if it is cut off), named TX
/// cut NODE / heal NODE             the node neither sends nor receives / again does
/// stop NODE / start NODE           the node is down (keeps its memory) / up again
/// expect primary NODE|any|none     who leads (a cut-off node does not count)
/// expect TX STATUS [on NODE]       committed|pending|invalid|unknown, on every live node or on NODE
/// expect value KEY VALUE|none      the committed value on every live node
/// expect voters N                  the primary's configuration
/// ```
mod scenarios {
    use std::collections::HashMap;

    use super::*;

    struct Driver {
        sim: Sim,
        names: HashMap<String, usize>,
        txs: HashMap<String, TxId>,
    }

    impl Driver {
        fn node(&self, name: &str) -> Result<usize, String> {
            self.names
                .get(name)
                .copied()
                .ok_or_else(|| format!("no node {name}"))
        }

        fn raft_id(&self, name: &str) -> Result<u64, String> {
            Ok(self.sim.nodes[self.node(name)?].core.raft_id())
        }

        fn name_of(&self, i: usize) -> String {
            self.names
                .iter()
                .find(|(_, &j)| j == i)
                .map_or_else(|| format!("#{i}"), |(n, _)| n.clone())
        }

        fn line(&mut self, words: &[&str]) -> Result<(), String> {
            let number = |w: &str| w.parse::<usize>().map_err(|e| format!("{w}: {e}"));
            match words {
                ["join", name] => {
                    let i = self.sim.join(name, None);
                    self.names.insert(name.to_string(), i);
                }
                ["run", ticks] => self.sim.run(number(ticks)?),
                ["write", key, value, rest @ ..] => {
                    let (mut on, mut named) = (None, None);
                    for pair in rest.chunks(2) {
                        match pair {
                            ["on", node] => on = Some(self.node(node)?),
                            ["as", tx] => named = Some(tx.to_string()),
                            _ => return Err(format!("write: unexpected {pair:?}")),
                        }
                    }
                    let i = match on {
                        Some(i) => i,
                        None => self.sim.primary().ok_or("no primary to write to")?,
                    };
                    let id = self
                        .sim
                        .write_on(i, key.as_bytes(), value.as_bytes())
                        .map_err(|e| format!("write on {}: {e}", self.name_of(i)))?;
                    if let Some(named) = named {
                        self.txs.insert(named, id);
                    }
                }
                ["cut", node] => {
                    let id = self.raft_id(node)?;
                    self.sim.cut.insert(id);
                }
                ["heal", node] => {
                    let id = self.raft_id(node)?;
                    self.sim.cut.remove(&id);
                }
                ["stop", node] => {
                    let i = self.node(node)?;
                    self.sim.nodes[i].alive = false;
                }
                ["start", node] => {
                    let i = self.node(node)?;
                    self.sim.nodes[i].alive = true;
                }
                ["expect", "primary", who] => {
                    let primary = self.sim.primary();
                    let ok = match *who {
                        "any" => primary.is_some(),
                        "none" => primary.is_none(),
                        name => primary == Some(self.node(name)?),
                    };
                    if !ok {
                        return Err(format!(
                            "expected primary {who}, found {}",
                            primary.map_or("none".into(), |p| self.name_of(p))
                        ));
                    }
                }
                ["expect", "value", key, value] => {
                    for (i, n) in self.sim.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
                        let got = n.core.committed_state().get("records", key.as_bytes());
                        let want = (*value != "none").then_some(value.as_bytes());
                        if got != want {
                            return Err(format!(
                                "{} has {key} = {:?}, expected {value}",
                                self.name_of(i),
                                got.map(String::from_utf8_lossy)
                            ));
                        }
                    }
                }
                ["expect", "voters", n] => {
                    let p = self.sim.primary().ok_or("no primary")?;
                    let voters = self.sim.nodes[p].core.configuration().0.len();
                    if voters != number(n)? {
                        return Err(format!("{voters} voters, expected {n}"));
                    }
                }
                ["expect", tx, status, rest @ ..] => {
                    let id = *self
                        .txs
                        .get(*tx)
                        .ok_or_else(|| format!("no transaction named {tx}"))?;
                    let nodes: Vec<usize> = match rest {
                        [] => (0..self.sim.nodes.len())
                            .filter(|&i| self.sim.nodes[i].alive)
                            .collect(),
                        ["on", node] => vec![self.node(node)?],
                        _ => return Err(format!("expect {tx}: unexpected {rest:?}")),
                    };
                    for i in nodes {
                        let got = format!("{:?}", self.sim.nodes[i].core.tx_status(id)).to_lowercase();
                        if got != *status {
                            return Err(format!(
                                "{tx} ({id}) is {got} on {}, expected {status}",
                                self.name_of(i)
                            ));
                        }
                    }
                }
                _ => return Err("unknown command".into()),
            }
            Ok(())
        }
    }

    /// Runs one scenario; panics naming the file, line and what failed.
    fn run(name: &str, text: &str) {
        let mut driver = Driver {
            sim: Sim::new(0),
            names: HashMap::from([("n0".to_string(), 0)]),
            txs: HashMap::new(),
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Err(e) = driver.line(&words) {
                panic!("{name}:{}: `{line}`: {e}", n + 1);
            }
        }
    }

    #[test]
    fn every_scenario_file_passes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/consensus/machine/scenarios");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("scenarios directory")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no scenarios in {}", dir.display());
        for path in files {
            let text = std::fs::read_to_string(&path).expect("scenario");
            run(&path.display().to_string(), &text);
        }
    }

    #[test]
    #[should_panic(expected = "expected committed")]
    fn a_failing_expectation_names_its_line() {
        run(
            "inline",
            "join n1\njoin n2\nrun 30\nwrite k v as t\nexpect t committed\n",
        );
    }
}
