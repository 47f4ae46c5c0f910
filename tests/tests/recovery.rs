//! Priority 10, end to end: a service that loses every node but its ledger files is recovered by its members'
//! recovery shares (docs/RECOVERY.md), with real processes: `synod-node recover`, COSE-signed share submissions,
//! the private state replayed, receipts of the lost service verified against both identities.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use serde_json::{json, Value};
use synod_client::{Client, Method};
use synod_core::recovery::EncryptionPrivateKey;
use synod_governance::client::GovClient;
use synod_tests::{bounded, post_log, post_public, Network, NodeProc, SMALL_LEDGER};

const COMMIT_WAIT: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_secs(30);

async fn service_status(client: &Client) -> anyhow::Result<String> {
    let info: Value = client.get_json("/gov/service/info").await?;
    Ok(info["status"].as_str().unwrap_or_default().to_string())
}

async fn wait_status(client: &Client, status: &str) -> anyhow::Result<()> {
    for _ in 0..600 {
        if service_status(client).await? == status {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "the service never reached {status} (it is {})",
        service_status(client).await?
    )
}

/// Member `m`'s decrypted recovery share, as `synod-gov recovery share` computes it.
async fn decrypted_share(net: &Network, gov: &GovClient, m: usize) -> anyhow::Result<Vec<u8>> {
    let key = EncryptionPrivateKey::from_pem(&std::fs::read_to_string(&net.member_encryption_keys[m])?)?;
    Ok(key.decrypt(&gov.encrypted_share().await?)?)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_service_is_recovered_from_its_ledger_with_the_members_shares() -> anyhow::Result<()> {
    bounded(420, async {
        // Three members, any two of which can recover; three nodes.
        let mut net = Network::start_recoverable(3, 3, 2, &SMALL_LEDGER).await?;
        let old_cert = std::fs::read_to_string(&net.service_cert)?;
        let p = net.primary().await?;
        let user = net.user_client(p)?;
        let mut private = Vec::new();
        let mut public = Vec::new();
        for i in 0..120u64 {
            private.push((i, post_log(&user, i, &format!("secret {i}"), RETRY).await?));
            public.push((i, post_public(&user, i, &format!("public {i}"), RETRY).await?));
        }
        // Overwritten and deleted records come back as they were last.
        post_log(&user, 5, "secret 5 v2", RETRY).await?;
        let r = user
            .call_with_retry(Method::DELETE, "/app/log/private?id=6", None, &[], RETRY)
            .await?;
        ensure!(r.status.is_success(), "DELETE: {} {}", r.status, r.text());
        let last = post_public(&user, 1000, "last", RETRY).await?;
        user.wait_for_commit(last, COMMIT_WAIT).await?;
        // Receipts issued before the disaster, kept by their users.
        let mut kept = Vec::new();
        for &(_, tx) in private.iter().step_by(17) {
            kept.push((tx, user.receipt(tx, false).await?, user.receipt(tx, true).await?));
        }
        for (_, json_receipt, cose_receipt) in &kept {
            synod_client::verify_receipt_bytes(json_receipt, &old_cert)?;
            synod_client::verify_receipt_bytes(cose_receipt, &old_cert)?;
        }

        // A member keeps a share, is removed (the others get fresh shares: its old one is now useless), then
        // tries to use it after the disaster.
        let gov2 = net.gov_client(p, 2)?;
        let removed_share = decrypted_share(&net, &gov2, 2).await?;
        let removed_id = gov2.member_id().to_string();
        net.pass(p, "remove_member", json!({"member_id": removed_id}))
            .await?;
        let mark = post_public(&user, 1001, "after removal", RETRY).await?;
        user.wait_for_commit(mark, COMMIT_WAIT).await?;
        // The ledger salvaged is node 0's, which may be a backup that has not yet learnt of the commit.
        net.user_client(0)?.wait_for_commit(mark, COMMIT_WAIT).await?;

        // The disaster: every node is gone but for one copy of a ledger.
        net.stop_all()?;
        let old_ledger = net.tmp.path().join("salvaged-ledger");
        copy_dir(&net.nodes[0].dir.join("ledger"), &old_ledger)?;
        for n in &net.nodes {
            std::fs::remove_dir_all(&n.dir)?;
        }

        // A new node recovers the public state under a new identity.
        let recovered_dir = net.tmp.path().join("r0");
        let args = vec!["--ledger".to_string(), old_ledger.display().to_string()];
        let r0 = NodeProc::spawn("recover", &recovered_dir, &args)?;
        let mut r0 = r0;
        // A restart before the shares comes back from the recovery snapshot (the lost service's ledger is never
        // replayed: its private writes do not open yet).
        r0.terminate()?;
        r0.restart()?;
        let new_cert = r0.service_cert_pem()?;
        ensure!(new_cert != old_cert, "a recovered service has a new identity");
        std::fs::write(&net.service_cert, &new_cert)?;
        net.nodes = vec![r0];
        let anyone = net.nodes[0].client(None)?;
        ensure!(service_status(&anyone).await? == "Recovering");
        let previous: Value = anyone.get_json("/node/service/previous_identity").await?;
        ensure!(
            previous["previous_service_identity"] == old_cert.as_str(),
            "{previous}"
        );
        let endorsement = previous["endorsement"]
            .as_str()
            .context("endorsement")?
            .to_string();
        // Users wait until the members have recovered the whole state, as in CCF.
        let user = net.user_client(0)?;
        let r = user.get("/app/log/public?id=7").await?;
        ensure!(
            r.status == 503,
            "the app before the recovery is done: {} {}",
            r.status,
            r.text()
        );
        // The recovered public state is the lost service's: its members, its consortium's rules.
        let members: Value = anyone.get_json("/gov/service/members").await?;
        ensure!(members["value"].as_array().map(Vec::len) == Some(2), "{members}");

        // Shares are refused until the members accept the recovery, which names the lost service's identity.
        let gov0 = net.gov_client(0, 0)?;
        let gov1 = net.gov_client(0, 1)?;
        let early_path = format!("/gov/recovery/members/{}:recover", gov0.member_id());
        let early = gov0
            .post_cose(
                &early_path,
                synod_governance::envelope::MsgType::RecoveryShare,
                None,
                br#"{"share": "AQID"}"#,
            )
            .await?;
        ensure!(
            early.status == 403,
            "a share before the recovery was accepted: {} {}",
            early.status,
            early.text()
        );
        let wrong_identity = gov0
            .propose_action(
                "transition_service_to_open",
                json!({"previous_service_identity": new_cert}),
            )
            .await?;
        let mut state = wrong_identity.state;
        for g in [&gov0, &gov1] {
            state = g.vote(&wrong_identity.proposal_id, true).await?.state;
        }
        ensure!(
            format!("{state:?}") == "Failed",
            "accepting a recovery naming the wrong previous identity: {state:?}"
        );
        ensure!(service_status(&anyone).await? == "Recovering");
        net.pass(
            0,
            "transition_service_to_open",
            json!({"previous_service_identity": old_cert}),
        )
        .await?;
        ensure!(service_status(&anyone).await? == "WaitingForRecoveryShares");

        // Nodes join a recovering service as usual (the members trust them); they follow the private replay.
        let during = net.join_node(&[]).await?;
        net.wait_for_voters(2).await?;

        // The removed member's share is refused: it is no longer a member.
        let gov2 = GovClient::new(
            net.nodes[0].client(None)?,
            &net.members[2].cert_pem,
            &net.members[2].key_pem,
        )?;
        let refused = gov2.submit_recovery_share(&removed_share).await;
        ensure!(refused.is_err(), "a removed member's share was taken");

        // A wrong share with a right one does not recover anything, and both are discarded.
        let mut bad = decrypted_share(&net, &gov0, 0).await?;
        let last_byte = bad.len() - 1;
        bad[last_byte] ^= 0x5a;
        let answer = gov0.submit_recovery_share(&bad).await?;
        ensure!(answer["submitted"] == 1 && answer["threshold"] == 2, "{answer}");
        let good1 = decrypted_share(&net, &gov1, 1).await?;
        let err = gov1
            .submit_recovery_share(&good1)
            .await
            .expect_err("a wrong share combined");
        ensure!(err.to_string().contains("InvalidRecoveryShares"), "{err}");
        ensure!(service_status(&anyone).await? == "WaitingForRecoveryShares");
        let r = user.get("/app/log/private?id=7").await?;
        ensure!(r.status == 503, "the app after wrong shares: {}", r.status);

        // Fewer than the threshold: nothing yet. Then exactly the threshold, one through the CLI. (A second later:
        // the same share signed in the same second is the same request, refused as a replay.)
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let answer = gov1.submit_recovery_share(&good1).await?;
        ensure!(answer["submitted"] == 1, "{answer}");
        ensure!(service_status(&anyone).await? == "WaitingForRecoveryShares");
        let out = net.gov_cli(
            0,
            0,
            &[
                "recovery",
                "share",
                "--encryption-key",
                &net.member_encryption_keys[0].display().to_string(),
            ],
        )?;
        ensure!(
            out.status.success(),
            "synod-gov recovery share: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        wait_status(&anyone, "Open").await?;

        // Every committed record is served as it was last written.
        for &(i, _) in &private {
            let r = user.get(&format!("/app/log/private?id={i}")).await?;
            match i {
                5 => ensure!(r.text().contains("secret 5 v2"), "{}", r.text()),
                6 => ensure!(r.status == 404, "a deleted record came back: {}", r.text()),
                _ => ensure!(
                    r.status == 200 && r.text().contains(&format!("secret {i}")),
                    "{i}: {} {}",
                    r.status,
                    r.text()
                ),
            }
        }
        for &(i, _) in &public {
            let r = user.get(&format!("/app/log/public?id={i}")).await?;
            ensure!(r.text().contains(&format!("public {i}")), "{i}: {}", r.text());
        }
        // Receipts of the lost service: the kept ones verify against the previous identity and, through the
        // endorsement, against the new one; the recovered service still issues them for old transactions.
        for (tx, json_receipt, cose_receipt) in &kept {
            for receipt in [json_receipt, cose_receipt] {
                synod_core::receipt::verify_bytes(receipt, &old_cert)?;
                synod_core::receipt::verify_bytes_with(
                    receipt,
                    &new_cert,
                    std::slice::from_ref(&endorsement),
                )
                .with_context(|| format!("the kept receipt of {tx} against the new identity"))?;
                ensure!(
                    synod_client::verify_receipt_bytes(receipt, &new_cert).is_err(),
                    "no endorsement needed?"
                );
            }
            let again = user.receipt(*tx, false).await?;
            synod_client::verify_receipt_bytes(&again, &new_cert)
                .with_context(|| format!("the recovered service's receipt of {tx}"))?;
        }

        // The auditor follows the chain: the lost service's signatures (endorsed through the recovery record)
        // and the new one's, against the new identity alone.
        let out = synod_tests::audit_ledger_args(
            &net.nodes[0].dir.join("ledger"),
            &net.service_cert,
            &["--allow-unsigned-tail"],
        )?;
        ensure!(
            out.status.success(),
            "audit of the recovered ledger: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let old_cert_file = net.tmp.path().join("old_service_cert.pem");
        std::fs::write(&old_cert_file, &old_cert)?;
        let out = synod_tests::audit_ledger_args(
            &net.nodes[0].dir.join("ledger"),
            &old_cert_file,
            &["--allow-unsigned-tail"],
        )?;
        ensure!(
            !out.status.success(),
            "the new service's signatures do not chain to the old identity"
        );

        // A restart of the recovered node keeps everything.
        net.nodes[0].terminate()?;
        net.nodes[0].restart()?;
        let r = user
            .call_with_retry(Method::GET, "/app/log/private?id=42", None, &[], RETRY)
            .await?;
        ensure!(r.text().contains("secret 42"), "after a restart: {}", r.text());
        let (tx, _, _) = &kept[1];
        let again = user.receipt(*tx, true).await?;
        synod_core::receipt::verify_bytes_with(&again, &new_cert, std::slice::from_ref(&endorsement))?;

        let r = net
            .user_client(during)?
            .call_with_retry(Method::GET, "/app/log/private?id=41", None, &[], RETRY)
            .await?;
        ensure!(
            r.text().contains("secret 41"),
            "the node that joined during the recovery: {}",
            r.text()
        );

        // The recovered service works as any other: a node joins, writes commit with receipts.
        net.join_node(&[]).await?;
        net.wait_for_voters(3).await?;
        let tx = post_log(&user, 5000, "after recovery", RETRY).await?;
        user.wait_for_commit(tx, COMMIT_WAIT).await?;
        synod_client::verify_receipt_bytes(&user.receipt(tx, true).await?, &new_cert)?;
        let r = net.user_client(1)?.get("/app/log/private?id=42").await?;
        ensure!(r.text().contains("secret 42"), "the joined node: {}", r.text());
        // The recovery members hold fresh shares of the new secret; the removed member none.
        let share: Value = anyone
            .get_json(&format!("/gov/recovery/encrypted-shares/{}", gov0.member_id()))
            .await?;
        ensure!(share["encryptedShare"].is_string(), "{share}");
        let info: Value = anyone.get_json("/gov/service/info").await?;
        ensure!(info["status"] == "Open" && info["recoveryMembers"] == 2, "{info}");
        let r = anyone
            .get(&format!("/gov/recovery/encrypted-shares/{removed_id}"))
            .await?;
        ensure!(r.status == 404, "{}", r.status);
        net.stop_all()?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rekeyed_ledger_stays_readable_everywhere_and_recovers() -> anyhow::Result<()> {
    bounded(300, async {
        let mut net = Network::start_recoverable(3, 2, 1, &SMALL_LEDGER).await?;
        let p = net.primary().await?;
        let user = net.user_client(p)?;
        let mut written = Vec::new();
        for i in 0..60u64 {
            written.push((i, post_log(&user, i, &format!("before {i}"), RETRY).await?));
        }
        net.pass(p, "trigger_ledger_rekey", json!({})).await?;
        for i in 60..120u64 {
            written.push((i, post_log(&user, i, &format!("after {i}"), RETRY).await?));
        }
        let last = post_log(&user, 999, "last", RETRY).await?;
        // At every node read below: a backup answers from what it has applied, which may trail the primary.
        net.wait_committed_everywhere(last).await?;
        // Every node follows the rekey: reads, receipts and the version history of a record from before it.
        for i in 0..3 {
            let c = net.user_client(i)?;
            for &(k, _) in written.iter().step_by(13) {
                let r = c
                    .call_with_retry(Method::GET, &format!("/app/log/private?id={k}"), None, &[], RETRY)
                    .await?;
                ensure!(
                    r.text().contains(&format!(" {k}\"")),
                    "node {i}, record {k}: {}",
                    r.text()
                );
            }
        }
        let cert = std::fs::read_to_string(&net.service_cert)?;
        for &(_, tx) in written.iter().step_by(29) {
            synod_client::verify_receipt_bytes(&user.receipt(tx, false).await?, &cert)?;
        }
        let (_, first_tx) = written[3];
        let r = user
            .call_with_retry(
                Method::GET,
                &format!("/app/log/private/historical?id=3&transaction_id={first_tx}"),
                None,
                &[],
                RETRY,
            )
            .await?;
        ensure!(
            r.text().contains("before 3"),
            "historical read across the rekey: {} {}",
            r.status,
            r.text()
        );
        // A backup restarts (it reads its schedule back), a new node joins (it is handed the schedule: the
        // snapshot it starts from may be sealed under the first secret).
        let b = (p + 1) % 3;
        net.nodes[b].restart()?;
        net.join_node(&[]).await?;
        net.wait_for_voters(4).await?;
        let tx = post_log(&user, 2000, "after the join", RETRY).await?;
        user.wait_for_commit(tx, COMMIT_WAIT).await?;
        for i in [b, 3] {
            let c = net.user_client(i)?;
            // Committed at the primary may not be applied here yet: a backup reads its own state (CCF's too).
            c.wait_for_commit(tx, COMMIT_WAIT).await?;
            let r = c
                .call_with_retry(Method::GET, "/app/log/private?id=5", None, &[], RETRY)
                .await?;
            ensure!(r.text().contains("before 5"), "node {i}: {}", r.text());
            let r = c
                .call_with_retry(Method::GET, "/app/log/private?id=2000", None, &[], RETRY)
                .await?;
            ensure!(r.text().contains("after the join"), "node {i}: {}", r.text());
        }

        // Every node holds both secrets, the joiner too (it was handed them).
        let schedule_len = |n: &NodeProc| -> anyhow::Result<usize> {
            let schedule: Value = serde_json::from_slice(&std::fs::read(n.dir.join("ledger_secrets.json"))?)?;
            Ok(schedule.as_array().map_or(0, Vec::len))
        };
        for n in &net.nodes {
            ensure!(schedule_len(n)? == 2, "{}", n.dir.display());
        }
        // The joiner is removed: once it has left the configuration, the primary rekeys on its own, so what
        // follows is under a secret the removed node never held.
        let joiner: Value = net.nodes[3].client(None)?.get_json("/node/state").await?;
        let p = net.primary().await?;
        net.pass(p, "remove_node", json!({"node_id": joiner["node_id"]}))
            .await?;
        net.wait_for_voters(3).await?;
        for _ in 0..100 {
            if (0..3).all(|i| schedule_len(&net.nodes[i]).unwrap_or(0) == 3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for i in 0..3 {
            ensure!(
                schedule_len(&net.nodes[i])? == 3,
                "node {i} did not follow the rekey after the removal"
            );
        }
        ensure!(
            schedule_len(&net.nodes[3])? == 2,
            "the removed node got the new secret"
        );
        let tx = post_log(&user, 3000, "after the removal", RETRY).await?;
        user.wait_for_commit(tx, COMMIT_WAIT).await?;
        // The ledger salvaged is node 0's, which may be a backup that has not yet learnt of the commit.
        net.user_client(0)?.wait_for_commit(tx, COMMIT_WAIT).await?;

        // Then the disaster, and a recovery with the shares of the secret after the rekey.
        net.stop_all()?;
        let old_ledger = net.tmp.path().join("salvaged-ledger");
        copy_dir(&net.nodes[0].dir.join("ledger"), &old_ledger)?;
        let r0_dir = net.tmp.path().join("r0");
        let new_cert = recover_into(&mut net, &old_ledger, &r0_dir, &cert).await?;
        let user = net.user_client(0)?;
        for (k, _) in &written {
            let r = user.get(&format!("/app/log/private?id={k}")).await?;
            let expected = if *k < 60 { "before" } else { "after" };
            ensure!(
                r.text().contains(&format!("{expected} {k}")),
                "recovered record {k}: {}",
                r.text()
            );
        }
        let r = user.get("/app/log/private?id=3000").await?;
        ensure!(
            r.text().contains("after the removal"),
            "written under the third secret: {}",
            r.text()
        );
        // Receipts from both sides of the rekey, issued again by the recovered service.
        for &(_, tx) in [written[2], written[100]].iter() {
            synod_client::verify_receipt_bytes(&user.receipt(tx, false).await?, &new_cert)?;
        }
        net.stop_all()?;
        Ok(())
    })
    .await
}

/// Recovers the stopped service whose ledger is in `ledger` into `dir`: accepts naming `previous_cert`, member 0
/// submits its share (threshold 1), waits until it is open.
async fn recover_into(
    net: &mut Network,
    ledger: &Path,
    dir: &Path,
    previous_cert: &str,
) -> anyhow::Result<String> {
    let args = vec!["--ledger".to_string(), ledger.display().to_string()];
    let node = NodeProc::spawn("recover", dir, &args)?;
    let cert = node.service_cert_pem()?;
    std::fs::write(&net.service_cert, &cert)?;
    net.nodes = vec![node];
    net.pass(
        0,
        "transition_service_to_open",
        json!({"previous_service_identity": previous_cert}),
    )
    .await?;
    let gov = net.gov_client(0, 0)?;
    let share = decrypted_share(net, &gov, 0).await?;
    gov.submit_recovery_share(&share).await?;
    wait_status(&net.nodes[0].client(None)?, "Open").await?;
    Ok(cert)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_recovered_twice_keeps_every_record_and_every_receipt_verifiable() -> anyhow::Result<()> {
    bounded(300, async {
        let mut net = Network::start_recoverable(1, 1, 1, &SMALL_LEDGER).await?;
        let first_cert = std::fs::read_to_string(&net.service_cert)?;
        let user = net.user_client(0)?;
        let first = post_log(&user, 1, "first era", RETRY).await?;
        user.wait_for_commit(first, COMMIT_WAIT).await?;
        let first_receipt = user.receipt(first, false).await?;
        net.stop_all()?;
        let (ledger0, r1) = (net.nodes[0].dir.join("ledger"), net.tmp.path().join("r1"));
        let second_cert = recover_into(&mut net, &ledger0, &r1, &first_cert).await?;
        let user = net.user_client(0)?;
        let second = post_log(&user, 2, "second era", RETRY).await?;
        user.wait_for_commit(second, COMMIT_WAIT).await?;
        net.stop_all()?;
        let (ledger1, r2) = (net.nodes[0].dir.join("ledger"), net.tmp.path().join("r2"));
        let third_cert = recover_into(&mut net, &ledger1, &r2, &second_cert).await?;

        let user = net.user_client(0)?;
        for (id, msg) in [(1, "first era"), (2, "second era")] {
            let r = user.get(&format!("/app/log/private?id={id}")).await?;
            ensure!(r.text().contains(msg), "record {id}: {}", r.text());
        }
        // Receipts issued again for the first era carry both endorsements and verify against the newest identity.
        let again = user.receipt(first, false).await?;
        synod_client::verify_receipt_bytes(&again, &third_cert).context("first era, two recoveries on")?;
        let parsed: Value = serde_json::from_slice(&again)?;
        ensure!(
            parsed["service_endorsements"].as_array().map(Vec::len) == Some(2),
            "{parsed}"
        );
        synod_client::verify_receipt_bytes(&user.receipt(second, false).await?, &third_cert)?;
        // The receipt kept from the first era: against the first identity, and through the chain the newest.
        synod_client::verify_receipt_bytes(&first_receipt, &first_cert)?;
        let previous: Value = net.nodes[0]
            .client(None)?
            .get_json("/node/service/previous_identity")
            .await?;
        ensure!(
            previous["previous_service_identity"] == second_cert.as_str(),
            "{previous}"
        );
        let out = synod_tests::audit_ledger_args(
            &net.nodes[0].dir.join("ledger"),
            &net.service_cert,
            &["--allow-unsigned-tail"],
        )?;
        ensure!(
            out.status.success(),
            "audit across two recoveries: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        net.stop_all()?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_that_starts_after_a_snapshot_recovers_with_that_snapshot() -> anyhow::Result<()> {
    bounded(300, async {
        let mut net = Network::start_recoverable(1, 1, 1, &SMALL_LEDGER).await?;
        let old_cert = std::fs::read_to_string(&net.service_cert)?;
        let user = net.user_client(0)?;
        for i in 0..150u64 {
            post_log(&user, i, &format!("early {i}"), RETRY).await?;
        }
        let mark = post_log(&user, 1000, "mark", RETRY).await?;
        user.wait_for_commit(mark, COMMIT_WAIT).await?;
        // A node that joins now starts from a snapshot: its ledger begins after it.
        let j = net.join_node(&[]).await?;
        net.wait_for_voters(2).await?;
        for i in 150..200u64 {
            post_log(&user, i, &format!("late {i}"), RETRY).await?;
        }
        let last = post_log(&user, 1001, "last", RETRY).await?;
        user.wait_for_commit(last, COMMIT_WAIT).await?;
        net.wait_committed_everywhere(last).await?;
        net.stop_all()?;
        let ledger = net.nodes[j].dir.join("ledger");
        let first = std::fs::read_dir(&ledger)?
            .filter_map(|e| synod_core::ledger::ChunkName::parse(e.ok()?.file_name().to_str()?))
            .map(|c| c.start)
            .min()
            .context("no chunk")?;
        ensure!(
            first > 1,
            "the joiner's ledger starts at {first}: it did not join from a snapshot"
        );

        let (r0, dir) = (net.tmp.path().join("r0"), net.nodes[j].dir.clone());
        let new_cert = recover_into(&mut net, &dir.join("ledger"), &r0, &old_cert).await?;
        ensure!(new_cert != old_cert);
        let user = net.user_client(0)?;
        for i in (0..200u64).step_by(7) {
            let expected = if i < 150 {
                format!("early {i}")
            } else {
                format!("late {i}")
            };
            let r = user.get(&format!("/app/log/private?id={i}")).await?;
            ensure!(r.text().contains(&expected), "record {i}: {}", r.text());
        }
        // The audit of the recovered ledger finds the snapshot it continues next to it.
        let out = synod_tests::audit_ledger_args(
            &net.nodes[0].dir.join("ledger"),
            &net.service_cert,
            &["--allow-unsigned-tail"],
        )?;
        ensure!(
            out.status.success(),
            "audit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Restarted, it comes back from its recovery snapshot.
        net.nodes[0].restart()?;
        let r = user
            .call_with_retry(Method::GET, "/app/log/private?id=3", None, &[], RETRY)
            .await?;
        ensure!(r.text().contains("early 3"), "after a restart: {}", r.text());
        net.stop_all()?;
        Ok(())
    })
    .await
}
