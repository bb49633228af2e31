//! `GET /key?wait=<seconds>`: requests that wait for a key. The server's clock is manual: a
//! test ends a window by advancing it (the clock tells the waiters), never by sleeping.

use std::time::{Duration, Instant};

use keypooler::config::ConnectionLimits;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::helpers::{TestApp, expect, expect_error};

/// `GET /key?<query>` sent in the background.
fn send(app: &TestApp, query: &str) -> JoinHandle<Response> {
    let request = app.request(Method::GET, &format!("/key?{query}"));
    tokio::spawn(async move { request.send().await.unwrap() })
}

/// The value of the series `series` on `/metrics`, 0 when it is not listed.
async fn metric(app: &TestApp, series: &str) -> f64 {
    app.metric(series).await.unwrap_or(0.0)
}

/// Returns once `n` requests wait (the requests are in flight: there is no clock to move).
async fn until_waiting(app: &TestApp, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(app, "keypooler_key_waiters").await != n as f64 {
        assert!(Instant::now() < deadline, "never {n} waiting");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The window of the tiers these tests make: shorter than the longest wait.
const WINDOW_MS: u64 = 10_000;

/// A tier of `limit` per 10 s for "chat", one key, its window spent.
async fn spent_pool(app: &TestApp, limit: u32) {
    app.create_tier(
        "pro",
        json!({ "chat": {"rate_limit": limit, "window_seconds": 10} }),
    )
    .await;
    app.add_key("k", "sk-first", "pro").await;
    let spend = app.get(&format!("/key?feature=chat&cost={limit}")).await;
    assert_eq!(spend.status(), StatusCode::OK);
}

async fn served(response: JoinHandle<Response>) -> Value {
    expect(response.await.unwrap(), StatusCode::OK).await
}

#[tokio::test]
async fn a_waiter_is_served_when_the_window_rolls_over() {
    let app = TestApp::spawn().await;
    spent_pool(&app, 1).await;
    let waiter = send(&app, "feature=chat&wait=30");
    until_waiting(&app, 1).await;
    app.clock.advance_ms(WINDOW_MS - 1);
    until_waiting(&app, 1).await;
    assert!(!waiter.is_finished());
    app.clock.advance_ms(1);
    assert_eq!(served(waiter).await["value"], "sk-first");
    until_waiting(&app, 0).await;
    let served = "keypooler_key_waits_total{outcome=\"served\"}";
    assert_eq!(metric(&app, served).await, 1.0);
    // Without wait, the same request is refused at once, as before.
    let (status, _) = app.key("chat").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_waiter_is_served_by_a_key_added_while_it_waits() {
    let app = TestApp::spawn().await;
    spent_pool(&app, 1).await;
    let waiter = send(&app, "feature=chat&wait=30");
    until_waiting(&app, 1).await;
    app.add_key("late", "sk-late", "pro").await;
    assert_eq!(served(waiter).await["value"], "sk-late");
}

/// Arrival order per feature; a waiter whose draw does not fit yet lets smaller ones behind it
/// through.
#[tokio::test]
async fn waiters_are_served_in_arrival_order_and_a_large_draw_does_not_block_a_small_one() {
    let app = TestApp::spawn().await;
    spent_pool(&app, 3).await;
    // A new window, with one unit left.
    app.clock.advance_ms(WINDOW_MS);
    served(send(&app, "feature=chat&cost=2")).await;
    let first = send(&app, "feature=chat&cost=2&wait=30");
    until_waiting(&app, 1).await;
    let small = send(&app, "feature=chat&cost=1&wait=30");
    served(small).await;
    let second = send(&app, "feature=chat&cost=2&wait=30");
    until_waiting(&app, 2).await;
    // A new window of 3: the first waiter's 2, not enough left for the second.
    app.clock.advance_ms(WINDOW_MS);
    served(first).await;
    until_waiting(&app, 1).await;
    assert!(!second.is_finished());
    app.clock.advance_ms(WINDOW_MS);
    served(second).await;
}

#[tokio::test]
async fn more_than_max_waiters_get_503_at_once() {
    let app = TestApp::spawn_with_limits(ConnectionLimits {
        max_waiters: 2,
        ..ConnectionLimits::default()
    })
    .await;
    spent_pool(&app, 1).await;
    let waiters = [
        send(&app, "feature=chat&wait=30"),
        send(&app, "feature=chat&wait=30"),
    ];
    until_waiting(&app, 2).await;
    let refused = send(&app, "feature=chat&wait=30").await.unwrap();
    assert_eq!(refused.headers()["retry-after"], "1");
    expect_error(
        refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "too many waiting requests",
    )
    .await;
    let rejected = "keypooler_key_waits_total{outcome=\"rejected\"}";
    assert_eq!(metric(&app, rejected).await, 1.0);
    // A request without wait is not a waiter: refused as usual.
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);
    // One window, one use: the first waiter, then the second a window later.
    app.clock.advance_ms(WINDOW_MS);
    let [first, second] = waiters;
    served(first).await;
    app.clock.advance_ms(WINDOW_MS);
    served(second).await;
}

#[tokio::test]
async fn a_wait_is_0_to_30_seconds() {
    let app = TestApp::spawn().await;
    spent_pool(&app, 1).await;
    for wait in ["31", "30.5", "-1", "x", "NaN", "inf", ""] {
        let response = send(&app, &format!("feature=chat&wait={wait}"))
            .await
            .unwrap();
        expect_error(
            response,
            StatusCode::BAD_REQUEST,
            "wait must be a number of seconds from 0 to 30",
        )
        .await;
    }
    // wait=0 does not wait.
    let response = send(&app, "feature=chat&wait=0").await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // A feature no tier lists is 404 at once, whatever the wait.
    let response = send(&app, "feature=nope&wait=30").await.unwrap();
    expect_error(response, StatusCode::NOT_FOUND, "unknown feature: nope").await;
}

#[tokio::test]
async fn a_wait_that_ends_first_is_the_429_with_its_retry_after() {
    let app = TestApp::spawn().await;
    spent_pool(&app, 1).await;
    let waiter = send(&app, "feature=chat&wait=5");
    until_waiting(&app, 1).await;
    app.clock.advance_ms(4_999);
    until_waiting(&app, 1).await;
    app.clock.advance_ms(1);
    let refused = waiter.await.unwrap();
    assert_eq!(refused.headers()["retry-after"], "5");
    expect_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "no key available for feature",
    )
    .await;
    let timed_out = "keypooler_key_waits_total{outcome=\"timed_out\"}";
    assert_eq!(metric(&app, timed_out).await, 1.0);
    until_waiting(&app, 0).await;
}

#[tokio::test]
async fn waiters_get_503_on_shutdown() {
    let mut app = TestApp::spawn().await;
    spent_pool(&app, 1).await;
    let waiters = [
        send(&app, "feature=chat&wait=30"),
        send(&app, "feature=chat&wait=30"),
    ];
    until_waiting(&app, 2).await;
    app.stop().await;
    for waiter in waiters {
        expect_error(
            waiter.await.unwrap(),
            StatusCode::SERVICE_UNAVAILABLE,
            "server is shutting down",
        )
        .await;
    }
}

/// `REQUEST_TIMEOUT` answers 408 to other requests, never to one waiting for a key: real time
/// passes beyond it (the request timeout runs on the runtime's clock), then the window ends.
#[tokio::test]
async fn request_timeout_does_not_cut_a_wait_short() {
    let app = TestApp::spawn_with_limits(ConnectionLimits {
        request_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    })
    .await;
    spent_pool(&app, 1).await;
    let waiter = send(&app, "feature=chat&wait=30");
    until_waiting(&app, 1).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!waiter.is_finished());
    app.clock.advance_ms(WINDOW_MS);
    assert_eq!(served(waiter).await["value"], "sk-first");
}

/// Key health frees waiters too: a cooldown that ends (on the clock), a disabled key an admin
/// enables again and an exhaustion cleared (both at once, with no clock moved).
#[tokio::test]
async fn a_waiter_is_served_when_a_cooldown_ends_or_a_key_is_enabled_again() {
    let app = TestApp::spawn().await;
    app.create_tier(
        "pro",
        json!({ "chat": {"rate_limit": 100, "window_seconds": 10} }),
    )
    .await;
    let id = app.add_key("k", "sk-first", "pro").await;
    let report = async |body: Value| {
        let path = format!("/key/{id}/report");
        expect(app.post(&path, &body).await, StatusCode::OK).await
    };
    let patch = async |body: Value| {
        let path = format!("/admin/keys/{id}");
        expect(app.patch(&path, &body).await, StatusCode::OK).await
    };

    // Cooling for 20 s, longer than the window: only the cooldown's end frees the key.
    report(json!({"status": 429, "retry_after": 20})).await;
    let refused = send(&app, "feature=chat").await.unwrap();
    assert_eq!(refused.headers()["retry-after"], "20");
    let waiter = send(&app, "feature=chat&wait=30");
    until_waiting(&app, 1).await;
    app.clock.advance_ms(19_999);
    until_waiting(&app, 1).await;
    assert!(!waiter.is_finished());
    app.clock.advance_ms(1);
    assert_eq!(served(waiter).await["value"], "sk-first");

    // Disabled by a 401: nothing ends by itself; an admin's PATCH frees the waiter.
    report(json!({"status": 401})).await;
    let waiter = send(&app, "feature=chat&wait=30");
    until_waiting(&app, 1).await;
    assert_eq!(patch(json!({"is_active": true})).await["state"], "active");
    assert_eq!(served(waiter).await["value"], "sk-first");

    // Exhausted for an hour; the PATCH that clears it frees the waiter.
    let until = time::OffsetDateTime::from_unix_timestamp(app.wall.unix_now_ms() / 1_000 + 3_600)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(
        patch(json!({ "exhausted_until": until })).await["state"],
        "exhausted"
    );
    let waiter = send(&app, "feature=chat&wait=30");
    until_waiting(&app, 1).await;
    patch(json!({"exhausted_until": null})).await;
    assert_eq!(served(waiter).await["value"], "sk-first");
    until_waiting(&app, 0).await;
}
