//! Timestamps as the Go service's SQLite file holds them: RFC 3339 (`2099-01-01T00:00:00Z`,
//! as Go's drivers write a `time.Time`) or SQLite's own `YYYY-MM-DD HH:MM:SS[.fff]` (what
//! `CURRENT_TIMESTAMP` writes, always UTC). The export writes the SQLite form, which both the Go
//! drivers and SQLite's date functions read, and which compares correctly as text.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// Unix milliseconds of a stored timestamp, or `None` when it is not one of the two forms.
/// Go's `time.Time.String()` form (`2006-01-02 15:04:05.999 -0700 MST`, what a driver writes
/// when it formats a time with `%v`) is read too.
pub fn parse_timestamp_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Some(rfc3339) = from_go_string(text) {
        return parse_timestamp_ms(&rfc3339);
    }
    // Both forms put the date in the first 10 bytes and a separator (' ' or 'T') after it; Go
    // drivers also write RFC 3339 with a space, so normalise the separator to 'T'.
    let (date, rest) = text.split_at_checked(10)?;
    let time = rest.strip_prefix([' ', 'T', 't'])?;
    let normalised = format!("{date}T{time}");
    let at = OffsetDateTime::parse(&normalised, &Rfc3339).or_else(|_| {
        let naive = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
        );
        PrimitiveDateTime::parse(&normalised, naive).map(|at| at.assume_offset(UtcOffset::UTC))
    });
    let millis = at.ok()?.unix_timestamp_nanos() / 1_000_000;
    i64::try_from(millis).ok()
}

/// `2006-01-02 15:04:05.999 -0700 MST [m=+0.1]` as `2006-01-02T15:04:05.999-07:00`.
fn from_go_string(text: &str) -> Option<String> {
    let mut parts = text.split_ascii_whitespace();
    let (date, time, offset) = (parts.next()?, parts.next()?, parts.next()?);
    let (sign, digits) = offset.split_at_checked(1)?;
    let valid = matches!(sign, "+" | "-")
        && digits.len() == 4
        && digits.bytes().all(|b| b.is_ascii_digit());
    valid.then(|| format!("{date}T{time}{sign}{}:{}", &digits[..2], &digits[2..]))
}

/// SQLite's form, in UTC: `YYYY-MM-DD HH:MM:SS`, with `.mmm` only when the milliseconds are not
/// zero (so whole seconds read exactly as `CURRENT_TIMESTAMP` writes them).
pub fn format_timestamp_ms(unix_ms: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let seconds = at
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .expect("a UTC date always formats");
    match unix_ms.rem_euclid(1_000) {
        0 => seconds,
        millis => format!("{seconds}.{millis:03}"),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn both_forms_and_offsets_are_read_as_utc() {
        let noon = 1_764_331_200_000; // 2025-11-28T12:00:00Z
        for text in [
            "2025-11-28 12:00:00",
            "2025-11-28T12:00:00Z",
            "2025-11-28T12:00:00",
            "2025-11-28T14:00:00+02:00",
            "2025-11-28 13:00:00+01:00",
            " 2025-11-28 12:00:00 ",
            "2025-11-28 12:00:00 +0000 UTC",
            "2025-11-28 13:00:00 +0100 CET",
            "2025-11-28 15:00:00 +0300 +03",
            "2025-11-28 12:00:00 +0000 UTC m=+0.000123",
        ] {
            assert_eq!(parse_timestamp_ms(text), Some(noon), "{text}");
        }
        assert_eq!(
            parse_timestamp_ms("2025-11-28 12:00:00.250"),
            Some(noon + 250)
        );
        assert_eq!(
            parse_timestamp_ms("2025-11-28T12:00:00.123456789Z"),
            Some(noon + 123)
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for text in [
            "",
            "yesterday",
            "2025-11-28",
            "2025-13-01 00:00:00",
            "2025-11-28 25:00:00",
            "2025-11-28X12:00:00",
            "1764331200",
            "ключ-ключ-ключ",
            "2025-11-28 12:00:00 garbage",
            "2025-11-28 12:00:00 +00 UTC",
        ] {
            assert_eq!(parse_timestamp_ms(text), None, "{text:?}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for ms in [0, 1_764_331_200_000, 1_764_331_200_250, -86_400_000] {
            assert_eq!(
                parse_timestamp_ms(&format_timestamp_ms(ms)),
                Some(ms),
                "{ms}"
            );
        }
        assert_eq!(
            format_timestamp_ms(1_764_331_200_000),
            "2025-11-28 12:00:00"
        );
        assert_eq!(
            format_timestamp_ms(1_764_331_200_007),
            "2025-11-28 12:00:00.007"
        );
    }
}
