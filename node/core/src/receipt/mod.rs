//! Receipts in CCF's JSON form and offline verification of both forms (JSON and COSE).

pub mod cose;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use self::cose::CoseError;
use crate::cert;
use crate::hash::{leaf_hash, sha256, Digest};
use crate::merkle::{fold_proof, ProofStep};
use crate::txid::TxId;

/// Receipt verification errors.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// Not a receipt (bad JSON, bad field).
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// Well-formed but does not verify.
    #[error("{0}")]
    Invalid(String),
    /// COSE receipt errors.
    #[error(transparent)]
    Cose(#[from] CoseError),
    /// Unusable certificate.
    #[error(transparent)]
    Cert(#[from] cert::CertError),
}

fn strict_digest(s: &str, what: &str) -> Result<Digest, ReceiptError> {
    // Lower-case only: a receipt whose bytes changed must not verify, and hex decoding is case-insensitive.
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ReceiptError::Malformed(format!(
            "{what} must be 64 lower-case hex characters"
        )));
    }
    crate::hash::digest_from_hex(s).ok_or_else(|| ReceiptError::Malformed(format!("{what} is not hex")))
}

/// The parts of a Merkle leaf a receipt reveals.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeafComponents {
    /// Hex SHA-256 of the ledger transaction.
    pub write_set_digest: String,
    /// `ce:<view>.<seqno>:<hex>`; its SHA-256 enters the leaf.
    pub commit_evidence: String,
    /// Hex claims digest.
    pub claims_digest: String,
}

impl LeafComponents {
    /// The Merkle leaf these components hash to.
    pub fn leaf(&self) -> Result<Digest, ReceiptError> {
        let wsd = strict_digest(&self.write_set_digest, "write_set_digest")?;
        let claims = strict_digest(&self.claims_digest, "claims_digest")?;
        Ok(leaf_hash(&wsd, &sha256(self.commit_evidence.as_bytes()), &claims))
    }

    /// The tx id named by the commit evidence, if it has the expected shape.
    pub fn tx_id(&self) -> Option<TxId> {
        let rest = self.commit_evidence.strip_prefix("ce:")?;
        let (txid, _) = rest.split_once(':')?;
        txid.parse().ok()
    }
}

/// One step of a JSON proof: the sibling's hash and its side.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ProofElement {
    /// Sibling on the left.
    Left(String),
    /// Sibling on the right.
    Right(String),
}

impl From<&ProofStep> for ProofElement {
    fn from(step: &ProofStep) -> ProofElement {
        let h = hex::encode(step.hash);
        if step.left {
            ProofElement::Left(h)
        } else {
            ProofElement::Right(h)
        }
    }
}

impl ProofElement {
    fn step(&self) -> Result<ProofStep, ReceiptError> {
        Ok(match self {
            ProofElement::Left(h) => ProofStep {
                left: true,
                hash: strict_digest(h, "proof hash")?,
            },
            ProofElement::Right(h) => ProofStep {
                left: false,
                hash: strict_digest(h, "proof hash")?,
            },
        })
    }
}

/// CCF's JSON receipt.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonReceipt {
    /// Signing node's certificate (PEM), endorsed by the service identity.
    pub cert: String,
    /// True for a receipt of a signature transaction itself.
    pub is_signature_transaction: bool,
    /// Leaf components (ordinary transactions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_components: Option<LeafComponents>,
    /// Signing node's id.
    pub node_id: String,
    /// Path from the leaf to the signed root (ordinary transactions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Vec<ProofElement>>,
    /// Base64 Ed25519 signature over the root.
    pub signature: String,
    /// Hex signed root (signature transactions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// CCF's service endorsements: when a previous service identity (before a recovery) endorsed the node, the
    /// certificates (PEM) leading from it to the current identity, each endorsed by the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_endorsements: Option<Vec<String>>,
}

/// What a verified receipt proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedReceipt {
    /// The transaction, when the receipt names it.
    pub tx_id: Option<TxId>,
    /// The signed Merkle root.
    pub root: Digest,
    /// The transaction's leaf (None for a signature transaction's receipt).
    pub leaf: Option<Digest>,
}

/// Checks that `cert_der` is endorsed by `service_cert_der` through `endorsements` (DER, each endorsed by the next,
/// the last by the service): CCF's `check_endorsements`.
fn check_endorsements(
    cert_der: &[u8],
    endorsements: &[Vec<u8>],
    service_cert_der: &[u8],
) -> Result<(), ReceiptError> {
    let mut subject = cert_der;
    for (i, e) in endorsements.iter().enumerate() {
        cert::verify_endorsement(subject, e)
            .map_err(|err| ReceiptError::Invalid(format!("service endorsement {i}: {err}")))?;
        subject = e;
    }
    cert::verify_endorsement(subject, service_cert_der)
        .map_err(|e| ReceiptError::Invalid(format!("node certificate: {e}")))?;
    Ok(())
}

fn endorsements_der(pems: &[String]) -> Result<Vec<Vec<u8>>, ReceiptError> {
    Ok(pems
        .iter()
        .map(|p| cert::pem_to_der(p))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Verifies a JSON receipt against the service certificate.
pub fn verify_json(receipt: &JsonReceipt, service_cert_der: &[u8]) -> Result<VerifiedReceipt, ReceiptError> {
    verify_json_with(receipt, service_cert_der, &[])
}

/// [`verify_json`] for a receipt a previous service identity issued, verified against the current one:
/// `extra_endorsements` (PEM: the current identity's endorsement of the previous one, `GET
/// /node/service/previous_identity`) follow the receipt's own `service_endorsements`.
pub fn verify_json_with(
    receipt: &JsonReceipt,
    service_cert_der: &[u8],
    extra_endorsements: &[String],
) -> Result<VerifiedReceipt, ReceiptError> {
    let node_der = cert::pem_to_der(&receipt.cert)?;
    if cert::der_to_pem(&node_der) != receipt.cert {
        return Err(ReceiptError::Malformed(
            "cert is not in canonical PEM form".into(),
        ));
    }
    let mut chain = endorsements_der(receipt.service_endorsements.as_deref().unwrap_or_default())?;
    chain.extend(endorsements_der(extra_endorsements)?);
    check_endorsements(&node_der, &chain, service_cert_der)?;
    if cert::public_key_id_hex(&node_der)? != receipt.node_id {
        return Err(ReceiptError::Invalid(
            "node_id does not match the node certificate".into(),
        ));
    }
    let (root, leaf, tx_id) = if receipt.is_signature_transaction {
        if receipt.leaf_components.is_some() || receipt.proof.is_some() {
            return Err(ReceiptError::Malformed(
                "a signature transaction's receipt has no leaf or proof".into(),
            ));
        }
        let root = receipt
            .root
            .as_deref()
            .ok_or_else(|| ReceiptError::Malformed("missing root".into()))?;
        (strict_digest(root, "root")?, None, None)
    } else {
        if receipt.root.is_some() {
            return Err(ReceiptError::Malformed(
                "root is only given for signature transactions".into(),
            ));
        }
        let lc = receipt
            .leaf_components
            .as_ref()
            .ok_or_else(|| ReceiptError::Malformed("missing leaf_components".into()))?;
        let proof = receipt
            .proof
            .as_ref()
            .ok_or_else(|| ReceiptError::Malformed("missing proof".into()))?;
        let path = proof
            .iter()
            .map(ProofElement::step)
            .collect::<Result<Vec<_>, _>>()?;
        let leaf = lc.leaf()?;
        (fold_proof(&leaf, &path), Some(leaf), lc.tx_id())
    };
    let sig = base64::engine::general_purpose::STANDARD
        .decode(&receipt.signature)
        .map_err(|e| ReceiptError::Malformed(format!("signature: {e}")))?;
    cert::public_key(&node_der)?
        .verify_digest(&root, &sig)
        .map_err(|e| {
            ReceiptError::Invalid(format!("signature does not verify over the recomputed root: {e}"))
        })?;
    Ok(VerifiedReceipt { tx_id, root, leaf })
}

/// Verifies either form: bytes starting with `{` (after whitespace) are JSON, anything else COSE.
pub fn verify_bytes(bytes: &[u8], service_cert_pem: &str) -> Result<VerifiedReceipt, ReceiptError> {
    verify_bytes_with(bytes, service_cert_pem, &[])
}

/// [`verify_bytes`] with the current identity's endorsements of previous ones (see [`verify_json_with`]). A COSE
/// receipt is signed by a service key itself: with endorsements, by the first endorsement's key, whose chain to
/// the service is checked.
pub fn verify_bytes_with(
    bytes: &[u8],
    service_cert_pem: &str,
    endorsements: &[String],
) -> Result<VerifiedReceipt, ReceiptError> {
    let service_der = cert::pem_to_der(service_cert_pem)?;
    let trimmed = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(&[][..], |i| &bytes[i..]);
    if trimmed.first() == Some(&b'{') {
        let receipt: JsonReceipt =
            serde_json::from_slice(bytes).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        verify_json_with(&receipt, &service_der, endorsements)
    } else {
        let chain = endorsements_der(endorsements)?;
        match chain.split_first() {
            None => Ok(cose::verify_receipt(bytes, &service_der)?),
            Some((signer, rest)) => {
                check_endorsements(signer, rest, &service_der)?;
                Ok(cose::verify_receipt(bytes, signer)?)
            }
        }
    }
}
