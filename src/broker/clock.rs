//! The clock that dates rate windows, usage windows and expiry.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_utils::CachePadded;

use super::sync::{AtomicU64, Ordering};

/// Milliseconds for rate windows and expiry, from a monotonic source or, in tests, a hand-moved
/// one. Cheap to clone; reading it takes no lock.
///
/// In production a background thread stores the milliseconds elapsed since start into an atomic
/// every `TICK`, and a read is one relaxed load (cheaper than `Instant::now`; figures in
/// PERFORMANCE.md). The value never goes backwards and only lags real time, by a tick plus the
/// thread's scheduling delay: windows are exact on this clock, and a key may be served up to one
/// lag past its `expires_at`.
#[derive(Clone, Debug)]
pub struct Clock {
    source: ClockSource,
    /// Unix time (ms) at clock instant 0, to place wall-clock instants (key expiry) on it.
    unix_at_zero_ms: i64,
}

/// Where a [`Clock::manual`] starts on the wall clock: 2026-06-01T00:00:00Z.
const MANUAL_START_UNIX_MS: i64 = 1_780_272_000_000;

/// How often the production clock's thread advances it.
pub const TICK: Duration = Duration::from_millis(1);

#[derive(Clone, Debug)]
enum ClockSource {
    /// Advanced by the ticker thread, which stops once every clone of the clock is dropped.
    Ticked(Arc<CachePadded<std::sync::atomic::AtomicU64>>),
    /// `Instant` read on every call: only if the ticker thread could not be started.
    Instant(Instant),
    Manual(Arc<AtomicU64>),
}

/// Moves a manual [`Clock`] forward.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Clock {
    /// The production clock: milliseconds since it was created, ticked by a background thread.
    pub fn monotonic() -> Self {
        let start = Instant::now();
        let cell = Arc::new(CachePadded::new(std::sync::atomic::AtomicU64::new(0)));
        let ticker = Arc::downgrade(&cell);
        let spawned = std::thread::Builder::new()
            .name("keypooler-clock".into())
            .spawn(move || {
                while let Some(cell) = ticker.upgrade() {
                    cell.store(elapsed_ms(start), std::sync::atomic::Ordering::Relaxed);
                    drop(cell);
                    std::thread::sleep(TICK);
                }
            });
        let source = match spawned {
            Ok(_) => ClockSource::Ticked(cell),
            Err(err) => {
                tracing::warn!(error = %err, "no clock thread; reading Instant per request");
                ClockSource::Instant(start)
            }
        };
        Self {
            source,
            unix_at_zero_ms: unix_now_ms(),
        }
    }

    /// A clock that stands still until its [`ManualClock`] moves it; starts at instant 1 s and
    /// at 2026-06-01T00:00:00Z, never at today's date, so that nothing measured on it
    /// depends on the calendar.
    pub fn manual() -> (Self, ManualClock) {
        Self::manual_at(MANUAL_START_UNIX_MS)
    }

    /// A manual clock whose wall time starts at `unix_ms` (at instant 1 s).
    pub fn manual_at(unix_ms: i64) -> (Self, ManualClock) {
        let cell = Arc::new(AtomicU64::new(1_000));
        let clock = Self {
            source: ClockSource::Manual(Arc::clone(&cell)),
            unix_at_zero_ms: unix_ms - 1_000,
        };
        (clock, ManualClock(cell))
    }

    #[inline]
    pub fn now_ms(&self) -> u64 {
        match &self.source {
            ClockSource::Ticked(cell) => cell.load(std::sync::atomic::Ordering::Relaxed),
            ClockSource::Instant(start) => elapsed_ms(*start),
            ClockSource::Manual(cell) => cell.load(Ordering::Relaxed),
        }
    }

    /// Unix time (ms) now, as this clock sees it.
    pub fn unix_now_ms(&self) -> i64 {
        self.to_unix_ms(self.now_ms())
    }

    /// The unix time (ms) of a clock instant.
    pub fn to_unix_ms(&self, clock_ms: u64) -> i64 {
        self.unix_at_zero_ms
            .saturating_add(i64::try_from(clock_ms).unwrap_or(i64::MAX))
    }

    /// The clock instant of a unix time; instants before the clock's zero map to 0.
    pub fn from_unix_ms(&self, unix_ms: i64) -> u64 {
        u64::try_from(unix_ms.saturating_sub(self.unix_at_zero_ms)).unwrap_or(0)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let (clock, hand) = Clock::manual();
        let before = clock.now_ms();
        assert_eq!(clock.now_ms(), before);
        hand.advance_ms(61_000);
        assert_eq!(clock.now_ms(), before + 61_000);
        let unix = clock.unix_now_ms();
        assert_eq!(clock.from_unix_ms(unix), clock.now_ms());
        assert_eq!(clock.from_unix_ms(0), 0);
    }

    #[test]
    fn the_production_clock_ticks_forward_without_going_back() {
        let clock = Clock::monotonic();
        let first = clock.now_ms();
        let deadline = Instant::now() + Duration::from_secs(10);
        while clock.now_ms() <= first + 2 {
            assert!(Instant::now() < deadline, "the clock thread never ticked");
            std::thread::yield_now();
        }
        let mut last = clock.now_ms();
        for _ in 0..1_000 {
            let now = clock.now_ms();
            assert!(now >= last);
            last = now;
        }
    }
}
