//! SHA-256 helpers with the exact byte layouts CCF's receipts use.

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Digest {
    Sha256::digest(data).into()
}

/// An internal Merkle node: SHA-256(left ‖ right), with no domain-separation prefix (CCF's receipt shape).
pub fn sha256_pair(left: &Digest, right: &Digest) -> Digest {
    let mut h = Sha256::new();
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// CCF's leaf: SHA-256(write_set_digest ‖ commit_evidence_digest ‖ claims_digest).
pub fn leaf_hash(
    write_set_digest: &Digest,
    commit_evidence_digest: &Digest,
    claims_digest: &Digest,
) -> Digest {
    let mut h = Sha256::new();
    h.update(write_set_digest);
    h.update(commit_evidence_digest);
    h.update(claims_digest);
    h.finalize().into()
}

/// Parses a 32-byte hex digest.
pub fn digest_from_hex(s: &str) -> Option<Digest> {
    let bytes = hex::decode(s).ok()?;
    bytes.try_into().ok()
}
