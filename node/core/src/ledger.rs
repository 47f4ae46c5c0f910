//! The on-disk ledger format: prost messages for transactions and entries, length+CRC framing, and chunk file
//! names. A chunk is a sequence of frames `u32 LE length ‖ u32 LE crc32(body) ‖ body`, where body is an encoded
//! [`LedgerEntry`]. The CRC only catches torn writes; integrity against tampering comes from the Merkle tree and
//! the signatures over it (see `audit`).

use std::path::{Path, PathBuf};

use crate::keys::PrivateKey;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::hash::{leaf_hash, sha256, Digest};
use crate::maps;
use crate::txid::TxId;

/// Transaction kind of an ordinary (application or governance) transaction.
pub const KIND_TX: u32 = 0;
/// Transaction kind of a signature transaction.
pub const KIND_SIGNATURE: u32 = 1;

/// Size of a frame header: length and CRC.
pub const FRAME_HEADER: usize = 8;

/// One key written (or deleted) in a map.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyWrite {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The new value; None deletes the key.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub value: Option<Vec<u8>>,
}

/// The writes of one transaction to one map.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MapWrites {
    /// The map's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Writes in key order.
    #[prost(message, repeated, tag = "2")]
    pub writes: Vec<KeyWrite>,
}

/// All writes of one transaction to one visibility class (public or private maps).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteSet {
    /// Maps in name order.
    #[prost(message, repeated, tag = "1")]
    pub maps: Vec<MapWrites>,
}

impl WriteSet {
    /// True when nothing is written.
    pub fn is_empty(&self) -> bool {
        self.maps.iter().all(|m| m.writes.is_empty())
    }
}

/// A transaction as recorded in the ledger.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Transaction {
    /// View it was created in.
    #[prost(uint64, tag = "1")]
    pub view: u64,
    /// Ledger position.
    #[prost(uint64, tag = "2")]
    pub seqno: u64,
    /// [`KIND_TX`] or [`KIND_SIGNATURE`].
    #[prost(uint32, tag = "3")]
    pub kind: u32,
    /// Encoded [`WriteSet`] of public maps, in clear.
    #[prost(bytes = "vec", tag = "4")]
    pub public_writes: Vec<u8>,
    /// Encoded [`WriteSet`] of private maps, sealed (nonce ‖ AES-256-GCM) under the ledger secret; empty if none.
    #[prost(bytes = "vec", tag = "5")]
    pub private_sealed: Vec<u8>,
    /// Set by the primary on a signature transaction that ends a ledger chunk. Deciding this in the entry (not
    /// per node) keeps every node's committed chunks byte-identical.
    #[prost(bool, tag = "6")]
    pub chunk_end: bool,
    /// Set by the primary on a signature transaction at which every node takes a snapshot (it also ends the chunk,
    /// so a node that joins from the snapshot starts its ledger on a chunk boundary).
    #[prost(bool, tag = "7")]
    pub snapshot_point: bool,
}

impl Transaction {
    /// The transaction's id.
    pub fn tx_id(&self) -> TxId {
        TxId::new(self.view, self.seqno)
    }

    /// Whether the public writes may touch `map` (its name appears in them): a cheap test before decoding them,
    /// for the few maps that are looked for in every entry.
    pub fn may_write_public(&self, map: &str) -> bool {
        memchr::memmem::find(&self.public_writes, map.as_bytes()).is_some()
    }

    /// Decodes the public write set.
    pub fn public_write_set(&self) -> Result<WriteSet, LedgerError> {
        <WriteSet as prost::Message>::decode(self.public_writes.as_slice()).map_err(|source| {
            LedgerError::Decode {
                what: "public write set",
                source,
            }
        })
    }
}

/// One ledger entry: the transaction plus what its Merkle leaf needs besides the transaction's digest.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LedgerEntry {
    /// Encoded [`Transaction`]; its SHA-256 is the leaf's write-set digest.
    #[prost(bytes = "vec", tag = "1")]
    pub transaction: Vec<u8>,
    /// SHA-256 of the commit evidence string (the evidence itself is secret until a receipt reveals it).
    #[prost(bytes = "vec", tag = "2")]
    pub commit_evidence_digest: Vec<u8>,
    /// Application claims digest (zeros when none).
    #[prost(bytes = "vec", tag = "3")]
    pub claims_digest: Vec<u8>,
}

fn digest32(bytes: &[u8], what: &'static str) -> Result<Digest, LedgerError> {
    bytes.try_into().map_err(|_| LedgerError::DigestLength {
        what,
        len: bytes.len(),
    })
}

impl LedgerEntry {
    /// SHA-256 of the encoded transaction.
    pub fn write_set_digest(&self) -> Digest {
        sha256(&self.transaction)
    }

    /// The Merkle leaf of this entry.
    pub fn leaf(&self) -> Result<Digest, LedgerError> {
        Ok(self.write_set_digest_and_leaf()?.1)
    }

    /// (write set digest, Merkle leaf), hashing the transaction once for both.
    pub fn write_set_digest_and_leaf(&self) -> Result<(Digest, Digest), LedgerError> {
        let ce = digest32(&self.commit_evidence_digest, "commit evidence digest")?;
        let claims = digest32(&self.claims_digest, "claims digest")?;
        let write_set = self.write_set_digest();
        Ok((write_set, leaf_hash(&write_set, &ce, &claims)))
    }

    /// Decodes the transaction.
    pub fn decode_transaction(&self) -> Result<Transaction, LedgerError> {
        <Transaction as prost::Message>::decode(self.transaction.as_slice()).map_err(|source| {
            LedgerError::Decode {
                what: "transaction",
                source,
            }
        })
    }
}

/// Ledger format and file errors.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Bytes that do not decode as the structure they should hold.
    #[error("undecodable ledger data: {what}: {source}")]
    Decode {
        /// The structure.
        what: &'static str,
        /// Why.
        source: prost::DecodeError,
    },
    /// A digest of the wrong length.
    #[error("undecodable ledger data: {what} is {len} bytes, expected 32")]
    DigestLength {
        /// Which digest.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A signature transaction's record that is not the JSON a node writes.
    #[error("undecodable ledger data: signature record: {0}")]
    SignatureRecord(#[source] serde_json::Error),
    /// A signature record whose root is not a hex digest.
    #[error("undecodable ledger data: signature record root is not 32 hex bytes")]
    SignatureRoot,
    /// A signature transaction that does not write one of the maps every signature writes.
    #[error("undecodable ledger data: signature transaction without {0}")]
    SignatureWithout(&'static str),
    /// A recorded tree frontier that is not a list of digests.
    #[error("undecodable ledger data: tree frontier of {0} bytes is not a list of 32-byte digests")]
    TreeFrontier(usize),
    /// A file system error.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Chunk files that cannot form one ledger.
    #[error("inconsistent ledger directory: {0}")]
    Layout(String),
}

/// Encodes one frame.
pub fn encode_frame(entry: &LedgerEntry) -> Vec<u8> {
    let body = prost::Message::encode_to_vec(entry);
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A decoded frame and where it sits in the chunk.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Byte offset of the frame header.
    pub offset: u64,
    /// Whole frame length including the header.
    pub len: u64,
    /// The entry.
    pub entry: LedgerEntry,
}

/// Why the frames of a chunk stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A partial frame at the end (a torn write).
    #[error("truncated frame at offset {offset}")]
    Truncated {
        /// Offset of the partial frame.
        offset: u64,
    },
    /// A complete frame whose CRC or body is wrong.
    #[error("corrupt frame at offset {offset}: {reason}")]
    Corrupt {
        /// Offset of the bad frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Iterator over the frames of a chunk; stops after the first error.
pub struct FrameIter<'a> {
    bytes: &'a [u8],
    pos: usize,
    done: bool,
}

/// Decodes the frames of a chunk's bytes.
pub fn decode_frames(bytes: &[u8]) -> FrameIter<'_> {
    FrameIter {
        bytes,
        pos: 0,
        done: false,
    }
}

impl Iterator for FrameIter<'_> {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.bytes.len() {
            return None;
        }
        let offset = self.pos as u64;
        let rest = &self.bytes[self.pos..];
        let fail = |this: &mut Self, e: FrameError| {
            this.done = true;
            Some(Err(e))
        };
        if rest.len() < FRAME_HEADER {
            return fail(self, FrameError::Truncated { offset });
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if rest.len() - FRAME_HEADER < len {
            return fail(self, FrameError::Truncated { offset });
        }
        let body = &rest[FRAME_HEADER..FRAME_HEADER + len];
        if crc32fast::hash(body) != crc {
            return fail(
                self,
                FrameError::Corrupt {
                    offset,
                    reason: "checksum mismatch".into(),
                },
            );
        }
        match <LedgerEntry as prost::Message>::decode(body) {
            Ok(entry) => {
                self.pos += FRAME_HEADER + len;
                Some(Ok(Frame {
                    offset,
                    len: (FRAME_HEADER + len) as u64,
                    entry,
                }))
            }
            Err(e) => fail(
                self,
                FrameError::Corrupt {
                    offset,
                    reason: format!("undecodable entry: {e}"),
                },
            ),
        }
    }
}

/// A chunk file name: `ledger_<start>` (open), `ledger_<start>-<end>` (closed), `ledger_<start>-<end>.committed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkName {
    /// First seqno in the chunk.
    pub start: u64,
    /// Last seqno, once the chunk is closed.
    pub end: Option<u64>,
    /// Closed and known committed.
    pub committed: bool,
}

impl ChunkName {
    /// The file name.
    pub fn file_name(&self) -> String {
        match self.end {
            None => format!("ledger_{}", self.start),
            Some(end) if self.committed => format!("ledger_{}-{}.committed", self.start, end),
            Some(end) => format!("ledger_{}-{}", self.start, end),
        }
    }

    /// Parses a file name; None for anything that is not a chunk.
    pub fn parse(name: &str) -> Option<ChunkName> {
        let rest = name.strip_prefix("ledger_")?;
        let (range, committed) = match rest.strip_suffix(".committed") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let num = |s: &str| -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        match range.split_once('-') {
            Some((s, e)) => {
                let (start, end) = (num(s)?, num(e)?);
                (end >= start).then_some(ChunkName {
                    start,
                    end: Some(end),
                    committed,
                })
            }
            None if !committed => Some(ChunkName {
                start: num(range)?,
                end: None,
                committed,
            }),
            None => None,
        }
    }
}

/// Chunk files in `dir` sorted by start seqno; unrelated files are ignored.
pub fn list_chunks(dir: &Path) -> Result<Vec<(ChunkName, PathBuf)>, LedgerError> {
    let io = |source| LedgerError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut chunks = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if let Some(name) = entry.file_name().to_str().and_then(ChunkName::parse) {
            chunks.push((name, entry.path()));
        }
    }
    chunks.sort_by_key(|(n, _)| n.start);
    for pair in chunks.windows(2) {
        let (a, b) = (&pair[0].0, &pair[1].0);
        if a.end.is_none_or(|end| end >= b.start) {
            return Err(LedgerError::Layout(format!(
                "chunks {} and {} overlap",
                a.file_name(),
                b.file_name()
            )));
        }
    }
    Ok(chunks)
}

/// The JSON value a signature transaction stores at key "" of [`crate::maps::SIGNATURES`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SignatureRecord {
    /// Signing node's id (hex SHA-256 of its public key's SubjectPublicKeyInfo).
    pub node_id: String,
    /// View of the signature transaction.
    pub view: u64,
    /// Seqno of the signature transaction.
    pub seqno: u64,
    /// Hex Merkle root over every transaction before this one.
    pub root: String,
    /// Base64 signature by the node over the 32 root bytes: DER ECDSA with the root as prehash (CCF's), or Ed25519.
    pub signature: String,
    /// The node's certificate (PEM), endorsed by the service identity.
    pub cert: String,
}

impl SignatureRecord {
    /// Signs `root` with the node's key and records who signed what.
    pub fn sign(
        node_key: &PrivateKey,
        node_id: &str,
        node_cert_pem: &str,
        tx_id: TxId,
        root: &Digest,
    ) -> SignatureRecord {
        SignatureRecord {
            node_id: node_id.to_string(),
            view: tx_id.view,
            seqno: tx_id.seqno,
            root: hex::encode(root),
            signature: base64::engine::general_purpose::STANDARD.encode(node_key.sign_digest(root)),
            cert: node_cert_pem.to_string(),
        }
    }

    /// The signed root.
    pub fn root_digest(&self) -> Result<Digest, LedgerError> {
        crate::hash::digest_from_hex(&self.root).ok_or(LedgerError::SignatureRoot)
    }

    /// Checks that the recorded certificate is the signing node's (its id) and that its signature over the root
    /// verifies. Returns the root and the certificate's DER (for the endorsement check the caller makes).
    pub fn verify_node_signature(&self) -> Result<(Digest, Vec<u8>), String> {
        use base64::Engine as _;
        let root = self.root_digest().map_err(|e| e.to_string())?;
        let node_der = crate::cert::pem_to_der(&self.cert).map_err(|e| format!("node certificate: {e}"))?;
        if crate::cert::public_key_id_hex(&node_der).map_err(|e| e.to_string())? != self.node_id {
            return Err("node_id does not match the signing certificate".into());
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|e| format!("node signature: {e}"))?;
        crate::cert::public_key(&node_der)
            .map_err(|e| e.to_string())?
            .verify_digest(&root, &sig)
            .map_err(|e| format!("node signature over the root does not verify: {e}"))?;
        Ok((root, node_der))
    }
}

/// The public write set of a signature transaction: the COSE signature, the node's signature record and the
/// Merkle frontier of the signed tree (if given), in map name order as every write set is.
pub fn signature_write_set(
    record: &SignatureRecord,
    cose_sign1: &[u8],
    tree_frontier: Option<&[Digest]>,
) -> Result<WriteSet, LedgerError> {
    let record_json = serde_json::to_vec(record).map_err(LedgerError::SignatureRecord)?;
    let single = |name: &str, value: Vec<u8>| MapWrites {
        name: name.to_string(),
        writes: vec![KeyWrite {
            key: Vec::new(),
            value: Some(value),
        }],
    };
    let mut maps = vec![
        single(maps::COSE_SIGNATURES, cose_sign1.to_vec()),
        single(maps::SIGNATURES, record_json),
    ];
    if let Some(frontier) = tree_frontier {
        maps.push(single(maps::TREE, frontier.concat()));
    }
    Ok(WriteSet { maps })
}

/// Extracts the signature record and COSE signature from a signature transaction's public write set.
pub fn parse_signature_write_set(public: &WriteSet) -> Result<(SignatureRecord, Vec<u8>), LedgerError> {
    let value = |name: &'static str| {
        public
            .maps
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.writes.first())
            .and_then(|w| w.value.clone())
            .ok_or(LedgerError::SignatureWithout(name))
    };
    let record: SignatureRecord =
        serde_json::from_slice(&value(maps::SIGNATURES)?).map_err(LedgerError::SignatureRecord)?;
    Ok((record, value(maps::COSE_SIGNATURES)?))
}

/// The Merkle frontier a signature transaction records (`public:ccf.internal.tree`): the maximal complete
/// subtrees of the tree it signs, largest first. With it and the entries up to the next signature, a receipt for
/// any transaction in between is rebuilt from the ledger alone. `None` for signatures that do not record it.
pub fn signature_tree_frontier(public: &WriteSet) -> Result<Option<Vec<Digest>>, LedgerError> {
    let Some(bytes) = public
        .maps
        .iter()
        .find(|m| m.name == maps::TREE)
        .and_then(|m| m.writes.first())
        .and_then(|w| w.value.as_deref())
    else {
        return Ok(None);
    };
    if bytes.len() % 32 != 0 {
        return Err(LedgerError::TreeFrontier(bytes.len()));
    }
    Ok(Some(
        bytes
            .chunks_exact(32)
            .map(|c| {
                let mut d = [0u8; 32];
                d.copy_from_slice(c);
                d
            })
            .collect(),
    ))
}

/// Why a signature transaction does not vouch for the entries before it.
#[derive(Debug, thiserror::Error)]
pub enum SignatureCheckError {
    /// The write set does not hold a well-formed signature record and COSE signature.
    #[error(transparent)]
    Malformed(#[from] LedgerError),
    /// The record was made for another transaction than the one it sits in.
    #[error("signature record names {0}")]
    WrongTxId(TxId),
    /// The signed root is not the Merkle root over the entries before the signature.
    #[error("signed root {signed} differs from the Merkle root {expected} of the entries before it")]
    RootMismatch {
        /// Hex root the record signs.
        signed: String,
        /// Hex root recomputed by the verifier.
        expected: String,
    },
    /// The node's certificate, id or Ed25519 signature over the root is wrong.
    #[error("{0}")]
    NodeSignature(String),
    /// The signing node's certificate is not endorsed by the service.
    #[error("signing node: {0}")]
    Endorsement(crate::cert::CertError),
    /// The service's COSE Sign1 over the root does not verify.
    #[error("COSE signature: {0}")]
    Cose(crate::receipt::cose::CoseError),
    /// The COSE signature is valid but was made for another transaction.
    #[error("COSE signature names tx {0}")]
    CoseTxId(TxId),
    /// The recorded Merkle frontier is not the frontier of the tree the signature signs.
    #[error("the recorded tree frontier does not fold to the signed root: {0}")]
    TreeFrontier(String),
}

/// A signature transaction whose checks passed.
#[derive(Clone, Debug)]
pub struct VerifiedSignature {
    /// The node's signature record.
    pub record: SignatureRecord,
    /// The root it signs.
    pub root: Digest,
    /// The service's COSE Sign1 over the root (tagged CBOR, as stored).
    pub cose_sign1: Vec<u8>,
}

/// The one check of a signature transaction, shared by the node and the offline auditor: the record names
/// `tx_id`, signs `expected_root`, the node's signature verifies with its certificate, the certificate is endorsed
/// by the service, and the service's COSE Sign1 over the root verifies and names `tx_id`. It is
/// [`check_signature_shape`] (no cryptography) then [`verify_signature_crypto`] (two signature checks plus the
/// endorsement's, remembered per certificate), which a node may run at different times.
pub fn verify_signature_transaction(
    public: &WriteSet,
    tx_id: TxId,
    expected_root: &Digest,
    service_cert_der: &[u8],
) -> Result<VerifiedSignature, SignatureCheckError> {
    check_signature_transaction(public, tx_id, expected_root, Some(service_cert_der))
}

/// [`verify_signature_transaction`] without the service certificate: only the record and the node's signature are
/// checked, so anyone holding a node key could have made it. For audits run without the service certificate.
pub fn verify_signature_transaction_node_only(
    public: &WriteSet,
    tx_id: TxId,
    expected_root: &Digest,
) -> Result<VerifiedSignature, SignatureCheckError> {
    check_signature_transaction(public, tx_id, expected_root, None)
}

fn check_signature_transaction(
    public: &WriteSet,
    tx_id: TxId,
    expected_root: &Digest,
    service_cert_der: Option<&[u8]>,
) -> Result<VerifiedSignature, SignatureCheckError> {
    let shaped = check_signature_shape(public, tx_id, expected_root)?;
    verify_signature_crypto(
        &shaped.record,
        &shaped.cose_sign1,
        &shaped.root,
        tx_id,
        service_cert_der,
    )?;
    Ok(shaped)
}

/// The checks of a signature transaction that need no cryptography: its record names `tx_id` and signs
/// `expected_root`, and the tree frontier it carries (if any) folds to that root. The result is *not* verified
/// until [`verify_signature_crypto`] passes on it.
pub fn check_signature_shape(
    public: &WriteSet,
    tx_id: TxId,
    expected_root: &Digest,
) -> Result<VerifiedSignature, SignatureCheckError> {
    let (record, cose_sign1) = parse_signature_write_set(public)?;
    if record.view != tx_id.view || record.seqno != tx_id.seqno {
        return Err(SignatureCheckError::WrongTxId(TxId::new(
            record.view,
            record.seqno,
        )));
    }
    // The root is compared before any signature is verified: a mismatch is the common tampering case and
    // needs no cryptography to name.
    let root = record.root_digest()?;
    if root != *expected_root {
        return Err(SignatureCheckError::RootMismatch {
            signed: hex::encode(root),
            expected: hex::encode(expected_root),
        });
    }
    // The frontier receipts are rebuilt from must be the signed tree's: it folds to the signed root.
    if let Some(frontier) = signature_tree_frontier(public)? {
        let size = tx_id.seqno.saturating_sub(1);
        let folded = crate::merkle::MerkleTree::from_frontier(size, &frontier)
            .map_err(|e| SignatureCheckError::TreeFrontier(e.to_string()))?
            .root();
        if folded != Some(root) {
            return Err(SignatureCheckError::TreeFrontier(format!(
                "it folds to {}",
                folded.map(hex::encode).unwrap_or_default()
            )));
        }
    }
    Ok(VerifiedSignature {
        record,
        root,
        cose_sign1,
    })
}

/// The cryptographic checks of a signature transaction that passed [`check_signature_shape`] (its record, COSE
/// Sign1 and root): the node's signature over the root, and with the service certificate the node's endorsement and
/// the service's COSE Sign1 over the root naming `tx_id`.
pub fn verify_signature_crypto(
    record: &SignatureRecord,
    cose_sign1: &[u8],
    root: &Digest,
    tx_id: TxId,
    service_cert_der: Option<&[u8]>,
) -> Result<(), SignatureCheckError> {
    let (_, node_der) = record
        .verify_node_signature()
        .map_err(SignatureCheckError::NodeSignature)?;
    if let Some(service) = service_cert_der {
        crate::cert::verify_endorsement(&node_der, service).map_err(SignatureCheckError::Endorsement)?;
        let signed_txid = crate::receipt::cose::verify_signature(cose_sign1, root, service)
            .map_err(SignatureCheckError::Cose)?;
        if signed_txid != tx_id {
            return Err(SignatureCheckError::CoseTxId(signed_txid));
        }
    }
    Ok(())
}

/// Builds the ledger entry of a transaction from its commit evidence and claims digest.
pub fn make_entry(transaction: &Transaction, commit_evidence: &str, claims_digest: &Digest) -> LedgerEntry {
    LedgerEntry {
        transaction: prost::Message::encode_to_vec(transaction),
        commit_evidence_digest: sha256(commit_evidence.as_bytes()).to_vec(),
        claims_digest: claims_digest.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u8) -> LedgerEntry {
        let tx = Transaction {
            view: 2,
            seqno: i as u64,
            kind: KIND_TX,
            public_writes: vec![i; 5],
            private_sealed: vec![],
            ..Default::default()
        };
        LedgerEntry {
            transaction: prost::Message::encode_to_vec(&tx),
            commit_evidence_digest: vec![i; 32],
            claims_digest: vec![0; 32],
        }
    }

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let mut bytes = Vec::new();
        for i in 1..=3 {
            bytes.extend(encode_frame(&entry(i)));
        }
        let frames: Vec<_> = decode_frames(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1].entry, entry(2));
        assert_eq!(frames[2].offset + frames[2].len, bytes.len() as u64);
        assert_eq!(
            frames[0].entry.decode_transaction().unwrap().tx_id(),
            TxId::new(2, 1)
        );

        let torn = &bytes[..bytes.len() - 3];
        let results: Vec<_> = decode_frames(torn).collect();
        assert_eq!(results.len(), 3);
        assert_eq!(
            results[2].as_ref().unwrap_err(),
            &FrameError::Truncated {
                offset: frames[2].offset
            }
        );

        let mut bad = bytes.clone();
        bad[frames[1].offset as usize + 12] ^= 0x40;
        let results: Vec<_> = decode_frames(&bad).collect();
        assert_eq!(results.len(), 2);
        assert!(matches!(results[1], Err(FrameError::Corrupt { offset, .. }) if offset == frames[1].offset));
    }

    // (signature write set, service certificate DER) as a primary writes them, the COSE Sign1 passed to `mutate`.
    fn signed(tx_id: TxId, root: &Digest, mutate: impl FnOnce(&mut Vec<u8>)) -> (WriteSet, Vec<u8>) {
        signed_for(tx_id, tx_id, root, mutate)
    }

    // As `signed`, with the COSE signature made for `cose_tx_id`.
    fn signed_for(
        tx_id: TxId,
        cose_tx_id: TxId,
        root: &Digest,
        mutate: impl FnOnce(&mut Vec<u8>),
    ) -> (WriteSet, Vec<u8>) {
        let service = crate::cert::generate_self_signed("service", true).unwrap();
        let node = crate::cert::generate_endorsed("n0", &[], &["localhost".into()], &service).unwrap();
        let service_der = crate::cert::pem_to_der(&service.cert_pem).unwrap();
        let node_der = crate::cert::pem_to_der(&node.cert_pem).unwrap();
        let node_key = crate::cert::signing_key_from_pem(&node.key_pem).unwrap();
        let service_key = crate::cert::signing_key_from_pem(&service.key_pem).unwrap();
        let node_id = crate::cert::public_key_id_hex(&node_der).unwrap();
        let record = SignatureRecord::sign(&node_key, &node_id, &node.cert_pem, tx_id, root);
        let mut cose =
            crate::receipt::cose::sign_root(root, &service_key, &service_der, cose_tx_id, 1).unwrap();
        mutate(&mut cose);
        (signature_write_set(&record, &cose, None).unwrap(), service_der)
    }

    #[test]
    fn signature_check_refuses_any_changed_byte_of_the_cose_signature() {
        let (tx_id, root) = (TxId::new(3, 12), [5u8; 32]);
        let (genuine, service_der) = signed(tx_id, &root, |_| {});
        let ok = verify_signature_transaction(&genuine, tx_id, &root, &service_der).unwrap();
        assert_eq!(ok.root, root);
        let (_, cose) = parse_signature_write_set(&genuine).unwrap();
        assert_eq!(ok.cose_sign1, cose);
        for i in 0..cose.len() {
            let mut bad_cose = cose.clone();
            bad_cose[i] ^= 0x01;
            let mut forged = genuine.clone();
            forged.maps[0].writes[0].value = Some(bad_cose);
            assert_eq!(forged.maps[0].name, maps::COSE_SIGNATURES);
            let err = verify_signature_transaction(&forged, tx_id, &root, &service_der).unwrap_err();
            assert!(matches!(err, SignatureCheckError::Cose(_)), "byte {i}: {err}");
            // Without the service certificate nothing can check the COSE signature: the node-only check is
            // exactly that, and says so in its name.
            verify_signature_transaction_node_only(&forged, tx_id, &root).unwrap();
        }
    }

    #[test]
    fn signature_check_refuses_other_roots_txids_and_services() {
        let (tx_id, root) = (TxId::new(3, 12), [5u8; 32]);
        let (ws, service_der) = signed(tx_id, &root, |_| {});
        let err = verify_signature_transaction(&ws, tx_id, &[6; 32], &service_der).unwrap_err();
        assert!(matches!(err, SignatureCheckError::RootMismatch { .. }), "{err}");
        let err = verify_signature_transaction(&ws, TxId::new(3, 13), &root, &service_der).unwrap_err();
        assert!(
            matches!(err, SignatureCheckError::WrongTxId(t) if t == tx_id),
            "{err}"
        );
        let other = crate::cert::generate_self_signed("other", true).unwrap();
        let other_der = crate::cert::pem_to_der(&other.cert_pem).unwrap();
        let err = verify_signature_transaction(&ws, tx_id, &root, &other_der).unwrap_err();
        assert!(matches!(err, SignatureCheckError::Endorsement(_)), "{err}");
        // A COSE signature made for another transaction of the same service is not this one's.
        let (moved, service_der) = signed_for(tx_id, TxId::new(3, 20), &root, |_| {});
        let err = verify_signature_transaction(&moved, tx_id, &root, &service_der).unwrap_err();
        assert!(
            matches!(err, SignatureCheckError::CoseTxId(t) if t == TxId::new(3, 20)),
            "{err}"
        );
    }

    #[test]
    fn a_recorded_tree_frontier_must_fold_to_the_signed_root() {
        let mut tree = crate::merkle::MerkleTree::new();
        for i in 0..11u8 {
            tree.append([i; 32]);
        }
        let (tx_id, root) = (TxId::new(3, 12), tree.root().unwrap());
        let (ws, service_der) = signed(tx_id, &root, |_| {});
        let record = parse_signature_write_set(&ws).unwrap();
        let with = |frontier: &[Digest]| signature_write_set(&record.0, &record.1, Some(frontier)).unwrap();
        let frontier = tree.frontier();
        let good = with(&frontier);
        verify_signature_transaction(&good, tx_id, &root, &service_der).unwrap();
        assert_eq!(signature_tree_frontier(&good).unwrap(), Some(frontier.clone()));
        assert_eq!(
            signature_tree_frontier(&ws).unwrap(),
            None,
            "older signatures record none"
        );
        let mut bent = frontier.clone();
        bent[1][0] ^= 1;
        let err = verify_signature_transaction(&with(&bent), tx_id, &root, &service_der).unwrap_err();
        assert!(matches!(err, SignatureCheckError::TreeFrontier(_)), "{err}");
        let err =
            verify_signature_transaction(&with(&frontier[1..]), tx_id, &root, &service_der).unwrap_err();
        assert!(matches!(err, SignatureCheckError::TreeFrontier(_)), "{err}");
    }

    #[test]
    fn chunk_names() {
        for (s, n) in [
            (
                "ledger_1",
                ChunkName {
                    start: 1,
                    end: None,
                    committed: false,
                },
            ),
            (
                "ledger_1-20",
                ChunkName {
                    start: 1,
                    end: Some(20),
                    committed: false,
                },
            ),
            (
                "ledger_21-40.committed",
                ChunkName {
                    start: 21,
                    end: Some(40),
                    committed: true,
                },
            ),
        ] {
            assert_eq!(ChunkName::parse(s).as_ref(), Some(&n));
            assert_eq!(n.file_name(), s);
        }
        for bad in [
            "ledger_",
            "ledger_a",
            "ledger_5-3",
            "ledger_1.committed",
            "ledger_1-2.tmp",
            "foo",
            "ledger_+1",
        ] {
            assert_eq!(ChunkName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn list_chunks_sorts_and_rejects_overlap() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["ledger_11", "ledger_1-10.committed", "notes.txt"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let chunks = list_chunks(dir.path()).unwrap();
        assert_eq!(chunks.iter().map(|c| c.0.start).collect::<Vec<_>>(), vec![1, 11]);
        std::fs::write(dir.path().join("ledger_5-12"), b"").unwrap();
        assert!(list_chunks(dir.path()).is_err());
    }
}
