//! `synod-sim`: runs the seeded whole-cluster simulation (node/src/simulation.rs) over many seeds and prints
//! `seeds, steps, faults, violations`; a failing seed prints itself and replays exactly with `--seed`.
//!
//!   synod-sim --seeds 1000 [--first 1] [--nodes 3..7] [--steps 3000] [--mutate skip-fsync|skip-snapshot-report]
//!   synod-sim --seed 42 --nodes 5

use anyhow::{bail, Context as _};
use clap::Parser;
use synod_node::simulation::{self, Mutation, SimConfig};

#[derive(Parser)]
#[command(
    name = "synod-sim",
    version,
    about = "Seeded deterministic simulation of a Synod cluster with faults"
)]
struct Cli {
    /// Run this many seeds (first..first+seeds).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Run only this seed (replays it exactly).
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes: a number, or a range `A..B` (inclusive) cycled through by seed.
    #[arg(long, default_value = "3..7")]
    nodes: String,
    /// Simulated milliseconds of faults and load per seed (then as many to heal).
    #[arg(long, default_value_t = 3000)]
    steps: u64,
    /// Inject a bug on purpose, to see the invariants catch it: skip-fsync.
    #[arg(long)]
    mutate: Option<String>,
    /// Stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
}

fn node_range(spec: &str) -> anyhow::Result<(usize, usize)> {
    let (a, b) = match spec.split_once("..") {
        Some((a, b)) => (a.trim().parse()?, b.trim().parse()?),
        None => {
            let n = spec.trim().parse()?;
            (n, n)
        }
    };
    if !(3..=7).contains(&a) || !(3..=7).contains(&b) || a > b {
        bail!("--nodes takes 3 to 7, or a range within it, not {spec}");
    }
    Ok((a, b))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A node that panics on a broken invariant is reported by its seed, not with a backtrace per seed (replay one
    // with RUST_BACKTRACE=1 to see where it panicked).
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    let (lo, hi) = node_range(&cli.nodes).context("--nodes")?;
    let mutation = match cli.mutate.as_deref() {
        None => None,
        Some("skip-fsync") => Some(Mutation::SkipFsync),
        Some("skip-snapshot-report") => Some(Mutation::SkipSnapshotReport),
        Some(other) => bail!("unknown --mutate {other}: skip-fsync, skip-snapshot-report"),
    };
    let seeds: Vec<u64> = match cli.seed {
        Some(s) => vec![s],
        None => (cli.first..cli.first + cli.seeds).collect(),
    };
    let (mut steps, mut faults, mut writes, mut failed) = (0u64, 0u64, 0u64, Vec::new());
    let (mut snapshots, mut installs, mut receipts, mut retired) = (0u64, 0u64, 0u64, 0u64);
    let started = std::time::Instant::now();
    for &seed in &seeds {
        let mut cfg = SimConfig::new(seed);
        cfg.nodes = lo + (seed as usize % (hi - lo + 1));
        cfg.steps = cli.steps;
        cfg.heal_steps = cli.steps.max(2_000);
        cfg.mutation = mutation;
        let report =
            simulation::run(cfg).map_err(|e| anyhow::anyhow!("seed {seed}: the simulation failed: {e}"))?;
        steps += report.steps;
        faults += report.faults.total();
        writes += report.writes_committed;
        snapshots += report.snapshots_committed;
        installs += report.snapshots_installed;
        receipts += report.receipts_checked;
        retired += report.nodes_retired;
        if !report.violations.is_empty() {
            println!(
                "seed {seed} ({} nodes) FAILED: {}",
                lo + (seed as usize % (hi - lo + 1)),
                report.violations.join("; ")
            );
            failed.push(seed);
            if cli.fail_fast {
                break;
            }
        }
    }
    println!(
        "seeds {}, steps {steps}, faults {faults}, committed writes checked {writes}, snapshots committed \
         {snapshots}, installed {installs}, receipts verified {receipts}, nodes retired {retired}, violations {} ({} s)",
        seeds.len(),
        failed.len(),
        started.elapsed().as_secs()
    );
    if !failed.is_empty() {
        println!(
            "failing seeds: {failed:?} (replay one: synod-sim --seed S --nodes {})",
            cli.nodes
        );
        std::process::exit(1);
    }
    Ok(())
}
