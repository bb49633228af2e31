//! The audit trail, `GET /admin/usage`.

use keypooler::app::Options;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect, expect_error};

#[tokio::test]
async fn served_keys_are_listed_newest_first_with_who_asked() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100, "embed": 100}))
        .await;
    let key = app.add_key("k", "sk-audited", "pro").await;
    let consumer = expect(
        app.post("/admin/consumers", &json!({"name": "svc"})).await,
        StatusCode::CREATED,
    )
    .await;
    let consumer_id = consumer["id"].as_str().unwrap();
    let scope = format!("/admin/consumers/{consumer_id}/scopes");
    expect(
        app.post(&scope, &json!({"tier": "pro"})).await,
        StatusCode::OK,
    )
    .await;

    assert_eq!(app.key("chat").await.0, StatusCode::OK);
    assert_eq!(app.key("embed").await.0, StatusCode::OK);
    let (status, _) = app
        .key_as(consumer["token"].as_str().unwrap(), "chat")
        .await;
    assert_eq!(status, StatusCode::OK);
    // Refusals are not usage.
    assert_eq!(app.key("nope").await.0, StatusCode::NOT_FOUND);

    let events = expect(app.get("/admin/usage").await, StatusCode::OK).await;
    let summary: Vec<(Value, Value, Value)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["key_id"].clone(),
                e["consumer_id"].clone(),
                e["feature"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (json!(key), json!(consumer_id), json!("chat")),
            (json!(key), json!("admin"), json!("embed")),
            (json!(key), json!("admin"), json!("chat")),
        ]
    );
    let created_at = events[0]["created_at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(created_at, &time::format_description::well_known::Rfc3339)
            .is_ok()
    );
    assert!(!events.to_string().contains("sk-audited"));

    let two = expect(app.get("/admin/usage?limit=2").await, StatusCode::OK).await;
    assert_eq!(two.as_array().unwrap().len(), 2);
    assert_eq!(two[0], events[0]);
    let many = expect(app.get("/admin/usage?limit=5000").await, StatusCode::OK).await;
    assert_eq!(many, events);
    for bad in ["0", "-1", "ten"] {
        expect_error(
            app.get(&format!("/admin/usage?limit={bad}")).await,
            StatusCode::BAD_REQUEST,
            "limit must be an integer from 1 to 1000",
        )
        .await;
    }

    let app = app.restart().await;
    let after = expect(app.get("/admin/usage").await, StatusCode::OK).await;
    assert_eq!(after, events, "the trail survives a restart");
}

#[tokio::test]
async fn with_the_audit_off_nothing_is_recorded_and_the_route_says_so() {
    let app = TestApp::spawn_with(Options {
        audit: false,
        ..Options::default()
    })
    .await;
    app.create_tier("pro", json!({"chat": 100})).await;
    app.add_key("k", "sk", "pro").await;
    assert_eq!(app.key("chat").await.0, StatusCode::OK);
    expect_error(
        app.get("/admin/usage").await,
        StatusCode::NOT_FOUND,
        "the audit trail is off (start with AUDIT=on to record usage)",
    )
    .await;
}
