//! The command lines of `synod` and `synod-load`, in the library so they can be tested in-process and so the two
//! binaries share how they find a network (`network.json`, or `--url` plus certificates).
//!
//! Exit codes: 0 success, 1 failure (HTTP status >= 400, a receipt or ledger that does not verify, any error),
//! 2 bad usage (from clap).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use synod_core::txid::{TxId, TxStatus};

use crate::client::{Body, Client, Response};
use crate::load::{LoadConfig, SynodTarget};
use crate::network::Network;
use crate::Method;

/// Default location of network.json (the sandbox writes it there).
pub const DEFAULT_NETWORK: &str = "./workspace/network.json";

/// How to reach a network: `network.json`, or `--url` with certificates to bypass it.
#[derive(Clone, Debug, Args)]
pub struct ConnectArgs {
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

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

impl ConnectArgs {
    /// network.json: required without `--url`; with `--url`, used for defaults only if the file exists.
    fn network(&self) -> anyhow::Result<Option<Network>> {
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

    /// The service certificate PEM: `--service-cert`, else network.json's.
    pub fn service_cert_pem(&self) -> anyhow::Result<String> {
        if let Some(path) = &self.service_cert {
            return read(path, "service certificate");
        }
        let network = self.network()?.ok_or_else(|| {
            anyhow!("no service certificate: pass --service-cert PEM (or a network.json with --network)")
        })?;
        read(&network.service_cert, "service certificate")
    }

    /// A client for the selected node and identity.
    pub fn client(&self) -> anyhow::Result<Client> {
        let network = self.network()?;
        let urls = match (&self.url, &network) {
            (Some(url), _) => vec![url.clone()],
            (None, Some(net)) => net.urls_starting_at(self.node.as_deref())?,
            (None, None) => bail!("no node: pass --url or --network"),
        };
        let service_cert = match (&self.service_cert, &network) {
            (Some(path), _) => read(path, "service certificate")?,
            (None, Some(net)) => read(&net.service_cert, "service certificate")?,
            (None, None) => bail!("no service certificate: pass --service-cert PEM with --url"),
        };
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
        Client::with_urls(
            &urls,
            &service_cert,
            identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
        )
        .context("cannot set up the HTTPS client")
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
    /// Generate an Ed25519 key and self-signed certificate for a user or member (<NAME>_cert.pem, <NAME>_privk.pem)
    Keygen {
        /// Identity name (certificate common name and file prefix)
        #[arg(long)]
        name: String,
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
    },
}

/// `synod ledger` commands.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Re-check every entry, the Merkle tree and every signature of a ledger directory; name the first bad entry.
    /// With --service-cert, node endorsements and COSE signatures are checked too.
    Audit {
        /// Ledger directory (a node's DATA_DIR/ledger)
        dir: PathBuf,
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
    let tx_id = response.tx_id().ok();
    let mut committed = None;
    if args.wait && !failed {
        let tx = response
            .tx_id()
            .context("--wait: the response names no transaction")?;
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

fn run_audit(cli: &Cli, dir: &Path, out: &mut (dyn Write + Send)) -> anyhow::Result<u8> {
    // The service certificate is used only when given explicitly: a stale network.json must not fail an audit of
    // another network's ledger.
    let service_der = match &cli.connect.service_cert {
        Some(path) => Some(
            synod_core::cert::pem_to_der(&read(path, "service certificate")?)
                .with_context(|| format!("service certificate {}", path.display()))?,
        ),
        None => None,
    };
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    match synod_core::audit::audit_ledger(dir, service_der.as_deref()) {
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
            if cli.json {
                let doc = json!({
                    "ok": true,
                    "entries": report.entries,
                    "signatures": report.signatures,
                    "chunks": report.chunks,
                    "last_seqno": report.last_seqno,
                    "last_signed": report.last_signed,
                    "unsigned_tail": report.unsigned_tail,
                    "torn_tail_offset": report.torn_tail_offset,
                    "service_cert_checked": service_der.is_some(),
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
                println(
                    out,
                    format!("  unsigned tail:   {} entries", report.unsigned_tail),
                )?;
                let torn = report.torn_tail_offset.map_or_else(
                    || "none".into(),
                    |o| format!("partial entry at offset {o} of the last chunk (a crash mid-write)"),
                );
                println(out, format!("  torn tail:       {torn}"))?;
                if service_der.is_none() {
                    println(
                        out,
                        "  note: no --service-cert, so node endorsements and COSE signatures were not checked",
                    )?;
                }
            }
            Ok(0)
        }
        Err(e) => {
            if cli.json {
                let doc = json!({
                    "ok": false, "file": e.file, "offset": e.offset, "seqno": e.seqno, "reason": e.reason,
                });
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
            }
            Ok(1)
        }
    }
}

fn run_verify(cli: &Cli, file: &Path, out: &mut (dyn Write + Send)) -> anyhow::Result<u8> {
    let pem = cli.connect.service_cert_pem()?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read the receipt {}", file.display()))?;
    match crate::verify_receipt_bytes(&bytes, &pem) {
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

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Runs a parsed `synod` command line, writing results to `out`; returns the exit code (errors are returned for
/// the caller to print, exit code 1).
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Keygen { name, out: dir } => {
            let files = crate::keygen(name, dir)?;
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
        Command::Call(args) => run_call(&cli, args, out).await,
        Command::Tx {
            txid,
            wait,
            timeout_ms,
        } => {
            let client = cli.connect.client()?;
            let (status, code) = if *wait {
                match client
                    .wait_for_commit(*txid, Duration::from_millis(*timeout_ms))
                    .await
                {
                    Ok(status) => (status, 0),
                    Err(crate::Error::TxInvalid(_)) => (TxStatus::Invalid, 1),
                    Err(e) => return Err(e).with_context(|| format!("waiting for transaction {txid}")),
                }
            } else {
                let status = client
                    .tx_status(*txid)
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
        }) => {
            let client = cli.connect.client()?;
            let receipt = client
                .wait_for_receipt(*txid, *cose, Duration::from_millis(*timeout_ms))
                .await
                .with_context(|| format!("cannot get the receipt of {txid}"))?;
            let verified = crate::verify_receipt_bytes(&receipt, client.service_cert_pem())
                .with_context(|| format!("the node sent a receipt for {txid} that does not verify"))?;
            write_atomically(file, &receipt)?;
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
                        if *cose { "COSE" } else { "JSON" },
                        hex::encode(verified.root),
                        file.display()
                    ),
                )?;
            }
            Ok(0)
        }
        Command::Receipt(ReceiptCommand::Verify { file }) => run_verify(&cli, file, out),
        Command::Ledger(LedgerCommand::Audit { dir }) => run_audit(&cli, dir, out),
    }
}

/// `synod-load`: a benchmark of committed writes (not a test).
#[derive(Debug, Parser)]
#[command(
    name = "synod-load",
    version,
    about = "Load generator: concurrent clients POST writes, then wait for \
    the last one to be Committed; reports committed writes/s and request latency"
)]
pub struct LoadCli {
    /// Where the network is.
    #[command(flatten)]
    pub connect: ConnectArgs,
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
    /// Print one JSON object instead of the human summary
    #[arg(long)]
    pub json: bool,
}

/// Runs `synod-load`; exit code 1 if no write succeeded or the last write was not seen Committed.
pub async fn run_load(cli: LoadCli, out: &mut (dyn Write + Send)) -> anyhow::Result<u8> {
    if !cli.path.starts_with('/') {
        bail!("--path must start with '/'");
    }
    let timeout = Duration::from_millis(cli.timeout_ms);
    let mut targets = Vec::new();
    for _ in 0..cli.clients {
        // One client (so one connection pool) per worker.
        let client = cli.connect.client()?.with_request_timeout(timeout);
        targets.push(SynodTarget::new(client, &cli.path));
    }
    let config = LoadConfig {
        requests: cli.requests,
        value_bytes: cli.value_bytes,
        keys: cli.keys,
        seed: cli.seed,
        max_duration: Duration::from_secs(cli.duration_s),
        commit_timeout: Duration::from_secs(cli.commit_timeout_s),
    };
    let report = crate::load::run_load(targets, &config).await?;
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
        assert_eq!(cli.connect.service_cert.as_deref(), Some(Path::new("s.pem")));
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
        assert_eq!(cli.connect.url.as_deref(), Some("https://127.0.0.1:8000"));
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
        assert_eq!(cli.connect.network, Path::new("/n.json"));
        assert_eq!(cli.connect.node.as_deref(), Some("n1"));
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
        assert_eq!(cli.connect.node.as_deref(), Some("n1"));
        let defaults = LoadCli::try_parse_from(["synod-load"]).unwrap();
        assert_eq!(
            (defaults.clients, defaults.value_bytes, defaults.path.as_str()),
            (32, 64, "/app/log/private")
        );
        for bad in [
            &["synod-load", "--clients", "0"][..],
            &["synod-load", "--keys", "0"],
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
}
