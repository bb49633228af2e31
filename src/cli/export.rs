//! `keypooler export`: DB_PATH written to a new SQLite file, or into an empty PostgreSQL
//! database, that the Go service opens as is; one summary line out.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::{Failure, format_elapsed, generation, progress_bar};
use crate::compat::{ExportSummary, PostgresUrl, Schema, export, export_postgres, redact};
use crate::config::Settings;
use crate::crypto::Sealer;
use crate::store::Store;

#[derive(Args)]
pub struct ExportArgs {
    /// The SQLite file to write (a new file; see --force), or an empty PostgreSQL database
    /// (`postgres://…`) to write the Go service's newest generation into.
    #[arg(long, value_name = "FILE|URL")]
    pub to: PathBuf,
    /// Which generation of the Go service's SQLite schema to write (a PostgreSQL database
    /// always gets the newest).
    #[arg(long, value_enum, default_value_t = Schema::Seed)]
    pub schema: Schema,
    /// Overwrite FILE if it exists (it is replaced only once the new file is complete).
    #[arg(long)]
    pub force: bool,
}

impl std::fmt::Debug for ExportArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportArgs")
            .field("to", &redact(&self.to.to_string_lossy()))
            .field("schema", &self.schema)
            .field("force", &self.force)
            .finish()
    }
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
    let to = args.to.to_string_lossy();
    let postgres = PostgresUrl::is_url(&to);
    let outcome = if postgres {
        if args.force {
            return Err(anyhow::anyhow!(
                "--force does not apply to PostgreSQL: the export writes only into an empty database"
            )
            .into());
        }
        PostgresUrl::parse(&to)
            .and_then(|url| export_postgres(&contents, &sealer, &url, now_ms, &bar))
    } else {
        export(
            &contents,
            &sealer,
            &args.to,
            args.schema,
            args.force,
            now_ms,
            &bar,
        )
    };
    bar.finish_and_clear();
    let shown = redact(&to);
    let summary: ExportSummary = outcome.with_context(|| {
        if postgres {
            format!("export to {shown} failed; nothing was written")
        } else {
            format!("export to {shown} failed; no file was written")
        }
    })?;
    let generation = generation(postgres, summary.schema);
    let mut line = format!(
        "exported {} to {shown} ({generation}): {} tiers, {} keys, {} consumers",
        db_path.display(),
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
