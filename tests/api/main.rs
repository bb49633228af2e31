//! Integration tests: the real server over HTTP, real redb files, the built binary.

mod audit;
mod binary;
mod compat;
mod consumers;
mod crash;
mod disk;
mod files;
mod helpers;
mod key;
mod keys;
mod metrics;
mod persistence;
mod process;
mod sealing;
mod telemetry;
mod tiers;
mod usage;
mod wire;
