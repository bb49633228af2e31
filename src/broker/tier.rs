//! Tiers and the limits they set per feature.

use std::collections::BTreeMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;

/// A feature's limit in a tier: `rate_limit` uses per `window_seconds`, per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Limit {
    pub rate_limit: u32,
    pub window_seconds: u32,
}

impl Limit {
    pub fn window_ms(self) -> u64 {
        u64::from(self.window_seconds) * 1_000
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub description: String,
    pub created_at_ms: i64,
    pub features: BTreeMap<Arc<str>, Limit>,
}

/// One key's budget for one feature in the window open now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub used: u32,
    pub limit: Limit,
}

/// How many keys a tier has, and how many of them are servable now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierKeys {
    pub total: usize,
    pub active: usize,
}

/// Where `feature` sits in `tier`'s feature order, which is the order of a member's counters.
pub fn feature_index(tier: &Tier, feature: &str) -> Option<usize> {
    tier.features.keys().position(|name| &**name == feature)
}
