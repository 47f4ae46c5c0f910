//! Attestation evidence verified against real recorded evidence: an Intel SGX DCAP quote with its collateral (from
//! the `dcap-qvl` crate's samples) and an AMD SEV-SNP Milan report with its VCEK, ASK and ARK (from the `sev`
//! crate's tests), and mutated copies of both. tests/fixtures/attestation/README.md says where each file comes from.

use synod_core::attestation::{
    check_minimum_tcb, parse_rfc3339, snp_policy_allows_debug, verify, AttestationError, PlatformKind,
};

const SGX_QUOTE: &[u8] = include_bytes!("fixtures/attestation/sgx_quote.bin");
const SGX_COLLATERAL: &[u8] = include_bytes!("fixtures/attestation/sgx_quote_collateral.json");
const SNP_REPORT_HEX: &str = include_str!("fixtures/attestation/snp_report_milan.hex");
const SNP_ENDORSEMENTS: &str = include_str!("fixtures/attestation/snp_endorsements_milan.pem");

fn at(s: &str) -> u64 {
    parse_rfc3339(s).expect("a valid time")
}

/// Inside every validity window of the recorded SGX collateral (TCB info and QE identity: 2025-06-19 to 07-19).
fn sgx_time() -> u64 {
    at("2025-07-01T00:00:00Z")
}

/// Inside the validity of the recorded VCEK (2023-04-03 to 2030-04-03).
fn snp_time() -> u64 {
    at("2025-01-01T00:00:00Z")
}

fn snp_report() -> Vec<u8> {
    hex::decode(SNP_REPORT_HEX.trim()).expect("hex report")
}

#[test]
fn a_real_sgx_quote_verifies_with_its_collateral() {
    let v = verify(PlatformKind::Sgx, SGX_QUOTE, SGX_COLLATERAL, sgx_time()).expect("verifies");
    assert_eq!(v.platform, PlatformKind::Sgx);
    assert_eq!(
        v.measurement,
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    );
    assert_eq!(
        v.details["mrsigner"],
        "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    );
    assert_eq!(v.tcb_status, "ConfigurationAndSWHardeningNeeded");
    assert!(v.report_data.starts_with(&hex::encode("Hello, world!")));
    assert!(!v.binds(&[0; 32]));
}

/// Sections of an SGX ECDSA quote (v3) that a signature covers, and a byte offset in each.
const SGX_SIGNED_REGIONS: [(&str, usize); 6] = [
    ("quote header", 10),
    ("ISV enclave report (MRENCLAVE)", 48 + 64 + 3),
    ("ISV enclave report (report data)", 48 + 320 + 1),
    ("ISV report signature", 436 + 7),
    ("attestation key", 500 + 9),
    ("QE report", 564 + 100),
];

#[test]
fn a_changed_byte_in_any_signed_region_of_the_sgx_quote_is_refused() {
    for (region, offset) in SGX_SIGNED_REGIONS {
        let mut quote = SGX_QUOTE.to_vec();
        quote[offset] ^= 0x01;
        let err = verify(PlatformKind::Sgx, &quote, SGX_COLLATERAL, sgx_time())
            .expect_err(&format!("a changed {region} must be refused"));
        assert!(
            matches!(err, AttestationError::BadSignature(_)),
            "{region}: {err}"
        );
    }
    let mut quote = SGX_QUOTE.to_vec();
    quote[948 + 5] ^= 0x01;
    assert!(
        verify(PlatformKind::Sgx, &quote, SGX_COLLATERAL, sgx_time()).is_err(),
        "QE report signature"
    );
    assert!(matches!(
        verify(PlatformKind::Sgx, &SGX_QUOTE[..400], SGX_COLLATERAL, sgx_time()),
        Err(AttestationError::Malformed(_) | AttestationError::Invalid(_))
    ));
}

#[test]
fn changed_sgx_collateral_is_refused() {
    let collateral: serde_json::Value = serde_json::from_slice(SGX_COLLATERAL).unwrap();
    // The TCB info says which TCB levels are up to date: changing any of it must break its signature.
    let mut forged = collateral.clone();
    let tcb = forged["tcb_info"].as_str().unwrap();
    assert!(tcb.contains("\"tcbEvaluationDataNumber\":17"));
    let tcb = tcb.replacen(
        "\"tcbEvaluationDataNumber\":17",
        "\"tcbEvaluationDataNumber\":18",
        1,
    );
    forged["tcb_info"] = tcb.into();
    let err = verify(
        PlatformKind::Sgx,
        SGX_QUOTE,
        forged.to_string().as_bytes(),
        sgx_time(),
    )
    .unwrap_err();
    assert!(matches!(err, AttestationError::BadSignature(_)), "{err}");
    // An issuer chain that does not lead to Intel's root: a self-signed certificate in place of Intel's TCB signing
    // chain.
    let mut forged = collateral.clone();
    let stranger = rcgen::generate_simple_self_signed(vec!["TCB signing".into()]).unwrap();
    forged["tcb_info_issuer_chain"] = stranger.cert.pem().into();
    let err = verify(
        PlatformKind::Sgx,
        SGX_QUOTE,
        forged.to_string().as_bytes(),
        sgx_time(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            AttestationError::Chain(_) | AttestationError::BadSignature(_)
        ),
        "{err}"
    );
    assert!(matches!(
        verify(PlatformKind::Sgx, SGX_QUOTE, b"{}", sgx_time()),
        Err(AttestationError::Malformed(_))
    ));
}

#[test]
fn sgx_collateral_outside_its_validity_window_is_refused_with_the_date() {
    let err = verify(
        PlatformKind::Sgx,
        SGX_QUOTE,
        SGX_COLLATERAL,
        at("2025-08-01T00:00:00Z"),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "SGX collateral (TCB info) expired at 2025-07-19T10:56:11Z"
    );
    let err = verify(
        PlatformKind::Sgx,
        SGX_QUOTE,
        SGX_COLLATERAL,
        at("2025-06-01T00:00:00Z"),
    )
    .unwrap_err();
    assert!(matches!(err, AttestationError::NotYetValid { .. }), "{err}");
}

#[test]
fn a_real_snp_report_verifies_against_amds_milan_root() {
    let v = verify(
        PlatformKind::Snp,
        &snp_report(),
        SNP_ENDORSEMENTS.as_bytes(),
        snp_time(),
    )
    .expect("verifies");
    assert_eq!(v.platform, PlatformKind::Snp);
    assert_eq!(
        v.measurement,
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
    );
    assert_eq!(v.details["product"], "Milan");
    assert_eq!(v.host_data.as_deref(), Some(&*"0".repeat(64)));
    assert_eq!(v.tcb_status, "bootloader 3 tee 0 snp 8 microcode 115");
}

/// Sections of an SNP report (spec 56860, table 22) under the VCEK's signature, and a byte offset in each.
const SNP_SIGNED_REGIONS: [(&str, usize); 6] = [
    ("guest policy", 0x08),
    ("report data", 0x50 + 5),
    ("measurement", 0x90 + 7),
    ("host data", 0xC0 + 1),
    ("reported TCB", 0x180 + 3),
    ("chip id", 0x1A0 + 9),
];

#[test]
fn a_changed_byte_in_the_snp_report_or_its_signature_is_refused() {
    for (region, offset) in SNP_SIGNED_REGIONS {
        let mut report = snp_report();
        report[offset] ^= 0x01;
        let err = verify(
            PlatformKind::Snp,
            &report,
            SNP_ENDORSEMENTS.as_bytes(),
            snp_time(),
        )
        .expect_err(&format!("a changed {region} must be refused"));
        assert!(
            matches!(
                err,
                AttestationError::BadSignature(_) | AttestationError::Malformed(_)
            ),
            "{region}: {err}"
        );
    }
    let mut report = snp_report();
    report[0x2A0 + 20] ^= 0x01;
    let err = verify(
        PlatformKind::Snp,
        &report,
        SNP_ENDORSEMENTS.as_bytes(),
        snp_time(),
    )
    .unwrap_err();
    assert!(
        matches!(err, AttestationError::BadSignature(_)),
        "signature: {err}"
    );
}

fn pem_certs(pem: &str) -> Vec<String> {
    pem.split_inclusive("-----END CERTIFICATE-----\n")
        .map(str::to_string)
        .collect()
}

#[test]
fn an_snp_chain_that_does_not_lead_to_amds_root_is_refused() {
    let certs = pem_certs(SNP_ENDORSEMENTS);
    assert_eq!(certs.len(), 3, "VCEK, ASK, ARK");
    // Genoa's root in place of Milan's: a real AMD root, but it did not sign this ASK.
    let genoa = include_str!("fixtures/attestation/amd_ark_genoa.pem");
    let swapped = format!("{}{}{genoa}", certs[0], certs[1]);
    let err = verify(PlatformKind::Snp, &snp_report(), swapped.as_bytes(), snp_time()).unwrap_err();
    assert!(matches!(err, AttestationError::Chain(_)), "{err}");
    // Not AMD's at all: the ASK presented as the root.
    let fake = format!("{}{}{}", certs[0], certs[1], certs[1]);
    let err = verify(PlatformKind::Snp, &snp_report(), fake.as_bytes(), snp_time()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "chain does not lead to the vendor root: the ARK is not AMD's root key for Milan, Genoa or Turin"
    );
    // A VCEK of another chip: its key did not sign the report (the ASK presented as the VCEK).
    let other = format!("{}{}{}", certs[1], certs[1], certs[2]);
    assert!(verify(PlatformKind::Snp, &snp_report(), other.as_bytes(), snp_time()).is_err());
    let err = verify(PlatformKind::Snp, &snp_report(), certs[0].as_bytes(), snp_time()).unwrap_err();
    assert!(matches!(err, AttestationError::Malformed(_)), "{err}");
}

#[test]
fn snp_certificates_outside_their_validity_are_refused_with_the_date() {
    let err = verify(
        PlatformKind::Snp,
        &snp_report(),
        SNP_ENDORSEMENTS.as_bytes(),
        at("2031-01-01T00:00:00Z"),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "SNP VCEK certificate expired at 2030-04-03T19:23:43Z"
    );
    let err = verify(
        PlatformKind::Snp,
        &snp_report(),
        SNP_ENDORSEMENTS.as_bytes(),
        at("2022-01-01T00:00:00Z"),
    )
    .unwrap_err();
    assert!(matches!(err, AttestationError::NotYetValid { .. }), "{err}");
}

#[test]
fn a_guest_policy_that_allows_debugging_is_refused() {
    // Bit 19 of the guest policy (spec 56860, table 9): the recorded report's 0x30000 has it clear. A report with
    // it set cannot be forged here (the VCEK signs the policy), so the rule itself is checked.
    assert!(!snp_policy_allows_debug(0x30000));
    assert!(snp_policy_allows_debug(0x30000 | 1 << 19));
}

#[test]
fn tcb_below_the_minimum_is_refused() {
    let sgx = verify(PlatformKind::Sgx, SGX_QUOTE, SGX_COLLATERAL, sgx_time()).unwrap();
    check_minimum_tcb(&sgx, "ConfigurationAndSWHardeningNeeded").expect("at the minimum");
    check_minimum_tcb(&sgx, "OutOfDate").expect("above the minimum");
    let err = check_minimum_tcb(&sgx, "UpToDate").unwrap_err();
    assert_eq!(
        err.to_string(),
        "TCB below minimum: ConfigurationAndSWHardeningNeeded is below UpToDate"
    );
    let snp = verify(
        PlatformKind::Snp,
        &snp_report(),
        SNP_ENDORSEMENTS.as_bytes(),
        snp_time(),
    )
    .unwrap();
    check_minimum_tcb(&snp, "bootloader 3 tee 0 snp 8 microcode 115").expect("at the minimum");
    check_minimum_tcb(&snp, "bootloader 2 tee 0 snp 8 microcode 100").expect("above");
    let err = check_minimum_tcb(&snp, "bootloader 3 tee 0 snp 9 microcode 115").unwrap_err();
    assert!(err.to_string().contains("snp 8 < 9"), "{err}");
    assert!(matches!(
        check_minimum_tcb(&snp, "snp eight"),
        Err(AttestationError::Malformed(_))
    ));
}

// ---- SNP UVM endorsements (made by fixtures/attestation/make_uvm_endorsements.py: no real one was available) ----

const UVM_PS384: &[u8] = include_bytes!("fixtures/attestation/uvm_endorsements_ps384.cose");
const UVM_ES384: &[u8] = include_bytes!("fixtures/attestation/uvm_endorsements_es384.cose");
const UVM_INFO: &str = include_str!("fixtures/attestation/uvm_endorsements.json");
const MILAN_MEASUREMENT: &str =
    "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f";

fn uvm_info() -> serde_json::Value {
    serde_json::from_str(UVM_INFO).expect("json")
}

/// Re-encodes a UVM endorsement with its protected header changed by `f` (its signature then no longer matches).
fn with_header(cose: &[u8], f: impl FnOnce(&mut coset::Header)) -> Vec<u8> {
    use coset::TaggedCborSerializable as _;
    let mut sign1 = coset::CoseSign1::from_tagged_slice(cose).expect("cose");
    f(&mut sign1.protected.header);
    sign1.protected.original_data = None;
    sign1.to_tagged_vec().expect("encode")
}

#[test]
fn a_uvm_endorsement_signed_with_rsa_pss_or_ecdsa_endorses_the_reports_measurement() {
    let info = uvm_info();
    for (cose, alg) in [(UVM_PS384, "ps384"), (UVM_ES384, "es384")] {
        let e = synod_core::attestation::verify_uvm_endorsement(cose, MILAN_MEASUREMENT).expect(alg);
        assert_eq!(e.did, info["dids"][alg].as_str().unwrap());
        assert_eq!(e.feed, "ContainerPlat-AMD-UVM");
        assert_eq!(e.svn, "101");
        assert_eq!(e.launch_measurement, MILAN_MEASUREMENT);
    }
    // Attached to the verified report it endorses.
    let mut v = verify(
        PlatformKind::Snp,
        &snp_report(),
        SNP_ENDORSEMENTS.as_bytes(),
        snp_time(),
    )
    .unwrap();
    synod_core::attestation::attach_uvm_endorsement(&mut v, UVM_PS384).expect("attaches");
    assert_eq!(v.uvm_endorsements.as_ref().map(|e| e.svn.as_str()), Some("101"));
    assert!(v
        .checked
        .last()
        .unwrap()
        .contains("UVM endorsement by did:x509:0:sha256:"));
    assert!(synod_core::attestation::svn_at_least("101", "100"));
    assert!(!synod_core::attestation::svn_at_least("99", "100"));
    assert!(!synod_core::attestation::svn_at_least("x", "1"));
}

#[test]
fn a_uvm_endorsement_for_another_measurement_or_changed_is_refused() {
    let other = "00".repeat(48);
    let err = synod_core::attestation::verify_uvm_endorsement(UVM_PS384, &other).unwrap_err();
    assert!(
        matches!(err, AttestationError::Invalid(ref m) if m.contains("launch measurement")),
        "{err}"
    );
    for cose in [UVM_PS384, UVM_ES384] {
        // A changed payload byte or signature byte: the signature no longer verifies.
        for at in [cose.len() - 1, cose.len() - 120] {
            let mut bad = cose.to_vec();
            bad[at] ^= 1;
            let err = synod_core::attestation::verify_uvm_endorsement(&bad, MILAN_MEASUREMENT).unwrap_err();
            assert!(
                matches!(
                    err,
                    AttestationError::BadSignature(_) | AttestationError::Malformed(_)
                ),
                "byte {at}: {err}"
            );
        }
        // Another feed under the same key: the protected header is signed.
        let bad = with_header(cose, |h| {
            for (label, v) in h.rest.iter_mut() {
                if *label == coset::Label::Text("feed".into()) {
                    *v = ciborium::Value::Text("another-feed".into());
                }
            }
        });
        let err = synod_core::attestation::verify_uvm_endorsement(&bad, MILAN_MEASUREMENT).unwrap_err();
        assert!(matches!(err, AttestationError::BadSignature(_)), "{err}");
    }
    // An issuer the chain does not resolve: another fingerprint, another EKU, another DID method.
    let info = uvm_info();
    let did = info["dids"]["ps384"].as_str().unwrap();
    let es_fingerprint = info["dids"]["es384"]
        .as_str()
        .unwrap()
        .split("::")
        .next()
        .unwrap();
    for (iss, why) in [
        (
            format!("{es_fingerprint}::eku:1.3.6.1.4.1.311.76.59.1.2"),
            "fingerprint",
        ),
        (did.replace("76.59.1.2", "76.59.1.3"), "extended key usage"),
        ("did:web:example.com".to_string(), "only did:x509:0:sha256"),
    ] {
        let bad = with_header(UVM_PS384, |h| {
            for (label, v) in h.rest.iter_mut() {
                if *label == coset::Label::Text("iss".into()) {
                    *v = ciborium::Value::Text(iss.clone());
                }
            }
        });
        let err = synod_core::attestation::verify_uvm_endorsement(&bad, MILAN_MEASUREMENT).unwrap_err();
        assert!(
            matches!(err, AttestationError::Chain(ref m) if m.contains(why)),
            "{iss}: {err}"
        );
    }
    // A chain longer than any publisher needs: refused before a signature is checked (any joiner can send one).
    let long = with_header(UVM_ES384, |h| {
        for (label, v) in h.rest.iter_mut() {
            if *label == coset::Label::Int(33) {
                let first = v.as_array().and_then(|a| a.first().cloned()).expect("x5chain");
                *v = ciborium::Value::Array(vec![first; 9]);
            }
        }
    });
    let err = synod_core::attestation::verify_uvm_endorsement(&long, MILAN_MEASUREMENT).unwrap_err();
    assert!(
        matches!(err, AttestationError::Malformed(ref m) if m.contains("at most 8")),
        "{err}"
    );
    // Not COSE at all, and endorsements offered with evidence of another platform.
    assert!(matches!(
        synod_core::attestation::verify_uvm_endorsement(b"not cose", MILAN_MEASUREMENT),
        Err(AttestationError::Malformed(_))
    ));
    let mut sgx = verify(PlatformKind::Sgx, SGX_QUOTE, SGX_COLLATERAL, sgx_time()).unwrap();
    assert!(synod_core::attestation::attach_uvm_endorsement(&mut sgx, UVM_PS384).is_err());
}
