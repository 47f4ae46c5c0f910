//! Verifying attestation evidence offline: what the primary checks before a node may join, and what a client checks
//! before it trusts a node (`synod attestation verify`). Three platforms:
//!
//! - `sgx`: an Intel SGX DCAP ECDSA quote (v3/v4) with its collateral (PCK CRL and issuer chain, root CA CRL, TCB
//!   info and QE identity with their signatures and chains, as `dcap-qvl`'s `QuoteCollateralV3` JSON). Checked by
//!   `dcap-qvl`: PCK chain to Intel's SGX root CA, CRLs, QE identity, TCB info and status, the QE report's binding
//!   of the attestation key, the ISV report's signature. Then here: the collateral's validity window at the
//!   verification time, a revoked TCB, a debug enclave.
//! - `snp`: an AMD SEV-SNP attestation report with its endorsements (PEM: VCEK, ASK, ARK). Checked here with
//!   `sev`: the ARK is AMD's root for that product (Milan, Genoa, Turin), ARK → ASK → VCEK signatures, the report's
//!   signature by the VCEK, each certificate's validity at the verification time, and a guest policy that allows
//!   debugging (refused: the host could read the guest's memory).
//! - `virtual`: a JSON statement with no hardware signature, for development; it proves nothing about isolation.
//!
//! Every platform puts the SHA-256 of the node's TLS public key (DER) in the first 32 bytes of its report data
//! ([`Verified::binds`]); the caller compares it with the key it sees in TLS.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub mod uvm;
pub use uvm::{svn_at_least, uvm_endorsement_from_file, verify_uvm_endorsement, UvmEndorsement};

/// A platform whose evidence Synod verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlatformKind {
    /// No hardware: development only.
    Virtual,
    /// Intel SGX (DCAP ECDSA quotes).
    Sgx,
    /// AMD SEV-SNP.
    Snp,
}

impl PlatformKind {
    /// The platform of a `quote_info.format` as CCF names them (and Synod's earlier `Virtual`).
    pub fn from_format(format: &str) -> Option<PlatformKind> {
        match format {
            "Virtual" | "Insecure_Virtual" => Some(PlatformKind::Virtual),
            "OE_SGX_v1" | "SGX_ECDSA" => Some(PlatformKind::Sgx),
            "AMD_SEV_SNP_v1" => Some(PlatformKind::Snp),
            _ => None,
        }
    }

    /// CCF's `quote_info.format` for this platform.
    pub fn format(self) -> &'static str {
        match self {
            PlatformKind::Virtual => "Insecure_Virtual",
            PlatformKind::Sgx => "OE_SGX_v1",
            PlatformKind::Snp => "AMD_SEV_SNP_v1",
        }
    }
}

impl std::str::FromStr for PlatformKind {
    type Err = AttestationError;
    fn from_str(s: &str) -> Result<PlatformKind, AttestationError> {
        match s {
            "virtual" => Ok(PlatformKind::Virtual),
            "sgx" => Ok(PlatformKind::Sgx),
            "snp" => Ok(PlatformKind::Snp),
            other => PlatformKind::from_format(other)
                .ok_or_else(|| AttestationError::UnsupportedFormat(other.into())),
        }
    }
}

/// Why evidence was refused. Each names what failed, so that a refused join or `synod attestation verify` says it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestationError {
    /// A platform or format Synod does not verify.
    #[error("unsupported attestation format {0:?}")]
    UnsupportedFormat(String),
    /// Evidence or endorsements that do not parse.
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// A signature over the evidence or its collateral does not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// The endorsement chain does not lead to the vendor's root.
    #[error("chain does not lead to the vendor root: {0}")]
    Chain(String),
    /// Collateral or a certificate expired before the verification time.
    #[error("{what} expired at {at}")]
    Expired {
        /// What expired.
        what: String,
        /// When (RFC 3339).
        at: String,
    },
    /// Collateral or a certificate not yet valid at the verification time.
    #[error("{what} is not valid before {at}")]
    NotYetValid {
        /// What.
        what: String,
        /// From when (RFC 3339).
        at: String,
    },
    /// The platform's TCB is not acceptable.
    #[error("TCB below minimum: {0}")]
    Tcb(String),
    /// The enclave or guest can be debugged by the host.
    #[error("debug mode: {0}")]
    Debug(String),
    /// Any other failed check, as the verifier reports it.
    #[error("evidence does not verify: {0}")]
    Invalid(String),
}

/// What verified evidence states.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// The platform.
    pub platform: PlatformKind,
    /// Hex code measurement: MRENCLAVE (SGX), MEASUREMENT (SNP), SHA-256 of the binary (virtual).
    pub measurement: String,
    /// Hex report data (64 bytes on SGX and SNP, 32 on virtual).
    pub report_data: String,
    /// Hex host data (SNP: the digest the host bound at launch, e.g. a container security policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_data: Option<String>,
    /// TCB status: SGX's (`UpToDate`, `SWHardeningNeeded`, `OutOfDate`, ...), SNP's reported TCB, `None` on virtual.
    pub tcb_status: String,
    /// Platform-specific fields (SGX: `mrsigner`, `isv_prod_id`, `isv_svn`, `advisory_ids`; SNP: `product`,
    /// `policy`, `reported_tcb`, `chip_id`, `vmpl`).
    pub details: serde_json::Map<String, serde_json::Value>,
    /// The checks that passed, in order.
    pub checked: Vec<String>,
    /// SNP: the publisher's endorsement of the launch measurement, when the evidence came with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uvm_endorsements: Option<UvmEndorsement>,
}

impl Verified {
    /// Whether the report data binds `digest` (the SHA-256 of a TLS public key): its first 32 bytes, the rest zero.
    pub fn binds(&self, digest: &[u8; 32]) -> bool {
        let Ok(data) = hex::decode(&self.report_data) else {
            return false;
        };
        data.len() >= 32 && data[..32] == digest[..] && data[32..].iter().all(|b| *b == 0)
    }
}

/// Verifies `evidence` (with its `endorsements`) of `platform` as of `at` (seconds since the epoch).
pub fn verify(
    platform: PlatformKind,
    evidence: &[u8],
    endorsements: &[u8],
    at: u64,
) -> Result<Verified, AttestationError> {
    match platform {
        PlatformKind::Virtual => verify_virtual(evidence),
        PlatformKind::Sgx => verify_sgx(evidence, endorsements, at),
        PlatformKind::Snp => verify_snp(evidence, endorsements, at),
    }
}

/// [`verify`], then the SNP UVM endorsement the evidence came with, if any ([`attach_uvm_endorsement`]): what the
/// primary, `synod attest` and `synod attestation verify` all check.
pub fn verify_with_uvm(
    platform: PlatformKind,
    evidence: &[u8],
    endorsements: &[u8],
    uvm_endorsements: Option<&[u8]>,
    at: u64,
) -> Result<Verified, AttestationError> {
    let mut verified = verify(platform, evidence, endorsements, at)?;
    if let Some(cose) = uvm_endorsements {
        attach_uvm_endorsement(&mut verified, cose)?;
    }
    Ok(verified)
}

/// Verifies an SNP node's UVM endorsement (COSE Sign1) against its verified report and records it in `v`.
pub fn attach_uvm_endorsement(v: &mut Verified, cose: &[u8]) -> Result<(), AttestationError> {
    if v.platform != PlatformKind::Snp {
        return Err(AttestationError::Malformed(
            "UVM endorsements come with SEV-SNP evidence only".into(),
        ));
    }
    let endorsement = verify_uvm_endorsement(cose, &v.measurement)?;
    v.checked.push(format!(
        "UVM endorsement by {} (feed {}, svn {}) signs this launch measurement",
        endorsement.did, endorsement.feed, endorsement.svn
    ));
    v.uvm_endorsements = Some(endorsement);
    Ok(())
}

/// Seconds since the epoch now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `virtual` platform's statement.
#[derive(Serialize, Deserialize)]
pub struct VirtualStatement {
    /// Hex SHA-256 of the node binary.
    pub measurement: String,
    /// Hex SHA-256 of the node's TLS public key.
    pub report_data: String,
}

fn verify_virtual(evidence: &[u8]) -> Result<Verified, AttestationError> {
    let s: VirtualStatement = serde_json::from_slice(evidence)
        .map_err(|e| AttestationError::Malformed(format!("virtual statement: {e}")))?;
    let hex32 = |v: &str, what: &str| {
        crate::hash::digest_from_hex(v)
            .map(hex::encode)
            .ok_or_else(|| AttestationError::Malformed(format!("{what} is not 32 hex bytes")))
    };
    Ok(Verified {
        platform: PlatformKind::Virtual,
        measurement: hex32(&s.measurement, "measurement")?,
        report_data: hex32(&s.report_data, "report_data")?,
        host_data: None,
        tcb_status: "None".into(),
        details: serde_json::Map::new(),
        checked: vec!["statement parses (no hardware signature: proves nothing about isolation)".into()],
        uvm_endorsements: None,
    })
}

/// SGX attributes flag: the enclave can be debugged.
const SGX_FLAGS_DEBUG: u8 = 0x02;

fn verify_sgx(quote: &[u8], endorsements: &[u8], at: u64) -> Result<Verified, AttestationError> {
    let collateral: dcap_qvl::QuoteCollateralV3 = serde_json::from_slice(endorsements)
        .map_err(|e| AttestationError::Malformed(format!("SGX collateral (QuoteCollateralV3 JSON): {e}")))?;
    for (what, json) in [
        ("TCB info", &collateral.tcb_info),
        ("QE identity", &collateral.qe_identity),
    ] {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| AttestationError::Malformed(format!("{what}: {e}")))?;
        let date = |field: &str| {
            v[field]
                .as_str()
                .and_then(parse_rfc3339)
                .ok_or_else(|| AttestationError::Malformed(format!("{what} has no valid {field}")))
        };
        let (issued, next) = (date("issueDate")?, date("nextUpdate")?);
        if at < issued {
            return Err(AttestationError::NotYetValid {
                what: format!("SGX collateral ({what})"),
                at: format_rfc3339(issued),
            });
        }
        if at >= next {
            return Err(AttestationError::Expired {
                what: format!("SGX collateral ({what})"),
                at: format_rfc3339(next),
            });
        }
    }
    let report = dcap_qvl::verify::verify(quote, &collateral, at).map_err(|e| classify_sgx(&e))?;
    let dcap_qvl::quote::Report::SgxEnclave(enclave) = &report.report else {
        return Err(AttestationError::UnsupportedFormat(
            "a TDX quote (Synod verifies SGX enclave quotes)".into(),
        ));
    };
    if report.status == "Revoked" {
        return Err(AttestationError::Tcb("the platform's TCB is revoked".into()));
    }
    if enclave.attributes[0] & SGX_FLAGS_DEBUG != 0 {
        return Err(AttestationError::Debug(
            "the enclave was launched in debug mode".into(),
        ));
    }
    let mut details = serde_json::Map::new();
    details.insert("mrsigner".into(), hex::encode(enclave.mr_signer).into());
    details.insert("isv_prod_id".into(), enclave.isv_prod_id.into());
    details.insert("isv_svn".into(), enclave.isv_svn.into());
    details.insert("advisory_ids".into(), report.advisory_ids.clone().into());
    Ok(Verified {
        platform: PlatformKind::Sgx,
        measurement: hex::encode(enclave.mr_enclave),
        report_data: hex::encode(enclave.report_data),
        host_data: None,
        tcb_status: report.status.clone(),
        details,
        checked: [
            "collateral valid at the verification time",
            "PCK certificate chain to Intel's SGX root CA, CRLs",
            "TCB info and QE identity signatures, QE report binds the attestation key",
            "ISV enclave report signature",
            "TCB status not revoked",
            "enclave not in debug mode",
        ]
        .map(String::from)
        .to_vec(),
        uvm_endorsements: None,
    })
}

/// Names a `dcap-qvl` failure by the check that failed.
fn classify_sgx(e: &impl std::fmt::Display) -> AttestationError {
    let message = format!("{e:#}");
    let lower = message.to_lowercase();
    if lower.contains("signature") || lower.contains("hash mismatch") {
        AttestationError::BadSignature(message)
    } else if lower.contains("chain") || lower.contains("certificate") || lower.contains("root") {
        AttestationError::Chain(message)
    } else if lower.contains("expired") {
        AttestationError::Expired {
            what: "SGX collateral".into(),
            at: message,
        }
    } else if lower.contains("tcb") {
        AttestationError::Tcb(message)
    } else if lower.contains("decode") || lower.contains("parse") || lower.contains("invalid quote") {
        AttestationError::Malformed(message)
    } else {
        AttestationError::Invalid(message)
    }
}

fn verify_snp(report_bytes: &[u8], endorsements: &[u8], at: u64) -> Result<Verified, AttestationError> {
    use sev::certs::snp::{ca, Certificate, Chain, Verifiable as _};
    use sev::firmware::guest::AttestationReport;
    use sev::parser::ByteParser as _;

    let report = AttestationReport::from_bytes(report_bytes)
        .map_err(|e| AttestationError::Malformed(format!("SNP report: {e}")))?;
    let pems = pem_blocks(endorsements)?;
    let [vcek, ask, ark] = pems.as_slice() else {
        return Err(AttestationError::Malformed(format!(
            "SNP endorsements hold {} certificates; expected 3 PEM certificates: VCEK, ASK, ARK",
            pems.len()
        )));
    };
    let parse = |der: &[u8], what: &str| {
        Certificate::from_der(der).map_err(|e| AttestationError::Malformed(format!("{what}: {e}")))
    };
    let (product, root) = amd_root(ark)?;
    for (der, what) in [(vcek, "VCEK"), (ask, "ASK"), (ark, "ARK")] {
        check_validity(der, &format!("SNP {what} certificate"), at)?;
    }
    let chain = Chain {
        ca: ca::Chain {
            ark: root,
            ask: parse(ask, "ASK")?,
        },
        vek: parse(vcek, "VCEK")?,
    };
    chain
        .ca
        .verify()
        .map_err(|e| AttestationError::Chain(format!("ARK-{product} does not sign the ASK: {e}")))?;
    chain
        .verify()
        .map_err(|e| AttestationError::Chain(format!("the ASK does not sign the VCEK: {e}")))?;
    verify_snp_signature(report_bytes, chain.vek.public_key_sec1())?;
    if snp_policy_allows_debug(u64::from(report.policy)) {
        return Err(AttestationError::Debug(
            "the guest policy allows debugging (the host could read and change the guest's memory)".into(),
        ));
    }
    let tcb = |t: &sev::firmware::host::TcbVersion| {
        format!(
            "bootloader {} tee {} snp {} microcode {}",
            t.bootloader, t.tee, t.snp, t.microcode
        )
    };
    let mut details = serde_json::Map::new();
    details.insert("product".into(), product.into());
    details.insert("policy".into(), format!("{:#x}", u64::from(report.policy)).into());
    details.insert("reported_tcb".into(), tcb(&report.reported_tcb).into());
    details.insert("chip_id".into(), hex::encode(report.chip_id).into());
    details.insert("vmpl".into(), report.vmpl.into());
    details.insert("guest_svn".into(), report.guest_svn.into());
    Ok(Verified {
        platform: PlatformKind::Snp,
        measurement: hex::encode(report.measurement),
        report_data: hex::encode(report.report_data),
        host_data: Some(hex::encode(report.host_data)),
        tcb_status: tcb(&report.reported_tcb),
        details,
        checked: [
            "ARK is AMD's root for the product",
            "certificates valid at the verification time",
            "ARK signs ASK, ASK signs VCEK",
            "VCEK signs the report",
            "guest policy forbids debugging",
        ]
        .map(String::from)
        .to_vec(),
        uvm_endorsements: None,
    })
}

/// Where the SNP report's signed part ends and its signature (r, s: 72-byte little-endian each) starts.
const SNP_SIGNED_LEN: usize = 0x2A0;
const SNP_SCALAR_LEN: usize = 72;

/// Checks the VCEK's ECDSA P-384 signature over the report's raw bytes. Over the raw bytes, not a re-encoding of
/// the parsed report: a re-encoding drops what the parser ignores (reserved bytes), and those would then be
/// changeable without breaking the signature.
fn verify_snp_signature(report: &[u8], vcek_sec1: &[u8]) -> Result<(), AttestationError> {
    use p384::ecdsa::signature::hazmat::PrehashVerifier as _;
    use sha2::Digest as _;
    let bad = |m: String| AttestationError::BadSignature(format!("the VCEK does not sign the report: {m}"));
    let sig = report
        .get(SNP_SIGNED_LEN..SNP_SIGNED_LEN + 2 * SNP_SCALAR_LEN)
        .ok_or_else(|| AttestationError::Malformed("SNP report too short for its signature".into()))?;
    let scalar = |le: &[u8]| -> Result<[u8; 48], AttestationError> {
        if le[48..].iter().any(|b| *b != 0) {
            return Err(bad("a signature component exceeds 48 bytes".into()));
        }
        let mut be = [0u8; 48];
        for (i, b) in le[..48].iter().enumerate() {
            be[47 - i] = *b;
        }
        Ok(be)
    };
    let (r, s) = (scalar(&sig[..SNP_SCALAR_LEN])?, scalar(&sig[SNP_SCALAR_LEN..])?);
    let signature = p384::ecdsa::Signature::from_scalars(r, s).map_err(|e| bad(e.to_string()))?;
    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(vcek_sec1)
        .map_err(|e| AttestationError::Malformed(format!("VCEK public key: {e}")))?;
    let digest = sha2::Sha384::digest(&report[..SNP_SIGNED_LEN]);
    key.verify_prehash(&digest, &signature)
        .map_err(|e| bad(e.to_string()))
}

/// SEV-SNP guest policy bit 19 (AMD spec 56860, "Guest policy"): the host may debug the guest.
const SNP_POLICY_DEBUG: u64 = 1 << 19;

/// Whether an SNP guest policy lets the host debug the guest (then the host can read its memory).
pub fn snp_policy_allows_debug(policy: u64) -> bool {
    policy & SNP_POLICY_DEBUG != 0
}

/// SGX TCB statuses from best to worst (Intel's TCB info); a minimum admits it and everything before it.
const SGX_TCB_ORDER: [&str; 7] = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
];

/// The SNP TCB components, in the order [`Verified::tcb_status`] names them.
const SNP_TCB_PARTS: [&str; 4] = ["bootloader", "tee", "snp", "microcode"];

/// Checks verified evidence against a minimum TCB: an SGX status (`UpToDate`, `SWHardeningNeeded`, ...: that one
/// or better), or SNP components (`bootloader 3 tee 0 snp 8 microcode 115`: each at least that). Virtual evidence
/// has no TCB and passes.
pub fn check_minimum_tcb(v: &Verified, minimum: &str) -> Result<(), AttestationError> {
    match v.platform {
        PlatformKind::Virtual => Ok(()),
        PlatformKind::Sgx => {
            let rank = |status: &str| SGX_TCB_ORDER.iter().position(|s| *s == status);
            let min = rank(minimum).ok_or_else(|| {
                AttestationError::Malformed(format!(
                    "minimum SGX TCB {minimum:?} is none of {}",
                    SGX_TCB_ORDER.join(", ")
                ))
            })?;
            match rank(&v.tcb_status) {
                Some(have) if have <= min => Ok(()),
                _ => Err(AttestationError::Tcb(format!(
                    "{} is below {minimum}",
                    v.tcb_status
                ))),
            }
        }
        PlatformKind::Snp => {
            let (have, min) = (snp_tcb_parts(&v.tcb_status)?, snp_tcb_parts(minimum)?);
            let below: Vec<String> = SNP_TCB_PARTS
                .iter()
                .zip(have.iter().zip(min.iter()))
                .filter(|(_, (h, m))| h < m)
                .map(|(name, (h, m))| format!("{name} {h} < {m}"))
                .collect();
            if below.is_empty() {
                Ok(())
            } else {
                Err(AttestationError::Tcb(below.join(", ")))
            }
        }
    }
}

fn snp_tcb_parts(s: &str) -> Result<[u64; 4], AttestationError> {
    let bad = || {
        AttestationError::Malformed(format!(
            "SNP TCB {s:?} is not of the form \"bootloader N tee N snp N microcode N\""
        ))
    };
    let words: Vec<&str> = s.split_whitespace().collect();
    if words.len() != 8 {
        return Err(bad());
    }
    let mut parts = [0; 4];
    for (i, name) in SNP_TCB_PARTS.iter().enumerate() {
        if words[2 * i] != *name {
            return Err(bad());
        }
        parts[i] = words[2 * i + 1].parse().map_err(|_| bad())?;
    }
    Ok(parts)
}

/// One of AMD's built-in root certificates.
type AmdRoot = fn() -> std::io::Result<sev::certs::snp::Certificate>;

/// The product whose AMD root `ark` (DER) is, and that root: an ARK that is not one of AMD's is refused.
fn amd_root(ark: &[u8]) -> Result<(&'static str, sev::certs::snp::Certificate), AttestationError> {
    use sev::certs::snp::builtin::{genoa, milan, turin};
    let roots: [(&str, AmdRoot); 3] = [
        ("Milan", milan::ark),
        ("Genoa", genoa::ark),
        ("Turin", turin::ark),
    ];
    for (product, root) in roots {
        let root = root().map_err(|e| AttestationError::Invalid(format!("AMD's {product} root: {e}")))?;
        if root.to_der().is_ok_and(|der| der == ark) {
            return Ok((product, root));
        }
    }
    Err(AttestationError::Chain(
        "the ARK is not AMD's root key for Milan, Genoa or Turin".into(),
    ))
}

fn check_validity(der: &[u8], what: &str, at: u64) -> Result<(), AttestationError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| AttestationError::Malformed(format!("{what}: {e}")))?;
    let validity = cert.validity();
    let (from, to) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    let at_i = i64::try_from(at).unwrap_or(i64::MAX);
    if at_i < from {
        return Err(AttestationError::NotYetValid {
            what: what.into(),
            at: format_rfc3339(u64::try_from(from).unwrap_or(0)),
        });
    }
    if at_i > to {
        return Err(AttestationError::Expired {
            what: what.into(),
            at: format_rfc3339(u64::try_from(to).unwrap_or(0)),
        });
    }
    Ok(())
}

/// The DER of each PEM certificate in `pem`, in order.
fn pem_blocks(pem: &[u8]) -> Result<Vec<Vec<u8>>, AttestationError> {
    let mut out = Vec::new();
    for item in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let item = item.map_err(|e| AttestationError::Malformed(format!("endorsements PEM: {e}")))?;
        if item.label == "CERTIFICATE" {
            out.push(item.contents);
        }
    }
    Ok(out)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (UTC) into seconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let secs = days_from_civil(y, m, day) * 86_400 + h * 3600 + mi * 60 + sec;
    u64::try_from(secs).ok()
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(secs: u64) -> String {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

// Howard Hinnant's algorithms for the proleptic Gregorian calendar.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        for s in [
            "1970-01-01T00:00:00Z",
            "2025-07-19T10:56:11Z",
            "2000-02-29T23:59:59Z",
            "2045-10-22T18:24:20Z",
        ] {
            assert_eq!(format_rfc3339(parse_rfc3339(s).unwrap()), s);
        }
        assert_eq!(
            parse_rfc3339("2025-06-19T10:56:11.123Z"),
            parse_rfc3339("2025-06-19T10:56:11Z")
        );
        assert_eq!(parse_rfc3339("1970-01-02T00:00:00Z"), Some(86_400));
        for bad in [
            "",
            "2025-13-01T00:00:00Z",
            "2025-06-19",
            "2025-06-19T10:56:11",
            "x-y-zT1:2:3Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn binding_needs_the_digest_then_zeros() {
        let mut v = verify_virtual(
            br#"{"measurement":"0303030303030303030303030303030303030303030303030303030303030303","report_data":"0707070707070707070707070707070707070707070707070707070707070707"}"#,
        )
        .unwrap();
        assert!(v.binds(&[7; 32]));
        assert!(!v.binds(&[8; 32]));
        v.report_data = format!("{}{}", hex::encode([7; 32]), hex::encode([1; 32]));
        assert!(
            !v.binds(&[7; 32]),
            "a 64-byte report data must be zero after the digest"
        );
    }
}
