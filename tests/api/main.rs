//! Integration tests: the real server over HTTP, real redb files, the built binary.

mod binary;
mod fuzz_json;
mod hardening;
mod helpers;
mod key;
mod keys;
mod leak;
mod persistence;
mod routes;
mod slow;
mod tiers;
mod window_stress;
mod wire;
