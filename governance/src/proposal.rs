//! Proposal states, shared by the node (which decides them) and the members' client (which reads them).

use std::fmt;
use std::str::FromStr;

/// A proposal's state, spelt as CCF spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProposalState {
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

impl ProposalState {
    /// Every state.
    pub const ALL: [ProposalState; 6] = [
        ProposalState::Open,
        ProposalState::Accepted,
        ProposalState::Rejected,
        ProposalState::Withdrawn,
        ProposalState::Failed,
        ProposalState::Dropped,
    ];

    /// CCF's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            ProposalState::Open => "Open",
            ProposalState::Accepted => "Accepted",
            ProposalState::Rejected => "Rejected",
            ProposalState::Withdrawn => "Withdrawn",
            ProposalState::Failed => "Failed",
            ProposalState::Dropped => "Dropped",
        }
    }

    /// Whether the proposal can still change (only `Open` can).
    pub fn is_final(self) -> bool {
        self != ProposalState::Open
    }
}

impl fmt::Display for ProposalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProposalState {
    type Err = String;

    fn from_str(s: &str) -> Result<ProposalState, String> {
        ProposalState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown proposal state {s:?}"))
    }
}

impl serde::Serialize for ProposalState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ProposalState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ProposalState, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
