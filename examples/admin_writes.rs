//! Adds keys to a running keypooler through `POST /admin/keys`, as fast as `--clients`
//! concurrent connections allow, and reports how long it took. The load harness uses it to seed
//! pools, and `loadtest/admin_writes.sh` to measure how admin writes scale.
//!
//! ```sh
//! ADMIN_TOKEN=… cargo run --release --example admin_writes -- \
//!     --url http://127.0.0.1:8080 --tier pro --keys 10000 --clients 32
//! # then, one at a time, the latency of single writes:
//! ADMIN_TOKEN=… cargo run --release --example admin_writes -- --tier pro --keys 200 --clients 1
//! ```
//!
//! With `--delete`, deletes `--keys` keys from the middle of the pool's listing instead (the
//! costliest place in the rotation to delete from).
//!
//! Prints one line: `keys=… clients=… seconds=… writes_per_s=… p50_ms=… p99_ms=…`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// The server, on the loopback interface.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The tier the keys join (it must exist).
    #[arg(long, default_value = "pro")]
    tier: String,
    /// How many keys to add.
    #[arg(long, default_value_t = 1_000)]
    keys: usize,
    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Distinguishes the names of keys added by separate runs.
    #[arg(long, default_value = "seed")]
    prefix: String,
    /// Delete `--keys` keys from the middle of `GET /admin/keys` instead of adding keys.
    #[arg(long)]
    delete: bool,
}

/// The ids of `count` keys from the middle of the server's listing.
async fn middle_ids(args: &Args, count: usize) -> anyhow::Result<Vec<String>> {
    let keys: Vec<serde_json::Value> = reqwest::Client::new()
        .get(format!("{}/admin/keys", args.url))
        .bearer_auth(&args.token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let from = keys.len().saturating_sub(count) / 2;
    keys.iter()
        .skip(from)
        .take(count)
        .map(|key| {
            key["id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("a key without an id in GET /admin/keys"))
        })
        .collect()
}

/// A 64-byte key value, different for every key.
fn value(n: usize) -> String {
    format!("sk-{n:061}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let doomed = Arc::new(if args.delete {
        middle_ids(&args, args.keys).await?
    } else {
        Vec::new()
    });
    let writes = if args.delete { doomed.len() } else { args.keys };
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..args.clients.max(1))
        .map(|_| {
            let (args, next, doomed) = (Arc::clone(&args), Arc::clone(&next), Arc::clone(&doomed));
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()?;
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= writes {
                        return anyhow::Ok(latencies);
                    }
                    let request = if args.delete {
                        client.delete(format!("{}/admin/keys/{}", args.url, doomed[n]))
                    } else {
                        client
                            .post(format!("{}/admin/keys", args.url))
                            .json(&serde_json::json!({
                                "name": format!("{}-{n}", args.prefix),
                                "key": value(n),
                                "tier": args.tier,
                            }))
                    };
                    let sent = Instant::now();
                    let response = request.bearer_auth(&args.token).send().await?;
                    let status = response.status();
                    if !status.is_success() {
                        anyhow::bail!("the server answered {status}: {}", response.text().await?);
                    }
                    latencies.push(sent.elapsed());
                }
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::with_capacity(writes);
    for client in clients {
        latencies.extend(client.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "keys={} clients={} seconds={seconds:.3} writes_per_s={:.0} p50_ms={:.3} p99_ms={:.3}",
        writes,
        args.clients,
        writes as f64 / seconds,
        quantile(0.50),
        quantile(0.99),
    );
    Ok(())
}
