//! Integration tests: the real server over HTTP, real redb files, the built binary.

mod binary;
mod helpers;
mod key;
mod keys;
mod metrics;
mod persistence;
mod telemetry;
mod tiers;
mod wire;
