//! CCF's COSE signatures and receipts (draft-ietf-cose-merkle-tree-proofs, CCF ledger profile, vds = 2).
//!
//! A signature transaction stores a COSE_Sign1 by the service key whose detached payload is the Merkle root. A
//! receipt is that same Sign1 with unprotected header 396 (vdp) = {-1: [bstr(cbor(proof))]}, where
//! proof = {1: [bstr write_set_digest, tstr commit_evidence, bstr claims_digest], 2: [[bool left, bstr hash], ...]}.
//! Verifying needs only the service certificate: recompute the leaf, fold the path, check the signature.

use coset::cbor::value::Value;
use coset::{CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, Label, TaggedCborSerializable};

use super::{LeafComponents, VerifiedReceipt};
use crate::cert::{self, PrivateKey};
use crate::hash::{sha256, Digest};
use crate::merkle::{fold_proof, ProofStep};
use crate::txid::TxId;

/// Verifiable data structure header label (draft-ietf-cose-merkle-tree-proofs).
pub const HEADER_VDS: i64 = 395;
/// Verifiable data proofs header label.
pub const HEADER_VDP: i64 = 396;
/// CCF's ledger Merkle tree profile.
pub const VDS_CCF_LEDGER_SHA256: i64 = 2;
/// Key of the inclusion proofs inside the vdp map.
pub const VDP_INCLUSION_PROOFS: i64 = -1;
/// CWT claims header label (RFC 9597).
pub const HEADER_CWT_CLAIMS: i64 = 15;
/// `iat` inside the CWT claims.
pub const CWT_IAT: i64 = 6;
/// CCF's own protected header.
pub const HEADER_CCF_V1: &str = "ccf.v1";

/// COSE encoding or verification errors.
#[derive(Debug, thiserror::Error)]
pub enum CoseError {
    /// Not a well-formed COSE_Sign1 / receipt.
    #[error("malformed COSE: {0}")]
    Malformed(String),
    /// A header has the wrong value.
    #[error("unexpected COSE header: {0}")]
    Header(String),
    /// The signature does not verify over the recomputed root.
    #[error("signature does not verify: {0}")]
    BadSignature(String),
    /// The service certificate is unusable.
    #[error(transparent)]
    Cert(#[from] cert::CertError),
}

fn malformed(e: impl std::fmt::Display) -> CoseError {
    CoseError::Malformed(e.to_string())
}

fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

/// Signs `root` as detached payload with the service key (`ES384` for CCF's curve, `ES256` or `EdDSA`); `txid`
/// is the signature transaction's id.
pub fn sign_root(
    root: &Digest,
    service_key: &PrivateKey,
    service_cert_der: &[u8],
    txid: TxId,
    iat_secs: i64,
) -> Result<Vec<u8>, CoseError> {
    let kid = cert::public_key_id_hex(service_cert_der)?.into_bytes();
    let protected = HeaderBuilder::new()
        .algorithm(service_key.curve().cose_alg())
        .key_id(kid)
        .value(HEADER_VDS, int(VDS_CCF_LEDGER_SHA256))
        .value(HEADER_CWT_CLAIMS, Value::Map(vec![(int(CWT_IAT), int(iat_secs))]))
        .text_value(
            HEADER_CCF_V1.to_string(),
            Value::Map(vec![(Value::Text("txid".into()), Value::Text(txid.to_string()))]),
        )
        .build();
    CoseSign1Builder::new()
        .protected(protected)
        .create_detached_signature(root, &[], |data| service_key.sign(data))
        .build()
        .to_tagged_vec()
        .map_err(malformed)
}

fn encode_proof(leaf: &LeafComponents, path: &[ProofStep]) -> Result<Vec<u8>, CoseError> {
    let wsd = hex::decode(&leaf.write_set_digest).map_err(malformed)?;
    let claims = hex::decode(&leaf.claims_digest).map_err(malformed)?;
    let steps = path
        .iter()
        .map(|s| Value::Array(vec![Value::Bool(s.left), Value::Bytes(s.hash.to_vec())]))
        .collect();
    let proof = Value::Map(vec![
        (
            int(1),
            Value::Array(vec![
                Value::Bytes(wsd),
                Value::Text(leaf.commit_evidence.clone()),
                Value::Bytes(claims),
            ]),
        ),
        (int(2), Value::Array(steps)),
    ]);
    proof.to_vec().map_err(malformed)
}

fn decode_sign1(bytes: &[u8]) -> Result<CoseSign1, CoseError> {
    let sign1 = CoseSign1::from_tagged_slice(bytes).map_err(malformed)?;
    if sign1.payload.is_some() {
        return Err(CoseError::Malformed("payload must be detached (nil)".into()));
    }
    // Only the canonical encoding is accepted: otherwise some changed bytes (e.g. CBOR `undefined` for the nil
    // payload) would decode to the same message, and a receipt must be refused if any byte of it changed.
    if sign1.clone().to_tagged_vec().map_err(malformed)? != bytes {
        return Err(CoseError::Malformed(
            "not the canonical tagged COSE_Sign1 encoding".into(),
        ));
    }
    Ok(sign1)
}

/// Turns a stored COSE signature into a receipt for one leaf.
pub fn build_receipt(
    signature: &[u8],
    leaf: &LeafComponents,
    path: &[ProofStep],
) -> Result<Vec<u8>, CoseError> {
    let mut sign1 = decode_sign1(signature)?;
    let proof = encode_proof(leaf, path)?;
    sign1
        .unprotected
        .rest
        .retain(|(l, _)| *l != Label::Int(HEADER_VDP));
    sign1.unprotected.rest.push((
        Label::Int(HEADER_VDP),
        Value::Map(vec![(
            int(VDP_INCLUSION_PROOFS),
            Value::Array(vec![Value::Bytes(proof)]),
        )]),
    ));
    sign1.to_tagged_vec().map_err(malformed)
}

fn lookup<'a>(map: &'a [(Value, Value)], key: &Value) -> Option<&'a Value> {
    map.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn as_digest(v: &Value, what: &str) -> Result<Digest, CoseError> {
    match v {
        Value::Bytes(b) => b
            .as_slice()
            .try_into()
            .map_err(|_| CoseError::Malformed(format!("{what} is not 32 bytes"))),
        _ => Err(CoseError::Malformed(format!("{what} is not a byte string"))),
    }
}

// Decodes one proof and returns (leaf, root it implies, components).
fn fold_cbor_proof(bytes: &[u8]) -> Result<(Digest, Digest, LeafComponents), CoseError> {
    let value = Value::from_slice(bytes).map_err(malformed)?;
    if value.clone().to_vec().map_err(malformed)? != bytes {
        return Err(CoseError::Malformed("proof is not canonically encoded".into()));
    }
    let Value::Map(map) = value else {
        return Err(CoseError::Malformed("proof is not a map".into()));
    };
    if map.len() != 2 {
        return Err(CoseError::Malformed(
            "proof must have exactly keys 1 and 2".into(),
        ));
    }
    let Some(Value::Array(leaf)) = lookup(&map, &int(1)) else {
        return Err(CoseError::Malformed("proof has no leaf (1)".into()));
    };
    let [wsd, Value::Text(ce), claims] = leaf.as_slice() else {
        return Err(CoseError::Malformed("leaf must be [bstr, tstr, bstr]".into()));
    };
    let components = LeafComponents {
        write_set_digest: hex::encode(as_digest(wsd, "write set digest")?),
        commit_evidence: ce.clone(),
        claims_digest: hex::encode(as_digest(claims, "claims digest")?),
    };
    let leaf_digest = components.leaf().map_err(malformed)?;
    let Some(Value::Array(steps)) = lookup(&map, &int(2)) else {
        return Err(CoseError::Malformed("proof has no path (2)".into()));
    };
    let mut path = Vec::with_capacity(steps.len());
    for step in steps {
        let Value::Array(pair) = step else {
            return Err(CoseError::Malformed("path step is not an array".into()));
        };
        let [Value::Bool(left), hash] = pair.as_slice() else {
            return Err(CoseError::Malformed("path step must be [bool, bstr]".into()));
        };
        path.push(ProofStep {
            left: *left,
            hash: as_digest(hash, "path hash")?,
        });
    }
    Ok((leaf_digest, fold_proof(&leaf_digest, &path), components))
}

/// Checks the protected header against the service key; returns the `ccf.v1` txid if present.
fn check_protected(sign1: &CoseSign1, service_key: &cert::PublicKey) -> Result<Option<TxId>, CoseError> {
    let header = &sign1.protected.header;
    let expected = service_key.curve().cose_alg();
    if header.alg != Some(coset::RegisteredLabelWithPrivate::Assigned(expected)) {
        return Err(CoseError::Header(format!(
            "alg must be {expected:?} ({}), the service key's",
            expected as i64
        )));
    }
    let vds = header
        .rest
        .iter()
        .find(|(l, _)| *l == Label::Int(HEADER_VDS))
        .map(|(_, v)| v);
    if vds != Some(&int(VDS_CCF_LEDGER_SHA256)) {
        return Err(CoseError::Header("vds (395) must be 2 (CCF ledger)".into()));
    }
    let ccf = header
        .rest
        .iter()
        .find(|(l, _)| *l == Label::Text(HEADER_CCF_V1.into()))
        .map(|(_, v)| v);
    let txid = match ccf {
        Some(Value::Map(m)) => match lookup(m, &Value::Text("txid".into())) {
            Some(Value::Text(t)) => Some(t.parse().map_err(malformed)?),
            _ => None,
        },
        _ => None,
    };
    Ok(txid)
}

fn verify_detached(sign1: &CoseSign1, root: &Digest, service_key: &cert::PublicKey) -> Result<(), CoseError> {
    sign1.verify_detached_signature(root, &[], |sig, data| {
        service_key
            .verify(data, sig)
            .map_err(|e| CoseError::BadSignature(e.to_string()))
    })
}

/// Verifies a COSE signature (no proofs) over `root`; returns the signature transaction's id.
pub fn verify_signature(bytes: &[u8], root: &Digest, service_cert_der: &[u8]) -> Result<TxId, CoseError> {
    let sign1 = decode_sign1(bytes)?;
    let key = cert::public_key(service_cert_der)?;
    let txid =
        check_protected(&sign1, &key)?.ok_or_else(|| CoseError::Header("missing ccf.v1 txid".into()))?;
    verify_detached(&sign1, root, &key)?;
    Ok(txid)
}

/// Verifies a COSE receipt with the service certificate alone.
pub fn verify_receipt(bytes: &[u8], service_cert_der: &[u8]) -> Result<VerifiedReceipt, CoseError> {
    let sign1 = decode_sign1(bytes)?;
    let key = cert::public_key(service_cert_der)?;
    check_protected(&sign1, &key)?;
    let vdp = sign1
        .unprotected
        .rest
        .iter()
        .find(|(l, _)| *l == Label::Int(HEADER_VDP))
        .map(|(_, v)| v)
        .ok_or_else(|| CoseError::Malformed("no vdp (396) header: not a receipt".into()))?;
    let Value::Map(vdp) = vdp else {
        return Err(CoseError::Malformed("vdp is not a map".into()));
    };
    let Some(Value::Array(proofs)) = lookup(vdp, &int(VDP_INCLUSION_PROOFS)) else {
        return Err(CoseError::Malformed("vdp has no inclusion proofs (-1)".into()));
    };
    if proofs.is_empty() {
        return Err(CoseError::Malformed("no inclusion proof".into()));
    }
    let mut result: Option<(Digest, Digest, LeafComponents)> = None;
    for proof in proofs {
        let Value::Bytes(p) = proof else {
            return Err(CoseError::Malformed("proof is not a bstr".into()));
        };
        let folded = fold_cbor_proof(p)?;
        if let Some(prev) = &result {
            if prev.1 != folded.1 {
                return Err(CoseError::Malformed(
                    "inclusion proofs disagree on the root".into(),
                ));
            }
        }
        result = Some(folded);
    }
    let (leaf, root, components) = result.ok_or_else(|| CoseError::Malformed("no inclusion proof".into()))?;
    verify_detached(&sign1, &root, &key)?;
    Ok(VerifiedReceipt {
        tx_id: components.tx_id(),
        root,
        leaf: Some(leaf),
    })
}

/// SHA-256 of a commit evidence string, as it enters the leaf.
pub fn commit_evidence_digest(commit_evidence: &str) -> Digest {
    sha256(commit_evidence.as_bytes())
}
