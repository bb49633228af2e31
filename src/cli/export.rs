//! `keypooler export`: DB_PATH written to a new SQLite file the Go service opens as is; one
//! summary line out.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::{Failure, format_elapsed, progress_bar};
use crate::compat::{ExportSummary, Schema, export};
use crate::config::Settings;
use crate::crypto::Sealer;
use crate::store::Store;

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

pub(super) fn run(settings: &Settings, args: &ExportArgs) -> Result<(), Failure> {
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
    if !summary.written_inactive.is_empty() {
        let total: usize = summary.written_inactive.values().sum();
        let why: Vec<String> = summary
            .written_inactive
            .iter()
            .map(|(why, count)| format!("{}: {count}", why.label()))
            .collect();
        line.push_str(&format!(
            ", {total} keys written inactive (served by the Go service, not by keypooler: {})",
            why.join(", ")
        ));
    }
    if !summary.left_out.is_empty() {
        line.push_str(&format!(
            ", left out (the seed schema has no room): {}",
            summary.left_out.join(", ")
        ));
    }
    if !contents.left_out.is_empty() {
        // As at start-up: a record whose signature does not match, or that does not decode, is
        // neither served nor exported.
        let ids: Vec<String> = contents
            .left_out
            .iter()
            .map(|skip| format!("{}/{}", skip.table, skip.id))
            .collect();
        line.push_str(&format!(
            ", {} records left out (unsigned or unreadable): {}",
            ids.len(),
            ids.join(", ")
        ));
    }
    println!("{line}, in {}", format_elapsed(started.elapsed()));
    Ok(())
}
