//! The command line: `serve` (the default, so `keypooler` alone starts the server as the Go
//! service did), the offline commands, and `backup` of a running server, one file each.

mod backup;
mod export;
mod import;
mod rekey;
mod serve;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{ConfigError, Settings};

pub use backup::BackupArgs;
pub use export::ExportArgs;
pub use import::ImportArgs;
pub use rekey::RekeyArgs;

#[derive(Parser, Debug)]
#[command(name = "keypooler", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Import the Go keypooler's SQLite database into DB_PATH (all or nothing).
    Import(ImportArgs),
    /// Export DB_PATH to a new SQLite file the Go keypooler opens as is.
    Export(ExportArgs),
    /// Re-seal every value under NEW_ENCRYPTION_KEY, atomically (stop the server first).
    Rekey(RekeyArgs),
    /// Write a running server's database (KEYPOOLER_URL) to a new file, while it serves.
    Backup(BackupArgs),
}

/// Why the process stops with an error: a bad setting (exit 2) or a failure (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Config(_) => ExitCode::from(2),
            Failure::Runtime(_) => ExitCode::from(1),
        }
    }
}

pub fn run(cli: Cli) -> Result<(), Failure> {
    let log = cli.settings.log()?;
    crate::telemetry::init_logging(log);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve::run(&cli.settings),
        Command::Import(args) => import::run(&cli.settings, &args),
        Command::Export(args) => export::run(&cli.settings, &args),
        Command::Rekey(args) => rekey::run(&cli.settings, &args),
        Command::Backup(args) => backup::run(&cli.settings, &args),
    }
}

/// A bar on stderr when it is a terminal; hidden otherwise (logs and pipes stay clean).
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:8} [{bar:40}] {pos}/{len} keys ({eta})")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar
}

/// Which database a summary line speaks of: `PostgreSQL`, or the SQLite file's `seed schema`.
fn generation(postgres: bool, schema: crate::compat::Schema) -> String {
    if postgres {
        "PostgreSQL".to_owned()
    } else {
        format!("{schema} schema")
    }
}

/// How long a command took, for its summary line: `1.25 s`.
fn format_elapsed(elapsed: Duration) -> String {
    format!("{:.2} s", elapsed.as_secs_f64())
}
