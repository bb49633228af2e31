//! Fixtures the benches share: pools built through the public broker API, as the writer
//! builds them, and a tally that turns criterion's timed runs into same-run ratios.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use keypooler::broker::{Catalog, Clock, Dirty, KeyEntry, KeyInfo, Limit, Plaintext, Pool, Tier};
use zeroize::Zeroizing;

/// A 64-byte key value, the size the memory target is stated for.
pub const VALUE_64: &str = "sk-live-0123456789abcdef0123456789abcdef0123456789abcdef01234567";

/// A tier named `name` listing each of `features` with `rate_limit` uses per `window_seconds`.
pub fn tier(name: &str, features: &[&str], rate_limit: u32, window_seconds: u32) -> Tier {
    Tier {
        id: format!("tier-{name}").into(),
        name: name.into(),
        description: String::new(),
        created_at_ms: 0,
        features: features
            .iter()
            .map(|&feature| {
                (
                    feature.into(),
                    Limit {
                        rate_limit,
                        window_seconds,
                    },
                )
            })
            .collect(),
    }
}

/// Key number `i` of tier `tier`, with a 64-byte value and no metadata or secrets.
pub fn key(i: usize, tier: &str) -> KeyEntry {
    let secrets = BTreeMap::<String, Zeroizing<String>>::new();
    KeyEntry::new(
        KeyInfo {
            id: format!("key-{i:08}").into(),
            name: format!("key {i}").into(),
            tier_id: format!("tier-{tier}").into(),
            active: true,
            created_at_ms: i as i64,
            expires_at_ms: None,
        },
        &Plaintext {
            value: VALUE_64,
            metadata: &serde_json::Map::new(),
            secrets: &secrets,
        },
        None,
    )
}

/// A catalog with one tier "pro" listing `features`, and `keys` (of tier "pro") in it; with the
/// features a first snapshot must build.
pub fn catalog(
    keys: impl IntoIterator<Item = KeyEntry>,
    features: &[&str],
    rate_limit: u32,
    window_seconds: u32,
) -> (Catalog, Dirty) {
    let mut catalog = Catalog::default();
    let mut dirty = catalog.put_tier(tier("pro", features, rate_limit, window_seconds));
    for key in keys {
        dirty.extend(catalog.put_key(key));
    }
    (catalog, dirty)
}

/// A published pool over [`catalog`] of `keys` keys, on `clock`.
pub fn pool(
    clock: Clock,
    keys: usize,
    features: &[&str],
    rate_limit: u32,
    window_seconds: u32,
) -> Pool {
    let pool = Pool::new(clock);
    let entries = (0..keys).map(|i| key(i, "pro"));
    let (catalog, dirty) = catalog(entries, features, rate_limit, window_seconds);
    pool.publish(catalog, &dirty);
    pool
}

/// Total time and operations per named workload, accumulated over every run criterion makes
/// (warm-up included), so two workloads measured in the same process can be compared.
#[derive(Default)]
pub struct Tally(Mutex<HashMap<String, (Duration, u64)>>);

impl Tally {
    pub fn record(&self, name: &str, elapsed: Duration, ops: u64) {
        let mut all = self.0.lock().expect("tally lock");
        let entry = all.entry(name.to_owned()).or_default();
        entry.0 += elapsed;
        entry.1 += ops;
    }

    /// Mean nanoseconds per operation of `name`, if it ran.
    pub fn mean_ns(&self, name: &str) -> Option<f64> {
        let all = self.0.lock().expect("tally lock");
        all.get(name)
            .filter(|(_, ops)| *ops > 0)
            .map(|(elapsed, ops)| elapsed.as_nanos() as f64 / *ops as f64)
    }
}

/// The settings every bench here runs with: short, so `cargo bench` takes minutes, not hours.
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args()
}
