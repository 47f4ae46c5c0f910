//! `synod ledger audit` run as a process on ledgers an attacker shaped: genuine sample ledgers cut before their
//! last signature (an unsigned tail) or with a forged COSE signature.

use std::path::Path;
use std::process::Command;

use synod_core::ledger::{decode_frames, encode_frame, parse_signature_write_set};
use synod_core::testing::{write_sample_ledger, SampleLedger};

/// (exit code, stdout) of `synod ledger audit <args>`.
fn audit(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_synod"))
        .env_remove("SYNOD_NETWORK")
        .args(["ledger", "audit"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), format!("{stdout}{stderr}"))
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Cuts the sample's last chunk right before its last signature; returns that signature's seqno.
fn cut_before_last_signature(sample: &SampleLedger) -> u64 {
    let sig = sample.entries.iter().rev().find(|e| e.is_signature).unwrap();
    assert_eq!(sig.chunk, sample.chunks.len() - 1);
    let path = &sample.chunks[sig.chunk];
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..sig.offset as usize]).unwrap();
    sig.tx_id.seqno
}

fn service_cert(dir: &Path, sample: &SampleLedger) -> String {
    let path = dir.join("service_cert.pem");
    std::fs::write(&path, &sample.service.cert_pem).unwrap();
    path.display().to_string()
}

#[test]
fn audit_of_a_ledger_nothing_signed_fails_unless_the_unsigned_tail_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    std::fs::create_dir(&ledger).unwrap();
    // Five transactions and one signature after them, in one open chunk: cut, nothing is signed.
    let sample = write_sample_ledger(&ledger, 5, 10);
    assert_eq!(cut_before_last_signature(&sample), 6);
    let cert = service_cert(dir.path(), &sample);
    let l = ledger.to_str().unwrap();

    let (code, out) = audit(&[l, "--service-cert", &cert]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ledger audit FAILED"), "{out}");
    assert!(
        out.contains("unsigned tail: 5 entries (seqno 1 to 5) after no signature at all"),
        "{out}"
    );
    assert!(out.contains("--allow-unsigned-tail"), "{out}");
    let (code, out) = audit(&[l, "--service-cert", &cert, "--json"]);
    assert_eq!(code, 1, "{out}");
    let doc = json(&out);
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["seqno"], 1);
    assert_eq!(doc["unsigned_tail"], 5);
    assert_eq!(
        doc["unsigned_tail_range"],
        serde_json::json!({"from": 1, "to": 5})
    );

    let (code, out) = audit(&[l, "--service-cert", &cert, "--allow-unsigned-tail"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("ledger OK: 5 entries in 1 chunk(s), 0 signature(s) verified"),
        "{out}"
    );
    assert!(
        out.contains("  unsigned tail:   5 entries (seqno 1 to 5)"),
        "{out}"
    );
    let (code, out) = audit(&[l, "--service-cert", &cert, "--allow-unsigned-tail", "--json"]);
    assert_eq!(code, 0, "{out}");
    let doc = json(&out);
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["signatures"], 0);
    assert_eq!(doc["last_signed"], serde_json::Value::Null);
    assert_eq!(doc["unsigned_tail"], 5);
    assert_eq!(
        doc["unsigned_tail_range"],
        serde_json::json!({"from": 1, "to": 5})
    );
}

#[test]
fn audit_names_the_entries_after_the_last_signature() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    std::fs::create_dir(&ledger).unwrap();
    let sample = write_sample_ledger(&ledger, 30, 7);
    let cut = cut_before_last_signature(&sample);
    let last_kept_sig = sample
        .entries
        .iter()
        .rev()
        .find(|e| e.is_signature && e.tx_id.seqno < cut)
        .unwrap()
        .tx_id;
    let cert = service_cert(dir.path(), &sample);
    let l = ledger.to_str().unwrap();

    let (code, out) = audit(&[l, "--service-cert", &cert, "--json"]);
    assert_eq!(code, 1, "{out}");
    let doc = json(&out);
    let (from, to) = (last_kept_sig.seqno + 1, cut - 1);
    assert_eq!(doc["unsigned_tail"], to - from + 1);
    assert_eq!(
        doc["unsigned_tail_range"],
        serde_json::json!({"from": from, "to": to})
    );
    assert!(
        doc["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("after the last signature, {last_kept_sig}")),
        "{out}"
    );

    let (code, out) = audit(&[l, "--service-cert", &cert, "--allow-unsigned-tail"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("  last signed tx:  {last_kept_sig}")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "  unsigned tail:   {} entries (seqno {from} to {to})",
            to - from + 1
        )),
        "{out}"
    );
}

#[test]
fn audit_refuses_a_signature_whose_cose_signature_is_forged() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    std::fs::create_dir(&ledger).unwrap();
    let sample = write_sample_ledger(&ledger, 6, 3);
    let cert = service_cert(dir.path(), &sample);
    // The last signature: no later signature's root would notice its bytes changed.
    let sig = sample.entries.iter().rev().find(|e| e.is_signature).unwrap();
    let path = &sample.chunks[sig.chunk];
    let mut bytes = std::fs::read(path).unwrap();
    let range = sig.offset as usize..(sig.offset + sig.len) as usize;
    let mut entry = decode_frames(&bytes[range.clone()])
        .next()
        .unwrap()
        .unwrap()
        .entry;
    let tx = entry.decode_transaction().unwrap();
    let (_, cose) = parse_signature_write_set(&tx.public_write_set().unwrap()).unwrap();
    let at = entry
        .transaction
        .windows(cose.len())
        .position(|w| w == cose.as_slice())
        .unwrap();
    // The last byte of the Sign1 is inside its signature; the node's own signature stays intact.
    entry.transaction[at + cose.len() - 1] ^= 0x01;
    let frame = encode_frame(&entry);
    assert_eq!(frame.len(), range.len());
    bytes[range].copy_from_slice(&frame);
    std::fs::write(path, &bytes).unwrap();
    let l = ledger.to_str().unwrap();

    let (code, out) = audit(&[l, "--service-cert", &cert, "--json"]);
    assert_eq!(code, 1, "{out}");
    let doc = json(&out);
    assert_eq!(doc["seqno"], sig.tx_id.seqno);
    assert!(
        doc["reason"].as_str().unwrap().starts_with("COSE signature:"),
        "{out}"
    );
    // Without the service certificate the COSE signature cannot be checked, and the audit says so.
    let (code, out) = audit(&[l]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("COSE signatures were not checked"), "{out}");
}
