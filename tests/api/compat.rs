//! SPEC §5: importing the Go keypooler's SQLite files (the fixtures are real files of both
//! generations) and exporting them back. Every source file is a copy in a temp folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use indicatif::ProgressBar;
use keypooler::compat::{CompatError, Schema};
use keypooler::compat::{ExportSummary, ImportMode, ImportSummary, export, import, read_source};
use keypooler::crypto::{EncryptionKey, Sealer};
use keypooler::store::{Store, StoreError};
use keypooler::writer::load::open_key;
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{TestApp, hex_key};

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

fn sealer(hex: &str) -> Sealer {
    Sealer::new(&EncryptionKey::parse_hex(hex).unwrap())
}

fn ours() -> Sealer {
    sealer(&hex_key(OURS))
}

/// The wall times of tests whose verdict could depend on the date, never today's date: inside
/// the latest fixture's usage window (key fc-01: 30 days from 2026-11-01), and years after it.
/// Every test that reads a fixture's dates runs at both; expiry, usage windows and the seed
/// export's judgement of expired keys all come from this injected time. (The import itself
/// reads no clock: it stores the dates as the file gives them.)
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
    let store = Store::open(db, &ours())?;
    import(&source, &store, &ours(), mode, &ProgressBar::hidden())
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

#[test]
fn the_seed_fixture_imports_every_tier_limit_key_and_flag_and_stays_untouched() {
    let (dir, from) = copy_fixture(SEED);
    let before = bytes(&from);
    let db = dir.path().join("pool.redb");
    let summary = import_into(&from, &fixture_key(SEED), &db, ImportMode::Refuse).unwrap();
    assert_eq!(
        (summary.schema, summary.tiers, summary.keys, summary.skipped),
        (Schema::Seed, 2, 5, 0)
    );
    // Read-only: the WAL-mode file is byte for byte the same, and nothing was created beside it.
    assert_eq!(bytes(&from), before);
    for suffix in ["-wal", "-shm", "-journal"] {
        assert!(!dir.path().join(format!("{SEED}.db{suffix}")).exists());
    }

    let expected = expected(SEED);
    let view = view(&db);
    assert_eq!(view.len(), 2 + 5, "nothing more, nothing less");
    for tier in expected["tiers"].as_array().unwrap() {
        let got = &view[&format!("tier {}", tier["id"].as_str().unwrap())];
        assert_eq!(got["name"], tier["name"]);
        let features: BTreeMap<String, Value> = tier["features"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(f, n)| (f.clone(), json!({"rate_limit": n, "window_seconds": 60})))
            .collect();
        assert_eq!(got["features"], json!(features));
    }
    let tiers = tier_ids_by_name(&expected);
    for key in expected["keys"].as_array().unwrap() {
        let got = &view[&format!("key {}", key["id"].as_str().unwrap())];
        assert_eq!(got["name"], key["name"]);
        assert_eq!(got["value"], key["value"]);
        assert_eq!(got["active"], key["is_active"]);
        assert_eq!(got["tier_id"], json!(tiers[key["tier"].as_str().unwrap()]));
        assert_eq!(got["expires_at_ms"], Value::Null);
    }
}

#[test]
fn the_latest_fixture_imports_expiry_usage_metadata_secrets_and_consumers() {
    let (dir, from) = copy_fixture(LATEST);
    let before = bytes(&from);
    let db = dir.path().join("pool.redb");
    let summary = import_into(&from, &fixture_key(LATEST), &db, ImportMode::Refuse).unwrap();
    assert_eq!(
        (
            summary.schema,
            summary.tiers,
            summary.keys,
            summary.consumers,
            summary.usage_events
        ),
        (Schema::Latest, 2, 5, 1, 1)
    );
    assert_eq!(bytes(&from), before);

    let expected = expected(LATEST);
    let view = view(&db);
    assert_eq!(view.len(), 2 + 5 + 1);
    for tier in expected["tiers"].as_array().unwrap() {
        let got = &view[&format!("tier {}", tier["id"].as_str().unwrap())];
        assert_eq!(got["name"], tier["name"]);
        assert_eq!(got["description"], tier["description"]);
        assert_eq!(got["features"], tier["features"]);
    }
    let tiers = tier_ids_by_name(&expected);
    for key in expected["keys"].as_array().unwrap() {
        let got = &view[&format!("key {}", key["id"].as_str().unwrap())];
        assert_eq!(got["name"], key["name"]);
        assert_eq!(got["value"], key["value"], "{}", key["name"]);
        assert_eq!(got["active"], key["is_active"]);
        assert_eq!(got["tier_id"], json!(tiers[key["tier"].as_str().unwrap()]));
        assert_eq!(got["expires_at_ms"], json!(ms(&key["expires_at"])));
        assert_eq!(got["usage_limit"], key["usage_limit"]);
        assert_eq!(got["usage_count"], key["usage_count"]);
        assert_eq!(got["usage_window_seconds"], key["usage_window_seconds"]);
        assert_eq!(got["metadata"], key["metadata"]);
        assert_eq!(got["secrets"], key["secrets"]);
    }
    let fc01 = &view["key 78e51061-7311-d8a3-c2ce-6f447ed4d57b"];
    assert_eq!(
        fc01["usage_window_start_ms"],
        json!(ms(&json!("2026-11-01 00:00:00")))
    );
    for consumer in expected["consumers"].as_array().unwrap() {
        let got = &view[&format!("consumer {}", consumer["id"].as_str().unwrap())];
        assert_eq!(got["name"], consumer["name"]);
        assert_eq!(got["active"], json!(true));
        let hash = Sha256::digest(consumer["token"].as_str().unwrap().as_bytes());
        assert_eq!(got["token_hash"], json!(hex::encode(hash)));
        let scopes: Vec<&str> = consumer["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|name| tiers[name.as_str().unwrap()].as_str())
            .collect();
        assert_eq!(got["scopes"], json!(scopes));
    }
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

#[tokio::test]
async fn imported_seed_keys_are_served_but_never_the_inactive_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_fixture(SEED, &db);
    let app = TestApp::on_database_at(dir, db, &hex_key(OURS), at(IN_WINDOW)).await;
    assert_eq!(
        served(&app, "image-generation", 20).await,
        set(&[
            "sk-proj-aaaaaaaaaaaaaaaaaaaaaaaa",
            "sk-proj-bbbbbbbbbbbbbbbbbbbbbbbb",
            "sk-ant-api03-cccccccccccccccccc",
            "free-key-1",
        ]),
        "free-2 is inactive"
    );
    assert_eq!(
        served(&app, "chat", 9).await,
        set(&[
            "sk-proj-aaaaaaaaaaaaaaaaaaaaaaaa",
            "sk-proj-bbbbbbbbbbbbbbbbbbbbbbbb",
            "sk-ant-api03-cccccccccccccccccc",
        ])
    );
    // The limits came along: free's 10 per minute for free-1, then only pro's keys.
    for _ in 0..40 {
        let (_, body) = app.key("image-generation").await;
        assert_ne!(body["value"], "free-key-2 with spaces & \"quotes\"");
    }
}

#[tokio::test]
async fn imported_latest_keys_are_served_with_metadata_and_secrets_never_expired_or_inactive() {
    for time in TIMES {
        // fc-02 expires an hour after the test's clock (the fixture says 2099).
        let in_an_hour = keypooler::compat::format_timestamp_ms(at(time) + 3_600_000);
        let (dir, from) = altered(
            LATEST,
            &format!("UPDATE keys SET expires_at = '{in_an_hour}' WHERE name = 'fc-02'"),
        );
        let db = dir.path().join("pool.redb");
        import_into(&from, &fixture_key(LATEST), &db, ImportMode::Refuse).unwrap();
        let app = TestApp::on_database_at(dir, db, &hex_key(OURS), at(time)).await;
        assert_eq!(
            served(&app, "firecrawl_scrape", 6).await,
            set(&["fc-aaaa1111", "fc-bbbb2222"]),
            "at {time}: fc-expired expired in 2001"
        );
        let (status, body) = app.key("chat").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({
                "key_id": "9b810e76-6ec9-d286-63ca-828dd5f4b3b2", "value": "sk-proj-dddd4444",
                "metadata": {"org": "acme", "weight": 3},
                "secrets": {"org_id": "org-123", "project": "p-9"},
            }),
            "at {time}: oa-2-inactive is never served"
        );
        // Two hours later, fc-02 has expired too.
        app.clock.advance_ms(2 * 3_600_000);
        assert_eq!(
            served(&app, "firecrawl_scrape", 4).await,
            set(&["fc-aaaa1111"]),
            "at {time}"
        );
    }
}

/// The imported database served with the clock at `time`; the consumer's token, and fc-01's
/// listing entry before any draw.
async fn latest_served_at(time: &str) -> (TestApp, String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_fixture(LATEST, &db);
    let app = TestApp::on_database_at(dir, db, &hex_key(OURS), at(time)).await;
    let token = expected(LATEST)["consumers"][0]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let keys: Value = app.get("/admin/keys").await.json().await.unwrap();
    let fc01 = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "fc-01")
        .unwrap()
        .clone();
    (app, token, fc01)
}

/// The consumer's token from the Go service keeps working after the import: only its hash
/// moved, and its scope (firecrawl) is all it may draw from.
#[tokio::test]
async fn an_imported_consumer_token_draws_from_its_scoped_tier_only() {
    for time in TIMES {
        let (app, token, _) = latest_served_at(time).await;
        let ask = |feature: &'static str| {
            app.client
                .get(format!("{}/key?feature={feature}", app.address))
                .bearer_auth(&token)
                .send()
        };
        let response = ask("firecrawl_scrape").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "at {time}");
        let body: Value = response.json().await.unwrap();
        assert!(
            ["fc-aaaa1111", "fc-bbbb2222"].contains(&body["value"].as_str().unwrap()),
            "at {time}: {body}"
        );
        assert_eq!(
            ask("chat").await.unwrap().status(),
            StatusCode::FORBIDDEN,
            "at {time}"
        );
    }
}

/// fc-01's usage window (30 days from 2026-11-01, 7 of its 1,000 uses counted) carries over
/// while it is open.
#[tokio::test]
async fn an_imported_usage_count_carries_over_inside_its_window() {
    let (_app, _, fc01) = latest_served_at(IN_WINDOW).await;
    assert_eq!(fc01["usage_limit"], 1000);
    assert_eq!(fc01["usage_window_seconds"], 2_592_000);
    assert_eq!(fc01["usage_count"], 7, "{fc01}");
}

/// Once fc-01's usage window has ended, the imported count no longer applies: a fresh window
/// starts with a count of 0.
#[tokio::test]
async fn an_imported_usage_window_that_has_ended_starts_fresh() {
    let (_app, _, fc01) = latest_served_at(YEARS_LATER).await;
    assert_eq!(fc01["usage_limit"], 1000);
    assert_eq!(fc01["usage_count"], 0, "{fc01}");
}

#[test]
fn seed_round_trip_export_then_import_gives_back_the_same_database() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.redb");
    import_fixture(SEED, &first);
    let file = dir.path().join("export.db");
    let summary = export_to(&first, &file, Schema::Seed, false).unwrap();
    assert_eq!((summary.tiers, summary.keys), (2, 5));
    assert!(summary.left_out.is_empty(), "{:?}", summary.left_out);
    let second = dir.path().join("second.redb");
    let again = import_into(&file, &hex_key(OURS), &second, ImportMode::Refuse).unwrap();
    assert_eq!(again.schema, Schema::Seed);
    assert_eq!(view(&second), view(&first));
    // The values are sealed Go-style (hex, no prefix) under our key, not copied.
    let conn = rusqlite::Connection::open(&file).unwrap();
    let stored: String = conn
        .query_row(
            "SELECT key_encrypted FROM keys WHERE name = 'free-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(stored.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(&*ours().open_go(&stored).unwrap(), "free-key-1");
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT version, name FROM schema_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        [
            (1, "create_tiers".to_owned()),
            (2, "create_keys".to_owned())
        ]
    );
}

#[test]
fn latest_round_trip_keeps_everything_including_expiry_usage_and_consumers() {
    for time in TIMES {
        latest_round_trip_at(at(time));
    }
}

fn latest_round_trip_at(now_ms: i64) {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.redb");
    import_fixture(LATEST, &first);
    let file = dir.path().join("export.db");
    let summary = export_at(&first, &file, Schema::Latest, false, now_ms).unwrap();
    assert_eq!((summary.tiers, summary.keys, summary.consumers), (2, 5, 1));
    let second = dir.path().join("second.redb");
    let again = import_into(&file, &hex_key(OURS), &second, ImportMode::Refuse).unwrap();
    assert_eq!(again.schema, Schema::Latest);
    assert_eq!(view(&second), view(&first));
    // And once more: import, export, import is stable.
    let file2 = dir.path().join("export2.db");
    export_at(&second, &file2, Schema::Latest, false, now_ms).unwrap();
    let third = dir.path().join("third.redb");
    import_into(&file2, &hex_key(OURS), &third, ImportMode::Refuse).unwrap();
    assert_eq!(view(&third), view(&first));
    let conn = rusqlite::Connection::open(&file).unwrap();
    let stored: String = conn
        .query_row(
            "SELECT value FROM key_secrets WHERE name = 'org_id'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(stored.starts_with("enc:gcm:"));
}

#[test]
fn the_seed_export_refuses_what_would_serve_a_key_more_and_writes_expired_keys_inactive() {
    for time in TIMES {
        seed_export_at(at(time));
    }
}

fn seed_export_at(now_ms: i64) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_fixture(LATEST, &db);
    let file = dir.path().join("export.db");
    let err = export_at(&db, &file, Schema::Seed, false, now_ms).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tiers row 1e2feb89-414c-343c-1027-c4d1c386bbc4: feature \"image-generation\" has a 3600 s window; the seed schema cannot hold it (export with --schema latest)"
    );
    assert!(!file.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temp file left"
    );

    // Without the hourly feature and the usage-limited active keys, the rest fits (an inactive
    // key's cap does not matter): the expired key is written inactive, secrets and consumers are
    // reported as left out.
    let (src_dir, from) = altered(
        LATEST,
        "DELETE FROM tier_features WHERE window_seconds != 60;
         UPDATE keys SET usage_limit = NULL, expires_at = NULL WHERE name != 'fc-expired';
         UPDATE keys SET usage_limit = 5 WHERE name = 'oa-2-inactive';",
    );
    let db2 = src_dir.path().join("pool.redb");
    import_into(&from, &fixture_key(LATEST), &db2, ImportMode::Refuse).unwrap();
    let summary = export_at(&db2, &file, Schema::Seed, false, now_ms).unwrap();
    assert_eq!(summary.expired_as_inactive, 1);
    assert_eq!(
        summary.left_out,
        [
            "bound secrets: 3",
            "keys' metadata: 2",
            "consumers: 1",
            "tier descriptions: 1"
        ]
    );
    let conn = rusqlite::Connection::open(&file).unwrap();
    let active: i64 = conn
        .query_row(
            "SELECT is_active FROM keys WHERE name = 'fc-expired'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(active, 0);
}

#[tokio::test]
async fn values_with_unicode_quotes_and_4_kb_survive_both_round_trips_and_are_served() {
    let mut app = TestApp::spawn().await;
    app.create_tier("odd", json!({"chat": 100})).await;
    let long = "k".repeat(4096);
    let values = [
        "ключ \"double\" 'single' \\back\\slash 😀 \t tab",
        long.as_str(),
        "<>&;--' OR 1=1",
    ];
    for (i, value) in values.iter().enumerate() {
        let response = app
            .post(
                "/admin/keys",
                &json!({
                    "name": format!("ключ-{i}"), "key": value, "tier": "odd",
                    "metadata": {"note": "ü \"q\""}, "secrets": {"s": format!("{value}-secret")},
                }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    app.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let original = view(&app.db_path);

    let latest = dir.path().join("latest.db");
    export_to(&app.db_path, &latest, Schema::Latest, false).unwrap();
    let from_latest = dir.path().join("from-latest.redb");
    import_into(&latest, &hex_key(OURS), &from_latest, ImportMode::Refuse).unwrap();
    assert_eq!(view(&from_latest), original);

    let seed = dir.path().join("seed.db");
    export_to(&app.db_path, &seed, Schema::Seed, false).unwrap();
    let from_seed = dir.path().join("from-seed.redb");
    import_into(&seed, &hex_key(OURS), &from_seed, ImportMode::Refuse).unwrap();
    let seed_view = view(&from_seed);
    assert_eq!(seed_view.len(), original.len());
    for (id, record) in &original {
        for field in [
            "name",
            "value",
            "active",
            "tier_id",
            "features",
            "created_at_ms",
        ] {
            assert_eq!(seed_view[id].get(field), record.get(field), "{id} {field}");
        }
    }

    let served_dir = tempfile::tempdir().unwrap();
    let db = served_dir.path().join("pool.redb");
    std::fs::copy(&from_seed, &db).unwrap();
    let app = TestApp::on_database_at(served_dir, db, &hex_key(OURS), at(IN_WINDOW)).await;
    assert_eq!(served(&app, "chat", 6).await, set(&values));
}

/// Imports `from` into a target that already holds the seed fixture (with `mode`), expecting an
/// error that contains `message`; the target must hold exactly what it held. A bad source file
/// is refused before the target is even opened: then the target is byte for byte the same.
fn assert_refused(from: &Path, source_key: &str, mode: ImportMode, message: &str) -> CompatError {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_fixture(SEED, &db);
    // Opening a redb file rewrites its header, so the bytes are taken after the view.
    let held = view(&db);
    let before = (bytes(&db), held);
    let err = import_into(from, source_key, &db, mode).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(message),
        "{text:?} should contain {message:?}"
    );
    if read_source(from, &sealer(source_key), &ProgressBar::hidden()).is_err() {
        assert_eq!(bytes(&db), before.0, "the target was not even opened");
    }
    assert_eq!(view(&db), before.1, "the target holds what it held");
    for secret in ["sk-proj", "sk-ant", "free-key", "fc-", "whsec", "org-123"] {
        assert!(!text.contains(secret), "a value was echoed: {text}");
    }
    err
}

#[test]
fn every_bad_row_aborts_naming_table_row_and_reason_and_writes_nothing() {
    let seed_key = fixture_key(SEED);
    let latest_key = fixture_key(LATEST);
    let free1 = "043d79b3-8ddf-4d36-86d4-ddf50110a74b";
    let cases: Vec<(&str, String, String)> = vec![
        (
            SEED,
            format!("UPDATE keys SET tier_id = 'no-such-tier' WHERE id = '{free1}'"),
            format!("keys row {free1}: tier_id names no tier in the file"),
        ),
        (
            SEED,
            format!("UPDATE keys SET created_at = 'yesterday' WHERE id = '{free1}'"),
            format!(
                "keys row {free1}: created_at is not a timestamp (RFC 3339 or YYYY-MM-DD HH:MM:SS)"
            ),
        ),
        (
            SEED,
            "UPDATE tier_features SET rate_per_minute = 16777216 WHERE feature = 'chat'".into(),
            "tier_features row 923ef101-b09e-4bd7-8919-42c44918b90c/chat: limit: rate_limit must be an integer from 1 to 16777215".into(),
        ),
        (
            SEED,
            "UPDATE tier_features SET rate_per_minute = 0 WHERE feature = 'chat'".into(),
            "rate_limit must be an integer from 1 to 16777215".into(),
        ),
        (
            SEED,
            "UPDATE tier_features SET rate_per_minute = 'lots' WHERE feature = 'chat'".into(),
            "tier_features row 923ef101-b09e-4bd7-8919-42c44918b90c/chat: rate_per_minute is not an integer".into(),
        ),
        (
            SEED,
            format!("UPDATE keys SET key_encrypted = 'zz-not-hex' WHERE id = '{free1}'"),
            format!("keys row {free1}: key_encrypted: the sealed value is not hex"),
        ),
        (
            SEED,
            format!("UPDATE keys SET key_encrypted = 'abcd' WHERE id = '{free1}'"),
            format!("keys row {free1}: key_encrypted: the sealed value is too short"),
        ),
        (
            SEED,
            format!("UPDATE keys SET name = CAST(x'ff00fe' AS TEXT) WHERE id = '{free1}'"),
            format!("keys row {free1}: name is not UTF-8 text"),
        ),
        (
            SEED,
            format!("UPDATE keys SET name = '   ' WHERE id = '{free1}'"),
            format!("keys row {free1}: name is required"),
        ),
        (
            SEED,
            format!("UPDATE keys SET id = 'bad' || char(10) || 'id' WHERE id = '{free1}'"),
            "keys row at rowid 4: id must be 1 to 128 characters".into(),
        ),
        (
            LATEST,
            "UPDATE keys SET metadata_json = '[1, 2]' WHERE name = 'oa-1'".into(),
            "keys row 9b810e76-6ec9-d286-63ca-828dd5f4b3b2: metadata_json is not a JSON object".into(),
        ),
        (
            LATEST,
            "UPDATE keys SET metadata_json = '{\"plan\": ' WHERE name = 'fc-01'".into(),
            "metadata_json is not JSON".into(),
        ),
        (
            LATEST,
            "UPDATE keys SET expires_at = '2099-02-30T00:00:00Z' WHERE name = 'fc-02'".into(),
            "keys row 35bf992d-c9e9-c616-612e-7696a6cecc1b: expires_at is not a timestamp".into(),
        ),
        (
            LATEST,
            "UPDATE keys SET usage_count = -1 WHERE name = 'fc-02'".into(),
            "usage_count must not be negative".into(),
        ),
        (
            LATEST,
            "UPDATE keys SET usage_limit = 0 WHERE name = 'fc-02'".into(),
            "usage_limit must be a positive integer".into(),
        ),
        (
            LATEST,
            "UPDATE tier_features SET window_seconds = 0 WHERE feature = 'chat'".into(),
            "tier_features row 1e2feb89-414c-343c-1027-c4d1c386bbc4/chat: limit: window_seconds must be an integer from 1 to 31622400".into(),
        ),
        (
            LATEST,
            "UPDATE key_secrets SET value = 'enc:gcm:00ff' WHERE name = 'webhook_secret'".into(),
            "key_secrets row 78e51061-7311-d8a3-c2ce-6f447ed4d57b/webhook_secret: value: the sealed value is too short".into(),
        ),
        (
            LATEST,
            "UPDATE key_secrets SET key_id = 'gone' WHERE name = 'webhook_secret'".into(),
            "key_secrets row gone/webhook_secret: key_id names no key in the file".into(),
        ),
        (
            LATEST,
            "UPDATE consumers SET token_hash = 'not-a-hash'".into(),
            "consumers row cd447e35-b8b6-d8fe-442e-3d437204e52d: token_hash is not a SHA-256 (64 hex characters)".into(),
        ),
        (
            LATEST,
            "UPDATE consumer_scopes SET tier_id = 'gone'".into(),
            "consumer_scopes row cd447e35-b8b6-d8fe-442e-3d437204e52d/gone: tier_id names no tier in the file".into(),
        ),
        (
            LATEST,
            "UPDATE tiers SET created_at = 20261128 WHERE name = 'openai'".into(),
            "tiers row 1e2feb89-414c-343c-1027-c4d1c386bbc4: created_at is a number, not text".into(),
        ),
    ];
    for (fixture, sql, message) in &cases {
        let (_dir, from) = altered(fixture, sql);
        let key = if *fixture == SEED {
            &seed_key
        } else {
            &latest_key
        };
        let err = assert_refused(&from, key, ImportMode::Merge, message);
        assert!(matches!(err, CompatError::BadRow { .. }), "{err:?}");
    }
}

#[test]
fn a_wrong_source_key_is_refused_and_nothing_is_written() {
    let (_dir, from) = copy_fixture(SEED);
    let err = assert_refused(
        &from,
        &hex_key(0x77),
        ImportMode::Replace,
        "keys row dd50ab8f-8134-4ef6-9914-fa2f1a715e6f: key_encrypted: the value does not open under this ENCRYPTION_KEY (is the source file's key ENCRYPTION_KEY, or does it need --encryption-key-from?)",
    );
    assert!(!err.to_string().contains(&hex_key(0x77)));
    // A fresh target given a bad file stays empty.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    assert!(import_into(&from, &hex_key(0x77), &db, ImportMode::Refuse).is_err());
    assert!(view(&db).is_empty());
}

#[test]
fn files_that_are_not_the_go_keypoolers_database_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "these are not the tables you are looking for").unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let redb = dir.path().join("ours.redb");
    drop(Store::open(&redb, &ours()).unwrap());
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        .unwrap();
    let half = dir.path().join("half.db");
    rusqlite::Connection::open(&half)
        .unwrap()
        .execute_batch(
            "CREATE TABLE tiers (id TEXT PRIMARY KEY, name TEXT);
             CREATE TABLE tier_features (tier_id TEXT, feature TEXT, budget INTEGER);
             CREATE TABLE keys (id TEXT PRIMARY KEY, name TEXT, tier_id TEXT, key_encrypted TEXT);",
        )
        .unwrap();
    let mut truncated = bytes(&fixtures().join(format!("{SEED}.db"))).unwrap();
    truncated.truncate(1000);
    let cut = dir.path().join("cut.db");
    std::fs::write(&cut, &truncated).unwrap();
    let cases = [
        (
            text.clone(),
            "is not a SQLite database: it does not start with the SQLite header",
        ),
        (empty, "is not a SQLite database: the file is empty"),
        (
            redb,
            "is not a SQLite database: it does not start with the SQLite header",
        ),
        (
            other,
            "is a SQLite database but not the Go keypooler's: it needs the tables tiers, tier_features and keys",
        ),
        (
            half,
            "is a SQLite database but not the Go keypooler's: tier_features has neither rate_per_minute nor rate_limit",
        ),
        (cut, "is not a SQLite database"),
        (dir.path().join("missing.db"), "cannot open"),
    ];
    for (path, message) in &cases {
        let before = bytes(path);
        assert_refused(path, &hex_key(OURS), ImportMode::Merge, message);
        assert_eq!(bytes(path), before, "the source is untouched");
    }
    assert_eq!(
        std::fs::read_to_string(&text).unwrap(),
        "these are not the tables you are looking for"
    );
}

#[test]
fn a_non_empty_target_needs_merge_or_replace() {
    let (_dir, from) = copy_fixture(LATEST);
    let err = assert_refused(
        &from,
        &fixture_key(LATEST),
        ImportMode::Refuse,
        "already holds 2 tiers, 5 keys and 0 consumers; choose --merge (keep them, skip ids already present) or --replace (delete them first)",
    );
    assert!(matches!(err, CompatError::TargetNotEmpty { .. }));
}

#[test]
fn merge_skips_ids_already_present_and_replace_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_fixture(SEED, &db);
    let seed_only = view(&db);

    let (_l, latest) = copy_fixture(LATEST);
    let merged = import_into(&latest, &fixture_key(LATEST), &db, ImportMode::Merge).unwrap();
    assert_eq!((merged.tiers, merged.keys, merged.skipped), (2, 5, 0));
    let both = view(&db);
    assert_eq!(both.len(), seed_only.len() + 8);
    assert!(seed_only.iter().all(|(id, record)| both[id] == *record));

    let (_s, seed) = copy_fixture(SEED);
    let again = import_into(&seed, &fixture_key(SEED), &db, ImportMode::Merge).unwrap();
    assert_eq!((again.tiers, again.keys, again.skipped), (0, 0, 7));
    assert_eq!(view(&db), both);

    let replaced = import_into(&latest, &fixture_key(LATEST), &db, ImportMode::Replace).unwrap();
    assert_eq!(
        (replaced.tiers, replaced.keys, replaced.consumers),
        (2, 5, 1)
    );
    let fresh = tempfile::tempdir().unwrap();
    let latest_only = fresh.path().join("pool.redb");
    import_fixture(LATEST, &latest_only);
    assert_eq!(view(&db), view(&latest_only));
}

#[test]
fn merge_refuses_a_tier_name_already_used_by_another_id() {
    let (_dir, from) = altered(
        SEED,
        "UPDATE tiers SET id = 'other-pro' WHERE name = 'pro';
         UPDATE tier_features SET tier_id = 'other-pro' WHERE tier_id = '923ef101-b09e-4bd7-8919-42c44918b90c';
         UPDATE keys SET tier_id = 'other-pro' WHERE tier_id = '923ef101-b09e-4bd7-8919-42c44918b90c';",
    );
    assert_refused(
        &from,
        &fixture_key(SEED),
        ImportMode::Merge,
        "tiers row other-pro: a tier named \"pro\" is already in the database under another id",
    );
}

#[tokio::test]
async fn a_database_held_by_a_running_server_is_refused() {
    let app = TestApp::spawn().await;
    let (src_dir, from) = copy_fixture(SEED);
    let err = import_into(&from, &fixture_key(SEED), &app.db_path, ImportMode::Merge).unwrap_err();
    assert!(
        matches!(err, CompatError::Store(StoreError::InUse(_))),
        "{err:?}"
    );
    assert!(err.to_string().contains("is in use by another process"));
    let err = export_to(
        &app.db_path,
        &src_dir.path().join("out.db"),
        Schema::Seed,
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("is in use by another process"));
    // The server still serves: nothing was imported.
    let body = crate::helpers::expect(app.get("/admin/tiers").await, StatusCode::OK).await;
    assert_eq!(body, json!([]));
}

#[test]
fn a_source_path_with_spaces_question_marks_and_percent_signs_opens() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("go data?v=1#x %41 ключ");
    std::fs::create_dir(&folder).unwrap();
    let from = folder.join("pool 2.db");
    std::fs::copy(fixtures().join(format!("{SEED}.db")), &from).unwrap();
    let db = dir.path().join("pool.redb");
    let summary = import_into(&from, &fixture_key(SEED), &db, ImportMode::Refuse).unwrap();
    assert_eq!(summary.keys, 5);
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 1);
}

#[test]
fn a_wal_file_with_a_live_writer_is_read_with_its_pending_transactions() {
    let (dir, from) = copy_fixture(SEED);
    let writer = rusqlite::Connection::open(&from).unwrap();
    writer
        .execute_batch("PRAGMA wal_autocheckpoint = 0")
        .unwrap();
    let sealed = sealer(&fixture_key(SEED)).seal_go("written-while-running");
    writer
        .execute(
            "INSERT INTO keys (id, name, key_encrypted, tier_id) VALUES ('live-1', 'live', ?1, 'f3a5f86b-6aec-42e7-842b-716118eaced5')",
            [sealed],
        )
        .unwrap();
    assert!(dir.path().join(format!("{SEED}.db-wal")).exists());
    let db = dir.path().join("pool.redb");
    let summary = import_into(&from, &fixture_key(SEED), &db, ImportMode::Refuse).unwrap();
    assert_eq!(summary.keys, 6);
    assert_eq!(view(&db)["key live-1"]["value"], "written-while-running");
}

#[test]
fn the_exported_seed_file_has_the_go_services_schema_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_fixture(SEED, &db);
    let file = dir.path().join("export.db");
    export_to(&db, &file, Schema::Seed, false).unwrap();
    let (_f, fixture) = copy_fixture(SEED);
    assert_eq!(schema_of(&file, ""), schema_of(&fixture, ""));

    let latest_db = dir.path().join("latest.redb");
    import_fixture(LATEST, &latest_db);
    let latest_file = dir.path().join("latest.db");
    export_to(&latest_db, &latest_file, Schema::Latest, false).unwrap();
    let (_l, latest_fixture) = copy_fixture(LATEST);
    // The fixture's bookkeeping table was written by hand, on one line; ours is the Go runner's.
    let tables = "WHERE name != 'schema_migrations'";
    assert_eq!(
        schema_of(&latest_file, tables),
        schema_of(&latest_fixture, tables)
    );
}

/// Every schema object of a SQLite file: type, name, table and its SQL text.
fn schema_of(path: &Path, filter: &str) -> Vec<(String, String, String, Option<String>)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let sql = format!("SELECT type, name, tbl_name, sql FROM sqlite_master {filter} ORDER BY name");
    let mut statement = conn.prepare(&sql).unwrap();
    statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn export_refuses_an_existing_file_unless_forced_and_replaces_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_fixture(SEED, &db);
    let file = dir.path().join("export.db");
    std::fs::write(&file, "keep me").unwrap();
    let err = export_to(&db, &file, Schema::Seed, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} already exists; pass --force to overwrite it",
            file.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    export_to(&db, &file, Schema::Seed, true).unwrap();
    let again = dir.path().join("again.redb");
    import_into(&file, &hex_key(OURS), &again, ImportMode::Refuse).unwrap();
    assert_eq!(view(&again), view(&db));
    let names: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, set(&["again.redb", "export.db", "pool.redb"]));
    let err = export_to(
        &db,
        &dir.path().join("no/such/folder.db"),
        Schema::Seed,
        false,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("its folder does not exist"),
        "{err}"
    );
}

// The built binary: settings from the environment, one summary line, one error line.

/// The built binary, run to its end in `dir` with only the settings in `env`.
fn keypooler(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    crate::process::run(dir, env, args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_binary_imports_and_exports_with_a_one_line_summary() {
    let (dir, from) = copy_fixture(SEED);
    let ours_hex = hex_key(OURS);
    let source_hex = fixture_key(SEED);
    let env = [
        ("ENCRYPTION_KEY", ours_hex.as_str()),
        ("SOURCE_ENCRYPTION_KEY", source_hex.as_str()),
    ];
    let output = keypooler(
        dir.path(),
        &env,
        &["import", "--from", from.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("(seed schema)")
            && stdout.contains(": 2 tiers, 5 keys, 0 consumers, 0 skipped,"),
        "{stdout}"
    );
    assert_eq!(text(&output.stderr), "", "no progress bar off a terminal");

    let out = dir.path().join("out.db");
    let output = keypooler(dir.path(), &env[..1], &["export", "--to", "out.db"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert_eq!(stdout.lines().count(), 1);
    assert!(
        stdout.contains("(seed schema): 2 tiers, 5 keys"),
        "{stdout}"
    );
    let exported = bytes(&out);

    let output = keypooler(dir.path(), &env[..1], &["export", "--to", "out.db"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("already exists; pass --force"));
    assert_eq!(bytes(&out), exported);

    // The sqlite3 command line, when installed, opens it and sees the Go service's schema.
    if let Ok(check) = Command::new("sqlite3")
        .arg(&out)
        .arg("PRAGMA integrity_check")
        .output()
    {
        assert_eq!(text(&check.stdout).trim(), "ok");
        let schema = |path: &Path| {
            text(
                &Command::new("sqlite3")
                    .arg(path)
                    .arg(".schema")
                    .output()
                    .unwrap()
                    .stdout,
            )
        };
        let (_f, fixture) = copy_fixture(SEED);
        assert_eq!(schema(&out), schema(&fixture));
    }
}

/// One line on stderr, this exit code, no panic, no secret.
fn assert_one_line(output: &Output, code: i32, expected: &str, secrets: &[&str]) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(expected),
        "{stderr:?} should contain {expected:?}"
    );
    assert!(!stderr.contains("panicked"));
    for secret in secrets {
        assert!(!stderr.contains(secret), "a secret was echoed: {stderr}");
    }
}

#[test]
fn the_binary_fails_with_one_line_and_creates_nothing() {
    let (dir, from) = copy_fixture(SEED);
    let from = from.to_str().unwrap();
    let ours_hex = hex_key(OURS);
    let wrong = hex_key(0x77);
    let db = dir.path().join("pool.redb");

    let output = keypooler(
        dir.path(),
        &[
            ("ENCRYPTION_KEY", &ours_hex),
            ("SOURCE_ENCRYPTION_KEY", &wrong),
        ],
        &["import", "--from", from],
    );
    assert_one_line(
        &output,
        1,
        "failed; nothing was written: keys row dd50ab8f-8134-4ef6-9914-fa2f1a715e6f: key_encrypted: the value does not open",
        &[&ours_hex, &wrong, "sk-proj"],
    );
    assert!(!db.exists(), "no database was created");

    let output = keypooler(
        dir.path(),
        &[
            ("ENCRYPTION_KEY", &ours_hex),
            ("SOURCE_ENCRYPTION_KEY", "abc-secret"),
        ],
        &["import", "--from", from],
    );
    assert_one_line(
        &output,
        2,
        "SOURCE_ENCRYPTION_KEY (--encryption-key-from) must be exactly 64 hex characters",
        &["abc-secret"],
    );

    let output = keypooler(dir.path(), &[], &["import", "--from", from]);
    assert_one_line(&output, 2, "ENCRYPTION_KEY is required", &[]);

    let output = keypooler(
        dir.path(),
        &[("ENCRYPTION_KEY", &ours_hex)],
        &["import", "--from", "missing.db"],
    );
    assert_one_line(&output, 1, "cannot open missing.db", &[]);
    assert!(!db.exists());

    let output = keypooler(
        dir.path(),
        &[("ENCRYPTION_KEY", &ours_hex)],
        &["export", "--to", "out.db"],
    );
    assert_one_line(
        &output,
        1,
        "pool.redb does not exist: nothing to export",
        &[],
    );

    // A server (here: an open store) holds the database.
    let held = Store::open(&db, &ours()).unwrap();
    let output = keypooler(
        dir.path(),
        &[
            ("ENCRYPTION_KEY", &ours_hex),
            ("SOURCE_ENCRYPTION_KEY", &fixture_key(SEED)),
        ],
        &["import", "--from", from],
    );
    assert_one_line(&output, 1, "is in use by another process", &[]);
    let output = keypooler(
        dir.path(),
        &[("ENCRYPTION_KEY", &ours_hex)],
        &["export", "--to", "out.db"],
    );
    assert_one_line(&output, 1, "is in use by another process", &[]);
    drop(held);
    assert!(view(&db).is_empty());
    assert!(!dir.path().join("out.db").exists());
}

// Hostile rows: whatever a SQLite file holds, the import ends in a clean error or a success.

#[derive(Clone, Debug)]
enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    /// Stored as TEXT, but not UTF-8.
    Bytes(Vec<u8>),
}

fn cell() -> impl Strategy<Value = Cell> {
    prop_oneof![
        Just(Cell::Null),
        any::<i64>().prop_map(Cell::Integer),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(i64::MAX),
            Just(i64::MIN),
            Just(16_777_215),
            Just(16_777_216),
            Just(31_622_401),
        ]
        .prop_map(Cell::Integer),
        any::<f64>().prop_map(Cell::Real),
        any::<String>().prop_map(Cell::Text),
        "(enc:gcm:)?[0-9a-fA-Fxz]{0,120}".prop_map(Cell::Text),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[ Tx][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?"
            .prop_map(Cell::Text),
        "\\{\"[a-z]{0,5}\": ?[0-9a-z\\[\\]\"]{0,8}\\}?".prop_map(Cell::Text),
        proptest::collection::vec(any::<u8>(), 0..48).prop_map(Cell::Bytes),
        Just(Cell::Text("x".repeat(1 << 20))),
    ]
}

/// Every column the import reads, in the fixture that has it.
const COLUMNS: &[(&str, &str, &str)] = &[
    (SEED, "tiers", "id"),
    (SEED, "tiers", "name"),
    (SEED, "tiers", "created_at"),
    (SEED, "tier_features", "tier_id"),
    (SEED, "tier_features", "feature"),
    (SEED, "tier_features", "rate_per_minute"),
    (SEED, "keys", "id"),
    (SEED, "keys", "name"),
    (SEED, "keys", "key_encrypted"),
    (SEED, "keys", "tier_id"),
    (SEED, "keys", "is_active"),
    (SEED, "keys", "created_at"),
    (LATEST, "tiers", "description"),
    (LATEST, "tier_features", "rate_limit"),
    (LATEST, "tier_features", "window_seconds"),
    (LATEST, "keys", "key_value"),
    (LATEST, "keys", "expires_at"),
    (LATEST, "keys", "usage_limit"),
    (LATEST, "keys", "usage_count"),
    (LATEST, "keys", "usage_window_seconds"),
    (LATEST, "keys", "usage_window_start"),
    (LATEST, "keys", "metadata_json"),
    (LATEST, "key_secrets", "key_id"),
    (LATEST, "key_secrets", "name"),
    (LATEST, "key_secrets", "value"),
    (LATEST, "consumers", "id"),
    (LATEST, "consumers", "name"),
    (LATEST, "consumers", "token_hash"),
    (LATEST, "consumers", "is_active"),
    (LATEST, "consumer_scopes", "consumer_id"),
    (LATEST, "consumer_scopes", "tier_id"),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn hostile_row_values_give_a_clean_error_or_a_clean_import(
        column in 0..COLUMNS.len(),
        row in 0usize..3,
        value in cell(),
    ) {
        let (fixture, table, name) = COLUMNS[column];
        let (dir, from) = copy_fixture(fixture);
        {
            let conn = rusqlite::Connection::open(&from).unwrap();
            let target = format!(
                "rowid = (SELECT rowid FROM {table} ORDER BY rowid LIMIT 1 OFFSET {row})"
            );
            let outcome = match &value {
                Cell::Null => conn.execute(&format!("UPDATE {table} SET {name} = NULL WHERE {target}"), []),
                Cell::Integer(n) => conn.execute(&format!("UPDATE {table} SET {name} = ?1 WHERE {target}"), [n]),
                Cell::Real(x) => conn.execute(&format!("UPDATE {table} SET {name} = ?1 WHERE {target}"), [x]),
                Cell::Text(t) => conn.execute(&format!("UPDATE {table} SET {name} = ?1 WHERE {target}"), [t]),
                Cell::Bytes(b) => conn.execute(&format!("UPDATE {table} SET {name} = CAST(?1 AS TEXT) WHERE {target}"), [b]),
            };
            // A NOT NULL or unique constraint may refuse the value: the file is then unchanged,
            // which is a fine case too.
            drop(outcome);
        }
        let db = dir.path().join("pool.redb");
        match import_into(&from, &fixture_key(fixture), &db, ImportMode::Refuse) {
            Ok(summary) => {
                let stored = view(&db);
                prop_assert_eq!(stored.len(), summary.tiers + summary.keys + summary.consumers);
            }
            Err(err) => {
                let message = err.to_string();
                prop_assert!(matches!(err, CompatError::BadRow { .. }), "{:?}", err);
                prop_assert!(message.len() < 1_000, "the message stays short: {}", message.len());
                for secret in ["sk-proj", "free-key", "fc-aaaa", "whsec", "org-123"] {
                    prop_assert!(!message.contains(secret), "{}", message);
                }
                prop_assert!(view(&db).is_empty(), "nothing was written");
            }
        }
    }
}

#[test]
fn export_refuses_a_key_whose_tier_is_gone_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_fixture(SEED, &db);
    {
        let store = Store::open(&db, &ours()).unwrap();
        let contents = store.load().unwrap();
        let mut orphan = contents.keys[0].clone();
        orphan.tier_id = "deleted-tier".into();
        let batch = store.begin().unwrap();
        batch.put_key(&orphan).unwrap();
        batch.commit().unwrap();
    }
    let file = dir.path().join("export.db");
    for schema in [Schema::Seed, Schema::Latest] {
        let err = export_to(&db, &file, schema, false).unwrap_err();
        assert!(
            err.to_string().ends_with(": its tier does not exist"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no file left"
        );
    }
}
