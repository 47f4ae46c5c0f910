//! Attestation: evidence that a node runs approved code, bound to the node's key. A [`Platform`] produces evidence
//! whose report data is the SHA-256 of the node's public key (its node id); the primary verifies the evidence,
//! checks that binding against the key the node presents in TLS, and admits the node only if the measurement is
//! in `public:ccf.gov.nodes.code_ids`.
//!
//! The `virtual` platform runs anywhere: its evidence is a JSON statement of measurement and report data with no
//! hardware signature (as CCF's virtual mode), and the measurement is the SHA-256 of the node binary. It travels
//! the same path real SGX/SEV-SNP evidence travels, so replacing the platform changes no caller.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use synod_core::hash::{sha256, Digest};

/// Evidence as it travels in a join request (CCF's `quote_info` shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteInfo {
    /// `Virtual` (more formats with hardware platforms).
    pub format: String,
    /// Base64 evidence.
    pub quote: String,
    /// Base64 endorsements (certificate chain, collateral); empty for `Virtual`.
    #[serde(default)]
    pub endorsements: String,
}

pub use synod_core::attestation::{PlatformKind, Verified};

/// Attestation errors.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    /// Evidence that is refused, with the check that failed.
    #[error(transparent)]
    Refused(#[from] synod_core::attestation::AttestationError),
    /// Reading the node binary for its measurement failed.
    #[error("cannot measure the node binary: {0}")]
    Measure(String),
}

/// A source of attestation evidence.
pub trait Platform: Send + Sync {
    /// Evidence binding `report_data` (the node id's bytes).
    fn evidence(&self, report_data: &Digest) -> QuoteInfo;
    /// This node's own measurement (hex).
    fn measurement(&self) -> String;
}

/// The `virtual` platform (see the module docs).
pub struct VirtualPlatform {
    measurement: Digest,
}

impl VirtualPlatform {
    /// Measures the running binary.
    pub fn measure_self() -> Result<VirtualPlatform, AttestationError> {
        let exe = std::env::current_exe().map_err(|e| AttestationError::Measure(e.to_string()))?;
        let bytes =
            std::fs::read(&exe).map_err(|e| AttestationError::Measure(format!("{}: {e}", exe.display())))?;
        Ok(VirtualPlatform {
            measurement: sha256(&bytes),
        })
    }

    /// A platform with a given measurement (`--virtual-measurement`, tests).
    pub fn with_measurement(measurement: Digest) -> VirtualPlatform {
        VirtualPlatform { measurement }
    }

    /// The platform a node with `configured` (`--virtual-measurement`) runs on.
    pub fn for_node(configured: Option<Digest>) -> Result<VirtualPlatform, AttestationError> {
        match configured {
            Some(m) => Ok(VirtualPlatform::with_measurement(m)),
            None => VirtualPlatform::measure_self(),
        }
    }
}

impl Platform for VirtualPlatform {
    fn evidence(&self, report_data: &Digest) -> QuoteInfo {
        let statement = synod_core::attestation::VirtualStatement {
            measurement: hex::encode(self.measurement),
            report_data: hex::encode(report_data),
        };
        let json = serde_json::to_vec(&statement).unwrap_or_default();
        QuoteInfo {
            format: PlatformKind::Virtual.format().into(),
            quote: base64::engine::general_purpose::STANDARD.encode(json),
            endorsements: String::new(),
        }
    }

    fn measurement(&self) -> String {
        hex::encode(self.measurement)
    }
}

/// Verifies evidence as it travels in a join request (base64 evidence and endorsements, CCF's format names), as of
/// now.
pub fn verify(quote: &QuoteInfo) -> Result<Verified, AttestationError> {
    use synod_core::attestation::AttestationError as Refused;
    let platform = PlatformKind::from_format(&quote.format)
        .ok_or_else(|| Refused::UnsupportedFormat(quote.format.clone()))?;
    let decode = |what: &str, b64: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| Refused::Malformed(format!("{what} is not base64: {e}")))
    };
    let evidence = decode("quote", &quote.quote)?;
    let endorsements = decode("endorsements", &quote.endorsements)?;
    Ok(synod_core::attestation::verify(
        platform,
        &evidence,
        &endorsements,
        synod_core::attestation::now_secs(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_evidence_round_trips_and_malformed_is_refused() {
        let p = VirtualPlatform::with_measurement([3; 32]);
        let q = p.evidence(&[7; 32]);
        let v = verify(&q).expect("verifies");
        assert!(v.binds(&[7; 32]));
        assert_eq!(v.measurement, p.measurement());
        assert!(verify(&QuoteInfo {
            format: "TDX_v9".into(),
            ..q.clone()
        })
        .is_err());
        assert!(verify(&QuoteInfo {
            quote: "!!".into(),
            ..q.clone()
        })
        .is_err());
        let bad =
            base64::engine::general_purpose::STANDARD.encode(br#"{"measurement":"zz","report_data":"00"}"#);
        assert!(verify(&QuoteInfo { quote: bad, ..q }).is_err());
    }
}
