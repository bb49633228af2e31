//! `GET /metrics` and the Prometheus exporter behind it: the recorder, the description and
//! buckets of every metric, and the families read from the live snapshot at scrape time.
//!
//! Each app owns its exporter rather than installing a recorder process-wide: two apps in one
//! process (the integration tests) keep separate counts, and `METRICS=off` is simply no
//! exporter. Every handle is registered through a [`Meter`] over its recorder.
//!
//! Two kinds of series:
//! * events (requests, `GET /key` outcomes, writer commands, durations) are counted as they
//!   happen, through handles registered once;
//! * state (pool sizes, snapshot age, writer queue, each key's budget) is read from the current
//!   snapshot when `/metrics` is scraped and written here: nothing is recorded per request, and a
//!   deleted key or tier simply stops appearing.

use std::fmt::{Display, Write};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use metrics::Unit;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use secrecy::SecretString;

use super::AppState;
use super::auth::{bearer, same_token};
use super::error::ApiError;
use crate::broker::{Clock, Snapshot};
use crate::config::MetricsConfig;
use crate::telemetry::{
    BUILD_INFO, HTTP_DURATION, HTTP_REQUESTS, KEY_BUDGET_LIMIT, KEY_BUDGET_USED, KEY_REQUESTS,
    Meter, POOL_ACTIVE_KEYS, POOL_FEATURES, POOL_KEYS, POOL_TIERS, SNAPSHOT_BUILD_DURATION,
    SNAPSHOT_BUILT, SNAPSHOT_GENERATION, WRITER_COMMANDS, WRITER_COMMIT_DURATION,
    WRITER_QUEUE_DEPTH,
};

/// Request latency buckets, in seconds: 50 µs to 1 s.
const REQUEST_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];
/// Durable commit buckets, in seconds: 500 µs (a cached fsync) to 5 s.
const COMMIT_BUCKETS: [f64; 13] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// The Prometheus text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`: what the recorder holds, then the families read from the live snapshot.
pub async fn get_metrics(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let exporter = app
        .exporter()
        .ok_or_else(|| ApiError::NotFound("not found".into()))?;
    if let Some(token) = exporter.token()
        && !same_token(bearer(&headers)?, token)
    {
        return Err(ApiError::Unauthorized("invalid token"));
    }
    let body = exporter.render(
        &app.pool().load(),
        app.pool().clock(),
        app.writer().queue_depth(),
    );
    let mut response = Response::new(body.into());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}

/// The recorder of one app and what `/metrics` needs besides it.
pub struct PrometheusExporter {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    token: Option<SecretString>,
    per_key: bool,
}

impl std::fmt::Debug for PrometheusExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusExporter")
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("per_key", &self.per_key)
            .finish_non_exhaustive()
    }
}

impl PrometheusExporter {
    /// A recorder with the buckets and descriptions of every metric; `None` when metrics are off.
    pub fn new(config: &MetricsConfig) -> Option<Self> {
        if !config.enabled {
            return None;
        }
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), &REQUEST_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(WRITER_COMMIT_DURATION.into()),
                    &COMMIT_BUCKETS,
                )
            })
            .expect("the bucket lists are not empty")
            .build_recorder();
        metrics::with_local_recorder(&recorder, describe);
        Some(Self {
            handle: recorder.handle(),
            recorder: Arc::new(recorder),
            token: config.token.clone(),
            per_key: config.per_key,
        })
    }

    /// Registers handles with this recorder.
    pub fn meter(&self) -> Meter {
        Meter::new(Arc::clone(&self.recorder) as _)
    }

    /// The token `/metrics` requires, if any.
    pub fn token(&self) -> Option<&SecretString> {
        self.token.as_ref()
    }

    /// The recorder's handle, for a task to call `run_upkeep` on periodically: it moves recorded
    /// histogram samples into their buckets (they wait in lock-free blocks until then).
    pub fn handle(&self) -> PrometheusHandle {
        self.handle.clone()
    }

    /// The whole exposition: the recorder's series, then those read from `snapshot` now.
    pub fn render(&self, snapshot: &Snapshot, clock: &Clock, queue_depth: usize) -> String {
        let mut out = self.handle.render();
        let mut families = Families(&mut out);
        families.live(snapshot, clock, queue_depth);
        if self.per_key {
            families.budgets(snapshot, clock.now_ms());
        }
        out
    }
}

fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "HTTP requests answered, by route template, method and status class."
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time from a request reaching the router to its response, by route template and method."
    );
    metrics::describe_counter!(
        KEY_REQUESTS,
        Unit::Count,
        "GET /key answers, by feature (`unknown` for features no tier lists) and outcome."
    );
    metrics::describe_counter!(
        WRITER_COMMANDS,
        Unit::Count,
        "Admin changes handled by the writer, by kind and outcome (applied, refused, failed)."
    );
    metrics::describe_histogram!(
        WRITER_COMMIT_DURATION,
        Unit::Seconds,
        "Time each durable commit of a batch of admin changes took."
    );
}

/// Writes families in the text exposition format.
struct Families<'a>(&'a mut String);

impl Families<'_> {
    fn header(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} gauge");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        for (i, (label, text)) in labels.iter().enumerate() {
            self.0.push(if i == 0 { '{' } else { ',' });
            self.0.push_str(label);
            self.0.push_str("=\"");
            escape_into(self.0, text);
            self.0.push('"');
        }
        if !labels.is_empty() {
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.header(name, help);
        self.sample(name, &[], value);
    }

    fn live(&mut self, snapshot: &Snapshot, clock: &Clock, queue_depth: usize) {
        self.header(BUILD_INFO, "The running version; always 1.");
        self.sample(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1);
        let catalog = &snapshot.catalog;
        let tiers: Vec<_> = catalog.tier_keys(clock.unix_now_ms()).collect();
        self.header(POOL_KEYS, "Keys stored, by tier.");
        for (tier, keys) in &tiers {
            self.sample(POOL_KEYS, &[("tier", &tier.name)], keys.total);
        }
        self.header(
            POOL_ACTIVE_KEYS,
            "Keys servable now (active, not expired), by tier.",
        );
        for (tier, keys) in &tiers {
            self.sample(POOL_ACTIVE_KEYS, &[("tier", &tier.name)], keys.active);
        }
        self.gauge(POOL_TIERS, "Tiers defined.", catalog.tier_count());
        self.gauge(
            POOL_FEATURES,
            "Features some tier lists.",
            snapshot.feature_count(),
        );
        self.gauge(
            SNAPSHOT_GENERATION,
            "Generation of the published snapshot; each committed admin batch adds one.",
            snapshot.generation,
        );
        self.gauge(
            SNAPSHOT_BUILT,
            "Unix time at which the published snapshot was built.",
            snapshot.built_at_unix_ms as f64 / 1_000.0,
        );
        self.gauge(
            SNAPSHOT_BUILD_DURATION,
            "Time building the published snapshot took.",
            snapshot.build_duration.as_secs_f64(),
        );
        self.gauge(
            WRITER_QUEUE_DEPTH,
            "Admin changes queued for the writer and not yet taken.",
            queue_depth,
        );
    }

    /// Each key's budget per feature, read from the live counters (METRICS_PER_KEY).
    fn budgets(&mut self, snapshot: &Snapshot, now_ms: u64) {
        let catalog = &snapshot.catalog;
        let rows: Vec<_> = catalog
            .keys()
            .flat_map(|key| {
                catalog
                    .budgets(key, now_ms)
                    .map(move |(feature, budget)| (key, feature, budget))
            })
            .collect();
        for (name, help, limit) in [
            (
                KEY_BUDGET_USED,
                "Uses of each key for each feature in its open window.",
                false,
            ),
            (
                KEY_BUDGET_LIMIT,
                "Uses each key may serve for each feature per window.",
                true,
            ),
        ] {
            self.header(name, help);
            for (key, feature, budget) in &rows {
                let labels = [
                    ("key_id", &*key.info.id),
                    ("key_name", &*key.info.name),
                    ("feature", &**feature),
                ];
                let value = if limit {
                    budget.limit.rate_limit
                } else {
                    budget.used
                };
                self.sample(name, &labels, value);
            }
        }
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        Families(&mut out).sample("m", &[("a", "x\"y\\z\nw"), ("b", "ok")], 3);
        assert_eq!(out, "m{a=\"x\\\"y\\\\z\\nw\",b=\"ok\"} 3\n");
    }

    #[test]
    fn metrics_off_means_no_exporter() {
        let config = MetricsConfig {
            enabled: false,
            ..MetricsConfig::default()
        };
        assert!(PrometheusExporter::new(&config).is_none());
    }
}
