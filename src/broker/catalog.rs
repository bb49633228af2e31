//! The writer's model of what is stored: tiers, keys (with their plaintext) and the live
//! counters. Persistent maps (`imbl`) make a clone O(1), so the writer stages a batch on a
//! clone and every snapshot carries the catalog it was built from without copying it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use zeroize::Zeroizing;

use super::rate::WindowCounter;
use super::usage::UsageCap;

/// A feature's limit in a tier: `rate_limit` uses per `window_seconds`, per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
    body: Bytes,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("info", &self.info)
            .field("usage", &self.usage)
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
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Owns the zeroizing buffer behind a `Bytes`.
struct Sealed(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for Sealed {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl KeyEntry {
    pub fn new(info: KeyInfo, plain: &Plaintext<'_>, usage: Option<UsageCap>) -> Self {
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
        let mut size = Counter(0);
        serde_json::to_writer(&mut size, &body).expect("a map of strings always serializes");
        let mut buffer = Zeroizing::new(Vec::with_capacity(size.0));
        serde_json::to_writer(&mut *buffer, &body).expect("a map of strings always serializes");
        debug_assert_eq!(buffer.len(), buffer.capacity());
        Self {
            info,
            usage: usage.map(Arc::new),
            body: Bytes::from_owner(Sealed(buffer)),
        }
    }

    /// The `GET /key` response body. Cloning it bumps a reference count; nothing is copied.
    #[inline]
    pub fn body(&self) -> Bytes {
        self.body.clone()
    }

    pub fn servable_at_unix(&self, unix_ms: i64) -> bool {
        self.info.active && self.info.expires_at_ms.is_none_or(|at| unix_ms < at)
    }
}

/// A service with its own token that draws keys only from its scoped tiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub description: String,
    /// SHA-256 of the token; the token itself is shown once at creation and never kept.
    pub token_hash: [u8; 32],
    pub active: bool,
    pub created_at_ms: i64,
    /// Ids of the tiers it may draw from.
    pub scopes: BTreeSet<Arc<str>>,
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

/// Keys are listed and rotated in the order they were created.
pub type KeyOrder = (i64, Arc<str>);

/// A key as a member of its tier: the entry and one live counter per feature the tier lists, in
/// the order of the tier's `features` map, so a pool finds a key's counter by position instead of
/// a hash lookup.
#[derive(Clone)]
pub struct Member {
    pub entry: Arc<KeyEntry>,
    counters: Arc<[Arc<WindowCounter>]>,
}

impl Member {
    /// A new member of `tier`, with fresh counters.
    fn new(entry: Arc<KeyEntry>, tier: &Tier) -> Self {
        Self {
            entry,
            counters: tier.features.keys().map(|_| Arc::default()).collect(),
        }
    }

    /// Its counter for the feature at `index` in its tier's feature order ([`feature_index`]).
    #[inline]
    pub fn counter(&self, index: usize) -> Option<&WindowCounter> {
        self.counters.get(index).map(Arc::as_ref)
    }

    fn order(&self) -> (i64, &str) {
        (self.entry.info.created_at_ms, &self.entry.info.id)
    }
}

/// A tier's active keys in rotation order, each with its counters. An inactive key never
/// changes (keys are only added and deleted), so it is kept out: it would only be skipped, and a
/// run of them would give its whole share to the next active key. Persistent (`imbl::Vector`, an
/// RRB tree of shared 64-element chunks): a clone is O(1) and adding one key copies O(log n)
/// nodes, so every snapshot shares its tiers' rosters with the catalog and adding a key costs
/// the same with 100 keys as with 100,000.
pub type Roster = imbl::Vector<Member>;

/// Where a key of creation order `order` is, or would be inserted, in `roster`.
fn position(roster: &Roster, order: (i64, &str)) -> Result<usize, usize> {
    roster.binary_search_by(|member| member.order().cmp(&order))
}

/// Keys added by [`Catalog::put_key_unplaced`], by tier id, waiting for [`Catalog::place`].
#[derive(Default)]
pub struct Unplaced(std::collections::HashMap<Arc<str>, Vec<Arc<KeyEntry>>>);

/// Where `feature` sits in `tier`'s feature order, which is the order of a member's counters.
pub fn feature_index(tier: &Tier, feature: &str) -> Option<usize> {
    tier.features.keys().position(|name| &**name == feature)
}

#[derive(Clone, Default)]
pub struct Catalog {
    /// By name, the order `GET /admin/tiers` lists them in.
    tiers: imbl::OrdMap<Arc<str>, Arc<Tier>>,
    tier_names: imbl::HashMap<Arc<str>, Arc<str>>,
    keys: imbl::OrdMap<KeyOrder, Arc<KeyEntry>>,
    key_orders: imbl::HashMap<Arc<str>, KeyOrder>,
    /// Per tier id, its keys in rotation order with their live counters. Counters outlive
    /// snapshots: a rebuild reuses them, so open windows keep their counts.
    tier_keys: imbl::HashMap<Arc<str>, Roster>,
    /// The keys in rosters that expire, by expiry (unix ms), so [`Catalog::expire`] finds the
    /// ones due without a scan.
    expiries: imbl::OrdSet<(i64, Arc<str>)>,
    /// By id.
    consumers: imbl::OrdMap<Arc<str>, Arc<Consumer>>,
}

/// The features whose candidate lists a change touched.
pub type Dirty = BTreeSet<Arc<str>>;

impl Catalog {
    pub fn tiers(&self) -> impl Iterator<Item = &Arc<Tier>> {
        self.tiers.values()
    }

    pub fn tier_count(&self) -> usize {
        self.tiers.len()
    }

    pub fn tier_by_name(&self, name: &str) -> Option<&Arc<Tier>> {
        self.tiers.get(name)
    }

    pub fn tier_by_id(&self, id: &str) -> Option<&Arc<Tier>> {
        self.tier_names
            .get(id)
            .and_then(|name| self.tiers.get(name))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<KeyEntry>> {
        self.keys.values()
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn key(&self, id: &str) -> Option<&Arc<KeyEntry>> {
        self.key_orders
            .get(id)
            .and_then(|order| self.keys.get(order))
    }

    /// The active keys of a tier in rotation order with their counters (none if it has none).
    pub fn roster(&self, tier_id: &str) -> Option<&Roster> {
        self.tier_keys.get(tier_id)
    }

    pub fn counter(&self, key_id: &str, feature: &str) -> Option<&WindowCounter> {
        let order = self.key_orders.get(key_id)?;
        let entry = self.keys.get(order)?;
        let index = feature_index(self.tier_by_id(&entry.info.tier_id)?, feature)?;
        let roster = self.roster(&entry.info.tier_id)?;
        roster
            .get(position(roster, (order.0, &order.1)).ok()?)?
            .counter(index)
    }

    pub fn consumers(&self) -> impl Iterator<Item = &Arc<Consumer>> {
        self.consumers.values()
    }

    pub fn consumer(&self, id: &str) -> Option<&Arc<Consumer>> {
        self.consumers.get(id)
    }

    /// Adds a consumer or replaces the one with the same id.
    pub fn put_consumer(&mut self, consumer: Consumer) {
        self.consumers
            .insert(Arc::clone(&consumer.id), Arc::new(consumer));
    }

    /// Removes a consumer; `false` when there was none.
    pub fn remove_consumer(&mut self, id: &str) -> bool {
        self.consumers.remove(id).is_some()
    }

    /// Whether two catalogs are the same version (cheap: compares shared roots).
    pub fn same_as(&self, other: &Catalog) -> bool {
        self.tiers.ptr_eq(&other.tiers)
            && self.keys.ptr_eq(&other.keys)
            && self.consumers.ptr_eq(&other.consumers)
    }

    /// The budget of `key` for each feature its tier lists, by feature name, in the window open
    /// at clock instant `now_ms`: read from the live counters.
    pub fn budgets<'a>(
        &'a self,
        key: &'a KeyEntry,
        now_ms: u64,
    ) -> impl Iterator<Item = (&'a Arc<str>, Budget)> + 'a {
        self.tier_by_id(&key.info.tier_id)
            .into_iter()
            .flat_map(|tier| tier.features.iter())
            .map(move |(feature, &limit)| {
                let used = self
                    .counter(&key.info.id, feature)
                    .map_or(0, |counter| counter.used(now_ms, limit.window_ms()));
                (feature, Budget { used, limit })
            })
    }

    /// Each tier (by name) with its key counts at unix time `unix_now_ms`.
    pub fn tier_keys(&self, unix_now_ms: i64) -> impl Iterator<Item = (&Arc<Tier>, TierKeys)> {
        let none = TierKeys {
            total: 0,
            active: 0,
        };
        let mut counts = std::collections::HashMap::<&str, TierKeys>::new();
        for key in self.keys.values() {
            let count = counts.entry(&key.info.tier_id).or_insert(none);
            count.total += 1;
            count.active += usize::from(key.servable_at_unix(unix_now_ms));
        }
        self.tiers()
            .map(move |tier| (tier, counts.get(&*tier.id).copied().unwrap_or(none)))
    }

    /// Every feature some tier lists.
    pub fn features(&self) -> Dirty {
        self.tiers
            .values()
            .flat_map(|tier| tier.features.keys().cloned())
            .collect()
    }

    /// Adds a tier or replaces the one with the same id; returns the features it touched.
    /// Counters of the features the tier keeps are kept (open windows keep their counts).
    pub fn put_tier(&mut self, tier: Tier) -> Dirty {
        let mut dirty: Dirty = tier.features.keys().cloned().collect();
        if let Some(old) = self.tier_by_id(&tier.id).cloned() {
            dirty.extend(old.features.keys().cloned());
            self.tiers.remove(&old.name);
            // Limits live in the pools, not the members: only a change to the set of features
            // moves counters (O(keys in the tier); a PATCH of limits or description is O(1)).
            let same_features = old.features.keys().eq(tier.features.keys());
            if let Some(members) = self.tier_keys.get_mut(&tier.id).filter(|_| !same_features) {
                *members = members
                    .iter()
                    .map(|member| {
                        let counters = tier
                            .features
                            .keys()
                            .map(|feature| {
                                feature_index(&old, feature)
                                    .map_or_else(Arc::default, |i| Arc::clone(&member.counters[i]))
                            })
                            .collect();
                        let entry = Arc::clone(&member.entry);
                        Member { entry, counters }
                    })
                    .collect();
            }
        }
        self.tier_names
            .insert(Arc::clone(&tier.id), Arc::clone(&tier.name));
        self.tiers.insert(Arc::clone(&tier.name), Arc::new(tier));
        dirty
    }

    /// Adds a key (its tier must be in the catalog) or replaces the one with the same id.
    pub fn put_key(&mut self, entry: KeyEntry) -> Dirty {
        let (dirty, tier, entry) = self.admit(entry);
        if !entry.info.active {
            return dirty;
        }
        self.note_expiry(&entry);
        let member = Member::new(entry, &tier);
        let roster = self.tier_keys.entry(Arc::clone(&tier.id)).or_default();
        match position(roster, member.order()) {
            Ok(at) => {
                roster.set(at, member);
            }
            Err(at) => roster.insert(at, member),
        }
        dirty
    }

    /// Adds a key like [`put_key`](Self::put_key), but leaves it out of its tier's roster:
    /// `unplaced` collects it until [`place`](Self::place) puts every collected key in place at
    /// once. For many keys in any order (start-up reads them by id, not by creation): one
    /// insertion into the middle of a persistent vector costs O(log n) with a large constant,
    /// which made start-up take 8 s for 100,000 keys.
    pub fn put_key_unplaced(&mut self, entry: KeyEntry, unplaced: &mut Unplaced) -> Dirty {
        let (dirty, tier, entry) = self.admit(entry);
        if entry.info.active {
            unplaced
                .0
                .entry(Arc::clone(&tier.id))
                .or_default()
                .push(entry);
        }
        dirty
    }

    /// Rebuilds the roster of each tier with unplaced keys once, in rotation order. A key
    /// replaced or removed since it was collected is left out.
    pub fn place(&mut self, unplaced: Unplaced) {
        for (tier_id, entries) in unplaced.0 {
            let Some(tier) = self.tier_by_id(&tier_id).cloned() else {
                continue;
            };
            let current = |entry: &Arc<KeyEntry>| {
                self.key(&entry.info.id)
                    .is_some_and(|kept| Arc::ptr_eq(kept, entry))
            };
            let added: Vec<Member> = entries
                .into_iter()
                .filter(current)
                .map(|entry| Member::new(entry, &tier))
                .collect();
            for member in &added {
                self.note_expiry(&member.entry);
            }
            let roster = self.tier_keys.entry(tier_id).or_default();
            let mut members: Vec<Member> = roster.iter().cloned().chain(added).collect();
            members.sort_by(|a, b| a.order().cmp(&b.order()));
            *roster = members.into_iter().collect();
        }
    }

    /// Puts a key in the maps by id and by order (replacing one with the same id) with its
    /// tier's id string shared; returns the features it touches, its tier and the entry.
    fn admit(&mut self, mut entry: KeyEntry) -> (Dirty, Arc<Tier>, Arc<KeyEntry>) {
        let mut dirty = self.remove_key(&entry.info.id);
        let tier = self
            .tier_by_id(&entry.info.tier_id)
            .cloned()
            .expect("the writer checks a key's tier before adding it");
        entry.info.tier_id = Arc::clone(&tier.id);
        dirty.extend(tier.features.keys().cloned());
        let order: KeyOrder = (entry.info.created_at_ms, Arc::clone(&entry.info.id));
        let entry = Arc::new(entry);
        self.key_orders
            .insert(Arc::clone(&entry.info.id), order.clone());
        self.keys.insert(order, Arc::clone(&entry));
        (dirty, tier, entry)
    }

    fn note_expiry(&mut self, entry: &KeyEntry) {
        if let Some(at) = entry.info.expires_at_ms {
            self.expiries.insert((at, Arc::clone(&entry.info.id)));
        }
    }

    /// When the next key in a roster expires (unix ms).
    pub fn next_expiry(&self) -> Option<i64> {
        self.expiries.get_min().map(|(at, _)| *at)
    }

    /// Takes the keys expired at `unix_now_ms` out of their rosters (they stay listed, never
    /// served) and returns the features whose pools change. Until then `pick` skips them, and
    /// each takes its turn to the next key.
    pub fn expire(&mut self, unix_now_ms: i64) -> Dirty {
        let mut dirty = Dirty::new();
        while let Some((at, id)) = self.expiries.get_min().cloned()
            && at <= unix_now_ms
        {
            self.expiries.remove(&(at, Arc::clone(&id)));
            let Some(order) = self.key_orders.get(&id).cloned() else {
                continue;
            };
            let Some(tier_id) = self
                .keys
                .get(&order)
                .map(|key| Arc::clone(&key.info.tier_id))
            else {
                continue;
            };
            dirty.extend(self.leave_roster(&tier_id, &order));
        }
        dirty
    }

    /// Takes the key at `order` out of its tier's roster, if it is there; returns the features
    /// of the tier.
    fn leave_roster(&mut self, tier_id: &str, order: &KeyOrder) -> Dirty {
        if let Some(roster) = self.tier_keys.get_mut(tier_id)
            && let Ok(at) = position(roster, (order.0, &order.1))
        {
            roster.remove(at);
        }
        self.tier_by_id(tier_id)
            .map(|tier| tier.features.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Removes a key if present; returns the features it was a candidate for.
    pub fn remove_key(&mut self, id: &str) -> Dirty {
        let Some(order) = self.key_orders.remove(id) else {
            return Dirty::new();
        };
        let Some(entry) = self.keys.remove(&order) else {
            return Dirty::new();
        };
        if let Some(at) = entry.info.expires_at_ms {
            self.expiries.remove(&(at, Arc::clone(&entry.info.id)));
        }
        self.leave_roster(&entry.info.tier_id, &order)
    }
}
