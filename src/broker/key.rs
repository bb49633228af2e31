//! A key: what it is, and the `GET /key` body holding its plaintext.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::budget::KeyBudget;
use super::health::{Health, HealthState, Now};
use super::usage::UsageCap;

/// What a key is, apart from its sealed material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub tier_id: Arc<str>,
    pub active: bool,
    pub created_at_ms: i64,
    /// Unix ms after which the key is never served.
    pub expires_at_ms: Option<i64>,
}

/// What a key is at a given moment: what its listing entry shows and its filter (`?state=`)
/// matches. The one place that names the states: a new one is a variant here, in
/// [`KeyState::ALL`] and [`KeyState::as_str`], and its rule in [`KeyEntry::state_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// Inactive because the provider refused it (401, 402, 403): see `disabled_reason`.
    Disabled,
    /// Turned off by an admin.
    Inactive,
    /// Past its `expires_at`.
    Expired,
    /// Not served for any feature until its `exhausted_until`.
    Exhausted,
    /// Its spend budget is spent: not served until its `resets_at` (or a larger budget).
    OverBudget,
    /// The whole key is cooling down (429s, or a run of failures).
    Cooling,
    /// Servable now (rate limits and feature cooldowns aside).
    Active,
}

impl KeyState {
    /// Every state, in the order they are judged (the first that applies is the key's).
    pub const ALL: [KeyState; 7] = [
        KeyState::Disabled,
        KeyState::Inactive,
        KeyState::Expired,
        KeyState::Exhausted,
        KeyState::OverBudget,
        KeyState::Cooling,
        KeyState::Active,
    ];

    /// Its name, as listed and filtered.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Disabled => "disabled",
            KeyState::Inactive => "inactive",
            KeyState::Expired => "expired",
            KeyState::Exhausted => "exhausted",
            KeyState::OverBudget => "over_budget",
            KeyState::Cooling => "cooling",
            KeyState::Active => "active",
        }
    }

    /// The state called `name`, if any.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }
}

/// A state's name, one of [`KeyState::ALL`]'s (the `?state=` of the key listing).
impl JsonSchema for KeyState {
    fn schema_name() -> Cow<'static, str> {
        "KeyState".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = Self::ALL.iter().map(|state| state.as_str()).collect();
        json_schema!({"type": "string", "enum": names})
    }
}

/// A key as the pool serves it: its description and the `GET /key` body, built once when the key
/// is loaded. The body holds the plaintext, so it lives in a buffer that is zeroed when the last
/// snapshot holding it is dropped; `Debug` never shows it.
pub struct KeyEntry {
    pub info: KeyInfo,
    /// The key's total-use cap, if it has one. Shared by every snapshot holding the key.
    pub usage: Option<Arc<UsageCap>>,
    /// The key's spend budget and what it has spent, as of the writer's last committed change
    /// to it (a spend that leaves the key in its rotation changes it in place; one that spends
    /// the budget rebuilds the key out of its tier's roster, like an inactive key), so `GET /key`
    /// never looks at this. `None` (no budget) is a null pointer: no allocation per key.
    budget: ArcSwapOption<KeyBudget>,
    /// What callers reported of the provider's answers, and the word `GET /key` checks.
    pub health: Health,
    /// Set once the key has been found expired, so that a wall clock stepped back never serves
    /// it again (see [`Clock`](super::Clock)). `Relaxed`: it guards no other data.
    expired: AtomicBool,
    body: Bytes,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("info", &self.info)
            .field("usage", &self.usage)
            .field("budget", &self.budget())
            .field("health", &self.health)
            .field("body", &"[REDACTED]")
            .finish()
    }
}

/// What a report answers of a key: its state, when that ends (unix ms, if it ends by itself),
/// and its cooling features with their ends (unix ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyHealth {
    pub state: KeyState,
    pub until_ms: Option<i64>,
    pub cooldowns: Vec<(Arc<str>, i64)>,
}

/// The plaintext a key carries to its callers.
pub struct Plaintext<'a> {
    pub value: &'a str,
    pub metadata: &'a serde_json::Map<String, serde_json::Value>,
    pub secrets: &'a BTreeMap<String, Zeroizing<String>>,
}

/// The body of `GET /key`, encoded once when the key is loaded.
#[derive(Serialize, JsonSchema)]
pub struct ServedKey<'a> {
    key_id: &'a str,
    value: &'a str,
    metadata: &'a serde_json::Map<String, serde_json::Value>,
    secrets: BTreeMap<&'a str, &'a str>,
}

/// Counts bytes, so the body buffer is allocated once at its final size: a growing `Vec` would
/// leave copies of the plaintext behind in freed memory.
struct ByteCount(usize);

impl Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Owns the buffer behind a `Bytes` body, which holds the plaintext: zeroed when dropped.
struct ZeroizingBody(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizingBody {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// What the admin listing shows of a key's plaintext, read back from its `GET /key` body: the
/// metadata, and the names of its secrets (never a value: the value and the secrets' values are
/// skipped by the parser, not copied).
#[derive(Deserialize)]
pub struct Described {
    pub metadata: serde_json::Map<String, serde_json::Value>,
    secrets: BTreeMap<String, IgnoredAny>,
}

impl Described {
    /// The secrets' names, sorted.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }
}

impl KeyEntry {
    pub fn new(info: KeyInfo, plain: &Plaintext<'_>, usage: Option<UsageCap>) -> Self {
        Self::sharing(info, plain, usage.map(Arc::new))
    }

    /// A key whose usage cap, if any, is shared with the entry it replaces (its count goes on).
    pub fn sharing(info: KeyInfo, plain: &Plaintext<'_>, usage: Option<Arc<UsageCap>>) -> Self {
        let body = ServedKey {
            key_id: &info.id,
            value: plain.value,
            metadata: plain.metadata,
            secrets: plain
                .secrets
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect(),
        };
        let mut size = ByteCount(0);
        serde_json::to_writer(&mut size, &body).expect("a map of strings always serializes");
        let mut buffer = Zeroizing::new(Vec::with_capacity(size.0));
        serde_json::to_writer(&mut *buffer, &body).expect("a map of strings always serializes");
        debug_assert_eq!(buffer.len(), buffer.capacity());
        Self {
            info,
            usage,
            budget: ArcSwapOption::empty(),
            health: Health::default(),
            expired: AtomicBool::new(false),
            body: Bytes::from_owner(ZeroizingBody(buffer)),
        }
    }

    /// The key with this spend budget.
    #[must_use]
    pub fn with_budget(self, budget: Option<KeyBudget>) -> Self {
        self.publish_budget(budget);
        self
    }

    /// Its spend budget and what it has spent, if it has one.
    pub fn budget(&self) -> Option<KeyBudget> {
        self.budget.load().as_deref().copied()
    }

    /// Makes `budget` the key's (the writer, once it is committed).
    pub fn publish_budget(&self, budget: Option<KeyBudget>) {
        self.budget.store(budget.map(Arc::new));
    }

    /// Whether the key belongs in its tier's rotation: active, and not over its spend budget.
    /// Decided by the writer when it places the key, never by `GET /key`.
    pub fn in_rotation(&self) -> bool {
        self.info.active && !self.over_budget()
    }

    /// Its spend budget is spent (in the period the writer last saw).
    pub fn over_budget(&self) -> bool {
        self.budget().is_some_and(|budget| budget.is_spent())
    }

    /// When a key over a monthly budget comes back by itself (unix ms): its next reset.
    pub fn budget_returns_at(&self) -> Option<i64> {
        self.budget()
            .filter(KeyBudget::is_spent)
            .and_then(|budget| budget.resets_at_ms())
    }

    /// This entry with `health` (as stored), judged at `now`.
    #[must_use]
    pub fn with_health(mut self, health: HealthState, now: Now) -> Self {
        self.health = Health::new(health, now);
        self
    }

    /// The same key with `info` and `health` instead: its body (the plaintext, shared, not
    /// copied), usage cap and spend budget are kept.
    pub fn replaced(&self, info: KeyInfo, health: HealthState, now: Now) -> Self {
        Self {
            info,
            usage: self.usage.clone(),
            budget: ArcSwapOption::new(self.budget.load_full()),
            health: Health::new(health, now),
            expired: AtomicBool::new(false),
            body: self.body.clone(),
        }
    }

    /// The key's state at `now` (first match wins), and when it ends, if that is known.
    pub fn state(&self, now: Now) -> (KeyState, Option<i64>) {
        self.state_with(&self.health.state(), now)
    }

    /// The key's state and its cooling features at `now`, by its `health` (the published one,
    /// or one being staged).
    pub fn health_at(&self, health: &HealthState, now: Now) -> KeyHealth {
        let (state, until_ms) = self.state_with(health, now);
        KeyHealth {
            state,
            until_ms,
            cooldowns: health
                .cooling_features(now)
                .map(|(feature, until)| (Arc::clone(feature), until.unix_ms))
                .collect(),
        }
    }

    /// [`KeyEntry::state`], with `health` instead of the key's published health. A spend
    /// budget is judged in the period open at `now` (one that has ended counts from 0 at once,
    /// before the writer brings the key back).
    pub fn state_with(&self, health: &HealthState, now: Now) -> (KeyState, Option<i64>) {
        if !self.info.active {
            let state = match health.disabled_reason {
                Some(_) => KeyState::Disabled,
                None => KeyState::Inactive,
            };
            return (state, None);
        }
        if !self.servable(|| now.unix_ms) {
            return (KeyState::Expired, None);
        }
        let budget = self.budget().map(|budget| budget.at(now.unix_ms));
        match health.unavailable(now) {
            Some((KeyState::Exhausted, until)) => (KeyState::Exhausted, Some(until.unix_ms)),
            _ if budget.is_some_and(|budget| budget.is_spent()) => (
                KeyState::OverBudget,
                budget.and_then(|budget| budget.resets_at_ms()),
            ),
            Some((state, until)) => (state, Some(until.unix_ms)),
            None => (KeyState::Active, None),
        }
    }

    /// The `GET /key` response body. Cloning it bumps a reference count; nothing is copied.
    #[inline]
    pub fn body(&self) -> Bytes {
        self.body.clone()
    }

    /// Whether the key may be served, its expiry judged at the wall time (unix ms) `unix_now`
    /// gives, which is asked only for a key that has an expiry. A key found expired stays
    /// expired, whatever `unix_now` says later.
    #[inline]
    pub fn servable(&self, unix_now: impl FnOnce() -> i64) -> bool {
        if !self.info.active {
            return false;
        }
        let Some(at) = self.info.expires_at_ms else {
            return true;
        };
        if self.expired.load(Ordering::Relaxed) {
            return false;
        }
        if unix_now() < at {
            return true;
        }
        self.mark_expired();
        false
    }

    /// [`KeyEntry::servable`] at wall time `unix_ms`, and not over its spend budget.
    pub fn servable_at_unix(&self, unix_ms: i64) -> bool {
        !self.over_budget() && self.servable(|| unix_ms)
    }

    /// Whether the key has been found expired in this run.
    pub fn found_expired(&self) -> bool {
        self.expired.load(Ordering::Relaxed)
    }

    /// Its metadata and the names of its secrets, for the admin listing.
    pub fn described(&self) -> Described {
        serde_json::from_slice(&self.body).expect("the body is the JSON this entry wrote")
    }

    /// Records that the key has expired: it is never served again in this run.
    #[cold]
    pub fn mark_expired(&self) {
        self.expired.store(true, Ordering::Relaxed);
    }
}
