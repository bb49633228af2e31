//! Usage caps — never more than the limit, under concurrency and across restarts.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect, expect_error, hammer};

async fn add_capped(app: &TestApp, name: &str, limit: u64, window: Option<u64>) -> String {
    let mut body =
        json!({"name": name, "key": format!("sk-{name}"), "tier": "pro", "usage_limit": limit});
    if let Some(window) = window {
        body["usage_window_seconds"] = json!(window);
    }
    let added = expect(app.post("/admin/keys", &body).await, StatusCode::CREATED).await;
    added["id"].as_str().unwrap().to_owned()
}

/// Asks for keys until `want` are served or `attempts` run out. A usage-capped key is briefly
/// unavailable while the writer commits its next reservation, so some attempts answer 429.
pub async fn serve_up_to(app: &TestApp, want: usize, attempts: usize) -> usize {
    let mut served = 0;
    for _ in 0..attempts {
        if served == want {
            break;
        }
        match app.key("chat").await.0 {
            StatusCode::OK => served += 1,
            StatusCode::TOO_MANY_REQUESTS => tokio::task::yield_now().await,
            other => panic!("unexpected {other}"),
        }
    }
    served
}

async fn usage_count(app: &TestApp, id: &str) -> Value {
    let keys = expect(app.get("/admin/keys").await, StatusCode::OK).await;
    let key = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
        .clone();
    key["usage_count"].clone()
}

#[tokio::test]
async fn a_lifetime_cap_is_never_exceeded() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1000})).await;
    let id = add_capped(&app, "capped", 7, None).await;
    assert_eq!(serve_up_to(&app, 100, 5_000).await, 7);
    assert_eq!(usage_count(&app, &id).await, 7);
    let keys = expect(app.get("/admin/keys").await, StatusCode::OK).await;
    assert_eq!(keys[0]["usage_limit"], 7);
    assert!(keys[0].get("usage_window_seconds").is_none());
}

#[tokio::test]
async fn a_windowed_cap_resets_when_its_window_ends() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1000})).await;
    let id = add_capped(&app, "monthly", 3, Some(100)).await;
    assert_eq!(serve_up_to(&app, 100, 3_000).await, 3);
    assert_eq!(usage_count(&app, &id).await, 3);
    app.clock.advance_ms(100_000);
    assert_eq!(usage_count(&app, &id).await, 0);
    assert_eq!(serve_up_to(&app, 100, 3_000).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_never_pass_the_cap() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100000})).await;
    add_capped(&app, "a", 60, None).await;
    add_capped(&app, "b", 40, None).await;
    let mut served: u32 = hammer(&app, "chat", 16, 100).await.values().sum();
    assert!(served <= 100, "served {served} of a cap of 100");
    served += serve_up_to(&app, 100 - served as usize, 10_000).await as u32;
    assert_eq!(served, 100);
    assert_eq!(serve_up_to(&app, 1, 50).await, 0, "nothing past the caps");
}

#[tokio::test]
async fn a_restart_resumes_from_the_reservation_and_never_over_serves() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1000})).await;
    let id = add_capped(&app, "capped", 100, None).await;
    assert_eq!(serve_up_to(&app, 33, 5_000).await, 33);
    let app = app.restart().await;
    let counted = usage_count(&app, &id).await.as_u64().unwrap();
    // Reserved uses count as used after a restart: at most one chunk (100 / 20) is lost.
    assert!((33..=33 + 5).contains(&counted), "{counted}");
    let after = serve_up_to(&app, 1_000, 5_000).await as u64;
    assert_eq!(after, 100 - counted);
    assert_eq!(usage_count(&app, &id).await, 100);
}

/// A usage window ends in the broker's running time, which a restart resumes: a wall clock a
/// month ahead at start does not reopen a 100 s window, which reopens once the broker has run
/// the rest of it. (Each use of a cap of 3 waits for its own reservation: hence the attempts.)
#[tokio::test]
async fn a_wall_clock_ahead_at_restart_does_not_reopen_a_usage_window() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1000})).await;
    let id = add_capped(&app, "monthly", 3, Some(100)).await;
    assert_eq!(serve_up_to(&app, 3, 1_000_000).await, 3);
    app.clock.advance_ms(40_000);
    let a_month_ahead = app.wall.unix_now_ms() + 30 * 86_400_000;
    let app = app.restart_at(a_month_ahead).await;
    assert_eq!(usage_count(&app, &id).await, 3, "the window is still open");
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);
    app.clock.advance_ms(59_999);
    assert_eq!(usage_count(&app, &id).await, 3, "the window is still open");
    app.clock.advance_ms(1);
    assert_eq!(usage_count(&app, &id).await, 0);
    assert_eq!(serve_up_to(&app, 3, 1_000_000).await, 3);
    assert_eq!(usage_count(&app, &id).await, 3);
}

/// The same across a restart with the wall clock a month behind: the window ends after the
/// rest of its length, not a month later.
#[tokio::test]
async fn a_wall_clock_behind_at_restart_does_not_lengthen_a_usage_window() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1000})).await;
    let id = add_capped(&app, "monthly", 3, Some(100)).await;
    assert_eq!(serve_up_to(&app, 3, 1_000_000).await, 3);
    app.clock.advance_ms(40_000);
    let a_month_behind = app.wall.unix_now_ms() - 30 * 86_400_000;
    let app = app.restart_at(a_month_behind).await;
    assert_eq!(usage_count(&app, &id).await, 3, "the window is still open");
    app.clock.advance_ms(60_000);
    assert_eq!(usage_count(&app, &id).await, 0);
    assert_eq!(serve_up_to(&app, 3, 1_000_000).await, 3);
}

#[tokio::test]
async fn invalid_usage_settings_are_400() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1})).await;
    let cases = [
        (
            json!({"usage_limit": 0}),
            "usage_limit must be an integer from 1 to 4294967294",
        ),
        (
            json!({"usage_limit": -5}),
            "usage_limit must be an integer from 1 to 4294967294",
        ),
        (
            json!({"usage_limit": "10"}),
            "usage_limit must be an integer",
        ),
        (
            json!({"usage_limit": 5, "usage_window_seconds": 0}),
            "usage_window_seconds must be an integer from 1 to 316224000",
        ),
        (
            json!({"usage_window_seconds": 60}),
            "usage_window_seconds needs usage_limit",
        ),
    ];
    for (extra, message) in cases {
        let mut body = json!({"name": "k", "key": "sk", "tier": "pro"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        expect_error(
            app.post("/admin/keys", &body).await,
            StatusCode::BAD_REQUEST,
            message,
        )
        .await;
    }
}
