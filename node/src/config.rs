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
    /// Address other nodes reach this one at, recorded in the nodes table when it creates or joins the service
    /// (CCF's `published_address`): `host:port`, the host an IP address or a DNS name (a Kubernetes pod's stable
    /// name: its IP changes when it restarts); default: `--node-address` as bound.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub node_published_address: Option<String>,
    /// Address clients (and other nodes, for redirects to the primary) reach this node's HTTPS at, recorded in the
    /// nodes table and named in its certificate: `host:port` as above; default: `--rpc-address` as bound.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub rpc_published_address: Option<String>,
    /// Local address this node's connections to other nodes leave from (multi-homed hosts; the fault campaign
    /// gives each node its own loopback address so that a proxy can cut one node's traffic both ways).
    #[arg(long)]
    pub node_source_address: Option<std::net::IpAddr>,
    /// Name recorded for this node (and its certificate's common name).
    #[arg(long, default_value = "n0")]
    pub node_name: String,
    /// Curve of this node's key and, when `start` creates a service, of the service identity (recorded in
    /// `public:ccf.gov.service.info`): secp384r1 (CCF's), secp256r1 or ed25519. Receipts verify with CCF's own
    /// tools only on the ECDSA curves.
    #[arg(long, default_value = "secp384r1")]
    pub curve: synod_core::cert::Curve,
    /// The `virtual` platform's measurement (hex SHA-256) instead of the binary's digest. Virtual evidence is
    /// unsigned, so this claims nothing a virtual node could not claim anyway; it lets one machine run nodes of
    /// different "code" (tests of code removal, upgrade rehearsals).
    #[arg(long, value_name = "HEX", value_parser = parse_measurement)]
    pub virtual_measurement: Option<synod_core::hash::Digest>,
    /// Run on Intel SGX through Gramine: evidence from --gramine-attestation-dir, with this collateral file
    /// (QuoteCollateralV3 JSON from a PCCS or Azure THIM, kept fresh by the operator). Without it: `virtual`.
    #[arg(long, value_name = "FILE", conflicts_with = "virtual_measurement")]
    pub sgx_collateral: Option<PathBuf>,
    /// Gramine's attestation interface.
    #[arg(long, value_name = "DIR", default_value = "/dev/attestation")]
    pub gramine_attestation_dir: PathBuf,
    /// Run on AMD SEV-SNP: reports from /dev/sev-guest (else configfs-tsm, --tsm-report-dir), with these
    /// endorsements (PEM: the chip's VCEK, AMD's ASK and ARK, from AMD's KDS or Azure's THIM, kept fresh by the
    /// operator).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["virtual_measurement", "sgx_collateral"])]
    pub snp_endorsements: Option<PathBuf>,
    /// SEV-SNP: a UVM endorsement to present with every report (COSE Sign1, binary or base64: on Azure's
    /// confidential containers, the utility VM's `reference-info-base64`).
    #[arg(long, value_name = "FILE", requires = "snp_endorsements")]
    pub snp_uvm_endorsements: Option<PathBuf>,
    /// The configfs-tsm report interface, used for SEV-SNP reports where /dev/sev-guest is absent.
    #[arg(long, value_name = "DIR", default_value = "/sys/kernel/config/tsm/report")]
    pub tsm_report_dir: PathBuf,
    /// A signature transaction follows at most this many transactions.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sig_tx_interval: u64,
    /// ...or at most this many milliseconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub sig_ms_interval: u64,
    /// ...and sooner, while fewer than --sig-in-flight-max signatures await commit, but not sooner than this many
    /// milliseconds after the last one: a lone write commits after one round of replication. At least
    /// --sig-ms-interval: only the two limits above.
    #[arg(long, default_value_t = 2)]
    pub sig_ms_min: u64,
    /// Signatures the primary lets await commit before it waits for --sig-ms-interval (see --sig-ms-min).
    #[arg(long, default_value_t = 2)]
    pub sig_in_flight_max: usize,
    /// After a turn that took two requests or more (load), the primary's Raft thread starts its next turn no
    /// sooner than this many microseconds later: requests, peers' answers and synced writes that arrive meanwhile are
    /// handled as one batch (fewer, larger appends, syncs and wake-ups on every node). A lone request is never
    /// held. 0: a turn at once for whatever arrives.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub raft_batch_us: u64,
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
    /// Bounds on what clients, joiners and peers can make this node hold (docs/SECURITY.md lists them all).
    #[command(flatten)]
    pub limits: Limits,
}

/// Resource bounds, each with its flag (see docs/SECURITY.md). Hitting one answers a clear error (HTTP 503 or
/// 429 with `Retry-After`, or a closed connection); none of them can stop the node.
#[derive(Clone, Debug, clap::Args)]
pub struct Limits {
    /// Client (HTTPS) connections open at once; more are closed at accept. Clamped so that file descriptors stay
    /// free for the ledger, snapshots and RocksDB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub rpc_connections_max: u64,
    /// Client connections in their TLS handshake at once (unauthenticated, so kept well below the cap above).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    pub rpc_handshakes_max: u64,
    /// Time a client has to complete its TLS handshake, in milliseconds.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_handshake_timeout_ms: u64,
    /// Time a client has to send a request's headers, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout_ms: u64,
    /// A connection with no traffic for this long is closed, in milliseconds.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_idle_timeout_ms: u64,
    /// Time to read a request's body and answer it, in milliseconds (past it: 503 RequestTimeout).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_request_timeout_ms: u64,
    /// Inbound node-to-node connections open at once (TLS handshakes included: anyone can connect).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub node_connections_max: u64,
    /// Nodes waiting for the members' vote (Pending) at once; further joins get 503 until some are decided or
    /// expire.
    #[arg(long, default_value_t = 32)]
    pub pending_joins_max: u64,
    /// A Pending join never trusted is removed after this many seconds (a joiner still polling re-asks).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub pending_join_ttl_s: u64,
    /// New Pending joins one client address may record per minute (a burst of as many is allowed).
    #[arg(long, default_value_t = 6)]
    pub joins_per_min: u64,
    /// Snapshot downloads served at once; more get 503 with Retry-After.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_downloads_max: u64,
    /// Bytes of ordered but not yet committed entries the primary holds before it answers writes with 503
    /// (at least 2 MiB: more than one replication message).
    #[arg(long, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range((2 << 20) + 1..))]
    pub uncommitted_bytes_max: u64,
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
    /// Certificate of a consortium member, optionally followed by a comma and the member's RSA encryption public
    /// key (`member0_cert.pem,member0_enc_pubk.pem`): a member with one is a recovery member and holds a
    /// recovery share (repeatable; read only when the service is created). Without any member, the service runs
    /// in development mode: it opens at once and trusts joiners that present the join token.
    #[arg(long = "member-cert")]
    pub member_certs: Vec<MemberSpec>,
    /// Recovery shares needed to recover the service from its ledger (at most the number of recovery members;
    /// default 1; members change it with `set_recovery_threshold`). Read only when the service is created.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=255))]
    pub recovery_threshold: Option<u64>,
    /// Development mode only (no --member-cert): the join token joining nodes must present. Created with a
    /// fresh random token if missing (default DATA_DIR/join_token); read only when the service is created.
    #[arg(long)]
    pub join_token_file: Option<PathBuf>,
}

/// A founding member: its certificate, and its encryption public key if it is a recovery member.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// RSA encryption public key (PEM).
    pub encryption_key: Option<PathBuf>,
}

impl std::str::FromStr for MemberSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<MemberSpec, String> {
        let mut parts = s.split(',');
        let cert = parts
            .next()
            .filter(|c| !c.is_empty())
            .ok_or("a member is CERT[,ENCRYPTION_KEY]")?;
        let encryption_key = parts.next().map(PathBuf::from);
        if parts.next().is_some() {
            return Err(format!("{s:?}: a member is CERT[,ENCRYPTION_KEY], not more"));
        }
        Ok(MemberSpec {
            cert: PathBuf::from(cert),
            encryption_key,
        })
    }
}

/// `synod-node recover`.
#[derive(Clone, Debug, clap::Args)]
pub struct RecoverConfig {
    /// Common options.
    #[command(flatten)]
    pub node: NodeConfig,
    /// The previous service's ledger directory (a node's `ledger/`). Its chunks up to the last signature
    /// transaction are checked and copied into DATA_DIR; the directory is only read.
    #[arg(long)]
    pub ledger: PathBuf,
    /// Where the snapshot the ledger starts after is, when it does not start at seqno 1 (a node that joined from a
    /// snapshot); default: the ledger's `../snapshots`.
    #[arg(long, value_name = "DIR")]
    pub snapshot: Option<PathBuf>,
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
    /// The join token of a service in development mode (no members): the file `synod-node start` wrote.
    #[arg(long)]
    pub join_token_file: Option<PathBuf>,
}

/// A published address: `host:port`, the host an IP address (IPv6 in brackets) or a DNS name.
pub fn parse_host_port(s: &str) -> Result<String, String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(s.to_string());
    }
    let bad = || format!("{s:?} is not host:port (an IP address or a DNS name, and a port)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(bad());
    }
    Ok(s.to_string())
}

/// The host of a published address (checked by [`parse_host_port`]) as certificate names: IP addresses and DNS
/// names.
pub fn certificate_names(addr: &str) -> (Vec<std::net::IpAddr>, Vec<String>) {
    match addr.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => (vec![[127, 0, 0, 1].into()], vec!["localhost".into()]),
        Ok(a) => (vec![a.ip()], vec!["localhost".into()]),
        Err(_) => {
            let host = addr
                .rsplit_once(':')
                .map_or(addr, |(h, _)| h)
                .to_ascii_lowercase();
            let mut names = vec![host];
            if names[0] != "localhost" {
                names.push("localhost".into());
            }
            (vec![[127, 0, 0, 1].into()], names)
        }
    }
}

fn parse_measurement(s: &str) -> Result<synod_core::hash::Digest, String> {
    synod_core::hash::digest_from_hex(s)
        .ok_or_else(|| "a measurement is 64 hex digits (a SHA-256 digest)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_addresses_are_ips_or_dns_names_with_a_port() {
        for ok in [
            "10.0.0.5:8080",
            "[::1]:443",
            "synod-0.synod.default.svc.cluster.local:8081",
            "localhost:1",
        ] {
            assert_eq!(parse_host_port(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "synod-0",
            "synod-0:",
            "synod-0:99999",
            ":80",
            "-a.b:80",
            "a..b:80",
            "a b:80",
            "a_b:80",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad} accepted");
        }
        let (ips, names) = certificate_names("synod-1.synod:8080");
        assert_eq!(names, ["synod-1.synod", "localhost"]);
        assert_eq!(ips, [std::net::IpAddr::from([127, 0, 0, 1])]);
        let (ips, _) = certificate_names("10.1.2.3:8080");
        assert_eq!(ips, [std::net::IpAddr::from([10, 1, 2, 3])]);
    }
}
