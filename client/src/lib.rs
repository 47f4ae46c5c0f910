//! The Rust client of a Synod network, and the library behind the `synod` CLI and the `synod-load` load
//! generator. It exists so that tools and end-to-end tests talk to nodes the way a real client must: over HTTPS
//! pinned to the service certificate, authenticated by a TLS client certificate, waiting for `Committed` before
//! trusting a write, and checking receipts offline with `synod-core`. It deliberately has no server
//! dependencies (no RocksDB, no JavaScript engine).
//!
//! ```no_run
//! # async fn demo() -> synod_client::Result<()> {
//! use std::time::Duration;
//! use synod_client::{Client, Network};
//!
//! let network = Network::load("workspace/network.json")?;
//! let client = Client::from_network(&network, None, None)?;
//! let response = client.post_json("/app/log/private", &serde_json::json!({"id": 42, "msg": "hello"})).await?;
//! let tx_id = response.error_for_status()?.tx_id()?;
//! client.wait_for_commit(tx_id, Duration::from_secs(10)).await?;
//! let receipt = client.receipt(tx_id, false).await?;
//! synod_client::verify_receipt_bytes(&receipt, client.service_cert_pem())?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod attest;
pub mod cli;
pub mod client;
pub mod commit;
pub mod connection;
pub mod error;
pub mod keys;
pub mod load;
pub mod network;

use std::path::Path;

pub use client::{ApiErrorBody, Body, Client, Response, TX_ID_HEADER};
pub use commit::CommitFollower;
pub use connection::Connection;
pub use error::{Error, Result};
pub use keys::{keygen, keygen_with, KeyFiles};
pub use network::{NamedIdentity, Network, NetworkNode};
pub use reqwest::header::HeaderMap;
pub use reqwest::{Method, StatusCode};
pub use synod_core::receipt::VerifiedReceipt;
pub use synod_core::txid::{TxId, TxStatus};

/// Verifies a receipt (CCF JSON or COSE) against the service certificate, offline.
pub fn verify_receipt_bytes(receipt: &[u8], service_cert_pem: &str) -> Result<VerifiedReceipt> {
    Ok(synod_core::receipt::verify_bytes(receipt, service_cert_pem)?)
}

/// Reads a receipt file (CCF JSON or COSE) and verifies it against the service certificate, offline.
pub fn verify_receipt_file(path: impl AsRef<Path>, service_cert_pem: &str) -> Result<VerifiedReceipt> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    verify_receipt_bytes(&bytes, service_cert_pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (JSON receipt, COSE receipt) for the first entry of a genuine sample ledger.
    pub(crate) fn sample_receipts(dir: &Path) -> (synod_core::testing::SampleLedger, Vec<u8>, Vec<u8>) {
        use synod_core::ledger::{decode_frames, parse_signature_write_set};
        use synod_core::receipt::{JsonReceipt, ProofElement};
        let sample = synod_core::testing::write_sample_ledger(dir, 6, 3);
        let sig = sample.entries.iter().find(|e| e.is_signature).unwrap();
        let bytes = std::fs::read(&sample.chunks[sig.chunk]).unwrap();
        let frame = decode_frames(&bytes[sig.offset as usize..])
            .next()
            .unwrap()
            .unwrap();
        let tx = frame.entry.decode_transaction().unwrap();
        let (record, cose_sig) = parse_signature_write_set(&tx.public_write_set().unwrap()).unwrap();
        let path = sample.tree.path(0, sig.tx_id.seqno - 1).unwrap();
        let leaf = &sample.leaves[0];
        let cose = synod_core::receipt::cose::build_receipt(&cose_sig, leaf, &path).unwrap();
        let json = JsonReceipt {
            cert: record.cert.clone(),
            is_signature_transaction: false,
            leaf_components: Some(leaf.clone()),
            node_id: record.node_id.clone(),
            proof: Some(path.iter().map(ProofElement::from).collect()),
            signature: record.signature.clone(),
            root: None,
            service_endorsements: None,
        };
        (sample, serde_json::to_vec_pretty(&json).unwrap(), cose)
    }

    #[test]
    fn receipt_files_verify_and_tampered_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (sample, json, cose) = sample_receipts(dir.path());
        let pem = &sample.service.cert_pem;
        for (name, bytes) in [("r.json", &json), ("r.cose", &cose)] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let verified = verify_receipt_file(&path, pem).unwrap();
            assert_eq!(verified.tx_id, Some(sample.entries[0].tx_id));
            for i in [0, bytes.len() / 3, bytes.len() / 2, bytes.len() - 2] {
                let mut bad = bytes.clone();
                bad[i] ^= 0x04;
                std::fs::write(&path, &bad).unwrap();
                let err = verify_receipt_file(&path, pem).unwrap_err();
                assert!(matches!(err, Error::Receipt(_)), "{name} byte {i}: {err:?}");
            }
            std::fs::write(&path, bytes).unwrap();
            let other = synod_core::cert::generate_self_signed("other", true).unwrap();
            assert!(verify_receipt_file(&path, &other.cert_pem).is_err());
        }
        assert!(matches!(
            verify_receipt_file(dir.path().join("missing"), pem),
            Err(Error::Io { .. })
        ));
    }
}
