//! Restarts: everything acknowledged is there, values decrypt, deletions stick.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, expect};

#[tokio::test]
async fn tiers_keys_and_deletions_survive_a_restart() {
    let app = TestApp::spawn().await;
    let tier = app
        .create_tier(
            "pro",
            json!({"chat": {"rate_limit": 9, "window_seconds": 20}}),
        )
        .await;
    let kept = app.add_key("kept", "sk-kept-ü", "pro").await;
    let gone = app.add_key("gone", "sk-gone", "pro").await;
    let response = app.delete(&format!("/admin/keys/{gone}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let tiers_before = expect(app.get("/admin/tiers").await, StatusCode::OK).await;

    let app = app.restart().await;
    assert_eq!(
        expect(app.get("/admin/tiers").await, StatusCode::OK).await,
        tiers_before
    );
    assert_eq!(tiers_before[0]["id"], tier["id"]);
    let keys = expect(app.get("/admin/keys").await, StatusCode::OK).await;
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["id"], kept.as_str());
    for _ in 0..3 {
        let (status, body) = app.key("chat").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["value"], "sk-kept-ü");
    }
}

#[tokio::test]
async fn the_data_folder_is_created_and_the_file_holds_no_plaintext() {
    let app = TestApp::spawn().await;
    assert!(app.db_path.exists());
    app.create_tier("pro", json!({"chat": 1})).await;
    app.add_key("k", "sk-plaintext-marker-42", "pro").await;
    let mut app = app;
    app.stop().await;
    let bytes = std::fs::read(&app.db_path).unwrap();
    let needle = b"sk-plaintext-marker-42";
    assert!(!bytes.windows(needle.len()).any(|w| w == needle));
}
