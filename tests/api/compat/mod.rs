//! Importing the Go keypooler's SQLite files (the fixtures are real files of both
//! generations) and exporting them back. Every source file is a copy in a temp folder.
//!
//! * `import`: what each fixture imports to, and how it is served.
//! * `export`: round trips, the exported schema, what the seed schema cannot hold.
//! * `refusals`: bad rows, wrong keys, foreign files, non-empty targets, files in use.
//! * `hostile`: whatever a SQLite file holds, a clean error or a clean import.
//! * `cli`: the built binary's one summary line and one error line.
//! * `postgres`: the newest generation, in a real PostgreSQL: imported, served, exported back.

mod cli;
mod export;
mod hostile;
mod import;
mod postgres;
mod refusals;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use indicatif::ProgressBar;
use keypooler::compat::{CompatError, Schema, SourceContents, Unservable};
use keypooler::compat::{ExportSummary, ImportMode, ImportSummary, export, import, read_source};
use keypooler::crypto::Sealer;
use keypooler::store::open_key;
use keypooler::store::{Store, StoreError};
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{TestApp, hex_key, sealer};

const SEED: &str = "go-keypooler-seed";
const LATEST: &str = "go-keypooler-latest";
/// Our ENCRYPTION_KEY in these tests (the fixtures were written under their own keys).
const OURS: u8 = 0x5a;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected(name: &str) -> Value {
    let text = std::fs::read(fixtures().join(format!("{name}.json"))).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// The ENCRYPTION_KEY a fixture was written under.
fn fixture_key(name: &str) -> String {
    expected(name)["encryption_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A temp folder holding a copy of the fixture (the original is never opened).
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.db"));
    std::fs::copy(fixtures().join(format!("{name}.db")), &path).unwrap();
    (dir, path)
}

/// A copy of the fixture with `sql` applied to it.
fn altered(name: &str, sql: &str) -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = copy_fixture(name);
    let conn = rusqlite::Connection::open(&path).unwrap();
    // Foreign keys off: the point is to write rows the Go service's checks would have stopped.
    conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    conn.execute_batch(sql).unwrap();
    conn.close().unwrap();
    (dir, path)
}

fn ours() -> Sealer {
    sealer(&hex_key(OURS))
}

/// The wall times of tests whose verdict could depend on the date, never today's date: inside
/// the latest fixture's usage window (key fc-01: 30 days from 2026-11-01), and years after it.
/// Every test that reads a fixture's dates runs at both; expiry, usage windows and the seed
/// export's judgement of expired keys all come from this injected time. (The import itself
/// reads the clock only to tell whether a budget's spent amount is of the current period; it
/// stores the dates as the file gives them.)
const IN_WINDOW: &str = "2026-11-15T00:00:00Z";
const YEARS_LATER: &str = "2031-01-01T00:00:00Z";
const TIMES: [&str; 2] = [IN_WINDOW, YEARS_LATER];

fn at(time: &str) -> i64 {
    keypooler::compat::parse_timestamp_ms(time).unwrap()
}

/// Imports `from` (sealed under `source_key`) into the redb file at `db`, as the CLI does.
fn import_into(
    from: &Path,
    source_key: &str,
    db: &Path,
    mode: ImportMode,
) -> Result<ImportSummary, CompatError> {
    let source = read_source(from, &sealer(source_key), &ProgressBar::hidden())?;
    import_read(&source, db, mode)
}

/// Imports what a reader read into the redb file at `db`, as the CLI does.
fn import_read(
    source: &SourceContents,
    db: &Path,
    mode: ImportMode,
) -> Result<ImportSummary, CompatError> {
    let store = Store::open(db, &ours())?;
    import(source, &store, &ours(), mode, &ProgressBar::hidden())
}

fn import_fixture(name: &str, db: &Path) -> ImportSummary {
    let (_dir, from) = copy_fixture(name);
    import_into(&from, &fixture_key(name), db, ImportMode::Refuse).unwrap()
}

/// Exports as the CLI does, with the clock at [`IN_WINDOW`].
fn export_to(
    db: &Path,
    to: &Path,
    schema: Schema,
    force: bool,
) -> Result<ExportSummary, CompatError> {
    export_at(db, to, schema, force, at(IN_WINDOW))
}

fn export_at(
    db: &Path,
    to: &Path,
    schema: Schema,
    force: bool,
    now_ms: i64,
) -> Result<ExportSummary, CompatError> {
    let contents = Store::open(db, &ours())?.load()?;
    export(
        &contents,
        &ours(),
        to,
        schema,
        force,
        now_ms,
        &ProgressBar::hidden(),
    )
}

/// Everything a redb database holds, values opened, as comparable JSON keyed by id.
fn view(db: &Path) -> BTreeMap<String, Value> {
    let contents = Store::open(db, &ours()).unwrap().load().unwrap();
    let mut all = BTreeMap::new();
    for tier in &contents.tiers {
        all.insert(
            format!("tier {}", tier.id),
            serde_json::to_value(tier).unwrap(),
        );
    }
    for key in &contents.keys {
        let opened = open_key(key, &ours()).unwrap();
        let secrets: BTreeMap<&str, &str> = opened
            .secrets
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        all.insert(
            format!("key {}", key.id),
            json!({
                "name": key.name, "tier_id": key.tier_id, "active": key.active,
                "created_at_ms": key.created_at_ms, "expires_at_ms": key.expires_at_ms,
                "usage_limit": key.usage_limit, "usage_window_seconds": key.usage_window_seconds,
                "usage_count": key.usage_count, "usage_window_start_ms": key.usage_window_start_ms,
                "metadata": key.metadata, "value": opened.value.as_str(), "secrets": secrets,
            }),
        );
    }
    for consumer in &contents.consumers {
        all.insert(
            format!("consumer {}", consumer.id),
            serde_json::to_value(consumer).unwrap(),
        );
    }
    all
}

/// The bytes of a file, or `None` when there is none: "unchanged" means equal snapshots.
fn bytes(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

fn tier_ids_by_name(expected: &Value) -> BTreeMap<String, String> {
    expected["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn ms(text: &Value) -> Option<i64> {
    text.as_str()
        .map(|t| keypooler::compat::parse_timestamp_ms(t).unwrap())
}

/// Asks for `feature` `times` times; returns the values served (all answers must be 200).
async fn served(app: &TestApp, feature: &str, times: usize) -> BTreeSet<String> {
    let mut values = BTreeSet::new();
    for _ in 0..times {
        let (status, body) = app.key(feature).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        values.insert(body["value"].as_str().unwrap().to_owned());
    }
    values
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}
