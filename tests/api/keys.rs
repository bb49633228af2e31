//! Keys and pool health through the admin API.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, expect, expect_error};

#[tokio::test]
async fn an_added_key_is_servable_at_once_and_its_value_never_shown_by_admin_routes() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"image-generation": 100}))
        .await;
    let response = app
        .post(
            "/admin/keys",
            &json!({"name": "openai-1", "key": "sk-abc123-secret", "tier": "pro"}),
        )
        .await;
    let body = expect(response, StatusCode::CREATED).await;
    let id = body["id"].as_str().unwrap().to_owned();
    // The seed's fields, and the Go service's later ones.
    assert_eq!(
        body,
        json!({"id": id, "name": "openai-1", "tier": "pro", "expires_at": null,
               "usage_limit": null, "usage_window_seconds": null, "metadata": {},
               "secret_names": []})
    );

    let (status, served) = app.key("image-generation").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served["key_id"], id.as_str());
    assert_eq!(served["value"], "sk-abc123-secret");

    for path in ["/admin/keys", "/admin/tiers", "/admin/health"] {
        let text = app.get(path).await.text().await.unwrap();
        assert!(
            !text.contains("sk-abc123-secret"),
            "{path} leaked the value"
        );
    }
}

#[tokio::test]
async fn key_errors_are_400_for_missing_fields_and_404_for_an_unknown_tier() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1})).await;
    let cases = [
        (json!({"key": "sk", "tier": "pro"}), "missing field `name`"),
        (json!({"name": "k", "tier": "pro"}), "missing field `key`"),
        (json!({"name": "k", "key": "sk"}), "missing field `tier`"),
        (
            json!({"name": "", "key": "sk", "tier": "pro"}),
            "name is required",
        ),
        (
            json!({"name": "k", "key": "", "tier": "pro"}),
            "key is required",
        ),
        (
            json!({"name": "k", "key": "sk", "tier": "pro", "expires_at": "tomorrow"}),
            "expires_at must be an RFC 3339 time, e.g. 2030-01-31T00:00:00Z",
        ),
    ];
    for (body, message) in cases {
        expect_error(
            app.post("/admin/keys", &body).await,
            StatusCode::BAD_REQUEST,
            message,
        )
        .await;
    }
    let response = app
        .post(
            "/admin/keys",
            &json!({"name": "k", "key": "sk", "tier": "gold"}),
        )
        .await;
    expect_error(response, StatusCode::NOT_FOUND, "tier not found: gold").await;
    assert_eq!(
        expect(app.get("/admin/keys").await, StatusCode::OK).await,
        json!([])
    );
}

#[tokio::test]
async fn an_added_key_answers_its_settings_and_secret_names_sorted_never_a_value_and_so_lists() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    let body = json!({"name": "k", "key": "sk-value-1", "tier": "pro",
        "expires_at": "2100-01-02T03:04:05Z", "usage_limit": 50, "usage_window_seconds": 3600,
        "metadata": {"region": "eu", "n": [1, 2]},
        "secrets": {"zeta": "secret-z", "alpha": "secret-a", "mid": "secret-m"}});
    let added = expect(app.post("/admin/keys", &body).await, StatusCode::CREATED).await;
    let id = added["id"].as_str().unwrap().to_owned();
    assert_eq!(
        added,
        json!({"id": id, "name": "k", "tier": "pro", "expires_at": "2100-01-02T03:04:05Z",
               "usage_limit": 50, "usage_window_seconds": 3600,
               "metadata": {"region": "eu", "n": [1, 2]},
               "secret_names": ["alpha", "mid", "zeta"]})
    );
    let listed = expect(app.get("/admin/keys").await, StatusCode::OK).await;
    assert_eq!(listed[0]["metadata"], added["metadata"]);
    assert_eq!(listed[0]["secret_names"], added["secret_names"]);
    for text in [added.to_string(), listed.to_string()] {
        for secret in ["sk-value-1", "secret-z", "secret-a", "secret-m"] {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
    }
    let plain = app.add_key("plain", "sk-2", "pro").await;
    let listed = expect(app.get("/admin/keys").await, StatusCode::OK).await;
    let plain = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["id"] == plain.as_str())
        .unwrap();
    assert_eq!(plain["metadata"], json!({}));
    assert_eq!(plain["secret_names"], json!([]));
}

#[tokio::test]
async fn listing_keys_shows_live_usage_of_the_current_window() {
    let app = TestApp::spawn().await;
    let tier = app
        .create_tier(
            "pro",
            json!({"chat": {"rate_limit": 5, "window_seconds": 10}, "embed": 3}),
        )
        .await;
    let id = app.add_key("k1", "sk-1", "pro").await;
    for _ in 0..2 {
        assert_eq!(app.key("chat").await.0, StatusCode::OK);
    }
    assert_eq!(app.key("embed").await.0, StatusCode::OK);
    let keys = expect(app.get("/admin/keys").await, StatusCode::OK).await;
    assert_eq!(keys.as_array().unwrap().len(), 1);
    let key = &keys[0];
    assert_eq!(key["id"], id.as_str());
    assert_eq!(key["name"], "k1");
    assert_eq!(key["tier_id"], tier["id"]);
    assert_eq!(key["is_active"], true);
    assert_eq!(
        key["usage"],
        json!({
            "chat": {"used": 2, "limit": 5, "window_seconds": 10},
            "embed": {"used": 1, "limit": 3, "window_seconds": 60}
        })
    );
    app.clock.advance_ms(10_000);
    let keys = expect(app.get("/admin/keys").await, StatusCode::OK).await;
    assert_eq!(keys[0]["usage"]["chat"]["used"], 0);
    assert_eq!(keys[0]["usage"]["embed"]["used"], 1);
}

#[tokio::test]
async fn a_deleted_key_is_never_served_again_and_an_unknown_id_is_404() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    let gone = app.add_key("gone", "sk-gone", "pro").await;
    let kept = app.add_key("kept", "sk-kept", "pro").await;
    let response = app.delete(&format!("/admin/keys/{gone}")).await;
    assert_eq!(
        expect(response, StatusCode::OK).await,
        json!({"status": "deleted"})
    );
    for _ in 0..10 {
        let (status, body) = app.key("chat").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["key_id"], kept.as_str());
    }
    let again = app.delete(&format!("/admin/keys/{gone}")).await;
    expect_error(
        again,
        StatusCode::NOT_FOUND,
        &format!("key not found: {gone}"),
    )
    .await;
}

#[tokio::test]
async fn pool_health_counts_keys_tiers_and_features() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1, "embed": 1})).await;
    app.create_tier("free", json!({"chat": 1})).await;
    app.add_key("a", "sk-a", "pro").await;
    app.add_key("b", "sk-b", "pro").await;
    let expired = app
        .post(
            "/admin/keys",
            &json!({"name": "old", "key": "sk-old", "tier": "free", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(expired.status(), StatusCode::CREATED);
    let health = expect(app.get("/admin/health").await, StatusCode::OK).await;
    assert_eq!(
        health,
        json!({
            "pool_size": 3,
            "active_keys": 2,
            "tiers": 2,
            "features": 2,
            "encryption": true,
            "keys_by_tier": {"free": 1, "pro": 2}
        })
    );
}
