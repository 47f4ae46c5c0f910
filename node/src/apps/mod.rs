//! Native (Rust) applications served under `/app`.

pub mod history;
pub mod js;
pub mod kv;
pub mod logging;
