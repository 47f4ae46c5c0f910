//! Names of the framework's own tables. They follow CCF's names so that tooling written for CCF ledgers
//! recognises them.

/// Node signatures over the Merkle root (JSON [`crate::ledger::SignatureRecord`] at key "").
pub const SIGNATURES: &str = "public:ccf.internal.signatures";
/// Service-key COSE Sign1 over the Merkle root (detached payload) at key "".
pub const COSE_SIGNATURES: &str = "public:ccf.internal.cose_signatures";
/// Node information keyed by node id.
pub const NODES_INFO: &str = "public:ccf.gov.nodes.info";
/// Service information (certificate, status) at key "".
pub const SERVICE_INFO: &str = "public:ccf.gov.service.info";
/// User certificates keyed by user id (hex SHA-256 of the certificate DER).
pub const USERS_CERTS: &str = "public:ccf.gov.users.certs";
/// Member certificates keyed by member id (hex SHA-256 of the certificate DER).
pub const MEMBERS_CERTS: &str = "public:ccf.gov.members.certs";

/// Code measurements allowed to join, keyed by measurement (hex), value `"AllowedToJoin"` (CCF's name).
pub const NODES_CODE_IDS: &str = "public:ccf.gov.nodes.code_ids";

/// Member status and data keyed by member id: `{"status": "Accepted" | "Active", "member_data"}`.
pub const MEMBERS_INFO: &str = "public:ccf.gov.members.info";
/// Member state-digest acknowledgements keyed by member id.
pub const MEMBERS_ACKS: &str = "public:ccf.gov.members.acks";
/// User data keyed by user id.
pub const USERS_INFO: &str = "public:ccf.gov.users.info";
/// The constitution (JavaScript module source) at key "".
pub const CONSTITUTION: &str = "public:ccf.gov.constitution";
/// Proposal bodies (JSON) keyed by proposal id.
pub const PROPOSALS: &str = "public:ccf.gov.proposals";
/// Proposal state, proposer and ballots keyed by proposal id.
pub const PROPOSALS_INFO: &str = "public:ccf.gov.proposals_info";
/// The last signed governance request of each member (every one is in the ledger).
pub const GOV_HISTORY: &str = "public:ccf.gov.history";
/// Digests of recent governance request signatures with their `created_at`, for replay protection.
pub const GOV_RECENT_REQUESTS: &str = "public:ccf.gov.cose_recent_requests";
/// The deployed JavaScript application bundle at key "".
pub const JS_APP: &str = "public:ccf.gov.js_app";
/// Snapshot / ledger-chunk triggers set by governance.
pub const GOV_TRIGGERS: &str = "public:ccf.gov.triggers";

/// Public maps are written in clear in the ledger; all others are sealed.
pub fn is_public(map: &str) -> bool {
    map.starts_with("public:")
}

/// Tables owned by the framework; applications may never write them.
pub fn is_framework_table(map: &str) -> bool {
    map.starts_with("public:ccf.") || map.starts_with("ccf.")
}

/// Tables only the framework reads: its private tables and `public:ccf.internal.*` (signatures, evidence).
pub fn is_internal_table(map: &str) -> bool {
    map.starts_with("ccf.") || map.starts_with("public:ccf.internal.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(is_public(SIGNATURES));
        assert!(is_framework_table(SIGNATURES));
        assert!(is_framework_table("ccf.internal.secrets"));
        assert!(!is_framework_table("public:records"));
        assert!(is_internal_table(SIGNATURES) && is_internal_table("ccf.internal.secrets"));
        assert!(!is_internal_table(USERS_CERTS) && !is_internal_table("records"));
        assert!(!is_public("records"));
        assert!(!is_public("publicrecords"));
    }
}
