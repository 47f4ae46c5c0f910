//! The auditor vouches only for what a verified signature covers: an unsigned tail fails the audit unless it is
//! explicitly accepted, snapshot evidence in it proves nothing, and a signature whose COSE part is forged is
//! refused. Each ledger here is what an attacker could write with the public ledger format.

use std::path::Path;

use prost::Message as _;
use synod_core::audit::{audit_ledger, audit_ledger_with, AuditOptions};
use synod_core::cert::{self, Identity};
use synod_core::hash::sha256;
use synod_core::ledger::{
    encode_frame, make_entry, signature_write_set, ChunkName, KeyWrite, MapWrites, SignatureRecord,
    Transaction, WriteSet, KIND_SIGNATURE, KIND_TX,
};
use synod_core::merkle::MerkleTree;
use synod_core::receipt::cose;
use synod_core::snapshot::{self, SnapshotEvidence, SnapshotFile, SNAPSHOT_EVIDENCE};
use synod_core::txid::TxId;

const VIEW: u64 = 2;

/// Writes ledgers entry by entry with genuine node and service keys.
struct Builder {
    service: Identity,
    node: Identity,
    tree: MerkleTree,
    seqno: u64,
    // (first seqno, frames) of each chunk; the last one is open.
    chunks: Vec<(u64, Vec<u8>)>,
}

impl Builder {
    fn new() -> Builder {
        let service = cert::generate_self_signed("service", true).unwrap();
        let node = cert::generate_endorsed("n0", &[], &["localhost".into()], &service).unwrap();
        Builder {
            service,
            node,
            tree: MerkleTree::new(),
            seqno: 0,
            chunks: vec![(1, Vec::new())],
        }
    }

    fn service_der(&self) -> Vec<u8> {
        cert::pem_to_der(&self.service.cert_pem).unwrap()
    }

    fn append(&mut self, kind: u32, public: &WriteSet) {
        self.seqno += 1;
        let tx = Transaction {
            view: VIEW,
            seqno: self.seqno,
            kind,
            public_writes: public.encode_to_vec(),
            ..Default::default()
        };
        let entry = make_entry(&tx, &format!("ce:{VIEW}.{}:00", self.seqno), &[0; 32]);
        self.tree.append(entry.leaf().unwrap());
        self.chunks.last_mut().unwrap().1.extend(encode_frame(&entry));
    }

    fn tx(&mut self) {
        let key = self.seqno.to_be_bytes().to_vec();
        self.append(KIND_TX, &single("public:records", key, b"v".to_vec()));
    }

    fn evidence(&mut self, ev: &SnapshotEvidence) {
        self.append(
            KIND_TX,
            &single(SNAPSHOT_EVIDENCE, Vec::new(), serde_json::to_vec(ev).unwrap()),
        );
    }

    /// A signature over every entry so far, its COSE Sign1 passed through `mutate`.
    fn signature_with(&mut self, mutate: impl FnOnce(&mut Vec<u8>)) {
        let tx_id = TxId::new(VIEW, self.seqno + 1);
        let root = self.tree.root().unwrap();
        let node_der = cert::pem_to_der(&self.node.cert_pem).unwrap();
        let record = SignatureRecord::sign(
            &cert::signing_key_from_pem(&self.node.key_pem).unwrap(),
            &cert::public_key_id_hex(&node_der).unwrap(),
            &self.node.cert_pem,
            tx_id,
            &root,
        );
        let service_key = cert::signing_key_from_pem(&self.service.key_pem).unwrap();
        let mut cose = cose::sign_root(&root, &service_key, &self.service_der(), tx_id, 1).unwrap();
        mutate(&mut cose);
        self.append(
            KIND_SIGNATURE,
            &signature_write_set(&record, &cose, None).unwrap(),
        );
    }

    fn signature(&mut self) {
        self.signature_with(|_| {});
    }

    /// Closes the open chunk (after a signature) and opens the next.
    fn close_chunk(&mut self) {
        self.chunks.push((self.seqno + 1, Vec::new()));
    }

    /// Writes the chunks from the one starting at `from` on into `dir`.
    fn write(&self, dir: &Path, from: u64) {
        std::fs::create_dir_all(dir).unwrap();
        let n = self.chunks.len();
        for (i, (start, bytes)) in self.chunks.iter().enumerate() {
            if *start < from {
                continue;
            }
            let end = self.chunks.get(i + 1).map(|c| c.0 - 1);
            let name = ChunkName {
                start: *start,
                end: end.filter(|_| i + 1 < n),
                committed: i + 1 < n,
            };
            std::fs::write(dir.join(name.file_name()), bytes).unwrap();
        }
    }
}

fn single(map: &str, key: Vec<u8>, value: Vec<u8>) -> WriteSet {
    WriteSet {
        maps: vec![MapWrites {
            name: map.into(),
            writes: vec![KeyWrite {
                key,
                value: Some(value),
            }],
        }],
    }
}

#[test]
fn audit_fails_on_a_ledger_nothing_signed_and_names_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let mut b = Builder::new();
    for _ in 0..4 {
        b.tx();
    }
    b.write(&ledger, 1);
    let service = b.service_der();

    let err = audit_ledger(&ledger, Some(&service)).unwrap_err();
    let tail = err
        .unsigned_tail
        .clone()
        .expect("the error names the unsigned tail");
    assert_eq!((tail.from, tail.to, tail.count()), (1, 4, 4));
    assert_eq!(err.seqno, Some(1));
    assert_eq!(err.offset, 0);
    assert!(
        err.reason.contains("unsigned tail: 4 entries (seqno 1 to 4)"),
        "{err}"
    );

    let allow = AuditOptions {
        allow_unsigned_tail: true,
    };
    let report = audit_ledger_with(&ledger, Some(&service), allow).unwrap();
    assert_eq!(report.signatures, 0);
    assert_eq!(report.unsigned_tail, Some(tail));
}

#[test]
fn audit_fails_on_entries_after_the_last_signature() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let mut b = Builder::new();
    b.tx();
    b.signature();
    b.close_chunk();
    b.tx();
    b.signature();
    b.tx();
    b.tx();
    b.write(&ledger, 1);
    let service = b.service_der();

    let err = audit_ledger(&ledger, Some(&service)).unwrap_err();
    let tail = err.unsigned_tail.clone().expect("unsigned tail");
    assert_eq!((tail.from, tail.to), (5, 6));
    assert!(err.reason.contains("after the last signature, 2.4"), "{err}");
    assert!(err.file.ends_with("ledger_3"), "{}", err.file.display());

    let report = audit_ledger_with(
        &ledger,
        Some(&service),
        AuditOptions {
            allow_unsigned_tail: true,
        },
    )
    .unwrap();
    assert_eq!(report.unsigned_entries(), 2);
    assert_eq!(report.last_signed, Some(TxId::new(VIEW, 4)));
}

// A ledger continuing a snapshot at seqno 2, laid out as a node that joined from it keeps it: `ledger/` from
// seqno 3 on and `snapshots/snapshot_2`. Returns the builder positioned after the evidence transaction.
fn ledger_after_snapshot(root: &Path) -> Builder {
    let mut b = Builder::new();
    b.tx();
    b.signature();
    b.close_chunk();
    let file = SnapshotFile {
        seqno: b.seqno,
        view: VIEW,
        frontier: b.tree.frontier().iter().map(|d| d.to_vec()).collect(),
        ..Default::default()
    };
    let bytes = file.encode_to_vec();
    std::fs::create_dir_all(root.join("snapshots")).unwrap();
    std::fs::write(
        root.join("snapshots").join(snapshot::file_name(b.seqno, None)),
        &bytes,
    )
    .unwrap();
    b.tx();
    b.evidence(&SnapshotEvidence {
        seqno: file.seqno,
        digest: hex::encode(sha256(&bytes)),
    });
    b.tx();
    b
}

#[test]
fn snapshot_evidence_in_the_unsigned_tail_proves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let mut b = ledger_after_snapshot(dir.path());
    b.write(&ledger, 3);
    let service = b.service_der();
    let allow = AuditOptions {
        allow_unsigned_tail: true,
    };
    let err = audit_ledger_with(&ledger, Some(&service), allow).unwrap_err();
    assert!(err.reason.contains("not covered by any signature"), "{err}");
    assert_eq!(err.seqno, Some(4), "names the evidence transaction: {err}");
    assert!(err.unsigned_tail.is_none());

    // Once a signature covers it, the same evidence proves the snapshot.
    b.signature();
    b.write(&ledger, 3);
    let report = audit_ledger(&ledger, Some(&service)).unwrap();
    assert_eq!(report.base_snapshot, Some(2));
    assert_eq!(report.unsigned_tail, None);
}

#[test]
fn auditor_refuses_a_signature_whose_cose_signature_is_forged() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let mut b = Builder::new();
    b.tx();
    b.signature_with(|cose| {
        let last = cose.len() - 1;
        cose[last] ^= 0x01;
    });
    b.write(&ledger, 1);
    let service = b.service_der();
    let err = audit_ledger(&ledger, Some(&service)).unwrap_err();
    assert_eq!(err.seqno, Some(2));
    assert!(err.reason.starts_with("COSE signature:"), "{err}");
}
