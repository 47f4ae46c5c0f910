//! Priority 3, end to end: a consortium of three members governs a real 3-node network through the real
//! `synod-gov` CLI (COSE Sign1 requests on CCF's paths), and forged or replayed requests are refused.

use std::time::Duration;

use anyhow::{ensure, Context as _};
use serde_json::{json, Value};
use synod_client::TxStatus;
use synod_governance::envelope::MsgType;
use synod_tests::{bounded, post_log, IdentityFiles, Network};

fn cli_json(out: std::process::Output) -> anyhow::Result<Value> {
    ensure!(
        out.status.success(),
        "synod-gov failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("synod-gov output: {}", String::from_utf8_lossy(&out.stdout)))
}

/// A user write through any live node (retried past dead ones); returns once it is Committed.
async fn committed_write(net: &Network, id: u64, msg: &str) -> anyhow::Result<()> {
    let c = net.failover_client()?;
    let tx = post_log(&c, id, msg, Duration::from_secs(30)).await?;
    ensure!(c.wait_for_commit(tx, Duration::from_secs(30)).await? == TxStatus::Committed);
    Ok(())
}

fn proposal_id(v: &Value) -> anyhow::Result<String> {
    Ok(v["proposalId"].as_str().context("proposalId")?.to_string())
}

/// Proposes `action` as member 0 through the CLI and returns the proposal id.
fn propose(net: &Network, node: usize, action: &str, args: Value) -> anyhow::Result<String> {
    let out = net.gov_cli(
        node,
        0,
        &["propose", "--action", action, "--args", &args.to_string()],
    )?;
    proposal_id(&cli_json(out)?)
}

fn vote(net: &Network, node: usize, member: usize, id: &str, accept: bool) -> anyhow::Result<String> {
    let out = net.gov_cli(
        node,
        member,
        &["vote", id, if accept { "--accept" } else { "--reject" }],
    )?;
    Ok(cli_json(out)?["state"].as_str().context("state")?.to_string())
}

/// Opening by vote, one member alone not being a majority, adding a user who can then call the app, adding and
/// removing a member (Accepted → ack → Active), and trusting a joining node by vote — all through `synod-gov`.
#[tokio::test]
async fn a_consortium_governs_the_network_through_the_cli() -> anyhow::Result<()> {
    bounded(240, async {
        // Network::start_with_members opens the service by vote (2 of 3) and trusts n1 and n2 by vote.
        let mut net = Network::start_with_members(3, 3, &[]).await?;
        let p = net.primary().await?;
        let info = net.nodes[p]
            .client(None)?
            .get_json::<Value>("/gov/service/info")
            .await?;
        ensure!(info["status"] == "Open", "{info}");

        // One member alone cannot add a user: 1 of 3 is not a majority.
        let newcomer = IdentityFiles::generate(net.tmp.path(), "user1")?;
        let id = propose(&net, p, "set_user", json!({"cert": newcomer.cert_pem}))?;
        ensure!(vote(&net, p, 0, &id, true)? == "Open");
        let r = net.nodes[p]
            .client(Some(&newcomer))?
            .get("/app/log/private?id=1")
            .await?;
        ensure!(r.status == 401, "a user before the vote passed: {}", r.status);
        // A second member tips it (through a backup: forwarded to the primary).
        let backup = (p + 1) % 3;
        ensure!(vote(&net, backup, 1, &id, true)? == "Accepted");
        let r = net.nodes[p]
            .client(Some(&newcomer))?
            .post_json("/app/log/private", &json!({"id": 1, "msg": "new user"}))
            .await?;
        ensure!(
            r.status == 201,
            "the new user cannot write: {} {}",
            r.status,
            r.text()
        );
        // A third vote on a closed proposal is refused.
        let out = net.gov_cli(p, 2, &["vote", &id, "--accept"])?;
        ensure!(!out.status.success(), "a vote on an accepted proposal was taken");

        // A new member starts Accepted, cannot propose, acknowledges the state digest and becomes Active.
        let m3 = IdentityFiles::generate(net.tmp.path(), "member3")?;
        let id = propose(&net, p, "set_member", json!({"cert": m3.cert_pem}))?;
        vote(&net, p, 0, &id, true)?;
        ensure!(vote(&net, p, 1, &id, true)? == "Accepted");
        net.members.push(m3.clone());
        let out = net.gov_cli(p, 3, &["propose", "--action", "transition_service_to_open"])?;
        ensure!(!out.status.success(), "an Accepted member proposed");
        cli_json(net.gov_cli(p, 3, &["ack"])?)?;
        let members = net.nodes[p]
            .client(None)?
            .get_json::<Value>("/gov/service/members")
            .await?;
        let m3_id = synod_governance::envelope::member_id(&synod_core::cert::pem_to_der(&m3.cert_pem)?);
        let status = members["value"]
            .as_array()
            .context("members")?
            .iter()
            .find(|m| m["memberId"] == m3_id.as_str())
            .map(|m| m["status"].clone());
        ensure!(status == Some(json!("Active")), "{members}");
        // ... and is then removed again by vote; its requests are refused from then on.
        let id = propose(&net, p, "remove_member", json!({"member_id": m3_id}))?;
        vote(&net, p, 0, &id, true)?;
        vote(&net, p, 1, &id, true)?;
        ensure!(
            vote(&net, p, 2, &id, true)? == "Accepted",
            "with 4 active members, 3 votes accept"
        );
        let out = net.gov_cli(p, 3, &["propose", "--action", "transition_service_to_open"])?;
        ensure!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a member"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // A joining node stays Pending until a majority trusts it.
        let j = net.spawn_joiner(&[])?;
        let node_id = net.wait_pending(j).await?;
        let state = net.nodes[p]
            .client(None)?
            .get_json::<Value>("/gov/service/nodes")
            .await?;
        ensure!(state.to_string().contains("Pending"));
        let id = propose(&net, p, "transition_node_to_trusted", json!({"node_id": node_id}))?;
        vote(&net, p, 0, &id, true)?;
        ensure!(vote(&net, p, 2, &id, true)? == "Accepted");
        net.nodes[j].wait_listening()?;
        net.wait_for_voters(4).await?;
        // A voter may still be applying what it was sent: give it the time to catch up (it checks every signature).
        let mut listing = cli_json(net.gov_cli(j, 0, &["list"])?)?;
        for _ in 0..100 {
            if listing.as_array().map_or(0, |a| a.len()) >= 5 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            listing = cli_json(net.gov_cli(j, 0, &["list"])?)?;
        }
        ensure!(
            listing.as_array().map_or(0, |a| a.len()) >= 5,
            "every proposal is listed from the new node: {listing}"
        );
        Ok(())
    })
    .await
}

/// Forged signatures, ballots by non-members, replayed proposals, stale `created_at` and ballots replayed onto
/// another proposal are all refused, and change nothing.
#[tokio::test]
async fn forged_replayed_and_misbound_requests_are_refused() -> anyhow::Result<()> {
    bounded(180, async {
        let net = Network::start_with_members(1, 3, &[]).await?;
        let gov = net.gov_client(0, 0)?;
        let proposal =
            json!({"actions": [{"name": "set_recovery_threshold", "args": {"recovery_threshold": 1}}]});
        let payload = serde_json::to_vec(&proposal)?;
        let create = "/gov/members/proposals:create";
        let before = gov.list().await?.len();

        // A flipped byte in the signature: not authentic.
        let mut forged = gov.sign(MsgType::Proposal, None, &payload)?;
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let r = gov.post_signed(create, forged).await?;
        ensure!(r.status == 401, "forged signature: {} {}", r.status, r.text());
        // A replayed proposal.
        let signed = gov.sign(MsgType::Proposal, None, &payload)?;
        let r = gov.post_signed(create, signed.clone()).await?;
        ensure!(r.status == 200, "{}", r.text());
        let id = r.json_value()?["proposalId"].as_str().context("id")?.to_string();
        let r = gov.post_signed(create, signed).await?;
        ensure!(
            r.status == 400 && r.api_error().context("error")?.code == "ReplayedRequest",
            "replay: {} {}",
            r.status,
            r.text()
        );
        // A stale created_at (an hour ago).
        let stale = gov.sign_at(
            MsgType::Proposal,
            synod_governance::client::now_secs() - 3600,
            None,
            &payload,
        )?;
        let r = gov.post_signed(create, stale).await?;
        ensure!(
            r.status == 400 && r.api_error().context("error")?.code == "StaleRequest",
            "stale: {} {}",
            r.status,
            r.text()
        );

        // A ballot by a non-member (a well-formed request, signed with the stranger's own key).
        let stranger = synod_governance::envelope::generate_member(
            "stranger",
            synod_governance::envelope::KeyKind::Ed25519,
        )?;
        let ballot =
            json!({"ballot": "export function vote (proposal, proposerId) { return true }"}).to_string();
        let outsider = synod_governance::client::GovClient::new(
            net.nodes[0].client(None)?,
            &stranger.cert_pem,
            &stranger.key_pem,
        )?;
        let path = format!(
            "/gov/members/proposals/{id}/ballots/{}:submit",
            outsider.member_id()
        );
        let r = outsider
            .post_cose(&path, MsgType::Ballot, Some(&id), ballot.as_bytes())
            .await?;
        ensure!(r.status == 401, "non-member ballot: {} {}", r.status, r.text());
        // A genuine ballot for one proposal, replayed onto another proposal id.
        let other = gov
            .propose(
                &json!({"actions": [{"name": "set_recovery_threshold", "args": {"recovery_threshold": 2}}]}),
            )
            .await?;
        let for_first = gov.sign(MsgType::Ballot, Some(&id), ballot.as_bytes())?;
        let path = format!(
            "/gov/members/proposals/{}/ballots/{}:submit",
            other.proposal_id,
            gov.member_id()
        );
        let r = gov.post_signed(&path, for_first).await?;
        ensure!(
            r.status == 400,
            "ballot replayed onto another proposal: {} {}",
            r.status,
            r.text()
        );
        // A ballot submitted under another member's path.
        let path = format!("/gov/members/proposals/{id}/ballots/{}:submit", "a".repeat(64));
        let r = gov
            .post_cose(&path, MsgType::Ballot, Some(&id), ballot.as_bytes())
            .await?;
        ensure!(
            r.status == 401,
            "ballot under another member's path: {} {}",
            r.status,
            r.text()
        );
        // Withdrawal by a non-proposer.
        let gov1 = net.gov_client(0, 1)?;
        let r = gov1
            .post_cose(
                &format!("/gov/members/proposals/{id}:withdraw"),
                MsgType::Withdrawal,
                Some(&id),
                b"",
            )
            .await?;
        ensure!(
            r.status == 403,
            "withdrawal by a non-proposer: {} {}",
            r.status,
            r.text()
        );
        // Malformed actions and unknown actions fail validation.
        let r = gov
            .post_cose(
                create,
                MsgType::Proposal,
                None,
                br#"{"actions": [{"name": "launch_rockets"}]}"#,
            )
            .await?;
        ensure!(
            r.status == 400 && r.api_error().context("error")?.code == "ProposalFailedToValidate",
            "{}",
            r.text()
        );
        let r = gov
            .post_cose(create, MsgType::Proposal, None, b"not json")
            .await?;
        ensure!(r.status == 400, "{}", r.text());

        // Nothing above changed the proposals: only the genuine two were added, both still Open.
        let all = gov.list().await?;
        ensure!(all.len() == before + 2, "{all:?}");
        for p in [&id, &other.proposal_id] {
            ensure!(
                gov.show(p).await?.state == synod_governance::ProposalState::Open,
                "{p}"
            );
        }
        Ok(())
    })
    .await
}

/// Replacing the constitution by vote drops open proposals and the new rule applies; governance state survives a
/// restart of every node and a failover.
#[tokio::test]
async fn a_new_constitution_applies_and_governance_survives_restarts_and_failover() -> anyhow::Result<()> {
    bounded(240, async {
        let mut net = Network::start_with_members(3, 3, &[]).await?;
        let p = net.primary().await?;
        let gov0 = net.gov_client(p, 0)?;
        let pending = gov0.propose_action("set_recovery_threshold", json!({"recovery_threshold": 2})).await?;
        // The new rule: any single member's vote accepts.
        let old = gov0.constitution().await?;
        let lax = old.replace(
            "export function resolve(proposal, proposerId, votes) {",
            "export function resolve(proposal, proposerId, votes) {\n  if (votes.some((v) => v.vote)) return \"Accepted\";",
        );
        ensure!(lax != old, "the constitution's resolve was not found");
        let change = gov0.propose_action("set_constitution", json!({"constitution": lax})).await?;
        gov0.vote(&change.proposal_id, true).await?;
        let accepted = net.gov_client(p, 1)?.vote(&change.proposal_id, true).await?;
        ensure!(accepted.state == synod_governance::ProposalState::Accepted);
        ensure!(gov0.show(&pending.proposal_id).await?.state == synod_governance::ProposalState::Dropped);
        ensure!(net.gov_client(p, 0)?.constitution().await? == lax);
        let quick = net.gov_client(p, 2)?.propose_action("set_recovery_threshold", json!({"recovery_threshold": 3})).await?;
        let info = net.gov_client(p, 2)?.vote(&quick.proposal_id, true).await?;
        ensure!(info.state == synod_governance::ProposalState::Accepted, "one vote under the new rule: {info:?}");
        let open = gov0.propose_action("set_recovery_threshold", json!({"recovery_threshold": 1})).await?;

        let proposals = gov0.list().await?.len();
        // Governance answers once its transaction is ordered; a later write committing means it is committed too.
        committed_write(&net, 7, "before the failover").await?;
        // Failover: the governance tables are replicated like everything else.
        net.nodes[p].kill9();
        let q = net.primary().await?;
        ensure!(q != p);
        let gov_q = net.gov_client(q, 1)?;
        ensure!(gov_q.show(&quick.proposal_id).await?.state == synod_governance::ProposalState::Accepted);
        let info = gov_q.vote(&open.proposal_id, true).await?;
        ensure!(info.state == synod_governance::ProposalState::Accepted, "voting goes on after a failover: {info:?}");
        // A write ordered after the vote commits: so did the vote.
        committed_write(&net, 8, "before the restart").await?;
        // Restart everything: the service stays open, proposals and the constitution stay as they were.
        for n in net.nodes.iter_mut() {
            n.kill9();
        }
        for n in net.nodes.iter_mut() {
            n.restart()?;
        }
        let q = net.primary().await?;
        let gov = net.gov_client(q, 0)?;
        ensure!(gov.constitution().await? == lax);
        ensure!(gov.list().await?.len() == proposals);
        let info = net.nodes[q].client(None)?.get_json::<Value>("/gov/service/info").await?;
        ensure!(info["status"] == "Open" && info["recoveryThreshold"] == 1, "{info}");
        committed_write(&net, 9, "after").await?;
        Ok(())
    })
    .await
}

/// A member's ballot used to read private application maps, and could leak them through its error text.
#[tokio::test]
async fn ballot_cannot_read_private_maps() -> anyhow::Result<()> {
    bounded(120, async {
        let net = Network::start_with_members(1, 1, &[]).await?;
        let r = net
            .user_client(0)?
            .post_json("/app/log/private", &json!({"id": 1, "msg": "a private record"}))
            .await?;
        ensure!(r.status == 201, "{} {}", r.status, r.text());
        let gov = net.gov_client(0, 0)?;
        let p = gov
            .propose_action("set_recovery_threshold", json!({"recovery_threshold": 1}))
            .await?;
        let ballot = r#"export function vote (proposal, proposerId) {
            const found = [];
            ccf.kv["records"].forEach((v) => found.push(ccf.bufToStr(v)));
            throw new Error("leaked: " + found.join(",")); }"#;
        let path = format!(
            "/gov/members/proposals/{}/ballots/{}:submit",
            p.proposal_id,
            gov.member_id()
        );
        let r = gov
            .post_cose(
                &path,
                MsgType::Ballot,
                Some(&p.proposal_id),
                json!({ "ballot": ballot }).to_string().as_bytes(),
            )
            .await?;
        ensure!(
            r.status == 400 && r.text().contains("private") && !r.text().contains("a private record"),
            "a ballot read a private map: {} {}",
            r.status,
            r.text()
        );
        ensure!(gov.show(&p.proposal_id).await?.state == synod_governance::ProposalState::Open);
        Ok(())
    })
    .await
}

/// `/app/kv/{map}` follows the JavaScript sandbox's rule: users read the governance tables, but not the internal
/// tables nor the members' signed requests.
#[tokio::test]
async fn users_cannot_read_internal_tables_or_signed_member_requests() -> anyhow::Result<()> {
    bounded(120, async {
        let net = Network::start_with_members(1, 1, &[]).await?;
        let user = net.user_client(0)?;
        for map in [
            "public:ccf.gov.history",
            "public:ccf.gov.cose_recent_requests",
            "public:ccf.internal.signatures",
        ] {
            let r = user.get(&format!("/app/kv/{map}")).await?;
            ensure!(
                r.status == 403 && r.api_error().context("error")?.code == "Forbidden",
                "{map}: {} {}",
                r.status,
                r.text()
            );
        }
        let r = user.get("/app/kv/public:ccf.gov.users.certs").await?;
        ensure!(
            r.status == 200,
            "governance tables stay readable: {} {}",
            r.status,
            r.text()
        );
        Ok(())
    })
    .await
}

/// An accepted `set_constitution` used to be applied unchecked: one without `resolve` would block governance for
/// good. Now it fails, and the old constitution stays in force.
#[tokio::test]
async fn a_constitution_without_its_functions_fails_and_the_old_one_stays() -> anyhow::Result<()> {
    bounded(120, async {
        let net = Network::start_with_members(1, 1, &[]).await?;
        let gov = net.gov_client(0, 0)?;
        let old = gov.constitution().await?;
        let bad = "export function validate(input) { return { valid: true, description: \"OK\" }; }";
        let p = gov
            .propose_action("set_constitution", json!({ "constitution": bad }))
            .await?;
        let info = gov.vote(&p.proposal_id, true).await?;
        let reason = info.extra["failure"]["reason"].as_str().unwrap_or("");
        ensure!(
            info.state == synod_governance::ProposalState::Failed && reason.contains("resolve"),
            "{info:?}"
        );
        ensure!(gov.constitution().await? == old, "the old constitution stays");
        net.pass(0, "set_recovery_threshold", json!({"recovery_threshold": 1}))
            .await
            .context("governance goes on")?;
        Ok(())
    })
    .await
}

/// Issue 13: node-to-node channels are attested. A node whose measurement governance removes
/// (`remove_node_code`) is cut off both ways on its channels: the service goes on committing without it, it
/// never learns those commits, and a node with that measurement cannot join again.
#[tokio::test]
async fn a_node_whose_measurement_is_removed_is_cut_off_and_cannot_rejoin() -> anyhow::Result<()> {
    bounded(240, async {
        let mut net = Network::start_with_members(3, 3, &[]).await?;
        let p = net.primary().await?;
        let other_code = "ab".repeat(32);
        let id = propose(&net, p, "add_node_code", json!({"code_id": other_code}))?;
        vote(&net, p, 0, &id, true)?;
        ensure!(vote(&net, p, 1, &id, true)? == "Accepted");

        let j = net.spawn_joiner(&["--virtual-measurement", &other_code])?;
        let node_id = net.wait_pending(j).await?;
        let id = propose(&net, p, "transition_node_to_trusted", json!({"node_id": node_id}))?;
        vote(&net, p, 0, &id, true)?;
        ensure!(vote(&net, p, 1, &id, true)? == "Accepted");
        net.nodes[j].wait_listening()?;
        net.wait_for_voters(4).await?;
        committed_write(&net, 1, "before").await?;

        let id = propose(&net, p, "remove_node_code", json!({"code_id": other_code}))?;
        vote(&net, p, 0, &id, true)?;
        ensure!(vote(&net, p, 1, &id, true)? == "Accepted");
        // Once the removal is committed, every write after it commits on the three others (3 of 4 voters) and
        // never reaches the cut-off node.
        // A write ordered after the accepting ballot commits only once the removal has committed and been applied
        // (the node's commit at this moment may still be before the ballot, and the removal's commit may go out
        // to the cut-off node in the same round as the entries after it).
        let c = net.user_client(p)?;
        let marker = post_log(&c, 7, "removal applied", Duration::from_secs(30)).await?;
        ensure!(c.wait_for_commit(marker, Duration::from_secs(30)).await? == TxStatus::Committed);
        let after = post_log(&c, 2, "after", Duration::from_secs(30)).await?;
        ensure!(c.wait_for_commit(after, Duration::from_secs(30)).await? == TxStatus::Committed);
        for i in 3..6 {
            committed_write(&net, i, "later").await?;
        }
        let cut = net.nodes[j].client(None)?.commit().await?;
        ensure!(
            cut.seqno < after.seqno,
            "the cut-off node learnt commit {cut} past the write {after} made after its code was removed"
        );
        // ... and a node with that measurement is refused at the door.
        let forger = synod_tests::Forger::new()?;
        let policy_measurement = json!({"measurement": other_code, "report_data": forger.node_id});
        let evidence = json!({
            "format": "Insecure_Virtual",
            "quote": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, policy_measurement.to_string()),
        });
        let r = forger
            .join_with_evidence(&net.nodes[p].url(), &net.nodes[p].service_cert_pem()?, "again", None, evidence)
            .await?;
        ensure!(
            r.status == 403 && r.api_error().context("error")?.code == "CodeIdNotFound",
            "{} {}",
            r.status,
            r.text()
        );
        Ok(())
    })
    .await
}
