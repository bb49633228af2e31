//! Hostile input: structured fuzzing of the admin JSON bodies (tiers, keys, `PATCH`)
//! through the real router and writer (tower's `oneshot`, no socket, for speed), over a real
//! redb file. Hostile bodies must get a 4xx (or a 2xx where they happen to be valid), never a
//! 5xx or a panic, and never an error that repeats a key value; valid bodies must get a 2xx.
//!
//! Cases per property: `PROPTEST_CASES` (default 256 each, see `CASES`).

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt;

use keypooler::app::Options;

use crate::helpers::{ADMIN_TOKEN, hex_key, start_app};

/// Marks key values and secrets: no response other than `GET /key` may contain it.
const MARK: &str = "SECRET-";

/// Cases per property: `PROPTEST_CASES` if set, else 256.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

/// The router over a fresh database, with one tier (`fuzz`, feature `chat`) to add keys to.
struct Fixture {
    /// How many hostile bodies got each status, and each kind of error: shows how deep the
    /// cases reach (parsing, validation, the writer).
    seen: std::sync::Mutex<std::collections::BTreeMap<String, u32>>,
    runtime: tokio::runtime::Runtime,
    router: keypooler::http::Routed,
    _app: keypooler::app::App,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = start_app(
            &dir.path().join("pool.redb"),
            &hex_key(0x3c),
            Options::default(),
        );
        let router = keypooler::http::router(app.state.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let fixture = Self {
            seen: Default::default(),
            runtime,
            router,
            _app: app,
            _dir: dir,
        };
        let tier = json!({"name": "fuzz", "features": {"chat": 5}}).to_string();
        assert_eq!(
            fixture
                .call(Method::POST, "/admin/tiers", tier.into_bytes())
                .0,
            StatusCode::CREATED
        );
        fixture
    }

    fn call(&self, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        self.runtime.block_on(async {
            let response = self.router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, bytes.to_vec())
        })
    }

    /// Sends `body`; the answer must be a JSON 2xx or 4xx, and a 4xx must not repeat a key.
    fn hostile(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<StatusCode, TestCaseError> {
        let (status, answer) = self.call(method, path, body);
        prop_assert!(
            status.is_success() || status.is_client_error(),
            "{status}: {}",
            String::from_utf8_lossy(&answer)
        );
        let answer: Value = serde_json::from_slice(&answer).expect("every answer is JSON");
        let mut kind = status.as_str().to_owned();
        if status.is_client_error() {
            let message = answer["error"].as_str().expect("an error message");
            prop_assert!(!message.contains(MARK), "a key value was echoed: {message}");
            prop_assert!(
                message.chars().count() < 1_000,
                "an unbounded error: {message}"
            );
            let words: Vec<&str> = message.split_whitespace().take(3).collect();
            kind = format!("{status} {}", words.join(" "));
        }
        *self.seen.lock().unwrap().entry(kind).or_default() += 1;
        Ok(status)
    }

    fn tier_count(&self) -> usize {
        let (status, body) = self.call(Method::GET, "/admin/tiers", Vec::new());
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice::<Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    }
}

/// `{"k": v, ...}` from keys and values already in JSON text.
fn object(fields: &[(String, String)]) -> String {
    let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", fields.join(", "))
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// Numbers JSON allows and keypooler must refuse or accept: huge, negative, zero, fractional,
/// beyond every integer type, beyond f64.
fn number() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-0",
            "1",
            "-1",
            "1.0",
            "1.5",
            "1e2",
            "-1e400",
            "1e400",
            "0.000001",
            "16777215",
            "16777216",
            "2147483647",
            "2147483648",
            "31622400",
            "31622401",
            "4294967295",
            "4294967296",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "123456789012345678901234567890",
        ])
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        "[1-9][0-9]{19,300}",
    ]
    .boxed()
}

/// Strings: any Unicode (control characters, astral planes, RTL marks), lone surrogate
/// escapes, long ones.
fn string() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>().prop_map(|s| quoted(&s)),
        "\\PC{0,40}".prop_map(|s| quoted(&s)),
        prop::sample::select(vec![
            r#""""#,
            r#"" ""#,
            r#""\u0000""#,
            r#""\ud800""#,
            r#""\udfff\ud800""#,
            r#""\u202e\u0007bell""#,
            r#""🦀🦀🦀""#,
            r#""\n\t""#,
        ])
        .prop_map(str::to_owned),
        (0usize..70_000).prop_map(|n| quoted(&"é".repeat(n))),
    ]
    .boxed()
}

/// A key value or a bound secret: usually marked, so an error that repeats it is caught.
fn secret() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "\\PC{0,24}".prop_map(|s| quoted(&format!("{MARK}{s}"))),
        1 => string(),
    ]
    .boxed()
}

/// Any JSON value, nested a few levels.
fn value() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        number(),
        string(),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((string(), inner), 0..6).prop_map(|fields| object(&fields)),
        ]
    })
    .boxed()
}

/// A feature's limit: a number, an object with hostile fields, or anything.
fn limit() -> BoxedStrategy<String> {
    prop_oneof![
        number(),
        (number(), prop::option::of(number())).prop_map(|(rate, window)| {
            let mut fields = vec![(quoted("rate_limit"), rate)];
            if let Some(window) = window {
                fields.push((quoted("window_seconds"), window));
            }
            object(&fields)
        }),
        value(),
    ]
    .boxed()
}

/// A field that is usually of the right shape and sometimes anything at all.
fn or_anything(right: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![3 => right, 1 => value()].boxed()
}

/// Optional fields, some left out, plus unknown and duplicated ones.
fn body(fields: Vec<(&'static str, BoxedStrategy<String>)>) -> BoxedStrategy<String> {
    let fields: Vec<BoxedStrategy<Option<(String, String)>>> = fields
        .into_iter()
        .map(|(name, strategy)| {
            prop::option::weighted(0.9, strategy.prop_map(move |v| (quoted(name), v))).boxed()
        })
        .collect();
    (fields, prop::collection::vec((string(), value()), 0..2))
        .prop_map(|(fields, extra)| {
            let mut all: Vec<(String, String)> = fields.into_iter().flatten().collect();
            all.extend(extra);
            object(&all)
        })
        .boxed()
}

fn hostile_tier() -> BoxedStrategy<String> {
    let features = prop::collection::vec((string(), limit()), 0..5)
        .prop_map(|fields| object(&fields))
        .boxed();
    prop_oneof![
        8 => body(vec![
            ("name", or_anything(string())),
            ("description", or_anything(string())),
            ("features", or_anything(features)),
        ]),
        1 => value(),
    ]
    .boxed()
}

fn hostile_key() -> BoxedStrategy<String> {
    let secrets = prop::collection::vec((string(), secret()), 0..4)
        .prop_map(|fields| object(&fields))
        .boxed();
    let instant = prop_oneof![
        string(),
        Just(quoted("2099-01-01T00:00:00Z")),
        Just(quoted("+275760-09-13T00:00:00Z")),
        Just(quoted("1969-12-31T23:59:59.999999999-23:59")),
    ]
    .boxed();
    prop_oneof![
        8 => body(vec![
            ("name", or_anything(string())),
            ("key", or_anything(secret())),
            ("tier", or_anything(prop_oneof![Just(quoted("fuzz")), string()].boxed())),
            ("expires_at", or_anything(instant)),
            ("metadata", value()),
            ("secrets", or_anything(secrets)),
        ]),
        1 => value(),
    ]
    .boxed()
}

/// Bytes that are not JSON, or JSON with invalid UTF-8 spliced in.
fn hostile_bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        (
            hostile_key(),
            any::<prop::sample::Index>(),
            prop::collection::vec(0x80u8..=0xff, 1..4)
        )
            .prop_map(|(text, at, bad)| {
                let mut bytes = text.into_bytes();
                let at = at.index(bytes.len() + 1);
                bytes.splice(at..at, bad);
                bytes
            }),
    ]
    .boxed()
}

fn run<T: std::fmt::Debug>(
    name: &str,
    strategy: BoxedStrategy<T>,
    test: impl Fn(T) -> Result<(), TestCaseError>,
) -> u32 {
    let cases = cases();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(err) = runner.run(&strategy, test) {
        panic!("{name}: {err}");
    }
    cases
}

#[test]
fn hostile_admin_bodies_get_a_4xx_never_a_5xx_or_a_panic() {
    let fixture = Fixture::new();
    let created = AtomicUsize::new(0);
    let mut tried = run("POST /admin/tiers", hostile_tier(), |body| {
        let status = fixture.hostile(Method::POST, "/admin/tiers", body.into_bytes())?;
        if status == StatusCode::CREATED {
            created.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    tried += run("PATCH /admin/tiers", hostile_tier(), |body| {
        fixture.hostile(Method::PATCH, "/admin/tiers", body.into_bytes())?;
        Ok(())
    });
    tried += run("POST /admin/keys", hostile_key(), |body| {
        fixture.hostile(Method::POST, "/admin/keys", body.into_bytes())?;
        Ok(())
    });
    tried += run("bytes", hostile_bytes(), |body| {
        for path in ["/admin/tiers", "/admin/keys"] {
            fixture.hostile(Method::POST, path, body.clone())?;
        }
        fixture.hostile(Method::PATCH, "/admin/tiers", body)?;
        Ok(())
    });
    // Exactly the tiers that were answered 201 exist (plus the fixture's).
    assert_eq!(fixture.tier_count(), 1 + created.load(Ordering::Relaxed));
    println!("hostile admin bodies: {tried} cases");
    for (kind, count) in fixture.seen.lock().unwrap().iter() {
        println!("  {count:>6}  {kind}");
    }
}

#[test]
fn valid_admin_bodies_get_a_2xx() {
    let fixture = Fixture::new();
    let serial = AtomicUsize::new(0);
    let name = "[A-Za-z0-9][A-Za-z0-9 ._-]{0,30}";
    let limit = prop_oneof![
        (1u32..=2_147_483_647).prop_map(|n| json!(n)),
        (1u32..=2_147_483_647, 1u32..=31_622_400)
            .prop_map(|(r, w)| json!({"rate_limit": r, "window_seconds": w})),
    ];
    let features = prop::collection::btree_map(name, limit, 1..5).boxed();
    let tier = (name, features.clone(), prop::option::of("\\PC{0,64}")).boxed();
    let mut tried = run("valid tiers", tier, |(name, features, description)| {
        let n = serial.fetch_add(1, Ordering::Relaxed);
        let body = json!({"name": format!("{name}-{n}"), "features": features, "description": description});
        let (status, answer) =
            fixture.call(Method::POST, "/admin/tiers", body.to_string().into_bytes());
        prop_assert_eq!(
            status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&answer)
        );
        let patch = json!({"name": format!("{name}-{n}"), "features": features});
        let (status, _) = fixture.call(
            Method::PATCH,
            "/admin/tiers",
            patch.to_string().into_bytes(),
        );
        prop_assert_eq!(status, StatusCode::OK);
        Ok(())
    });
    let key = (
        name,
        "[ -~]{1,64}",
        prop::collection::btree_map("[a-z][a-z0-9_-]{0,15}", "\\PC{0,32}", 0..4),
        prop::option::of(Just("2099-01-01T00:00:00Z")),
    )
        .boxed();
    tried += run("valid keys", key, |(name, value, secrets, expires_at)| {
        let mut body = json!({
            "name": name, "key": value, "tier": "fuzz", "secrets": secrets,
            "metadata": {"team": name, "n": 1, "nested": {"list": [1, "two", null]}},
        });
        if let Some(at) = expires_at {
            body["expires_at"] = json!(at);
        }
        let (status, answer) =
            fixture.call(Method::POST, "/admin/keys", body.to_string().into_bytes());
        prop_assert_eq!(
            status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&answer)
        );
        Ok(())
    });
    println!("valid admin bodies: {tried} cases");
}

/// Nesting far past serde_json's recursion limit (128) is a 400, not a stack overflow.
#[test]
fn ten_thousand_nested_arrays_are_refused_without_overflowing_the_stack() {
    let fixture = Fixture::new();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let bodies = [
        (Method::POST, "/admin/tiers", deep.clone()),
        (
            Method::POST,
            "/admin/tiers",
            format!(r#"{{"name": "deep", "features": {{"chat": {deep}}}}}"#),
        ),
        (
            Method::PATCH,
            "/admin/tiers",
            format!(r#"{{"name": "fuzz", "features": {deep_object}}}"#),
        ),
        (
            Method::POST,
            "/admin/keys",
            format!(
                r#"{{"name": "k", "key": "{MARK}x", "tier": "fuzz", "metadata": {{"m": {deep}}}}}"#
            ),
        ),
        (Method::POST, "/admin/keys", "[".repeat(500_000)),
    ];
    for (method, path, body) in bodies {
        let (status, answer) = fixture.call(method, path, body.into_bytes());
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(&answer)
        );
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert!(answer["error"].is_string(), "{answer}");
    }
    assert_eq!(fixture.tier_count(), 1);
}

/// Strings of a mebibyte: a name is refused by its length, a key value is kept whole, and one
/// byte past the body limit is a 413.
#[test]
fn mebibyte_strings_are_refused_or_kept_whole() {
    let fixture = Fixture::new();
    let huge = "x".repeat(keypooler::http::BODY_LIMIT - 100);
    let name = json!({"name": huge, "features": {"chat": 1}}).to_string();
    let (status, answer) = fixture.call(Method::POST, "/admin/tiers", name.into_bytes());
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        serde_json::from_slice::<Value>(&answer).unwrap(),
        json!({"error": "name is longer than 256 characters"})
    );
    let value = format!("{MARK}{huge}");
    let key = json!({"name": "big", "key": value, "tier": "fuzz"}).to_string();
    let (status, _) = fixture.call(Method::POST, "/admin/keys", key.into_bytes());
    assert_eq!(status, StatusCode::CREATED);
    let (status, served) = fixture.call(Method::GET, "/key?feature=chat", Vec::new());
    assert_eq!(status, StatusCode::OK);
    let served: Value = serde_json::from_slice(&served).unwrap();
    assert_eq!(served["value"].as_str().unwrap(), value);
    let over = format!(
        r#"{{"name": "{}"}}"#,
        "y".repeat(keypooler::http::BODY_LIMIT)
    );
    let (status, _) = fixture.call(Method::POST, "/admin/keys", over.into_bytes());
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}
