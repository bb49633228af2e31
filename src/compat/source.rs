//! Reading the Go service's SQLite file: open it read-only, detect its generation from the
//! columns, validate every row and open every sealed value. Nothing here writes anywhere.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::ProgressBar;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use zeroize::Zeroizing;

use super::{CompatError, Schema, time};
use crate::broker::{DEFAULT_WINDOW_SECONDS, KeyInfo, parse_limit, parse_name};
use crate::crypto::{CryptoError, Sealer};
use crate::store::{ConsumerRecord, Hex, LimitRecord, TierRecord};

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Byte 18 of the header (file format write version): 2 means WAL journal mode.
const WAL_FORMAT: u8 = 2;
/// The longest id accepted (the Go service writes UUIDs: 36 characters).
const MAX_ID_CHARS: usize = 128;

/// Everything read from a source file, validated; values and secrets are plaintext in zeroizing
/// buffers.
#[derive(Debug)]
pub struct Source {
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
pub fn read(path: &Path, sealer: &Sealer, progress: &ProgressBar) -> Result<Source, CompatError> {
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

/// The columns a table has, or `None` when the table does not exist.
type Columns = Option<BTreeSet<String>>;

/// One row being read, named in every error by its id (or rowid, when the id is unusable).
struct Cells<'a, 'r> {
    row: &'a rusqlite::Row<'r>,
    table: &'static str,
    label: String,
}

impl Cells<'_, '_> {
    fn fail(&self, reason: impl Into<String>) -> CompatError {
        CompatError::row(self.table, self.label.clone(), reason)
    }

    fn value(&self, index: usize) -> Result<ValueRef<'_>, CompatError> {
        self.row
            .get_ref(index)
            .map_err(|err| self.fail(err.to_string()))
    }

    fn opt_text(&self, index: usize, column: &str) -> Result<Option<&str>, CompatError> {
        match self.value(index)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(bytes) | ValueRef::Blob(bytes) => std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| self.fail(format!("{column} is not UTF-8 text"))),
            ValueRef::Integer(_) | ValueRef::Real(_) => {
                Err(self.fail(format!("{column} is a number, not text")))
            }
        }
    }

    fn text(&self, index: usize, column: &str) -> Result<&str, CompatError> {
        self.opt_text(index, column)?
            .ok_or_else(|| self.fail(format!("{column} is missing")))
    }

    fn opt_int(&self, index: usize, column: &str) -> Result<Option<i64>, CompatError> {
        match self.value(index)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(n) => Ok(Some(n)),
            _ => Err(self.fail(format!("{column} is not an integer"))),
        }
    }

    fn opt_time(&self, index: usize, column: &str) -> Result<Option<i64>, CompatError> {
        match self.opt_text(index, column)? {
            None => Ok(None),
            Some(text) => time::parse_ms(text).map(Some).ok_or_else(|| {
                self.fail(format!(
                    "{column} is not a timestamp (RFC 3339 or YYYY-MM-DD HH:MM:SS)"
                ))
            }),
        }
    }

    /// A flag stored as an integer (0 false, anything else true); NULL takes the default.
    fn flag(&self, index: usize, column: &str, default: bool) -> Result<bool, CompatError> {
        Ok(self.opt_int(index, column)?.map_or(default, |n| n != 0))
    }

    /// A count or limit that must be a positive integer when set.
    fn opt_positive(&self, index: usize, column: &str) -> Result<Option<u64>, CompatError> {
        match self.opt_int(index, column)? {
            None => Ok(None),
            Some(n) => u64::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                .map(Some)
                .ok_or_else(|| self.fail(format!("{column} must be a positive integer"))),
        }
    }

    fn name(&self, index: usize, column: &str) -> Result<String, CompatError> {
        parse_name(column, self.text(index, column)?).map_err(|err| self.fail(err.0))
    }

    /// An id, kept exactly as it is: no surrounding spaces, no control characters.
    fn id(&self, index: usize, column: &str) -> Result<String, CompatError> {
        let text = self.text(index, column)?;
        usable_id(text)
            .then(|| text.to_owned())
            .ok_or_else(|| {
                self.fail(format!(
                    "{column} must be 1 to {MAX_ID_CHARS} characters, without spaces around it or control characters"
                ))
            })
    }

    fn open(
        &self,
        sealer: &Sealer,
        index: usize,
        column: &str,
        tagged: bool,
    ) -> Result<Zeroizing<String>, CompatError> {
        let stored = self.text(index, column)?;
        let opened = if tagged {
            sealer.open_go_tagged(stored)
        } else {
            sealer.open_go(stored)
        };
        opened.map_err(|err| {
            let hint = match err {
                CryptoError::Open => " (is the source file's key ENCRYPTION_KEY, or does it need --encryption-key-from?)",
                _ => "",
            };
            self.fail(format!("{column}: {err}{hint}"))
        })
    }
}

fn usable_id(text: &str) -> bool {
    !text.is_empty()
        && text.chars().count() <= MAX_ID_CHARS
        && text.trim() == text
        && !text.chars().any(char::is_control)
}

/// How a row is named in errors: by its id columns when they are printable, else by rowid.
fn label(row: &rusqlite::Row<'_>, id_columns: &[usize]) -> String {
    let rowid = row
        .get_ref(0)
        .ok()
        .and_then(|v| v.as_i64().ok())
        .unwrap_or(0);
    let mut parts = Vec::with_capacity(id_columns.len());
    for &index in id_columns {
        match row.get_ref(index) {
            Ok(ValueRef::Text(bytes)) => match std::str::from_utf8(bytes) {
                Ok(text) if usable_id(text) => parts.push(text),
                _ => return format!("at rowid {rowid}"),
            },
            _ => return format!("at rowid {rowid}"),
        }
    }
    parts.join("/")
}

impl Reader<'_> {
    fn sqlite_error(&self, err: rusqlite::Error) -> CompatError {
        CompatError::Sqlite {
            path: self.path.into(),
            reason: err.to_string(),
        }
    }

    fn columns(&self, table: &str) -> Result<Columns, CompatError> {
        let mut statement = self
            .conn
            .prepare("SELECT name FROM pragma_table_info(?1)")
            .map_err(|err| self.sqlite_error(err))?;
        let names = statement
            .query_map([table], |row| row.get::<_, String>(0))
            .and_then(Iterator::collect::<Result<BTreeSet<_>, _>>)
            .map_err(|err| self.sqlite_error(err))?;
        Ok((!names.is_empty()).then_some(names))
    }

    /// Runs `sql` and hands each row to `each`, stopping at the first error.
    fn each_row(
        &self,
        sql: &str,
        mut each: impl FnMut(&rusqlite::Row<'_>) -> Result<(), CompatError>,
    ) -> Result<(), CompatError> {
        let mut statement = self
            .conn
            .prepare(sql)
            .map_err(|err| self.sqlite_error(err))?;
        let mut rows = statement.query([]).map_err(|err| self.sqlite_error(err))?;
        while let Some(row) = rows.next().map_err(|err| self.sqlite_error(err))? {
            each(row)?;
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

    fn read(&self, progress: &ProgressBar) -> Result<Source, CompatError> {
        let tier_columns = self.columns("tiers")?;
        let feature_columns = self.columns("tier_features")?;
        let key_columns = self.columns("keys")?;
        let (Some(tier_columns), Some(feature_columns), Some(key_columns)) =
            (tier_columns, feature_columns, key_columns)
        else {
            return Err(
                self.not_keypooler("it needs the tables tiers, tier_features and keys".into())
            );
        };
        let has = |columns: &BTreeSet<String>, name: &str| columns.contains(name);
        for (table, columns, needed) in [
            ("tiers", &tier_columns, &["id", "name"][..]),
            (
                "tier_features",
                &feature_columns,
                &["tier_id", "feature"][..],
            ),
            ("keys", &key_columns, &["id", "name", "tier_id"][..]),
        ] {
            if let Some(missing) = needed.iter().find(|c| !has(columns, c)) {
                return Err(self.not_keypooler(format!("{table} has no column {missing}")));
            }
        }
        // The generation shows in two places; each is read by its own columns, so a file from
        // a version in between reads too.
        let rate_column = if has(&feature_columns, "rate_limit") {
            "rate_limit"
        } else if has(&feature_columns, "rate_per_minute") {
            "rate_per_minute"
        } else {
            return Err(self
                .not_keypooler("tier_features has neither rate_per_minute nor rate_limit".into()));
        };
        let (value_column, tagged) = if has(&key_columns, "key_value") {
            ("key_value", true)
        } else if has(&key_columns, "key_encrypted") {
            ("key_encrypted", false)
        } else {
            return Err(self.not_keypooler("keys has neither key_encrypted nor key_value".into()));
        };
        let schema = if rate_column == "rate_per_minute" && !tagged {
            Schema::Seed
        } else {
            Schema::Latest
        };

        let mut tiers = self.read_tiers(
            or_null(&tier_columns, "description"),
            or_null(&tier_columns, "created_at"),
        )?;
        self.read_features(
            &mut tiers,
            rate_column,
            or_null(&feature_columns, "window_seconds"),
        )?;
        let tier_ids: HashSet<String> = tiers.iter().map(|tier| tier.id.clone()).collect();

        progress.set_length(self.count("keys")?);
        let key_sql = format!(
            "SELECT rowid, id, name, \"{value_column}\", tier_id, {}, {}, {}, {}, {}, {}, {}, {} FROM keys ORDER BY rowid",
            or_null(&key_columns, "is_active"),
            or_null(&key_columns, "created_at"),
            or_null(&key_columns, "expires_at"),
            or_null(&key_columns, "usage_limit"),
            or_null(&key_columns, "usage_count"),
            or_null(&key_columns, "usage_window_seconds"),
            or_null(&key_columns, "usage_window_start"),
            or_null(&key_columns, "metadata_json"),
        );
        let mut keys = Vec::new();
        let mut key_index: HashMap<String, usize> = HashMap::new();
        self.each_row(&key_sql, |row| {
            let cells = Cells {
                row,
                table: "keys",
                label: label(row, &[1]),
            };
            let id = cells.id(1, "id")?;
            if key_index.contains_key(&id) {
                return Err(cells.fail("the id appears twice"));
            }
            let tier_id = cells.id(4, "tier_id")?;
            if !tier_ids.contains(&tier_id) {
                return Err(cells.fail("tier_id names no tier in the file"));
            }
            let key = SourceKey {
                info: KeyInfo {
                    id: id.as_str().into(),
                    name: cells.name(2, "name")?.into(),
                    tier_id: Arc::from(tier_id),
                    active: cells.flag(5, "is_active", true)?,
                    created_at_ms: cells.opt_time(6, "created_at")?.unwrap_or(0),
                    expires_at_ms: cells.opt_time(7, "expires_at")?,
                },
                value: {
                    let value = cells.open(self.sealer, 3, value_column, tagged)?;
                    if value.is_empty() {
                        return Err(cells.fail(format!("{value_column} is empty")));
                    }
                    value
                },
                metadata: metadata(&cells, 12)?,
                secrets: BTreeMap::new(),
                usage_limit: cells.opt_positive(8, "usage_limit")?,
                usage_count: match cells.opt_int(9, "usage_count")? {
                    None => 0,
                    Some(n) => u64::try_from(n)
                        .map_err(|_| cells.fail("usage_count must not be negative"))?,
                },
                usage_window_seconds: cells.opt_positive(10, "usage_window_seconds")?,
                usage_window_start_ms: cells.opt_time(11, "usage_window_start")?,
            };
            key_index.insert(id, keys.len());
            keys.push(key);
            progress.inc(1);
            Ok(())
        })?;

        if self.columns("key_secrets")?.is_some() {
            self.each_row(
                "SELECT rowid, key_id, name, value FROM key_secrets ORDER BY rowid",
                |row| {
                    let cells = Cells {
                        row,
                        table: "key_secrets",
                        label: label(row, &[1, 2]),
                    };
                    let key_id = cells.id(1, "key_id")?;
                    let key = key_index
                        .get(&key_id)
                        .map(|&i| &mut keys[i])
                        .ok_or_else(|| cells.fail("key_id names no key in the file"))?;
                    let name = cells.name(2, "name")?;
                    let value = cells.open(self.sealer, 3, "value", true)?;
                    if key.secrets.insert(name, value).is_some() {
                        return Err(cells.fail("the key has two secrets of this name"));
                    }
                    Ok(())
                },
            )?;
        }

        let consumers = self.read_consumers(&tier_ids)?;
        let usage_events = match self.columns("usage_events")? {
            Some(_) => self.count("usage_events")?,
            None => 0,
        };
        Ok(Source {
            schema,
            tiers,
            keys,
            consumers,
            usage_events,
        })
    }

    fn read_tiers(
        &self,
        description: &str,
        created_at: &str,
    ) -> Result<Vec<TierRecord>, CompatError> {
        let mut tiers: Vec<TierRecord> = Vec::new();
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        let sql = format!(
            "SELECT rowid, id, name, {description}, {created_at} FROM tiers ORDER BY rowid"
        );
        self.each_row(&sql, |row| {
            let cells = Cells {
                row,
                table: "tiers",
                label: label(row, &[1]),
            };
            let tier = TierRecord {
                id: cells.id(1, "id")?,
                name: cells.name(2, "name")?,
                description: cells
                    .opt_text(3, "description")?
                    .unwrap_or_default()
                    .to_owned(),
                created_at_ms: cells.opt_time(4, "created_at")?.unwrap_or(0),
                features: BTreeMap::new(),
            };
            if !ids.insert(tier.id.clone()) {
                return Err(cells.fail("the id appears twice"));
            }
            if !names.insert(tier.name.clone()) {
                return Err(cells.fail("another tier has the same name"));
            }
            tiers.push(tier);
            Ok(())
        })?;
        Ok(tiers)
    }

    fn read_features(
        &self,
        tiers: &mut [TierRecord],
        rate_column: &str,
        window_column: &str,
    ) -> Result<(), CompatError> {
        let index: HashMap<String, usize> = tiers
            .iter()
            .enumerate()
            .map(|(i, tier)| (tier.id.clone(), i))
            .collect();
        let sql = format!(
            "SELECT rowid, tier_id, feature, \"{rate_column}\", {window_column} FROM tier_features ORDER BY rowid"
        );
        self.each_row(&sql, |row| {
            let cells = Cells {
                row,
                table: "tier_features",
                label: label(row, &[1, 2]),
            };
            let tier_id = cells.id(1, "tier_id")?;
            let tier = index
                .get(&tier_id)
                .map(|&i| &mut tiers[i])
                .ok_or_else(|| cells.fail("tier_id names no tier in the file"))?;
            let feature = cells.name(2, "feature")?;
            let rate = cells
                .opt_int(3, rate_column)?
                .ok_or_else(|| cells.fail(format!("{rate_column} is missing")))?;
            let window = cells
                .opt_int(4, "window_seconds")?
                .unwrap_or(i64::from(DEFAULT_WINDOW_SECONDS));
            let limit = parse_limit("limit", i128::from(rate), i128::from(window))
                .map_err(|err| cells.fail(err.0))?;
            let record = LimitRecord {
                rate_limit: limit.rate_limit,
                window_seconds: limit.window_seconds,
            };
            if tier.features.insert(feature, record).is_some() {
                return Err(cells.fail("the tier lists this feature twice"));
            }
            Ok(())
        })
    }

    fn read_consumers(
        &self,
        tier_ids: &HashSet<String>,
    ) -> Result<Vec<ConsumerRecord>, CompatError> {
        let Some(columns) = self.columns("consumers")? else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT rowid, id, name, token_hash, {}, {}, {} FROM consumers ORDER BY rowid",
            or_null(&columns, "description"),
            or_null(&columns, "is_active"),
            or_null(&columns, "created_at"),
        );
        let mut consumers: Vec<ConsumerRecord> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut names = BTreeSet::new();
        let mut hashes = BTreeSet::new();
        self.each_row(&sql, |row| {
            let cells = Cells {
                row,
                table: "consumers",
                label: label(row, &[1]),
            };
            let consumer = ConsumerRecord {
                id: cells.id(1, "id")?,
                name: cells.name(2, "name")?,
                description: cells
                    .opt_text(4, "description")?
                    .unwrap_or_default()
                    .to_owned(),
                token_hash: token_hash(&cells, 3)?,
                active: cells.flag(5, "is_active", true)?,
                created_at_ms: cells.opt_time(6, "created_at")?.unwrap_or(0),
                scopes: Vec::new(),
            };
            if index.contains_key(&consumer.id) {
                return Err(cells.fail("the id appears twice"));
            }
            if !names.insert(consumer.name.clone()) {
                return Err(cells.fail("another consumer has the same name"));
            }
            if !hashes.insert(consumer.token_hash.0.clone()) {
                return Err(cells.fail("another consumer has the same token_hash"));
            }
            index.insert(consumer.id.clone(), consumers.len());
            consumers.push(consumer);
            Ok(())
        })?;
        if self.columns("consumer_scopes")?.is_some() {
            self.each_row(
                "SELECT rowid, consumer_id, tier_id FROM consumer_scopes ORDER BY rowid",
                |row| {
                    let cells = Cells {
                        row,
                        table: "consumer_scopes",
                        label: label(row, &[1, 2]),
                    };
                    let consumer = index
                        .get(&cells.id(1, "consumer_id")?)
                        .map(|&i| &mut consumers[i])
                        .ok_or_else(|| cells.fail("consumer_id names no consumer in the file"))?;
                    let tier_id = cells.id(2, "tier_id")?;
                    if !tier_ids.contains(&tier_id) {
                        return Err(cells.fail("tier_id names no tier in the file"));
                    }
                    if !consumer.scopes.contains(&tier_id) {
                        consumer.scopes.push(tier_id);
                    }
                    Ok(())
                },
            )?;
        }
        Ok(consumers)
    }
}

/// The column itself when the table has it, else `NULL` (a column of a later generation).
fn or_null(columns: &BTreeSet<String>, name: &'static str) -> &'static str {
    if columns.contains(name) { name } else { "NULL" }
}

fn metadata(
    cells: &Cells<'_, '_>,
    index: usize,
) -> Result<serde_json::Map<String, serde_json::Value>, CompatError> {
    match cells.opt_text(index, "metadata_json")?.map(str::trim) {
        None | Some("") => Ok(serde_json::Map::new()),
        Some(text) => match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(serde_json::Value::Null) => Ok(serde_json::Map::new()),
            Ok(_) => Err(cells.fail("metadata_json is not a JSON object")),
            Err(err) => Err(cells.fail(format!(
                "metadata_json is not JSON (line {}, column {})",
                err.line(),
                err.column()
            ))),
        },
    }
}

/// A SHA-256 as 64 hex characters (either case).
fn token_hash(cells: &Cells<'_, '_>, index: usize) -> Result<Hex, CompatError> {
    let text = cells.text(index, "token_hash")?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut hash)
        .map_err(|_| cells.fail("token_hash is not a SHA-256 (64 hex characters)"))?;
    Ok(Hex(hash.to_vec()))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_exactly_or_refused() {
        assert!(usable_id("923ef101-b09e-4bd7-8919-42c44918b90c"));
        assert!(usable_id("ключ"));
        for bad in [
            "",
            " padded",
            "padded ",
            "new\nline",
            &"x".repeat(MAX_ID_CHARS + 1),
        ] {
            assert!(!usable_id(bad), "{bad:?}");
        }
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
