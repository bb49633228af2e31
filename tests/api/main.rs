//! Integration tests: the real server over HTTP, real redb files, the built binary.

mod audit;
mod backup;
mod binary;
mod compat;
mod consumers;
mod crash;
mod disk;
mod files;
mod fuzz_json;
mod hardening;
mod helpers;
mod key;
mod keys;
mod leak;
mod listen;
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
