//! A key: what it is, and the `GET /key` body holding its plaintext.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::budget::KeyBudget;
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

/// A key as the pool serves it: its description and the `GET /key` body, built once when the key
/// is loaded. The body holds the plaintext, so it lives in a buffer that is zeroed when the last
/// snapshot holding it is dropped; `Debug` never shows it.
pub struct KeyEntry {
    pub info: KeyInfo,
    /// The key's total-use cap, if it has one. Shared by every snapshot holding the key.
    pub usage: Option<Arc<UsageCap>>,
    /// The key's spend budget and what it has spent, as of the writer's last change to it. A
    /// key whose budget is spent is kept out of its tier's roster (like an inactive key), so
    /// `GET /key` never looks at this.
    pub budget: Option<KeyBudget>,
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
            .field("budget", &self.budget)
            .field("body", &"[REDACTED]")
            .finish()
    }
}

/// The plaintext a key carries to its callers.
pub struct Plaintext<'a> {
    pub value: &'a str,
    pub metadata: &'a serde_json::Map<String, serde_json::Value>,
    pub secrets: &'a BTreeMap<String, Zeroizing<String>>,
}

#[derive(Serialize)]
struct Body<'a> {
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
        let body = Body {
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
            budget: None,
            expired: AtomicBool::new(false),
            body: Bytes::from_owner(ZeroizingBody(buffer)),
        }
    }

    /// The key with this spend budget.
    pub fn with_budget(mut self, budget: Option<KeyBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// The same key (its body and usage cap shared, nothing re-encoded; found expired if it
    /// was) with another spend budget.
    pub fn rebudgeted(&self, budget: Option<KeyBudget>) -> Self {
        Self {
            info: self.info.clone(),
            usage: self.usage.clone(),
            budget,
            expired: AtomicBool::new(self.found_expired()),
            body: self.body.clone(),
        }
    }

    /// Whether the key belongs in its tier's rotation: active, and not over its spend budget.
    /// Decided by the writer when it places the key, never by `GET /key`.
    pub fn in_rotation(&self) -> bool {
        self.info.active && !self.over_budget()
    }

    /// Its spend budget is spent (in the period the writer last saw).
    pub fn over_budget(&self) -> bool {
        self.budget.is_some_and(|budget| budget.is_spent())
    }

    /// When a key over a monthly budget comes back by itself (unix ms): its next reset.
    pub fn budget_returns_at(&self) -> Option<i64> {
        self.budget
            .filter(KeyBudget::is_spent)
            .and_then(|budget| budget.resets_at_ms())
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
