//! Synod consortium governance: members' signed proposals and ballots, decided by a JavaScript constitution.
//!
//! Status: the tables it will own are already written at genesis by the node (`public:ccf.gov.members.certs`,
//! `public:ccf.gov.users.certs`, `public:ccf.gov.service.info`); proposals, ballots, the constitution and the
//! members' CLI arrive with the governance milestone (see docs/ARCHITECTURE.md).

/// Names of the governance tables, shared with the node.
pub use synod_core::maps;
