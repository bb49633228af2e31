//! The immutable view `GET /key` reads: per feature, the candidate keys with their limits and
//! live counters, plus the catalog it was built from for the admin listings.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use super::catalog::{Catalog, Dirty};
use super::clock::Clock;
use super::consumer::Consumer;
use super::key::KeyEntry;
use super::outcomes::Outcomes;
use super::rate::NEVER;
use super::roster::{Member, Roster};
use super::sync::{AtomicU64, AtomicUsize, Ordering};
use super::tier::feature_index;
use super::usage::{LIFETIME, Refusal, Reserve, to_cap_seconds};
use crate::telemetry::Meter;

/// The keys one tier lends a feature: the tier's roster (shared with the catalog, never copied)
/// and the feature's limits in that tier.
struct Segment {
    members: Roster,
    /// Position of its first member in the pool's rotation.
    start: usize,
    /// Where the feature's counter sits in each member's counters.
    counter: usize,
    limit: u32,
    window_ms: u64,
}

/// Remainders by a fixed divisor with two multiplications instead of a division (Lemire,
/// Kaser and Kurz, "Faster remainder by direct computation", 2019): a 32-bit `div` is the single
/// most expensive instruction of a pick after its two atomic read-modify-writes.
///
/// Works on the low 32 bits of the cursor, so the rotation skips ahead once every 2^32 picks
/// when the pool size does not divide 2^32 (at 100,000 picks a second, twice a day), and a pool
/// rotates over at most its first 2^32 - 1 keys.
#[derive(Clone, Copy)]
struct Modulus {
    divisor: u32,
    /// `2^64 / divisor`, rounded up (0 for a divisor of 1, where every remainder is 0).
    inverse: u64,
}

impl Modulus {
    fn new(divisor: usize) -> Self {
        let divisor = u32::try_from(divisor).unwrap_or(u32::MAX).max(1);
        Self {
            divisor,
            inverse: (u64::MAX / u64::from(divisor)).wrapping_add(1),
        }
    }

    /// `cursor mod 2^32 mod divisor`.
    #[inline]
    fn of(self, cursor: usize) -> usize {
        let fraction = self.inverse.wrapping_mul(u64::from(cursor as u32));
        ((u128::from(fraction) * u128::from(self.divisor)) >> 64) as usize
    }
}

/// Why a key could not be taken.
enum Miss {
    /// Spent, cooling or exhausted until this clock instant.
    Until(u64),
    /// Its usage cap waits for the writer's next reservation.
    Pending,
    /// Inactive, expired, its lifetime cap is used up, or its limit is below the draw: only an
    /// admin change helps (a key disabled by a report is inactive).
    Never,
}

impl Segment {
    /// Takes `cost` uses of `member`'s rate window for this segment's feature (`feature`) if
    /// its health allows (not exhausted, not cooling for the feature), then one use of its
    /// usage cap if it has one (giving the window's uses back if the cap refuses). `now` is
    /// running time; `wall` is the pick's reading of wall time, read on the first candidate
    /// that has an expiry.
    #[inline]
    fn take(
        &self,
        member: &Member,
        feature: &str,
        now: u64,
        cost: u32,
        wall: &mut Wall<'_>,
        reserve: &dyn Reserve,
    ) -> Result<(), Miss> {
        let entry = &member.entry;
        if !entry.servable(|| wall.read()) {
            return Err(Miss::Never);
        }
        if let Some(until) = entry.health.blocked_until(now, feature) {
            return Err(Miss::Until(until));
        }
        let counter = member.counter(self.counter).ok_or(Miss::Never)?;
        let window = counter
            .try_acquire(now, self.limit, self.window_ms, cost)
            .map_err(|end| {
                if end == NEVER {
                    Miss::Never
                } else {
                    Miss::Until(end)
                }
            })?;
        let Some(cap) = &entry.usage else {
            return Ok(());
        };
        cap.try_acquire(to_cap_seconds(now), &entry.info.id, reserve)
            .map_err(|refusal| {
                counter.release(window, cost);
                match refusal {
                    Refusal::Pending => Miss::Pending,
                    Refusal::Exhausted { until_s: LIFETIME } => Miss::Never,
                    Refusal::Exhausted { until_s } => Miss::Until(u64::from(until_s) * 1_000),
                }
            })
    }
}

/// One pick's reading of wall time: taken from the clock the first time a candidate has an
/// expiry, then kept, so a pick reads the wall clock at most once (and not at all when no
/// candidate expires).
struct Wall<'a> {
    clock: &'a Clock,
    unix_ms: Option<i64>,
}

impl Wall<'_> {
    #[inline]
    fn read(&mut self) -> i64 {
        *self.unix_ms.get_or_insert_with(|| self.clock.unix_now_ms())
    }
}

/// Keys taking turns: segments of rosters, in rotation order.
struct Rotation {
    /// Non-empty segments, in rotation order.
    segments: Box<[Segment]>,
    /// Keys over all segments.
    len: usize,
    /// `cursor % len` without a division.
    modulus: Modulus,
}

impl Rotation {
    fn new(segments: Vec<Segment>) -> Self {
        let len = segments
            .last()
            .map_or(0, |last| last.start + last.members.len());
        Self {
            segments: segments.into_boxed_slice(),
            len,
            modulus: Modulus::new(len),
        }
    }
}

/// The keys that can serve one feature, in rotation order (tiers by name, keys by creation).
///
/// A pool is the concatenation of the rotations of the tiers listing the feature, so building
/// one is O(tiers), whatever the number of keys. Inactive keys (disabled ones too) are in no
/// roster, and a key exhausted or cooling as a whole is benched: left out of its tier's
/// rotation, so it costs a pick nothing, until `back_at`, the first instant a benched key may
/// be back. From then on, until the writer's next generation puts the keys back (or benches
/// them again), a pick goes over `all`, every key of the rosters, as if none were benched. A
/// key that has expired is skipped by `pick` (its turn goes to the next key) until the writer's
/// next sweep takes it out of its roster; a key whose health changed since this pool was built
/// (or that cools for this feature only) is skipped until its deadline, which its health word
/// gives in one load.
pub struct FeaturePool {
    name: Arc<str>,
    /// Round-robin position. `fetch_add(Relaxed)`: each request only needs a distinct starting
    /// point, not any ordering with other memory.
    cursor: CachePadded<AtomicUsize>,
    /// Clock instant before which every candidate is known to be spent, cooling or exhausted
    /// (for a draw of 1, so for any draw), so a request can answer 429 without scanning. Raised
    /// by draws of 1 only: a key that refuses a larger draw may still serve a smaller one.
    /// `u64::MAX` means nothing recovers without an admin change. Only ever raised
    /// (`fetch_max`), and always to an instant at which some window, cooldown or exhaustion
    /// really ends, so a stale value can only cause a needless scan, never a wrong refusal (a
    /// change that frees a key early rebuilds the pool, and the new one starts at 0).
    /// `Relaxed`: it guards no other data.
    spent_until: CachePadded<AtomicU64>,
    /// The keys in rotation: benched ones left out.
    rotation: Rotation,
    /// Running ms from which a benched key may be back (`u64::MAX` when none is benched).
    back_at: u64,
    /// Every key of the rotations' rosters, benched ones too: what a pick goes over from
    /// `back_at` on.
    all: Rotation,
    /// The largest `rate_limit` the tiers listing the feature give it, all of them, whoever
    /// the pool is for: the largest draw.
    max_limit: u32,
    /// Registered once per feature and carried over by rebuilds.
    outcomes: Arc<Outcomes>,
}

/// What `Retry-After` says when no candidate will recover on its own (none, or every one
/// disabled, inactive or expired): a minute, when an operator may have acted.
const NO_END_RETRY_MS: u64 = 60_000;

/// Why a pick found no key: milliseconds until one may be available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spent {
    pub retry_after_ms: u64,
}

impl FeaturePool {
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The ids of its keys in rotation order, expired ones not yet swept out included, benched
    /// ones left out.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn rotation(&self) -> Vec<Arc<str>> {
        self.rotation
            .segments
            .iter()
            .flat_map(|segment| segment.members.iter())
            .map(|member| Arc::clone(&member.entry.info.id))
            .collect()
    }

    /// The `GET /key` outcome counters of this feature.
    #[inline]
    pub fn outcomes(&self) -> &Outcomes {
        &self.outcomes
    }

    /// The largest draw any key can serve for the feature: the largest `rate_limit` the tiers
    /// listing it give it (those outside a consumer's scope too).
    pub fn max_limit(&self) -> u32 {
        self.max_limit
    }

    /// Takes `cost` uses (at least 1) of the next key with that many left in its window, in
    /// rotation, reading `clock`'s running time once (and its wall time at most once); keys
    /// whose limit is below `cost` are skipped. A key with a usage cap also takes one use of
    /// its cap; `reserve` is asked for more when its reservation runs low.
    #[inline]
    pub fn pick(
        &self,
        clock: &Clock,
        cost: u32,
        reserve: &dyn Reserve,
    ) -> Result<&Arc<KeyEntry>, Spent> {
        let now = clock.now_ms();
        let spent_until = self.spent_until.load(Ordering::Relaxed);
        if now < spent_until {
            return Err(self.spent(spent_until, now));
        }
        // Benched keys are out of the rotation until the first may be back; then every key
        // takes its turn until the next generation (the health word skips those still out).
        let (turns, mut earliest) = if now < self.back_at {
            (&self.rotation, self.back_at)
        } else {
            (&self.all, u64::MAX)
        };
        let n = turns.len;
        if n == 0 {
            return Err(self.spent(earliest, now));
        }
        let start = turns
            .modulus
            .of(self.cursor.fetch_add(1, Ordering::Relaxed));
        let mut wall = Wall {
            clock,
            unix_ms: None,
        };
        // A key waiting for its next usage reservation recovers within a disk commit: no
        // instant may then be remembered as spent.
        let mut pending = false;
        // The segment holding position `start`, and the position in it.
        let segments = &turns.segments;
        let mut s = segments.partition_point(|seg| seg.start <= start) - 1;
        let mut i = start - segments[s].start;
        for _ in 0..n {
            let segment = &segments[s];
            if let Some(member) = segment.members.get(i) {
                match segment.take(member, &self.name, now, cost, &mut wall, reserve) {
                    Ok(()) => return Ok(&member.entry),
                    Err(Miss::Until(at)) => earliest = earliest.min(at),
                    Err(Miss::Pending) => pending = true,
                    Err(Miss::Never) => {}
                }
            }
            i += 1;
            if i == segment.members.len() {
                i = 0;
                s = if s + 1 == segments.len() { 0 } else { s + 1 };
            }
        }
        if pending {
            return Err(Spent { retry_after_ms: 1 });
        }
        if cost == 1 {
            self.spent_until.fetch_max(earliest, Ordering::Relaxed);
        }
        Err(self.spent(earliest, now))
    }

    #[cold]
    fn spent(&self, until: u64, now: u64) -> Spent {
        let retry_after_ms = if until == u64::MAX {
            NO_END_RETRY_MS
        } else {
            until - now
        };
        Spent { retry_after_ms }
    }
}

type FeatureMap = HashMap<Arc<str>, Arc<FeaturePool>, foldhash::fast::RandomState>;

/// What a consumer token may draw from: the pools of the features its scoped tiers list, with
/// only those tiers' keys. Budgets are shared with every other view of the same keys.
pub struct Scoped {
    pub consumer: Arc<Consumer>,
    features: FeatureMap,
}

impl Scoped {
    #[inline]
    pub fn feature(&self, name: &str) -> Option<&FeaturePool> {
        self.features.get(name).map(Arc::as_ref)
    }
}

/// One immutable generation of the pool. Built by the writer, published through
/// `ArcSwap`, read without locks.
pub struct Snapshot {
    pub generation: u64,
    pub catalog: Catalog,
    /// Unix ms at which this generation was built.
    pub built_at_unix_ms: i64,
    /// How long building it took.
    pub build_duration: Duration,
    features: FeatureMap,
    /// The outcome counters of every feature no tier lists.
    unlisted: Arc<Outcomes>,
    /// Active consumers by the SHA-256 of their token.
    consumers: HashMap<[u8; 32], Arc<Scoped>, foldhash::fast::RandomState>,
}

impl Snapshot {
    /// An empty generation 0.
    pub fn empty(clock: &Clock, meter: &Meter) -> Self {
        Self {
            generation: 0,
            catalog: Catalog::default(),
            built_at_unix_ms: clock.unix_now_ms(),
            build_duration: Duration::ZERO,
            features: HashMap::default(),
            unlisted: Arc::new(Outcomes::unlisted(meter)),
            consumers: HashMap::default(),
        }
    }

    /// The view of the active consumer whose token hashes to `token_hash`.
    #[inline]
    pub fn consumer(&self, token_hash: &[u8; 32]) -> Option<&Scoped> {
        self.consumers.get(token_hash).map(Arc::as_ref)
    }

    /// The pool of a feature some tier lists.
    #[inline]
    pub fn feature(&self, name: &str) -> Option<&FeaturePool> {
        self.features.get(name).map(Arc::as_ref)
    }

    pub fn feature_count(&self) -> usize {
        self.features.len()
    }

    /// The outcome counters of every feature no tier lists.
    #[inline]
    pub fn unlisted_outcomes(&self) -> &Outcomes {
        &self.unlisted
    }

    /// The outcome counters for a request naming `feature`: its own if some tier lists it, the
    /// shared `unknown` ones otherwise.
    #[inline]
    pub fn outcomes(&self, feature: &str) -> &Outcomes {
        self.feature(feature)
            .map_or(&self.unlisted, FeaturePool::outcomes)
    }

    /// The next generation: `catalog` with the pools of the `dirty` features rebuilt and every
    /// other pool shared with this snapshot. New features register their counters with `meter`.
    pub fn next(&self, catalog: Catalog, dirty: &Dirty, clock: &Clock, meter: &Meter) -> Self {
        let started = Instant::now();
        let mut features = self.features.clone();
        for feature in dirty {
            let previous = self.features.get(feature);
            let cursor = cursor_of(previous);
            // Registered only for a feature that gets a pool.
            let outcomes = || {
                previous.map_or_else(
                    || Arc::new(Outcomes::listed(meter, feature)),
                    |pool| Arc::clone(&pool.outcomes),
                )
            };
            match build_pool(&catalog, feature, None, cursor, outcomes) {
                Some(pool) => features.insert(Arc::clone(feature), Arc::new(pool)),
                None => features.remove(feature),
            };
        }
        let consumers = catalog
            .consumers()
            .filter(|consumer| consumer.active)
            .map(|consumer| {
                let previous = self
                    .consumers
                    .get(&consumer.token_hash)
                    .filter(|old| Arc::ptr_eq(&old.consumer, consumer));
                let build = Rebuild {
                    catalog: &catalog,
                    all: &features,
                    dirty,
                    meter,
                };
                let scoped = Self::scoped(&build, consumer, previous);
                (consumer.token_hash, Arc::new(scoped))
            })
            .collect();
        Self {
            generation: self.generation + 1,
            catalog,
            built_at_unix_ms: clock.unix_now_ms(),
            build_duration: started.elapsed(),
            features,
            consumers,
            unlisted: Arc::clone(&self.unlisted),
        }
    }

    /// A consumer's pools. A pool is reused when neither the consumer nor the feature changed,
    /// and the unscoped pool is shared when the consumer's tiers are all the tiers listing the
    /// feature.
    fn scoped(
        build: &Rebuild<'_>,
        consumer: &Arc<Consumer>,
        previous: Option<&Arc<Scoped>>,
    ) -> Scoped {
        let Rebuild {
            catalog,
            all,
            dirty,
            meter,
        } = *build;
        let listed: BTreeSet<&Arc<str>> = consumer
            .scopes
            .iter()
            .filter_map(|tier_id| catalog.tier_by_id(tier_id))
            .flat_map(|tier| tier.features.keys())
            .collect();
        let features = listed
            .into_iter()
            .filter_map(|feature| {
                let old = previous.and_then(|scoped| scoped.features.get(feature));
                if let Some(old) = old.filter(|_| !dirty.contains(feature)) {
                    return Some((Arc::clone(feature), Arc::clone(old)));
                }
                let covers_all = catalog
                    .tiers()
                    .filter(|tier| tier.features.contains_key(feature))
                    .all(|tier| consumer.scopes.contains(&tier.id));
                let pool = if covers_all {
                    Arc::clone(all.get(feature)?)
                } else {
                    let cursor = cursor_of(old);
                    // A consumer's requests count under the feature's own label.
                    let outcomes = || {
                        all.get(feature).map_or_else(
                            || Arc::new(Outcomes::listed(meter, feature)),
                            |pool| Arc::clone(&pool.outcomes),
                        )
                    };
                    Arc::new(build_pool(
                        catalog,
                        feature,
                        Some(&consumer.scopes),
                        cursor,
                        outcomes,
                    )?)
                };
                Some((Arc::clone(feature), pool))
            })
            .collect();
        Scoped {
            consumer: Arc::clone(consumer),
            features,
        }
    }
}

/// What a rebuild of consumer pools reads: the new catalog and unscoped pools, the features
/// that changed and where to register counters.
#[derive(Clone, Copy)]
struct Rebuild<'a> {
    catalog: &'a Catalog,
    all: &'a FeatureMap,
    dirty: &'a Dirty,
    meter: &'a Meter,
}

/// Rotation continues where the previous pool was, so frequent admin writes do not favour the
/// first keys.
fn cursor_of(pool: Option<&Arc<FeaturePool>>) -> usize {
    pool.map_or(0, |pool| pool.cursor.load(Ordering::Relaxed))
}

/// The pool of `feature` over every tier listing it, or only those in `scope` (its largest draw
/// is over every tier all the same): O(tiers), the rosters are shared.
fn build_pool(
    catalog: &Catalog,
    feature: &Arc<str>,
    scope: Option<&BTreeSet<Arc<str>>>,
    cursor: usize,
    outcomes: impl FnOnce() -> Arc<Outcomes>,
) -> Option<FeaturePool> {
    let mut segments = Vec::new();
    let mut all = Vec::new();
    let mut back_at = u64::MAX;
    let mut listed = false;
    let mut max_limit = 0;
    for tier in catalog.tiers() {
        let (Some(limit), Some(counter)) =
            (tier.features.get(feature), feature_index(tier, feature))
        else {
            continue;
        };
        max_limit = max_limit.max(limit.rate_limit);
        if !scope.is_none_or(|scope| scope.contains(&tier.id)) {
            continue;
        }
        listed = true;
        let (Some(roster), Some((rotation, back))) =
            (catalog.roster(&tier.id), catalog.rotation(&tier.id))
        else {
            continue;
        };
        back_at = back_at.min(back);
        for (segments, members) in [(&mut segments, rotation), (&mut all, roster)] {
            if members.is_empty() {
                continue;
            }
            let start = segments
                .last()
                .map_or(0, |last: &Segment| last.start + last.members.len());
            segments.push(Segment {
                members: members.clone(),
                start,
                counter,
                limit: limit.rate_limit,
                window_ms: limit.window_ms(),
            });
        }
    }
    listed.then(|| FeaturePool {
        name: Arc::clone(feature),
        cursor: CachePadded::new(AtomicUsize::new(cursor)),
        spent_until: CachePadded::new(AtomicU64::new(0)),
        rotation: Rotation::new(segments),
        back_at,
        all: Rotation::new(all),
        max_limit,
        outcomes: outcomes(),
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Modulus;

    proptest::proptest! {
        #[test]
        fn the_division_free_remainder_is_the_remainder(
            divisor in 1usize..=u32::MAX as usize,
            cursor in proptest::prelude::any::<u32>(),
        ) {
            let got = Modulus::new(divisor).of(cursor as usize);
            proptest::prop_assert_eq!(got, cursor as usize % divisor);
        }
    }

    #[test]
    fn small_divisors_and_the_edges_of_the_cursor() {
        for divisor in 1..=300usize {
            let modulus = Modulus::new(divisor);
            for cursor in (0..1_000).chain([u32::MAX as usize - 1, u32::MAX as usize]) {
                assert_eq!(modulus.of(cursor), cursor % divisor, "{cursor} % {divisor}");
            }
        }
        // Only the low 32 bits count.
        assert_eq!(Modulus::new(7).of((1 << 32) + 10), 10 % 7);
    }
}
