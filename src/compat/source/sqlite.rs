//! The Go service's SQLite file, opened read-only and trusted in nothing.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use rusqlite::config::DbConfig;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};

use super::cells::{Cell, Cells, Select, SourceRow};
use super::{Reader, SourceContents, Tables};
use crate::compat::CompatError;
use crate::crypto::Sealer;
use crate::store::SQLITE_MAGIC;

/// Byte 18 of the header (file format write version): 2 means WAL journal mode.
const WAL_FORMAT: u8 = 2;

/// Opens `path` without ever writing to it, reads and validates every row. Values are opened
/// with `sealer` (the source file's key). `progress` advances once per key.
pub fn read_source(
    path: &Path,
    sealer: &Sealer,
    progress: &ProgressBar,
) -> Result<SourceContents, CompatError> {
    let conn = open_read_only(path)?;
    let tables = SqliteTables { conn: &conn, path };
    Reader::new(&tables, sealer).read(progress)
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

struct SqliteTables<'a> {
    conn: &'a Connection,
    path: &'a Path,
}

impl SqliteTables<'_> {
    fn sqlite_error(&self, err: rusqlite::Error) -> CompatError {
        CompatError::Sqlite {
            path: self.path.into(),
            reason: err.to_string(),
        }
    }
}

impl Tables for SqliteTables<'_> {
    fn not_keypooler(&self, reason: String) -> CompatError {
        CompatError::NotKeypooler {
            path: self.path.into(),
            reason,
        }
    }

    /// A view, a virtual table or a generated column under one of the names the import reads
    /// is refused: each would run the file's SQL (or a module's code) on every read, and the Go
    /// service makes none.
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

    /// Rows in rowid order.
    fn each_row(
        &self,
        select: &Select,
        each: &mut dyn FnMut(&Cells<'_>) -> Result<(), CompatError>,
    ) -> Result<(), CompatError> {
        let mut statement = self
            .conn
            .prepare(&sql(select))
            .map_err(|err| self.sqlite_error(err))?;
        let mut rows = statement.query([]).map_err(|err| self.sqlite_error(err))?;
        while let Some(row) = rows.next().map_err(|err| self.sqlite_error(err))? {
            each(&Cells::new(&SqliteRow(row), select))?;
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
}

/// `select` in SQLite's SQL, each column named as read (`x AS x`), with the rowid for errors.
fn sql(select: &Select) -> String {
    let mut columns = vec!["rowid AS rowid".to_owned()];
    columns.extend(select.columns.iter().map(|(name, present)| {
        if *present {
            format!("{name} AS {name}")
        } else {
            format!("NULL AS {name}")
        }
    }));
    format!(
        "SELECT {} FROM {} ORDER BY rowid",
        columns.join(", "),
        select.table
    )
}

struct SqliteRow<'a, 'r>(&'a rusqlite::Row<'r>);

impl SourceRow for SqliteRow<'_, '_> {
    fn cell(&self, column: &str) -> Result<Cell<'_>, String> {
        Ok(
            match self.0.get_ref(column).map_err(|err| err.to_string())? {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(n) => Cell::Integer(n),
                ValueRef::Real(x) => Cell::Real(x),
                ValueRef::Text(bytes) | ValueRef::Blob(bytes) => Cell::Text(bytes),
            },
        )
    }

    fn position(&self) -> String {
        let rowid = self
            .0
            .get_ref("rowid")
            .ok()
            .and_then(|v| v.as_i64().ok())
            .unwrap_or(0);
        format!("rowid {rowid}")
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
    fn a_select_names_every_column_it_reads() {
        let present = ["description".to_string()].into();
        let select = Select::from("tiers", &["id"])
            .column("name")
            .optional("description", &present)
            .optional("created_at", &present);
        assert_eq!(
            sql(&select),
            "SELECT rowid AS rowid, id AS id, name AS name, description AS description, NULL AS created_at FROM tiers ORDER BY rowid"
        );
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
