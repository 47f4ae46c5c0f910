//! `synod-node`: runs one Synod replica. See docs/API.md.

use clap::{Parser, Subcommand};
use synod_node::config::NodeConfig;

#[derive(Parser)]
#[command(
    name = "synod-node",
    version,
    about = "A Synod replica: a Merkle-committed, signed key-value ledger"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new service in DATA_DIR, or resume the one it holds, and serve it over HTTPS.
    Start(NodeConfig),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Start(cfg) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(synod_node::run(cfg))
        }
    }
}
