//! `synod-gov`: the members' governance CLI (see `synod-gov --help`). The logic lives in `synod_governance::cli`
//! so it can be tested in-process; this file only maps the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser as _;
use synod_governance::cli::{run, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("synod-gov: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    match runtime.block_on(run(cli, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synod-gov: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
