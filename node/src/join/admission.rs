//! The primary's side of joining (`POST /node/join`, served by `crate::rpc`): a new node presents its key in TLS
//! and attestation evidence binding it; the service's join policy, the consortium (or, without members, the join
//! token) and the bounds on Pending nodes decide. Answers are a [`JoinResponse`] or a typed [`Refusal`].

use std::net::SocketAddr;

use serde_json::json;
use synod_core::attestation::{PlatformKind, Verified};
use synod_core::cert;
use synod_core::maps;
use synod_core::tables::{NodeInfo, NodeStatus};
use synod_kv::State as KvState;

use super::{JoinRequest, JoinResponse, SnapshotOffer};
use crate::channels::PeerInfo;
use crate::consensus::machine::CoreError;
use crate::limits::RateLimiter;
use crate::platform;
use crate::service::{committed_snapshots, now_secs, AskError, ExecError, Node};

/// Why a join was not admitted; `crate::rpc` answers each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A field of the request is not acceptable.
    #[error("{0}")]
    InvalidInput(String),
    /// The service's policy refuses the node: CCF's error code and why.
    #[error("{message}")]
    Forbidden {
        /// The error code.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// This client address asked to join as too many new nodes.
    #[error("{message}")]
    TooManyRequests {
        /// Why.
        message: String,
        /// When to ask again.
        retry_after_s: u32,
    },
    /// As many nodes as allowed wait for the members' decision.
    #[error("{message}")]
    TooManyPending {
        /// Why.
        message: String,
        /// When to ask again.
        retry_after_s: u32,
    },
    /// The replica refused to add the node (not the primary, busy, the node retired meanwhile).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The replica could not be asked.
    #[error(transparent)]
    Ask(#[from] AskError),
    /// The Pending record's transaction did not run.
    #[error(transparent)]
    Exec(ExecError<std::convert::Infallible>),
}

impl Refusal {
    fn from_exec(e: ExecError<Refusal>) -> Refusal {
        match e {
            ExecError::Handler(refusal) => refusal,
            ExecError::NotPrimary => Refusal::Exec(ExecError::NotPrimary),
            ExecError::Busy => Refusal::Exec(ExecError::Busy),
            ExecError::TooManyConflicts => Refusal::Exec(ExecError::TooManyConflicts),
            ExecError::Unavailable(reason) => Refusal::Exec(ExecError::Unavailable(reason)),
        }
    }
}

fn forbidden(code: &'static str, message: String) -> Refusal {
    Refusal::Forbidden { code, message }
}

/// Longest node name accepted from a joiner (it is recorded in the ledger).
pub const NODE_NAME_CHARS_MAX: usize = 64;
/// Largest TLS certificate a joiner may present (it is recorded in the ledger while Pending).
pub const NODE_CERT_BYTES_MAX: usize = 8 * 1024;
/// Seconds a client is told to wait when the Pending joins are at their bound.
const PENDING_FULL_RETRY_S: u32 = 60;

fn check_node_name(name: &str) -> Result<(), Refusal> {
    let ok = !name.is_empty()
        && name.len() <= NODE_NAME_CHARS_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Refusal::InvalidInput(format!(
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

/// Checks the size of the certificate a joiner presented, before anything else is read.
pub fn check_certificate(der: &[u8]) -> Result<(), Refusal> {
    if der.len() > NODE_CERT_BYTES_MAX {
        return Err(Refusal::InvalidInput(format!(
            "the node's certificate is larger than {NODE_CERT_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// A join request whose evidence, key binding, addresses and policy checked out.
struct Candidate<'a> {
    req: &'a JoinRequest,
    node_id: String,
    rpc: String,
    node_address: String,
    measurement: String,
}

impl Candidate<'_> {
    /// Its nodes-table record, with `cert` as its certificate.
    fn record(&self, status: NodeStatus, cert: &str) -> NodeInfo {
        let mut info = NodeInfo::new(
            &self.req.node_name,
            cert,
            status,
            &self.rpc,
            &self.node_address,
            &self.measurement,
        );
        info.quote_info = Some(json!(self.req.quote_info));
        info.encryption_pub_key = self.req.encryption_pub_key.clone();
        info
    }
}

/// Decides a join request: `der` is the certificate the node presented in TLS (checked by [`check_certificate`]),
/// `client_addr` the address it asked from (a backup forwards the address it saw), bounded by `limiter`.
pub async fn admit(
    node: &Node,
    limiter: &RateLimiter,
    client_addr: Option<SocketAddr>,
    der: &[u8],
    req: JoinRequest,
) -> Result<JoinResponse, Refusal> {
    let state = node.view().state.clone();
    let c = check(&state, der, &req)?;
    let mut existing = state
        .get(maps::NODES_INFO, c.node_id.as_bytes())
        .and_then(NodeInfo::from_slice);
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
    let node_id = c.node_id.clone();
    // Decided on `existing`; a join that finds, inside its transaction, that the node appeared meanwhile decides
    // again on what is there (at most once more: that record is never absent).
    let info = loop {
        break match existing {
            Some(info) if info.status == NodeStatus::Retired => {
                return Err(forbidden(
                    "NodeRetired",
                    format!("node {node_id} was retired and cannot rejoin"),
                ))
            }
            Some(info) if info.status == NodeStatus::Pending => return Ok(pending_answer(&node_id)),
            // Trusted, and already endorsed and added: a retried join gets the same answer again.
            Some(info) if info.endorsed => info,
            // Trusted by the members, but the vote is not committed yet: a view change could still undo it, and the
            // node would then hold the service's secrets without the consortium's decision. Ask again.
            Some(_) if !trust_committed(node, &node_id) => return Ok(pending_answer(&node_id)),
            // Trusted by the members since it asked: only now is its key endorsed and does it enter Raft.
            Some(mut info) => {
                info.cert = endorse(node, der, &req.node_name, &c.rpc)?;
                info.endorsed = true;
                add(node, &node_id, &info).await?;
                tracing::info!(node_id, "a trusted node was endorsed and added");
                info
            }
            None if governed => {
                // Recording a Pending node is the one ledger write an unauthenticated caller can cause: bounded
                // per client address here (a backup forwards the address it saw), and in number
                // and age by record_pending.
                if let Some(addr) = client_addr {
                    let now_ms = u64::try_from(now_secs()).unwrap_or(0).saturating_mul(1000);
                    limiter
                        .take(addr.ip(), now_ms)
                        .map_err(|retry_after_s| Refusal::TooManyRequests {
                            message: format!(
                                "{} asked to join as too many new nodes; retry later",
                                addr.ip()
                            ),
                            retry_after_s,
                        })?;
                }
                let mut info = c.record(NodeStatus::Pending, &cert::der_to_pem(der));
                info.joined_at = Some(now_secs());
                if let Some(current) = record_pending(node, &node_id, &info, now_secs()).await? {
                    existing = Some(current);
                    continue;
                }
                tracing::info!(node_id, name = %req.node_name, "a node asked to join: Pending until trusted by vote");
                return Ok(pending_answer(&node_id));
            }
            None => {
                let mut info = c.record(NodeStatus::Trusted, &endorse(node, der, &req.node_name, &c.rpc)?);
                info.endorsed = true;
                add(node, &node_id, &info).await?;
                tracing::info!(node_id, name = %req.node_name, "a node joined with the join token");
                info
            }
        };
    };
    Ok(answer(node, &state, node_id, info))
}

/// Checks what the request claims: its name and addresses, its evidence (which must bind the key presented in
/// TLS) and the service's join policy.
fn check<'a>(state: &KvState, der: &[u8], req: &'a JoinRequest) -> Result<Candidate<'a>, Refusal> {
    check_node_name(&req.node_name)?;
    let verified = platform::verify(&req.quote_info).map_err(|e| forbidden("InvalidQuote", e.to_string()))?;
    let key_digest = cert::public_key_id(der).map_err(|e| Refusal::InvalidInput(e.to_string()))?;
    if !verified.binds(&key_digest) {
        return Err(forbidden(
            "InvalidQuote",
            "the evidence's report data does not bind the key presented in TLS".into(),
        ));
    }
    let rpc = crate::config::parse_host_port(&req.rpc_address)
        .map_err(|e| Refusal::InvalidInput(format!("rpc_address: {e}")))?;
    let node_address = crate::config::parse_host_port(&req.node_address)
        .map_err(|e| Refusal::InvalidInput(format!("node_address: {e}")))?;
    join_policy(state, &verified).map_err(|(code, message)| forbidden(code, message))?;
    Ok(Candidate {
        req,
        node_id: hex::encode(key_digest),
        rpc,
        node_address,
        measurement: verified.measurement,
    })
}

/// Adds a Trusted, endorsed node to the service (its record and a Raft configuration change).
async fn add(node: &Node, node_id: &str, info: &NodeInfo) -> Result<(), Refusal> {
    let (id, added) = (node_id.to_string(), info.to_value());
    node.ask_async(move |c| c.add_node(&id, &added, now_secs()))
        .await??;
    Ok(())
}

/// What an admitted node is handed: its endorsed certificate, the service's identity and ledger secrets, the
/// nodes it will talk to, and the committed snapshot to start from.
fn answer(node: &Node, state: &KvState, node_id: String, info: NodeInfo) -> JoinResponse {
    let nodes = state
        .map(maps::NODES_INFO)
        .into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(k, e)| {
            let info = NodeInfo::from_slice(&e.value)?;
            Some(PeerInfo::of(&String::from_utf8_lossy(k), &info))
        })
        .collect();
    let snapshot = committed_snapshots(&node.paths)
        .first()
        .map(|(seqno, evidence_seqno, _)| SnapshotOffer {
            seqno: *seqno,
            evidence_seqno: *evidence_seqno,
            url: format!("https://{}", node.rpc_published),
        });
    let schedule = node.sealer().schedule();
    let (_, latest) = node.sealer().latest();
    JoinResponse {
        node_id,
        status: info.status.to_string(),
        endorsed_certificate: info.cert,
        service_certificate: node.current_service_cert(),
        service_key: node.service.key_pem.clone(),
        ledger_secret: latest.to_base64(),
        ledger_secrets: schedule.iter().map(|(from, s)| (*from, s.to_base64())).collect(),
        nodes,
        snapshot,
    }
}

/// The service's endorsement of the key a joining node presented in TLS.
fn endorse(node: &Node, der: &[u8], name: &str, rpc: &str) -> Result<String, Refusal> {
    let (ips, names) = crate::config::certificate_names(rpc);
    // Under the lifetime governance set for every node (set_all_nodes_certificate_validity), if any.
    let validity =
        crate::governance::renewal::joiner_validity(&node.service_info(), now_secs().max(0) as u64);
    cert::endorse_public_key_with(der, name, &ips, &names, &node.service, validity)
        .map_err(|e| Refusal::InvalidInput(format!("cannot endorse the node's key: {e}")))
}

/// Records a new Pending node, within the bounds: expired Pending records (never trusted within
/// `--pending-join-ttl-s`) are removed in the same transaction, and at `--pending-joins-max` the join is refused
/// with 503. Answers what is there instead if the node appeared meanwhile.
async fn record_pending(
    node: &Node,
    node_id: &str,
    info: &NodeInfo,
    now: i64,
) -> Result<Option<NodeInfo>, Refusal> {
    let limits = &node.config().limits;
    let ttl = i64::try_from(limits.pending_join_ttl_s).unwrap_or(i64::MAX);
    let (current, _) = node
        .execute_async(|tx| {
            // Another join, or governance (say, retiring it), may have written this node since the caller read the
            // state: never overwrite it, even a record this version cannot read (a constitution's own status).
            if let Some(bytes) = tx.get(maps::NODES_INFO, node_id.as_bytes()) {
                return NodeInfo::from_slice(&bytes).map(Some).ok_or_else(|| {
                    forbidden(
                        "NodeRecordUnreadable",
                        format!("node {node_id}'s record in the nodes table is not one this node reads"),
                    )
                });
            }
            let mut pending = 0u64;
            let mut expired = Vec::new();
            for (key, value) in tx.range(maps::NODES_INFO, b"", None, usize::MAX) {
                let Some(record) = NodeInfo::from_slice(&value) else {
                    continue;
                };
                if record.status != NodeStatus::Pending {
                    continue;
                }
                let asked = record.joined_at.unwrap_or(0);
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
                return Err(Refusal::TooManyPending {
                    message: format!(
                        "{pending} nodes are already waiting for the members' decision (the bound is \
                     --pending-joins-max); retry later"
                    ),
                    retry_after_s: PENDING_FULL_RETRY_S,
                });
            }
            tx.put(
                maps::NODES_INFO,
                node_id.as_bytes(),
                info.to_value().to_string().as_bytes(),
            );
            Ok(None)
        })
        .await
        .map_err(Refusal::from_exec)?;
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

/// Whether the nodes table says `node_id` is Trusted in the committed state (not only in the primary's speculative
/// one).
pub fn trust_committed(node: &Node, node_id: &str) -> bool {
    node.view()
        .committed_state
        .get(maps::NODES_INFO, node_id.as_bytes())
        .and_then(NodeInfo::from_slice)
        .is_some_and(|info| info.status == NodeStatus::Trusted)
}

fn pending_answer(node_id: &str) -> JoinResponse {
    JoinResponse {
        node_id: node_id.to_string(),
        status: NodeStatus::Pending.to_string(),
        ..Default::default()
    }
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
