//! The node's start configuration, as given on the command line (see docs/API.md).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything `synod-node start` needs.
#[derive(Clone, Debug, clap::Args)]
pub struct NodeConfig {
    /// Directory holding the service's identities, ledger and state (created if missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to serve HTTPS on; port 0 picks a free one (written to DATA_DIR/rpc_address).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub rpc_address: SocketAddr,
    /// Name recorded for this node (and its certificate's common name).
    #[arg(long, default_value = "n0")]
    pub node_name: String,
    /// Certificate of a user allowed to call the app (repeatable; read only when the service is created).
    #[arg(long = "user-cert")]
    pub user_certs: Vec<PathBuf>,
    /// Certificate of a consortium member (repeatable; read only when the service is created).
    #[arg(long = "member-cert")]
    pub member_certs: Vec<PathBuf>,
    /// A signature transaction follows at most this many transactions.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sig_tx_interval: u64,
    /// ...or at most this many milliseconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub sig_ms_interval: u64,
    /// A ledger chunk is closed at the first signature past this size.
    #[arg(long, default_value_t = 5_000_000)]
    pub ledger_chunk_bytes: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
}
