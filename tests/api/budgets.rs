//! Spend budgets: `budget` on keys, `POST /key/{id}/spend` counted once per request id, exact
//! decimals, keys over budget out of the rotation until their monthly reset or a larger budget.

use std::time::{Duration, Instant};

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, TestApp, expect, expect_error};
use crate::process::Server;

/// Unix ms of an RFC 3339 time.
fn at(text: &str) -> i64 {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap()
}

/// A spend body with `amount` written as is (a JSON number's text, never through a float).
fn spend_body(amount: &str, unit: &str, request_id: &str) -> String {
    format!(r#"{{"amount": {amount}, "unit": "{unit}", "request_id": "{request_id}"}}"#)
}

impl TestApp {
    /// A request with the admin token and `body`, JSON text sent as is.
    async fn send_text(&self, method: reqwest::Method, path: &str, body: &str) -> Response {
        self.request(method, path)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    /// A key in `tier` whose budget is the JSON text `budget`: its id.
    async fn budgeted_key(&self, name: &str, tier: &str, budget: &str) -> String {
        let body = format!(
            r#"{{"name": "{name}", "key": "sk-{name}", "tier": "{tier}", "budget": {budget}}}"#
        );
        let response = self.send_text(Method::POST, "/admin/keys", &body).await;
        let created = expect(response, StatusCode::CREATED).await;
        created["id"].as_str().unwrap().to_owned()
    }

    /// `POST /key/{id}/spend` with `token`: the status and the body's exact text.
    async fn spend_as(&self, token: &str, id: &str, body: String) -> (StatusCode, String) {
        let response = self
            .client
            .post(format!("{}/key/{id}/spend", self.address))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_eq!(response.headers()["content-type"], "application/json");
        (status, response.text().await.unwrap())
    }

    /// A spend with the admin token that must be counted or replayed (200): its answer.
    async fn spend(&self, id: &str, amount: &str, unit: &str, request_id: &str) -> Value {
        let (status, text) = self
            .spend_as(ADMIN_TOKEN, id, spend_body(amount, unit, request_id))
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// `PATCH /admin/keys/{id}` with the body's JSON text: status and body.
    async fn patch_text(&self, id: &str, body: &str) -> (StatusCode, Value) {
        let response = self
            .send_text(Method::PATCH, &format!("/admin/keys/{id}"), body)
            .await;
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// The ids `GET /key` serves for `feature` over `n` draws (429s left out).
    async fn served(&self, feature: &str, n: usize) -> Vec<String> {
        let mut served = Vec::new();
        for _ in 0..n {
            if let (StatusCode::OK, body) = self.key(feature).await {
                served.push(body["key_id"].as_str().unwrap().to_owned());
            }
        }
        served
    }

    /// Waits (a bounded time on the real clock: the writer's once-a-second sweep) until
    /// `GET /key` serves `id` for `feature`.
    async fn served_within_seconds(&self, feature: &str, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self
                .served(feature, 2)
                .await
                .iter()
                .any(|served| served == id)
            {
                return;
            }
            assert!(Instant::now() < deadline, "{id} did not come back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn amounts_are_exact_decimals_with_nine_places_written_without_drift() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    let id = app
        .budgeted_key("k", "pro", r#"{"amount": 1, "unit": "usd"}"#)
        .await;
    let listed = app.listed(&id).await;
    assert_eq!(
        (
            &listed["budget"],
            &listed["spent"],
            &listed["remaining"],
            &listed["resets_at"],
            &listed["state"]
        ),
        (
            &json!({"amount": 1, "unit": "usd", "reset_day": null}),
            &json!(0),
            &json!(1),
            &Value::Null,
            &json!("active")
        )
    );
    app.spend(&id, "0.1", "usd", "r-1").await;
    let (status, text) = app
        .spend_as(ADMIN_TOKEN, &id, spend_body("0.2", "usd", "r-2"))
        .await;
    assert_eq!(status, StatusCode::OK);
    // Floats would make it 0.30000000000000004.
    assert!(
        text.contains(r#""spent":0.3,"#) && text.contains(r#""remaining":0.7,"#),
        "{text}"
    );
    let nine = app.spend(&id, "0.000000001", "usd", "r-3").await;
    let (_, text) = app
        .spend_as(ADMIN_TOKEN, &id, spend_body("1e-9", "usd", "r-4"))
        .await;
    assert!(text.contains(r#""spent":0.300000002,"#), "{text}");
    assert_eq!(nine["remaining"], json!(0.699999999));
    // Ten places: refused, naming the field, counting nothing.
    for amount in ["0.0000000001", "1e-10", "0", "-1", "\"0.1\""] {
        let (status, text) = app
            .spend_as(ADMIN_TOKEN, &id, spend_body(amount, "usd", "r-5"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{amount}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"error": "amount must be a number greater than 0 with at most 9 decimal places"})
        );
    }
    // A budget with ten places is refused too, on create and on PATCH.
    let body = r#"{"name": "x", "key": "sk-x", "tier": "pro",
                   "budget": {"amount": 0.0000000001, "unit": "usd"}}"#;
    let response = app.send_text(Method::POST, "/admin/keys", body).await;
    expect_error(
        response,
        StatusCode::BAD_REQUEST,
        "budget.amount must be a number greater than 0 with at most 9 decimal places",
    )
    .await;
    let (status, _) = app
        .patch_text(
            &id,
            r#"{"budget": {"amount": 1.0000000001, "unit": "usd"}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A large amount with nine places keeps all its digits, through PATCH and the listing.
    let (status, patched) = app
        .patch_text(
            &id,
            r#"{"budget": {"amount": 12345678.123456789, "unit": "usd"}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    let listing = app.get("/admin/keys").await.text().await.unwrap();
    assert!(
        listing.contains(r#""amount":12345678.123456789,"#)
            && listing.contains(r#""remaining":12345677.823456787,"#),
        "{listing}"
    );
}

#[tokio::test]
async fn thirty_two_concurrent_replays_of_one_request_id_count_once() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    let id = app
        .budgeted_key("k", "pro", r#"{"amount": 100, "unit": "credits"}"#)
        .await;
    let app = std::sync::Arc::new(app);
    let replays: Vec<_> = (0..32)
        .map(|_| {
            let app = std::sync::Arc::clone(&app);
            let id = id.clone();
            tokio::spawn(async move { app.spend(&id, "2.5", "credits", "same-request").await })
        })
        .collect();
    let mut counted = 0;
    for replay in replays {
        let answer = replay.await.unwrap();
        if answer["duplicate"] == json!(false) {
            counted += 1;
        }
    }
    assert_eq!(counted, 1, "exactly one of the 32 counts");
    let listed = app.listed(&id).await;
    assert_eq!(
        (&listed["spent"], &listed["remaining"]),
        (&json!(2.5), &json!(97.5))
    );
}

#[tokio::test]
async fn a_request_id_is_unique_across_keys() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    let a = app
        .budgeted_key("a", "pro", r#"{"amount": 10, "unit": "usd"}"#)
        .await;
    let b = app
        .budgeted_key("b", "pro", r#"{"amount": 10, "unit": "usd"}"#)
        .await;
    let first = app.spend(&a, "1", "usd", "req-1").await;
    assert_eq!(
        first,
        json!({"key_id": a, "spent": 1, "budget": {"amount": 10, "unit": "usd", "reset_day": null},
               "remaining": 9, "resets_at": null, "duplicate": false})
    );
    // On another key: a duplicate, answered with that key's figures, counting nothing.
    let again = app.spend(&b, "1", "usd", "req-1").await;
    assert_eq!(
        (&again["key_id"], &again["spent"], &again["duplicate"]),
        (&json!(b), &json!(0), &json!(true))
    );
    assert_eq!(app.listed(&a).await["spent"], 1);
    assert_eq!(app.listed(&b).await["spent"], 0);
}

#[tokio::test]
async fn a_key_over_budget_leaves_the_rotation_until_a_larger_budget_brings_it_back() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1000})).await;
    let capped = app
        .budgeted_key("capped", "pro", r#"{"amount": 1, "unit": "usd"}"#)
        .await;
    let other = app.add_key("other", "sk-other", "pro").await;
    let both = app.served("chat", 4).await;
    assert_eq!(both, [&capped, &other, &capped, &other].map(String::clone));

    let spent = app.spend(&capped, "0.6", "usd", "a").await;
    assert_eq!(spent["remaining"], json!(0.4));
    assert_eq!(
        app.served("chat", 2).await.len(),
        2,
        "still in the rotation"
    );
    // Past the budget: remaining is never below 0, and the key leaves the rotation.
    let spent = app.spend(&capped, "0.5", "usd", "b").await;
    assert_eq!(
        (&spent["spent"], &spent["remaining"]),
        (&json!(1.1), &json!(0))
    );
    assert_eq!(app.served("chat", 6).await, vec![other.clone(); 6]);
    let listed = app.listed(&capped).await;
    assert_eq!(
        (&listed["state"], &listed["is_active"]),
        (&json!("over_budget"), &json!(true))
    );
    let health = expect(app.get("/admin/health").await, StatusCode::OK).await;
    assert_eq!(
        (&health["pool_size"], &health["active_keys"]),
        (&json!(2), &json!(1))
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("keypooler_keys_unavailable{state=\"over_budget\"} 1\n")
            && metrics.contains("keypooler_spent_nanos_total{unit=\"usd\"} 1100000000\n"),
        "{metrics}"
    );
    // Its only key over budget: the feature answers 429.
    app.create_tier("solo", json!({"solo": 10})).await;
    let solo = app
        .budgeted_key("solo", "solo", r#"{"amount": 1, "unit": "usd"}"#)
        .await;
    app.spend(&solo, "1", "usd", "c").await;
    assert_eq!(app.key("solo").await.0, StatusCode::TOO_MANY_REQUESTS);

    // A larger budget brings it back at once, in its place in the rotation.
    let (status, patched) = app
        .patch_text(&capped, r#"{"budget": {"amount": 2, "unit": "usd"}}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&patched["spent"], &patched["remaining"], &patched["state"]),
        (&json!(1.1), &json!(0.9), &json!("active"))
    );
    let back = app.served("chat", 4).await;
    assert_eq!(back.iter().filter(|id| **id == capped).count(), 2);
    // No budget at all: served, and a spend is refused (409).
    let (status, patched) = app.patch_text(&capped, r#"{"budget": null}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&patched["budget"], &patched["spent"], &patched["remaining"]),
        (&Value::Null, &json!(0), &Value::Null)
    );
    let (status, text) = app
        .spend_as(ADMIN_TOKEN, &capped, spend_body("1", "usd", "d"))
        .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::CONFLICT, r#"{"error":"key has no budget"}"#)
    );
}

#[tokio::test]
async fn a_monthly_budget_resets_at_midnight_utc_on_its_day_the_28th_of_february_included() {
    let app = TestApp::spawn()
        .await
        .restart_at(at("2026-02-27T12:00:00Z"))
        .await;
    app.create_tier("pro", json!({"chat": 100})).await;
    for day in ["0", "29", "31", "1.5", "\"1\""] {
        let body = format!(
            r#"{{"name": "x", "key": "sk-x", "tier": "pro", "budget": {{"amount": 1, "unit": "usd", "reset_day": {day}}}}}"#
        );
        let response = app.send_text(Method::POST, "/admin/keys", &body).await;
        expect_error(
            response,
            StatusCode::BAD_REQUEST,
            &if day == "1.5" || day.starts_with('"') {
                "budget.reset_day must be an integer".to_owned()
            } else {
                "budget.reset_day must be an integer from 1 to 28 (every month has it)".to_owned()
            },
        )
        .await;
    }
    let id = app
        .budgeted_key(
            "monthly",
            "pro",
            r#"{"amount": 5, "unit": "usd", "reset_day": 28}"#,
        )
        .await;
    let spent = app.spend(&id, "5", "usd", "feb").await;
    assert_eq!(spent["resets_at"], "2026-02-28T00:00:00Z");
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);

    // A millisecond before midnight: still spent.
    app.clock.advance_ms(12 * 3_600_000 - 1);
    assert_eq!(app.listed(&id).await["state"], "over_budget");
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);
    // At 00:00 UTC on the 28th the new period starts from nothing, and the key comes back by
    // itself (the writer's sweep, as for expiry).
    app.clock.advance_ms(1);
    let listed = app.listed(&id).await;
    assert_eq!(
        (&listed["state"], &listed["spent"], &listed["resets_at"]),
        (&json!("active"), &json!(0), &json!("2026-03-28T00:00:00Z"))
    );
    app.served_within_seconds("chat", &id).await;
    let spent = app.spend(&id, "1", "usd", "new-period").await;
    assert_eq!(spent["spent"], 1);

    // Spent again; a restart a month later finds a new period: served at once.
    app.spend(&id, "4", "usd", "new-period-2").await;
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);
    let app = app.restart().await;
    assert_eq!(
        app.key("chat").await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "same period"
    );
    let app = app.restart_at(at("2026-04-02T00:00:00Z")).await;
    assert_eq!(app.key("chat").await.0, StatusCode::OK);
    assert_eq!(app.listed(&id).await["spent"], 0);
}

#[tokio::test]
async fn a_lifetime_budget_never_resets() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    let id = app
        .budgeted_key("k", "pro", r#"{"amount": 1, "unit": "credits"}"#)
        .await;
    app.spend(&id, "1", "credits", "all").await;
    app.clock.advance_ms(400 * 24 * 3_600_000);
    let app = app.restart().await;
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);
    let listed = app.listed(&id).await;
    assert_eq!(
        (&listed["spent"], &listed["resets_at"]),
        (&json!(1), &Value::Null)
    );
}

#[tokio::test]
async fn changing_the_unit_starts_from_nothing_spent_and_a_spend_in_another_unit_is_refused() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    let id = app
        .budgeted_key("k", "pro", r#"{"amount": 10, "unit": "usd"}"#)
        .await;
    app.spend(&id, "4", "usd", "one").await;
    let (status, text) = app
        .spend_as(ADMIN_TOKEN, &id, spend_body("1", "credits", "two"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        text,
        r#"{"error":"unit does not match the key's budget (usd)"}"#
    );
    // Another amount keeps what was spent; another unit starts again from 0.
    let (_, patched) = app
        .patch_text(&id, r#"{"budget": {"amount": 20, "unit": "usd"}}"#)
        .await;
    assert_eq!(patched["spent"], 4);
    let (_, patched) = app
        .patch_text(&id, r#"{"budget": {"amount": 20, "unit": "credits"}}"#)
        .await;
    assert_eq!(
        (&patched["spent"], &patched["remaining"]),
        (&json!(0), &json!(20))
    );
    // The refused request id was not kept: it counts once the unit matches.
    assert_eq!(app.spend(&id, "1", "credits", "two").await["spent"], 1);
}

#[tokio::test]
async fn spends_are_checked_refused_and_scoped() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    app.create_tier("free", json!({"chat": 100})).await;
    let id = app
        .budgeted_key("k", "pro", r#"{"amount": 10, "unit": "usd"}"#)
        .await;
    let plain = app.add_key("plain", "sk-plain", "pro").await;
    let (status, text) = app
        .spend_as(ADMIN_TOKEN, "nope", spend_body("1", "usd", "x"))
        .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::NOT_FOUND, r#"{"error":"key not found: nope"}"#)
    );
    let (status, _) = app
        .spend_as(ADMIN_TOKEN, &plain, spend_body("1", "usd", "x"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    for (body, error) in [
        (
            spend_body("1", "eur", "x"),
            "unit must be \"usd\" or \"credits\"",
        ),
        (
            spend_body("1", "usd", ""),
            "request_id must be 1 to 128 characters",
        ),
        (
            spend_body("1", "usd", &"r".repeat(129)),
            "request_id must be 1 to 128 characters",
        ),
        (
            r#"{"amount": 1, "unit": "usd"}"#.to_owned(),
            "missing field `request_id`",
        ),
    ] {
        let (status, text) = app.spend_as(ADMIN_TOKEN, &id, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"error": error})
        );
    }
    assert_eq!(
        app.spend(&id, "1", "usd", &"r".repeat(128)).await["spent"],
        1
    );

    // A consumer spends on keys of its tiers only.
    let (_, pro) = app.consumer_of("pro-svc", "pro").await;
    let (_, free) = app.consumer_of("free-svc", "free").await;
    let (status, _) = app.spend_as(&pro, &id, spend_body("1", "usd", "c1")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, text) = app.spend_as(&free, &id, spend_body("1", "usd", "c2")).await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::FORBIDDEN,
            r#"{"error":"key not in this consumer's tiers"}"#
        )
    );
    let (status, _) = app
        .spend_as("wrong-token", &id, spend_body("1", "usd", "c3"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.listed(&id).await["spent"], 2);
}

/// A spend answered 200 survives kill -9, and so does its request id: a replay after the
/// restart is a duplicate and counts nothing.
#[test]
fn acknowledged_spends_and_their_request_ids_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let key = crate::helpers::hex_key(0x42);
    let server = Server::start(dir.path(), &key);
    server.create_tier("pro", "chat", 100);
    let id = server.add_key(&json!({"name": "k", "key": "sk-k", "tier": "pro",
                                    "budget": {"amount": 1, "unit": "usd"}}));
    let spend = |server: &Server, request_id: &str| {
        let body = json!({"amount": 0.4, "unit": "usd", "request_id": request_id});
        let (status, answer) = server
            .request("POST", &format!("/key/{id}/spend"), Some(&body))
            .unwrap();
        assert_eq!(status, 200, "{answer}");
        answer
    };
    assert_eq!(spend(&server, "before")["duplicate"], false);
    server.kill();

    let server = Server::start(dir.path(), &key);
    let replay = spend(&server, "before");
    assert_eq!(
        (&replay["duplicate"], &replay["spent"]),
        (&json!(true), &json!(0.4))
    );
    assert_eq!(spend(&server, "after")["spent"], 0.8);
    let over = spend(&server, "over");
    assert_eq!(
        (&over["spent"], &over["remaining"]),
        (&json!(1.2), &json!(0))
    );
    server.kill();
    // Over budget after the crash too: not served.
    let server = Server::start(dir.path(), &key);
    let (status, _) = server.request("GET", "/key?feature=chat", None).unwrap();
    assert_eq!(status, 429);
    assert_eq!(spend(&server, "over")["duplicate"], true);
}

/// The table of spends' request ids at 1,000,000 spends (35 days of ~0.33 spends a second), as
/// the writer fills it: batches of 1,024 spends, each committed, then pruned once 35 days have
/// passed. Prints the file's size per spend (figures in PERFORMANCE.md).
#[test]
#[ignore = "a measurement: cargo test --test api spend_request_ids_at_a_million -- --ignored --nocapture"]
fn spend_request_ids_at_a_million() {
    use keypooler::crypto::{EncryptionKey, Sealer};
    use keypooler::store::{Store, spend_tag};
    use keypooler::writer::SPEND_RETENTION_MS;

    const SPENDS: usize = 1_000_000;
    const BATCH: usize = 1_024;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.redb");
    let sealer = Sealer::new(&EncryptionKey::generate());
    let store = Store::open(&path, &sealer).unwrap();
    let empty = std::fs::metadata(&path).unwrap().len();
    let started = Instant::now();
    for batch in 0..SPENDS.div_ceil(BATCH) {
        let txn = store.begin().unwrap();
        for i in batch * BATCH..((batch + 1) * BATCH).min(SPENDS) {
            // 36-character ids, as UUIDs are; the stored tag is 16 bytes whatever the id.
            let id = format!("req-{i:032}");
            txn.put_spend(&spend_tag(&id), i as i64).unwrap();
        }
        txn.prune_spends(0, BATCH).unwrap();
        txn.commit().unwrap();
    }
    let full = std::fs::metadata(&path).unwrap().len();
    println!(
        "{SPENDS} spends in {:.1} s: file {empty} -> {full} bytes, {:.1} bytes per spend",
        started.elapsed().as_secs_f64(),
        (full - empty) as f64 / SPENDS as f64
    );
    // 35 days on: every id is pruned, batch by batch, and the file's space is reused.
    let mut pruned = 0;
    while pruned < SPENDS {
        let txn = store.begin().unwrap();
        let now = SPENDS as i64 + SPEND_RETENTION_MS;
        let removed = txn
            .prune_spends(now - SPEND_RETENTION_MS + 1, BATCH)
            .unwrap();
        txn.commit().unwrap();
        assert!(removed > 0);
        pruned += removed;
    }
    let txn = store.begin().unwrap();
    assert_eq!(txn.spend_counted_at(&spend_tag("req-0")).unwrap(), None);
    drop(txn);
    println!(
        "pruned all: file {} bytes",
        std::fs::metadata(&path).unwrap().len()
    );
}

/// A backup taken after a spend holds its request id: replayed on a server started from the
/// backup, the spend is a duplicate.
#[tokio::test]
async fn a_server_restored_from_a_backup_still_recognises_a_spend() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100})).await;
    let id = app
        .budgeted_key("k", "pro", r#"{"amount": 5, "unit": "usd"}"#)
        .await;
    app.spend(&id, "1.25", "usd", "backed-up").await;
    let response = app.get("/admin/backup").await;
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.bytes().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restored.redb");
    std::fs::write(&path, &bytes).unwrap();
    let restored = TestApp::on_database_at(dir, path, &app.key_hex, app.wall.unix_now_ms()).await;
    let replay = restored.spend(&id, "1.25", "usd", "backed-up").await;
    assert_eq!(
        (&replay["duplicate"], &replay["spent"]),
        (&json!(true), &json!(1.25))
    );
}

#[tokio::test]
async fn over_budget_comes_after_exhausted_and_before_cooling_in_the_one_key_state() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1000})).await;
    let id = app
        .budgeted_key("capped", "pro", r#"{"amount": 1, "unit": "usd"}"#)
        .await;
    let state = async || app.listed(&id).await["state"].clone();
    let exhausted = json!({"until": "2026-06-02T00:00:00Z"});
    let path = format!("/key/{id}/exhausted");
    expect(app.post(&path, &exhausted).await, StatusCode::OK).await;
    app.spend(&id, "1", "usd", "all").await;
    assert_eq!(state().await, "exhausted");
    let cleared = json!({"until": "2000-01-01T00:00:00Z"});
    expect(app.post(&path, &cleared).await, StatusCode::OK).await;
    assert_eq!(state().await, "over_budget");
    let over = expect(
        app.get("/admin/keys?state=over_budget").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(over.as_array().unwrap().len(), 1, "{over}");
    // Cooling too: still over budget, until a larger budget leaves the cooldown showing.
    let report = format!("/key/{id}/report");
    let answer = expect(
        app.post(&report, &json!({"status": 429})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer["state"], "over_budget", "{answer}");
    let (status, _) = app
        .patch_text(&id, r#"{"budget": {"amount": 5, "unit": "usd"}}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state().await, "cooling");
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_key_spent_from_keeps_its_health_in_the_rotation() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1000})).await;
    let spent = app
        .budgeted_key("spent", "pro", r#"{"amount": 10, "unit": "usd"}"#)
        .await;
    let other = app.add_key("other", "sk-other", "pro").await;
    // A spend that leaves the key in the rotation, then a 429 reported of it: GET /key skips
    // it (the pools serve the entry the report cooled).
    app.spend(&spent, "1", "usd", "one").await;
    let report = format!("/key/{spent}/report");
    expect(
        app.post(&report, &json!({"status": 429})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(app.served("chat", 4).await, vec![other.clone(); 4]);
    // And a spend while it cools leaves it cooling.
    app.spend(&spent, "1", "usd", "two").await;
    assert_eq!(app.served("chat", 4).await, vec![other.clone(); 4]);
    assert_eq!(app.listed(&spent).await["spent"], json!(2));
    app.clock.advance_ms(1_000);
    assert!(app.served("chat", 4).await.contains(&spent));
}
