//! Mutation fuzzing of the COSE governance envelope, the one thing any member — or anyone who can reach a node —
//! sends to the governance endpoints: every mutated request must parse to an error or to a request, never panic,
//! and never verify as anything but a genuine one. `FUZZ_ITERS=1000000 cargo test --release -p
//! synod-governance --test fuzz` for a long run.

use synod_core::testing::{fuzz_inputs, fuzz_iterations};
use synod_governance::envelope::{self, KeyKind, MemberKey, MsgType};

#[test]
fn mutated_governance_requests_never_panic_and_never_verify() {
    let mut seeds = Vec::new();
    let mut members = Vec::new();
    for kind in [KeyKind::Ed25519, KeyKind::P384] {
        let identity = envelope::generate_member("fuzzer", kind).expect("member");
        let der = synod_core::cert::pem_to_der(&identity.cert_pem).expect("der");
        let key = MemberKey::from_pem(&identity.key_pem).expect("key");
        for (t, id, payload) in [
            (
                MsgType::Proposal,
                None,
                br#"{"actions":[{"name":"set_user","args":{}}]}"#.as_slice(),
            ),
            (
                MsgType::Ballot,
                Some("ab12"),
                br#"{"ballot":"export function vote() { return true }"}"#,
            ),
            (MsgType::Withdrawal, Some("ab12"), b""),
        ] {
            let request = envelope::sign(&key, &der, t, 1_700_000_000, id, payload).expect("sign");
            seeds.push(request);
        }
        members.push(der);
    }
    let genuine: Vec<_> = seeds
        .iter()
        .map(|s| envelope::parse(s).expect("genuine"))
        .collect();
    for input in fuzz_inputs(&seeds, fuzz_iterations(3_000), 3) {
        let _ = envelope::parse(&input);
        let _ = envelope::signature_digest(&input);
        for der in &members {
            // A verifying input must be one of the genuine requests: the same headers, payload and signature
            // (what decisions and the replay check rest on). Its bytes may differ only where COSE allows another
            // encoding of the same message: an untagged COSE_Sign1 (RFC 9052 §2), found by a million-input run.
            if let Ok(request) = envelope::verify(&input, der) {
                assert!(
                    genuine.contains(&request),
                    "a mutated request verified: {request:?}"
                );
            }
        }
    }
}
