//! Integration tests: the real server over HTTP, real redb files, the built binary.

mod binary;
mod crash;
mod disk;
mod files;
mod helpers;
mod key;
mod keys;
mod persistence;
mod process;
mod sealing;
mod tiers;
mod wire;
