//! Spend budgets: an exact decimal amount of money (or credits) a key may spend, per month or
//! for its lifetime, and what it has spent.
//!
//! Amounts are integers of billionths of their unit ("nanos"): a per-token price of 1e-7 USD is
//! 100 nanos, and 0.1 + 0.2 is 300,000,000 nanos, exactly 0.3. They are read from a JSON
//! number's text (never through a float) and written back as a JSON number with the same
//! digits.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Serialize, Serializer};
use time::{Date, Month, OffsetDateTime};

use super::input::Invalid;

/// Billionths in one unit: amounts have at most 9 decimal places.
pub const NANOS_PER_UNIT: u64 = 1_000_000_000;

/// The last day of the month a budget may reset on: every month has it.
pub const MAX_RESET_DAY: u8 = 28;

/// What a budget counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    Usd,
    Credits,
}

impl Unit {
    pub const ALL: [Unit; 2] = [Unit::Usd, Unit::Credits];

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Usd => "usd",
            Unit::Credits => "credits",
        }
    }

    /// `usd` or `credits`; `field` names it in the error.
    pub fn parse(field: &str, text: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|unit| unit.as_str() == text)
            .ok_or_else(|| Invalid(format!("{field} must be \"usd\" or \"credits\"")))
    }
}

/// `usd` or `credits`.
impl JsonSchema for Unit {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Unit".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = Self::ALL.iter().map(|unit| unit.as_str()).collect();
        json_schema!({"type": "string", "enum": names})
    }
}

/// An amount a body gives: a JSON number greater than 0 with at most 9 decimal places, read
/// from its text (never through a float).
pub fn positive_amount_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "An exact decimal greater than 0 with at most 9 decimal places, at most 18446744073.709551615.",
    })
}

/// A key's budget: so much of a unit per month (from 00:00 UTC on `reset_day`) or, without a
/// reset day, for the key's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpendLimit {
    pub amount_nanos: u64,
    pub unit: Unit,
    /// 1 to [`MAX_RESET_DAY`]; `None`: a lifetime budget.
    pub reset_day: Option<u8>,
}

/// A key's budget with what it has spent in the period that started at `period_start_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyBudget {
    pub limit: SpendLimit,
    pub spent_nanos: u64,
    /// Unix ms at which the period `spent_nanos` belongs to started (0 for a lifetime budget).
    pub period_start_ms: i64,
}

impl KeyBudget {
    /// A budget with nothing spent yet, in the period open at wall time `unix_ms`.
    pub fn fresh(limit: SpendLimit, unix_ms: i64) -> Self {
        Self {
            limit,
            spent_nanos: 0,
            period_start_ms: period_start_ms(limit.reset_day, unix_ms),
        }
    }

    /// The same budget at wall time `unix_ms`: what was spent counts only in its own period (as
    /// in the Go service), so a later period starts from nothing.
    pub fn at(self, unix_ms: i64) -> Self {
        let start = period_start_ms(self.limit.reset_day, unix_ms);
        if start == self.period_start_ms {
            self
        } else {
            Self {
                spent_nanos: 0,
                period_start_ms: start,
                ..self
            }
        }
    }

    /// What is left, never below 0.
    pub fn remaining_nanos(&self) -> u64 {
        self.limit.amount_nanos.saturating_sub(self.spent_nanos)
    }

    /// Nothing left: the key is not served until its reset, or a larger budget.
    pub fn is_spent(&self) -> bool {
        self.spent_nanos >= self.limit.amount_nanos
    }

    /// When the period ends and `spent` starts again from 0 (unix ms); `None` for a lifetime
    /// budget.
    pub fn resets_at_ms(&self) -> Option<i64> {
        self.limit
            .reset_day
            .map(|day| next_period_start_ms(day, self.period_start_ms))
    }
}

/// Unix ms of 00:00 UTC on `day` of `year`/`month`.
fn day_start_ms(year: i32, month: Month, day: u8) -> i64 {
    Date::from_calendar_date(year, month, day)
        .map(|date| date.midnight().assume_utc().unix_timestamp() * 1_000)
        .unwrap_or(0)
}

/// Unix ms at which the budget period open at wall time `now_ms` started: 00:00 UTC on
/// `reset_day` of this month, or of last month while that day is still ahead; 0 (1970) for a
/// lifetime budget (`None`). The Go service's rule.
pub fn period_start_ms(reset_day: Option<u8>, now_ms: i64) -> i64 {
    let Some(day) = reset_day else {
        return 0;
    };
    let now = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let this_month = day_start_ms(now.year(), now.month(), day);
    if now_ms >= this_month {
        return this_month;
    }
    match now.month() {
        Month::January => day_start_ms(now.year() - 1, Month::December, day),
        month => day_start_ms(now.year(), month.previous(), day),
    }
}

/// Unix ms at which the monthly period that started at `start_ms` on `day` ends: the same day
/// of the next month.
fn next_period_start_ms(day: u8, start_ms: i64) -> i64 {
    let start = OffsetDateTime::from_unix_timestamp_nanos(i128::from(start_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    match start.month() {
        Month::December => day_start_ms(start.year() + 1, Month::January, day),
        month => day_start_ms(start.year(), month.next(), day),
    }
}

/// An amount (> 0) from the text of a JSON number, exactly, in nanos: `12.5`, `0.000000001`,
/// `1e-7`, `2E3`. More than 9 decimal places (after the exponent is applied), a negative or zero
/// amount, or one above `u64::MAX` nanos is refused, naming `field`; the text is never echoed.
pub fn parse_amount(field: &str, text: &str) -> Result<u64, Invalid> {
    let refused = || {
        Invalid(format!(
            "{field} must be a number greater than 0 with at most 9 decimal places"
        ))
    };
    let nanos = parse_nanos(text.trim(), false).ok_or_else(refused)?;
    if nanos == 0 {
        return Err(refused());
    }
    Ok(nanos)
}

/// The nanos of a non-negative decimal's text in JSON's number grammar (`12.5`, `0.1`, `1e-7`;
/// how JSON bodies, PostgreSQL's `NUMERIC` and SQLite's numbers arrive), if it fits: finer than
/// a billionth is `None`, or rounded up to the next billionth with `round_up`.
pub fn parse_nanos(text: &str, round_up: bool) -> Option<u64> {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => {
            let exponent = &text[at + 1..];
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Saturating: a huge exponent is refused below, whatever its exact value.
            let magnitude = digits.parse::<i64>().unwrap_or(i64::MAX / 2);
            let exponent = if exponent.starts_with('-') {
                -magnitude
            } else {
                magnitude
            };
            (&text[..at], exponent)
        }
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // JSON's grammar: an integer part without leading zeros, a fraction with at least one digit.
    let json_whole = whole == "0" || (whole.starts_with(|c: char| ('1'..='9').contains(&c)));
    let digits_only = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if !json_whole
        || !digits_only(whole)
        || !digits_only(fraction)
        || (mantissa.contains('.') && fraction.is_empty())
    {
        return None;
    }
    // The value is `digits` × 10^(scale), `digits` without leading or trailing zeros.
    let digits = format!("{whole}{fraction}");
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Some(0);
    }
    let kept = significant.trim_end_matches('0');
    let trailing = (significant.len() - kept.len()) as i64;
    // In nanos: × 10^9.
    let scale = exponent
        .saturating_sub(fraction.len() as i64)
        .saturating_add(trailing)
        .saturating_add(9);
    if scale < 0 {
        // `kept` ends in a digit other than 0, so something is dropped: one billionth more.
        let dropped = usize::try_from(scale.unsigned_abs()).unwrap_or(usize::MAX);
        let whole = &kept[..kept.len().saturating_sub(dropped)];
        let truncated = if whole.is_empty() {
            0
        } else {
            whole.parse::<u64>().ok()?
        };
        return round_up.then(|| truncated.checked_add(1)).flatten();
    }
    let mut nanos = kept.parse::<u64>().ok()?;
    for _ in 0..scale {
        nanos = nanos.checked_mul(10)?;
    }
    Some(nanos)
}

/// `nanos` as a decimal: `12.5`, `0.3`, `50`, `0.000000001`.
pub fn format_nanos(nanos: u64) -> String {
    let (whole, fraction) = (nanos / NANOS_PER_UNIT, nanos % NANOS_PER_UNIT);
    if fraction == 0 {
        return whole.to_string();
    }
    let fraction = format!("{fraction:09}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

/// An amount in nanos, serialized as a JSON number with its exact digits (`0.3`, never
/// `0.30000000000000004`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Amount(pub u64);

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde_json::value::RawValue::from_string(format_nanos(self.0))
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

/// An exact decimal of at most 9 decimal places, at least 0.
impl JsonSchema for Amount {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Amount".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "number",
            "minimum": 0,
            "description": "An exact decimal with at most 9 decimal places, written with its exact digits.",
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp()
            * 1_000
    }

    #[test]
    fn amounts_are_read_exactly_in_nanos() {
        for (text, nanos) in [
            ("12.5", 12_500_000_000),
            ("0.1", 100_000_000),
            ("50", 50_000_000_000),
            ("0.000000001", 1),
            ("0.300000000000000", 300_000_000),
            ("1e-7", 100),
            ("1E-9", 1),
            ("2.5e3", 2_500_000_000_000),
            ("1.5E+2", 150_000_000_000),
            ("1000e-12", 1),
            ("12345678.123456789", 12_345_678_123_456_789),
            ("18446744073.709551615", u64::MAX),
        ] {
            assert_eq!(parse_amount("amount", text), Ok(nanos), "{text}");
        }
        for bad in [
            "0",
            "0.0",
            "0.0000000001",
            "1.0000000001",
            "1e-10",
            "-1",
            "+1",
            "01",
            ".5",
            "3.",
            "1e",
            "1e+",
            "NaN",
            "\"1\"",
            "null",
            "{}",
            "18446744073.709551616",
            "1e400",
            "1e-99999999999999999999999",
        ] {
            let err = parse_amount("budget.amount", bad).unwrap_err().0;
            assert_eq!(
                err, "budget.amount must be a number greater than 0 with at most 9 decimal places",
                "{bad}"
            );
        }
    }

    #[test]
    fn amounts_are_written_with_their_exact_digits() {
        for (nanos, text) in [
            (300_000_000, "0.3"),
            (12_500_000_000, "12.5"),
            (50_000_000_000, "50"),
            (1, "0.000000001"),
            (0, "0"),
            (u64::MAX, "18446744073.709551615"),
        ] {
            assert_eq!(format_nanos(nanos), text);
            assert_eq!(serde_json::to_string(&Amount(nanos)).unwrap(), text);
        }
        let sum = parse_amount("a", "0.1").unwrap() + parse_amount("a", "0.2").unwrap();
        assert_eq!(parse_nanos("0.0000000001", true), Some(1));
        assert_eq!(parse_nanos("1.0000000010", false), Some(1_000_000_001));
        assert_eq!(parse_nanos("1.2345678901", true), Some(1_234_567_891));
        assert_eq!(parse_nanos("1e-30", true), Some(1));
        assert_eq!(parse_nanos("0", false), Some(0));
        assert_eq!(parse_nanos("18446744073.7095516151", true), None);
        assert_eq!(serde_json::to_string(&Amount(sum)).unwrap(), "0.3");
    }

    #[test]
    fn periods_start_on_the_reset_day_of_this_month_or_the_last() {
        let cases = [
            (Some(1), "2026-03-15T10:00:00Z", "2026-03-01T00:00:00Z"),
            (Some(15), "2026-03-15T00:00:00Z", "2026-03-15T00:00:00Z"),
            (Some(15), "2026-03-14T23:59:59Z", "2026-02-15T00:00:00Z"),
            (Some(28), "2026-02-28T00:00:00Z", "2026-02-28T00:00:00Z"),
            (Some(28), "2026-02-27T23:59:59Z", "2026-01-28T00:00:00Z"),
            (Some(10), "2026-01-05T00:00:00Z", "2025-12-10T00:00:00Z"),
        ];
        for (day, now, start) in cases {
            assert_eq!(period_start_ms(day, at(now)), at(start), "{day:?} {now}");
        }
        assert_eq!(period_start_ms(None, at("2026-03-15T10:00:00Z")), 0);
    }

    #[test]
    fn a_spent_budget_resets_at_its_next_period() {
        let limit = SpendLimit {
            amount_nanos: 10,
            unit: Unit::Usd,
            reset_day: Some(28),
        };
        let budget = KeyBudget {
            spent_nanos: 10,
            ..KeyBudget::fresh(limit, at("2026-02-01T12:00:00Z"))
        };
        assert!(budget.is_spent());
        assert_eq!(budget.remaining_nanos(), 0);
        assert_eq!(budget.resets_at_ms(), Some(at("2026-02-28T00:00:00Z")));
        assert_eq!(budget.at(at("2026-02-27T23:59:59Z")), budget);
        let next = budget.at(at("2026-02-28T00:00:00Z"));
        assert_eq!(next.spent_nanos, 0);
        assert_eq!(next.resets_at_ms(), Some(at("2026-03-28T00:00:00Z")));
        let december = KeyBudget::fresh(limit, at("2026-12-30T00:00:00Z"));
        assert_eq!(december.resets_at_ms(), Some(at("2027-01-28T00:00:00Z")));
        let lifetime = KeyBudget::fresh(
            SpendLimit {
                reset_day: None,
                ..limit
            },
            at("2026-02-01T12:00:00Z"),
        );
        assert_eq!(lifetime.resets_at_ms(), None);
        assert_eq!(lifetime.at(i64::MAX / 2), lifetime);
    }
}
