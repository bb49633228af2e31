//! Reading the Go service's SQLite file: open it read-only, detect its generation from the
//! columns, validate every row and open every sealed value. Nothing here writes anywhere.
//!
//! One file per group of tables (`tiers`, `keys`, `consumers`); each reads its rows through a
//! `Select` that names every column it reads, and finds a row's cells by those names.

mod cells;
mod consumers;
mod keys;
mod tiers;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};
use zeroize::Zeroizing;

use super::{CompatError, Schema};
use crate::broker::KeyInfo;
use crate::crypto::Sealer;
use crate::store::{ConsumerRecord, SQLITE_MAGIC, TierRecord};
use cells::{Cells, Select};
/// Byte 18 of the header (file format write version): 2 means WAL journal mode.
const WAL_FORMAT: u8 = 2;

/// Everything read from a source file, validated; values and secrets are plaintext in zeroizing
/// buffers.
#[derive(Debug)]
pub struct SourceContents {
    pub schema: Schema,
    pub tiers: Vec<TierRecord>,
    pub keys: Vec<SourceKey>,
    pub consumers: Vec<ConsumerRecord>,
    /// Rows of `usage_events` (the audit trail), which are not imported.
    pub usage_events: u64,
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

/// Opens `path` without ever writing to it, reads and validates every row. Values are opened
/// with `sealer` (the source file's key). `progress` advances once per key.
pub fn read_source(
    path: &Path,
    sealer: &Sealer,
    progress: &ProgressBar,
) -> Result<SourceContents, CompatError> {
    let conn = open_read_only(path)?;
    let reader = Reader {
        conn: &conn,
        path,
        sealer,
    };
    reader.read(progress)
}

/// Opens a SQLite file read-only, creating nothing beside it when it can.
///
/// * A rollback-journal file opens with `mode=ro`: SQLite's shared lock keeps the read
///   consistent even while the Go service writes, and nothing is created.
/// * A WAL file without a `-wal` file has nothing pending and no writer (a WAL writer always
///   holds its `-wal` file open), so it opens `immutable`: a plain read-only open would create
///   `-wal` and `-shm` files owned by whoever runs the import, which can lock the Go service out
///   of its own folder.
/// * A WAL file with a `-wal` file (the Go service is running, or stopped without a checkpoint)
///   opens with `mode=ro` so that the committed transactions in the `-wal` are read; SQLite
///   may then create the `-shm` index if it is missing. The database file itself is never
///   written.
fn open_read_only(path: &Path) -> Result<Connection, CompatError> {
    let open_error = |reason: String| CompatError::Open {
        path: path.into(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|err| open_error(err.to_string()))?;
    let mut header = [0u8; 20];
    let read = read_up_to(&mut file, &mut header).map_err(|err| open_error(err.to_string()))?;
    if read < header.len() || &header[..16] != SQLITE_MAGIC {
        return Err(CompatError::NotSqlite {
            path: path.into(),
            reason: if read == 0 {
                "the file is empty".into()
            } else {
                "it does not start with the SQLite header".into()
            },
        });
    }
    drop(file);
    let text = path
        .to_str()
        .ok_or_else(|| open_error("the path is not UTF-8".into()))?;
    let encoded = percent_encoding::utf8_percent_encode(text, URI_PATH);
    let wal_file = PathBuf::from(format!("{text}-wal"));
    let immutable = header[18] == WAL_FORMAT && !wal_file.exists();
    let uri = if immutable {
        format!("file:{encoded}?mode=ro&immutable=1")
    } else {
        format!("file:{encoded}?mode=ro")
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(uri, flags).map_err(|err| open_error(err.to_string()))?;
    distrust_schema(&conn).map_err(|err| open_error(err.to_string()))?;
    // The first read checks the header and schema: a damaged file fails here, clearly.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
        .map_err(|err| match err.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => CompatError::NotSqlite {
                path: path.into(),
                reason: err.to_string(),
            },
            _ => open_error(err.to_string()),
        })?;
    Ok(conn)
}

/// The file is hostile until proven otherwise, and its schema is code (views, triggers, column
/// defaults and generated columns are SQL that SQLite runs). Before the schema is first read:
/// no function the schema names may have side effects (`trusted_schema` off), the defensive
/// flag (no writing the schema or shadow tables, whatever the SQL), and neither views nor
/// triggers may run at all. The import then reads plain tables only (see `Reader::columns`).
fn distrust_schema(conn: &Connection) -> rusqlite::Result<()> {
    for (setting, on) in [
        (DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
        (DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false),
    ] {
        conn.set_db_config(setting, on)?;
    }
    conn.pragma_update(None, "trusted_schema", false)
}

/// Characters kept as they are in a `file:` URI path; everything else is percent-encoded.
const URI_PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn read_up_to(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

struct Reader<'a> {
    conn: &'a Connection,
    path: &'a Path,
    sealer: &'a Sealer,
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
    fn sqlite_error(&self, err: rusqlite::Error) -> CompatError {
        CompatError::Sqlite {
            path: self.path.into(),
            reason: err.to_string(),
        }
    }

    /// The columns a table has, or `None` when there is no such table. A view, a virtual table
    /// or a generated column under one of the names the import reads is refused: each would run
    /// the file's SQL (or a module's code) on every read, and the Go service makes none.
    fn columns(&self, table: &str) -> Result<Option<BTreeSet<String>>, CompatError> {
        let kind = self
            .conn
            .query_row(
                "SELECT type, coalesce(sql, '') FROM sqlite_master \
                 WHERE name = ?1 COLLATE NOCASE AND type IN ('table', 'view')",
                [table],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(|err| self.sqlite_error(err))?;
        let Some((kind, sql)) = kind else {
            return Ok(None);
        };
        if kind != "table" {
            return Err(self.not_keypooler(format!(
                "{table} is a {kind}, not a table (the import reads tables only)"
            )));
        }
        let virtual_table = sql
            .trim_start()
            .get(..14)
            .is_some_and(|head| head.eq_ignore_ascii_case("CREATE VIRTUAL"));
        if virtual_table {
            return Err(self.not_keypooler(format!(
                "{table} is a virtual table, not a table (the import reads tables only)"
            )));
        }
        let mut statement = self
            .conn
            .prepare("SELECT name, hidden FROM pragma_table_xinfo(?1)")
            .map_err(|err| self.sqlite_error(err))?;
        let columns = statement
            .query_map([table], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|err| self.sqlite_error(err))?;
        if columns.iter().any(|(_, hidden)| *hidden != 0) {
            return Err(self.not_keypooler(format!(
                "{table} has a generated column (the import reads stored values only)"
            )));
        }
        let names: BTreeSet<String> = columns.into_iter().map(|(name, _)| name).collect();
        Ok((!names.is_empty()).then_some(names))
    }

    /// Runs `select` and hands each row to `each`, stopping at the first error.
    fn each_row(
        &self,
        select: &Select,
        mut each: impl FnMut(&Cells<'_, '_>) -> Result<(), CompatError>,
    ) -> Result<(), CompatError> {
        let mut statement = self
            .conn
            .prepare(&select.sql())
            .map_err(|err| self.sqlite_error(err))?;
        let mut rows = statement.query([]).map_err(|err| self.sqlite_error(err))?;
        while let Some(row) = rows.next().map_err(|err| self.sqlite_error(err))? {
            each(&Cells::new(row, select))?;
        }
        Ok(())
    }

    fn count(&self, table: &str) -> Result<u64, CompatError> {
        self.conn
            .query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|err| self.sqlite_error(err))
    }

    fn not_keypooler(&self, reason: String) -> CompatError {
        CompatError::NotKeypooler {
            path: self.path.into(),
            reason,
        }
    }

    fn read(&self, progress: &ProgressBar) -> Result<SourceContents, CompatError> {
        let (columns, generation) = self.generation()?;
        let tiers = self.read_tiers(&columns, &generation)?;
        let tier_ids: HashSet<String> = tiers.iter().map(|tier| tier.id.clone()).collect();
        let keys = self.read_keys(&columns, &generation, &tier_ids, progress)?;
        let consumers = self.read_consumers(&tier_ids)?;
        let usage_events = match self.columns("usage_events")? {
            Some(_) => self.count("usage_events")?,
            None => 0,
        };
        Ok(SourceContents {
            schema: generation.schema,
            tiers,
            keys,
            consumers,
            usage_events,
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_source_connection_trusts_nothing_in_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("go.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "CREATE TABLE t (x INTEGER);
                 CREATE VIEW v AS SELECT x FROM t;
                 CREATE TRIGGER g AFTER INSERT ON t BEGIN SELECT 1; END;",
            )
            .unwrap();
        drop(writer);
        let conn = open_read_only(&path).unwrap();
        for (setting, on) in [
            (DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
            (DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true),
            (DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false),
            (DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false),
        ] {
            assert_eq!(conn.db_config(setting).unwrap(), on, "{setting:?}");
        }
        let trusted: bool = conn
            .query_row("PRAGMA trusted_schema", [], |row| row.get(0))
            .unwrap();
        assert!(!trusted);
        let err = conn
            .query_row("SELECT count(*) FROM v", [], |row| row.get::<_, i64>(0))
            .unwrap_err();
        assert!(err.to_string().contains("view"), "{err}");
    }

    #[test]
    fn uri_paths_escape_what_sqlite_would_read_as_query_or_fragment() {
        let encoded =
            percent_encoding::utf8_percent_encode("/tmp/a b?c#d%e/ключ.db", URI_PATH).to_string();
        assert_eq!(
            encoded,
            "/tmp/a%20b%3Fc%23d%25e/%D0%BA%D0%BB%D1%8E%D1%87.db"
        );
    }
}
