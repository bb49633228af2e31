//! `keys` and `key_secrets`: every key with its value and bound secrets opened.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use indicatif::ProgressBar;

use super::super::CompatError;
use super::cells::{Cells, Select};
use super::{Columns, Generation, Reader, SourceKey};
use crate::broker::{KeyInfo, MAX_RESET_DAY, Unit, parse_usage};
use crate::store::BudgetRecord;

impl Reader<'_> {
    /// Every key, checked against `tier_ids`, with its bound secrets. `progress` advances once
    /// per key.
    pub(super) fn read_keys(
        &self,
        columns: &Columns,
        generation: &Generation,
        tier_ids: &HashSet<String>,
        progress: &ProgressBar,
    ) -> Result<Vec<SourceKey>, CompatError> {
        let value_column = generation.value_column;
        let present = &columns.keys;
        let select = Select::from("keys", &["id"])
            .column("name")
            .column(value_column)
            .column("tier_id")
            .optional("is_active", present)
            .optional("created_at", present)
            .optional("expires_at", present)
            .optional("usage_limit", present)
            .optional("usage_count", present)
            .optional("usage_window_seconds", present)
            .optional("usage_window_start", present)
            .optional("metadata_json", present)
            .optional("exhausted_until", present)
            .optional("budget_amount", present)
            .optional("budget_unit", present)
            .optional("budget_reset_day", present)
            .optional("spent", present)
            .optional("spent_period_start", present);
        progress.set_length(self.count("keys")?);
        let mut keys = Vec::new();
        let mut key_index: HashMap<String, usize> = HashMap::new();
        self.each_row(&select, |cells| {
            let id = cells.id("id")?;
            if key_index.contains_key(&id) {
                return Err(cells.fail("the id appears twice"));
            }
            let tier_id = cells.id("tier_id")?;
            if !tier_ids.contains(&tier_id) {
                return Err(cells.fail("tier_id names no tier in the file"));
            }
            let mut key = SourceKey {
                info: KeyInfo {
                    id: id.as_str().into(),
                    name: cells.name("name")?.into(),
                    tier_id: Arc::from(tier_id),
                    active: cells.flag("is_active", true)?,
                    created_at_ms: cells.opt_time("created_at")?.unwrap_or(0),
                    expires_at_ms: cells.opt_time("expires_at")?,
                },
                value: {
                    let value = cells.open(self.sealer, value_column, generation.tagged)?;
                    if value.is_empty() {
                        return Err(cells.fail(format!("{value_column} is empty")));
                    }
                    value
                },
                metadata: metadata(cells)?,
                secrets: BTreeMap::new(),
                usage_limit: None,
                usage_window_seconds: None,
                usage_count: match cells.opt_int("usage_count")? {
                    None => 0,
                    Some(n) => u64::try_from(n)
                        .map_err(|_| cells.fail("usage_count must not be negative"))?,
                },
                usage_window_start_ms: cells.opt_time("usage_window_start")?,
                exhausted_until_ms: cells.opt_time("exhausted_until")?,
                budget: None,
                spent_nanos: 0,
                spent_period_start_ms: None,
            };
            (key.usage_limit, key.usage_window_seconds) = usage_cap(cells)?;
            (key.budget, key.spent_nanos, key.spent_period_start_ms) = budget(cells)?;
            key_index.insert(id, keys.len());
            keys.push(key);
            progress.inc(1);
            Ok(())
        })?;
        if self.columns("key_secrets")?.is_some() {
            self.read_secrets(&mut keys, &key_index)?;
        }
        Ok(keys)
    }

    /// The bound secrets of `keys` (`key_index`: their positions by id).
    fn read_secrets(
        &self,
        keys: &mut [SourceKey],
        key_index: &HashMap<String, usize>,
    ) -> Result<(), CompatError> {
        let select = Select::from("key_secrets", &["key_id", "name"]).column("value");
        self.each_row(&select, |cells| {
            let key_id = cells.id("key_id")?;
            let key = key_index
                .get(&key_id)
                .map(|&i| &mut keys[i])
                .ok_or_else(|| cells.fail("key_id names no key in the file"))?;
            let name = cells.name("name")?;
            let value = cells.open(self.sealer, "value", true)?;
            if key.secrets.insert(name, value).is_some() {
                return Err(cells.fail("the key has two secrets of this name"));
            }
            Ok(())
        })
    }
}

fn metadata(cells: &Cells<'_>) -> Result<serde_json::Map<String, serde_json::Value>, CompatError> {
    match cells.opt_text("metadata_json")?.map(str::trim) {
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

/// The usage cap, held to the API's bounds. A window without a limit caps nothing in the Go
/// service either, and is dropped.
fn usage_cap(cells: &Cells<'_>) -> Result<(Option<u64>, Option<u64>), CompatError> {
    let limit = cells.opt_int("usage_limit")?.map(i128::from);
    let window = limit.and(cells.opt_int("usage_window_seconds")?.map(i128::from));
    let (limit, window) = parse_usage(limit, window).map_err(|err| cells.fail(err.0))?;
    Ok((limit.map(u64::from), window.map(u64::from)))
}

/// The spend budget, what is spent of it and when that period started (`spent_period_start`):
/// as in the Go service, `spent` counts only while that is the current period's start, which
/// the server judges when it loads the key. Without a period start nothing counts as spent.
fn budget(cells: &Cells<'_>) -> Result<(Option<BudgetRecord>, u64, Option<i64>), CompatError> {
    let Some(amount_nanos) = cells.opt_nanos("budget_amount", false)? else {
        return Ok((None, 0, None));
    };
    if amount_nanos == 0 {
        return Err(cells.fail("budget_amount must be more than 0"));
    }
    let unit = match cells.opt_text("budget_unit")? {
        Some(unit) => Unit::parse("budget_unit", unit).map_err(|err| cells.fail(err.0))?,
        None => return Err(cells.fail("budget_unit is missing (the key has a budget_amount)")),
    };
    let reset_day = match cells.opt_int("budget_reset_day")? {
        None => None,
        Some(day) => Some(
            u8::try_from(day)
                .ok()
                .filter(|day| (1..=MAX_RESET_DAY).contains(day))
                .ok_or_else(|| {
                    cells.fail(format!(
                        "budget_reset_day must be from 1 to {MAX_RESET_DAY}"
                    ))
                })?,
        ),
    };
    // Rounded up: never less spent than the Go service counted.
    let spent = cells.opt_nanos("spent", true)?.unwrap_or(0);
    let period_start = cells.opt_time("spent_period_start")?;
    let budget = BudgetRecord {
        amount_nanos,
        unit: unit.as_str().to_owned(),
        reset_day,
    };
    let spent = if period_start.is_some() { spent } else { 0 };
    Ok((Some(budget), spent, period_start))
}
