//! Node-to-node channels: Raft messages over mutually authenticated TLS.
//!
//! ```text
//!  Core ready ─▶ Channels::send(msg) ─▶ per-peer queue ─▶ writer task ══TLS══▶ peer's acceptor ─▶ its event loop
//! ```
//!
//! Both ends present their node certificate and check the other's: it must be endorsed by the service
//! identity, belong to a node in the service's nodes table (the directory), and — on each frame — carry the Raft
//! id the frame claims to come from, so a node cannot speak for another. Frames are `u32 BE length ‖ PeerFrame`
//! (prost) whose payload is the raft-rs message. Queues are bounded: when a peer is slow or down, messages are
//! dropped and Raft retransmits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::Message;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use synod_core::cert;
use synod_core::tables::{NodeInfo, NodeStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::consensus::raft_id;

/// Largest frame accepted (a snapshot travels in one message).
pub const FRAME_BYTES_MAX: usize = 256 << 20;
/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE_MAX: usize = 8192;
const CONNECT_TIMEOUT_MS: u64 = 2000;
const RECONNECT_BACKOFF_MAX_MS: u64 = 1000;

/// One frame on a channel: a Raft message, or a client request a backup forwards to the primary, or its answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerFrame {
    /// Sender's Raft id.
    #[prost(uint64, tag = "1")]
    pub from: u64,
    /// raft-rs message (protobuf); empty in a forwarding frame.
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
    /// A request forwarded to the primary.
    #[prost(message, optional, tag = "3")]
    pub request: Option<ForwardedRequest>,
    /// The primary's answer to a forwarded request.
    #[prost(message, optional, tag = "4")]
    pub response: Option<ForwardedResponse>,
}

/// A client's request that a backup forwards to the primary over their channel (what forwarding over HTTPS used to
/// send), with the caller's certificate the backup vouches for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardedRequest {
    /// Chosen by the backup to match the answer.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// HTTP method.
    #[prost(string, tag = "2")]
    pub method: String,
    /// Path and query.
    #[prost(string, tag = "3")]
    pub path_and_query: String,
    /// `content-type`, if any.
    #[prost(string, optional, tag = "4")]
    pub content_type: Option<String>,
    /// `accept`, if any.
    #[prost(string, optional, tag = "5")]
    pub accept: Option<String>,
    /// The caller's TLS certificate (DER), if it presented one.
    #[prost(bytes = "vec", optional, tag = "6")]
    pub caller_cert: Option<Vec<u8>>,
    /// The body.
    #[prost(bytes = "vec", tag = "7")]
    pub body: Vec<u8>,
    /// The client's address as the backup saw it: per-client limits (joins) apply on the primary to the client,
    /// not to the backup that forwarded it.
    #[prost(string, optional, tag = "8")]
    pub client_addr: Option<String>,
}

/// The primary's answer to a [`ForwardedRequest`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardedResponse {
    /// The request's id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// HTTP status.
    #[prost(uint32, tag = "2")]
    pub status: u32,
    /// `content-type`, if any.
    #[prost(string, optional, tag = "3")]
    pub content_type: Option<String>,
    /// The transaction id header, if any.
    #[prost(string, optional, tag = "4")]
    pub tx_id: Option<String>,
    /// `retry-after`, if any.
    #[prost(string, optional, tag = "5")]
    pub retry_after: Option<String>,
    /// The body.
    #[prost(bytes = "vec", tag = "6")]
    pub body: Vec<u8>,
}

/// Told whether a Raft snapshot message reached its peer (`true`) or was dropped (`false`), so that Raft can
/// retry it: without a report the follower would stay paused until the next election.
pub type SnapshotReport = Arc<dyn Fn(u64, bool) + Send + Sync>;

/// A frame waiting in a peer's queue.
struct Outgoing {
    bytes: Vec<u8>,
    /// A Raft snapshot message: its fate is reported.
    snapshot: bool,
    /// A forwarded request: if the frame is dropped, the request waiting for its answer fails at once.
    forward_id: Option<u64>,
}

/// Forwarded requests waiting for an answer: id → (the peer asked, where to deliver it). Shared with the writers,
/// which fail a request whose frame they could not deliver.
type Pending = Arc<Mutex<HashMap<u64, (u64, tokio::sync::oneshot::Sender<ForwardedResponse>)>>>;

/// Longest a batch of frames may take to write before the connection is given up and made again; a large frame
/// (a snapshot) gets more time, in proportion to its size.
const WRITE_TIMEOUT_MS: u64 = 5_000;
/// Extra write time per MiB of a batch.
const WRITE_MS_PER_MIB: u64 = 200;

/// What runs forwarded requests on the primary: called with the sending peer's Raft id; it answers through
/// [`Channels::respond`] (installed once the HTTP router exists).
pub type ForwardHandler = Arc<dyn Fn(u64, ForwardedRequest) + Send + Sync>;

/// Why a request could not be forwarded over a channel.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The frame could not be queued (peer unknown, or its queue full).
    #[error("the channel to node {0} is full or down")]
    Unreachable(u64),
    /// No answer in time (the primary may still have run it).
    #[error("node {0} did not answer within {1} ms")]
    Timeout(u64, u64),
    /// Too many requests are waiting for answers.
    #[error("{0} forwarded requests are waiting for answers already")]
    TooMany(usize),
    /// The frame could not be delivered, or the node stopped being the primary before it answered.
    #[error("the request to node {0} was lost (connection down, or it is no longer the primary)")]
    Lost(u64),
}

/// Forwarded requests waiting for an answer at once (each holds a small entry here).
pub const FORWARDS_PENDING_MAX: usize = 4096;

/// Where a peer is and who it is (also how the join answer lists the service's nodes: the field names are its
/// JSON).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerInfo {
    /// Hex node id.
    pub node_id: String,
    /// Node-to-node address.
    pub node_address: String,
    /// Client-facing HTTPS address.
    pub rpc_address: String,
    /// Status in the nodes table.
    pub status: String,
}

impl PeerInfo {
    /// The peer a nodes-table record describes.
    pub fn of(node_id: &str, info: &NodeInfo) -> PeerInfo {
        PeerInfo {
            node_id: node_id.to_string(),
            node_address: info.node_address.clone(),
            rpc_address: info.rpc_address.clone(),
            status: info.status.to_string(),
        }
    }
}

/// The directory status of a Trusted node whose measurement governance has since removed
/// (`remove_node_code`): no frame goes to it or is taken from it.
pub const CODE_NOT_ALLOWED: &str = "CodeNotAllowed";

/// Known nodes by Raft id (from the nodes table; shared with the RPC layer for forwarding).
pub type Directory = Arc<RwLock<HashMap<u64, PeerInfo>>>;

/// The outbound half: one queue and writer task per peer; and the requests forwarded over them waiting for answers.
pub struct Channels {
    self_id: u64,
    directory: Directory,
    queues: Mutex<HashMap<u64, mpsc::Sender<Outgoing>>>,
    client_config: Arc<ClientConfig>,
    runtime: tokio::runtime::Handle,
    pending: Pending,
    next_id: std::sync::atomic::AtomicU64,
    handler: std::sync::OnceLock<ForwardHandler>,
    snapshot_report: std::sync::OnceLock<SnapshotReport>,
    /// Local address outgoing connections bind to (`--node-source-address`).
    source: Option<std::net::IpAddr>,
    /// Outgoing connections open now.
    connected: Arc<std::sync::atomic::AtomicUsize>,
}

/// This node's TLS certificate and key, shared by every TLS configuration the node serves or connects with and
/// replaced in place when governance renews the certificate: new handshakes present the new certificate, open
/// connections carry on undisturbed.
#[derive(Debug)]
pub struct NodeCert {
    current: std::sync::RwLock<(String, Arc<rustls::sign::CertifiedKey>)>,
}

impl NodeCert {
    /// The certificate `cert_pem` with the key `key_pem`.
    pub fn new(cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<NodeCert>> {
        let (chain, key) = cert_chain(cert_pem, key_pem)?;
        let signing = provider().key_provider.load_private_key(key)?;
        let certified = Arc::new(rustls::sign::CertifiedKey::new(chain, signing));
        Ok(Arc::new(NodeCert {
            current: std::sync::RwLock::new((cert_pem.to_string(), certified)),
        }))
    }

    /// The certificate presented now (PEM).
    pub fn cert_pem(&self) -> String {
        self.current.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// Presents `cert_pem` from now on; it must be for the same key.
    pub fn replace(&self, cert_pem: &str) -> anyhow::Result<()> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let der = cert::pem_to_der(cert_pem)?;
        let old = current.1.cert.first().map(|c| c.to_vec()).unwrap_or_default();
        anyhow::ensure!(
            cert::same_public_key(&der, &old)?,
            "a renewed certificate must be for the node's own key"
        );
        let certified =
            rustls::sign::CertifiedKey::new(vec![CertificateDer::from(der)], current.1.key.clone());
        *current = (cert_pem.to_string(), Arc::new(certified));
        Ok(())
    }

    fn certified(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }
}

impl rustls::server::ResolvesServerCert for NodeCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.certified())
    }
}

impl rustls::client::ResolvesClientCert for NodeCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.certified())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// TLS material for channels.
pub struct ChannelTls {
    /// The node's certificate and key (renewable in place).
    pub node_cert: Arc<NodeCert>,
    /// The service certificate (PEM).
    pub service_cert_pem: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn cert_chain(
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let cert = CertificateDer::from(cert::pem_to_der(cert_pem)?);
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    Ok((vec![cert], key))
}

fn roots(service_cert_pem: &str) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(cert::pem_to_der(service_cert_pem)?))?;
    Ok(roots)
}

/// A node's TLS client: trusts only the service identity, presents the node certificate (channels, forwarding
/// to the primary, joining).
pub fn node_client_config(
    node_cert_pem: &str,
    node_key_pem: &str,
    service_cert_pem: &str,
) -> anyhow::Result<ClientConfig> {
    let (chain, key) = cert_chain(node_cert_pem, node_key_pem)?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(service_cert_pem)?)
        .with_client_auth_cert(chain, key)?)
}

impl ChannelTls {
    /// Client side: trust only the service identity, present the node certificate.
    pub fn client_config(&self) -> anyhow::Result<Arc<ClientConfig>> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(&self.service_cert_pem)?)
            .with_client_cert_resolver(self.node_cert.clone());
        Ok(Arc::new(config))
    }

    /// Server side: require a client certificate endorsed by the service identity.
    pub fn server_config(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(&self.service_cert_pem)?),
            provider(),
        )
        .build()?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.node_cert.clone());
        Ok(Arc::new(config))
    }
}

fn peer_raft_id(certs: Option<&[CertificateDer<'_>]>) -> Option<u64> {
    let der = certs?.first()?;
    Some(raft_id(&cert::public_key_id_hex(der).ok()?))
}

impl Channels {
    /// Outbound channels for node `self_id`.
    pub fn new(
        self_id: u64,
        directory: Directory,
        tls: &ChannelTls,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Channels> {
        Ok(Channels {
            self_id,
            directory,
            queues: Mutex::new(HashMap::new()),
            client_config: tls.client_config()?,
            runtime,
            pending: Arc::new(Mutex::new(HashMap::new())),
            next_id: std::sync::atomic::AtomicU64::new(1),
            handler: std::sync::OnceLock::new(),
            snapshot_report: std::sync::OnceLock::new(),
            source: None,
            connected: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    /// Outgoing connections leave from `source` (None: the system picks).
    pub fn with_source_address(mut self, source: Option<std::net::IpAddr>) -> Channels {
        self.source = source;
        self
    }

    /// Peers with an open outgoing connection.
    pub fn connected_peers(&self) -> usize {
        self.connected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Installs what hears whether snapshot messages were delivered (once; later calls are ignored).
    pub fn set_snapshot_report(&self, report: SnapshotReport) {
        let _ = self.snapshot_report.set(report);
    }

    /// Queues `msg` for its destination; drops it if the peer is unknown or its queue is full.
    pub fn send(&self, msg: &Message) {
        let payload = match msg.write_to_bytes() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("encoding a raft message: {e}");
                return;
            }
        };
        let snapshot = msg.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot;
        let frame = PeerFrame {
            from: self.self_id,
            payload,
            ..Default::default()
        };
        if !self.queue_frame(msg.to, frame, snapshot, None) && snapshot {
            if let Some(report) = self.snapshot_report.get() {
                report(msg.to, false);
            }
        }
    }

    /// Installs what runs requests other nodes forward here (once; later calls are ignored).
    pub fn set_forward_handler(&self, handler: ForwardHandler) {
        let _ = self.handler.set(handler);
    }

    /// Sends `request` to node `to` and waits up to `timeout_ms` for its answer.
    pub async fn forward(
        &self,
        to: u64,
        mut request: ForwardedRequest,
        timeout_ms: u64,
    ) -> Result<ForwardedResponse, ForwardError> {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        request.id = id;
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.len() >= FORWARDS_PENDING_MAX {
                return Err(ForwardError::TooMany(pending.len()));
            }
            pending.insert(id, (to, tx));
        }
        let frame = PeerFrame {
            from: self.self_id,
            request: Some(request),
            ..Default::default()
        };
        let answer = if self.queue_frame(to, frame, false, Some(id)) {
            match tokio::time::timeout(Duration::from_millis(timeout_ms), rx).await {
                Ok(Ok(answer)) => Ok(answer),
                // Given up by a writer or by a change of primary (see abandon_forwards).
                Ok(Err(_)) => Err(ForwardError::Lost(to)),
                Err(_) => Err(ForwardError::Timeout(to, timeout_ms)),
            }
        } else {
            Err(ForwardError::Unreachable(to))
        };
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        answer
    }

    /// Fails at once every forwarded request waiting on a node other than `primary`: the primary changed, and a
    /// request sent to the old one may never be answered (its node may be gone); the client retries.
    pub fn abandon_forwards(&self, primary: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (peer, _)| *peer == primary);
    }

    /// Sends the answer to a request node `to` forwarded here.
    pub fn respond(&self, to: u64, response: ForwardedResponse) {
        self.send_frame(
            to,
            PeerFrame {
                from: self.self_id,
                response: Some(response),
                ..Default::default()
            },
        );
    }

    /// Hands a frame that is not a Raft message to its owner: a forwarded request to the handler, an answer to
    /// the request waiting for it (only from the node it was sent to).
    fn receive_forwarding(&self, from: u64, frame: PeerFrame) {
        if let Some(request) = frame.request {
            match self.handler.get() {
                Some(handler) => handler(from, request),
                None => tracing::debug!(
                    peer = from,
                    "a forwarded request before this node serves: dropped"
                ),
            }
        }
        if let Some(response) = frame.response {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.get(&response.id).is_some_and(|(peer, _)| *peer == from) {
                if let Some((_, tx)) = pending.remove(&response.id) {
                    let _ = tx.send(response);
                }
            }
        }
    }

    /// Queues a frame for `to`; false if it was dropped (unknown peer, full queue).
    fn send_frame(&self, to: u64, frame: PeerFrame) -> bool {
        self.queue_frame(to, frame, false, None)
    }

    fn queue_frame(&self, to: u64, frame: PeerFrame, snapshot: bool, forward_id: Option<u64>) -> bool {
        let cut_off = self
            .directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&to)
            .is_some_and(|p| p.status == CODE_NOT_ALLOWED);
        if cut_off {
            return false;
        }
        let frame = Outgoing {
            bytes: frame.encode_to_vec(),
            snapshot,
            forward_id,
        };
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let queue = queues.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            let dialer = Dialer {
                directory: self.directory.clone(),
                config: self.client_config.clone(),
                source: self.source,
            };
            let report = self.snapshot_report.get().cloned();
            self.runtime.spawn(writer(
                to,
                rx,
                dialer,
                report,
                self.pending.clone(),
                self.connected.clone(),
            ));
            tx
        });
        if queue.try_send(frame).is_err() {
            tracing::debug!(peer = to, "peer queue full or closed; dropping a message");
            return false;
        }
        true
    }
}

/// What a writer needs to (re)connect to its peer.
struct Dialer {
    directory: Directory,
    config: Arc<ClientConfig>,
    /// Local address outgoing connections bind to (`--node-source-address`).
    source: Option<std::net::IpAddr>,
}

async fn connect(to: u64, dialer: &Dialer) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let (config, source) = (&dialer.config, dialer.source);
    let info = dialer
        .directory
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&to)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("peer {to} is not in the nodes table"))?;
    // A DNS name (a Kubernetes pod's stable name) is resolved at each connection: its IP may have changed.
    let addr: SocketAddr = match info.node_address.parse() {
        Ok(addr) => addr,
        Err(_) => tokio::time::timeout(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            tokio::net::lookup_host(info.node_address.as_str()),
        )
        .await??
        .next()
        .ok_or_else(|| anyhow::anyhow!("{} resolves to no address", info.node_address))?,
    };
    let tcp = match source {
        None => {
            tokio::time::timeout(
                Duration::from_millis(CONNECT_TIMEOUT_MS),
                TcpStream::connect(addr),
            )
            .await??
        }
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), socket.connect(addr)).await??
        }
    };
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = tokio::time::timeout(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await??;
    // Endorsed by the service is not enough: it must be the node we meant to reach.
    if peer_raft_id(tls.get_ref().1.peer_certificates()) != Some(to) {
        anyhow::bail!("{addr} presented the certificate of another node");
    }
    Ok(tls)
}

async fn writer(
    to: u64,
    mut rx: mpsc::Receiver<Outgoing>,
    dialer: Dialer,
    report: Option<SnapshotReport>,
    pending: Pending,
    connected: Arc<std::sync::atomic::AtomicUsize>,
) {
    // What was written or dropped is told to whoever waits on it: Raft for snapshots, the forwarding backup for
    // requests (a dropped one fails at once instead of waiting out its timeout).
    let report_snapshots = |frames: &[Outgoing], ok: bool| {
        if let Some(report) = &report {
            for _ in frames.iter().filter(|f| f.snapshot) {
                report(to, ok);
            }
        }
        if !ok {
            let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
            for id in frames.iter().filter_map(|f| f.forward_id) {
                pending.remove(&id);
            }
        }
    };
    let mut backoff = 50;
    loop {
        let stream = match connect(to, &dialer).await {
            Ok(s) => {
                backoff = 50;
                s
            }
            Err(e) => {
                tracing::debug!(peer = to, "cannot connect: {e:#}");
                // Drop what queued up meanwhile: Raft will resend what still matters (told, for snapshots).
                while let Ok(frame) = rx.try_recv() {
                    report_snapshots(std::slice::from_ref(&frame), false);
                }
                tokio::time::sleep(Duration::from_millis(backoff)).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX_MS);
                if rx.is_closed() {
                    return;
                }
                continue;
            }
        };
        let mut out = BufWriter::new(stream);
        let _open = OpenConnection::count(&connected);
        loop {
            let Some(frame) = rx.recv().await else {
                return;
            };
            let mut batch = vec![frame];
            while let Ok(f) = rx.try_recv() {
                batch.push(f);
                if batch.len() >= 256 {
                    break;
                }
            }
            // A peer that stopped reading (a half-open connection after a partition) must not stall this queue for
            // ever: past the timeout the connection is dropped and made again.
            let bytes: usize = batch.iter().map(|f| f.bytes.len()).sum();
            let limit = Duration::from_millis(WRITE_TIMEOUT_MS + WRITE_MS_PER_MIB * (bytes as u64 >> 20));
            let write = async {
                for f in &batch {
                    out.write_all(&(f.bytes.len() as u32).to_be_bytes()).await?;
                    out.write_all(&f.bytes).await?;
                }
                out.flush().await
            };
            let written = matches!(tokio::time::timeout(limit, write).await, Ok(Ok(())));
            report_snapshots(&batch, written);
            if !written {
                tracing::debug!(peer = to, "connection lost or stalled; reconnecting");
                break;
            }
        }
    }
}

/// Counts an open outgoing connection for as long as it lives.
struct OpenConnection<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> OpenConnection<'a> {
    fn count(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenConnection(n)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Accepts peers' connections and hands their messages to `deliver`. Anyone can connect to this port: at most
/// `connections_max` connections (TLS handshakes included) are open at once, and newcomers past it are closed.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    channels: Arc<Channels>,
    deliver: Arc<dyn Fn(Message) + Send + Sync>,
    connections_max: usize,
) {
    let acceptor = TlsAcceptor::from(config);
    let slots = crate::limits::Slots::new(connections_max);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("node-to-node accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = slots.try_take() else {
            tracing::debug!(%addr, "node-to-node connection cap reached: closing a new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, channels, deliver) = (acceptor.clone(), channels.clone(), deliver.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = read_peer(acceptor, tcp, channels, deliver).await {
                tracing::debug!(%addr, "node-to-node connection: {e:#}");
            }
        });
    }
}

/// Why a peer may not (or no longer) send consensus messages on a channel, if it may not.
fn refuse_peer(directory: &Directory, peer: u64) -> Option<String> {
    let status = directory
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&peer)
        .map(|p| p.status.clone());
    match status.as_deref() {
        None => Some(format!("node {peer} is not in the nodes table")),
        Some(s) if s == NodeStatus::Trusted.as_str() => None,
        Some(CODE_NOT_ALLOWED) => Some(format!(
            "node {peer} runs a measurement governance no longer allows: refused"
        )),
        Some(other) => Some(format!(
            "node {peer} is {other}: only Trusted nodes take part in consensus"
        )),
    }
}

async fn read_peer(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    channels: Arc<Channels>,
    deliver: Arc<dyn Fn(Message) + Send + Sync>,
) -> anyhow::Result<()> {
    let directory = &channels.directory;
    let mut tls =
        tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), acceptor.accept(tcp)).await??;
    let peer = peer_raft_id(tls.get_ref().1.peer_certificates())
        .ok_or_else(|| anyhow::anyhow!("no client certificate"))?;
    if let Some(reason) = refuse_peer(directory, peer) {
        anyhow::bail!(reason);
    }
    let mut len = [0u8; 4];
    loop {
        if tls.read_exact(&mut len).await.is_err() {
            return Ok(()); // closed
        }
        // Checked per frame, not only at the handshake: a node retired (or removed) since it connected must not
        // keep a say in consensus over the connection it already has.
        if let Some(reason) = refuse_peer(directory, peer) {
            anyhow::bail!("closing the channel: {reason}");
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > FRAME_BYTES_MAX {
            anyhow::bail!("frame of {n} bytes from node {peer}");
        }
        let mut buf = vec![0u8; n];
        tls.read_exact(&mut buf).await?;
        let frame = PeerFrame::decode(buf.as_slice())?;
        if frame.from != peer {
            anyhow::bail!("node {peer} sent a frame claiming to be from {}", frame.from);
        }
        if frame.request.is_some() || frame.response.is_some() {
            channels.receive_forwarding(peer, frame);
            continue;
        }
        let msg = Message::parse_from_bytes(&frame.payload)?;
        if msg.from != peer {
            anyhow::bail!("node {peer} sent a message claiming to be from {}", msg.from);
        }
        deliver(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(service: &cert::Identity, name: &str) -> (cert::Identity, u64) {
        let node = cert::generate_endorsed(name, &["127.0.0.1".parse().expect("ip")], &[], service)
            .expect("node identity");
        let der = cert::pem_to_der(&node.cert_pem).expect("der");
        let id = raft_id(&cert::public_key_id_hex(&der).expect("id"));
        (node, id)
    }

    fn frame(from: u64, to: u64) -> Vec<u8> {
        let msg = Message {
            from,
            to,
            ..Default::default()
        };
        let body = PeerFrame {
            from,
            payload: msg.write_to_bytes().expect("encode"),
            ..Default::default()
        }
        .encode_to_vec();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    #[tokio::test]
    async fn a_retired_nodes_open_channel_is_closed_at_its_next_frame() {
        let service = cert::generate_self_signed("service", true).expect("service");
        let (server_node, server_id) = identity(&service, "server");
        let (peer_node, peer_id) = identity(&service, "peer");
        let directory: Directory = Arc::new(RwLock::new(HashMap::new()));
        let info = |status: &str| PeerInfo {
            node_id: String::new(),
            node_address: String::new(),
            rpc_address: String::new(),
            status: status.into(),
        };
        directory.write().expect("lock").insert(peer_id, info("Trusted"));
        let server_tls = ChannelTls {
            node_cert: NodeCert::new(&server_node.cert_pem, &server_node.key_pem).expect("node cert"),
            service_cert_pem: service.cert_pem.clone(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (delivered_tx, mut delivered) = mpsc::unbounded_channel::<u64>();
        let deliver: Arc<dyn Fn(Message) + Send + Sync> = Arc::new(move |m: Message| {
            let _ = delivered_tx.send(m.from);
        });
        let channels = Arc::new(
            Channels::new(
                server_id,
                directory.clone(),
                &server_tls,
                tokio::runtime::Handle::current(),
            )
            .expect("channels"),
        );
        tokio::spawn(serve(
            listener,
            server_tls.server_config().expect("server config"),
            channels,
            deliver,
            4,
        ));

        let client = node_client_config(&peer_node.cert_pem, &peer_node.key_pem, &service.cert_pem)
            .expect("client config");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .expect("handshake");
        tls.write_all(&frame(peer_id, server_id)).await.expect("send");
        tls.flush().await.expect("flush");
        let first = tokio::time::timeout(Duration::from_secs(10), delivered.recv()).await;
        assert_eq!(first.expect("delivered in time"), Some(peer_id));

        // Governance retires the peer; the connection it opened while Trusted stays open until it speaks again.
        directory.write().expect("lock").insert(peer_id, info("Retired"));
        tls.write_all(&frame(peer_id, server_id)).await.expect("send");
        tls.flush().await.expect("flush");
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "the server closes the retired node's channel"
        );
        assert!(
            delivered.try_recv().is_err(),
            "nothing from a retired node reaches Raft"
        );
    }
}

#[cfg(test)]
mod forwarding_tests {
    use super::*;

    struct TestNode {
        id: u64,
        channels: Arc<Channels>,
    }

    /// Two nodes of one service with channels both ways (a listener each), both Trusted.
    async fn pair() -> (TestNode, TestNode) {
        let service = cert::generate_self_signed("service", true).expect("service");
        let directory: Directory = Arc::new(RwLock::new(HashMap::new()));
        let mut nodes = Vec::new();
        for name in ["a", "b"] {
            let node = cert::generate_endorsed(name, &["127.0.0.1".parse().expect("ip")], &[], &service)
                .expect("identity");
            let der = cert::pem_to_der(&node.cert_pem).expect("der");
            let node_id = cert::public_key_id_hex(&der).expect("id");
            let id = raft_id(&node_id);
            let tls = ChannelTls {
                node_cert: NodeCert::new(&node.cert_pem, &node.key_pem).expect("node cert"),
                service_cert_pem: service.cert_pem.clone(),
            };
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            directory.write().expect("lock").insert(
                id,
                PeerInfo {
                    node_id,
                    node_address: listener.local_addr().expect("addr").to_string(),
                    rpc_address: String::new(),
                    status: "Trusted".into(),
                },
            );
            let channels = Arc::new(
                Channels::new(id, directory.clone(), &tls, tokio::runtime::Handle::current())
                    .expect("channels"),
            );
            let deliver: Arc<dyn Fn(Message) + Send + Sync> = Arc::new(|_| {});
            tokio::spawn(serve(
                listener,
                tls.server_config().expect("server config"),
                channels.clone(),
                deliver,
                8,
            ));
            nodes.push(TestNode { id, channels });
        }
        let b = nodes.pop().expect("b");
        let a = nodes.pop().expect("a");
        (a, b)
    }

    fn request(path: &str) -> ForwardedRequest {
        ForwardedRequest {
            id: 0,
            method: "POST".into(),
            path_and_query: path.into(),
            caller_cert: Some(vec![1, 2, 3]),
            body: b"{}".to_vec(),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forwarded_request_is_answered_over_the_channels() {
        let (a, b) = pair().await;
        let responder = b.channels.clone();
        b.channels
            .set_forward_handler(Arc::new(move |from, req: ForwardedRequest| {
                responder.respond(
                    from,
                    ForwardedResponse {
                        id: req.id,
                        status: 201,
                        body: [
                            req.path_and_query.as_bytes(),
                            &req.caller_cert.unwrap_or_default(),
                        ]
                        .concat(),
                        ..Default::default()
                    },
                );
            }));
        for i in 0..20 {
            let path = format!("/app/log/{i}");
            let answer = a
                .channels
                .forward(b.id, request(&path), 10_000)
                .await
                .expect("answered");
            assert_eq!(answer.status, 201);
            assert_eq!(
                answer.body,
                [path.as_bytes(), &[1, 2, 3]].concat(),
                "each answer is its own"
            );
        }
        assert!(
            a.channels.pending.lock().expect("lock").is_empty(),
            "nothing left waiting"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unanswered_forward_times_out_and_a_stray_answer_is_ignored() {
        let (a, b) = pair().await;
        // B never answers; instead it sends A an answer to a request A never made to it.
        let stray = b.channels.clone();
        let a_id = a.id;
        b.channels
            .set_forward_handler(Arc::new(move |_, req: ForwardedRequest| {
                stray.respond(
                    a_id,
                    ForwardedResponse {
                        id: req.id + 1000,
                        status: 200,
                        ..Default::default()
                    },
                );
            }));
        let err = a
            .channels
            .forward(b.id, request("/x"), 300)
            .await
            .expect_err("no answer");
        assert!(matches!(err, ForwardError::Timeout(..)), "{err}");
        assert!(a.channels.pending.lock().expect("lock").is_empty());
        // A node that is not a peer cannot be forwarded to: the writer cannot connect and fails the request at
        // once rather than after the timeout.
        let err = a
            .channels
            .forward(12345, request("/x"), 60_000)
            .await
            .expect_err("unknown peer");
        assert!(matches!(err, ForwardError::Lost(12345)), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_waiting_on_an_old_primary_fail_when_the_primary_changes() {
        let (a, b) = pair().await;
        // B swallows requests (a primary that died after reading them).
        b.channels.set_forward_handler(Arc::new(|_, _| {}));
        let waiting = {
            let channels = a.channels.clone();
            let to = b.id;
            tokio::spawn(async move { channels.forward(to, request("/x"), 60_000).await })
        };
        while a.channels.pending.lock().expect("lock").is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        a.channels.abandon_forwards(a.id);
        let err = waiting.await.expect("task").expect_err("abandoned");
        assert!(matches!(err, ForwardError::Lost(_)), "{err}");
    }
}
