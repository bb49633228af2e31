//! Counting a spend against a key's budget, once per request id.

use std::sync::Arc;

use super::Staging;
use crate::broker::{KeyBudget, KeyEntry, Spend};
use crate::store::{key_budget, spend_tag, store_budget};
use crate::writer::WriteError;
use crate::writer::change_log::Change;

/// How long a spend's request id is recognised: 35 days, on the server's wall clock. Older ones
/// are pruned.
pub const SPEND_RETENTION_MS: i64 = 35 * 24 * 60 * 60 * 1000;

/// Most request ids older than [`SPEND_RETENTION_MS`] one spend prunes: as many as a batch can
/// add, so pruning keeps up with any rate of spends, and a long idle stretch never makes one
/// write slow.
const PRUNE_PER_SPEND: usize = 1_024;

/// What a spend did: the key as it now stands, and whether its request id had been counted
/// before (then nothing was counted now).
#[derive(Debug)]
pub struct SpendAnswer {
    pub key: Arc<KeyEntry>,
    pub duplicate: bool,
}

/// Counts `spend` against the budget of key `id`, unless its request id was counted before (on
/// any key): then it answers the key's current figures, counting nothing. A key whose budget
/// is spent by it leaves the rotation with this batch's commit.
pub(super) fn spend(
    s: &mut Staging<'_>,
    id: &str,
    spend: &Spend,
) -> Result<SpendAnswer, WriteError> {
    let old = s
        .catalog
        .key(id)
        .cloned()
        .ok_or_else(|| WriteError::KeyNotFound(id.to_owned()))?;
    let tag = spend_tag(spend.request_id());
    if s.txn.spend_counted_at(&tag)?.is_some() {
        return Ok(SpendAnswer {
            key: old,
            duplicate: true,
        });
    }
    let now = s.now_ms();
    let mut record = s
        .txn
        .get_key(id)?
        .ok_or_else(|| WriteError::KeyNotFound(id.to_owned()))?;
    let budget = key_budget(&record, now).ok_or(WriteError::NoBudget)?;
    if budget.limit.unit != spend.unit() {
        return Err(WriteError::UnitDiffers(budget.limit.unit.as_str()));
    }
    let budget = KeyBudget {
        spent_nanos: budget.spent_nanos.saturating_add(spend.amount_nanos()),
        ..budget
    };
    store_budget(&mut record, Some(&budget));
    s.txn.put_key(&record)?;
    s.txn.put_spend(&tag, now)?;
    s.txn
        .prune_spends(now.saturating_sub(SPEND_RETENTION_MS), PRUNE_PER_SPEND)?;
    let entry = old.rebudgeted(Some(budget));
    let leaves = old.in_rotation() && !entry.in_rotation();
    let dirty = s.catalog.replace_key(entry);
    // A key that stays in (or out of) the rotation changes no pool: the pools built before
    // hold its earlier entry, which serves alike (same body, same usage cap).
    if leaves {
        s.dirty.extend(dirty);
    }
    let key = Arc::clone(s.catalog.key(id).expect("the key was just replaced"));
    if key.over_budget() && !old.over_budget() {
        s.changes.push(Change::KeyOverBudget(Arc::clone(&key)));
    }
    Ok(SpendAnswer {
        key,
        duplicate: false,
    })
}
