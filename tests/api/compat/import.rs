//! Importing the fixtures: every row lands, and is served as the Go service served it.

use super::*;

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

/// The imported keys listed by state: inactive and expired as the Go service's file has them,
/// alone or with the other filters.
#[tokio::test]
async fn imported_keys_are_listed_by_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_fixture(LATEST, &db);
    let app = TestApp::on_database_at(dir, db, &hex_key(OURS), at(IN_WINDOW)).await;
    let names = async |query: &str| -> Vec<String> {
        let keys: Value = app
            .get(&format!("/admin/keys?{query}"))
            .await
            .json()
            .await
            .unwrap();
        let keys = keys.as_array().unwrap().iter();
        keys.map(|key| key["name"].as_str().unwrap().to_owned())
            .collect()
    };
    // By id: fc-02 (35bf…), fc-01 (78e5…), oa-1 (9b81…), oa-2-inactive (b222…), fc-expired (e4b0…).
    assert_eq!(names("state=active").await, ["fc-02", "fc-01", "oa-1"]);
    assert_eq!(names("state=inactive").await, ["oa-2-inactive"]);
    assert_eq!(names("state=expired").await, ["fc-expired"]);
    assert_eq!(
        names("state=active&tier=firecrawl").await,
        ["fc-02", "fc-01"]
    );
    assert_eq!(
        names("state=expired&tier=openai").await,
        Vec::<String>::new()
    );
    assert_eq!(
        names("state=inactive&name_prefix=oa-").await,
        ["oa-2-inactive"]
    );
    assert_eq!(names("state=active&limit=1&after=35bf").await, ["fc-02"]);
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

/// Limits as large as the Go service's users write ("1000000000" for unlimited) import and
/// serve.
#[tokio::test]
async fn a_limit_of_a_billion_imports_and_serves() {
    let (_source_dir, from) = altered(
        SEED,
        "UPDATE tier_features SET rate_per_minute = 1000000000 WHERE feature = 'chat'",
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.redb");
    import_into(&from, &fixture_key(SEED), &db, ImportMode::Refuse).unwrap();
    let app = TestApp::on_database_at(dir, db, &hex_key(OURS), at(IN_WINDOW)).await;
    let tiers = crate::helpers::expect(app.get("/admin/tiers").await, StatusCode::OK).await;
    let limits: Vec<&Value> = tiers
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|tier| tier["features"].get("chat"))
        .map(|chat| &chat["rate_limit"])
        .collect();
    assert!(!limits.is_empty());
    assert!(
        limits.iter().all(|limit| **limit == 1_000_000_000),
        "{limits:?}"
    );
    let response = app
        .request(reqwest::Method::GET, "/key?feature=chat&cost=1000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
