//! `/metrics`: exact counts after known calls, bounded cardinality, where it is served, who may
//! read it and what each reader sees (aggregates for anyone, each key's budget only with
//! `METRICS_TOKEN`). Each `TestApp` owns its recorder, so counts here are exact even though the
//! tests run in parallel in one process.

use std::collections::BTreeMap;

use keypooler::app::Options;
use keypooler::broker::{KeyBody, Limit, NewKey, TierSpec};
use keypooler::config::MetricsConfig;
use keypooler::http::CONCURRENT_SCRAPES;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, TestApp, hex_key, start_app};
use crate::process::{Launch, Server, TOKEN, free_port, http};

/// One sample of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: String) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(parse_sample)
            .collect();
        Self { text, samples }
    }

    /// The value of the series `name` with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut found = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == wanted);
        let sample = found.next()?;
        assert!(found.next().is_none(), "{name} {labels:?} appears twice");
        Some(sample.value)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?} in\n{}", self.text))
    }

    fn named(&self, name: &str) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
    let value = value
        .parse()
        .unwrap_or_else(|_| panic!("bad value: {line}"));
    let Some((name, rest)) = series.split_once('{') else {
        return Sample {
            name: series.to_owned(),
            labels: BTreeMap::new(),
            value,
        };
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.strip_suffix('}').expect("labels end with }").chars();
    loop {
        let label: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if label.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "{line}");
        let mut text = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => text.push('\n'),
                    Some(other) => text.push(other),
                    None => panic!("dangling escape: {line}"),
                },
                '"' => break,
                c => text.push(c),
            }
        }
        labels.insert(label.trim_start_matches(',').to_owned(), text);
    }
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// The token of the apps started with [`with_token`].
const SCRAPE_TOKEN: &str = "scrape-token-0123456789";

/// `/metrics` on the main port behind [`SCRAPE_TOKEN`]: each key's budget is listed.
fn with_token() -> MetricsConfig {
    MetricsConfig {
        token: Some(SecretString::from(SCRAPE_TOKEN)),
        ..MetricsConfig::default()
    }
}

/// A scrape with no token (public `/metrics`).
async fn scrape(app: &TestApp) -> Scrape {
    scrape_as(app, None).await
}

async fn scrape_as(app: &TestApp, token: Option<&str>) -> Scrape {
    let mut request = app.client.get(format!("{}/metrics", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Scrape::parse(response.text().await.unwrap())
}

const KEY: &str = "keypooler_key_requests_total";
const HTTP: &str = "keypooler_http_requests_total";

#[tokio::test]
async fn a_known_sequence_of_calls_gives_exact_counts_histograms_and_budgets() {
    // Per-key budgets are listed only behind a token.
    let app = TestApp::spawn_with_metrics(with_token()).await;
    app.create_tier(
        "pro",
        json!({ "chat": 2, "img": { "rate_limit": 5, "window_seconds": 10 } }),
    )
    .await;
    let refused = app
        .post(
            "/admin/tiers",
            &json!({ "name": "pro", "features": { "chat": 1 } }),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let first = app.add_key("first \"quoted\" key", "sk-first", "pro").await;
    let second = app.add_key("second", "sk-second", "pro").await;

    for _ in 0..4 {
        assert_eq!(app.key("chat").await.0, StatusCode::OK);
    }
    assert_eq!(app.key("chat").await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.key("img").await.0, StatusCode::OK);
    assert_eq!(app.key("no-such-feature").await.0, StatusCode::NOT_FOUND);
    let (bad_token, _) = app.key_as("wrong", "chat").await;
    assert_eq!(bad_token, StatusCode::UNAUTHORIZED);
    let no_header = app
        .client
        .get(format!("{}/key?feature=whatever", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(no_header.status(), StatusCode::UNAUTHORIZED);
    let missing = app.get("/key").await;
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);

    let m = scrape_as(&app, Some(SCRAPE_TOKEN)).await;
    let outcome = |feature, outcome| m.get(KEY, &[("feature", feature), ("outcome", outcome)]);
    assert_eq!(outcome("chat", "served"), 4.0);
    assert_eq!(outcome("chat", "spent"), 1.0);
    assert_eq!(outcome("chat", "unauthorized"), 1.0);
    assert_eq!(outcome("chat", "forbidden"), 0.0);
    assert_eq!(outcome("img", "served"), 1.0);
    assert_eq!(outcome("unknown", "unknown_feature"), 1.0);
    assert_eq!(outcome("unknown", "unauthorized"), 1.0);
    assert_eq!(
        m.value(KEY, &[("feature", "chat"), ("outcome", "unknown_feature")]),
        None
    );
    assert_eq!(
        m.value(KEY, &[("feature", "unknown"), ("outcome", "served")]),
        None
    );

    let key_route = |status| {
        m.get(
            HTTP,
            &[("route", "/key"), ("method", "GET"), ("status", status)],
        )
    };
    assert_eq!(key_route("2xx"), 5.0);
    assert_eq!(key_route("4xx"), 5.0);
    assert_eq!(
        m.get(
            HTTP,
            &[
                ("route", "/admin/tiers"),
                ("method", "POST"),
                ("status", "4xx")
            ]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            HTTP,
            &[
                ("route", "/admin/keys"),
                ("method", "POST"),
                ("status", "2xx")
            ]
        ),
        2.0
    );

    // The latency histogram of GET /key: 10 samples, buckets from 50 µs to 1 s, cumulative.
    const DURATION: &str = "keypooler_http_request_duration_seconds";
    let labels = [("route", "/key"), ("method", "GET")];
    assert_eq!(m.get(&format!("{DURATION}_count"), &labels), 10.0);
    assert!(m.get(&format!("{DURATION}_sum"), &labels) > 0.0);
    let mut buckets: Vec<(f64, f64)> = m
        .named(&format!("{DURATION}_bucket"))
        .filter(|s| s.labels["route"] == "/key")
        .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(buckets.first().unwrap().0, 0.00005);
    assert_eq!(buckets[buckets.len() - 2].0, 1.0);
    assert_eq!(*buckets.last().unwrap(), (f64::INFINITY, 10.0));
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");

    // Each key served chat twice (round robin, limit 2) and one of them img once.
    const USED: &str = "keypooler_key_budget_used";
    const LIMIT: &str = "keypooler_key_budget_limit";
    for (id, name) in [(&first, "first \"quoted\" key"), (&second, "second")] {
        let labels = [
            ("key_id", id.as_str()),
            ("key_name", name),
            ("feature", "chat"),
        ];
        assert_eq!(m.get(USED, &labels), 2.0);
        assert_eq!(m.get(LIMIT, &labels), 2.0);
        let img = [
            ("key_id", id.as_str()),
            ("key_name", name),
            ("feature", "img"),
        ];
        assert_eq!(m.get(LIMIT, &img), 5.0);
    }
    let img_used: f64 = m
        .named(USED)
        .filter(|s| s.labels["feature"] == "img")
        .map(|s| s.value)
        .sum();
    assert_eq!(img_used, 1.0);
    // And per tier: the two keys' uses and limits, summed.
    const TIER_USED: &str = "keypooler_tier_budget_used";
    const TIER_LIMIT: &str = "keypooler_tier_budget_limit";
    let tier = |feature| [("tier", "pro"), ("feature", feature)];
    assert_eq!(m.get(TIER_USED, &tier("chat")), 4.0);
    assert_eq!(m.get(TIER_LIMIT, &tier("chat")), 4.0);
    assert_eq!(m.get(TIER_USED, &tier("img")), 1.0);
    assert_eq!(m.get(TIER_LIMIT, &tier("img")), 10.0);

    // Pool and writer state.
    assert_eq!(m.get("keypooler_pool_keys", &[("tier", "pro")]), 2.0);
    assert_eq!(m.get("keypooler_pool_active_keys", &[("tier", "pro")]), 2.0);
    assert_eq!(m.get("keypooler_pool_features", &[]), 2.0);
    // Start-up, the tier and the two keys; the refused tier changed nothing and built nothing.
    assert_eq!(m.get("keypooler_snapshot_generation", &[]), 4.0);
    assert!(m.get("keypooler_snapshot_built_timestamp_seconds", &[]) > 1.7e9);
    assert_eq!(m.get("keypooler_writer_queue_depth", &[]), 0.0);
    const COMMANDS: &str = "keypooler_writer_commands_total";
    let command = |kind, outcome| m.get(COMMANDS, &[("kind", kind), ("outcome", outcome)]);
    assert_eq!(command("create_tier", "applied"), 1.0);
    assert_eq!(command("create_tier", "refused"), 1.0);
    assert_eq!(command("add_key", "applied"), 2.0);
    assert_eq!(command("delete_key", "applied"), 0.0);
    assert_eq!(
        m.get("keypooler_writer_commit_duration_seconds_count", &[]),
        4.0
    );

    // Budgets are read at scrape time: a window that ended reads 0, a deleted key vanishes, and
    // a path parameter is labelled by its route template.
    app.clock.advance_ms(60_000);
    let deleted = app.delete(&format!("/admin/keys/{first}")).await;
    assert_eq!(deleted.status(), StatusCode::OK);
    let m = scrape_as(&app, Some(SCRAPE_TOKEN)).await;
    let labels = [
        ("key_id", second.as_str()),
        ("key_name", "second"),
        ("feature", "chat"),
    ];
    assert_eq!(m.get(USED, &labels), 0.0);
    assert!(!m.text.contains(&first), "a deleted key's series remain");
    assert_eq!(m.get("keypooler_pool_keys", &[("tier", "pro")]), 1.0);
    assert_eq!(
        m.get(
            HTTP,
            &[
                ("route", "/admin/keys/{id}"),
                ("method", "DELETE"),
                ("status", "2xx")
            ]
        ),
        1.0
    );
    assert_eq!(
        m.get(COMMANDS, &[("kind", "delete_key"), ("outcome", "applied")]),
        1.0
    );
}

#[tokio::test]
async fn ten_thousand_random_feature_names_add_no_series() {
    let app = TestApp::spawn().await;
    app.create_tier("base", json!({ "chat": 10 })).await;
    // One unknown feature first: the first 404 of GET /key creates its request series.
    assert_eq!(app.key("warm-up").await.0, StatusCode::NOT_FOUND);
    let before = scrape(&app).await;

    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..20 {
        let client = app.client.clone();
        let url = format!("{}/key", app.address);
        tasks.spawn(async move {
            for i in 0..500 {
                let feature = format!("random-{worker}-{i}-{}", rand::random::<u64>());
                let response = client
                    .get(&url)
                    .query(&[("feature", &feature)])
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::NOT_FOUND);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }

    let after = scrape(&app).await;
    // The scrape of `before` itself added the /metrics request series; nothing else is new.
    let series = |m: &Scrape| {
        m.samples
            .iter()
            .filter(|s| s.labels.get("route").map(String::as_str) != Some("/metrics"))
            .count()
    };
    assert_eq!(series(&after), series(&before));
    assert!(!after.text.contains("random-"));
    assert_eq!(
        after.get(
            KEY,
            &[("feature", "unknown"), ("outcome", "unknown_feature")]
        ),
        10_001.0
    );
}

fn metrics_config(token: Option<&str>) -> MetricsConfig {
    MetricsConfig {
        port: Some(1),
        token: token.map(|t| SecretString::from(t.to_owned())),
        ..MetricsConfig::default()
    }
}

#[tokio::test]
async fn metrics_port_moves_the_endpoint_and_metrics_token_guards_it() {
    let app = TestApp::spawn_with_metrics(metrics_config(Some("scrape-token"))).await;
    let scrape_at = app.metrics_address.clone().unwrap();
    assert_eq!(app.get("/metrics").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);

    let url = format!("{scrape_at}/metrics");
    let no_token = app.client.get(&url).send().await.unwrap();
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    for wrong in [ADMIN_TOKEN, "scrape-tokem", "scrape-token-longer"] {
        let response = app
            .client
            .get(&url)
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{wrong}");
    }
    let ok = app
        .client
        .get(&url)
        .header("authorization", "bearer scrape-token")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(ok.text().await.unwrap().contains("keypooler_build_info"));
    // The metrics listener serves nothing else.
    let other = app
        .client
        .get(format!("{scrape_at}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn without_a_token_metrics_is_public_on_the_main_port() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn per_key_series_can_be_turned_off_and_metrics_entirely() {
    let app = TestApp::spawn_with_metrics(MetricsConfig {
        per_key: false,
        ..with_token()
    })
    .await;
    app.create_tier("pro", json!({ "chat": 2 })).await;
    app.add_key("k", "sk-k", "pro").await;
    assert_eq!(app.key("chat").await.0, StatusCode::OK);
    let m = scrape_as(&app, Some(SCRAPE_TOKEN)).await;
    assert_eq!(
        m.get(KEY, &[("feature", "chat"), ("outcome", "served")]),
        1.0
    );
    assert!(!m.text.contains("keypooler_key_budget"));
    assert_eq!(
        m.get(
            "keypooler_tier_budget_used",
            &[("tier", "pro"), ("feature", "chat")]
        ),
        1.0
    );

    let off = TestApp::spawn_with_metrics(MetricsConfig {
        enabled: false,
        ..MetricsConfig::default()
    })
    .await;
    off.create_tier("pro", json!({ "chat": 2 })).await;
    off.add_key("k", "sk-k", "pro").await;
    assert_eq!(off.key("chat").await.0, StatusCode::OK);
    assert_eq!(off.get("/metrics").await.status(), StatusCode::NOT_FOUND);
}

/// Every series the Grafana dashboard queries is one the server exposes.
#[tokio::test]
async fn the_dashboard_queries_only_series_that_exist() {
    let app = TestApp::spawn_with_metrics(with_token()).await;
    app.create_tier("pro", json!({ "chat": 2 })).await;
    app.add_key("k", "sk-k", "pro").await;
    assert_eq!(app.key("chat").await.0, StatusCode::OK);
    let m = scrape_as(&app, Some(SCRAPE_TOKEN)).await;

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queried = std::collections::BTreeSet::new();
    let panels = dashboard["panels"].as_array().unwrap();
    for target in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
    {
        let expr = target["expr"].as_str().unwrap();
        for (start, _) in expr.match_indices("keypooler_") {
            let name: String = expr[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            queried.insert(name);
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");
    for name in &queried {
        assert!(
            m.named(name).next().is_some(),
            "the dashboard queries {name}, which is not exposed"
        );
    }
}

/// Without a token `/metrics` is public, so it carries aggregates only: tier and feature names
/// (chosen by the operator), never a key's or a consumer's id or name. With the token the same
/// pool lists each key's budget.
#[tokio::test]
async fn without_a_token_no_key_or_consumer_id_or_name_is_shown() {
    for token in [None, Some(SCRAPE_TOKEN)] {
        let app = TestApp::spawn_with_metrics(MetricsConfig {
            token: token.map(SecretString::from),
            ..MetricsConfig::default()
        })
        .await;
        app.create_tier("pro", json!({ "chat": 3 })).await;
        let key_ids = [
            app.add_key("key-name-alpha", "sk-a", "pro").await,
            app.add_key("key-name-beta", "sk-b", "pro").await,
        ];
        let consumer = app
            .post(
                "/admin/consumers",
                &json!({ "name": "consumer-name-gamma" }),
            )
            .await;
        assert_eq!(consumer.status(), StatusCode::CREATED);
        let consumer: serde_json::Value = consumer.json().await.unwrap();
        let consumer_id = consumer["id"].as_str().unwrap();
        let scoped = app
            .post(
                &format!("/admin/consumers/{consumer_id}/scopes"),
                &json!({ "tier": "pro" }),
            )
            .await;
        assert_eq!(scoped.status(), StatusCode::OK);
        let (served, _) = app
            .key_as(consumer["token"].as_str().unwrap(), "chat")
            .await;
        assert_eq!(served, StatusCode::OK);
        assert_eq!(app.key("chat").await.0, StatusCode::OK);

        let m = scrape_as(&app, token).await;
        for hidden in [consumer_id, "consumer-name-gamma"] {
            assert!(!m.text.contains(hidden), "/metrics shows {hidden}");
        }
        let per_key = ["key-name-alpha", "key-name-beta", &key_ids[0], &key_ids[1]];
        if token.is_none() {
            for hidden in per_key {
                assert!(!m.text.contains(hidden), "public /metrics shows {hidden}");
            }
            assert!(!m.text.contains("keypooler_key_budget"), "{}", m.text);
        } else {
            for shown in per_key {
                assert!(m.text.contains(shown), "{shown} missing with the token");
            }
        }
        let tier = [("tier", "pro"), ("feature", "chat")];
        assert_eq!(m.get("keypooler_tier_budget_used", &tier), 2.0);
        assert_eq!(m.get("keypooler_tier_budget_limit", &tier), 6.0);
        assert_eq!(m.get("keypooler_pool_keys", &[("tier", "pro")]), 2.0);
    }
}

/// Up to exactly `METRICS_PER_KEY_MAX` per-key series a scrape lists them all, and the per-tier
/// series are their sums (read from each tier's rotation, not key by key); above it, it lists
/// none: the per-tier series stand in for them, and one series says how many were left out.
#[tokio::test]
async fn per_key_series_give_way_to_tier_series_above_the_limit() {
    let app = TestApp::spawn_with_metrics(MetricsConfig {
        per_key_max: 12,
        ..with_token()
    })
    .await;
    app.create_tier("pro", json!({ "chat": 5, "img": 7 })).await;
    app.create_tier("free", json!({ "chat": 2 })).await;
    let mut ids = Vec::new();
    for name in ["p1", "p2", "p3"] {
        ids.push(app.add_key(name, &format!("sk-{name}"), "pro").await);
    }
    // Uses spread unevenly: pro's keys take turns, free has no key yet.
    for feature in ["chat", "chat", "chat", "chat", "img"] {
        assert_eq!(app.key(feature).await.0, StatusCode::OK);
    }
    // 3 keys × 2 features × (used, limit) = 12 series: all shown.
    let m = scrape_as(&app, Some(SCRAPE_TOKEN)).await;
    assert_eq!(m.value("keypooler_key_budget_series_cut", &[]), None);
    assert_eq!(m.named("keypooler_key_budget_used").count(), 6);
    for (tier, feature) in [("pro", "chat"), ("pro", "img")] {
        for (per_key, per_tier) in [
            ("keypooler_key_budget_used", "keypooler_tier_budget_used"),
            ("keypooler_key_budget_limit", "keypooler_tier_budget_limit"),
        ] {
            let summed: f64 = m
                .named(per_key)
                .filter(|s| s.labels["feature"] == feature)
                .map(|s| s.value)
                .sum();
            let labels = [("tier", tier), ("feature", feature)];
            assert_eq!(m.get(per_tier, &labels), summed, "{per_tier} {labels:?}");
        }
    }
    let tier = |tier, feature| [("tier", tier), ("feature", feature)];
    for (name, tier_name, feature, value) in [
        ("keypooler_tier_budget_used", "pro", "chat", 4.0),
        ("keypooler_tier_budget_used", "pro", "img", 1.0),
        ("keypooler_tier_budget_limit", "pro", "img", 21.0),
        ("keypooler_tier_budget_limit", "free", "chat", 0.0),
    ] {
        assert_eq!(m.get(name, &tier(tier_name, feature)), value, "{name}");
    }

    // One key more, in another tier: 14 series, over the limit. The tier series carry on.
    app.add_key("f1", "sk-f1", "free").await;
    let m = scrape_as(&app, Some(SCRAPE_TOKEN)).await;
    assert_eq!(m.get("keypooler_key_budget_series_cut", &[]), 14.0);
    assert_eq!(m.named("keypooler_key_budget_used").count(), 0);
    assert_eq!(m.named("keypooler_key_budget_limit").count(), 0);
    assert!(ids.iter().all(|id| !m.text.contains(id.as_str())));
    assert_eq!(
        m.get("keypooler_tier_budget_used", &tier("pro", "chat")),
        4.0
    );
    assert_eq!(
        m.get("keypooler_tier_budget_limit", &tier("free", "chat")),
        2.0
    );
}

/// Writes `dir/pool.redb` with a tier "big" listing `features` (1,000 uses a minute each) and
/// `keys` keys with long names, in-process and all at once, so that the writer commits them in
/// a few batches (one request per key through the binary takes several times longer).
fn seed(dir: &std::path::Path, key_hex: &str, features: &[String], keys: usize) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (app, _) = start_app(&dir.join("pool.redb"), key_hex, Options::default());
        let writer = app.state.writer().clone();
        let limits = features
            .iter()
            .map(|f| {
                let limit = Limit {
                    rate_limit: 1_000,
                    window_seconds: 60,
                };
                (f.clone(), limit)
            })
            .collect();
        let tier = TierSpec::new("big", None, limits).unwrap();
        writer.create_tier(tier, None).await.unwrap();
        let mut adds = tokio::task::JoinSet::new();
        for i in 0..keys {
            let writer = writer.clone();
            let body = json!({
                "name": format!("{i:05}-{}", "k".repeat(250)),
                "key": format!("sk-{i}"),
                "tier": "big",
            });
            let key = NewKey::try_from(serde_json::from_value::<KeyBody>(body).unwrap()).unwrap();
            adds.spawn(async move { writer.add_key(key, None).await.map(drop) });
        }
        while let Some(added) = adds.join_next().await {
            added.unwrap().unwrap();
        }
        // Serving until a shutdown that has already come: the writer finishes (once every
        // handle to it is gone) and the file closes.
        drop(writer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        app.serve(listener, async {}).await.unwrap();
    });
}

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in kB");
    kib / 1024
}

/// 50 clients ask for `/metrics` of 2,000 keys × 3 features (long names: several MB of text
/// each) and never read the body. The server (the built binary, so that the memory measured is
/// its own) stays under 300 MB, `GET /key` keeps answering, and once they are gone a whole
/// scrape is served again.
#[test]
fn fifty_stalled_scrapes_of_a_large_pool_keep_memory_bounded_and_keys_served() {
    use std::io::{Read, Write};

    const KEYS: usize = 2_000;
    const STALLED: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x4d);
    // Names of 256 characters, the most allowed, make each scrape about 7 MB of text.
    let features: Vec<String> = (0..3).map(|i| format!("{i}{}", "f".repeat(255))).collect();
    seed(dir.path(), &key, &features, KEYS);
    let env = [
        ("ENCRYPTION_KEY", key.as_str()),
        ("METRICS_TOKEN", SCRAPE_TOKEN),
        // Every per-key series is listed: the largest scrape there is.
        ("METRICS_PER_KEY_MAX", "100000"),
    ];
    let Launch::Listening(server) = Server::launch(dir.path(), &env, free_port()) else {
        panic!("the server did not start");
    };
    let port = server.port;
    let before = rss_mib(server.pid());

    // Each sends its request and reads the status line only; the body is never read.
    let mut stalled = Vec::new();
    let mut served = 0;
    for _ in 0..STALLED {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {SCRAPE_TOKEN}\r\n\r\n"
        )
        .unwrap();
        let mut status_line = [0; 12];
        stream.read_exact(&mut status_line).unwrap();
        match &status_line[9..] {
            b"200" => served += 1,
            b"503" => {}
            other => panic!("{}", String::from_utf8_lossy(other)),
        }
        stalled.push(stream);
    }
    assert!(
        (1..=CONCURRENT_SCRAPES).contains(&served),
        "{served} scrapes rendered at once"
    );

    // GET /key answers while they stall.
    for _ in 0..20 {
        let (status, body) = http(
            port,
            "GET",
            &format!("/key?feature={}", features[0]),
            TOKEN,
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let during = rss_mib(server.pid());
    assert!(
        during < 300,
        "{STALLED} stalled scrapes took the server from {before} MiB to {during} MiB"
    );

    // Gone, they leave room for a whole scrape (their renderings stop as their connections
    // close, which the server learns on its own time).
    drop(stalled);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let (status, text) = http(port, "GET", "/metrics", SCRAPE_TOKEN, None).unwrap();
        if status == 200 {
            break text;
        }
        assert_eq!(status, 503, "{text}");
        assert!(std::time::Instant::now() < deadline, "scrapes stay refused");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let m = Scrape::parse(text);
    assert_eq!(m.named("keypooler_key_budget_used").count(), KEYS * 3);
    assert_eq!(m.named("keypooler_key_budget_limit").count(), KEYS * 3);
    assert_eq!(
        m.get(
            "keypooler_tier_budget_used",
            &[("tier", "big"), ("feature", &features[0])]
        ),
        20.0
    );
    let (status, _) = server.stop();
    assert!(status.success());
}
