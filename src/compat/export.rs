//! Writing a new SQLite file the Go service opens as is, from what our redb database holds.
//!
//! The schema comes from `migrations/` (the Go service's own SQL, embedded in the binary). The
//! file is built under a temporary name in the target's folder, synced, and renamed into place
//! only when complete, so a failed or interrupted export never leaves a partial file behind.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use rusqlite::{Connection, params};

use super::{CompatError, Schema, time};
use crate::broker::DEFAULT_WINDOW_SECONDS;
use crate::crypto::{GCM_PREFIX, Sealer};
use crate::store::{Contents, KeyRecord, Opened, key_budget, open_key};

/// The Go service's migration bookkeeping table, byte for byte as its runner creates it.
const SCHEMA_MIGRATIONS_SQL: &str = include_str!("../../migrations/schema_migrations.sql");
const SEED_MIGRATIONS: [(i64, &str, &str); 2] = [
    (
        1,
        "create_tiers",
        include_str!("../../migrations/001_create_tiers.sql"),
    ),
    (
        2,
        "create_keys",
        include_str!("../../migrations/002_create_keys.sql"),
    ),
];
const LATEST_MIGRATIONS: [(i64, &str, &str); 1] = [(
    1,
    "init",
    include_str!("../../migrations/latest/001_init.sql"),
)];

/// What an export wrote, and what the chosen schema could not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    pub schema: Schema,
    pub tiers: usize,
    pub keys: usize,
    pub consumers: usize,
    /// Keys the Go service would serve but keypooler would not, written inactive (the seed
    /// schema has no room for why), counted by why.
    pub written_inactive: BTreeMap<Unservable, usize>,
    /// What the seed schema has no room for, e.g. "bound secrets: 3".
    pub left_out: Vec<String>,
}

/// Why a key that is active in its record is not served, which the seed schema cannot say: such
/// a key is written inactive, so that the Go service does not serve it either.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unservable {
    /// Past its `expires_at`.
    Expired,
    /// Its provider said it is spent until a time still to come (`exhausted_until`).
    Exhausted,
    /// Disabled by a report of the provider's refusal (`disabled_reason`).
    Disabled,
    /// Its spend budget is spent in the current period (the seed schema has no budget column).
    OverBudget,
}

impl Unservable {
    pub fn label(self) -> &'static str {
        match self {
            Unservable::Expired => "expired",
            Unservable::Exhausted => "exhausted",
            Unservable::Disabled => "disabled",
            Unservable::OverBudget => "over budget",
        }
    }
}

/// Why an active key is not served at wall time `now_ms`, if it is not: the one rule of what the
/// seed export writes inactive.
pub fn unservable(key: &KeyRecord, now_ms: i64) -> Option<Unservable> {
    if !key.active {
        return None;
    }
    if key.disabled_reason.is_some() {
        Some(Unservable::Disabled)
    } else if key.expires_at_ms.is_some_and(|at| at <= now_ms) {
        Some(Unservable::Expired)
    } else if key.exhausted_until_ms.is_some_and(|until| until > now_ms) {
        Some(Unservable::Exhausted)
    } else if key_budget(key, now_ms).is_some_and(|budget| budget.is_spent()) {
        Some(Unservable::OverBudget)
    } else {
        None
    }
}

/// Writes `contents` (values opened with `sealer`, re-sealed Go-style under it) to a new SQLite
/// file at `to`. `now_ms` decides which keys have expired.
pub fn export(
    contents: &Contents,
    sealer: &Sealer,
    to: &Path,
    schema: Schema,
    force: bool,
    now_ms: i64,
    progress: &ProgressBar,
) -> Result<ExportSummary, CompatError> {
    if to.is_dir() {
        return Err(write_error(to, "it is a folder"));
    }
    if to.exists() && !force {
        return Err(CompatError::TargetExists(to.into()));
    }
    if schema == Schema::Seed {
        check_seed(contents, now_ms)?;
    }
    let temp = TempFile::new(to)?;
    let conn = Connection::open(&temp.path).map_err(|err| write_error(&temp.path, err))?;
    let summary = fill(&conn, contents, sealer, schema, now_ms, progress)
        .map_err(|err| err.into_compat(&temp.path))?;
    conn.close()
        .map_err(|(_, err)| write_error(&temp.path, err))?;
    temp.commit(to)?;
    Ok(summary)
}

/// The seed schema holds per-minute limits and nothing about expiry or usage caps. Rather than
/// let the Go service serve a key more than keypooler would, such a database is refused.
fn check_seed(contents: &Contents, now_ms: i64) -> Result<(), CompatError> {
    const HINT: &str = "the seed schema cannot hold it (export with --schema latest)";
    for tier in &contents.tiers {
        if let Some((feature, limit)) = tier
            .features
            .iter()
            .find(|(_, limit)| limit.window_seconds != DEFAULT_WINDOW_SECONDS)
        {
            return Err(CompatError::row(
                "tiers",
                tier.id.clone(),
                format!(
                    "feature {feature:?} has a {} s window; {HINT}",
                    limit.window_seconds
                ),
            ));
        }
    }
    // A key written inactive is never served: its caps do not matter.
    for key in contents
        .keys
        .iter()
        .filter(|key| key.active && unservable(key, now_ms).is_none())
    {
        let reason = if key.usage_limit.is_some() {
            "it has a usage_limit"
        } else if key.expires_at_ms.is_some_and(|at| at > now_ms) {
            "it expires later (expires_at)"
        } else {
            continue;
        };
        return Err(CompatError::row(
            "keys",
            key.id.clone(),
            format!("{reason}; {HINT}"),
        ));
    }
    Ok(())
}

/// Errors while filling the file: SQLite's own, or ours about a record.
enum FillError {
    Sqlite(rusqlite::Error),
    Compat(CompatError),
}

impl From<rusqlite::Error> for FillError {
    fn from(err: rusqlite::Error) -> Self {
        FillError::Sqlite(err)
    }
}

impl From<CompatError> for FillError {
    fn from(err: CompatError) -> Self {
        FillError::Compat(err)
    }
}

impl FillError {
    fn into_compat(self, path: &Path) -> CompatError {
        match self {
            FillError::Sqlite(err) => write_error(path, err),
            FillError::Compat(err) => err,
        }
    }
}

fn fill(
    conn: &Connection,
    contents: &Contents,
    sealer: &Sealer,
    schema: Schema,
    now_ms: i64,
    progress: &ProgressBar,
) -> Result<ExportSummary, FillError> {
    // The temporary file is synced and renamed only when complete: per-statement syncs would
    // only slow it down.
    conn.execute_batch("PRAGMA synchronous = OFF")?;
    let migrations: &[(i64, &str, &str)] = match schema {
        Schema::Seed => &SEED_MIGRATIONS,
        Schema::Latest => &LATEST_MIGRATIONS,
    };
    let txn = conn.unchecked_transaction()?;
    txn.execute_batch(SCHEMA_MIGRATIONS_SQL)?;
    for (version, name, sql) in migrations {
        txn.execute_batch(sql)?;
        txn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (?1, ?2)",
            params![version, name],
        )?;
    }
    let tiers: HashSet<&str> = contents.tiers.iter().map(|t| t.id.as_str()).collect();
    let mut summary = ExportSummary {
        schema,
        tiers: 0,
        keys: 0,
        consumers: 0,
        written_inactive: BTreeMap::new(),
        left_out: Vec::new(),
    };
    write_tiers(&txn, contents, schema)?;
    summary.tiers = contents.tiers.len();
    progress.set_length(contents.keys.len() as u64);
    progress.set_message("writing");
    let mut secrets = 0;
    for key in &contents.keys {
        let opened = open_for_export(key, &tiers, sealer)?;
        secrets += key.secrets.len();
        if let Some(why) = write_key(&txn, key, &opened, sealer, schema, now_ms)? {
            *summary.written_inactive.entry(why).or_default() += 1;
        }
        summary.keys += 1;
        progress.inc(1);
    }
    match schema {
        Schema::Latest => {
            write_consumers(&txn, contents)?;
            summary.consumers = contents.consumers.len();
        }
        Schema::Seed => {
            let with_metadata = contents
                .keys
                .iter()
                .filter(|k| !k.metadata.is_empty())
                .count();
            let described = contents
                .tiers
                .iter()
                .filter(|t| !t.description.is_empty())
                .count();
            for (count, what) in [
                (secrets, "bound secrets"),
                (with_metadata, "keys' metadata"),
                (contents.consumers.len(), "consumers"),
                (described, "tier descriptions"),
            ] {
                if count > 0 {
                    summary.left_out.push(format!("{what}: {count}"));
                }
            }
        }
    }
    txn.commit()?;
    Ok(summary)
}

fn write_tiers(conn: &Connection, contents: &Contents, schema: Schema) -> Result<(), FillError> {
    let (tier_sql, feature_sql) = match schema {
        Schema::Seed => (
            "INSERT INTO tiers (id, name, created_at) VALUES (?1, ?2, ?4)",
            "INSERT INTO tier_features (tier_id, feature, rate_per_minute) VALUES (?1, ?2, ?3)",
        ),
        Schema::Latest => (
            "INSERT INTO tiers (id, name, description, created_at) VALUES (?1, ?2, ?3, ?4)",
            "INSERT INTO tier_features (tier_id, feature, rate_limit, window_seconds) VALUES (?1, ?2, ?3, ?4)",
        ),
    };
    let mut tier_insert = conn.prepare(tier_sql)?;
    let mut feature_insert = conn.prepare(feature_sql)?;
    for tier in &contents.tiers {
        let created = time::format_timestamp_ms(tier.created_at_ms);
        match schema {
            Schema::Seed => {
                tier_insert.execute(params![tier.id, tier.name, None::<String>, created])?
            }
            Schema::Latest => {
                tier_insert.execute(params![tier.id, tier.name, tier.description, created])?
            }
        };
        for (feature, limit) in &tier.features {
            match schema {
                Schema::Seed => {
                    feature_insert.execute(params![tier.id, feature, limit.rate_limit])?
                }
                Schema::Latest => feature_insert.execute(params![
                    tier.id,
                    feature,
                    limit.rate_limit,
                    limit.window_seconds
                ])?,
            };
        }
    }
    Ok(())
}

/// Writes one key; says why when it was written inactive though active in its record.
fn write_key(
    conn: &Connection,
    key: &KeyRecord,
    opened: &Opened,
    sealer: &Sealer,
    schema: Schema,
    now_ms: i64,
) -> Result<Option<Unservable>, FillError> {
    let created = time::format_timestamp_ms(key.created_at_ms);
    match schema {
        Schema::Seed => {
            let unservable = unservable(key, now_ms);
            conn.prepare_cached(
                "INSERT INTO keys (id, name, key_encrypted, tier_id, is_active, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                key.id,
                key.name,
                sealer.seal_go(&opened.value),
                key.tier_id,
                key.active && unservable.is_none(),
                created
            ])?;
            Ok(unservable)
        }
        Schema::Latest => {
            let usage_limit = key
                .usage_limit
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
            let usage_window = key
                .usage_window_seconds
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
            conn.prepare_cached(
                "INSERT INTO keys (id, name, key_value, tier_id, is_active, expires_at, usage_limit, usage_count, usage_window_seconds, usage_window_start, metadata_json, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                key.id,
                key.name,
                seal_tagged(sealer, &opened.value),
                key.tier_id,
                key.active,
                key.expires_at_ms.map(time::format_timestamp_ms),
                usage_limit,
                i64::try_from(key.usage_count).unwrap_or(i64::MAX),
                usage_window,
                key.usage_window_start_ms.map(time::format_timestamp_ms),
                serde_json::Value::Object(key.metadata.clone()).to_string(),
                created
            ])?;
            let mut secret_insert = conn.prepare_cached(
                "INSERT INTO key_secrets (key_id, name, value) VALUES (?1, ?2, ?3)",
            )?;
            for (name, value) in &opened.secrets {
                secret_insert.execute(params![key.id, name, seal_tagged(sealer, value)])?;
            }
            Ok(None)
        }
    }
}

/// `key` opened for writing into a Go database (either kind): its tier must be among `tiers`.
pub(super) fn open_for_export(
    key: &KeyRecord,
    tiers: &HashSet<&str>,
    sealer: &Sealer,
) -> Result<Opened, CompatError> {
    if !tiers.contains(key.tier_id.as_str()) {
        return Err(CompatError::row(
            "keys",
            key.id.clone(),
            "its tier does not exist",
        ));
    }
    open_key(key, sealer).map_err(|err| CompatError::row("keys", key.id.clone(), err.to_string()))
}

/// `plain` sealed as the Go service's later schema stores it: `enc:gcm:<hex>`.
pub(super) fn seal_tagged(sealer: &Sealer, plain: &str) -> String {
    format!("{GCM_PREFIX}{}", sealer.seal_go(plain))
}

fn write_consumers(conn: &Connection, contents: &Contents) -> Result<(), FillError> {
    let mut consumer_insert = conn.prepare(
        "INSERT INTO consumers (id, name, token_hash, description, is_active, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut scope_insert = conn
        .prepare("INSERT OR IGNORE INTO consumer_scopes (consumer_id, tier_id) VALUES (?1, ?2)")?;
    for consumer in &contents.consumers {
        consumer_insert.execute(params![
            consumer.id,
            consumer.name,
            hex::encode(&consumer.token_hash.0),
            consumer.description,
            consumer.active,
            time::format_timestamp_ms(consumer.created_at_ms)
        ])?;
        for tier_id in &consumer.scopes {
            scope_insert.execute(params![consumer.id, tier_id])?;
        }
    }
    Ok(())
}

fn write_error(path: &Path, reason: impl ToString) -> CompatError {
    CompatError::Write {
        path: path.into(),
        reason: reason.to_string(),
    }
}

/// A file being built beside its target; removed on drop unless [`TempFile::commit`] renamed it.
struct TempFile {
    path: PathBuf,
    done: bool,
}

impl TempFile {
    fn new(target: &Path) -> Result<Self, CompatError> {
        let name = target
            .file_name()
            .ok_or_else(|| write_error(target, "it names no file"))?;
        let folder = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !folder.is_dir() {
            return Err(write_error(target, "its folder does not exist"));
        }
        let path = folder.join(format!(
            ".{}.{}-{:08x}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            rand::random::<u32>()
        ));
        // Created here, empty and readable by the owner only (0600), before SQLite opens it:
        // SQLite would create it 0644, and gives its journal the database file's mode.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(&path)
            .map_err(|err| write_error(target, err))?;
        Ok(Self { path, done: false })
    }

    /// Syncs the finished file and renames it to `target`, then syncs the folder.
    fn commit(mut self, target: &Path) -> Result<(), CompatError> {
        std::fs::File::open(&self.path)
            .and_then(|file| file.sync_all())
            .map_err(|err| write_error(&self.path, err))?;
        std::fs::rename(&self.path, target).map_err(|err| write_error(target, err))?;
        self.done = true;
        if let Some(folder) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Makes the rename itself durable; not every platform can open a folder.
            if let Ok(dir) = std::fs::File::open(folder) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            for suffix in ["", "-journal"] {
                let mut path = self.path.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
