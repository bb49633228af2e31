//! The read path's domain: immutable snapshots of the pool, round-robin cursors, the per-key
//! rate counters and usage caps, the audit queue, the clock, and the outcome counters
//! of `GET /key`. Knows nothing of HTTP, tokio or storage.
//!
//! * `tier`, `key`, `consumer`: what the pool holds.
//! * `roster`: a tier's active keys in rotation order, with their live counters.
//! * `catalog`: everything the writer knows, persistent so a clone is O(1).
//! * `snapshot`, `pool`: one published generation per feature, and picking from it.
//! * `rate`, `usage`, `clock`: rate windows, usage caps, and the milliseconds they count in.
//! * `budget`: spend budgets, their exact decimal amounts and monthly periods.
//! * `health`: what callers report of the provider's answers: cooldowns, exhaustion, disabling.
//! * `audit`, `outcomes`: the audit queue and the outcome counters of `GET /key`.
//! * `input`, `report`: the validated admin inputs and health reports, and the rules they obey.

mod audit;
mod budget;
mod catalog;
mod clock;
mod consumer;
mod health;
mod input;
mod key;
mod outcomes;
mod pool;
mod rate;
mod report;
mod roster;
mod snapshot;
mod sync;
mod tier;
mod usage;

pub use audit::{AuditLog, Event};
pub use budget::{
    Amount, KeyBudget, MAX_RESET_DAY, NANOS_PER_UNIT, SpendLimit, Unit, format_nanos, parse_amount,
    parse_nanos, period_start_ms,
};
pub use catalog::{Catalog, Dirty};
pub use clock::{Clock, ManualClock};
pub use consumer::Consumer;
pub use health::{
    Backoff, Deadline, Health, HealthPolicy, HealthState, MAX_EXHAUSTION_AHEAD_MS, Now, Outcome,
    ReportCounts,
};
pub use input::{
    BudgetBody, ConsumerBody, DEFAULT_WINDOW_SECONDS, Invalid, KeyBody, KeyPatch, KeyPatchBody,
    MAX_REQUEST_ID_CHARS, NewConsumer, NewKey, NewScope, ScopeBody, Spend, SpendBody, TierBody,
    TierSpec, is_hidden, parse_limit, parse_name, parse_usage,
};
pub use key::{Described, KeyEntry, KeyHealth, KeyInfo, KeyState, Plaintext, ServedKey};
pub use outcomes::Outcomes;
pub use pool::{Awaken, Caller, Pick, Pool, Tally};
pub use rate::{MAX_RATE_LIMIT, WindowCounter};
pub use report::{ExhaustedBody, ParsedReport, ReportBody};
pub use roster::Unplaced;
pub use snapshot::{FeaturePool, Scoped, Snapshot, Spent};
pub use tier::{Budget, Limit, Tier, TierKeys};
pub use usage::{LIFETIME, MAX_USAGE_LIMIT, Reserve, UsageCap, to_cap_seconds};
