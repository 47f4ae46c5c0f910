//! Harness for end-to-end tests: starts real `synod-node` processes on 127.0.0.1 in temporary directories, talks
//! to them with the real client library and runs the real `synod` CLI. Every process is killed when its handle
//! drops, and every test bounds its own duration with [`bounded`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use synod_client::{Body, Client, Method, TxId};
use synod_governance::client::{GovClient, ProposalState};

/// Directory holding the workspace's built binaries (the test executable lives in `<dir>/deps/`).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SYNOD_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// Path of a workspace binary; fails with a hint when it was not built.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// Small chunks, frequent signatures (a chunk ends at a signature) and snapshots, so that a few hundred writes span
/// many chunk files and snapshots.
pub const SMALL_LEDGER: [&str; 6] = [
    "--ledger-chunk-bytes",
    "20000",
    "--snapshot-tx-interval",
    "50",
    "--sig-tx-interval",
    "10",
];

/// Runs `fut` and fails the test if it takes longer than `secs`.
pub async fn bounded<T>(secs: u64, fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .with_context(|| format!("test did not finish within {secs} s"))?
}

/// A user or member identity written to files.
#[derive(Clone, Debug)]
pub struct IdentityFiles {
    /// Certificate PEM file.
    pub cert: PathBuf,
    /// Private key PEM file.
    pub key: PathBuf,
    /// Certificate PEM.
    pub cert_pem: String,
    /// Key PEM.
    pub key_pem: String,
}

impl IdentityFiles {
    /// Generates a self-signed identity (P-384, the default curve) named `name` into `dir`, as `synod keygen` does.
    pub fn generate(dir: &Path, name: &str) -> anyhow::Result<IdentityFiles> {
        IdentityFiles::generate_on(dir, name, Default::default())
    }

    /// [`IdentityFiles::generate`] with a key on `curve`.
    pub fn generate_on(
        dir: &Path,
        name: &str,
        curve: synod_core::cert::Curve,
    ) -> anyhow::Result<IdentityFiles> {
        let files = synod_client::keygen(name, curve, dir)?;
        Ok(IdentityFiles {
            cert_pem: std::fs::read_to_string(&files.cert)?,
            key_pem: std::fs::read_to_string(&files.key)?,
            cert: files.cert,
            key: files.key,
        })
    }
}

/// A running (or stopped) `synod-node` process.
pub struct NodeProc {
    child: Option<Child>,
    /// Its data directory.
    pub dir: PathBuf,
    /// `host:port` it serves HTTPS on (kept across restarts).
    pub addr: String,
    /// `host:port` of its node-to-node channel (kept across restarts).
    pub node_addr: String,
    command: String,
    args: Vec<String>,
    log: PathBuf,
    /// Publishes its addresses as `localhost:PORT` (DNS names, as in Kubernetes) instead of IP addresses.
    names: bool,
}

/// A free port on 127.0.0.1 for a node to listen on.
///
/// A port the kernel picks (`bind` to port 0) comes from the ephemeral range, the same range every outgoing
/// connection takes its local port from: between releasing it here and the node binding it, one of the many
/// connections the parallel tests open may take it, and the node fails to start. Ports below that range are
/// never handed out implicitly, so they are taken from there, one process-wide counter keeping the tests of one
/// binary apart and a trial bind skipping ports another process holds.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let Some(ceiling) = ephemeral_low().filter(|low| *low > LOWEST + 1_000) else {
        return Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    };
    let span = ceiling - LOWEST;
    // Test binaries run one after another, each from its own offset, so a port a previous binary's node left
    // in TIME_WAIT is not the first one tried.
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = LOWEST + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port).context("port out of range")?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port between {LOWEST} and {ceiling}")
}

/// The first port of the kernel's ephemeral range, if it can be read.
fn ephemeral_low() -> Option<u32> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

impl NodeProc {
    /// Starts `synod-node start --data-dir DIR ARGS...` on fresh ports and waits until it listens.
    pub fn start(dir: &Path, args: &[String]) -> anyhow::Result<NodeProc> {
        NodeProc::spawn("start", dir, args)
    }

    /// Starts `synod-node COMMAND --data-dir DIR ARGS...` (`start` or `join`) on fresh ports.
    pub fn spawn(command: &str, dir: &Path, args: &[String]) -> anyhow::Result<NodeProc> {
        let mut node = NodeProc::spawn_detached(command, dir, args)?;
        node.wait_listening()?;
        Ok(node)
    }

    /// Like [`NodeProc::spawn`], without waiting for the node to listen (a joining node waits for its trust).
    pub fn spawn_detached(command: &str, dir: &Path, args: &[String]) -> anyhow::Result<NodeProc> {
        NodeProc::spawn_detached_named(command, dir, args, false)
    }

    /// Like [`NodeProc::spawn_detached`]; with `names`, the node publishes `localhost:PORT` addresses.
    pub fn spawn_detached_named(
        command: &str,
        dir: &Path,
        args: &[String],
        names: bool,
    ) -> anyhow::Result<NodeProc> {
        let mut node = NodeProc {
            names,
            child: None,
            dir: dir.to_path_buf(),
            addr: format!("127.0.0.1:{}", free_port()?),
            node_addr: format!("127.0.0.1:{}", free_port()?),
            command: command.to_string(),
            args: args.to_vec(),
            log: dir.with_extension("log"),
        };
        node.launch_detached()?;
        Ok(node)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        self.launch_detached()?;
        self.wait_listening()
    }

    fn launch_detached(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let addr_file = self.dir.join("rpc_address");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin("synod-node")?)
            .arg(&self.command)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--rpc-address", &self.addr, "--node-address", &self.node_addr])
            .args([
                "--node-name",
                self.dir.file_name().and_then(|n| n.to_str()).unwrap_or("node"),
            ])
            .args(&self.args)
            .args(self.published_args())
            .env(
                "RUST_LOG",
                std::env::var("SYNOD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning synod-node")?;
        self.child = Some(child);
        Ok(())
    }

    /// The address the node publishes for clients (recorded in the nodes table).
    pub fn published_addr(&self) -> String {
        match (self.names, self.addr.rsplit_once(':')) {
            (true, Some((_, port))) => format!("localhost:{port}"),
            _ => self.addr.clone(),
        }
    }

    fn published_args(&self) -> Vec<String> {
        let (Some((_, rpc)), Some((_, node)), true) = (
            self.addr.rsplit_once(':'),
            self.node_addr.rsplit_once(':'),
            self.names,
        ) else {
            return Vec::new();
        };
        vec![
            "--rpc-published-address".into(),
            format!("localhost:{rpc}"),
            "--node-published-address".into(),
            format!("localhost:{node}"),
        ]
    }

    /// Waits until the node writes its address (it listens).
    pub fn wait_listening(&mut self) -> anyhow::Result<()> {
        let addr_file = self.dir.join("rpc_address");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::fs::read_to_string(&addr_file).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "synod-node exited with {status} during start-up:\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("synod-node did not listen within 60 s:\n{}", self.log_tail(30))
    }

    /// The node's HTTPS URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The service certificate PEM the node wrote.
    pub fn service_cert_pem(&self) -> anyhow::Result<String> {
        std::fs::read_to_string(self.dir.join("service_cert.pem")).context("reading service_cert.pem")
    }

    /// A client for this node, authenticated as `user` if given.
    pub fn client(&self, user: Option<&IdentityFiles>) -> anyhow::Result<Client> {
        let identity = user.map(|u| (u.cert_pem.as_str(), u.key_pem.as_str()));
        Ok(Client::new(&self.url(), &self.service_cert_pem()?, identity)?)
    }

    /// `kill -9`: no chance to flush or sign anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit (SIGKILL after 20 s).
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!(
                        "synod-node exited with {status} on SIGTERM:\n{}",
                        self.log_tail(30)
                    );
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("synod-node did not stop within 20 s of SIGTERM")
    }

    /// Starts the node again on the same data directory, with the same arguments and addresses.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.launch()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the running process with `kill`.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("the node is not running")?;
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill -{signal} {pid}: {status}");
        Ok(())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last `n` lines of the node's log, backtraces left out (see [`tail_without_backtraces`]).
    pub fn log_tail(&self, n: usize) -> String {
        tail_without_backtraces(&std::fs::read_to_string(&self.log).unwrap_or_default(), n)
    }
}

/// The last `n` lines of `log` with backtraces' frames left out: with `RUST_BACKTRACE` set (as some CI runners
/// do) a failed start-up's last lines are all frames, and the error they follow is what tells.
pub fn tail_without_backtraces(log: &str, n: usize) -> String {
    let mut lines = Vec::new();
    let mut in_backtrace = false;
    for line in log.lines() {
        if line.eq_ignore_ascii_case("stack backtrace:") {
            in_backtrace = true;
            lines.push("[backtrace left out]");
        } else if in_backtrace && (line.is_empty() || line.starts_with(' ')) {
            continue;
        } else {
            in_backtrace = false;
            lines.push(line);
        }
    }
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the `synod` CLI with `args` and returns its output.
pub fn synod_cli(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(bin("synod")?)
        .args(args)
        .output()
        .context("running synod")
}

/// `synod ledger audit <ledger> --service-cert <cert>`: its output, whether it passed or not. An unsigned tail
/// fails it: this is the audit of a stopped node's ledger, which ends on a signature.
pub fn audit_ledger(ledger: &Path, service_cert: &Path) -> anyhow::Result<Output> {
    audit_ledger_args(ledger, service_cert, &[])
}

/// [`audit_ledger`] with more arguments, e.g. `--allow-unsigned-tail` for a running or crashed node's ledger.
pub fn audit_ledger_args(ledger: &Path, service_cert: &Path, extra: &[&str]) -> anyhow::Result<Output> {
    let (ledger, cert) = (ledger.display().to_string(), service_cert.display().to_string());
    let mut args = vec!["ledger", "audit", &ledger, "--service-cert", &cert];
    args.extend_from_slice(extra);
    synod_cli(&args)
}

/// Fails unless `ledger` audits clean with the `synod` CLI, every entry covered by a signature (a node stopped
/// with SIGTERM signs what it ordered before it exits).
pub fn ensure_audits_clean(ledger: &Path, service_cert: &Path) -> anyhow::Result<()> {
    let out = audit_ledger(ledger, service_cert)?;
    ensure!(
        out.status.success(),
        "{} does not audit clean: {}{}",
        ledger.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// POSTs `{"id", "msg"}` to the logging app's private table, retried for `retry_for` while an election settles
/// (a node that just restarted may not know the primary yet); returns the transaction id of the 201.
pub async fn post_log(client: &Client, id: u64, msg: &str, retry_for: Duration) -> anyhow::Result<TxId> {
    let body = Body::Json(serde_json::json!({"id": id, "msg": msg}));
    let r = client
        .call_with_retry(Method::POST, "/app/log/private", Some(body), &[], retry_for)
        .await?;
    ensure!(
        r.status == 201,
        "POST /app/log/private: {} {}",
        r.status,
        r.text()
    );
    Ok(r.tx_id()?)
}

/// POSTs `{"id", "msg"}` to the logging app's public table (retried as [`post_log`] is); returns the transaction id.
pub async fn post_public(client: &Client, id: u64, msg: &str, retry_for: Duration) -> anyhow::Result<TxId> {
    let body = Body::Json(serde_json::json!({"id": id, "msg": msg}));
    let r = client
        .call_with_retry(Method::POST, "/app/log/public", Some(body), &[], retry_for)
        .await?;
    ensure!(r.status == 201, "POST /app/log/public: {} {}", r.status, r.text());
    Ok(r.tx_id()?)
}

/// One node with one user, in a temporary directory.
pub struct SingleNode {
    /// Keeps the directory alive.
    pub tmp: tempfile::TempDir,
    /// The user allowed to call the app.
    pub user: IdentityFiles,
    /// The node.
    pub node: NodeProc,
}

impl SingleNode {
    /// Starts a fresh service; `args` are extra `synod-node start` flags.
    pub fn start(args: &[&str]) -> anyhow::Result<SingleNode> {
        let tmp = tempfile::tempdir()?;
        let user = IdentityFiles::generate(tmp.path(), "user0")?;
        let mut all: Vec<String> = vec!["--user-cert".into(), user.cert.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        let node = NodeProc::start(&tmp.path().join("n0"), &all)?;
        Ok(SingleNode { tmp, user, node })
    }

    /// A client authenticated as the user.
    pub fn user_client(&self) -> anyhow::Result<Client> {
        self.node.client(Some(&self.user))
    }
}

/// A multi-node network: `n0` creates the service, the others join it; one user and one member.
pub struct Network {
    /// Keeps the directory alive.
    pub tmp: tempfile::TempDir,
    /// The user allowed to call the app.
    pub user: IdentityFiles,
    /// The first consortium member.
    pub member: IdentityFiles,
    /// Every consortium member (`members[0]` is `member`).
    pub members: Vec<IdentityFiles>,
    /// The nodes, in the order they were started.
    pub nodes: Vec<NodeProc>,
    /// The service certificate file.
    pub service_cert: PathBuf,
    /// One proxy in front of each node's node-to-node address (published to the others), for a network started
    /// with [`Network::start_proxied`]; empty otherwise.
    pub proxies: Vec<Proxy>,
    args: Vec<String>,
    /// Nodes publish DNS names (`localhost:PORT`), as in Kubernetes.
    names: bool,
    /// Each member's RSA encryption private key file, for a network started with
    /// [`Network::start_recoverable`] (empty otherwise).
    pub member_encryption_keys: Vec<PathBuf>,
}

impl Network {
    /// Starts `n` nodes with extra `synod-node` flags `args`, and waits until all of them vote.
    pub async fn start(n: usize, args: &[&str]) -> anyhow::Result<Network> {
        Network::start_with_members(n, 1, args).await
    }

    /// Like [`Network::start`], with `m` members (a strict majority of them opens the service and trusts nodes).
    pub async fn start_with_members(n: usize, m: usize, args: &[&str]) -> anyhow::Result<Network> {
        Network::start_inner(n, m, args, false, false, None).await
    }

    /// Like [`Network::start_with_members`], every member a recovery member (with an encryption key) and
    /// `threshold` recovery shares needed.
    pub async fn start_recoverable(
        n: usize,
        m: usize,
        threshold: usize,
        args: &[&str],
    ) -> anyhow::Result<Network> {
        Network::start_inner(n, m, args, false, false, Some(threshold)).await
    }

    /// Like [`Network::start`], with every node publishing DNS names (`localhost:PORT`) rather than IP addresses
    /// for its peers and clients, as nodes in Kubernetes do.
    pub async fn start_named(n: usize, args: &[&str]) -> anyhow::Result<Network> {
        Network::start_inner(n, 1, args, false, true, None).await
    }

    /// Like [`Network::start`], with every node reached by the others through its own [`Proxy`]: cutting one
    /// isolates its node from everything the others send it.
    pub async fn start_proxied(n: usize, args: &[&str]) -> anyhow::Result<Network> {
        Network::start_inner(n, 1, args, true, false, None).await
    }

    async fn start_inner(
        n: usize,
        m: usize,
        args: &[&str],
        proxied: bool,
        names: bool,
        recovery_threshold: Option<usize>,
    ) -> anyhow::Result<Network> {
        let tmp = tempfile::tempdir()?;
        let user = IdentityFiles::generate(tmp.path(), "user0")?;
        let members: Vec<IdentityFiles> = (0..m.max(1))
            .map(|i| IdentityFiles::generate(tmp.path(), &format!("member{i}")))
            .collect::<Result<_, _>>()?;
        let member = members[0].clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut first = args.clone();
        first.extend(["--user-cert".into(), user.cert.display().to_string()]);
        let mut member_encryption_keys = Vec::new();
        for (i, mem) in members.iter().enumerate() {
            let mut spec = mem.cert.display().to_string();
            if recovery_threshold.is_some() {
                let pair = synod_core::recovery::generate_encryption_key()?;
                let public = tmp.path().join(format!("member{i}_enc_pubk.pem"));
                let private = tmp.path().join(format!("member{i}_enc_privk.pem"));
                std::fs::write(&public, &pair.public_pem)?;
                std::fs::write(&private, &pair.private_pem)?;
                spec = format!("{spec},{}", public.display());
                member_encryption_keys.push(private);
            }
            first.extend(["--member-cert".into(), spec]);
        }
        if let Some(t) = recovery_threshold {
            first.extend(["--recovery-threshold".into(), t.to_string()]);
        }
        let mut proxies = Vec::new();
        if proxied {
            let proxy = Proxy::start()?;
            first.extend(["--node-published-address".into(), proxy.addr.clone()]);
            first.extend(["--node-source-address".into(), source_ip(0).to_string()]);
            proxies.push(proxy);
        }
        let mut n0 = NodeProc::spawn_detached_named("start", &tmp.path().join("n0"), &first, names)?;
        n0.wait_listening()?;
        if let Some(proxy) = proxies.first() {
            proxy.set_target(&n0.node_addr);
        }
        let service_cert = tmp.path().join("service_cert.pem");
        std::fs::write(&service_cert, n0.service_cert_pem()?)?;
        let mut net = Network {
            tmp,
            user,
            member,
            members,
            nodes: vec![n0],
            service_cert,
            proxies,
            args,
            names,
            member_encryption_keys,
        };
        net.pass(0, "transition_service_to_open", serde_json::json!({}))
            .await?;
        for _ in 1..n {
            net.join_node(&[]).await?;
        }
        net.wait_for_voters(n).await?;
        Ok(net)
    }

    /// A governance client for the first member, through node `i`.
    pub fn member_client(&self, i: usize) -> anyhow::Result<GovClient> {
        self.gov_client(i, 0)
    }

    /// A governance client for member `m`, through node `i`.
    pub fn gov_client(&self, i: usize, m: usize) -> anyhow::Result<GovClient> {
        let c = self.nodes[i].client(None)?;
        Ok(GovClient::new(
            c,
            &self.members[m].cert_pem,
            &self.members[m].key_pem,
        )?)
    }

    /// The first member proposes one action and a strict majority of the members votes for it; fails unless
    /// Accepted.
    pub async fn pass(
        &self,
        through: usize,
        action: &str,
        args: serde_json::Value,
    ) -> anyhow::Result<String> {
        let proposal = self.member_client(through)?.propose_action(action, args).await?;
        let mut state = proposal.state;
        for m in 0..=self.members.len() / 2 {
            state = self
                .gov_client(through, m)?
                .vote(&proposal.proposal_id, true)
                .await?
                .state;
        }
        anyhow::ensure!(
            state == ProposalState::Accepted,
            "{action} was not accepted: {state:?}"
        );
        Ok(proposal.proposal_id)
    }

    /// Runs the `synod-gov` CLI as member `m` against node `i` (with `--json`).
    pub fn gov_cli(&self, i: usize, m: usize, args: &[&str]) -> anyhow::Result<Output> {
        let mut all: Vec<String> = vec![
            "--url".into(),
            self.nodes[i].url(),
            "--service-cert".into(),
            self.service_cert.display().to_string(),
            "--member-cert".into(),
            self.members[m].cert.display().to_string(),
            "--member-key".into(),
            self.members[m].key.display().to_string(),
            "--json".into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        Command::new(bin("synod-gov")?)
            .args(&all)
            .output()
            .context("running synod-gov")
    }

    /// Starts one more node that joins through the first live node (`extra` adds flags), and trusts it by vote
    /// once it asked to join.
    pub async fn join_node(&mut self, extra: &[&str]) -> anyhow::Result<usize> {
        let i = self.spawn_joiner(extra)?;
        let node_id = self.wait_pending(i).await?;
        let p = self.primary().await?;
        self.pass(
            p,
            "transition_node_to_trusted",
            serde_json::json!({ "node_id": node_id }),
        )
        .await?;
        self.nodes[i].wait_listening()?;
        Ok(i)
    }

    /// Starts a joining node and returns at once (it stays Pending until trusted).
    pub fn spawn_joiner(&mut self, extra: &[&str]) -> anyhow::Result<usize> {
        let i = self.nodes.len();
        let target = self
            .nodes
            .iter_mut()
            .find_map(|n| n.is_running().then(|| n.url()))
            .context("no live node to join through")?;
        let mut args = self.args.clone();
        args.extend([
            "--target".into(),
            target,
            "--service-cert".into(),
            self.service_cert.display().to_string(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let proxy = if self.proxies.is_empty() {
            None
        } else {
            let proxy = Proxy::start()?;
            args.extend(["--node-published-address".into(), proxy.addr.clone()]);
            args.extend(["--node-source-address".into(), source_ip(i).to_string()]);
            Some(proxy)
        };
        let dir = self.tmp.path().join(format!("n{i}"));
        let node = NodeProc::spawn_detached_named("join", &dir, &args, self.names)?;
        if let Some(proxy) = proxy {
            proxy.set_target(&node.node_addr);
            self.proxies.push(proxy);
        }
        self.nodes.push(node);
        Ok(i)
    }

    /// Waits until node `i` asked to join and is Pending; returns its node id.
    pub async fn wait_pending(&mut self, i: usize) -> anyhow::Result<String> {
        let addr = self.nodes[i].published_addr();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = self.primary().await?;
            let nodes = self.nodes[p]
                .client(None)?
                .get_json::<serde_json::Value>("/gov/service/nodes")
                .await?;
            let found = nodes["value"].as_array().and_then(|a| {
                a.iter()
                    .find(|n| n["rpcAddress"] == addr.as_str() && n["status"] == "Pending")
                    .and_then(|n| n["nodeId"].as_str())
            });
            if let Some(id) = found {
                return Ok(id.to_string());
            }
            if !self.nodes[i].is_running() {
                bail!("the joining node exited:\n{}", self.nodes[i].log_tail(20));
            }
            if Instant::now() > deadline {
                bail!(
                    "node {i} did not ask to join within 60 s:\n{}",
                    self.nodes[i].log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Index of the node that every live node agrees is primary (waits for an election).
    pub async fn primary(&mut self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut answers = Vec::new();
            for (i, n) in self.nodes.iter_mut().enumerate() {
                if !n.is_running() {
                    continue;
                }
                if let Ok(c) = n.client(None) {
                    if let Ok(r) = c.get("/node/primary").await {
                        if let Ok(v) = r.json_value() {
                            if v["is_this_node"] == true {
                                answers.push(i);
                            }
                        }
                    }
                }
            }
            if answers.len() == 1 {
                return Ok(answers[0]);
            }
            if Instant::now() > deadline {
                bail!("no single primary within 30 s ({answers:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the primary counts `n` voters and no learner.
    pub async fn wait_for_voters(&mut self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = self.primary().await?;
            let v = self.nodes[p]
                .client(None)?
                .get_json::<serde_json::Value>("/node/consensus")
                .await?;
            let voters = v["details"]["voters"].as_array().map_or(0, |a| a.len());
            let learners = v["details"]["learners"].as_array().map_or(0, |a| a.len());
            if voters == n && learners == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{voters} voters and {learners} learners after 60 s, expected {n} voters");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every node (SIGTERM, then waits for it), so that their files can be read.
    pub fn stop_all(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            n.terminate()?;
        }
        Ok(())
    }

    /// A client for node `i` as the user.
    pub fn user_client(&self, i: usize) -> anyhow::Result<Client> {
        self.nodes[i].client(Some(&self.user))
    }

    /// A client that knows every node (it moves on when one fails), as the user.
    pub fn failover_client(&self) -> anyhow::Result<Client> {
        let urls: Vec<String> = self.nodes.iter().map(|n| n.url()).collect();
        let pem = std::fs::read_to_string(&self.service_cert)?;
        Ok(Client::with_urls(
            &urls,
            &pem,
            Some((self.user.cert_pem.as_str(), self.user.key_pem.as_str())),
        )?)
    }

    /// Stops every node; then every node's ledger audits clean, and chunks with the same name are byte-identical
    /// on every node.
    pub fn stop_and_check_ledgers(&mut self) -> anyhow::Result<()> {
        self.stop_all()?;
        let mut reference: std::collections::BTreeMap<String, (String, Vec<u8>)> = Default::default();
        for n in &self.nodes {
            let ledger = n.dir.join("ledger");
            ensure_audits_clean(&ledger, &self.service_cert)?;
            for (name, bytes) in committed_chunks(&ledger)? {
                match reference.get(&name) {
                    Some((other, b)) => ensure!(
                        b == &bytes,
                        "{name} differs between {other} and {}",
                        n.dir.display()
                    ),
                    None => {
                        reference.insert(name, (n.dir.display().to_string(), bytes));
                    }
                }
            }
        }
        ensure!(!reference.is_empty(), "no committed chunk anywhere");
        Ok(())
    }

    /// Deploys the JavaScript bundle in `dir` by vote, and returns once every node serves it: backups answer
    /// from their committed state, so this waits for a later write to be committed everywhere.
    pub async fn deploy_bundle(&mut self, dir: &Path) -> anyhow::Result<()> {
        let action = synod_governance::bundle::set_js_app_action(dir)?;
        let name = action["name"].as_str().context("action name")?.to_string();
        self.pass(0, &name, action["args"].clone()).await?;
        let after = post_log(
            &self.user_client(0)?,
            1_000_000,
            "after the deployment",
            Duration::from_secs(20),
        )
        .await?;
        self.wait_committed_everywhere(after).await
    }

    /// Waits until `tx` is Committed on every running node.
    pub async fn wait_committed_everywhere(&mut self, tx: synod_client::TxId) -> anyhow::Result<()> {
        for n in self.nodes.iter_mut() {
            if !n.is_running() {
                continue;
            }
            let status = n
                .client(None)?
                .wait_for_commit(tx, Duration::from_secs(30))
                .await?;
            anyhow::ensure!(
                status == synod_client::TxStatus::Committed,
                "{tx} is {status:?} on {}",
                n.dir.display()
            );
        }
        Ok(())
    }
}

/// An attacker's would-be node: a fresh key and self-signed certificate, as `openssl req -x509` would make.
pub struct Forger {
    /// Its key and self-signed certificate.
    pub identity: synod_core::cert::Identity,
    /// The node id its key would have.
    pub node_id: String,
}

impl Forger {
    /// A fresh key.
    pub fn new() -> anyhow::Result<Forger> {
        let identity = synod_core::cert::generate_self_signed("forged", false)?;
        let node_id =
            synod_core::cert::public_key_id_hex(&synod_core::cert::pem_to_der(&identity.cert_pem)?)?;
        Ok(Forger { identity, node_id })
    }

    /// A client of `node` that presents this key.
    pub fn client(&self, node: &NodeProc) -> anyhow::Result<Client> {
        self.client_at(&node.url(), &node.service_cert_pem()?)
    }

    fn client_at(&self, url: &str, service_cert_pem: &str) -> anyhow::Result<Client> {
        Ok(Client::new(
            url,
            service_cert_pem,
            Some((&self.identity.cert_pem, &self.identity.key_pem)),
        )?)
    }

    /// `POST /node/join` with `virtual` evidence naming the measurement the service publishes and binding this
    /// key: everything the unsigned evidence format lets anyone claim.
    pub async fn join(
        &self,
        node: &NodeProc,
        name: &str,
        token: Option<&str>,
    ) -> anyhow::Result<synod_client::Response> {
        self.join_with(&node.url(), &node.service_cert_pem()?, name, token)
            .await
    }

    /// [`Forger::join`] at a node known by its URL and service certificate.
    pub async fn join_at(
        &self,
        url: &str,
        service_cert_pem: &str,
        name: &str,
    ) -> anyhow::Result<synod_client::Response> {
        self.join_with(url, service_cert_pem, name, None).await
    }

    async fn join_with(
        &self,
        url: &str,
        service_cert_pem: &str,
        name: &str,
        token: Option<&str>,
    ) -> anyhow::Result<synod_client::Response> {
        let client = self.client_at(url, service_cert_pem)?;
        let policy: serde_json::Value = client.get_json("/gov/service/join-policy").await?;
        let measurement = policy["virtual"]["measurements"][0]
            .as_str()
            .context("the service publishes its measurement")?;
        let statement = serde_json::json!({"measurement": measurement, "report_data": self.node_id});
        let quote_info = serde_json::json!({
            "format": "Virtual",
            "quote": base64::engine::general_purpose::STANDARD.encode(statement.to_string()),
        });
        self.join_with_evidence(url, service_cert_pem, name, token, quote_info)
            .await
    }

    /// Asks to join with `quote_info` as the evidence (CCF's shape: `format`, base64 `quote` and
    /// `endorsements`).
    pub async fn join_with_evidence(
        &self,
        url: &str,
        service_cert_pem: &str,
        name: &str,
        token: Option<&str>,
        quote_info: serde_json::Value,
    ) -> anyhow::Result<synod_client::Response> {
        let client = self.client_at(url, service_cert_pem)?;
        let mut body = serde_json::json!({
            "node_name": name,
            "rpc_address": "127.0.0.1:1",
            "node_address": "127.0.0.1:2",
            "quote_info": quote_info,
        });
        if let Some(token) = token {
            body["join_token"] = serde_json::json!(token);
        }
        Ok(client.post_json("/node/join", &body).await?)
    }
}

/// The committed chunk files of a ledger directory: name → bytes.
pub fn committed_chunks(ledger: &Path) -> anyhow::Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(ledger)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".committed") {
            out.insert(name, std::fs::read(e.path())?);
        }
    }
    Ok(out)
}

/// The loopback address node `i` of a proxied network connects to the others from (`--node-source-address`), so
/// that their proxies can tell its connections apart.
pub fn source_ip(i: usize) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 10 + (i % 200) as u8))
}

impl Network {
    /// Partitions node `i` from the others both ways (its proxy drops what they send it; theirs drop what it
    /// sends them), or only inbound when `one_way`.
    pub fn isolate(&self, i: usize, one_way: bool) {
        self.proxies[i].cut();
        if !one_way {
            for (j, p) in self.proxies.iter().enumerate() {
                if j != i {
                    p.block_source(source_ip(i));
                }
            }
        }
    }

    /// Ends [`Network::isolate`].
    pub fn reconnect(&self, i: usize) {
        self.proxies[i].heal();
        for p in &self.proxies {
            p.unblock_source(source_ip(i));
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of one node's node-to-node address. Cut, it drops its connections and every
/// new one, so nothing the other nodes send reaches that node; with a source blocked, it drops connections from
/// that address (one node's outbound traffic, when nodes connect from distinct loopback addresses). A cut alone is
/// a one-way partition, as a broken route or firewall makes; with the node's source blocked at the other proxies,
/// a symmetric one. Healed, connections go through again.
pub struct Proxy {
    /// `host:port` it listens on (the node's published address).
    pub addr: String,
    target: Arc<std::sync::Mutex<Option<String>>>,
    cut: tokio::sync::watch::Sender<bool>,
    blocked: tokio::sync::watch::Sender<std::collections::BTreeSet<std::net::IpAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port; forwards once [`Proxy::set_target`] names the node. Needs a Tokio runtime.
    pub fn start() -> anyhow::Result<Proxy> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?.to_string();
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let target: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let (cut, _) = tokio::sync::watch::channel(false);
        let (blocked, _) = tokio::sync::watch::channel(std::collections::BTreeSet::new());
        let task = {
            let (target, cut, blocked) = (target.clone(), cut.clone(), blocked.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, from)) = listener.accept().await {
                    let mut cut_rx = cut.subscribe();
                    let mut blocked_rx = blocked.subscribe();
                    let source = from.ip();
                    let to = target.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let open = !*cut_rx.borrow() && !blocked_rx.borrow().contains(&source);
                    let Some(to) = to.filter(|_| open) else {
                        continue; // dropped: the connection is refused in effect
                    };
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut_rx.wait_for(|cut| *cut) => {}
                            _ = blocked_rx.wait_for(|b| b.contains(&source)) => {}
                        }
                    });
                }
            })
        };
        Ok(Proxy {
            addr,
            target,
            cut,
            blocked,
            task,
        })
    }

    /// The node's real node-to-node address.
    pub fn set_target(&self, target: &str) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(target.to_string());
    }

    /// Drops every connection through the proxy, and every new one until [`Proxy::heal`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// Drops every connection from `source`, and every new one until [`Proxy::unblock_source`].
    pub fn block_source(&self, source: std::net::IpAddr) {
        self.blocked.send_modify(|b| {
            b.insert(source);
        });
    }

    /// Lets connections from `source` through again.
    pub fn unblock_source(&self, source: std::net::IpAddr) {
        self.blocked.send_modify(|b| {
            b.remove(&source);
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_tail_keeps_the_error_and_drops_the_frames() {
        let log =
            "INFO started\nError: binding 127.0.0.1:1: Address already in use\n\nStack backtrace:\n   0: \
                   anyhow::msg\n             at src/x.rs:1\n   1: main\n\nnote: run with RUST_BACKTRACE=full";
        let tail = tail_without_backtraces(log, 4);
        let expected = [
            "Error: binding 127.0.0.1:1: Address already in use",
            "",
            "[backtrace left out]",
            "note: run with RUST_BACKTRACE=full",
        ];
        assert_eq!(tail, expected.join("\n"));
    }

    #[test]
    fn ports_handed_out_are_distinct_and_free() {
        let ports: Vec<u16> = (0..20).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
        for port in ports {
            assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        }
    }
}
