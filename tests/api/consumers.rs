//! Consumers, their tokens and scopes.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect, expect_error};

async fn create_consumer(app: &TestApp, name: &str) -> (String, String) {
    let response = app
        .post(
            "/admin/consumers",
            &json!({"name": name, "description": "svc"}),
        )
        .await;
    let body = expect(response, StatusCode::CREATED).await;
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 64);
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(body["name"], name);
    assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
    (body["id"].as_str().unwrap().to_owned(), token)
}

async fn scope(app: &TestApp, consumer: &str, tier: &str) -> reqwest::Response {
    app.post(
        &format!("/admin/consumers/{consumer}/scopes"),
        &json!({"tier": tier}),
    )
    .await
}

#[tokio::test]
async fn a_consumer_draws_only_from_its_scoped_tiers() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100, "embed": 100}))
        .await;
    app.create_tier(
        "free",
        json!({"chat": {"rate_limit": 2, "window_seconds": 60}}),
    )
    .await;
    let pro_key = app.add_key("pro-key", "sk-pro", "pro").await;
    let free_key = app.add_key("free-key", "sk-free", "free").await;
    let (id, token) = create_consumer(&app, "billing").await;

    // No scope yet: every feature is forbidden, listed elsewhere or not at all.
    for feature in ["chat", "nonexistent"] {
        let (status, body) = app.key_as(&token, feature).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }

    let scoped = expect(scope(&app, &id, "free").await, StatusCode::OK).await;
    assert_eq!(
        scoped,
        json!({"id": id, "name": "billing", "description": "svc", "is_active": true, "scopes": ["free"]})
    );
    for _ in 0..2 {
        let (status, body) = app.key_as(&token, "chat").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["key_id"], free_key.as_str());
    }
    // Its tier is spent: 429, though the pro tier still has budget for the admin.
    let (status, _) = app.key_as(&token, "chat").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, body) = app.key("chat").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["key_id"], pro_key.as_str());
    // A feature only the pro tier lists is forbidden to it.
    let (status, body) = app.key_as(&token, "embed").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"error": "feature not in this consumer's tiers: embed"})
    );

    // Scoping both tiers gives both keys; budgets are shared with the admin's view.
    expect(scope(&app, &id, "pro").await, StatusCode::OK).await;
    let (status, body) = app.key_as(&token, "chat").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["key_id"], pro_key.as_str());
}

#[tokio::test]
async fn a_consumer_token_opens_no_admin_route() {
    let app = TestApp::spawn().await;
    let (id, token) = create_consumer(&app, "svc").await;
    for (method, path) in [
        (Method::GET, "/admin/tiers".to_owned()),
        (Method::GET, "/admin/keys".to_owned()),
        (Method::GET, "/admin/health".to_owned()),
        (Method::GET, "/admin/consumers".to_owned()),
        (Method::DELETE, format!("/admin/consumers/{id}")),
        (Method::POST, "/admin/consumers".to_owned()),
    ] {
        let response = app
            .client
            .request(method, format!("{}{path}", app.address))
            .bearer_auth(&token)
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        expect_error(response, StatusCode::UNAUTHORIZED, "invalid token").await;
    }
}

#[tokio::test]
async fn listing_never_shows_a_token_and_deleting_revokes_it() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    app.add_key("k", "sk", "pro").await;
    let (id, token) = create_consumer(&app, "svc").await;
    expect(scope(&app, &id, "pro").await, StatusCode::OK).await;
    let listed = app.get("/admin/consumers").await.text().await.unwrap();
    assert!(!listed.contains(&token));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed,
        json!([{"id": id, "name": "svc", "description": "svc", "is_active": true, "scopes": ["pro"]}])
    );
    assert_eq!(app.key_as(&token, "chat").await.0, StatusCode::OK);

    let response = app.delete(&format!("/admin/consumers/{id}")).await;
    assert_eq!(
        expect(response, StatusCode::OK).await,
        json!({"status": "deleted"})
    );
    let (status, body) = app.key_as(&token, "chat").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({"error": "invalid token"}));
    let again = app.delete(&format!("/admin/consumers/{id}")).await;
    expect_error(
        again,
        StatusCode::NOT_FOUND,
        &format!("consumer not found: {id}"),
    )
    .await;
}

#[tokio::test]
async fn scope_errors_name_what_is_missing() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    let (id, _) = create_consumer(&app, "svc").await;
    expect_error(
        scope(&app, &id, "gold").await,
        StatusCode::NOT_FOUND,
        "tier not found: gold",
    )
    .await;
    expect_error(
        scope(&app, "nope", "pro").await,
        StatusCode::NOT_FOUND,
        "consumer not found: nope",
    )
    .await;
    expect_error(
        scope(&app, &id, "").await,
        StatusCode::BAD_REQUEST,
        "tier is required",
    )
    .await;
    let response = app.post("/admin/consumers", &json!({"name": " "})).await;
    expect_error(response, StatusCode::BAD_REQUEST, "name is required").await;
}

#[tokio::test]
async fn consumers_and_scopes_survive_a_restart() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    let key = app.add_key("k", "sk-restart", "pro").await;
    let (id, token) = create_consumer(&app, "svc").await;
    expect(scope(&app, &id, "pro").await, StatusCode::OK).await;
    let app = app.restart().await;
    let (status, body) = app.key_as(&token, "chat").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["key_id"], key.as_str());
    assert_eq!(body["value"], "sk-restart");
}
