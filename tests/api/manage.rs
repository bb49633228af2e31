//! Managing keys, tiers and consumers in place: `PATCH /admin/keys/{id}`, `DELETE
//! /admin/tiers/{name}`, `DELETE /admin/consumers/{id}/scopes/{tier}`, `POST
//! /admin/consumers/{id}/token`.

use keypooler::store::{KeyRecord, Store};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect, expect_error, sealer};
use crate::usage::serve_up_to;

impl TestApp {
    /// Serves `feature` until it is refused: how many were served.
    async fn drain(&self, feature: &str) -> usize {
        let mut served = 0;
        loop {
            match self.key(feature).await {
                (StatusCode::OK, _) => served += 1,
                (StatusCode::TOO_MANY_REQUESTS, _) => return served,
                (status, body) => panic!("{status} {body}"),
            }
            assert!(served < 1_000, "never refused");
        }
    }
}

/// RFC 3339 of unix ms, as the server writes it.
fn rfc3339(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The stopped app's file, opened as the server opens it.
fn stopped_store(app: &TestApp) -> Store {
    Store::open(&app.db_path, &sealer(&app.key_hex)).unwrap()
}

/// The stored record of key `id` in the stopped app's file.
fn stored_key(app: &TestApp, id: &str) -> KeyRecord {
    let store = stopped_store(app);
    let txn = store.begin().unwrap();
    txn.get_key(id).unwrap().unwrap()
}

/// Changes the stored record of key `id` in the stopped app's file, signed as the server signs.
pub(crate) fn edit_key(app: &TestApp, id: &str, change: impl FnOnce(&mut KeyRecord)) {
    let store = stopped_store(app);
    let txn = store.begin().unwrap();
    let mut record = txn.get_key(id).unwrap().unwrap();
    change(&mut record);
    txn.put_key(&record).unwrap();
    txn.commit().unwrap();
}

#[tokio::test]
async fn a_patched_key_keeps_its_id_place_and_counters_and_serves_what_it_was_given() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 3})).await;
    let first = app.add_key("first", "sk-first", "pro").await;
    let id = expect(
        app.post(
            "/admin/keys",
            &json!({"name": "old", "key": "sk-old", "tier": "pro", "usage_limit": 1000,
                    "metadata": {"region": "eu"}, "secrets": {"org": "org-old"}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Two uses of the patched key in its open window (and two of the other key).
    for _ in 0..4 {
        assert_eq!(app.key("chat").await.0, StatusCode::OK);
    }
    assert_eq!(app.listed(&id).await["usage"]["chat"]["used"], 2);

    let response = app
        .patch(
            &format!("/admin/keys/{id}"),
            &json!({"name": "rotated", "key": "sk-new", "metadata": {"region": "us"},
                    "secrets": {"project": "p-1", "org": "org-new"}}),
        )
        .await;
    let body = expect(response, StatusCode::OK).await;
    let mut listed = app.listed(&id).await;
    listed["key_id"] = json!(id);
    assert_eq!(body, listed, "the answer is the listing entry plus key_id");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["name"], "rotated");
    assert_eq!(body["metadata"], json!({"region": "us"}));
    assert_eq!(body["secret_names"], json!(["org", "project"]));
    assert_eq!(body["usage"]["chat"]["used"], 2, "the rate window goes on");
    assert_eq!(body["usage_count"], 2, "the usage count goes on");
    let text = body.to_string();
    for secret in ["sk-new", "sk-old", "p-1", "org-new"] {
        assert!(!text.contains(secret), "the answer shows {secret}");
    }

    // Its place in the rotation is kept (after `first`), and only its last use of the window is
    // left: the counters were not reset.
    let (_, served) = app.key("chat").await;
    assert_eq!(served["key_id"], first.as_str());
    let (_, served) = app.key("chat").await;
    assert_eq!(
        served,
        json!({"key_id": id, "value": "sk-new", "metadata": {"region": "us"},
               "secrets": {"org": "org-new", "project": "p-1"}})
    );
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);

    // Kept across a restart.
    let app = app.restart().await;
    let listed = app.listed(&id).await;
    assert_eq!(listed["name"], "rotated");
    assert_eq!(listed["metadata"], json!({"region": "us"}));
    assert_eq!(listed["secret_names"], json!(["org", "project"]));
    app.clock.advance_ms(60_000);
    app.key("chat").await;
    let (_, served) = app.key("chat").await;
    assert_eq!(served["value"], "sk-new");
    assert_eq!(served["secrets"]["project"], "p-1");
}

#[tokio::test]
async fn a_key_made_inactive_then_active_again_goes_on_counting_its_window() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 5})).await;
    let id = app.add_key("k", "sk-1", "pro").await;
    for _ in 0..3 {
        assert_eq!(app.key("chat").await.0, StatusCode::OK);
    }
    let path = format!("/admin/keys/{id}");
    let off = expect(
        app.patch(&path, &json!({"is_active": false})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(off["is_active"], false);
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);
    let on = expect(
        app.patch(&path, &json!({"is_active": true})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(on["is_active"], true);
    assert_eq!(on["usage"]["chat"]["used"], 3);
    assert_eq!(
        app.drain("chat").await,
        2,
        "only the window's last two uses"
    );
    app.clock.advance_ms(60_000);
    assert_eq!(app.drain("chat").await, 5);

    // The inactive flag is stored.
    expect(
        app.patch(&path, &json!({"is_active": false})).await,
        StatusCode::OK,
    )
    .await;
    let app = app.restart().await;
    assert_eq!(app.listed(&id).await["is_active"], false);
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn expiry_set_cleared_and_stored() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    let id = app.add_key("k", "sk-1", "pro").await;
    let path = format!("/admin/keys/{id}");
    let past = rfc3339(app.wall.unix_now_ms() - 1_000);
    let expired = expect(
        app.patch(&path, &json!({"expires_at": past})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(expired["expires_at"], past.as_str());
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);
    let cleared = expect(
        app.patch(&path, &json!({"expires_at": null})).await,
        StatusCode::OK,
    )
    .await;
    assert!(cleared.get("expires_at").is_none(), "{cleared}");
    assert_eq!(app.key("chat").await.0, StatusCode::OK);
    let app = app.restart().await;
    assert_eq!(app.key("chat").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_usage_cap_can_be_set_raised_and_removed_and_never_forgets_what_was_counted() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1000})).await;
    let id = app.add_key("k", "sk-1", "pro").await;
    let path = format!("/admin/keys/{id}");
    for _ in 0..4 {
        assert_eq!(app.key("chat").await.0, StatusCode::OK);
    }
    // A new cap counts from zero.
    let capped = expect(
        app.patch(&path, &json!({"usage_limit": 3})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(capped["usage_limit"], 3);
    assert_eq!(capped["usage_count"], 0);
    assert_eq!(serve_up_to(&app, 100, 500).await, 3);
    // Raised: the three uses still count.
    expect(
        app.patch(&path, &json!({"usage_limit": 5})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(serve_up_to(&app, 100, 500).await, 2);
    // Given a window: one starts now.
    let windowed = expect(
        app.patch(&path, &json!({"usage_window_seconds": 3600}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(windowed["usage_window_seconds"], 3600);
    assert_eq!(serve_up_to(&app, 100, 500).await, 5);
    let app = app.restart().await;
    assert_eq!(
        serve_up_to(&app, 100, 50).await,
        0,
        "still spent after a restart"
    );
    // The window keeps its start: one second long, it ended a second ago, and a new one starts.
    app.clock.advance_ms(2_000);
    expect(
        app.patch(&path, &json!({"usage_window_seconds": 1})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(serve_up_to(&app, 100, 500).await, 5);
    // Removed.
    let uncapped = expect(
        app.patch(&path, &json!({"usage_limit": null})).await,
        StatusCode::OK,
    )
    .await;
    assert!(uncapped.get("usage_limit").is_none(), "{uncapped}");
    assert!(uncapped.get("usage_window_seconds").is_none(), "{uncapped}");
    assert_eq!(serve_up_to(&app, 200, 200).await, 200);
}

#[tokio::test]
async fn patch_refuses_an_unknown_key_a_bad_field_and_an_unknown_field_and_changes_nothing() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    let id = app.add_key("k", "sk-1", "pro").await;
    let before = app.listed(&id).await;
    let path = format!("/admin/keys/{id}");
    let takes = "name, key, is_active, expires_at, exhausted_until, metadata, secrets, usage_limit, usage_window_seconds, budget";
    let cases = [
        (json!({"name": ""}), "name is required".to_owned()),
        (json!({"name": 7}), "name must be a string".to_owned()),
        (json!({"key": ""}), "key must not be empty".to_owned()),
        (json!({"key": null}), "key must be a string".to_owned()),
        (
            json!({"is_active": "yes"}),
            "is_active must be true or false".to_owned(),
        ),
        (
            json!({"expires_at": "soon"}),
            "expires_at must be an RFC 3339 time, e.g. 2030-01-31T00:00:00Z".to_owned(),
        ),
        (
            json!({"exhausted_until": 5}),
            "exhausted_until must be a string".to_owned(),
        ),
        (
            json!({"metadata": [1]}),
            "metadata must be an object".to_owned(),
        ),
        (
            json!({"secrets": {"org": 1}}),
            "secrets.org must be a string".to_owned(),
        ),
        (
            json!({"usage_limit": 0}),
            "usage_limit must be an integer from 1 to 4294967294".to_owned(),
        ),
        (
            json!({"usage_window_seconds": 60}),
            "usage_window_seconds needs usage_limit (the key has none)".to_owned(),
        ),
        (
            json!({"usage_limit": null, "usage_window_seconds": 60}),
            "usage_window_seconds needs usage_limit".to_owned(),
        ),
        (
            json!({"is_actve": false}),
            format!("unknown field `is_actve`; a key's PATCH takes {takes}"),
        ),
        (
            json!({"tier": "free"}),
            format!("unknown field `tier`; a key's PATCH takes {takes}"),
        ),
        (
            json!({"sk-live-0123456789abcdef.value": 1}),
            format!("an unknown field; a key's PATCH takes {takes}"),
        ),
        (json!([]), "wrong type, expected a map".to_owned()),
    ];
    for (body, message) in cases {
        expect_error(
            app.patch(&path, &body).await,
            StatusCode::BAD_REQUEST,
            &message,
        )
        .await;
    }
    assert_eq!(app.listed(&id).await, before);
    expect_error(
        app.patch("/admin/keys/nope", &json!({"name": "x"})).await,
        StatusCode::NOT_FOUND,
        "key not found: nope",
    )
    .await;
}

#[tokio::test]
async fn exhaustion_is_stored_and_cleared_and_re_enabling_clears_a_disabled_reason() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    let id = app.add_key("k", "sk-1", "pro").await;
    let path = format!("/admin/keys/{id}");
    let until_ms = app.wall.unix_now_ms() + 3_600_000;
    let until = rfc3339(until_ms);
    expect(
        app.patch(&path, &json!({"exhausted_until": until})).await,
        StatusCode::OK,
    )
    .await;
    let mut app = app.restart().await;
    app.stop().await;
    assert_eq!(stored_key(&app, &id).exhausted_until_ms, Some(until_ms));
    edit_key(&app, &id, |record| {
        record.disabled_reason = Some("provider answered 401".into());
    });

    let app = app.restart().await;
    expect(
        app.patch(&path, &json!({"exhausted_until": null, "is_active": true}))
            .await,
        StatusCode::OK,
    )
    .await;
    let mut app = app.restart().await;
    app.stop().await;
    let record = stored_key(&app, &id);
    assert_eq!(record.exhausted_until_ms, None);
    assert_eq!(record.disabled_reason, None);
    assert!(record.active);
}

/// What reports held against a key (a 401, cooldowns of the key and of a feature, a run of
/// failures) is cleared by `is_active: true`, in serving at once and on disk; the key's window
/// goes on counting through it all. An exhaustion set or cleared by `PATCH` is in effect for the
/// next `GET /key`.
#[tokio::test]
async fn re_enabling_clears_the_key_health_and_exhaustion_takes_effect_at_once() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 5})).await;
    let id = app.add_key("k", "sk-1", "pro").await;
    for _ in 0..2 {
        assert_eq!(app.key("chat").await.0, StatusCode::OK);
    }
    let report = async |body: Value| {
        let path = format!("/key/{id}/report");
        expect(app.post(&path, &body).await, StatusCode::OK).await;
    };
    report(json!({"status": 429, "feature": "chat", "retry_after": 60})).await;
    for _ in 0..3 {
        report(json!({"status": 503})).await;
    }
    report(json!({"status": 401})).await;
    let held = app.listed(&id).await;
    assert_eq!(held["state"], "disabled");
    assert_eq!(held["consecutive_failures"], 3);
    assert!(held["cooldown_until"].is_string());
    assert!(held["cooldowns"]["chat"].is_string());
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);

    let path = format!("/admin/keys/{id}");
    let on = expect(
        app.patch(&path, &json!({"is_active": true})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(on["state"], "active");
    assert_eq!(on["disabled_reason"], Value::Null);
    assert_eq!(on["cooldown_until"], Value::Null);
    assert_eq!(on["cooldowns"], json!({}));
    assert_eq!(on["consecutive_failures"], 0);
    assert_eq!(on["usage"]["chat"]["used"], 2, "the window goes on");
    // Served at once, no clock moved: the cooldowns are gone from serving too.
    assert_eq!(app.drain("chat").await, 3, "the window's last three uses");

    app.clock.advance_ms(60_000);
    let until_ms = app.wall.unix_now_ms() + 3_600_000;
    let exhausted = expect(
        app.patch(&path, &json!({"exhausted_until": rfc3339(until_ms)}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(exhausted["state"], "exhausted");
    assert_eq!(exhausted["exhausted_until"], rfc3339(until_ms));
    let (status, _) = app.key("chat").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let refused = app.get("/key?feature=chat").await;
    assert_eq!(refused.headers()["retry-after"], "3600");
    expect(
        app.patch(&path, &json!({"exhausted_until": null})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(app.key("chat").await.0, StatusCode::OK);

    let mut app = app.restart().await;
    app.stop().await;
    let record = stored_key(&app, &id);
    assert!(record.active);
    assert_eq!(
        (
            record.disabled_reason,
            record.cooldown_until_ms,
            record.backoff_level,
            record.cooldowns.len(),
            record.consecutive_failures,
            record.exhausted_until_ms,
        ),
        (None, None, 0, 0, 0, None)
    );
}

#[tokio::test]
async fn a_tier_with_keys_is_not_deleted_and_one_without_is_with_its_consumer_scopes() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    app.create_tier("free", json!({"chat": 1, "search": 1}))
        .await;
    let key = app.add_key("k", "sk-1", "pro").await;
    let (consumer, token) = app.consumer_of("svc", "free").await;
    let scoped = app
        .post(
            &format!("/admin/consumers/{consumer}/scopes"),
            &json!({"tier": "pro"}),
        )
        .await;
    assert_eq!(scoped.status(), StatusCode::OK);

    expect_error(
        app.delete("/admin/tiers/pro").await,
        StatusCode::CONFLICT,
        "tier still has keys",
    )
    .await;
    // An inactive key counts too.
    expect(
        app.patch(&format!("/admin/keys/{key}"), &json!({"is_active": false}))
            .await,
        StatusCode::OK,
    )
    .await;
    expect_error(
        app.delete("/admin/tiers/pro").await,
        StatusCode::CONFLICT,
        "tier still has keys",
    )
    .await;
    expect_error(
        app.delete("/admin/tiers/gold").await,
        StatusCode::NOT_FOUND,
        "tier not found: gold",
    )
    .await;

    let deleted = expect(app.delete("/admin/tiers/free").await, StatusCode::OK).await;
    assert_eq!(deleted, json!({"status": "deleted"}));
    let tiers = expect(app.get("/admin/tiers").await, StatusCode::OK).await;
    assert_eq!(tiers.as_array().unwrap().len(), 1);
    assert_eq!(tiers[0]["name"], "pro");
    let consumers = expect(app.get("/admin/consumers").await, StatusCode::OK).await;
    assert_eq!(consumers[0]["scopes"], json!(["pro"]));
    let (status, _) = app.key("search").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no tier lists search now");
    expect_error(
        app.delete("/admin/tiers/free").await,
        StatusCode::NOT_FOUND,
        "tier not found: free",
    )
    .await;

    let app = app.restart().await;
    let tiers = expect(app.get("/admin/tiers").await, StatusCode::OK).await;
    assert_eq!(tiers.as_array().unwrap().len(), 1);
    let consumers = expect(app.get("/admin/consumers").await, StatusCode::OK).await;
    assert_eq!(consumers[0]["scopes"], json!(["pro"]));
    // The consumer still draws from its other tier once the key is active again.
    expect(
        app.patch(&format!("/admin/keys/{key}"), &json!({"is_active": true}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(app.key_as(&token, "chat").await.0, StatusCode::OK);
    // A tier emptied of its keys is deleted.
    assert_eq!(
        app.delete(&format!("/admin/keys/{key}")).await.status(),
        StatusCode::OK
    );
    expect(app.delete("/admin/tiers/pro").await, StatusCode::OK).await;
    let app = app.restart().await;
    assert_eq!(
        expect(app.get("/admin/tiers").await, StatusCode::OK).await,
        json!([])
    );
}

#[tokio::test]
async fn a_removed_scope_stops_the_consumer_drawing_from_that_tier() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    app.create_tier("free", json!({"search": 100})).await;
    app.add_key("p", "sk-p", "pro").await;
    app.add_key("f", "sk-f", "free").await;
    let (consumer, token) = app.consumer_of("svc", "pro").await;
    let scoped = app
        .post(
            &format!("/admin/consumers/{consumer}/scopes"),
            &json!({"tier": "free"}),
        )
        .await;
    assert_eq!(scoped.status(), StatusCode::OK);
    assert_eq!(app.key_as(&token, "chat").await.0, StatusCode::OK);

    let path = format!("/admin/consumers/{consumer}/scopes/pro");
    let body = expect(app.delete(&path).await, StatusCode::OK).await;
    assert_eq!(body["scopes"], json!(["free"]));
    assert_eq!(app.key_as(&token, "chat").await.0, StatusCode::FORBIDDEN);
    assert_eq!(app.key_as(&token, "search").await.0, StatusCode::OK);
    // Again: harmless.
    let again = expect(app.delete(&path).await, StatusCode::OK).await;
    assert_eq!(again["scopes"], json!(["free"]));
    expect_error(
        app.delete(&format!("/admin/consumers/{consumer}/scopes/gold"))
            .await,
        StatusCode::NOT_FOUND,
        "tier not found: gold",
    )
    .await;
    expect_error(
        app.delete("/admin/consumers/nope/scopes/pro").await,
        StatusCode::NOT_FOUND,
        "consumer not found: nope",
    )
    .await;

    let app = app.restart().await;
    assert_eq!(app.key_as(&token, "chat").await.0, StatusCode::FORBIDDEN);
    assert_eq!(app.key_as(&token, "search").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_rotated_token_works_at_once_and_the_old_one_stops_at_once() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    app.add_key("p", "sk-p", "pro").await;
    let (consumer, old) = app.consumer_of("svc", "pro").await;
    assert_eq!(app.key_as(&old, "chat").await.0, StatusCode::OK);

    let path = format!("/admin/consumers/{consumer}/token");
    let response = app.request(Method::POST, &path).send().await.unwrap();
    let rotated = expect(response, StatusCode::OK).await;
    let new = rotated["token"].as_str().unwrap().to_owned();
    assert_eq!(rotated, json!({"id": consumer, "token": new}));
    assert_eq!(new.len(), 64);
    assert_ne!(new, old);
    assert_eq!(app.key_as(&old, "chat").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.key_as(&new, "chat").await.0, StatusCode::OK);
    let listed = app.get("/admin/consumers").await.text().await.unwrap();
    assert!(!listed.contains(&new), "the listing shows the token");

    // With an Idempotency-Key, a retry answers without the token and rotates nothing more.
    let retried = || {
        app.request(Method::POST, &path)
            .header("idempotency-key", "rotate-1")
            .send()
    };
    let first = expect(retried().await.unwrap(), StatusCode::OK).await;
    let newer = first["token"].as_str().unwrap().to_owned();
    let replay = retried().await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(
        expect(replay, StatusCode::OK).await,
        json!({"id": consumer, "replayed": true})
    );
    assert_eq!(app.key_as(&new, "chat").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.key_as(&newer, "chat").await.0, StatusCode::OK);

    expect_error(
        app.request(Method::POST, "/admin/consumers/nope/token")
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "consumer not found: nope",
    )
    .await;

    let app = app.restart().await;
    assert_eq!(app.key_as(&old, "chat").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.key_as(&new, "chat").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.key_as(&newer, "chat").await.0, StatusCode::OK);
}
