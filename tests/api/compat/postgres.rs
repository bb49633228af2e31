//! The Go service's newest generation, in a real PostgreSQL (see `crate::pg`): the sample
//! (`tests/fixtures/go-keypooler-postgres/`) imported and served, exported back into an empty
//! database, and every hostile case a clean error that writes nothing.

use std::collections::BTreeMap;

use keypooler::compat::{PostgresUrl, export_postgres, read_postgres};
use keypooler::store::{BudgetRecord, KeyRecord};

use super::*;
use crate::helpers::expect;
use crate::pg::{self, PASSWORD, Server, off_runtime};

const SAMPLE: &str = "go-keypooler-postgres";

fn sample_file(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(SAMPLE).join(name)).unwrap()
}

fn sample_json() -> Value {
    serde_json::from_str(&sample_file("sample.json")).unwrap()
}

fn sample_key() -> String {
    sample_json()["encryption_key"].as_str().unwrap().to_owned()
}

/// A new database holding the Go service's schema and the sample, then `sql`; its URL.
fn sample_with(sql: &str) -> String {
    off_runtime(|| {
        let url = Server::get().database();
        let mut client = pg::connect(&url);
        client.batch_execute(&sample_file("schema.sql")).unwrap();
        client.batch_execute(&sample_file("sample.sql")).unwrap();
        client.batch_execute(sql).unwrap();
        url
    })
}

/// The sample with `chat`'s limit of 1,000,000,000 lowered to 1,000: for the tests about
/// something else, so that they hold whatever the largest limit accepted.
fn sample_within_limits(sql: &str) -> String {
    sample_with(&format!(
        "UPDATE tier_features SET rate_limit = 1000 WHERE feature = 'chat'; {sql}"
    ))
}

fn read_url(url: &str, source_key: &str) -> Result<SourceContents, CompatError> {
    let url = PostgresUrl::parse(url)?;
    off_runtime(|| read_postgres(&url, &sealer(source_key), &ProgressBar::hidden()))
}

/// Imports the database at `url` into the redb file at `db`, as the CLI does.
fn import_url(
    url: &str,
    source_key: &str,
    db: &Path,
    mode: ImportMode,
) -> Result<ImportSummary, CompatError> {
    import_read(&read_url(url, source_key)?, db, mode)
}

fn export_url(db: &Path, url: &str, now_ms: i64) -> Result<ExportSummary, CompatError> {
    let contents = Store::open(db, &ours())?.load()?;
    let url = PostgresUrl::parse(url)?;
    off_runtime(|| export_postgres(&contents, &ours(), &url, now_ms, &ProgressBar::hidden()))
}

fn stored_keys(db: &Path) -> BTreeMap<String, KeyRecord> {
    let contents = Store::open(db, &ours()).unwrap().load().unwrap();
    contents
        .keys
        .into_iter()
        .map(|key| (key.name.clone(), key))
        .collect()
}

/// The stored keys with their values and secrets opened (sealed bytes differ by their nonces).
fn opened_keys(db: &Path) -> BTreeMap<String, (KeyRecord, String, BTreeMap<String, String>)> {
    stored_keys(db)
        .into_iter()
        .map(|(name, mut key)| {
            let opened = open_key(&key, &ours()).unwrap();
            let secrets = opened
                .secrets
                .iter()
                .map(|(name, value)| (name.clone(), value.to_string()))
                .collect();
            let value = opened.value.to_string();
            key.value.0.clear();
            key.secrets.clear();
            (name, (key, value, secrets))
        })
        .collect()
}

/// Unix ms of a timestamp column of the key named `name`, as the database holds it.
fn instant(url: &str, column: &str, name: &str) -> i64 {
    off_runtime(|| {
        let row = pg::connect(url)
            .query_one(
                &format!(
                    "SELECT (extract(epoch FROM {column}) * 1000)::bigint FROM keys WHERE name = $1"
                ),
                &[&name],
            )
            .unwrap();
        row.get(0)
    })
}

fn now_ms() -> i64 {
    keypooler::broker::Clock::monotonic().unix_now_ms()
}

/// The error's text, checked for the URL's password.
fn error_text(err: CompatError) -> String {
    let text = err.to_string();
    assert!(!text.contains(PASSWORD), "the password was echoed: {text}");
    assert!(!format!("{err:?}").contains(PASSWORD), "{err:?}");
    text
}

#[tokio::test]
#[ignore = "needs postgresql"]
async fn the_sample_imports_whole_and_is_served_row_for_row() {
    let url = sample_with("");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    let summary = import_url(&url, &sample_key(), &db, ImportMode::Refuse).unwrap();
    assert_eq!(
        (
            summary.tiers,
            summary.keys,
            summary.consumers,
            summary.skipped
        ),
        (2, 5, 2, 0)
    );
    assert_eq!((summary.usage_events, summary.spend_events), (6, 2));

    // What nothing serves from yet, straight from the stored records.
    let keys = stored_keys(&db);
    let fc01 = &keys["fc-01"];
    assert_eq!(
        fc01.budget,
        Some(BudgetRecord {
            amount_nanos: 50_000_000_000,
            unit: "usd".into(),
            reset_day: Some(1),
        })
    );
    assert_eq!(fc01.spent_nanos, 12_500_000_000);
    assert_eq!(
        fc01.spent_period_start_ms,
        Some(instant(&url, "spent_period_start", "fc-01"))
    );
    assert_eq!(
        (
            fc01.usage_limit,
            fc01.usage_count,
            fc01.usage_window_seconds
        ),
        (Some(1000), 7, Some(2_592_000))
    );
    assert_eq!(
        fc01.usage_window_start_ms,
        Some(instant(&url, "usage_window_start", "fc-01"))
    );
    assert_eq!(
        keys["fc-02"].exhausted_until_ms,
        Some(instant(&url, "exhausted_until", "fc-02"))
    );
    assert_eq!(
        keys["oa-3"].expires_at_ms,
        Some(instant(&url, "expires_at", "oa-3"))
    );
    assert!(
        keys.values()
            .filter(|k| k.name != "fc-01")
            .all(|k| k.budget.is_none())
    );
    for key in sample_json()["keys"].as_array().unwrap() {
        let stored = &keys[key["name"].as_str().unwrap()];
        assert_eq!(stored.id, key["id"].as_str().unwrap(), "ids are kept");
        assert_eq!(stored.active, key["is_active"].as_bool().unwrap());
    }

    let app = TestApp::on_database_at(dir, db, &hex_key(OURS), now_ms()).await;
    // The budget and the health as the listing shows them.
    let listed = expect(app.get("/admin/keys").await, StatusCode::OK).await;
    let listed: BTreeMap<&str, &Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap(), k))
        .collect();
    let fc01 = listed["fc-01"];
    assert_eq!(
        (&fc01["budget"], &fc01["spent"], &fc01["remaining"]),
        (
            &json!({"amount": 50, "unit": "usd", "reset_day": 1}),
            &json!(12.5),
            &json!(37.5)
        ),
        "{fc01}"
    );
    assert!(
        fc01["resets_at"]
            .as_str()
            .unwrap()
            .ends_with("-01T00:00:00Z")
    );
    assert_eq!(fc01["state"], "active");
    assert_eq!(listed["fc-02"]["state"], "exhausted");
    assert_eq!(listed["oa-2-inactive"]["state"], "inactive");
    assert_eq!(
        (&listed["oa-1"]["budget"], &listed["oa-1"]["spent"]),
        (&json!(null), &json!(0))
    );
    let tiers = expect(app.get("/admin/tiers").await, StatusCode::OK).await;
    let tiers = tiers.as_array().unwrap();
    let openai = tiers.iter().find(|t| t["name"] == "openai").unwrap();
    assert_eq!(
        openai["features"]["chat"],
        json!({"rate_limit": 1_000_000_000, "window_seconds": 60})
    );
    assert_eq!(
        openai["features"]["image-generation"],
        json!({"rate_limit": 20, "window_seconds": 3600})
    );

    // Every servable openai key, with its metadata and secrets; never the inactive one.
    let sample = sample_json();
    let by_value: BTreeMap<&str, &Value> = sample["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["value"].as_str().unwrap(), k))
        .collect();
    let mut served = BTreeSet::new();
    for _ in 0..6 {
        let (status, body) = app.key("chat").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let key = by_value[body["value"].as_str().unwrap()];
        assert_eq!(body["metadata"], key["metadata"]);
        assert_eq!(body["secrets"], key["secrets"]);
        served.insert(key["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(served, BTreeSet::from(["oa-1".into(), "oa-3".into()]));
    let (status, body) = app.key("firecrawl_scrape").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["value"] == "fc-9b1d4e7a2c" || body["value"] == "fc-5e6f7a8b9c");

    // The consumers' tokens work, each within its scopes only.
    let token = |name: &str| {
        sample["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (siphon, gateway) = (token("siphon-runner"), token("ai-gateway"));
    assert_eq!(
        app.key_as(&siphon, "firecrawl_scrape").await.0,
        StatusCode::OK
    );
    assert_eq!(app.key_as(&siphon, "chat").await.0, StatusCode::FORBIDDEN);
    assert_eq!(app.key_as(&gateway, "chat").await.0, StatusCode::OK);
    assert_eq!(
        app.key_as(&gateway, "firecrawl_search").await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.key_as(&"0".repeat(64), "chat").await.0,
        StatusCode::UNAUTHORIZED
    );
    let consumers = expect(app.get("/admin/consumers").await, StatusCode::OK).await;
    assert_eq!(consumers.as_array().unwrap().len(), 2);

    // The audit trail came along, newest first, the admin's rows as "admin".
    let usage = expect(app.get("/admin/usage?limit=100").await, StatusCode::OK).await;
    let usage = usage.as_array().unwrap();
    assert_eq!(usage.len(), 6 + 10, "6 imported, then the 10 draws above");
    let imported: Vec<&Value> = usage[10..].iter().collect();
    assert_eq!(
        imported[0]["key_id"],
        "84202619-a30b-49f8-8574-a5a132333355"
    );
    assert_eq!(
        imported[0]["consumer_id"],
        "a59e0945-39bf-40eb-907e-31ff763f279d"
    );
    assert_eq!(imported[0]["created_at"], "2026-05-06T05:05:35Z");
    assert_eq!(imported[5]["consumer_id"], "admin");
    assert_eq!(imported[5]["feature"], "firecrawl_scrape");
}

#[tokio::test]
#[ignore = "needs postgresql"]
async fn an_exhausted_key_is_not_served_until_its_time_has_passed() {
    let url = sample_within_limits("");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_url(&url, &sample_key(), &db, ImportMode::Refuse).unwrap();
    let until = instant(&url, "exhausted_until", "fc-02");
    let app = TestApp::on_database_at(dir, db, &hex_key(OURS), now_ms()).await;
    for _ in 0..4 {
        let (status, body) = app.key("firecrawl_search").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["value"], "fc-9b1d4e7a2c", "fc-02 is exhausted");
    }
    app.clock
        .advance_ms(u64::try_from(until - now_ms()).unwrap() + 60_000);
    let mut served = BTreeSet::new();
    for _ in 0..4 {
        served.insert(app.key("firecrawl_search").await.1["value"].to_string());
    }
    assert!(served.contains("\"fc-5e6f7a8b9c\""), "{served:?}");
}

/// Every row of the tables keypooler carries, values and secrets opened with `key`, timestamps
/// in unix ms, numbers as text.
fn rows(url: &str, key: &str) -> BTreeMap<&'static str, Vec<Vec<String>>> {
    let go = sealer(key);
    let open = |stored: String| -> String {
        go.open_go_tagged(&stored)
            .map(|plain| plain.to_string())
            .unwrap_or(stored)
    };
    off_runtime(|| {
        let mut client = pg::connect(url);
        let mut tables = BTreeMap::new();
        for (table, columns, order) in [
            ("schema_migrations", "version::text, name", "version"),
            (
                "tiers",
                "id, name, description, (extract(epoch FROM created_at) * 1000)::bigint::text",
                "id",
            ),
            (
                "tier_features",
                "tier_id, feature, rate_limit::text, window_seconds::text",
                "tier_id, feature",
            ),
            (
                "keys",
                "id, name, key_value, tier_id, is_active::text, \
                 coalesce((extract(epoch FROM expires_at) * 1000)::bigint::text, ''), \
                 coalesce(usage_limit::text, ''), usage_count::text, coalesce(usage_window_seconds::text, ''), \
                 coalesce((extract(epoch FROM usage_window_start) * 1000)::bigint::text, ''), \
                 coalesce((extract(epoch FROM exhausted_until) * 1000)::bigint::text, ''), metadata_json::jsonb::text, \
                 (extract(epoch FROM created_at) * 1000)::bigint::text, coalesce(budget_amount::text, ''), \
                 coalesce(budget_unit, ''), coalesce(budget_reset_day::text, ''), spent::text, \
                 coalesce((extract(epoch FROM spent_period_start) * 1000)::bigint::text, '')",
                "id",
            ),
            ("key_secrets", "key_id, name, value", "key_id, name"),
            (
                "consumers",
                "id, name, token_hash, description, is_active::text, (extract(epoch FROM created_at) * 1000)::bigint::text",
                "id",
            ),
            (
                "consumer_scopes",
                "consumer_id, tier_id",
                "consumer_id, tier_id",
            ),
        ] {
            let found: Vec<Vec<String>> = client
                .query(
                    &format!("SELECT {columns} FROM {table} ORDER BY {order}"),
                    &[],
                )
                .unwrap()
                .iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| {
                            let cell: String = row.get(i);
                            match (table, i) {
                                ("keys", 2) | ("key_secrets", 2) => open(cell),
                                _ => cell,
                            }
                        })
                        .collect()
                })
                .collect();
            tables.insert(table, found);
        }
        tables
    })
}

/// The schema as PostgreSQL describes it: every column with its type, default and nullability,
/// every index and constraint.
fn schema(url: &str) -> Vec<String> {
    off_runtime(|| {
        let mut client = pg::connect(url);
        let mut lines: Vec<String> = client
            .query(
                "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '') \
                 FROM information_schema.columns WHERE table_schema = 'public'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        lines.extend(
            client
                .query(
                    "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|row| row.get::<_, String>(0)),
        );
        lines.extend(
            client
                .query(
                    "SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
                     WHERE connamespace = 'public'::regnamespace",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|row| row.get::<_, String>(0)),
        );
        lines.sort();
        lines
    })
}

#[tokio::test]
#[ignore = "needs postgresql"]
async fn postgres_to_redb_to_postgres_gives_back_the_same_rows_and_schema() {
    let source = sample_with("");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_url(&source, &sample_key(), &db, ImportMode::Refuse).unwrap();
    let target = off_runtime(|| Server::get().database());
    let summary = export_url(&db, &target, now_ms()).unwrap();
    assert_eq!((summary.tiers, summary.keys, summary.consumers), (2, 5, 2));
    // Exported under our key, Go-style, as the Go service started with our key reads them.
    assert_eq!(rows(&target, &hex_key(OURS)), rows(&source, &sample_key()));
    assert_eq!(schema(&target), schema(&source));
    // And it reads back as it was written.
    let again = tempfile::tempdir().unwrap();
    let db2 = again.path().join("pool.redb");
    import_url(&target, &hex_key(OURS), &db2, ImportMode::Refuse).unwrap();
    assert_eq!(opened_keys(&db2), opened_keys(&db));
}

#[tokio::test]
#[ignore = "needs postgresql"]
async fn exact_decimals_come_through_without_float_drift() {
    // 0.1 + 0.2 in DOUBLE PRECISION is 0.30000000000000004.
    let url = sample_within_limits(
        "UPDATE keys SET budget_amount = 0.1, spent = 0.1::float8 + 0.2::float8 WHERE name = 'fc-01';
         UPDATE keys SET budget_amount = 7, budget_unit = 'credits', spent = 0.000000000123, \
           spent_period_start = '1970-01-01T00:00:00Z' WHERE name = 'oa-3';
         UPDATE keys SET budget_amount = 5, budget_unit = 'usd', budget_reset_day = 3, spent = 4, \
           spent_period_start = '2001-01-03T00:00:00Z' WHERE name = 'oa-1';",
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_url(&url, &sample_key(), &db, ImportMode::Refuse).unwrap();
    let keys = stored_keys(&db);
    assert_eq!(
        keys["fc-01"].budget.as_ref().unwrap().amount_nanos,
        100_000_000
    );
    assert_eq!(keys["fc-01"].spent_nanos, 300_000_000);
    // A lifetime budget; finer than a billionth spent rounds up.
    assert_eq!(keys["oa-3"].budget.as_ref().unwrap().reset_day, None);
    assert_eq!(keys["oa-3"].spent_nanos, 1);
    // Spent in a period long gone: kept with its period, which is not this one.
    assert_eq!(
        (keys["oa-1"].spent_nanos, keys["oa-1"].spent_period_start_ms),
        (4_000_000_000, Some(978_480_000_000))
    );

    let target = off_runtime(|| Server::get().database());
    export_url(&db, &target, now_ms()).unwrap();
    let exported: Vec<(String, Option<f64>, f64)> = off_runtime(|| {
        pg::connect(&target)
            .query(
                "SELECT name, budget_amount, spent FROM keys ORDER BY name",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect()
    });
    assert!(
        exported.contains(&("fc-01".into(), Some(0.1), 0.3)),
        "{exported:?}"
    );
    // Nothing spent in the current period of oa-1.
    assert!(
        exported.contains(&("oa-1".into(), Some(5.0), 0.0)),
        "{exported:?}"
    );

    // The running server shows the same figures, exactly.
    let app = TestApp::on_database_at(dir, db, &hex_key(OURS), now_ms()).await;
    let listed = app.get("/admin/keys").await.text().await.unwrap();
    for figures in [
        r#""budget":{"amount":0.1,"unit":"usd","reset_day":1},"spent":0.3,"remaining":0"#,
        r#""budget":{"amount":7,"unit":"credits","reset_day":null},"spent":0.000000001,"remaining":6.999999999,"resets_at":null"#,
        r#""budget":{"amount":5,"unit":"usd","reset_day":3},"spent":0,"remaining":5"#,
    ] {
        assert!(listed.contains(figures), "{figures} not in {listed}");
    }
    let over = expect(
        app.get("/admin/keys?state=over_budget").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(over.as_array().unwrap().len(), 1, "{over}");
    assert_eq!(over[0]["name"], "fc-01");
}

#[tokio::test]
#[ignore = "needs postgresql"]
async fn export_refuses_a_database_that_is_not_empty_and_writes_nothing() {
    let url = sample_within_limits("");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_url(&url, &sample_key(), &db, ImportMode::Refuse).unwrap();
    let target = off_runtime(|| {
        let target = Server::get().database();
        pg::connect(&target)
            .batch_execute("CREATE TABLE notes (body TEXT)")
            .unwrap();
        target
    });
    let text = error_text(export_url(&db, &target, now_ms()).unwrap_err());
    assert!(
        text.contains("is not empty (it holds notes)") && text.contains("127.0.0.1"),
        "{text}"
    );
    let tables: i64 = off_runtime(|| {
        pg::connect(&target)
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
                &[],
            )
            .unwrap()
            .get(0)
    });
    assert_eq!(tables, 1);
    // Into the source itself: refused just the same.
    let text = error_text(export_url(&db, &url, now_ms()).unwrap_err());
    assert!(
        text.contains("consumer_scopes, consumers, key_secrets"),
        "{text}"
    );
}

#[tokio::test]
#[ignore = "needs postgresql"]
async fn merge_and_replace_follow_the_sqlite_import_rules() {
    let url = sample_within_limits("");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_url(&url, &sample_key(), &db, ImportMode::Refuse).unwrap();
    let err = import_url(&url, &sample_key(), &db, ImportMode::Refuse).unwrap_err();
    assert!(
        matches!(err, CompatError::TargetNotEmpty { keys: 5, .. }),
        "{err}"
    );
    let merged = import_url(&url, &sample_key(), &db, ImportMode::Merge).unwrap();
    assert_eq!((merged.keys, merged.skipped), (0, 9));
    let replaced = import_url(&url, &sample_key(), &db, ImportMode::Replace).unwrap();
    assert_eq!(
        (replaced.tiers, replaced.keys, replaced.consumers),
        (2, 5, 2)
    );
}

/// Each hostile database: its error names the problem, never the password, and nothing is
/// written (the redb file is not even created); the source is left as it was.
#[tokio::test]
#[ignore = "needs postgresql"]
async fn hostile_databases_are_refused_by_row_and_write_nothing() {
    let cases: Vec<(String, &str, String)> = vec![
        (
            sample_within_limits(""),
            "wrong key",
            "keys row 211f99bf-8bac-44f1-a96e-6b1d3589b854: key_value: the value does not open under this ENCRYPTION_KEY".into(),
        ),
        (
            sample_within_limits("DROP TABLE tier_features CASCADE"),
            "",
            "is a PostgreSQL database but not the Go keypooler's: it needs the tables tiers, tier_features and keys".into(),
        ),
        (
            sample_within_limits(
                "ALTER TABLE tier_features ALTER COLUMN rate_limit TYPE TEXT; \
                 UPDATE tier_features SET rate_limit = 'lots' WHERE feature = 'chat'",
            ),
            "",
            "tier_features row 84bf209e-7828-4c92-85cd-5c329aaa6eb5/firecrawl_scrape: rate_limit is not an integer".into(),
        ),
        (
            sample_within_limits("ALTER TABLE keys ALTER COLUMN expires_at TYPE BYTEA USING convert_to(coalesce(expires_at::text, 'never'), 'UTF8')"),
            "",
            "keys row 211f99bf-8bac-44f1-a96e-6b1d3589b854: expires_at is not a timestamp".into(),
        ),
        (
            sample_within_limits("UPDATE tier_features SET rate_limit = 0 WHERE feature = 'chat'"),
            "",
            "tier_features row 85ec4023-980a-4374-b8e2-5865ffae11ab/chat: limit: rate_limit must be an integer from 1".into(),
        ),
        (
            sample_within_limits(
                "UPDATE tier_features SET window_seconds = 366 * 86400 + 1 WHERE feature = 'chat'",
            ),
            "",
            "window_seconds must be an integer from 1 to 31622400".into(),
        ),
        (
            sample_within_limits("UPDATE keys SET usage_count = -1 WHERE name = 'fc-01'"),
            "",
            "keys row 84202619-a30b-49f8-8574-a5a132333355: usage_count must not be negative".into(),
        ),
        (
            sample_within_limits("UPDATE keys SET usage_limit = 0 WHERE name = 'fc-01'"),
            "",
            "keys row 84202619-a30b-49f8-8574-a5a132333355: usage_limit must be an integer from 1".into(),
        ),
        (
            sample_within_limits("UPDATE keys SET budget_amount = -5 WHERE name = 'fc-01'"),
            "",
            "keys row 84202619-a30b-49f8-8574-a5a132333355: budget_amount must be a decimal number from 0".into(),
        ),
        (
            sample_within_limits("UPDATE keys SET budget_amount = 0 WHERE name = 'fc-01'"),
            "",
            "budget_amount must be more than 0".into(),
        ),
        (
            sample_within_limits("UPDATE keys SET budget_unit = 'eur' WHERE name = 'fc-01'"),
            "",
            "budget_unit must be \"usd\" or \"credits\"".into(),
        ),
        (
            sample_within_limits("UPDATE keys SET budget_reset_day = 31 WHERE name = 'fc-01'"),
            "",
            "budget_reset_day must be from 1 to 28".into(),
        ),
        (
            sample_within_limits("UPDATE keys SET metadata_json = '[1]' WHERE name = 'oa-1'"),
            "",
            "metadata_json is not a JSON object".into(),
        ),
        (
            sample_within_limits("ALTER TABLE keys RENAME TO old_keys; CREATE VIEW keys AS SELECT * FROM old_keys"),
            "",
            "keys is not a table (the import reads tables only)".into(),
        ),
        (
            Server::refused_url(),
            "",
            "cannot connect: error connecting to server".into(),
        ),
        (
            Server::get().url("no_such_database"),
            "",
            "cannot connect: db error".into(),
        ),
        (
            Server::get()
                .url("postgres")
                .replace(PASSWORD, "wrong-password"),
            "",
            "password authentication failed".into(),
        ),
    ];
    for (url, wrong_key, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("pool.redb");
        let key = if wrong_key.is_empty() {
            sample_key()
        } else {
            hex_key(0x33)
        };
        let text = error_text(import_url(&url, &key, &db, ImportMode::Refuse).unwrap_err());
        assert!(
            text.contains(&expected),
            "{text:?} should contain {expected:?}"
        );
        assert!(!text.contains("wrong-password"), "{text}");
        assert!(!db.exists(), "{expected}: nothing may be written");
    }
}

#[test]
#[ignore = "needs postgresql"]
fn the_binary_imports_and_exports_postgres_with_one_line_and_never_shows_the_password() {
    let url = sample_within_limits("");
    let dir = tempfile::tempdir().unwrap();
    let ours_hex = hex_key(OURS);
    let source_hex = sample_key();
    let env = [
        ("ENCRYPTION_KEY", ours_hex.as_str()),
        ("SOURCE_ENCRYPTION_KEY", source_hex.as_str()),
    ];
    let run = |env: &[(&str, &str)], args: &[&str]| crate::process::run(dir.path(), env, args);
    let output = run(&env, &["import", "--from", &url]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("(PostgreSQL) into")
            && stdout.contains(": 2 tiers, 5 keys, 2 consumers, 0 skipped, 6 usage events, 2 spend events not imported"),
        "{stdout}"
    );
    assert!(stdout.contains("kp:***@127.0.0.1"), "{stdout}");
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));

    let target = off_runtime(|| Server::get().database());
    let output = run(&env[..1], &["export", "--to", &target]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("(PostgreSQL): 2 tiers, 5 keys, 2 consumers"),
        "{stdout}"
    );
    assert!(!stdout.contains(PASSWORD));
    // Again into the same database: refused, one line, exit 1, no password.
    let output = run(&env[..1], &["export", "--to", &target]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    // A refused connection: one line, exit 1, no password, no database file.
    let dir2 = tempfile::tempdir().unwrap();
    let output = crate::process::run(
        dir2.path(),
        &env,
        &["import", "--from", &Server::refused_url()],
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("nothing was written") && stderr.contains("cannot connect"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    assert!(!dir2.path().join("pool.redb").exists());
}
