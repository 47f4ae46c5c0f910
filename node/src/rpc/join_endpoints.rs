//! Joining and leaving: `POST /node/join` (a new node presents its key in TLS and attestation evidence binding it),
//! and `GET /node/snapshot` (the newest committed snapshot with the proof that it is committed). Retiring a node is
//! governance's `remove_node`.

use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use prost::Message as _;
use serde::Deserialize;
use serde_json::json;
use synod_core::attestation::{PlatformKind, Verified};
use synod_core::cert;
use synod_core::maps;
use synod_kv::State as KvState;

use super::{extract, ApiError, AppState, Peer};
use crate::attestation;
use crate::channels::PeerInfo;
use crate::consensus::machine::CoreError;
use crate::join::{JoinRequest, JoinResponse, SnapshotOffer, SnapshotResponse};
use crate::service::{committed_snapshots, node_info, now_secs};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/node/join", post(join))
        .route("/node/snapshot", get(snapshot))
        .route("/node/snapshot/{name}", get(snapshot_file))
}

fn core_error(e: CoreError) -> ApiError {
    match e {
        CoreError::NotPrimary => ApiError::not_primary(),
        CoreError::Busy => ApiError::busy("ServiceBusy", e.to_string(), 1),
        CoreError::Refused(m) => ApiError::new(StatusCode::FORBIDDEN, "NodeRetired", m),
        other => ApiError::internal(other.to_string()),
    }
}

/// The service's endorsement of the key a joining node presented in TLS.
fn endorse(app: &AppState, der: &[u8], name: &str, rpc: &str) -> Result<String, ApiError> {
    let (ips, names) = crate::config::certificate_names(rpc);
    // Under the lifetime governance set for every node (set_all_nodes_certificate_validity), if any.
    let validity =
        crate::governance::renewal::joiner_validity(&app.node.service_info(), now_secs().max(0) as u64);
    cert::endorse_public_key_with(der, name, &ips, &names, &app.node.service, validity)
        .map_err(|e| ApiError::invalid_input(format!("cannot endorse the node's key: {e}")))
}

fn forbidden(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

/// Longest node name accepted from a joiner (it is recorded in the ledger).
pub const NODE_NAME_CHARS_MAX: usize = 64;
/// Largest TLS certificate a joiner may present (it is recorded in the ledger while Pending).
pub const NODE_CERT_BYTES_MAX: usize = 8 * 1024;
/// Seconds a client is told to wait when the Pending joins are at their bound.
const PENDING_FULL_RETRY_S: u32 = 60;

fn check_node_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= NODE_NAME_CHARS_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_input(format!(
            "node_name must be 1 to {NODE_NAME_CHARS_MAX} characters of A-Z, a-z, 0-9, '.', '_' or '-'"
        )))
    }
}

/// Whether `token` is the development-mode join token whose digest genesis recorded.
fn join_token_matches(state: &synod_kv::State, token: Option<&str>) -> bool {
    let (Some(recorded), Some(token)) = (state.get(maps::JOIN_TOKEN_DIGEST, b""), token) else {
        return false;
    };
    let presented = crate::join::join_token_digest(token);
    // Compared without an early exit, so the time taken says nothing about how much of the digest matched.
    recorded.len() == presented.len()
        && recorded
            .iter()
            .zip(presented.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Records a new Pending node, within the bounds: expired Pending records (never trusted within
/// `--pending-join-ttl-s`) are removed in the same transaction, and at `--pending-joins-max` the join is refused
/// with 503. Answers what is there instead if the node appeared meanwhile.
async fn record_pending(
    app: &AppState,
    node_id: &str,
    info: &serde_json::Value,
    now: i64,
) -> Result<Option<serde_json::Value>, ApiError> {
    let limits = &app.node.config().limits;
    let ttl = i64::try_from(limits.pending_join_ttl_s).unwrap_or(i64::MAX);
    let (current, _) = app
        .node
        .execute_async(|tx| {
            // Another join, or governance (say, retiring it), may have written this node since the caller read the
            // state: never overwrite it.
            let current = tx
                .get(maps::NODES_INFO, node_id.as_bytes())
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(&v).ok());
            if current.is_some() {
                return Ok(current);
            }
            let mut pending = 0u64;
            let mut expired = Vec::new();
            for (key, value) in tx.range(maps::NODES_INFO, b"", None, usize::MAX) {
                let Ok(record) = serde_json::from_slice::<serde_json::Value>(&value) else {
                    continue;
                };
                if record["status"] != "Pending" {
                    continue;
                }
                let asked = record["joined_at"].as_i64().unwrap_or(0);
                if asked.saturating_add(ttl) <= now {
                    expired.push(key);
                } else {
                    pending += 1;
                }
            }
            for key in &expired {
                tx.delete(maps::NODES_INFO, key);
            }
            if pending >= limits.pending_joins_max {
                return Err(ApiError::busy(
                    "TooManyPendingJoins",
                    format!(
                        "{pending} nodes are already waiting for the members' decision (the bound is \
                     --pending-joins-max); retry later"
                    ),
                    PENDING_FULL_RETRY_S,
                ));
            }
            tx.put(maps::NODES_INFO, node_id.as_bytes(), info.to_string().as_bytes());
            Ok(None)
        })
        .await?;
    Ok(current)
}

/// The service's join policy, set by governance, applied to verified evidence: an allowed measurement
/// (`add_node_code`, or on SEV-SNP a UVM endorsement by a publisher governance approved:
/// `add_snp_uvm_endorsement`), on SEV-SNP allowed host data (`add_snp_host_data`: the launch's security policy digest), and
/// the platform's minimum TCB if one is set (`set_node_minimum_tcb`). The refusal's code and message.
pub fn join_policy(state: &KvState, v: &Verified) -> Result<(), (&'static str, String)> {
    if state
        .get(maps::NODES_CODE_IDS, v.measurement.as_bytes())
        .is_none()
        && !uvm_endorsement_allowed(state, v)
    {
        return Err((
            "CodeIdNotFound",
            format!(
                "measurement {} is not allowed to join this service (add_node_code; on SEV-SNP, or a UVM \
                 endorsement by an approved publisher: add_snp_uvm_endorsement)",
                v.measurement
            ),
        ));
    }
    if let Some(host_data) = v.host_data.as_deref() {
        if state
            .get(maps::NODES_SNP_HOST_DATA, host_data.as_bytes())
            .is_none()
        {
            return Err((
                "HostDataNotAllowed",
                format!("SNP host data {host_data} is not allowed to join this service (add_snp_host_data)"),
            ));
        }
    }
    let platform = match v.platform {
        PlatformKind::Sgx => "sgx",
        PlatformKind::Snp => "snp",
        PlatformKind::Virtual => return Ok(()),
    };
    let minimum = state
        .get(maps::NODES_MINIMUM_TCB, platform.as_bytes())
        .and_then(|b| serde_json::from_slice::<String>(b).ok());
    if let Some(minimum) = minimum {
        synod_core::attestation::check_minimum_tcb(v, &minimum).map_err(|e| ("TcbTooLow", e.to_string()))?;
    }
    Ok(())
}

/// Whether the node's UVM endorsement (verified already) is by a publisher and feed governance approved, at an
/// SVN at least the approved one.
fn uvm_endorsement_allowed(state: &KvState, v: &Verified) -> bool {
    let Some(e) = &v.uvm_endorsements else {
        return false;
    };
    state
        .get(maps::NODES_SNP_UVM_ENDORSEMENTS, e.did.as_bytes())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|feeds| feeds[&e.feed]["svn"].as_str().map(str::to_string))
        .is_some_and(|minimum| synod_core::attestation::svn_at_least(&e.svn, &minimum))
}

async fn join(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    body: Body,
) -> Result<Response, ApiError> {
    let der = peer
        .cert_der
        .clone()
        .ok_or_else(|| ApiError::unauthorized("joining requires the node's TLS client certificate"))?;
    if der.len() > NODE_CERT_BYTES_MAX {
        return Err(ApiError::invalid_input(format!(
            "the node's certificate is larger than {NODE_CERT_BYTES_MAX} bytes"
        )));
    }
    let req: JoinRequest = extract::json_body(body, app.max_body_bytes).await?;
    check_node_name(&req.node_name)?;
    let verified =
        attestation::verify(&req.quote_info).map_err(|e| forbidden("InvalidQuote", e.to_string()))?;
    let key_digest = cert::public_key_id(&der).map_err(|e| ApiError::invalid_input(e.to_string()))?;
    let node_id = hex::encode(key_digest);
    if !verified.binds(&key_digest) {
        return Err(forbidden(
            "InvalidQuote",
            "the evidence's report data does not bind the key presented in TLS".into(),
        ));
    }
    let rpc = crate::config::parse_host_port(&req.rpc_address)
        .map_err(|e| ApiError::invalid_input(format!("rpc_address: {e}")))?;
    let node_address = crate::config::parse_host_port(&req.node_address)
        .map_err(|e| ApiError::invalid_input(format!("node_address: {e}")))?;
    let state = app.node.view().state.clone();
    join_policy(&state, &verified).map_err(|(code, message)| forbidden(code, message))?;
    let mut existing: Option<serde_json::Value> = state
        .get(maps::NODES_INFO, node_id.as_bytes())
        .and_then(|v| serde_json::from_slice(v).ok());
    // With a consortium, a new node waits (Pending) until the members trust it by vote. Without one
    // (development mode), only the operator's join token admits a node: evidence of the `virtual` platform is
    // unsigned, so an allowed measurement alone proves nothing.
    let governed = state.map(maps::MEMBERS_CERTS).is_some_and(|m| !m.is_empty());
    if !governed && !join_token_matches(&state, req.join_token.as_deref()) {
        return Err(forbidden(
            "InvalidJoinToken",
            "this service has no members: a joining node must present its join token (synod-node join \
             --join-token-file)"
                .into(),
        ));
    }
    // Decided on `existing`; a join that finds, inside its transaction, that the node appeared meanwhile decides
    // again on what is there (at most once more: that record is never absent).
    let info = loop {
        break match existing {
            Some(info) if info["status"] == "Retired" => {
                return Err(forbidden(
                    "NodeRetired",
                    format!("node {node_id} was retired and cannot rejoin"),
                ))
            }
            Some(info) if info["status"] == "Pending" => {
                return Ok(Json(pending_answer(&node_id)).into_response());
            }
            // Trusted, and already endorsed and added: a retried join gets the same answer again.
            Some(info) if info["endorsed"] == true => info,
            // Trusted by the members, but the vote is not committed yet: a view change could still undo it, and the
            // node would then hold the service's secrets without the consortium's decision. Ask again.
            Some(_) if !trust_committed(&app, &node_id) => {
                return Ok(Json(pending_answer(&node_id)).into_response());
            }
            // Trusted by the members since it asked: only now is its key endorsed and does it enter Raft.
            Some(mut info) => {
                let endorsed = endorse(&app, &der, &req.node_name, &rpc)?;
                info["cert"] = json!(endorsed);
                info["endorsed"] = json!(true);
                let (id, added) = (node_id.clone(), info.clone());
                app.node
                    .ask_async(move |c| c.add_node(&id, &added, now_secs()))
                    .await?
                    .map_err(core_error)?;
                tracing::info!(node_id, "a trusted node was endorsed and added");
                info
            }
            None if governed => {
                // Recording a Pending node is the one ledger write an unauthenticated caller can cause: bounded
                // per client address here (a backup forwards the address it saw), and in number
                // and age by record_pending.
                if let Some(addr) = peer.addr {
                    let now_ms = u64::try_from(now_secs()).unwrap_or(0).saturating_mul(1000);
                    app.join_limiter.take(addr.ip(), now_ms).map_err(|wait_s| {
                        ApiError::too_many_requests(
                            format!("{} asked to join as too many new nodes; retry later", addr.ip()),
                            wait_s,
                        )
                    })?;
                }
                let mut info = node_info(
                    &req.node_name,
                    &cert::der_to_pem(&der),
                    "Pending",
                    &rpc,
                    &node_address,
                    &verified.measurement,
                );
                info["endorsed"] = json!(false);
                info["joined_at"] = json!(now_secs());
                info["quote_info"] = json!(req.quote_info);
                if let Some(key) = &req.encryption_pub_key {
                    info["encryption_pub_key"] = json!(key);
                }
                if let Some(current) = record_pending(&app, &node_id, &info, now_secs()).await? {
                    existing = Some(current);
                    continue;
                }
                tracing::info!(node_id, name = %req.node_name, "a node asked to join: Pending until trusted by vote");
                return Ok(Json(pending_answer(&node_id)).into_response());
            }
            None => {
                let endorsed = endorse(&app, &der, &req.node_name, &rpc)?;
                let mut info = node_info(
                    &req.node_name,
                    &endorsed,
                    "Trusted",
                    &rpc,
                    &node_address,
                    &verified.measurement,
                );
                info["endorsed"] = json!(true);
                info["quote_info"] = json!(req.quote_info);
                if let Some(key) = &req.encryption_pub_key {
                    info["encryption_pub_key"] = json!(key);
                }
                let (id, added) = (node_id.clone(), info.clone());
                app.node
                    .ask_async(move |c| c.add_node(&id, &added, now_secs()))
                    .await?
                    .map_err(core_error)?;
                tracing::info!(node_id, name = %req.node_name, "a node joined with the join token");
                info
            }
        };
    };
    let nodes = state
        .map(maps::NODES_INFO)
        .into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(k, e)| {
            let info: serde_json::Value = serde_json::from_slice(&e.value).ok()?;
            Some(PeerInfo {
                node_id: String::from_utf8_lossy(k).to_string(),
                node_address: info["node_address"].as_str()?.to_string(),
                rpc_address: info["rpc_address"].as_str()?.to_string(),
                status: info["status"].as_str().unwrap_or_default().to_string(),
            })
        })
        .collect();
    let snapshot = committed_snapshots(&app.node.paths)
        .first()
        .map(|(seqno, evidence_seqno, _)| SnapshotOffer {
            seqno: *seqno,
            evidence_seqno: *evidence_seqno,
            url: format!("https://{}", app.node.rpc_published),
        });
    let schedule = app.node.sealer().schedule();
    let (_, latest) = app.node.sealer().latest();
    let answer = JoinResponse {
        node_id,
        status: info["status"].as_str().unwrap_or_default().to_string(),
        endorsed_certificate: info["cert"].as_str().unwrap_or_default().to_string(),
        service_certificate: app.node.current_service_cert(),
        service_key: app.node.service.key_pem.clone(),
        ledger_secret: latest.to_base64(),
        ledger_secrets: schedule.iter().map(|(from, s)| (*from, s.to_base64())).collect(),
        nodes,
        snapshot,
    };
    Ok(Json(answer).into_response())
}

/// Whether the nodes table says `node_id` is Trusted in the committed state (not only in the primary's speculative
/// one).
fn trust_committed(app: &AppState, node_id: &str) -> bool {
    app.node
        .view()
        .committed_state
        .get(maps::NODES_INFO, node_id.as_bytes())
        .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
        .is_some_and(|info| info["status"] == "Trusted")
}

fn pending_answer(node_id: &str) -> JoinResponse {
    JoinResponse {
        node_id: node_id.to_string(),
        status: "Pending".into(),
        ..Default::default()
    }
}

#[derive(Deserialize)]
struct SnapshotQuery {
    seqno: Option<u64>,
}

/// Seconds a node is told to wait when every snapshot download slot is taken.
const DOWNLOADS_BUSY_RETRY_S: u32 = 5;

/// The caller's node id if it is a Trusted node of this service: its TLS certificate is endorsed by the service
/// (checked at the handshake) and the nodes table says Trusted. A Pending node holds no endorsed certificate.
fn trusted_node(app: &AppState, peer: &Peer) -> Result<String, ApiError> {
    let node_id = peer.endorsed_node.clone().ok_or_else(|| {
        ApiError::unauthorized("snapshots are served to Trusted nodes of this service only")
    })?;
    let trusted = app
        .node
        .view()
        .committed_state
        .get(maps::NODES_INFO, node_id.as_bytes())
        .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
        .is_some_and(|info| info["status"] == "Trusted");
    if !trusted {
        return Err(ApiError::forbidden(format!(
            "node {node_id} is not a Trusted node of this service"
        )));
    }
    Ok(node_id)
}

/// `GET /node/snapshot[?seqno=S]`: which committed snapshot this node serves, with the proof that it is
/// committed; its bytes are streamed by `GET /node/snapshot/{name}`.
async fn snapshot(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    trusted_node(&app, &peer)?;
    let q: SnapshotQuery = extract::query(q)?;
    let (seqno, evidence_seqno, path) = committed_snapshots(&app.node.paths)
        .into_iter()
        .find(|(s, _, _)| q.seqno.is_none_or(|want| want == *s))
        .ok_or_else(|| ApiError::not_found("no committed snapshot here"))?;
    let size = std::fs::metadata(&path)
        .map_err(|e| ApiError::internal(format!("reading {}: {e}", path.display())))?
        .len();
    let (evidence, tx) = app
        .node
        .ask_async(move |core| (core.ledger_entry(evidence_seqno), core.tx_id_at(evidence_seqno)))
        .await?;
    let evidence = evidence.ok_or_else(|| {
        ApiError::not_found(format!("the evidence of snapshot {seqno} is no longer held here"))
    })?;
    let super::node_endpoints::Receipt::Json(receipt) =
        super::node_endpoints::receipt_of(&app, tx, false).await?
    else {
        return Err(ApiError::internal("a JSON receipt was asked for"));
    };
    Ok(Json(SnapshotResponse {
        seqno,
        evidence_seqno,
        size,
        name: crate::snapshot_codec::file_name(seqno, Some(evidence_seqno)),
        evidence_entry: base64::engine::general_purpose::STANDARD.encode(evidence.encode_to_vec()),
        receipt,
    })
    .into_response())
}

/// `GET /node/snapshot/{name}`: the committed snapshot file, streamed (never read whole into memory), to at
/// most `--snapshot-downloads-max` nodes at once.
async fn snapshot_file(
    State(app): State<AppState>,
    Extension(peer): Extension<Peer>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    trusted_node(&app, &peer)?;
    // Only a name this node lists as committed is opened: nothing from the request reaches the file system.
    let (_, _, path) = committed_snapshots(&app.node.paths)
        .into_iter()
        .find(|(s, e, _)| crate::snapshot_codec::file_name(*s, Some(*e)) == name)
        .ok_or_else(|| ApiError::not_found(format!("no committed snapshot named {name:?} here")))?;
    let slot = app.snapshot_downloads.try_take().ok_or_else(|| {
        ApiError::busy(
            "TooManySnapshotDownloads",
            format!(
                "{} snapshot downloads are in progress (--snapshot-downloads-max); retry later",
                app.snapshot_downloads.max()
            ),
            DOWNLOADS_BUSY_RETRY_S,
        )
    })?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(format!("opening {}: {e}", path.display())))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(format!("reading {}: {e}", path.display())))?
        .len();
    // The slot travels with the body: it is freed when the download ends, however it ends.
    let stream = futures_util::StreamExt::map(tokio_util::io::ReaderStream::new(file), move |chunk| {
        let _held = &slot;
        chunk
    });
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
        .header(axum::http::header::CONTENT_LENGTH, size)
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_core::attestation::{parse_rfc3339, verify};
    use synod_core::ledger::{KeyWrite, MapWrites};

    fn fixture(name: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("core/tests/fixtures/attestation");
        std::fs::read(dir.join(name)).expect("fixture")
    }

    fn with(state: &mut KvState, map: &str, key: &str, value: &str) {
        let write = MapWrites {
            name: map.into(),
            writes: vec![KeyWrite {
                key: key.as_bytes().to_vec(),
                value: Some(value.as_bytes().to_vec()),
            }],
        };
        state.apply(state.version() + 1, &[write]).expect("apply");
    }

    /// Governance's join policy on real evidence: SNP needs its measurement and host data allowed and meets the
    /// minimum TCB if one is set; SGX the same without host data; virtual only the measurement.
    #[test]
    fn the_join_policy_checks_measurement_host_data_and_minimum_tcb() {
        let at = |s: &str| parse_rfc3339(s).expect("time");
        let report = hex::decode(String::from_utf8(fixture("snp_report_milan.hex")).unwrap().trim()).unwrap();
        let snp = verify(
            PlatformKind::Snp,
            &report,
            &fixture("snp_endorsements_milan.pem"),
            at("2025-01-01T00:00:00Z"),
        )
        .expect("snp");
        let mut state = KvState::default();
        let refusal = |state: &KvState, v: &Verified| join_policy(state, v).err().map(|(code, _)| code);
        assert_eq!(refusal(&state, &snp), Some("CodeIdNotFound"));
        with(
            &mut state,
            maps::NODES_CODE_IDS,
            &snp.measurement,
            "\"AllowedToJoin\"",
        );
        assert_eq!(refusal(&state, &snp), Some("HostDataNotAllowed"));
        with(
            &mut state,
            maps::NODES_SNP_HOST_DATA,
            &"0".repeat(64),
            "\"AllowedToJoin\"",
        );
        assert_eq!(refusal(&state, &snp), None);
        with(
            &mut state,
            maps::NODES_MINIMUM_TCB,
            "snp",
            "\"bootloader 3 tee 0 snp 9 microcode 115\"",
        );
        let (code, message) = join_policy(&state, &snp).unwrap_err();
        assert_eq!(
            (code, message.as_str()),
            ("TcbTooLow", "TCB below minimum: snp 8 < 9")
        );
        with(
            &mut state,
            maps::NODES_MINIMUM_TCB,
            "snp",
            "\"bootloader 3 tee 0 snp 8 microcode 115\"",
        );
        assert_eq!(refusal(&state, &snp), None);

        // A measurement not in code_ids is allowed by an approved publisher's UVM endorsement of it, at an SVN
        // at least the approved one.
        let mut state_uvm = KvState::default();
        with(
            &mut state_uvm,
            maps::NODES_SNP_HOST_DATA,
            &"0".repeat(64),
            "\"AllowedToJoin\"",
        );
        let mut endorsed = snp.clone();
        synod_core::attestation::attach_uvm_endorsement(
            &mut endorsed,
            &fixture("uvm_endorsements_ps384.cose"),
        )
        .expect("endorsement");
        assert_eq!(refusal(&state_uvm, &endorsed), Some("CodeIdNotFound"));
        let did = endorsed.uvm_endorsements.as_ref().unwrap().did.clone();
        for (approved, expected, why) in [
            (
                r#"{"ContainerPlat-AMD-UVM": {"svn": "102"}}"#,
                Some("CodeIdNotFound"),
                "svn 101 < 102",
            ),
            (
                r#"{"other-feed": {"svn": "0"}}"#,
                Some("CodeIdNotFound"),
                "another feed",
            ),
            (r#"{"ContainerPlat-AMD-UVM": {"svn": "100"}}"#, None, "approved"),
        ] {
            with(&mut state_uvm, maps::NODES_SNP_UVM_ENDORSEMENTS, &did, approved);
            assert_eq!(refusal(&state_uvm, &endorsed), expected, "{why}");
        }
        assert_eq!(
            refusal(&state_uvm, &snp),
            Some("CodeIdNotFound"),
            "not without the endorsement"
        );

        let sgx = verify(
            PlatformKind::Sgx,
            &fixture("sgx_quote.bin"),
            &fixture("sgx_quote_collateral.json"),
            at("2025-07-01T00:00:00Z"),
        )
        .expect("sgx");
        with(
            &mut state,
            maps::NODES_CODE_IDS,
            &sgx.measurement,
            "\"AllowedToJoin\"",
        );
        assert_eq!(
            refusal(&state, &sgx),
            None,
            "the SNP minimum does not apply to SGX"
        );
        with(&mut state, maps::NODES_MINIMUM_TCB, "sgx", "\"UpToDate\"");
        assert_eq!(refusal(&state, &sgx), Some("TcbTooLow"));
    }

    #[test]
    fn node_names_are_short_plain_words() {
        for ok in ["n0", "node-1.eu_west", &"a".repeat(NODE_NAME_CHARS_MAX)] {
            assert!(check_node_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "<script>",
            "n\n0",
            &"a".repeat(NODE_NAME_CHARS_MAX + 1),
        ] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_the_recorded_join_token_matches() {
        let token = "0123456789abcdef0123456789abcdef";
        let digest = synod_core::ledger::MapWrites {
            name: maps::JOIN_TOKEN_DIGEST.into(),
            writes: vec![synod_core::ledger::KeyWrite {
                key: Vec::new(),
                value: Some(crate::join::join_token_digest(token).into_bytes()),
            }],
        };
        let mut state = synod_kv::State::default();
        state.apply(1, [&digest]).expect("apply");
        assert!(join_token_matches(&state, Some(token)));
        assert!(!join_token_matches(
            &state,
            Some("0123456789abcdef0123456789abcdeF")
        ));
        assert!(!join_token_matches(&state, None));
        // A service with no recorded token (governed) admits nobody by token.
        assert!(!join_token_matches(&synod_kv::State::default(), Some(token)));
    }
}
