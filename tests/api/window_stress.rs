//! A key's limit of N per window is never exceeded under any interleaving. 64 threads
//! pick through the real pick path (`Pool::pick`: snapshot, cursor, counters) while the main
//! thread moves a manual clock forward one window at a time; every serve is counted per key
//! and per window.
//!
//! The clock moves in steps of exactly one window, so every window opens at a step and ends at
//! the next. Each picker reads the clock before and after its pick: when both fall in the same
//! window, the serve is counted in it (a window must never count more than N); when the clock
//! moved during the pick, the serve is counted as "between" the two. The clock moves on only
//! once the window's whole supply (keys × N) has been served and pickers have been refused:
//! demand exceeds supply, so every key must also be served exactly N times per window overall.
//!
//! Size: `KEYPOOLER_STRESS_WINDOWS` windows (default 12, a few seconds in a debug build); each
//! window sees 16 keys × 2,000 serves plus at least 40,000 refused picks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keypooler::broker::{Catalog, Clock, KeyEntry, KeyInfo, Limit, Pick, Plaintext, Pool, Tier};

const THREADS: usize = 64;
const KEYS: usize = 16;
const LIMIT: u32 = 2_000;
const WINDOW_SECONDS: u32 = 60;
const WINDOW_MS: u64 = WINDOW_SECONDS as u64 * 1_000;
const REFUSED_PER_WINDOW: u64 = 40_000;

fn windows() -> usize {
    std::env::var("KEYPOOLER_STRESS_WINDOWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12)
}

fn pool() -> (Arc<Pool>, keypooler::broker::ManualClock, Clock) {
    let (clock, hand) = Clock::manual();
    let pool = Arc::new(Pool::new(clock.clone()));
    let mut catalog = Catalog::default();
    let mut dirty = catalog.put_tier(Tier {
        id: "tier".into(),
        name: "stress".into(),
        description: String::new(),
        created_at_ms: 0,
        features: [(
            "chat".into(),
            Limit {
                rate_limit: LIMIT,
                window_seconds: WINDOW_SECONDS,
            },
        )]
        .into(),
    });
    for i in 0..KEYS {
        let id = i.to_string();
        let entry = KeyEntry::new(
            KeyInfo {
                id: id.as_str().into(),
                name: id.as_str().into(),
                tier_id: "tier".into(),
                active: true,
                created_at_ms: i as i64,
                expires_at_ms: None,
            },
            &Plaintext {
                value: "stress",
                metadata: &serde_json::Map::new(),
                secrets: &Default::default(),
            },
            None,
        );
        dirty.extend(catalog.put_key(entry));
    }
    pool.publish(catalog, &dirty);
    (pool, hand, clock)
}

/// What one picker saw.
#[derive(Default)]
struct Tally {
    /// `[window * KEYS + key]`: serves whose clock reads before and after fell in that window.
    within: Vec<u32>,
    /// `(key, window before, window after)`: serves during which the clock moved.
    between: Vec<(usize, usize, usize)>,
    picks: u64,
}

#[test]
fn no_window_of_any_key_serves_more_than_its_limit_under_64_threads() {
    let windows = windows();
    let (pool, hand, clock) = pool();
    let start = clock.now_ms();
    let window_of = |now: u64| ((now - start) / WINDOW_MS) as usize;
    let served = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let began = Instant::now();
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let pickers: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    let mut tally = Tally {
                        within: vec![0; windows * KEYS],
                        ..Tally::default()
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let before = window_of(clock.now_ms());
                        let snapshot = pool.load();
                        let pick = pool.pick(&snapshot, "chat");
                        let after = window_of(clock.now_ms());
                        tally.picks += 1;
                        match pick {
                            Pick::Served(key, _) => {
                                let key: usize = key.info.id.parse().unwrap();
                                assert!(after < windows, "served after the last window");
                                if before == after {
                                    tally.within[before * KEYS + key] += 1;
                                } else {
                                    tally.between.push((key, before, after));
                                }
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            Pick::Spent(_) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            Pick::UnknownFeature | Pick::OutOfScope | Pick::AboveLimit(_) => {
                                panic!("the feature exists for the admin")
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        // The clock hand: each window ends once its supply is gone and pickers were refused.
        let supply = KEYS as u64 * u64::from(LIMIT);
        for window in 1..=windows as u64 {
            let deadline = Instant::now() + Duration::from_secs(120);
            while served.load(Ordering::Relaxed) < supply * window
                || refused.load(Ordering::Relaxed) < REFUSED_PER_WINDOW * window
            {
                assert!(
                    Instant::now() < deadline,
                    "window {window} never ran out: {} served",
                    served.load(Ordering::Relaxed)
                );
                std::thread::yield_now();
            }
            if window < windows as u64 {
                hand.advance_ms(WINDOW_MS);
            }
        }
        stop.store(true, Ordering::Relaxed);
        pickers.into_iter().map(|p| p.join().unwrap()).collect()
    });

    let mut within = vec![0u32; windows * KEYS];
    let mut per_key = [0u64; KEYS];
    let mut between = 0usize;
    let mut picks = 0u64;
    for tally in &tallies {
        for (cell, n) in within.iter_mut().zip(&tally.within) {
            *cell += n;
        }
        for &(key, before, after) in &tally.between {
            assert!(before < after);
            per_key[key] += 1;
            between += 1;
        }
        picks += tally.picks;
    }
    for window in 0..windows {
        for key in 0..KEYS {
            let count = within[window * KEYS + key];
            assert!(
                count <= LIMIT,
                "key {key} served {count} times in window {window}: limit {LIMIT}"
            );
            per_key[key] += u64::from(count);
        }
    }
    let expected = windows as u64 * u64::from(LIMIT);
    for (key, total) in per_key.iter().enumerate() {
        assert_eq!(
            *total, expected,
            "key {key}: {LIMIT} per window, every window"
        );
    }
    assert_eq!(
        served.load(Ordering::Relaxed),
        KEYS as u64 * expected,
        "nothing served beyond the supply"
    );
    println!(
        "window stress: {THREADS} threads, {windows} windows, {picks} picks, {} served, {} refused, \
         {between} during a clock move, {:.1} s",
        served.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        began.elapsed().as_secs_f64()
    );
}
