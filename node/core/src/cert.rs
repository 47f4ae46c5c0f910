//! Ed25519 identities: generating the service identity, node certificates endorsed by it and user/member
//! certificates, and the checks a verifier needs (endorsement, key extraction, ids).

use std::net::IpAddr;

use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::hash::sha256;

/// A certificate and its private key, both PEM (the key is PKCS#8 "PRIVATE KEY").
#[derive(Clone, Debug)]
pub struct Identity {
    /// Certificate PEM.
    pub cert_pem: String,
    /// PKCS#8 private key PEM.
    pub key_pem: String,
}

/// Certificate and key errors.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen could not build the certificate.
    #[error("cannot generate certificate: {0}")]
    Generate(String),
    /// Not PEM, or no CERTIFICATE block.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// DER that is not an X.509 certificate.
    #[error("invalid certificate: {0}")]
    Parse(String),
    /// A key that is not Ed25519 or does not parse.
    #[error("invalid key: {0}")]
    Key(String),
    /// The endorsement signature does not verify.
    #[error("certificate is not endorsed by the given issuer: {0}")]
    NotEndorsed(String),
}

const ED25519_OID: &str = "1.3.101.112";

fn gen_err(e: rcgen::Error) -> CertError {
    CertError::Generate(e.to_string())
}

fn named_params(common_name: &str, dns: Vec<String>) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(dns).map_err(gen_err)?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    Ok(params)
}

/// RFC 8410 PKCS#8 v1 prefix of an Ed25519 private key: the 32-byte seed follows.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The PKCS#8 PEM ("PRIVATE KEY") of `key`. Ed25519 keys are written as v1 documents (the seed alone): ring writes
/// v2 (with the public key), which OpenSSL 3.0 — and so Debian 12's curl — refuses to load. Every reader here
/// (rustls, ring, ed25519-dalek, rcgen) takes both.
pub fn key_pem(key: &KeyPair) -> String {
    let Ok(signing) = SigningKey::from_pkcs8_der(key.serialized_der()) else {
        return key.serialize_pem(); // not Ed25519: ring's encoding is the standard one
    };
    ed25519_seed_pem(&signing.to_bytes())
}

/// The PKCS#8 v1 PEM of the Ed25519 key whose seed is `seed`.
fn ed25519_seed_pem(seed: &[u8; 32]) -> String {
    let mut der = ED25519_PKCS8_V1_PREFIX.to_vec();
    der.extend_from_slice(seed);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// The Ed25519 key whose seed is `seed` (deterministic identities for seeded simulations).
fn key_from_seed(seed: &[u8; 32]) -> Result<KeyPair, CertError> {
    KeyPair::from_pem(&ed25519_seed_pem(seed)).map_err(|e| CertError::Key(e.to_string()))
}

/// A self-signed Ed25519 certificate: the service identity (`is_ca`) or a user/member identity.
pub fn generate_self_signed(common_name: &str, is_ca: bool) -> Result<Identity, CertError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(gen_err)?;
    self_signed_with(common_name, is_ca, key)
}

/// [`generate_self_signed`] with the key of `seed`: the same seed gives the same key and so the same id.
pub fn generate_self_signed_from_seed(
    common_name: &str,
    is_ca: bool,
    seed: &[u8; 32],
) -> Result<Identity, CertError> {
    self_signed_with(common_name, is_ca, key_from_seed(seed)?)
}

fn self_signed_with(common_name: &str, is_ca: bool, key: KeyPair) -> Result<Identity, CertError> {
    let mut params = named_params(common_name, vec![])?;
    if is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    }
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(Identity {
        cert_pem: cert.pem(),
        key_pem: key_pem(&key),
    })
}

/// A node's TLS certificate signed by the service identity, valid for the given IPs and DNS names.
pub fn generate_endorsed(
    common_name: &str,
    san_ips: &[IpAddr],
    san_dns: &[String],
    issuer: &Identity,
) -> Result<Identity, CertError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(gen_err)?;
    endorsed_with(common_name, san_ips, san_dns, issuer, key)
}

/// [`generate_endorsed`] with the key of `seed`: the same seed gives the same key and so the same node id.
pub fn generate_endorsed_from_seed(
    common_name: &str,
    san_ips: &[IpAddr],
    san_dns: &[String],
    issuer: &Identity,
    seed: &[u8; 32],
) -> Result<Identity, CertError> {
    endorsed_with(common_name, san_ips, san_dns, issuer, key_from_seed(seed)?)
}

fn endorsed_with(
    common_name: &str,
    san_ips: &[IpAddr],
    san_dns: &[String],
    issuer: &Identity,
    key: KeyPair,
) -> Result<Identity, CertError> {
    let issuer_key = KeyPair::from_pem(&issuer.key_pem).map_err(|e| CertError::Key(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(&issuer.cert_pem, issuer_key).map_err(gen_err)?;
    let mut params = named_params(common_name, san_dns.to_vec())?;
    params
        .subject_alt_names
        .extend(san_ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
    Ok(Identity {
        cert_pem: cert.pem(),
        key_pem: key_pem(&key),
    })
}

/// A certificate for the public key of `subject_cert_der` (typically a joining node's self-signed certificate),
/// signed by `issuer`: how the service endorses a node that proved it holds that key.
pub fn endorse_public_key(
    subject_cert_der: &[u8],
    common_name: &str,
    san_ips: &[IpAddr],
    san_dns: &[String],
    issuer: &Identity,
) -> Result<String, CertError> {
    let subject = parse(subject_cert_der)?;
    let spki = rcgen::SubjectPublicKeyInfo::from_der(subject.public_key().raw).map_err(gen_err)?;
    let issuer_key = KeyPair::from_pem(&issuer.key_pem).map_err(|e| CertError::Key(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(&issuer.cert_pem, issuer_key).map_err(gen_err)?;
    let mut params = named_params(common_name, san_dns.to_vec())?;
    params
        .subject_alt_names
        .extend(san_ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(params.signed_by(&spki, &issuer).map_err(gen_err)?.pem())
}

/// Whether two certificates carry the same public key.
pub fn same_public_key(a_der: &[u8], b_der: &[u8]) -> Result<bool, CertError> {
    Ok(parse(a_der)?.public_key().raw == parse(b_der)?.public_key().raw)
}

/// The DER of the first CERTIFICATE block in `pem`.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, CertError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem
        .find(BEGIN)
        .ok_or_else(|| CertError::Pem("no CERTIFICATE block".into()))?
        + BEGIN.len();
    let len = pem[start..]
        .find(END)
        .ok_or_else(|| CertError::Pem("unterminated CERTIFICATE block".into()))?;
    let b64: String = pem[start..start + len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| CertError::Pem(e.to_string()))
}

/// PEM-encodes a certificate.
pub fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::Parse("trailing bytes after certificate".into()));
    }
    Ok(cert)
}

/// Hex SHA-256 of the certificate DER: how users and members are identified (as in CCF).
pub fn cert_fingerprint_hex(cert_der: &[u8]) -> String {
    hex::encode(sha256(cert_der))
}

/// SHA-256 of the certificate's SubjectPublicKeyInfo DER: what attestation evidence binds.
pub fn public_key_id(cert_der: &[u8]) -> Result<crate::hash::Digest, CertError> {
    Ok(sha256(parse(cert_der)?.public_key().raw))
}

/// [`public_key_id`] in hex: how nodes are identified.
pub fn public_key_id_hex(cert_der: &[u8]) -> Result<String, CertError> {
    Ok(hex::encode(public_key_id(cert_der)?))
}

/// The Ed25519 public key of a certificate.
pub fn ed25519_verifying_key(cert_der: &[u8]) -> Result<VerifyingKey, CertError> {
    let cert = parse(cert_der)?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != ED25519_OID {
        return Err(CertError::Key(format!(
            "not an Ed25519 key ({})",
            spki.algorithm.algorithm
        )));
    }
    let raw: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CertError::Key("bad Ed25519 key length".into()))?;
    VerifyingKey::from_bytes(&raw).map_err(|e| CertError::Key(e.to_string()))
}

/// Parses a PKCS#8 PEM Ed25519 private key.
pub fn signing_key_from_pem(key_pem: &str) -> Result<SigningKey, CertError> {
    SigningKey::from_pkcs8_pem(key_pem).map_err(|e| CertError::Key(e.to_string()))
}

/// Checks that `cert_der` was signed by the Ed25519 key of `issuer_der` and names it as issuer. No clock check:
/// receipts must stay verifiable after certificates expire.
pub fn verify_endorsement(cert_der: &[u8], issuer_der: &[u8]) -> Result<(), CertError> {
    let cert = parse(cert_der)?;
    let issuer = parse(issuer_der)?;
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(CertError::NotEndorsed("issuer name does not match".into()));
    }
    if cert.signature_algorithm.algorithm.to_id_string() != ED25519_OID {
        return Err(CertError::NotEndorsed(
            "signature algorithm is not Ed25519".into(),
        ));
    }
    let key = ed25519_verifying_key(issuer_der)?;
    let sig = Signature::from_slice(cert.signature_value.data.as_ref())
        .map_err(|e| CertError::NotEndorsed(e.to_string()))?;
    key.verify_strict(cert.tbs_certificate.as_ref(), &sig)
        .map_err(|e| CertError::NotEndorsed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;

    #[test]
    fn identities_from_the_same_seed_have_the_same_key() {
        let service = generate_self_signed_from_seed("service", true, &[1; 32]).unwrap();
        let a = generate_endorsed_from_seed("a", &[], &[], &service, &[2; 32]).unwrap();
        let b = generate_endorsed_from_seed("a", &[], &[], &service, &[2; 32]).unwrap();
        let id = |i: &Identity| public_key_id_hex(&pem_to_der(&i.cert_pem).unwrap()).unwrap();
        assert_eq!(id(&a), id(&b));
        assert_eq!(a.key_pem, b.key_pem);
        let c = generate_endorsed_from_seed("a", &[], &[], &service, &[3; 32]).unwrap();
        assert_ne!(id(&a), id(&c));
        verify_endorsement(
            &pem_to_der(&a.cert_pem).unwrap(),
            &pem_to_der(&service.cert_pem).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn endorse_and_verify() {
        let service = generate_self_signed("service", true).unwrap();
        let node = generate_endorsed(
            "n0",
            &["127.0.0.1".parse().unwrap()],
            &["localhost".into()],
            &service,
        )
        .unwrap();
        let service_der = pem_to_der(&service.cert_pem).unwrap();
        let node_der = pem_to_der(&node.cert_pem).unwrap();
        verify_endorsement(&node_der, &service_der).unwrap();
        assert!(
            verify_endorsement(&service_der, &service_der).is_ok(),
            "self-signed verifies against itself"
        );
        let other = generate_self_signed("service", true).unwrap();
        assert!(verify_endorsement(&node_der, &pem_to_der(&other.cert_pem).unwrap()).is_err());

        // Any change to the signed part breaks the endorsement (or the parse).
        for i in (20..node_der.len() - 70).step_by(7) {
            let mut bad = node_der.clone();
            bad[i] ^= 0x01;
            assert!(verify_endorsement(&bad, &service_der).is_err(), "byte {i}");
        }

        let key = signing_key_from_pem(&node.key_pem).unwrap();
        let vk = ed25519_verifying_key(&node_der).unwrap();
        vk.verify_strict(b"m", &key.sign(b"m")).unwrap();
        assert_eq!(pem_to_der(&der_to_pem(&node_der)).unwrap(), node_der);
        assert_eq!(cert_fingerprint_hex(&node_der).len(), 64);
        assert_ne!(
            public_key_id_hex(&node_der).unwrap(),
            public_key_id_hex(&service_der).unwrap()
        );
        assert!(pem_to_der("garbage").is_err());

        // A joining node's own key, endorsed by the service.
        let joiner = generate_self_signed("joiner", false).unwrap();
        let joiner_der = pem_to_der(&joiner.cert_pem).unwrap();
        let endorsed =
            endorse_public_key(&joiner_der, "n1", &["127.0.0.1".parse().unwrap()], &[], &service).unwrap();
        let endorsed_der = pem_to_der(&endorsed).unwrap();
        verify_endorsement(&endorsed_der, &service_der).unwrap();
        assert!(same_public_key(&endorsed_der, &joiner_der).unwrap());
        assert_eq!(
            public_key_id_hex(&endorsed_der).unwrap(),
            public_key_id_hex(&joiner_der).unwrap()
        );
        assert!(!same_public_key(&endorsed_der, &node_der).unwrap());
        assert!(signing_key_from_pem("garbage").is_err());
    }

    #[test]
    fn ed25519_keys_are_written_as_pkcs8_v1_and_still_sign_for_their_certificate() {
        let id = generate_self_signed("user", false).unwrap();
        let der = base64::engine::general_purpose::STANDARD
            .decode(
                id.key_pem
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        assert_eq!(der.len(), 48, "version 0, algorithm, seed: no public key");
        assert_eq!(der[..16], ED25519_PKCS8_V1_PREFIX);
        let key = signing_key_from_pem(&id.key_pem).unwrap();
        let vk = ed25519_verifying_key(&pem_to_der(&id.cert_pem).unwrap()).unwrap();
        vk.verify_strict(b"m", &key.sign(b"m")).unwrap();
        // rcgen (and so ring, which rustls uses) loads it back as the same key.
        let reloaded = KeyPair::from_pem(&id.key_pem).unwrap();
        assert_eq!(reloaded.public_key_raw(), vk.as_bytes());
    }
}
