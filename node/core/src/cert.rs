//! Identities: generating the service identity, node certificates endorsed by it and user/member certificates,
//! on any [`Curve`] (ECDSA secp384r1 by default, as CCF), and the checks a verifier needs (endorsement, key
//! extraction, ids).

use std::net::IpAddr;

use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::SigningKey;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::hash::sha256;

pub use crate::keys::{Curve, PrivateKey, PublicKey};
pub use crate::pem::{pem_to_der, CertError};

/// A certificate and its private key, both PEM (the key is PKCS#8 "PRIVATE KEY").
#[derive(Clone, Debug)]
pub struct Identity {
    /// Certificate PEM.
    pub cert_pem: String,
    /// PKCS#8 private key PEM.
    pub key_pem: String,
}

/// The certificate signature algorithms an endorsement may use (what the supported curves sign with), as their
/// one DER encoding. RSA and SHA-1 are refused before any check. The outer algorithm identifier of a certificate
/// is not covered by its signature, and x509-parser reads some altered encodings of it as the same algorithm: so
/// its bytes are compared exactly, and a certificate (a receipt's) with any byte changed is refused.
const ENDORSEMENT_ALGS: [&[u8]; 3] = [
    // Ed25519
    &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70],
    // ecdsa-with-SHA256
    &[
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
    ],
    // ecdsa-with-SHA384
    &[
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
    ],
];

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

/// A self-signed certificate on the default curve (secp384r1): the service identity (`is_ca`) or a user/member
/// identity.
pub fn generate_self_signed(common_name: &str, is_ca: bool) -> Result<Identity, CertError> {
    generate_self_signed_with(Curve::default(), common_name, is_ca)
}

/// [`generate_self_signed`] on `curve`.
pub fn generate_self_signed_with(
    curve: Curve,
    common_name: &str,
    is_ca: bool,
) -> Result<Identity, CertError> {
    let key = KeyPair::generate_for(curve.rcgen_alg()).map_err(gen_err)?;
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

/// A service identity's certificate parameters: a CA that signs node certificates.
fn ca_params(common_name: &str) -> Result<CertificateParams, CertError> {
    let mut params = named_params(common_name, vec![])?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn self_signed_with(common_name: &str, is_ca: bool, key: KeyPair) -> Result<Identity, CertError> {
    let params = if is_ca {
        ca_params(common_name)?
    } else {
        named_params(common_name, vec![])?
    };
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(Identity {
        cert_pem: cert.pem(),
        key_pem: key_pem(&key),
    })
}

/// A node's TLS certificate (key on the default curve) signed by the service identity, valid for the given IPs
/// and DNS names.
pub fn generate_endorsed(
    common_name: &str,
    san_ips: &[IpAddr],
    san_dns: &[String],
    issuer: &Identity,
) -> Result<Identity, CertError> {
    generate_endorsed_with(Curve::default(), common_name, san_ips, san_dns, issuer)
}

/// [`generate_endorsed`] with a key on `curve`.
pub fn generate_endorsed_with(
    curve: Curve,
    common_name: &str,
    san_ips: &[IpAddr],
    san_dns: &[String],
    issuer: &Identity,
) -> Result<Identity, CertError> {
    let key = KeyPair::generate_for(curve.rcgen_alg()).map_err(gen_err)?;
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
    endorse_public_key_with(subject_cert_der, common_name, san_ips, san_dns, issuer, None)
}

/// [`endorse_public_key`] valid for `validity` (`None`: rcgen's default, without a practical end).
pub fn endorse_public_key_with(
    subject_cert_der: &[u8],
    common_name: &str,
    san_ips: &[IpAddr],
    san_dns: &[String],
    issuer: &Identity,
    validity: Option<Validity>,
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
    if let Some(v) = validity {
        v.apply(&mut params)?;
    }
    Ok(params.signed_by(&spki, &issuer).map_err(gen_err)?.pem())
}

/// How long a certificate is valid: `days` days from `not_before` (seconds since the epoch). CCF's
/// `validity_period_days` and `valid_from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start, in seconds since the epoch.
    pub not_before: i64,
    /// Length in days (at least 1).
    pub days: u32,
}

impl Validity {
    /// The last second of validity.
    pub fn not_after(&self) -> i64 {
        self.not_before + i64::from(self.days) * 86_400 - 1
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), CertError> {
        let at = |secs: i64| {
            time::OffsetDateTime::from_unix_timestamp(secs)
                .map_err(|e| CertError::Generate(format!("validity out of range: {e}")))
        };
        params.not_before = at(self.not_before)?;
        params.not_after = at(self.not_after())?;
        Ok(())
    }
}

/// A certificate's validity window, `(not_before, not_after)` in seconds since the epoch.
pub fn validity_of(cert_der: &[u8]) -> Result<(i64, i64), CertError> {
    let cert = parse(cert_der)?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// `current_cert_der` (a node certificate the service endorsed: same key, subject and names) endorsed again by
/// `issuer` for `validity`: how governance renews a node certificate without the node's key.
pub fn renew_endorsed(
    current_cert_der: &[u8],
    issuer: &Identity,
    validity: Validity,
) -> Result<String, CertError> {
    let current = parse(current_cert_der)?;
    let spki = rcgen::SubjectPublicKeyInfo::from_der(current.public_key().raw).map_err(gen_err)?;
    let (common_name, ips, dns) = names_of(&current);
    let mut params = named_params(&common_name, dns)?;
    params
        .subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity.apply(&mut params)?;
    let issuer_key = KeyPair::from_pem(&issuer.key_pem).map_err(|e| CertError::Key(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(&issuer.cert_pem, issuer_key).map_err(gen_err)?;
    Ok(params.signed_by(&spki, &issuer).map_err(gen_err)?.pem())
}

/// The service identity's certificate made again for `validity`: same key and subject, so everything it endorsed
/// (nodes, receipts) still verifies against either certificate.
pub fn renew_self_signed(identity: &Identity, validity: Validity) -> Result<String, CertError> {
    let key = KeyPair::from_pem(&identity.key_pem).map_err(|e| CertError::Key(e.to_string()))?;
    let der = pem_to_der(&identity.cert_pem)?;
    let current = parse(&der)?;
    let (common_name, _, _) = names_of(&current);
    let mut params = ca_params(&common_name)?;
    validity.apply(&mut params)?;
    let renewed = params.self_signed(&key).map_err(gen_err)?;
    // What it endorsed chains to it only if the subject is the same, byte for byte.
    if parse(renewed.der())?.subject().as_raw() != current.subject().as_raw() {
        return Err(CertError::Generate(
            "the renewed service certificate would not have the same subject".into(),
        ));
    }
    Ok(renewed.pem())
}

/// A certificate's common name, IP addresses and DNS names.
fn names_of(cert: &X509Certificate<'_>) -> (String, Vec<IpAddr>, Vec<String>) {
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut ips = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default())),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default())),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    (common_name, ips, dns)
}

/// Whether two certificates carry the same public key.
pub fn same_public_key(a_der: &[u8], b_der: &[u8]) -> Result<bool, CertError> {
    Ok(parse(a_der)?.public_key().raw == parse(b_der)?.public_key().raw)
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

/// The public key of a certificate, on whichever supported curve.
pub fn public_key(cert_der: &[u8]) -> Result<PublicKey, CertError> {
    PublicKey::from_cert(cert_der)
}

/// The curve of a certificate's key.
pub fn curve_of(cert_pem: &str) -> Result<Curve, CertError> {
    Ok(public_key(&pem_to_der(cert_pem)?)?.curve())
}

/// Parses a PEM private key (PKCS#8, or SEC1 for ECDSA) on any supported curve.
pub fn signing_key_from_pem(key_pem: &str) -> Result<PrivateKey, CertError> {
    PrivateKey::from_pem(key_pem)
}

/// How many (issuer, certificate) pairs [`verify_endorsement`] remembers as verified.
const ENDORSED_CACHE: usize = 16;

/// Pairs found endorsed, most recent last: every node checks the endorsement of each signature's node certificate,
/// and a primary signs hundreds of times a second with the same one. An ECDSA P-384 check costs about 1 ms, so it is
/// made once per pair. Keyed by a digest of both DERs: a hit means these exact bytes verified before.
static ENDORSED: std::sync::Mutex<std::collections::VecDeque<crate::hash::Digest>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

fn endorsement_key(cert_der: &[u8], issuer_der: &[u8]) -> crate::hash::Digest {
    let mut bytes = Vec::with_capacity(8 + cert_der.len() + issuer_der.len());
    bytes.extend_from_slice(&(cert_der.len() as u64).to_le_bytes());
    bytes.extend_from_slice(cert_der);
    bytes.extend_from_slice(issuer_der);
    sha256(&bytes)
}

/// Checks that `cert_der` was signed by the key of `issuer_der` and names it as issuer. No clock check: receipts
/// must stay verifiable after certificates expire.
pub fn verify_endorsement(cert_der: &[u8], issuer_der: &[u8]) -> Result<(), CertError> {
    let key = endorsement_key(cert_der, issuer_der);
    if endorsed_cache().contains(&key) {
        return Ok(());
    }
    check_endorsement(cert_der, issuer_der)?;
    let mut cache = endorsed_cache();
    if cache.len() == ENDORSED_CACHE {
        cache.pop_front();
    }
    cache.push_back(key);
    Ok(())
}

/// A poisoned lock only means another thread panicked while updating the cache, which stays consistent.
fn endorsed_cache() -> std::sync::MutexGuard<'static, std::collections::VecDeque<crate::hash::Digest>> {
    ENDORSED.lock().unwrap_or_else(|p| p.into_inner())
}

fn check_endorsement(cert_der: &[u8], issuer_der: &[u8]) -> Result<(), CertError> {
    let cert = parse(cert_der)?;
    let issuer = parse(issuer_der)?;
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(CertError::NotEndorsed("issuer name does not match".into()));
    }
    // The tbs is a subslice of `cert_der`: the outer algorithm identifier follows it.
    let tbs = cert.tbs_certificate.as_ref();
    let after_tbs = (tbs.as_ptr() as usize - cert_der.as_ptr() as usize) + tbs.len();
    let outer_alg = cert_der.get(after_tbs..).unwrap_or_default();
    if !ENDORSEMENT_ALGS.iter().any(|enc| outer_alg.starts_with(enc))
        || cert.signature_algorithm.algorithm != cert.tbs_certificate.signature.algorithm
    {
        return Err(CertError::NotEndorsed(format!(
            "signature algorithm {} is not ECDSA with SHA-256/384 or Ed25519, in its DER encoding",
            cert.signature_algorithm.algorithm
        )));
    }
    cert.verify_signature(Some(issuer.public_key()))
        .map_err(|e| CertError::NotEndorsed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewed_certificates_keep_keys_names_and_endorsements_with_the_new_validity() {
        let service = generate_self_signed("Synod service", true).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let node = generate_endorsed("n0", &[ip], &["node0.example".into()], &service).unwrap();
        let node_der = pem_to_der(&node.cert_pem).unwrap();
        let validity = Validity {
            not_before: 1_900_000_000,
            days: 30,
        };
        let renewed = pem_to_der(&renew_endorsed(&node_der, &service, validity).unwrap()).unwrap();
        assert!(same_public_key(&renewed, &node_der).unwrap());
        assert_eq!(
            validity_of(&renewed).unwrap(),
            (1_900_000_000, validity.not_after())
        );
        assert_eq!(
            names_of(&parse(&renewed).unwrap()),
            names_of(&parse(&node_der).unwrap())
        );
        let service_der = pem_to_der(&service.cert_pem).unwrap();
        verify_endorsement(&renewed, &service_der).unwrap();
        // A renewed service certificate: same key and subject, so old and new endorsements verify against either.
        let service2 = renew_self_signed(&service, validity).unwrap();
        let service2_der = pem_to_der(&service2).unwrap();
        assert_ne!(service2_der, service_der);
        assert!(same_public_key(&service2_der, &service_der).unwrap());
        verify_endorsement(&node_der, &service2_der).unwrap();
        verify_endorsement(&renewed, &service2_der).unwrap();
        assert_eq!(validity_of(&service2_der).unwrap().1, validity.not_after());
    }

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

        // Any change breaks the endorsement (or the parse), the unsigned algorithm identifier included.
        for i in (20..node_der.len()).step_by(3) {
            let mut bad = node_der.clone();
            bad[i] ^= 0x01;
            assert!(verify_endorsement(&bad, &service_der).is_err(), "byte {i}");
        }

        let key = signing_key_from_pem(&node.key_pem).unwrap();
        assert_eq!(key.curve(), Curve::P384, "CCF's curve by default");
        public_key(&node_der)
            .unwrap()
            .verify(b"m", &key.sign(b"m"))
            .unwrap();
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
        let id = generate_self_signed_with(Curve::Ed25519, "user", false).unwrap();
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
        let pk = public_key(&pem_to_der(&id.cert_pem).unwrap()).unwrap();
        pk.verify(b"m", &key.sign(b"m")).unwrap();
        // rcgen (and so ring, which rustls uses) loads it back as the same key.
        let reloaded = KeyPair::from_pem(&id.key_pem).unwrap();
        let PublicKey::Ed25519(vk) = pk else {
            panic!("an Ed25519 key")
        };
        assert_eq!(reloaded.public_key_raw(), vk.as_bytes());
    }
}
