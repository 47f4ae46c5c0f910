//! Receipts built from a genuine sample ledger verify with the service certificate alone, and any changed byte
//! makes them fail.

use synod_core::cert;
use synod_core::receipt::verify_bytes;
use synod_core::testing::{receipts_for, write_sample_ledger};

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
