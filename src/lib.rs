//! keypooler: a lock-free, high-throughput API key broker.
//!
//! # Two paths
//!
//! ```text
//! read path (hot, many threads, no lock, no I/O):
//!   GET /key ─► http (admin token, or consumer by token hash) ─► broker::Pool::load
//!           (ArcSwap guard) ─► feature pool (the consumer's scoped one) ─► cursor.fetch_add
//!           ─► WindowCounter::try_acquire (CAS) [─► UsageCap::try_acquire (CAS, within the
//!           committed reservation)] ─► pre-encoded body [─► audit event into a fixed queue]
//!
//! write path (cold, one thread, durable before it answers):
//!   admin request ─► http (parse into broker's validated inputs) ─► writer::Writer (channel)
//!           ─► writer thread ─► store::Batch (one redb transaction per drained batch)
//!           ─► commit ─► broker::Pool::publish (next snapshot, live counters carried over)
//!           ─► reply
//!   (the writer also takes, on the same channel, usage reservations asked by the hot path
//!   and audit flushes, each committed before it takes effect)
//! ```
//!
//! # Layers
//!
//! Each module imports only the modules on the lines below its own; modules on one line do
//! not know each other. `tests/layers.rs` checks every `crate::` path against this table, and
//! that the README draws the same one. The layers, top first:
//!
//! ```text
//! cli               the command line, one file per command: serve, import, export, rekey,
//!                   backup, tiers, keys, consumers (these over one HTTP client)
//! app               wiring: open the store, start the writer, build the state, serve
//! server            connections: the accept loop, connection limits, timeouts
//! http              the one route table, the state handlers share, auth, handlers, the one
//!                   error type, request metrics and /metrics, /openapi.json and /docs
//! writer, compat    the single writer (typed operations, the batch loop, one function per
//!                   operation); beside it, import from and export to the Go service's SQLite
//!                   and PostgreSQL databases (through store, never the writer)
//! store             the redb file: tables, the record codec, open checks, batches, re-sealing,
//!                   online backups
//! broker, config    the domain, with no I/O: snapshots, pools, rotation, rate windows, usage
//!                   caps, the audit queue, the clock, validated admin inputs; the settings
//! crypto, hardening, telemetry
//!                   sealing and token hashes; the process's protections; logs, metric names
//!                   and the meter handles register with
//! ```
//!
//! Each layer keeps its modules private and offers its surface with `pub use`.

pub mod app;
pub mod broker;
pub mod cli;
pub mod compat;
pub mod config;
pub mod crypto;
pub mod hardening;
pub mod http;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod writer;
