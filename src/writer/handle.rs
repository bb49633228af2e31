//! The handle handlers use to queue changes, and the hot path's way to ask for reservations.

use std::sync::Arc;

use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::WriteError;
use super::idempotency::{Answer, Keyed, Once};
use super::ops::{Exhaustion, HealthReport, Reported, SpendAnswer};
use super::request::{Call, OnceCall, Request};
use crate::broker::{
    Consumer, HealthPolicy, KeyEntry, KeyPatch, NewConsumer, NewKey, NewScope, Reserve, Spend,
    Tier, TierSpec,
};
use crate::store::{Snapshot, UsageRecord};

/// The handle handlers use to queue changes. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Request>,
    policy: HealthPolicy,
}

impl Writer {
    pub(super) fn new(queue: mpsc::Sender<Request>, policy: HealthPolicy) -> Self {
        Self { queue, policy }
    }

    /// How the writer turns reports into cooldowns.
    pub fn health_policy(&self) -> HealthPolicy {
        self.policy
    }

    /// Queues `input` as the request `request` builds and waits for its answer.
    async fn ask<I, O>(
        &self,
        request: fn(Call<I, O>) -> Request,
        input: I,
    ) -> Result<O, WriteError> {
        let (call, answer) = Call::ask(input);
        self.queue
            .send(request(call))
            .await
            .map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }

    /// Queues the writer's own work with no one waiting for it; a full queue drops it (the next
    /// tick asks again).
    fn nudge(&self, request: fn(Call<(), ()>) -> Request) {
        let _ = self.queue.try_send(request(Call::nudge(())));
    }

    /// Queues a write that may carry an idempotency key (see [`Once`]).
    async fn ask_once<I, O>(
        &self,
        request: fn(OnceCall<I, O>) -> Request,
        input: I,
        once: Option<Once<O>>,
    ) -> Result<Answer<O>, WriteError> {
        let keyed = Keyed {
            input,
            once: once.map(Box::new),
        };
        self.ask(request, keyed).await
    }

    /// Creates a tier; with `once`, at most once per idempotency key.
    pub async fn create_tier(
        &self,
        spec: TierSpec,
        once: Option<Once<Arc<Tier>>>,
    ) -> Result<Answer<Arc<Tier>>, WriteError> {
        self.ask_once(Request::CreateTier, spec, once).await
    }

    /// Replaces a tier's features (and description, when given), found by name.
    pub async fn update_tier(&self, spec: TierSpec) -> Result<Arc<Tier>, WriteError> {
        self.ask(Request::UpdateTier, spec).await
    }

    /// Adds a key; with `once`, at most once per idempotency key.
    pub async fn add_key(
        &self,
        key: NewKey,
        once: Option<Once<Arc<KeyEntry>>>,
    ) -> Result<Answer<Arc<KeyEntry>>, WriteError> {
        self.ask_once(Request::AddKey, Box::new(key), once).await
    }

    pub async fn delete_key(&self, id: String) -> Result<(), WriteError> {
        self.ask(Request::DeleteKey, id).await
    }

    /// Applies a report of what the provider answered for a key; answers once it is durable
    /// and in effect.
    pub async fn report(&self, report: HealthReport) -> Result<Reported, WriteError> {
        self.ask(Request::Report, report).await
    }

    /// Sets (or, with a time past, clears) a key's exhaustion.
    pub async fn exhaust(&self, exhaustion: Exhaustion) -> Result<Reported, WriteError> {
        self.ask(Request::Exhaust, exhaustion).await
    }

    /// Changes a key in place, keeping its id and live counters.
    pub async fn patch_key(
        &self,
        id: String,
        patch: KeyPatch,
    ) -> Result<Arc<KeyEntry>, WriteError> {
        self.ask(Request::PatchKey, (id, Box::new(patch))).await
    }

    /// Counts a spend against key `id`'s budget, once per request id (across every key): a
    /// request id counted before answers the key's figures with `duplicate`, counting nothing.
    pub async fn spend(&self, id: String, spend: Spend) -> Result<SpendAnswer, WriteError> {
        self.ask(Request::Spend, (id, spend)).await
    }

    /// Deletes a tier (found by name or id) that has no keys, and every consumer's scope to it.
    pub async fn delete_tier(&self, name: String) -> Result<(), WriteError> {
        self.ask(Request::DeleteTier, name).await
    }

    /// Creates a consumer; answers with it and its token, which exists nowhere else afterwards.
    /// With `once`, at most once per idempotency key (a replay has no token to give).
    pub async fn create_consumer(
        &self,
        consumer: NewConsumer,
        once: Option<Once<(Arc<Consumer>, Zeroizing<String>)>>,
    ) -> Result<Answer<(Arc<Consumer>, Zeroizing<String>)>, WriteError> {
        self.ask_once(Request::CreateConsumer, consumer, once).await
    }

    /// Lets a consumer draw from a tier (found by name or id); adding it twice is harmless.
    /// With `once`, at most once per idempotency key.
    pub async fn add_scope(
        &self,
        consumer_id: String,
        scope: NewScope,
        once: Option<Once<Arc<Consumer>>>,
    ) -> Result<Answer<Arc<Consumer>>, WriteError> {
        self.ask_once(Request::AddScope, (consumer_id, scope), once)
            .await
    }

    /// Stops a consumer drawing from a tier (found by name or id); removing a scope it does not
    /// have is harmless.
    pub async fn remove_scope(
        &self,
        consumer_id: String,
        tier: String,
    ) -> Result<Arc<Consumer>, WriteError> {
        self.ask(Request::RemoveScope, (consumer_id, tier)).await
    }

    /// Gives a consumer a new token (the old one stops working with the commit); answers with
    /// it, which exists nowhere else afterwards. With `once`, at most once per idempotency key
    /// (a replay has no token to give).
    pub async fn rotate_token(
        &self,
        consumer_id: String,
        once: Option<Once<(Arc<Consumer>, Zeroizing<String>)>>,
    ) -> Result<Answer<(Arc<Consumer>, Zeroizing<String>)>, WriteError> {
        self.ask_once(Request::RotateToken, consumer_id, once).await
    }

    pub async fn delete_consumer(&self, id: String) -> Result<(), WriteError> {
        self.ask(Request::DeleteConsumer, id).await
    }

    /// The newest `limit` audit events before event id `before` (or the newest), newest first,
    /// with their ids, including those still queued.
    pub async fn recent_usage(
        &self,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<(u64, UsageRecord)>, WriteError> {
        self.ask(Request::RecentUsage, (limit, before)).await
    }

    /// Pins the database as it stands once every change answered so far is committed, for a
    /// backup. The writer only opens a read transaction; the copy is the caller's, off the
    /// writer thread.
    pub async fn snapshot(&self) -> Result<Snapshot, WriteError> {
        self.ask(Request::Snapshot, ())
            .await
            .map(|snapshot| *snapshot)
    }

    /// Changes queued and not yet taken by the writer.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Asks the writer to take expired keys out of the rotation, bring keys whose budget reset
    /// back, and let keys whose cooldown or exhaustion ended be available again, without
    /// waiting.
    pub fn expire_keys(&self) {
        self.nudge(Request::ExpireKeys);
    }

    /// Asks the writer to save the running time, without waiting.
    pub fn save_running_time(&self) {
        self.nudge(Request::SaveRunningTime);
    }

    /// Asks the writer to write the queued audit events, without waiting.
    pub fn flush_audit(&self) {
        self.nudge(Request::FlushAudit);
    }
}

/// The hot path's way to ask for reservations: a non-blocking send on the writer's queue. The
/// sender is weak so that the pool (which the writer owns) does not keep the writer's queue
/// open: the writer stops once every [`Writer`] handle is gone.
pub(super) struct ReserveSink(pub(super) mpsc::WeakSender<Request>);

impl Reserve for ReserveSink {
    fn reserve(&self, key_id: &Arc<str>) -> bool {
        self.0.upgrade().is_some_and(|queue| {
            queue
                .try_send(Request::Reserve(Call::nudge(Arc::clone(key_id))))
                .is_ok()
        })
    }
}
