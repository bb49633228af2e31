//! Usage caps: a total number of uses per key, for its lifetime or per long window (e.g. 30
//! days), that is never exceeded, even across crashes.
//!
//! The hot path may only count up to a *reservation* that the writer has already committed to
//! disk. The writer reserves in chunks ahead of use; after a crash the count resumes from the
//! reservation, so a crash can only under-serve (by at most one chunk), never over-serve.

use std::sync::Arc;

use crossbeam_utils::CachePadded;

use super::sync::{AtomicU64, Ordering};

/// Window end meaning "never" (a lifetime cap).
pub const LIFETIME: u32 = u32::MAX;

/// The clock second of clock instant `now_ms`: usage caps count in seconds.
#[inline]
pub fn to_cap_seconds(now_ms: u64) -> u32 {
    u32::try_from(now_ms / 1_000).unwrap_or(LIFETIME - 1)
}

/// The largest usage limit (per window or lifetime).
pub const MAX_USAGE_LIMIT: u64 = u32::MAX as u64 - 1;

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

fn pack(end_s: u32, count: u32) -> u64 {
    (u64::from(end_s) << 32) | u64::from(count)
}

/// Asks the writer to reserve more uses for a key. Implemented by the writer; called from the
/// hot path at most once per chunk, so it must not block.
pub trait Reserve: Send + Sync {
    /// Queues a request; `false` when it could not be queued (the hot path asks again later).
    fn reserve(&self, key_id: &Arc<str>) -> bool;
}

/// A sink that reserves nothing (a pool with no writer, e.g. in benches).
pub struct NoReserve;

impl Reserve for NoReserve {
    fn reserve(&self, _: &Arc<str>) -> bool {
        false
    }
}

/// Why a usage-capped key cannot be served now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The writer is reserving the next chunk: try again in a moment.
    Pending,
    /// The limit is used up until this clock second (`LIFETIME`: for good).
    Exhausted { until_s: u32 },
}

/// The usage state of one key.
///
/// `state` packs (window end in clock seconds, uses counted); `reserved` packs (window end,
/// uses committed to disk as reserved). Both are moved by compare-and-swap or by the writer.
/// The hot path counts a use only while `used < reserved` for the same window end and
/// `used < limit`. Orderings: `state` is `Relaxed` (it publishes nothing); the writer stores
/// `reserved` with `Release` after its commit and the hot path loads it with `Acquire`, so a
/// reservation is never seen before it is durable.
#[derive(Debug)]
pub struct UsageCap {
    pub limit: u32,
    /// `None`: a lifetime cap.
    pub window_s: Option<u32>,
    /// Uses the writer reserves at a time.
    pub chunk: u32,
    state: CachePadded<AtomicU64>,
    reserved: AtomicU64,
    /// Set while a reservation request is queued, so the hot path asks once.
    pending: super::sync::AtomicBool,
}

impl UsageCap {
    /// A cap with `reserved` uses committed in the window ending at clock second `end_s`
    /// (`LIFETIME` for a lifetime cap), `used` of them counted.
    pub fn new(limit: u32, window_s: Option<u32>, end_s: u32, reserved: u32, used: u32) -> Self {
        Self {
            limit,
            window_s,
            chunk: Self::chunk_for(limit),
            state: CachePadded::new(AtomicU64::new(pack(end_s, used))),
            reserved: AtomicU64::new(pack(end_s, reserved)),
            pending: super::sync::AtomicBool::new(false),
        }
    }

    /// A cap resuming from what was persisted: every reserved use counts as used, since what
    /// was served before a crash is unknown beyond that bound.
    pub fn resume(limit: u32, window_s: Option<u32>, end_s: u32, reserved: u32) -> Self {
        Self::new(limit, window_s, end_s, reserved, reserved)
    }

    /// Uses reserved per disk commit: a twentieth of the limit, from 1 to 10,000.
    pub fn chunk_for(limit: u32) -> u32 {
        (limit / 20).clamp(1, 10_000)
    }

    /// (window end, uses counted) as of now.
    pub fn used(&self) -> (u32, u32) {
        unpack(self.state.load(Ordering::Relaxed))
    }

    /// (window end, uses reserved).
    pub fn reserved(&self) -> (u32, u32) {
        unpack(self.reserved.load(Ordering::Acquire))
    }

    /// Counts one use, if the limit and the reservation allow it.
    #[inline]
    pub fn try_acquire(
        &self,
        now_s: u32,
        key_id: &Arc<str>,
        reserve: &dyn Reserve,
    ) -> Result<(), Refusal> {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (end, used) = unpack(current);
            if now_s >= end {
                self.ask(key_id, reserve);
                return Err(Refusal::Pending);
            }
            if used >= self.limit {
                return Err(Refusal::Exhausted { until_s: end });
            }
            let (reserved_end, reserved) = self.reserved();
            if reserved_end != end || used >= reserved {
                self.ask(key_id, reserve);
                return Err(Refusal::Pending);
            }
            match self.state.compare_exchange_weak(
                current,
                pack(end, used + 1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    if reserved - (used + 1) <= self.chunk / 2 && reserved < self.limit {
                        self.ask(key_id, reserve);
                    }
                    return Ok(());
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back a use counted by [`UsageCap::try_acquire`] that was not served after all.
    pub fn release(&self) {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (end, used) = unpack(current);
            if used == 0 {
                return;
            }
            match self.state.compare_exchange_weak(
                current,
                pack(end, used - 1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    #[cold]
    fn ask(&self, key_id: &Arc<str>, reserve: &dyn Reserve) {
        if !self.pending.swap(true, Ordering::AcqRel) && !reserve.reserve(key_id) {
            self.clear_pending();
        }
    }

    /// Called when a reservation request could not be queued or has been handled.
    pub fn clear_pending(&self) {
        self.pending.store(false, Ordering::Release);
    }

    /// What the writer should persist next: `(window end, reserved)` for the window open at
    /// `now_s` (a new window when the last one ended), or `None` when nothing more is needed.
    /// A reservation reaches at most one chunk past the uses counted now, so a crash loses at
    /// most one chunk.
    pub fn next_reservation(&self, now_s: u32) -> Option<(u32, u32)> {
        let (end, reserved) = self.reserved();
        if let Some(window) = self.window_s
            && (now_s >= end || end == 0)
        {
            return Some((now_s.saturating_add(window), self.chunk.min(self.limit)));
        }
        let (_, used) = self.used();
        let target = used.saturating_add(self.chunk).min(self.limit);
        (target > reserved).then_some((end, target))
    }

    /// Publishes a reservation the writer has committed. A new window starts with no uses.
    pub fn apply_reservation(&self, end_s: u32, reserved: u32) {
        let (old_end, _) = self.reserved();
        self.reserved
            .store(pack(end_s, reserved), Ordering::Release);
        if old_end != end_s {
            let mut current = self.state.load(Ordering::Relaxed);
            while unpack(current).0 != end_s {
                match self.state.compare_exchange_weak(
                    current,
                    pack(end_s, 0),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(actual) => current = actual,
                }
            }
        }
        self.clear_pending();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts requests and applies them at once, as a writer with an instant disk would.
    #[derive(Default)]
    struct Instant {
        asked: AtomicUsize,
    }

    impl Reserve for Instant {
        fn reserve(&self, _: &Arc<str>) -> bool {
            self.asked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            true
        }
    }

    fn key() -> Arc<str> {
        Arc::from("k")
    }

    #[test]
    fn a_lifetime_cap_serves_only_what_was_reserved_and_never_past_the_limit() {
        let cap = UsageCap::resume(10, None, LIFETIME, 0);
        let writer = Instant::default();
        assert_eq!(cap.try_acquire(5, &key(), &writer), Err(Refusal::Pending));
        assert_eq!(writer.asked.load(std::sync::atomic::Ordering::Relaxed), 1);
        // Asked once while pending, however often the hot path hits it.
        assert_eq!(cap.try_acquire(5, &key(), &writer), Err(Refusal::Pending));
        assert_eq!(writer.asked.load(std::sync::atomic::Ordering::Relaxed), 1);
        let mut served = 0;
        for _ in 0..100 {
            match cap.try_acquire(5, &key(), &writer) {
                Ok(()) => served += 1,
                Err(Refusal::Pending) => {
                    if let Some((end, reserved)) = cap.next_reservation(5) {
                        cap.apply_reservation(end, reserved);
                    }
                }
                Err(Refusal::Exhausted { until_s }) => {
                    assert_eq!(until_s, LIFETIME);
                    break;
                }
            }
        }
        assert_eq!(served, 10);
        assert_eq!(cap.next_reservation(5), None);
        assert_eq!(cap.reserved(), (LIFETIME, 10));
    }

    #[test]
    fn a_windowed_cap_starts_a_new_window_with_a_new_reservation() {
        let cap = UsageCap::resume(2, Some(100), 0, 0);
        let writer = Instant::default();
        let (end, reserved) = cap.next_reservation(50).unwrap();
        assert_eq!((end, reserved), (150, 1));
        cap.apply_reservation(end, reserved);
        assert!(cap.try_acquire(50, &key(), &writer).is_ok());
        assert_eq!(cap.try_acquire(50, &key(), &writer), Err(Refusal::Pending));
        let (end, reserved) = cap.next_reservation(51).unwrap();
        cap.apply_reservation(end, reserved);
        assert!(cap.try_acquire(51, &key(), &writer).is_ok());
        assert_eq!(
            cap.try_acquire(52, &key(), &writer),
            Err(Refusal::Exhausted { until_s: 150 })
        );
        // The window ends: the next use waits for a reservation in the new window.
        assert_eq!(cap.try_acquire(150, &key(), &writer), Err(Refusal::Pending));
        let (end, reserved) = cap.next_reservation(150).unwrap();
        assert_eq!((end, reserved), (250, 1));
        cap.apply_reservation(end, reserved);
        assert_eq!(cap.used(), (250, 0));
        assert!(cap.try_acquire(150, &key(), &writer).is_ok());
    }

    #[test]
    fn resuming_counts_every_reserved_use_as_used() {
        let cap = UsageCap::resume(100, None, LIFETIME, 40);
        let writer = Instant::default();
        assert_eq!(cap.used(), (LIFETIME, 40));
        assert_eq!(cap.try_acquire(1, &key(), &writer), Err(Refusal::Pending));
    }

    #[test]
    fn a_released_use_can_be_served_again() {
        let cap = UsageCap::resume(1, None, LIFETIME, 1);
        cap.release();
        let writer = Instant::default();
        assert!(cap.try_acquire(1, &key(), &writer).is_ok());
        assert!(matches!(
            cap.try_acquire(1, &key(), &writer),
            Err(Refusal::Exhausted { .. })
        ));
    }

    /// Threads race for a cap of N while another thread plays the writer: exactly N are served.
    #[test]
    fn concurrent_uses_never_pass_the_limit() {
        const LIMIT: u32 = 5_000;
        let cap = Arc::new(UsageCap::resume(LIMIT, None, LIFETIME, 0));
        let served = AtomicUsize::new(0);
        let writer = Instant::default();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while cap.reserved().1 < LIMIT {
                    if let Some((end, reserved)) = cap.next_reservation(1) {
                        cap.apply_reservation(end, reserved);
                    }
                    std::thread::yield_now();
                }
            });
            for _ in 0..8 {
                scope.spawn(|| {
                    let mut idle = 0;
                    while idle < 1_000_000 {
                        match cap.try_acquire(1, &key(), &writer) {
                            Ok(()) => {
                                served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(Refusal::Exhausted { .. }) => break,
                            Err(Refusal::Pending) => idle += 1,
                        }
                    }
                });
            }
        });
        assert_eq!(served.into_inner(), LIMIT as usize);
    }
}

#[cfg(loom)]
mod loom_model {
    use super::*;

    struct Quiet;

    impl Reserve for Quiet {
        fn reserve(&self, _: &Arc<str>) -> bool {
            true
        }
    }

    /// Two threads race for the one reserved use while the writer publishes a second one:
    /// never more uses than reserved at the moment each was counted, never past the limit.
    #[test]
    fn uses_never_pass_the_reservation_or_the_limit() {
        loom::model(|| {
            let cap = Arc::new(UsageCap::new(2, None, LIFETIME, 1, 0));
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let cap = Arc::clone(&cap);
                    loom::thread::spawn(move || cap.try_acquire(1, &Arc::from("k"), &Quiet).is_ok())
                })
                .collect();
            cap.apply_reservation(LIFETIME, 2);
            let wins = racers
                .into_iter()
                .map(|racer| racer.join().unwrap())
                .filter(|won| *won)
                .count();
            assert!((1..=2).contains(&wins));
            assert_eq!(cap.used().1 as usize, wins);
            assert!(cap.used().1 <= 2);
        });
    }
}
