//! A member's client of the governance API (CCF's `/gov/*`, api-version 2024-07-01): every write is a COSE_Sign1
//! signed with the member's key ([`crate::envelope`]), POSTed as `application/cose`; reads are plain GETs. TLS client
//! authentication is not used: the signature authenticates the member.
//!
//! ```no_run
//! # async fn demo() -> Result<(), synod_governance::ClientError> {
//! use serde_json::json;
//! use synod_governance::{GovClient, ProposalState};
//!
//! let network = synod_client::Network::load("workspace/network.json")?;
//! let member0 = GovClient::from_network(&network, None, Some("member0"))?;
//! let proposal = member0
//!     .propose(&json!({"actions": [{"name": "set_user", "args": {"cert": "-----BEGIN CERTIFICATE-----..."}}]}))
//!     .await?;
//! let member1 = GovClient::from_network(&network, None, Some("member1"))?;
//! let after = member1.vote(&proposal.proposal_id, true).await?;
//! assert_eq!(after.state, ProposalState::Accepted);
//! # Ok(()) }
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use synod_client::{Body, Client, Method, Network, Response, StatusCode};

use crate::envelope::{self, EnvelopeError, MemberKey, MsgType};

/// The api-version every request is sent with.
pub const API_VERSION: &str = "2024-07-01";

/// The ballot that accepts any proposal.
pub const BALLOT_ACCEPT: &str = "export function vote (proposal, proposerId) { return true }";
/// The ballot that rejects any proposal.
pub const BALLOT_REJECT: &str = "export function vote (proposal, proposerId) { return false }";

/// How long a request is retried (503s and unreachable nodes, on the other nodes of the network) by default.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(10);

/// At most this many pages of `GET /gov/members/proposals` are followed.
const MAX_PAGES: usize = 1000;

/// Errors of [`GovClient`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request failed or the node answered an error. For an error answer in CCF's shape this is
    /// [`synod_client::Error::Api`] with the status, `code` and `message` (see [`ClientError::status`] and
    /// [`ClientError::api_code`]).
    #[error(transparent)]
    Http(#[from] synod_client::Error),
    /// The member's key or certificate is unusable, or the request could not be signed.
    #[error(transparent)]
    Cose(#[from] EnvelopeError),
    /// A successful answer that is not what the API promises.
    #[error("unexpected answer to {what}: {message}")]
    Unexpected {
        /// The request.
        what: String,
        /// What is wrong with the answer.
        message: String,
    },
    /// Bad configuration (no member in network.json, unreadable files).
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// The HTTP status of an error answer, if the node answered one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Http(e) => e.status(),
            _ => None,
        }
    }

    /// The CCF error code (`InvalidInput`, `ResourceNotFound`, ...) of an error answer.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            ClientError::Http(e) => e.api_code(),
            _ => None,
        }
    }

    /// The error message of an error answer (`{"error": {"message"}}`).
    pub fn api_message(&self) -> Option<&str> {
        match self {
            ClientError::Http(synod_client::Error::Api { message, .. }) => Some(message),
            _ => None,
        }
    }
}

/// Result of the governance client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

pub use crate::proposal::ProposalState;

/// A proposal as the API describes it: `{"proposalId", "proposerId", "state", "ballotCount", ...}`. Fields this
/// type does not name (`finalVotes`, `voteFailures`, `failure`, ...) are kept in `extra`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProposalInfo {
    /// `proposalId`.
    pub proposal_id: String,
    /// `proposerId`: the proposer's member id.
    pub proposer_id: String,
    /// `state`.
    pub state: ProposalState,
    /// `ballotCount`: how many members submitted a ballot.
    pub ballot_count: u64,
    /// Every other field of the answer (a JSON object, possibly empty).
    pub extra: Value,
}

impl ProposalInfo {
    /// Reads a proposal from its JSON.
    pub fn from_json(value: &Value) -> std::result::Result<ProposalInfo, String> {
        let Value::Object(map) = value else {
            return Err("a proposal is not a JSON object".into());
        };
        let text = |name: &str| -> std::result::Result<String, String> {
            map.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("proposal has no text field {name:?}"))
        };
        let state = text("state")?.parse()?;
        let ballot_count = match map.get("ballotCount") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("ballotCount {v} is not a count"))?,
        };
        let extra: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !["proposalId", "proposerId", "state", "ballotCount"].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(ProposalInfo {
            proposal_id: text("proposalId")?,
            proposer_id: text("proposerId")?,
            state,
            ballot_count,
            extra: Value::Object(extra),
        })
    }

    /// The proposal as the API's JSON (the named fields and `extra`).
    pub fn to_json(&self) -> Value {
        let mut map = match &self.extra {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        map.insert("proposalId".into(), json!(self.proposal_id));
        map.insert("proposerId".into(), json!(self.proposer_id));
        map.insert("state".into(), json!(self.state));
        map.insert("ballotCount".into(), json!(self.ballot_count));
        Value::Object(map)
    }

    /// `finalVotes`, if the answer has them: member id → accepted.
    pub fn final_votes(&self) -> Option<Vec<(String, bool)>> {
        let votes = self.extra.get("finalVotes")?.as_object()?;
        Some(
            votes
                .iter()
                .filter_map(|(k, v)| v.as_bool().map(|b| (k.clone(), b)))
                .collect(),
        )
    }
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `path` with `?api-version=2024-07-01` (or `&api-version=...` if it has a query already).
pub fn with_api_version(path: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}api-version={API_VERSION}")
}

/// Seconds since the Unix epoch, now: the `created_at` of new requests.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unexpected(what: &str, message: impl Into<String>) -> ClientError {
    ClientError::Unexpected {
        what: what.to_string(),
        message: message.into(),
    }
}

/// GETs a governance path (the api-version is added), retrying 503s and unreachable nodes for `budget`; an error
/// answer becomes [`ClientError::Http`]. For reads that need no member identity, e.g. `/gov/service/info`.
pub async fn gov_get(client: &Client, path: &str, budget: Duration) -> Result<Response> {
    let response = client
        .call_with_retry(Method::GET, &with_api_version(path), None, &[], budget)
        .await?;
    Ok(response.error_for_status()?)
}

/// [`gov_get`] and parse the answer as JSON.
pub async fn gov_get_json(client: &Client, path: &str, budget: Duration) -> Result<Value> {
    Ok(gov_get(client, path, budget).await?.json_value()?)
}

/// A member of the consortium talking to the governance API: signs each request with the member's key.
#[derive(Clone, Debug)]
pub struct GovClient {
    client: Client,
    key: MemberKey,
    cert_pem: String,
    cert_der: Vec<u8>,
    member_id: String,
    retry_budget: Duration,
}

impl GovClient {
    /// A client for the member with this certificate and private key (PEM; the key PKCS#8, or SEC1 for P-384).
    /// Fails if the key is not the certificate's, or is neither Ed25519 nor P-384.
    pub fn new(client: Client, cert_pem: &str, key_pem: &str) -> Result<GovClient> {
        let cert_der = synod_core::cert::pem_to_der(cert_pem)
            .map_err(|e| EnvelopeError::InvalidCertificate(e.to_string()))?;
        let key = MemberKey::from_pem(key_pem)?;
        Self::with_key(client, cert_pem, &cert_der, key)
    }

    /// A client for a member whose key is already parsed.
    pub fn with_key(client: Client, cert_pem: &str, cert_der: &[u8], key: MemberKey) -> Result<GovClient> {
        let member_id = envelope::member_id(cert_der);
        if !key.matches_cert(cert_der)? {
            return Err(EnvelopeError::KeyCertMismatch { member_id }.into());
        }
        Ok(GovClient {
            client,
            key,
            cert_pem: cert_pem.to_string(),
            cert_der: cert_der.to_vec(),
            member_id,
            retry_budget: DEFAULT_RETRY_BUDGET,
        })
    }

    /// A client of the network in network.json, talking to `node` first (default: the first node) as `member`
    /// (default: the first member).
    pub fn from_network(network: &Network, node: Option<&str>, member: Option<&str>) -> Result<GovClient> {
        let identity = network
            .member(member)?
            .ok_or_else(|| ClientError::Config("the network has no members".into()))?;
        let (cert_pem, key_pem) = identity.read_pems()?;
        let urls = network.urls_starting_at(node)?;
        let client = Client::with_urls(&urls, &network.service_cert_pem()?, None)?;
        GovClient::new(client, &cert_pem, &key_pem)
    }

    /// How long requests are retried on 503s and unreachable nodes (moving through the network's nodes).
    /// Default [`DEFAULT_RETRY_BUDGET`]; zero sends each request once.
    pub fn with_retry_budget(mut self, budget: Duration) -> GovClient {
        self.retry_budget = budget;
        self
    }

    /// The underlying HTTPS client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The member's id (hex SHA-256 of its certificate's DER).
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The member's certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The member's certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The member's key.
    pub fn key(&self) -> &MemberKey {
        &self.key
    }

    /// Signs a request as this member, created now.
    pub fn sign(&self, msg_type: MsgType, proposal_id: Option<&str>, payload: &[u8]) -> Result<Vec<u8>> {
        self.sign_at(msg_type, now_secs(), proposal_id, payload)
    }

    /// Signs a request as this member with an explicit `created_at` (seconds since the Unix epoch).
    pub fn sign_at(
        &self,
        msg_type: MsgType,
        created_at: u64,
        proposal_id: Option<&str>,
        payload: &[u8],
    ) -> Result<Vec<u8>> {
        Ok(envelope::sign(
            &self.key,
            &self.cert_der,
            msg_type,
            created_at,
            proposal_id,
            payload,
        )?)
    }

    /// POSTs already-signed COSE bytes to a governance path (the api-version is added) and returns the answer,
    /// whatever its status: for tests that check how a node refuses a request.
    pub async fn post_signed(&self, path: &str, cose_bytes: Vec<u8>) -> Result<Response> {
        let body = Body::Bytes {
            content_type: Some(envelope::CONTENT_TYPE.into()),
            bytes: cose_bytes,
        };
        Ok(self
            .client
            .call_with_retry(
                Method::POST,
                &with_api_version(path),
                Some(body),
                &[],
                self.retry_budget,
            )
            .await?)
    }

    /// Signs a request (created now) and POSTs it to `path`; returns the answer whatever its status.
    pub async fn post_cose(
        &self,
        path: &str,
        msg_type: MsgType,
        proposal_id: Option<&str>,
        payload: &[u8],
    ) -> Result<Response> {
        let bytes = self.sign(msg_type, proposal_id, payload)?;
        self.post_signed(path, bytes).await
    }

    async fn post_for_proposal(
        &self,
        what: &str,
        path: &str,
        msg_type: MsgType,
        proposal_id: Option<&str>,
        payload: &[u8],
    ) -> Result<ProposalInfo> {
        let response = self
            .post_cose(path, msg_type, proposal_id, payload)
            .await?
            .error_for_status()?;
        proposal_from(what, &response)
    }

    /// Creates a proposal: `proposal` is `{"actions": [{"name", "args"}, ...]}`
    /// (`POST /gov/members/proposals:create`).
    pub async fn propose(&self, proposal: &Value) -> Result<ProposalInfo> {
        let payload = serde_json::to_vec(proposal).map_err(|e| ClientError::Config(e.to_string()))?;
        self.propose_bytes(&payload).await
    }

    /// Creates a proposal from its JSON text, sent exactly as given.
    pub async fn propose_bytes(&self, proposal_json: &[u8]) -> Result<ProposalInfo> {
        self.post_for_proposal(
            "proposals:create",
            "/gov/members/proposals:create",
            MsgType::Proposal,
            None,
            proposal_json,
        )
        .await
    }

    /// Creates a proposal of one action.
    pub async fn propose_action(&self, name: &str, args: Value) -> Result<ProposalInfo> {
        self.propose(&json!({"actions": [{"name": name, "args": args}]}))
            .await
    }

    /// Votes for (`accept`) or against a proposal with the constant ballot ([`BALLOT_ACCEPT`] /
    /// [`BALLOT_REJECT`]); returns the proposal after the vote (it may be Accepted or Rejected now).
    pub async fn vote(&self, proposal_id: &str, accept: bool) -> Result<ProposalInfo> {
        let ballot = if accept { BALLOT_ACCEPT } else { BALLOT_REJECT };
        self.vote_with_ballot(proposal_id, ballot).await
    }

    /// Submits a ballot, a JavaScript module exporting `vote(proposal, proposerId)`
    /// (`POST /gov/members/proposals/{id}/ballots/{memberId}:submit`).
    pub async fn vote_with_ballot(&self, proposal_id: &str, ballot_js: &str) -> Result<ProposalInfo> {
        let path = format!(
            "/gov/members/proposals/{}/ballots/{}:submit",
            encode_segment(proposal_id),
            encode_segment(&self.member_id)
        );
        let payload = serde_json::to_vec(&json!({ "ballot": ballot_js })).expect("JSON of a string");
        self.post_for_proposal(
            "ballots:submit",
            &path,
            MsgType::Ballot,
            Some(proposal_id),
            &payload,
        )
        .await
    }

    /// Withdraws one of this member's proposals (`POST /gov/members/proposals/{id}:withdraw`).
    pub async fn withdraw(&self, proposal_id: &str) -> Result<ProposalInfo> {
        let path = format!("/gov/members/proposals/{}:withdraw", encode_segment(proposal_id));
        self.post_for_proposal(
            "proposals:withdraw",
            &path,
            MsgType::Withdrawal,
            Some(proposal_id),
            b"",
        )
        .await
    }

    /// This member's recovery share, encrypted to its encryption key (`GET
    /// /gov/recovery/encrypted-shares/{memberId}`).
    pub async fn encrypted_share(&self) -> Result<Vec<u8>> {
        let path = format!(
            "/gov/recovery/encrypted-shares/{}",
            encode_segment(&self.member_id)
        );
        let value = gov_get_json(&self.client, &path, self.retry_budget).await?;
        let share = value
            .get("encryptedShare")
            .and_then(Value::as_str)
            .ok_or_else(|| unexpected("encrypted-shares", format!("no \"encryptedShare\" in {value}")))?;
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, share)
            .map_err(|e| unexpected("encrypted-shares", format!("encryptedShare is not base64: {e}")))
    }

    /// Submits a decrypted recovery share (`POST /gov/recovery/members/{memberId}:recover`, payload
    /// `{"share": base64}`); returns the node's answer (`message`, `submitted`, `threshold`).
    pub async fn submit_recovery_share(&self, share: &[u8]) -> Result<Value> {
        let path = format!(
            "/gov/recovery/members/{}:recover",
            encode_segment(&self.member_id)
        );
        let share = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, share);
        let payload = serde_json::to_vec(&json!({ "share": share })).expect("JSON of a string");
        let response = self
            .post_cose(&path, MsgType::RecoveryShare, None, &payload)
            .await?
            .error_for_status()?;
        Ok(response.json_value()?)
    }

    /// Fetches this member's encrypted share, decrypts it with `encryption_key` (never sent anywhere) and submits
    /// it: what CCF's `submit_recovery_share.sh` does.
    pub async fn recover_with(
        &self,
        encryption_key: &synod_core::recovery::EncryptionPrivateKey,
    ) -> Result<Value> {
        let encrypted = self.encrypted_share().await?;
        let share = encryption_key
            .decrypt(&encrypted)
            .map_err(|e| ClientError::Config(format!("cannot decrypt this member's recovery share: {e}")))?;
        self.submit_recovery_share(&share).await
    }

    /// Every proposal (`GET /gov/members/proposals`, following `nextLink`).
    pub async fn list(&self) -> Result<Vec<ProposalInfo>> {
        list_proposals(&self.client, self.retry_budget).await
    }

    /// One proposal (`GET /gov/members/proposals/{id}`).
    pub async fn show(&self, proposal_id: &str) -> Result<ProposalInfo> {
        show_proposal(&self.client, proposal_id, self.retry_budget).await
    }

    /// A proposal's body, `{"actions": [...]}` (`GET /gov/members/proposals/{id}/actions`).
    pub async fn actions(&self, proposal_id: &str) -> Result<Value> {
        proposal_actions(&self.client, proposal_id, self.retry_budget).await
    }

    /// Updates this member's state digest (`POST /gov/members/state-digests/{memberId}:update`) and returns it
    /// (hex).
    pub async fn update_state_digest(&self) -> Result<String> {
        let path = format!(
            "/gov/members/state-digests/{}:update",
            encode_segment(&self.member_id)
        );
        let response = self
            .post_cose(&path, MsgType::StateDigest, None, b"")
            .await?
            .error_for_status()?;
        let value = response.json_value()?;
        value
            .get("digest")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| unexpected("state-digests:update", format!("no \"digest\" in {value}")))
    }

    /// Acknowledges a state digest (`POST /gov/members/state-digests/{memberId}:ack`, payload `{"digest"}`).
    pub async fn ack_digest(&self, digest: &str) -> Result<()> {
        let path = format!(
            "/gov/members/state-digests/{}:ack",
            encode_segment(&self.member_id)
        );
        let payload = serde_json::to_vec(&json!({ "digest": digest })).expect("JSON of a string");
        self.post_cose(&path, MsgType::Ack, None, &payload)
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Updates, then acknowledges this member's state digest: what makes a newly added (Accepted) member
    /// Active. Returns the digest acknowledged.
    pub async fn ack_state_digest(&self) -> Result<String> {
        let digest = self.update_state_digest().await?;
        self.ack_digest(&digest).await?;
        Ok(digest)
    }

    /// GETs any governance path as JSON (the api-version is added).
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        gov_get_json(&self.client, path, self.retry_budget).await
    }

    /// `GET /gov/service/info`.
    pub async fn service_info(&self) -> Result<Value> {
        self.get_json("/gov/service/info").await
    }

    /// `GET /gov/service/members`.
    pub async fn members(&self) -> Result<Value> {
        self.get_json("/gov/service/members").await
    }

    /// `GET /gov/service/nodes`.
    pub async fn nodes(&self) -> Result<Value> {
        self.get_json("/gov/service/nodes").await
    }

    /// `GET /gov/service/constitution`: the constitution's JavaScript source.
    pub async fn constitution(&self) -> Result<String> {
        Ok(
            gov_get(&self.client, "/gov/service/constitution", self.retry_budget)
                .await?
                .text(),
        )
    }

    /// `GET /gov/service/javascript-app`.
    pub async fn javascript_app(&self) -> Result<Value> {
        self.get_json("/gov/service/javascript-app").await
    }

    /// `GET /gov/service/join-policy`.
    pub async fn join_policy(&self) -> Result<Value> {
        self.get_json("/gov/service/join-policy").await
    }
}

fn proposal_from(what: &str, response: &Response) -> Result<ProposalInfo> {
    let value = response.json_value()?;
    ProposalInfo::from_json(&value).map_err(|e| unexpected(what, e))
}

/// Every proposal (`GET /gov/members/proposals`, following `nextLink`); needs no member identity.
pub async fn list_proposals(client: &Client, budget: Duration) -> Result<Vec<ProposalInfo>> {
    let mut proposals = Vec::new();
    let mut path = "/gov/members/proposals".to_string();
    for _ in 0..MAX_PAGES {
        let page = gov_get_json(client, &path, budget).await?;
        let items = page
            .get("value")
            .and_then(Value::as_array)
            .ok_or_else(|| unexpected("GET /gov/members/proposals", "no \"value\" array"))?;
        for item in items {
            proposals.push(
                ProposalInfo::from_json(item).map_err(|e| unexpected("GET /gov/members/proposals", e))?,
            );
        }
        match page.get("nextLink").and_then(Value::as_str) {
            Some(next) if next.starts_with('/') => {
                // nextLink carries its own api-version; gov_get adds ours only if it is absent.
                path = strip_api_version(next);
            }
            _ => return Ok(proposals),
        }
    }
    Err(unexpected(
        "GET /gov/members/proposals",
        format!("more than {MAX_PAGES} pages"),
    ))
}

fn strip_api_version(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let rest: Vec<&str> = query
        .split('&')
        .filter(|p| !p.starts_with("api-version=") && !p.is_empty())
        .collect();
    if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", rest.join("&"))
    }
}

/// One proposal (`GET /gov/members/proposals/{id}`); needs no member identity.
pub async fn show_proposal(client: &Client, proposal_id: &str, budget: Duration) -> Result<ProposalInfo> {
    let path = format!("/gov/members/proposals/{}", encode_segment(proposal_id));
    let response = gov_get(client, &path, budget).await?;
    proposal_from(&format!("GET {path}"), &response)
}

/// A proposal's body (`GET /gov/members/proposals/{id}/actions`); needs no member identity.
pub async fn proposal_actions(client: &Client, proposal_id: &str, budget: Duration) -> Result<Value> {
    let path = format!("/gov/members/proposals/{}/actions", encode_segment(proposal_id));
    gov_get_json(client, &path, budget).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_json_round_trips_and_keeps_extra_fields() {
        let value = json!({
            "proposalId": "abc", "proposerId": "m0", "state": "Accepted", "ballotCount": 2,
            "finalVotes": {"m0": true, "m1": false}
        });
        let info = ProposalInfo::from_json(&value).unwrap();
        assert_eq!(info.proposal_id, "abc");
        assert_eq!(info.state, ProposalState::Accepted);
        assert!(info.state.is_final());
        assert_eq!(info.ballot_count, 2);
        assert_eq!(info.extra, json!({"finalVotes": {"m0": true, "m1": false}}));
        assert_eq!(
            info.final_votes().unwrap(),
            vec![("m0".to_string(), true), ("m1".to_string(), false)]
        );
        assert_eq!(info.to_json(), value);
        for state in ProposalState::ALL {
            assert_eq!(state.as_str().parse::<ProposalState>().unwrap(), state);
            assert_eq!(json!(state), json!(state.as_str()));
        }
        assert!(
            ProposalInfo::from_json(&json!({"proposalId": "a", "proposerId": "b", "state": "Open"})).is_ok()
        );
        for bad in [
            json!([]),
            json!({"proposalId": "a", "proposerId": "b", "state": "open"}),
            json!({"proposalId": "a", "state": "Open"}),
            json!({"proposalId": "a", "proposerId": "b", "state": "Open", "ballotCount": -1}),
        ] {
            assert!(ProposalInfo::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_are_encoded_and_versioned() {
        assert_eq!(encode_segment("ab12-_.~"), "ab12-_.~");
        assert_eq!(encode_segment("a/b?c d"), "a%2Fb%3Fc%20d");
        assert_eq!(
            with_api_version("/gov/members/proposals"),
            "/gov/members/proposals?api-version=2024-07-01"
        );
        assert_eq!(
            with_api_version("/gov/x?skip=2"),
            "/gov/x?skip=2&api-version=2024-07-01"
        );
        assert_eq!(
            strip_api_version("/gov/x?api-version=2023-06-01-preview&skip=2"),
            "/gov/x?skip=2"
        );
        assert_eq!(strip_api_version("/gov/x?api-version=1"), "/gov/x");
        assert!(now_secs() > 1_700_000_000);
    }

    #[test]
    fn refuses_a_key_that_is_not_the_certificates() {
        let service = synod_core::cert::generate_self_signed("service", true).unwrap();
        let client = Client::new("https://127.0.0.1:1", &service.cert_pem, None).unwrap();
        let a = envelope::generate_member("a", envelope::KeyKind::P384).unwrap();
        let b = envelope::generate_member("b", envelope::KeyKind::P384).unwrap();
        let gov = GovClient::new(client.clone(), &a.cert_pem, &a.key_pem).unwrap();
        assert_eq!(
            gov.member_id(),
            envelope::member_id(&synod_core::cert::pem_to_der(&a.cert_pem).unwrap())
        );
        let request = gov.sign(MsgType::Proposal, None, b"{}").unwrap();
        envelope::verify_pem(&request, &a.cert_pem).unwrap();
        let err = GovClient::new(client, &a.cert_pem, &b.key_pem).unwrap_err();
        assert!(
            matches!(err, ClientError::Cose(EnvelopeError::KeyCertMismatch { .. })),
            "{err:?}"
        );
    }
}
