//! `GET /metrics` and the Prometheus exporter behind it: the recorder, the description and
//! buckets of every metric, and who may see what. The families read from the live snapshot are
//! rendered by [`super::scrape`].
//!
//! Each app owns its exporter rather than installing a recorder process-wide: two apps in one
//! process (the integration tests) keep separate counts, and `METRICS=off` is simply no
//! exporter. Every handle is registered through a [`Meter`] over its recorder.
//!
//! Two kinds of series:
//! * events (requests, `GET /key` outcomes, writer commands, durations) are counted as they
//!   happen, through handles registered once;
//! * state (pool sizes, snapshot age, writer queue, budgets) is read from the current snapshot
//!   when `/metrics` is scraped: nothing is recorded per request, and a deleted key or tier
//!   simply stops appearing.
//!
//! Without `METRICS_TOKEN` the scrape is public and shows aggregates only (tier and feature
//! names, never a key's or a consumer's id or name); with it, each key's budget too, up to
//! `METRICS_PER_KEY_MAX` series.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use metrics::Unit;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use secrecy::SecretString;
use tokio::sync::Semaphore;

use super::AppState;
use super::auth::{bearer, same_token};
use super::error::ApiError;
use super::scrape::{Detail, Scrape};
use crate::config::MetricsConfig;
use crate::telemetry::{
    HTTP_DURATION, HTTP_REQUESTS, KEY_REPORTS, KEY_REQUESTS, KEY_WAITERS, KEY_WAITS, Meter, SPENT,
    WRITER_COMMANDS, WRITER_COMMIT_DURATION,
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
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Scrapes rendered at once; one more is answered 503 at once (Prometheus tries again at its
/// next interval). Each holds a blocking thread and a snapshot until its client has read it, or
/// for at most [`super::stream::STALLED_BODY`] of a client that does not read.
pub const CONCURRENT_SCRAPES: usize = 4;

/// `GET /metrics`: what the recorder holds, then the families read from the live snapshot,
/// streamed.
pub async fn get_metrics(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let exporter = app
        .exporter()
        .ok_or_else(|| ApiError::NotFound("not found".into()))?;
    let detail = match exporter.token() {
        Some(token) if !same_token(bearer(&headers)?, token) => {
            return Err(ApiError::Unauthorized("invalid token"));
        }
        Some(_) if exporter.per_key => Detail::PerKey {
            max: exporter.per_key_max,
        },
        _ => Detail::Aggregate,
    };
    let permit = Arc::clone(&exporter.scrapes)
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable("too many scrapes at once; try again".into()))?;
    let clock = app.pool().clock();
    let scrape = Scrape {
        snapshot: arc_swap::Guard::into_inner(app.pool().load()),
        now_ms: clock.now_ms(),
        unix_now_ms: clock.unix_now_ms(),
        queue_depth: app.writer().queue_depth(),
        detail,
    };
    let mut response = Response::new(scrape.stream(exporter.handle(), permit));
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
    /// `METRICS_PER_KEY`: per-key series (with a token) at all.
    per_key: bool,
    per_key_max: usize,
    /// The scrapes being rendered: a semaphore so that one more is refused without waiting.
    scrapes: Arc<Semaphore>,
}

impl std::fmt::Debug for PrometheusExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusExporter")
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("per_key", &self.per_key)
            .field("per_key_max", &self.per_key_max)
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
            per_key_max: config.per_key_max,
            scrapes: Arc::new(Semaphore::new(CONCURRENT_SCRAPES)),
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
        KEY_REPORTS,
        Unit::Count,
        "POST /key/{id}/report calls answered, by outcome class (success, rate_limited, \
         refused, server_error, timeout, other)."
    );
    metrics::describe_counter!(
        KEY_WAITS,
        Unit::Count,
        "GET /key?wait= requests that waited, by outcome (served, timed_out, rejected, shutdown)."
    );
    metrics::describe_gauge!(
        KEY_WAITERS,
        Unit::Count,
        "GET /key?wait= requests waiting for a key now."
    );
    metrics::describe_counter!(
        WRITER_COMMANDS,
        Unit::Count,
        "Admin changes handled by the writer, by kind and outcome (applied, refused, failed)."
    );
    metrics::describe_counter!(
        SPENT,
        Unit::Count,
        "Billionths of a unit counted by spends (POST /key/{id}/spend; replays not), by unit."
    );
    metrics::describe_histogram!(
        WRITER_COMMIT_DURATION,
        Unit::Seconds,
        "Time each durable commit of a batch of admin changes took."
    );
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn metrics_off_means_no_exporter() {
        let config = MetricsConfig {
            enabled: false,
            ..MetricsConfig::default()
        };
        assert!(PrometheusExporter::new(&config).is_none());
    }
}
