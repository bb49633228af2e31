//! Importing (and exporting) 100,000 keys: the Go service's SQLite file to redb and back.
//!
//! `cargo bench --bench import`. The source file is built once, through the export path, from
//! a redb database of 100,000 keys in 10 tiers; each iteration imports it into a new redb file
//! (read, validate, open every value, re-seal, one transaction).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use indicatif::ProgressBar;
use keypooler::broker::{KeyInfo, Plaintext};
use keypooler::compat::Schema;
use keypooler::compat::{ImportMode, export, import, read_source};
use keypooler::crypto::{EncryptionKey, Sealer};
use keypooler::store::{LimitRecord, Store, TierRecord, key_record};

const KEYS: usize = 100_000;
const TIERS: usize = 10;

fn sealer() -> Sealer {
    Sealer::new(&EncryptionKey::parse_hex(&"42".repeat(32)).unwrap())
}

/// A redb database holding `KEYS` keys, and its export as a seed-generation SQLite file.
fn build(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let sealer = sealer();
    let db = dir.join("source.redb");
    let store = Store::open(&db, &sealer).unwrap();
    let batch = store.begin().unwrap();
    let empty = serde_json::Map::new();
    let secrets = std::collections::BTreeMap::new();
    for t in 0..TIERS {
        batch
            .put_tier(&TierRecord {
                id: format!("tier-{t}"),
                name: format!("tier {t}"),
                description: String::new(),
                created_at_ms: 1_764_331_200_000,
                features: [(
                    "chat".to_owned(),
                    LimitRecord {
                        rate_limit: 100,
                        window_seconds: 60,
                    },
                )]
                .into(),
            })
            .unwrap();
    }
    for k in 0..KEYS {
        let info = KeyInfo {
            id: Arc::from(format!("{:08x}-0000-4000-8000-{k:012x}", k)),
            name: Arc::from(format!("key-{k}")),
            tier_id: Arc::from(format!("tier-{}", k % TIERS)),
            active: k % 10 != 0,
            created_at_ms: 1_764_331_200_000 + k as i64,
            expires_at_ms: None,
        };
        let value = format!("sk-proj-{k:040}");
        let plain = Plaintext {
            value: &value,
            metadata: &empty,
            secrets: &secrets,
        };
        batch.put_key(&key_record(&info, &plain, &sealer)).unwrap();
    }
    batch.commit().unwrap();
    let contents = store.load().unwrap();
    let file = dir.join("go.db");
    export(
        &contents,
        &sealer,
        &file,
        Schema::Seed,
        false,
        0,
        &ProgressBar::hidden(),
    )
    .unwrap();
    (db, file)
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (db, file) = build(dir.path());
    let sealer = sealer();
    let mut group = c.benchmark_group("compat");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(40));
    group.bench_function("import_100k_keys", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |target| {
                let source = read_source(&file, &sealer, &ProgressBar::hidden()).unwrap();
                let store = Store::open(&target.path().join("pool.redb"), &sealer).unwrap();
                let summary = import(
                    &source,
                    &store,
                    &sealer,
                    ImportMode::Refuse,
                    &ProgressBar::hidden(),
                )
                .unwrap();
                assert_eq!(summary.keys, KEYS);
                target
            },
            BatchSize::PerIteration,
        );
    });
    let contents = Store::open(&db, &sealer).unwrap().load().unwrap();
    group.bench_function("export_100k_keys", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |target| {
                let summary = export(
                    &contents,
                    &sealer,
                    &target.path().join("go.db"),
                    Schema::Seed,
                    false,
                    0,
                    &ProgressBar::hidden(),
                )
                .unwrap();
                assert_eq!(summary.keys, KEYS);
                target
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(compat, benches);
criterion_main!(compat);
