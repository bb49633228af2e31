//! The Go service's SQLite file of a pool of any size, for the import bench and
//! `loadtest/scale.sh` (through `examples/scale_source.rs`): written by the export path, so it is
//! exactly what `keypooler export` writes for such a pool.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use indicatif::ProgressBar;
use keypooler::broker::{KeyInfo, Plaintext};
use keypooler::compat::{Schema, export};
use keypooler::crypto::Sealer;
use keypooler::store::{Contents, LimitRecord, TierRecord, key_record};

/// What the generated pool holds.
pub struct Shape<'a> {
    pub keys: usize,
    pub tiers: usize,
    /// Every tier lists each of these features.
    pub features: &'a [&'a str],
    /// Every `n`th key is inactive (`None`: all are active).
    pub inactive_every: Option<usize>,
}

/// The creation time of the first key (unix ms); key `k` was created `k` ms later.
const CREATED_MS: i64 = 1_764_331_200_000;

/// The 64-byte value of key number `k` (unique per key).
pub fn value(k: usize) -> String {
    format!("sk-live-{k:056}")
}

/// A pool of `shape` as a redb file would hold it, values sealed with `sealer`. Key `k` is in
/// tier `k % tiers`.
pub fn contents(shape: &Shape<'_>, sealer: &Sealer) -> Contents {
    let mut contents = Contents::default();
    for t in 0..shape.tiers {
        contents.tiers.push(TierRecord {
            id: format!("tier-{t}"),
            name: format!("tier {t}"),
            description: String::new(),
            created_at_ms: CREATED_MS,
            features: shape
                .features
                .iter()
                .map(|&feature| {
                    let limit = LimitRecord {
                        rate_limit: 100,
                        window_seconds: 60,
                    };
                    (feature.to_owned(), limit)
                })
                .collect(),
        });
    }
    let metadata = serde_json::Map::new();
    let secrets = BTreeMap::new();
    contents.keys.reserve(shape.keys);
    for k in 0..shape.keys {
        let info = KeyInfo {
            id: Arc::from(format!("{:08x}-0000-4000-8000-{k:012x}", k)),
            name: Arc::from(format!("key-{k}")),
            tier_id: Arc::from(format!("tier-{}", k % shape.tiers)),
            active: shape.inactive_every.is_none_or(|n| k % n != 0),
            created_at_ms: CREATED_MS + k as i64,
            expires_at_ms: None,
        };
        let value = value(k);
        let plain = Plaintext {
            value: &value,
            metadata: &metadata,
            secrets: &secrets,
        };
        contents.keys.push(key_record(&info, &plain, sealer));
    }
    contents
}

/// Writes `contents` to `file` as the Go service's `schema` generation (values sealed with
/// `sealer`).
pub fn write(contents: &Contents, sealer: &Sealer, schema: Schema, file: &Path) {
    export(
        contents,
        sealer,
        file,
        schema,
        false,
        0,
        &ProgressBar::hidden(),
    )
    .expect("the generated pool exports");
}
