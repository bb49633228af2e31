//! The clocks that date rate windows, usage windows and expiry.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The broker's two clocks, read from the operating system on every call (or, in tests, moved
/// by hand). Cheap to clone; a read takes no lock, no atomic and no system call.
///
/// **Running time** ([`Clock::now_ms`], milliseconds) dates rate windows and usage-cap windows.
/// It is `CLOCK_MONOTONIC_COARSE` (a vDSO read of a few nanoseconds), counted on from the
/// running time the previous run saved ([`Clock::resumed_at`]), so time spent stopped does not
/// count. Its resolution is one kernel tick (1 to 10 ms by `CONFIG_HZ`, 4 ms at 250 Hz); a
/// reading lags true time by less than one tick however late the reading thread is scheduled,
/// and never goes back. NTP may slew it (by at most 0.05 %) but never steps it. So a window
/// never counts more than its limit, lasts its length to within one tick in real time, and no
/// step of the wall clock moves it.
///
/// **Wall time** ([`Clock::unix_now_ms`], unix milliseconds) judges key expiry and dates
/// records. It is `CLOCK_REALTIME_COARSE`, same cost and resolution, read at the moment it is
/// used: `GET /key` reads it at most once per pick, and only when a candidate has an
/// `expires_at`. It follows every step of the system clock:
/// * a step forward expires the keys it passes at once (to within a tick);
/// * a step back never brings an expired key back: a key that a pick or the writer's sweep has
///   found expired stays out of rotation for the rest of the run, whatever the wall clock then
///   says. A key is thus never served while the wall clock reads at or past its `expires_at`,
///   and never again in the run once it has been found expired (a restart judges it on the
///   wall clock as it then reads).
///
/// **Across restarts** running time resumes where the last run left it: the writer saves it as
/// it stops, with every commit and at least once a minute, so a crash loses at most about a
/// minute of it. A usage window is stored with its end in running time, so it reopens only once the broker
/// has run for the rest of its length: a wall clock that is ahead at start, or a step while the
/// server was stopped, never reopens a window early. The window lasts longer instead, by the
/// time the server was stopped (and the running time a crash lost): usage caps err towards
/// serving less. A window stored without its end in running time (imported from the Go
/// service's database) is placed by the wall clock, and lasts at most its full length from the
/// start.
#[derive(Clone, Debug)]
pub struct Clock {
    source: ClockSource,
}

/// Where a [`Clock::manual`] starts on the wall clock: 2026-06-01T00:00:00Z.
const MANUAL_START_UNIX_MS: i64 = 1_780_272_000_000;

/// Where a [`Clock::manual`] starts in running time.
const MANUAL_START_MS: u64 = 1_000;

#[derive(Clone, Debug)]
enum ClockSource {
    /// The operating system's coarse clocks. Running time is the monotonic reading minus
    /// `origin_ms` (wrapping, so that a resumed clock can start past the reading).
    Os { origin_ms: u64 },
    Manual {
        hands: Arc<Hands>,
        /// Running time saved by earlier runs, added to the hands' reading.
        resumed_ms: u64,
    },
}

/// What a [`ManualClock`] moves.
#[derive(Debug)]
struct Hands {
    /// Milliseconds since the manual clock was made, plus [`MANUAL_START_MS`].
    elapsed_ms: AtomicU64,
    /// Unix ms at `elapsed_ms == 0` (moved by wall-clock steps).
    unix_at_zero_ms: AtomicI64,
    /// Called after each [`ManualClock::advance_ms`]: what sleeps until an instant of running
    /// time (a request waiting for a window to end) learns that the hands moved.
    listeners: Listeners,
}

/// The callbacks of [`Clock::on_manual_advance`]. A `Mutex` because they are registered and
/// called rarely, from any thread (tests move the hands).
#[derive(Default)]
struct Listeners(Mutex<Vec<Box<dyn Fn() + Send + Sync>>>);

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.0.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("Listeners").field("count", &count).finish()
    }
}

/// Moves a manual [`Clock`]: real time passing, or a step of the wall clock alone.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Hands>);

impl ManualClock {
    /// Lets `ms` pass: running time and wall time both move forward.
    pub fn advance_ms(&self, ms: u64) {
        self.0.elapsed_ms.fetch_add(ms, Ordering::Relaxed);
        let listeners = self
            .0
            .listeners
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for listener in listeners.iter() {
            listener();
        }
    }

    /// Steps the wall clock alone by `ms` (back when negative), as NTP or an operator would;
    /// running time does not move.
    pub fn step_wall_ms(&self, ms: i64) {
        self.0.unix_at_zero_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// Milliseconds of a coarse clock, read through the vDSO.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn coarse_ms(id: rustix::time::ClockId) -> i64 {
    let now = rustix::time::clock_gettime(id);
    now.tv_sec
        .saturating_mul(1_000)
        .saturating_add(now.tv_nsec / 1_000_000)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn os_monotonic_ms() -> u64 {
    // Counts from boot: never negative.
    coarse_ms(rustix::time::ClockId::MonotonicCoarse) as u64
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn os_unix_ms() -> i64 {
    coarse_ms(rustix::time::ClockId::RealtimeCoarse)
}

/// Elsewhere: `Instant` from a process-wide origin, and `SystemTime`.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn os_monotonic_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn os_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Clock {
    /// The production clock: running time from 0 now (until [`Clock::resumed_at`]), the
    /// system's wall time.
    pub fn monotonic() -> Self {
        Self {
            source: ClockSource::Os {
                origin_ms: os_monotonic_ms(),
            },
        }
    }

    /// A clock that stands still until its [`ManualClock`] moves it; starts at running time
    /// 1 s and at 2026-06-01T00:00:00Z, never at today's date, so that nothing measured on it
    /// depends on the calendar.
    pub fn manual() -> (Self, ManualClock) {
        Self::manual_at(MANUAL_START_UNIX_MS)
    }

    /// A manual clock whose wall time starts at `unix_ms` (at running time 1 s).
    pub fn manual_at(unix_ms: i64) -> (Self, ManualClock) {
        let hands = Arc::new(Hands {
            elapsed_ms: AtomicU64::new(MANUAL_START_MS),
            unix_at_zero_ms: AtomicI64::new(unix_ms - MANUAL_START_MS as i64),
            listeners: Listeners::default(),
        });
        let clock = Self {
            source: ClockSource::Manual {
                hands: Arc::clone(&hands),
                resumed_ms: 0,
            },
        };
        (clock, ManualClock(hands))
    }

    /// This clock with its running time moved on to `running_ms` (what the previous run saved),
    /// unless it is already past it; it goes on from there.
    #[must_use]
    pub fn resumed_at(&self, running_ms: u64) -> Self {
        let ahead = running_ms.saturating_sub(self.now_ms());
        let source = match &self.source {
            ClockSource::Os { origin_ms } => ClockSource::Os {
                origin_ms: origin_ms.wrapping_sub(ahead),
            },
            ClockSource::Manual { hands, resumed_ms } => ClockSource::Manual {
                hands: Arc::clone(hands),
                resumed_ms: resumed_ms + ahead,
            },
        };
        Self { source }
    }

    /// Calls `listener` each time a manual clock's hands move forward ([`ManualClock::advance_ms`]),
    /// after they moved. Nothing for the operating system's clock: its time passes by itself, and
    /// whatever waits for an instant sleeps on the runtime's timer for the time left.
    pub fn on_manual_advance(&self, listener: impl Fn() + Send + Sync + 'static) {
        if let ClockSource::Manual { hands, .. } = &self.source {
            hands
                .listeners
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Box::new(listener));
        }
    }

    /// Running time (ms): rate and usage windows are dated on it.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        match &self.source {
            ClockSource::Os { origin_ms } => os_monotonic_ms().wrapping_sub(*origin_ms),
            ClockSource::Manual { hands, resumed_ms } => {
                resumed_ms + hands.elapsed_ms.load(Ordering::Relaxed)
            }
        }
    }

    /// Wall time (unix ms) now: expiry is judged on it.
    #[inline]
    pub fn unix_now_ms(&self) -> i64 {
        match &self.source {
            ClockSource::Os { .. } => os_unix_ms(),
            ClockSource::Manual { hands, .. } => {
                let elapsed = hands.elapsed_ms.load(Ordering::Relaxed);
                hands
                    .unix_at_zero_ms
                    .load(Ordering::Relaxed)
                    .saturating_add_unsigned(elapsed)
            }
        }
    }

    /// The wall time (unix ms) at which running time read `running_ms`, as the two clocks
    /// stand now (so a wall-clock step since moves it too): for records that store a wall time.
    pub fn to_unix_ms(&self, running_ms: u64) -> i64 {
        let ago = self.now_ms().saturating_sub(running_ms);
        self.unix_now_ms()
            .saturating_sub(i64::try_from(ago).unwrap_or(i64::MAX))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let (clock, hand) = Clock::manual();
        let before = clock.now_ms();
        let wall = clock.unix_now_ms();
        assert_eq!(clock.now_ms(), before);
        hand.advance_ms(61_000);
        assert_eq!(clock.now_ms(), before + 61_000);
        assert_eq!(clock.unix_now_ms(), wall + 61_000);
        assert_eq!(clock.to_unix_ms(before), wall);
    }

    #[test]
    fn a_manual_clock_tells_its_listeners_when_it_moves() {
        let (clock, hand) = Clock::manual();
        let heard = Arc::new(AtomicU64::new(0));
        let listener = {
            let (clock, heard) = (clock.clone(), Arc::clone(&heard));
            move || heard.store(clock.now_ms(), Ordering::Relaxed)
        };
        clock.on_manual_advance(listener);
        hand.step_wall_ms(5);
        assert_eq!(
            heard.load(Ordering::Relaxed),
            0,
            "a wall step is not running time"
        );
        hand.advance_ms(250);
        assert_eq!(heard.load(Ordering::Relaxed), clock.now_ms());
        // The production clock has nothing to tell: the callback is dropped.
        Clock::monotonic().on_manual_advance(|| unreachable!());
    }

    #[test]
    fn a_wall_step_moves_wall_time_alone() {
        let (clock, hand) = Clock::manual();
        let (running, wall) = (clock.now_ms(), clock.unix_now_ms());
        hand.step_wall_ms(3_600_000);
        assert_eq!(clock.now_ms(), running);
        assert_eq!(clock.unix_now_ms(), wall + 3_600_000);
        hand.step_wall_ms(-7_200_000);
        assert_eq!(clock.now_ms(), running);
        assert_eq!(clock.unix_now_ms(), wall - 3_600_000);
    }

    #[test]
    fn a_resumed_clock_goes_on_from_the_saved_running_time() {
        let (clock, hand) = Clock::manual();
        let resumed = clock.resumed_at(50_000);
        assert_eq!(resumed.now_ms(), 50_000);
        hand.advance_ms(10);
        assert_eq!(resumed.now_ms(), 50_010);
        // Never back: a saved time behind the clock leaves it where it is.
        assert_eq!(resumed.resumed_at(5).now_ms(), 50_010);

        let production = Clock::monotonic().resumed_at(1 << 40);
        let first = production.now_ms();
        assert!((1 << 40..(1 << 40) + 10_000).contains(&first));
    }

    #[test]
    fn the_production_clocks_move_forward_without_going_back() {
        let clock = Clock::monotonic();
        let first = clock.now_ms();
        let deadline = Instant::now() + Duration::from_secs(10);
        while clock.now_ms() <= first {
            assert!(Instant::now() < deadline, "the running clock never moved");
            std::thread::yield_now();
        }
        let mut last = clock.now_ms();
        for _ in 0..1_000 {
            let now = clock.now_ms();
            assert!(now >= last);
            last = now;
        }
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        // Coarse: within a few ticks of the precise clock.
        assert!((clock.unix_now_ms() - system).abs() < 1_000);
    }

    /// Running time is read from the operating system on every call, so a thread that was not
    /// scheduled for a while reads the true time at once: nothing has to catch up first. The
    /// reads are ordered so that the bound holds however the test threads are scheduled.
    #[test]
    fn the_running_clock_cannot_lag_behind_real_time() {
        let clock = Clock::monotonic();
        let before = clock.now_ms();
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        let real = started.elapsed();
        let measured = clock.now_ms() - before;
        // Less than one coarse tick (at most 10 ms) behind.
        assert!(
            Duration::from_millis(measured + 10) >= real,
            "{measured} ms measured over {real:?}"
        );
    }

    /// The starved-thread case: on one CPU, a real-time (`SCHED_FIFO`) thread spins for 300 ms,
    /// so no ordinary thread of the process runs meanwhile (a clock ticked by such a thread
    /// would stand still), then reads the clock before it yields the CPU.
    #[test]
    #[ignore = "needs root: a SCHED_FIFO thread starves the others (and util-linux's chrt)"]
    fn the_running_clock_keeps_time_while_every_other_thread_is_starved() {
        fn policy(policy: &str, priority: &str) {
            let tid = rustix::thread::gettid().as_raw_nonzero().to_string();
            let status = std::process::Command::new("chrt")
                .args([policy, "-p", priority, &tid])
                .status()
                .expect("chrt runs");
            assert!(status.success(), "chrt {policy} {priority} failed");
        }
        std::thread::spawn(|| {
            let mut one_cpu = rustix::thread::CpuSet::new();
            one_cpu.set(0);
            rustix::thread::sched_setaffinity(None, &one_cpu).expect("pinned to CPU 0");
            // Made on the pinned thread: any thread the clock started would share its CPU.
            let clock = Clock::monotonic();
            policy("-f", "10");
            let before = clock.now_ms();
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(300) {
                std::hint::spin_loop();
            }
            let real = started.elapsed();
            let measured = clock.now_ms() - before;
            policy("-o", "0");
            assert!(
                Duration::from_millis(measured + 10) >= real,
                "{measured} ms measured over {real:?}"
            );
        })
        .join()
        .unwrap();
    }
}
