//! `synod`: the command-line client of a Synod network (see `synod --help`). The logic lives in
//! `synod_client::cli` so it can be tested in-process; this file only maps the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser as _;
use synod_client::cli::{run, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("synod: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    match runtime.block_on(run(cli, &mut stdout)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("synod: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
