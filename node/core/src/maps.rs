//! Names of the framework's own tables. They follow CCF's names so that tooling written for CCF ledgers
//! recognises them.

/// Node signatures over the Merkle root (JSON [`crate::ledger::SignatureRecord`] at key "").
pub const SIGNATURES: &str = "public:ccf.internal.signatures";
/// Service-key COSE Sign1 over the Merkle root (detached payload) at key "".
pub const COSE_SIGNATURES: &str = "public:ccf.internal.cose_signatures";
/// The Merkle frontier of the tree a signature signs (concatenated 32-byte digests) at key "" (CCF keeps its
/// serialised tree in a table of this name).
pub const TREE: &str = "public:ccf.internal.tree";
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
/// SEV-SNP host data a joining node's report may carry (hex → "AllowedToJoin"; `add_snp_host_data`).
pub const NODES_SNP_HOST_DATA: &str = "public:ccf.gov.nodes.snp.host_data";
/// Publishers whose SEV-SNP UVM endorsements admit a node (did → {feed: {"svn"}}; `add_snp_uvm_endorsement`).
pub const NODES_SNP_UVM_ENDORSEMENTS: &str = "public:ccf.gov.nodes.snp.uvm_endorsements";
/// Minimum TCB per platform (`sgx` / `snp` → JSON string; `set_node_minimum_tcb`).
pub const NODES_MINIMUM_TCB: &str = "public:ccf.gov.nodes.minimum_tcb";

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
/// Development mode (no members): hex SHA-256 of the join token joining nodes present, at key "".
pub const JOIN_TOKEN_DIGEST: &str = "public:ccf.internal.join_token_digest";

/// Members' RSA encryption public keys (PEM) by member id: the keys their recovery shares are encrypted to.
pub const MEMBERS_ENCRYPTION_KEYS: &str = "public:ccf.gov.members.encryption_public_keys";
/// At key "": the latest ledger secret wrapped under a key split among the recovery members, and each member's
/// share of it encrypted to that member (CCF's `RecoverySharesInfo`).
pub const RECOVERY_SHARES: &str = "public:ccf.internal.recovery_shares";
/// Recovery shares members submitted to a recovering service, by member id, sealed under its ledger secret.
pub const SUBMITTED_SHARES: &str = "public:ccf.internal.encrypted_submitted_shares";
/// At key "": the ledger secret of the last rekey, RSA-OAEP encrypted to each trusted node's encryption key, by
/// node id: every node opens its own and seals what follows the rekey under it.
pub const ENCRYPTED_LEDGER_SECRETS: &str = "public:ccf.internal.encrypted_ledger_secrets";
/// Past ledger secrets by the seqno they start at, each wrapped under the secret that followed it.
pub const HISTORICAL_LEDGER_SECRETS: &str = "public:ccf.internal.historical_encrypted_ledger_secret";
/// At key "": the ledger a recovered service continues (its last seqno, the previous service identity, the new
/// identity's endorsement of it), written by the recovery transaction.
pub const PREVIOUS_SERVICE: &str = "public:ccf.internal.previous_service_identity";

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

/// Governance tables holding members' signed requests (every request's COSE envelope, and the digests and
/// timestamps of recent ones). They are governance's own evidence, not application data.
pub fn is_signed_request_table(map: &str) -> bool {
    map == GOV_HISTORY || map == GOV_RECENT_REQUESTS
}

/// The one rule for what applications may read, shared by the JavaScript sandbox and `/app/kv/{map}`.
///
/// As in CCF, applications read their own maps and the public governance tables (`public:ccf.gov.*`: members,
/// users, nodes, the constitution, proposals), but never the framework's internal tables ([`is_internal_table`]).
/// Unlike CCF, the members' signed requests ([`is_signed_request_table`]) are withheld too: they are the
/// consortium's evidence (auditors find every one in the ledger), and users have no business replaying or
/// mining them.
pub fn is_readable_by_applications(map: &str) -> bool {
    !is_internal_table(map) && !is_signed_request_table(map)
}

/// What governance scripts (ballots, and the constitution's `validate`, `resolve` and `apply`) may read: public
/// maps only, framework and application ones, as in CCF. Private maps are sealed in the ledger for a reason: a
/// member's ballot must not be able to read them and leak them through its error text.
pub fn is_readable_by_governance(map: &str) -> bool {
    is_public(map)
}

/// What the constitution's `apply` may write: the governance tables (`public:ccf.gov.*`) only, as in CCF, and of
/// them not the signed requests, which only the framework records (replay protection depends on them).
pub fn is_writable_by_governance(map: &str) -> bool {
    map.starts_with("public:ccf.gov.") && !is_signed_request_table(map)
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

    #[test]
    fn applications_read_governance_tables_but_not_internal_ones_or_signed_requests() {
        assert!(is_readable_by_applications(USERS_CERTS));
        assert!(is_readable_by_applications(PROPOSALS_INFO));
        assert!(is_readable_by_applications("records") && is_readable_by_applications("public:records"));
        for hidden in [
            SIGNATURES,
            COSE_SIGNATURES,
            "ccf.internal.secrets",
            GOV_HISTORY,
            GOV_RECENT_REQUESTS,
        ] {
            assert!(!is_readable_by_applications(hidden), "{hidden}");
        }
    }

    #[test]
    fn governance_sees_public_maps_only_and_writes_governance_tables_only() {
        assert!(is_readable_by_governance(USERS_CERTS) && is_readable_by_governance("public:records"));
        assert!(is_readable_by_governance(SIGNATURES));
        assert!(!is_readable_by_governance("records") && !is_readable_by_governance("ccf.internal.secrets"));
        assert!(is_writable_by_governance(USERS_CERTS) && is_writable_by_governance(CONSTITUTION));
        assert!(!is_writable_by_governance(SIGNATURES) && !is_writable_by_governance("public:records"));
        assert!(!is_writable_by_governance("records"));
        assert!(!is_writable_by_governance(GOV_HISTORY) && !is_writable_by_governance(GOV_RECENT_REQUESTS));
    }
}
