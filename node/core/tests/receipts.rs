//! Receipts built from a genuine sample ledger verify with the service certificate alone, and any changed byte
//! makes them fail.

use synod_core::cert;
use synod_core::cose;
use synod_core::ledger::{decode_frames, parse_signature_write_set};
use synod_core::receipt::{verify_bytes, JsonReceipt, ProofElement};
use synod_core::testing::{write_sample_ledger, SampleLedger};
use synod_core::txid::TxId;

/// (COSE receipt, compact JSON receipt) for entry `index` under the first signature after it.
pub fn receipts_for(sample: &SampleLedger, index: usize) -> (Vec<u8>, Vec<u8>, TxId) {
    let sig = sample.entries[index..]
        .iter()
        .find(|e| e.is_signature)
        .expect("covering signature");
    let bytes = std::fs::read(&sample.chunks[sig.chunk]).unwrap();
    let frame = decode_frames(&bytes[sig.offset as usize..])
        .next()
        .unwrap()
        .unwrap();
    let tx = frame.entry.decode_transaction().unwrap();
    let (record, cose_sig) = parse_signature_write_set(&tx.public_write_set().unwrap()).unwrap();
    let size = sig.tx_id.seqno - 1;
    let path = sample.tree.path(index as u64, size).unwrap();
    let leaf = &sample.leaves[index];
    let cose_receipt = cose::build_receipt(&cose_sig, leaf, &path).unwrap();
    let json = JsonReceipt {
        cert: record.cert.clone(),
        is_signature_transaction: false,
        leaf_components: Some(leaf.clone()),
        node_id: record.node_id.clone(),
        proof: Some(path.iter().map(ProofElement::from).collect()),
        signature: record.signature.clone(),
        root: None,
    };
    (
        cose_receipt,
        serde_json::to_vec(&json).unwrap(),
        sample.entries[index].tx_id,
    )
}

#[test]
fn receipts_verify_and_every_changed_byte_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sample = write_sample_ledger(dir.path(), 9, 4);
    let pem = &sample.service.cert_pem;
    for index in [0usize, 2, 6] {
        let (cose_receipt, json, tx_id) = receipts_for(&sample, index);
        let root_size = sample.entries[index..]
            .iter()
            .find(|e| e.is_signature)
            .unwrap()
            .tx_id
            .seqno
            - 1;
        let expected_root = sample.tree.root_at(root_size).unwrap();
        for form in [&cose_receipt, &json] {
            let v = verify_bytes(form, pem).expect("genuine receipt verifies");
            assert_eq!(v.tx_id, Some(tx_id));
            assert_eq!(v.root, expected_root);
            assert_eq!(v.leaf, Some(sample.tree.leaf(index as u64).unwrap()));
            for i in 0..form.len() {
                for flip in [0x01u8, 0x80] {
                    let mut bad = form.clone();
                    bad[i] ^= flip;
                    assert!(
                        verify_bytes(&bad, pem).is_err(),
                        "byte {i} ^ {flip:#x} of a receipt accepted: {:?} / {}",
                        String::from_utf8_lossy(&form[i.saturating_sub(20)..(i + 20).min(form.len())]),
                        hex::encode(&form[i.saturating_sub(8)..(i + 8).min(form.len())])
                    );
                }
            }
        }
    }
    let other = cert::generate_self_signed("other service", true).unwrap();
    let (cose_receipt, json, _) = receipts_for(&sample, 1);
    assert!(verify_bytes(&cose_receipt, &other.cert_pem).is_err());
    assert!(verify_bytes(&json, &other.cert_pem).is_err());
    assert!(verify_bytes(b"", pem).is_err());
    assert!(verify_bytes(b"{}", pem).is_err());
}

#[test]
fn cose_receipt_verifies_with_pycose() {
    let dir = tempfile::tempdir().unwrap();
    let sample = write_sample_ledger(dir.path(), 6, 3);
    let (cose_receipt, _, _) = receipts_for(&sample, 4);
    let receipt_path = dir.path().join("receipt.cose");
    let cert_path = dir.path().join("service_cert.pem");
    std::fs::write(&receipt_path, &cose_receipt).unwrap();
    std::fs::write(&cert_path, &sample.service.cert_pem).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verify_receipt_pycose.py");
    let run = |receipt: &std::path::Path| {
        std::process::Command::new("python3")
            .arg(&script)
            .arg(receipt)
            .arg(&cert_path)
            .output()
            .expect("python3 must be installed (scripts/setup.sh installs it with pycose)")
    };
    let out = run(&receipt_path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("pycose: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pycose refused a genuine receipt");
    let root = sample
        .tree
        .root_at(
            sample.entries[4..]
                .iter()
                .find(|e| e.is_signature)
                .unwrap()
                .tx_id
                .seqno
                - 1,
        )
        .unwrap();
    assert!(stdout.contains(&hex::encode(root)));

    // The signature byte that pycose checks: a tampered receipt must be refused by it too.
    let mut bad = cose_receipt.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let bad_path = dir.path().join("bad.cose");
    std::fs::write(&bad_path, &bad).unwrap();
    assert!(
        !run(&bad_path).status.success(),
        "pycose accepted a tampered receipt"
    );
}
