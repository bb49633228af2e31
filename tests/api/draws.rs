//! Large limits and `GET /key?cost=<n>`: draws of n units of a key's window.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect, expect_error};

/// `GET /key?feature=chat&cost=<cost>` with the admin token.
async fn draw(app: &TestApp, cost: impl std::fmt::Display) -> Response {
    app.get(&format!("/key?feature=chat&cost={cost}")).await
}

async fn served_value(app: &TestApp, cost: u64) -> Value {
    expect(draw(app, cost).await, StatusCode::OK).await["value"].clone()
}

#[tokio::test]
async fn a_limit_of_a_billion_serves_and_one_past_the_largest_is_refused() {
    let app = TestApp::spawn().await;
    let tier = app
        .create_tier(
            "unlimited",
            json!({"chat": 1_000_000_000, "max": 2_147_483_647}),
        )
        .await;
    assert_eq!(tier["features"]["chat"]["rate_limit"], 1_000_000_000);
    app.add_key("k", "sk-big", "unlimited").await;
    assert_eq!(served_value(&app, 999_999_999).await, "sk-big");
    assert_eq!(served_value(&app, 1).await, "sk-big");
    let spent = draw(&app, 1).await;
    assert_eq!(spent.status(), StatusCode::TOO_MANY_REQUESTS);
    // Past 8,388,607 uses a window's start is kept in units of 256 ms, rounded up: it ends up
    // to 255 ms later (here 24 ms), never earlier.
    assert_eq!(spent.headers()["retry-after"], "61");
    // The whole largest limit in one draw, then nothing.
    let max = app.get("/key?feature=max&cost=2147483647").await;
    assert_eq!(max.status(), StatusCode::OK);
    let keys = expect(app.get("/admin/keys").await, StatusCode::OK).await;
    assert_eq!(keys[0]["usage"]["chat"]["used"], 1_000_000_000);
    assert_eq!(keys[0]["usage"]["max"]["used"], 2_147_483_647_u64);

    for body in [
        json!({"name": "over", "features": {"chat": 2_147_483_648_u64}}),
        json!({"name": "over", "features": {"chat": {"rate_limit": 2_147_483_648_u64}}}),
    ] {
        expect_error(
            app.post("/admin/tiers", &body).await,
            StatusCode::BAD_REQUEST,
            "features.chat: rate_limit must be an integer from 1 to 2147483647",
        )
        .await;
    }
}

/// A draw of n is served with exactly n units left and refused with n - 1 left.
#[tokio::test]
async fn a_draw_of_n_needs_n_units_left_in_the_window() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    app.add_key("k", "sk-k", "pro").await;
    served_value(&app, 4).await;
    served_value(&app, 6).await;
    let spent = draw(&app, 1).await;
    assert_eq!(spent.status(), StatusCode::TOO_MANY_REQUESTS);

    app.clock.advance_ms(60_000);
    served_value(&app, 5).await;
    let refused = draw(&app, 6).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "60");
    expect_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "no key available for feature",
    )
    .await;
    // The refused draw took nothing: the 5 left are all there.
    served_value(&app, 5).await;
    let keys = expect(app.get("/admin/keys").await, StatusCode::OK).await;
    assert_eq!(keys[0]["usage"]["chat"]["used"], 10);
}

/// A key whose limit is below the draw is skipped; a draw above every tier's limit is 400.
#[tokio::test]
async fn keys_with_a_smaller_limit_are_skipped_and_a_draw_above_every_limit_is_400() {
    let app = TestApp::spawn().await;
    app.create_tier("small", json!({"chat": 2})).await;
    app.create_tier("big", json!({"chat": 10})).await;
    app.add_key("s", "sk-small", "small").await;
    app.add_key("b", "sk-big", "big").await;
    assert_eq!(served_value(&app, 5).await, "sk-big");
    assert_eq!(served_value(&app, 5).await, "sk-big");
    // The small key still serves draws that fit it.
    assert_eq!(served_value(&app, 2).await, "sk-small");
    for cost in [11, 2_147_483_647] {
        expect_error(
            draw(&app, cost).await,
            StatusCode::BAD_REQUEST,
            "cost must be at most 10, the largest rate_limit a tier gives chat",
        )
        .await;
    }
    for cost in ["0", "-1", "x", "1.5", "2147483648", ""] {
        expect_error(
            draw(&app, cost).await,
            StatusCode::BAD_REQUEST,
            "cost must be an integer from 1 to 2147483647",
        )
        .await;
    }
}

/// A draw of n counts one use against a usage cap and one event in the audit trail.
#[tokio::test]
async fn usage_caps_and_the_audit_count_one_per_draw() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1000})).await;
    let body = json!({"name": "capped", "key": "sk-capped", "tier": "pro", "usage_limit": 3});
    expect(app.post("/admin/keys", &body).await, StatusCode::CREATED).await;
    // A capped key is briefly unavailable while the writer commits its next reservation.
    let mut served = 0;
    for _ in 0..1_000 {
        match draw(&app, 50).await.status() {
            StatusCode::OK => served += 1,
            StatusCode::TOO_MANY_REQUESTS => tokio::task::yield_now().await,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(served, 3);
    let keys = expect(app.get("/admin/keys").await, StatusCode::OK).await;
    assert_eq!(keys[0]["usage"]["chat"]["used"], 150);
    assert_eq!(keys[0]["usage_count"], 3);
    let events = expect(app.get("/admin/usage").await, StatusCode::OK).await;
    assert_eq!(events.as_array().unwrap().len(), 3);
}
