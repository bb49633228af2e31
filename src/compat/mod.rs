//! Moving to and from the Go keypooler's database: its SQLite file, or its newest generation's
//! PostgreSQL database (docs/moving-from-go.md).
//!
//! ```text
//! import:  SQLite file (read only) ─► read_source ─┐ (detect the generation, validate every
//!          PostgreSQL (read-only   ─► read_postgres ┘ row, open every value: one reader)
//!            transaction)          ─► import (seal ours, one redb transaction) ─► DB_PATH
//! export:  DB_PATH ─► open every value ─► export (migrations/*.sql, seal Go-style)
//!          ─► temp file in the target's folder ─► rename
//!          DB_PATH ─► export_postgres (migrations/postgres/*.sql, one transaction) ─► an
//!          empty PostgreSQL database
//! ```
//!
//! Both are all or nothing: a bad row stops the import before anything is written, and an
//! export that fails leaves no file behind. Errors name the table, the row and the reason,
//! never a value.

mod export;
mod import;
mod postgres;
mod source;
mod time;

use std::path::PathBuf;

use crate::store::StoreError;

pub use export::{ExportSummary, Unservable, export, unservable};
pub use import::{ImportMode, ImportSummary, import};
pub use postgres::{PostgresUrl, export_postgres, redact};
pub use source::{SourceContents, SourceKey, read_postgres, read_source};
pub use time::{format_timestamp_ms, parse_timestamp_ms};

/// The two schema generations of the Go service's database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Schema {
    /// `001_create_tiers.sql` + `002_create_keys.sql`: per-minute limits, `keys.key_encrypted`.
    Seed,
    /// `001_init.sql`: limits with windows, `keys.key_value`, expiry, usage limits, metadata,
    /// bound secrets, consumers.
    Latest,
}

impl std::fmt::Display for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Schema::Seed => "seed",
            Schema::Latest => "latest",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    #[error("cannot open {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("{path} is not a SQLite database: {reason}")]
    NotSqlite { path: PathBuf, reason: String },
    #[error("{path} is a SQLite database but not the Go keypooler's: {reason}")]
    NotKeypooler { path: PathBuf, reason: String },
    #[error("cannot read {path}: {reason}")]
    Sqlite { path: PathBuf, reason: String },
    /// The PostgreSQL server or the connection failed; `url` is shown without its password.
    #[error("{url}: {reason}")]
    Postgres { url: String, reason: String },
    #[error("{url} is a PostgreSQL database but not the Go keypooler's: {reason}")]
    NotKeypoolerPostgres { url: String, reason: String },
    #[error(
        "{url} is not empty (it holds {tables}); export writes only into an empty database: create one (createdb) and export into it"
    )]
    PostgresNotEmpty { url: String, tables: String },
    /// A row that cannot be imported (or a record that cannot be exported). `row` names it by
    /// its id (or SQLite rowid); the reason never holds a value.
    #[error("{table} row {row}: {reason}")]
    BadRow {
        table: &'static str,
        row: String,
        reason: String,
    },
    #[error(
        "{path} already holds {tiers} tiers, {keys} keys and {consumers} consumers; choose --merge (keep them, skip ids already present) or --replace (delete them first)"
    )]
    TargetNotEmpty {
        path: PathBuf,
        tiers: usize,
        keys: usize,
        consumers: usize,
    },
    #[error("{0} already exists; pass --force to overwrite it")]
    TargetExists(PathBuf),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CompatError {
    pub(crate) fn row(
        table: &'static str,
        row: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        CompatError::BadRow {
            table,
            row: row.into(),
            reason: reason.into(),
        }
    }
}
