//! `GovClient` and the `synod-gov` CLI against a mock node that serves CCF's governance API over HTTPS (a node
//! certificate endorsed by a service certificate). The mock authenticates every write with `envelope::verify` the way
//! a node must (kid → member certificate, message type, proposal id of the path, replayed signatures), and decides
//! proposals by a majority of the constant ballots, so paths, api-version, content type, signatures, typed answers,
//! error mapping and the CLI's output are exercised without a real node.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response as HttpResponse};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use synod_client::Client;
use synod_core::cert::{self, Identity};
use synod_governance::client::{BALLOT_ACCEPT, BALLOT_REJECT};
use synod_governance::envelope::{self, EnvelopeError, KeyKind, MsgType};
use synod_governance::{GovClient, ProposalState};

struct Proposal {
    proposer: String,
    state: ProposalState,
    body: Value,
    votes: BTreeMap<String, bool>,
}

#[derive(Default)]
struct Gov {
    /// member id → (certificate DER, status).
    members: BTreeMap<String, (Vec<u8>, String)>,
    proposals: BTreeMap<String, Proposal>,
    seen_signatures: HashSet<[u8; 32]>,
    next_id: u64,
    requests: Vec<String>,
}

type Shared = Arc<Mutex<Gov>>;
type Answer = HttpResponse<Full<Bytes>>;

fn answer(status: u16, body: Value) -> HttpResponse<Full<Bytes>> {
    HttpResponse::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

fn error(status: u16, code: &str, message: &str) -> HttpResponse<Full<Bytes>> {
    answer(status, json!({"error": {"code": code, "message": message}}))
}

fn gov_error(e: &EnvelopeError) -> HttpResponse<Full<Bytes>> {
    let code = if e.is_authentication_failure() {
        "InvalidAuthenticationInfo"
    } else {
        "InvalidInput"
    };
    error(e.http_status(), code, &e.to_string())
}

fn proposal_json(id: &str, p: &Proposal) -> Value {
    let mut v =
        json!({"proposalId": id, "proposerId": p.proposer, "state": p.state, "ballotCount": p.votes.len()});
    if p.state.is_final() && p.state != ProposalState::Withdrawn {
        v["finalVotes"] = json!(p.votes);
    }
    v
}

/// Authenticates a COSE request as a node does: the kid names a member, the signature is that member's, the
/// type is the endpoint's, the proposal id is the path's, and the signature was never seen before.
fn authenticate(
    gov: &mut Gov,
    body: &[u8],
    msg_type: MsgType,
    proposal_id: Option<&str>,
) -> Result<envelope::GovRequest, Box<Answer>> {
    let reject = |e: EnvelopeError| Box::new(gov_error(&e));
    let parsed = envelope::parse(body).map_err(reject)?;
    let Some((der, _)) = gov.members.get(&parsed.kid) else {
        return Err(Box::new(error(
            401,
            "InvalidAuthenticationInfo",
            "unknown member",
        )));
    };
    let request = envelope::verify(body, der).map_err(reject)?;
    request.expect(msg_type, proposal_id).map_err(reject)?;
    if !gov.seen_signatures.insert(request.signature_digest()) {
        return Err(Box::new(error(
            400,
            "ProposalReplay",
            "this request was already submitted",
        )));
    }
    Ok(request)
}

fn handle_gov(
    gov: &mut Gov,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> HttpResponse<Full<Bytes>> {
    gov.requests.push(format!("{method} {path}?{query}"));
    if !query.split('&').any(|kv| kv == "api-version=2024-07-01") {
        return error(400, "UnsupportedApiVersion", "api-version=2024-07-01 is required");
    }
    let active = gov.members.values().filter(|(_, s)| s == "Active").count();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("POST", ["gov", "members", "proposals:create"]) => {
            let request = match authenticate(gov, body, MsgType::Proposal, None) {
                Ok(r) => r,
                Err(e) => return *e,
            };
            let Ok(actions) = request.payload_json::<Value>() else {
                return error(400, "InvalidInput", "proposal is not JSON");
            };
            gov.next_id += 1;
            let id = format!("{:064x}", gov.next_id);
            let p = Proposal {
                proposer: request.kid,
                state: ProposalState::Open,
                body: actions,
                votes: BTreeMap::new(),
            };
            let v = proposal_json(&id, &p);
            gov.proposals.insert(id, p);
            answer(200, v)
        }
        ("POST", ["gov", "members", "proposals", id, "ballots", submit]) => {
            let Some(member) = submit.strip_suffix(":submit") else {
                return error(404, "ResourceNotFound", "no such endpoint");
            };
            let id = id.to_string();
            let request = match authenticate(gov, body, MsgType::Ballot, Some(&id)) {
                Ok(r) => r,
                Err(e) => return *e,
            };
            if request.kid != member {
                return error(
                    401,
                    "InvalidAuthenticationInfo",
                    "the ballot is signed by another member",
                );
            }
            let Some(p) = gov.proposals.get_mut(&id) else {
                return error(404, "ProposalNotFound", "no such proposal");
            };
            if p.state != ProposalState::Open {
                return error(400, "ProposalNotOpen", &format!("proposal is {}", p.state));
            }
            let ballot = request.payload_json::<Value>().ok();
            let vote = match ballot.as_ref().and_then(|b| b["ballot"].as_str()) {
                Some(BALLOT_ACCEPT) => true,
                Some(BALLOT_REJECT) => false,
                Some(other) => other.contains("true"),
                None => return error(400, "InvalidInput", "expected {\"ballot\": string}"),
            };
            p.votes.insert(request.kid, vote);
            let yes = p.votes.values().filter(|v| **v).count();
            let no = p.votes.len() - yes;
            if yes * 2 > active {
                p.state = ProposalState::Accepted;
            } else if no * 2 >= active {
                p.state = ProposalState::Rejected;
            }
            answer(200, proposal_json(&id, p))
        }
        ("POST", ["gov", "members", "proposals", withdraw]) => {
            let Some(id) = withdraw.strip_suffix(":withdraw") else {
                return error(404, "ResourceNotFound", "no such endpoint");
            };
            let id = id.to_string();
            let request = match authenticate(gov, body, MsgType::Withdrawal, Some(&id)) {
                Ok(r) => r,
                Err(e) => return *e,
            };
            let Some(p) = gov.proposals.get_mut(&id) else {
                return error(404, "ProposalNotFound", "no such proposal");
            };
            if p.proposer != request.kid {
                return error(
                    403,
                    "AuthorizationFailed",
                    "only the proposer can withdraw a proposal",
                );
            }
            p.state = ProposalState::Withdrawn;
            answer(200, proposal_json(&id, p))
        }
        ("POST", ["gov", "members", "state-digests", action]) => {
            let (member, verb) = action.split_once(':').unwrap_or((action, ""));
            let member = member.to_string();
            let msg_type = if verb == "ack" {
                MsgType::Ack
            } else {
                MsgType::StateDigest
            };
            let request = match authenticate(gov, body, msg_type, None) {
                Ok(r) => r,
                Err(e) => return *e,
            };
            if request.kid != member {
                return error(401, "InvalidAuthenticationInfo", "signed by another member");
            }
            let digest = format!("{:064x}", gov.proposals.len() + 7);
            match verb {
                "update" => answer(200, json!({ "digest": digest })),
                "ack" => {
                    if request.payload_json::<Value>().ok() != Some(json!({ "digest": digest })) {
                        return error(400, "StateDigestMismatch", "not the current state digest");
                    }
                    if let Some(m) = gov.members.get_mut(&member) {
                        m.1 = "Active".into();
                    }
                    HttpResponse::builder()
                        .status(204)
                        .body(Full::new(Bytes::new()))
                        .expect("valid response")
                }
                _ => error(404, "ResourceNotFound", "no such endpoint"),
            }
        }
        ("GET", ["gov", "members", "proposals"]) => {
            // Two per page, to exercise nextLink.
            let skip: usize = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("skip="))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let all: Vec<Value> = gov.proposals.iter().map(|(id, p)| proposal_json(id, p)).collect();
            let page: Vec<Value> = all.iter().skip(skip).take(2).cloned().collect();
            let mut v = json!({ "value": page });
            if skip + 2 < all.len() {
                v["nextLink"] = json!(format!(
                    "/gov/members/proposals?api-version=2024-07-01&skip={}",
                    skip + 2
                ));
            }
            answer(200, v)
        }
        ("GET", ["gov", "members", "proposals", id]) => match gov.proposals.get(*id) {
            Some(p) => answer(200, proposal_json(id, p)),
            None => error(404, "ProposalNotFound", "no such proposal"),
        },
        ("GET", ["gov", "members", "proposals", id, "actions"]) => match gov.proposals.get(*id) {
            Some(p) => answer(200, p.body.clone()),
            None => error(404, "ProposalNotFound", "no such proposal"),
        },
        ("GET", ["gov", "service", "info"]) => answer(
            200,
            json!({"status": "Open", "certificate": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
                   "recentCoseProposalsWindowSize": 100}),
        ),
        ("GET", ["gov", "service", "members"]) => answer(
            200,
            json!({"value": gov.members.iter().map(|(id, (_, status))| json!({"memberId": id, "status": status}))
                .collect::<Vec<_>>()}),
        ),
        ("GET", ["gov", "service", "nodes"]) => answer(
            200,
            json!({"value": [{"nodeId": "abcd", "status": "Trusted", "rpcAddress": "127.0.0.1:8000"}]}),
        ),
        _ => error(404, "ResourceNotFound", "no such endpoint"),
    }
}

async fn handle(gov: Shared, req: Request<Incoming>) -> Result<HttpResponse<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if parts.method == hyper::Method::POST
        && parts.headers.get("content-type").map(|v| v.as_bytes()) != Some(b"application/cose")
    {
        return Ok(error(415, "UnsupportedContentType", "expected application/cose"));
    }
    let mut gov = gov.lock().unwrap();
    Ok(handle_gov(
        &mut gov,
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
        &body,
    ))
}

struct Mock {
    url: String,
    service: Identity,
    gov: Shared,
}

async fn start_mock() -> Mock {
    let service = cert::generate_self_signed("service", true).unwrap();
    let node = cert::generate_endorsed("n0", &["127.0.0.1".parse().unwrap()], &[], &service).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert::pem_to_der(&node.cert_pem).unwrap())],
            PrivateKeyDer::from_pem_slice(node.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let gov: Shared = Arc::default();
    let shared = gov.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let gov = shared.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| handle(gov.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Mock { url, service, gov }
}

struct Member {
    identity: Identity,
    id: String,
}

impl Mock {
    /// Registers a member (Active, or Accepted until it acks).
    fn add_member(&self, name: &str, kind: KeyKind, active: bool) -> Member {
        let identity = envelope::generate_member(name, kind).unwrap();
        let der = cert::pem_to_der(&identity.cert_pem).unwrap();
        let id = envelope::member_id(&der);
        let status = if active { "Active" } else { "Accepted" };
        self.gov
            .lock()
            .unwrap()
            .members
            .insert(id.clone(), (der, status.into()));
        Member { identity, id }
    }

    fn client(&self, member: &Member) -> GovClient {
        let client = Client::new(&self.url, &self.service.cert_pem, None).unwrap();
        GovClient::new(client, &member.identity.cert_pem, &member.identity.key_pem)
            .unwrap()
            .with_retry_budget(Duration::from_secs(2))
    }

    fn member_status(&self, id: &str) -> String {
        self.gov.lock().unwrap().members[id].1.clone()
    }
}

#[tokio::test]
async fn proposals_ballots_and_withdrawals() {
    let mock = start_mock().await;
    let m0 = mock.add_member("member0", KeyKind::P384, true);
    let m1 = mock.add_member("member1", KeyKind::Ed25519, true);
    let m2 = mock.add_member("member2", KeyKind::P384, true);
    let (g0, g1, g2) = (mock.client(&m0), mock.client(&m1), mock.client(&m2));
    assert_eq!(g0.member_id(), m0.id);

    let body = json!({"actions": [{"name": "set_user", "args": {"cert": "PEM"}}]});
    let p = g0.propose(&body).await.unwrap();
    assert_eq!(p.state, ProposalState::Open);
    assert_eq!(p.proposer_id, m0.id);
    assert_eq!(p.ballot_count, 0);
    assert_eq!(g1.actions(&p.proposal_id).await.unwrap(), body);

    let after = g0.vote(&p.proposal_id, true).await.unwrap();
    assert_eq!((after.state, after.ballot_count), (ProposalState::Open, 1));
    let after = g1.vote(&p.proposal_id, true).await.unwrap();
    assert_eq!(after.state, ProposalState::Accepted);
    let mut votes = after.final_votes().unwrap();
    votes.sort();
    let mut expected = vec![(m0.id.clone(), true), (m1.id.clone(), true)];
    expected.sort();
    assert_eq!(votes, expected);
    assert_eq!(g2.show(&p.proposal_id).await.unwrap(), after);

    // Voting on a decided proposal: the node's error, typed.
    let err = g2.vote(&p.proposal_id, false).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400));
    assert_eq!(err.api_code(), Some("ProposalNotOpen"));
    assert!(err.to_string().contains("Accepted"), "{err}");

    // Rejection by ballot scripts, and withdrawal by the proposer only.
    let q = g1
        .propose_action("remove_user", json!({"user_id": "u"}))
        .await
        .unwrap();
    g0.vote_with_ballot(&q.proposal_id, "export function vote (p, id) { return false }")
        .await
        .unwrap();
    let rejected = g2.vote(&q.proposal_id, false).await.unwrap();
    assert_eq!(rejected.state, ProposalState::Rejected);
    let r = g2
        .propose_action("transition_service_to_open", json!({}))
        .await
        .unwrap();
    let err = g0.withdraw(&r.proposal_id).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(403));
    assert_eq!(
        err.api_message(),
        Some("only the proposer can withdraw a proposal")
    );
    let withdrawn = g2.withdraw(&r.proposal_id).await.unwrap();
    assert_eq!(withdrawn.state, ProposalState::Withdrawn);
    let s = g0
        .propose_action("set_constitution", json!({"constitution": "..."}))
        .await
        .unwrap();

    // Listing follows nextLink across pages (two per page here).
    let all = g1.list().await.unwrap();
    let states: Vec<_> = all.iter().map(|p| (p.proposal_id.clone(), p.state)).collect();
    assert_eq!(
        states,
        vec![
            (p.proposal_id.clone(), ProposalState::Accepted),
            (q.proposal_id.clone(), ProposalState::Rejected),
            (r.proposal_id.clone(), ProposalState::Withdrawn),
            (s.proposal_id.clone(), ProposalState::Open),
        ]
    );
    let err = g1.show("nope").await.unwrap_err();
    assert_eq!(err.api_code(), Some("ProposalNotFound"));

    // Every request carried the api-version, and writes went to CCF's paths.
    let requests = mock.gov.lock().unwrap().requests.clone();
    assert!(requests.iter().all(|r| r.contains("api-version=2024-07-01")));
    let ballot_path = format!(
        "POST /gov/members/proposals/{}/ballots/{}:submit?api-version=2024-07-01",
        p.proposal_id, m1.id
    );
    assert!(requests.contains(&ballot_path), "{requests:#?}");
    assert!(requests.contains(&format!(
        "POST /gov/members/proposals/{}:withdraw?api-version=2024-07-01",
        r.proposal_id
    )));
}

#[tokio::test]
async fn replays_strangers_and_new_members() {
    let mock = start_mock().await;
    let m0 = mock.add_member("member0", KeyKind::Ed25519, true);
    let g0 = mock.client(&m0);

    // The same signed bytes twice: the second is a replay.
    let bytes = g0.sign(MsgType::Proposal, None, br#"{"actions": []}"#).unwrap();
    let first = g0
        .post_signed("/gov/members/proposals:create", bytes.clone())
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    let again = g0
        .post_signed("/gov/members/proposals:create", bytes)
        .await
        .unwrap();
    assert_eq!(again.status, 400);
    assert_eq!(again.api_error().unwrap().code, "ProposalReplay");

    // A ballot for another proposal than the path's is refused with the library's message.
    let p = g0.propose(&json!({"actions": []})).await.unwrap();
    let path = format!(
        "/gov/members/proposals/{}/ballots/{}:submit",
        p.proposal_id, m0.id
    );
    let wrong = g0
        .post_cose(&path, MsgType::Ballot, Some("other"), br#"{"ballot": ""}"#)
        .await
        .unwrap();
    assert_eq!(wrong.status, 400);
    assert!(wrong
        .api_error()
        .unwrap()
        .message
        .contains("proposal id mismatch"));

    // Someone who is not a member.
    let stranger = envelope::generate_member("stranger", KeyKind::P384).unwrap();
    let client = Client::new(&mock.url, &mock.service.cert_pem, None).unwrap();
    let gs = GovClient::new(client, &stranger.cert_pem, &stranger.key_pem).unwrap();
    let err = gs.propose(&json!({"actions": []})).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401));

    // A new member becomes Active by acknowledging the state digest.
    let m1 = mock.add_member("member1", KeyKind::P384, false);
    assert_eq!(mock.member_status(&m1.id), "Accepted");
    let digest = mock.client(&m1).ack_state_digest().await.unwrap();
    assert_eq!(digest.len(), 64);
    assert_eq!(mock.member_status(&m1.id), "Active");
    let members = g0.members().await.unwrap();
    assert_eq!(members["value"].as_array().unwrap().len(), 2);
    assert_eq!(g0.service_info().await.unwrap()["status"], "Open");
}

async fn run_cli(args: &[&str]) -> anyhow::Result<String> {
    use clap::Parser as _;
    let cli =
        synod_governance::cli::Cli::try_parse_from(std::iter::once("synod-gov").chain(args.iter().copied()))?;
    let mut out = Vec::new();
    synod_governance::cli::run(cli, &mut out).await?;
    Ok(String::from_utf8(out)?)
}

#[tokio::test]
async fn the_cli_against_a_network_json() {
    let mock = start_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("service_cert.pem"), &mock.service.cert_pem).unwrap();
    let mut ids = Vec::new();
    for (name, p384) in [("member0", true), ("member1", false)] {
        let mut args = vec!["keygen", "--name", name, "--out", d.to_str().unwrap()];
        if p384 {
            args.push("--p384");
        }
        run_cli(&args).await.unwrap();
        let der =
            cert::pem_to_der(&std::fs::read_to_string(d.join(format!("{name}_cert.pem"))).unwrap()).unwrap();
        let id = envelope::member_id(&der);
        mock.gov
            .lock()
            .unwrap()
            .members
            .insert(id.clone(), (der, "Active".into()));
        ids.push(id);
    }
    let network = json!({
        "nodes": [{"name": "n0", "url": mock.url}],
        "service_cert": "service_cert.pem",
        "members": [
            {"name": "member0", "cert": "member0_cert.pem", "key": "member0_privk.pem"},
            {"name": "member1", "cert": "member1_cert.pem", "key": "member1_privk.pem"}
        ]
    });
    let net = d.join("network.json");
    std::fs::write(&net, network.to_string()).unwrap();
    let n = net.to_str().unwrap();

    let created = run_cli(&[
        "--network",
        n,
        "--json",
        "propose",
        "--action",
        "set_user",
        "--args",
        r#"{"cert": "x"}"#,
    ])
    .await
    .unwrap();
    let created: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["state"], "Open");
    assert_eq!(created["proposerId"], ids[0], "the first member by default");
    let id = created["proposalId"].as_str().unwrap().to_string();

    let listed = run_cli(&["--network", n, "list"]).await.unwrap();
    assert!(listed.starts_with("PROPOSAL ID"), "{listed}");
    assert!(listed.contains(&id) && listed.contains("Open"), "{listed}");

    let voted = run_cli(&["--network", n, "vote", &id, "--accept"]).await.unwrap();
    assert!(voted.contains("state         Open"), "{voted}");
    let voted = run_cli(&["--network", n, "--member", "member1", "vote", &id, "--accept"])
        .await
        .unwrap();
    assert!(voted.contains("state         Accepted"), "{voted}");

    let shown = run_cli(&["--network", n, "show", &id, "--json"]).await.unwrap();
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["proposal"]["ballotCount"], 2);
    assert_eq!(shown["actions"]["actions"][0]["name"], "set_user");

    let info = run_cli(&["--network", n, "info"]).await.unwrap();
    println!("{listed}\n{voted}\n{info}");
    assert!(
        info.contains("status: Open") && info.contains(&ids[1]) && info.contains("Trusted"),
        "{info}"
    );
    let acked = run_cli(&["--network", n, "--member", "member1", "ack"])
        .await
        .unwrap();
    assert!(
        acked.contains(&ids[1]) && acked.contains("acknowledged"),
        "{acked}"
    );

    // Errors from the node come back with their status, code and message.
    let err = run_cli(&["--network", n, "--member", "member1", "withdraw", &id])
        .await
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("403") && message.contains("AuthorizationFailed"),
        "{message}"
    );
    let err = run_cli(&["--network", n, "show", "missing"]).await.unwrap_err();
    assert!(format!("{err:#}").contains("ProposalNotFound"), "{err:#}");
}
