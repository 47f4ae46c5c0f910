//! Harness for end-to-end tests: starts real `synod-node` processes on 127.0.0.1 in temporary directories, talks
//! to them with the real client library and runs the real `synod` CLI. Every process is killed when its handle
//! drops, and every test bounds its own duration with [`bounded`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use synod_client::Client;
use synod_core::cert;

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
    /// Generates a self-signed Ed25519 identity named `name` into `dir`.
    pub fn generate(dir: &Path, name: &str) -> anyhow::Result<IdentityFiles> {
        let id = cert::generate_self_signed(name, false)?;
        let cert = dir.join(format!("{name}_cert.pem"));
        let key = dir.join(format!("{name}_privk.pem"));
        std::fs::write(&cert, &id.cert_pem)?;
        std::fs::write(&key, &id.key_pem)?;
        Ok(IdentityFiles {
            cert,
            key,
            cert_pem: id.cert_pem,
            key_pem: id.key_pem,
        })
    }
}

/// A running (or stopped) `synod-node` process.
pub struct NodeProc {
    child: Option<Child>,
    /// Its data directory.
    pub dir: PathBuf,
    /// `host:port` it serves HTTPS on.
    pub addr: String,
    args: Vec<String>,
    log: PathBuf,
}

impl NodeProc {
    /// Starts `synod-node start --data-dir DIR --rpc-address 127.0.0.1:0 ARGS...` and waits until it listens.
    pub fn start(dir: &Path, args: &[String]) -> anyhow::Result<NodeProc> {
        let mut node = NodeProc {
            child: None,
            dir: dir.to_path_buf(),
            addr: String::new(),
            args: args.to_vec(),
            log: dir.with_extension("log"),
        };
        node.launch()?;
        Ok(node)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let addr_file = self.dir.join("rpc_address");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin("synod-node")?)
            .arg("start")
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--rpc-address", "127.0.0.1:0"])
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("SYNOD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning synod-node")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                self.addr = addr.trim().to_string();
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
        bail!("synod-node did not listen within 30 s:\n{}", self.log_tail(30))
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

    /// Starts the node again on the same data directory (with the same arguments, on a new port).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.launch()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last `n` lines of the node's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
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
