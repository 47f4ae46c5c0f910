//! Native (Rust) applications served under `/app`.

pub mod kv;
pub mod logging;
