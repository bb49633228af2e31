//! keypooler: a lock-free, high-throughput API key broker.
//!
//! # Layout
//!
//! Two paths that never cross. The modules are listed in the order data flows through them.
//!
//! ```text
//! read path (hot, many threads, no lock, no I/O):
//!   GET /key ─► http::key (admin token, or consumer by token hash) ─► broker::Pool::load
//!           (ArcSwap guard) ─► feature pool (the consumer's scoped one) ─► cursor.fetch_add
//!           ─► WindowCounter::try_acquire (CAS) [─► UsageCap::try_acquire (CAS, within the
//!           committed reservation)] ─► pre-encoded body [─► audit event into a fixed queue]
//!
//! write path (cold, one thread, durable before it answers):
//!   admin request ─► http::admin (parse into broker inputs) ─► writer::Writer (channel) ─► writer thread
//!           ─► store::Batch (one redb transaction per drained batch) ─► commit
//!           ─► broker::Pool::publish (next snapshot, live counters carried over) ─► reply
//!   (the writer also takes, on the same channel, usage reservations asked by the hot path
//!   and audit flushes, each committed before it takes effect)
//! ```
//!
//! * [`config`], [`cli`]: settings and the command line.
//! * [`telemetry`]: logs, the name of every metric, and the `Meter` each layer registers its
//!   handles with once (the broker for `GET /key` outcomes, the writer for its commands, the
//!   request metrics for requests); the Prometheus exporter that renders them is in [`http`].
//! * [`app`]: start-up (open, verify the key, first snapshot, writer) and the server loop.
//! * [`server`]: connections: the limit on open connections, header and request timeouts.
//! * [`hardening`]: the process: no core dumps, not dumpable, optionally locked in memory.
//! * [`http`]: the route table, the state handlers share, auth, JSON bodies, handlers, the one
//!   error type, the request metrics and `/metrics`.
//! * [`broker`]: snapshots, feature pools, round-robin cursors, rate counters, usage caps, the
//!   audit queue, the clock; the validated admin inputs and the rules they obey.
//! * [`crypto`]: AES-256-GCM sealing, ours and the Go service's.
//! * [`writer`]: the single writer: typed requests, the batch loop, one function per change.
//! * [`store`]: the redb tables, records and their codec, canary and schema version, and
//!   re-sealing the file.
//! * [`compat`]: import from and export to the Go keypooler's SQLite database (offline).
//! * [`cli`]: the command line, one file per command: `serve`, `import`, `export`, `rekey`
//!   (rotating `ENCRYPTION_KEY` in one transaction).

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
