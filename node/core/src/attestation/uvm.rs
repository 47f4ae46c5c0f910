//! SEV-SNP UVM endorsements (CCF's `uvm_endorsements`): a COSE Sign1 document in which a publisher (Microsoft, for
//! Azure's confidential containers) states the launch measurement of a utility VM image it released, under a feed
//! and a security version number. With one, governance need not approve every UVM measurement one by one: it
//! approves a publisher's `did:x509` identity and feed with a minimum SVN (`add_snp_uvm_endorsement`), and a node
//! whose report's measurement is the one the endorsement states may join.
//!
//! Checked here: the COSE signature (PS256/384/512 or ES256/384) with the leaf of the `x5chain` header; each
//! certificate of the chain signed by the next; the issuer's `did:x509:0:sha256:<fingerprint>::eku:<oid>`
//! resolves against that chain (a CA certificate in it has that SHA-256 fingerprint, and the leaf has that extended
//! key usage); the payload's `x-ms-sevsnpvm-launchmeasurement` equals the report's measurement.

use base64::Engine as _;
use coset::{CborSerializable as _, Label, RegisteredLabelWithPrivate, TaggedCborSerializable as _};
use serde::Serialize;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::AttestationError;

/// What a verified UVM endorsement states (CCF's shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UvmEndorsement {
    /// The publisher's identity, `did:x509:...`.
    pub did: String,
    /// The feed the image was released under (Azure's: `ContainerPlat-AMD-UVM`).
    pub feed: String,
    /// The image's security version number.
    pub svn: String,
    /// Hex launch measurement the publisher endorses.
    pub launch_measurement: String,
}

/// COSE header label of the certificate chain (RFC 9360).
const X5CHAIN: i64 = 33;
/// Certificates accepted in an x5chain: each costs a signature check, and any joiner can send one.
const X5CHAIN_MAX: usize = 8;
/// COSE header label of CWT claims (RFC 9597): `iss` is 1, `sub` (the feed) 2.
const CWT_CLAIMS: i64 = 15;

/// Verifies `cose` (a COSE Sign1 UVM endorsement, tagged or not) and that it endorses `measurement` (hex).
pub fn verify_uvm_endorsement(cose: &[u8], measurement: &str) -> Result<UvmEndorsement, AttestationError> {
    let malformed = |what: String| AttestationError::Malformed(format!("UVM endorsements: {what}"));
    let sign1 = coset::CoseSign1::from_tagged_slice(cose)
        .or_else(|_| coset::CoseSign1::from_slice(cose))
        .map_err(|e| malformed(format!("not COSE Sign1: {e}")))?;
    let header = &sign1.protected.header;
    let chain = x5chain(header).ok_or_else(|| malformed("no x5chain header".into()))?;
    if chain.len() > X5CHAIN_MAX {
        return Err(malformed(format!(
            "x5chain holds {} certificates, at most {X5CHAIN_MAX} are accepted",
            chain.len()
        )));
    }
    let certs: Vec<X509Certificate<'_>> = chain
        .iter()
        .map(|der| X509Certificate::from_der(der).map(|(_, c)| c))
        .collect::<Result<_, _>>()
        .map_err(|e| malformed(format!("x5chain certificate: {e}")))?;
    let leaf = certs.first().ok_or_else(|| malformed("empty x5chain".into()))?;
    for pair in certs.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .map_err(|e| AttestationError::Chain(format!("UVM endorsement x5chain is broken: {e:?}")))?;
    }
    let (iss, feed) = issuer_and_feed(header);
    let did = iss.ok_or_else(|| malformed("no issuer (iss)".into()))?;
    let feed = feed.ok_or_else(|| malformed("no feed".into()))?;
    resolve_did_x509(&did, &chain, leaf)?;
    let alg = match &header.alg {
        Some(RegisteredLabelWithPrivate::Assigned(alg)) => *alg,
        other => return Err(malformed(format!("unsupported algorithm {other:?}"))),
    };
    let key = leaf.public_key().subject_public_key.data.to_vec();
    sign1
        .verify_signature(b"", |sig, data| verify_cose_signature(alg, &key, sig, data))
        .map_err(|e| AttestationError::BadSignature(format!("UVM endorsement: {e}")))?;
    let payload: serde_json::Value = sign1
        .payload
        .as_deref()
        .map(serde_json::from_slice)
        .transpose()
        .map_err(|e| malformed(format!("payload is not JSON: {e}")))?
        .ok_or_else(|| malformed("no payload".into()))?;
    let endorsed = payload["x-ms-sevsnpvm-launchmeasurement"]
        .as_str()
        .ok_or_else(|| malformed("payload has no x-ms-sevsnpvm-launchmeasurement".into()))?
        .to_ascii_lowercase();
    let svn = match &payload["x-ms-sevsnpvm-guestsvn"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return Err(malformed("payload has no x-ms-sevsnpvm-guestsvn".into())),
    };
    if endorsed != measurement.to_ascii_lowercase() {
        return Err(AttestationError::Invalid(format!(
            "the UVM endorsement is for launch measurement {endorsed}, the report states {measurement}"
        )));
    }
    Ok(UvmEndorsement {
        did,
        feed,
        svn,
        launch_measurement: endorsed,
    })
}

/// A UVM endorsement as a file holds it: base64 text (Azure's `reference-info-base64`), else the COSE bytes
/// themselves.
pub fn uvm_endorsement_from_file(bytes: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&bytes);
    match base64::engine::general_purpose::STANDARD.decode(text.trim()) {
        Ok(decoded) => decoded,
        Err(_) => bytes,
    }
}

/// Whether `svn` is at least `minimum` (both decimal; anything else is not).
pub fn svn_at_least(svn: &str, minimum: &str) -> bool {
    matches!((svn.parse::<u64>(), minimum.parse::<u64>()), (Ok(s), Ok(m)) if s >= m)
}

fn x5chain(header: &coset::Header) -> Option<Vec<Vec<u8>>> {
    let value = header
        .rest
        .iter()
        .find(|(label, _)| *label == Label::Int(X5CHAIN))
        .map(|(_, v)| v)?;
    match value {
        ciborium::Value::Bytes(der) => Some(vec![der.clone()]),
        ciborium::Value::Array(items) => items
            .iter()
            .map(|i| i.as_bytes().cloned())
            .collect::<Option<Vec<_>>>(),
        _ => None,
    }
}

/// The issuer and the feed: text labels `iss` and `feed` (as Azure's UVM endorsements), or CWT claims.
fn issuer_and_feed(header: &coset::Header) -> (Option<String>, Option<String>) {
    let text = |name: &str| {
        header.rest.iter().find_map(|(label, v)| match label {
            Label::Text(t) if t == name => v.as_text().map(str::to_string),
            _ => None,
        })
    };
    let claim = |key: i64| {
        header.rest.iter().find_map(|(label, v)| match (label, v) {
            (Label::Int(CWT_CLAIMS), ciborium::Value::Map(m)) => m.iter().find_map(|(k, v)| {
                (k.as_integer() == Some(key.into()))
                    .then(|| v.as_text().map(str::to_string))
                    .flatten()
            }),
            _ => None,
        })
    };
    (
        text("iss").or_else(|| claim(1)),
        text("feed").or_else(|| claim(2)),
    )
}

/// Resolves `did:x509:0:sha256:<base64url fingerprint>::eku:<oid>` against the chain: a CA certificate in it (not
/// the leaf) has that fingerprint, and the leaf has that extended key usage.
fn resolve_did_x509(
    did: &str,
    chain: &[Vec<u8>],
    leaf: &X509Certificate<'_>,
) -> Result<(), AttestationError> {
    let bad = |why: &str| AttestationError::Chain(format!("UVM endorsement issuer {did}: {why}"));
    let rest = did
        .strip_prefix("did:x509:0:sha256:")
        .ok_or_else(|| bad("only did:x509:0:sha256 identities are supported"))?;
    let (fingerprint, policy) = rest
        .split_once("::")
        .ok_or_else(|| bad("no policy after the fingerprint"))?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let anchored = chain
        .iter()
        .skip(1)
        .any(|der| b64.encode(crate::hash::sha256(der)) == fingerprint);
    if !anchored {
        return Err(bad("no CA certificate in the x5chain has that fingerprint"));
    }
    let oid = policy
        .strip_prefix("eku:")
        .ok_or_else(|| bad("only the eku policy is supported"))?;
    let has_eku = leaf
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.other.iter().any(|o| o.to_id_string() == oid));
    if !has_eku {
        return Err(bad(&format!(
            "the signing certificate lacks extended key usage {oid}"
        )));
    }
    Ok(())
}

/// Checks a COSE signature with `key` (the leaf's subject public key: RSA PKCS#1 or an uncompressed EC point).
fn verify_cose_signature(
    alg: coset::iana::Algorithm,
    key: &[u8],
    sig: &[u8],
    data: &[u8],
) -> Result<(), String> {
    use coset::iana::Algorithm as A;
    use ring::signature as s;
    let algorithm: &dyn s::VerificationAlgorithm = match alg {
        A::PS256 => &s::RSA_PSS_2048_8192_SHA256,
        A::PS384 => &s::RSA_PSS_2048_8192_SHA384,
        A::PS512 => &s::RSA_PSS_2048_8192_SHA512,
        A::ES256 => &s::ECDSA_P256_SHA256_FIXED,
        A::ES384 => &s::ECDSA_P384_SHA384_FIXED,
        other => return Err(format!("unsupported algorithm {other:?}")),
    };
    s::UnparsedPublicKey::new(algorithm, key)
        .verify(data, sig)
        .map_err(|_| "signature does not verify with the x5chain leaf's key".to_string())
}
