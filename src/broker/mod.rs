//! The read path's domain: immutable snapshots of the pool, round-robin cursors, and the
//! per-key rate counters, and the outcome counters of `GET /key`. Knows nothing of HTTP, tokio or
//! storage.

pub mod audit;
pub mod catalog;
mod outcomes;
pub mod pool;
pub mod rate;
pub mod snapshot;
mod sync;
pub mod usage;

pub use audit::{AuditLog, Event};
pub use catalog::{
    Budget, Catalog, Consumer, Dirty, KeyEntry, KeyInfo, Limit, Plaintext, Tier, TierKeys, Unplaced,
};
pub use outcomes::Outcomes;
pub use pool::{Caller, Pick, Pool};
pub use rate::{Clock, MAX_RATE_LIMIT, ManualClock, WindowCounter};
pub use snapshot::{FeaturePool, Scoped, Snapshot, Spent};
pub use usage::{Reserve, UsageCap};
