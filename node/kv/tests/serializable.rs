//! The KV's optimistic transactions are serializable: random transactions (point reads, range reads with limits,
//! map-existence checks, writes and deletes that depend on what was read) run concurrently against snapshots of
//! a shared state, each validated against the latest state when it commits, as the primary does. Every one that
//! validates must behave exactly as if run alone, in commit order, on a sequential model: its reads give the same
//! answers there and its writes are the same; and the final state equals the model's.

use synod_core::testing::Rng;
use synod_kv::{State, Tx};

const MAPS: [&str; 2] = ["a", "public:b"];

/// One transaction's program: its operations and the seed its choices are drawn from. Run on any state, it reads,
/// then writes values derived from what it read, and returns a transcript of what it saw.
#[derive(Clone)]
struct Program {
    seed: u64,
}

impl Program {
    fn run(&self, tx: &mut Tx) -> Vec<String> {
        let mut rng = Rng::new(self.seed);
        let mut seen = Vec::new();
        let mut acc = 0u64;
        for _ in 0..1 + rng.below(5) {
            let map = MAPS[rng.below(2) as usize];
            let key = [rng.below(12) as u8];
            match rng.below(6) {
                0 | 1 => {
                    let v = tx.get(map, &key);
                    acc = acc.wrapping_add(v.as_ref().map_or(7, |v| v.iter().map(|&b| b as u64).sum()));
                    seen.push(format!("get {map} {key:?} = {v:?}"));
                }
                2 => {
                    let to = [key[0] + rng.below(6) as u8];
                    let limit = 1 + rng.below(4) as usize;
                    let rows = tx.range(map, &key, Some(&to), limit);
                    acc = acc.wrapping_add(rows.len() as u64);
                    seen.push(format!("range {map} {key:?}..{to:?} limit {limit} = {rows:?}"));
                }
                3 => {
                    let exists = tx.map_exists(map);
                    seen.push(format!("exists {map} = {exists}"));
                }
                4 => tx.put(map, &key, &[(acc % 251) as u8, rng.below(256) as u8]),
                _ => tx.delete(map, &key),
            }
        }
        seen
    }
}

#[test]
fn concurrent_optimistic_transactions_are_equivalent_to_running_them_one_by_one() {
    for seed in 0..300u64 {
        let mut rng = Rng::new(seed);
        let mut latest = State::default();
        let mut model = State::default();
        let mut seqno = 0u64;
        // Transactions in flight: each holds the snapshot it started on.
        let mut running: Vec<(Program, State)> = Vec::new();
        let mut committed = 0;
        for _ in 0..60 {
            if running.len() < 4 || rng.below(2) == 0 {
                running.push((Program { seed: rng.next_u64() }, latest.clone()));
                continue;
            }
            let (program, snapshot) = running.remove(rng.below(running.len() as u64) as usize);
            let mut tx = Tx::new(snapshot);
            let transcript = program.run(&mut tx);
            if tx.is_read_only() || tx.validate(&latest).is_err() {
                continue; // the node runs a conflicting transaction again; here it is simply dropped
            }
            // Valid: it must see, and do, exactly what it would alone on the sequential model.
            let mut alone = Tx::new(model.clone());
            let alone_transcript = program.run(&mut alone);
            assert_eq!(
                transcript, alone_transcript,
                "seed {seed}: a validated transaction read differently"
            );
            let (public, private) = tx.into_write_sets();
            let (alone_public, alone_private) = alone.into_write_sets();
            assert_eq!(
                (&public, &private),
                (&alone_public, &alone_private),
                "seed {seed}: other writes"
            );
            seqno += 1;
            latest
                .apply(seqno, public.maps.iter().chain(&private.maps))
                .expect("apply");
            model
                .apply(seqno, alone_public.maps.iter().chain(&alone_private.maps))
                .expect("apply");
            committed += 1;
        }
        for map in MAPS {
            let all = |s: &State| {
                s.map(map).map(|m| {
                    m.iter()
                        .map(|(k, e)| (k.to_vec(), e.value.to_vec()))
                        .collect::<Vec<_>>()
                })
            };
            assert_eq!(all(&latest), all(&model), "seed {seed}: final state of {map}");
        }
        assert!(committed > 0, "seed {seed}: nothing committed");
    }
}
