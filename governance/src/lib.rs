//! Synod consortium governance, CCF-compatible (api-version 2023-06-01-preview / 2024-07-01).
//!
//! Members govern the service by signed requests: proposals (lists of actions), ballots (JavaScript `vote`
//! functions), withdrawals and state-digest acknowledgements, each a COSE_Sign1 signed with the member's
//! Ed25519 or ECDSA P-384 key. The node decides proposals with its JavaScript constitution.
//!
//! - [`envelope`]: the request envelope. [`envelope::parse`] / [`envelope::verify`] are what the node uses to authenticate a
//!   request (and [`envelope::signature_digest`] to refuse replays); [`envelope::sign`] and [`envelope::generate_member`]
//!   are what members and tests use. No I/O, no async.
//! - [`client`] (feature `client`, on by default): [`GovClient`], a member talking to `/gov/*` over HTTPS with
//!   `synod-client`; what the `synod-gov` CLI and the end-to-end tests use.
//! - [`bundle`]: JavaScript application bundles in CCF's format, for the `set_js_app` action.
//! - [`cli`] (feature `client`): the `synod-gov` command line.
//!
//! ```
//! use synod_governance::envelope::{self, KeyKind, MemberKey, MsgType};
//!
//! let member = envelope::generate_member("member0", KeyKind::Ed25519).unwrap();
//! let cert_der = synod_core::cert::pem_to_der(&member.cert_pem).unwrap();
//! let key = MemberKey::from_pem(&member.key_pem).unwrap();
//! let body = br#"{"actions": [{"name": "transition_service_to_open", "args": {}}]}"#;
//! let request = envelope::sign(&key, &cert_der, MsgType::Proposal, 1_700_000_000, None, body).unwrap();
//!
//! // On the node: find the member by kid, then verify against its certificate.
//! let kid = envelope::parse(&request).unwrap().kid;
//! assert_eq!(kid, envelope::member_id(&cert_der));
//! let verified = envelope::verify(&request, &cert_der).unwrap();
//! verified.expect(MsgType::Proposal, None).unwrap();
//! assert_eq!(verified.payload, body);
//! ```
#![deny(missing_docs)]

pub mod bundle;
#[cfg(feature = "client")]
pub mod cli;
#[cfg(feature = "client")]
pub mod client;
pub mod envelope;
pub mod proposal;

#[cfg(feature = "client")]
pub use client::{ClientError, GovClient, ProposalInfo, ProposalState, API_VERSION};
pub use envelope::{
    generate_member, member_id, parse, sign, signature_digest, verify, Alg, EnvelopeError, GovRequest,
    KeyKind, MemberKey, MsgType,
};

/// Names of the governance tables, shared with the node.
pub use synod_core::maps;
