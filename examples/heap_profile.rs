//! Where a pool's memory goes: builds a redb file of `--keys` keys (64-byte values, 10 tiers
//! listing `--features` features each), then loads it as start-up does (`load_catalog`, the
//! first snapshot) under dhat, and prints the heap held per key. dhat writes `dhat-heap.json`
//! (the allocation sites at the peak; open it in dhat's viewer, or summarize it with
//! `scripts/dhat_sites.py`).
//!
//! ```sh
//! cargo run --release --example heap_profile -- --keys 100000 --features 5
//! ```

#[path = "../benches/source/mod.rs"]
#[allow(
    dead_code,
    reason = "the Go file's writer: this builds a redb file instead"
)]
mod source;

use clap::Parser;
use keypooler::broker::{Clock, Pool};
use keypooler::crypto::{EncryptionKey, Sealer};
use keypooler::store::{Store, load_catalog};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    #[arg(long, default_value_t = 5)]
    features: usize,
}

fn main() {
    let args = Args::parse();
    let sealer = Sealer::new(&EncryptionKey::parse_hex(&"42".repeat(32)).expect("a key"));
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("pool.redb");
    let names: Vec<String> = (0..args.features).map(|f| format!("feature-{f}")).collect();
    let features: Vec<&str> = names.iter().map(String::as_str).collect();
    {
        let shape = source::Shape {
            keys: args.keys,
            tiers: 10,
            features: &features,
            inactive_every: None,
        };
        let contents = source::contents(&shape, &sealer);
        let store = Store::open(&path, &sealer).expect("a new store");
        let batch = store.begin().expect("a batch");
        for tier in &contents.tiers {
            batch.put_tier(tier).expect("a tier");
        }
        for key in &contents.keys {
            batch.put_key(key).expect("a key");
        }
        batch.commit().expect("a commit");
    }
    let store = Store::open(&path, &sealer).expect("the store");
    let profiler = dhat::Profiler::new_heap();
    let clock = Clock::monotonic();
    let (catalog, skipped) = load_catalog(&store, &sealer, &clock).expect("the catalog");
    assert!(skipped.is_empty());
    drop(store);
    let pool = Pool::new(clock);
    pool.publish(catalog.clone(), &catalog.features());
    drop(catalog);
    let stats = dhat::HeapStats::get();
    println!(
        "keys={} features={} heap_bytes={} blocks={} bytes_per_key={:.0} blocks_per_key={:.1} peak_bytes={}",
        args.keys,
        args.features,
        stats.curr_bytes,
        stats.curr_blocks,
        stats.curr_bytes as f64 / args.keys as f64,
        stats.curr_blocks as f64 / args.keys as f64,
        stats.max_bytes,
    );
    drop(profiler);
    drop(pool);
}
