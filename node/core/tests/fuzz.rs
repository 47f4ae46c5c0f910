//! Mutation fuzzing of everything synod-core decodes from outside: ledger frames (and the transactions, write
//! sets, signature records and tree frontiers inside them), JSON and COSE receipts. Inputs are genuine samples
//! mutated by `testing::fuzz_inputs`; every decoder must answer an error, never panic, and a mutated receipt
//! must never verify unless it still says exactly what the genuine one says. `FUZZ_ITERS=1000000 cargo test
//! --release -p synod-core --test fuzz` for a long run (docs/RELIABILITY.md).

use synod_core::cert;
use synod_core::ledger::{decode_frames, parse_signature_write_set, signature_tree_frontier};
use synod_core::receipt::cose;
use synod_core::receipt::verify_bytes;
use synod_core::testing::{fuzz_inputs, fuzz_iterations, receipts_for, write_sample_ledger};

#[test]
fn ledger_frames_never_panic_the_decoders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = write_sample_ledger(dir.path(), 40, 7);
    let seeds: Vec<Vec<u8>> = sample
        .chunks
        .iter()
        .map(|c| std::fs::read(c).expect("chunk"))
        .collect();
    let mut decoded = 0u64;
    for input in fuzz_inputs(&seeds, fuzz_iterations(3_000), 1) {
        for frame in decode_frames(&input).flatten() {
            decoded += 1;
            let Ok(tx) = frame.entry.decode_transaction() else {
                continue;
            };
            let _ = frame.entry.write_set_digest_and_leaf();
            if let Ok(public) = tx.public_write_set() {
                let _ = parse_signature_write_set(&public);
                let _ = signature_tree_frontier(&public);
            }
        }
    }
    assert!(decoded > 0, "some mutated chunks still hold valid frames");
}

#[test]
fn mutated_receipts_never_panic_and_never_verify_as_something_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = write_sample_ledger(dir.path(), 20, 5);
    let service_der = cert::pem_to_der(&sample.service.cert_pem).expect("der");
    let (cose_receipt, json_receipt, tx_id) = receipts_for(&sample, 3);
    let seeds = vec![cose_receipt.clone(), json_receipt.clone()];
    for input in fuzz_inputs(&seeds, fuzz_iterations(3_000), 2) {
        if let Ok(v) = verify_bytes(&input, &sample.service.cert_pem) {
            assert_eq!(
                v.tx_id,
                Some(tx_id),
                "a mutated receipt verified for another transaction"
            );
        }
        if let Ok(v) = cose::verify_receipt(&input, &service_der) {
            assert_eq!(
                v.tx_id,
                Some(tx_id),
                "a mutated COSE receipt verified for another transaction"
            );
            assert_eq!(
                input, cose_receipt,
                "only the genuine COSE receipt verifies (canonical encoding)"
            );
        }
    }
}
