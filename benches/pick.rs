//! The read path: `Pool::pick` against a lock-based baseline shaped like the Go service, the
//! spent path, skipping cooling keys, and the clock it reads. Run: `cargo bench --bench pick`.
//!
//! Every pick bench times itself (`iter_custom`) into a [`Tally`], so the end of the run prints
//! our cost next to the baseline's from the same process: ratios hold on a noisy machine where
//! absolute nanoseconds do not.

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use keypooler::broker::{Backoff, Clock, HealthState, MAX_RATE_LIMIT, Now, Pick, Pool};

use common::{Tally, pool};

/// A window no bench can spend: `MAX_RATE_LIMIT` uses per second per key.
const UNSPENDABLE: (u32, u32) = (MAX_RATE_LIMIT, 1);
/// A window that stays spent for the whole run once used: one use per year.
const ONE_A_YEAR: (u32, u32) = (1, 366 * 24 * 3600);

static TALLY: LazyLock<Tally> = LazyLock::new(Tally::default);

/// What the Go service does: a read-write lock over the key list, a mutex around the cursor,
/// and a mutex per key around its counters (one window per feature in a map).
mod baseline {
    use super::*;

    type Map<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

    struct Key {
        /// Per feature: (limit, window ms).
        limits: Map<(u32, u64)>,
        /// Per feature: (window start ms, uses).
        windows: Mutex<Map<(u64, u32)>>,
    }

    pub struct Pool {
        keys: RwLock<Vec<Key>>,
        cursor: Mutex<usize>,
        clock: Clock,
    }

    impl Pool {
        pub fn new(clock: Clock, keys: usize, features: &[&str], limit: (u32, u32)) -> Self {
            let (rate_limit, window_seconds) = limit;
            let key = || Key {
                limits: features
                    .iter()
                    .map(|&f| (f.into(), (rate_limit, u64::from(window_seconds) * 1_000)))
                    .collect(),
                windows: Mutex::new(features.iter().map(|&f| (f.into(), (0, 0))).collect()),
            };
            Self {
                keys: RwLock::new((0..keys).map(|_| key()).collect()),
                cursor: Mutex::new(0),
                clock,
            }
        }

        /// The index of the key served, if any. (Returning an index rather than a reference
        /// counted key flatters the baseline slightly.)
        pub fn pick(&self, feature: &str) -> Option<usize> {
            let keys = self.keys.read().expect("keys lock");
            let n = keys.len();
            let start = {
                let mut cursor = self.cursor.lock().expect("cursor lock");
                let start = *cursor;
                *cursor = cursor.wrapping_add(1);
                start
            };
            let now = self.clock.now_ms();
            for i in 0..n {
                let index = (start + i) % n;
                let key = &keys[index];
                let Some(&(limit, window_ms)) = key.limits.get(feature) else {
                    continue;
                };
                let mut windows = key.windows.lock().expect("key lock");
                let (window_start, used) = windows.get_mut(feature).expect("one per feature");
                if *used == 0 || now >= *window_start + window_ms {
                    *window_start = now;
                    *used = 0;
                }
                if *used < limit {
                    *used += 1;
                    return Some(index);
                }
            }
            None
        }
    }
}

/// Runs `op` `iters` times on each of `features.len()` threads started together; returns the
/// wall time until the last one finished, and records it under `name`.
fn run_threads(
    name: &str,
    features: &[&'static str],
    iters: u64,
    op: impl Fn(&str) + Sync,
) -> Duration {
    let start = Barrier::new(features.len() + 1);
    let elapsed = std::thread::scope(|scope| {
        for feature in features {
            let (start, op) = (&start, &op);
            scope.spawn(move || {
                start.wait();
                for _ in 0..iters {
                    op(feature);
                }
            });
        }
        start.wait();
        Instant::now()
    });
    let elapsed = elapsed.elapsed();
    TALLY.record(name, elapsed, iters);
    elapsed
}

fn timed(name: &str, iters: u64, op: impl Fn()) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        op();
    }
    let elapsed = started.elapsed();
    TALLY.record(name, elapsed, iters);
    elapsed
}

fn ours(pool: &Pool, feature: &str) -> bool {
    let snapshot = pool.load();
    matches!(pool.pick(&snapshot, black_box(feature)), Pick::Served(..))
}

/// The three workloads: (name, features of each thread). One thread; two threads on the same
/// feature (shared cursor and counters); two threads on different features.
const WORKLOADS: [(&str, &[&str]); 3] = [
    ("1 thread", &["chat"]),
    ("2 threads, same feature", &["chat", "chat"]),
    ("2 threads, different features", &["chat", "image"]),
];

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    let ours_pool = pool(
        Clock::monotonic(),
        10,
        &["chat", "image"],
        UNSPENDABLE.0,
        UNSPENDABLE.1,
    );
    let go_pool = baseline::Pool::new(Clock::monotonic(), 10, &["chat", "image"], UNSPENDABLE);
    let held = ours_pool.load();
    group.bench_function("keypooler/1 thread, snapshot held", |b| {
        b.iter_custom(|iters| {
            timed("keypooler/snapshot held", iters, || {
                let picked = ours_pool.pick(&held, black_box("chat"));
                assert!(matches!(picked, Pick::Served(..)));
            })
        });
    });
    for (workload, features) in WORKLOADS {
        group.bench_function(BenchmarkId::new("keypooler", workload), |b| {
            b.iter_custom(|iters| {
                let name = format!("keypooler/{workload}");
                if features.len() == 1 {
                    timed(&name, iters, || assert!(ours(&ours_pool, features[0])))
                } else {
                    run_threads(&name, features, iters, |f| assert!(ours(&ours_pool, f)))
                }
            });
        });
        group.bench_function(BenchmarkId::new("baseline", workload), |b| {
            b.iter_custom(|iters| {
                let name = format!("baseline/{workload}");
                if features.len() == 1 {
                    timed(&name, iters, || {
                        assert!(go_pool.pick(black_box(features[0])).is_some())
                    })
                } else {
                    run_threads(&name, features, iters, |f| {
                        assert!(go_pool.pick(f).is_some())
                    })
                }
            });
        });
    }
    drop(held);
    group.finish();
}

/// Every key spent for the rest of the run: the 429 answer, with 10 and with 100,000 keys.
fn spent(c: &mut Criterion) {
    let mut group = c.benchmark_group("spent");
    for keys in [10, 100_000] {
        let pool = pool(
            Clock::monotonic(),
            keys,
            &["chat"],
            ONE_A_YEAR.0,
            ONE_A_YEAR.1,
        );
        for _ in 0..keys {
            assert!(ours(&pool, "chat"), "each key serves once");
        }
        assert!(!ours(&pool, "chat"), "then every key is spent");
        group.bench_function(BenchmarkId::from_parameter(keys), |b| {
            b.iter_custom(|iters| {
                timed(&format!("spent/{keys}"), iters, || {
                    assert!(!ours(&pool, "chat"))
                })
            });
        });
    }
    group.finish();
}

/// Picks among 100,000 keys with none cooling, and with 99 % of them cooling (whole key, for
/// the rest of the run; every hundredth key free): the cost of skipping what is not available.
fn cooling(c: &mut Criterion) {
    let mut group = c.benchmark_group("cooling");
    for (name, cooling_percent) in [("none", 0), ("99 percent", 99)] {
        let clock = Clock::monotonic();
        let pool = pool(
            clock.clone(),
            100_000,
            &["chat"],
            UNSPENDABLE.0,
            UNSPENDABLE.1,
        );
        let now = Now::read(&clock);
        let cooled = HealthState {
            key: Backoff {
                until: Some(now.after(366 * 24 * 3_600_000)),
                level: 1,
            },
            ..HealthState::default()
        };
        for (i, key) in pool.load().catalog.keys().enumerate() {
            if i % 100 < cooling_percent {
                key.health.publish(cooled.clone(), now);
            }
        }
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                timed(&format!("cooling/{name}"), iters, || {
                    assert!(ours(&pool, "chat"))
                })
            });
        });
    }
    group.finish();
}

/// The clock candidates for rate windows, in milliseconds.
fn clock(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock");
    let production = Clock::monotonic();
    group.bench_function("Clock::now_ms (production)", |b| {
        b.iter(|| black_box(&production).now_ms());
    });
    let start = Instant::now();
    group.bench_function("Instant::elapsed", |b| {
        b.iter(|| black_box(start).elapsed().as_millis() as u64);
    });
    group.bench_function("CLOCK_MONOTONIC_COARSE", |b| {
        b.iter(|| {
            let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
            now.tv_sec as u64 * 1_000 + now.tv_nsec as u64 / 1_000_000
        });
    });
    let ticked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (ticked, stop) = (Arc::clone(&ticked), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                ticked.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    group.bench_function("AtomicU64 ticked by a thread", |b| {
        b.iter(|| black_box(&ticked).load(Ordering::Relaxed));
    });
    stop.store(true, Ordering::Relaxed);
    ticker.join().expect("ticker thread");
    group.finish();
}

/// Our cost next to the baseline's, from this run.
fn report() {
    println!(
        "\n== pick: keypooler (snapshot load + pick) vs the lock-based baseline, mean ns per pick per thread, this run =="
    );
    for (workload, _) in WORKLOADS {
        let ours = TALLY.mean_ns(&format!("keypooler/{workload}"));
        let base = TALLY.mean_ns(&format!("baseline/{workload}"));
        if let (Some(ours), Some(base)) = (ours, base) {
            println!(
                "{workload:<32} keypooler {ours:>8.1} ns   baseline {base:>8.1} ns   {:>5.1}x faster",
                base / ours
            );
        }
    }
    if let Some(held) = TALLY.mean_ns("keypooler/snapshot held") {
        println!(
            "{:<32} keypooler {held:>8.1} ns   (Pool::pick alone, target <= 25 ns)",
            "1 thread, snapshot held"
        );
    }
    if let (Some(small), Some(large)) = (TALLY.mean_ns("spent/10"), TALLY.mean_ns("spent/100000")) {
        println!(
            "spent path                       10 keys {small:>8.1} ns   100,000 keys {large:>8.1} ns   ratio {:.2}",
            large / small
        );
    }
    if let (Some(none), Some(most)) = (
        TALLY.mean_ns("cooling/none"),
        TALLY.mean_ns("cooling/99 percent"),
    ) {
        println!(
            "cooling, 100,000 keys            none {none:>8.1} ns   99 % cooling {most:>8.1} ns   ratio {:.2} (target <= 5)",
            most / none
        );
    }
}

fn main() {
    let mut criterion = common::criterion();
    pick(&mut criterion);
    spent(&mut criterion);
    cooling(&mut criterion);
    clock(&mut criterion);
    criterion.final_summary();
    report();
}
