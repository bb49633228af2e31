//! Creating and updating tiers.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Staging;
use crate::broker::{Limit, Tier, TierSpec};
use crate::store::tier_record;
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
