//! Genuine sample ledgers for tests of this crate and of others (audit, CLI, tamper tests). Built with the same
//! entry and signature helpers the node uses, so a sample is indistinguishable from a node's ledger.

use std::path::{Path, PathBuf};

use crate::cert::{self, Identity};
use crate::cose;
use crate::hash::{sha256, Digest};
use crate::ledger::{
    encode_frame, make_entry, signature_write_set, ChunkName, KeyWrite, MapWrites, SignatureRecord,
    Transaction, WriteSet, KIND_SIGNATURE, KIND_TX,
};
use crate::merkle::MerkleTree;
use crate::receipt::LeafComponents;
use crate::txid::TxId;

/// A written sample ledger and what is needed to check it.
pub struct SampleLedger {
    /// The service identity (signs COSE roots, endorses the node).
    pub service: Identity,
    /// The signing node's identity.
    pub node: Identity,
    /// The chunk files in order.
    pub chunks: Vec<PathBuf>,
    /// Seqno of every entry, with the chunk index and byte range it occupies.
    pub entries: Vec<SampleEntry>,
    /// The Merkle tree over every entry.
    pub tree: MerkleTree,
    /// Leaf components of every entry, by seqno - 1.
    pub leaves: Vec<LeafComponents>,
}

/// Where one sample entry sits.
#[derive(Clone, Debug)]
pub struct SampleEntry {
    /// The entry's tx id.
    pub tx_id: TxId,
    /// Index into [`SampleLedger::chunks`].
    pub chunk: usize,
    /// First byte of the frame in the chunk.
    pub offset: u64,
    /// Frame length.
    pub len: u64,
    /// Whether it is a signature transaction.
    pub is_signature: bool,
}

fn sample_commit_evidence(tx_id: TxId) -> String {
    format!(
        "ce:{tx_id}:{}",
        hex::encode(sha256(format!("sample {tx_id}").as_bytes()))
    )
}

/// Writes `txs` ordinary transactions (view 2) with a signature after every `sig_every` of them (and at the end),
/// starting a new chunk after a signature once a chunk holds 10 or more entries. Chunks are closed and committed
/// except the last. Panics only on I/O errors in the test's own temp dir.
pub fn write_sample_ledger(dir: &Path, txs: u64, sig_every: u64) -> SampleLedger {
    let service = cert::generate_self_signed("sample service", true).expect("service identity");
    let node = cert::generate_endorsed("n0", &[], &["localhost".into()], &service).expect("node identity");
    let service_der = cert::pem_to_der(&service.cert_pem).expect("service der");
    let node_der = cert::pem_to_der(&node.cert_pem).expect("node der");
    let node_id = cert::public_key_id_hex(&node_der).expect("node id");
    let node_key = cert::signing_key_from_pem(&node.key_pem).expect("node key");
    let service_key = cert::signing_key_from_pem(&service.key_pem).expect("service key");

    let mut tree = MerkleTree::new();
    let mut leaves = Vec::new();
    let mut entries = Vec::new();
    let mut chunks: Vec<(u64, Vec<u8>)> = vec![(1, Vec::new())];
    let (mut seqno, mut written, mut since_sig, mut in_chunk) = (0u64, 0u64, 0u64, 0u64);
    let mut push = |tx: Transaction, chunks: &mut Vec<(u64, Vec<u8>)>, tree: &mut MerkleTree| {
        let tx_id = tx.tx_id();
        let ce = sample_commit_evidence(tx_id);
        let claims: Digest = [0; 32];
        let entry = make_entry(&tx, &ce, &claims);
        let leaf = entry.leaf().expect("leaf");
        tree.append(leaf);
        leaves.push(LeafComponents {
            write_set_digest: hex::encode(entry.write_set_digest()),
            commit_evidence: ce,
            claims_digest: hex::encode(claims),
        });
        let frame = encode_frame(&entry);
        let idx = chunks.len() - 1;
        let chunk = &mut chunks[idx].1;
        entries.push(SampleEntry {
            tx_id,
            chunk: idx,
            offset: chunk.len() as u64,
            len: frame.len() as u64,
            is_signature: tx.kind == KIND_SIGNATURE,
        });
        chunk.extend(frame);
    };
    while written < txs || since_sig > 0 {
        seqno += 1;
        let tx_id = TxId::new(2, seqno);
        if since_sig == sig_every.max(1) || (written == txs && since_sig > 0) {
            let root = tree.root().expect("non-empty");
            let record = SignatureRecord::sign(&node_key, &node_id, &node.cert_pem, tx_id, &root);
            let cose =
                cose::sign_root(&root, &service_key, &service_der, tx_id, 1_700_000_000).expect("cose");
            let ws =
                signature_write_set(&record, &cose, Some(&tree.frontier())).expect("signature write set");
            let tx = Transaction {
                view: 2,
                seqno,
                kind: KIND_SIGNATURE,
                public_writes: prost::Message::encode_to_vec(&ws),
                private_sealed: vec![],
                ..Default::default()
            };
            push(tx, &mut chunks, &mut tree);
            since_sig = 0;
            in_chunk += 1;
            if in_chunk >= 10 && written < txs {
                chunks.push((seqno + 1, Vec::new()));
                in_chunk = 0;
            }
        } else {
            let ws = WriteSet {
                maps: vec![MapWrites {
                    name: "public:records".into(),
                    writes: vec![KeyWrite {
                        key: seqno.to_be_bytes().to_vec(),
                        value: Some(format!("value {seqno}").into_bytes()),
                    }],
                }],
            };
            let tx = Transaction {
                view: 2,
                seqno,
                kind: KIND_TX,
                public_writes: prost::Message::encode_to_vec(&ws),
                private_sealed: vec![],
                ..Default::default()
            };
            push(tx, &mut chunks, &mut tree);
            in_chunk += 1;
            written += 1;
            since_sig += 1;
        }
    }
    let n = chunks.len();
    let mut paths = Vec::new();
    for (i, (start, bytes)) in chunks.into_iter().enumerate() {
        let end = entries
            .iter()
            .filter(|e| e.chunk == i)
            .map(|e| e.tx_id.seqno)
            .max()
            .unwrap_or(start);
        let name = if i + 1 == n {
            ChunkName {
                start,
                end: None,
                committed: false,
            }
        } else {
            ChunkName {
                start,
                end: Some(end),
                committed: true,
            }
        };
        let path = dir.join(name.file_name());
        std::fs::write(&path, bytes).expect("write sample chunk");
        paths.push(path);
    }
    SampleLedger {
        service,
        node,
        chunks: paths,
        entries,
        tree,
        leaves,
    }
}
