//! Genuine sample ledgers for tests of this crate and of others (audit, CLI, tamper tests). Built with the same
//! entry and signature helpers the node uses, so a sample is indistinguishable from a node's ledger.

use std::path::{Path, PathBuf};

use crate::cert::{self, Identity};
use crate::hash::{sha256, Digest};
use crate::ledger::{
    encode_frame, make_entry, signature_write_set, ChunkName, KeyWrite, MapWrites, SignatureRecord,
    Transaction, WriteSet, KIND_SIGNATURE, KIND_TX,
};
use crate::merkle::MerkleTree;
use crate::receipt::cose;
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

/// A deterministic random source (SplitMix64): seeded simulations, fault schedules and fuzzers draw every choice
/// from one, so a failing seed replays.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `per_million` / 1,000,000.
    pub fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }
}

/// Inputs for a mutation fuzzer without coverage feedback (cargo-fuzz needs a nightly toolchain): each input is one
/// of `seeds`, mutated a few times (bit flips, byte changes, truncation, insertion, splicing with another seed,
/// duplication of a range), or random bytes; the sequence follows `rng_seed`, so a failing input is found again.
/// Decoders fed with these must answer an error, never panic.
pub fn fuzz_inputs(seeds: &[Vec<u8>], count: u64, rng_seed: u64) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut rng = Rng::new(rng_seed);
    let mut next = move || rng.next_u64();
    (0..count).map(move |_| {
        if seeds.is_empty() || next() % 16 == 0 {
            let len = (next() % 512) as usize;
            return (0..len).map(|_| next() as u8).collect();
        }
        let mut input = seeds[(next() % seeds.len() as u64) as usize].clone();
        for _ in 0..1 + next() % 4 {
            let len = input.len().max(1) as u64;
            let at = (next() % len) as usize;
            let last = input.len().saturating_sub(1);
            match next() % 7 {
                0 if !input.is_empty() => input[at.min(last)] ^= 1 << (next() % 8),
                1 if !input.is_empty() => input[at.min(last)] = next() as u8,
                2 => input.truncate(at),
                3 => input.insert(at.min(input.len()), next() as u8),
                4 => {
                    let other = &seeds[(next() % seeds.len() as u64) as usize];
                    let from = (next() % other.len().max(1) as u64) as usize;
                    input.truncate(at);
                    input.extend_from_slice(other.get(from..).unwrap_or_default());
                }
                5 if !input.is_empty() => {
                    let end = (at + 1 + (next() % 16) as usize).min(input.len());
                    let range = input[at.min(end)..end].to_vec();
                    input.splice(at..at, range);
                }
                _ => {
                    // Interesting integers where lengths and counts live.
                    let v = [0u8, 0x7f, 0x80, 0xff][(next() % 4) as usize];
                    if !input.is_empty() {
                        input[at.min(last)] = v;
                    }
                }
            }
        }
        input
    })
}

/// How many fuzz inputs a target gets: `FUZZ_ITERS` from the environment (long runs), else `default`.
pub fn fuzz_iterations(default: u64) -> u64 {
    std::env::var("FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (COSE receipt, compact JSON receipt) for entry `index` under the first signature after it.
pub fn receipts_for(sample: &SampleLedger, index: usize) -> (Vec<u8>, Vec<u8>, TxId) {
    let sig = sample.entries[index..]
        .iter()
        .find(|e| e.is_signature)
        .expect("covering signature");
    let bytes = std::fs::read(&sample.chunks[sig.chunk]).expect("sample");
    let frame = crate::ledger::decode_frames(&bytes[sig.offset as usize..])
        .next()
        .expect("sample")
        .expect("sample");
    let tx = frame.entry.decode_transaction().expect("sample");
    let (record, cose_sig) =
        crate::ledger::parse_signature_write_set(&tx.public_write_set().expect("sample")).expect("sample");
    let size = sig.tx_id.seqno - 1;
    let path = sample.tree.path(index as u64, size).expect("sample");
    let leaf = &sample.leaves[index];
    let cose_receipt = crate::receipt::cose::build_receipt(&cose_sig, leaf, &path).expect("sample");
    let json = crate::receipt::JsonReceipt {
        cert: record.cert.clone(),
        is_signature_transaction: false,
        leaf_components: Some(leaf.clone()),
        node_id: record.node_id.clone(),
        proof: Some(path.iter().map(crate::receipt::ProofElement::from).collect()),
        signature: record.signature.clone(),
        root: None,
        service_endorsements: None,
    };
    (
        cose_receipt,
        serde_json::to_vec(&json).unwrap(),
        sample.entries[index].tx_id,
    )
}
