//! `Idempotency-Key` on the admin POST routes: a retried write is applied once and answered the
//! same, across restarts and kill -9; a key reused for another request is refused.

use reqwest::header::HeaderValue;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect, expect_error, hex_key};
use crate::process::{Server, TOKEN, http_with_headers};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

async fn post_once(app: &TestApp, path: &str, key: &str, body: &Value) -> Response {
    app.request(Method::POST, path)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn replayed(response: &Response) -> bool {
    response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true")
}

/// The answer's status, whether it was a replay, and its body.
async fn answer(response: Response) -> (StatusCode, bool, Value) {
    let status = response.status();
    let again = replayed(&response);
    (status, again, expect(response, status).await)
}

async fn count(app: &TestApp, path: &str) -> usize {
    let listed = expect(app.get(path).await, StatusCode::OK).await;
    listed.as_array().unwrap().len()
}

#[tokio::test]
async fn a_retried_tier_creation_is_applied_once_and_answered_the_same() {
    let app = TestApp::spawn().await;
    let body = json!({"name": "pro", "features": {"chat": 10}});
    let (status, again, first) = answer(post_once(&app, "/admin/tiers", "t-1", &body).await).await;
    assert_eq!((status, again), (StatusCode::CREATED, false));
    let (status, again, second) = answer(post_once(&app, "/admin/tiers", "t-1", &body).await).await;
    assert_eq!((status, again), (StatusCode::CREATED, true));
    assert_eq!(first, second);
    assert_eq!(count(&app, "/admin/tiers").await, 1);

    // Without the header, the same body is a second request: the tier exists.
    let plain = app.post("/admin/tiers", &body).await;
    assert_eq!(plain.status(), StatusCode::CONFLICT);
    assert!(!replayed(&plain));
}

#[tokio::test]
async fn a_retried_key_is_added_once() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    let body = json!({"name": "k", "key": "sk-once", "tier": "pro"});
    let (_, _, first) = answer(post_once(&app, "/admin/keys", "k-1", &body).await).await;
    for _ in 0..3 {
        let (status, again, next) =
            answer(post_once(&app, "/admin/keys", "k-1", &body).await).await;
        assert_eq!((status, again), (StatusCode::CREATED, true));
        assert_eq!(next, first);
    }
    assert_eq!(count(&app, "/admin/keys").await, 1);
    // Another key is another write.
    let (status, again, other) = answer(post_once(&app, "/admin/keys", "k-2", &body).await).await;
    assert_eq!((status, again), (StatusCode::CREATED, false));
    assert_ne!(other["id"], first["id"]);
    assert_eq!(count(&app, "/admin/keys").await, 2);
}

#[tokio::test]
async fn a_replayed_consumer_creation_answers_its_id_without_the_token() {
    let app = TestApp::spawn().await;
    let body = json!({"name": "svc"});
    let (status, again, first) =
        answer(post_once(&app, "/admin/consumers", "c-1", &body).await).await;
    assert_eq!((status, again), (StatusCode::CREATED, false));
    let token = first["token"].as_str().unwrap().to_owned();
    let (status, again, second) =
        answer(post_once(&app, "/admin/consumers", "c-1", &body).await).await;
    assert_eq!((status, again), (StatusCode::CREATED, true));
    assert_eq!(
        second,
        json!({"id": first["id"], "name": "svc", "replayed": true})
    );
    assert_eq!(count(&app, "/admin/consumers").await, 1);

    // The token from the first answer is the one that works; the replay never learnt it.
    app.create_tier("pro", json!({"chat": 10})).await;
    app.add_key("k", "sk-k", "pro").await;
    let scope = json!({"tier": "pro"});
    let path = format!("/admin/consumers/{}/scopes", first["id"].as_str().unwrap());
    let (status, _, scoped) = answer(post_once(&app, &path, "s-1", &scope).await).await;
    assert_eq!(status, StatusCode::OK);
    let (status, again, scoped_again) = answer(post_once(&app, &path, "s-1", &scope).await).await;
    assert_eq!((status, again), (StatusCode::OK, true));
    assert_eq!(scoped, scoped_again);
    let (drawn, _) = app.key_as(&token, "chat").await;
    assert_eq!(drawn, StatusCode::OK);
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_refused_and_nothing_is_applied() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    let body = json!({"name": "k", "key": "sk-1", "tier": "pro"});
    let (_, _, first) = answer(post_once(&app, "/admin/keys", "reused", &body).await).await;
    let message = "this Idempotency-Key was used in the last 24 hours with a different request (method, path or body)";
    // Another body, another route, the same body spelled differently: each is another request.
    let other_body = json!({"name": "k2", "key": "sk-2", "tier": "pro"});
    expect_error(
        post_once(&app, "/admin/keys", "reused", &other_body).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        message,
    )
    .await;
    let tier = json!({"name": "other", "features": {"chat": 1}});
    expect_error(
        post_once(&app, "/admin/tiers", "reused", &tier).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        message,
    )
    .await;
    let spaced = app
        .request(Method::POST, "/admin/keys")
        .header("Idempotency-Key", "reused")
        .header("content-type", "application/json")
        .body(format!("{body:#}"))
        .send()
        .await
        .unwrap();
    expect_error(spaced, StatusCode::UNPROCESSABLE_ENTITY, message).await;
    assert_eq!(count(&app, "/admin/keys").await, 1);
    assert_eq!(count(&app, "/admin/tiers").await, 1);
    // The key still answers its own request.
    let (_, again, replay) = answer(post_once(&app, "/admin/keys", "reused", &body).await).await;
    assert!(again);
    assert_eq!(replay, first);
}

#[tokio::test]
async fn a_refusal_is_stored_like_any_answer() {
    let app = TestApp::spawn().await;
    let body = json!({"name": "k", "key": "sk-1", "tier": "later"});
    expect_error(
        post_once(&app, "/admin/keys", "early", &body).await,
        StatusCode::NOT_FOUND,
        "tier not found: later",
    )
    .await;
    app.create_tier("later", json!({"chat": 1})).await;
    // The retry gets the first answer; it does not add the key now that the tier exists.
    let retry = post_once(&app, "/admin/keys", "early", &body).await;
    assert!(replayed(&retry));
    expect_error(retry, StatusCode::NOT_FOUND, "tier not found: later").await;
    assert_eq!(count(&app, "/admin/keys").await, 0);

    // A body refused before it reaches the writer (a 400) is not stored: the key stays free.
    let invalid = json!({"name": "", "key": "sk-1", "tier": "later"});
    let refused = post_once(&app, "/admin/keys", "unused", &invalid).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let fixed = json!({"name": "k", "key": "sk-1", "tier": "later"});
    let (status, again, _) = answer(post_once(&app, "/admin/keys", "unused", &fixed).await).await;
    assert_eq!((status, again), (StatusCode::CREATED, false));
}

#[tokio::test]
async fn a_replay_after_a_restart_answers_the_same() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    let body = json!({"name": "k", "key": "sk-1", "tier": "pro"});
    let (_, _, first) = answer(post_once(&app, "/admin/keys", "restart-1", &body).await).await;
    let consumer = json!({"name": "svc"});
    let (_, _, created) =
        answer(post_once(&app, "/admin/consumers", "restart-2", &consumer).await).await;

    let app = app.restart().await;
    let (status, again, replay) =
        answer(post_once(&app, "/admin/keys", "restart-1", &body).await).await;
    assert_eq!((status, again), (StatusCode::CREATED, true));
    assert_eq!(replay, first);
    let (_, again, replay) =
        answer(post_once(&app, "/admin/consumers", "restart-2", &consumer).await).await;
    assert!(again);
    assert_eq!(
        replay,
        json!({"id": created["id"], "name": "svc", "replayed": true})
    );
    assert_eq!(count(&app, "/admin/keys").await, 1);
    assert_eq!(count(&app, "/admin/consumers").await, 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_apply_once() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    let body = json!({"name": "k", "key": "sk-race", "tier": "pro"});
    let url = format!("{}/admin/keys", app.address);
    let sends: Vec<_> = (0..20)
        .map(|_| {
            let request = app
                .client
                .post(&url)
                .bearer_auth(crate::helpers::ADMIN_TOKEN)
                .header("Idempotency-Key", "race")
                .json(&body);
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                let status = response.status();
                (status, response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for send in sends {
        answers.push(send.await.unwrap());
    }
    assert!(
        answers.iter().all(|answer| *answer == answers[0]),
        "{answers:?}"
    );
    assert_eq!(answers[0].0, StatusCode::CREATED);
    assert_eq!(count(&app, "/admin/keys").await, 1);
}

#[tokio::test]
async fn malformed_keys_are_refused_before_anything_is_applied() {
    let app = TestApp::spawn().await;
    let body = json!({"name": "pro", "features": {"chat": 10}});
    let length = "Idempotency-Key must be 1 to 255 characters";
    let charset =
        "Idempotency-Key must be visible ASCII characters (no spaces or control characters)";
    let cases: [(&[u8], &str); 5] = [
        (&[b'k'; 256], length),
        (b"", length),
        (b"tab\tinside", charset),
        (b"with space", charset),
        ("caf\u{e9}".as_bytes(), charset),
    ];
    for (key, message) in cases {
        let response = app
            .request(Method::POST, "/admin/tiers")
            .header("Idempotency-Key", HeaderValue::from_bytes(key).unwrap())
            .json(&body)
            .send()
            .await
            .unwrap();
        expect_error(response, StatusCode::BAD_REQUEST, message).await;
    }
    let twice = app
        .request(Method::POST, "/admin/tiers")
        .header("Idempotency-Key", "a")
        .header("Idempotency-Key", "b")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_error(
        twice,
        StatusCode::BAD_REQUEST,
        "send at most one Idempotency-Key header",
    )
    .await;
    assert_eq!(count(&app, "/admin/tiers").await, 0);
    // 255 visible characters is the longest key.
    let longest = "~".repeat(255);
    let (status, _, _) = answer(post_once(&app, "/admin/tiers", &longest, &body).await).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_key_is_honoured_for_24_hours_then_forgotten() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    let body = json!({"name": "k", "key": "sk-1", "tier": "pro"});
    let (_, _, first) = answer(post_once(&app, "/admin/keys", "day", &body).await).await;
    app.clock.advance_ms(DAY_MS - 1);
    let (_, again, replay) = answer(post_once(&app, "/admin/keys", "day", &body).await).await;
    assert!(again, "a key is honoured for 24 hours");
    assert_eq!(replay, first);
    app.clock.advance_ms(1);
    let (status, again, later) = answer(post_once(&app, "/admin/keys", "day", &body).await).await;
    assert_eq!((status, again), (StatusCode::CREATED, false));
    assert_ne!(later["id"], first["id"]);
    assert_eq!(count(&app, "/admin/keys").await, 2);
    // The key now answers its second use.
    let (_, again, replay) = answer(post_once(&app, "/admin/keys", "day", &body).await).await;
    assert!(again);
    assert_eq!(replay, later);
}

/// A raw request with an idempotency key to the built binary: its status, replay header and
/// body, or an error if the connection dropped.
fn post_raw(port: u16, path: &str, key: &str, body: &Value) -> std::io::Result<(u16, bool, Value)> {
    let headers = [("Idempotency-Key", key)];
    let (status, head, body) = http_with_headers(port, "POST", path, TOKEN, &headers, Some(body))?;
    let again = head
        .lines()
        .any(|line| line.eq_ignore_ascii_case("idempotent-replayed: true"));
    Ok((status, again, serde_json::from_str(&body).unwrap()))
}

#[test]
fn an_acknowledged_keyed_write_is_replayed_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x3c);
    let server = Server::start(dir.path(), &key);
    server.create_tier("pro", "chat", 10);
    let body = json!({"name": "k", "key": "sk-crash", "tier": "pro"});
    let (status, again, first) = post_raw(server.port, "/admin/keys", "crash-1", &body).unwrap();
    assert_eq!((status, again), (201, false), "{first}");
    let consumer = json!({"name": "svc"});
    let (_, _, created) = post_raw(server.port, "/admin/consumers", "crash-2", &consumer).unwrap();
    server.kill();

    let server = Server::start(dir.path(), &key);
    let (status, again, replay) = post_raw(server.port, "/admin/keys", "crash-1", &body).unwrap();
    assert_eq!((status, again), (201, true), "{replay}");
    assert_eq!(replay, first);
    let (status, again, replay) =
        post_raw(server.port, "/admin/consumers", "crash-2", &consumer).unwrap();
    assert_eq!((status, again), (201, true));
    assert_eq!(
        replay,
        json!({"id": created["id"], "name": "svc", "replayed": true})
    );
    let (_, keys) = server.request("GET", "/admin/keys", None).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
    let (_, consumers) = server.request("GET", "/admin/consumers", None).unwrap();
    assert_eq!(consumers.as_array().unwrap().len(), 1, "{consumers}");
}

/// A backup carries the idempotency keys: a retry sent to a server restored from it is
/// recognised, not applied again.
#[tokio::test]
async fn a_server_restored_from_a_backup_still_recognises_a_retry() {
    let app = TestApp::spawn().await;
    let body = json!({"name": "pro", "features": {"chat": 5}});
    let first = answer(post_once(&app, "/admin/tiers", "backed-up", &body).await).await;
    assert_eq!((first.0, first.1), (StatusCode::CREATED, false));
    let response = app.get("/admin/backup").await;
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.bytes().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.redb");
    std::fs::write(&path, &bytes).unwrap();
    let restored = TestApp::on_database_at(dir, path, &app.key_hex, app.wall.unix_now_ms()).await;
    let again = answer(post_once(&restored, "/admin/tiers", "backed-up", &body).await).await;
    assert_eq!(again, (StatusCode::CREATED, true, first.2));
    assert_eq!(count(&restored, "/admin/tiers").await, 1);
}
