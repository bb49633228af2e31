//! The cold paths and the per-request encoding: snapshot builds, one admin write against pools
//! of different sizes, sealing, and the `GET /key` response. Run: `cargo bench --bench build`.

mod common;

use std::hint::black_box;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use criterion::{BatchSize, BenchmarkId, Criterion};
use keypooler::broker::{Clock, Snapshot};
use keypooler::crypto::{EncryptionKey, Sealer};
use keypooler::http::{ApiError, json_response};
use keypooler::store::value_aad;
use keypooler::telemetry::Meter;

use common::{Tally, VALUE_64, catalog, key, pool};

static TALLY: LazyLock<Tally> = LazyLock::new(Tally::default);

/// What start-up builds once every value is open: the catalog of N keys (each added to its
/// tier's roster) and its first snapshot. The keys' entries (with their encoded bodies) are made
/// untimed.
fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("catalog and first snapshot");
    group.sample_size(10);
    let clock = Clock::monotonic();
    let meter = Meter::off();
    for keys in [1_000, 10_000, 100_000] {
        group.bench_function(BenchmarkId::from_parameter(keys), |b| {
            b.iter_batched(
                || (0..keys).map(|i| key(i, "pro")).collect::<Vec<_>>(),
                |entries| {
                    let (catalog, dirty) = catalog(entries, &["chat", "image"], 100, 60);
                    Snapshot::empty(&clock, &meter).next(catalog, &dirty, &clock, &meter)
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// One admin write in memory, as the writer does it: clone the catalog, add a key, publish the
/// next snapshot. Timed alone; each added key is removed again untimed so the pool keeps its size.
fn add_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("add one key");
    group.sample_size(20);
    for keys in [100, 100_000] {
        let pool = pool(Clock::monotonic(), keys, &["chat", "image"], 100, 60);
        group.bench_function(BenchmarkId::from_parameter(keys), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let entry = key(keys, "pro");
                    let started = Instant::now();
                    let mut staged = pool.load().catalog.clone();
                    let dirty = staged.put_key(entry);
                    pool.publish(staged, &dirty);
                    elapsed += started.elapsed();
                    let mut staged = pool.load().catalog.clone();
                    let dirty = staged.remove_key(&format!("key-{keys:08}"));
                    pool.publish(staged, &dirty);
                }
                TALLY.record(&format!("add/{keys}"), elapsed, iters);
                elapsed
            });
        });
    }
    group.finish();
}

/// One delete in memory, of a key from the middle of the pool (the costliest place in a
/// persistent vector), then the key put back untimed.
fn delete_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("delete one key");
    group.sample_size(20);
    for keys in [100, 100_000] {
        let pool = pool(Clock::monotonic(), keys, &["chat", "image"], 100, 60);
        let middle = keys / 2;
        group.bench_function(BenchmarkId::from_parameter(keys), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let mut staged = pool.load().catalog.clone();
                    let dirty = staged.remove_key(&format!("key-{middle:08}"));
                    pool.publish(staged, &dirty);
                    elapsed += started.elapsed();
                    let mut staged = pool.load().catalog.clone();
                    let dirty = staged.put_key(key(middle, "pro"));
                    pool.publish(staged, &dirty);
                }
                TALLY.record(&format!("delete/{keys}"), elapsed, iters);
                elapsed
            });
        });
    }
    group.finish();
}

fn crypto(c: &mut Criterion) {
    let mut group = c.benchmark_group("crypto");
    let sealer = Sealer::new(&EncryptionKey::generate());
    let aad = value_aad("0b6f3a52-5d1e-4c4e-9a0e-1f2d3c4b5a69");
    assert_eq!(VALUE_64.len(), 64);
    group.bench_function("seal 64 bytes", |b| {
        b.iter(|| sealer.seal(black_box(VALUE_64.as_bytes()), &aad));
    });
    let sealed = sealer.seal(VALUE_64.as_bytes(), &aad);
    group.bench_function("open 64 bytes", |b| {
        b.iter(|| sealer.open(black_box(&sealed), &aad).expect("opens"));
    });
    group.finish();
}

/// The `GET /key` body is encoded once per key when it is loaded; each request only wraps the
/// shared bytes in a response. The 429 body is encoded per request.
fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode GET /key");
    group.bench_function("body, once per key load", |b| {
        b.iter(|| key(black_box(7), "pro"));
    });
    let entry = key(7, "pro");
    group.bench_function("200 response, per request", |b| {
        b.iter(|| json_response(StatusCode::OK, entry.body()));
    });
    group.bench_function("429 response, per request", |b| {
        b.iter(|| {
            ApiError::NoKeyAvailable {
                retry_after_secs: black_box(42),
            }
            .into_response()
        });
    });
    group.finish();
}

fn report() {
    for (write, name) in [("add", "add one key"), ("delete", "delete one key")] {
        let small = TALLY.mean_ns(&format!("{write}/100"));
        let large = TALLY.mean_ns(&format!("{write}/100000"));
        if let (Some(small), Some(large)) = (small, large) {
            println!(
                "\n== {name} (in memory: clone, change, publish), this run ==\n\
                 pool of 100 {:>10.1} us   pool of 100,000 {:>10.1} us   ratio {:.2} (target <= 2)",
                small / 1e3,
                large / 1e3,
                large / small
            );
        }
    }
}

fn main() {
    let mut criterion = common::criterion();
    snapshot(&mut criterion);
    add_key(&mut criterion);
    delete_key(&mut criterion);
    crypto(&mut criterion);
    encode(&mut criterion);
    criterion.final_summary();
    report();
}
