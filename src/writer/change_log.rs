//! What an applied change did, logged once it is committed: ids and names, never values.

use std::sync::Arc;

use crate::broker::{Consumer, KeyEntry, KeyState, Now, Outcome, Tier};

/// A cooldown longer than this is logged as a warning.
const LONG_COOLDOWN_MS: i64 = 60_000;

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
    /// A report of the provider's answer, applied: the key as it now is.
    KeyHealth {
        key: Arc<KeyEntry>,
        outcome: Outcome,
        feature: Option<Arc<str>>,
        now: Now,
    },
    KeyExhausted {
        key: Arc<KeyEntry>,
        /// `None`: cleared.
        until_ms: Option<i64>,
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
            Change::KeyHealth {
                key,
                outcome,
                feature,
                now,
            } => log_health(key, *outcome, feature.as_deref(), *now),
            Change::KeyExhausted { key, until_ms } => tracing::info!(
                key_id = %key.info.id,
                key = %key.info.name,
                until_ms,
                "key exhaustion set"
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

/// A report as applied: one `warn` when it disabled the key or cooled it (or a feature) for
/// more than a minute, `debug` otherwise. Ids and names only, never the value.
fn log_health(key: &KeyEntry, outcome: Outcome, feature: Option<&str>, now: Now) {
    let health = key.health.state();
    let (state, until_ms) = key.state_with(&health, now);
    let feature_until =
        feature.and_then(|f| health.cooling_features(now).find(|(c, _)| &***c == f));
    let cooling_ms = match (state, feature_until) {
        (_, Some((_, until))) => until.unix_ms - now.unix_ms,
        (KeyState::Cooling, _) => until_ms.map_or(0, |until| until - now.unix_ms),
        _ => 0,
    };
    let (key_id, name, status) = (&*key.info.id, &*key.info.name, outcome.audit_event());
    if state == KeyState::Disabled && matches!(outcome, Outcome::Refused(_)) {
        let reason = health.disabled_reason.as_deref().unwrap_or_default();
        tracing::warn!(key_id, key = name, reason, "key disabled by a report");
    } else if cooling_ms > LONG_COOLDOWN_MS {
        tracing::warn!(key_id, key = name, feature, seconds = cooling_ms / 1_000, report = %status, "key cooling for more than a minute");
    } else {
        tracing::debug!(key_id, key = name, feature, state = state.as_str(), report = %status, "key health reported");
    }
}

/// Feature names, comma-separated, for a log field.
fn names<'a>(features: impl Iterator<Item = &'a Arc<str>>) -> String {
    features.map(|f| &**f).collect::<Vec<_>>().join(",")
}
