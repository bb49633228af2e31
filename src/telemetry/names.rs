//! The name of every metric keypooler exposes, in one place: the layers that count import their
//! names from here, and so does the Prometheus exporter that describes and renders them.

// Events, counted as they happen through handles registered once.

/// Requests answered, by `route`, `method` and `status` class.
pub const HTTP_REQUESTS: &str = "keypooler_http_requests_total";
/// Seconds from a request reaching the router to its response head, by `route` and `method`.
pub const HTTP_DURATION: &str = "keypooler_http_request_duration_seconds";
/// `GET /key` answers, by `feature` and `outcome`.
pub const KEY_REQUESTS: &str = "keypooler_key_requests_total";
/// `POST /key/{id}/report` calls answered, by outcome `class`.
pub const KEY_REPORTS: &str = "keypooler_key_reports_total";
/// `GET /key?wait=` requests that waited, by how the wait ended: `outcome` is `served`,
/// `timed_out`, `rejected` (too many waiting) or `shutdown`.
pub const KEY_WAITS: &str = "keypooler_key_waits_total";
/// `GET /key?wait=` requests waiting for a key now.
pub const KEY_WAITERS: &str = "keypooler_key_waiters";
/// Changes the writer handled, by `kind` and `outcome`.
pub const WRITER_COMMANDS: &str = "keypooler_writer_commands_total";
/// Seconds each durable commit of a batch took.
pub const WRITER_COMMIT_DURATION: &str = "keypooler_writer_commit_duration_seconds";
/// Billionths of a unit counted by spends (`POST /key/{id}/spend`, replays not), by `unit`.
pub const SPENT: &str = "keypooler_spent_nanos_total";

// State, read from the live snapshot when `/metrics` is scraped.

/// The running version, as a label; always 1.
pub const BUILD_INFO: &str = "keypooler_build_info";
/// Keys stored, by `tier`.
pub const POOL_KEYS: &str = "keypooler_pool_keys";
/// Keys servable now, by `tier`.
pub const POOL_ACTIVE_KEYS: &str = "keypooler_pool_active_keys";
/// Tiers defined.
pub const POOL_TIERS: &str = "keypooler_pool_tiers";
/// Features some tier lists.
pub const POOL_FEATURES: &str = "keypooler_pool_features";
/// Generation of the published snapshot.
pub const SNAPSHOT_GENERATION: &str = "keypooler_snapshot_generation";
/// Unix time at which the published snapshot was built.
pub const SNAPSHOT_BUILT: &str = "keypooler_snapshot_built_timestamp_seconds";
/// Time building the published snapshot took.
pub const SNAPSHOT_BUILD_DURATION: &str = "keypooler_snapshot_build_duration_seconds";
/// Admin changes queued for the writer.
pub const WRITER_QUEUE_DEPTH: &str = "keypooler_writer_queue_depth";
/// Uses of a tier's keys for each feature in their open windows, summed, by `tier`, `feature`.
pub const TIER_BUDGET_USED: &str = "keypooler_tier_budget_used";
/// Uses a tier's keys may serve for each feature per window, summed, by `tier`, `feature`.
pub const TIER_BUDGET_LIMIT: &str = "keypooler_tier_budget_limit";
/// Uses of each key for each feature in its open window (with `METRICS_TOKEN` only).
pub const KEY_BUDGET_USED: &str = "keypooler_key_budget_used";
/// Uses each key may serve for each feature per window (with `METRICS_TOKEN` only).
pub const KEY_BUDGET_LIMIT: &str = "keypooler_key_budget_limit";
/// Keys not servable now for a reason their health or spend budget gives, by `state`
/// (cooling, disabled, exhausted, over_budget).
pub const KEYS_UNAVAILABLE: &str = "keypooler_keys_unavailable";
/// Per-key series a scrape left out because there were more than `METRICS_PER_KEY_MAX`.
pub const KEY_BUDGET_CUT: &str = "keypooler_key_budget_series_cut";
