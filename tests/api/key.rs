//! `GET /key`, rate windows, round-robin, exactness under concurrency.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, expect, expect_error, hammer};

#[tokio::test]
async fn the_feature_param_is_required_and_unknown_features_are_404() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1})).await;
    for path in ["/key", "/key?feature=", "/key?other=chat"] {
        expect_error(
            app.get(path).await,
            StatusCode::BAD_REQUEST,
            "feature query param required",
        )
        .await;
    }
    expect_error(
        app.get("/key?feature=video").await,
        StatusCode::NOT_FOUND,
        "unknown feature: video",
    )
    .await;
}

#[tokio::test]
async fn keys_rotate_round_robin_each_served_exactly_m_times() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1000})).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            app.add_key(&format!("k{i}"), &format!("sk-{i}"), "pro")
                .await,
        );
    }
    let mut served = Vec::new();
    for _ in 0..4 * 5 {
        let (status, body) = app.key("chat").await;
        assert_eq!(status, StatusCode::OK);
        served.push(body["key_id"].as_str().unwrap().to_owned());
    }
    for (i, id) in served.iter().enumerate() {
        assert_eq!(id, &ids[i % 4], "pick {i} is out of rotation");
    }
}

#[tokio::test]
async fn the_budget_is_per_key_and_the_429_says_when_to_retry() {
    let app = TestApp::spawn().await;
    app.create_tier(
        "pro",
        json!({"chat": {"rate_limit": 2, "window_seconds": 30}}),
    )
    .await;
    for i in 0..3 {
        app.add_key(&format!("k{i}"), &format!("sk-{i}"), "pro")
            .await;
    }
    let mut per_key: HashMap<String, u32> = HashMap::new();
    for _ in 0..6 {
        let (status, body) = app.key("chat").await;
        assert_eq!(status, StatusCode::OK);
        *per_key
            .entry(body["value"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(per_key.values().all(|n| *n == 2), "{per_key:?}");

    let spent = app.get("/key?feature=chat").await;
    assert_eq!(spent.headers()["retry-after"], "30");
    expect_error(
        spent,
        StatusCode::TOO_MANY_REQUESTS,
        "no key available for feature",
    )
    .await;

    app.clock.advance_ms(29_500);
    let spent = app.get("/key?feature=chat").await;
    assert_eq!(
        spent.headers()["retry-after"],
        "1",
        "at least one second, rounded up"
    );
    assert_eq!(spent.status(), StatusCode::TOO_MANY_REQUESTS);

    app.clock.advance_ms(500);
    assert_eq!(app.key("chat").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_feature_whose_tiers_have_no_key_is_429_not_404() {
    let app = TestApp::spawn().await;
    app.create_tier(
        "pro",
        json!({"chat": {"rate_limit": 2, "window_seconds": 45}}),
    )
    .await;
    let response = app.get("/key?feature=chat").await;
    // Nothing recovers by itself: a minute, whatever the window.
    assert_eq!(response.headers()["retry-after"], "60");
    expect_error(
        response,
        StatusCode::TOO_MANY_REQUESTS,
        "no key available for feature",
    )
    .await;
}

#[tokio::test]
async fn the_200_body_has_the_key_id_value_metadata_and_secrets() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    let value = "sk-\"quoted\" value with spaces \\ and ünïcode";
    let id = app.add_key("k", value, "pro").await;
    let response = app.get("/key?feature=chat").await;
    let body = expect(response, StatusCode::OK).await;
    assert_eq!(
        body,
        json!({"key_id": id, "value": value, "metadata": {}, "secrets": {}})
    );

    let response = app
        .post(
            "/admin/keys",
            &json!({
                "name": "with-extras", "key": "sk-x", "tier": "pro",
                "metadata": {"region": "eu", "n": 3},
                "secrets": {"org_id": "org-123"}
            }),
        )
        .await;
    let added = expect(response, StatusCode::CREATED).await;
    let (_, body) = app.key("chat").await;
    assert_eq!(
        body,
        json!({
            "key_id": added["id"], "value": "sk-x",
            "metadata": {"region": "eu", "n": 3},
            "secrets": {"org_id": "org-123"}
        })
    );
}

#[tokio::test]
async fn a_percent_encoded_feature_name_is_decoded() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"image gen/v2": 1})).await;
    app.add_key("k", "sk", "pro").await;
    assert_eq!(
        app.get("/key?feature=image%20gen%2Fv2").await.status(),
        StatusCode::OK
    );
}

/// Adds key "k" (value "sk") to tier "pro", expiring `seconds` after the server's wall clock.
async fn add_key_expiring_in(app: &TestApp, seconds: i64) {
    let at = time::OffsetDateTime::from_unix_timestamp(app.wall.unix_now_ms() / 1000 + seconds)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let response = app
        .post(
            "/admin/keys",
            &json!({"name": "k", "key": "sk", "tier": "pro", "expires_at": at}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn an_expired_key_is_never_served() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    add_key_expiring_in(&app, 5 * 60).await;
    assert_eq!(app.key("chat").await.0, StatusCode::OK);
    app.clock.advance_ms(5 * 60 * 1000 + 1_000);
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);
}

/// The values of the next four keys served for "chat".
async fn values(app: &TestApp) -> Vec<String> {
    let mut values = Vec::new();
    for _ in 0..4 {
        let (status, body) = app.key("chat").await;
        assert_eq!(status, StatusCode::OK);
        values.push(body["value"].as_str().unwrap().to_owned());
    }
    values
}

/// Expiry is judged on the wall clock at each request: a step forward (NTP, an operator)
/// expires the key at once, and a step back does not bring it back.
#[tokio::test]
async fn a_wall_clock_step_forward_expires_a_key_and_a_step_back_does_not_revive_it() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    add_key_expiring_in(&app, 3_600).await;
    app.add_key("other", "sk-other", "pro").await;
    assert_eq!(values(&app).await, ["sk", "sk-other", "sk", "sk-other"]);
    app.clock.step_wall_ms(2 * 3_600_000);
    assert_eq!(values(&app).await, ["sk-other"; 4]);
    app.clock.step_wall_ms(-3 * 3_600_000);
    assert_eq!(values(&app).await, ["sk-other"; 4]);
    let health = expect(app.get("/admin/health").await, StatusCode::OK).await;
    assert_eq!(health["active_keys"], 1, "only \"other\"");
}

/// Many concurrent HTTP clients against a budget of N: exactly N are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_never_exceed_the_budget() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 25})).await;
    for i in 0..4 {
        app.add_key(&format!("k{i}"), &format!("sk-{i}"), "pro")
            .await;
    }
    let total = hammer(&app, "chat", 16, 20).await;
    assert_eq!(total.len(), 4);
    assert!(total.values().all(|n| *n == 25), "{total:?}");
}

/// axum answers `HEAD` through a `GET` handler and drops the body: on `/key` that would spend a
/// use and record an audit event for a key nobody receives.
#[tokio::test]
async fn head_key_is_405_and_spends_nothing() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1})).await;
    let id = app.add_key("only", "sk-only", "pro").await;
    for _ in 0..3 {
        let head = app
            .request(reqwest::Method::HEAD, "/key?feature=chat")
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(head.headers()["allow"], "GET");
    }
    assert_eq!(
        expect(app.get("/admin/usage").await, StatusCode::OK).await,
        json!([]),
        "HEAD wrote audit events"
    );
    // The key's one use per window is still there.
    let (status, body) = app.key("chat").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["key_id"], id.as_str());
    // Other reads keep HEAD: they spend nothing.
    let health = app
        .request(reqwest::Method::HEAD, "/health")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}
