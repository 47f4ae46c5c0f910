//! Governance inside one transaction: proposals, ballots, withdrawals and state digests, decided by the
//! constitution (JavaScript). The request's COSE signature was verified by the caller; this module enforces
//! everything else (member status, replay window, one ballot per member, ballots bound to their proposal) and
//! keeps CCF's tables.
//!
//! ```text
//!  proposal ─▶ constitution.validate ─▶ stored Open ─▶ resolve(votes from ballots) ─▶ Accepted ─▶ apply
//!                                                                                    (throws ⇒ Failed, no writes)
//!  ballot   ─▶ stored ─▶ every ballot's vote(proposal, proposerId) ─▶ resolve ─▶ ...
//! ```
//!
//! Pure with respect to I/O: it reads and writes a [`Tx`] and runs scripts in an [`Engine`]; no clock (the caller
//! passes `now`).

pub mod recovery;
pub mod renewal;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use synod_core::hash::sha256;
use synod_core::maps;
use synod_kv::seal::LedgerSecret;
use synod_kv::Tx;

use crate::js::{Engine, JsError, JsLimits, KvPolicy};

/// The constitution a new service starts with.
pub const DEFAULT_CONSTITUTION: &str = include_str!("../../../governance/constitution/default.js");
/// How far a request's `created_at` may be from the node's clock, in seconds.
pub const REQUEST_WINDOW_SECS: u64 = 300;
/// How far ahead of the real time a node's clock may run, beyond the window, without honest requests being
/// refused as older than what the service still remembers (see `check_replay`).
pub const REPLAY_SKEW_MARGIN_SECS: u64 = REQUEST_WINDOW_SECS;
/// Open proposals at most (a bound on what one member can pile up).
pub const OPEN_PROPOSALS_MAX: usize = 256;
const CONSTITUTION_MODULE: &str = "constitution.js";
/// The functions a constitution must export.
const CONSTITUTION_EXPORTS: [&str; 3] = ["validate", "resolve", "apply"];
const BALLOT_MODULE: &str = "ballot.js";

use synod_core::tables::MemberStatus;
pub use synod_core::tables::ProposalState;

/// Why an accepted proposal failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The exception's message.
    pub reason: String,
    /// Its stack, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// What `public:ccf.gov.proposals_info` holds for a proposal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProposalInfo {
    /// Who proposed it.
    pub proposer_id: String,
    /// Its state.
    pub state: ProposalState,
    /// Ballot scripts by member id.
    pub ballots: BTreeMap<String, String>,
    /// How each member voted when it closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_votes: Option<BTreeMap<String, bool>>,
    /// Ballots stored earlier that failed at the last resolution, by member: left out of the count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote_failures: Option<BTreeMap<String, Failure>>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

impl ProposalInfo {
    /// CCF's JSON answer for a proposal.
    pub fn to_api(&self, proposal_id: &str) -> serde_json::Value {
        let mut v = json!({
            "proposalId": proposal_id,
            "proposerId": self.proposer_id,
            "state": self.state,
            "ballotCount": self.ballots.len(),
        });
        if let Some(votes) = &self.final_votes {
            v["finalVotes"] = json!(votes);
        }
        if let Some(failures) = &self.vote_failures {
            v["voteFailures"] = json!(failures);
        }
        if let Some(f) = &self.failure {
            v["failure"] = json!(f);
        }
        v
    }
}

/// A governance error, mapped to an HTTP status by the RPC layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GovError {
    /// 400 with a code.
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// 401: not a member, or not allowed to sign this.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a member, but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: conflicts with the proposal's state.
    #[error("{1}")]
    Conflict(&'static str, String),
    /// The constitution threw or misbehaved outside `apply`.
    #[error("constitution: {0}")]
    Constitution(String),
}

fn bad(code: &'static str, m: impl Into<String>) -> GovError {
    GovError::BadRequest(code, m.into())
}

/// A verified governance request, as the RPC layer hands it over.
pub struct Request<'a> {
    /// The signer's member id.
    pub member_id: &'a str,
    /// `created_at` from the protected header.
    pub created_at: u64,
    /// SHA-256 of the request's signature (replay detection).
    pub signature_digest: [u8; 32],
    /// The whole COSE request (recorded in the history table).
    pub raw: &'a [u8],
    /// Its payload.
    pub payload: &'a [u8],
}

/// The JSON value at `key` of `map`, if there is one and it decodes.
pub(crate) fn get_json<T: serde::de::DeserializeOwned>(tx: &mut Tx, map: &str, key: &str) -> Option<T> {
    tx.get(map, key.as_bytes())
        .and_then(|v| serde_json::from_slice(&v).ok())
}

/// Writes `value` as JSON at `key` of `map`.
pub(crate) fn put_json(tx: &mut Tx, map: &str, key: &str, value: &impl Serialize) {
    tx.put(
        map,
        key.as_bytes(),
        &serde_json::to_vec(value).unwrap_or_default(),
    );
}

/// The constitution in force (the default one if none was recorded).
pub fn constitution(tx: &mut Tx) -> String {
    tx.get(maps::CONSTITUTION, b"")
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_else(|| DEFAULT_CONSTITUTION.to_string())
}

fn member_status(tx: &mut Tx, member_id: &str) -> Option<MemberStatus> {
    let info: serde_json::Value = get_json(tx, maps::MEMBERS_INFO, member_id)?;
    info["status"].as_str()?.parse().ok()
}

/// The member's status; a signer that is not a member is refused.
fn require_member(tx: &mut Tx, member_id: &str) -> Result<MemberStatus, GovError> {
    member_status(tx, member_id).ok_or_else(|| GovError::Unauthorized(format!("{member_id} is not a member")))
}

fn require_active(tx: &mut Tx, member_id: &str) -> Result<(), GovError> {
    match require_member(tx, member_id)? {
        MemberStatus::Active => Ok(()),
        status => Err(GovError::Forbidden(format!(
            "member {member_id} is {status}: it must acknowledge the state digest (synod-gov ack) before it can take part"
        ))),
    }
}

/// Refuses a request outside the time window or seen before, and records it.
///
/// Replay protection must not depend on the clock of the node that happens to be primary: after a failover
/// the new primary's clock may be minutes ahead of or behind the old one's. So the clock decides only freshness
/// (`|created_at − now| ≤ REQUEST_WINDOW_SECS`); what is remembered and forgotten is decided by the recorded
/// timestamps alone:
///
/// - `newest` is the largest `created_at` ever recorded, `floor = newest − REQUEST_WINDOW_SECS −
///   REPLAY_SKEW_MARGIN_SECS`. Entries older than `floor` are pruned, and requests older than `floor` are refused.
/// - The entry holding `newest` is never pruned (`floor < newest`), so the largest timestamp in the table is the
///   largest ever recorded: `newest`, and with it `floor`, never decrease, whatever the clocks did.
/// - Hence every request ever recorded is either still in the table (refused by its digest) or older than a past
///   floor, so older than today's (refused by the floor): no node, whatever its clock, accepts a replay, and no
///   node's clock makes another forget an entry its window would still accept.
/// - Liveness: `newest` is at most the fastest node's clock plus the window (no node records a request further
///   ahead), so an honest request signed now is refused by the floor only if some node's clock ran more than
///   `REPLAY_SKEW_MARGIN_SECS` ahead. The table keeps about `window + margin` seconds of requests.
fn check_replay(tx: &mut Tx, req: &Request<'_>, now: u64) -> Result<(), GovError> {
    if req.created_at.abs_diff(now) > REQUEST_WINDOW_SECS {
        return Err(bad(
            "StaleRequest",
            format!(
                "created_at {} is more than {REQUEST_WINDOW_SECS} s away from the service's clock ({now}); sign a fresh request",
                req.created_at
            ),
        ));
    }
    let recorded: Vec<(Vec<u8>, Option<u64>)> = tx
        .range(maps::GOV_RECENT_REQUESTS, b"", None, usize::MAX)
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_slice::<u64>(&v).ok()))
        .collect();
    let forget_before = |newest: u64| newest.saturating_sub(REQUEST_WINDOW_SECS + REPLAY_SKEW_MARGIN_SECS);
    let newest = recorded.iter().filter_map(|(_, t)| *t).max().unwrap_or(0);
    let floor = forget_before(newest);
    if req.created_at < floor {
        return Err(bad(
            "StaleRequest",
            format!(
                "created_at {} is older than {floor}, the oldest time this service still remembers requests from \
                 (its newest recorded request was created at {newest}); sign a fresh request",
                req.created_at
            ),
        ));
    }
    let key = hex::encode(req.signature_digest);
    if tx.has(maps::GOV_RECENT_REQUESTS, key.as_bytes()) {
        return Err(bad(
            "ReplayedRequest",
            "this exact signed request was already submitted",
        ));
    }
    // Entries below the (possibly raised) floor can never be accepted again: forget them. Unreadable entries are
    // kept: nothing says they are old.
    let floor = forget_before(newest.max(req.created_at));
    for (k, t) in recorded {
        if t.is_some_and(|t| t < floor) {
            tx.delete(maps::GOV_RECENT_REQUESTS, &k);
        }
    }
    put_json(tx, maps::GOV_RECENT_REQUESTS, &key, &req.created_at);
    tx.put(maps::GOV_HISTORY, req.member_id.as_bytes(), req.raw);
    Ok(())
}

/// A ballot or withdrawal counts only for the proposal it was signed for.
fn bound_to(proposal_id: &str, signed_for: Option<&str>) -> Result<(), GovError> {
    if signed_for != Some(proposal_id) {
        return Err(bad(
            "ProposalIdMismatch",
            format!("the request is signed for proposal {signed_for:?}, not {proposal_id}"),
        ));
    }
    Ok(())
}

/// An Open proposal's info, or why it cannot take a ballot or withdrawal.
fn open_proposal(tx: &mut Tx, proposal_id: &str) -> Result<ProposalInfo, GovError> {
    let info: ProposalInfo = get_json(tx, maps::PROPOSALS_INFO, proposal_id)
        .ok_or_else(|| GovError::NotFound(format!("no proposal {proposal_id}")))?;
    if info.state != ProposalState::Open {
        return Err(GovError::Conflict(
            "ProposalNotOpen",
            format!("proposal {proposal_id} is {:?}", info.state),
        ));
    }
    Ok(info)
}

/// The constitution's engine. Ballots never share it: a ballot is a member's code, and running it beside the
/// constitution would let it change what `resolve` and `apply` see.
fn engine(tx: &mut Tx) -> Result<Engine, GovError> {
    let modules = [(CONSTITUTION_MODULE.to_string(), constitution(tx))];
    Engine::new(JsLimits::default(), &modules).map_err(|e| GovError::Constitution(e.to_string()))
}

/// An engine for one member's ballot, alone.
fn ballot_engine(member: &str, script: &str) -> Result<Engine, GovError> {
    Engine::new(
        JsLimits::default(),
        &[(BALLOT_MODULE.to_string(), script.to_string())],
    )
    .map_err(|e| {
        bad(
            "BallotFailed",
            format!("the ballot of member {member} does not load: {e}"),
        )
    })
}

/// Whether an accepted proposal rekeys the ledger: `trigger_ledger_rekey`, or `remove_member` (the removed
/// member's old recovery share must not open what is written from now on).
fn rekeys(proposal: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(proposal)
        .ok()
        .and_then(|p| {
            p["actions"].as_array().map(|actions| {
                actions
                    .iter()
                    .any(|a| a["name"] == "trigger_ledger_rekey" || a["name"] == "remove_member")
            })
        })
        .unwrap_or(false)
}

fn js_err(e: JsError) -> GovError {
    GovError::Constitution(e.to_string())
}

/// Runs governance for one transaction.
pub struct Governance<'t> {
    tx: &'t mut Tx,
    now: u64,
    last_committed: (u64, u64),
    /// The latest ledger secret and the first seqno it covers, to issue recovery shares of when the recovery
    /// members change and to rekey from (`None` in tests of governance alone: no shares are issued).
    latest_secret: Option<(u64, LedgerSecret)>,
    /// The service identity's key, to renew certificates with (`None` in tests of governance alone).
    service_key_pem: Option<String>,
}

impl<'t> Governance<'t> {
    /// Governance over `tx` at time `now` (seconds), with the last committed tx id for scripts.
    pub fn new(tx: &'t mut Tx, now: u64, last_committed: (u64, u64)) -> Governance<'t> {
        Governance {
            tx,
            now,
            last_committed,
            latest_secret: None,
            service_key_pem: None,
        }
    }

    /// Issues recovery shares of `secret` (the latest ledger secret, covering seqnos from `from` on) whenever a
    /// request changes the recovery members or the threshold, and rekeys from it.
    pub fn with_ledger_secret(mut self, from: u64, secret: LedgerSecret) -> Governance<'t> {
        self.latest_secret = Some((from, secret));
        self
    }

    /// Renews certificates with the service key `pem` when a proposal asks to.
    pub fn with_service_key(mut self, pem: String) -> Governance<'t> {
        self.service_key_pem = Some(pem);
        self
    }

    /// Rekeys the ledger from the latest secret (nothing in tests of governance alone).
    fn rekey(&mut self) -> Result<(), crate::governance::recovery::RecoveryError> {
        match &self.latest_secret {
            Some((from, secret)) => crate::governance::recovery::rekey(self.tx, (*from, secret)),
            None => Ok(()),
        }
    }

    /// Re-issues recovery shares if the recovery members, their keys or the threshold changed.
    fn refresh_shares(&mut self) -> Result<(), crate::governance::recovery::RecoveryError> {
        match &self.latest_secret {
            Some((from, secret)) => {
                crate::governance::recovery::refresh_shares(self.tx, secret, Some(*from), false).map(|_| ())
            }
            None => Ok(()),
        }
    }

    /// Calls a script function; only the constitution's `apply` may write (`policy`).
    fn call(
        &mut self,
        e: &Engine,
        policy: KvPolicy,
        module: &str,
        f: &str,
        args: &[serde_json::Value],
    ) -> Result<serde_json::Value, JsError> {
        e.call(self.tx, policy, self.last_committed, module, f, args)
    }

    /// `proposals:create`: validates, stores and resolves a proposal. Returns its id and info.
    pub fn propose(&mut self, req: &Request<'_>) -> Result<(String, ProposalInfo), GovError> {
        require_active(self.tx, req.member_id)?;
        check_replay(self.tx, req, self.now)?;
        let body =
            std::str::from_utf8(req.payload).map_err(|_| bad("InvalidInput", "the proposal is not UTF-8"))?;
        let open = self
            .tx
            .range(maps::PROPOSALS_INFO, b"", None, usize::MAX)
            .iter()
            .filter(|(_, v)| {
                // Only the state is read: the ballots of every proposal ever made need not be decoded.
                #[derive(Deserialize)]
                struct StateOnly {
                    state: ProposalState,
                }
                serde_json::from_slice::<StateOnly>(v).is_ok_and(|i| i.state == ProposalState::Open)
            })
            .count();
        if open >= OPEN_PROPOSALS_MAX {
            return Err(bad(
                "TooManyOpenProposals",
                format!("{open} proposals are open; withdraw or decide some first"),
            ));
        }
        let e = engine(self.tx)?;
        let verdict = self
            .call(
                &e,
                KvPolicy::ReadOnly,
                CONSTITUTION_MODULE,
                "validate",
                &[json!(body)],
            )
            .map_err(js_err)?;
        if verdict["valid"] != true {
            let why = verdict["description"]
                .as_str()
                .unwrap_or("the constitution refused it")
                .to_string();
            return Err(bad("ProposalFailedToValidate", why));
        }
        let id = hex::encode(sha256(req.raw));
        if self.tx.has(maps::PROPOSALS, id.as_bytes()) {
            return Err(GovError::Conflict(
                "ProposalExists",
                format!("proposal {id} exists"),
            ));
        }
        self.tx.put(maps::PROPOSALS, id.as_bytes(), req.payload);
        let mut info = ProposalInfo {
            proposer_id: req.member_id.to_string(),
            state: ProposalState::Open,
            ballots: BTreeMap::new(),
            final_votes: None,
            vote_failures: None,
            failure: None,
        };
        self.resolve(&id, body, &mut info, &e, None)?;
        put_json(self.tx, maps::PROPOSALS_INFO, &id, &info);
        Ok((id, info))
    }

    /// `ballots/{member}:submit`: records a ballot and resolves the proposal again.
    pub fn ballot(
        &mut self,
        req: &Request<'_>,
        proposal_id: &str,
        header_proposal_id: Option<&str>,
    ) -> Result<ProposalInfo, GovError> {
        bound_to(proposal_id, header_proposal_id)?;
        require_active(self.tx, req.member_id)?;
        check_replay(self.tx, req, self.now)?;
        let mut info = open_proposal(self.tx, proposal_id)?;
        if info.ballots.contains_key(req.member_id) {
            return Err(GovError::Conflict(
                "VoteAlreadyExists",
                format!("member {} already voted on {proposal_id}", req.member_id),
            ));
        }
        let body: serde_json::Value = serde_json::from_slice(req.payload)
            .map_err(|e| bad("InvalidInput", format!("ballot body: {e}")))?;
        let script = body["ballot"].as_str().ok_or_else(|| {
            bad(
                "InvalidInput",
                "a ballot is {\"ballot\": \"export function vote (proposal, proposerId) { ... }\"}",
            )
        })?;
        info.ballots.insert(req.member_id.to_string(), script.to_string());
        let proposal = self
            .tx
            .get(maps::PROPOSALS, proposal_id.as_bytes())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| GovError::NotFound(format!("proposal {proposal_id} has no body")))?;
        let e = engine(self.tx)?;
        self.resolve(proposal_id, &proposal, &mut info, &e, Some(req.member_id))?;
        put_json(self.tx, maps::PROPOSALS_INFO, proposal_id, &info);
        Ok(info)
    }

    /// `proposals/{id}:withdraw`: only the proposer, only while Open.
    pub fn withdraw(
        &mut self,
        req: &Request<'_>,
        proposal_id: &str,
        header_proposal_id: Option<&str>,
    ) -> Result<ProposalInfo, GovError> {
        bound_to(proposal_id, header_proposal_id)?;
        check_replay(self.tx, req, self.now)?;
        let mut info = open_proposal(self.tx, proposal_id)?;
        if info.proposer_id != req.member_id {
            return Err(GovError::Forbidden(format!(
                "only the proposer ({}) can withdraw {proposal_id}",
                info.proposer_id
            )));
        }
        info.state = ProposalState::Withdrawn;
        put_json(self.tx, maps::PROPOSALS_INFO, proposal_id, &info);
        Ok(info)
    }

    /// `state-digests/{member}:update`: records (and returns) the digest the member must acknowledge: the root
    /// of the last signature.
    pub fn update_state_digest(&mut self, req: &Request<'_>) -> Result<String, GovError> {
        require_member(self.tx, req.member_id)?;
        check_replay(self.tx, req, self.now)?;
        let record: serde_json::Value = get_json(self.tx, maps::SIGNATURES, "").ok_or_else(|| {
            GovError::Conflict("NoSignature", "the service has not signed anything yet".into())
        })?;
        let digest = record["root"].as_str().unwrap_or_default().to_string();
        put_json(
            self.tx,
            maps::MEMBERS_ACKS,
            req.member_id,
            &json!({ "state_digest": digest }),
        );
        Ok(digest)
    }

    /// `state-digests/{member}:ack`: the member acknowledges the digest it was given and becomes Active.
    pub fn ack_state_digest(&mut self, req: &Request<'_>) -> Result<(), GovError> {
        let status = require_member(self.tx, req.member_id)?;
        check_replay(self.tx, req, self.now)?;
        let body: serde_json::Value =
            serde_json::from_slice(req.payload).map_err(|e| bad("InvalidInput", format!("ack body: {e}")))?;
        let acked = body["digest"]
            .as_str()
            .ok_or_else(|| bad("InvalidInput", "an ack is {\"digest\": hex}"))?;
        let expected: serde_json::Value =
            get_json(self.tx, maps::MEMBERS_ACKS, req.member_id).ok_or_else(|| {
                bad(
                    "StateDigestNotRequested",
                    "update the state digest first (state-digests/{member}:update)",
                )
            })?;
        if expected["state_digest"] != acked {
            return Err(bad(
                "StateDigestMismatch",
                "the acknowledged digest is not the one this member was given",
            ));
        }
        if status == MemberStatus::Accepted {
            let mut info: serde_json::Value =
                get_json(self.tx, maps::MEMBERS_INFO, req.member_id).unwrap_or_default();
            info["status"] = MemberStatus::Active.into();
            put_json(self.tx, maps::MEMBERS_INFO, req.member_id, &info);
            // An active member with an encryption key is a recovery member: it gets its share now.
            self.refresh_shares()
                .map_err(|e| bad("RecoverySharesFailed", format!("issuing recovery shares: {e}")))?;
        }
        put_json(
            self.tx,
            maps::MEMBERS_ACKS,
            req.member_id,
            &json!({ "state_digest": acked, "acked": true }),
        );
        Ok(())
    }

    /// `recovery/members/{member}:recover`: records the member's decrypted recovery share (`{"share": base64}`)
    /// and combines the shares once there are enough (see [`crate::governance::recovery::submit_share`]).
    pub fn submit_recovery_share(
        &mut self,
        req: &Request<'_>,
    ) -> Result<crate::governance::recovery::Submitted, GovError> {
        use crate::governance::recovery::RecoveryError as R;
        require_active(self.tx, req.member_id)?;
        check_replay(self.tx, req, self.now)?;
        let body: serde_json::Value = serde_json::from_slice(req.payload).map_err(|e| {
            bad(
                "InvalidInput",
                format!("a recovery share is {{\"share\": base64}}: {e}"),
            )
        })?;
        let share = body["share"]
            .as_str()
            .and_then(|b| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).ok())
            .ok_or_else(|| bad("InvalidInput", "a recovery share is {\"share\": base64}"))?;
        let (_, secret) = self
            .latest_secret
            .clone()
            .ok_or_else(|| GovError::Forbidden("this node cannot take recovery shares".into()))?;
        crate::governance::recovery::submit_share(self.tx, req.member_id, &share, &secret).map_err(
            |e| match e {
                R::NotWaiting(_) | R::NoShare(_) | R::NoSharesInfo => GovError::Forbidden(e.to_string()),
                R::Malformed(_) | R::Crypto(_) => bad("InvalidRecoveryShare", e.to_string()),
                other => bad("RecoveryFailed", other.to_string()),
            },
        )
    }

    /// Counts the ballots and asks the constitution. `submitter`'s ballot failing refuses the request; another
    /// member's stored ballot failing now (it reads state that has changed) is recorded and left out of the count,
    /// as CCF does, so that one member's ballot cannot hold a proposal hostage.
    fn resolve(
        &mut self,
        id: &str,
        proposal: &str,
        info: &mut ProposalInfo,
        e: &Engine,
        submitter: Option<&str>,
    ) -> Result<(), GovError> {
        let (votes, by_member) = self.collect_votes(proposal, info, submitter)?;
        let outcome = self
            .call(
                e,
                KvPolicy::ReadOnly,
                CONSTITUTION_MODULE,
                "resolve",
                &[json!(proposal), json!(info.proposer_id), json!(votes)],
            )
            .map_err(js_err)?;
        match outcome.as_str().and_then(|s| s.parse::<ProposalState>().ok()) {
            Some(ProposalState::Open) => Ok(()),
            Some(ProposalState::Rejected) => {
                info.state = ProposalState::Rejected;
                info.final_votes = Some(by_member);
                Ok(())
            }
            Some(ProposalState::Accepted) => {
                info.final_votes = Some(by_member);
                let before = self.tx.clone();
                let applied = self.apply_accepted(e, id, proposal);
                match applied {
                    Ok(()) => {
                        info.state = ProposalState::Accepted;
                        self.drop_affected(id, proposal);
                    }
                    Err(failure) => {
                        // Nothing of a failed application is kept.
                        *self.tx = before;
                        info.state = ProposalState::Failed;
                        info.failure = Some(failure);
                    }
                }
                Ok(())
            }
            _ => Err(GovError::Constitution(format!(
                "resolve returned {:?}, not Open, Accepted or Rejected",
                outcome.as_str()
            ))),
        }
    }

    /// Runs every ballot of the proposal: the votes for `resolve`, each member's vote, and the ballots that threw
    /// (recorded in `info`; the submitter's own ballot throwing fails its request instead).
    fn collect_votes(
        &mut self,
        proposal: &str,
        info: &mut ProposalInfo,
        submitter: Option<&str>,
    ) -> Result<(Vec<serde_json::Value>, BTreeMap<String, bool>), GovError> {
        let mut votes = Vec::new();
        let mut by_member = BTreeMap::new();
        let mut failures = BTreeMap::new();
        for (member, script) in &info.ballots {
            match self.run_ballot(member, script, proposal, &info.proposer_id) {
                Ok(vote) => {
                    votes.push(json!({ "member_id": member, "vote": vote }));
                    by_member.insert(member.clone(), vote);
                }
                Err(err) if submitter == Some(member.as_str()) => return Err(err),
                Err(err) => {
                    failures.insert(
                        member.clone(),
                        Failure {
                            reason: err.to_string(),
                            trace: None,
                        },
                    );
                }
            }
        }
        info.vote_failures = (!failures.is_empty()).then_some(failures);
        Ok((votes, by_member))
    }

    /// Applies an accepted proposal: the constitution's `apply`, then what follows in the same transaction (a new
    /// constitution checked, recovery shares reissued or the ledger rekeyed, certificates renewed). The caller
    /// drops every write if it fails.
    fn apply_accepted(&mut self, e: &Engine, id: &str, proposal: &str) -> Result<(), Failure> {
        let old_constitution = self.tx.get(maps::CONSTITUTION, b"");
        self.call(
            e,
            KvPolicy::Governance,
            CONSTITUTION_MODULE,
            "apply",
            &[json!(proposal), json!(id)],
        )
        .map_err(|err| match err {
            JsError::Exception { message, stack } => Failure {
                reason: message,
                trace: stack,
            },
            other => Failure {
                reason: other.to_string(),
                trace: None,
            },
        })
        .and_then(|_| self.check_new_constitution(old_constitution.as_deref()))
        .and_then(|_| {
            // A rekey (asked for, or after a member left: its old share must open nothing new) issues
            // shares of the new secret; otherwise members, keys or the threshold may have changed and
            // shares follow. Either way in the same transaction, and an action that leaves them
            // impossible to issue is not applied.
            let failure = |what: &str, e: crate::governance::recovery::RecoveryError| Failure {
                reason: format!("{what}: {e}"),
                trace: None,
            };
            if rekeys(proposal) {
                self.rekey().map_err(|e| failure("ledger rekey", e))
            } else {
                self.refresh_shares().map_err(|e| failure("recovery shares", e))
            }
        })
        .and_then(|_| {
            // Certificate lifetimes: the renewed certificates are made in the same transaction.
            let key = self.service_key_pem.clone();
            crate::governance::renewal::apply(self.tx, proposal, key.as_deref(), self.now)
                .map(|_| ())
                .map_err(|e| Failure {
                    reason: format!("certificate renewal: {e}"),
                    trace: None,
                })
        })
    }

    /// If `apply` changed the constitution (it was `old`), checks that the new one can govern: it compiles, its
    /// top-level code runs, and it exports `validate`, `resolve` and `apply` functions. A constitution that cannot
    /// would refuse every later proposal, including the one that would replace it: governance would be stuck.
    fn check_new_constitution(&mut self, old: Option<&[u8]>) -> Result<(), Failure> {
        let new = self.tx.get(maps::CONSTITUTION, b"");
        if new.as_deref() == old {
            return Ok(());
        }
        let refused = |reason: String| Failure {
            reason: format!("the new constitution cannot govern, so it is not applied: {reason}"),
            trace: None,
        };
        let refused_js = |e: JsError| match e {
            JsError::Exception { message, stack } => Failure {
                trace: stack,
                ..refused(message)
            },
            other => refused(other.to_string()),
        };
        let new = new.ok_or_else(|| refused("the proposal removes it".into()))?;
        let source = String::from_utf8(new).map_err(|_| refused("it is not UTF-8 text".into()))?;
        let engine = Engine::new(JsLimits::default(), &[(CONSTITUTION_MODULE.to_string(), source)])
            .map_err(refused_js)?;
        engine
            .check_exports(
                self.tx,
                KvPolicy::ReadOnly,
                self.last_committed,
                CONSTITUTION_MODULE,
                &CONSTITUTION_EXPORTS,
            )
            .map_err(refused_js)
    }

    /// One member's ballot on `proposal`: its vote, or why it failed.
    fn run_ballot(
        &mut self,
        member: &str,
        script: &str,
        proposal: &str,
        proposer_id: &str,
    ) -> Result<bool, GovError> {
        let ballot = ballot_engine(member, script)?;
        let vote = self
            .call(
                &ballot,
                KvPolicy::ReadOnly,
                BALLOT_MODULE,
                "vote",
                &[json!(proposal), json!(proposer_id)],
            )
            .map_err(|err| {
                bad(
                    "BallotFailed",
                    format!("the ballot of member {member} failed: {err}"),
                )
            })?;
        vote.as_bool().ok_or_else(|| {
            bad(
                "BallotFailed",
                format!("the ballot of member {member} returned {vote}, not a boolean"),
            )
        })
    }

    /// An accepted change of the constitution drops every other open proposal; a change of the allowed code drops
    /// the open proposals that also change the allowed code.
    fn drop_affected(&mut self, accepted: &str, proposal: &str) {
        let names = |p: &str| -> Vec<String> {
            serde_json::from_str::<serde_json::Value>(p)
                .ok()
                .and_then(|v| v["actions"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|a| a["name"].as_str().map(str::to_string))
                .collect()
        };
        let accepted_names = names(proposal);
        let constitution = accepted_names.iter().any(|n| n == "set_constitution");
        let is_code = |n: &String| n == "add_node_code" || n == "remove_node_code";
        let code = accepted_names.iter().any(is_code);
        if !constitution && !code {
            return;
        }
        let infos = self.tx.range(maps::PROPOSALS_INFO, b"", None, usize::MAX);
        for (k, v) in infos {
            let Ok(id) = String::from_utf8(k) else { continue };
            let Ok(mut info) = serde_json::from_slice::<ProposalInfo>(&v) else {
                continue;
            };
            if id == accepted || info.state != ProposalState::Open {
                continue;
            }
            let body = self
                .tx
                .get(maps::PROPOSALS, id.as_bytes())
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            if constitution || names(&body).iter().any(is_code) {
                info.state = ProposalState::Dropped;
                put_json(self.tx, maps::PROPOSALS_INFO, &id, &info);
            }
        }
    }
}

#[cfg(test)]
mod tests;
