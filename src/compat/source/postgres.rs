//! The Go service's PostgreSQL database, read in one read-only transaction: one consistent
//! snapshot even while the Go service writes, and nothing the import runs can write.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use indicatif::ProgressBar;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::Type;
use postgres::{IsolationLevel, Transaction};
use time::{OffsetDateTime, PrimitiveDateTime};

use super::cells::{Cell, Cells, Select, SourceRow};
use super::{Reader, SourceContents, Tables};
use crate::compat::{CompatError, PostgresUrl};
use crate::crypto::Sealer;

/// Reads and validates every row of the database at `url`, without writing to it. Values are
/// opened with `sealer` (the Go service's ENCRYPTION_KEY). `progress` advances once per key.
pub fn read_postgres(
    url: &PostgresUrl,
    sealer: &Sealer,
    progress: &ProgressBar,
) -> Result<SourceContents, CompatError> {
    let mut client = url.connect()?;
    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(|err| url.error("cannot start a read-only transaction", &err))?;
    let tables = PostgresTables {
        txn: RefCell::new(txn),
        url,
        types: RefCell::new(HashMap::new()),
    };
    // The transaction only read: dropping it rolls it back.
    Reader::new(&tables, sealer).read(progress)
}

struct PostgresTables<'a> {
    txn: RefCell<Transaction<'a>>,
    url: &'a PostgresUrl,
    /// Each table's columns with their types, as `columns` found them.
    types: RefCell<HashMap<String, HashMap<String, String>>>,
}

impl Tables for PostgresTables<'_> {
    /// A view (or anything but a plain or partitioned table) is refused, as in a SQLite file.
    fn columns(&self, table: &str) -> Result<Option<BTreeSet<String>>, CompatError> {
        let rows = self
            .txn
            .borrow_mut()
            .query(
                "SELECT c.relkind::text, a.attname::text, format_type(a.atttypid, NULL) \
                 FROM pg_class c \
                 LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 WHERE c.oid = to_regclass($1)",
                &[&format!("\"{table}\"")],
            )
            .map_err(|err| self.url.error("cannot read the catalog", &err))?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let kind: String = first.get(0);
        if !matches!(kind.as_str(), "r" | "p") {
            return Err(self.not_keypooler(format!(
                "{table} is not a table (the import reads tables only)"
            )));
        }
        let types: HashMap<String, String> = rows
            .iter()
            .filter_map(|row| Some((row.get::<_, Option<String>>(1)?, row.get(2))))
            .collect();
        let names: BTreeSet<String> = types.keys().cloned().collect();
        self.types.borrow_mut().insert(table.to_owned(), types);
        Ok((!names.is_empty()).then_some(names))
    }

    /// Rows in the order of their id columns.
    fn each_row(
        &self,
        select: &Select,
        each: &mut dyn FnMut(&Cells<'_>) -> Result<(), CompatError>,
    ) -> Result<(), CompatError> {
        let sql = {
            let types = self.types.borrow();
            sql(select, types.get(select.table))
        };
        let doing = format!("cannot read {}", select.table);
        let mut txn = self.txn.borrow_mut();
        let mut rows = txn
            .query_raw(sql.as_str(), std::iter::empty::<i32>())
            .map_err(|err| self.url.error(&doing, &err))?;
        let mut number = 0;
        while let Some(row) = rows.next().map_err(|err| self.url.error(&doing, &err))? {
            number += 1;
            each(&Cells::new(&PostgresRow { row: &row, number }, select))?;
        }
        Ok(())
    }

    fn count(&self, table: &str) -> Result<u64, CompatError> {
        let row = self
            .txn
            .borrow_mut()
            .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
            .map_err(|err| self.url.error(&format!("cannot count {table}"), &err))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    fn not_keypooler(&self, reason: String) -> CompatError {
        self.url.not_keypooler(reason)
    }
}

/// `select` in PostgreSQL's SQL. A column of a type the rows are read in (booleans, integers,
/// text, timestamps) comes as it is; a number of another type as its exact decimal text
/// (`DOUBLE PRECISION` through `NUMERIC`, which keeps its 15 significant digits and drops
/// binary noise: 0.1 + 0.2 reads 0.3); anything else as text, which the reader then checks.
fn sql(select: &Select, types: Option<&HashMap<String, String>>) -> String {
    let columns: Vec<String> = select
        .columns
        .iter()
        .map(|(name, present)| {
            let kind = types.and_then(|types| types.get(name)).map(String::as_str);
            match (present, kind) {
                (false, _) | (true, None) => format!("NULL::text AS \"{name}\""),
                (
                    true,
                    Some(
                        "boolean"
                        | "smallint"
                        | "integer"
                        | "bigint"
                        | "text"
                        | "character varying"
                        | "timestamp with time zone"
                        | "timestamp without time zone",
                    ),
                ) => format!("\"{name}\""),
                (true, Some("real" | "double precision" | "numeric")) => {
                    format!("\"{name}\"::numeric::text AS \"{name}\"")
                }
                (true, Some(_)) => format!("\"{name}\"::text AS \"{name}\""),
            }
        })
        .collect();
    let order: Vec<String> = select
        .id_columns
        .iter()
        .map(|column| format!("\"{column}\""))
        .collect();
    format!(
        "SELECT {} FROM \"{}\" ORDER BY {}",
        columns.join(", "),
        select.table,
        order.join(", ")
    )
}

struct PostgresRow<'a> {
    row: &'a postgres::Row,
    /// 1 for the first row read.
    number: u64,
}

impl SourceRow for PostgresRow<'_> {
    fn cell(&self, column: &str) -> Result<Cell<'_>, String> {
        let index = self
            .row
            .columns()
            .iter()
            .position(|c| c.name() == column)
            .ok_or_else(|| "not read".to_owned())?;
        let kind = self.row.columns()[index].type_().clone();
        let unreadable = |err: postgres::Error| format!("unreadable ({err})");
        let cell = match kind {
            Type::BOOL => self
                .row
                .try_get::<_, Option<bool>>(index)
                .map_err(unreadable)?
                .map(Cell::Bool),
            Type::INT2 => self
                .row
                .try_get::<_, Option<i16>>(index)
                .map_err(unreadable)?
                .map(|n| Cell::Integer(n.into())),
            Type::INT4 => self
                .row
                .try_get::<_, Option<i32>>(index)
                .map_err(unreadable)?
                .map(|n| Cell::Integer(n.into())),
            Type::INT8 => self
                .row
                .try_get::<_, Option<i64>>(index)
                .map_err(unreadable)?
                .map(Cell::Integer),
            Type::TIMESTAMPTZ => self
                .row
                .try_get::<_, Option<OffsetDateTime>>(index)
                .map_err(unreadable)?
                .map(|at| Cell::Time(unix_ms(at))),
            Type::TIMESTAMP => self
                .row
                .try_get::<_, Option<PrimitiveDateTime>>(index)
                .map_err(unreadable)?
                .map(|at| Cell::Time(unix_ms(at.assume_utc()))),
            Type::TEXT | Type::VARCHAR => self
                .row
                .try_get::<_, Option<&str>>(index)
                .map_err(unreadable)?
                .map(|text| Cell::Text(text.as_bytes())),
            other => {
                return Err(format!(
                    "has the type {other}, which the import does not read"
                ));
            }
        };
        Ok(cell.unwrap_or(Cell::Null))
    }

    fn position(&self) -> String {
        format!("row {} (by id)", self.number)
    }
}

fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
