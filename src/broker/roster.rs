//! Rosters: a tier's active keys in rotation order, each with its live rate counters.

use std::collections::HashMap;
use std::sync::Arc;

use super::key::KeyEntry;
use super::rate::WindowCounter;
use super::tier::{Tier, feature_index};

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
    pub(super) fn new(entry: Arc<KeyEntry>, tier: &Tier) -> Self {
        Self {
            entry,
            counters: tier.features.keys().map(|_| Arc::default()).collect(),
        }
    }

    /// The same member, counters and all, for a new version of its key (same id and order).
    pub(super) fn with_entry(self, entry: Arc<KeyEntry>) -> Self {
        Self {
            entry,
            counters: self.counters,
        }
    }

    /// Its counter for the feature at `index` in its tier's feature order ([`feature_index`]).
    #[inline]
    pub fn counter(&self, index: usize) -> Option<&WindowCounter> {
        self.counters.get(index).map(Arc::as_ref)
    }

    pub(super) fn order(&self) -> (i64, &str) {
        (self.entry.info.created_at_ms, &self.entry.info.id)
    }

    /// The same member once its tier went from `old` to `new` features: the counters of the
    /// features kept carry over (open windows keep their counts), new features get fresh ones.
    pub(super) fn refeatured(&self, old: &Tier, new: &Tier) -> Self {
        let counters = new
            .features
            .keys()
            .map(|feature| {
                feature_index(old, feature)
                    .map_or_else(Arc::default, |i| Arc::clone(&self.counters[i]))
            })
            .collect();
        Self {
            entry: Arc::clone(&self.entry),
            counters,
        }
    }
}

/// A tier's active keys in rotation order, each with its counters. An inactive key is kept out
/// (its counters are parked in the catalog until it is active again): it would only be skipped,
/// and a run of them would give its whole share to the next active key. Persistent (`imbl::Vector`, an
/// RRB tree of shared 64-element chunks): a clone is O(1) and adding one key copies O(log n)
/// nodes, so every snapshot shares its tiers' rosters with the catalog and adding a key costs
/// the same with 100 keys as with 100,000.
pub type Roster = imbl::Vector<Member>;

/// Where a key of creation order `order` is, or would be inserted, in `roster`.
pub(super) fn position(roster: &Roster, order: (i64, &str)) -> Result<usize, usize> {
    roster.binary_search_by(|member| member.order().cmp(&order))
}

/// Keys added by [`Catalog::put_key_unplaced`](super::Catalog::put_key_unplaced), by tier id, waiting for [`Catalog::place`](super::Catalog::place).
#[derive(Default)]
pub struct Unplaced {
    pub(super) by_tier: HashMap<Arc<str>, Vec<Arc<KeyEntry>>>,
    /// The catalog's count of removed keys when the first was collected.
    pub(super) removed_before: Option<u64>,
}
