//! Proposal states, shared by the node (which decides them) and the members' client (which reads them): the wire
//! type lives with the other tables' types in [`synod_core::tables`].

pub use synod_core::tables::ProposalState;
