//! The read path's domain: immutable snapshots of the pool, round-robin cursors, and the
//! per-key rate counters, and the metric handles of `GET /key`. Knows nothing of HTTP, tokio or
//! storage.

pub mod audit;
pub mod catalog;
mod input;
pub mod meter;
pub mod pool;
pub mod rate;
pub mod snapshot;
mod sync;
pub mod usage;

pub use audit::{AuditLog, Event};
pub use catalog::{
    Budget, Catalog, Consumer, Dirty, KeyEntry, KeyInfo, Limit, Plaintext, Tier, TierKeys, Unplaced,
};
pub use input::{
    ConsumerBody, DEFAULT_WINDOW_SECONDS, Invalid, KeyBody, NewConsumer, NewKey, NewScope,
    ScopeBody, TierBody, TierSpec, parse_limit, parse_name,
};
pub use meter::{Meter, Outcomes};
pub use pool::{Caller, Pick, Pool};
pub use rate::{Clock, MAX_RATE_LIMIT, ManualClock, WindowCounter};
pub use snapshot::{FeaturePool, Scoped, Snapshot, Spent};
pub use usage::{Reserve, UsageCap};
