//! The audit trail of served keys: the hot path records into a fixed-size lock-free queue (no
//! allocation, no lock, no I/O), and the writer drains it to disk about once a second.
//!
//! Under a load the writer should not spend its time on, the queue fills and further events are
//! dropped and counted, rather than slowing `GET /key` or growing memory: the trail is exact up
//! to its capacity per flush and says how much it dropped.

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::sync::{AtomicU64, Ordering};

/// Events the queue holds between two flushes.
pub const AUDIT_QUEUE: usize = 8_192;

/// One served key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub key_id: Arc<str>,
    pub feature: Arc<str>,
    /// `None` for the admin token.
    pub consumer_id: Option<Arc<str>>,
    pub at_unix_ms: i64,
}

pub struct AuditLog {
    queue: ArrayQueue<Event>,
    /// Events dropped because the queue was full. `Relaxed`: a statistic.
    dropped: AtomicU64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("queued", &self.queue.len())
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for AuditLog {
    fn default() -> Self {
        Self::with_capacity(AUDIT_QUEUE)
    }
}

impl AuditLog {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            queue: ArrayQueue::new(capacity),
            dropped: AtomicU64::new(0),
        }
    }

    /// Records the event `make` builds, or counts it as dropped when the queue is full. A full
    /// queue (the usual state under a load above its capacity per flush) is seen before the event
    /// is built, so a dropped event costs no reference counts and no read of the key's id.
    #[inline]
    pub fn record(&self, make: impl FnOnce() -> Event) {
        if self.queue.is_full() || self.queue.push(make()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Takes every queued event, oldest first, and the count dropped since the last drain.
    pub fn drain(&self) -> (Vec<Event>, u64) {
        let mut events = Vec::with_capacity(self.queue.len());
        while let Some(event) = self.queue.pop() {
            events.push(event);
        }
        (events, self.dropped.swap(0, Ordering::Relaxed))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn event(n: i64) -> Event {
        Event {
            key_id: "k".into(),
            feature: "f".into(),
            consumer_id: None,
            at_unix_ms: n,
        }
    }

    #[test]
    fn events_drain_in_order_and_overflow_is_counted() {
        let log = AuditLog::with_capacity(3);
        let built = std::cell::Cell::new(0);
        for n in 0..5 {
            log.record(|| {
                built.set(built.get() + 1);
                event(n)
            });
        }
        // Once full, an event is not even built.
        assert_eq!(built.get(), 3);
        let (events, dropped) = log.drain();
        assert_eq!(events, vec![event(0), event(1), event(2)]);
        assert_eq!(dropped, 2);
        assert!(log.is_empty());
        assert_eq!(log.drain(), (vec![], 0));
    }
}
