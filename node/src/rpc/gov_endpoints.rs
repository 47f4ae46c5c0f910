//! `/gov/*`: CCF's governance API. Writes are COSE Sign1 requests (`Content-Type: application/cose`) signed by a
//! member; the signature is checked against the member's certificate in `public:ccf.gov.members.certs`, then
//! [`crate::governance::Governance`] runs the request in a transaction (forwarded to the primary from a backup). Reads
//! are unauthenticated views of the governance tables. An `api-version` query parameter is accepted everywhere.
//!
//! CCF's paths put actions after a colon inside a segment (`proposals/{id}:withdraw`); axum captures whole
//! segments, so those segments are split here.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use synod_core::maps;
use synod_governance::envelope::{self, MsgType};

use super::{extract, ApiError, AppState};
use crate::governance::{GovError, Governance, ProposalInfo, Request};
use crate::service::now_secs;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/gov/members/proposals:create", post(create))
        .route("/gov/members/proposals", get(list))
        .route("/gov/members/proposals/{segment}", get(show).post(withdraw))
        .route("/gov/members/proposals/{id}/actions", get(actions))
        .route(
            "/gov/members/proposals/{id}/ballots/{segment}",
            get(show_ballot).post(submit_ballot),
        )
        .route(
            "/gov/members/state-digests/{segment}",
            get(show_digest).post(state_digest),
        )
        .route("/gov/service/info", get(service_info))
        .route("/gov/service/members", get(members))
        .route("/gov/service/members/{id}", get(member))
        .route("/gov/service/nodes", get(nodes))
        .route("/gov/service/nodes/{id}", get(node))
        .route("/gov/service/constitution", get(constitution))
        .route("/gov/service/javascript-app", get(javascript_app))
        .route("/gov/service/join-policy", get(join_policy))
        .route("/gov/recovery/encrypted-shares/{member}", get(encrypted_share))
        .route("/gov/recovery/members/{segment}", post(submit_recovery_share))
}

impl From<GovError> for ApiError {
    fn from(e: GovError) -> ApiError {
        match e {
            GovError::BadRequest(code, m) => ApiError::new(StatusCode::BAD_REQUEST, code, m),
            GovError::Unauthorized(m) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "InvalidAuthenticationInfo", m)
            }
            GovError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "Forbidden", m),
            GovError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "ProposalNotFound", m),
            GovError::Conflict(code, m) => ApiError::new(StatusCode::CONFLICT, code, m),
            GovError::Constitution(m) => ApiError::new(StatusCode::BAD_REQUEST, "ConstitutionError", m),
        }
    }
}

fn envelope_error(e: envelope::EnvelopeError) -> ApiError {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let code = if status == StatusCode::UNAUTHORIZED {
        "InvalidAuthenticationInfo"
    } else {
        "InvalidCoseRequest"
    };
    ApiError::new(status, code, e.to_string())
}

/// Splits `{id}:{action}`.
fn split_action<'a>(segment: &'a str, action: &str) -> Option<&'a str> {
    segment.strip_suffix(action)?.strip_suffix(':')
}

struct Verified {
    request: envelope::GovRequest,
    raw: bytes::Bytes,
}

/// Reads and authenticates a COSE request of type `msg_type` (about `proposal_id`, for ballots and
/// withdrawals), signed by a member (by `member` when the path names one).
async fn verified(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
    msg_type: MsgType,
    proposal_id: Option<&str>,
    member: Option<&str>,
) -> Result<Verified, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/cose") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedContentType",
            format!("governance requests are COSE Sign1 with Content-Type: application/cose, not {content_type:?}"),
        ));
    }
    let raw = extract::body_bytes(body, app.max_body_bytes).await?;
    let parsed = envelope::parse(&raw).map_err(envelope_error)?;
    let cert = snapshot(app)
        .get(maps::MEMBERS_CERTS, parsed.kid.as_bytes())
        .map(<[u8]>::to_vec)
        .ok_or_else(|| ApiError::unauthorized(format!("{} is not a member of this service", parsed.kid)))?;
    let cert_pem =
        String::from_utf8(cert).map_err(|_| ApiError::internal("stored member certificate is not text"))?;
    let request = envelope::verify_pem(&raw, &cert_pem).map_err(envelope_error)?;
    request.expect(msg_type, proposal_id).map_err(envelope_error)?;
    if let Some(m) = member {
        if m != request.kid {
            return Err(ApiError::unauthorized(format!(
                "the request is signed by {}, not by member {m}",
                request.kid
            )));
        }
    }
    Ok(Verified { request, raw })
}

/// Runs a governance operation in a transaction on a blocking thread (scripts may run for a while).
async fn run<T: Send + 'static>(
    app: &AppState,
    v: Verified,
    op: impl Fn(&mut Governance<'_>, &Request<'_>, &envelope::GovRequest) -> Result<T, GovError> + Send + 'static,
) -> Result<T, ApiError> {
    let node = app.node.clone();
    let now = now_secs().max(0) as u64;
    let committed = node.view().committed;
    let (secret_from, secret) = node.sealer().latest();
    let service_key = node.service.key_pem.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let digest = v.request.signature_digest();
        let req = Request {
            member_id: &v.request.kid,
            created_at: v.request.created_at,
            signature_digest: digest,
            raw: &v.raw,
            payload: &v.request.payload,
        };
        node.execute(|tx| {
            op(
                &mut Governance::new(tx, now, (committed.view, committed.seqno))
                    .with_ledger_secret(secret_from, secret.clone())
                    .with_service_key(service_key.clone()),
                &req,
                &v.request,
            )
        })
        .map(|(value, _)| value)
    })
    .await
    .map_err(|e| ApiError::internal(format!("governance task: {e}")))?;
    joined.map_err(ApiError::from)
}

async fn create(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let v = verified(&app, &headers, body, MsgType::Proposal, None, None).await?;
    let (id, info) = run(&app, v, |g, r, _| g.propose(r)).await?;
    tracing::info!(proposal = %id, state = ?info.state, "proposal created");
    Ok(Json(info.to_api(&id)).into_response())
}

async fn withdraw(
    State(app): State<AppState>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = split_action(&segment, "withdraw")
        .ok_or_else(|| {
            ApiError::not_found(format!("no such endpoint: POST /gov/members/proposals/{segment}"))
        })?
        .to_string();
    let v = verified(&app, &headers, body, MsgType::Withdrawal, Some(&id), None).await?;
    let id2 = id.clone();
    let info = run(&app, v, move |g, r, q| {
        g.withdraw(r, &id2, q.proposal_id.as_deref())
    })
    .await?;
    Ok(Json(info.to_api(&id)).into_response())
}

async fn submit_ballot(
    State(app): State<AppState>,
    Path((id, segment)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let member = split_action(&segment, "submit")
        .ok_or_else(|| ApiError::not_found(format!("no such endpoint: POST .../ballots/{segment}")))?
        .to_string();
    let v = verified(&app, &headers, body, MsgType::Ballot, Some(&id), Some(&member)).await?;
    let id2 = id.clone();
    let info = run(&app, v, move |g, r, q| {
        g.ballot(r, &id2, q.proposal_id.as_deref())
    })
    .await?;
    tracing::info!(proposal = %id, member, state = ?info.state, "ballot submitted");
    Ok(Json(info.to_api(&id)).into_response())
}

async fn state_digest(
    State(app): State<AppState>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if let Some(member) = split_action(&segment, "update") {
        let v = verified(&app, &headers, body, MsgType::StateDigest, None, Some(member)).await?;
        let digest = run(&app, v, |g, r, _| g.update_state_digest(r)).await?;
        return Ok(Json(json!({ "digest": digest })).into_response());
    }
    if let Some(member) = split_action(&segment, "ack") {
        let v = verified(&app, &headers, body, MsgType::Ack, None, Some(member)).await?;
        run(&app, v, |g, r, _| g.ack_state_digest(r)).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Err(ApiError::not_found(format!(
        "no such endpoint: POST /gov/members/state-digests/{segment}"
    )))
}

/// CCF's `GET /gov/recovery/encrypted-shares/{memberId}`: the member's recovery share, encrypted to its key.
/// Unauthenticated, as in CCF: only the member's private key opens it.
async fn encrypted_share(
    State(app): State<AppState>,
    Path(member): Path<String>,
) -> Result<Response, ApiError> {
    let share = crate::governance::recovery::encrypted_share(&snapshot(&app), &member).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            format!("Recovery share not found for member {member}."),
        )
    })?;
    Ok(Json(json!({ "memberId": member, "encryptedShare": share })).into_response())
}

/// CCF's `POST /gov/recovery/members/{memberId}:recover`: a member's decrypted share, COSE-signed by the member.
async fn submit_recovery_share(
    State(app): State<AppState>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    use crate::governance::recovery::Submitted;
    let member = split_action(&segment, "recover")
        .ok_or_else(|| {
            ApiError::not_found(format!("no such endpoint: POST /gov/recovery/members/{segment}"))
        })?
        .to_string();
    let v = verified(&app, &headers, body, MsgType::RecoveryShare, None, Some(&member)).await?;
    let submitted = run(&app, v, |g, r, _| g.submit_recovery_share(r)).await?;
    tracing::info!(member, outcome = ?submitted, "recovery share submitted");
    match submitted {
        Submitted::Pending { submitted, threshold } => Ok(Json(json!({
            "message": format!("{submitted}/{threshold} recovery shares successfully submitted."),
            "submitted": submitted,
            "threshold": threshold,
        }))
        .into_response()),
        Submitted::Recovered => {
            crate::service::recovery::start_private_recovery(&app.node);
            Ok(Json(json!({
                "message": "The ledger secret was recovered: end of recovery procedure initiated.",
                "submitted": 0,
            }))
            .into_response())
        }
        Submitted::Wrong { combined } => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRecoveryShares",
            format!(
                "the {combined} submitted recovery shares do not reconstruct the previous service's ledger secret \
                 (one is wrong or from an earlier issue); every submitted share was discarded: submit again"
            ),
        )),
    }
}

/// The current state (the core lock is held only to take it): each read handler takes one.
fn snapshot(app: &AppState) -> synod_kv::State {
    app.node.view().state.clone()
}

fn read_json(state: &synod_kv::State, map: &str, key: &str) -> Option<serde_json::Value> {
    state
        .get(map, key.as_bytes())
        .and_then(|v| serde_json::from_slice(v).ok())
}

/// A map's entries: key (as text) and value.
fn entries<'a>(state: &'a synod_kv::State, map: &str) -> impl Iterator<Item = (String, &'a [u8])> + 'a {
    state
        .map(map)
        .into_iter()
        .flat_map(|m| m.iter())
        .map(|(k, e)| (String::from_utf8_lossy(k).to_string(), &e.value[..]))
}

fn proposal_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ProposalNotFound",
        format!("no proposal {id}"),
    )
}

fn proposal_info(app: &AppState, id: &str) -> Result<ProposalInfo, ApiError> {
    read_json(&snapshot(app), maps::PROPOSALS_INFO, id)
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| proposal_not_found(id))
}

async fn list(State(app): State<AppState>) -> Response {
    let state = snapshot(&app);
    let value: Vec<_> = entries(&state, maps::PROPOSALS_INFO)
        .filter_map(|(id, v)| {
            serde_json::from_slice::<ProposalInfo>(v)
                .ok()
                .map(|i| i.to_api(&id))
        })
        .collect();
    Json(json!({ "value": value })).into_response()
}

async fn show(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let info = proposal_info(&app, &id)?;
    Ok(Json(info.to_api(&id)).into_response())
}

async fn actions(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let body = read_json(&snapshot(&app), maps::PROPOSALS, &id).ok_or_else(|| proposal_not_found(&id))?;
    Ok(Json(body).into_response())
}

async fn show_ballot(
    State(app): State<AppState>,
    Path((id, member)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let info = proposal_info(&app, &id)?;
    let ballot = info.ballots.get(&member).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "VoteNotFound",
            format!("member {member} did not vote on {id}"),
        )
    })?;
    Ok(Json(json!({ "ballot": ballot })).into_response())
}

async fn show_digest(State(app): State<AppState>, Path(member): Path<String>) -> Result<Response, ApiError> {
    let ack = read_json(&snapshot(&app), maps::MEMBERS_ACKS, &member)
        .ok_or_else(|| ApiError::not_found(format!("no state digest for member {member}")))?;
    Ok(Json(json!({ "digest": ack["state_digest"], "acked": ack["acked"] == true })).into_response())
}

async fn service_info(State(app): State<AppState>) -> Response {
    let state = snapshot(&app);
    let info = read_json(&state, maps::SERVICE_INFO, "").unwrap_or_default();
    // Whether the service can be recovered from its ledger: how many recovery members hold a share.
    let recovery_members =
        crate::governance::recovery::shares_issued(&state).map_or(0, |(_, members)| members);
    Json(json!({
        "status": info["status"],
        "certificate": app.node.current_service_cert(),
        "recoveryThreshold": info["recovery_threshold"],
        "currentView": app.node.view().view,
        "curve": info["curve"],
        "recoveryMembers": recovery_members,
    }))
    .into_response()
}

fn member_json(state: &synod_kv::State, id: &str, cert: &[u8]) -> serde_json::Value {
    let info = read_json(state, maps::MEMBERS_INFO, id).unwrap_or_default();
    json!({
        "memberId": id,
        "certificate": String::from_utf8_lossy(cert),
        "status": info["status"],
        "memberData": info["member_data"],
    })
}

async fn members(State(app): State<AppState>) -> Response {
    let state = snapshot(&app);
    let value: Vec<_> = entries(&state, maps::MEMBERS_CERTS)
        .map(|(id, cert)| member_json(&state, &id, cert))
        .collect();
    Json(json!({ "value": value })).into_response()
}

async fn member(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let state = snapshot(&app);
    let cert = state
        .get(maps::MEMBERS_CERTS, id.as_bytes())
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "MemberNotFound", format!("no member {id}")))?;
    Ok(Json(member_json(&state, &id, cert)).into_response())
}

fn node_json(id: &str, info: &serde_json::Value) -> serde_json::Value {
    json!({
        "nodeId": id,
        "status": info["status"],
        "certificate": info["cert"],
        "name": info["name"],
        "rpcAddress": info["rpc_address"],
        "nodeAddress": info["node_address"],
        "measurement": info["measurement"],
    })
}

async fn nodes(State(app): State<AppState>) -> Response {
    let state = snapshot(&app);
    let value: Vec<_> = entries(&state, maps::NODES_INFO)
        .filter_map(|(id, v)| {
            serde_json::from_slice::<serde_json::Value>(v)
                .ok()
                .map(|i| node_json(&id, &i))
        })
        .collect();
    Json(json!({ "value": value })).into_response()
}

async fn node(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let info = read_json(&snapshot(&app), maps::NODES_INFO, &id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NodeNotFound", format!("no node {id}")))?;
    Ok(Json(node_json(&id, &info)).into_response())
}

async fn constitution(State(app): State<AppState>) -> Response {
    let text = snapshot(&app)
        .get(maps::CONSTITUTION, b"")
        .map(|v| String::from_utf8_lossy(v).to_string())
        .unwrap_or_else(|| crate::governance::DEFAULT_CONSTITUTION.to_string());
    ([(header::CONTENT_TYPE, "text/javascript")], text).into_response()
}

async fn javascript_app(State(app): State<AppState>) -> Response {
    let app_json = read_json(&snapshot(&app), maps::JS_APP, "");
    let endpoints = app_json
        .as_ref()
        .map(|a| a["bundle"]["metadata"]["endpoints"].clone())
        .unwrap_or(json!({}));
    Json(json!({ "endpoints": endpoints, "version": app_json.map(|a| a["version"].clone()) })).into_response()
}

async fn join_policy(State(app): State<AppState>) -> Response {
    let state = snapshot(&app);
    let measurements: Vec<String> = entries(&state, maps::NODES_CODE_IDS).map(|(k, _)| k).collect();
    Json(json!({
        "virtual": { "measurements": measurements },
        "sgx": { "measurements": [] },
        "snp": { "measurements": [] },
    }))
    .into_response()
}
