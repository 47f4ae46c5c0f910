//! `synod-node`: runs one Synod replica. See docs/API.md.

use clap::{Parser, Subcommand};
use synod_node::config::{JoinConfig, RecoverConfig, StartConfig};

/// mimalloc: glibc's `malloc`/`free` were 5–18 % of the node's samples under load (see docs/ARCHITECTURE.md,
/// "Build"), and [`tune_allocator`] keeps its footprint to glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs [`tune_allocator`] as an ELF constructor, before the first allocation makes mimalloc's first arena (set from
/// `main`, the options only reached later arenas: 49 MB idle instead of 31).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static TUNE_ALLOCATOR: extern "C" fn() = {
    extern "C" fn tune() {
        tune_allocator();
    }
    tune
};

/// By default mimalloc v3 commits its arenas eagerly and keeps freed pages for a second: the node then sat at 150 MB
/// of resident memory idle and after a restart, against 30 and 42 MB with glibc. Committing on demand and purging
/// freed pages at once gives glibc's footprint back and keeps the speed (`scripts/bench-memory.sh`).
fn tune_allocator() {
    // Ids in mimalloc v3's `mi_option_e` (libmimalloc-sys 0.1.49, c_src/mimalloc/v3/include/mimalloc.h; pinned in
    // Cargo.toml): the crate's named constants stop before these.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting an option is a plain store into mimalloc's option table, allowed at any time.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

#[derive(Parser)]
#[command(
    name = "synod-node",
    version,
    about = "A Synod replica: a replicated, Merkle-committed, signed key-value ledger"
)]
struct Cli {
    /// Log lines as text, or as one JSON object per line (for log collectors)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new service in DATA_DIR (this node its first primary), or resume the node DATA_DIR holds.
    Start(StartConfig),
    /// Join the service at --target (attesting this node), or resume the node DATA_DIR holds.
    Join(JoinConfig),
    /// Recover a lost service from its ledger files (--ledger) into DATA_DIR, with a new service identity; the
    /// members then accept the recovery and submit their recovery shares (docs/RECOVERY.md).
    Recover(RecoverConfig),
}

fn main() -> anyhow::Result<()> {
    #[cfg(not(target_os = "linux"))]
    tune_allocator();
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Start(cfg) => runtime.block_on(synod_node::run_start(cfg)),
        Command::Join(cfg) => runtime.block_on(synod_node::run_join(cfg)),
        Command::Recover(cfg) => runtime.block_on(synod_node::run_recover(cfg)),
    }
}
