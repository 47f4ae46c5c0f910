//! The command lines of `synod` and `synod-load`, in the library so they can be tested in-process and so the two
//! binaries share how they find a network (`network.json`, or `--url` plus certificates).
//!
//! Exit codes: 0 success, 1 failure (HTTP status >= 400, a receipt or ledger that does not verify, any error),
//! 2 bad usage (from clap).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use synod_core::txid::{TxId, TxStatus};

use crate::client::{Body, Client, Response};
use crate::commit::CommitFollower;
use crate::load::{EtcdTarget, LoadConfig, LoadReport, LoadSummary, SynodTarget};
use crate::network::Network;
use crate::Method;

/// Default location of network.json (the sandbox writes it there).
pub const DEFAULT_NETWORK: &str = "./workspace/network.json";

/// Where a network is: `network.json`, or `--url` and `--service-cert` to bypass it. Shared by `synod`,
/// `synod-load` and `synod-gov` (which rewords the help of these options with `mut_arg`).
#[derive(Clone, Debug, Args)]
pub struct NetworkArgs {
    /// network.json describing the nodes, the service certificate and the users
    #[arg(long, global = true, env = "SYNOD_NETWORK", default_value = DEFAULT_NETWORK, value_name = "FILE")]
    pub network: PathBuf,
    /// Node of network.json to talk to (default: the first)
    #[arg(long, global = true, value_name = "NAME", conflicts_with = "url")]
    pub node: Option<String>,
    /// Node URL (https://host:port), instead of a node of network.json
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// Service certificate to pin and to verify receipts and ledgers with (default: network.json's)
    #[arg(long, global = true, value_name = "PEM")]
    pub service_cert: Option<PathBuf>,
}

/// Reads a text file; the error names it as `what` (e.g. "service certificate") and gives its path.
pub fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

impl NetworkArgs {
    /// network.json: required without `--url`; with `--url`, used for defaults only if the file exists.
    pub fn network(&self) -> anyhow::Result<Option<Network>> {
        if self.url.is_some() && !self.network.exists() {
            return Ok(None);
        }
        Network::load(&self.network).map(Some).with_context(|| {
            format!(
                "cannot use the network file {} (pass --network FILE or set SYNOD_NETWORK, \
                 or give --url and --service-cert)",
                self.network.display()
            )
        })
    }

    /// The service certificate PEM: `--service-cert`, else `network`'s; None with neither.
    fn service_cert_of(&self, network: Option<&Network>) -> anyhow::Result<Option<String>> {
        match (&self.service_cert, network) {
            (Some(path), _) => read(path, "service certificate").map(Some),
            (None, Some(net)) => read(&net.service_cert, "service certificate").map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The node URLs in failover order (`--url`, else `network`'s nodes starting at `--node`) and the service
    /// certificate PEM (`--service-cert`, else `network`'s), `network` being what [`NetworkArgs::network`] read.
    pub fn urls_and_service_cert(&self, network: Option<&Network>) -> anyhow::Result<(Vec<String>, String)> {
        let urls = match (&self.url, network) {
            (Some(url), _) => vec![url.clone()],
            (None, Some(net)) => net.urls_starting_at(self.node.as_deref())?,
            (None, None) => bail!("no node: pass --url or --network"),
        };
        let service_cert = self
            .service_cert_of(network)?
            .ok_or_else(|| anyhow!("no service certificate: pass --service-cert PEM with --url"))?;
        Ok((urls, service_cert))
    }

    /// The service certificate PEM: `--service-cert` (network.json is then not read), else network.json's.
    pub fn service_cert_pem(&self) -> anyhow::Result<String> {
        let network = match self.service_cert {
            Some(_) => None,
            None => self.network()?,
        };
        self.service_cert_of(network.as_ref())?.ok_or_else(|| {
            anyhow!("no service certificate: pass --service-cert PEM (or a network.json with --network)")
        })
    }
}

/// How to reach a network ([`NetworkArgs`]) and whom to authenticate as.
#[derive(Clone, Debug, Args)]
pub struct ConnectArgs {
    /// Where the network is.
    #[command(flatten)]
    pub net: NetworkArgs,
    /// Client certificate to authenticate with (default: the user's in network.json)
    #[arg(long, global = true, value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key of --cert (PKCS#8 PEM)
    #[arg(long, global = true, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
    /// User of network.json to authenticate as (default: the first)
    #[arg(long, global = true, value_name = "NAME", conflicts_with = "cert")]
    pub user: Option<String>,
}

/// What a client of [`ConnectArgs`] is made of, read once: network.json (if used), the node URLs, the service
/// certificate and the identity.
struct ClientParts {
    network: Option<Network>,
    urls: Vec<String>,
    service_cert: String,
    identity: Option<(String, String)>,
}

impl ClientParts {
    /// A client of `urls` (in failover order) with the service certificate and identity read.
    fn client(&self, urls: &[String]) -> anyhow::Result<Client> {
        Client::with_urls(
            urls,
            &self.service_cert,
            self.identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
        )
        .context("cannot set up the HTTPS client")
    }
}

impl ConnectArgs {
    fn client_parts(&self) -> anyhow::Result<ClientParts> {
        let network = self.net.network()?;
        let (urls, service_cert) = self.net.urls_and_service_cert(network.as_ref())?;
        let identity = match (&self.cert, &self.key, &network) {
            (Some(cert), Some(key), _) => Some((read(cert, "client certificate")?, read(key, "client key")?)),
            (Some(_), None, _) | (None, Some(_), _) => bail!("--cert and --key go together"),
            (None, None, Some(net)) => match net.user(self.user.as_deref())? {
                Some(user) => Some(
                    user.read_pems()
                        .context("cannot read the user's certificate and key")?,
                ),
                None => None,
            },
            (None, None, None) if self.user.is_some() => bail!("--user needs a network.json"),
            (None, None, None) => None,
        };
        Ok(ClientParts {
            network,
            urls,
            service_cert,
            identity,
        })
    }

    /// A client for the selected node and identity.
    pub fn client(&self) -> anyhow::Result<Client> {
        let parts = self.client_parts()?;
        parts.client(&parts.urls)
    }
}

/// `synod`: talk to a Synod network, fetch and verify receipts, audit ledgers.
#[derive(Debug, Parser)]
#[command(
    name = "synod",
    version,
    about = "Synod client: call endpoints, wait for commit, fetch and verify \
    receipts, audit ledgers",
    propagate_version = true
)]
pub struct Cli {
    /// Where the network is.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print machine-readable JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `synod` commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a key and self-signed certificate for a user or member (<NAME>_cert.pem, <NAME>_privk.pem)
    Keygen {
        /// Identity name (certificate common name and file prefix)
        #[arg(long)]
        name: String,
        /// Key curve: secp384r1 (CCF's default), secp256r1 or ed25519
        #[arg(long, default_value = "secp384r1")]
        curve: synod_core::cert::Curve,
        /// Directory to write the files to (created if needed)
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
    /// Send one HTTPS request to a node; print the status line and the body
    Call(CallArgs),
    /// Print a transaction's status: Unknown, Pending, Committed or Invalid
    Tx {
        /// Transaction id, view.seqno (e.g. 2.15)
        txid: TxId,
        /// Wait until the transaction is Committed (exit 1 if it becomes Invalid or the wait times out)
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in milliseconds
        #[arg(long, default_value_t = 30_000, value_name = "MS")]
        timeout_ms: u64,
    },
    /// Print the last committed transaction id
    Commit,
    /// Fetch and verify receipts
    #[command(subcommand)]
    Receipt(ReceiptCommand),
    /// Offline ledger tools
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Attestation evidence tools
    #[command(subcommand)]
    Attestation(AttestationCommand),
    /// Verify a node before trusting it: fetch its evidence over TLS (trusting nothing yet), check that it verifies,
    /// binds the TLS key the node presented, states --measurement (and --min-tcb), and that the service certificate
    /// endorses the node; only then write the service certificate to --out for later requests. Prints JSON; exit 1
    /// with the failed check named
    Attest {
        /// The node's URL, e.g. https://127.0.0.1:8000
        url: String,
        /// The expected measurement (hex)
        #[arg(long)]
        measurement: String,
        /// The expected platform (sgx, snp or virtual); default: any
        #[arg(long)]
        platform: Option<synod_core::attestation::PlatformKind>,
        /// Minimum TCB (see `synod attestation verify --min-tcb`)
        #[arg(long, value_name = "TCB")]
        min_tcb: Option<String>,
        /// Where to write the service certificate once the node is attested
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// `synod attestation` commands.
#[derive(Debug, Subcommand)]
pub enum AttestationCommand {
    /// Verify attestation evidence offline and print what it states as JSON (platform, measurement, report_data,
    /// host_data, tcb_status, details, checked); on failure print {"ok": false, "error"} naming the failed check
    /// and exit 1. SGX: a DCAP quote with its collateral (QuoteCollateralV3 JSON); SNP: a report with its
    /// endorsements (PEM: VCEK, ASK, ARK); virtual: the JSON statement. Binary or hex files
    Verify {
        /// Platform: sgx, snp or virtual
        #[arg(long)]
        platform: synod_core::attestation::PlatformKind,
        /// The evidence (quote or report)
        #[arg(long, value_name = "FILE")]
        evidence: PathBuf,
        /// The endorsements (collateral or certificate chain)
        #[arg(long, value_name = "FILE")]
        endorsements: Option<PathBuf>,
        /// SNP: a UVM endorsement (COSE Sign1, binary or base64) that must endorse the report's measurement; its
        /// publisher (did), feed and svn are printed under uvm_endorsements
        #[arg(long, value_name = "FILE")]
        uvm_endorsements: Option<PathBuf>,
        /// Verify as of this time (RFC 3339, e.g. 2025-07-01T00:00:00Z), so recorded evidence whose collateral
        /// has since expired stays checkable; default: now
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// Refuse a TCB below this: an SGX status (UpToDate, SWHardeningNeeded, ...) or SNP components
        /// ("bootloader 3 tee 0 snp 8 microcode 115")
        #[arg(long, value_name = "TCB")]
        min_tcb: Option<String>,
    },
}

/// `synod call` arguments.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// HTTP method (default GET, or POST when --data is given)
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    pub method: Option<String>,
    /// Path and query, e.g. /app/log/private?id=42
    pub path: String,
    /// Request body: JSON text, or @FILE to send a file's contents (sent as application/json)
    #[arg(short = 'd', long, value_name = "JSON|@FILE")]
    pub data: Option<String>,
    /// Extra request header "Name: value" (repeatable)
    #[arg(short = 'H', long = "header", value_name = "K:V")]
    pub headers: Vec<String>,
    /// Also print the response headers
    #[arg(short = 'i', long)]
    pub include: bool,
    /// Wait until the transaction named by the response is Committed
    #[arg(long)]
    pub wait: bool,
    /// Timeout for the request and, with --wait, for the commit, in milliseconds
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// `synod receipt` commands.
#[derive(Debug, Subcommand)]
pub enum ReceiptCommand {
    /// Wait until a transaction is Committed, fetch its receipt, verify it and write it to a file
    Get {
        /// Transaction id, view.seqno
        txid: TxId,
        /// Fetch the COSE receipt (default: CCF JSON)
        #[arg(long)]
        cose: bool,
        /// File to write the receipt to
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
        /// How long to wait for the commit, in milliseconds
        #[arg(long, default_value_t = 30_000, value_name = "MS")]
        timeout_ms: u64,
    },
    /// Verify a receipt file (JSON or COSE) offline against the service certificate (--service-cert)
    Verify {
        /// The receipt file
        file: PathBuf,
        /// A receipt of a service this one recovered: the current identity's endorsement of the previous one
        /// (`endorsement` of GET /node/service/previous_identity, PEM), repeatable, oldest last
        #[arg(long, value_name = "PEM")]
        service_endorsement: Vec<PathBuf>,
    },
}

/// `synod ledger` commands.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Re-check every entry, the Merkle tree and every signature of a ledger directory; name the first bad entry.
    /// With --service-cert, node endorsements and COSE signatures are checked too. Entries after the last
    /// signature (an unsigned tail) fail the audit unless --allow-unsigned-tail is given.
    Audit {
        /// Ledger directory (a node's DATA_DIR/ledger)
        dir: PathBuf,
        /// Accept entries after the last signature (still reported): a running node's open chunk ends with
        /// committed entries whose signature is not written yet. Nothing vouches for them.
        #[arg(long)]
        allow_unsigned_tail: bool,
    },
}

fn parse_header(h: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = h
        .split_once(':')
        .ok_or_else(|| anyhow!("header {h:?} is not \"Name: value\""))?;
    if k.trim().is_empty() {
        bail!("header {h:?} has no name");
    }
    Ok((k.trim().to_string(), v.trim().to_string()))
}

fn body_text(response: &Response) -> String {
    if response.body.is_empty() {
        return String::new();
    }
    match serde_json::from_slice::<serde_json::Value>(&response.body) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_else(|_| response.text()),
        Err(_) => response.text(),
    }
}

fn status_line(response: &Response) -> String {
    format!(
        "HTTP {} {}",
        response.status.as_u16(),
        response.status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_string()
}

fn println(out: &mut (dyn Write + Send), line: impl std::fmt::Display) -> anyhow::Result<()> {
    writeln!(out, "{line}").context("cannot write the output")
}

fn status_name(status: TxStatus) -> &'static str {
    match status {
        TxStatus::Unknown => "Unknown",
        TxStatus::Pending => "Pending",
        TxStatus::Committed => "Committed",
        TxStatus::Invalid => "Invalid",
    }
}

async fn run_call(cli: &Cli, args: &CallArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<u8> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let client = cli.connect.client()?.with_request_timeout(timeout);
    let method_name = args
        .method
        .clone()
        .unwrap_or_else(|| if args.data.is_some() { "POST" } else { "GET" }.to_string());
    let method = Method::from_bytes(method_name.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("invalid HTTP method {method_name:?}"))?;
    let body = match &args.data {
        None => None,
        Some(data) => {
            let bytes = match data.strip_prefix('@') {
                Some(file) => {
                    std::fs::read(file).with_context(|| format!("cannot read the body file {file}"))?
                }
                None => data.as_bytes().to_vec(),
            };
            Some(Body::Bytes {
                content_type: Some("application/json".into()),
                bytes,
            })
        }
    };
    let headers = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let response = client
        .call(method.clone(), &args.path, body, &header_refs)
        .await
        .with_context(|| format!("{method} {} failed", args.path))?;
    let failed = response.status.is_client_error() || response.status.is_server_error();
    let wait = args.wait && !failed;
    let tx_id = match response.tx_id() {
        Ok(tx) => Some(tx),
        Err(e) if wait => {
            return Err(anyhow::Error::new(e).context("--wait: the response names no transaction"))
        }
        Err(_) => None,
    };
    let mut committed = None;
    if let Some(tx) = tx_id.filter(|_| wait) {
        client
            .wait_for_commit(tx, timeout)
            .await
            .with_context(|| format!("waiting for transaction {tx}"))?;
        committed = Some(tx);
    }
    if cli.json {
        let body = if response.body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&response.body).unwrap_or_else(|_| json!(response.text()))
        };
        let mut doc = json!({ "status": response.status.as_u16(), "transaction_id": tx_id, "body": body });
        if args.wait {
            doc["committed"] = json!(committed.is_some());
        }
        println(out, serde_json::to_string_pretty(&doc)?)?;
    } else {
        println(out, status_line(&response))?;
        if args.include {
            for (name, value) in &response.headers {
                println(
                    out,
                    format!("{name}: {}", String::from_utf8_lossy(value.as_bytes())),
                )?;
            }
            println(out, "")?;
        }
        let text = body_text(&response);
        if !text.is_empty() {
            println(out, text.trim_end())?;
        }
        if let Some(tx) = committed {
            println(out, format!("transaction_id {tx} Committed"))?;
        }
    }
    Ok(u8::from(failed))
}

// `unsigned_tail_range` of the JSON output: the seqnos nothing signed, or null.
fn tail_range_json(tail: Option<&synod_core::audit::UnsignedTail>) -> serde_json::Value {
    tail.map_or(serde_json::Value::Null, |t| json!({ "from": t.from, "to": t.to }))
}

/// A progress bar over the ledger's bytes on a terminal (stderr); hidden otherwise, so scripts and pipes see only
/// the report.
fn audit_progress(dir: &Path) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let total = synod_core::audit::ledger_chunk_sizes(dir).iter().sum();
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "auditing {bar:40} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar
}

fn run_audit(
    cli: &Cli,
    dir: &Path,
    allow_unsigned_tail: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u8> {
    // The service certificate is used only when given explicitly: a stale network.json must not fail an audit of
    // another network's ledger.
    let service_der = match &cli.connect.net.service_cert {
        Some(path) => Some(
            synod_core::cert::pem_to_der(&read(path, "service certificate")?)
                .with_context(|| format!("service certificate {}", path.display()))?,
        ),
        None => None,
    };
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let options = synod_core::audit::AuditOptions { allow_unsigned_tail };
    let progress = audit_progress(dir);
    let audited =
        synod_core::audit::audit_ledger_observed(dir, service_der.as_deref(), options, &mut |bytes| {
            progress.inc(bytes)
        });
    progress.finish_and_clear();
    match audited {
        Ok(report) if report.chunks == 0 => {
            if cli.json {
                println(
                    out,
                    json!({ "ok": false, "file": dir, "reason": "no ledger chunk files" }),
                )?;
            } else {
                println(
                    out,
                    format!(
                        "ledger audit FAILED: no ledger chunk files (ledger_*) in {}",
                        dir.display()
                    ),
                )?;
            }
            Ok(1)
        }
        Ok(report) => {
            print_audit_report(cli, &report, service_der.is_some(), out)?;
            Ok(0)
        }
        Err(e) => {
            print_audit_error(cli, &e, out)?;
            Ok(1)
        }
    }
}

/// A clean audit's report: JSON, or lines for a person.
fn print_audit_report(
    cli: &Cli,
    report: &synod_core::audit::AuditReport,
    service_cert_checked: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let tail = report.unsigned_tail.as_ref();
    if cli.json {
        let doc = json!({
            "ok": true,
            "entries": report.entries,
            "signatures": report.signatures,
            "chunks": report.chunks,
            "last_seqno": report.last_seqno,
            "last_signed": report.last_signed,
            "unsigned_tail": report.unsigned_entries(),
            "unsigned_tail_range": tail_range_json(tail),
            "torn_tail_offset": report.torn_tail_offset,
            "service_cert_checked": service_cert_checked,
        });
        println(out, serde_json::to_string_pretty(&doc)?)?;
    } else {
        println(
            out,
            format!(
                "ledger OK: {} entries in {} chunk(s), {} signature(s) verified",
                report.entries, report.chunks, report.signatures
            ),
        )?;
        let last_signed = report
            .last_signed
            .map_or_else(|| "none".into(), |t| t.to_string());
        println(out, format!("  last signed tx:  {last_signed}"))?;
        let tail_text = tail.map_or_else(
            || "0 entries".to_string(),
            |t| {
                format!(
                    "{} entries (seqno {} to {}), accepted by --allow-unsigned-tail: no signature vouches \
                     for them",
                    t.count(),
                    t.from,
                    t.to
                )
            },
        );
        println(out, format!("  unsigned tail:   {tail_text}"))?;
        let torn = report.torn_tail_offset.map_or_else(
            || "none".into(),
            |o| format!("partial entry at offset {o} of the last chunk (a crash mid-write)"),
        );
        println(out, format!("  torn tail:       {torn}"))?;
        if !service_cert_checked {
            println(
                out,
                "  note: no --service-cert, so node endorsements and COSE signatures were not checked",
            )?;
        }
    }
    Ok(())
}

/// Where and why an audit failed: JSON, or lines for a person.
fn print_audit_error(
    cli: &Cli,
    e: &synod_core::audit::AuditError,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    if cli.json {
        let mut doc = json!({
            "ok": false, "file": e.file, "offset": e.offset, "seqno": e.seqno, "reason": e.reason,
        });
        if let Some(tail) = &e.unsigned_tail {
            doc["unsigned_tail"] = json!(tail.count());
            doc["unsigned_tail_range"] = tail_range_json(Some(tail));
        }
        println(out, serde_json::to_string_pretty(&doc)?)?;
    } else {
        println(out, "ledger audit FAILED")?;
        println(out, format!("  file:    {}", e.file.display()))?;
        println(out, format!("  offset:  {}", e.offset))?;
        println(
            out,
            format!(
                "  seqno:   {}",
                e.seqno.map_or_else(|| "-".into(), |s| s.to_string())
            ),
        )?;
        println(out, format!("  reason:  {}", e.reason))?;
        if e.unsigned_tail.is_some() {
            println(
                out,
                "  note:    a running node's open chunk may end with entries not signed yet; \
                 --allow-unsigned-tail accepts (and still reports) them",
            )?;
        }
    }
    Ok(())
}

fn run_verify(
    cli: &Cli,
    file: &Path,
    endorsements: &[PathBuf],
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u8> {
    let pem = cli.connect.net.service_cert_pem()?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read the receipt {}", file.display()))?;
    let endorsements = endorsements
        .iter()
        .map(|p| read(p, "the service endorsement"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    match synod_core::receipt::verify_bytes_with(&bytes, &pem, &endorsements) {
        Ok(v) => {
            let tx = v
                .tx_id
                .map_or_else(|| "(signature transaction)".to_string(), |t| t.to_string());
            if cli.json {
                let doc = json!({
                    "ok": true,
                    "transaction_id": v.tx_id,
                    "root": hex::encode(v.root),
                    "leaf": v.leaf.map(hex::encode),
                });
                println(out, serde_json::to_string_pretty(&doc)?)?;
            } else {
                println(
                    out,
                    format!("receipt OK: transaction {tx}, root {}", hex::encode(v.root)),
                )?;
            }
            Ok(0)
        }
        Err(e) => {
            if cli.json {
                println(
                    out,
                    serde_json::to_string_pretty(&json!({ "ok": false, "reason": e.to_string() }))?,
                )?;
            } else {
                println(out, format!("receipt INVALID ({}): {e}", file.display()))?;
            }
            Ok(1)
        }
    }
}

/// A binary file, or the bytes a hex file spells (SNP reports are often kept as hex).
fn read_evidence_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text: String = bytes
        .iter()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|&b| b as char)
        .collect();
    let is_hex =
        !text.is_empty() && text.len().is_multiple_of(2) && text.chars().all(|c| c.is_ascii_hexdigit());
    Ok(if is_hex { hex::decode(text)? } else { bytes })
}

fn run_attestation_verify(
    platform: synod_core::attestation::PlatformKind,
    evidence: &Path,
    endorsements: Option<&Path>,
    uvm_endorsements: Option<&Path>,
    at: Option<&str>,
    min_tcb: Option<&str>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u8> {
    use synod_core::attestation;
    let at = match at {
        Some(s) => attestation::parse_rfc3339(s)
            .ok_or_else(|| anyhow!("--at {s:?} is not an RFC 3339 UTC time such as 2025-07-01T00:00:00Z"))?,
        None => attestation::now_secs(),
    };
    let evidence = read_evidence_file(evidence)?;
    let endorsements = match endorsements {
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
        None => Vec::new(),
    };
    let uvm = match uvm_endorsements {
        Some(p) => Some(attestation::uvm_endorsement_from_file(
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
        )),
        None => None,
    };
    let verified = attestation::verify_with_uvm(platform, &evidence, &endorsements, uvm.as_deref(), at)
        .and_then(|v| {
            if let Some(min) = min_tcb {
                attestation::check_minimum_tcb(&v, min)?;
            }
            Ok(v)
        });
    let (doc, code) = match verified {
        Ok(v) => {
            let mut doc = serde_json::to_value(&v)?;
            doc["ok"] = json!(true);
            doc["verified_at"] = json!(attestation::format_rfc3339(at));
            (doc, 0)
        }
        Err(e) => (
            json!({ "ok": false, "platform": platform, "error": e.to_string() }),
            1,
        ),
    };
    println(out, serde_json::to_string_pretty(&doc)?)?;
    Ok(code)
}

/// Runs a parsed `synod` command line, writing results to `out`; returns the exit code (errors are returned for
/// the caller to print, exit code 1).
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Keygen {
            name,
            curve,
            out: dir,
        } => run_keygen(&cli, name, *curve, dir, out),
        Command::Call(args) => run_call(&cli, args, out).await,
        Command::Tx {
            txid,
            wait,
            timeout_ms,
        } => run_tx(&cli, *txid, *wait, *timeout_ms, out).await,
        Command::Commit => {
            let tx = cli
                .connect
                .client()?
                .commit()
                .await
                .context("cannot get the last committed transaction")?;
            if cli.json {
                println(out, json!({ "transaction_id": tx }))?;
            } else {
                println(out, tx)?;
            }
            Ok(0)
        }
        Command::Receipt(ReceiptCommand::Get {
            txid,
            cose,
            out: file,
            timeout_ms,
        }) => run_receipt_get(&cli, *txid, *cose, file, *timeout_ms, out).await,
        Command::Receipt(ReceiptCommand::Verify {
            file,
            service_endorsement,
        }) => run_verify(&cli, file, service_endorsement, out),
        Command::Attest {
            url,
            measurement,
            platform,
            min_tcb,
            out: pin,
        } => {
            run_attest(
                url,
                measurement,
                *platform,
                min_tcb.as_deref(),
                pin.as_deref(),
                out,
            )
            .await
        }
        Command::Attestation(AttestationCommand::Verify {
            platform,
            evidence,
            endorsements,
            uvm_endorsements,
            at,
            min_tcb,
        }) => run_attestation_verify(
            *platform,
            evidence,
            endorsements.as_deref(),
            uvm_endorsements.as_deref(),
            at.as_deref(),
            min_tcb.as_deref(),
            out,
        ),
        Command::Ledger(LedgerCommand::Audit {
            dir,
            allow_unsigned_tail,
        }) => run_audit(&cli, dir, *allow_unsigned_tail, out),
    }
}

/// `synod keygen`: a user's key and self-signed certificate.
fn run_keygen(
    cli: &Cli,
    name: &str,
    curve: synod_core::cert::Curve,
    dir: &Path,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u8> {
    let files = crate::keygen(name, curve, dir)?;
    if cli.json {
        let doc = json!({ "cert": files.cert, "key": files.key, "id": files.id });
        println(out, serde_json::to_string_pretty(&doc)?)?;
    } else {
        println(out, format!("certificate  {}", files.cert.display()))?;
        println(out, format!("private key  {}", files.key.display()))?;
        println(out, format!("id           {}", files.id))?;
    }
    Ok(0)
}

/// `synod tx`: a transaction's status, or with `--wait` the status it settles on (exit 1 if Invalid).
async fn run_tx(
    cli: &Cli,
    txid: TxId,
    wait: bool,
    timeout_ms: u64,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u8> {
    let client = cli.connect.client()?;
    let (status, code) = if wait {
        match client
            .wait_for_commit(txid, Duration::from_millis(timeout_ms))
            .await
        {
            Ok(status) => (status, 0),
            Err(crate::Error::TxInvalid(_)) => (TxStatus::Invalid, 1),
            Err(e) => return Err(e).with_context(|| format!("waiting for transaction {txid}")),
        }
    } else {
        let status = client
            .tx_status(txid)
            .await
            .with_context(|| format!("cannot get the status of {txid}"))?;
        (status, 0)
    };
    if cli.json {
        println(out, json!({ "transaction_id": txid, "status": status }))?;
    } else {
        println(out, status_name(status))?;
    }
    Ok(code)
}

/// `synod receipt get`: the receipt of a committed transaction, verified before it is written.
async fn run_receipt_get(
    cli: &Cli,
    txid: TxId,
    cose: bool,
    file: &Path,
    timeout_ms: u64,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u8> {
    let client = cli.connect.client()?;
    let receipt = client
        .wait_for_receipt(txid, cose, Duration::from_millis(timeout_ms))
        .await
        .with_context(|| format!("cannot get the receipt of {txid}"))?;
    let verified = crate::verify_receipt_bytes(&receipt, client.service_cert_pem())
        .with_context(|| format!("the node sent a receipt for {txid} that does not verify"))?;
    crate::network::write_atomically(file, &receipt)?;
    if cli.json {
        let doc = json!({
            "transaction_id": txid, "file": file, "root": hex::encode(verified.root), "cose": cose,
        });
        println(out, serde_json::to_string_pretty(&doc)?)?;
    } else {
        println(
            out,
            format!(
                "receipt of {txid} ({}, verified, root {}) written to {}",
                if cose { "COSE" } else { "JSON" },
                hex::encode(verified.root),
                file.display()
            ),
        )?;
    }
    Ok(0)
}

/// `synod attest`: a node's evidence checked against the expected measurement before its service certificate
/// is pinned (exit 1 if it does not hold).
async fn run_attest(
    url: &str,
    measurement: &str,
    platform: Option<synod_core::attestation::PlatformKind>,
    min_tcb: Option<&str>,
    pin: Option<&Path>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u8> {
    let (doc, code) = match crate::attest::attest(url, measurement, platform, min_tcb).await {
        Ok(a) => {
            if let Some(path) = pin {
                std::fs::write(path, &a.service_cert_pem)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            let mut doc = serde_json::to_value(&a)?;
            doc["ok"] = json!(true);
            (doc, 0)
        }
        Err(e) => (json!({ "ok": false, "error": e.to_string() }), 1),
    };
    println(out, serde_json::to_string_pretty(&doc)?)?;
    Ok(code)
}

/// The system `synod-load` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadTargetKind {
    /// A Synod network (network.json, or --url): POST {"id": KEY, "msg": VALUE} to --path, then wait for the last
    /// write to be Committed
    Synod,
    /// An etcd v3 cluster through its HTTP/JSON gateway (--etcd-endpoints): POST /v3/kv/put of key log/KEY, which
    /// etcd answers once committed
    Etcd,
    /// An etcd v3 cluster through its native gRPC API (--etcd-endpoints): Put of key log/KEY (needs synod-load built
    /// with the etcd-grpc feature, as scripts/bench.sh does)
    EtcdGrpc,
}

/// `synod-load`: a benchmark of committed writes (not a test).
#[derive(Debug, Parser)]
#[command(
    name = "synod-load",
    version,
    about = "Load generator: concurrent clients POST writes, then wait for \
    the last one to be Committed; reports committed writes/s and request latency. \
    Measures Synod or etcd with the same keys, values and concurrency; --compare puts --json outputs side by side"
)]
pub struct LoadCli {
    /// Where the network is.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// System to load
    #[arg(long, value_enum, default_value_t = LoadTargetKind::Synod)]
    pub target: LoadTargetKind,
    /// etcd client URLs (http://host:port, comma-separated) for --target etcd; client i uses endpoint i mod N
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "URL,...",
        required_if_eq_any([("target", "etcd"), ("target", "etcd-grpc")])
    )]
    pub etcd_endpoints: Vec<String>,
    /// Spread the Synod clients over every node of network.json (client i starts at node i mod N; backups forward
    /// writes to the primary), as etcd clients spread over --etcd-endpoints; default: all on one node
    #[arg(long, conflicts_with_all = ["url", "node"])]
    pub spread: bool,
    /// Write endpoint (POST {"id": KEY, "msg": VALUE})
    #[arg(long, default_value = "/app/log/private")]
    pub path: String,
    /// Concurrent clients, each with its own connection
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: u32,
    /// Writes in total
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: u64,
    /// Size of each written message in bytes
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
    /// Key space: ids are drawn from 0..KEYS
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Seed of the deterministic key sequence
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Start no new request after this many seconds
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration_s: u64,
    /// Timeout of each request, in milliseconds
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// How long to wait for the last write to be Committed, in seconds
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub commit_timeout_s: u64,
    /// Each client waits until its write is Committed before sending the next (what a client that needs
    /// durability does, and what an etcd client does: its put answers once committed). Synod clients of one node
    /// share one long poll of its commit (`CommitFollower`); commit latency is then what each client waited
    #[arg(long)]
    pub wait_commit: bool,
    /// Name of this run in the report and in --compare tables (e.g. synod-3 or etcd-3)
    #[arg(long, value_name = "NAME")]
    pub label: Option<String>,
    /// Run nothing: compare earlier --json outputs (a table, then the committed writes/s of each run divided by
    /// the last one's, and the p99s); exit code 1 if their parameters differ or a run had errors
    #[arg(long, num_args = 2.., value_name = "JSON")]
    pub compare: Vec<PathBuf>,
    /// Print one JSON object instead of the human summary
    #[arg(long)]
    pub json: bool,
}

/// One Synod client per load client: all on the selected node, or with `--spread` client i on node i mod N
/// (its failover order starting there).
fn synod_targets(cli: &LoadCli, timeout: Duration) -> anyhow::Result<Vec<SynodTarget>> {
    // network.json and the PEM files are read once, not once per client.
    let parts = cli.connect.client_parts()?;
    let node_urls: Vec<Vec<String>> = if cli.spread {
        let network = parts
            .network
            .as_ref()
            .ok_or_else(|| anyhow!("--spread needs a network.json listing the nodes"))?;
        network
            .nodes
            .iter()
            .map(|n| network.urls_starting_at(Some(&n.name)))
            .collect::<crate::Result<_>>()?
    } else {
        vec![parts.urls.clone()]
    };
    // With --wait-commit, the clients of one node share one follower of its commit.
    let followers: Vec<Option<Arc<CommitFollower>>> = node_urls
        .iter()
        .map(|urls| -> anyhow::Result<_> {
            Ok(cli
                .wait_commit
                .then(|| parts.client(urls))
                .transpose()?
                .map(|c| Arc::new(CommitFollower::start(c))))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut targets = Vec::new();
    for (_, (urls, follower)) in (0..cli.clients).zip(node_urls.iter().zip(&followers).cycle()) {
        // One client (so one connection pool) per worker.
        let client = parts.client(urls)?.with_request_timeout(timeout);
        let target = SynodTarget::new(client, &cli.path)?;
        targets.push(match follower {
            Some(f) => target.with_follower(f.clone()),
            None => target,
        });
    }
    Ok(targets)
}

/// The load against etcd's gRPC API: one client per load client, client i on endpoint i mod N.
#[cfg(feature = "etcd-grpc")]
async fn run_etcd_grpc(cli: &LoadCli, timeout: Duration, config: &LoadConfig) -> anyhow::Result<LoadReport> {
    if cli.etcd_endpoints.is_empty() {
        bail!("--target etcd-grpc needs --etcd-endpoints URL,...");
    }
    let clients = cli.clients as usize;
    let mut targets = Vec::with_capacity(clients);
    for i in 0..clients {
        let endpoint = cli.etcd_endpoints[i % cli.etcd_endpoints.len()].trim();
        targets.push(crate::load::EtcdGrpcTarget::connect(endpoint, timeout).await?);
    }
    Ok(crate::load::run_load(targets, config).await?)
}

#[cfg(not(feature = "etcd-grpc"))]
async fn run_etcd_grpc(_: &LoadCli, _: Duration, _: &LoadConfig) -> anyhow::Result<LoadReport> {
    bail!("this synod-load was built without the etcd-grpc feature: cargo build --release -p synod-client --features etcd-grpc")
}

/// One etcd client per load client, client i on endpoint i mod N.
fn etcd_targets(cli: &LoadCli, timeout: Duration) -> anyhow::Result<Vec<EtcdTarget>> {
    if cli.etcd_endpoints.is_empty() {
        bail!("--target etcd needs --etcd-endpoints URL,...");
    }
    if cli.spread {
        bail!("--spread is for Synod: etcd clients always spread over --etcd-endpoints");
    }
    (0..cli.clients as usize)
        .map(|i| {
            let endpoint = &cli.etcd_endpoints[i % cli.etcd_endpoints.len()];
            EtcdTarget::new(endpoint.trim(), timeout).context("bad --etcd-endpoints")
        })
        .collect()
}

/// `synod-load --compare`: reads the summaries and prints the comparison; 1 unless the comparison is fair.
fn run_compare(cli: &LoadCli, out: &mut (dyn Write + Send)) -> anyhow::Result<u8> {
    let mut runs = Vec::new();
    for path in &cli.compare {
        let text = read(path, "load summary")?;
        let run: LoadSummary = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a synod-load --json summary", path.display()))?;
        runs.push(run);
    }
    let comparison = crate::load::compare(&runs);
    if cli.json {
        println(
            out,
            json!({
                "runs": runs,
                "ratios": comparison.ratios,
                "fair": comparison.fair,
            }),
        )?;
    } else {
        write!(out, "{}", comparison.text).context("cannot write the output")?;
    }
    Ok(u8::from(!comparison.fair))
}

/// Runs `synod-load`; exit code 1 if no write succeeded or the last write was not seen Committed (or, with
/// `--compare`, if the runs are not comparable).
pub async fn run_load(cli: LoadCli, out: &mut (dyn Write + Send)) -> anyhow::Result<u8> {
    if !cli.compare.is_empty() {
        return run_compare(&cli, out);
    }
    if !cli.path.starts_with('/') {
        bail!("--path must start with '/'");
    }
    let timeout = Duration::from_millis(cli.timeout_ms);
    let config = LoadConfig {
        requests: cli.requests,
        value_bytes: cli.value_bytes,
        keys: cli.keys,
        seed: cli.seed,
        max_duration: Duration::from_secs(cli.duration_s),
        commit_timeout: Duration::from_secs(cli.commit_timeout_s),
        wait_commit: cli.wait_commit,
    };
    let mut report: LoadReport = match cli.target {
        LoadTargetKind::Synod => crate::load::run_load(synod_targets(&cli, timeout)?, &config).await?,
        LoadTargetKind::Etcd => crate::load::run_load(etcd_targets(&cli, timeout)?, &config).await?,
        LoadTargetKind::EtcdGrpc => run_etcd_grpc(&cli, timeout, &config).await?,
    };
    report.label = cli.label.clone();
    if cli.json {
        println(out, report.to_json())?;
    } else {
        write!(out, "{}", report.human()).context("cannot write the output")?;
    }
    Ok(u8::from(report.committed_writes_per_s.is_none()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn parses_the_documented_command_lines() {
        let cli = parse(&[
            "synod",
            "call",
            "-X",
            "POST",
            "/app/log/private",
            "--data",
            r#"{"id": 42}"#,
            "--wait",
        ]);
        match cli.command {
            Command::Call(a) => {
                assert_eq!(a.method.as_deref(), Some("POST"));
                assert_eq!(a.path, "/app/log/private");
                assert_eq!(a.data.as_deref(), Some(r#"{"id": 42}"#));
                assert!(a.wait);
                assert_eq!(a.timeout_ms, 30_000);
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&[
            "synod",
            "call",
            "/x",
            "-H",
            "a: b",
            "--header",
            "c:d",
            "--timeout-ms",
            "5",
        ]);
        match cli.command {
            Command::Call(a) => {
                assert_eq!(a.headers, ["a: b", "c:d"]);
                assert_eq!(a.timeout_ms, 5);
                assert!(a.method.is_none());
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["synod", "tx", "2.15", "--wait", "--json"]);
        assert!(cli.json);
        assert!(matches!(cli.command, Command::Tx { txid, wait: true, .. } if txid == TxId::new(2, 15)));
        assert!(matches!(parse(&["synod", "commit"]).command, Command::Commit));
        let cli = parse(&["synod", "receipt", "get", "2.15", "--cose", "--out", "r.cose"]);
        assert!(matches!(
            cli.command,
            Command::Receipt(ReceiptCommand::Get { cose: true, ref out, .. }) if out == Path::new("r.cose")
        ));
        let cli = parse(&["synod", "receipt", "verify", "r.json", "--service-cert", "s.pem"]);
        assert_eq!(cli.connect.net.service_cert.as_deref(), Some(Path::new("s.pem")));
        assert!(matches!(
            cli.command,
            Command::Receipt(ReceiptCommand::Verify { .. })
        ));
        let cli = parse(&[
            "synod",
            "ledger",
            "audit",
            "w/n0/ledger",
            "--service-cert",
            "s.pem",
            "--json",
        ]);
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Ledger(LedgerCommand::Audit { .. })
        ));
        let cli = parse(&["synod", "keygen", "--name", "user0", "--out", "/tmp/w"]);
        assert!(matches!(cli.command, Command::Keygen { ref name, .. } if name == "user0"));
        let cli = parse(&[
            "synod",
            "--url",
            "https://127.0.0.1:8000",
            "--service-cert",
            "s.pem",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "commit",
        ]);
        assert_eq!(cli.connect.net.url.as_deref(), Some("https://127.0.0.1:8000"));
        assert_eq!(cli.connect.key.as_deref(), Some(Path::new("k.pem")));
        let cli = parse(&[
            "synod",
            "commit",
            "--network",
            "/n.json",
            "--node",
            "n1",
            "--user",
            "user1",
        ]);
        assert_eq!(cli.connect.net.network, Path::new("/n.json"));
        assert_eq!(cli.connect.net.node.as_deref(), Some("n1"));
        assert_eq!(cli.connect.user.as_deref(), Some("user1"));
    }

    #[test]
    fn rejects_bad_command_lines() {
        for args in [
            &["synod"][..],
            &["synod", "tx", "2"],
            &["synod", "tx", "a.b"],
            &["synod", "receipt", "get", "2.3"],
            &["synod", "receipt", "verify"],
            &["synod", "keygen"],
            &["synod", "call"],
            &["synod", "--cert", "c.pem", "commit"],
            &["synod", "--url", "https://x:1", "--node", "n0", "commit"],
            &["synod", "frobnicate"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} accepted");
        }
        let help = Cli::try_parse_from(["synod", "receipt", "get", "--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
    }

    #[test]
    fn parses_load_command_lines() {
        let cli = LoadCli::try_parse_from([
            "synod-load",
            "--clients",
            "4",
            "--requests",
            "100",
            "--value-bytes",
            "256",
            "--keys",
            "10",
            "--path",
            "/app/log/public",
            "--json",
            "--duration-s",
            "5",
            "--node",
            "n1",
        ])
        .unwrap();
        assert_eq!(
            (cli.clients, cli.requests, cli.value_bytes, cli.keys),
            (4, 100, 256, 10)
        );
        assert_eq!(cli.path, "/app/log/public");
        assert!(cli.json);
        assert_eq!(cli.duration_s, 5);
        assert_eq!(cli.connect.net.node.as_deref(), Some("n1"));
        let defaults = LoadCli::try_parse_from(["synod-load"]).unwrap();
        assert_eq!(
            (defaults.clients, defaults.value_bytes, defaults.path.as_str()),
            (32, 64, "/app/log/private")
        );
        assert_eq!(defaults.target, LoadTargetKind::Synod);
        assert!(!defaults.spread && defaults.compare.is_empty() && defaults.label.is_none());

        let etcd = LoadCli::try_parse_from([
            "synod-load",
            "--target",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:2379,http://127.0.0.1:22379,http://127.0.0.1:32379",
            "--label",
            "etcd-3",
        ])
        .unwrap();
        assert_eq!(etcd.target, LoadTargetKind::Etcd);
        assert_eq!(etcd.etcd_endpoints.len(), 3);
        assert_eq!(etcd.etcd_endpoints[1], "http://127.0.0.1:22379");
        assert_eq!(etcd.label.as_deref(), Some("etcd-3"));
        let spread = LoadCli::try_parse_from(["synod-load", "--spread"]).unwrap();
        assert!(spread.spread);
        let compare = LoadCli::try_parse_from(["synod-load", "--compare", "a.json", "b.json"]).unwrap();
        assert_eq!(
            compare.compare,
            [PathBuf::from("a.json"), PathBuf::from("b.json")]
        );
        for bad in [
            &["synod-load", "--clients", "0"][..],
            &["synod-load", "--keys", "0"],
            &["synod-load", "--target", "etcd"],
            &["synod-load", "--target", "zookeeper"],
            &["synod-load", "--spread", "--url", "https://127.0.0.1:1"],
            &["synod-load", "--spread", "--node", "n1"],
            &["synod-load", "--compare", "only-one.json"],
        ] {
            assert!(LoadCli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_parse() {
        assert_eq!(
            parse_header("Accept: application/cose").unwrap(),
            ("Accept".into(), "application/cose".into())
        );
        assert_eq!(parse_header("x:a:b").unwrap(), ("x".into(), "a:b".into()));
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header(": v").is_err());
    }

    async fn run_to_string(args: &[&str]) -> (anyhow::Result<u8>, String) {
        let mut out = Vec::new();
        let result = run(parse(args), &mut out).await;
        (result, String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn keygen_verify_and_audit_offline() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let (code, out) = run_to_string(&["synod", "keygen", "--name", "user0", "--out", d]).await;
        assert_eq!(code.unwrap(), 0);
        assert!(out.contains("user0_cert.pem"), "{out}");
        let (again, _) = run_to_string(&["synod", "keygen", "--name", "user0", "--out", d]).await;
        assert!(again.unwrap_err().to_string().contains("refusing to overwrite"));

        let ledger = dir.path().join("ledger");
        std::fs::create_dir(&ledger).unwrap();
        let (sample, json, _cose) = crate::tests::sample_receipts(&ledger);
        let pem_path = dir.path().join("service_cert.pem");
        std::fs::write(&pem_path, &sample.service.cert_pem).unwrap();
        let pem = pem_path.to_str().unwrap();
        let receipt = dir.path().join("r.json");
        std::fs::write(&receipt, &json).unwrap();
        let r = receipt.to_str().unwrap();
        let (code, out) = run_to_string(&["synod", "receipt", "verify", r, "--service-cert", pem]).await;
        assert_eq!(code.unwrap(), 0, "{out}");
        let expected_tx = sample.entries[0].tx_id;
        assert!(
            out.starts_with(&format!("receipt OK: transaction {expected_tx}, root ")),
            "{out}"
        );
        let mut bad = json.clone();
        let i = bad.len() / 2;
        bad[i] ^= 0x01;
        std::fs::write(&receipt, &bad).unwrap();
        let (code, out) = run_to_string(&["synod", "receipt", "verify", r, "--service-cert", pem]).await;
        assert_eq!(code.unwrap(), 1, "{out}");
        assert!(out.contains("INVALID"), "{out}");

        let l = ledger.to_str().unwrap();
        let (code, out) = run_to_string(&["synod", "ledger", "audit", l, "--service-cert", pem]).await;
        assert_eq!(code.unwrap(), 0, "{out}");
        assert!(
            out.starts_with(&format!("ledger OK: {} entries", sample.entries.len())),
            "{out}"
        );
        let (code, out) = run_to_string(&["synod", "ledger", "audit", l, "--json"]).await;
        assert_eq!(code.unwrap(), 0, "{out}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["ok"], true);
        assert_eq!(doc["entries"], sample.entries.len() as u64);

        // Flip a byte inside the second entry: the audit names its file and seqno and exits 1.
        let e = &sample.entries[1];
        let chunk = &sample.chunks[e.chunk];
        let mut bytes = std::fs::read(chunk).unwrap();
        bytes[(e.offset + e.len / 2) as usize] ^= 0x10;
        std::fs::write(chunk, &bytes).unwrap();
        let (code, out) = run_to_string(&["synod", "ledger", "audit", l, "--json"]).await;
        assert_eq!(code.unwrap(), 1, "{out}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["ok"], false);
        assert_eq!(doc["seqno"], e.tx_id.seqno);
        assert_eq!(doc["offset"], e.offset);
        let (code, out) = run_to_string(&["synod", "ledger", "audit", l]).await;
        assert_eq!(code.unwrap(), 1);
        assert!(
            out.contains("FAILED") && out.contains(&format!("seqno:   {}", e.tx_id.seqno)),
            "{out}"
        );

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let (code, _) = run_to_string(&["synod", "ledger", "audit", empty.to_str().unwrap()]).await;
        assert_eq!(code.unwrap(), 1, "an empty directory is not a ledger");
        let (missing, _) = run_to_string(&["synod", "ledger", "audit", "/nonexistent/ledger"]).await;
        assert!(missing.is_err());
    }

    #[tokio::test]
    async fn missing_network_is_a_clear_error() {
        let (result, _) = run_to_string(&["synod", "--network", "/nonexistent/network.json", "commit"]).await;
        let message = format!("{:#}", result.unwrap_err());
        assert!(
            message.contains("/nonexistent/network.json") && message.contains("SYNOD_NETWORK"),
            "{message}"
        );
    }
    /// `synod attestation verify` on the recorded evidence (node/core/tests/fixtures/attestation): JSON out, exit 0
    /// when it verifies, 1 with the failed check named when not.
    #[tokio::test]
    async fn attestation_verify_prints_what_the_evidence_states_or_why_not() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../node/core/tests/fixtures/attestation"
        );
        let (report, pem) = (
            format!("{dir}/snp_report_milan.hex"),
            format!("{dir}/snp_endorsements_milan.pem"),
        );
        let args = [
            "synod",
            "attestation",
            "verify",
            "--platform",
            "snp",
            "--evidence",
            &report,
        ];
        let (code, text) = run_to_string(
            &[
                &args[..],
                &["--endorsements", &pem, "--at", "2025-01-01T00:00:00Z"],
            ]
            .concat(),
        )
        .await;
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(code.unwrap(), 0, "{text}");
        assert_eq!(doc["ok"], true);
        assert_eq!(doc["platform"], "snp");
        assert_eq!(doc["details"]["product"], "Milan");
        assert_eq!(doc["verified_at"], "2025-01-01T00:00:00Z");
        // With a UVM endorsement of that launch measurement: its publisher, feed and svn are printed.
        let uvm = format!("{dir}/uvm_endorsements_ps384.cose");
        let (code, text) = run_to_string(
            &[
                &args[..],
                &[
                    "--endorsements",
                    &pem,
                    "--uvm-endorsements",
                    &uvm,
                    "--at",
                    "2025-01-01T00:00:00Z",
                ],
            ]
            .concat(),
        )
        .await;
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(code.unwrap(), 0, "{text}");
        assert_eq!(doc["uvm_endorsements"]["feed"], "ContainerPlat-AMD-UVM");
        assert_eq!(doc["uvm_endorsements"]["svn"], "101");
        let (code, text) = run_to_string(
            &[
                &args[..],
                &[
                    "--endorsements",
                    &pem,
                    "--uvm-endorsements",
                    &pem,
                    "--at",
                    "2025-01-01T00:00:00Z",
                ],
            ]
            .concat(),
        )
        .await;
        assert_eq!(code.unwrap(), 1, "{text}");
        assert!(text.contains("UVM endorsements: not COSE Sign1"), "{text}");
        let (code, text) = run_to_string(
            &[
                &args[..],
                &["--endorsements", &pem, "--at", "2031-01-01T00:00:00Z"],
            ]
            .concat(),
        )
        .await;
        assert_eq!(code.unwrap(), 1);
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            doc["error"],
            "SNP VCEK certificate expired at 2030-04-03T19:23:43Z"
        );
        let (code, text) = run_to_string(
            &[
                &args[..],
                &[
                    "--endorsements",
                    &pem,
                    "--min-tcb",
                    "bootloader 4 tee 0 snp 8 microcode 115",
                ],
            ]
            .concat(),
        )
        .await;
        assert_eq!(code.unwrap(), 1);
        assert!(text.contains("TCB below minimum: bootloader 3 < 4"), "{text}");
        let (result, _) = run_to_string(&[&args[..], &["--at", "yesterday"]].concat()).await;
        assert!(format!("{:#}", result.unwrap_err()).contains("RFC 3339"));
        let (result, _) = run_to_string(&[
            "synod",
            "attestation",
            "verify",
            "--platform",
            "sgx",
            "--evidence",
            "/nonexistent",
        ])
        .await;
        assert!(format!("{:#}", result.unwrap_err()).contains("/nonexistent"));
    }

    fn load_cli(args: &[&str]) -> LoadCli {
        LoadCli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_load_spreads_clients_over_the_endpoints() {
        use std::sync::atomic::Ordering;
        let mut members = Vec::new();
        for _ in 0..3 {
            members.push(crate::load::tests::mock_etcd::start().await);
        }
        let endpoints: Vec<&str> = members.iter().map(|(url, _)| url.as_str()).collect();
        let endpoints = endpoints.join(",");
        let cli = load_cli(&[
            "synod-load",
            "--target",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--clients",
            "6",
            "--requests",
            "120",
            "--keys",
            "10",
            "--seed",
            "9",
            "--label",
            "etcd-mock",
            "--json",
        ]);
        let mut out = Vec::new();
        // Keys 0..10 never hit the mock's failing keys (13, 14).
        assert_eq!(run_load(cli, &mut out).await.unwrap(), 0);
        let summary: LoadSummary = serde_json::from_slice(&out).unwrap();
        assert_eq!((summary.requests, summary.errors, summary.clients), (120, 0, 6));
        assert_eq!((summary.label.as_str(), summary.keys), ("etcd-mock", 10));
        for (url, state) in &members {
            let connections = state.connections.load(Ordering::SeqCst);
            assert!(
                (2..=4).contains(&connections),
                "two clients on {url}: {connections} connections"
            );
            assert!(
                summary.target.contains(url.as_str()),
                "{} lacks {url}",
                summary.target
            );
        }
        let total: u64 = members
            .iter()
            .map(|(_, s)| s.put_count.load(Ordering::SeqCst))
            .sum();
        assert_eq!(total, 120);

        for bad in [
            vec![
                "synod-load",
                "--target",
                "etcd",
                "--etcd-endpoints",
                "https://127.0.0.1:2379",
            ],
            vec![
                "synod-load",
                "--target",
                "etcd",
                "--etcd-endpoints",
                &endpoints,
                "--spread",
            ],
        ] {
            assert!(
                run_load(load_cli(&bad), &mut Vec::new()).await.is_err(),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn compare_reads_json_summaries() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, label: &str, rate: f64, p99: f64, value_bytes: u64| {
            let path = dir.path().join(name);
            let doc = json!({
                "label": label, "target": format!("{label} at somewhere"), "requests": 2000, "errors": 0,
                "clients": 32, "value_bytes": value_bytes, "keys": 1000, "seed": 1, "elapsed_s": 1.5,
                "committed_writes_per_s": rate, "p50_ms": 1.25, "p99_ms": p99, "max_ms": 20.0,
            });
            std::fs::write(&path, doc.to_string()).unwrap();
            path.display().to_string()
        };
        let synod = write("synod.json", "synod-3", 4000.0, 9.5, 64);
        let etcd = write("etcd.json", "etcd-3", 8000.0, 7.0, 64);
        let mut out = Vec::new();
        let code = run_load(load_cli(&["synod-load", "--compare", &synod, &etcd]), &mut out)
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("synod-3 / etcd-3: 0.50x"), "{text}");
        assert!(text.contains("p99 9.500 ms vs 7.000 ms"), "{text}");

        let mut out = Vec::new();
        let code = run_load(
            load_cli(&["synod-load", "--compare", &synod, &etcd, "--json"]),
            &mut out,
        )
        .await
        .unwrap();
        assert_eq!(code, 0);
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["ratios"], json!([0.5, 1.0]));
        assert_eq!(doc["fair"], true);

        let bigger = write("bigger.json", "etcd-256", 8000.0, 7.0, 256);
        let mut out = Vec::new();
        let code = run_load(load_cli(&["synod-load", "--compare", &synod, &bigger]), &mut out)
            .await
            .unwrap();
        assert_eq!(code, 1, "different value sizes are not comparable");
        let missing = dir.path().join("missing.json").display().to_string();
        assert!(run_load(
            load_cli(&["synod-load", "--compare", &synod, &missing]),
            &mut Vec::new()
        )
        .await
        .is_err());
    }
    #[test]
    fn spread_puts_client_i_on_node_i_mod_n() {
        let dir = tempfile::tempdir().unwrap();
        // Any certificate will do as the pinned root: nothing is sent.
        let user = crate::keygen("user0", Default::default(), dir.path()).unwrap();
        let net = dir.path().join("network.json");
        let doc = json!({
            "nodes": [
                {"name": "n0", "url": "https://127.0.0.1:1"},
                {"name": "n1", "url": "https://127.0.0.1:2"},
                {"name": "n2", "url": "https://127.0.0.1:3"},
            ],
            "service_cert": user.cert,
            "users": [{"name": "user0", "cert": user.cert, "key": user.key}],
        });
        std::fs::write(&net, doc.to_string()).unwrap();
        let net = net.display().to_string();
        let urls = |args: &[&str]| -> Vec<String> {
            let cli = load_cli(args);
            synod_targets(&cli, Duration::from_secs(1))
                .unwrap()
                .iter()
                .map(crate::load::LoadTarget::describe)
                .collect()
        };
        let port = |p: u16| format!("synod https://127.0.0.1:{p}/app/log/private");
        assert_eq!(
            urls(&["synod-load", "--network", &net, "--clients", "5", "--spread"]),
            [port(1), port(2), port(3), port(1), port(2)]
        );
        assert_eq!(
            urls(&["synod-load", "--network", &net, "--clients", "2"]),
            [port(1), port(1)]
        );
        assert_eq!(
            urls(&["synod-load", "--network", &net, "--clients", "2", "--node", "n2"]),
            [port(3), port(3)]
        );
    }
}
