//! The node's command line (see docs/API.md): `start` creates or resumes a service, `join` joins an existing one
//! (or resumes a node that joined before).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Options every node has, however it starts.
#[derive(Clone, Debug, clap::Args)]
pub struct NodeConfig {
    /// Directory holding the node's identities, ledger, snapshots and state (created if missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to serve HTTPS (clients) on; port 0 picks a free one (written to DATA_DIR/rpc_address).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub rpc_address: SocketAddr,
    /// Address for node-to-node traffic (Raft over mutual TLS); port 0 picks one (DATA_DIR/node_address).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub node_address: SocketAddr,
    /// Name recorded for this node (and its certificate's common name).
    #[arg(long, default_value = "n0")]
    pub node_name: String,
    /// A signature transaction follows at most this many transactions.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sig_tx_interval: u64,
    /// ...or at most this many milliseconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub sig_ms_interval: u64,
    /// The primary ends a ledger chunk at the first signature past this size, in bytes.
    #[arg(long, default_value_t = 5_000_000)]
    pub ledger_chunk_bytes: u64,
    /// The primary marks a snapshot point every this many transactions (0: no snapshots).
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_tx_interval: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Heap one JavaScript runtime may use, in bytes (a handler that exceeds it gets a 500).
    #[arg(long, default_value_t = 64 << 20)]
    pub js_heap_bytes_max: usize,
    /// Time one JavaScript handler may run, in milliseconds (a handler that exceeds it gets a 500).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub js_time_ms_max: u64,
    /// Raft tick, in milliseconds (an election takes 10 to 20 ticks without a heartbeat).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub tick_ms: u64,
}

/// `synod-node start`.
#[derive(Clone, Debug, clap::Args)]
pub struct StartConfig {
    /// Common options.
    #[command(flatten)]
    pub node: NodeConfig,
    /// Certificate of a user allowed to call the app (repeatable; read only when the service is created).
    #[arg(long = "user-cert")]
    pub user_certs: Vec<PathBuf>,
    /// Certificate of a consortium member (repeatable; read only when the service is created).
    #[arg(long = "member-cert")]
    pub member_certs: Vec<PathBuf>,
}

/// `synod-node join`.
#[derive(Clone, Debug, clap::Args)]
pub struct JoinConfig {
    /// Common options.
    #[command(flatten)]
    pub node: NodeConfig,
    /// HTTPS URL of any node of the service to join.
    #[arg(long)]
    pub target: String,
    /// The service certificate (PEM) to trust the target with.
    #[arg(long)]
    pub service_cert: PathBuf,
    /// How long to keep retrying the join (and waiting to be trusted by the members), in seconds.
    #[arg(long, default_value_t = 600)]
    pub join_timeout_s: u64,
}
