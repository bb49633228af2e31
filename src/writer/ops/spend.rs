//! Counting a spend against a key's budget, once per request id.

use std::sync::Arc;

use super::Staging;
use crate::broker::{KeyBudget, KeyEntry, Now, Spend};
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

/// What a spend did: the key as it now stands, its budget right after this spend (or as it
/// stood, for a replay), and whether its request id had been counted before (then nothing was
/// counted now).
#[derive(Debug)]
pub struct SpendAnswer {
    pub key: Arc<KeyEntry>,
    pub budget: Option<KeyBudget>,
    pub duplicate: bool,
}

/// Counts `spend` against the budget of key `id`, unless its request id was counted before (on
/// any key): then it answers the key's current figures, counting nothing. A key whose budget
/// is spent by it leaves the rotation with this batch's commit; otherwise the key keeps its
/// place (and its pools) and gets its new figures once the batch has committed.
pub(super) fn spend(
    s: &mut Staging<'_>,
    id: &str,
    spend: &Spend,
) -> Result<SpendAnswer, WriteError> {
    let old = s.key(id)?;
    let now = Now::read(s.clock);
    let mut record = s.stored_key(id)?;
    let tag = spend_tag(spend.request_id());
    if s.txn.spend_counted_at(&tag)?.is_some() {
        return Ok(SpendAnswer {
            key: old,
            budget: key_budget(&record, now.unix_ms),
            duplicate: true,
        });
    }
    let before = key_budget(&record, now.unix_ms).ok_or(WriteError::NoBudget)?;
    if before.limit.unit != spend.unit() {
        return Err(WriteError::UnitDiffers(before.limit.unit.as_str()));
    }
    let budget = KeyBudget {
        spent_nanos: before.spent_nanos.saturating_add(spend.amount_nanos()),
        ..before
    };
    store_budget(&mut record, Some(&budget));
    s.txn.put_key(&record)?;
    s.txn.put_spend(&tag, now.unix_ms)?;
    s.txn.prune_spends(
        now.unix_ms.saturating_sub(SPEND_RETENTION_MS),
        PRUNE_PER_SPEND,
    )?;
    let key = if old.in_rotation() && budget.is_spent() {
        s.rebudget(&old, Some(budget), now)
    } else {
        s.stage_budget(&old, budget);
        old
    };
    if budget.is_spent() && !before.is_spent() {
        s.changes.push(Change::KeyOverBudget(Arc::clone(&key)));
    }
    Ok(SpendAnswer {
        key,
        budget: Some(budget),
        duplicate: false,
    })
}

/// Starts the new budget period of the keys whose reset is due: their spending starts again from
/// 0, and each active one goes back into its tier's rotation with the counters it had.
pub(super) fn reset_due(s: &mut Staging<'_>) {
    let now = Now::read(s.clock);
    for id in s.catalog.take_resets(now.unix_ms) {
        let Some(key) = s.catalog.key(&id).cloned() else {
            continue;
        };
        let budget = s.budget_of(&key).map(|budget| budget.at(now.unix_ms));
        s.rebudget(&key, budget, now);
    }
}

impl Staging<'_> {
    /// The key's spend budget as this batch has left it so far.
    pub(super) fn budget_of(&self, key: &KeyEntry) -> Option<KeyBudget> {
        self.budgets
            .get(&key.info.id)
            .map_or_else(|| key.budget(), |(_, budget)| Some(*budget))
    }

    /// Gives the key `budget` in place once the batch has committed: it stays in (or out of)
    /// its rotation, so no pool changes.
    fn stage_budget(&mut self, key: &Arc<KeyEntry>, budget: KeyBudget) {
        self.budgets
            .insert(Arc::clone(&key.info.id), (Arc::clone(key), budget));
    }

    /// Rebuilds the key with `budget` (its health as the batch has left it), in or out of its
    /// rotation as the budget says. Returns the key as the catalog now holds it.
    fn rebudget(&mut self, key: &KeyEntry, budget: Option<KeyBudget>, now: Now) -> Arc<KeyEntry> {
        let health = self.health_of(key);
        self.rebuild(key, key.info.clone(), health, budget, now)
    }
}
