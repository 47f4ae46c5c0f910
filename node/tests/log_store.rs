//! Conformance suite for the Raft log store: the in-memory `LogStore` raft-rs reads, and its mirror in segment
//! files (`consensus::persist`) that a restart reads back.
//!
//! Part one holds `LogStore` to the contract of raft-rs's own `MemStorage` (the cases of raft-rs's
//! `storage.rs` tests: term, entries with a size limit, first and last index, compaction, append with overwrite,
//! snapshots). Part two drives a seeded random sequence of what the node does to its log — appends that overwrite
//! a suffix, compactions, snapshot installs, hard-state and configuration changes — into both the store and
//! the files (small segments, so that they rotate and go every few steps; the log is reopened now and then), and
//! after every step checks that the store, a plain model of it, and the log read back from disk agree on
//! everything raft-rs can ask.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, Storage as _, StorageError};
use synod_core::testing::Rng;
use synod_node::consensus::log_store::LogStore;
use synod_node::consensus::persist::{self, LogWrite, RaftLog};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: index.to_be_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

/// A store holding entries 3..=5 after a compaction at 3 (term 3), as raft-rs's tests start.
fn three_to_five() -> LogStore {
    LogStore::restore(
        HardState::default(),
        ConfState::default(),
        SnapshotMetadata {
            index: 3,
            term: 3,
            ..Default::default()
        },
        vec![entry(4, 4), entry(5, 5)],
    )
}

fn store_error(r: raft::Result<impl std::fmt::Debug>) -> Option<StorageError> {
    match r {
        Err(raft::Error::Store(e)) => Some(e),
        _ => None,
    }
}

#[test]
fn term_of_compacted_held_and_future_indexes() {
    let s = three_to_five();
    assert_eq!(store_error(s.term(2)), Some(StorageError::Compacted));
    assert_eq!(s.term(3).ok(), Some(3), "the compaction point keeps its term");
    assert_eq!(s.term(4).ok(), Some(4));
    assert_eq!(s.term(5).ok(), Some(5));
    assert_eq!(store_error(s.term(6)), Some(StorageError::Unavailable));
}

#[test]
fn entries_respect_bounds_and_the_size_limit() {
    let mut s = three_to_five();
    s.append(&[entry(6, 6)]).expect("append");
    let size = |e: &Entry| u64::from(protobuf::Message::compute_size(e));
    let one = size(&entry(4, 4));
    assert_eq!(
        store_error(s.entries(2, 6, None, ctx())),
        Some(StorageError::Compacted)
    );
    assert_eq!(
        store_error(s.entries(3, 4, None, ctx())),
        Some(StorageError::Compacted)
    );
    assert_eq!(s.entries(4, 5, None, ctx()).expect("one").len(), 1);
    assert_eq!(s.entries(4, 7, None, ctx()).expect("all").len(), 3);
    assert_eq!(
        store_error(s.entries(4, 8, None, ctx())),
        Some(StorageError::Unavailable)
    );
    // raft-rs's limit: at least one entry, then as many as fit.
    assert_eq!(s.entries(4, 7, Some(0), ctx()).expect("min one").len(), 1);
    assert_eq!(s.entries(4, 7, Some(one * 2), ctx()).expect("two").len(), 2);
    assert_eq!(
        s.entries(4, 7, Some(one * 2 + one / 2), ctx())
            .expect("two")
            .len(),
        2
    );
    assert_eq!(s.entries(4, 7, Some(one * 3), ctx()).expect("three").len(), 3);
    assert_eq!(s.entries(5, 5, None, ctx()).expect("empty").len(), 0);
}

#[test]
fn first_and_last_index_follow_appends_and_compaction() {
    let mut s = three_to_five();
    assert_eq!((s.first_index().ok(), s.last_index().ok()), (Some(4), Some(5)));
    s.append(&[entry(6, 5)]).expect("append");
    assert_eq!(s.last_index().ok(), Some(6));
    s.compact(4).expect("compact");
    assert_eq!(s.first_index().ok(), Some(5));
    assert_eq!(s.term(4).ok(), Some(4));
}

#[test]
fn compaction_below_the_first_index_is_a_no_op_and_past_the_last_is_refused() {
    let mut s = three_to_five();
    s.compact(2).expect("already compacted");
    assert_eq!(s.first_index().ok(), Some(4));
    assert!(s.compact(9).is_err(), "nothing to compact up to 9");
    s.compact(5).expect("up to the last");
    assert_eq!((s.first_index().ok(), s.last_index().ok()), (Some(6), Some(5)));
    assert_eq!(s.term(5).ok(), Some(5));
}

#[test]
fn appends_overwrite_conflicting_suffixes_and_refuse_gaps_and_compacted_indexes() {
    // raft-rs's test_storage_append cases, with its truncation of the compacted prefix left to the caller:
    // Synod's core never appends below the first held index, so the store refuses it.
    // (what is appended, the (index, term)s held after it, or None when refused)
    type Case = (Vec<Entry>, Option<Vec<(u64, u64)>>);
    let cases: Vec<Case> = vec![
        (vec![entry(4, 4), entry(5, 5)], Some(vec![(4, 4), (5, 5)])),
        (
            vec![entry(4, 4), entry(5, 6), entry(6, 6)],
            Some(vec![(4, 4), (5, 6), (6, 6)]),
        ),
        (
            vec![entry(4, 4), entry(5, 5), entry(6, 5)],
            Some(vec![(4, 4), (5, 5), (6, 5)]),
        ),
        (vec![entry(6, 5)], Some(vec![(4, 4), (5, 5), (6, 5)])),
        (vec![entry(5, 5)], Some(vec![(4, 4), (5, 5)])),
        (vec![entry(4, 6)], Some(vec![(4, 6)])),
        (vec![entry(7, 5)], None),
        (vec![entry(3, 3)], None),
    ];
    for (i, (ents, want)) in cases.into_iter().enumerate() {
        let mut s = three_to_five();
        let r = s.append(&ents);
        match want {
            None => assert!(r.is_err(), "case {i}: refused"),
            Some(want) => {
                r.expect("append");
                let got: Vec<(u64, u64)> = s
                    .entries(4, s.last() + 1, None, ctx())
                    .expect("entries")
                    .iter()
                    .map(|e| (e.index, e.term))
                    .collect();
                assert_eq!(got, want, "case {i}");
            }
        }
    }
}

#[test]
fn snapshots_are_offered_only_when_they_cover_the_request() {
    let mut s = three_to_five();
    assert_eq!(
        store_error(s.snapshot(3, 2)),
        Some(StorageError::SnapshotTemporarilyUnavailable)
    );
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 5;
    snap.mut_metadata().term = 5;
    s.set_snapshot(snap);
    assert_eq!(s.snapshot(5, 2).expect("covers").get_metadata().index, 5);
    assert_eq!(
        store_error(s.snapshot(6, 2)),
        Some(StorageError::SnapshotTemporarilyUnavailable)
    );
}

#[test]
fn installing_a_snapshot_replaces_the_log_and_keeps_state_monotonic() {
    let mut s = three_to_five();
    s.set_hard_state(HardState {
        term: 9,
        vote: 1,
        commit: 5,
        ..Default::default()
    });
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 8;
    snap.mut_metadata().term = 7;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    s.install_snapshot(snap);
    assert_eq!((s.first_index().ok(), s.last_index().ok()), (Some(9), Some(8)));
    assert_eq!(s.term(8).ok(), Some(7));
    let state = s.initial_state().expect("state");
    assert_eq!(state.hard_state.term, 9, "the term never goes back");
    assert_eq!(state.hard_state.commit, 8, "the snapshot is committed");
    assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
    s.append(&[entry(9, 9)]).expect("appends after the snapshot");
}

/// What the log must hold: the compaction point and (index, term) of every held entry.
#[derive(Debug, Default)]
struct Model {
    compacted: (u64, u64),
    held: Vec<(u64, u64)>,
    hard_state: HardState,
    conf_state: ConfState,
    conf_index: u64,
}

impl Model {
    fn last(&self) -> u64 {
        self.held.last().map_or(self.compacted.0, |e| e.0)
    }
}

/// Everything raft-rs (and the node's restart) can observe of a log.
fn check(what: &str, s: &LogStore, m: &Model) {
    assert_eq!(
        s.first_index().ok(),
        Some(m.compacted.0 + 1),
        "{what}: first index"
    );
    assert_eq!(s.last_index().ok(), Some(m.last()), "{what}: last index");
    assert_eq!(
        s.term(m.compacted.0).ok(),
        Some(m.compacted.1),
        "{what}: compacted term"
    );
    for &(index, term) in &m.held {
        assert_eq!(s.term(index).ok(), Some(term), "{what}: term of {index}");
    }
    let got: Vec<(u64, u64, Vec<u8>)> = s
        .entries(m.compacted.0 + 1, m.last() + 1, None, ctx())
        .expect("entries")
        .iter()
        .map(|e| (e.index, e.term, e.data.to_vec()))
        .collect();
    let want: Vec<(u64, u64, Vec<u8>)> = m
        .held
        .iter()
        .map(|&(i, t)| (i, t, i.to_be_bytes().to_vec()))
        .collect();
    assert_eq!(got, want, "{what}: entries");
    let state = s.initial_state().expect("initial state");
    assert_eq!(state.hard_state, m.hard_state, "{what}: hard state");
    assert_eq!(state.conf_state, m.conf_state, "{what}: conf state");
    assert_eq!(s.conf_index(), m.conf_index, "{what}: conf index");
}

fn run_seed(seed: u64, steps: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    // Segments of a few records each.
    const SEGMENT_BYTES: u64 = 2048;
    let mut log = RaftLog::open_with(dir.path(), SEGMENT_BYTES).expect("open");
    let mut s = LogStore::default();
    let mut m = Model::default();
    let mut rng = Rng::new(seed);
    let mut term = 1;
    for step in 0..steps {
        let what = format!("seed {seed} step {step}");
        match rng.below(10) {
            // Append 1..8 entries, from anywhere in the held suffix up to the end (overwriting what follows).
            0..=5 => {
                let from = m.compacted.0 + 1 + rng.below(m.last() - m.compacted.0 + 1);
                if rng.below(4) == 0 {
                    term += 1;
                }
                let ents: Vec<Entry> = (from..from + 1 + rng.below(8)).map(|i| entry(i, term)).collect();
                s.append(&ents).expect("append");
                log.write(&LogWrite {
                    entries: &ents,
                    ..Default::default()
                })
                .expect("persist append");
                m.held.retain(|e| e.0 < from);
                m.held.extend(ents.iter().map(|e| (e.index, e.term)));
            }
            // Compact up to a held index.
            6 if !m.held.is_empty() => {
                let k = rng.below(m.held.len() as u64) as usize;
                let (index, t) = m.held[k];
                s.compact(index).expect("compact");
                log.write(&LogWrite {
                    compacted: Some(s.compacted()),
                    ..Default::default()
                })
                .expect("persist compaction");
                m.compacted = (index, t);
                m.held.drain(..=k);
            }
            // Install a snapshot ahead of (or inside) the log, as a follower that fell behind does.
            7 => {
                term += 1;
                let index = m.last() + rng.below(20);
                let mut snap = Snapshot::default();
                snap.mut_metadata().index = index;
                snap.mut_metadata().term = term;
                snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 1 + rng.below(5)];
                s.install_snapshot(snap);
                let meta = s.compacted().clone();
                let hs = s.hard_state().clone();
                let cs = s.conf_state().clone();
                log.write(&LogWrite {
                    clear: true,
                    compacted: Some(&meta),
                    hard_state: Some(&hs),
                    conf_state: Some(&cs),
                    conf_index: Some(s.conf_index()),
                    ..Default::default()
                })
                .expect("persist install");
                m.compacted = (index, term);
                m.held.clear();
                m.hard_state.term = m.hard_state.term.max(term);
                m.hard_state.commit = m.hard_state.commit.max(index);
                m.conf_state = cs;
                m.conf_index = m.conf_index.max(index);
            }
            // A new hard state (the commit never behind the compaction point, as raft-rs keeps it).
            8 => {
                let hs = HardState {
                    term: term.max(m.hard_state.term),
                    vote: rng.below(4),
                    commit: m.compacted.0.max(m.hard_state.commit) + rng.below(m.last() - m.compacted.0 + 1),
                    ..Default::default()
                };
                s.set_hard_state(hs.clone());
                log.write(&LogWrite {
                    hard_state: Some(&hs),
                    ..Default::default()
                })
                .expect("persist hard state");
                m.hard_state = hs;
            }
            // A configuration change applied at some index.
            _ => {
                let cs = ConfState {
                    voters: (1..=1 + rng.below(5)).collect(),
                    learners: vec![10 + rng.below(3)],
                    ..Default::default()
                };
                let index = m.conf_index.max(m.last());
                s.set_conf_state(cs.clone());
                s.set_conf_index(index);
                log.write(&LogWrite {
                    conf_state: Some(&cs),
                    conf_index: Some(index),
                    ..Default::default()
                })
                .expect("persist conf state");
                m.conf_state = cs;
                m.conf_index = index;
            }
        }
        check(&format!("{what} (memory)"), &s, &m);
        let loaded = persist::load(dir.path()).expect("load");
        check(&format!("{what} (read back from the files)"), &loaded, &m);
        if rng.below(20) == 0 {
            drop(log);
            log = RaftLog::open_with(dir.path(), SEGMENT_BYTES).expect("reopen");
        }
    }
}

#[test]
fn the_store_and_its_files_agree_with_a_model_under_random_operations() {
    let seeds = std::env::var("LOG_STORE_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20u64);
    for seed in 1..=seeds {
        run_seed(seed, 200);
    }
}
