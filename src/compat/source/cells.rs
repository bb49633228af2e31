//! One source row being read: its cells found by column name, each checked and converted, and
//! every error naming the table and the row.

use rusqlite::types::ValueRef;
use zeroize::Zeroizing;

use super::super::{CompatError, time};
use crate::broker::{is_hidden, parse_name};
use crate::crypto::{CryptoError, Sealer};

/// The longest id accepted (the Go service writes UUIDs: 36 characters).
pub(super) const MAX_ID_CHARS: usize = 128;

/// One `SELECT` of a source table, built from the columns it reads. Each column is named in the
/// query (`column AS column`), and a row's cell is found by that name, the one its errors use:
/// there is no position to drift from the query.
pub(super) struct Select {
    pub(super) table: &'static str,
    /// The columns that name a row in errors (else its rowid does).
    pub(super) id_columns: &'static [&'static str],
    columns: Vec<String>,
}

impl Select {
    pub(super) fn from(table: &'static str, id_columns: &'static [&'static str]) -> Self {
        let mut select = Self {
            table,
            id_columns,
            columns: vec!["rowid AS rowid".into()],
        };
        for column in id_columns {
            select = select.column(column);
        }
        select
    }

    /// A column the table must have (SQLite refuses the query if it has not).
    pub(super) fn column(mut self, name: &str) -> Self {
        self.columns.push(format!("{name} AS {name}"));
        self
    }

    /// A column of a later generation: read as `NULL` when the table (its `present` columns)
    /// does not have it.
    pub(super) fn optional(
        mut self,
        name: &str,
        present: &std::collections::BTreeSet<String>,
    ) -> Self {
        if present.contains(name) {
            self.column(name)
        } else {
            self.columns.push(format!("NULL AS {name}"));
            self
        }
    }

    pub(super) fn sql(&self) -> String {
        format!(
            "SELECT {} FROM {} ORDER BY rowid",
            self.columns.join(", "),
            self.table
        )
    }
}

/// One row being read, named in every error by its id (or rowid, when the id is unusable).
pub(super) struct Cells<'a, 'r> {
    row: &'a rusqlite::Row<'r>,
    table: &'static str,
    label: String,
}

impl<'a, 'r> Cells<'a, 'r> {
    pub(super) fn new(row: &'a rusqlite::Row<'r>, select: &Select) -> Self {
        Self {
            row,
            table: select.table,
            label: label(row, select.id_columns),
        }
    }
}

impl Cells<'_, '_> {
    pub(super) fn fail(&self, reason: impl Into<String>) -> CompatError {
        CompatError::row(self.table, self.label.clone(), reason)
    }

    fn value(&self, column: &str) -> Result<ValueRef<'_>, CompatError> {
        self.row
            .get_ref(column)
            .map_err(|err| self.fail(err.to_string()))
    }

    pub(super) fn opt_text(&self, column: &str) -> Result<Option<&str>, CompatError> {
        match self.value(column)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(bytes) | ValueRef::Blob(bytes) => std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| self.fail(format!("{column} is not UTF-8 text"))),
            ValueRef::Integer(_) | ValueRef::Real(_) => {
                Err(self.fail(format!("{column} is a number, not text")))
            }
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
            ValueRef::Null => Ok(None),
            ValueRef::Integer(n) => Ok(Some(n)),
            _ => Err(self.fail(format!("{column} is not an integer"))),
        }
    }

    pub(super) fn opt_time(&self, column: &str) -> Result<Option<i64>, CompatError> {
        match self.opt_text(column)? {
            None => Ok(None),
            Some(text) => time::parse_timestamp_ms(text).map(Some).ok_or_else(|| {
                self.fail(format!(
                    "{column} is not a timestamp (RFC 3339 or YYYY-MM-DD HH:MM:SS)"
                ))
            }),
        }
    }

    /// A flag stored as an integer (0 false, anything else true); NULL takes the default.
    pub(super) fn flag(&self, column: &str, default: bool) -> Result<bool, CompatError> {
        Ok(self.opt_int(column)?.map_or(default, |n| n != 0))
    }

    /// A count or limit that must be a positive integer when set.
    pub(super) fn opt_positive(&self, column: &str) -> Result<Option<u64>, CompatError> {
        match self.opt_int(column)? {
            None => Ok(None),
            Some(n) => u64::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                .map(Some)
                .ok_or_else(|| self.fail(format!("{column} must be a positive integer"))),
        }
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

/// How a row is named in errors: by its id columns when they are printable, else by rowid.
fn label(row: &rusqlite::Row<'_>, id_columns: &[&str]) -> String {
    let rowid = row
        .get_ref("rowid")
        .ok()
        .and_then(|v| v.as_i64().ok())
        .unwrap_or(0);
    let mut parts = Vec::with_capacity(id_columns.len());
    for &column in id_columns {
        match row.get_ref(column) {
            Ok(ValueRef::Text(bytes)) => match std::str::from_utf8(bytes) {
                Ok(text) if usable_id(text) => parts.push(text),
                _ => return format!("at rowid {rowid}"),
            },
            _ => return format!("at rowid {rowid}"),
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

    #[test]
    fn a_select_names_every_column_it_reads() {
        let present = ["description".to_string()].into();
        let select = Select::from("tiers", &["id"])
            .column("name")
            .optional("description", &present)
            .optional("created_at", &present);
        assert_eq!(
            select.sql(),
            "SELECT rowid AS rowid, id AS id, name AS name, description AS description, NULL AS created_at FROM tiers ORDER BY rowid"
        );
    }
}
