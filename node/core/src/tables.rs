//! The wire types of the governance tables: the statuses of nodes, members, the service and proposals, and the
//! nodes table's record, spelt as CCF spells them. One home for what the node writes and the members' tools and
//! the client read (the tables' names are [`crate::maps`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A status spelt as a fixed set of CCF's names: `as_str`, `Display`, `FromStr`, serde as the name, and
/// comparison with the `"status"`-style JSON value that holds it.
macro_rules! status {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every value.
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant),+];

            /// CCF's name of it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<$name, String> {
                $name::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!(concat!("unknown ", $what, " {:?}"), s))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }

        impl PartialEq<$name> for Value {
            fn eq(&self, other: &$name) -> bool {
                self.as_str() == Some(other.as_str())
            }
        }

        impl From<$name> for Value {
            fn from(v: $name) -> Value {
                Value::from(v.as_str())
            }
        }
    };
}

status!(
    /// A node's status in `public:ccf.gov.nodes.info`.
    NodeStatus, "node status" {
        /// Asked to join; waits for the members' vote (or was refused).
        Pending,
        /// Trusted: part of the service, handed its secrets.
        Trusted,
        /// Removed from the service.
        Retired,
    }
);

status!(
    /// A member's status in `public:ccf.gov.members.info`.
    MemberStatus, "member status" {
        /// Added by governance; has not acknowledged yet.
        Accepted,
        /// Acknowledged: votes and holds a recovery share.
        Active,
    }
);

status!(
    /// The service's status in `public:ccf.gov.service.info`.
    ServiceStatus, "service status" {
        /// Created; the members have not opened it.
        Opening,
        /// Open to users.
        Open,
        /// Recovered from a lost service's ledger; its public state is back, the members decide.
        Recovering,
        /// The members accepted the recovery; their shares are awaited.
        WaitingForRecoveryShares,
    }
);

status!(
    /// A proposal's state.
    ProposalState, "proposal state" {
        /// Waiting for ballots.
        Open,
        /// Accepted by the constitution and applied.
        Accepted,
        /// Rejected by the constitution.
        Rejected,
        /// Withdrawn by its proposer.
        Withdrawn,
        /// Its ballots, resolution or application threw.
        Failed,
        /// Dropped: another proposal changed the state it was made against (e.g. a new constitution).
        Dropped,
    }
);

impl ServiceStatus {
    /// Whether the service is being recovered: the previous service's secrets are not back yet.
    pub fn is_recovering(self) -> bool {
        matches!(
            self,
            ServiceStatus::Recovering | ServiceStatus::WaitingForRecoveryShares
        )
    }
}

impl ProposalState {
    /// Whether the proposal can still change (only `Open` can).
    pub fn is_final(self) -> bool {
        self != ProposalState::Open
    }
}

/// A node's record in `public:ccf.gov.nodes.info`. Fields this version does not know (written by a constitution
/// or a later version) are kept as they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The operator's name for it.
    #[serde(default)]
    pub name: String,
    /// Its certificate (PEM): self-signed while Pending, endorsed by the service once Trusted.
    #[serde(default)]
    pub cert: String,
    /// Its status.
    pub status: NodeStatus,
    /// Its client-facing address, as published.
    #[serde(default)]
    pub rpc_address: String,
    /// Its node-to-node address, as published.
    #[serde(default)]
    pub node_address: String,
    /// The code measurement its evidence shows.
    #[serde(default)]
    pub measurement: String,
    /// Whether `cert` is the service's endorsement.
    #[serde(default)]
    pub endorsed: bool,
    /// When a Pending node asked (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_at: Option<i64>,
    /// Its attestation evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote_info: Option<Value>,
    /// Its RSA encryption key (PEM): ledger secrets are encrypted to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_pub_key: Option<String>,
    /// Everything else in the record.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl NodeInfo {
    /// A record with the fields every node has; the optional ones unset.
    pub fn new(
        name: &str,
        cert: &str,
        status: NodeStatus,
        rpc: &str,
        node: &str,
        measurement: &str,
    ) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            cert: cert.into(),
            status,
            rpc_address: rpc.into(),
            node_address: node.into(),
            measurement: measurement.into(),
            endorsed: false,
            joined_at: None,
            quote_info: None,
            encryption_pub_key: None,
            other: Map::new(),
        }
    }

    /// Reads a stored record; `None` if it is not one.
    pub fn from_slice(bytes: &[u8]) -> Option<NodeInfo> {
        serde_json::from_slice(bytes).ok()
    }

    /// The record as JSON.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The service's record in `public:ccf.gov.service.info`. Fields this version does not know (written by the
/// constitution: validity periods, recovery records) are kept as they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// The service certificate (PEM).
    #[serde(default)]
    pub cert: String,
    /// Its status (a record written before genesis completed may have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
    /// The curve of the service's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<String>,
    /// Recovery shares needed to recover the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_threshold: Option<u64>,
    /// Everything else in the record.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl ServiceInfo {
    /// Reads a stored record; `None` if it is not one.
    pub fn from_slice(bytes: &[u8]) -> Option<ServiceInfo> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_spelt_as_ccf_spells_them_and_compare_with_json() {
        assert_eq!(NodeStatus::Trusted.to_string(), "Trusted");
        assert_eq!("Retired".parse::<NodeStatus>(), Ok(NodeStatus::Retired));
        assert!("trusted".parse::<NodeStatus>().is_err());
        assert_eq!(
            ServiceStatus::WaitingForRecoveryShares.as_str(),
            "WaitingForRecoveryShares"
        );
        assert_eq!(
            serde_json::json!({"status": "Active"})["status"],
            MemberStatus::Active
        );
        assert_ne!(Value::Null, NodeStatus::Pending);
        for s in ProposalState::ALL {
            let json = serde_json::to_string(&s).expect("serialize");
            assert_eq!(
                serde_json::from_str::<ProposalState>(&json).expect("deserialize"),
                s
            );
        }
    }

    #[test]
    fn a_node_record_round_trips_with_the_fields_it_does_not_know() {
        let stored = serde_json::json!({
            "name": "n1", "cert": "PEM", "status": "Trusted", "rpc_address": "a:1", "node_address": "a:2",
            "measurement": "m", "endorsed": true, "retired_by": "proposal 7",
        });
        let info: NodeInfo = serde_json::from_value(stored.clone()).expect("a node record");
        assert_eq!(info.status, NodeStatus::Trusted);
        assert_eq!(info.to_value(), stored);
        // Records of the simulation and of older versions hold fewer fields.
        let sparse = NodeInfo::from_slice(br#"{"status":"Retired"}"#).expect("sparse record");
        assert_eq!(sparse.status, NodeStatus::Retired);
        assert!(NodeInfo::from_slice(br#"{"status":"Gone"}"#).is_none());
    }

    #[test]
    fn the_service_record_keeps_what_the_constitution_wrote() {
        let stored = serde_json::json!({
            "cert": "PEM", "status": "Open", "curve": "secp384r1", "recovery_threshold": 2,
            "service_certificate_validity_days": 30,
        });
        let info: ServiceInfo = serde_json::from_value(stored.clone()).expect("a service record");
        assert_eq!(info.status, Some(ServiceStatus::Open));
        assert_eq!(info.recovery_threshold, Some(2));
        assert_eq!(serde_json::to_value(&info).expect("serialize"), stored);
    }
}
