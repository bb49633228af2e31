//! What an applied change did, logged once it is committed: ids and names, never values.

use std::sync::Arc;

use crate::broker::{Consumer, KeyEntry, Tier};

pub(super) enum Change {
    TierCreated(Arc<Tier>),
    TierUpdated {
        old: Arc<Tier>,
        new: Arc<Tier>,
    },
    KeyAdded {
        key: Arc<KeyEntry>,
        tier: Arc<str>,
    },
    KeyDeleted {
        key: Arc<KeyEntry>,
        tier: Arc<str>,
    },
    /// The names of the fields changed, never their values.
    KeyUpdated {
        key: Arc<KeyEntry>,
        fields: Vec<&'static str>,
    },
    /// A spend used up the key's budget: it leaves the rotation until its reset (or a larger
    /// budget).
    KeyOverBudget(Arc<KeyEntry>),
    /// With how many consumers lost their scope to it.
    TierDeleted {
        tier: Arc<Tier>,
        unscoped: usize,
    },
    TokenRotated(Arc<Consumer>),
    ConsumerCreated(Arc<Consumer>),
    /// A consumer's scope to a tier added (`true`) or removed.
    Scope {
        consumer: Arc<Consumer>,
        tier: Arc<str>,
        added: bool,
    },
    ConsumerDeleted(Arc<Consumer>),
}

impl Change {
    pub(super) fn log(&self) {
        match self {
            Change::TierCreated(tier) => tracing::info!(
                tier_id = %tier.id,
                tier = %tier.name,
                features = %names(tier.features.keys()),
                "tier created"
            ),
            Change::TierUpdated { old, new } => {
                let listed = |tier: &Tier, feature: &Arc<str>| tier.features.contains_key(feature);
                tracing::info!(
                    tier_id = %new.id,
                    tier = %new.name,
                    added = %names(new.features.keys().filter(|f| !listed(old, f))),
                    removed = %names(old.features.keys().filter(|f| !listed(new, f))),
                    limits_changed = %names(new.features.iter().filter(|(f, limit)| {
                        old.features.get(*f).is_some_and(|was| was != *limit)
                    }).map(|(f, _)| f)),
                    description_changed = old.description != new.description,
                    "tier updated"
                );
            }
            Change::KeyAdded { key, tier } => tracing::info!(
                key_id = %key.info.id,
                key = %key.info.name,
                tier = %tier,
                "key added"
            ),
            Change::KeyOverBudget(key) => tracing::info!(
                key_id = %key.info.id,
                key = %key.info.name,
                resets_at_ms = key.budget_returns_at(),
                "key over budget"
            ),
            Change::KeyDeleted { key, tier } => tracing::info!(
                key_id = %key.info.id,
                key = %key.info.name,
                tier = %tier,
                "key deleted"
            ),
            Change::KeyUpdated { key, fields } => tracing::info!(
                key_id = %key.info.id,
                key = %key.info.name,
                fields = %fields.join(","),
                "key updated"
            ),
            Change::TierDeleted { tier, unscoped } => tracing::info!(
                tier_id = %tier.id,
                tier = %tier.name,
                consumers_unscoped = unscoped,
                "tier deleted"
            ),
            Change::TokenRotated(consumer) => tracing::info!(
                consumer_id = %consumer.id,
                consumer = %consumer.name,
                "consumer token rotated"
            ),
            Change::ConsumerCreated(consumer) => tracing::info!(
                consumer_id = %consumer.id,
                consumer = %consumer.name,
                "consumer created"
            ),
            Change::Scope {
                consumer,
                tier,
                added,
            } => tracing::info!(
                consumer_id = %consumer.id,
                consumer = %consumer.name,
                tier = %tier,
                scope = if *added { "added" } else { "removed" },
                "consumer scope changed"
            ),
            Change::ConsumerDeleted(consumer) => tracing::info!(
                consumer_id = %consumer.id,
                consumer = %consumer.name,
                "consumer deleted"
            ),
        }
    }
}

/// Feature names, comma-separated, for a log field.
fn names<'a>(features: impl Iterator<Item = &'a Arc<str>>) -> String {
    features.map(|f| &**f).collect::<Vec<_>>().join(",")
}
