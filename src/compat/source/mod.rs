//! Reading the Go service's database, its SQLite file or its PostgreSQL database: detect its
//! generation from the columns, validate every row and open every sealed value. Nothing here
//! writes anywhere.
//!
//! Each database is a [`Tables`]: it lists a table's columns and hands over its rows. The rest
//! (one file per group of tables: `tiers`, `keys`, `consumers`, `usage`) is the same for both:
//! each reads its rows through a `Select` that names every column it reads, and finds a row's
//! cells by those names.

mod cells;
mod consumers;
mod keys;
mod postgres;
mod sqlite;
mod tiers;
mod usage;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use indicatif::ProgressBar;
use zeroize::Zeroizing;

use super::{CompatError, Schema};
use crate::broker::KeyInfo;
use crate::crypto::Sealer;
use crate::store::{BudgetRecord, ConsumerRecord, TierRecord, UsageRecord};
use cells::{Cells, Select};

pub use postgres::read_postgres;
pub use sqlite::read_source;

/// Everything read from a source, validated; values and secrets are plaintext in zeroizing
/// buffers.
#[derive(Debug)]
pub struct SourceContents {
    pub schema: Schema,
    pub tiers: Vec<TierRecord>,
    pub keys: Vec<SourceKey>,
    pub consumers: Vec<ConsumerRecord>,
    /// The newest rows of `usage_events` (the audit trail), oldest first: as many as the audit
    /// trail keeps ([`AUDIT_RETENTION`](crate::store::AUDIT_RETENTION)).
    pub usage: Vec<UsageRecord>,
    /// Rows of `usage_events` older than those, which are not imported.
    pub usage_dropped: u64,
    /// Rows of `spend_events` (the idempotency records of spends), which are not imported.
    pub spend_events: u64,
}

/// A key read from the source, with its plaintext.
pub struct SourceKey {
    pub info: KeyInfo,
    pub value: Zeroizing<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub secrets: BTreeMap<String, Zeroizing<String>>,
    pub usage_limit: Option<u64>,
    pub usage_window_seconds: Option<u64>,
    pub usage_count: u64,
    pub usage_window_start_ms: Option<i64>,
    pub exhausted_until_ms: Option<i64>,
    pub budget: Option<BudgetRecord>,
    /// Spent in the period that started at `spent_period_start_ms`.
    pub spent_nanos: u64,
    /// The Go service's `spent_period_start`.
    pub spent_period_start_ms: Option<i64>,
}

impl std::fmt::Debug for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceKey")
            .field("info", &self.info)
            .field("value", &"[REDACTED]")
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A source database, as the reader sees it.
trait Tables {
    /// The columns a table has, or `None` when there is no such table. Anything but a plain
    /// table under one of the names the import reads is refused.
    fn columns(&self, table: &str) -> Result<Option<BTreeSet<String>>, CompatError>;
    /// Runs `select` and hands each row to `each`, in a stable order, stopping at the first
    /// error.
    fn each_row(
        &self,
        select: &Select,
        each: &mut dyn FnMut(&Cells<'_>) -> Result<(), CompatError>,
    ) -> Result<(), CompatError>;
    fn count(&self, table: &str) -> Result<u64, CompatError>;
    /// The error for a database that is not the Go keypooler's.
    fn not_keypooler(&self, reason: String) -> CompatError;
}

struct Reader<'a> {
    tables: &'a dyn Tables,
    sealer: &'a Sealer,
}

impl<'a> Reader<'a> {
    fn new(tables: &'a dyn Tables, sealer: &'a Sealer) -> Self {
        Self { tables, sealer }
    }
}

/// The columns of the three tables every generation has.
struct Columns {
    tiers: BTreeSet<String>,
    tier_features: BTreeSet<String>,
    keys: BTreeSet<String>,
}

/// Where the two generations differ: each is told by its own columns, so a file from a version
/// in between reads too.
struct Generation {
    schema: Schema,
    /// `rate_per_minute` (seed) or `rate_limit` (latest), in `tier_features`.
    rate_column: &'static str,
    /// `key_encrypted` (seed) or `key_value` (latest), in `keys`.
    value_column: &'static str,
    /// Whether sealed values carry the `enc:gcm:` tag (the latest schema's).
    tagged: bool,
}

impl Reader<'_> {
    fn columns(&self, table: &str) -> Result<Option<BTreeSet<String>>, CompatError> {
        self.tables.columns(table)
    }

    fn each_row(
        &self,
        select: &Select,
        mut each: impl FnMut(&Cells<'_>) -> Result<(), CompatError>,
    ) -> Result<(), CompatError> {
        self.tables.each_row(select, &mut each)
    }

    fn count(&self, table: &str) -> Result<u64, CompatError> {
        self.tables.count(table)
    }

    fn not_keypooler(&self, reason: String) -> CompatError {
        self.tables.not_keypooler(reason)
    }

    fn read(&self, progress: &ProgressBar) -> Result<SourceContents, CompatError> {
        let (columns, generation) = self.generation()?;
        let tiers = self.read_tiers(&columns, &generation)?;
        let tier_ids: HashSet<String> = tiers.iter().map(|tier| tier.id.clone()).collect();
        let keys = self.read_keys(&columns, &generation, &tier_ids, progress)?;
        let consumers = self.read_consumers(&tier_ids)?;
        let (usage, usage_dropped) = self.read_usage()?;
        let spend_events = match self.columns("spend_events")? {
            Some(_) => self.count("spend_events")?,
            None => 0,
        };
        Ok(SourceContents {
            schema: generation.schema,
            tiers,
            keys,
            consumers,
            usage,
            usage_dropped,
            spend_events,
        })
    }

    /// Checks that the file holds the Go keypooler's tables, and tells its generation.
    fn generation(&self) -> Result<(Columns, Generation), CompatError> {
        let tier_columns = self.columns("tiers")?;
        let feature_columns = self.columns("tier_features")?;
        let key_columns = self.columns("keys")?;
        let (Some(tiers), Some(tier_features), Some(keys)) =
            (tier_columns, feature_columns, key_columns)
        else {
            return Err(
                self.not_keypooler("it needs the tables tiers, tier_features and keys".into())
            );
        };
        let columns = Columns {
            tiers,
            tier_features,
            keys,
        };
        for (table, present, needed) in [
            ("tiers", &columns.tiers, &["id", "name"][..]),
            (
                "tier_features",
                &columns.tier_features,
                &["tier_id", "feature"][..],
            ),
            ("keys", &columns.keys, &["id", "name", "tier_id"][..]),
        ] {
            if let Some(missing) = needed.iter().find(|c| !present.contains(**c)) {
                return Err(self.not_keypooler(format!("{table} has no column {missing}")));
            }
        }
        let rate_column = if columns.tier_features.contains("rate_limit") {
            "rate_limit"
        } else if columns.tier_features.contains("rate_per_minute") {
            "rate_per_minute"
        } else {
            return Err(self
                .not_keypooler("tier_features has neither rate_per_minute nor rate_limit".into()));
        };
        let (value_column, tagged) = if columns.keys.contains("key_value") {
            ("key_value", true)
        } else if columns.keys.contains("key_encrypted") {
            ("key_encrypted", false)
        } else {
            return Err(self.not_keypooler("keys has neither key_encrypted nor key_value".into()));
        };
        let schema = if rate_column == "rate_per_minute" && !tagged {
            Schema::Seed
        } else {
            Schema::Latest
        };
        let generation = Generation {
            schema,
            rate_column,
            value_column,
            tagged,
        };
        Ok((columns, generation))
    }
}
