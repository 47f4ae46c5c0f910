//! Signing keys of every identity Synod uses — service, nodes, members, users — on the curves CCF uses:
//! ECDSA secp384r1 (CCF's default, and Synod's), ECDSA secp256r1, and Ed25519.
//!
//! Two kinds of signature are made with them, as in CCF:
//! - **over a digest** ([`PrivateKey::sign_digest`]): a node's signature over a Merkle root. For ECDSA the 32
//!   root bytes are the prehashed message and the signature is DER, which is what `ccf.receipt.verify` checks
//!   (`ec.ECDSA(utils.Prehashed(hashes.SHA256()))`); Ed25519 signs the 32 bytes.
//! - **over a message** ([`PrivateKey::sign`]): COSE (`ES384`, `ES256`, `EdDSA`), where ECDSA hashes the message
//!   with the curve's hash and the signature is raw `r‖s` (RFC 9053).

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use p384::ecdsa::signature::hazmat::{PrehashSigner as _, PrehashVerifier as _};
use p384::ecdsa::signature::Signer as _;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::hash::Digest;
use crate::pem::CertError;

const OID_ED25519: &str = "1.3.101.112";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_SECP256R1: &str = "1.2.840.10045.3.1.7";
const OID_SECP384R1: &str = "1.3.132.0.34";
const OID_SECP521R1: &str = "1.3.132.0.35";
const OID_RSA: &str = "1.2.840.113549.1.1.1";

/// A readable name for an elliptic curve OID (`P-521`, ...), for "unsupported key" answers.
pub fn curve_name(oid: &str) -> String {
    match oid {
        OID_SECP256R1 => "P-256".into(),
        OID_SECP384R1 => "P-384".into(),
        OID_SECP521R1 => "P-521".into(),
        "" => "an unnamed curve".into(),
        other => format!("curve {other}"),
    }
}

/// A readable name for a public key algorithm OID (`RSA`, ...).
pub fn key_algorithm_name(oid: &str) -> String {
    match oid {
        OID_RSA => "RSA".into(),
        other => format!("key algorithm {other}"),
    }
}

/// A key's curve. CCF names them `Secp384R1` and `Secp256R1`; Synod's default is CCF's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Curve {
    /// ECDSA on NIST P-384 (secp384r1) with SHA-384 (COSE `ES384`).
    #[default]
    P384,
    /// ECDSA on NIST P-256 (secp256r1) with SHA-256 (COSE `ES256`).
    P256,
    /// EdDSA on Curve25519 (COSE `EdDSA`).
    Ed25519,
}

impl Curve {
    /// Every curve, default first.
    pub const ALL: [Curve; 3] = [Curve::P384, Curve::P256, Curve::Ed25519];

    /// The lower-case name used on command lines and in the service's info (`secp384r1`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Curve::P384 => "secp384r1",
            Curve::P256 => "secp256r1",
            Curve::Ed25519 => "ed25519",
        }
    }

    /// The certificate signature algorithm keys of this curve sign with.
    pub fn rcgen_alg(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Curve::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Curve::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Curve::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// The COSE algorithm of message signatures with this curve.
    pub fn cose_alg(self) -> coset::iana::Algorithm {
        match self {
            Curve::P384 => coset::iana::Algorithm::ES384,
            Curve::P256 => coset::iana::Algorithm::ES256,
            Curve::Ed25519 => coset::iana::Algorithm::EdDSA,
        }
    }

    /// The length of a raw (`r‖s` or Ed25519) message signature.
    pub fn raw_signature_len(self) -> usize {
        match self {
            Curve::P384 => 96,
            Curve::P256 | Curve::Ed25519 => 64,
        }
    }
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Curve {
    type Err = String;

    fn from_str(s: &str) -> Result<Curve, String> {
        match s.to_ascii_lowercase().replace('-', "").as_str() {
            "secp384r1" | "p384" => Ok(Curve::P384),
            "secp256r1" | "p256" | "prime256v1" => Ok(Curve::P256),
            "ed25519" => Ok(Curve::Ed25519),
            _ => Err(format!("unknown curve {s:?} (secp384r1, secp256r1 or ed25519)")),
        }
    }
}

/// A private key on one of the supported curves.
#[derive(Clone)]
pub enum PrivateKey {
    /// ECDSA P-384.
    P384(p384::ecdsa::SigningKey),
    /// ECDSA P-256.
    P256(p256::ecdsa::SigningKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::SigningKey),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, <secret>)", self.curve())
    }
}

fn key_err(e: impl fmt::Display) -> CertError {
    CertError::Key(e.to_string())
}

impl PrivateKey {
    /// Parses a PKCS#8 `PRIVATE KEY` PEM, or a SEC1 `EC PRIVATE KEY` PEM (what `openssl ecparam -genkey` and CCF's
    /// `keygenerator.sh` write; an `EC PARAMETERS` block before it is skipped).
    pub fn from_pem(pem: &str) -> Result<PrivateKey, CertError> {
        const BEGIN: &str = "-----BEGIN EC PRIVATE KEY-----";
        const END: &str = "-----END EC PRIVATE KEY-----";
        if let Some(start) = pem.find(BEGIN) {
            let end = pem[start..]
                .find(END)
                .ok_or_else(|| key_err("unterminated EC PRIVATE KEY block"))?;
            let block = &pem[start..start + end + END.len()];
            if let Ok(k) = p384::SecretKey::from_sec1_pem(block) {
                return Ok(PrivateKey::P384(k.into()));
            }
            if let Ok(k) = p256::SecretKey::from_sec1_pem(block) {
                return Ok(PrivateKey::P256(k.into()));
            }
            return Err(key_err("an EC PRIVATE KEY that is neither P-384 nor P-256"));
        }
        if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(PrivateKey::P384(k));
        }
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(PrivateKey::P256(k));
        }
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            return Ok(PrivateKey::Ed25519(k));
        }
        Err(key_err(
            "not a PKCS#8 or SEC1 PEM private key on secp384r1, secp256r1 or ed25519",
        ))
    }

    /// The key's curve.
    pub fn curve(&self) -> Curve {
        match self {
            PrivateKey::P384(_) => Curve::P384,
            PrivateKey::P256(_) => Curve::P256,
            PrivateKey::Ed25519(_) => Curve::Ed25519,
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            PrivateKey::P384(k) => PublicKey::P384(*k.verifying_key()),
            PrivateKey::P256(k) => PublicKey::P256(*k.verifying_key()),
            PrivateKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
        }
    }

    /// Signs a 32-byte digest (a Merkle root): ECDSA over the digest as prehash, DER-encoded; Ed25519 over the
    /// 32 bytes. Deterministic (RFC 6979 nonces for ECDSA).
    pub fn sign_digest(&self, digest: &Digest) -> Vec<u8> {
        match self {
            // A 32-byte prehash is at least half of either field size, which is all RFC 6979 needs.
            PrivateKey::P384(k) => p384_signature(k, digest).to_der().as_bytes().to_vec(),
            PrivateKey::P256(k) => match k.sign_prehash(digest) {
                Ok(sig) => {
                    let sig: p256::ecdsa::Signature = sig;
                    sig.to_der().as_bytes().to_vec()
                }
                Err(_) => unreachable!("a 32-byte prehash is accepted on P-256"),
            },
            PrivateKey::Ed25519(k) => ed25519_dalek::Signer::sign(k, digest).to_bytes().to_vec(),
        }
    }

    /// Signs a message as COSE does: ES384/ES256 (hash of the message, raw `r‖s`) or EdDSA. Deterministic.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            PrivateKey::P384(k) => {
                use sha2::Digest as _;
                p384_signature(k, &sha2::Sha384::digest(message))
                    .to_bytes()
                    .to_vec()
            }
            PrivateKey::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(message);
                sig.to_bytes().to_vec()
            }
            PrivateKey::Ed25519(k) => ed25519_dalek::Signer::sign(k, message).to_bytes().to_vec(),
        }
    }
}

/// ECDSA P-384 over a prehash (at least 32 bytes), through the precomputed tables (`p384_tables`), which make the
/// signature the `p384` crate would, three times faster.
fn p384_signature(k: &p384::ecdsa::SigningKey, prehash: &[u8]) -> p384::ecdsa::Signature {
    match crate::p384_tables::sign_prehash(k.as_nonzero_scalar(), prehash) {
        Some(sig) => sig,
        // Not reached (an RFC 6979 nonce is never zero, nor are r and s but with negligible odds): the crate's own
        // path decides then.
        None => match k.sign_prehash(prehash) {
            Ok(sig) => sig,
            Err(_) => unreachable!("a prehash of at least 32 bytes is accepted on P-384"),
        },
    }
}

/// A public key on one of the supported curves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// ECDSA P-384.
    P384(p384::ecdsa::VerifyingKey),
    /// ECDSA P-256.
    P256(p256::ecdsa::VerifyingKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::VerifyingKey),
}

fn bad_sig(what: &str) -> CertError {
    CertError::BadSignature(what.to_string())
}

impl PublicKey {
    /// The public key of a DER certificate.
    pub fn from_cert(cert_der: &[u8]) -> Result<PublicKey, CertError> {
        let (rest, cert) =
            X509Certificate::from_der(cert_der).map_err(|e| CertError::Parse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError::Parse("trailing bytes after certificate".into()));
        }
        let spki = cert.public_key();
        let raw = spki.subject_public_key.data.as_ref();
        match spki.algorithm.algorithm.to_id_string().as_str() {
            OID_ED25519 => {
                let raw: [u8; 32] = raw
                    .try_into()
                    .map_err(|_| key_err("an Ed25519 key is 32 bytes"))?;
                ed25519_dalek::VerifyingKey::from_bytes(&raw)
                    .map(PublicKey::Ed25519)
                    .map_err(key_err)
            }
            OID_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|oid| oid.to_id_string())
                    .unwrap_or_default();
                match curve.as_str() {
                    OID_SECP384R1 => p384::ecdsa::VerifyingKey::from_sec1_bytes(raw)
                        .map(PublicKey::P384)
                        .map_err(|_| key_err("the P-384 public key is not a curve point")),
                    OID_SECP256R1 => p256::ecdsa::VerifyingKey::from_sec1_bytes(raw)
                        .map(PublicKey::P256)
                        .map_err(|_| key_err("the P-256 public key is not a curve point")),
                    other => Err(CertError::UnsupportedKey(format!(
                        "ECDSA on {}",
                        curve_name(other)
                    ))),
                }
            }
            other => Err(CertError::UnsupportedKey(key_algorithm_name(other))),
        }
    }

    /// The key's curve.
    pub fn curve(&self) -> Curve {
        match self {
            PublicKey::P384(_) => Curve::P384,
            PublicKey::P256(_) => Curve::P256,
            PublicKey::Ed25519(_) => Curve::Ed25519,
        }
    }

    /// Verifies a [`PrivateKey::sign_digest`] signature: DER ECDSA over the digest as prehash, or Ed25519.
    pub fn verify_digest(&self, digest: &Digest, signature: &[u8]) -> Result<(), CertError> {
        if let PublicKey::Ed25519(k) = self {
            let sig = ed25519_dalek::Signature::from_slice(signature)
                .map_err(|_| bad_sig("an Ed25519 signature is 64 bytes"))?;
            return k
                .verify_strict(digest, &sig)
                .map_err(|_| bad_sig("signature mismatch"));
        }
        self.verify_prehash(digest, signature, false)
    }

    /// Verifies an ECDSA signature — raw `r‖s` (IEEE P1363, WebCrypto's) or DER — over a message already hashed
    /// (with any hash of at least half the field size). Ed25519 keys have no prehashed form: refused.
    pub fn verify_ecdsa_prehashed(&self, prehash: &[u8], signature: &[u8]) -> Result<(), CertError> {
        self.verify_prehash(prehash, signature, true)
    }

    /// ECDSA over a prehash; the signature DER, or also raw `r‖s` when `raw_too` (by its length).
    fn verify_prehash(&self, prehash: &[u8], signature: &[u8], raw_too: bool) -> Result<(), CertError> {
        let raw = raw_too && signature.len() == self.curve().raw_signature_len();
        let ok = match self {
            PublicKey::P384(k) => {
                let sig = if raw {
                    p384::ecdsa::Signature::from_slice(signature)
                } else {
                    p384::ecdsa::Signature::from_der(signature)
                }
                .map_err(|_| bad_sig("not an ECDSA P-384 signature"))?;
                crate::p384_tables::verify_prehash(k, prehash, &sig)
            }
            PublicKey::P256(k) => {
                let sig = if raw {
                    p256::ecdsa::Signature::from_slice(signature)
                } else {
                    p256::ecdsa::Signature::from_der(signature)
                }
                .map_err(|_| bad_sig("not an ECDSA P-256 signature"))?;
                k.verify_prehash(prehash, &sig).is_ok()
            }
            PublicKey::Ed25519(_) => return Err(bad_sig("an Ed25519 key does not verify ECDSA")),
        };
        ok.then_some(()).ok_or_else(|| bad_sig("signature mismatch"))
    }

    /// The public key of a PEM certificate or `PUBLIC KEY` (SubjectPublicKeyInfo) block.
    pub fn from_pem(pem: &str) -> Result<PublicKey, CertError> {
        use p384::pkcs8::DecodePublicKey as _;
        if pem.contains("-----BEGIN CERTIFICATE-----") {
            return PublicKey::from_cert(&crate::pem::pem_to_der(pem)?);
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::P384(k));
        }
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::P256(k));
        }
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::Ed25519(k));
        }
        Err(key_err(
            "not a PEM certificate or public key on secp384r1, secp256r1 or ed25519",
        ))
    }

    /// Verifies a [`PrivateKey::sign`] signature (COSE's raw `r‖s` for ECDSA). Every node checks the COSE
    /// signature of every signature transaction: P-384 goes through the precomputed tables (`p384_tables`), P-256
    /// through ring, both faster than RustCrypto.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), CertError> {
        use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
        if signature.len() != self.curve().raw_signature_len() {
            return Err(CertError::BadSignature(format!(
                "a {} signature is {} bytes, not {}",
                self.curve(),
                self.curve().raw_signature_len(),
                signature.len()
            )));
        }
        let ok = match self {
            PublicKey::P384(k) => {
                use sha2::Digest as _;
                let sig = p384::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| bad_sig("not an ECDSA P-384 signature"))?;
                crate::p384_tables::verify_prehash(k, &sha2::Sha384::digest(message), &sig)
            }
            PublicKey::P256(k) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, k.to_encoded_point(false))
                .verify(message, signature)
                .is_ok(),
            PublicKey::Ed25519(k) => {
                let sig = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| bad_sig("an Ed25519 signature is 64 bytes"))?;
                k.verify_strict(message, &sig).is_ok()
            }
        };
        ok.then_some(()).ok_or_else(|| bad_sig("signature mismatch"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(curve: Curve) -> (PrivateKey, Vec<u8>) {
        let id = crate::cert::generate_self_signed_with(curve, "k", false).unwrap();
        let der = crate::cert::pem_to_der(&id.cert_pem).unwrap();
        (PrivateKey::from_pem(&id.key_pem).unwrap(), der)
    }

    #[test]
    fn every_curve_signs_and_verifies_both_kinds_and_refuses_changes() {
        for curve in Curve::ALL {
            let (sk, der) = key(curve);
            assert_eq!(sk.curve(), curve);
            let pk = PublicKey::from_cert(&der).unwrap();
            assert_eq!(pk, sk.public_key());
            let digest = [9u8; 32];
            let sig = sk.sign_digest(&digest);
            pk.verify_digest(&digest, &sig).unwrap();
            assert_eq!(sig, sk.sign_digest(&digest), "{curve}: deterministic");
            assert!(pk.verify_digest(&[8u8; 32], &sig).is_err(), "{curve}");
            let sig = sk.sign(b"message");
            assert_eq!(sig.len(), curve.raw_signature_len());
            pk.verify(b"message", &sig).unwrap();
            assert!(pk.verify(b"messagf", &sig).is_err(), "{curve}");
            let mut bad = sig.clone();
            bad[5] ^= 1;
            assert!(pk.verify(b"message", &bad).is_err(), "{curve}");
            assert!(pk.verify(b"message", &sig[1..]).is_err(), "{curve}");
            // The other curves' keys do not verify it.
            for other in Curve::ALL.into_iter().filter(|c| *c != curve) {
                let (_, other_der) = key(other);
                let other_pk = PublicKey::from_cert(&other_der).unwrap();
                assert!(other_pk.verify(b"message", &sig).is_err());
            }
        }
    }

    #[test]
    fn curve_names_parse() {
        for curve in Curve::ALL {
            assert_eq!(curve.as_str().parse::<Curve>().unwrap(), curve);
        }
        assert_eq!("P-384".parse::<Curve>().unwrap(), Curve::P384);
        assert_eq!("Secp256R1".parse::<Curve>().unwrap(), Curve::P256);
        assert!("secp521r1".parse::<Curve>().is_err());
        assert_eq!(Curve::default(), Curve::P384);
    }

    #[test]
    fn sec1_keys_parse_and_garbage_is_refused() {
        let p384 = p384::SecretKey::from_slice(&[7u8; 48]).unwrap();
        let pem = p384.to_sec1_pem(Default::default()).unwrap();
        let with_params = format!(
            "-----BEGIN EC PARAMETERS-----\nBgUrgQQAIg==\n-----END EC PARAMETERS-----\n{}",
            *pem
        );
        assert_eq!(PrivateKey::from_pem(&with_params).unwrap().curve(), Curve::P384);
        let p256 = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let pem = p256.to_sec1_pem(Default::default()).unwrap();
        assert_eq!(PrivateKey::from_pem(&pem).unwrap().curve(), Curve::P256);
        assert!(PrivateKey::from_pem("garbage").is_err());
        assert!(PublicKey::from_cert(b"garbage").is_err());
    }
}
