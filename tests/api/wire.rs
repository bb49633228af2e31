//! JSON everywhere, body limits, auth, unknown paths and methods.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, TestApp, expect, expect_error};

#[tokio::test]
async fn health_is_public() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(format!("{}/health", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect(response, StatusCode::OK).await,
        json!({"status": "ok"})
    );
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_in_json() {
    let app = TestApp::spawn().await;
    expect_error(app.get("/nope").await, StatusCode::NOT_FOUND, "not found").await;
    let response = app
        .request(Method::PUT, "/admin/tiers")
        .send()
        .await
        .unwrap();
    expect_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
    )
    .await;
    let response = app.request(Method::POST, "/key").send().await.unwrap();
    expect_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
    )
    .await;
}

#[tokio::test]
async fn auth_errors_say_what_is_wrong() {
    let app = TestApp::spawn().await;
    for path in [
        "/key?feature=chat",
        "/admin/tiers",
        "/admin/keys",
        "/admin/health",
    ] {
        let url = format!("{}{path}", app.address);
        let none = app.client.get(&url).send().await.unwrap();
        expect_error(
            none,
            StatusCode::UNAUTHORIZED,
            "missing authorization header",
        )
        .await;
        for header in ["Basic abc", "Bearer", "Bearer ", "token"] {
            let response = app
                .client
                .get(&url)
                .header("Authorization", header)
                .send()
                .await
                .unwrap();
            expect_error(
                response,
                StatusCode::UNAUTHORIZED,
                "invalid authorization format",
            )
            .await;
        }
        let wrong = app
            .client
            .get(&url)
            .bearer_auth("not-the-token")
            .send()
            .await
            .unwrap();
        expect_error(wrong, StatusCode::UNAUTHORIZED, "invalid token").await;
        let prefix = app
            .client
            .get(&url)
            .bearer_auth(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1])
            .send()
            .await
            .unwrap();
        expect_error(prefix, StatusCode::UNAUTHORIZED, "invalid token").await;
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = TestApp::spawn().await;
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let response = app
            .client
            .get(format!("{}/admin/tiers", app.address))
            .header("Authorization", format!("{scheme} {ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(expect(response, StatusCode::OK).await, json!([]));
    }
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_413_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let huge = json!({"name": "big", "features": {"chat": 1}, "description": "x".repeat(1 << 20)});
    let response = app.post("/admin/tiers", &huge).await;
    expect_error(
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body is larger than 1048576 bytes",
    )
    .await;
    // Just under the limit is fine.
    let fits =
        json!({"name": "fits", "features": {"chat": 1}, "description": "x".repeat(1_000_000)});
    assert_eq!(
        app.post("/admin/tiers", &fits).await.status(),
        StatusCode::CREATED
    );
    let tiers = expect(app.get("/admin/tiers").await, StatusCode::OK).await;
    assert_eq!(tiers.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn malformed_json_and_wrong_types_are_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let raw = |body: &'static str| {
        app.request(Method::POST, "/admin/tiers")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let response = raw(r#"{"name": "pro", "features": "#).await.unwrap();
    let body = expect(response, StatusCode::BAD_REQUEST).await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON"),
        "{body}"
    );

    let response = raw(r#"{"name": 42, "features": {"chat": 1}}"#)
        .await
        .unwrap();
    expect_error(
        response,
        StatusCode::BAD_REQUEST,
        "name: wrong type, expected a string",
    )
    .await;

    let response = raw("").await.unwrap();
    expect_error(
        response,
        StatusCode::BAD_REQUEST,
        "request body must be a JSON object",
    )
    .await;

    let response = app
        .request(Method::POST, "/admin/keys")
        .header("content-type", "application/json")
        .body(r#"{"name": "k", "key": ["sk-never-echoed"], "tier": "pro"}"#)
        .send()
        .await
        .unwrap();
    let body = expect(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(body, json!({"error": "key: wrong type, expected a string"}));
}
