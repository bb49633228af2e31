use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = keypooler::cli::Cli::parse();
    match keypooler::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("keypooler: {failure}");
            failure.exit_code()
        }
    }
}
