//! Verify a node before trusting it (`synod attest`): the confidential-computing client's first step. Connect to
//! the node without trusting anything yet, keep the certificate it proves in the TLS handshake, fetch its evidence
//! (`GET /node/quotes/self`) and the service certificate (`GET /node/network`), and accept only if the evidence
//! verifies, binds the very key of that certificate, states the expected measurement (and TCB), and the service
//! certificate endorses the node's. Only then is the service certificate worth pinning for later requests.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use synod_core::attestation::{self, PlatformKind, Verified};

use crate::error::{Error, Result};

/// What a successful attestation established.
#[derive(Debug, Serialize)]
pub struct Attested {
    /// The node's id (SHA-256 of its TLS public key).
    pub node_id: String,
    /// What its evidence states.
    pub evidence: Verified,
    /// The service certificate (PEM) that endorses the node: pin it for later requests.
    pub service_cert_pem: String,
}

/// Accepts any server certificate but remembers each one, and still checks the handshake's signature with the
/// certificate's key: the peer proves it holds the key whose binding the evidence is then checked for.
#[derive(Debug)]
struct Recorder {
    seen: Mutex<Vec<Vec<u8>>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Largest answer read from an unverified node.
const ANSWER_BYTES_MAX: usize = 1 << 20;

/// Attests the node at `url` (see the module doc): `measurement` is the expected hex measurement, `platform` the
/// expected platform (any when None), `min_tcb` a minimum TCB ([`attestation::check_minimum_tcb`]).
pub async fn attest(
    url: &str,
    measurement: &str,
    platform: Option<PlatformKind>,
    min_tcb: Option<&str>,
) -> Result<Attested> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder {
        seen: Mutex::new(Vec::new()),
        algorithms: provider.signature_verification_algorithms,
    });
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsConfig(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| Error::TlsConfig(e.to_string()))?;
    let base = url.trim_end_matches('/');
    let quote = get_json(&http, &format!("{base}/node/quotes/self")).await?;
    let network = get_json(&http, &format!("{base}/node/network")).await?;

    let refused = |m: String| Error::Attestation(m);
    let node_cert = {
        let seen = recorder.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.as_slice() {
            [first, rest @ ..] if rest.iter().all(|c| c == first) => first.clone(),
            [] => return Err(refused("the node presented no certificate".into())),
            _ => {
                return Err(refused(
                    "the node presented different certificates on its connections".into(),
                ))
            }
        }
    };
    let format = quote["format"].as_str().unwrap_or_default();
    let kind = PlatformKind::from_format(format)
        .ok_or_else(|| refused(format!("unsupported attestation format {format:?}")))?;
    if platform.is_some_and(|p| p != kind) {
        return Err(refused(format!(
            "the node's evidence is {kind:?}, not {platform:?}"
        )));
    }
    let b64 = |field: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(quote[field].as_str().unwrap_or_default())
            .map_err(|e| refused(format!("evidence {field} is not base64: {e}")))
    };
    let uvm = if quote["uvm_endorsements"].is_string() {
        Some(b64("uvm_endorsements")?)
    } else {
        None
    };
    let evidence = attestation::verify_with_uvm(
        kind,
        &b64("raw")?,
        &b64("endorsements")?,
        uvm.as_deref(),
        attestation::now_secs(),
    )
    .map_err(|e| refused(e.to_string()))?;
    let key_digest = synod_core::cert::public_key_id(&node_cert).map_err(|e| refused(e.to_string()))?;
    if !evidence.binds(&key_digest) {
        return Err(refused(
            "report data does not bind the TLS key the node presented".into(),
        ));
    }
    if !evidence.measurement.eq_ignore_ascii_case(measurement) {
        return Err(refused(format!(
            "measurement {} is not the expected {measurement}",
            evidence.measurement
        )));
    }
    if let Some(min) = min_tcb {
        attestation::check_minimum_tcb(&evidence, min).map_err(|e| refused(e.to_string()))?;
    }
    let service_cert_pem = network["service_certificate"]
        .as_str()
        .ok_or_else(|| refused("/node/network has no service_certificate".into()))?
        .to_string();
    let service_der = synod_core::cert::pem_to_der(&service_cert_pem).map_err(|e| refused(e.to_string()))?;
    synod_core::cert::verify_endorsement(&node_cert, &service_der).map_err(|e| {
        refused(format!(
            "the service certificate does not endorse the node's: {e}"
        ))
    })?;
    Ok(Attested {
        node_id: hex::encode(key_digest),
        evidence,
        service_cert_pem,
    })
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<serde_json::Value> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| Error::Attestation(format!("GET {url}: {e}")))?;
    let mut response = response;
    let status = response.status();
    let body = crate::client::read_body_capped(&mut response, ANSWER_BYTES_MAX, url, |e| {
        Error::Attestation(format!("GET {url}: {e}"))
    })
    .await?;
    if !status.is_success() {
        return Err(Error::Attestation(format!("GET {url}: {status}")));
    }
    serde_json::from_slice(&body).map_err(|e| Error::Attestation(format!("GET {url}: {e}")))
}
