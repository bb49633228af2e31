//! `GET /key?wait=<seconds>`: requests that found no key free wait for one, in arrival order
//! per feature, without a polling loop or a blocked thread.
//!
//! A waiting request is an entry in its feature's queue and a parked task. The queue is tried
//! again, front to back, whenever a key may have become free:
//! * a window ends: each waiting task sleeps on the runtime's timer until the earliest instant
//!   its last refusal named (or its own deadline), then tries its feature's queue; a task woken
//!   after another already tried finds a later instant and sleeps on;
//! * a new generation is published (a key added, re-enabled, a tier changed) or anything else
//!   calls [`Pool::key_available`]: the queues of the features it names are tried at once, on
//!   the caller's thread;
//! * a manual clock (tests) is moved: every queue is tried, so a test advances the clock past a
//!   window's end instead of sleeping.
//!
//! A try draws for each entry in order: an entry that is served (or refused for good, or past
//! its deadline) leaves the queue and its task gets the answer through a oneshot channel; an
//! entry whose draw does not fit stays, and does not stop the entries behind it. Requests
//! without `wait` never enter a queue: they take what is free when they arrive.
//!
//! Deadlines are on the broker's running clock (the injected one in tests). The queues sit
//! behind one `Mutex`: only waiting requests and the events above take it, never the hot path.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use axum::response::Response;
use metrics::{Counter, Gauge};
use tokio::sync::oneshot;

use super::AppState;
use super::error::ApiError;
use super::key::{answer, served};
use crate::broker::{Awaken, Caller, KeyEntry, Pick, Pool, Snapshot, Tally};
use crate::telemetry::{KEY_WAITERS, KEY_WAITS, Meter};

/// Who waits, resolved against the snapshot of each try (a consumer deleted meanwhile is
/// refused).
#[derive(Clone, Copy)]
pub(super) enum Who {
    Admin,
    /// The SHA-256 of the consumer's token.
    Consumer([u8; 32]),
}

/// A request that may wait: what it draws, and for how long at most.
pub(super) struct Waiting {
    pub who: Who,
    pub feature: String,
    pub cost: u32,
    pub wait_ms: u64,
}

/// How a wait ended.
enum Outcome {
    Served {
        key: Arc<KeyEntry>,
        feature: Arc<str>,
        consumer: Option<Arc<str>>,
    },
    Refused(ApiError),
}

/// The requests waiting for a key. Cloning it clones one `Arc`.
#[derive(Clone)]
pub struct Waiters(Arc<Inner>);

struct Inner {
    pool: Arc<Pool>,
    /// `MAX_WAITERS`.
    max: usize,
    queues: Mutex<Queues>,
    meters: Meters,
}

/// The wait metrics, registered once.
struct Meters {
    waiting: Gauge,
    served: Counter,
    timed_out: Counter,
    rejected: Counter,
    shutdown: Counter,
}

impl Meters {
    fn new(meter: &Meter) -> Self {
        let outcome = |outcome| meter.counter(KEY_WAITS, &[("outcome", outcome)]);
        Self {
            waiting: meter.gauge(KEY_WAITERS, &[]),
            served: outcome("served"),
            timed_out: outcome("timed_out"),
            rejected: outcome("rejected"),
            shutdown: outcome("shutdown"),
        }
    }
}

#[derive(Default)]
struct Queues {
    /// Entries by feature, in arrival order; a feature without waiters has no queue.
    features: HashMap<Box<str>, VecDeque<Entry>>,
    /// Entries over all queues.
    count: usize,
    /// Shutting down: nobody enters any more.
    closed: bool,
    next_id: u64,
}

struct Entry {
    id: u64,
    who: Who,
    cost: u32,
    deadline_ms: u64,
    /// The running time at which the last refusal said a key may be free. Written under the
    /// queues' lock, read by the entry's task to know how long to sleep: `Relaxed`, it guards
    /// nothing (a stale read only makes the task try a little early or sleep once more).
    retry_at_ms: Arc<AtomicU64>,
    reply: oneshot::Sender<Outcome>,
}

/// What a try gives an entry.
enum Try {
    Wait,
    Done(Outcome),
}

/// A waiting request's place: leaving it (answered, or the client gone) removes its entry.
struct Ticket<'a> {
    waiters: &'a Waiters,
    feature: &'a str,
    id: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut queues = self.waiters.lock();
        let Some(queue) = queues.features.get_mut(self.feature) else {
            return;
        };
        if let Some(at) = queue.iter().position(|entry| entry.id == self.id) {
            queue.remove(at);
            let empty = queue.is_empty();
            if empty {
                queues.features.remove(self.feature);
            }
            queues.count -= 1;
            self.waiters.0.meters.waiting.decrement(1.0);
        }
    }
}

/// Tells the waiters that keys may be free, without keeping them alive.
struct Awakener(Weak<Inner>);

impl Awaken for Awakener {
    fn key_available(&self, feature: Option<&str>) {
        if let Some(inner) = self.0.upgrade() {
            Waiters(inner).try_queues(feature);
        }
    }
}

impl Waiters {
    /// At most `max` waiting at once. Connects itself to `pool` (published generations wake
    /// it) and to the pool's clock, if manual (moving it wakes it).
    pub fn new(pool: Arc<Pool>, max: usize, meter: &Meter) -> Self {
        let waiters = Self(Arc::new(Inner {
            pool: Arc::clone(&pool),
            max,
            queues: Mutex::new(Queues::default()),
            meters: Meters::new(meter),
        }));
        pool.set_awaken(Box::new(Awakener(Arc::downgrade(&waiters.0))));
        let weak = Arc::downgrade(&pool);
        pool.clock().on_manual_advance(move || {
            if let Some(pool) = weak.upgrade() {
                pool.key_available(None);
            }
        });
        waiters
    }

    /// Answers every waiting request 503 and lets no other wait: the server is shutting down.
    pub fn close(&self) {
        let mut queues = self.lock();
        queues.closed = true;
        let features = std::mem::take(&mut queues.features);
        for entry in features.into_values().flatten() {
            self.0.meters.shutdown.increment(1);
            let _ = entry.reply.send(Outcome::Refused(ApiError::ShuttingDown));
        }
        queues.count = 0;
        self.0.meters.waiting.set(0.0);
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        // The queues stay consistent at every await-free step: a panic elsewhere leaves them
        // usable.
        self.0.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tries the queue of `feature` (every queue for `None`), front to back.
    fn try_queues(&self, feature: Option<&str>) {
        let mut queues = self.lock();
        if queues.count == 0 {
            return;
        }
        let snapshot = self.0.pool.load();
        let now = self.0.pool.clock().now_ms();
        match feature {
            Some(feature) => self.try_queue(&mut queues, &snapshot, now, feature),
            None => {
                let features: Vec<Box<str>> = queues.features.keys().cloned().collect();
                for feature in &features {
                    self.try_queue(&mut queues, &snapshot, now, feature);
                }
            }
        }
    }

    fn try_queue(&self, queues: &mut Queues, snapshot: &Snapshot, now: u64, feature: &str) {
        let Some(queue) = queues.features.get_mut(feature) else {
            return;
        };
        let mut answered = 0;
        for entry in std::mem::take(queue) {
            match self.try_entry(snapshot, now, feature, &entry) {
                Try::Wait => queue.push_back(entry),
                Try::Done(outcome) => {
                    answered += 1;
                    match &outcome {
                        Outcome::Served { .. } => self.0.meters.served.increment(1),
                        Outcome::Refused(ApiError::NoKeyAvailable { .. }) => {
                            self.0.meters.timed_out.increment(1);
                        }
                        Outcome::Refused(_) => {}
                    }
                    // A client that left meanwhile drops its answer (the draw stays counted,
                    // as for a client that drops a served key).
                    let _ = entry.reply.send(outcome);
                }
            }
        }
        if queue.is_empty() {
            queues.features.remove(feature);
        }
        queues.count -= answered;
        self.0.meters.waiting.decrement(answered as f64);
    }

    /// One draw for `entry`: served, refused for good, timed out, or to wait on.
    fn try_entry(&self, snapshot: &Snapshot, now: u64, feature: &str, entry: &Entry) -> Try {
        let caller = match entry.who {
            Who::Admin => Caller::Admin,
            Who::Consumer(hash) => match snapshot.consumer(&hash) {
                Some(scoped) => Caller::Consumer(scoped),
                None => {
                    return Try::Done(Outcome::Refused(ApiError::Unauthorized("invalid token")));
                }
            },
        };
        let pick = self
            .0
            .pool
            .draw(caller, snapshot, feature, entry.cost, Tally::Uncounted);
        let outcomes = snapshot.outcomes(feature);
        if let Pick::Spent(spent) = pick {
            if now < entry.deadline_ms {
                entry
                    .retry_at_ms
                    .store(now.saturating_add(spent.retry_after_ms), Ordering::Relaxed);
                return Try::Wait;
            }
            outcomes.spent.increment(1);
        }
        Try::Done(match served(pick, feature) {
            Ok((key, feature)) => {
                outcomes.served.increment(1);
                Outcome::Served {
                    key: Arc::clone(key),
                    feature: Arc::clone(feature),
                    consumer: match caller {
                        Caller::Admin => None,
                        Caller::Consumer(scoped) => Some(Arc::clone(&scoped.consumer.id)),
                    },
                }
            }
            Err(err) => Outcome::Refused(err),
        })
    }
}

/// Serves `waiting`: at once if a key is free and nobody waits before it for its feature, else
/// once one is, or 429 when its wait ends.
pub(super) async fn wait(app: &AppState, waiting: Waiting) -> Result<Response, ApiError> {
    let waiters = app.waiters();
    let clock = app.pool().clock();
    let (reply, mut answered) = oneshot::channel();
    let retry_at_ms = Arc::new(AtomicU64::new(0));
    let deadline_ms = clock.now_ms().saturating_add(waiting.wait_ms);
    let entry = Entry {
        id: 0,
        who: waiting.who,
        cost: waiting.cost,
        deadline_ms,
        retry_at_ms: Arc::clone(&retry_at_ms),
        reply,
    };
    let feature = waiting.feature.as_str();
    let ticket = match waiters.enter(entry, feature) {
        Ok(ticket) => ticket,
        Err(outcome) => return respond(app, outcome),
    };
    let outcome = loop {
        let now = clock.now_ms();
        if now >= retry_at_ms.load(Ordering::Relaxed).min(deadline_ms) {
            waiters.try_queues(Some(feature));
        }
        let now = clock.now_ms();
        let due = retry_at_ms.load(Ordering::Relaxed).min(deadline_ms);
        tokio::select! {
            biased;
            outcome = &mut answered => break outcome,
            () = tokio::time::sleep(Duration::from_millis(due.saturating_sub(now).max(1))) => {}
        }
    };
    drop(ticket);
    // The sender goes without an answer only with the queues, when the server stops.
    respond(
        app,
        outcome.unwrap_or(Outcome::Refused(ApiError::ShuttingDown)),
    )
}

impl Waiters {
    /// Puts `entry` in its feature's queue, or answers it at once: served when its queue is
    /// empty and a key is free, refused when it cannot wait (shutting down, `MAX_WAITERS`
    /// reached) or its draw is refused for good.
    fn enter<'a>(&'a self, mut entry: Entry, feature: &'a str) -> Result<Ticket<'a>, Outcome> {
        let mut queues = self.lock();
        if queues.closed {
            self.0.meters.shutdown.increment(1);
            return Err(Outcome::Refused(ApiError::ShuttingDown));
        }
        let snapshot = self.0.pool.load();
        let now = self.0.pool.clock().now_ms();
        let first = !queues.features.contains_key(feature);
        if first && let Try::Done(outcome) = self.try_entry(&snapshot, now, feature, &entry) {
            return Err(outcome);
        }
        if queues.count >= self.0.max {
            self.0.meters.rejected.increment(1);
            return Err(Outcome::Refused(ApiError::TooManyWaiters));
        }
        queues.next_id += 1;
        entry.id = queues.next_id;
        let id = entry.id;
        queues.count += 1;
        self.0.meters.waiting.increment(1.0);
        queues
            .features
            .entry(feature.into())
            .or_default()
            .push_back(entry);
        if !first {
            // Behind others: the queue is tried in order, this entry last.
            self.try_queue(&mut queues, &snapshot, now, feature);
        }
        Ok(Ticket {
            waiters: self,
            feature,
            id,
        })
    }
}

fn respond(app: &AppState, outcome: Outcome) -> Result<Response, ApiError> {
    match outcome {
        Outcome::Served {
            key,
            feature,
            consumer,
        } => Ok(answer(app, &key, &feature, consumer.as_ref())),
        Outcome::Refused(err) => Err(err),
    }
}
