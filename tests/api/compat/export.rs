//! Exporting: round trips through both schemas, the exported schema, and what the seed
//! schema has no room for.

use super::*;

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
    assert_eq!(
        summary.written_inactive,
        std::collections::BTreeMap::from([(keypooler::compat::Unservable::Expired, 1)])
    );
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

/// `keypooler export` of the (stopped) app's database to `cli.db` in `dir`: its summary line.
fn exported_by_the_binary(app: &TestApp, dir: &Path) -> String {
    let env = [
        ("ENCRYPTION_KEY", app.key_hex.as_str()),
        ("DB_PATH", app.db_path.to_str().unwrap()),
    ];
    let output = crate::process::run(dir, &env, &["export", "--to", "cli.db"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Each key of an exported SQLite file by name, and whether it is written active.
fn active_by_name(file: &Path) -> BTreeMap<String, bool> {
    let conn = rusqlite::Connection::open(file).unwrap();
    conn.prepare("SELECT name, is_active FROM keys")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Keys the Go service would serve but keypooler does not (disabled, exhausted) are written
/// inactive by the seed export, through one rule, and counted in its summary line; an inactive
/// key's cap does not make the seed export refuse the database.
#[tokio::test]
async fn the_seed_export_writes_disabled_and_exhausted_keys_inactive_and_counts_them() {
    let mut app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    let now = app.wall.unix_now_ms();
    let hour = 3_600_000;
    let patch = |id: String, body: Value| {
        let app = &app;
        async move {
            let response = app.patch(&format!("/admin/keys/{id}"), &body).await;
            assert_eq!(response.status(), StatusCode::OK);
        }
    };
    app.add_key("served", "sk-served", "pro").await;
    let inactive = app.add_key("inactive", "sk-inactive", "pro").await;
    patch(inactive, json!({"is_active": false})).await;
    let exhausted = app.add_key("exhausted", "sk-exhausted", "pro").await;
    patch(
        exhausted,
        json!({"exhausted_until": "2100-01-01T00:00:00Z"}),
    )
    .await;
    let spent_for_an_hour = app.add_key("spent-for-an-hour", "sk-hour", "pro").await;
    let until = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now + hour) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    patch(spent_for_an_hour, json!({"exhausted_until": until})).await;
    let disabled = app.add_key("disabled", "sk-disabled", "pro").await;
    // A cap the seed schema cannot hold: no matter, the key is written inactive.
    patch(disabled.clone(), json!({"usage_limit": 5})).await;
    app.stop().await;
    crate::manage::edit_key(&app, &disabled, |record| {
        record.disabled_reason = Some("the provider answered 401".into());
    });

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("now.db");
    let summary = export_at(&app.db_path, &file, Schema::Seed, false, now).unwrap();
    assert_eq!(
        summary.written_inactive,
        BTreeMap::from([(Unservable::Exhausted, 2), (Unservable::Disabled, 1)])
    );
    let expected = |hour_spent: bool| {
        BTreeMap::from([
            ("served".to_owned(), true),
            ("inactive".to_owned(), false),
            ("exhausted".to_owned(), false),
            ("spent-for-an-hour".to_owned(), !hour_spent),
            ("disabled".to_owned(), false),
        ])
    };
    assert_eq!(active_by_name(&file), expected(true));
    // Two hours later the hour's exhaustion is over: that key is written active.
    let later = dir.path().join("later.db");
    let summary = export_at(&app.db_path, &later, Schema::Seed, false, now + 2 * hour).unwrap();
    assert_eq!(
        summary.written_inactive,
        BTreeMap::from([(Unservable::Exhausted, 1), (Unservable::Disabled, 1)])
    );
    assert_eq!(active_by_name(&later), expected(false));

    // The binary's summary line counts them (on the real clock, long before 2100).
    let stdout = exported_by_the_binary(&app, dir.path());
    assert!(
        stdout.contains(
            "keys written inactive (served by the Go service, not by keypooler: exhausted: "
        ) && stdout.contains(", disabled: 1)"),
        "{stdout}"
    );
}

/// A key over its spend budget (which the seed schema cannot hold) is written inactive by the
/// seed export and counted; once a monthly budget has reset, its key is written active.
#[tokio::test]
async fn the_seed_export_writes_keys_over_budget_inactive() {
    let mut app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    let now = app.wall.unix_now_ms();
    let add = |name: &'static str, reset_day: Option<u8>| {
        let app = &app;
        async move {
            let body = json!({"name": name, "key": format!("sk-{name}"), "tier": "pro",
                              "budget": {"amount": 1, "unit": "usd", "reset_day": reset_day}});
            let created = app.post("/admin/keys", &body).await;
            assert_eq!(created.status(), StatusCode::CREATED);
            created.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let spend = |id: String, amount: &'static str| {
        let app = &app;
        async move {
            let response = app
                .post(
                    &format!("/key/{id}/spend"),
                    &json!({"amount": amount.parse::<f64>().unwrap(), "unit": "usd",
                            "request_id": format!("{id}-{amount}")}),
                )
                .await;
            assert_eq!(response.status(), StatusCode::OK);
        }
    };
    let lifetime = add("lifetime", None).await;
    spend(lifetime, "1").await;
    let monthly = add("monthly", Some(1)).await;
    spend(monthly, "1.5").await;
    let under = add("under", Some(1)).await;
    spend(under, "0.5").await;
    app.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("now.db");
    let summary = export_at(&app.db_path, &file, Schema::Seed, false, now).unwrap();
    assert_eq!(
        summary.written_inactive,
        BTreeMap::from([(Unservable::OverBudget, 2)])
    );
    let expected = |monthly_spent: bool| {
        BTreeMap::from([
            ("lifetime".to_owned(), false),
            ("monthly".to_owned(), !monthly_spent),
            ("under".to_owned(), true),
        ])
    };
    assert_eq!(active_by_name(&file), expected(true));
    // 32 days on, a new month has begun: nothing is spent in it yet.
    let later = dir.path().join("later.db");
    let month = 32 * 24 * 3_600_000;
    let summary = export_at(&app.db_path, &later, Schema::Seed, false, now + month).unwrap();
    assert_eq!(
        summary.written_inactive,
        BTreeMap::from([(Unservable::OverBudget, 1)])
    );
    assert_eq!(active_by_name(&later), expected(false));

    // The binary's summary line says why (on the real clock: the lifetime budget at least).
    let stdout = exported_by_the_binary(&app, dir.path());
    assert!(
        stdout.contains(
            "keys written inactive (served by the Go service, not by keypooler: over budget: "
        ),
        "{stdout}"
    );
}
