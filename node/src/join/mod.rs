//! The join protocol: its wire types, the joining node's side (here) and the primary's ([`admission`]).
//!
//! ```text
//!  new key + self-signed cert ─▶ POST /node/join {addresses, evidence(report data = node id)} over TLS with it
//!     ◀─ node id, endorsed certificate, service identity, ledger secret, nodes, committed snapshot offer
//!  GET /node/snapshot ◀─ snapshot + evidence entry + receipt; checked: receipt verifies with the service
//!     certificate, the entry is the receipt's transaction, its evidence names the snapshot's digest
//!  start with the snapshot's state: Raft catches the node up from the snapshot's seqno
//! ```

pub mod admission;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use synod_core::cert::{self, Identity};
use synod_core::ledger::LedgerEntry;
use synod_core::receipt::JsonReceipt;
use synod_core::tables::NodeStatus;
use synod_kv::seal::LedgerSecret;

use crate::channels::PeerInfo;
use crate::config::JoinConfig;
use crate::platform::{Platform, QuoteInfo};
use crate::service::Identities;
use crate::snapshot_codec::{self, SnapshotEvidence};

/// How long a joiner waits for each answer of the service (its snapshot download streams within it).
const JOIN_REQUEST_TIMEOUT_MS: u64 = 30_000;

/// An HTTPS client that authenticates as this node and trusts only the service identity.
fn node_client(
    node_cert_pem: &str,
    node_key_pem: &str,
    service_cert_pem: &str,
) -> anyhow::Result<reqwest::Client> {
    let tls = crate::channels::node_client_config(node_cert_pem, node_key_pem, service_cert_pem)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_millis(JOIN_REQUEST_TIMEOUT_MS))
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build()?)
}

/// `POST /node/join` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The node's name.
    pub node_name: String,
    /// Its client-facing address.
    pub rpc_address: String,
    /// Its node-to-node address.
    pub node_address: String,
    /// Attestation evidence; its report data is the node id (SHA-256 of the TLS public key).
    pub quote_info: QuoteInfo,
    /// Development mode (a service without members): the operator's join token, which the primary checks
    /// against the digest recorded at genesis. Absent (and ignored) with members: they trust nodes by vote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
    /// The node's RSA encryption public key (PEM): rekeyed ledger secrets are encrypted to it (CCF's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_pub_key: Option<String>,
}

/// Longest wait between join attempts, whatever `Retry-After` says.
const JOIN_RETRY_AFTER_S_MAX: u64 = 30;

/// Shortest join token accepted: the digest is in the (public) ledger, so the token must not be guessable.
pub const JOIN_TOKEN_CHARS_MIN: usize = 32;

/// The hex SHA-256 of a join token, as recorded at genesis.
pub fn join_token_digest(token: &str) -> String {
    hex::encode(synod_core::hash::sha256(token.as_bytes()))
}

/// Reads a join token file (surrounding whitespace ignored).
pub fn read_join_token(path: &std::path::Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the join token {}", path.display()))?
        .trim()
        .to_string();
    ensure!(
        token.len() >= JOIN_TOKEN_CHARS_MIN,
        "the join token in {} is shorter than {JOIN_TOKEN_CHARS_MIN} characters",
        path.display()
    );
    Ok(token)
}

/// The join token in `path`, or a fresh random one written there (mode 0600) if the file does not exist.
pub fn load_or_create_join_token(path: &std::path::Path) -> anyhow::Result<String> {
    if path.exists() {
        return read_join_token(path);
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| anyhow::anyhow!("generating a join token: {e}"))?;
    let token = hex::encode(bytes);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::service::write_private(path, token.as_bytes())?;
    Ok(token)
}

/// A committed snapshot a joining node can start from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotOffer {
    /// Its seqno.
    pub seqno: u64,
    /// Seqno of its evidence.
    pub evidence_seqno: u64,
    /// URL of a node serving it.
    pub url: String,
}

/// `POST /node/join` answer (a `Pending` node gets only its id and status).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JoinResponse {
    /// The node's id.
    pub node_id: String,
    /// `Trusted` (or `Pending` once governance decides).
    pub status: String,
    /// The node's certificate, endorsed by the service identity.
    pub endorsed_certificate: String,
    /// The service certificate.
    pub service_certificate: String,
    /// The service identity's key (every node signs with it).
    pub service_key: String,
    /// Base64 ledger secret (the latest).
    pub ledger_secret: String,
    /// Every ledger secret of the service's own schedule, `(first seqno, base64 secret)` in order: a snapshot may
    /// be sealed under an earlier one than the latest.
    pub ledger_secrets: Vec<(u64, String)>,
    /// The nodes of the service.
    pub nodes: Vec<PeerInfo>,
    /// The snapshot to start from, if the service has one.
    pub snapshot: Option<SnapshotOffer>,
}

/// `GET /node/snapshot` answer: a committed snapshot and the proof that it is committed; its bytes are at
/// `GET /node/snapshot/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotResponse {
    /// Snapshot seqno.
    pub seqno: u64,
    /// Evidence seqno.
    pub evidence_seqno: u64,
    /// Size of the snapshot file, in bytes.
    pub size: u64,
    /// The file's name (`snapshot_<seqno>_<evidence seqno>.committed`), the last segment of its URL.
    pub name: String,
    /// Base64 ledger entry of the evidence transaction.
    pub evidence_entry: String,
    /// JSON receipt of the evidence transaction.
    pub receipt: JsonReceipt,
}

/// What joining produced.
pub struct Joined {
    /// Identities and secret.
    pub ids: Identities,
    /// The verified snapshot, if one was offered.
    pub snapshot: Option<Vec<u8>>,
    /// The service's nodes.
    pub peers: Vec<PeerInfo>,
}

/// Checks a snapshot's bytes against the proof that it is committed.
pub fn verify_snapshot(
    answer: &SnapshotResponse,
    bytes: &[u8],
    service_cert_pem: &str,
) -> anyhow::Result<()> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s);
    let entry = LedgerEntry::decode(
        b64(&answer.evidence_entry)
            .context("evidence is not base64")?
            .as_slice(),
    )
    .context("evidence entry")?;
    let service_der = cert::pem_to_der(service_cert_pem)?;
    let verified =
        synod_core::receipt::verify_json(&answer.receipt, &service_der).context("evidence receipt")?;
    let components = answer
        .receipt
        .leaf_components
        .as_ref()
        .context("the receipt has no leaf")?;
    ensure!(
        hex::encode(entry.write_set_digest()) == components.write_set_digest,
        "the evidence entry is not the transaction the receipt proves"
    );
    ensure!(
        verified.tx_id.map(|t| t.seqno) == Some(answer.evidence_seqno),
        "the receipt proves another transaction"
    );
    let tx = entry.decode_transaction()?;
    let ws = tx.public_write_set()?;
    let value = SnapshotEvidence::recorded_in(&ws).context("the evidence transaction records no snapshot")?;
    let evidence: SnapshotEvidence = serde_json::from_slice(value)?;
    ensure!(
        evidence.seqno == answer.seqno,
        "the evidence is for snapshot {}",
        evidence.seqno
    );
    ensure!(
        evidence.digest == hex::encode(snapshot_codec::digest(bytes)),
        "the snapshot's digest differs from its committed evidence"
    );
    Ok(())
}

/// `GET url`, failing with `what` and the node's answer unless it is a success.
async fn get_ok(http: &reqwest::Client, url: &str, what: &str) -> anyhow::Result<reqwest::Response> {
    let r = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("fetching {url}"))?;
    ensure!(
        r.status().is_success(),
        "fetching {what}: {} {}",
        r.status(),
        r.text().await.unwrap_or_default()
    );
    Ok(r)
}

/// A progress bar for a snapshot download of `size` bytes on an operator's terminal; indicatif draws nothing when
/// stderr is not a terminal (a service manager, a log file).
fn download_progress(size: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(size);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "snapshot {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Fetches the committed snapshot `offer` names and checks it against its proof.
async fn fetch_snapshot(
    http: &reqwest::Client,
    offer: &SnapshotOffer,
    service_cert_pem: &str,
) -> anyhow::Result<Vec<u8>> {
    let base = offer.url.trim_end_matches('/');
    let url = format!("{base}/node/snapshot?seqno={}", offer.seqno);
    let r = get_ok(http, &url, "the snapshot's proof").await?;
    let answer: SnapshotResponse = r.json().await.context("snapshot answer")?;
    ensure!(
        snapshot_codec::parse_committed_name(&answer.name) == Some((answer.seqno, answer.evidence_seqno)),
        "the snapshot is named {:?}",
        answer.name
    );
    let url = format!("{base}/node/snapshot/{}", answer.name);
    let mut r = get_ok(http, &url, "the snapshot").await?;
    // Read no more than the size announced with the proof (the digest check catches any other difference).
    let mut bytes = Vec::with_capacity(usize::try_from(answer.size.min(1 << 30)).unwrap_or(0));
    let progress = download_progress(answer.size);
    while let Some(chunk) = r.chunk().await.context("downloading the snapshot")? {
        ensure!(
            bytes.len() as u64 + chunk.len() as u64 <= answer.size,
            "the snapshot is larger than the {} bytes announced",
            answer.size
        );
        bytes.extend_from_slice(&chunk);
        progress.set_position(bytes.len() as u64);
    }
    progress.finish_and_clear();
    verify_snapshot(&answer, &bytes, service_cert_pem)?;
    tracing::info!(
        seqno = answer.seqno,
        bytes = bytes.len(),
        "starting from a committed snapshot"
    );
    Ok(bytes)
}

/// Joins the service at `cfg.target` (retrying until `cfg.join_timeout_s`), as a node reachable at the given
/// addresses.
pub async fn join(
    cfg: &JoinConfig,
    rpc: String,
    node: String,
    platform: &dyn Platform,
) -> anyhow::Result<Joined> {
    let service_cert_pem = std::fs::read_to_string(&cfg.service_cert)
        .with_context(|| format!("reading the service certificate {}", cfg.service_cert.display()))?;
    let own = cert::generate_self_signed_with(cfg.node.curve, &cfg.node.node_name, false)?;
    let own_der = cert::pem_to_der(&own.cert_pem)?;
    let node_id = cert::public_key_id_hex(&own_der)?;
    let report_data = synod_core::hash::digest_from_hex(&node_id).context("node id")?;
    let join_token = cfg.join_token_file.as_deref().map(read_join_token).transpose()?;
    let encryption_key_pem = crate::service::new_encryption_key()?;
    let request = JoinRequest {
        node_name: cfg.node.node_name.clone(),
        rpc_address: rpc,
        node_address: node,
        quote_info: platform.evidence(&report_data)?,
        join_token,
        encryption_pub_key: Some(crate::service::encryption_public_pem(&encryption_key_pem)?),
    };
    let http = node_client(&own.cert_pem, &own.key_pem, &service_cert_pem)?;
    let answer = ask_until_admitted(cfg, &http, &request).await?;
    check_answer(&answer, &node_id, &own_der, &service_cert_pem)?;
    let secret = LedgerSecret::from_base64(&answer.ledger_secret)?;
    let schedule = answer
        .ledger_secrets
        .iter()
        .map(|(from, s)| Ok((*from, LedgerSecret::from_base64(s)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    tracing::info!(node_id, status = %answer.status, "joined");

    let snapshot = match &answer.snapshot {
        None => None,
        Some(offer) => {
            let http = node_client(&answer.endorsed_certificate, &own.key_pem, &service_cert_pem)?;
            Some(fetch_snapshot(&http, offer, &service_cert_pem).await?)
        }
    };
    let peers = answer
        .nodes
        .into_iter()
        .filter(|n| n.node_id != node_id)
        .collect();
    Ok(Joined {
        ids: Identities {
            service: Identity {
                cert_pem: answer.service_certificate,
                key_pem: answer.service_key,
            },
            node: Identity {
                cert_pem: answer.endorsed_certificate,
                key_pem: own.key_pem,
            },
            secret,
            schedule,
            encryption_key_pem,
        },
        snapshot,
        peers,
    })
}

/// Asks the service to let this node join until it is admitted (Trusted), waiting while it is Pending or the
/// service asks to retry, within `--join-timeout-s`.
async fn ask_until_admitted(
    cfg: &JoinConfig,
    http: &reqwest::Client,
    request: &JoinRequest,
) -> anyhow::Result<JoinResponse> {
    let url = format!("{}/node/join", cfg.target.trim_end_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(cfg.join_timeout_s);
    loop {
        let last_error = match http.post(&url).json(request).send().await {
            Ok(r) if r.status().is_success() => {
                let answer: JoinResponse = r.json().await.context("join answer")?;
                if answer.status != NodeStatus::Pending.as_str() {
                    return Ok(answer);
                }
                format!(
                    "node {} is Pending: waiting for the members to trust it (transition_node_to_trusted)",
                    answer.node_id
                )
            }
            // The service is busy (an election, or a bound such as the Pending joins or this address's join
            // rate): wait as long as it asks, then try again.
            Ok(r)
                if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    || r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                let wait_s = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    .min(JOIN_RETRY_AFTER_S_MAX);
                let text = r.text().await.unwrap_or_default();
                tokio::time::sleep(Duration::from_secs(wait_s)).await;
                text
            }
            Ok(r) => {
                let status = r.status();
                bail!(
                    "the service refused to let this node join: {status} {}",
                    r.text().await.unwrap_or_default()
                )
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!(
                "could not join {} within {} s: {last_error}",
                cfg.target,
                cfg.join_timeout_s
            );
        }
        tracing::info!("join: {last_error}; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Checks what the service handed this node: its own node id, the service identity it trusts, and a certificate
/// for its own key endorsed by that identity.
fn check_answer(
    answer: &JoinResponse,
    node_id: &str,
    own_der: &[u8],
    service_cert_pem: &str,
) -> anyhow::Result<()> {
    ensure!(
        answer.node_id == node_id,
        "the service assigned node id {} to this key",
        answer.node_id
    );
    // The same service identity: governance may have renewed its certificate since this one was handed out.
    ensure!(
        cert::same_public_key(
            &cert::pem_to_der(&answer.service_certificate)?,
            &cert::pem_to_der(service_cert_pem)?
        )?,
        "the service answered with another service identity"
    );
    let endorsed_der = cert::pem_to_der(&answer.endorsed_certificate)?;
    cert::verify_endorsement(&endorsed_der, &cert::pem_to_der(service_cert_pem)?)?;
    ensure!(
        cert::same_public_key(&endorsed_der, own_der)?,
        "the endorsed certificate is for another key"
    );
    Ok(())
}
