//! Tiers.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect, expect_error};

#[tokio::test]
async fn a_tier_is_created_in_either_form_and_listed_by_name() {
    let app = TestApp::spawn().await;
    let created = app
        .post(
            "/admin/tiers",
            &json!({
                "name": "pro",
                "description": "paid plan",
                "features": {
                    "image-generation": 100,
                    "chat": {"rate_limit": 5, "window_seconds": 10},
                    "embed": {"rate_limit": 7}
                }
            }),
        )
        .await;
    let body = expect(created, StatusCode::CREATED).await;
    assert!(uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok());
    assert_eq!(body["name"], "pro");
    assert_eq!(body["description"], "paid plan");
    assert_eq!(
        body["features"],
        json!({
            "image-generation": {"rate_limit": 100, "window_seconds": 60},
            "chat": {"rate_limit": 5, "window_seconds": 10},
            "embed": {"rate_limit": 7, "window_seconds": 60}
        })
    );
    app.create_tier("free", json!({"chat": 1})).await;
    app.create_tier("enterprise", json!({"chat": 1000})).await;
    let tiers = expect(app.get("/admin/tiers").await, StatusCode::OK).await;
    let names: Vec<&str> = tiers
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["enterprise", "free", "pro"]);
    assert_eq!(tiers[2], body);
}

#[tokio::test]
async fn invalid_tiers_are_400_and_change_nothing() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            json!({"name": "", "features": {"chat": 1}}),
            "name is required",
        ),
        (
            json!({"name": "  ", "features": {"chat": 1}}),
            "name is required",
        ),
        (
            json!({"name": "pro", "features": {}}),
            "features must list at least one feature",
        ),
        (json!({"name": "pro"}), "missing field `features`"),
        (json!({"features": {"chat": 1}}), "missing field `name`"),
        (
            json!({"name": "pro", "features": {"chat": 0}}),
            "features.chat: rate_limit must be an integer from 1 to 2147483647",
        ),
        (
            json!({"name": "pro", "features": {"chat": -3}}),
            "features.chat: rate_limit must be an integer from 1 to 2147483647",
        ),
        (
            json!({"name": "pro", "features": {"chat": 1.5}}),
            "features.chat must be an integer",
        ),
        (
            json!({"name": "pro", "features": {"chat": "10"}}),
            "features.chat must be an integer or an object {\"rate_limit\", \"window_seconds\"}",
        ),
        (
            json!({"name": "pro", "features": {"chat": {"window_seconds": 5}}}),
            "features.chat.rate_limit is required",
        ),
        (
            json!({"name": "pro", "features": {"chat": {"rate_limit": 5, "window_seconds": 0}}}),
            "features.chat: window_seconds must be an integer from 1 to 31622400",
        ),
        (
            json!({"name": "pro", "features": {"chat": {"rate_limit": 5, "window_seconds": "60"}}}),
            "features.chat.window_seconds must be an integer",
        ),
        (
            json!({"name": "pro", "features": {"chat": 1e30}}),
            "features.chat must be an integer",
        ),
        (
            json!({"name": "pro", "features": {"chat": u64::MAX}}),
            "features.chat: rate_limit must be an integer from 1 to 2147483647",
        ),
        (
            json!({"name": "pro", "features": {"": 1}}),
            "feature name is required",
        ),
    ];
    for (body, message) in cases {
        let response = app.post("/admin/tiers", &body).await;
        expect_error(response, StatusCode::BAD_REQUEST, message).await;
    }
    assert_eq!(
        expect(app.get("/admin/tiers").await, StatusCode::OK).await,
        json!([])
    );
}

/// A direction override, isolate, zero-width or other format character would make a listing show
/// other than what is stored: refused in every name, the error naming the field and never
/// repeating the value.
#[tokio::test]
async fn names_with_direction_overrides_or_invisible_characters_are_400_and_change_nothing() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1})).await;
    let hidden = |bad: &str| {
        format!(
            "{bad} contains control or format characters (such as direction overrides or zero-width characters)"
        )
    };
    for trick in [
        "\u{202E}gpj.exe",
        "a\u{2067}b\u{2069}",
        "ad\u{200B}min",
        "\u{FEFF}pro",
    ] {
        let cases = [
            (
                "/admin/tiers",
                json!({"name": format!("free{trick}"), "features": {"chat": 1}}),
                hidden("name"),
            ),
            (
                "/admin/tiers",
                json!({"name": "free", "features": {format!("chat{trick}"): 1}}),
                hidden("feature name"),
            ),
            (
                "/admin/keys",
                json!({"name": format!("k{trick}"), "key": "sk-1", "tier": "pro"}),
                hidden("name"),
            ),
            (
                "/admin/keys",
                json!({"name": "k", "key": "sk-1", "tier": "pro",
                       "secrets": {format!("org{trick}"): "x"}}),
                hidden("secrets name"),
            ),
            (
                "/admin/consumers",
                json!({"name": format!("svc{trick}")}),
                hidden("name"),
            ),
        ];
        for (path, body, message) in cases {
            let response = app.post(path, &body).await;
            let answer = expect(response, StatusCode::BAD_REQUEST).await;
            assert_eq!(answer, json!({ "error": message }), "{path} {body}");
            assert!(!answer.to_string().contains(trick), "echoed: {answer}");
        }
    }
    let tiers = expect(app.get("/admin/tiers").await, StatusCode::OK).await;
    assert_eq!(tiers.as_array().unwrap().len(), 1);
    let keys = expect(app.get("/admin/keys").await, StatusCode::OK).await;
    assert_eq!(keys, json!([]));
    let consumers = expect(app.get("/admin/consumers").await, StatusCode::OK).await;
    assert_eq!(consumers, json!([]));
}

#[tokio::test]
async fn a_duplicate_name_is_409() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1})).await;
    let response = app
        .post(
            "/admin/tiers",
            &json!({"name": "pro", "features": {"x": 2}}),
        )
        .await;
    expect_error(response, StatusCode::CONFLICT, "tier already exists: pro").await;
}

#[tokio::test]
async fn concurrent_creates_of_one_name_make_exactly_one_tier() {
    let app = TestApp::spawn().await;
    let url = format!("{}/admin/tiers", app.address);
    let attempts: Vec<_> = (0..16)
        .map(|_| {
            let request = app
                .client
                .post(&url)
                .bearer_auth(crate::helpers::ADMIN_TOKEN)
                .json(&json!({"name": "same", "features": {"chat": 1}}));
            tokio::spawn(async move { request.send().await.unwrap().status() })
        })
        .collect();
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        15
    );
}

#[tokio::test]
async fn patch_replaces_features_and_keeps_open_window_counts() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 3, "old": 1})).await;
    app.add_key("k", "sk-1", "pro").await;
    assert_eq!(app.key("chat").await.0, StatusCode::OK);
    assert_eq!(app.key("chat").await.0, StatusCode::OK);
    let response = app
        .request(Method::PATCH, "/admin/tiers")
        .json(&json!({"name": "pro", "description": "new", "features": {"chat": 2, "new": 4}}))
        .send()
        .await
        .unwrap();
    let body = expect(response, StatusCode::OK).await;
    assert_eq!(body["description"], "new");
    assert_eq!(
        body["features"],
        json!({"chat": {"rate_limit": 2, "window_seconds": 60}, "new": {"rate_limit": 4, "window_seconds": 60}})
    );
    // Two uses were counted under the old limit of 3; the new limit of 2 applies at once.
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.key("old").await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.key("new").await.0, StatusCode::OK);
    let missing = app
        .request(Method::PATCH, "/admin/tiers")
        .json(&json!({"name": "ghost", "features": {"chat": 2}}))
        .send()
        .await
        .unwrap();
    expect_error(missing, StatusCode::NOT_FOUND, "tier not found: ghost").await;
    let tiers: Value = expect(app.get("/admin/tiers").await, StatusCode::OK).await;
    assert_eq!(tiers[0], body);
}
