//! Rate windows: one packed atomic word per key and feature, dated on the [`Clock`](super::Clock).

use super::sync::{AtomicU64, Ordering};

/// Bits of the packed word that hold the use count; the other 40 hold the window start in
/// milliseconds on the [`Clock`](super::Clock) (about 34 years of running time).
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// The largest `rate_limit` a window can count to (16,777,215 uses per window).
pub const MAX_RATE_LIMIT: u32 = COUNT_MASK as u32;

/// The budget of one key for one feature: a fixed window that opens at the first use after the
/// previous window has ended, and counts uses up to a limit.
///
/// The whole state is one `AtomicU64` packing `(window start ms << 24) | uses`, moved by a short
/// compare-exchange loop, so a grant is exact under any contention: two threads can never both
/// take the last use of a window.
///
/// The word is not padded to a cache line of its own: there is one counter per key and feature,
/// each behind its own `Arc`, and a 64-byte-aligned line each was the largest part of a key's
/// memory (128 bytes and an aligned allocation per counter; figures in PERFORMANCE.md). A key's
/// counters are allocated together, with its list of them, when it joins its tier's roster, so
/// the counters of one feature in two keys next to each other in the rotation (what two threads
/// picking that feature take) lie 64 bytes or more apart.
///
/// Ordering: `Relaxed` throughout. The word publishes no other memory; all that matters is that
/// every read-modify-write of this one location is totally ordered, which atomics guarantee at
/// any ordering.
#[derive(Default)]
pub struct WindowCounter {
    state: AtomicU64,
}

impl std::fmt::Debug for WindowCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (start, used) = unpack(self.state.load(Ordering::Relaxed));
        f.debug_struct("WindowCounter")
            .field("window_start_ms", &start)
            .field("used", &used)
            .finish()
    }
}

fn unpack(word: u64) -> (u64, u32) {
    (word >> COUNT_BITS, (word & COUNT_MASK) as u32)
}

fn pack(start_ms: u64, used: u32) -> u64 {
    (start_ms << COUNT_BITS) | u64::from(used)
}

impl WindowCounter {
    /// Takes one use if the window has budget left, returning the start of the window it was
    /// counted in. On refusal returns the clock instant (ms) at which the current window ends.
    ///
    /// `limit` and `window_ms` come from the caller's snapshot, so a tier's new limits apply at
    /// once while the count of the open window is kept.
    #[inline]
    pub fn try_acquire(&self, now_ms: u64, limit: u32, window_ms: u64) -> Result<u64, u64> {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (start, used) = unpack(current);
            let (start, next) = if used == 0 || now_ms >= start.saturating_add(window_ms) {
                (now_ms, pack(now_ms, 1))
            } else if used < limit {
                (start, pack(start, used + 1))
            } else {
                return Err(start.saturating_add(window_ms));
            };
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(start),
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back a use taken in the window that started at `window_start` and not served after
    /// all. Does nothing once another window has opened: its count is not ours to lower.
    pub fn release(&self, window_start: u64) {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (start, used) = unpack(current);
            if start != window_start || used == 0 {
                return;
            }
            match self.state.compare_exchange_weak(
                current,
                pack(start, used - 1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Uses counted in the window open at `now_ms` (0 when the last window has ended).
    pub fn used(&self, now_ms: u64, window_ms: u64) -> u32 {
        let (start, used) = unpack(self.state.load(Ordering::Relaxed));
        if now_ms >= start.saturating_add(window_ms) {
            0
        } else {
            used
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn grants_exactly_the_limit_then_reports_the_window_end() {
        let counter = WindowCounter::default();
        for _ in 0..3 {
            assert_eq!(counter.try_acquire(5_000, 3, 60_000), Ok(5_000));
        }
        assert_eq!(counter.try_acquire(5_001, 3, 60_000), Err(65_000));
        assert_eq!(counter.used(5_001, 60_000), 3);
    }

    #[test]
    fn a_window_opens_at_the_first_use_after_the_last_one_ended() {
        let counter = WindowCounter::default();
        assert!(counter.try_acquire(1_000, 1, 10_000).is_ok());
        assert_eq!(counter.try_acquire(10_999, 1, 10_000), Err(11_000));
        // Idle for a while: the next window starts at the next use, not at 11_000.
        assert!(counter.try_acquire(25_000, 1, 10_000).is_ok());
        assert_eq!(counter.try_acquire(34_999, 1, 10_000), Err(35_000));
        assert_eq!(counter.used(35_000, 10_000), 0);
        assert!(counter.try_acquire(35_000, 1, 10_000).is_ok());
    }

    #[test]
    fn a_lowered_limit_applies_to_the_open_window_and_keeps_its_count() {
        let counter = WindowCounter::default();
        for _ in 0..5 {
            counter.try_acquire(0, 10, 60_000).unwrap();
        }
        assert_eq!(counter.try_acquire(1, 5, 60_000), Err(60_000));
        assert!(counter.try_acquire(1, 6, 60_000).is_ok());
    }

    #[test]
    fn a_release_returns_a_use_to_its_own_window_only() {
        let counter = WindowCounter::default();
        let start = counter.try_acquire(100, 1, 1_000).unwrap();
        counter.release(start);
        // A window whose only use was given back is as good as unopened.
        assert_eq!(counter.try_acquire(200, 1, 1_000), Ok(200));
        counter.release(7);
        assert_eq!(counter.try_acquire(300, 1, 1_000), Err(1_200));
    }

    #[test]
    fn the_largest_limit_counts_to_the_end() {
        let counter = WindowCounter::default();
        counter
            .state
            .store(pack(7, MAX_RATE_LIMIT - 1), Ordering::Relaxed);
        assert!(counter.try_acquire(8, MAX_RATE_LIMIT, 1_000).is_ok());
        assert_eq!(counter.try_acquire(8, MAX_RATE_LIMIT, 1_000), Err(1_007));
        assert_eq!(counter.used(8, 1_000), MAX_RATE_LIMIT);
    }

    #[test]
    fn many_threads_on_one_key_get_exactly_the_limit() {
        const LIMIT: u32 = 10_000;
        let counter = Arc::new(WindowCounter::default());
        let granted = Arc::new(std::sync::atomic::AtomicU32::new(0));
        std::thread::scope(|scope| {
            for _ in 0..16 {
                let counter = Arc::clone(&counter);
                let granted = Arc::clone(&granted);
                scope.spawn(move || {
                    for _ in 0..2_000 {
                        if counter.try_acquire(500, LIMIT, 60_000).is_ok() {
                            granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.load(std::sync::atomic::Ordering::Relaxed), LIMIT);
    }

    proptest::proptest! {
        /// Whatever the sequence of instants, no window ever grants more than its limit.
        #[test]
        fn never_more_than_the_limit_in_a_window(
            limit in 1u32..20,
            window_ms in 1u64..5_000,
            steps in proptest::collection::vec(0u64..400, 1..400),
        ) {
            let counter = WindowCounter::default();
            let mut now = 0u64;
            let mut window: Option<(u64, u32)> = None;
            for step in steps {
                now += step;
                if counter.try_acquire(now, limit, window_ms).is_ok() {
                    window = match window {
                        Some((start, used)) if now < start + window_ms => Some((start, used + 1)),
                        _ => Some((now, 1)),
                    };
                    let (_, used) = window.unwrap();
                    proptest::prop_assert!(used <= limit);
                } else {
                    let (start, used) = window.expect("a refusal needs an open window");
                    proptest::prop_assert!(now < start + window_ms);
                    proptest::prop_assert_eq!(used, limit);
                }
            }
        }
    }
}

#[cfg(loom)]
mod loom_model {
    use std::sync::Arc;

    use super::*;

    /// Three threads race for the two uses left in a window: loom explores every interleaving
    /// of the compare-exchange loop and exactly two must win.
    #[test]
    fn the_last_uses_of_a_window_go_to_exactly_that_many_threads() {
        loom::model(|| {
            let counter = Arc::new(WindowCounter::default());
            counter.try_acquire(10, 3, 1_000).unwrap();
            let handles: Vec<_> = (0..3)
                .map(|_| {
                    let counter = Arc::clone(&counter);
                    loom::thread::spawn(move || counter.try_acquire(20, 3, 1_000).is_ok())
                })
                .collect();
            let wins = handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|won| *won)
                .count();
            assert_eq!(wins, 2);
            assert_eq!(counter.used(20, 1_000), 3);
        });
    }

    /// One thread opens a new window while another takes the last use of the old one: the old
    /// window's last use and the new window's first are both granted, never a third.
    #[test]
    fn rollover_races_stay_exact() {
        loom::model(|| {
            let counter = Arc::new(WindowCounter::default());
            counter.try_acquire(0, 1, 100).unwrap();
            let late = {
                let counter = Arc::clone(&counter);
                loom::thread::spawn(move || counter.try_acquire(100, 1, 100).is_ok())
            };
            let later = {
                let counter = Arc::clone(&counter);
                loom::thread::spawn(move || counter.try_acquire(150, 1, 100).is_ok())
            };
            let wins = [late.join().unwrap(), later.join().unwrap()]
                .into_iter()
                .filter(|won| *won)
                .count();
            assert_eq!(wins, 1);
        });
    }
}
