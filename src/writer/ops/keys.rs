//! Adding, changing and deleting keys.

use std::sync::Arc;

use super::Staging;
use super::health;
use super::usage::{store_window, write_reservation};
use crate::broker::LIFETIME;
use crate::broker::to_cap_seconds;
use crate::broker::{
    KeyBudget, KeyEntry, KeyInfo, KeyPatch, NewKey, Now, Plaintext, SpendLimit, UsageCap,
    period_start_ms,
};
use crate::store::{
    KeyRecord, Opened, StoreError, key_budget, key_info, key_record, open_key, seal_into,
    store_budget, store_health, usage_cap,
};
use crate::writer::WriteError;
use crate::writer::change_log::Change;

pub(super) fn add_key(s: &mut Staging<'_>, new: &NewKey) -> Result<Arc<KeyEntry>, WriteError> {
    let tier = s.tier(new.tier())?;
    let tier_id = Arc::clone(&tier.id);
    let tier = Arc::clone(&tier.name);
    let info = KeyInfo {
        id: uuid::Uuid::new_v4().to_string().into(),
        name: new.name().into(),
        tier_id,
        active: true,
        created_at_ms: s.next_created_ms(),
        expires_at_ms: new.expires_at_ms(),
    };
    let plain = new.plaintext();
    let mut record = key_record(&info, &plain, s.sealer);
    let cap = new.usage_limit().map(|limit| {
        // The first chunk is reserved with the key, in the same commit.
        let window = new.usage_window_seconds();
        let now_ms = s.clock.now_ms();
        let end_s = window.map_or(LIFETIME, |window| {
            to_cap_seconds(now_ms).saturating_add(window)
        });
        let reserved = UsageCap::chunk_for(limit).min(limit);
        record.usage_limit = Some(limit.into());
        record.usage_window_seconds = window.map(u64::from);
        record.usage_count = reserved.into();
        if let Some(window) = window {
            store_window(&mut record, s.clock, end_s, window);
        }
        UsageCap::new(limit, window, end_s, reserved, 0)
    });
    let budget = new
        .budget()
        .map(|limit| KeyBudget::fresh(limit, s.now_ms()));
    store_budget(&mut record, budget.as_ref());
    s.txn.put_key(&record)?;
    let entry = KeyEntry::new(info, &plain, cap).with_budget(budget);
    let id = Arc::clone(&entry.info.id);
    s.dirty.extend(s.catalog.put_key(entry));
    let key = Arc::clone(s.catalog.key(&id).expect("the key was just added"));
    s.changes.push(Change::KeyAdded {
        key: Arc::clone(&key),
        tier,
    });
    Ok(key)
}

pub(super) fn delete_key(s: &mut Staging<'_>, id: &str) -> Result<(), WriteError> {
    let key = s.key(id)?;
    s.txn.delete_key(id)?;
    let tier = s
        .catalog
        .tier_by_id(&key.info.tier_id)
        .map_or_else(|| Arc::from(""), |tier| Arc::clone(&tier.name));
    s.dirty.extend(s.catalog.remove_key(id));
    s.changes.push(Change::KeyDeleted { key, tier });
    Ok(())
}

/// Changes a key in place, keeping its id, creation time (its place in the rotation) and live
/// counters: the rate windows and, unless the cap itself changes, the usage count.
pub(super) fn patch_key(
    s: &mut Staging<'_>,
    id: &str,
    patch: &KeyPatch,
) -> Result<Arc<KeyEntry>, WriteError> {
    let old = s.key(id)?;
    let mut record = s.stored_key(id)?;
    // The catalog's keys all opened under this sealer when they were loaded or added.
    let Opened { value, secrets } =
        open_key(&record, s.sealer).map_err(|err| StoreError::BadRecord {
            table: "keys",
            id: id.to_owned(),
            reason: err.to_string(),
        })?;
    if let Some(name) = patch.name() {
        record.name = name.to_owned();
    }
    if let Some(active) = patch.active() {
        record.active = active;
    }
    if let Some(at) = patch.expires_at_ms() {
        record.expires_at_ms = at;
    }
    let now = Now::read(s.clock);
    let before = s.health_of(&old);
    let health = health::patched(&before, patch, now);
    store_health(&mut record, &health);
    if let Some(limit) = patch.budget() {
        change_budget(&mut record, limit, now.unix_ms);
    }
    let metadata = patch.metadata().unwrap_or(&record.metadata).clone();
    let plain = Plaintext {
        value: patch.value().unwrap_or(&value),
        metadata: &metadata,
        secrets: patch.secrets().unwrap_or(&secrets),
    };
    seal_into(&mut record, &plain, s.sealer);
    let cap = if patch.usage_limit().is_some() || patch.usage_window_seconds().is_some() {
        change_cap(&mut record, patch)?;
        s.txn.put_key(&record)?;
        new_cap(s, &record)?
    } else {
        s.txn.put_key(&record)?;
        old.usage.clone()
    };
    let entry = KeyEntry::sharing(key_info(&record), &plain, cap)
        .with_health(health.clone(), now)
        .with_budget(key_budget(&record, now.unix_ms));
    if entry.info.expires_at_ms == old.info.expires_at_ms && old.found_expired() {
        // A wall clock stepped back never serves it again (see `KeyEntry::servable`).
        entry.mark_expired();
    }
    let key = s.replace_key(entry, &health, now);
    health::after_change(s, &old, &before, &key, &health, now);
    s.changes.push(Change::KeyUpdated {
        key: Arc::clone(&key),
        fields: patch.fields().to_vec(),
    });
    Ok(key)
}

/// Applies a change of the spend budget (`None` removes it) at wall time `now_ms`. A new budget,
/// or one in another unit, starts from nothing spent; a changed amount or reset day keeps what
/// was spent in the period open now (which the new reset day defines).
fn change_budget(record: &mut KeyRecord, limit: Option<SpendLimit>, now_ms: i64) {
    let old = key_budget(record, now_ms);
    let budget = limit.map(|limit| match old {
        Some(old) if old.limit.unit == limit.unit => KeyBudget {
            limit,
            spent_nanos: old.spent_nanos,
            period_start_ms: period_start_ms(limit.reset_day, now_ms),
        },
        _ => KeyBudget::fresh(limit, now_ms),
    });
    store_budget(record, budget.as_ref());
}

/// Applies a change of the usage cap to the record. A new cap starts counting from zero; a
/// changed limit keeps the current window and its count; a changed window length keeps the
/// current window's start (so it may end at once) and its count; a windowed cap made a lifetime
/// one keeps its count; a lifetime cap given a window starts a window now.
fn change_cap(record: &mut KeyRecord, patch: &KeyPatch) -> Result<(), WriteError> {
    let old_limit = record.usage_limit;
    let old_window = record.usage_window_seconds;
    let limit = match patch.usage_limit() {
        Some(limit) => limit.map(u64::from),
        None => old_limit,
    };
    let window = match (patch.usage_window_seconds(), patch.usage_limit()) {
        (Some(window), _) => window.map(u64::from),
        // Removing the cap removes its window.
        (None, Some(None)) => None,
        (None, _) => old_window,
    };
    if limit.is_none() && window.is_some() {
        return Err(WriteError::Invalid(
            "usage_window_seconds needs usage_limit (the key has none)".into(),
        ));
    }
    let (count, start, end) = match (old_limit, old_window, window) {
        _ if limit.is_none() => (0, None, None),
        (None, ..) | (Some(_), None, Some(_)) => (0, None, None),
        (Some(_), None, None) => (record.usage_count, None, None),
        (Some(_), Some(old), Some(new)) => (
            record.usage_count,
            record.usage_window_start_ms,
            record.usage_window_end_running_ms.map(|end| {
                end.saturating_sub(old.saturating_mul(1_000))
                    .saturating_add(new.saturating_mul(1_000))
            }),
        ),
        (Some(_), Some(_), None) => (record.usage_count, None, None),
    };
    record.usage_limit = limit;
    record.usage_window_seconds = window;
    record.usage_count = count;
    record.usage_window_start_ms = start;
    record.usage_window_end_running_ms = end;
    Ok(())
}

/// The usage cap of a record whose cap just changed, resumed as a restart resumes it (every use
/// reserved so far counts as used) and given its next reservation in the same commit.
fn new_cap(s: &mut Staging<'_>, record: &KeyRecord) -> Result<Option<Arc<UsageCap>>, WriteError> {
    let Some(cap) = usage_cap(record, s.clock) else {
        return Ok(None);
    };
    if let Some((end, reserved)) = write_reservation(&s.txn, &record.id, &cap, s.clock)? {
        // Not yet shared with the hot path: published with the snapshot this batch commits.
        cap.apply_reservation(end, reserved);
    }
    Ok(Some(Arc::new(cap)))
}
