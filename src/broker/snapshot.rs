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
    /// What `Retry-After` says when no candidate will ever recover on its own (none, or all
    /// expired): the shortest window of the tiers listing the feature.
    idle_retry_ms: u64,
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
        let n = self.candidates.len();
        if n == 0 {
            return Err(self.spent(u64::MAX, now));
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
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
    (idle_retry_ms != u64::MAX).then(|| FeaturePool {
        name: Arc::clone(feature),
        cursor: CachePadded::new(AtomicUsize::new(cursor)),
        spent_until: CachePadded::new(AtomicU64::new(0)),
        candidates: candidates.into_boxed_slice(),
        idle_retry_ms,
    })
}
