//! `keypooler import`: the Go service's SQLite file or PostgreSQL database read and checked
//! whole, then written into DB_PATH in one transaction; one summary line out.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::{Failure, format_elapsed, generation, progress_bar};
use crate::compat::{
    ImportMode, ImportSummary, PostgresUrl, SourceContents, import, read_postgres, read_source,
    redact,
};
use crate::config::{ConfigError, Settings};
use crate::crypto::{EncryptionKey, Sealer};
use crate::store::Store;

#[derive(Args)]
pub struct ImportArgs {
    /// The Go keypooler's SQLite file, or its PostgreSQL database (`postgres://…`, its
    /// DATABASE_URL). It is only read, never modified.
    #[arg(long, value_name = "FILE|URL")]
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
            .field("from", &redact(&self.from.to_string_lossy()))
            .field(
                "encryption_key_from",
                &self.encryption_key_from.as_ref().map(|_| "[REDACTED]"),
            )
            .field("merge", &self.merge)
            .field("replace", &self.replace)
            .finish()
    }
}

pub(super) fn run(settings: &Settings, args: &ImportArgs) -> Result<(), Failure> {
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
        (true, _) => ImportMode::Merge,
        (_, true) => ImportMode::Replace,
        _ => ImportMode::Refuse,
    };
    let db_path = settings.db_path();
    let started = Instant::now();
    let bar = progress_bar();
    bar.set_message("reading");
    let from = args.from.to_string_lossy();
    let postgres = PostgresUrl::is_url(&from);
    // The whole source is read and checked before the target is even opened.
    let source: Result<SourceContents, _> = if postgres {
        PostgresUrl::parse(&from).and_then(|url| read_postgres(&url, &source_sealer, &bar))
    } else {
        read_source(&args.from, &source_sealer, &bar)
    };
    let shown = redact(&from);
    let existed = db_path.exists();
    let outcome = source.map_err(anyhow::Error::from).and_then(|source| {
        let mut store = Store::open(&db_path, &sealer)?;
        let summary = import(&source, &store, &sealer, mode, &bar)?;
        drop(source);
        // One transaction of every key leaves about as many freed pages in the file as it
        // holds. The import is committed already: a failure here only leaves the file larger.
        bar.set_message("compacting");
        if let Err(err) = store.compact() {
            eprintln!(
                "warning: the import is complete, but compacting {} failed: {err}",
                db_path.display()
            );
        }
        Ok(summary)
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
                .context(format!("import from {shown} failed; nothing was written"))
                .into());
        }
    };
    let generation = generation(postgres, summary.schema);
    let mut line = format!(
        "imported {shown} ({generation}) into {}: {} tiers, {} keys, {} consumers, {} skipped, {} usage events",
        db_path.display(),
        summary.tiers,
        summary.keys,
        summary.consumers,
        summary.skipped,
        summary.usage_events,
    );
    if summary.usage_events_left_out > 0 {
        line.push_str(&format!(
            " ({} older ones not imported: the audit trail keeps the newest {})",
            summary.usage_events_left_out,
            crate::store::AUDIT_RETENTION
        ));
    }
    if summary.spend_events > 0 {
        line.push_str(&format!(
            ", {} spend events not imported",
            summary.spend_events
        ));
    }
    println!("{line}, in {}", format_elapsed(started.elapsed()));
    Ok(())
}
