//! Integration tests: the real server over HTTP, real redb files, the built binary.

mod audit;
mod binary;
mod compat;
mod consumers;
mod crash;
mod disk;
mod files;
mod fuzz_json;
mod hardening;
mod helpers;
mod idempotency;
mod key;
mod keys;
mod leak;
mod metrics;
mod persistence;
mod process;
mod routes;
mod sealing;
mod slow;
mod telemetry;
mod tiers;
mod usage;
mod window_stress;
mod wire;
