//! Writes the Go service's SQLite file of a pool of `--keys` keys (64-byte values, all active)
//! in `--tiers` tiers listing `--features` features each, for `loadtest/scale.sh`. Values are
//! sealed with ENCRYPTION_KEY, as the Go service seals them.
//!
//! ```sh
//! ENCRYPTION_KEY=… cargo run --release --example scale_source -- --keys 100000 --out go.db
//! ```

#[path = "../benches/source/mod.rs"]
mod source;

use std::path::PathBuf;

use clap::Parser;
use keypooler::compat::Schema;
use keypooler::crypto::{EncryptionKey, Sealer};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    #[arg(long, default_value_t = 10)]
    tiers: usize,
    #[arg(long, default_value_t = 5)]
    features: usize,
    /// The SQLite file to write; it must not exist.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true)]
    encryption_key: String,
}

fn main() {
    let args = Args::parse();
    let sealer = Sealer::new(&EncryptionKey::parse_hex(&args.encryption_key).expect("64 hex"));
    let names: Vec<String> = (0..args.features).map(|f| format!("feature-{f}")).collect();
    let features: Vec<&str> = names.iter().map(String::as_str).collect();
    let shape = source::Shape {
        keys: args.keys,
        tiers: args.tiers,
        features: &features,
        inactive_every: None,
    };
    let contents = source::contents(&shape, &sealer);
    source::write(&contents, &sealer, Schema::Latest, &args.out);
}
