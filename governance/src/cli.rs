//! The command line of `synod-gov`, in the library so it can be tested in-process.
//!
//! Connection options are the `synod` CLI's ([`synod_client::cli::NetworkArgs`]: `--network`, `--node`,
//! `--url`, `--service-cert`), but the identity is a member's (`--member NAME` from network.json, or
//! `--member-cert PEM --member-key PEM`) and it signs requests rather than authenticating TLS.
//!
//! Exit codes: 0 success, 1 failure (an error answer from the node, a bad file, any error), 2 bad usage (clap).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{ArgGroup, Args, Parser, Subcommand};
use serde_json::{json, Value};
use synod_client::cli::{read, NetworkArgs};
use synod_client::{Client, KeyFiles, Network};

use crate::client::{self as gov, GovClient, ProposalInfo};
use crate::envelope::{self, KeyKind, MemberKey, MsgType};

pub use synod_client::cli::DEFAULT_NETWORK;

/// How to reach the network ([`NetworkArgs`], with help worded for members) and whom to sign as.
#[derive(Clone, Debug, Args)]
#[command(
    mut_arg("network", |a| a.help("network.json describing the nodes, the service certificate and the members")),
    mut_arg("node", |a| a.help(
        "Node of network.json to talk to first (default: the first; the others are tried if it is down)"
    )),
    mut_arg("url", |a| a.help("Node URL (https://host:port), instead of the nodes of network.json")),
    mut_arg("service_cert", |a| a.help("Service certificate to pin (default: network.json's)")),
)]
pub struct GovConnectArgs {
    /// Where the network is.
    #[command(flatten)]
    pub net: NetworkArgs,
    /// Member of network.json to sign as (default: the first member)
    #[arg(long, global = true, value_name = "NAME", conflicts_with = "member_cert")]
    pub member: Option<String>,
    /// Member certificate to sign as, instead of a member of network.json
    #[arg(long, global = true, value_name = "PEM", requires = "member_key")]
    pub member_cert: Option<PathBuf>,
    /// Private key of --member-cert (PKCS#8 PEM, Ed25519 or P-384; or a SEC1 P-384 "EC PRIVATE KEY")
    #[arg(long, global = true, value_name = "PEM", requires = "member_cert")]
    pub member_key: Option<PathBuf>,
    /// Bound on each request, and on retrying an unavailable network, in milliseconds
    #[arg(long, global = true, default_value_t = 30_000, value_name = "MS")]
    pub timeout_ms: u64,
}

impl GovConnectArgs {
    /// The request timeout and retry budget.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    fn client_for(&self, network: Option<&Network>) -> anyhow::Result<Client> {
        let (urls, service_cert) = self.net.urls_and_service_cert(network)?;
        Ok(Client::with_urls(&urls, &service_cert, None)
            .context("cannot set up the HTTPS client")?
            .with_request_timeout(self.timeout()))
    }

    /// An HTTPS client of the selected node(s), without identity: enough for reads.
    pub fn client(&self) -> anyhow::Result<Client> {
        self.client_for(self.net.network()?.as_ref())
    }

    fn member_pems_for(&self, network: Option<&Network>) -> anyhow::Result<(String, String)> {
        match (&self.member_cert, &self.member_key, network) {
            (Some(cert), Some(key), _) => Ok((read(cert, "member certificate")?, read(key, "member key")?)),
            (Some(_), None, _) | (None, Some(_), _) => bail!("--member-cert and --member-key go together"),
            (None, None, Some(net)) => {
                let member = net.member(self.member.as_deref())?.ok_or_else(|| {
                    anyhow!(
                        "{} lists no members: pass --member-cert PEM --member-key PEM",
                        self.net.network.display()
                    )
                })?;
                member
                    .read_pems()
                    .with_context(|| format!("cannot read member {}'s certificate and key", member.name))
            }
            (None, None, None) => {
                bail!("no member identity: pass --member-cert PEM --member-key PEM (or a network.json)")
            }
        }
    }

    /// The member's certificate and key PEM.
    pub fn member_pems(&self) -> anyhow::Result<(String, String)> {
        if self.member_cert.is_some() && self.member_key.is_some() {
            // No network.json needed (offline signing).
            return self.member_pems_for(None);
        }
        self.member_pems_for(self.net.network()?.as_ref())
    }

    /// A governance client signing as the selected member.
    pub fn gov_client(&self) -> anyhow::Result<GovClient> {
        let network = self.net.network()?;
        let client = self.client_for(network.as_ref())?;
        let (cert_pem, key_pem) = self.member_pems_for(network.as_ref())?;
        Ok(GovClient::new(client, &cert_pem, &key_pem)
            .context("cannot use the member's certificate and key")?
            .with_retry_budget(self.timeout()))
    }
}

/// `synod-gov`: the members' governance CLI.
#[derive(Debug, Parser)]
#[command(
    name = "synod-gov",
    version,
    about = "Members' governance CLI: propose, vote, withdraw, list and show proposals, acknowledge the state \
             digest, generate member identities. Requests are COSE Sign1 signed with the member's key (CCF's \
             governance API, api-version 2024-07-01).",
    propagate_version = true
)]
pub struct Cli {
    /// Where the network is and whom to sign as.
    #[command(flatten)]
    pub connect: GovConnectArgs,
    /// Print machine-readable JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `synod-gov` commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a proposal: from a file with {"actions": [...]}, one --action, or --set-js-app DIR
    Propose(ProposeArgs),
    /// Vote on a proposal: --accept, --reject, or a ballot script
    Vote(VoteArgs),
    /// Withdraw one of your own open proposals
    Withdraw {
        /// Proposal id
        proposal_id: String,
    },
    /// List every proposal: id, proposer, state, ballots
    List,
    /// Show a proposal and its actions
    Show {
        /// Proposal id
        proposal_id: String,
    },
    /// Update, then acknowledge this member's state digest (a newly added member becomes Active)
    Ack,
    /// Generate a member identity: <NAME>_cert.pem and <NAME>_privk.pem (ECDSA P-384 unless --curve says
    /// otherwise), and its RSA encryption key pair <NAME>_enc_pubk.pem / <NAME>_enc_privk.pem (recovery shares)
    Keygen {
        /// Identity name (certificate common name and file prefix)
        #[arg(long)]
        name: String,
        /// Directory to write the files to (created if needed; existing files are never overwritten)
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// Key curve: secp384r1 (CCF's default for members), secp256r1 or ed25519
        #[arg(long, default_value = "secp384r1")]
        curve: synod_core::keys::Curve,
        /// Same as --curve secp384r1 (kept for scripts written when Ed25519 was the default)
        #[arg(long, hide = true, conflicts_with = "curve")]
        p384: bool,
        /// No encryption key pair: the member will not be a recovery member
        #[arg(long)]
        no_encryption_key: bool,
    },
    /// Disaster recovery: fetch, decrypt and submit this member's recovery share
    #[command(subcommand)]
    Recovery(RecoveryCommand),
    /// Show the service: its info, members and nodes
    Info,
    /// Sign a governance request offline and write the COSE Sign1 (e.g. for curl -H 'content-type: application/cose')
    Sign(SignArgs),
    /// Check a signed governance request offline against a member certificate and print its headers
    Verify {
        /// The COSE Sign1 file
        file: PathBuf,
        /// The member certificate it should be signed by
        #[arg(long, value_name = "PEM")]
        cert: PathBuf,
    },
}

/// `synod-gov recovery ...`.
#[derive(Debug, Subcommand)]
pub enum RecoveryCommand {
    /// Fetch this member's encrypted recovery share, decrypt it locally with the member's encryption private key
    /// and submit it to the recovering service (CCF's submit_recovery_share.sh)
    Share {
        /// The member's RSA encryption private key (PEM; it never leaves this machine)
        #[arg(long, value_name = "PEM")]
        encryption_key: PathBuf,
    },
}

/// `synod-gov propose` arguments.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("proposal").required(true).args(["file", "action", "set_js_app"])))]
pub struct ProposeArgs {
    /// JSON file with the proposal, {"actions": [{"name": ..., "args": {...}}, ...]} (sent as is)
    #[arg(value_name = "ACTIONS.json")]
    pub file: Option<PathBuf>,
    /// Propose this one action (with --args)
    #[arg(long, value_name = "NAME")]
    pub action: Option<String>,
    /// The action's arguments: JSON text, or @FILE to read them from a file
    #[arg(long, value_name = "JSON|@FILE", requires = "action", default_value = "{}")]
    pub args: String,
    /// Propose set_js_app with the application in DIR (DIR/app.json and the .js modules under DIR/src)
    #[arg(long, value_name = "DIR")]
    pub set_js_app: Option<PathBuf>,
}

/// `synod-gov vote` arguments.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("ballot_kind").required(true).args(["accept", "reject", "ballot"])))]
pub struct VoteArgs {
    /// Proposal id
    pub proposal_id: String,
    /// Vote for the proposal
    #[arg(long)]
    pub accept: bool,
    /// Vote against the proposal
    #[arg(long)]
    pub reject: bool,
    /// Submit this ballot: a JavaScript module exporting vote(proposal, proposerId) returning true or false
    #[arg(long, value_name = "FILE.js")]
    pub ballot: Option<PathBuf>,
}

/// `synod-gov sign` arguments.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Message type: proposal, ballot, withdrawal, state_digest, ack, encrypted_recovery_share, recovery_share
    #[arg(long = "type", value_name = "TYPE")]
    pub msg_type: MsgType,
    /// Proposal id (ballots and withdrawals)
    #[arg(long, value_name = "ID")]
    pub proposal_id: Option<String>,
    /// created_at, seconds since the Unix epoch (default: now)
    #[arg(long, value_name = "SECS")]
    pub created_at: Option<u64>,
    /// Payload file (default: an empty payload)
    #[arg(long, value_name = "FILE")]
    pub payload: Option<PathBuf>,
    /// File to write the COSE Sign1 to
    #[arg(short, long, value_name = "FILE")]
    pub out: PathBuf,
}

fn println(out: &mut (dyn Write + Send), line: impl std::fmt::Display) -> anyhow::Result<()> {
    writeln!(out, "{line}").context("cannot write the output")
}

fn print_json(out: &mut (dyn Write + Send), value: &Value) -> anyhow::Result<()> {
    println(out, serde_json::to_string_pretty(value)?)
}

fn print_proposal(out: &mut (dyn Write + Send), info: &ProposalInfo) -> anyhow::Result<()> {
    println(out, format!("proposal_id   {}", info.proposal_id))?;
    println(out, format!("proposer_id   {}", info.proposer_id))?;
    println(out, format!("state         {}", info.state))?;
    println(out, format!("ballot_count  {}", info.ballot_count))?;
    if let Value::Object(extra) = &info.extra {
        for (key, value) in extra {
            println(out, format!("{key:<13} {value}"))?;
        }
    }
    Ok(())
}

/// Renders rows as a left-aligned table with a header line.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(rows.iter().map(|r| line(r.iter().map(String::as_str).collect())));
    out.join("\n")
}

/// Reads `--args`: JSON text, or `@FILE`.
fn parse_args_json(args: &str) -> anyhow::Result<Value> {
    let (text, what) = match args.strip_prefix('@') {
        Some(file) => (
            read(Path::new(file), "--args file")?,
            format!("--args file {file}"),
        ),
        None => (args.to_string(), "--args".to_string()),
    };
    serde_json::from_str(&text).with_context(|| format!("{what} is not valid JSON"))
}

/// The proposal JSON bytes a `propose` invocation sends.
pub fn proposal_payload(args: &ProposeArgs) -> anyhow::Result<Vec<u8>> {
    if let Some(file) = &args.file {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read the proposal {}", file.display()))?;
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("the proposal {} is not valid JSON", file.display()))?;
        if !value.get("actions").is_some_and(Value::is_array) {
            bail!(
                "the proposal {} has no \"actions\" array: expected {{\"actions\": [{{\"name\": ..., \"args\": {{...}}}}]}}",
                file.display()
            );
        }
        return Ok(bytes);
    }
    let action = if let Some(dir) = &args.set_js_app {
        crate::bundle::set_js_app_action(dir)
            .with_context(|| format!("cannot build the application bundle of {}", dir.display()))?
    } else if let Some(name) = &args.action {
        json!({"name": name, "args": parse_args_json(&args.args)?})
    } else {
        bail!("nothing to propose: give ACTIONS.json, --action NAME or --set-js-app DIR");
    };
    Ok(serde_json::to_vec(&json!({ "actions": [action] }))?)
}

/// Generates a member identity into `out_dir/<name>_cert.pem` and `out_dir/<name>_privk.pem` (mode 0600),
/// refusing to overwrite either file.
pub fn keygen(name: &str, kind: KeyKind, out_dir: &Path) -> anyhow::Result<KeyFiles> {
    synod_client::keygen_with(name, out_dir, |name| Ok(envelope::generate_member(name, kind)?))
}

fn field(value: &Value, names: &[&str]) -> String {
    names
        .iter()
        .find_map(|n| value.get(*n))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| "-".into())
}

/// Writes an RSA encryption key pair to `out_dir/<name>_enc_pubk.pem` and `<name>_enc_privk.pem` (mode 0600),
/// CCF's file names, refusing to overwrite either.
pub fn encryption_keygen(name: &str, out_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let public = out_dir.join(format!("{name}_enc_pubk.pem"));
    let private = out_dir.join(format!("{name}_enc_privk.pem"));
    if let Some(existing) = [&public, &private]
        .into_iter()
        .find(|p| p.symlink_metadata().is_ok())
    {
        bail!("{} exists: not overwriting it", existing.display());
    }
    let pair = synod_core::recovery::generate_encryption_key().context("generating the encryption key")?;
    synod_client::keys::create_new(&private, pair.private_pem.as_bytes(), 0o600)?;
    if let Err(e) = synod_client::keys::create_new(&public, pair.public_pem.as_bytes(), 0o644) {
        // Do not leave a private key without its public half behind.
        let _ = std::fs::remove_file(&private);
        return Err(e.into());
    }
    Ok((public, private))
}

/// Prints a `{"value": [...]}` listing as a table of the given (header, field names) columns, or as JSON if it has
/// another shape.
fn print_listing(
    out: &mut (dyn Write + Send),
    title: &str,
    listing: &Value,
    columns: &[(&str, &[&str])],
) -> anyhow::Result<()> {
    println(out, format!("{title}:"))?;
    let Some(items) = listing.get("value").and_then(Value::as_array) else {
        return print_json(out, listing);
    };
    let header: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|(_, names)| field(item, names)).collect())
        .collect();
    println(out, table(&header, &rows))
}

fn print_service_info(out: &mut (dyn Write + Send), info: &Value) -> anyhow::Result<()> {
    println(out, "service:")?;
    let Value::Object(map) = info else {
        return print_json(out, info);
    };
    for (key, value) in map {
        let shown = match value {
            Value::String(s) if s.contains('\n') => {
                format!("({} lines; --json prints it)", s.lines().count())
            }
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println(out, format!("  {key}: {shown}"))?;
    }
    Ok(())
}

async fn run_info(cli: &Cli, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let client = cli.connect.client()?;
    let budget = cli.connect.timeout();
    let info = gov::gov_get_json(&client, "/gov/service/info", budget)
        .await
        .context("GET /gov/service/info")?;
    let members = gov::gov_get_json(&client, "/gov/service/members", budget)
        .await
        .context("GET /gov/service/members")?;
    let nodes = gov::gov_get_json(&client, "/gov/service/nodes", budget)
        .await
        .context("GET /gov/service/nodes")?;
    if cli.json {
        return print_json(out, &json!({"service": info, "members": members, "nodes": nodes}));
    }
    print_service_info(out, &info)?;
    print_listing(
        out,
        "members",
        &members,
        &[("MEMBER ID", &["memberId"]), ("STATUS", &["status"])],
    )?;
    print_listing(
        out,
        "nodes",
        &nodes,
        &[
            ("NODE ID", &["nodeId"]),
            ("STATUS", &["status"]),
            ("ADDRESS", &["rpcAddress", "address"]),
        ],
    )
}

fn report_proposal(cli: &Cli, out: &mut (dyn Write + Send), info: &ProposalInfo) -> anyhow::Result<()> {
    if cli.json {
        print_json(out, &info.to_json())
    } else {
        print_proposal(out, info)
    }
}

/// Runs a `synod-gov` command line, writing its output to `out`.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    match &cli.command {
        Command::Propose(args) => {
            let payload = proposal_payload(args)?;
            let gov = cli.connect.gov_client()?;
            let info = gov
                .propose_bytes(&payload)
                .await
                .context("cannot create the proposal")?;
            report_proposal(&cli, out, &info)
        }
        Command::Vote(args) => run_vote(&cli, out, args).await,
        Command::Withdraw { proposal_id } => {
            let gov = cli.connect.gov_client()?;
            let info = gov
                .withdraw(proposal_id)
                .await
                .with_context(|| format!("cannot withdraw proposal {proposal_id}"))?;
            report_proposal(&cli, out, &info)
        }
        Command::List => run_list(&cli, out).await,
        Command::Show { proposal_id } => run_show(&cli, out, proposal_id).await,
        Command::Ack => run_ack(&cli, out).await,
        Command::Keygen {
            name,
            out: dir,
            curve,
            p384: _,
            no_encryption_key,
        } => run_keygen(&cli, out, name, dir, *curve, *no_encryption_key),
        Command::Recovery(RecoveryCommand::Share { encryption_key }) => {
            run_recovery_share(&cli, out, encryption_key).await
        }
        Command::Info => run_info(&cli, out).await,
        Command::Sign(args) => run_sign(&cli, out, args),
        Command::Verify { file, cert } => run_verify(&cli, out, file, cert),
    }
}

/// `synod-gov vote`: a ballot from a file, or the accept/reject ballot.
async fn run_vote(cli: &Cli, out: &mut (dyn Write + Send), args: &VoteArgs) -> anyhow::Result<()> {
    let gov = cli.connect.gov_client()?;
    let what = format!("cannot vote on proposal {}", args.proposal_id);
    let info = match &args.ballot {
        Some(file) => {
            let ballot = read(file, "ballot")?;
            gov.vote_with_ballot(&args.proposal_id, &ballot).await
        }
        None => gov.vote(&args.proposal_id, args.accept).await,
    }
    .context(what)?;
    report_proposal(cli, out, &info)
}

/// `synod-gov list`: every proposal, a line each.
async fn run_list(cli: &Cli, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let client = cli.connect.client()?;
    let proposals = gov::list_proposals(&client, cli.connect.timeout())
        .await
        .context("cannot list the proposals")?;
    if cli.json {
        let all: Vec<Value> = proposals.iter().map(ProposalInfo::to_json).collect();
        return print_json(out, &Value::Array(all));
    }
    if proposals.is_empty() {
        return println(out, "no proposals");
    }
    let rows: Vec<Vec<String>> = proposals
        .iter()
        .map(|p| {
            vec![
                p.proposal_id.clone(),
                p.proposer_id.clone(),
                p.state.to_string(),
                p.ballot_count.to_string(),
            ]
        })
        .collect();
    println(
        out,
        table(&["PROPOSAL ID", "PROPOSER", "STATE", "BALLOTS"], &rows),
    )
}

/// `synod-gov show`: one proposal with its actions.
async fn run_show(cli: &Cli, out: &mut (dyn Write + Send), proposal_id: &str) -> anyhow::Result<()> {
    let client = cli.connect.client()?;
    let budget = cli.connect.timeout();
    let info = gov::show_proposal(&client, proposal_id, budget)
        .await
        .with_context(|| format!("cannot read proposal {proposal_id}"))?;
    let actions = gov::proposal_actions(&client, proposal_id, budget)
        .await
        .with_context(|| format!("cannot read the actions of proposal {proposal_id}"))?;
    if cli.json {
        return print_json(out, &json!({"proposal": info.to_json(), "actions": actions}));
    }
    print_proposal(out, &info)?;
    println(out, "actions:")?;
    print_json(out, &actions)
}

/// `synod-gov ack`: acknowledges the state digest, which makes an accepted member active.
async fn run_ack(cli: &Cli, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let gov = cli.connect.gov_client()?;
    let digest = gov
        .ack_state_digest()
        .await
        .context("cannot acknowledge the state digest")?;
    if cli.json {
        print_json(out, &json!({"member_id": gov.member_id(), "digest": digest}))
    } else {
        println(
            out,
            format!("member {} acknowledged state digest {digest}", gov.member_id()),
        )
    }
}

/// `synod-gov keygen`: a member's signing key and certificate, and its recovery encryption key unless asked not to.
fn run_keygen(
    cli: &Cli,
    out: &mut (dyn Write + Send),
    name: &str,
    dir: &Path,
    curve: synod_core::keys::Curve,
    no_encryption_key: bool,
) -> anyhow::Result<()> {
    let kind = KeyKind::of_curve(curve);
    let files = keygen(name, kind, dir)?;
    let encryption = if no_encryption_key {
        None
    } else {
        Some(encryption_keygen(name, dir)?)
    };
    if cli.json {
        print_json(
            out,
            &json!({"cert": files.cert, "key": files.key, "member_id": files.id, "key_type": kind.to_string(),
                    "encryption_public_key": encryption.as_ref().map(|e| &e.0),
                    "encryption_private_key": encryption.as_ref().map(|e| &e.1)}),
        )
    } else {
        println(
            out,
            format!("wrote {} and {}", files.cert.display(), files.key.display()),
        )?;
        if let Some((public, private)) = &encryption {
            println(
                out,
                format!(
                    "wrote {} and {} (RSA-2048, recovery shares)",
                    public.display(),
                    private.display()
                ),
            )?;
        }
        println(out, format!("member id {} ({kind})", files.id))
    }
}

/// `synod-gov recovery share`: decrypts this member's share here and submits it to the recovering service.
async fn run_recovery_share(
    cli: &Cli,
    out: &mut (dyn Write + Send),
    encryption_key: &Path,
) -> anyhow::Result<()> {
    let pem = std::fs::read_to_string(encryption_key)
        .with_context(|| format!("cannot read {}", encryption_key.display()))?;
    let key = synod_core::recovery::EncryptionPrivateKey::from_pem(&pem).with_context(|| {
        format!(
            "{} is not an RSA encryption private key",
            encryption_key.display()
        )
    })?;
    let gov = cli.connect.gov_client()?;
    let answer = gov
        .recover_with(&key)
        .await
        .context("cannot submit this member's recovery share")?;
    if cli.json {
        print_json(out, &answer)
    } else {
        println(out, field(&answer, &["message"]))
    }
}

/// `synod-gov sign`: a COSE Sign1 request signed offline.
fn run_sign(cli: &Cli, out: &mut (dyn Write + Send), args: &SignArgs) -> anyhow::Result<()> {
    let (cert_pem, key_pem) = cli.connect.member_pems()?;
    let key = MemberKey::from_pem(&key_pem).context("the member key")?;
    let der = synod_core::cert::pem_to_der(&cert_pem).context("the member certificate")?;
    let payload = match &args.payload {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => Vec::new(),
    };
    let created_at = args.created_at.unwrap_or_else(gov::now_secs);
    let bytes = envelope::sign(
        &key,
        &der,
        args.msg_type,
        created_at,
        args.proposal_id.as_deref(),
        &payload,
    )?;
    std::fs::write(&args.out, &bytes).with_context(|| format!("cannot write {}", args.out.display()))?;
    if cli.json {
        print_json(
            out,
            &json!({"out": args.out, "bytes": bytes.len(), "member_id": envelope::member_id(&der)}),
        )
    } else {
        println(
            out,
            format!(
                "wrote {} ({} bytes, {} signed by {})",
                args.out.display(),
                bytes.len(),
                args.msg_type,
                envelope::member_id(&der)
            ),
        )
    }
}

/// `synod-gov verify`: checks a signed request against a member certificate, offline.
fn run_verify(cli: &Cli, out: &mut (dyn Write + Send), file: &Path, cert: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let cert_pem = read(cert, "member certificate")?;
    let request = envelope::verify_pem(&bytes, &cert_pem)
        .with_context(|| format!("{} does not verify", file.display()))?;
    let doc = json!({
        "valid": true,
        "msg_type": request.msg_type.as_str(),
        "created_at": request.created_at,
        "proposal_id": request.proposal_id,
        "kid": request.kid,
        "alg": request.alg.as_str(),
        "payload": String::from_utf8_lossy(&request.payload),
    });
    if cli.json {
        print_json(out, &doc)
    } else {
        println(
            out,
            format!(
                "valid {} signed by {} ({}), created_at {}{}",
                request.msg_type,
                request.kid,
                request.alg.as_str(),
                request.created_at,
                request
                    .proposal_id
                    .as_deref()
                    .map(|p| format!(", proposal {p}"))
                    .unwrap_or_default()
            ),
        )
    }
}

impl clap::ValueEnum for MsgType {
    fn value_variants<'a>() -> &'a [Self] {
        &MsgType::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("synod-gov").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn connection_and_member_options() {
        let cli = parse(&[
            "--network",
            "/w/network.json",
            "--node",
            "n1",
            "--member",
            "member1",
            "list",
        ])
        .unwrap();
        assert_eq!(cli.connect.net.network, PathBuf::from("/w/network.json"));
        assert_eq!(cli.connect.net.node.as_deref(), Some("n1"));
        assert_eq!(cli.connect.member.as_deref(), Some("member1"));
        assert!(matches!(cli.command, Command::List));
        // Global options go after the subcommand too.
        let cli = parse(&["show", "abc", "--json", "--url", "https://127.0.0.1:8000"]).unwrap();
        assert!(cli.json);
        assert!(matches!(&cli.command, Command::Show { proposal_id } if proposal_id == "abc"));
        assert!(
            parse(&["--member-cert", "c.pem", "ack"]).is_err(),
            "cert needs key"
        );
        assert!(
            parse(&["--member-key", "k.pem", "ack"]).is_err(),
            "key needs cert"
        );
        let cli = parse(&["--member-cert", "c.pem", "--member-key", "k.pem", "ack"]).unwrap();
        assert_eq!(cli.connect.member_key, Some(PathBuf::from("k.pem")));
        assert!(parse(&["--member", "m", "--member-cert", "c", "--member-key", "k", "ack"]).is_err());
        assert!(parse(&["--node", "n0", "--url", "https://x:1", "list"]).is_err());
        assert_eq!(
            parse(&["--timeout-ms", "500", "info"]).unwrap().connect.timeout(),
            Duration::from_millis(500)
        );
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn propose_takes_exactly_one_source() {
        let cli = parse(&["propose", "p.json"]).unwrap();
        let Command::Propose(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.file, Some(PathBuf::from("p.json")));
        let cli = parse(&["propose", "--action", "set_member", "--args", r#"{"cert": "x"}"#]).unwrap();
        let Command::Propose(args) = cli.command else {
            panic!()
        };
        assert_eq!(
            serde_json::from_slice::<Value>(&proposal_payload(&args).unwrap()).unwrap(),
            json!({"actions": [{"name": "set_member", "args": {"cert": "x"}}]})
        );
        let cli = parse(&["propose", "--action", "transition_service_to_open"]).unwrap();
        let Command::Propose(args) = cli.command else {
            panic!()
        };
        assert_eq!(
            serde_json::from_slice::<Value>(&proposal_payload(&args).unwrap()).unwrap(),
            json!({"actions": [{"name": "transition_service_to_open", "args": {}}]})
        );
        assert!(parse(&["propose"]).is_err());
        assert!(parse(&["propose", "p.json", "--action", "a"]).is_err());
        assert!(parse(&["propose", "--set-js-app", "app", "--action", "a"]).is_err());
        assert!(
            parse(&["propose", "--args", "{}"]).is_err(),
            "--args needs --action"
        );
        let cli = parse(&["propose", "--action", "a", "--args", "{nope"]).unwrap();
        let Command::Propose(args) = cli.command else {
            panic!()
        };
        assert!(proposal_payload(&args)
            .unwrap_err()
            .to_string()
            .contains("--args"));
    }

    #[test]
    fn propose_reads_files_and_apps() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        let text = r#"{"actions": [{"name": "set_constitution", "args": {"constitution": "..."}}]}"#;
        std::fs::write(&file, text).unwrap();
        let cli = parse(&["propose", file.to_str().unwrap()]).unwrap();
        let Command::Propose(args) = cli.command else {
            panic!()
        };
        assert_eq!(proposal_payload(&args).unwrap(), text.as_bytes(), "sent as is");
        std::fs::write(&file, r#"{"action": []}"#).unwrap();
        assert!(proposal_payload(&args)
            .unwrap_err()
            .to_string()
            .contains("actions"));

        let args_file = dir.path().join("args.json");
        std::fs::write(&args_file, r#"{"node_id": "n"}"#).unwrap();
        let at = format!("@{}", args_file.display());
        let cli = parse(&["propose", "--action", "remove_node", "--args", &at]).unwrap();
        let Command::Propose(args) = cli.command else {
            panic!()
        };
        let sent: Value = serde_json::from_slice(&proposal_payload(&args).unwrap()).unwrap();
        assert_eq!(sent["actions"][0]["args"], json!({"node_id": "n"}));

        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("src")).unwrap();
        std::fs::write(app.join("app.json"), r#"{"endpoints": {}}"#).unwrap();
        std::fs::write(app.join("src/app.js"), "export function f() {}").unwrap();
        let cli = parse(&["propose", "--set-js-app", app.to_str().unwrap()]).unwrap();
        let Command::Propose(args) = cli.command else {
            panic!()
        };
        let sent: Value = serde_json::from_slice(&proposal_payload(&args).unwrap()).unwrap();
        assert_eq!(
            sent,
            json!({"actions": [{"name": "set_js_app", "args": {"bundle": {
                "metadata": {"endpoints": {}},
                "modules": [{"name": "app.js", "module": "export function f() {}"}]
            }}}]})
        );
    }

    #[test]
    fn vote_needs_exactly_one_ballot() {
        let cli = parse(&["vote", "abc", "--accept"]).unwrap();
        let Command::Vote(args) = cli.command else {
            panic!()
        };
        assert!(args.accept && !args.reject && args.ballot.is_none());
        let cli = parse(&["vote", "abc", "--ballot", "b.js"]).unwrap();
        let Command::Vote(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.ballot, Some(PathBuf::from("b.js")));
        assert!(parse(&["vote", "abc"]).is_err());
        assert!(parse(&["vote", "abc", "--accept", "--reject"]).is_err());
        assert!(parse(&["vote", "--accept"]).is_err());
        assert!(parse(&["withdraw"]).is_err());
        assert!(matches!(
            parse(&["withdraw", "p1"]).unwrap().command,
            Command::Withdraw { proposal_id } if proposal_id == "p1"
        ));
    }

    #[test]
    fn sign_and_verify_commands_parse() {
        let cli = parse(&[
            "sign",
            "--type",
            "ballot",
            "--proposal-id",
            "p",
            "--out",
            "b.cose",
        ])
        .unwrap();
        let Command::Sign(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.msg_type, MsgType::Ballot);
        assert!(parse(&["sign", "--type", "vote", "--out", "x"]).is_err());
        assert!(parse(&["verify", "x.cose"]).is_err(), "needs --cert");
    }

    #[tokio::test]
    async fn keygen_sign_and_verify_offline() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let mut out = Vec::new();
        run(
            parse(&["keygen", "--name", "member3", "--out", &d, "--p384"]).unwrap(),
            &mut out,
        )
        .await
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("member3_cert.pem") && text.contains("ECDSA P-384"),
            "{text}"
        );
        let cert = dir.path().join("member3_cert.pem");
        let key = dir.path().join("member3_privk.pem");
        let cert_pem = std::fs::read_to_string(&cert).unwrap();
        let member = MemberKey::from_pem(&std::fs::read_to_string(&key).unwrap()).unwrap();
        assert_eq!(member.kind(), KeyKind::P384);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        // Never overwritten.
        let err = run(
            parse(&["keygen", "--name", "member3", "--out", &d]).unwrap(),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), cert_pem);
        assert!(keygen("../evil", KeyKind::Ed25519, dir.path()).is_err());

        // Sign offline with --member-cert/--member-key (no network.json needed), then verify.
        let payload = dir.path().join("ballot.json");
        std::fs::write(
            &payload,
            br#"{"ballot": "export function vote() { return true }"}"#,
        )
        .unwrap();
        let signed = dir.path().join("ballot.cose");
        let (c, k, p, s) = (
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            payload.to_str().unwrap(),
            signed.to_str().unwrap(),
        );
        let args = [
            "--member-cert",
            c,
            "--member-key",
            k,
            "--network",
            "/nonexistent/network.json",
            "sign",
            "--type",
            "ballot",
            "--proposal-id",
            "p1",
            "--created-at",
            "1700000000",
            "--payload",
            p,
            "--out",
            s,
        ];
        run(parse(&args).unwrap(), &mut Vec::new()).await.unwrap();
        let request = envelope::verify_pem(&std::fs::read(&signed).unwrap(), &cert_pem).unwrap();
        assert_eq!(request.created_at, 1_700_000_000);
        assert_eq!(request.proposal_id.as_deref(), Some("p1"));
        let mut out = Vec::new();
        run(parse(&["verify", s, "--cert", c, "--json"]).unwrap(), &mut out)
            .await
            .unwrap();
        let doc: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["msg_type"], "ballot");
        assert_eq!(doc["alg"], "ES384");
        // Another member's certificate does not verify it.
        run(
            parse(&["keygen", "--name", "other", "--out", &d]).unwrap(),
            &mut Vec::new(),
        )
        .await
        .unwrap();
        let other = dir.path().join("other_cert.pem");
        let err = run(
            parse(&["verify", s, "--cert", other.to_str().unwrap()]).unwrap(),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("kid"), "{err:#}");
        // A ballot without a proposal id is refused before anything is written.
        let args = [
            "--member-cert",
            c,
            "--member-key",
            k,
            "sign",
            "--type",
            "ballot",
            "--out",
            s,
        ];
        let err = run(parse(&args).unwrap(), &mut Vec::new()).await.unwrap_err();
        assert!(format!("{err:#}").contains("proposal_id"), "{err:#}");
    }

    #[tokio::test]
    async fn members_come_from_network_json() {
        let dir = tempfile::tempdir().unwrap();
        let service = synod_core::cert::generate_self_signed("service", true).unwrap();
        std::fs::write(dir.path().join("service_cert.pem"), &service.cert_pem).unwrap();
        keygen("member0", KeyKind::Ed25519, dir.path()).unwrap();
        let network = json!({
            "nodes": [{"name": "n0", "url": "https://127.0.0.1:1"}],
            "service_cert": "service_cert.pem",
            "members": [{"name": "member0", "cert": "member0_cert.pem", "key": "member0_privk.pem"}]
        });
        let path = dir.path().join("network.json");
        std::fs::write(&path, network.to_string()).unwrap();
        let p = path.to_str().unwrap();
        let gov = parse(&["--network", p, "ack"])
            .unwrap()
            .connect
            .gov_client()
            .unwrap();
        let cert_pem = std::fs::read_to_string(dir.path().join("member0_cert.pem")).unwrap();
        assert_eq!(gov.cert_pem(), cert_pem);
        let err = parse(&["--network", p, "--member", "member9", "ack"])
            .unwrap()
            .connect
            .gov_client()
            .unwrap_err();
        assert!(format!("{err:#}").contains("member9"), "{err:#}");
        let err = parse(&["--network", "/nonexistent.json", "ack"])
            .unwrap()
            .connect
            .gov_client()
            .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent.json"), "{err:#}");

        // An unreachable node is a clear error, within the timeout.
        let err = run(
            parse(&["--network", p, "--timeout-ms", "300", "list"]).unwrap(),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("cannot connect"), "{err:#}");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "STATE"],
            &[
                vec!["abc".into(), "Open".into()],
                vec!["a".into(), "Accepted".into()],
            ],
        );
        assert_eq!(t, "ID   STATE\nabc  Open\na    Accepted");
    }
}
