//! One source row being read: its cells found by column name, each checked and converted, and
//! every error naming the table and the row.

use std::collections::BTreeSet;

use zeroize::Zeroizing;

use super::super::{CompatError, time};
use crate::broker::{is_hidden, parse_name, parse_nanos};
use crate::crypto::{CryptoError, Sealer};

/// The longest id accepted (the Go service writes UUIDs: 36 characters).
pub(super) const MAX_ID_CHARS: usize = 128;

/// One cell as the source's driver hands it over.
#[derive(Clone, Copy, Debug)]
pub(super) enum Cell<'a> {
    Null,
    Integer(i64),
    /// A floating-point number (SQLite's REAL; PostgreSQL's arrive as decimal text).
    Real(f64),
    /// Text, or bytes that should be text.
    Text(&'a [u8]),
    /// PostgreSQL's boolean.
    Bool(bool),
    /// PostgreSQL's timestamp, in unix milliseconds.
    Time(i64),
}

/// One row of a source, whichever database it comes from.
pub(super) trait SourceRow {
    /// The cell of the column named `column` in the `Select` the row was read with; the error
    /// says why the driver could not hand it over, never its content.
    fn cell(&self, column: &str) -> Result<Cell<'_>, String>;
    /// Where the row is, for errors about a row whose id is unusable (`at rowid 4`).
    fn position(&self) -> String;
}

/// One `SELECT` of a source table: the columns it reads, each by name. A row's cell is found by
/// that name, the one its errors use: there is no position to drift from the query. Each source
/// writes the query in its own SQL.
pub(super) struct Select {
    pub(super) table: &'static str,
    /// The columns that name a row in errors (else its position does).
    pub(super) id_columns: &'static [&'static str],
    /// Each column read, and whether the table has it (one it has not reads as NULL).
    pub(super) columns: Vec<(String, bool)>,
}

impl Select {
    pub(super) fn from(table: &'static str, id_columns: &'static [&'static str]) -> Self {
        let mut select = Self {
            table,
            id_columns,
            columns: Vec::new(),
        };
        for column in id_columns {
            select = select.column(column);
        }
        select
    }

    /// A column the table must have (the source refuses the query if it has not).
    pub(super) fn column(mut self, name: &str) -> Self {
        self.columns.push((name.to_owned(), true));
        self
    }

    /// A column of a later generation: read as `NULL` when the table (its `present` columns)
    /// does not have it.
    pub(super) fn optional(mut self, name: &str, present: &BTreeSet<String>) -> Self {
        self.columns.push((name.to_owned(), present.contains(name)));
        self
    }
}

/// One row being read, named in every error by its id (or position, when the id is unusable).
pub(super) struct Cells<'a> {
    row: &'a dyn SourceRow,
    table: &'static str,
    label: String,
}

impl<'a> Cells<'a> {
    pub(super) fn new(row: &'a dyn SourceRow, select: &Select) -> Self {
        Self {
            row,
            table: select.table,
            label: label(row, select.id_columns),
        }
    }
}

impl Cells<'_> {
    pub(super) fn fail(&self, reason: impl Into<String>) -> CompatError {
        CompatError::row(self.table, self.label.clone(), reason)
    }

    fn value(&self, column: &str) -> Result<Cell<'_>, CompatError> {
        self.row
            .cell(column)
            .map_err(|reason| self.fail(format!("{column}: {reason}")))
    }

    pub(super) fn opt_text(&self, column: &str) -> Result<Option<&str>, CompatError> {
        match self.value(column)? {
            Cell::Null => Ok(None),
            Cell::Text(bytes) => std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| self.fail(format!("{column} is not UTF-8 text"))),
            Cell::Integer(_) | Cell::Real(_) => {
                Err(self.fail(format!("{column} is a number, not text")))
            }
            Cell::Bool(_) => Err(self.fail(format!("{column} is a boolean, not text"))),
            Cell::Time(_) => Err(self.fail(format!("{column} is a timestamp, not text"))),
        }
    }

    /// A tier's or consumer's description: empty when NULL.
    pub(super) fn description(&self) -> Result<String, CompatError> {
        Ok(self.opt_text("description")?.unwrap_or_default().to_owned())
    }

    pub(super) fn text(&self, column: &str) -> Result<&str, CompatError> {
        self.opt_text(column)?
            .ok_or_else(|| self.fail(format!("{column} is missing")))
    }

    pub(super) fn opt_int(&self, column: &str) -> Result<Option<i64>, CompatError> {
        match self.value(column)? {
            Cell::Null => Ok(None),
            Cell::Integer(n) => Ok(Some(n)),
            _ => Err(self.fail(format!("{column} is not an integer"))),
        }
    }

    /// A timestamp: the source's own, or text in one of the forms [`time::parse_timestamp_ms`]
    /// reads.
    pub(super) fn opt_time(&self, column: &str) -> Result<Option<i64>, CompatError> {
        if let Cell::Time(ms) = self.value(column)? {
            return Ok(Some(ms));
        }
        match self.opt_text(column)? {
            None => Ok(None),
            Some(text) => time::parse_timestamp_ms(text).map(Some).ok_or_else(|| {
                self.fail(format!(
                    "{column} is not a timestamp (RFC 3339 or YYYY-MM-DD HH:MM:SS)"
                ))
            }),
        }
    }

    /// A flag: a boolean, or an integer (0 false, anything else true); NULL takes the default.
    pub(super) fn flag(&self, column: &str, default: bool) -> Result<bool, CompatError> {
        match self.value(column)? {
            Cell::Bool(flag) => Ok(flag),
            _ => Ok(self.opt_int(column)?.map_or(default, |n| n != 0)),
        }
    }

    /// An exact decimal in billionths (`12.5` is 12,500,000,000), from decimal text (how
    /// PostgreSQL's numbers arrive), an integer, or SQLite's REAL by its shortest decimal form,
    /// read by JSON's number grammar.
    /// Finer than a billionth is refused, or rounded up with `round_up`. Never negative.
    pub(super) fn opt_nanos(
        &self,
        column: &str,
        round_up: bool,
    ) -> Result<Option<u64>, CompatError> {
        let text = match self.value(column)? {
            Cell::Null => return Ok(None),
            Cell::Integer(n) => n.to_string(),
            Cell::Real(x) => x.to_string(),
            _ => self.text(column)?.to_owned(),
        };
        parse_nanos(text.trim(), round_up).map(Some).ok_or_else(|| {
            self.fail(format!(
                "{column} must be a decimal number from 0 with at most 9 decimal places"
            ))
        })
    }

    pub(super) fn name(&self, column: &str) -> Result<String, CompatError> {
        parse_name(column, self.text(column)?).map_err(|err| self.fail(err.0))
    }

    /// An id, kept exactly as it is: no surrounding spaces, no control or format characters.
    pub(super) fn id(&self, column: &str) -> Result<String, CompatError> {
        let text = self.text(column)?;
        usable_id(text)
            .then(|| text.to_owned())
            .ok_or_else(|| {
                self.fail(format!(
                    "{column} must be 1 to {MAX_ID_CHARS} characters, without spaces around it or control or format characters"
                ))
            })
    }

    /// A value sealed by the Go service, opened with the source file's key: `tagged` for the
    /// later schema's `enc:gcm:` values.
    pub(super) fn open(
        &self,
        sealer: &Sealer,
        column: &str,
        tagged: bool,
    ) -> Result<Zeroizing<String>, CompatError> {
        let stored = self.text(column)?;
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

pub(super) fn usable_id(text: &str) -> bool {
    !text.is_empty()
        && text.chars().count() <= MAX_ID_CHARS
        && text.trim() == text
        && !text.chars().any(is_hidden)
}

/// How a row is named in errors: by its id columns when they are printable, else by position.
fn label(row: &dyn SourceRow, id_columns: &[&str]) -> String {
    let mut parts = Vec::with_capacity(id_columns.len());
    for &column in id_columns {
        match row.cell(column) {
            Ok(Cell::Text(bytes)) => match std::str::from_utf8(bytes) {
                Ok(text) if usable_id(text) => parts.push(text),
                _ => return format!("at {}", row.position()),
            },
            _ => return format!("at {}", row.position()),
        }
    }
    parts.join("/")
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
}
