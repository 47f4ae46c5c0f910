//! Governance requests: signing and verifying with both key types, tampering, wrong signers, malformed headers,
//! and an independent check with pycose.

use coset::cbor::value::Value;
use coset::{iana, CborSerializable, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use synod_governance::envelope::{self, Alg, EnvelopeError, KeyKind, MemberKey, MsgType};

struct Member {
    cert_pem: String,
    der: Vec<u8>,
    key: MemberKey,
}

fn member(name: &str, kind: KeyKind) -> Member {
    let identity = envelope::generate_member(name, kind).unwrap();
    Member {
        der: synod_core::cert::pem_to_der(&identity.cert_pem).unwrap(),
        key: MemberKey::from_pkcs8_pem(&identity.key_pem).unwrap(),
        cert_pem: identity.cert_pem,
    }
}

fn payload_for(msg_type: MsgType) -> &'static [u8] {
    match msg_type {
        MsgType::Proposal => br#"{"actions":[{"name":"set_constitution","args":{"constitution":"x"}}]}"#,
        MsgType::Ballot => br#"{"ballot":"export function vote (proposal, proposerId) { return true }"}"#,
        MsgType::Ack => br#"{"digest":"00ff"}"#,
        _ => b"",
    }
}

fn proposal_id_for(msg_type: MsgType) -> Option<&'static str> {
    msg_type
        .needs_proposal_id()
        .then_some("8f3a7c0e6d0b1b5c0c1d8e1a0f8a5b2e3c4d5e6f708192a3b4c5d6e7f8091a2b")
}

const CREATED_AT: u64 = 1_718_000_000;

#[test]
fn every_message_type_round_trips_with_both_key_kinds() {
    for kind in [KeyKind::Ed25519, KeyKind::P384] {
        let m = member("member0", kind);
        for msg_type in MsgType::ALL {
            let payload = payload_for(msg_type);
            let proposal_id = proposal_id_for(msg_type);
            let bytes = envelope::sign(&m.key, &m.der, msg_type, CREATED_AT, proposal_id, payload).unwrap();
            assert_eq!(bytes[0], 0xd2, "tagged COSE_Sign1");
            let request = envelope::verify(&bytes, &m.der).unwrap();
            assert_eq!(request.msg_type, msg_type);
            assert_eq!(request.created_at, CREATED_AT);
            assert_eq!(request.proposal_id.as_deref(), proposal_id);
            assert_eq!(request.kid, envelope::member_id(&m.der));
            assert_eq!(request.alg, kind.alg());
            assert_eq!(request.payload, payload);
            assert_eq!(
                request.signature.len(),
                if kind == KeyKind::P384 { 96 } else { 64 }
            );
            assert_eq!(envelope::parse(&bytes).unwrap(), request);
            assert_eq!(envelope::verify_pem(&bytes, &m.cert_pem).unwrap(), request);
            request.expect(msg_type, proposal_id).unwrap();
            let digest = envelope::signature_digest(&bytes).unwrap();
            assert_eq!(digest, request.signature_digest());
            // Signing again gives another request (another digest) unless everything is equal: Ed25519 and
            // RFC 6979 ECDSA are deterministic, so a different created_at is what makes requests distinct.
            let later =
                envelope::sign(&m.key, &m.der, msg_type, CREATED_AT + 1, proposal_id, payload).unwrap();
            assert_ne!(envelope::signature_digest(&later).unwrap(), digest);
        }
    }
}

#[test]
fn any_changed_byte_is_refused() {
    for kind in [KeyKind::Ed25519, KeyKind::P384] {
        let m = member("member0", kind);
        for msg_type in [MsgType::Ballot, MsgType::Withdrawal, MsgType::Proposal] {
            let bytes = envelope::sign(
                &m.key,
                &m.der,
                msg_type,
                CREATED_AT,
                proposal_id_for(msg_type),
                payload_for(msg_type),
            )
            .unwrap();
            for i in 0..bytes.len() {
                for flip in [0x01u8, 0x80] {
                    let mut bad = bytes.clone();
                    bad[i] ^= flip;
                    assert!(
                        envelope::verify(&bad, &m.der).is_err(),
                        "{kind} {msg_type}: byte {i} ^ {flip:#x} accepted ({})",
                        hex::encode(&bytes[i.saturating_sub(4)..(i + 4).min(bytes.len())])
                    );
                }
            }
            // Truncated or extended.
            assert!(envelope::verify(&bytes[..bytes.len() - 1], &m.der).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(
                envelope::verify(&longer, &m.der),
                Err(EnvelopeError::Malformed(_))
            ));
        }
    }
}

#[test]
fn another_members_certificate_is_refused() {
    let alice = member("alice", KeyKind::P384);
    let bob = member("bob", KeyKind::P384);
    let carol = member("carol", KeyKind::Ed25519);
    let bytes = envelope::sign(
        &alice.key,
        &alice.der,
        MsgType::Proposal,
        CREATED_AT,
        None,
        payload_for(MsgType::Proposal),
    )
    .unwrap();
    for other in [&bob, &carol] {
        let err = envelope::verify(&bytes, &other.der).unwrap_err();
        assert_eq!(
            err,
            EnvelopeError::WrongKid {
                kid: envelope::member_id(&alice.der),
                expected: envelope::member_id(&other.der)
            }
        );
        assert_eq!(err.http_status(), 401);
        assert!(err.to_string().contains("kid"), "{err}");
    }
    // Bob's key with Alice's kid: the signature is Bob's, so it does not verify with Alice's certificate.
    let forged = sign_with_headers(
        &bob.key,
        Alg::ES384,
        envelope::member_id(&alice.der).into_bytes(),
        &[
            ("ccf.gov.msg.type", Value::Text("proposal".into())),
            ("ccf.gov.msg.created_at", Value::Integer(CREATED_AT.into())),
        ],
        b"{}",
    );
    assert!(matches!(
        envelope::verify(&forged, &alice.der),
        Err(EnvelopeError::BadSignature(_))
    ));
    // And sign() refuses a key that is not the certificate's.
    assert!(matches!(
        envelope::sign(&bob.key, &alice.der, MsgType::Proposal, CREATED_AT, None, b"{}"),
        Err(EnvelopeError::KeyCertMismatch { .. })
    ));
}

/// A COSE_Sign1 with exactly these headers, signed with `key` (bypassing `envelope::sign`'s checks).
fn sign_with_headers(
    key: &MemberKey,
    alg: Alg,
    kid: Vec<u8>,
    text_headers: &[(&str, Value)],
    payload: &[u8],
) -> Vec<u8> {
    let mut header = HeaderBuilder::new().key_id(kid).algorithm(match alg {
        Alg::EdDSA => iana::Algorithm::EdDSA,
        Alg::ES384 => iana::Algorithm::ES384,
        Alg::ES256 => iana::Algorithm::ES256,
    });
    for (label, value) in text_headers {
        header = header.text_value(label.to_string(), value.clone());
    }
    CoseSign1Builder::new()
        .protected(header.build())
        .payload(payload.to_vec())
        .create_signature(&[], |tbs| raw_sign(key, tbs))
        .build()
        .to_tagged_vec()
        .unwrap()
}

fn raw_sign(key: &MemberKey, data: &[u8]) -> Vec<u8> {
    key.private_key().sign(data)
}

#[test]
fn ballot_without_proposal_id_is_refused() {
    let m = member("member0", KeyKind::Ed25519);
    let kid = envelope::member_id(&m.der).into_bytes();
    let bytes = sign_with_headers(
        &m.key,
        Alg::EdDSA,
        kid.clone(),
        &[
            ("ccf.gov.msg.type", Value::Text("ballot".into())),
            ("ccf.gov.msg.created_at", Value::Integer(CREATED_AT.into())),
        ],
        payload_for(MsgType::Ballot),
    );
    for result in [envelope::parse(&bytes), envelope::verify(&bytes, &m.der)] {
        let err = result.unwrap_err();
        assert!(
            matches!(&err, EnvelopeError::MissingHeader { header } if header.contains("ccf.gov.msg.proposal_id")),
            "{err:?}"
        );
        assert_eq!(err.http_status(), 400);
    }
    // sign() refuses to make one, and refuses a proposal id on a proposal.
    assert!(matches!(
        envelope::sign(&m.key, &m.der, MsgType::Ballot, CREATED_AT, None, b"{}"),
        Err(EnvelopeError::MissingHeader { .. })
    ));
    assert!(matches!(
        envelope::sign(&m.key, &m.der, MsgType::Withdrawal, CREATED_AT, Some(""), b""),
        Err(EnvelopeError::InvalidHeader { .. })
    ));
    assert!(matches!(
        envelope::sign(&m.key, &m.der, MsgType::Proposal, CREATED_AT, Some("1"), b"{}"),
        Err(EnvelopeError::InvalidHeader { .. })
    ));
    // A withdrawal names its proposal; a ballot for another proposal than the path's is refused by expect().
    let ok = envelope::sign(&m.key, &m.der, MsgType::Withdrawal, CREATED_AT, Some("p1"), b"").unwrap();
    let request = envelope::verify(&ok, &m.der).unwrap();
    assert!(matches!(
        request.expect(MsgType::Withdrawal, Some("p2")),
        Err(EnvelopeError::ProposalIdMismatch { .. })
    ));
    assert!(matches!(
        request.expect(MsgType::Ballot, Some("p1")),
        Err(EnvelopeError::WrongMsgType { .. })
    ));
}

#[test]
fn algorithm_must_match_the_certificates_key() {
    let ed = member("member0", KeyKind::Ed25519);
    let ec = member("member1", KeyKind::P384);
    let headers = [
        ("ccf.gov.msg.type", Value::Text("proposal".into())),
        ("ccf.gov.msg.created_at", Value::Integer(CREATED_AT.into())),
    ];
    // An ES384 header with an Ed25519 certificate (signed with the Ed25519 key, so only the alg is wrong).
    let bytes = sign_with_headers(
        &ed.key,
        Alg::ES384,
        envelope::member_id(&ed.der).into_bytes(),
        &headers,
        b"{}",
    );
    let err = envelope::verify(&bytes, &ed.der).unwrap_err();
    assert_eq!(
        err,
        EnvelopeError::AlgKeyMismatch {
            alg: Alg::ES384,
            key: KeyKind::Ed25519,
            expected: Alg::EdDSA
        }
    );
    assert!(err.to_string().contains("ES384"), "{err}");
    // And the other way round.
    let bytes = sign_with_headers(
        &ec.key,
        Alg::EdDSA,
        envelope::member_id(&ec.der).into_bytes(),
        &headers,
        b"{}",
    );
    assert!(matches!(
        envelope::verify(&bytes, &ec.der),
        Err(EnvelopeError::AlgKeyMismatch { .. })
    ));
}

/// Encodes a COSE_Sign1 by hand: any protected header map, unsigned (a zero signature), untagged or tagged.
fn raw_message(protected: Vec<(Value, Value)>, payload: Option<&[u8]>, tagged: bool) -> Vec<u8> {
    let protected = Value::Map(protected).to_vec().unwrap();
    let array = Value::Array(vec![
        Value::Bytes(protected),
        Value::Map(vec![]),
        payload.map_or(Value::Null, |p| Value::Bytes(p.to_vec())),
        Value::Bytes(vec![0; 64]),
    ]);
    let value = if tagged {
        Value::Tag(18, Box::new(array))
    } else {
        array
    };
    value.to_vec().unwrap()
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

fn good_headers() -> Vec<(Value, Value)> {
    vec![
        (int(1), int(-8)),
        (int(4), Value::Bytes(b"abcd".to_vec())),
        (text("ccf.gov.msg.type"), text("proposal")),
        (text("ccf.gov.msg.created_at"), int(CREATED_AT as i64)),
    ]
}

fn with(mut headers: Vec<(Value, Value)>, label: Value, value: Option<Value>) -> Vec<(Value, Value)> {
    headers.retain(|(l, _)| *l != label);
    if let Some(value) = value {
        headers.push((label, value));
    }
    headers
}

#[test]
fn headers_are_checked_and_errors_name_them() {
    // The baseline parses, tagged or not, with a text kid too.
    let ok = envelope::parse(&raw_message(good_headers(), Some(b"{}"), true)).unwrap();
    assert_eq!(ok.kid, "abcd");
    assert_eq!(ok.alg, Alg::EdDSA);
    envelope::parse(&raw_message(good_headers(), Some(b"{}"), false)).unwrap();
    let text_kid = with(good_headers(), int(4), Some(text("abcd")));
    assert_eq!(
        envelope::parse(&raw_message(text_kid, Some(b"{}"), true))
            .unwrap()
            .kid,
        "abcd"
    );

    let missing = |label: Value| raw_message(with(good_headers(), label, None), Some(b"{}"), true);
    let header_of = |bytes: &[u8]| match envelope::parse(bytes).unwrap_err() {
        EnvelopeError::MissingHeader { header } => header,
        other => panic!("{other:?}"),
    };
    assert!(header_of(&missing(int(1))).contains("alg"));
    assert!(header_of(&missing(int(4))).contains("kid"));
    assert!(header_of(&missing(text("ccf.gov.msg.type"))).contains("ccf.gov.msg.type"));
    assert!(header_of(&missing(text("ccf.gov.msg.created_at"))).contains("created_at"));

    let invalid = |label: Value, value: Value| {
        let bytes = raw_message(with(good_headers(), label, Some(value)), Some(b"{}"), true);
        envelope::parse(&bytes).unwrap_err()
    };
    let e = invalid(text("ccf.gov.msg.created_at"), int(-1));
    assert!(
        matches!(&e, EnvelopeError::InvalidHeader { header, .. } if header == "ccf.gov.msg.created_at"),
        "{e:?}"
    );
    let e = invalid(text("ccf.gov.msg.created_at"), text("2024-06-10T00:00:00Z"));
    assert!(matches!(&e, EnvelopeError::InvalidHeader { .. }), "{e:?}");
    let e = invalid(text("ccf.gov.msg.type"), int(1));
    assert!(
        matches!(&e, EnvelopeError::InvalidHeader { header, .. } if header == "ccf.gov.msg.type"),
        "{e:?}"
    );
    assert_eq!(
        invalid(text("ccf.gov.msg.type"), text("vote")),
        EnvelopeError::UnknownMsgType("vote".into())
    );
    assert!(matches!(
        invalid(int(1), int(-36)),
        EnvelopeError::UnsupportedAlgorithm(a) if a == "-36"
    ));
    assert!(matches!(
        invalid(int(4), int(7)),
        EnvelopeError::InvalidHeader { .. }
    ));
    assert!(matches!(
        invalid(text("ccf.gov.msg.proposal_id"), text("p1")),
        EnvelopeError::InvalidHeader { .. }
    ));
    assert!(matches!(
        invalid(int(2), Value::Array(vec![int(99)])),
        EnvelopeError::InvalidHeader { .. }
    ));
    // crit naming what we process is fine.
    let crit = with(
        good_headers(),
        int(2),
        Some(Value::Array(vec![text("ccf.gov.msg.type")])),
    );
    envelope::parse(&raw_message(crit, Some(b"{}"), true)).unwrap();

    // Structural problems are Malformed.
    let mut dup = good_headers();
    dup.push((text("ccf.gov.msg.type"), text("ballot")));
    for bytes in [
        raw_message(dup, Some(b"{}"), true),
        raw_message(good_headers(), None, true),
        Value::Tag(17, Box::new(Value::Array(vec![]))).to_vec().unwrap(),
        Value::Array(vec![Value::Bytes(vec![])]).to_vec().unwrap(),
        b"".to_vec(),
        b"{}".to_vec(),
    ] {
        let e = envelope::parse(&bytes).unwrap_err();
        assert!(matches!(e, EnvelopeError::Malformed(_)), "{e:?}");
        assert!(e.to_string().starts_with("malformed COSE_Sign1"), "{e}");
    }
}

#[test]
fn es384_signature_digest_ignores_malleability() {
    let m = member("member0", KeyKind::P384);
    let bytes = envelope::sign(&m.key, &m.der, MsgType::Proposal, CREATED_AT, None, b"{}").unwrap();
    let request = envelope::verify(&bytes, &m.der).unwrap();
    // The twin signature (r, n - s) verifies too; its digest must be the same.
    let sig = p384::ecdsa::Signature::from_slice(&request.signature).unwrap();
    let (r, s) = sig.split_scalars();
    let neg_s = -*s;
    let twin = p384::ecdsa::Signature::from_scalars(r, neg_s).unwrap();
    let twin_bytes = twin.to_bytes().to_vec();
    let mut tampered = bytes.clone();
    let at = tampered.len() - 96;
    assert_eq!(&tampered[at..], request.signature.as_slice());
    tampered[at..].copy_from_slice(&twin_bytes);
    let twin_request = envelope::verify(&tampered, &m.der).expect("the malleated twin verifies");
    assert_ne!(twin_request.signature, request.signature);
    assert_eq!(
        envelope::signature_digest(&tampered).unwrap(),
        envelope::signature_digest(&bytes).unwrap()
    );
}

#[test]
fn requests_verify_with_pycose() {
    let dir = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verify_pycose.py");
    let run = |request: &std::path::Path, cert: &std::path::Path| {
        std::process::Command::new("python3")
            .arg(&script)
            .arg(request)
            .arg(cert)
            .output()
            .expect("python3 must be installed (scripts/setup.sh installs it with pycose)")
    };
    for (i, kind) in [KeyKind::Ed25519, KeyKind::P384].into_iter().enumerate() {
        let m = member(&format!("member{i}"), kind);
        let cert_path = dir.path().join(format!("member{i}_cert.pem"));
        std::fs::write(&cert_path, &m.cert_pem).unwrap();
        for msg_type in [MsgType::Proposal, MsgType::Ballot, MsgType::Withdrawal] {
            let proposal_id = proposal_id_for(msg_type);
            let payload = payload_for(msg_type);
            let bytes = envelope::sign(&m.key, &m.der, msg_type, CREATED_AT, proposal_id, payload).unwrap();
            let path = dir
                .path()
                .join(format!("{kind}-{msg_type}.cose").replace(' ', "_"));
            std::fs::write(&path, &bytes).unwrap();
            let out = run(&path, &cert_path);
            let stdout = String::from_utf8_lossy(&out.stdout);
            println!("pycose: {stdout}{}", String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "pycose refused a genuine {kind} {msg_type}");
            assert!(stdout.contains(&format!("type={msg_type} ")), "{stdout}");
            assert!(
                stdout.contains(&format!("alg={}", kind.alg().as_str())),
                "{stdout}"
            );
            assert!(stdout.contains(&format!("created_at={CREATED_AT}")), "{stdout}");
            assert!(
                stdout.contains(&format!("proposal_id={}", proposal_id.unwrap_or("None"))),
                "{stdout}"
            );

            // A changed signature byte is refused by pycose too.
            let mut bad = bytes.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            let bad_path = dir.path().join("bad.cose");
            std::fs::write(&bad_path, &bad).unwrap();
            assert!(
                !run(&bad_path, &cert_path).status.success(),
                "pycose accepted a tampered {kind} {msg_type}"
            );
        }
    }
}
