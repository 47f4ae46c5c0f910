//! `synod-gov`: the members' governance CLI. Proposals and ballots arrive with the governance milestone; until
//! then the consortium is fixed at service creation (`synod-node start --member-cert`).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "synod-gov",
    version,
    about = "Members' governance CLI (proposals and ballots are not available yet: membership is fixed at service creation)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    anyhow::bail!("governance proposals are not available in this version; see `synod-gov --help`")
}
