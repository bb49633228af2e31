//! The command line: `serve` (the default, so `keypooler` alone starts the server as the Go
//! service did), the offline commands, and those that talk to a running server (`backup`,
//! `tiers`, `keys`, `consumers`, through one client), one file each.
//!
//! Exit codes: 0 done; 1 failed (the server could not be reached, or failed: a 5xx); 2 a bad
//! setting or argument; 3 the server refused the request (a 4xx: its message is printed).

mod backup;
mod client;
mod consumers;
mod export;
mod import;
mod keys;
mod output;
mod rekey;
mod serve;
mod tiers;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{ConfigError, Settings};

pub use backup::BackupArgs;
pub use consumers::ConsumersArgs;
pub use export::ExportArgs;
pub use import::ImportArgs;
pub use keys::KeysArgs;
pub use rekey::RekeyArgs;
pub use tiers::TiersArgs;

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
    /// A running server's tiers (KEYPOOLER_URL): list, add, patch, delete.
    Tiers(TiersArgs),
    /// A running server's keys (KEYPOOLER_URL): list, add, patch, delete.
    Keys(KeysArgs),
    /// A running server's consumers (KEYPOOLER_URL): list, add, patch, delete.
    Consumers(ConsumersArgs),
}

/// Why the process stops with an error: a bad setting (exit 2), a refusal by the server
/// (exit 3) or a failure (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0:#}")]
    Refused(anyhow::Error),
    #[error("{0:#}")]
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        if err.downcast_ref::<client::Refused>().is_some() {
            Failure::Refused(err)
        } else {
            Failure::Runtime(err)
        }
    }
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Config(_) => ExitCode::from(2),
            Failure::Refused(_) => ExitCode::from(3),
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
        Command::Tiers(args) => tiers::run(&cli.settings, &args),
        Command::Keys(args) => keys::run(&cli.settings, &args),
        Command::Consumers(args) => consumers::run(&cli.settings, &args),
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
