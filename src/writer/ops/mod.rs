//! One function per operation, each applied to the batch being staged: a copy of the catalog
//! and one write transaction, committed together by the writer thread.

mod consumers;
mod health;
mod keys;
mod spend;
mod tiers;
mod usage;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use metrics::Histogram;

use super::WriteError;
use super::change_log::Change;
use super::idempotency::apply_once;
use super::request::Request;
use crate::broker::{
    AuditLog, Catalog, Clock, Consumer, Dirty, HealthPolicy, HealthState, KeyBudget, KeyEntry, Now,
    Tier,
};
use crate::crypto::Sealer;
use crate::store::{Batch, KeyRecord, StoreError};

pub use health::{Exhaustion, HealthReport, Reported};
pub use spend::{SPEND_RETENTION_MS, SpendAnswer};
pub(super) use usage::Reservation;
pub use usage::reserve_all;

/// A batch being applied: a copy of the catalog, the write transaction, and what they changed.
pub(super) struct Staging<'a> {
    catalog: Catalog,
    /// The features whose pools the batch changed.
    dirty: Dirty,
    changes: Vec<Change>,
    txn: Batch,
    clock: &'a Clock,
    sealer: &'a Sealer,
    audit: Option<&'a AuditLog>,
    /// Unix ms given to the last key created: creation times are kept strictly increasing so
    /// that keys rotate in the order they were added, even within one millisecond.
    last_created_ms: &'a mut i64,
    policy: HealthPolicy,
    /// Keys whose health the batch changed, by id, with their new health: published to each
    /// key once the batch has committed.
    health: HashMap<Arc<str>, (Arc<KeyEntry>, HealthState)>,
    /// Keys whose spend figures the batch changed in place (they stay in or out of their
    /// rotation), by id: published to each key once the batch has committed.
    budgets: HashMap<Arc<str>, (Arc<KeyEntry>, KeyBudget)>,
}

/// A committed batch: the catalog it leads to, the features it touched, and the changes to log.
pub(super) struct Staged {
    pub(super) catalog: Catalog,
    pub(super) dirty: Dirty,
    pub(super) changes: Vec<Change>,
    /// Health to publish to these keys, now committed.
    pub(super) health: Vec<(Arc<KeyEntry>, HealthState)>,
    /// Spend figures to publish to these keys, now committed.
    pub(super) budgets: Vec<(Arc<KeyEntry>, KeyBudget)>,
}

impl Staged {
    /// Gives each key whose health or spend figures the batch changed in place its new ones
    /// (before the next snapshot is published, so its rebuilt pools see them).
    pub(super) fn publish_health(&mut self, clock: &Clock) {
        let now = Now::read(clock);
        for (key, health) in self.health.drain(..) {
            key.health.publish(health, now);
        }
        for (key, budget) in self.budgets.drain(..) {
            key.publish_budget(Some(budget));
        }
    }
}

impl<'a> Staging<'a> {
    /// Stages on a copy of `catalog`, writing into `txn`.
    pub(super) fn new(
        txn: Batch,
        catalog: &Catalog,
        clock: &'a Clock,
        sealer: &'a Sealer,
        audit: Option<&'a AuditLog>,
        last_created_ms: &'a mut i64,
        policy: HealthPolicy,
    ) -> Self {
        Self {
            catalog: catalog.clone(),
            dirty: Dirty::new(),
            changes: Vec::new(),
            txn,
            clock,
            sealer,
            audit,
            last_created_ms,
            policy,
            health: HashMap::new(),
            budgets: HashMap::new(),
        }
    }

    /// Applies `request`, keeping its answer in it. A storage error aborts the batch.
    pub(super) fn apply(&mut self, request: &mut Request) -> Result<(), StoreError> {
        match request {
            Request::CreateTier(call) => {
                call.stage(|keyed| apply_once(self, keyed, tiers::create_tier))
            }
            Request::UpdateTier(call) => call.stage(|spec| tiers::update_tier(self, spec)),
            Request::AddKey(call) => {
                call.stage(|keyed| apply_once(self, keyed, |s, key| keys::add_key(s, key)))
            }
            Request::PatchKey(call) => call.stage(|(id, patch)| keys::patch_key(self, id, patch)),
            Request::DeleteKey(call) => call.stage(|id| keys::delete_key(self, id)),
            Request::Spend(call) => call.stage(|(id, input)| spend::spend(self, id, input)),
            Request::Report(call) => call.stage(|report| health::report(self, report)),
            Request::Exhaust(call) => call.stage(|exhaustion| health::exhaust(self, exhaustion)),
            Request::DeleteTier(call) => call.stage(|name| tiers::delete_tier(self, name)),
            Request::CreateConsumer(call) => {
                call.stage(|keyed| apply_once(self, keyed, consumers::create_consumer))
            }
            Request::AddScope(call) => call.stage(|keyed| {
                apply_once(self, keyed, |s, (consumer_id, scope)| {
                    consumers::add_scope(s, consumer_id, scope)
                })
            }),
            Request::RemoveScope(call) => {
                call.stage(|(consumer_id, tier)| consumers::remove_scope(self, consumer_id, tier))
            }
            Request::RotateToken(call) => {
                call.stage(|keyed| apply_once(self, keyed, |s, id| consumers::rotate_token(s, id)))
            }
            Request::DeleteConsumer(call) => call.stage(|id| consumers::delete_consumer(self, id)),
            Request::RecentUsage(call) => {
                call.stage(|&(limit, before)| usage::recent_usage(self, limit, before))
            }
            Request::Reserve(call) => call.stage(|id| usage::reserve(self, id)),
            Request::FlushAudit(call) => call.stage(|()| usage::flush_audit(self)),
            // Every batch takes expired keys out, brings keys whose budget reset back, and lets
            // keys whose health deadlines ended be available again, when it commits; this
            // request asks nothing more.
            Request::ExpireKeys(call) => call.stage(|()| Ok(())),
            // Every batch saves the running time when it commits.
            Request::SaveRunningTime(call) => call.stage(|()| Ok(())),
            // Answered once the batch has committed (see the writer thread).
            Request::Snapshot(_) => Ok(()),
        }
    }

    /// Takes expired keys out of the rotation, brings keys whose budget reset back, lets keys
    /// whose health deadlines ended be available again, saves the running time and commits
    /// durably, timing the commit.
    pub(super) fn commit(mut self, commit_time: &Histogram) -> Result<Staged, StoreError> {
        health::recover_due(&mut self);
        // Keys whose budget reset come back, and expired keys leave the rotation, with whatever
        // batch comes first.
        spend::reset_due(&mut self);
        let Self {
            mut catalog,
            mut dirty,
            changes,
            txn,
            clock,
            health,
            budgets,
            ..
        } = self;
        dirty.extend(catalog.expire(clock.unix_now_ms()));
        txn.save_running_ms(clock.now_ms())?;
        let started = Instant::now();
        txn.commit()?;
        commit_time.record(started.elapsed().as_secs_f64());
        Ok(Staged {
            catalog,
            dirty,
            changes,
            health: health.into_values().collect(),
            budgets: budgets.into_values().collect(),
        })
    }

    /// The batch's write transaction.
    pub(super) fn txn(&self) -> &Batch {
        &self.txn
    }

    /// The catalog as the batch has left it so far.
    pub(super) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Unix ms now.
    pub(super) fn now_ms(&self) -> i64 {
        self.clock.unix_now_ms()
    }

    /// A tier found by name, or else by id.
    fn tier(&self, name_or_id: &str) -> Result<Arc<Tier>, WriteError> {
        self.catalog
            .tier_by_name(name_or_id)
            .or_else(|| self.catalog.tier_by_id(name_or_id))
            .cloned()
            .ok_or_else(|| WriteError::TierNotFound(name_or_id.to_owned()))
    }

    /// A consumer found by id.
    fn consumer(&self, id: &str) -> Result<Arc<Consumer>, WriteError> {
        self.catalog
            .consumer(id)
            .cloned()
            .ok_or_else(|| WriteError::ConsumerNotFound(id.to_owned()))
    }

    /// A key found by id, as the batch has left it so far.
    fn key(&self, id: &str) -> Result<Arc<KeyEntry>, WriteError> {
        self.catalog
            .key(id)
            .cloned()
            .ok_or_else(|| WriteError::KeyNotFound(id.to_owned()))
    }

    /// A key's record, as the batch has written it so far.
    fn stored_key(&self, id: &str) -> Result<KeyRecord, WriteError> {
        self.txn
            .get_key(id)?
            .ok_or_else(|| WriteError::KeyNotFound(id.to_owned()))
    }

    fn next_created_ms(&mut self) -> i64 {
        let now = self.clock.unix_now_ms();
        *self.last_created_ms = now.max(self.last_created_ms.saturating_add(1));
        *self.last_created_ms
    }
}
