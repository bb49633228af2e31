//! The writer's model of what is stored: tiers, keys (with their plaintext) and the live
//! counters. Persistent maps (`imbl`) make a clone O(1), so the writer stages a batch on a
//! clone and every snapshot carries the catalog it was built from without copying it.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use super::consumer::Consumer;
use super::key::KeyEntry;
use super::rate::WindowCounter;
use super::roster::{KeyOrder, Member, Roster, Unplaced, position};
use super::tier::{Budget, Tier, TierKeys, feature_index};

#[derive(Clone, Default)]
pub struct Catalog {
    /// By name, the order `GET /admin/tiers` lists them in.
    tiers: imbl::OrdMap<Arc<str>, Arc<Tier>>,
    tier_names: imbl::HashMap<Arc<str>, Arc<str>>,
    keys: imbl::OrdMap<KeyOrder, Arc<KeyEntry>>,
    /// Each key's creation time by id: with the id, its place in `keys`. A B-tree, ordered by
    /// id, so that a listing pages from a cursor in O(log n); not a hash map: imbl's hash trie
    /// took 230 bytes a key at 100,000 keys, this about 60 (figures in PERFORMANCE.md). Only
    /// the writer and the listings read it, never `GET /key`.
    key_created: imbl::OrdMap<Arc<str>, i64>,
    /// Per tier id, its keys in rotation order with their live counters. Counters outlive
    /// snapshots: a rebuild reuses them, so open windows keep their counts.
    tier_keys: imbl::HashMap<Arc<str>, Roster>,
    /// The keys in rosters that expire, by expiry (unix ms), so [`Catalog::expire`] finds the
    /// ones due without a scan.
    expiries: imbl::OrdSet<(i64, Arc<str>)>,
    /// The keys over a monthly spend budget, by when it resets (unix ms), so
    /// [`Catalog::take_resets`] finds the ones due without a scan.
    resets: imbl::OrdSet<(i64, Arc<str>)>,
    /// By id.
    consumers: imbl::OrdMap<Arc<str>, Arc<Consumer>>,
    /// When keys' health deadlines (cooldowns, exhaustion) end, in running ms, so the writer
    /// finds the keys that become available again without a scan. An entry may be stale (the
    /// deadline moved, or the key went): whoever takes it checks the key.
    recoveries: imbl::OrdSet<(u64, Arc<str>)>,
    /// The members of keys out of their rosters (made inactive, expired, over budget) with the
    /// counters they had, by key id: a key made active again (or given a later expiry) goes on counting
    /// its open windows instead of starting them afresh.
    parked: imbl::HashMap<Arc<str>, Member>,
    /// Keys out of their tier's rotation but still in its roster (their counters go on, the
    /// listings read them), by id: the running ms they sit out until, as last judged. A
    /// recovery is noted at that instant, when the writer takes the key back or judges it
    /// again. See [`HealthState::out_of_rotation_until`](super::HealthState::out_of_rotation_until).
    benched: imbl::HashMap<Arc<str>, u64>,
    /// Per tier with benched keys, what its pools rotate over: its roster without them.
    benches: imbl::HashMap<Arc<str>, Bench>,
    /// Keys removed or replaced so far: [`Catalog::place`] checks that each key it places is
    /// still the current one only when some were since the keys were collected.
    removed: u64,
}

/// A tier's rotation while some of its keys are benched.
#[derive(Clone, Default)]
struct Bench {
    /// The tier's roster without its benched keys, in rotation order.
    members: Roster,
    /// Its benched keys, by the instant they sit out until.
    back: imbl::OrdSet<(u64, Arc<str>)>,
}

/// The features whose candidate lists a change touched.
pub type Dirty = BTreeSet<Arc<str>>;

/// Puts `member` in `roster` in rotation order, in place of the member of the same key if any.
fn put_in_order(roster: &mut Roster, member: Member) {
    match position(roster, member.order()) {
        Ok(at) => {
            roster.set(at, member);
        }
        Err(at) => roster.insert(at, member),
    }
}

/// The values of `map` whose id comes after `after` (every value when `None`), by id.
fn by_id_after<'a, V: Clone>(
    map: &'a imbl::OrdMap<Arc<str>, V>,
    after: Option<&str>,
) -> impl Iterator<Item = (&'a Arc<str>, &'a V)> {
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    map.range::<_, str>((from, Bound::Unbounded))
}

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
        self.keys.get(&self.order(id)?)
    }

    /// Where the key `id` is in `keys`.
    fn order(&self, id: &str) -> Option<KeyOrder> {
        let (id, &created) = self.key_created.get_key_value(id)?;
        Some((created, Arc::clone(id)))
    }

    /// The keys by id, from the first id after `after` (from the first when `None`): a page
    /// costs O(log n) per key, whatever the number of keys before it.
    pub fn keys_by_id<'a>(
        &'a self,
        after: Option<&str>,
    ) -> impl Iterator<Item = &'a Arc<KeyEntry>> {
        by_id_after(&self.key_created, after)
            .filter_map(|(id, &created)| self.keys.get(&(created, Arc::clone(id))))
    }

    /// The active keys of a tier in rotation order with their counters (none if it has none).
    pub fn roster(&self, tier_id: &str) -> Option<&Roster> {
        self.tier_keys.get(tier_id)
    }

    pub fn counter(&self, key_id: &str, feature: &str) -> Option<&WindowCounter> {
        let entry = self.key(key_id)?;
        let index = feature_index(self.tier_by_id(&entry.info.tier_id)?, feature)?;
        self.member(entry)?.counter(index)
    }

    /// What the pools of a tier rotate over: its roster without its benched keys, and the
    /// first instant (running ms) one of those may be back (`u64::MAX` when none is benched).
    /// With none benched, the roster itself (shared, not copied).
    pub fn rotation(&self, tier_id: &str) -> Option<(&Roster, u64)> {
        match self.benches.get(tier_id) {
            Some(bench) => {
                let back = first_due(&bench.back).unwrap_or(u64::MAX);
                Some((&bench.members, back))
            }
            None => self.roster(tier_id).map(|roster| (roster, u64::MAX)),
        }
    }

    /// Until when (running ms) key `id` sits out of its tier's rotation, as last judged.
    pub fn benched_until(&self, id: &str) -> Option<u64> {
        self.benched.get(id).copied()
    }

    /// Takes key `id` out of its tier's rotation until running ms `until` (for a key already
    /// out: moves that instant), noting a recovery then; it stays in its roster with its
    /// counters. Returns the features whose pools change. A key in no roster (inactive,
    /// expired, unknown) is left alone.
    pub fn bench(&mut self, id: &Arc<str>, until: u64) -> Dirty {
        let Some(key) = self.key(id) else {
            return Dirty::new();
        };
        let tier_id = Arc::clone(&key.info.tier_id);
        let order = (key.info.created_at_ms, &**id);
        let Some(roster) = self.tier_keys.get(&tier_id) else {
            return Dirty::new();
        };
        if position(roster, order).is_err() {
            return Dirty::new();
        }
        let bench = self
            .benches
            .entry(Arc::clone(&tier_id))
            .or_insert_with(|| Bench {
                members: roster.clone(),
                back: imbl::OrdSet::new(),
            });
        match self.benched.insert(Arc::clone(id), until) {
            Some(was) => {
                bench.back.remove(&(was, Arc::clone(id)));
            }
            None => {
                if let Ok(at) = position(&bench.members, order) {
                    bench.members.remove(at);
                }
            }
        }
        bench.back.insert((until, Arc::clone(id)));
        self.note_recovery(id, Some(until));
        self.features_of(&tier_id)
    }

    /// Puts a benched key back in its tier's rotation, in its place; returns the features
    /// whose pools change (none if it was not benched).
    pub fn unbench(&mut self, id: &str) -> Dirty {
        let Some((id, until)) = self.benched.remove_with_key(id) else {
            return Dirty::new();
        };
        let Some(key) = self.key(&id).cloned() else {
            return Dirty::new();
        };
        let member = self.member(&key).cloned();
        let tier_id = &key.info.tier_id;
        if let Some(bench) = self.benches.get_mut(tier_id) {
            bench.back.remove(&(until, Arc::clone(&id)));
            if bench.back.is_empty() {
                self.benches.remove(tier_id);
            } else if let Some(member) = member
                && let Err(at) = position(&bench.members, member.order())
            {
                bench.members.insert(at, member);
            }
        }
        self.features_of(tier_id)
    }

    /// Rebuilds a tier's rotation from its roster, leaving its benched keys out: after its
    /// roster was rebuilt as a whole.
    fn rebench(&mut self, tier_id: &str) {
        let Some(bench) = self.benches.get_mut(tier_id) else {
            return;
        };
        let roster = self.tier_keys.get(tier_id).cloned().unwrap_or_default();
        bench.members = roster
            .into_iter()
            .filter(|member| !self.benched.contains_key(&member.entry.info.id))
            .collect();
    }

    /// `key` as a member of its tier's roster, with its counters (none if it is not in one).
    fn member(&self, key: &KeyEntry) -> Option<&Member> {
        let roster = self.roster(&key.info.tier_id)?;
        roster.get(position(roster, (key.info.created_at_ms, &key.info.id)).ok()?)
    }

    pub fn consumers(&self) -> impl Iterator<Item = &Arc<Consumer>> {
        self.consumers.values()
    }

    /// The consumers by id, from the first id after `after` (from the first when `None`).
    pub fn consumers_by_id<'a>(
        &'a self,
        after: Option<&str>,
    ) -> impl Iterator<Item = &'a Arc<Consumer>> {
        by_id_after(&self.consumers, after).map(|(_, consumer)| consumer)
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
        let member = self.member(key);
        self.tier_by_id(&key.info.tier_id)
            .into_iter()
            .flat_map(|tier| tier.features.iter().enumerate())
            .map(move |(index, (feature, &limit))| {
                let used = member
                    .and_then(|member| member.counter(index))
                    .map_or(0, |counter| counter.used(now_ms, limit.window_ms()));
                (feature, Budget { used, limit })
            })
    }

    /// The uses of `tier`'s keys for each feature (in the tier's feature order) in their windows
    /// open at clock instant `now_ms`, summed: read from its roster (a key outside it has no
    /// counters), with no lookup per key.
    pub fn tier_used(&self, tier: &Tier, now_ms: u64) -> Vec<u64> {
        let mut sums = vec![0; tier.features.len()];
        for member in self.roster(&tier.id).into_iter().flatten() {
            for ((sum, limit), index) in sums.iter_mut().zip(tier.features.values()).zip(0..) {
                if let Some(counter) = member.counter(index) {
                    *sum += u64::from(counter.used(now_ms, limit.window_ms()));
                }
            }
        }
        sums
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
                    .map(|member| member.refeatured(&old, &tier))
                    .collect();
            }
            if !same_features {
                for (_, member) in self.parked.iter_mut() {
                    if member.entry.info.tier_id == tier.id {
                        *member = member.refeatured(&old, &tier);
                    }
                }
                self.rebench(&tier.id);
            }
        }
        self.tier_names
            .insert(Arc::clone(&tier.id), Arc::clone(&tier.name));
        self.tiers.insert(Arc::clone(&tier.name), Arc::new(tier));
        dirty
    }

    /// Notes that key `id`'s last health deadline is at running ms `at` (none: nothing to note).
    pub fn note_recovery(&mut self, id: &Arc<str>, at: Option<u64>) {
        if let Some(at) = at {
            self.recoveries.insert((at, Arc::clone(id)));
        }
    }

    /// When the next noted health deadline ends (running ms).
    pub fn next_recovery(&self) -> Option<u64> {
        first_due(&self.recoveries)
    }

    /// Takes the noted health deadlines that have ended at running ms `now`: the ids of their
    /// keys.
    pub fn recover(&mut self, now: u64) -> Vec<Arc<str>> {
        std::iter::from_fn(|| take_due(&mut self.recoveries, now)).collect()
    }

    /// Adds a key (its tier must be in the catalog) or replaces the one with the same id, with
    /// fresh counters.
    pub fn put_key(&mut self, entry: KeyEntry) -> Dirty {
        self.put_member(entry, None)
    }

    /// Replaces the key with the same id, tier and creation time by `entry`, keeping its live
    /// counters: the uses counted in its open windows go on counting, whether it stays active,
    /// is made inactive or goes over budget (its counters are parked) or comes back.
    pub fn replace_key(&mut self, entry: KeyEntry) -> Dirty {
        let kept = self.take_member(&entry.info.id);
        self.put_member(entry, kept)
    }

    /// Takes a key's member (its counters) out of its roster (and its rotation: a benched key
    /// is benched no more) or out of the parked ones.
    fn take_member(&mut self, id: &str) -> Option<Member> {
        if let Some(member) = self.parked.remove(id) {
            return Some(member);
        }
        let benched_until = self.benched.remove(id);
        let order = self.order(id)?;
        let tier_id = &self.keys.get(&order)?.info.tier_id;
        if let Some(bench) = self.benches.get_mut(tier_id) {
            if let Some(until) = benched_until {
                bench.back.remove(&(until, Arc::clone(&order.1)));
            }
            if bench.back.is_empty() {
                self.benches.remove(tier_id);
            } else if let Ok(at) = position(&bench.members, (order.0, &order.1)) {
                bench.members.remove(at);
            }
        }
        let roster = self.tier_keys.get_mut(tier_id)?;
        let at = position(roster, (order.0, &order.1)).ok()?;
        Some(roster.remove(at))
    }

    fn put_member(&mut self, entry: KeyEntry, kept: Option<Member>) -> Dirty {
        let (dirty, tier, entry) = self.admit(entry);
        if !entry.in_rotation() {
            self.note_reset(&entry);
            // Only a key that had counters parks them: one added inactive has none to keep.
            if let Some(kept) = kept {
                self.parked
                    .insert(Arc::clone(&entry.info.id), kept.with_entry(entry));
            }
            return dirty;
        }
        let member = match kept {
            Some(kept) => kept.with_entry(Arc::clone(&entry)),
            None => Member::new(Arc::clone(&entry), &tier),
        };
        self.note_expiry(&entry);
        // Not benched (taken out of any bench as it was taken out of its roster): it rotates.
        if let Some(bench) = self.benches.get_mut(&tier.id) {
            put_in_order(&mut bench.members, member.clone());
        }
        put_in_order(
            self.tier_keys.entry(Arc::clone(&tier.id)).or_default(),
            member,
        );
        dirty
    }

    /// Adds a key like [`put_key`](Self::put_key), but leaves it out of its tier's roster:
    /// `unplaced` collects it until [`place`](Self::place) puts every collected key in place at
    /// once. For many keys in any order (start-up reads them by id, not by creation): one
    /// insertion into the middle of a persistent vector costs O(log n) with a large constant
    /// (figures in PERFORMANCE.md).
    pub fn put_key_unplaced(&mut self, entry: KeyEntry, unplaced: &mut Unplaced) -> Dirty {
        unplaced.removed_before.get_or_insert(self.removed);
        let (dirty, tier, entry) = self.admit(entry);
        self.note_reset(&entry);
        if entry.in_rotation() {
            unplaced
                .by_tier
                .entry(Arc::clone(&tier.id))
                .or_default()
                .push(entry);
        }
        dirty
    }

    /// Rebuilds the roster of each tier with unplaced keys once, in rotation order. A key
    /// replaced or removed since it was collected is left out.
    pub fn place(&mut self, unplaced: Unplaced) {
        // At start-up none was: no lookup per key.
        let any_removed = unplaced
            .removed_before
            .is_some_and(|before| before != self.removed);
        for (tier_id, entries) in unplaced.by_tier {
            let Some(tier) = self.tier_by_id(&tier_id).cloned() else {
                continue;
            };
            let current = |entry: &Arc<KeyEntry>| {
                !any_removed
                    || self
                        .key(&entry.info.id)
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
            let roster = self.tier_keys.entry(Arc::clone(&tier_id)).or_default();
            let mut members: Vec<Member> = roster.iter().cloned().chain(added).collect();
            members.sort_by(|a, b| a.order().cmp(&b.order()));
            *roster = members.into_iter().collect();
            self.rebench(&tier_id);
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
        self.key_created
            .insert(Arc::clone(&entry.info.id), entry.info.created_at_ms);
        self.keys.insert(order, Arc::clone(&entry));
        (dirty, tier, entry)
    }

    fn note_expiry(&mut self, entry: &KeyEntry) {
        if let Some(at) = entry.info.expires_at_ms {
            self.expiries.insert((at, Arc::clone(&entry.info.id)));
        }
    }

    /// Notes when a key over a monthly budget comes back.
    fn note_reset(&mut self, entry: &KeyEntry) {
        if let Some(at) = entry.budget_returns_at() {
            self.resets.insert((at, Arc::clone(&entry.info.id)));
        }
    }

    /// When the next key over a monthly budget comes back (unix ms).
    pub fn next_reset(&self) -> Option<i64> {
        first_due(&self.resets)
    }

    /// Takes the keys over a monthly budget whose reset is due at `unix_now_ms`: their ids.
    pub fn take_resets(&mut self, unix_now_ms: i64) -> Vec<Arc<str>> {
        std::iter::from_fn(|| take_due(&mut self.resets, unix_now_ms)).collect()
    }

    /// When the next key in a roster expires (unix ms).
    pub fn next_expiry(&self) -> Option<i64> {
        first_due(&self.expiries)
    }

    /// Takes the keys expired at `unix_now_ms` out of their rosters (they stay listed, never
    /// served) and returns the features whose pools change. Until then `pick` skips them, and
    /// each takes its turn to the next key.
    pub fn expire(&mut self, unix_now_ms: i64) -> Dirty {
        let mut dirty = Dirty::new();
        while let Some(id) = take_due(&mut self.expiries, unix_now_ms) {
            let Some(order) = self.order(&id) else {
                continue;
            };
            let Some(tier_id) = self.keys.get(&order).map(|key| {
                key.mark_expired();
                Arc::clone(&key.info.tier_id)
            }) else {
                continue;
            };
            if let Some(member) = self.take_member(&id) {
                self.parked.insert(id, member);
            }
            dirty.extend(self.features_of(&tier_id));
        }
        dirty
    }

    /// The features of a tier (none if it is gone).
    fn features_of(&self, tier_id: &str) -> Dirty {
        self.tier_by_id(tier_id)
            .map(|tier| tier.features.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Removes a key if present; returns the features it was a candidate for.
    pub fn remove_key(&mut self, id: &str) -> Dirty {
        // Out of its roster (or the parked ones) first: that looks the key up by its order.
        self.take_member(id);
        let Some(order) = self.order(id) else {
            return Dirty::new();
        };
        self.key_created.remove(id);
        self.removed += 1;
        let Some(entry) = self.keys.remove(&order) else {
            return Dirty::new();
        };
        if let Some(at) = entry.info.expires_at_ms {
            self.expiries.remove(&(at, Arc::clone(&entry.info.id)));
        }
        if let Some(at) = entry.budget_returns_at() {
            self.resets.remove(&(at, Arc::clone(&entry.info.id)));
        }
        self.features_of(&entry.info.tier_id)
    }

    /// Removes a tier that has no keys left; returns the features it listed.
    pub fn remove_tier(&mut self, id: &str) -> Dirty {
        debug_assert!(self.keys().all(|key| &*key.info.tier_id != id));
        let dirty = self.features_of(id);
        if let Some(name) = self.tier_names.remove(id) {
            self.tiers.remove(&name);
        }
        self.tier_keys.remove(id);
        self.benches.remove(id);
        dirty
    }

    /// Whether any key, active or not, belongs to the tier.
    pub fn tier_has_keys(&self, id: &str) -> bool {
        self.keys().any(|key| &*key.info.tier_id == id)
    }
}

/// When the earliest key of a schedule (keys by instant) is due.
fn first_due<T: Ord + Copy>(schedule: &imbl::OrdSet<(T, Arc<str>)>) -> Option<T> {
    schedule.get_min().map(|(at, _)| *at)
}

/// Takes the earliest key of a schedule (keys by instant) if it is due at `now`.
fn take_due<T: Ord + Copy>(schedule: &mut imbl::OrdSet<(T, Arc<str>)>, now: T) -> Option<Arc<str>> {
    let (at, id) = schedule.get_min().cloned()?;
    (at <= now).then(|| {
        schedule.remove(&(at, Arc::clone(&id)));
        id
    })
}
