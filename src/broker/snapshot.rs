//! The immutable view `GET /key` reads: per feature, the candidate keys with their limits and
//! live counters, plus the catalog it was built from for the admin listings.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use super::catalog::{Catalog, Dirty, KeyEntry};
use super::rate::{Clock, WindowCounter};
use super::sync::{AtomicU64, AtomicUsize, Ordering};

/// One key as a candidate for one feature.
struct Candidate {
    key: Arc<KeyEntry>,
    counter: Arc<WindowCounter>,
    limit: u32,
    window_ms: u64,
    /// Clock instant from which the key is expired (`u64::MAX`: never).
    expires_at: u64,
}

/// The keys that can serve one feature, in rotation order (tiers by name, keys by creation).
pub struct FeaturePool {
    name: Arc<str>,
    /// Round-robin position. `fetch_add(Relaxed)`: each request only needs a distinct starting
    /// point, not any ordering with other memory.
    cursor: CachePadded<AtomicUsize>,
    /// Clock instant before which every candidate is known to be spent, so a request can answer
    /// 429 without scanning. `u64::MAX` means nothing recovers without an admin change. Only ever
    /// raised (`fetch_max`), and always to an instant at which some window really ends, so a
    /// stale value can only cause a needless scan, never a wrong refusal. `Relaxed`: it guards no
    /// other data.
    spent_until: CachePadded<AtomicU64>,
    candidates: Box<[Candidate]>,
    /// `x % candidates.len()` without a division.
    modulo: FastMod,
    /// What `Retry-After` says when no candidate will ever recover on its own (none, or all
    /// expired): the shortest window of the tiers listing the feature.
    idle_retry_ms: u64,
}

/// `x % n` for a fixed `n` by two multiplications (Lemire, Kaser and Kurz, "Faster remainder by
/// direct computation", 2019): exact for every 32-bit `x` and `n`. A 64-bit `div` took a third
/// of `pick` on the Xeon we measured (see PERFORMANCE.md).
#[derive(Clone, Copy, Debug)]
struct FastMod {
    n: u64,
    /// `u64::MAX / n + 1`, wrapping to 0 for `n == 1` (where every remainder is 0).
    m: u64,
}

impl FastMod {
    fn new(n: u32) -> Self {
        let n = u64::from(n.max(1));
        Self {
            n,
            m: (u64::MAX / n).wrapping_add(1),
        }
    }

    #[inline]
    fn rem(self, x: u32) -> usize {
        let low = self.m.wrapping_mul(u64::from(x));
        ((u128::from(low) * u128::from(self.n)) >> 64) as usize
    }
}

/// Why a pick found no key: milliseconds until one may be available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spent {
    pub retry_after_ms: u64,
}

impl FeaturePool {
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// Takes one use of the next key with budget left, in rotation.
    #[inline]
    pub fn pick(&self, now: u64) -> Result<&Arc<KeyEntry>, Spent> {
        let spent_until = self.spent_until.load(Ordering::Relaxed);
        if now < spent_until {
            return Err(self.spent(spent_until, now));
        }
        if self.candidates.is_empty() {
            return Err(self.spent(u64::MAX, now));
        }
        // The low 32 bits of the cursor: rotation stays exact except for one jump every 2^32
        // requests, when the truncated cursor wraps.
        let start = self
            .modulo
            .rem(self.cursor.fetch_add(1, Ordering::Relaxed) as u32);
        let mut earliest = u64::MAX;
        let (tail, head) = self.candidates.split_at(start);
        for candidate in head.iter().chain(tail) {
            if now >= candidate.expires_at {
                continue;
            }
            match candidate
                .counter
                .try_acquire(now, candidate.limit, candidate.window_ms)
            {
                Ok(()) => return Ok(&candidate.key),
                Err(resets_at) => earliest = earliest.min(resets_at),
            }
        }
        self.spent_until.fetch_max(earliest, Ordering::Relaxed);
        Err(self.spent(earliest, now))
    }

    #[cold]
    fn spent(&self, until: u64, now: u64) -> Spent {
        let retry_after_ms = if until == u64::MAX {
            self.idle_retry_ms
        } else {
            until - now
        };
        Spent { retry_after_ms }
    }
}

/// One immutable generation of the pool. Built by the writer, published through
/// `ArcSwap`, read without locks.
pub struct Snapshot {
    pub generation: u64,
    pub catalog: Catalog,
    features: HashMap<Arc<str>, Arc<FeaturePool>, foldhash::fast::RandomState>,
}

impl Snapshot {
    /// An empty generation 0.
    pub fn empty() -> Self {
        Self {
            generation: 0,
            catalog: Catalog::default(),
            features: HashMap::default(),
        }
    }

    /// The pool of a feature some tier lists.
    #[inline]
    pub fn feature(&self, name: &str) -> Option<&FeaturePool> {
        self.features.get(name).map(Arc::as_ref)
    }

    pub fn feature_count(&self) -> usize {
        self.features.len()
    }

    /// The next generation: `catalog` with the pools of the `dirty` features rebuilt and every
    /// other pool shared with this snapshot.
    pub fn next(&self, catalog: Catalog, dirty: &Dirty, clock: &Clock) -> Self {
        let mut features = self.features.clone();
        for feature in dirty {
            // Rotation continues where the previous pool was, so frequent admin writes do not
            // favour the first keys.
            let cursor = self
                .features
                .get(feature)
                .map_or(0, |pool| pool.cursor.load(Ordering::Relaxed));
            match build_pool(&catalog, feature, clock, cursor) {
                Some(pool) => features.insert(Arc::clone(feature), Arc::new(pool)),
                None => features.remove(feature),
            };
        }
        Self {
            generation: self.generation + 1,
            catalog,
            features,
        }
    }
}

fn build_pool(
    catalog: &Catalog,
    feature: &Arc<str>,
    clock: &Clock,
    cursor: usize,
) -> Option<FeaturePool> {
    let now_unix = clock.unix_now_ms();
    let mut candidates = Vec::new();
    let mut idle_retry_ms = u64::MAX;
    for tier in catalog.tiers() {
        let Some(limit) = tier.features.get(feature) else {
            continue;
        };
        idle_retry_ms = idle_retry_ms.min(limit.window_ms());
        for (key, counter) in catalog.candidates(tier, feature) {
            if !key.servable_at_unix(now_unix) {
                continue;
            }
            candidates.push(Candidate {
                key: Arc::clone(key),
                counter: Arc::clone(counter),
                limit: limit.rate_limit,
                window_ms: limit.window_ms(),
                expires_at: key
                    .info
                    .expires_at_ms
                    .map_or(u64::MAX, |at| clock.from_unix_ms(at)),
            });
        }
    }
    let count = u32::try_from(candidates.len()).expect("fewer than 2^32 keys fit in memory");
    (idle_retry_ms != u64::MAX).then(|| FeaturePool {
        name: Arc::clone(feature),
        cursor: CachePadded::new(AtomicUsize::new(cursor)),
        spent_until: CachePadded::new(AtomicU64::new(0)),
        candidates: candidates.into_boxed_slice(),
        modulo: FastMod::new(count),
        idle_retry_ms,
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::FastMod;

    #[test]
    fn fast_mod_agrees_with_the_remainder_at_the_edges() {
        for n in [1, 2, 3, 7, 10, 1_000, 100_000, u32::MAX - 1, u32::MAX] {
            let modulo = FastMod::new(n);
            for x in [0, 1, n - 1, n, n.wrapping_add(1), u32::MAX - 1, u32::MAX] {
                assert_eq!(modulo.rem(x), (x % n) as usize, "{x} % {n}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn fast_mod_is_the_remainder(n in 1u32.., x: u32) {
            proptest::prop_assert_eq!(FastMod::new(n).rem(x), (x % n) as usize);
        }
    }
}
