//! PEM to DER, and the error every certificate and key operation answers with (shared by [`crate::keys`] and
//! [`crate::cert`], which re-exports both).

use base64::Engine as _;

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
    /// A key on an unsupported curve, or one that does not parse.
    #[error("invalid key: {0}")]
    Key(String),
    /// A key of a type or on a curve Synod does not support (RSA, P-521, ...).
    #[error("unsupported key: {0} (ECDSA P-384 or P-256 and Ed25519 keys are supported)")]
    UnsupportedKey(String),
    /// A signature that does not verify (or cannot be decoded).
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// The endorsement signature does not verify.
    #[error("certificate is not endorsed by the given issuer: {0}")]
    NotEndorsed(String),
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
