//! `synod-node`: runs one Synod replica. See docs/API.md.

use clap::{Parser, Subcommand};
use synod_node::config::{JoinConfig, RecoverConfig, StartConfig};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
