//! Key health: reports of the provider's answers and exhaustion deadlines, each durable (with
//! its audit event) before it is answered, and the one place where a key becomes available
//! again.

use std::sync::Arc;

use super::Staging;
use crate::broker::{HealthState, KeyBudget, KeyEntry, KeyHealth, KeyInfo, KeyPatch, Now, Outcome};
use crate::store::{AUDIT_RETENTION, UsageRecord, store_health};
use crate::writer::WriteError;
use crate::writer::change_log::Change;

/// A report of what the provider answered for a key.
#[derive(Clone, Debug)]
pub struct HealthReport {
    pub key_id: String,
    /// The consumer who reported; `None` for the admin.
    pub reporter: Option<Arc<str>>,
    pub outcome: Outcome,
    /// The feature the call was for: a 429 then cools that feature only.
    pub feature: Option<Arc<str>>,
}

/// `POST /key/{id}/exhausted`: the key is not served until `until_ms` (unix ms); a time past
/// clears it.
#[derive(Clone, Debug)]
pub struct Exhaustion {
    pub key_id: String,
    pub reporter: Option<Arc<str>>,
    pub until_ms: i64,
}

/// A key's health once a change is staged: what the report answers.
#[derive(Clone, Debug)]
pub struct Reported {
    pub key: Arc<KeyEntry>,
    pub health: KeyHealth,
}

/// Why a key became available again.
#[derive(Clone, Copy, Debug)]
pub(in crate::writer) enum Recovery {
    /// Its exhaustion was cleared or brought forward, or its cooldowns cleared.
    Cleared,
    /// A cooldown or exhaustion ended by itself.
    Ended,
    /// An admin made it active again.
    Enabled,
}

pub(super) fn report(s: &mut Staging<'_>, report: &HealthReport) -> Result<Reported, WriteError> {
    let key = s.key(&report.key_id)?;
    let now = Now::read(s.clock);
    let before = s.health_of(&key);
    let after = before.after(report.outcome, report.feature.as_ref(), now, s.policy);
    let event = report.outcome.audit_event();
    s.audit_health(
        &report.key_id,
        report.reporter.as_ref(),
        report.feature.as_deref(),
        event,
    )?;
    let disable = key.info.active && after.disabled_reason.is_some();
    let key = if after == before {
        key
    } else {
        s.save_health(&key, after, now, !disable)?
    };
    s.changes.push(Change::KeyHealth {
        key: Arc::clone(&key),
        outcome: report.outcome,
        feature: report.feature.clone(),
        now,
    });
    Ok(s.reported(key, now))
}

pub(super) fn exhaust(
    s: &mut Staging<'_>,
    exhaustion: &Exhaustion,
) -> Result<Reported, WriteError> {
    let key = s.key(&exhaustion.key_id)?;
    let now = Now::read(s.clock);
    let before = s.health_of(&key);
    let until = (exhaustion.until_ms > now.unix_ms).then(|| now.at_unix(exhaustion.until_ms));
    let after = HealthState {
        exhausted: until,
        ..before.clone()
    };
    let event = if until.is_some() {
        "exhausted"
    } else {
        "exhaustion cleared"
    };
    s.audit_health(
        &exhaustion.key_id,
        exhaustion.reporter.as_ref(),
        None,
        event.into(),
    )?;
    let earlier = after.frees_sooner_than(&before, now);
    let key = s.save_health(&key, after, now, true)?;
    if earlier {
        available_again(s, &key, Recovery::Cleared);
    }
    s.changes.push(Change::KeyExhausted {
        key: Arc::clone(&key),
        until_ms: until.map(|d| d.unix_ms),
    });
    Ok(s.reported(key, now))
}

/// The one place where a key becomes available again: its exhaustion was cleared, a cooldown or
/// exhaustion ended by itself (found by [`recover_due`] with the next batch once its deadline
/// passed), or an admin enabled it again (see [`patched`]). The pools of its tier's features
/// are rebuilt, so no pool keeps refusing on a deadline that no longer holds (their
/// `spent_until`); publishing them wakes the requests waiting for a key of those features
/// (`Pool::key_available`).
pub(in crate::writer) fn available_again(s: &mut Staging<'_>, key: &KeyEntry, why: Recovery) {
    if let Some(tier) = s.catalog.tier_by_id(&key.info.tier_id) {
        s.dirty.extend(tier.features.keys().cloned());
    }
    tracing::debug!(key_id = %key.info.id, key = %key.info.name, ?why, "key available again");
}

/// A key's health after `patch` (`PATCH /admin/keys/{id}`), from `before` at `now`:
/// `is_active: true` clears what a report held against it ([`HealthState::re_enabled`]);
/// `exhausted_until` sets the exhaustion (a time past, or `null`, clears it).
pub(super) fn patched(before: &HealthState, patch: &KeyPatch, now: Now) -> HealthState {
    let mut after = if patch.active() == Some(true) {
        before.re_enabled()
    } else {
        before.clone()
    };
    if let Some(until) = patch.exhausted_until_ms() {
        after.exhausted = until
            .filter(|&at| at > now.unix_ms)
            .map(|at| now.at_unix(at));
    }
    after
}

/// Calls [`available_again`] for a key an admin change left servable sooner than `old` was:
/// made active again, or a deadline (exhaustion, cooldown) cleared or brought forward.
pub(super) fn after_change(
    s: &mut Staging<'_>,
    old: &KeyEntry,
    before: &HealthState,
    key: &KeyEntry,
    after: &HealthState,
    now: Now,
) {
    if !key.info.active {
        return;
    }
    if !old.info.active {
        available_again(s, key, Recovery::Enabled);
    } else if after.frees_sooner_than(before, now) {
        available_again(s, key, Recovery::Cleared);
    }
}

/// Calls [`available_again`] for each key whose last deadline has passed, and judges again
/// whether each key whose benched instant has passed takes turns ([`seat`]); every batch does,
/// as it commits.
pub(super) fn recover_due(s: &mut Staging<'_>) {
    let now = Now::read(s.clock);
    for id in s.catalog.recover(now.running_ms) {
        let Some(key) = s.catalog.key(&id).cloned() else {
            continue;
        };
        if !key.info.active {
            continue;
        }
        let health = s.health_of(&key);
        seat(s, &key, &health, now);
        if health.last_deadline(now).is_none() {
            available_again(s, &key, Recovery::Ended);
        }
    }
}

/// Puts `key` in or out of its tier's rotation as `health` leaves it at `now`
/// ([`HealthState::out_of_rotation_until`]): benched while it is unavailable as a whole, back
/// in rotation (with its counters) once it is not. A benched key whose instant is still ahead
/// stays as it is when its cooldown is only extended: a storm of 429 reports on one key
/// rebuilds no pool. Its pools then take it back into the turns at that instant (see
/// `FeaturePool`), until [`recover_due`] judges it again and benches it until its new deadline:
/// one rebuild per instant passed, not per report.
fn seat(s: &mut Staging<'_>, key: &KeyEntry, health: &HealthState, now: Now) {
    let id = &key.info.id;
    let dirty = match (
        health.out_of_rotation_until(now),
        s.catalog.benched_until(id),
    ) {
        (None, None) => return,
        (None, Some(_)) => s.catalog.unbench(id),
        (Some(until), Some(was)) if now.running_ms < was && was <= until => return,
        (Some(until), _) => s.catalog.bench(id, until),
    };
    s.dirty.extend(dirty);
}

impl Staging<'_> {
    /// The key's health as this batch has left it so far.
    pub(super) fn health_of(&self, key: &KeyEntry) -> HealthState {
        self.health
            .get(&key.info.id)
            .map_or_else(|| (*key.health.state()).clone(), |(_, state)| state.clone())
    }

    /// Writes `health` into the key's record. A key that stays `active` gets it once the batch
    /// has committed; one disabled by it (`active` false) is replaced in the catalog, leaving
    /// its tier's rotation. Returns the key as the catalog now holds it.
    fn save_health(
        &mut self,
        key: &Arc<KeyEntry>,
        health: HealthState,
        now: Now,
        active: bool,
    ) -> Result<Arc<KeyEntry>, WriteError> {
        let id = &key.info.id;
        let mut record = self.stored_key(id)?;
        store_health(&mut record, &health);
        let disable = key.info.active && !active;
        record.active = record.active && active;
        self.txn.put_key(&record)?;
        if !disable {
            self.catalog.note_recovery(id, health.last_deadline(now));
            seat(self, key, &health, now);
            self.health
                .insert(Arc::clone(id), (Arc::clone(key), health));
            return Ok(Arc::clone(key));
        }
        let info = KeyInfo {
            active: false,
            ..key.info.clone()
        };
        let budget = self.budget_of(key);
        Ok(self.rebuild(key, info, health, budget, now))
    }

    /// Puts the same key with `info`, `health` and `budget` in its place
    /// ([`Staging::replace_key`]): its body and usage cap are kept, and so is its having been
    /// found expired (its expiry is the same). Returns the key as the catalog now holds it.
    pub(super) fn rebuild(
        &mut self,
        key: &KeyEntry,
        info: KeyInfo,
        health: HealthState,
        budget: Option<KeyBudget>,
        now: Now,
    ) -> Arc<KeyEntry> {
        let entry = key.replaced(info, health.clone(), now).with_budget(budget);
        if key.found_expired() {
            entry.mark_expired();
        }
        self.replace_key(entry, &health, now)
    }

    /// Puts `entry` (built with its `health`) in place of the key with its id, keeping the live
    /// counters of its open windows (parked while it is inactive), benches it if `health` says
    /// so ([`seat`]) and notes its deadlines.
    /// The one way a batch rebuilds a key it keeps: a report disabling it, a spend or a reset
    /// moving it in or out of its rotation ([`Staging::rebuild`]), a `PATCH`. Returns the key
    /// as the catalog now holds it.
    pub(super) fn replace_key(
        &mut self,
        entry: KeyEntry,
        health: &HealthState,
        now: Now,
    ) -> Arc<KeyEntry> {
        let id = Arc::clone(&entry.info.id);
        self.catalog.note_recovery(&id, health.last_deadline(now));
        self.dirty.extend(self.catalog.replace_key(entry));
        // The new entry carries its health and spend figures: nothing is left to publish to the
        // old one, and later changes in this batch read them from the new one.
        self.health.remove(&id);
        self.budgets.remove(&id);
        let key = Arc::clone(self.catalog.key(&id).expect("the key was just put"));
        seat(self, &key, health, now);
        key
    }

    /// Appends a health event to the audit trail, in this batch (when the trail is on).
    fn audit_health(
        &self,
        key_id: &str,
        reporter: Option<&Arc<str>>,
        feature: Option<&str>,
        event: String,
    ) -> Result<(), WriteError> {
        if self.audit.is_none() {
            return Ok(());
        }
        let record = UsageRecord {
            key_id: key_id.to_owned(),
            consumer_id: reporter.map(ToString::to_string),
            feature: feature.unwrap_or_default().to_owned(),
            created_at_ms: self.clock.unix_now_ms(),
            event: Some(event),
        };
        self.txn.append_usage(&[record], AUDIT_RETENTION)?;
        Ok(())
    }

    /// What a report answers: the key's state and cooling features as this batch leaves them.
    fn reported(&self, key: Arc<KeyEntry>, now: Now) -> Reported {
        let health = key.health_at(&self.health_of(&key), now);
        Reported { key, health }
    }
}
