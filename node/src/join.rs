//! The joining node's side of the join protocol (the primary's side is `rpc::join`).
//!
//! ```text
//!  new key + self-signed cert ─▶ POST /node/join {addresses, evidence(report data = node id)} over TLS with it
//!     ◀─ node id, endorsed certificate, service identity, ledger secret, nodes, committed snapshot offer
//!  GET /node/snapshot ◀─ snapshot + evidence entry + receipt; checked: receipt verifies with the service
//!     certificate, the entry is the receipt's transaction, its evidence names the snapshot's digest
//!  start with the snapshot's state: Raft catches the node up from the snapshot's seqno
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use synod_core::cert::{self, Identity};
use synod_core::ledger::LedgerEntry;
use synod_core::receipt::JsonReceipt;
use synod_kv::seal::LedgerSecret;

use crate::attestation::{Platform, QuoteInfo};
use crate::channels::PeerInfo;
use crate::config::JoinConfig;
use crate::rpc::forward::node_client;
use crate::service::Identities;
use crate::snapshot::{self, SnapshotEvidence};

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
    /// Base64 ledger secret.
    pub ledger_secret: String,
    /// The nodes of the service.
    pub nodes: Vec<PeerInfo>,
    /// The snapshot to start from, if the service has one.
    pub snapshot: Option<SnapshotOffer>,
}

/// `GET /node/snapshot` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotResponse {
    /// Snapshot seqno.
    pub seqno: u64,
    /// Evidence seqno.
    pub evidence_seqno: u64,
    /// Base64 snapshot file.
    pub snapshot: String,
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

/// Checks a snapshot against the proof that it is committed; returns its bytes.
pub fn verify_snapshot(answer: &SnapshotResponse, service_cert_pem: &str) -> anyhow::Result<Vec<u8>> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s);
    let bytes = b64(&answer.snapshot).context("snapshot is not base64")?;
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
        evidence.digest == hex::encode(snapshot::digest(&bytes)),
        "the snapshot's digest differs from its committed evidence"
    );
    Ok(bytes)
}

/// Joins the service at `cfg.target` (retrying until `cfg.join_timeout_s`), as a node reachable at the given
/// addresses.
pub async fn join(
    cfg: &JoinConfig,
    rpc: SocketAddr,
    node: SocketAddr,
    platform: &dyn Platform,
) -> anyhow::Result<Joined> {
    let service_cert_pem = std::fs::read_to_string(&cfg.service_cert)
        .with_context(|| format!("reading the service certificate {}", cfg.service_cert.display()))?;
    let own = cert::generate_self_signed(&cfg.node.node_name, false)?;
    let own_der = cert::pem_to_der(&own.cert_pem)?;
    let node_id = cert::public_key_id_hex(&own_der)?;
    let report_data = synod_core::hash::digest_from_hex(&node_id).context("node id")?;
    let request = JoinRequest {
        node_name: cfg.node.node_name.clone(),
        rpc_address: rpc.to_string(),
        node_address: node.to_string(),
        quote_info: platform.evidence(&report_data),
    };
    let http = node_client(&own.cert_pem, &own.key_pem, &service_cert_pem)?;
    let url = format!("{}/node/join", cfg.target.trim_end_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(cfg.join_timeout_s);
    let answer: JoinResponse = loop {
        let last_error = match http.post(&url).json(&request).send().await {
            Ok(r) if r.status().is_success() => {
                let answer: JoinResponse = r.json().await.context("join answer")?;
                if answer.status != "Pending" {
                    break answer;
                }
                format!(
                    "node {} is Pending: waiting for the members to trust it (transition_node_to_trusted)",
                    answer.node_id
                )
            }
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                r.text().await.unwrap_or_default()
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
    };
    ensure!(
        answer.node_id == node_id,
        "the service assigned node id {} to this key",
        answer.node_id
    );
    ensure!(
        answer.service_certificate == service_cert_pem,
        "the service answered with another service certificate"
    );
    let endorsed_der = cert::pem_to_der(&answer.endorsed_certificate)?;
    cert::verify_endorsement(&endorsed_der, &cert::pem_to_der(&service_cert_pem)?)?;
    ensure!(
        cert::same_public_key(&endorsed_der, &own_der)?,
        "the endorsed certificate is for another key"
    );
    let secret: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(&answer.ledger_secret)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("the ledger secret is not 32 bytes"))?;
    tracing::info!(node_id, status = %answer.status, "joined");

    let snapshot = match &answer.snapshot {
        None => None,
        Some(offer) => {
            let http = node_client(&answer.endorsed_certificate, &own.key_pem, &service_cert_pem)?;
            let url = format!(
                "{}/node/snapshot?seqno={}",
                offer.url.trim_end_matches('/'),
                offer.seqno
            );
            let r = http
                .get(&url)
                .send()
                .await
                .with_context(|| format!("fetching {url}"))?;
            ensure!(
                r.status().is_success(),
                "fetching the snapshot: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
            let s: SnapshotResponse = r.json().await.context("snapshot answer")?;
            let bytes = verify_snapshot(&s, &service_cert_pem)?;
            tracing::info!(
                seqno = s.seqno,
                bytes = bytes.len(),
                "starting from a committed snapshot"
            );
            Some(bytes)
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
            secret: LedgerSecret(secret),
        },
        snapshot,
        peers,
    })
}
