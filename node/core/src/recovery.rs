//! The cryptography of disaster recovery, as in CCF: a secret (the key that wraps the ledger secret) is split into
//! Shamir shares, each share is encrypted to one member's RSA encryption key, and a quorum of members later decrypts
//! and submits their shares so the secret can be reconstructed.
//!
//! - **Members' encryption keys are RSA-OAEP with SHA-256** (MGF1-SHA-256, empty label), because that is what CCF's
//!   member encryption keys are and what its `submit_recovery_share.sh` decrypts with
//!   (`openssl pkeyutl -decrypt -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256`): a member can use the
//!   same key, and the same tooling, with Synod and CCF.
//! - **Shamir secret sharing over GF(2^8)**, byte by byte (AES polynomial, as in `sharks` and HashiCorp Vault). Any
//!   `threshold` shares give the secret back; fewer give an unrelated value, and so do wrong or corrupted shares:
//!   interpolation cannot tell. The reconstructed secret is therefore only trusted once [`unwrap`] has
//!   authenticated something wrapped under it (AES-256-GCM); that failure is how "these shares do not reconstruct
//!   the key" is detected.
//! - RSA decryption in the `rsa` crate is not constant-time (RUSTSEC-2023-0071, the Marvin attack): timing can leak
//!   the private key to someone who can submit many chosen ciphertexts and time the decryptions. This is acceptable
//!   here because decryption only runs on a member's own machine, in the governance CLI, on shares the member
//!   fetched; a node only ever encrypts (public-key operations), so no service offers a decryption oracle.

use std::fmt;

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::der::zeroize::Zeroizing;
use rsa::pkcs8::der::{Decode as _, Document, SecretDocument};
use rsa::pkcs8::{
    EncodePrivateKey as _, EncodePublicKey as _, LineEnding, PrivateKeyInfo, SubjectPublicKeyInfoRef,
};
use rsa::rand_core::OsRng;
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

/// The size of the encryption keys [`generate_encryption_key`] makes (CCF's default).
pub const ENCRYPTION_KEY_BITS: usize = 2048;

/// The smallest RSA key accepted as a member's encryption key.
pub const ENCRYPTION_KEY_BITS_MIN: usize = 2048;

/// The largest RSA key accepted as a member's encryption key (OpenSSL's limit).
pub const ENCRYPTION_KEY_BITS_MAX: usize = 16384;

/// SHA-256 output length, which fixes the OAEP overhead.
const OAEP_HASH_LEN: usize = 32;

/// AES-GCM nonce length, prepended to wrapped data.
const NONCE_LEN: usize = 12;

/// AES-GCM tag length, appended to the ciphertext.
const TAG_LEN: usize = 16;

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_RSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_X25519: &str = "1.3.101.110";
const OID_X448: &str = "1.3.101.111";
const OID_ED25519: &str = "1.3.101.112";
const OID_ED448: &str = "1.3.101.113";

/// Errors of recovery key handling, secret sharing and wrapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    /// The operating system's random number generator failed.
    #[error("cannot get random bytes: {0}")]
    Random(#[from] getrandom::Error),
    /// RSA key generation or encoding failed.
    #[error("cannot generate an encryption key: {0}")]
    KeyGeneration(String),
    /// No PEM block, or one that does not decode.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// A PEM block of another kind than a key of the expected sort (a certificate, ...).
    #[error("expected {expected} PEM, found a {found:?} block")]
    UnexpectedPem {
        /// The labels that would have been accepted.
        expected: &'static str,
        /// The label found.
        found: String,
    },
    /// A passphrase-protected private key.
    #[error("the private key is encrypted with a passphrase: decrypt it first (openssl pkey -in key.pem -out plain.pem)")]
    EncryptedPrivateKey,
    /// A key of another algorithm than RSA.
    #[error("not an RSA key but {0}: member encryption keys are RSA (RSA-OAEP with SHA-256)")]
    NotRsa(String),
    /// An RSA key whose encoding does not parse or whose numbers are inconsistent.
    #[error("invalid RSA key: {0}")]
    InvalidKey(String),
    /// An RSA key smaller than [`ENCRYPTION_KEY_BITS_MIN`].
    #[error("RSA key of {bits} bits is too small: encryption keys must have at least {min} bits")]
    KeyTooSmall {
        /// The key's modulus size.
        bits: usize,
        /// The minimum.
        min: usize,
    },
    /// An RSA key larger than [`ENCRYPTION_KEY_BITS_MAX`].
    #[error("RSA key of {bits} bits is too large: encryption keys may have at most {max} bits")]
    KeyTooLarge {
        /// The key's modulus size.
        bits: usize,
        /// The maximum.
        max: usize,
    },
    /// More plaintext than one RSA-OAEP-SHA256 block holds with this key.
    #[error("plaintext of {len} bytes is too long for RSA-OAEP-SHA256 with this key (at most {max} bytes)")]
    PlaintextTooLong {
        /// The plaintext's length.
        len: usize,
        /// What the key can encrypt.
        max: usize,
    },
    /// RSA encryption failed for another reason than the plaintext's length.
    #[error("RSA encryption failed: {0}")]
    Encrypt(String),
    /// RSA-OAEP decryption failed. Deliberately without detail: which check failed is what padding oracles feed on.
    #[error("cannot decrypt: the ciphertext was not encrypted to this key, or is corrupted")]
    Decrypt,
    /// [`split`] of an empty secret.
    #[error("cannot split an empty secret")]
    EmptySecret,
    /// A threshold of 0, or above the number of shares.
    #[error(
        "invalid threshold {threshold} for {count} shares: it must be between 1 and the number of shares"
    )]
    InvalidThreshold {
        /// The threshold asked for.
        threshold: usize,
        /// The number of shares asked for.
        count: usize,
    },
    /// More shares than there are nonzero share indices.
    #[error("cannot make {0} shares: at most 255 (share indices are the nonzero bytes)")]
    TooManyShares(usize),
    /// [`combine`] without shares.
    #[error("no shares to combine")]
    NoShares,
    /// A share without at least an index byte and one value byte.
    #[error("share of {0} bytes is too short: a share is an index byte followed by at least one byte")]
    ShareTooShort(usize),
    /// A share with index 0, whose value would be the secret itself.
    #[error("share index 0 is invalid (indices are 1 to 255)")]
    ZeroShareIndex,
    /// Two shares with the same index.
    #[error("two shares have the same index {0}")]
    DuplicateShare(u8),
    /// Shares of different lengths, which cannot come from one split.
    #[error("share {x} has {found} value bytes where the first share has {expected}: the shares are not from one split")]
    ShareLengthMismatch {
        /// The index of the odd share.
        x: u8,
        /// The first share's value length.
        expected: usize,
        /// The odd share's value length.
        found: usize,
    },
    /// AES-GCM refused to encrypt (only for plaintexts beyond its 64 GiB limit).
    #[error("cannot wrap: plaintext too long for AES-GCM")]
    Wrap,
    /// AES-GCM authentication failed: the key is wrong (the shares do not reconstruct it), the associated data
    /// differs, or the wrapped bytes are corrupted or truncated.
    #[error("cannot unwrap: authentication failed (wrong key, i.e. the shares do not reconstruct it; wrong associated data; or corrupted data)")]
    Unwrap,
}

// ---------------------------------------------------------------------------------------------------------------
// RSA-OAEP-SHA256 encryption keys
// ---------------------------------------------------------------------------------------------------------------

/// A freshly generated member encryption key pair, as PEM.
#[derive(Clone)]
pub struct EncryptionKeyPair {
    /// PKCS#8 `PRIVATE KEY` PEM (what `openssl genpkey` writes).
    pub private_pem: String,
    /// SPKI `PUBLIC KEY` PEM (what `openssl rsa -pubout` writes).
    pub public_pem: String,
}

impl fmt::Debug for EncryptionKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKeyPair")
            .field("private_pem", &"<secret>")
            .field("public_pem", &self.public_pem)
            .finish()
    }
}

/// Generates an [`ENCRYPTION_KEY_BITS`] RSA key pair (public exponent 65537, like `openssl genrsa`).
pub fn generate_encryption_key() -> Result<EncryptionKeyPair, RecoveryError> {
    // OsRng panics only if the OS cannot provide randomness at all, which no caller could recover from either.
    let key = RsaPrivateKey::new(&mut OsRng, ENCRYPTION_KEY_BITS)
        .map_err(|e| RecoveryError::KeyGeneration(e.to_string()))?;
    let private_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| RecoveryError::KeyGeneration(e.to_string()))?;
    let public_pem = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| RecoveryError::KeyGeneration(e.to_string()))?;
    Ok(EncryptionKeyPair {
        private_pem: private_pem.as_str().to_owned(),
        public_pem,
    })
}

/// A member's RSA public encryption key, to encrypt recovery shares to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptionPublicKey {
    key: RsaPublicKey,
}

impl EncryptionPublicKey {
    /// Parses an SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY` PEM; refuses non-RSA keys and sizes outside
    /// [`ENCRYPTION_KEY_BITS_MIN`]..=[`ENCRYPTION_KEY_BITS_MAX`].
    pub fn from_pem(pem: &str) -> Result<EncryptionPublicKey, RecoveryError> {
        const EXPECTED: &str = "a PUBLIC KEY or RSA PUBLIC KEY";
        let (label, doc) = Document::from_pem(first_pem_block(pem)?).map_err(pem_err)?;
        let pkcs1_der = match label {
            "PUBLIC KEY" => {
                let spki = SubjectPublicKeyInfoRef::from_der(doc.as_bytes()).map_err(invalid_key)?;
                check_rsa_algorithm(&spki.algorithm)?;
                spki.subject_public_key.as_bytes().ok_or_else(|| {
                    RecoveryError::InvalidKey("public key bit string has unused bits".into())
                })?
            }
            "RSA PUBLIC KEY" => doc.as_bytes(),
            other => {
                return Err(RecoveryError::UnexpectedPem {
                    expected: EXPECTED,
                    found: other.to_owned(),
                })
            }
        };
        let pkcs1 = rsa::pkcs1::RsaPublicKey::from_der(pkcs1_der).map_err(invalid_key)?;
        let n = BigUint::from_bytes_be(pkcs1.modulus.as_bytes());
        check_bits(n.bits())?;
        let e = BigUint::from_bytes_be(pkcs1.public_exponent.as_bytes());
        let key = RsaPublicKey::new_with_max_size(n, e, ENCRYPTION_KEY_BITS_MAX).map_err(invalid_key)?;
        Ok(EncryptionPublicKey { key })
    }

    /// Encrypts with RSA-OAEP (SHA-256, MGF1-SHA-256, empty label); at most `bits() / 8 - 66` bytes.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, RecoveryError> {
        let max = self.key.size().saturating_sub(2 * OAEP_HASH_LEN + 2);
        if plaintext.len() > max {
            return Err(RecoveryError::PlaintextTooLong {
                len: plaintext.len(),
                max,
            });
        }
        self.key
            .encrypt(&mut OsRng, Oaep::new::<Sha256>(), plaintext)
            .map_err(|e| RecoveryError::Encrypt(e.to_string()))
    }

    /// The SPKI `PUBLIC KEY` PEM.
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .expect("encoding a validated RSA public key as SPKI DER and PEM cannot fail")
    }

    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        self.key.n().bits()
    }
}

/// A member's RSA private encryption key, to decrypt the recovery share encrypted to it.
#[derive(Clone)]
pub struct EncryptionPrivateKey {
    key: RsaPrivateKey,
}

impl fmt::Debug for EncryptionPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionPrivateKey(RSA-{}, <secret>)", self.key.n().bits())
    }
}

impl EncryptionPrivateKey {
    /// Parses a PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY` PEM (what `openssl genrsa` writes before
    /// OpenSSL 3); refuses non-RSA keys and sizes outside [`ENCRYPTION_KEY_BITS_MIN`]..=[`ENCRYPTION_KEY_BITS_MAX`],
    /// as their public keys would have been refused.
    pub fn from_pem(pem: &str) -> Result<EncryptionPrivateKey, RecoveryError> {
        const EXPECTED: &str = "a PRIVATE KEY or RSA PRIVATE KEY";
        let (label, doc) = SecretDocument::from_pem(first_pem_block(pem)?).map_err(pem_err)?;
        let key = match label {
            "PRIVATE KEY" => {
                let info = PrivateKeyInfo::from_der(doc.as_bytes()).map_err(invalid_key)?;
                check_rsa_algorithm(&info.algorithm)?;
                RsaPrivateKey::try_from(info).map_err(invalid_key)?
            }
            "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_der(doc.as_bytes()).map_err(invalid_key)?,
            "ENCRYPTED PRIVATE KEY" => return Err(RecoveryError::EncryptedPrivateKey),
            "EC PRIVATE KEY" => return Err(RecoveryError::NotRsa("an EC key".into())),
            other => {
                return Err(RecoveryError::UnexpectedPem {
                    expected: EXPECTED,
                    found: other.to_owned(),
                })
            }
        };
        check_bits(key.n().bits())?;
        Ok(EncryptionPrivateKey { key })
    }

    /// Decrypts RSA-OAEP (SHA-256, MGF1-SHA-256, empty label). Not constant-time: see the module documentation.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, RecoveryError> {
        self.key
            .decrypt(Oaep::new::<Sha256>(), ciphertext)
            .map_err(|_| RecoveryError::Decrypt)
    }

    /// The matching public key.
    pub fn public_key(&self) -> EncryptionPublicKey {
        EncryptionPublicKey {
            key: self.key.to_public_key(),
        }
    }
}

/// The first PEM block of `pem`, so that text around it (comments, a certificate after the key) is ignored as
/// OpenSSL ignores it.
fn first_pem_block(pem: &str) -> Result<&str, RecoveryError> {
    let start = pem
        .find("-----BEGIN ")
        .ok_or_else(|| RecoveryError::Pem("no -----BEGIN line".into()))?;
    let rest = &pem[start + "-----BEGIN ".len()..];
    let label_len = rest
        .find("-----")
        .ok_or_else(|| RecoveryError::Pem("unterminated -----BEGIN line".into()))?;
    let end_line = format!("-----END {}-----", &rest[..label_len]);
    let end = pem[start..]
        .find(&end_line)
        .ok_or_else(|| RecoveryError::Pem(format!("no {end_line} line")))?;
    Ok(&pem[start..start + end + end_line.len()])
}

fn pem_err(e: impl fmt::Display) -> RecoveryError {
    RecoveryError::Pem(e.to_string())
}

fn invalid_key(e: impl fmt::Display) -> RecoveryError {
    RecoveryError::InvalidKey(e.to_string())
}

fn check_bits(bits: usize) -> Result<(), RecoveryError> {
    if bits < ENCRYPTION_KEY_BITS_MIN {
        return Err(RecoveryError::KeyTooSmall {
            bits,
            min: ENCRYPTION_KEY_BITS_MIN,
        });
    }
    if bits > ENCRYPTION_KEY_BITS_MAX {
        return Err(RecoveryError::KeyTooLarge {
            bits,
            max: ENCRYPTION_KEY_BITS_MAX,
        });
    }
    Ok(())
}

/// Refuses keys of other algorithms with their name, rather than the parse error the RSA decoder would give.
fn check_rsa_algorithm(algorithm: &rsa::pkcs8::AlgorithmIdentifierRef<'_>) -> Result<(), RecoveryError> {
    let (oid, parameters) = algorithm.oids().map_err(invalid_key)?;
    let name = match oid.to_string().as_str() {
        OID_RSA => return Ok(()),
        OID_RSA_PSS => "an RSA-PSS key (restricted to signatures)".to_owned(),
        OID_EC_PUBLIC_KEY => {
            let curve = parameters.map(|p| p.to_string()).unwrap_or_default();
            format!("an EC key on {}", crate::keys::curve_name(&curve))
        }
        OID_X25519 => "an X25519 key".to_owned(),
        OID_X448 => "an X448 key".to_owned(),
        OID_ED25519 => "an Ed25519 key".to_owned(),
        OID_ED448 => "an Ed448 key".to_owned(),
        other => format!("a key of algorithm {other}"),
    };
    Err(RecoveryError::NotRsa(name))
}

// ---------------------------------------------------------------------------------------------------------------
// Shamir secret sharing over GF(2^8)
// ---------------------------------------------------------------------------------------------------------------

/// One Shamir share: the value at `x` of the sharing polynomials, one byte per secret byte.
#[derive(Clone, PartialEq, Eq)]
pub struct Share {
    /// The evaluation point, 1 to 255 (0 would be the secret).
    pub x: u8,
    /// The polynomials' values at `x`, as long as the secret.
    pub y: Vec<u8>,
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Share(x = {}, {} bytes <secret>)", self.x, self.y.len())
    }
}

impl Share {
    /// The wire form, `[x] ‖ y` (the `sharks` layout).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(1 + self.y.len());
        bytes.push(self.x);
        bytes.extend_from_slice(&self.y);
        bytes
    }

    /// Parses `[x] ‖ y`; refuses an empty share, x = 0 and an empty y.
    pub fn from_bytes(bytes: &[u8]) -> Result<Share, RecoveryError> {
        match bytes {
            [] | [_] => Err(RecoveryError::ShareTooShort(bytes.len())),
            [0, ..] => Err(RecoveryError::ZeroShareIndex),
            [x, y @ ..] => Ok(Share { x: *x, y: y.to_vec() }),
        }
    }
}

/// Multiplication in GF(2^8) modulo x^8+x^4+x^3+x+1, without branches or table lookups on the operands so that
/// timing does not depend on secret bytes.
fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    for _ in 0..8 {
        // 0xff when b's low bit is set, else 0.
        product ^= a & (b & 1).wrapping_neg();
        // Reduce by the polynomial (0x1b once x^8 is dropped) when the shift carries out of the byte.
        let carry = (a >> 7).wrapping_neg();
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    product
}

/// Inverse in GF(2^8) as a^254 (the multiplicative group has order 255); maps 0 to 0. The exponent is public, so
/// branching on its bits leaks nothing.
fn gf_inv(a: u8) -> u8 {
    let mut result = 1u8;
    let mut base = a;
    let mut exponent = 254u8;
    while exponent != 0 {
        if exponent & 1 == 1 {
            result = gf_mul(result, base);
        }
        base = gf_mul(base, base);
        exponent >>= 1;
    }
    result
}

/// Splits `secret` into `count` shares (x = 1..=count) any `threshold` of which reconstruct it with [`combine`].
///
/// Fewer than `threshold` shares reveal nothing about the secret (the coefficients come from the OS random
/// number generator).
pub fn split(secret: &[u8], threshold: usize, count: usize) -> Result<Vec<Share>, RecoveryError> {
    check_split(secret, threshold, count)?;
    let mut coefficients = Zeroizing::new(vec![0u8; secret.len() * (threshold - 1)]);
    getrandom::getrandom(&mut coefficients)?;
    Ok(split_with_coefficients(secret, threshold, count, &coefficients))
}

fn check_split(secret: &[u8], threshold: usize, count: usize) -> Result<(), RecoveryError> {
    if secret.is_empty() {
        return Err(RecoveryError::EmptySecret);
    }
    if threshold == 0 || threshold > count {
        return Err(RecoveryError::InvalidThreshold { threshold, count });
    }
    if count > 255 {
        return Err(RecoveryError::TooManyShares(count));
    }
    Ok(())
}

/// The split itself, with the non-constant coefficients given (`threshold - 1` per secret byte, lowest degree
/// first) so tests can be deterministic. Arguments are checked by the caller.
fn split_with_coefficients(secret: &[u8], threshold: usize, count: usize, coefficients: &[u8]) -> Vec<Share> {
    let degree = threshold - 1;
    (1..=count)
        .map(|x| {
            let x = u8::try_from(x).expect("count was checked to be at most 255");
            let y = secret
                .iter()
                .enumerate()
                .map(|(i, &constant)| {
                    let higher = &coefficients[i * degree..(i + 1) * degree];
                    // Horner's rule, from the highest coefficient down to the secret byte.
                    let acc = higher.iter().rev().fold(0u8, |acc, &c| gf_mul(acc, x) ^ c);
                    gf_mul(acc, x) ^ constant
                })
                .collect();
            Share { x, y }
        })
        .collect()
}

/// Reconstructs a secret from shares by Lagrange interpolation at 0.
///
/// With fewer shares than the split's threshold, or with a wrong share, this returns a wrong value and cannot tell:
/// callers authenticate the result (see [`unwrap`]).
pub fn combine(shares: &[Share]) -> Result<Vec<u8>, RecoveryError> {
    let first = shares.first().ok_or(RecoveryError::NoShares)?;
    let len = first.y.len();
    if len == 0 {
        return Err(RecoveryError::ShareTooShort(1));
    }
    let mut seen = [false; 256];
    for share in shares {
        if share.x == 0 {
            return Err(RecoveryError::ZeroShareIndex);
        }
        if std::mem::replace(&mut seen[usize::from(share.x)], true) {
            return Err(RecoveryError::DuplicateShare(share.x));
        }
        if share.y.len() != len {
            return Err(RecoveryError::ShareLengthMismatch {
                x: share.x,
                expected: len,
                found: share.y.len(),
            });
        }
    }
    let mut secret = vec![0u8; len];
    for (i, share) in shares.iter().enumerate() {
        // The Lagrange basis polynomial of share i at 0: Π_{j≠i} x_j / (x_j − x_i), where − is XOR. The
        // denominator is nonzero because the indices are distinct.
        let (numerator, denominator) = shares
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .fold((1u8, 1u8), |(num, den), (_, other)| {
                (gf_mul(num, other.x), gf_mul(den, other.x ^ share.x))
            });
        let basis = gf_mul(numerator, gf_inv(denominator));
        for (out, &y) in secret.iter_mut().zip(&share.y) {
            *out ^= gf_mul(basis, y);
        }
    }
    Ok(secret)
}

// ---------------------------------------------------------------------------------------------------------------
// AES-256-GCM wrapping under the reconstructed key
// ---------------------------------------------------------------------------------------------------------------

/// Encrypts and authenticates `plaintext` (and `aad`) under `key` with AES-256-GCM: random 12-byte nonce ‖
/// ciphertext ‖ 16-byte tag.
pub fn wrap(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, RecoveryError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce)?;
    let ciphertext = Aes256Gcm::new(key.into())
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .map_err(|_| RecoveryError::Wrap)?;
    let mut wrapped = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    wrapped.extend_from_slice(&nonce);
    wrapped.extend_from_slice(&ciphertext);
    Ok(wrapped)
}

/// Authenticates and decrypts what [`wrap`] made; [`RecoveryError::Unwrap`] on any mismatch, including a key
/// reconstructed from wrong or too few shares.
pub fn unwrap(key: &[u8; 32], wrapped: &[u8], aad: &[u8]) -> Result<Vec<u8>, RecoveryError> {
    if wrapped.len() < NONCE_LEN + TAG_LEN {
        return Err(RecoveryError::Unwrap);
    }
    let (nonce, ciphertext) = wrapped.split_at(NONCE_LEN);
    Aes256Gcm::new(key.into())
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad })
        .map_err(|_| RecoveryError::Unwrap)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;
    use std::sync::OnceLock;

    use rsa::pkcs1::{EncodeRsaPrivateKey as _, EncodeRsaPublicKey as _};

    use super::*;

    /// RSA key generation takes a while, so the whole module shares two keys.
    fn key_a() -> &'static EncryptionKeyPair {
        static KEY: OnceLock<EncryptionKeyPair> = OnceLock::new();
        KEY.get_or_init(|| generate_encryption_key().expect("generating a test key"))
    }

    fn key_b() -> &'static EncryptionKeyPair {
        static KEY: OnceLock<EncryptionKeyPair> = OnceLock::new();
        KEY.get_or_init(|| generate_encryption_key().expect("generating a test key"))
    }

    fn random_secret() -> [u8; 32] {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).unwrap();
        secret
    }

    /// Every subset of `items` of each size in `sizes`.
    fn subsets<T: Clone>(items: &[T], sizes: std::ops::RangeInclusive<usize>) -> Vec<Vec<T>> {
        (0u32..1 << items.len())
            .filter(|mask| sizes.contains(&(mask.count_ones() as usize)))
            .map(|mask| {
                items
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, item)| item.clone())
                    .collect()
            })
            .collect()
    }

    // --- GF(2^8) ---

    #[test]
    fn gf_known_aes_inverse_pair() {
        assert_eq!(gf_mul(0x53, 0xca), 0x01);
        assert_eq!(gf_inv(0x53), 0xca);
        assert_eq!(gf_mul(0x57, 0x83), 0xc1); // FIPS 197, section 4.2
    }

    #[test]
    fn gf_every_nonzero_element_times_its_inverse_is_one() {
        for a in 1..=255u8 {
            assert_eq!(gf_mul(a, gf_inv(a)), 1, "a = {a:#04x}");
        }
        assert_eq!(gf_inv(0), 0);
    }

    #[test]
    fn gf_mul_is_commutative_and_distributive() {
        let samples = [0x00, 0x01, 0x02, 0x03, 0x1b, 0x53, 0x80, 0xca, 0xfe, 0xff];
        for a in samples {
            assert_eq!(gf_mul(a, 1), a);
            assert_eq!(gf_mul(a, 0), 0);
            for b in samples {
                assert_eq!(gf_mul(a, b), gf_mul(b, a));
                for c in samples {
                    assert_eq!(gf_mul(a, b ^ c), gf_mul(a, b) ^ gf_mul(a, c));
                }
            }
        }
    }

    // --- Shamir ---

    #[test]
    fn split_known_answer() {
        // f(x) = 0x42 + x: shares (1, 0x43), (2, 0x40), (3, 0x41).
        let shares = split_with_coefficients(&[0x42], 2, 3, &[0x01]);
        let expected = [(1, 0x43), (2, 0x40), (3, 0x41)].map(|(x, y)| Share { x, y: vec![y] });
        assert_eq!(shares, expected);
        assert_eq!(combine(&shares[1..]).unwrap(), [0x42]);
    }

    #[test]
    fn every_subset_of_threshold_or_more_recovers() {
        let secret = random_secret();
        let shares = split(&secret, 3, 5).unwrap();
        assert_eq!(shares.iter().map(|s| s.x).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert!(shares.iter().all(|s| s.y.len() == secret.len()));
        let subsets = subsets(&shares, 3..=5);
        assert_eq!(subsets.len(), 10 + 5 + 1);
        for subset in subsets {
            assert_eq!(combine(&subset).unwrap(), secret, "{subset:?}");
        }
    }

    #[test]
    fn threshold_one_any_single_share_recovers() {
        let secret = random_secret();
        let shares = split(&secret, 1, 4).unwrap();
        for share in &shares {
            assert_eq!(combine(std::slice::from_ref(share)).unwrap(), secret);
        }
    }

    #[test]
    fn fewer_than_threshold_shares_do_not_recover() {
        let secret = random_secret();
        let shares = split(&secret, 3, 5).unwrap();
        for subset in subsets(&shares, 1..=2) {
            assert_ne!(combine(&subset).unwrap(), secret, "{subset:?}");
        }
        // Deterministically: with a nonzero top coefficient, two shares of a degree-2 polynomial interpolate a
        // line that misses the secret at 0 in every byte (f − line = c₂(x − x₁)(x − x₂), nonzero at 0).
        let coefficients: Vec<u8> = (0..64u8).map(|i| i | 1).collect();
        let shares = split_with_coefficients(&secret, 3, 5, &coefficients);
        for pair in subsets(&shares, 2..=2) {
            let combined = combine(&pair).unwrap();
            assert!(combined.iter().zip(&secret).all(|(a, b)| a != b), "{pair:?}");
        }
    }

    #[test]
    fn a_changed_share_byte_changes_the_result() {
        let secret = random_secret();
        let mut shares = split(&secret, 3, 5).unwrap();
        shares.truncate(3);
        for i in 0..3 {
            for byte in [0, 17, 31] {
                let mut tampered = shares.clone();
                tampered[i].y[byte] ^= 0x01;
                let combined = combine(&tampered).unwrap();
                // Lagrange basis values are nonzero, so exactly that byte of the result changes.
                for (k, (a, b)) in combined.iter().zip(&secret).enumerate() {
                    assert_eq!(a != b, k == byte, "share {i}, byte {byte}, result byte {k}");
                }
            }
        }
    }

    #[test]
    fn split_argument_errors() {
        assert_eq!(split(&[], 1, 1), Err(RecoveryError::EmptySecret));
        assert_eq!(
            split(b"s", 0, 3),
            Err(RecoveryError::InvalidThreshold {
                threshold: 0,
                count: 3
            })
        );
        assert_eq!(
            split(b"s", 4, 3),
            Err(RecoveryError::InvalidThreshold {
                threshold: 4,
                count: 3
            })
        );
        assert_eq!(split(b"s", 2, 256), Err(RecoveryError::TooManyShares(256)));
        let shares = split(b"s", 255, 255).unwrap();
        assert_eq!(shares.last().map(|s| s.x), Some(255));
        assert_eq!(combine(&shares).unwrap(), b"s");
    }

    #[test]
    fn combine_argument_errors() {
        let shares = split(&random_secret(), 2, 3).unwrap();
        assert_eq!(combine(&[]), Err(RecoveryError::NoShares));

        let duplicate = [shares[0].clone(), shares[1].clone(), shares[0].clone()];
        assert_eq!(combine(&duplicate), Err(RecoveryError::DuplicateShare(1)));

        let mut short = shares[1].clone();
        short.y.pop();
        assert_eq!(
            combine(&[shares[0].clone(), short]),
            Err(RecoveryError::ShareLengthMismatch {
                x: 2,
                expected: 32,
                found: 31
            })
        );

        let zero = Share {
            x: 0,
            y: shares[0].y.clone(),
        };
        assert_eq!(
            combine(&[shares[0].clone(), zero]),
            Err(RecoveryError::ZeroShareIndex)
        );

        let empty = Share { x: 1, y: Vec::new() };
        assert_eq!(combine(&[empty]), Err(RecoveryError::ShareTooShort(1)));
    }

    #[test]
    fn share_bytes_roundtrip_and_errors() {
        let share = Share {
            x: 7,
            y: vec![1, 2, 3],
        };
        assert_eq!(share.to_bytes(), [7, 1, 2, 3]);
        assert_eq!(Share::from_bytes(&share.to_bytes()), Ok(share));
        assert_eq!(Share::from_bytes(&[]), Err(RecoveryError::ShareTooShort(0)));
        assert_eq!(Share::from_bytes(&[7]), Err(RecoveryError::ShareTooShort(1)));
        assert_eq!(Share::from_bytes(&[0, 1, 2]), Err(RecoveryError::ZeroShareIndex));
    }

    #[test]
    fn share_debug_hides_the_value() {
        let share = Share {
            x: 3,
            y: vec![0xab; 4],
        };
        assert_eq!(format!("{share:?}"), "Share(x = 3, 4 bytes <secret>)");
    }

    // --- RSA-OAEP-SHA256 ---

    #[test]
    fn rsa_roundtrip() {
        let pair = key_a();
        assert!(pair.private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pair.public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let public = EncryptionPublicKey::from_pem(&pair.public_pem).unwrap();
        let private = EncryptionPrivateKey::from_pem(&pair.private_pem).unwrap();
        assert_eq!(public.bits(), ENCRYPTION_KEY_BITS);
        assert_eq!(private.public_key(), public);
        assert_eq!(public.to_pem(), pair.public_pem);

        let plaintext = Share {
            x: 1,
            y: random_secret().to_vec(),
        }
        .to_bytes();
        let ciphertext = public.encrypt(&plaintext).unwrap();
        assert_eq!(ciphertext.len(), 256);
        assert_ne!(
            public.encrypt(&plaintext).unwrap(),
            ciphertext,
            "OAEP is randomised"
        );
        assert_eq!(private.decrypt(&ciphertext).unwrap(), plaintext);

        // 256 − 2·32 − 2 = 190 bytes fit in one block.
        assert!(public.encrypt(&[0; 190]).is_ok());
        assert_eq!(
            public.encrypt(&[0; 191]),
            Err(RecoveryError::PlaintextTooLong { len: 191, max: 190 })
        );
    }

    #[test]
    fn rsa_pkcs1_and_pkcs8_pems_load() {
        let private = EncryptionPrivateKey::from_pem(&key_a().private_pem).unwrap();
        let pkcs1_private = private.key.to_pkcs1_pem(LineEnding::LF).unwrap();
        assert!(pkcs1_private.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let pkcs1_public = private.key.to_public_key().to_pkcs1_pem(LineEnding::LF).unwrap();
        assert!(pkcs1_public.starts_with("-----BEGIN RSA PUBLIC KEY-----"));

        let from_pkcs1 = EncryptionPrivateKey::from_pem(&pkcs1_private).unwrap();
        let public = EncryptionPublicKey::from_pem(&pkcs1_public).unwrap();
        assert_eq!(public, private.public_key());
        assert_eq!(
            public.to_pem(),
            key_a().public_pem,
            "to_pem writes SPKI whatever was read"
        );
        assert_eq!(
            from_pkcs1.decrypt(&public.encrypt(b"share").unwrap()).unwrap(),
            b"share"
        );

        // Text around the block, as in files with comments, is ignored.
        let annotated = format!("member0 encryption key\n{}\ntrailing\n", key_a().public_pem);
        assert_eq!(EncryptionPublicKey::from_pem(&annotated).unwrap(), public);
    }

    #[test]
    fn rsa_1024_bit_key_is_refused() {
        let small = RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
        let public_pem = small.to_public_key().to_public_key_pem(LineEnding::LF).unwrap();
        let too_small = Err(RecoveryError::KeyTooSmall {
            bits: 1024,
            min: 2048,
        });
        assert_eq!(EncryptionPublicKey::from_pem(&public_pem), too_small);
        let pkcs1_pem = small.to_public_key().to_pkcs1_pem(LineEnding::LF).unwrap();
        assert_eq!(EncryptionPublicKey::from_pem(&pkcs1_pem), too_small);
        let private_pem = small.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert_eq!(
            EncryptionPrivateKey::from_pem(&private_pem).unwrap_err(),
            RecoveryError::KeyTooSmall {
                bits: 1024,
                min: 2048
            }
        );
        let message = EncryptionPublicKey::from_pem(&public_pem)
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "RSA key of 1024 bits is too small: encryption keys must have at least 2048 bits"
        );
    }

    #[test]
    fn non_rsa_keys_are_refused() {
        use p384::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};

        let secret = p384::SecretKey::random(&mut OsRng);
        let public_pem = secret.public_key().to_public_key_pem(LineEnding::LF).unwrap();
        let err = EncryptionPublicKey::from_pem(&public_pem).unwrap_err();
        assert_eq!(err, RecoveryError::NotRsa("an EC key on P-384".into()));
        assert_eq!(
            err.to_string(),
            "not an RSA key but an EC key on P-384: member encryption keys are RSA (RSA-OAEP with SHA-256)"
        );

        let private_pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert_eq!(
            EncryptionPrivateKey::from_pem(&private_pem).unwrap_err(),
            RecoveryError::NotRsa("an EC key on P-384".into())
        );
        let sec1_pem = secret.to_sec1_pem(LineEnding::LF).unwrap();
        assert_eq!(
            EncryptionPrivateKey::from_pem(&sec1_pem).unwrap_err(),
            RecoveryError::NotRsa("an EC key".into())
        );

        // An empty SEQUENCE: valid DER, so only the label can refuse it.
        let cert = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            EncryptionPublicKey::from_pem(cert),
            Err(RecoveryError::UnexpectedPem { found, .. }) if found == "CERTIFICATE"
        ));
        assert!(matches!(
            EncryptionPublicKey::from_pem("not a key"),
            Err(RecoveryError::Pem(_))
        ));
        assert!(matches!(
            EncryptionPrivateKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(RecoveryError::InvalidKey(_) | RecoveryError::Pem(_))
        ));
    }

    #[test]
    fn rsa_decrypt_with_the_wrong_key_or_corrupted_ciphertext_fails() {
        let public = EncryptionPublicKey::from_pem(&key_a().public_pem).unwrap();
        let right = EncryptionPrivateKey::from_pem(&key_a().private_pem).unwrap();
        let wrong = EncryptionPrivateKey::from_pem(&key_b().private_pem).unwrap();
        let ciphertext = public.encrypt(b"share").unwrap();
        assert_eq!(wrong.decrypt(&ciphertext), Err(RecoveryError::Decrypt));

        let mut flipped = ciphertext.clone();
        flipped[100] ^= 0x80;
        assert_eq!(right.decrypt(&flipped), Err(RecoveryError::Decrypt));
        assert_eq!(right.decrypt(&ciphertext[1..]), Err(RecoveryError::Decrypt));
        assert_eq!(right.decrypt(&[]), Err(RecoveryError::Decrypt));
        assert_eq!(right.decrypt(&[0xff; 256]), Err(RecoveryError::Decrypt));
    }

    #[test]
    fn private_key_debug_hides_the_key() {
        let private = EncryptionPrivateKey::from_pem(&key_a().private_pem).unwrap();
        assert_eq!(format!("{private:?}"), "EncryptionPrivateKey(RSA-2048, <secret>)");
        assert!(!format!("{:?}", key_a()).contains("PRIVATE"));
    }

    // --- Interop with the openssl CLI (what CCF's submit_recovery_share.sh runs) ---

    const OAEP_OPTS: [&str; 4] = [
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
    ];

    fn have_openssl() -> bool {
        let found = Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            eprintln!("openssl not found: skipping the interop test");
        }
        found
    }

    fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn openssl_decrypts_what_rust_encrypts() {
        if !have_openssl() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key.pem"), &key_a().private_pem).unwrap();
        std::fs::write(dir.path().join("pub.pem"), &key_a().public_pem).unwrap();
        let public = EncryptionPublicKey::from_pem(&key_a().public_pem).unwrap();
        let plaintext = Share {
            x: 3,
            y: random_secret().to_vec(),
        }
        .to_bytes();
        std::fs::write(dir.path().join("share.enc"), public.encrypt(&plaintext).unwrap()).unwrap();

        let decrypted = openssl(
            &[
                &["pkeyutl", "-decrypt", "-inkey", "key.pem", "-in", "share.enc"],
                &OAEP_OPTS[..],
            ]
            .concat(),
            dir.path(),
        );
        assert_eq!(decrypted, plaintext);

        // openssl also reads the public PEM we write.
        let text = openssl(
            &["pkey", "-pubin", "-in", "pub.pem", "-noout", "-text"],
            dir.path(),
        );
        assert!(String::from_utf8_lossy(&text).contains("Public-Key: (2048 bit)"));
    }

    #[test]
    fn rust_decrypts_what_openssl_encrypts_with_an_openssl_key() {
        if !have_openssl() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| openssl(args, dir.path());
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "key.pem",
        ]);
        run(&["pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem"]);
        // The PKCS#1 forms, as older `openssl genrsa` and `openssl rsa -RSAPublicKey_out` write them.
        run(&["rsa", "-in", "key.pem", "-traditional", "-out", "key.pkcs1.pem"]);
        run(&[
            "rsa",
            "-in",
            "key.pem",
            "-RSAPublicKey_out",
            "-out",
            "pub.pkcs1.pem",
        ]);
        let plaintext = random_secret();
        std::fs::write(dir.path().join("share"), plaintext).unwrap();
        let encrypt = [
            &[
                "pkeyutl", "-encrypt", "-pubin", "-inkey", "pub.pem", "-in", "share",
            ],
            &OAEP_OPTS[..],
        ];
        let ciphertext = run(&encrypt.concat());

        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let private = EncryptionPrivateKey::from_pem(&read("key.pem")).unwrap();
        assert_eq!(private.decrypt(&ciphertext).unwrap(), plaintext);
        let pkcs1_private = EncryptionPrivateKey::from_pem(&read("key.pkcs1.pem")).unwrap();
        assert!(read("key.pkcs1.pem").starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        assert_eq!(pkcs1_private.decrypt(&ciphertext).unwrap(), plaintext);

        let public = EncryptionPublicKey::from_pem(&read("pub.pem")).unwrap();
        assert_eq!(public, private.public_key());
        assert_eq!(public.to_pem(), read("pub.pem"));
        assert!(read("pub.pkcs1.pem").starts_with("-----BEGIN RSA PUBLIC KEY-----"));
        assert_eq!(
            EncryptionPublicKey::from_pem(&read("pub.pkcs1.pem")).unwrap(),
            public
        );
    }

    // --- AES-256-GCM wrapping ---

    #[test]
    fn wrap_roundtrip() {
        let key = random_secret();
        let wrapped = wrap(&key, b"ledger secret", b"aad").unwrap();
        assert_eq!(wrapped.len(), NONCE_LEN + 13 + TAG_LEN);
        assert_ne!(
            wrap(&key, b"ledger secret", b"aad").unwrap(),
            wrapped,
            "fresh nonce"
        );
        assert_eq!(unwrap(&key, &wrapped, b"aad").unwrap(), b"ledger secret");
        assert_eq!(unwrap(&key, &wrap(&key, b"", b"").unwrap(), b"").unwrap(), b"");
    }

    #[test]
    fn unwrap_failures_are_the_unwrap_error() {
        let key = random_secret();
        let wrapped = wrap(&key, b"ledger secret", b"aad").unwrap();
        let mut wrong_key = key;
        wrong_key[0] ^= 1;
        assert_eq!(unwrap(&wrong_key, &wrapped, b"aad"), Err(RecoveryError::Unwrap));
        assert_eq!(unwrap(&key, &wrapped, b"other"), Err(RecoveryError::Unwrap));
        for i in [0, NONCE_LEN, wrapped.len() - 1] {
            let mut flipped = wrapped.clone();
            flipped[i] ^= 0x01;
            assert_eq!(
                unwrap(&key, &flipped, b"aad"),
                Err(RecoveryError::Unwrap),
                "byte {i}"
            );
        }
        for len in [0, 5, NONCE_LEN + TAG_LEN - 1, wrapped.len() - 1] {
            assert_eq!(
                unwrap(&key, &wrapped[..len], b"aad"),
                Err(RecoveryError::Unwrap),
                "length {len}"
            );
        }
    }

    #[test]
    fn end_to_end_too_few_shares_fail_to_unwrap() {
        let key = random_secret();
        let wrapped = wrap(&key, b"ledger secret", b"").unwrap();
        let shares = split(&key, 3, 5).unwrap();
        let reconstruct = |shares: &[Share]| -> [u8; 32] { combine(shares).unwrap().try_into().unwrap() };
        assert_eq!(
            unwrap(&reconstruct(&shares[2..]), &wrapped, b"").unwrap(),
            b"ledger secret"
        );
        assert_eq!(
            unwrap(&reconstruct(&shares[3..]), &wrapped, b""),
            Err(RecoveryError::Unwrap)
        );
    }
}
