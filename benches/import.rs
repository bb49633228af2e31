//! Importing (and exporting) 100,000 keys: the Go service's SQLite file to redb and back.
//!
//! `cargo bench --bench import`. The source file is built once, through the export path
//! (`source`), from 100,000 keys in 10 tiers; each iteration imports it into a new redb file
//! (read, validate, open every value, re-seal, one transaction).

mod source;

use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use indicatif::ProgressBar;
use keypooler::compat::Schema;
use keypooler::compat::{ImportMode, export, import, read_source};
use keypooler::crypto::{EncryptionKey, Sealer};
use keypooler::store::Store;

const KEYS: usize = 100_000;

fn sealer() -> Sealer {
    Sealer::new(&EncryptionKey::parse_hex(&"42".repeat(32)).unwrap())
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let sealer = sealer();
    let shape = source::Shape {
        keys: KEYS,
        tiers: 10,
        features: &["chat"],
        inactive_every: Some(10),
    };
    let contents = source::contents(&shape, &sealer);
    let file = dir.path().join("go.db");
    source::write(&contents, &sealer, Schema::Seed, &file);
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
