//! Rate windows: one packed atomic word per key and feature, dated on the [`Clock`](super::Clock).

use super::sync::{AtomicU64, Ordering};

/// The largest `rate_limit` a window can count to: 2,147,483,647 uses per window (the largest
/// 32-bit signed integer, what the Go service's users write at most, 1,000,000,000 meaning
/// "unlimited").
pub const MAX_RATE_LIMIT: u32 = i32::MAX as u32;

/// The top bit of a word tells its layout: clear for the fine one, set for the wide one.
const WIDE: u64 = 1 << 63;
/// Fine layout: `start ms (40 bits) << 23 | uses (23 bits)`.
const FINE_COUNT_BITS: u32 = 23;
/// The most uses a fine word counts: past it, the window's word turns wide.
const FINE_COUNT_MAX: u32 = (1 << FINE_COUNT_BITS) - 1;
/// Wide layout: `WIDE | start in units of 256 ms (32 bits) << 31 | uses (31 bits)`.
const WIDE_COUNT_BITS: u32 = 31;
const WIDE_UNIT_SHIFT: u32 = 8;
const WIDE_UNIT_MS: u64 = 1 << WIDE_UNIT_SHIFT;
/// The latest running time (ms) a window can open at in either layout: 2^40 ms less one wide
/// unit, about 34.8 years of running time.
pub(crate) const LAST_START_MS: u64 = (1 << 40) - WIDE_UNIT_MS;

/// The budget of one key for one feature: a fixed window that opens at the first use after the
/// previous window has ended, and counts uses up to a limit.
///
/// The whole state is one `AtomicU64` moved by a short compare-exchange loop, so a grant is
/// exact under any contention: two threads can never both take the last use of a window.
///
/// A count up to [`MAX_RATE_LIMIT`] needs 31 bits, which leaves too few for a start in
/// milliseconds over decades. So the word has two layouts, told apart by its top bit:
/// * **fine** (every window while it has counted at most 8,388,607 uses, so nearly every
///   window there is): the start in milliseconds (40 bits, 34.8 years of running time) and the
///   count (23 bits);
/// * **wide** (a window past 8,388,607 uses, only possible with a limit that large): the start
///   in units of 256 ms (32 bits, the same 34.8 years) and the count (31 bits).
///
/// The compare-exchange that takes the use past 8,388,607 rewrites the word wide, rounding the
/// start *up* to the next 256 ms: the window ends up to 255 ms later, never earlier, so it never
/// serves more than its limit (it may serve a little later). A window keeps its layout until it
/// ends. Running time past 34.8 years opens no window (the key is refused, never over-served);
/// running time resumes across restarts where the last run left it, so that is 34.8 years of
/// the broker running, in total.
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

/// (window start ms, uses) of a word, in either layout.
fn unpack(word: u64) -> (u64, u32) {
    if word & WIDE == 0 {
        (
            word >> FINE_COUNT_BITS,
            (word & u64::from(FINE_COUNT_MAX)) as u32,
        )
    } else {
        let units = (word & !WIDE) >> WIDE_COUNT_BITS;
        (
            units << WIDE_UNIT_SHIFT,
            (word & ((1 << WIDE_COUNT_BITS) - 1)) as u32,
        )
    }
}

/// The word of a window that started at `start_ms` (at most [`LAST_START_MS`]) and has counted
/// `used` uses: fine while the count fits, else wide with the start rounded up to 256 ms.
fn pack(start_ms: u64, used: u32) -> u64 {
    if used <= FINE_COUNT_MAX {
        (start_ms << FINE_COUNT_BITS) | u64::from(used)
    } else {
        let units = start_ms.div_ceil(WIDE_UNIT_MS);
        WIDE | (units << WIDE_COUNT_BITS) | u64::from(used)
    }
}

/// What a refusal says when no window of this key can ever serve the draw: its limit is below
/// the draw, or running time is past [`LAST_START_MS`].
pub(crate) const NEVER: u64 = u64::MAX;

impl WindowCounter {
    /// Takes `n` uses (a draw of `n`, at least 1) if the window has that many left, returning the
    /// start of the window they were counted in. On refusal returns the clock instant (ms) at
    /// which the current window ends, or [`NEVER`] when no window can hold `n` uses under
    /// `limit` (or running time is past the last instant a window can open at).
    ///
    /// `limit` and `window_ms` come from the caller's snapshot, so a tier's new limits apply at
    /// once while the count of the open window is kept.
    #[inline]
    pub fn try_acquire(&self, now_ms: u64, limit: u32, window_ms: u64, n: u32) -> Result<u64, u64> {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (start, used) = unpack(current);
            let open = used != 0 && now_ms < start.saturating_add(window_ms);
            let (start, used) = if open {
                (start, used)
            } else if now_ms <= LAST_START_MS {
                (now_ms, 0)
            } else {
                return Err(NEVER);
            };
            let Some(next) = used.checked_add(n).filter(|&next| next <= limit) else {
                return Err(if open {
                    start.saturating_add(window_ms)
                } else {
                    NEVER
                });
            };
            let next = pack(start, next);
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(unpack(next).0),
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back `n` uses taken in the window that started at `window_start` and not served
    /// after all. Does nothing once another window has opened (its count is not ours to lower),
    /// or once the window turned wide since (its start moved; the uses stay counted, which can
    /// only serve less).
    pub fn release(&self, window_start: u64, n: u32) {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (start, used) = unpack(current);
            if start != window_start || used == 0 {
                return;
            }
            match self.state.compare_exchange_weak(
                current,
                pack(start, used.saturating_sub(n)),
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

    /// A counter whose window started at `start_ms` with `used` uses counted (tests).
    #[cfg(test)]
    fn at(start_ms: u64, used: u32) -> Self {
        let counter = Self::default();
        counter.state.store(pack(start_ms, used), Ordering::Relaxed);
        counter
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
            assert_eq!(counter.try_acquire(5_000, 3, 60_000, 1), Ok(5_000));
        }
        assert_eq!(counter.try_acquire(5_001, 3, 60_000, 1), Err(65_000));
        assert_eq!(counter.used(5_001, 60_000), 3);
    }

    #[test]
    fn a_window_opens_at_the_first_use_after_the_last_one_ended() {
        let counter = WindowCounter::default();
        assert!(counter.try_acquire(1_000, 1, 10_000, 1).is_ok());
        assert_eq!(counter.try_acquire(10_999, 1, 10_000, 1), Err(11_000));
        // Idle for a while: the next window starts at the next use, not at 11_000.
        assert!(counter.try_acquire(25_001, 1, 10_000, 1).is_ok());
        assert_eq!(counter.try_acquire(35_000, 1, 10_000, 1), Err(35_001));
        assert_eq!(counter.used(35_001, 10_000), 0);
        assert!(counter.try_acquire(35_001, 1, 10_000, 1).is_ok());
    }

    #[test]
    fn a_lowered_limit_applies_to_the_open_window_and_keeps_its_count() {
        let counter = WindowCounter::default();
        for _ in 0..5 {
            counter.try_acquire(0, 10, 60_000, 1).unwrap();
        }
        assert_eq!(counter.try_acquire(1, 5, 60_000, 1), Err(60_000));
        assert!(counter.try_acquire(1, 6, 60_000, 1).is_ok());
    }

    #[test]
    fn a_release_returns_its_uses_to_its_own_window_only() {
        let counter = WindowCounter::default();
        let start = counter.try_acquire(100, 3, 1_000, 3).unwrap();
        counter.release(start, 3);
        // A window whose only uses were given back is as good as unopened.
        assert_eq!(counter.try_acquire(200, 1, 1_000, 1), Ok(200));
        counter.release(7, 1);
        assert_eq!(counter.try_acquire(300, 1, 1_000, 1), Err(1_200));
    }

    /// A draw of n is served with exactly n left, refused with n - 1 left (the window's end
    /// given), and never by a window whose limit is below n.
    #[test]
    fn a_draw_of_n_needs_n_uses_left() {
        let counter = WindowCounter::default();
        assert_eq!(counter.try_acquire(1_000, 10, 60_000, 4), Ok(1_000));
        assert_eq!(counter.try_acquire(1_001, 10, 60_000, 6), Ok(1_000));
        assert_eq!(counter.used(1_001, 60_000), 10);

        let counter = WindowCounter::at(1_000, 5);
        assert_eq!(counter.try_acquire(1_001, 10, 60_000, 6), Err(61_000));
        assert_eq!(counter.try_acquire(1_001, 10, 60_000, 5), Ok(1_000));

        let counter = WindowCounter::default();
        assert_eq!(counter.try_acquire(1_000, 3, 60_000, 4), Err(NEVER));
        assert_eq!(counter.used(1_000, 60_000), 0);
        // Past the end of its window, the same counter serves a draw of its whole limit again.
        let counter = WindowCounter::at(1_000, 3);
        assert_eq!(counter.try_acquire(61_000, 3, 60_000, 3), Ok(61_000));
    }

    #[test]
    fn the_largest_limit_counts_to_the_end() {
        let counter = WindowCounter::at(7 * 256, MAX_RATE_LIMIT - 1);
        assert!(
            counter
                .try_acquire(7 * 256 + 1, MAX_RATE_LIMIT, 1_000, 1)
                .is_ok()
        );
        assert_eq!(
            counter.try_acquire(7 * 256 + 1, MAX_RATE_LIMIT, 1_000, 1),
            Err(7 * 256 + 1_000)
        );
        assert_eq!(counter.used(7 * 256 + 1, 1_000), MAX_RATE_LIMIT);

        // A billion ("unlimited", as the Go service's users write it) in one window.
        let counter = WindowCounter::default();
        let start = counter
            .try_acquire(1_000, 1_000_000_000, 60_000, 999_999_999)
            .unwrap();
        assert_eq!(start, 1_024, "wide from the start: rounded up to 256 ms");
        assert_eq!(
            counter.try_acquire(2_000, 1_000_000_000, 60_000, 1),
            Ok(1_024)
        );
        assert_eq!(
            counter.try_acquire(2_000, 1_000_000_000, 60_000, 1),
            Err(61_024)
        );
    }

    /// The use that takes a window past 8,388,607 turns its word wide: the window keeps its
    /// count and ends up to 255 ms later, never earlier.
    #[test]
    fn a_window_that_outgrows_the_fine_layout_ends_no_earlier() {
        let limit = FINE_COUNT_MAX + 10;
        let counter = WindowCounter::at(1_001, FINE_COUNT_MAX - 1);
        assert_eq!(counter.try_acquire(1_002, limit, 60_000, 1), Ok(1_001));
        assert_eq!(counter.try_acquire(1_002, limit, 60_000, 1), Ok(1_024));
        assert_eq!(counter.used(61_001, 60_000), FINE_COUNT_MAX + 1);
        assert_eq!(counter.try_acquire(61_001, limit, 60_000, 10), Err(61_024));
        // A use given back in the wide window's own terms lowers it, back into the fine layout.
        counter.release(1_024, 2);
        assert_eq!(counter.used(1_002, 60_000), FINE_COUNT_MAX - 1);
        assert_eq!(unpack(counter.state.load(Ordering::Relaxed)).0, 1_024);
        assert_eq!(counter.try_acquire(61_024, limit, 60_000, 1), Ok(61_024));
    }

    #[test]
    fn both_layouts_hold_every_start_up_to_the_last() {
        for start in [0, 1, 255, 256, 1_000, LAST_START_MS - 1, LAST_START_MS] {
            assert_eq!(unpack(pack(start, 1)), (start, 1));
            assert_eq!(unpack(pack(start, FINE_COUNT_MAX)), (start, FINE_COUNT_MAX));
            let (wide, used) = unpack(pack(start, MAX_RATE_LIMIT));
            assert_eq!(used, MAX_RATE_LIMIT);
            assert!(
                wide >= start && wide - start < WIDE_UNIT_MS,
                "{start} -> {wide}"
            );
        }
        // Past the last start no window opens: refused, never served without a count.
        let counter = WindowCounter::default();
        assert!(counter.try_acquire(LAST_START_MS, 1, 1_000, 1).is_ok());
        assert_eq!(
            counter.try_acquire(LAST_START_MS + 1_000, 1, 1_000, 1),
            Err(NEVER)
        );
        assert_eq!(
            counter.try_acquire(LAST_START_MS + 1, 1, 1_000, 1),
            Err(LAST_START_MS + 1_000)
        );
    }

    #[test]
    fn many_threads_on_one_key_get_exactly_the_limit() {
        const LIMIT: u32 = 10_000;
        let counter = Arc::new(WindowCounter::default());
        let granted = Arc::new(std::sync::atomic::AtomicU32::new(0));
        std::thread::scope(|scope| {
            for thread in 0..16u32 {
                let counter = Arc::clone(&counter);
                let granted = Arc::clone(&granted);
                scope.spawn(move || {
                    let n = 1 + thread % 3;
                    for _ in 0..2_000 {
                        if counter.try_acquire(500, LIMIT, 60_000, n).is_ok() {
                            granted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let granted = granted.load(std::sync::atomic::Ordering::Relaxed);
        assert!((LIMIT - 2..=LIMIT).contains(&granted), "{granted}");
        assert_eq!(counter.used(500, 60_000), granted);
    }

    /// Limits near the edges of the two layouts, and draws from 1 to a third of the limit.
    fn limit_and_draws() -> impl proptest::strategy::Strategy<Value = (u32, Vec<(u64, u32)>)> {
        use proptest::prelude::*;
        let base = prop_oneof![
            Just(0u32),
            Just(FINE_COUNT_MAX - 8),
            Just(MAX_RATE_LIMIT - 20)
        ];
        (base, 1u32..20).prop_flat_map(|(base, extra)| {
            let limit = base + extra;
            let draw = prop_oneof![1u32..4, Just((limit / 3).max(1))];
            (
                Just(limit),
                proptest::collection::vec((0u64..400, draw), 1..300),
            )
        })
    }

    proptest::proptest! {
        /// Whatever the instants and draws, the counter grants exactly what the rule says: a
        /// draw fits while the open window has that many uses left; a window opens at the first
        /// grant after the last one ended, and lasts its length, moved up to the next 256 ms
        /// from the moment its count passes 8,388,607. So no window grants past its limit, and
        /// none ends before its length.
        #[test]
        fn grants_follow_the_rule_and_never_pass_the_limit(
            (limit, steps) in limit_and_draws(),
            window_ms in 1u64..5_000,
        ) {
            let counter = WindowCounter::default();
            let mut now = 0u64;
            // (start as the rule says, uses) of the open window.
            let mut window: Option<(u64, u32)> = None;
            for (step, n) in steps {
                now += step;
                let open = window.filter(|&(start, _)| now < start + window_ms);
                let (start, used) = open.unwrap_or((now, 0));
                let fits = n <= limit - used;
                let got = counter.try_acquire(now, limit, window_ms, n);
                proptest::prop_assert_eq!(got.is_ok(), fits, "{} + {} of {} at {}", used, n, limit, now);
                if fits {
                    let used = used + n;
                    let start = if used > FINE_COUNT_MAX { start.div_ceil(256) * 256 } else { start };
                    proptest::prop_assert_eq!(got, Ok(start));
                    window = Some((start, used));
                } else if let Some((start, _)) = open {
                    proptest::prop_assert_eq!(got, Err(start + window_ms));
                }
                let used = window.filter(|&(start, _)| now < start + window_ms).map_or(0, |w| w.1);
                proptest::prop_assert_eq!(counter.used(now, window_ms), used);
            }
        }
    }
}

#[cfg(loom)]
mod loom_model {
    use std::sync::Arc;

    use super::*;

    /// Threads draw `n` each, racing for what is left of a window whose word starts at
    /// (`start`, `used`): exactly `winners` of them are served, and the count is exact.
    fn race(start: u64, used: u32, limit: u32, n: u32, threads: usize, winners: usize) {
        loom::model(move || {
            let counter = Arc::new(WindowCounter::at(start, used));
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let counter = Arc::clone(&counter);
                    loom::thread::spawn(move || {
                        counter.try_acquire(start + 1, limit, 1_000, n).is_ok()
                    })
                })
                .collect();
            let wins = handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|won| *won)
                .count();
            assert_eq!(wins, winners);
            assert_eq!(counter.used(start + 1, 1_000), used + n * winners as u32);
        });
    }

    /// Three threads race for the two uses left in a window: exactly two win.
    #[test]
    fn the_last_uses_of_a_window_go_to_exactly_that_many_threads() {
        race(10, 1, 3, 1, 3, 2);
    }

    /// Three threads draw 2 each from the 5 uses left: exactly two are served, one unit stays.
    #[test]
    fn draws_of_n_share_what_is_left_exactly() {
        race(10, 5, 10, 2, 3, 2);
    }

    /// The race for the last fine uses and the first wide ones: three threads for two uses
    /// around 8,388,607, one of them rewriting the word wide.
    #[test]
    fn the_turn_to_the_wide_layout_stays_exact() {
        race(1_001, FINE_COUNT_MAX - 1, FINE_COUNT_MAX + 1, 1, 3, 2);
    }

    /// The largest limit's last use, with the word wide already.
    #[test]
    fn the_largest_limit_is_exact_under_contention() {
        race(2_048, MAX_RATE_LIMIT - 1, MAX_RATE_LIMIT, 1, 2, 1);
    }

    /// One thread opens a new window while another takes the last use of the old one: the old
    /// window's last use and the new window's first are both granted, never a third.
    #[test]
    fn rollover_races_stay_exact() {
        loom::model(|| {
            let counter = Arc::new(WindowCounter::default());
            counter.try_acquire(0, 1, 100, 1).unwrap();
            let late = {
                let counter = Arc::clone(&counter);
                loom::thread::spawn(move || counter.try_acquire(100, 1, 100, 1).is_ok())
            };
            let later = {
                let counter = Arc::clone(&counter);
                loom::thread::spawn(move || counter.try_acquire(150, 1, 100, 1).is_ok())
            };
            let wins = [late.join().unwrap(), later.join().unwrap()]
                .into_iter()
                .filter(|won| *won)
                .count();
            assert_eq!(wins, 1);
        });
    }
}
