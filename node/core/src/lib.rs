#![deny(missing_docs)]
//! What a Synod client verifies offline: transaction ids, the Merkle tree, the ledger format, certificates, COSE
//! signatures and receipts, and the ledger audit. Deliberately free of server dependencies (no RocksDB, no async
//! runtime, no JavaScript engine) so the `synod` CLI and third-party verifiers stay small.

pub mod attestation;
pub mod audit;
pub mod cert;
pub mod hash;
pub mod keys;
pub mod ledger;
pub mod maps;
pub mod merkle;
mod p384_tables;
pub mod pem;
pub mod receipt;
pub mod recovery;
pub mod snapshot;
pub mod tables;
pub mod testing;
pub mod txid;
