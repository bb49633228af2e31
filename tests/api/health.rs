//! Key health: `POST /key/{id}/report` and `POST /key/{id}/exhausted`, what they do to
//! `GET /key`, the listing and the audit trail, their refusals, and that they last.

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, TestApp, expect, expect_error};
use crate::process::{Server, TOKEN, free_port, keypooler};

/// The manual clock's wall time at start: 2026-06-01T00:00:00Z.
const START: &str = "2026-06-01T00:00:00Z";

/// `POST /key/{id}/report` with `token`: status and body.
async fn report_as(app: &TestApp, token: &str, id: &str, body: Value) -> (StatusCode, Value) {
    let response = app
        .client
        .post(format!("{}/key/{id}/report", app.address))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn report(app: &TestApp, id: &str, body: Value) -> Value {
    let (status, answer) = report_as(app, ADMIN_TOKEN, id, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

/// Reports `body` for key `id` and checks the cooldown ends at `expected`.
async fn cools_until(app: &TestApp, id: &str, body: Value, expected: &str) {
    assert_eq!(report(app, id, body).await["until"], expected, "{id}");
}

async fn exhausted(app: &TestApp, id: &str, until: &str) -> reqwest::Response {
    app.post(&format!("/key/{id}/exhausted"), &json!({ "until": until }))
        .await
}

/// `GET /key` for `feature`: the id served, or the `Retry-After` of the 429.
async fn draw(app: &TestApp, feature: &str) -> Result<String, String> {
    let response = app.get(&format!("/key?feature={feature}")).await;
    if response.status() == StatusCode::OK {
        let body: Value = response.json().await.unwrap();
        return Ok(body["key_id"].as_str().unwrap().to_owned());
    }
    let retry = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .to_owned();
    expect_error(
        response,
        StatusCode::TOO_MANY_REQUESTS,
        "no key available for feature",
    )
    .await;
    Err(retry)
}

/// A tier `pro` listing chat and image with a large budget, and keys `a` and `b` in it.
async fn two_keys() -> (TestApp, String, String) {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1000, "image": 1000}))
        .await;
    let a = app.add_key("a", "sk-a", "pro").await;
    let b = app.add_key("b", "sk-b", "pro").await;
    (app, a, b)
}

#[tokio::test]
async fn a_429_cools_the_key_with_exponential_backoff_and_it_comes_back_by_itself() {
    let (app, a, b) = two_keys().await;
    let answer = report(&app, &a, json!({"status": 429})).await;
    assert_eq!(
        answer,
        json!({"key_id": a, "state": "cooling", "until": "2026-06-01T00:00:01Z", "cooldowns": {}})
    );
    for _ in 0..3 {
        assert_eq!(draw(&app, "chat").await, Ok(b.clone()), "a cools");
    }
    let entry = app.listed(&a).await;
    assert_eq!(entry["state"], "cooling");
    assert_eq!(entry["cooldown_until"], "2026-06-01T00:00:01Z");
    assert_eq!(entry["is_active"], true);

    // Back on the manual clock alone, then a second 429 in a row cools it for 2 s, then 4 s.
    app.clock.advance_ms(1_000);
    assert_eq!(app.listed(&a).await["state"], "active");
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..2 {
        served.insert(draw(&app, "chat").await.unwrap());
    }
    assert!(served.contains(&a), "{served:?}");
    cools_until(&app, &a, json!({"status": 429}), "2026-06-01T00:00:03Z").await;
    app.clock.advance_ms(2_000);
    cools_until(&app, &a, json!({"status": 429}), "2026-06-01T00:00:07Z").await;

    // A success ends the run: the next 429 cools for a second again. The success itself does
    // not cut the running cooldown short (the provider's word on it holds).
    let answer = report(&app, &a, json!({"status": 200})).await;
    assert_eq!(answer["state"], "cooling");
    app.clock.advance_ms(4_000);
    cools_until(&app, &a, json!({"status": 429}), "2026-06-01T00:00:08Z").await;
}

#[tokio::test]
async fn twenty_concurrent_429_reports_escalate_the_backoff_once() {
    let (app, a, _) = two_keys().await;
    let reports: Vec<_> = (0..20)
        .map(|_| {
            let request = app
                .request(Method::POST, &format!("/key/{a}/report"))
                .json(&json!({"status": 429}));
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                response.json::<Value>().await.unwrap()
            })
        })
        .collect();
    for answer in reports {
        let answer = answer.await.unwrap();
        assert_eq!(answer["until"], "2026-06-01T00:00:01Z", "one event: 1 s");
    }
    // The next cooldown is the second of the run (2 s), not the twenty-first.
    app.clock.advance_ms(1_000);
    cools_until(&app, &a, json!({"status": 429}), "2026-06-01T00:00:03Z").await;
}

/// How many reports reached the writer (the rest were answered from memory).
async fn written_reports(app: &TestApp) -> u64 {
    let series = r#"keypooler_writer_commands_total{kind="report_health",outcome="applied"}"#;
    app.metric(series).await.map_or(0, |n| n as u64)
}

#[tokio::test]
async fn a_storm_of_one_refusal_writes_once_a_second_and_is_answered_from_memory() {
    let (app, a, _) = two_keys().await;
    let body = json!({"status": 429, "retry_after": 1});
    app.clock.advance_ms(250);
    // Rounded up to a whole second: never sooner than the provider asked.
    cools_until(&app, &a, body.clone(), "2026-06-01T00:00:02Z").await;
    assert_eq!(written_reports(&app).await, 1);
    for _ in 0..3 {
        app.clock.advance_ms(200);
        cools_until(&app, &a, body.clone(), "2026-06-01T00:00:02Z").await;
    }
    assert_eq!(
        written_reports(&app).await,
        1,
        "the same deadline: nothing written"
    );
    // A second later the refusal lengthens the cooldown: written, once.
    app.clock.advance_ms(500);
    cools_until(&app, &a, body.clone(), "2026-06-01T00:00:03Z").await;
    cools_until(&app, &a, body, "2026-06-01T00:00:03Z").await;
    assert_eq!(written_reports(&app).await, 2);
    let counted = app.metrics().await;
    assert!(
        counted
            .lines()
            .any(|l| l == r#"keypooler_key_reports_total{class="rate_limited"} 6"#),
        "every report is counted: {counted}"
    );
}

#[tokio::test]
async fn retry_after_in_seconds_or_as_an_http_date_sets_the_cooldown() {
    let (app, a, b) = two_keys().await;
    // (key, ms to let pass first, retry_after, the cooldown's end)
    let cases = [
        (&a, 0, json!(30), "2026-06-01T00:00:30Z"),
        (
            &b,
            0,
            json!("Mon, 01 Jun 2026 00:01:30 GMT"),
            "2026-06-01T00:01:30Z",
        ),
        // Floored at a second, capped at COOLDOWN_MAX (300 s).
        (&a, 30_000, json!(0), "2026-06-01T00:00:31Z"),
        (&a, 1_000, json!(86_400), "2026-06-01T00:05:31Z"),
    ];
    for (n, (key, pass_ms, retry_after, end)) in cases.into_iter().enumerate() {
        app.clock.advance_ms(pass_ms);
        let body = json!({"status": 429, "retry_after": retry_after});
        cools_until(&app, key, body, end).await;
        if n == 1 {
            // Every key cools: the refusal says when the first comes back.
            assert_eq!(draw(&app, "chat").await, Err("30".into()));
        }
    }
    let bad = report_as(
        &app,
        ADMIN_TOKEN,
        &a,
        json!({"status": 429, "retry_after": "soon"}),
    )
    .await;
    assert_eq!(bad.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_feature_429_cools_that_feature_only() {
    let (app, a, b) = two_keys().await;
    let answer = report(
        &app,
        &a,
        json!({"status": 429, "feature": "image", "retry_after": 10}),
    )
    .await;
    assert_eq!(
        answer,
        json!({"key_id": a, "state": "active", "until": null, "cooldowns": {"image": "2026-06-01T00:00:10Z"}})
    );
    let entry = app.listed(&a).await;
    assert_eq!(entry["state"], "active");
    assert_eq!(entry["cooldowns"], json!({"image": "2026-06-01T00:00:10Z"}));
    assert_eq!(entry["cooldown_until"], Value::Null);
    for _ in 0..3 {
        assert_eq!(draw(&app, "image").await, Ok(b.clone()));
    }
    let chat: std::collections::BTreeSet<_> = [draw(&app, "chat").await, draw(&app, "chat").await]
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(chat.contains(&a), "a still serves chat");
    let (status, answer) = report_as(
        &app,
        ADMIN_TOKEN,
        &a,
        json!({"status": 429, "feature": "video"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    app.clock.advance_ms(10_000);
    let image: std::collections::BTreeSet<_> =
        [draw(&app, "image").await, draw(&app, "image").await]
            .into_iter()
            .map(Result::unwrap)
            .collect();
    assert!(image.contains(&a), "a serves image again");
}

#[tokio::test]
async fn a_401_402_or_403_disables_the_key_until_an_admin_acts() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1000})).await;
    for status in [401, 402, 403] {
        let id = app.add_key(&format!("k{status}"), "sk", "pro").await;
        let answer = report(&app, &id, json!({"status": status})).await;
        assert_eq!(
            answer,
            json!({"key_id": id, "state": "disabled", "until": null, "cooldowns": {}})
        );
        let entry = app.listed(&id).await;
        assert_eq!(entry["is_active"], false);
        assert_eq!(entry["state"], "disabled");
        assert_eq!(
            entry["disabled_reason"],
            format!("provider answered {status} (reported {START})")
        );
    }
    // Never served; nothing recovers by itself: a minute.
    assert_eq!(draw(&app, "chat").await, Err("60".into()));
    app.clock.advance_ms(3_600_000);
    assert_eq!(draw(&app, "chat").await, Err("60".into()));
}

#[tokio::test]
async fn failures_cool_the_key_at_the_threshold_and_other_statuses_change_nothing() {
    let (app, a, _) = two_keys().await;
    for status in [400, 404, 418, 302] {
        let answer = report(&app, &a, json!({"status": status})).await;
        assert_eq!(answer["state"], "active");
    }
    let answer = report(&app, &a, json!({"status": 503})).await;
    assert_eq!(answer["state"], "active");
    let answer = report(&app, &a, json!({"outcome": "timeout"})).await;
    assert_eq!(answer["state"], "active");
    assert_eq!(app.listed(&a).await["consecutive_failures"], 2);
    let answer = report(&app, &a, json!({"status": 500})).await;
    assert_eq!(answer["state"], "cooling");
    assert_eq!(answer["until"], "2026-06-01T00:00:01Z");
    // A success resets the count.
    report(&app, &a, json!({"status": 204})).await;
    assert_eq!(app.listed(&a).await["consecutive_failures"], 0);

    // Every report that changed or recorded something is in the audit trail, naming who.
    let trail = expect(app.get("/admin/usage?limit=100").await, StatusCode::OK).await;
    let events: Vec<&str> = trail
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["event"].as_str())
        .collect();
    assert_eq!(
        events,
        [
            "report 2xx",
            "report 500",
            "report timeout",
            "report 503",
            "report 302",
            "report 418",
            "report 404",
            "report 400"
        ]
    );
    assert!(
        trail
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["consumer_id"] == "admin")
    );
}

#[tokio::test]
async fn a_success_for_a_healthy_key_changes_nothing_durable() {
    let (app, a, _) = two_keys().await;
    for _ in 0..5 {
        let answer = report(&app, &a, json!({"status": 200})).await;
        assert_eq!(
            answer,
            json!({"key_id": a, "state": "active", "until": null, "cooldowns": {}})
        );
    }
    // Answered from memory: no write, so no audit event either.
    let trail = expect(app.get("/admin/usage").await, StatusCode::OK).await;
    assert_eq!(trail, json!([]));
}

#[tokio::test]
async fn exhausted_takes_the_go_services_shape_and_a_past_time_clears_it() {
    let (app, a, b) = two_keys().await;
    let answer = expect(
        exhausted(&app, &a, "2026-06-01T01:00:00Z").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        answer,
        json!({"status": "exhausted", "until": "2026-06-01T01:00:00Z"})
    );
    let entry = app.listed(&a).await;
    assert_eq!(entry["state"], "exhausted");
    assert_eq!(entry["exhausted_until"], "2026-06-01T01:00:00Z");
    // Exhausted for every feature; with b cooling too, the refusal waits for the earliest end.
    report(&app, &b, json!({"status": 429, "retry_after": 120})).await;
    assert_eq!(draw(&app, "chat").await, Err("120".into()));
    assert_eq!(draw(&app, "image").await, Err("120".into()));
    app.clock.advance_ms(120_000);
    assert_eq!(draw(&app, "chat").await, Ok(b.clone()));
    assert_eq!(draw(&app, "chat").await, Ok(b.clone()));

    // A past time clears it at once, though the pool had remembered a later refusal.
    report(&app, &b, json!({"status": 429, "retry_after": 300})).await;
    assert_eq!(draw(&app, "chat").await, Err("300".into()));
    expect(
        exhausted(&app, &a, "2020-01-01T00:00:00Z").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(app.listed(&a).await["exhausted_until"], Value::Null);
    assert_eq!(draw(&app, "chat").await, Ok(a.clone()));

    for (body, message) in [
        (json!({}), "until is required (an RFC 3339 time)"),
        (
            json!({"until": "tomorrow"}),
            "until must be an RFC 3339 time, e.g. 2030-01-31T00:00:00Z",
        ),
        (
            json!({"until": "2027-06-03T00:00:00Z"}),
            "until must be at most 366 days ahead",
        ),
    ] {
        let response = app.post(&format!("/key/{a}/exhausted"), &body).await;
        expect_error(response, StatusCode::BAD_REQUEST, message).await;
    }
    expect(
        exhausted(&app, &a, "2027-06-02T00:00:00Z").await,
        StatusCode::OK,
    )
    .await;
    let unknown = exhausted(&app, "nope", "2026-06-01T01:00:00Z").await;
    expect_error(unknown, StatusCode::NOT_FOUND, "key not found: nope").await;
    let (status, _) = report_as(&app, ADMIN_TOKEN, "nope", json!({"status": 429})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_consumer_reports_only_on_keys_of_its_tiers_and_is_named_in_the_trail() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    app.create_tier("free", json!({"chat": 10})).await;
    let pro = app.add_key("pro-key", "sk-pro", "pro").await;
    let free = app.add_key("free-key", "sk-free", "free").await;
    let (id, token) = app.consumer_of("svc", "free").await;

    let (status, answer) = report_as(&app, &token, &pro, json!({"status": 429})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(answer, json!({"error": "key not in this consumer's tiers"}));
    let outside = app
        .client
        .post(format!("{}/key/{pro}/exhausted", app.address))
        .bearer_auth(&token)
        .json(&json!({"until": "2026-06-01T01:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.listed(&pro).await["state"], "active");

    let (status, answer) = report_as(&app, &token, &free, json!({"status": 429})).await;
    assert_eq!(
        (status, &answer["state"]),
        (StatusCode::OK, &json!("cooling"))
    );
    let trail = expect(app.get("/admin/usage").await, StatusCode::OK).await;
    assert_eq!(trail[0]["consumer_id"], id);
    assert_eq!(trail[0]["event"], "report 429");
    let (status, _) = report_as(&app, "not-a-token-at-all", &free, json!({"status": 429})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn reports_are_counted_by_class_and_unavailable_keys_by_state_without_ids() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    let ids: Vec<String> = add_keys(&app, 4).await;
    report(&app, &ids[0], json!({"status": 429, "retry_after": 120})).await;
    report(&app, &ids[1], json!({"status": 401})).await;
    expect(
        exhausted(&app, &ids[2], "2026-06-02T00:00:00Z").await,
        StatusCode::OK,
    )
    .await;
    report(&app, &ids[3], json!({"status": 200})).await;
    report(&app, &ids[3], json!({"outcome": "timeout"})).await;
    let text = app.metrics().await;
    for line in [
        r#"keypooler_key_reports_total{class="rate_limited"} 1"#,
        r#"keypooler_key_reports_total{class="refused"} 1"#,
        r#"keypooler_key_reports_total{class="success"} 1"#,
        r#"keypooler_key_reports_total{class="timeout"} 1"#,
        r#"keypooler_keys_unavailable{state="cooling"} 1"#,
        r#"keypooler_keys_unavailable{state="disabled"} 1"#,
        r#"keypooler_keys_unavailable{state="exhausted"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in {text}");
    }
    for id in &ids {
        assert!(!text.contains(id.as_str()), "a key id on the public page");
    }
}

/// Adds `n` keys to tier `pro`.
async fn add_keys(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(app.add_key(&format!("k{i}"), "sk", "pro").await);
    }
    ids
}

/// The listing entry of key `id` from a running binary.
fn listed_on(server: &Server, id: &str) -> Value {
    let (status, keys) = server.request("GET", "/admin/keys", None).unwrap();
    assert_eq!(status, 200);
    let entry = keys.as_array().unwrap().iter().find(|key| key["id"] == id);
    entry.cloned().unwrap()
}

fn start(dir: &Path, key: &str, port: u16) -> Server {
    Server::spawn(
        keypooler(
            dir,
            &[
                ("ENCRYPTION_KEY", key),
                ("ADMIN_TOKEN", TOKEN),
                ("SERVER_PORT", &port.to_string()),
                ("COOLDOWN_MAX", "3600"),
            ],
        ),
        port,
    )
}

/// Every acknowledged health change survives `kill -9`: a disabled key stays disabled, a
/// cooling one cools until its deadline, an exhausted one stays exhausted, a failure count and
/// a backoff level go on.
#[test]
fn health_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let key = crate::helpers::hex_key(0x42);
    let port = free_port();
    let server = start(dir.path(), &key, port);
    server.create_tier("pro", "chat", 100);
    let ids: Vec<String> = (0..4)
        .map(|i| {
            server
                .add_key(&json!({"name": format!("k{i}"), "key": format!("sk-{i}"), "tier": "pro"}))
        })
        .collect();
    let post = |path: String, body: Value| {
        let (status, answer) = server.request("POST", &path, Some(&body)).unwrap();
        assert_eq!(status, 200, "{answer}");
        answer
    };
    post(format!("/key/{}/report", ids[0]), json!({"status": 403}));
    let cooling = post(
        format!("/key/{}/report", ids[1]),
        json!({"status": 429, "retry_after": 3_000}),
    );
    let exhausted = post(
        format!("/key/{}/exhausted", ids[2]),
        json!({"until": "2027-01-01T00:00:00Z"}),
    );
    assert_eq!(exhausted["status"], "exhausted");
    post(format!("/key/{}/report", ids[3]), json!({"status": 502}));
    let before: Vec<Value> = ids.iter().map(|id| listed_on(&server, id)).collect();
    server.kill();

    let server = start(dir.path(), &key, port);
    let after: Vec<Value> = ids.iter().map(|id| listed_on(&server, id)).collect();
    assert_eq!(after[0]["state"], "disabled");
    assert_eq!(after[0]["disabled_reason"], before[0]["disabled_reason"]);
    assert_eq!(after[0]["is_active"], false);
    assert_eq!(after[1]["state"], "cooling");
    assert_eq!(after[1]["cooldown_until"], cooling["until"]);
    assert_eq!(after[2]["state"], "exhausted");
    assert_eq!(after[2]["exhausted_until"], "2027-01-01T00:00:00Z");
    assert_eq!(after[3]["consecutive_failures"], 1);
    // Only the healthy key serves.
    for _ in 0..3 {
        let (status, body) = server.request("GET", "/key?feature=chat", None).unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["key_id"], ids[3].as_str());
    }
    server.terminate();
}

/// The snapshot generation, from `/metrics`.
async fn generation(app: &TestApp) -> f64 {
    app.metric("keypooler_snapshot_generation").await.unwrap()
}

/// `n` keys drawn for chat, each served.
async fn draw_chat(app: &TestApp, n: usize) -> Vec<String> {
    let mut served = Vec::new();
    for _ in 0..n {
        served.push(draw(app, "chat").await.unwrap());
    }
    served
}

/// The uses of key `id`'s chat window, as listed.
async fn chat_used(app: &TestApp, id: &str) -> u64 {
    app.listed(id).await["usage"]["chat"]["used"]
        .as_u64()
        .unwrap()
}

/// With 98 of 100 keys cooling, the two free ones take turns in rotation order; a storm of
/// 429s that only extends a cooling key's cooldown rebuilds no pool; the cooled keys come back
/// at their deadline with the uses their windows counted before.
#[tokio::test]
async fn with_most_keys_cooling_the_free_ones_rotate_and_the_cooled_come_back_with_their_counts() {
    let app = TestApp::spawn().await;
    app.create_tier(
        "pro",
        json!({"chat": {"rate_limit": 1000, "window_seconds": 3600}}),
    )
    .await;
    let ids = add_keys(&app, 100).await;
    let mut served = std::collections::HashMap::<String, u64>::new();
    let draws = draw_chat(&app, 100).await;
    let first = ids.iter().position(|id| *id == draws[0]).unwrap();
    let rotated: Vec<_> = ids.iter().cycle().skip(first).take(100).cloned().collect();
    assert_eq!(draws, rotated, "every key once, in rotation order");
    for id in draws {
        *served.entry(id).or_default() += 1;
    }

    let free = [ids[10].clone(), ids[60].clone()];
    for id in ids.iter().filter(|id| !free.contains(id)) {
        report(&app, id, json!({"status": 429, "retry_after": 30})).await;
    }
    let draws = draw_chat(&app, 6).await;
    assert!(draws.iter().all(|id| free.contains(id)), "{draws:?}");
    assert!(draws.windows(2).all(|pair| pair[0] != pair[1]), "in turn");
    for id in draws {
        *served.entry(id).or_default() += 1;
    }

    // Twenty reports that extend ids[0]'s cooldown by a second: no new generation.
    let before = generation(&app).await;
    app.clock.advance_ms(1_000);
    for _ in 0..20 {
        report(&app, &ids[0], json!({"status": 429, "retry_after": 30})).await;
    }
    assert_eq!(generation(&app).await, before, "no pool rebuilt");
    assert_eq!(
        app.listed(&ids[0]).await["cooldown_until"],
        "2026-06-01T00:00:31Z"
    );

    // At the others' deadline they are back, with their counts; ids[0] is not, until its own.
    app.clock.advance_ms(29_000);
    // Any write lets the writer put them back now rather than at its next round.
    app.create_tier("other", json!({"image": 1})).await;
    let draws = draw_chat(&app, 99).await;
    assert!(!draws.contains(&ids[0]), "still cooling");
    let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
    assert_eq!(distinct.len(), 99, "every other key, once");
    for id in draws {
        *served.entry(id).or_default() += 1;
    }
    for id in [&ids[1], &ids[10], &ids[99]] {
        assert_eq!(chat_used(&app, id).await, served[id], "{id}");
    }
    app.clock.advance_ms(1_000);
    assert_eq!(chat_used(&app, &ids[0]).await, 1);
    let draws = draw_chat(&app, 100).await;
    assert!(draws.contains(&ids[0]), "back at its own deadline");
}
