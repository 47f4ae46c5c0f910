//! Recovery shares and the secret chain, on transactions alone.

use std::sync::OnceLock;

use synod_core::recovery::{generate_encryption_key, EncryptionKeyPair, EncryptionPrivateKey};

use synod_core::txid::TxId;

use super::*;

/// Three members' encryption keys (RSA key generation is slow: made once).
fn member_keys() -> &'static [EncryptionKeyPair] {
    static KEYS: OnceLock<Vec<EncryptionKeyPair>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..3)
            .map(|_| generate_encryption_key().expect("keygen"))
            .collect()
    })
}

fn member(i: usize) -> String {
    format!("{i:064x}")
}

/// A state with three active recovery members and `threshold`.
fn consortium(threshold: usize) -> Tx {
    let mut tx = Tx::new(State::default());
    put_json(
        &mut tx,
        maps::SERVICE_INFO,
        "",
        &serde_json::json!({"cert": "old", "status": "Open", "recovery_threshold": threshold}),
    );
    for (i, k) in member_keys().iter().enumerate() {
        put_json(
            &mut tx,
            maps::MEMBERS_INFO,
            &member(i),
            &serde_json::json!({"status": "Active"}),
        );
        tx.put(
            maps::MEMBERS_ENCRYPTION_KEYS,
            member(i).as_bytes(),
            k.public_pem.as_bytes(),
        );
    }
    tx
}

fn commit(tx: Tx, seqno: u64) -> State {
    let mut state = State::default();
    let (public, private) = tx.into_write_sets();
    state
        .apply(seqno, public.maps.iter().chain(private.maps.iter()))
        .expect("apply");
    state
}

fn set_status(tx: &mut Tx, status: &str) {
    let mut info: serde_json::Value = get_json(tx, maps::SERVICE_INFO, "").expect("info");
    info["status"] = serde_json::json!(status);
    put_json(tx, maps::SERVICE_INFO, "", &info);
}

/// The share member `i` decrypts from the record, as `synod-gov recovery share` does.
fn decrypted_share(tx: &mut Tx, i: usize) -> Vec<u8> {
    let info: SharesInfo = get_json(tx, maps::RECOVERY_SHARES, "").expect("shares");
    let encrypted = B64.decode(&info.encrypted_shares[&member(i)]).expect("base64");
    let key = EncryptionPrivateKey::from_pem(&member_keys()[i].private_pem).expect("key");
    key.decrypt(&encrypted).expect("decrypt")
}

/// The previous service: shares of `old` issued; then a recovered service over its ledger, waiting for shares.
fn recovering(threshold: usize, old: &LedgerSecret) -> Tx {
    let mut tx = consortium(threshold);
    assert!(refresh_shares(&mut tx, old, Some(1), false).expect("issue"));
    put_json(
        &mut tx,
        maps::PREVIOUS_SERVICE,
        "",
        &PreviousService {
            last_seqno: 100,
            previous_service_identity: "old".into(),
            endorsement: "endorsement".into(),
            secrets_recovered: false,
            private_recovered: false,
            earlier: vec![],
        },
    );
    set_status(&mut tx, STATUS_WAITING_FOR_SHARES);
    tx
}

#[test]
fn threshold_shares_recover_the_secret_and_open_every_old_entry() {
    let old = LedgerSecret([3; 32]);
    let new = LedgerSecret([4; 32]);
    let mut tx = recovering(2, &old);
    // The new service's own shares are not issued over the previous service's while recovering.
    assert!(!refresh_shares(&mut tx, &new, Some(101), true).expect("refresh"));
    let first = decrypted_share(&mut tx, 0);
    let second = decrypted_share(&mut tx, 2);
    assert_eq!(
        submit_share(&mut tx, &member(0), &first, &new).expect("submit"),
        Submitted::Pending {
            submitted: 1,
            threshold: 2
        }
    );
    // The ledger holds the submitted share sealed, never in clear.
    let stored = tx
        .get(maps::SUBMITTED_SHARES, member(0).as_bytes())
        .expect("stored");
    assert!(!B64
        .decode(&stored)
        .expect("base64")
        .windows(first.len())
        .any(|w| w == first.as_slice()));
    assert_eq!(
        submit_share(&mut tx, &member(2), &second, &new).expect("submit"),
        Submitted::Recovered
    );
    assert!(
        tx.range(maps::SUBMITTED_SHARES, b"", None, 10).is_empty(),
        "shares are dropped once combined"
    );
    let state = commit(tx, 101);
    let recovered = Sealer::with_schedule(&new, &[(101, new.clone())]);
    let ranges = past_secrets(&state, &|seqno| recovered.secret_at(seqno));
    let covering = ranges
        .iter()
        .find(|r| r.from <= 50 && 50 <= r.until)
        .expect("a range");
    assert_eq!(covering.secret.as_ref().map(|s| s.0), Some(old.0));
    // An old entry opens with the history sealer, and its commit evidence is the one the old service made.
    let t = TxId::new(2, 50);
    let sealed = Sealer::new(&old).seal(t, b"old private").expect("seal");
    install_past_secrets(&state, &recovered);
    let sealer = recovered;
    assert_eq!(sealer.unseal(t, &sealed).expect("unseal"), b"old private");
    assert_eq!(
        sealer.commit_evidence_at(t).expect("evidence"),
        Sealer::new(&old).commit_evidence(t)
    );
}

#[test]
fn a_second_recovery_walks_the_chain_back_to_the_first_secret() {
    let first = LedgerSecret([5; 32]);
    let second = LedgerSecret([6; 32]);
    let third = LedgerSecret([7; 32]);
    // The second service recovered the first (1..=100) and ran to 300 when it was lost in turn.
    let mut tx = recovering(1, &first);
    let share = decrypted_share(&mut tx, 1);
    assert_eq!(
        submit_share(&mut tx, &member(1), &share, &second).expect("submit"),
        Submitted::Recovered
    );
    finish_recovery(&mut tx, &(101, second.clone())).expect("finish");
    let info: SharesInfo = get_json(&mut tx, maps::RECOVERY_SHARES, "").expect("shares");
    assert_eq!(
        info.latest_secret_from,
        Some(101),
        "fresh shares of the second secret"
    );
    put_json(
        &mut tx,
        maps::PREVIOUS_SERVICE,
        "",
        &PreviousService {
            last_seqno: 300,
            previous_service_identity: "second".into(),
            endorsement: "e".into(),
            secrets_recovered: false,
            private_recovered: false,
            earlier: vec![],
        },
    );
    set_status(&mut tx, STATUS_WAITING_FOR_SHARES);
    let before = commit(tx.clone(), 301);
    assert!(
        past_secrets(&before, &|seqno| (seqno > 300).then(|| third.clone()))
            .iter()
            .all(|r| r.secret.is_none()),
        "nothing opens before the shares"
    );
    let share = decrypted_share(&mut tx, 0);
    assert_eq!(
        submit_share(&mut tx, &member(0), &share, &third).expect("submit"),
        Submitted::Recovered
    );
    let state = commit(tx, 302);
    let sealer = Sealer::with_schedule(&third, &[(301, third.clone())]);
    install_past_secrets(&state, &sealer);
    for (secret, seqno) in [(&first, 40), (&second, 200)] {
        let t = TxId::new(1, seqno);
        let sealed = Sealer::new(secret).seal(t, b"x").expect("seal");
        assert_eq!(sealer.unseal(t, &sealed).expect("unseal"), b"x", "seqno {seqno}");
    }
}

#[test]
fn a_wrong_share_discards_the_submitted_shares_and_reveals_nothing() {
    let old = LedgerSecret([8; 32]);
    let new = LedgerSecret([9; 32]);
    let mut tx = recovering(2, &old);
    let good = decrypted_share(&mut tx, 0);
    let mut wrong = decrypted_share(&mut tx, 1);
    wrong[5] ^= 1;
    submit_share(&mut tx, &member(0), &good, &new).expect("submit");
    assert_eq!(
        submit_share(&mut tx, &member(1), &wrong, &new).expect("submit"),
        Submitted::Wrong { combined: 2 }
    );
    assert!(tx.range(maps::SUBMITTED_SHARES, b"", None, 10).is_empty());
    let state = commit(tx, 101);
    assert!(past_secrets(&state, &|_| Some(new.clone()))
        .iter()
        .all(|r| r.secret.is_none()));
    assert!(!previous_service(&state).expect("previous").secrets_recovered);
}

#[test]
fn shares_are_taken_only_from_share_holders_while_the_service_waits_for_them() {
    let old = LedgerSecret([10; 32]);
    let new = LedgerSecret([11; 32]);
    let mut tx = recovering(2, &old);
    let share = decrypted_share(&mut tx, 0);
    assert!(matches!(
        submit_share(&mut tx, &member(7), &share, &new),
        Err(RecoveryError::NoShare(_))
    ));
    assert!(matches!(
        submit_share(&mut tx, &member(0), &[1, 2, 3], &new),
        Err(RecoveryError::Malformed(_))
    ));
    set_status(&mut tx, STATUS_RECOVERING);
    assert!(matches!(
        submit_share(&mut tx, &member(0), &share, &new),
        Err(RecoveryError::NotWaiting(_))
    ));
}

#[test]
fn shares_follow_the_recovery_members_and_the_threshold() {
    let secret = LedgerSecret([12; 32]);
    let mut tx = consortium(2);
    assert!(refresh_shares(&mut tx, &secret, Some(1), false).expect("issue"));
    assert!(
        !refresh_shares(&mut tx, &secret, Some(1), false).expect("unchanged"),
        "nothing changed: no new shares"
    );
    let before: SharesInfo = get_json(&mut tx, maps::RECOVERY_SHARES, "").expect("shares");
    assert_eq!(before.encrypted_shares.len(), 3);
    // A member leaves: its share is gone, and the others' are of a new key (the old share is useless).
    tx.delete(maps::MEMBERS_INFO, member(2).as_bytes());
    assert!(refresh_shares(&mut tx, &secret, Some(1), false).expect("reissue"));
    let after: SharesInfo = get_json(&mut tx, maps::RECOVERY_SHARES, "").expect("shares");
    assert_eq!(
        after.encrypted_shares.keys().cloned().collect::<Vec<_>>(),
        vec![member(0), member(1)]
    );
    assert_ne!(
        after.wrapped_latest_ledger_secret,
        before.wrapped_latest_ledger_secret
    );
    // One more leaves: two shares cannot be held by one member.
    tx.delete(maps::MEMBERS_INFO, member(1).as_bytes());
    assert!(matches!(
        refresh_shares(&mut tx, &secret, Some(1), false),
        Err(RecoveryError::ThresholdTooHigh {
            threshold: 2,
            members: 1
        })
    ));
    // A key that is not an RSA encryption key is named.
    let mut tx = consortium(1);
    tx.put(maps::MEMBERS_ENCRYPTION_KEYS, member(1).as_bytes(), b"not a key");
    assert!(matches!(
        refresh_shares(&mut tx, &secret, Some(1), false),
        Err(RecoveryError::BadMemberKey { .. })
    ));
}

#[test]
fn a_rekey_reaches_every_trusted_node_and_chains_the_secret_it_replaces() {
    let old = LedgerSecret([13; 32]);
    let mut tx = consortium(2);
    refresh_shares(&mut tx, &old, Some(1), false).expect("issue");
    let node_key = EncryptionPrivateKey::from_pem(&member_keys()[0].private_pem).expect("key");
    let node = |status: &str, key: Option<&str>| {
        let mut info = serde_json::json!({"status": status});
        if let Some(k) = key {
            info["encryption_pub_key"] = serde_json::json!(k);
        }
        info
    };
    put_json(
        &mut tx,
        maps::NODES_INFO,
        "n1",
        &node("Trusted", Some(&member_keys()[0].public_pem)),
    );
    put_json(&mut tx, maps::NODES_INFO, "n2", &node("Retired", None));
    // A trusted node without a key would be left behind: refused.
    let mut without = tx.clone();
    put_json(&mut without, maps::NODES_INFO, "n3", &node("Trusted", None));
    assert!(matches!(rekey(&mut without, (1, &old)), Err(RecoveryError::NodeWithoutKey(n)) if n == "n3"));

    rekey(&mut tx, (1, &old)).expect("rekey");
    let state = commit(tx.clone(), 40);
    let (public, _) = tx.into_write_sets();
    let new = rekeyed_secret(&public, "n1", Some(&node_key))
        .expect("open")
        .expect("n1's secret");
    assert_ne!(new.0, old.0);
    assert!(
        rekeyed_secret(&public, "n2", Some(&node_key))
            .expect("open")
            .is_none(),
        "retired: left out"
    );
    // The secret it replaces is in the ledger under the new one (seqnos 1..=40, the rekey's own).
    let chain = secret_chain(&state, &|seqno| (seqno == 41).then(|| new.clone()));
    assert_eq!(chain.len(), 1);
    assert_eq!((chain[0].from, chain[0].until), (1, 40));
    assert_eq!(chain[0].secret.as_ref().map(|s| s.0), Some(old.0));
    // The recovery members hold shares of the new secret, from the seqno after the rekey.
    let info: SharesInfo = state_json(&state, maps::RECOVERY_SHARES, "").expect("shares");
    assert_eq!(info.latest_secret_from, None);
    let mut again = Tx::new(state);
    let shares: Vec<Share> = (0..2)
        .map(|i| Share::from_bytes(&decrypted_share(&mut again, i)).expect("share"))
        .collect();
    let key: [u8; 32] = crypto::combine(&shares)
        .expect("combine")
        .try_into()
        .expect("32 bytes");
    let wrapped = B64.decode(&info.wrapped_latest_ledger_secret).expect("base64");
    assert_eq!(
        crypto::unwrap(&key, &wrapped, LATEST_SECRET_AAD).expect("unwrap"),
        new.0
    );
}

#[test]
fn the_identity_chain_lists_every_earlier_service_with_the_endorsements_back_to_this_one() {
    let record = PreviousService {
        last_seqno: 300,
        previous_service_identity: "S1".into(),
        endorsement: "E2".into(),
        secrets_recovered: true,
        private_recovered: true,
        earlier: vec![EarlierIdentity {
            identity: "S0".into(),
            endorsement: "E1".into(),
            last_seqno: 100,
        }],
    };
    let chain = record.chain();
    assert_eq!(chain[0], ("S1".to_string(), vec!["E2".to_string()]));
    // CCF's order: the node certificate is checked against the first, the last against the service.
    assert_eq!(
        chain[1],
        ("S0".to_string(), vec!["E1".to_string(), "E2".to_string()])
    );
}
