//! `keypooler import` and `keypooler export`: settings in, one summary line out.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::Schema;
use super::export::{ExportSummary, export};
use super::import::{ImportSummary, Mode, import};
use super::source::read;
use crate::cli::Failure;
use crate::config::{ConfigError, Settings};
use crate::crypto::{EncryptionKey, Sealer};
use crate::store::Store;

#[derive(Args)]
pub struct ImportArgs {
    /// The Go keypooler's SQLite file. It is only read, never modified.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// The source file's ENCRYPTION_KEY (64 hex characters), when it differs from ours; the
    /// import re-seals every value under ENCRYPTION_KEY. Prefer the environment variable.
    #[arg(
        long,
        env = "SOURCE_ENCRYPTION_KEY",
        hide_env_values = true,
        value_name = "HEX"
    )]
    pub encryption_key_from: Option<String>,
    /// Import into a database that already holds data, skipping ids already present.
    #[arg(long, conflicts_with = "replace")]
    pub merge: bool,
    /// Delete every tier, key and consumer of DB_PATH first (in the same transaction).
    #[arg(long)]
    pub replace: bool,
}

impl std::fmt::Debug for ImportArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportArgs")
            .field("from", &self.from)
            .field(
                "encryption_key_from",
                &self.encryption_key_from.as_ref().map(|_| "[REDACTED]"),
            )
            .field("merge", &self.merge)
            .field("replace", &self.replace)
            .finish()
    }
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The SQLite file to write (a new file; see --force).
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    /// Which generation of the Go service's schema to write.
    #[arg(long, value_enum, default_value_t = Schema::Seed)]
    pub schema: Schema,
    /// Overwrite FILE if it exists (it is replaced only once the new file is complete).
    #[arg(long)]
    pub force: bool,
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

fn seconds(elapsed: Duration) -> String {
    format!("{:.2} s", elapsed.as_secs_f64())
}

pub fn run_import(settings: &Settings, args: &ImportArgs) -> Result<(), Failure> {
    let sealer = Sealer::new(&settings.encryption_key()?);
    let source_sealer = match args.encryption_key_from.as_deref().map(str::trim) {
        None | Some("") => sealer.clone(),
        Some(text) => Sealer::new(&EncryptionKey::parse_hex(text).map_err(|err| {
            ConfigError(format!(
                "SOURCE_ENCRYPTION_KEY (--encryption-key-from) {err}"
            ))
        })?),
    };
    let mode = match (args.merge, args.replace) {
        (true, _) => Mode::Merge,
        (_, true) => Mode::Replace,
        _ => Mode::Refuse,
    };
    let db_path = settings.db_path();
    let started = Instant::now();
    let bar = progress_bar();
    bar.set_message("reading");
    // The whole source is read and checked before the target is even opened.
    let source = read(&args.from, &source_sealer, &bar);
    let existed = db_path.exists();
    let outcome = source.map_err(anyhow::Error::from).and_then(|source| {
        let store = Store::open(&db_path, &sealer)?;
        Ok(import(&source, &store, &sealer, mode, &bar)?)
    });
    bar.finish_and_clear();
    let summary: ImportSummary = match outcome {
        Ok(summary) => summary,
        Err(err) => {
            if !existed {
                // A failed write may have created an empty database; leave no trace of it.
                let _ = std::fs::remove_file(&db_path);
            }
            return Err(err
                .context(format!(
                    "import from {} failed; nothing was written",
                    args.from.display()
                ))
                .into());
        }
    };
    println!(
        "imported {} ({} schema) into {}: {} tiers, {} keys, {} consumers, {} skipped, {} usage events not imported, in {}",
        args.from.display(),
        summary.schema,
        db_path.display(),
        summary.tiers,
        summary.keys,
        summary.consumers,
        summary.skipped,
        summary.usage_events,
        seconds(started.elapsed())
    );
    Ok(())
}

pub fn run_export(settings: &Settings, args: &ExportArgs) -> Result<(), Failure> {
    let sealer = Sealer::new(&settings.encryption_key()?);
    let db_path = settings.db_path();
    if !db_path.exists() {
        return Err(
            anyhow::anyhow!("{} does not exist: nothing to export", db_path.display()).into(),
        );
    }
    let started = Instant::now();
    let store = Store::open(&db_path, &sealer).map_err(anyhow::Error::from)?;
    let contents = store.load().map_err(anyhow::Error::from)?;
    drop(store);
    let now_ms = crate::broker::Clock::monotonic().unix_now_ms();
    let bar = progress_bar();
    let outcome = export(
        &contents,
        &sealer,
        &args.to,
        args.schema,
        args.force,
        now_ms,
        &bar,
    );
    bar.finish_and_clear();
    let summary: ExportSummary = outcome.with_context(|| {
        format!(
            "export to {} failed; no file was written",
            args.to.display()
        )
    })?;
    let mut line = format!(
        "exported {} to {} ({} schema): {} tiers, {} keys, {} consumers",
        db_path.display(),
        args.to.display(),
        summary.schema,
        summary.tiers,
        summary.keys,
        summary.consumers
    );
    if summary.expired_as_inactive > 0 {
        line.push_str(&format!(
            ", {} expired keys written inactive",
            summary.expired_as_inactive
        ));
    }
    if !summary.left_out.is_empty() {
        line.push_str(&format!(
            ", left out (the seed schema has no room): {}",
            summary.left_out.join(", ")
        ));
    }
    println!("{line}, in {}", seconds(started.elapsed()));
    Ok(())
}
