//! The published pool: the current [`Snapshot`] behind an `ArcSwap`, and the clock.

use std::sync::Arc;

use std::sync::OnceLock;

use arc_swap::ArcSwap;

use super::catalog::{Catalog, Dirty};
use super::clock::Clock;
use super::health::ReportCounts;
use super::key::KeyEntry;
use super::snapshot::{FeaturePool, Scoped, Snapshot, Spent};
use super::usage::{NoReserve, Reserve};
use crate::telemetry::Meter;

/// What `GET /key` learns from the pool.
#[derive(Debug)]
pub enum Pick<'a> {
    /// The key, and the pool's own name of the feature (shared, so recording it copies
    /// nothing).
    Served(&'a Arc<KeyEntry>, &'a Arc<str>),
    Spent(Spent),
    /// No tier lists the feature.
    UnknownFeature,
    /// None of the consumer's tiers lists the feature.
    OutOfScope,
    /// The draw is larger than the largest limit any tier gives the feature (that limit).
    AboveLimit(u32),
}

/// Whether a draw counts its outcome (`keypooler_key_requests_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tally {
    Counted,
    /// For a request that may try again: it counts its final outcome through
    /// [`Snapshot::outcomes`] itself.
    Uncounted,
}

/// Whose request it is: the admin draws from every tier, a consumer from its scoped tiers.
#[derive(Clone, Copy)]
pub enum Caller<'a> {
    Admin,
    Consumer(&'a Scoped),
}

/// Told that a key may have become servable: requests waiting for one (`GET /key?wait=`)
/// look again. Implemented by the HTTP layer; called from any thread, so it must not block for
/// long (it takes the waiters' lock and tries one draw per waiter).
pub trait Awaken: Send + Sync {
    /// `feature`: the feature a key may now serve; `None`: any feature.
    fn key_available(&self, feature: Option<&str>);
}

/// The current snapshot, swapped whole by the writer and read lock-free by every request.
pub struct Pool {
    current: ArcSwap<Snapshot>,
    clock: Clock,
    /// Where usage caps ask for more reserved uses: the writer, once it runs.
    reserve: OnceLock<Box<dyn Reserve>>,
    /// Who waits for keys: the waiting requests, once the HTTP state exists.
    awaken: OnceLock<Box<dyn Awaken>>,
    meter: Meter,
    /// The `POST /key/{id}/report` counters, registered once.
    reports: ReportCounts,
}

impl Pool {
    /// A pool that records no metrics.
    pub fn new(clock: Clock) -> Self {
        Self::with_meter(clock, Meter::off())
    }

    /// A pool whose snapshots register their outcome counters with `meter`.
    pub fn with_meter(clock: Clock, meter: Meter) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::empty(&clock, &meter)),
            clock,
            reserve: OnceLock::new(),
            reports: ReportCounts::new(&meter),
            awaken: OnceLock::new(),
            meter,
        }
    }

    /// Connects usage caps to the writer that reserves their uses. Set once.
    pub fn set_reserve(&self, reserve: Box<dyn Reserve>) {
        if self.reserve.set(reserve).is_err() {
            tracing::warn!("a reservation sink was already set; keeping the first");
        }
    }

    /// Connects the requests that wait for keys. Set once.
    pub fn set_awaken(&self, awaken: Box<dyn Awaken>) {
        if self.awaken.set(awaken).is_err() {
            tracing::warn!("waiters were already connected; keeping the first");
        }
    }

    /// Says that a key may have become servable for `feature` (`None`: for any feature): a
    /// key was added, re-enabled, or its cooldown or exhaustion ended; the requests waiting
    /// for one try again now, in arrival order. [`Pool::publish`] calls it for every feature a
    /// new generation changes, and a manual clock for every feature when it moves; call it for
    /// any other change that can make a key servable without publishing. Cheap when nobody
    /// waits; never call it from `GET /key`'s hot path.
    pub fn key_available(&self, feature: Option<&str>) {
        if let Some(awaken) = self.awaken.get() {
            awaken.key_available(feature);
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The counters of health reports, by outcome class.
    pub fn reports(&self) -> &ReportCounts {
        &self.reports
    }

    /// The current snapshot: a cheap guard for one request, not to be held across an await.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Picks a key for `feature` from `snapshot`, counting one use (and the outcome).
    #[inline]
    pub fn pick<'s>(&self, snapshot: &'s Snapshot, feature: &str) -> Pick<'s> {
        self.pick_for(Caller::Admin, snapshot, feature)
    }

    /// Picks a key for `feature` among the tiers `caller` may draw from.
    #[inline]
    pub fn pick_for<'s>(
        &self,
        caller: Caller<'s>,
        snapshot: &'s Snapshot,
        feature: &str,
    ) -> Pick<'s> {
        self.draw(caller, snapshot, feature, 1, Tally::Counted)
    }

    /// Draws `cost` units (at least 1) of a key's window for `feature` among the tiers `caller`
    /// may draw from, counting the outcome as `tally` says.
    #[inline]
    pub fn draw<'s>(
        &self,
        caller: Caller<'s>,
        snapshot: &'s Snapshot,
        feature: &str,
        cost: u32,
        tally: Tally,
    ) -> Pick<'s> {
        let count = tally == Tally::Counted;
        let pool: Option<&'s FeaturePool> = match caller {
            Caller::Admin => snapshot.feature(feature),
            Caller::Consumer(scoped) => match scoped.feature(feature) {
                Some(pool) => Some(pool),
                None => {
                    if count {
                        snapshot.outcomes(feature).forbidden.increment(1);
                    }
                    return Pick::OutOfScope;
                }
            },
        };
        let Some(pool) = pool else {
            if count {
                snapshot.unlisted_outcomes().unknown_feature.increment(1);
            }
            return Pick::UnknownFeature;
        };
        // Measured against every tier listing the feature, whoever asks.
        if cost > 1 && cost > pool.max_limit() {
            return Pick::AboveLimit(pool.max_limit());
        }
        let reserve: &dyn Reserve = self.reserve.get().map_or(&NoReserve, |r| &**r);
        match pool.pick(&self.clock, cost, reserve) {
            Ok(key) => {
                if count {
                    pool.outcomes().served.increment(1);
                }
                Pick::Served(key, pool.name())
            }
            Err(spent) => {
                if count {
                    pool.outcomes().spent.increment(1);
                }
                Pick::Spent(spent)
            }
        }
    }

    /// Publishes `catalog` as the next generation, rebuilding only the `dirty` features.
    /// Called by the single writer only, so generations never interleave.
    pub fn publish(&self, catalog: Catalog, dirty: &Dirty) -> Arc<Snapshot> {
        let next = Arc::new(
            self.current
                .load()
                .next(catalog, dirty, &self.clock, &self.meter),
        );
        self.current.store(Arc::clone(&next));
        for feature in dirty {
            self.key_available(Some(feature));
        }
        next
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::collections::BTreeMap;

    use zeroize::Zeroizing;

    use super::*;
    use crate::broker::{KeyInfo, Limit, ManualClock, Plaintext, Tier};
    use crate::telemetry::Meter;

    fn tier(name: &str, features: &[(&str, u32, u32)]) -> Tier {
        Tier {
            id: format!("tier-{name}").into(),
            name: name.into(),
            description: String::new(),
            created_at_ms: 0,
            features: features
                .iter()
                .map(|&(f, rate_limit, window_seconds)| {
                    (
                        f.into(),
                        Limit {
                            rate_limit,
                            window_seconds,
                        },
                    )
                })
                .collect(),
        }
    }

    fn key(id: &str, tier: &str, created_at_ms: i64, expires_at_ms: Option<i64>) -> KeyEntry {
        key_of(id, tier, created_at_ms, expires_at_ms, true)
    }

    fn key_of(
        id: &str,
        tier: &str,
        created_at_ms: i64,
        expires_at_ms: Option<i64>,
        active: bool,
    ) -> KeyEntry {
        let secrets = BTreeMap::<String, Zeroizing<String>>::new();
        KeyEntry::new(
            KeyInfo {
                id: id.into(),
                name: id.into(),
                tier_id: format!("tier-{tier}").into(),
                active,
                created_at_ms,
                expires_at_ms,
            },
            &Plaintext {
                value: &format!("value-{id}"),
                metadata: &serde_json::Map::new(),
                secrets: &secrets,
            },
            None,
        )
    }

    fn pool_with(keys: usize, limit: u32) -> (Pool, ManualClock) {
        let (clock, hand) = Clock::manual();
        let pool = Pool::new(clock);
        let mut catalog = Catalog::default();
        let mut dirty = catalog.put_tier(tier("pro", &[("chat", limit, 60)]));
        for i in 0..keys {
            dirty.extend(catalog.put_key(key(&format!("k{i}"), "pro", i as i64, None)));
        }
        pool.publish(catalog, &dirty);
        (pool, hand)
    }

    fn served_id(pool: &Pool, feature: &str) -> Option<String> {
        let snapshot = pool.load();
        match pool.pick(&snapshot, feature) {
            Pick::Served(key, _) => Some(key.info.id.to_string()),
            _ => None,
        }
    }

    #[test]
    fn a_replaced_key_keeps_its_counters_while_inactive_and_across_a_change_of_its_tier() {
        let (clock, _) = Clock::manual();
        let pool = Pool::new(clock);
        let mut catalog = Catalog::default();
        let mut dirty = catalog.put_tier(tier("pro", &[("chat", 3, 60)]));
        dirty.extend(catalog.put_key(key("k0", "pro", 0, None)));
        dirty.extend(catalog.put_key(key("k1", "pro", 1, None)));
        pool.publish(catalog.clone(), &dirty);
        for _ in 0..4 {
            assert!(served_id(&pool, "chat").is_some());
        }
        let used = |catalog: &Catalog, feature| {
            let now = pool.clock().now_ms();
            catalog
                .counter("k0", feature)
                .map(|counter| counter.used(now, 60_000))
        };
        assert_eq!(used(&catalog, "chat"), Some(2));

        // Made inactive: out of the rotation, its counters parked.
        let dirty = catalog.replace_key(key_of("k0", "pro", 0, None, false));
        pool.publish(catalog.clone(), &dirty);
        assert_eq!(used(&catalog, "chat"), None);
        assert_eq!(served_id(&pool, "chat").as_deref(), Some("k1"));
        // Its tier gains a feature meanwhile.
        let dirty = catalog.put_tier(tier("pro", &[("chat", 3, 60), ("embed", 1, 60)]));
        pool.publish(catalog.clone(), &dirty);
        // Active again: the open window's two uses still count.
        let dirty = catalog.replace_key(key("k0", "pro", 0, None));
        pool.publish(catalog.clone(), &dirty);
        assert_eq!(used(&catalog, "chat"), Some(2));
        assert_eq!(used(&catalog, "embed"), Some(0));
        let served: Vec<_> = (0..3).filter_map(|_| served_id(&pool, "chat")).collect();
        assert_eq!(served, ["k0"], "one use left for k0, none for k1");
        // Deleted: nothing is left parked or in a roster.
        let dirty = catalog.remove_key("k0");
        pool.publish(catalog.clone(), &dirty);
        assert_eq!(used(&catalog, "chat"), None);
    }

    #[test]
    fn k_keys_times_m_picks_serve_each_key_m_times_in_rotation() {
        let (pool, _) = pool_with(5, 1_000);
        let served: Vec<String> = (0..5 * 7)
            .map(|_| served_id(&pool, "chat").unwrap())
            .collect();
        for (i, id) in served.iter().enumerate() {
            assert_eq!(id, &format!("k{}", i % 5), "pick {i} out of rotation");
        }
    }

    #[test]
    fn spent_keys_are_skipped_and_the_spent_pool_answers_with_the_earliest_reset() {
        let (pool, hand) = pool_with(3, 2);
        for _ in 0..6 {
            assert!(served_id(&pool, "chat").is_some());
        }
        let snapshot = pool.load();
        match pool.pick(&snapshot, "chat") {
            Pick::Spent(spent) => assert_eq!(spent.retry_after_ms, 60_000),
            other => panic!("expected spent, got {other:?}"),
        }
        hand.advance_ms(59_999);
        match pool.pick(&snapshot, "chat") {
            Pick::Spent(spent) => assert_eq!(spent.retry_after_ms, 1),
            other => panic!("expected spent, got {other:?}"),
        }
        hand.advance_ms(1);
        assert!(served_id(&pool, "chat").is_some());
    }

    /// Cooling keys are skipped; once every key cools, the pool remembers the earliest end and
    /// refuses until then without looking at its keys again (as a spent pool does), so only a
    /// rebuild makes a key freed early servable before it.
    #[test]
    fn cooling_keys_are_skipped_and_an_all_cooling_pool_refuses_in_one_load() {
        use crate::broker::{Backoff, HealthState, Now};
        let (pool, hand) = pool_with(2, 1_000);
        let now = Now::read(pool.clock());
        let cool = |id: &str, ms: u64| {
            let state = HealthState {
                key: Backoff {
                    until: Some(now.after(ms)),
                    level: 1,
                },
                ..HealthState::default()
            };
            pool.load()
                .catalog
                .key(id)
                .unwrap()
                .health
                .publish(state, now);
        };
        cool("k0", 5_000);
        for _ in 0..3 {
            assert_eq!(served_id(&pool, "chat").as_deref(), Some("k1"));
        }
        cool("k1", 2_000);
        let snapshot = pool.load();
        match pool.pick(&snapshot, "chat") {
            Pick::Spent(spent) => assert_eq!(spent.retry_after_ms, 2_000),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // k1 freed without a rebuild: the pool still refuses on what it remembered.
        let key = snapshot.catalog.key("k1").unwrap();
        key.health.publish(HealthState::default(), now);
        assert_eq!(served_id(&pool, "chat"), None);
        let catalog = snapshot.catalog.clone();
        let dirty = catalog.features();
        pool.publish(catalog, &dirty);
        assert_eq!(served_id(&pool, "chat").as_deref(), Some("k1"));
        // k0 comes back by itself at its deadline.
        hand.advance_ms(5_000);
        let served: Vec<_> = (0..2).filter_map(|_| served_id(&pool, "chat")).collect();
        assert!(served.contains(&"k0".to_owned()), "{served:?}");
    }

    /// Keys cooling as a whole are benched (out of the rotation, as the writer leaves them):
    /// the free ones serve in rotation order, a pool with every key benched refuses without a
    /// scan, and at their deadline the benched keys serve again before any rebuild, with the
    /// uses their open windows counted before.
    #[test]
    fn benched_keys_leave_the_rotation_and_come_back_at_their_deadline_with_their_counts() {
        use crate::broker::{Backoff, HealthState, Now};
        let (pool, hand) = pool_with(100, 1_000);
        let mut counts = std::collections::HashMap::<String, u32>::new();
        for _ in 0..100 {
            *counts.entry(served_id(&pool, "chat").unwrap()).or_default() += 1;
        }
        assert!(counts.values().all(|&n| n == 1), "{counts:?}");
        let now = Now::read(pool.clock());
        let cooled = HealthState {
            key: Backoff {
                until: Some(now.after(30_000)),
                level: 1,
            },
            ..HealthState::default()
        };
        let until = cooled.out_of_rotation_until(now).unwrap();
        let bench = |ids: &mut dyn Iterator<Item = String>| {
            let mut catalog = pool.load().catalog.clone();
            let mut dirty = Dirty::new();
            for id in ids {
                let id: Arc<str> = id.into();
                catalog
                    .key(&id)
                    .unwrap()
                    .health
                    .publish(cooled.clone(), now);
                dirty.extend(catalog.bench(&id, until));
            }
            pool.publish(catalog, &dirty);
        };
        let free = ["k10", "k60"];
        bench(
            &mut (0..100)
                .map(|i| format!("k{i}"))
                .filter(|id| !free.contains(&&**id)),
        );
        let snapshot = pool.load();
        let chat = snapshot.feature("chat").unwrap();
        assert_eq!(chat.rotation(), free.map(Arc::<str>::from));
        let served: Vec<_> = (0..6).map(|_| served_id(&pool, "chat").unwrap()).collect();
        assert!(
            served.windows(2).all(|pair| pair[0] != pair[1]),
            "{served:?}"
        );
        for id in &served {
            *counts.get_mut(id).unwrap() += 1;
        }
        assert_eq!(counts["k10"] + counts["k60"], 8);

        // Every key benched: the rotation is empty, the refusal says when the first is back.
        bench(&mut free.iter().map(ToString::to_string));
        let snapshot = pool.load();
        assert!(snapshot.feature("chat").unwrap().rotation().is_empty());
        match pool.pick(&snapshot, "chat") {
            Pick::Spent(spent) => assert_eq!(spent.retry_after_ms, 30_000),
            other => panic!("expected a refusal, got {other:?}"),
        }

        // At the deadline, before the writer puts them back, every key serves again, with the
        // counts of its open window.
        hand.advance_ms(30_000);
        for _ in 0..100 {
            *counts.entry(served_id(&pool, "chat").unwrap()).or_default() += 1;
        }
        let now = pool.clock().now_ms();
        for (id, &n) in &counts {
            let used = pool
                .load()
                .catalog
                .counter(id, "chat")
                .unwrap()
                .used(now, 60_000);
            assert_eq!(used, n, "{id}");
        }
        assert!(
            counts.values().all(|&n| n >= 2),
            "each served again: {counts:?}"
        );

        // Put back, they rotate as before.
        let mut catalog = pool.load().catalog.clone();
        let mut dirty = Dirty::new();
        for i in 0..100 {
            dirty.extend(catalog.unbench(&format!("k{i}")));
        }
        pool.publish(catalog, &dirty);
        assert_eq!(pool.load().feature("chat").unwrap().rotation().len(), 100);
        assert_eq!(pool.load().catalog.benched_until("k0"), None);
    }

    #[test]
    fn a_rebuild_keeps_the_counts_of_open_windows() {
        let (pool, _) = pool_with(1, 2);
        served_id(&pool, "chat").unwrap();
        served_id(&pool, "chat").unwrap();
        let mut catalog = pool.load().catalog.clone();
        let dirty = catalog.put_tier(tier("free", &[("chat", 5, 60)]));
        pool.publish(catalog, &dirty);
        assert_eq!(pool.load().generation, 2);
        assert_eq!(served_id(&pool, "chat"), None);
    }

    #[test]
    fn an_unknown_feature_is_not_a_spent_one() {
        let (pool, _) = pool_with(1, 1);
        let snapshot = pool.load();
        assert!(matches!(pool.pick(&snapshot, "nope"), Pick::UnknownFeature));
    }

    /// Nothing will recover by itself: a minute, whatever the windows.
    #[test]
    fn a_feature_without_keys_retries_after_a_minute() {
        let (clock, _) = Clock::manual();
        let pool = Pool::new(clock);
        let mut catalog = Catalog::default();
        let mut dirty = catalog.put_tier(tier("a", &[("chat", 1, 90)]));
        dirty.extend(catalog.put_tier(tier("b", &[("chat", 1, 30)])));
        pool.publish(catalog, &dirty);
        let snapshot = pool.load();
        match pool.pick(&snapshot, "chat") {
            Pick::Spent(spent) => assert_eq!(spent.retry_after_ms, 60_000),
            other => panic!("expected spent, got {other:?}"),
        }
    }

    /// A pool of one tier listing "chat", with keys that expire this many ms from now (or
    /// never), created in this order; and the unix time now.
    fn expiring(keys: &[(&str, Option<i64>)]) -> (Pool, ManualClock, i64) {
        let (clock, hand) = Clock::manual();
        let now = clock.unix_now_ms();
        let pool = Pool::new(clock);
        let mut catalog = Catalog::default();
        let mut dirty = catalog.put_tier(tier("pro", &[("chat", 100, 60)]));
        for (created, (id, expires_in)) in keys.iter().enumerate() {
            let expiry = expires_in.map(|ms| now + ms);
            dirty.extend(catalog.put_key(key(id, "pro", created as i64, expiry)));
        }
        pool.publish(catalog, &dirty);
        (pool, hand, now)
    }

    #[test]
    fn an_expired_key_is_never_served() {
        let (pool, hand, _) = expiring(&[("soon", Some(5_000))]);
        assert_eq!(served_id(&pool, "chat").as_deref(), Some("soon"));
        hand.advance_ms(5_000);
        assert_eq!(served_id(&pool, "chat"), None);
    }

    /// Expiry is judged on the wall clock at the pick: a step forward expires the key at once,
    /// though running time has not moved.
    #[test]
    fn a_forward_step_of_the_wall_clock_expires_a_key_at_once() {
        let (pool, hand, _) = expiring(&[("soon", Some(3_600_000)), ("never", None)]);
        assert_eq!(served_id(&pool, "chat").as_deref(), Some("soon"));
        hand.step_wall_ms(3_600_000);
        let served: Vec<_> = (0..3).filter_map(|_| served_id(&pool, "chat")).collect();
        assert_eq!(served, ["never", "never", "never"]);
    }

    /// The active keys of the pool's only tier, as the admin health counts them.
    fn active_keys(pool: &Pool) -> usize {
        pool.load()
            .catalog
            .tier_keys(i64::MIN)
            .next()
            .unwrap()
            .1
            .active
    }

    /// A key found expired stays expired when the wall clock steps back before it: found by a
    /// pick, or by the writer's sweep.
    #[test]
    fn a_backward_step_of_the_wall_clock_never_serves_an_expired_key_again() {
        let (pool, hand, _) = expiring(&[("picked", Some(5_000)), ("swept", Some(5_000))]);
        assert_eq!(served_id(&pool, "chat").as_deref(), Some("picked"));
        hand.step_wall_ms(60_000);
        // The pick finds "picked" expired, then "swept" too.
        assert_eq!(served_id(&pool, "chat"), None);
        hand.step_wall_ms(-120_000);
        assert_eq!(served_id(&pool, "chat"), None);
        assert_eq!(active_keys(&pool), 0);

        // Found by the sweep alone: no pick saw it expired.
        let (pool, hand, _) = expiring(&[("swept", Some(5_000))]);
        hand.step_wall_ms(60_000);
        let mut catalog = pool.load().catalog.clone();
        let dirty = catalog.expire(pool.clock().unix_now_ms());
        pool.publish(catalog, &dirty);
        hand.step_wall_ms(-120_000);
        assert_eq!(served_id(&pool, "chat"), None);
        assert_eq!(active_keys(&pool), 0);
    }

    /// An expired key is skipped at once, and leaves the rotation at the next sweep, so its
    /// turns stop going to the key after it; it stays listed.
    #[test]
    fn expired_keys_leave_the_rotation_at_the_next_sweep() {
        let (pool, hand, now) = expiring(&[("a", Some(5_000)), ("b", None), ("c", Some(5_001))]);
        let soon = now + 5_000;
        assert_eq!(pool.load().catalog.next_expiry(), Some(soon));
        hand.advance_ms(5_000);
        let ids = |pool: &Pool| -> Vec<String> {
            let snapshot = pool.load();
            let chat = snapshot.feature("chat").unwrap();
            chat.rotation().iter().map(ToString::to_string).collect()
        };
        assert_eq!(ids(&pool), ["a", "b", "c"]);
        // Skipped before the sweep: "b" takes "a"'s turn.
        let served: Vec<_> = (0..3).filter_map(|_| served_id(&pool, "chat")).collect();
        assert_eq!(served, ["b", "b", "c"]);

        let mut catalog = pool.load().catalog.clone();
        let dirty = catalog.expire(pool.clock().unix_now_ms());
        assert!(dirty.contains("chat"));
        assert_eq!(catalog.next_expiry(), Some(soon + 1), "c is not due yet");
        pool.publish(catalog, &dirty);
        assert_eq!(ids(&pool), ["b", "c"]);
        let snapshot = pool.load();
        assert!(snapshot.catalog.key("a").is_some(), "still listed");
        assert!(snapshot.catalog.counter("a", "chat").is_none());

        // A deleted key's expiry goes with it.
        let mut catalog = snapshot.catalog.clone();
        catalog.remove_key("c");
        assert_eq!(catalog.next_expiry(), None);
        assert!(catalog.expire(i64::MAX).is_empty());
    }

    #[test]
    fn a_deleted_key_leaves_the_rotation() {
        let (pool, _) = pool_with(2, 100);
        let mut catalog = pool.load().catalog.clone();
        let dirty = catalog.remove_key("k0");
        pool.publish(catalog, &dirty);
        for _ in 0..4 {
            assert_eq!(served_id(&pool, "chat").as_deref(), Some("k1"));
        }
    }

    #[test]
    fn the_served_body_is_the_json_of_the_key() {
        let (pool, _) = pool_with(1, 1);
        let snapshot = pool.load();
        let Pick::Served(key, _) = pool.pick(&snapshot, "chat") else {
            panic!("expected a key");
        };
        let body: serde_json::Value = serde_json::from_slice(&key.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"key_id":"k0","value":"value-k0","metadata":{},"secrets":{}})
        );
        assert!(!format!("{key:?}").contains("value-k0"));
    }

    /// Many threads hammer one key with limit N through the whole pick path: exactly N win.
    #[test]
    fn many_threads_on_one_pool_get_exactly_the_budget() {
        let (pool, _) = pool_with(3, 5_000);
        let pool = Arc::new(pool);
        let served = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..4_000 {
                        if served_id(&pool, "chat").is_some() {
                            served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(served.into_inner(), 15_000);
    }

    #[test]
    fn picks_count_their_outcome_through_handles_carried_across_rebuilds() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let (clock, _) = Clock::manual();
        let pool = Pool::with_meter(clock, Meter::new(Arc::new(recorder)));
        let mut catalog = Catalog::default();
        let mut dirty = catalog.put_tier(tier("pro", &[("chat", 1, 60)]));
        dirty.extend(catalog.put_key(key("k0", "pro", 0, None)));
        pool.publish(catalog, &dirty);
        let before: *const _ = pool.load().feature("chat").unwrap().outcomes();
        assert!(served_id(&pool, "chat").is_some());
        assert!(served_id(&pool, "chat").is_none());
        assert!(served_id(&pool, "random-1").is_none());
        assert!(served_id(&pool, "random-2").is_none());

        let mut catalog = pool.load().catalog.clone();
        let dirty = catalog.put_tier(tier("free", &[("chat", 5, 60)]));
        pool.publish(catalog, &dirty);
        assert!(std::ptr::eq(
            before,
            pool.load().feature("chat").unwrap().outcomes()
        ));

        let text = handle.render();
        for line in [
            r#"keypooler_key_requests_total{feature="chat",outcome="served"} 1"#,
            r#"keypooler_key_requests_total{feature="chat",outcome="spent"} 1"#,
            r#"keypooler_key_requests_total{feature="unknown",outcome="unknown_feature"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in {text}");
        }
        assert!(!text.contains("random"));
    }

    #[derive(Clone, Debug)]
    enum Change {
        /// A key in tier `a`, `b` or `c` (`c` does not list `chat`), created at `created`.
        Add {
            tier: usize,
            created: i64,
            active: bool,
        },
        /// Removes the key at this index (modulo) of the keys added so far.
        Remove(usize),
        /// Benches the key at this index (modulo), for longer than the test.
        Bench(usize),
        /// Puts the key at this index (modulo) back in rotation.
        Unbench(usize),
        /// Puts the key at this index (modulo) again, as it is (fresh counters, not benched).
        Replace(usize),
    }

    fn change() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0..3usize, 0..50i64, proptest::bool::weighted(0.8))
                .prop_map(|(tier, created, active)| Change::Add { tier, created, active }),
            1 => any::<usize>().prop_map(Change::Remove),
            2 => any::<usize>().prop_map(Change::Bench),
            1 => any::<usize>().prop_map(Change::Unbench),
            1 => any::<usize>().prop_map(Change::Replace),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever the adds, deletes, benches and replacements, the pool of a feature is the
        /// active keys of the tiers listing it that are not benched, by tier name then
        /// creation, and as many picks serve each of them once; benched keys keep counters.
        #[test]
        fn the_rotation_follows_the_catalog_through_any_adds_and_deletes(
            changes in proptest::collection::vec(change(), 1..400),
        ) {
            const TIERS: [&str; 3] = ["a", "b", "c"];
            let (clock, _) = Clock::manual();
            let pool = Pool::new(clock);
            let mut catalog = Catalog::default();
            let mut dirty = catalog.put_tier(tier("b", &[("chat", 1_000, 60)]));
            dirty.extend(catalog.put_tier(tier("a", &[("image", 1, 60), ("chat", 1_000, 60)])));
            dirty.extend(catalog.put_tier(tier("c", &[("image", 1, 60)])));
            pool.publish(catalog, &dirty);
            // The model: (tier name, created, id) -> active.
            let mut model = std::collections::BTreeMap::<(&str, i64, String), bool>::new();
            let mut added = Vec::new();
            let mut benched = std::collections::HashSet::<String>::new();
            let pick = |added: &Vec<(&'static str, i64, String)>, at: usize| {
                added[at % added.len()].clone()
            };
            for (n, change) in changes.into_iter().enumerate() {
                let mut catalog = pool.load().catalog.clone();
                let dirty = match change {
                    Change::Add { tier, created, active } => {
                        let id = format!("k{n:03}");
                        model.insert((TIERS[tier], created, id.clone()), active);
                        added.push((TIERS[tier], created, id.clone()));
                        catalog.put_key(key_of(&id, TIERS[tier], created, None, active))
                    }
                    Change::Remove(_) | Change::Bench(_) | Change::Unbench(_) | Change::Replace(_)
                        if added.is_empty() => continue,
                    Change::Remove(at) => {
                        let gone = added.swap_remove(at % added.len());
                        model.remove(&gone);
                        benched.remove(&gone.2);
                        catalog.remove_key(&gone.2)
                    }
                    Change::Bench(at) => {
                        let key = pick(&added, at);
                        if model[&key] {
                            benched.insert(key.2.clone());
                        }
                        catalog.bench(&Arc::from(key.2.as_str()), u64::MAX - 1)
                    }
                    Change::Unbench(at) => {
                        let key = pick(&added, at);
                        benched.remove(&key.2);
                        catalog.unbench(&key.2)
                    }
                    Change::Replace(at) => {
                        let (tier, created, id) = pick(&added, at);
                        benched.remove(&id);
                        let active = model[&(tier, created, id.clone())];
                        catalog.put_key(key_of(&id, tier, created, None, active))
                    }
                };
                pool.publish(catalog, &dirty);
            }
            let active: Vec<&String> = model
                .iter()
                .filter(|((tier, _, id), active)| *tier != "c" && **active && !benched.contains(id))
                .map(|((_, _, id), _)| id)
                .collect();
            let snapshot = pool.load();
            let Some(chat) = snapshot.feature("chat") else {
                proptest::prop_assert!(false, "chat has no pool");
                return Ok(());
            };
            proptest::prop_assert_eq!(
                chat.rotation().iter().map(|id| id.to_string()).collect::<Vec<_>>(),
                active.iter().map(|id| (*id).clone()).collect::<Vec<_>>()
            );

            let mut served = std::collections::HashMap::<String, usize>::new();
            for _ in 0..active.len() {
                if let Pick::Served(key, feature) = pool.pick(&snapshot, "chat") {
                    proptest::prop_assert_eq!(&**feature, "chat");
                    *served.entry(key.info.id.to_string()).or_default() += 1;
                }
            }
            let wanted: std::collections::HashMap<String, usize> =
                active.iter().map(|id| ((*id).clone(), 1)).collect();
            // The admin view finds each active key's counter in its roster (a benched key's
            // too); an inactive key has none (it never counts a use).
            let now = pool.clock().now_ms();
            for ((tier, _, id), is_active) in &model {
                let used = snapshot.catalog.counter(id, "chat").map(|c| c.used(now, 60_000));
                let expected =
                    (*tier != "c" && *is_active).then_some(u32::from(!benched.contains(id)));
                proptest::prop_assert_eq!(used, expected, "{}", id);
            }
            proptest::prop_assert_eq!(served, wanted);
        }
    }

    /// A key collected for placing and removed before it is placed stays out of its roster.
    #[test]
    fn a_key_removed_after_it_was_collected_is_not_placed() {
        let mut catalog = Catalog::default();
        catalog.put_tier(tier("a", &[("chat", 5, 60)]));
        let mut unplaced = crate::broker::Unplaced::default();
        for (id, created) in [("k1", 1), ("k2", 2), ("k3", 3)] {
            catalog.put_key_unplaced(key(id, "a", created, None), &mut unplaced);
        }
        catalog.remove_key("k2");
        catalog.place(unplaced);
        let placed: Vec<String> = catalog
            .roster("tier-a")
            .into_iter()
            .flat_map(|roster| roster.iter())
            .map(|member| member.entry.info.id.to_string())
            .collect();
        assert_eq!(placed, ["k1", "k3"]);
        assert!(catalog.key("k2").is_none());
    }

    proptest::proptest! {
        /// Keys placed in bulk (start-up) end up exactly where one `put_key` each puts them,
        /// including an id added twice (the later one wins).
        #[test]
        fn bulk_placed_keys_match_keys_put_one_by_one(
            keys in proptest::collection::vec((0..2usize, 0..40i64, 0..150usize), 0..300),
        ) {
            const TIERS: [&str; 2] = ["a", "b"];
            let mut one_by_one = Catalog::default();
            let mut bulk = Catalog::default();
            for catalog in [&mut one_by_one, &mut bulk] {
                catalog.put_tier(tier("a", &[("chat", 5, 60)]));
                catalog.put_tier(tier("b", &[("chat", 5, 60), ("image", 1, 60)]));
            }
            // Half go in one by one first, as if the pool already held keys.
            let (first, rest) = keys.split_at(keys.len() / 2);
            let entry = |&(tier, created, id): &(usize, i64, usize)| {
                key(&format!("k{id:03}"), TIERS[tier], created, None)
            };
            for spec in first {
                one_by_one.put_key(entry(spec));
                bulk.put_key(entry(spec));
            }
            let mut unplaced = crate::broker::Unplaced::default();
            for spec in rest {
                one_by_one.put_key(entry(spec));
                bulk.put_key_unplaced(entry(spec), &mut unplaced);
            }
            bulk.place(unplaced);
            let ids = |catalog: &Catalog, tier: &str| -> Vec<String> {
                catalog
                    .roster(tier)
                    .into_iter()
                    .flat_map(|roster| roster.iter())
                    .map(|member| member.entry.info.id.to_string())
                    .collect()
            };
            for tier in ["tier-a", "tier-b"] {
                proptest::prop_assert_eq!(ids(&bulk, tier), ids(&one_by_one, tier));
            }
            proptest::prop_assert_eq!(bulk.key_count(), one_by_one.key_count());
            for key in one_by_one.keys() {
                proptest::prop_assert!(bulk.counter(&key.info.id, "chat").is_some());
            }
        }
    }
}
