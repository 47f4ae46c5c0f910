//! `synod-load`: a load generator for benchmarks (see `synod-load --help`); the logic is in
//! `synod_client::load` and `synod_client::cli::run_load`.

use std::process::ExitCode;

use clap::Parser as _;
use synod_client::cli::{run_load, LoadCli};

fn main() -> ExitCode {
    let cli = LoadCli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("synod-load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    match runtime.block_on(run_load(cli, &mut stdout)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("synod-load: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
