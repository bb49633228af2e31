//! A mock model provider and a closed-loop driver, to measure what key health reports buy.
//!
//! `provider serve` is a real HTTP server that behaves like a provider behind a pool of keys:
//! each key has its own fixed-window limit (some lower than the broker's tier says), one key may
//! be revoked, and a small share of calls fail with 5xx at random. It answers `POST /v1/call`
//! with the key as a Bearer token: 200, 429 with `Retry-After` (whole seconds until the key's
//! window ends), 401 for a revoked key, 503 at `--error-rate`.
//!
//! `provider drive` is a caller: at `--rate` calls per second it draws a key from keypooler
//! (`GET /key`), calls the provider with it, and with `--report` tells keypooler what the
//! provider said (`POST /key/{id}/report`). It prints one line of counts at the end.
//!
//! ```sh
//! cargo run --release --example provider -- serve --port 18090 \
//!     --key sk-good-0=10 --key sk-low-0=3 --revoked sk-revoked --window-ms 1000
//! ADMIN_TOKEN=… cargo run --release --example provider -- drive --broker http://127.0.0.1:18080 \
//!     --provider http://127.0.0.1:18090 --feature chat --rate 60 --seconds 20 --report
//! ```
//!
//! `loadtest/provider.sh` runs both with reporting off and on and prints the table that
//! PERFORMANCE.md records.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::{Parser, Subcommand};
use parking_lot::Mutex;
use rand::RngExt;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mock provider.
    Serve(ServeArgs),
    /// Run the closed loop against a broker and a provider.
    Drive(DriveArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, default_value_t = 18090)]
    port: u16,
    /// A key the provider accepts, with its own limit per window: `VALUE=LIMIT`. Repeatable.
    #[arg(long = "key", value_parser = parse_key_limit)]
    keys: Vec<(String, u32)>,
    /// A key the provider has revoked: every call with it answers 401. Repeatable.
    #[arg(long)]
    revoked: Vec<String>,
    /// The provider's window, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    window_ms: u64,
    /// The share of calls that fail with 503 whatever the key, from 0 to 1.
    #[arg(long, default_value_t = 0.01)]
    error_rate: f64,
}

#[derive(clap::Args)]
struct DriveArgs {
    /// keypooler, on the loopback interface.
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    broker: String,
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The mock provider.
    #[arg(long, default_value = "http://127.0.0.1:18090")]
    provider: String,
    #[arg(long, default_value = "chat")]
    feature: String,
    /// Calls per second, all workers together.
    #[arg(long, default_value_t = 60)]
    rate: u32,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Concurrent callers sharing the rate.
    #[arg(long, default_value_t = 8)]
    workers: u32,
    /// Report every provider answer to the broker.
    #[arg(long)]
    report: bool,
}

fn parse_key_limit(s: &str) -> Result<(String, u32), String> {
    let (value, limit) = s.split_once('=').ok_or("expected VALUE=LIMIT")?;
    let limit = limit.parse().map_err(|_| format!("not a limit: {limit}"))?;
    Ok((value.to_owned(), limit))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::Drive(args) => drive(args).await,
    }
}

/// One key's fixed window at the provider.
struct Window {
    limit: u32,
    start: Instant,
    used: u32,
}

struct Provider {
    windows: Mutex<HashMap<String, Window>>,
    revoked: Vec<String>,
    window: Duration,
    error_rate: f64,
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let now = Instant::now();
    let provider = Arc::new(Provider {
        windows: Mutex::new(
            args.keys
                .into_iter()
                .map(|(value, limit)| {
                    let window = Window {
                        limit,
                        start: now,
                        used: 0,
                    };
                    (value, window)
                })
                .collect(),
        ),
        revoked: args.revoked,
        window: Duration::from_millis(args.window_ms),
        error_rate: args.error_rate,
    });
    let app = Router::new()
        .route("/v1/call", post(call))
        .with_state(provider);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn call(State(provider): State<Arc<Provider>>, headers: HeaderMap) -> Response {
    let Some(key) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    if provider.revoked.iter().any(|r| r == key) {
        return (StatusCode::UNAUTHORIZED, "key revoked").into_response();
    }
    if rand::rng().random_bool(provider.error_rate) {
        return (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response();
    }
    let mut windows = provider.windows.lock();
    let Some(window) = windows.get_mut(key) else {
        return (StatusCode::UNAUTHORIZED, "unknown key").into_response();
    };
    let now = Instant::now();
    if now.duration_since(window.start) >= provider.window {
        window.start = now;
        window.used = 0;
    }
    if window.used < window.limit {
        window.used += 1;
        return (StatusCode::OK, "ok").into_response();
    }
    let left = provider
        .window
        .saturating_sub(now.duration_since(window.start));
    let retry_after = left.as_millis().div_ceil(1_000).max(1);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, retry_after.to_string())],
        "rate limited",
    )
        .into_response()
}

/// What the driver saw, counted across workers.
#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    ok: AtomicU64,
    limited: AtomicU64,
    revoked: AtomicU64,
    server_errors: AtomicU64,
    other: AtomicU64,
    broker_refused: AtomicU64,
    reports_failed: AtomicU64,
    /// Draws of a key that started after the broker had been told of its 401 (without
    /// reporting: after the driver first saw it).
    revoked_redrawn: AtomicU64,
}

struct Loop {
    args: DriveArgs,
    client: reqwest::Client,
    counts: Counts,
    /// Keys the provider has answered 401 for, and when the broker knew (see `revoked_redrawn`).
    revoked: Mutex<HashMap<String, Instant>>,
}

async fn drive(args: DriveArgs) -> anyhow::Result<()> {
    let workers = args.workers.max(1);
    let period = Duration::from_secs_f64(f64::from(workers) / f64::from(args.rate.max(1)));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let shared = Arc::new(Loop {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        args,
        counts: Counts::default(),
        revoked: Mutex::new(HashMap::new()),
    });
    let tasks: Vec<_> = (0..workers)
        .map(|n| {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                // Spread the workers' ticks over one period so the calls arrive evenly.
                let offset = period.mul_f64(f64::from(n) / f64::from(workers));
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while Instant::now() < deadline {
                    ticks.tick().await;
                    shared.once().await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let c = &shared.counts;
    let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let calls = get(&c.calls);
    let failed = get(&c.limited) + get(&c.revoked);
    println!(
        "report={} calls={calls} ok={} provider_429={} provider_401={} provider_5xx={} other={} \
         broker_refused={} reports_failed={} revoked_redrawn={} failed_share={:.4}",
        if shared.args.report { "on" } else { "off" },
        get(&c.ok),
        get(&c.limited),
        get(&c.revoked),
        get(&c.server_errors),
        get(&c.other),
        get(&c.broker_refused),
        get(&c.reports_failed),
        get(&c.revoked_redrawn),
        if calls == 0 {
            0.0
        } else {
            failed as f64 / calls as f64
        },
    );
    Ok(())
}

impl Loop {
    /// One turn of the loop: draw, call, report.
    async fn once(&self) -> anyhow::Result<()> {
        let args = &self.args;
        let started = Instant::now();
        let drawn = self
            .client
            .get(format!("{}/key", args.broker))
            .query(&[("feature", args.feature.as_str())])
            .bearer_auth(&args.token)
            .send()
            .await?;
        if !drawn.status().is_success() {
            self.counts.broker_refused.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let key: serde_json::Value = drawn.json().await?;
        let (Some(id), Some(value)) = (key["key_id"].as_str(), key["value"].as_str()) else {
            anyhow::bail!("GET /key answered without key_id and value");
        };
        if self
            .revoked
            .lock()
            .get(id)
            .is_some_and(|known| *known < started)
        {
            self.counts.revoked_redrawn.fetch_add(1, Ordering::Relaxed);
        }
        let answer = self
            .client
            .post(format!("{}/v1/call", args.provider))
            .bearer_auth(value)
            .send()
            .await?;
        let status = answer.status().as_u16();
        let retry_after = answer
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        self.counts.calls.fetch_add(1, Ordering::Relaxed);
        let counter = match status {
            200..=299 => &self.counts.ok,
            429 => &self.counts.limited,
            401 => &self.counts.revoked,
            500..=599 => &self.counts.server_errors,
            _ => &self.counts.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if args.report {
            let mut body = serde_json::json!({ "status": status });
            if let Some(seconds) = retry_after {
                body["retry_after"] = seconds.into();
            }
            let reported = self
                .client
                .post(format!("{}/key/{id}/report", args.broker))
                .bearer_auth(&args.token)
                .json(&body)
                .send()
                .await?;
            if !reported.status().is_success() {
                self.counts.reports_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if status == 401 {
            self.revoked
                .lock()
                .entry(id.to_owned())
                .or_insert_with(Instant::now);
        }
        Ok(())
    }
}
