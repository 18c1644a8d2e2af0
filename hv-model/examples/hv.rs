//! Stand-alone `hvkvm hv` for trying the model without the VMM:
//! `cargo run -p hv-model --example hv -- explain --profile windows`.

use clap::Parser;
use hv_model::cli::{error_chain, run, HvCommand};

/// `hv` subcommands of hvkvm.
#[derive(Debug, Parser)]
#[command(name = "hvkvm hv")]
struct Args {
    #[command(subcommand)]
    cmd: HvCommand,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args.cmd, &mut std::io::stdout().lock()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
