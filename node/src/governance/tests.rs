use synod_core::cert;
use synod_core::ledger::{KeyWrite, MapWrites, WriteSet};
use synod_kv::State;

use super::*;

const NOW: u64 = 1_800_000_000;

struct Fixture {
    state: State,
    members: Vec<String>,
    counter: u8,
    /// With a ledger secret, governance issues recovery shares as on a node.
    secret: Option<LedgerSecret>,
}

fn member_info(status: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"status": status, "member_data": null})).expect("json")
}

impl Fixture {
    /// A service with `n` active members and the default constitution.
    fn new(n: usize) -> Fixture {
        let mut writes = vec![];
        let mut members = vec![];
        for i in 0..n {
            let id = format!("{:064x}", i + 1);
            writes.push(KeyWrite {
                key: id.clone().into_bytes(),
                value: Some(member_info("Active")),
            });
            members.push(id);
        }
        let service = json!({"status": "Opening"}).to_string().into_bytes();
        let signature = json!({"root": "ab".repeat(32)}).to_string().into_bytes();
        let ws = WriteSet {
            maps: vec![
                MapWrites {
                    name: maps::MEMBERS_INFO.into(),
                    writes,
                },
                MapWrites {
                    name: maps::SERVICE_INFO.into(),
                    writes: vec![KeyWrite {
                        key: vec![],
                        value: Some(service),
                    }],
                },
                MapWrites {
                    name: maps::SIGNATURES.into(),
                    writes: vec![KeyWrite {
                        key: vec![],
                        value: Some(signature),
                    }],
                },
            ],
        };
        let mut state = State::default();
        state.apply(1, &ws.maps).expect("genesis");
        Fixture {
            state,
            members,
            counter: 0,
            secret: None,
        }
    }

    /// Runs `f` on a transaction and commits it (as the node would on success).
    fn run<T>(&mut self, f: impl FnOnce(&mut Governance<'_>) -> Result<T, GovError>) -> Result<T, GovError> {
        self.run_at(NOW, f)
    }

    /// [`Fixture::run`] on a node whose clock reads `now`.
    fn run_at<T>(
        &mut self,
        now: u64,
        f: impl FnOnce(&mut Governance<'_>) -> Result<T, GovError>,
    ) -> Result<T, GovError> {
        let mut tx = Tx::new(self.state.clone());
        let mut gov = Governance::new(&mut tx, now, (2, 5));
        if let Some(secret) = &self.secret {
            gov = gov.with_ledger_secret(1, secret.clone());
        }
        let out = f(&mut gov)?;
        let (public, private) = tx.into_write_sets();
        let seqno = self.state.version() + 1;
        self.state
            .apply(seqno, public.maps.iter().chain(&private.maps))
            .expect("apply");
        Ok(out)
    }

    /// Runs `op` on a fresh request from `member` (a digest and raw bytes of its own) and commits it.
    fn send<T>(
        &mut self,
        member: usize,
        payload: &[u8],
        op: impl FnOnce(&mut Governance<'_>, &Request<'_>) -> Result<T, GovError>,
    ) -> Result<T, GovError> {
        self.counter += 1;
        let id = self.members[member].clone();
        let raw = format!("raw request {}", self.counter);
        let r = Request {
            member_id: &id,
            created_at: NOW,
            signature_digest: [self.counter; 32],
            raw: raw.as_bytes(),
            payload,
        };
        self.run(|g| op(g, &r))
    }

    fn propose(
        &mut self,
        member: usize,
        actions: serde_json::Value,
    ) -> Result<(String, ProposalInfo), GovError> {
        let body = json!({"actions": actions}).to_string();
        self.send(member, body.as_bytes(), |g, r| g.propose(r))
    }

    fn vote(&mut self, member: usize, proposal: &str, accept: bool) -> Result<ProposalInfo, GovError> {
        let ballot =
            json!({"ballot": format!("export function vote (proposal, proposerId) {{ return {accept} }}")})
                .to_string();
        self.send(member, ballot.as_bytes(), |g, r| {
            g.ballot(r, proposal, Some(proposal))
        })
    }

    /// Commits `value` at `key` of `map` (an application's write, outside governance).
    fn write(&mut self, map: &str, key: &[u8], value: &[u8]) {
        let seqno = self.state.version() + 1;
        let writes = [MapWrites {
            name: map.into(),
            writes: vec![KeyWrite {
                key: key.to_vec(),
                value: Some(value.to_vec()),
            }],
        }];
        self.state.apply(seqno, &writes).expect("apply");
    }

    fn get(&self, map: &str, key: &str) -> Option<serde_json::Value> {
        self.state
            .get(map, key.as_bytes())
            .and_then(|v| serde_json::from_slice(v).ok())
    }
}

fn set_user_action() -> serde_json::Value {
    let user = cert::generate_self_signed("user", false).expect("cert");
    json!([{"name": "set_user", "args": {"cert": user.cert_pem}}])
}

#[test]
fn a_strict_majority_of_active_members_accepts_and_the_action_applies() {
    let mut fx = Fixture::new(3);
    let (id, info) = fx.propose(0, set_user_action()).expect("propose");
    assert_eq!(info.state, ProposalState::Open, "a proposal is not a vote");
    assert_eq!(
        fx.vote(0, &id, true).expect("vote").state,
        ProposalState::Open,
        "1 of 3 is not a majority"
    );
    assert!(fx.state.map(maps::USERS_CERTS).is_none());
    let info = fx.vote(1, &id, true).expect("vote");
    assert_eq!(info.state, ProposalState::Accepted);
    assert_eq!(info.final_votes.as_ref().map(|v| v.len()), Some(2));
    assert_eq!(
        fx.state.map(maps::USERS_CERTS).map(|m| m.len()),
        Some(1),
        "the new user is recorded"
    );
    // Closed: no more votes.
    assert!(matches!(
        fx.vote(2, &id, true),
        Err(GovError::Conflict("ProposalNotOpen", _))
    ));
}

#[test]
fn a_majority_against_rejects_and_nothing_applies() {
    let mut fx = Fixture::new(3);
    let (id, _) = fx
        .propose(0, json!([{"name": "transition_service_to_open"}]))
        .expect("propose");
    fx.vote(1, &id, false).expect("vote");
    assert_eq!(
        fx.vote(2, &id, false).expect("vote").state,
        ProposalState::Rejected
    );
    assert_eq!(fx.get(maps::SERVICE_INFO, "").expect("info")["status"], "Opening");
}

#[test]
fn double_votes_wrong_bindings_and_withdrawals_are_checked() {
    let mut fx = Fixture::new(3);
    let (id, _) = fx.propose(0, set_user_action()).expect("propose");
    fx.vote(1, &id, false).expect("first vote");
    assert!(matches!(
        fx.vote(1, &id, true),
        Err(GovError::Conflict("VoteAlreadyExists", _))
    ));
    // A ballot signed for another proposal cannot be replayed onto this one.
    assert!(matches!(
        fx.send(
            2,
            br#"{"ballot": "export function vote() { return true }"}"#,
            |g, r| g.ballot(r, &id, Some("another"))
        ),
        Err(GovError::BadRequest("ProposalIdMismatch", _))
    ));
    // Only the proposer withdraws.
    assert!(matches!(
        fx.send(1, b"", |g, r| g.withdraw(r, &id, Some(&id))),
        Err(GovError::Forbidden(_))
    ));
    assert_eq!(
        fx.send(0, b"", |g, r| g.withdraw(r, &id, Some(&id)))
            .expect("withdraw")
            .state,
        ProposalState::Withdrawn
    );
    assert!(matches!(
        fx.vote(2, &id, true),
        Err(GovError::Conflict("ProposalNotOpen", _))
    ));
}

#[test]
fn replayed_and_stale_requests_and_strangers_are_refused() {
    let mut fx = Fixture::new(1);
    let body = json!({"actions": [{"name": "transition_service_to_open"}]}).to_string();
    let m = fx.members[0].clone();
    let r = Request {
        member_id: &m,
        created_at: NOW,
        signature_digest: [9; 32],
        raw: b"raw",
        payload: body.as_bytes(),
    };
    fx.run(|g| g.propose(&r)).expect("first");
    assert!(matches!(
        fx.run(|g| g.propose(&r)),
        Err(GovError::BadRequest("ReplayedRequest", _))
    ));
    let stale = Request {
        created_at: NOW - REQUEST_WINDOW_SECS - 1,
        signature_digest: [8; 32],
        ..r
    };
    assert!(matches!(
        fx.run(|g| g.propose(&stale)),
        Err(GovError::BadRequest("StaleRequest", _))
    ));
    let future = Request {
        created_at: NOW + REQUEST_WINDOW_SECS + 1,
        signature_digest: [7; 32],
        ..stale
    };
    assert!(matches!(
        fx.run(|g| g.propose(&future)),
        Err(GovError::BadRequest("StaleRequest", _))
    ));
    // A timestamp at the end of time is stale too, not an arithmetic overflow.
    let far = Request {
        created_at: u64::MAX,
        signature_digest: [5; 32],
        ..future
    };
    assert!(matches!(
        fx.run(|g| g.propose(&far)),
        Err(GovError::BadRequest("StaleRequest", _))
    ));
    let stranger = "f".repeat(64);
    let r = Request {
        member_id: &stranger,
        created_at: NOW,
        signature_digest: [6; 32],
        raw: b"raw",
        payload: body.as_bytes(),
    };
    assert!(matches!(
        fx.run(|g| g.propose(&r)),
        Err(GovError::Unauthorized(_))
    ));
}

#[test]
fn malformed_proposals_fail_validation() {
    let mut fx = Fixture::new(1);
    for actions in [
        json!([{"name": "no_such_action"}]),
        json!([{"name": "set_user", "args": {"cert": 5}}]),
        json!([]),
    ] {
        let err = fx.propose(0, actions.clone()).expect_err("invalid");
        assert!(
            matches!(err, GovError::BadRequest("ProposalFailedToValidate", _)),
            "{actions}: {err:?}"
        );
    }
}

#[test]
fn an_application_that_throws_fails_the_proposal_and_writes_nothing() {
    let mut fx = Fixture::new(1);
    let (id, _) = fx
        .propose(0, json!([{"name": "transition_service_to_open"}]))
        .expect("propose");
    assert_eq!(
        fx.vote(0, &id, true).expect("vote").state,
        ProposalState::Accepted
    );
    // Opening twice throws in apply; the first action's writes are discarded with it.
    let (id, _) = fx
        .propose(0, json!([{"name": "set_user", "args": {"cert": cert::generate_self_signed("u", false).expect("cert").cert_pem}},
                            {"name": "transition_service_to_open"}]))
        .expect("propose");
    let info = fx.vote(0, &id, true).expect("vote");
    assert_eq!(info.state, ProposalState::Failed);
    assert!(info.failure.expect("failure").reason.contains("already open"));
    assert!(
        fx.state.map(maps::USERS_CERTS).is_none(),
        "nothing of a failed proposal applies"
    );
}

#[test]
fn a_new_constitution_drops_open_proposals_and_its_rule_applies() {
    let mut fx = Fixture::new(3);
    let (pending, _) = fx.propose(2, set_user_action()).expect("an open proposal");
    // A constitution where the proposer alone decides.
    let lax = DEFAULT_CONSTITUTION.replace(
        "export function resolve(proposal, proposerId, votes) {",
        "export function resolve(proposal, proposerId, votes) {\n  if (votes.some((v) => v.member_id === proposerId && v.vote)) return \"Accepted\";",
    );
    let (id, _) = fx
        .propose(
            0,
            json!([{"name": "set_constitution", "args": {"constitution": lax}}]),
        )
        .expect("propose");
    fx.vote(0, &id, true).expect("vote");
    assert_eq!(
        fx.vote(1, &id, true).expect("vote").state,
        ProposalState::Accepted
    );
    assert_eq!(
        fx.get(maps::PROPOSALS_INFO, &pending).expect("info")["state"],
        "Dropped"
    );
    let (id, _) = fx.propose(2, set_user_action()).expect("propose");
    assert_eq!(
        fx.vote(2, &id, true).expect("vote").state,
        ProposalState::Accepted,
        "the new rule: one vote suffices"
    );
}

#[test]
fn recovery_shares_follow_the_members_keys_and_threshold_through_governance() {
    let mut fx = Fixture::new(1);
    fx.secret = Some(LedgerSecret([1; 32]));
    let keys = synod_core::recovery::generate_encryption_key().expect("keygen");
    let shares = |fx: &Fixture| -> Vec<String> {
        fx.get(maps::RECOVERY_SHARES, "")
            .map(|v| {
                v["encrypted_shares"]
                    .as_object()
                    .expect("shares")
                    .keys()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    // A member with an unusable encryption key is refused: it could never hold a share.
    let bad = cert::generate_self_signed("bad", false).expect("cert");
    let (id, _) = fx
        .propose(
            0,
            json!([{"name": "set_member", "args": {"cert": bad.cert_pem, "encryption_pub_key": "not a key"}}]),
        )
        .expect("propose");
    let info = fx.vote(0, &id, true).expect("vote");
    assert_eq!(info.state, ProposalState::Failed);
    assert!(info.failure.expect("failure").reason.contains("encryption key"));
    // A member with a key gets its share once it is Active.
    let m1 = cert::generate_self_signed("m1", false).expect("cert");
    let m1_id = cert::cert_fingerprint_hex(&cert::pem_to_der(&m1.cert_pem).expect("der"));
    let (id, _) = fx
        .propose(
            0,
            json!([{"name": "set_member", "args": {"cert": m1.cert_pem, "encryption_pub_key": keys.public_pem}}]),
        )
        .expect("propose");
    assert_eq!(
        fx.vote(0, &id, true).expect("vote").state,
        ProposalState::Accepted
    );
    assert!(shares(&fx).is_empty(), "an Accepted member holds no share");
    fx.members.push(m1_id.clone());
    let digest = fx.send(1, b"", |g, r| g.update_state_digest(r)).expect("update");
    let ack = json!({"digest": digest}).to_string();
    fx.send(1, ack.as_bytes(), |g, r| g.ack_state_digest(r))
        .expect("ack");
    assert_eq!(shares(&fx), vec![m1_id.clone()]);
    // A threshold no set of recovery members can meet fails and changes nothing.
    let (id, _) = fx
        .propose(
            0,
            json!([{"name": "set_recovery_threshold", "args": {"recovery_threshold": 2}}]),
        )
        .expect("propose");
    fx.vote(0, &id, true).expect("vote");
    let info = fx.vote(1, &id, true).expect("vote");
    assert_eq!(info.state, ProposalState::Failed, "{:?}", info.failure);
    // Removing the recovery member takes its share away.
    let (id, _) = fx
        .propose(
            0,
            json!([{"name": "remove_member", "args": {"member_id": m1_id}}]),
        )
        .expect("propose");
    fx.vote(0, &id, true).expect("vote");
    assert_eq!(
        fx.vote(1, &id, true).expect("vote").state,
        ProposalState::Accepted
    );
    assert!(shares(&fx).is_empty(), "no recovery member left: no shares");
}

#[test]
fn new_members_start_accepted_and_become_active_by_acknowledging_the_state_digest() {
    let mut fx = Fixture::new(1);
    let newcomer = cert::generate_self_signed("m1", false).expect("cert");
    let new_id = cert::cert_fingerprint_hex(&cert::pem_to_der(&newcomer.cert_pem).expect("der"));
    let (id, _) = fx
        .propose(
            0,
            json!([{"name": "set_member", "args": {"cert": newcomer.cert_pem}}]),
        )
        .expect("propose");
    fx.vote(0, &id, true).expect("vote");
    assert_eq!(
        fx.get(maps::MEMBERS_INFO, &new_id).expect("info")["status"],
        "Accepted"
    );
    fx.members.push(new_id.clone());
    let err = fx
        .propose(1, set_user_action())
        .expect_err("an Accepted member cannot propose yet");
    assert!(matches!(err, GovError::Forbidden(_)));
    let state_digest = fx.send(1, b"", |g, r| g.update_state_digest(r)).expect("update");
    let wrong = json!({"digest": "00".repeat(32)}).to_string();
    assert!(matches!(
        fx.send(1, wrong.as_bytes(), |g, r| g.ack_state_digest(r)),
        Err(GovError::BadRequest("StateDigestMismatch", _))
    ));
    let ack = json!({"digest": state_digest}).to_string();
    fx.send(1, ack.as_bytes(), |g, r| g.ack_state_digest(r))
        .expect("ack");
    assert_eq!(
        fx.get(maps::MEMBERS_INFO, &new_id).expect("info")["status"],
        "Active"
    );
    fx.propose(1, set_user_action())
        .expect("an Active member proposes");
}

#[test]
fn a_ballot_cannot_write_anything_or_tamper_with_the_constitution() {
    let mut fx = Fixture::new(3);
    let (id, _) = fx.propose(0, set_user_action()).expect("propose");
    // A ballot that tries to add a user, and to make every later resolve say Accepted.
    let evil = json!({"ballot": "Array.prototype.filter = function () { return [1, 2, 3]; };\n        export function vote (proposal, proposerId) {\n          ccf.kv[\"public:ccf.gov.users.certs\"].set(ccf.strToBuf(\"x\"), ccf.strToBuf(\"y\"));\n          return false; }"})
    .to_string();
    let err = fx
        .send(1, evil.as_bytes(), |g, r| g.ballot(r, &id, Some(&id)))
        .expect_err("a writing ballot fails");
    assert!(matches!(err, GovError::BadRequest("BallotFailed", _)), "{err:?}");
    assert!(fx.state.map(maps::USERS_CERTS).is_none());
    // A ballot that only poisons globals does not change how the constitution counts.
    let poison = json!({"ballot": "Array.prototype.filter = function () { return [1, 2, 3]; };\n        export function vote (proposal, proposerId) { return false; }"})
    .to_string();
    let info = fx
        .send(1, poison.as_bytes(), |g, r| g.ballot(r, &id, Some(&id)))
        .expect("a ballot");
    assert_eq!(
        info.state,
        ProposalState::Open,
        "one vote against of three decides nothing"
    );
}

#[test]
fn a_stored_ballot_that_fails_later_is_left_out_instead_of_blocking_the_proposal() {
    let mut fx = Fixture::new(3);
    let (id, _) = fx.propose(0, set_user_action()).expect("propose");
    // Member 1's ballot says yes while there are no users, and throws once there are.
    let fragile = json!({"ballot": "export function vote (proposal, proposerId) {\n          if (ccf.kv[\"public:ccf.gov.users.certs\"].size > 0) { throw new Error(\"users changed\"); }\n          return true; }"})
    .to_string();
    fx.send(1, fragile.as_bytes(), |g, r| g.ballot(r, &id, Some(&id)))
        .expect("the ballot runs when submitted");
    let (other, _) = fx.propose(2, set_user_action()).expect("propose");
    fx.vote(0, &other, true).expect("vote");
    assert_eq!(
        fx.vote(2, &other, true).expect("vote").state,
        ProposalState::Accepted,
        "a user now exists"
    );
    // Member 1's stored ballot now throws: the others still decide, and the failure is reported.
    let info = fx.vote(2, &id, true).expect("another member votes");
    assert_eq!(info.state, ProposalState::Open, "one valid vote of three");
    let failures = info.vote_failures.as_ref().expect("failures recorded");
    assert!(
        failures[&fx.members[1]].reason.contains("users changed"),
        "{failures:?}"
    );
    let api = info.to_api(&id);
    assert!(api["voteFailures"][&fx.members[1]]["reason"].is_string(), "{api}");
    let info = fx.vote(0, &id, true).expect("a second valid vote");
    assert_eq!(info.state, ProposalState::Accepted);
    let voters: Vec<String> = info.final_votes.expect("final votes").into_keys().collect();
    let mut counted = vec![fx.members[0].clone(), fx.members[2].clone()];
    counted.sort();
    assert_eq!(voters, counted, "the failed ballot is not a vote");
}

#[test]
fn ballot_cannot_read_private_maps() {
    let mut fx = Fixture::new(3);
    fx.write("records", &1u64.to_be_bytes(), b"a private record");
    let (id, _) = fx.propose(0, set_user_action()).expect("propose");
    // A ballot that reads the application's private map and throws what it found.
    let leak = json!({"ballot": r#"export function vote (proposal, proposerId) {
          const found = [];
          ccf.kv["records"].forEach((v) => found.push(ccf.bufToStr(v)));
          throw new Error("leaked: " + found.join(",")); }"#})
    .to_string();
    let err = fx
        .send(1, leak.as_bytes(), |g, r| g.ballot(r, &id, Some(&id)))
        .expect_err("a ballot reading a private map fails");
    let text = err.to_string();
    assert!(matches!(err, GovError::BadRequest("BallotFailed", _)), "{err:?}");
    assert!(
        !text.contains("a private record"),
        "the private record leaked: {text}"
    );
    assert!(text.contains("private"), "{text}");
}

#[test]
fn a_constitution_without_validate_resolve_and_apply_is_refused_and_the_old_one_stays() {
    let mut fx = Fixture::new(1);
    let broken = [
        ("export function validate(p) { return { valid: true }; }", "resolve"),
        ("export function validate(p) { return { valid: true }; }\nexport const resolve = 1;\nexport function apply() {}", "resolve"),
        ("export function validate(", "cannot govern"),
        ("throw new Error(\"refuses to load\");", "refuses to load"),
    ];
    for (constitution, why) in broken {
        let (id, _) = fx
            .propose(
                0,
                json!([{"name": "set_constitution", "args": {"constitution": constitution}}]),
            )
            .expect("propose");
        let info = fx.vote(0, &id, true).expect("vote");
        assert_eq!(info.state, ProposalState::Failed, "{constitution}");
        let reason = info.failure.expect("failure").reason;
        assert!(
            reason.contains("cannot govern") && reason.contains(why),
            "{constitution}: {reason}"
        );
        assert!(
            fx.state.get(maps::CONSTITUTION, b"").is_none(),
            "the old constitution stays"
        );
    }
    // Governance goes on under the old constitution.
    let (id, _) = fx.propose(0, set_user_action()).expect("propose");
    assert_eq!(
        fx.vote(0, &id, true).expect("vote").state,
        ProposalState::Accepted
    );
    // A good constitution is still accepted.
    let (id, _) = fx
        .propose(
            0,
            json!([{"name": "set_constitution", "args": {"constitution": DEFAULT_CONSTITUTION}}]),
        )
        .expect("propose");
    assert_eq!(
        fx.vote(0, &id, true).expect("vote").state,
        ProposalState::Accepted
    );
}

/// Pruning the replay table by the local clock let a node whose clock runs ahead forget a request that a node
/// whose clock runs behind still accepts: after two failovers, the request could be replayed.
#[test]
fn replay_protection_survives_failovers_between_skewed_clocks() {
    let mut fx = Fixture::new(1);
    let m = fx.members[0].clone();
    let request = |created_at: u64, digest: u8| Request {
        member_id: &m,
        created_at,
        signature_digest: [digest; 32],
        raw: b"raw",
        payload: b"",
    };
    let update = |g: &mut Governance<'_>, r: &Request<'_>| g.update_state_digest(r);
    // Recorded by a node with an accurate clock, 420 s before now.
    let old = request(NOW - 420, 1);
    fx.run_at(NOW - 420, |g| update(g, &old)).expect("recorded");
    // Now: the primary's clock runs 200 s ahead; a fresh request is recorded (it used to prune the old one).
    fx.run_at(NOW + 200, |g| update(g, &request(NOW, 2)))
        .expect("fresh request on a fast clock");
    // Failover to a node whose clock runs 150 s behind: the old request is inside its window, and still known.
    assert!(matches!(
        fx.run_at(NOW - 150, |g| update(g, &old)),
        Err(GovError::BadRequest("ReplayedRequest", _))
    ));
    // Much later, a fresh request lets the old ones go...
    fx.run_at(NOW + 1000, |g| update(g, &request(NOW + 1000, 3)))
        .expect("a fresh request");
    let remembered = fx.state.map(maps::GOV_RECENT_REQUESTS).map_or(0, |m| m.len());
    assert_eq!(
        remembered, 1,
        "only the request inside the window and margin is kept"
    );
    // ... and they stay refused even by a node whose clock would accept them.
    for (clock, created_at, digest) in [(NOW - 420, NOW - 420, 1), (NOW, NOW, 2)] {
        assert!(
            matches!(
                fx.run_at(clock, |g| update(g, &request(created_at, digest))),
                Err(GovError::BadRequest("StaleRequest", _))
            ),
            "a forgotten request replayed at a node whose clock reads {clock}"
        );
    }
    // Honest requests from clocks a few minutes apart still get in.
    fx.run_at(NOW + 1000, |g| update(g, &request(NOW + 750, 4)))
        .expect("a member clock 250 s behind");
    fx.run_at(NOW + 1200, |g| update(g, &request(NOW + 1000, 5)))
        .expect("a node clock 200 s ahead");
}

/// Azure's UVM publisher identity (CCF's documentation uses it for add_snp_uvm_endorsement).
const UVM_DID: &str =
    "did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::eku:1.3.6.1.4.1.311.76.59.1.2";

/// The join-policy actions: measurements of either length (SGX/virtual 64 hex, SNP 96), SNP host data, a minimum
/// TCB per platform in the form the join check reads; malformed arguments fail validation.
#[test]
fn join_policy_actions_validate_and_record_the_policy() {
    let mut fx = Fixture::new(1);
    let snp_measurement = "7a".repeat(48);
    let actions = json!([
        {"name": "add_node_code", "args": {"code_id": snp_measurement}},
        {"name": "add_snp_host_data", "args": {"host_data": "00".repeat(32)}},
        {"name": "set_node_minimum_tcb", "args": {"platform": "snp", "tcb": "bootloader 3 tee 0 snp 8 microcode 115"}},
        {"name": "set_node_minimum_tcb", "args": {"platform": "sgx", "tcb": "SWHardeningNeeded"}},
        {"name": "add_snp_uvm_endorsement", "args": {"did": UVM_DID, "feed": "ContainerPlat-AMD-UVM", "svn": "100"}},
        {"name": "add_snp_uvm_endorsement", "args": {"did": UVM_DID, "feed": "another-feed", "svn": "7"}},
        {"name": "remove_snp_uvm_endorsement", "args": {"did": UVM_DID, "feed": "another-feed"}},
    ]);
    let (id, _) = fx.propose(0, actions).expect("propose");
    assert_eq!(
        fx.vote(0, &id, true).expect("vote").state,
        ProposalState::Accepted
    );
    assert!(fx
        .state
        .get(maps::NODES_CODE_IDS, snp_measurement.as_bytes())
        .is_some());
    assert!(fx
        .state
        .get(maps::NODES_SNP_HOST_DATA, "00".repeat(32).as_bytes())
        .is_some());
    assert_eq!(
        fx.get(maps::NODES_MINIMUM_TCB, "snp"),
        Some(json!("bootloader 3 tee 0 snp 8 microcode 115"))
    );
    assert_eq!(
        fx.get(maps::NODES_MINIMUM_TCB, "sgx"),
        Some(json!("SWHardeningNeeded"))
    );
    assert_eq!(
        fx.get(maps::NODES_SNP_UVM_ENDORSEMENTS, UVM_DID),
        Some(json!({"ContainerPlat-AMD-UVM": {"svn": "100"}}))
    );
    for bad in [
        json!([{"name": "add_snp_uvm_endorsement", "args": {"did": "did:web:example.com", "feed": "f", "svn": "1"}}]),
        json!([{"name": "add_snp_uvm_endorsement", "args": {"did": UVM_DID, "feed": "", "svn": "1"}}]),
        json!([{"name": "add_snp_uvm_endorsement", "args": {"did": UVM_DID, "feed": "f", "svn": "one"}}]),
        json!([{"name": "add_node_code", "args": {"code_id": "7a".repeat(40)}}]),
        json!([{"name": "add_snp_host_data", "args": {"host_data": "zz"}}]),
        json!([{"name": "set_node_minimum_tcb", "args": {"platform": "tdx", "tcb": "UpToDate"}}]),
        json!([{"name": "set_node_minimum_tcb", "args": {"platform": "sgx", "tcb": "Fine"}}]),
        json!([{"name": "set_node_minimum_tcb", "args": {"platform": "snp", "tcb": "snp 8"}}]),
    ] {
        let err = fx.propose(0, bad.clone()).expect_err("invalid");
        assert!(
            matches!(err, GovError::BadRequest("ProposalFailedToValidate", _)),
            "{bad}: {err:?}"
        );
    }
}
