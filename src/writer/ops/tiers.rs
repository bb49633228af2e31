//! Creating, updating and deleting tiers.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Staging;
use crate::broker::{Consumer, Limit, Tier, TierSpec};
use crate::store::{consumer_record, tier_record};
use crate::writer::WriteError;
use crate::writer::change_log::Change;

pub(super) fn create_tier(s: &mut Staging<'_>, spec: &TierSpec) -> Result<Arc<Tier>, WriteError> {
    if s.catalog.tier_by_name(spec.name()).is_some() {
        return Err(WriteError::TierExists(spec.name().to_owned()));
    }
    let tier = Tier {
        id: uuid::Uuid::new_v4().to_string().into(),
        name: spec.name().into(),
        description: spec.description().unwrap_or_default().to_owned(),
        created_at_ms: s.clock.unix_now_ms(),
        features: features(spec),
    };
    s.txn.put_tier(&tier_record(&tier))?;
    s.dirty.extend(s.catalog.put_tier(tier.clone()));
    let tier = Arc::new(tier);
    s.changes.push(Change::TierCreated(Arc::clone(&tier)));
    Ok(tier)
}

/// Replaces a tier's features (and description, when given), found by name.
pub(super) fn update_tier(s: &mut Staging<'_>, spec: &TierSpec) -> Result<Arc<Tier>, WriteError> {
    let old = s
        .catalog
        .tier_by_name(spec.name())
        .cloned()
        .ok_or_else(|| WriteError::TierNotFound(spec.name().to_owned()))?;
    let tier = Tier {
        description: spec
            .description()
            .map_or_else(|| old.description.clone(), str::to_owned),
        features: features(spec),
        ..Tier::clone(&old)
    };
    s.txn.put_tier(&tier_record(&tier))?;
    s.dirty.extend(s.catalog.put_tier(tier.clone()));
    let new = Arc::new(tier);
    s.changes.push(Change::TierUpdated {
        old,
        new: Arc::clone(&new),
    });
    Ok(new)
}

fn features(spec: &TierSpec) -> BTreeMap<Arc<str>, Limit> {
    spec.features()
        .iter()
        .map(|(feature, limit)| (feature.as_str().into(), *limit))
        .collect()
}

/// Deletes a tier (found by name, or by id) that has no keys; consumers scoped to it lose that
/// scope in the same commit.
pub(super) fn delete_tier(s: &mut Staging<'_>, name: &str) -> Result<(), WriteError> {
    let tier = s.tier(name)?;
    if s.catalog.tier_has_keys(&tier.id) {
        return Err(WriteError::TierHasKeys);
    }
    let scoped: Vec<Consumer> = s
        .catalog
        .consumers()
        .filter(|consumer| consumer.scopes.contains(&tier.id))
        .map(|consumer| Consumer::clone(consumer))
        .collect();
    let unscoped = scoped.len();
    for mut consumer in scoped {
        consumer.scopes.remove(&tier.id);
        s.txn.put_consumer(&consumer_record(&consumer))?;
        s.catalog.put_consumer(consumer);
    }
    s.txn.delete_tier(&tier.id)?;
    s.dirty.extend(s.catalog.remove_tier(&tier.id));
    s.changes.push(Change::TierDeleted { tier, unscoped });
    Ok(())
}
