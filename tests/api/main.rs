//! Integration tests: the real server over HTTP, real redb files, the built binary.

mod binary;
mod compat;
mod helpers;
mod key;
mod keys;
mod persistence;
mod tiers;
mod wire;
