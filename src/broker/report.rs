//! The bodies of `POST /key/{id}/report` and `POST /key/{id}/exhausted`, validated.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;

use super::health::{MAX_EXHAUSTION_AHEAD_MS, Outcome};
use super::input::{Invalid, parse_instant};

/// `{"status": 429, "retry_after"?: 30 | "<HTTP-date>", "feature"?: "chat"}` or
/// `{"outcome": "timeout"}`.
#[derive(Deserialize, JsonSchema)]
pub struct ReportBody {
    /// The provider's HTTP status (100-599); give it or `outcome`.
    #[serde(default)]
    #[schemars(schema_with = "status_schema")]
    status: Option<serde_json::Value>,
    /// The provider's `Retry-After` (for a 429): seconds, or the HTTP-date it sent.
    #[serde(default)]
    #[schemars(schema_with = "retry_after_schema")]
    retry_after: Option<serde_json::Value>,
    /// The feature the call was for: a 429 then cools that feature only.
    #[serde(default)]
    feature: Option<String>,
    /// `timeout`: the call got no answer.
    #[serde(default)]
    #[schemars(schema_with = "outcome_schema")]
    outcome: Option<String>,
}

fn status_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "minimum": 100, "maximum": 599})
}

fn retry_after_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": ["number", "string"], "minimum": 0})
}

fn outcome_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "enum": ["timeout"]})
}

/// A report, validated: what the provider said, and the feature it was for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedReport {
    pub outcome: Outcome,
    pub feature: Option<String>,
}

impl ReportBody {
    /// Validates the body; an HTTP-date in `retry_after` is judged at wall time `unix_now_ms`.
    pub fn parse(self, unix_now_ms: i64) -> Result<ParsedReport, Invalid> {
        let outcome = match (self.status, self.outcome.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(Invalid("give either status or outcome, not both".into()));
            }
            (None, Some("timeout")) => Outcome::Timeout,
            (None, Some(_)) => return Err(Invalid("outcome must be \"timeout\"".into())),
            (None, None) => {
                return Err(Invalid(
                    "status is required (or outcome: \"timeout\" for a call that got no answer)"
                        .into(),
                ));
            }
            (Some(status), None) => {
                let status = status
                    .as_u64()
                    .filter(|s| (100..=599).contains(s))
                    .ok_or_else(|| {
                        Invalid("status must be an HTTP status from 100 to 599".into())
                    })?;
                let retry_after_ms = self
                    .retry_after
                    .as_ref()
                    .map(|value| retry_after_ms(value, unix_now_ms))
                    .transpose()?;
                Outcome::of_status(status as u16, retry_after_ms)
            }
        };
        let feature = self
            .feature
            .map(|feature| super::input::parse_name("feature", &feature))
            .transpose()?;
        Ok(ParsedReport { outcome, feature })
    }
}

/// The provider's `Retry-After`, in ms from `unix_now_ms`: seconds (a number ≥ 0, or its text),
/// or an HTTP-date (a date past is 0).
fn retry_after_ms(value: &serde_json::Value, unix_now_ms: i64) -> Result<u64, Invalid> {
    let invalid = || {
        Invalid(
            "retry_after must be a number of seconds (0 or more) or an HTTP-date, e.g. \
             \"Wed, 21 Oct 2015 07:28:00 GMT\""
                .into(),
        )
    };
    let seconds = |s: f64| {
        (s.is_finite() && s >= 0.0)
            .then(|| (s * 1_000.0).ceil().min(u64::MAX as f64) as u64)
            .ok_or_else(invalid)
    };
    match value {
        serde_json::Value::Number(n) => seconds(n.as_f64().ok_or_else(invalid)?),
        serde_json::Value::String(text) => {
            let text = text.trim();
            if let Ok(n) = text.parse::<f64>() {
                return seconds(n);
            }
            let at = httpdate::parse_http_date(text).map_err(|_| invalid())?;
            let at_ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            Ok(at_ms.saturating_sub(unix_now_ms).max(0).unsigned_abs())
        }
        _ => Err(invalid()),
    }
}

/// `{"until": "<RFC 3339>"}`.
#[derive(Deserialize, JsonSchema)]
pub struct ExhaustedBody {
    /// Not served until then; a time past clears the exhaustion.
    #[serde(default)]
    #[schemars(extend("format" = "date-time"))]
    until: Option<String>,
}

impl ExhaustedBody {
    /// The deadline (unix ms): any time past (which clears the exhaustion), or at most 366 days
    /// after `unix_now_ms`.
    pub fn parse(self, unix_now_ms: i64) -> Result<i64, Invalid> {
        let text = self
            .until
            .ok_or_else(|| Invalid("until is required (an RFC 3339 time)".into()))?;
        let until = parse_instant("until", &text)?;
        if until.saturating_sub(unix_now_ms) > MAX_EXHAUSTION_AHEAD_MS {
            return Err(Invalid("until must be at most 366 days ahead".into()));
        }
        Ok(until)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_445_412_400_000; // 2015-10-21T07:26:40Z

    fn report(body: serde_json::Value) -> Result<ParsedReport, Invalid> {
        serde_json::from_value::<ReportBody>(body)
            .unwrap()
            .parse(NOW)
    }

    fn retry(value: serde_json::Value) -> Option<u64> {
        match report(json!({"status": 429, "retry_after": value}))
            .unwrap()
            .outcome
        {
            Outcome::TooManyRequests { retry_after_ms } => retry_after_ms,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date() {
        assert_eq!(retry(json!(30)), Some(30_000));
        assert_eq!(retry(json!(1.5)), Some(1_500));
        assert_eq!(retry(json!("120")), Some(120_000));
        assert_eq!(retry(json!("Wed, 21 Oct 2015 07:28:00 GMT")), Some(80_000));
        // The obsolete forms a provider may still send.
        assert_eq!(
            retry(json!("Wednesday, 21-Oct-15 07:28:00 GMT")),
            Some(80_000)
        );
        assert_eq!(retry(json!("Wed, 21 Oct 2015 07:00:00 GMT")), Some(0));
        for bad in [json!(-1), json!("soon"), json!(true), json!({})] {
            let err = report(json!({"status": 429, "retry_after": bad})).unwrap_err();
            assert!(err.0.starts_with("retry_after must be"), "{}", err.0);
        }
    }

    #[test]
    fn a_report_is_a_status_or_a_timeout() {
        assert_eq!(
            report(json!({"outcome": "timeout"})).unwrap().outcome,
            Outcome::Timeout
        );
        assert_eq!(
            report(json!({"status": 503, "feature": " chat "})).unwrap(),
            ParsedReport {
                outcome: Outcome::ServerError(503),
                feature: Some("chat".into())
            }
        );
        for (body, message) in [
            (json!({}), "status is required"),
            (json!({"status": 99}), "status must be"),
            (json!({"status": 600}), "status must be"),
            (json!({"status": "429"}), "status must be"),
            (json!({"outcome": "gone"}), "outcome must be"),
            (json!({"status": 500, "outcome": "timeout"}), "give either"),
        ] {
            let err = report(body).unwrap_err();
            assert!(err.0.starts_with(message), "{}", err.0);
        }
    }

    #[test]
    fn an_exhaustion_is_at_most_366_days_ahead() {
        let parse = |until: &str| {
            ExhaustedBody {
                until: Some(until.into()),
            }
            .parse(NOW)
        };
        assert_eq!(parse("2015-10-21T08:26:40Z"), Ok(NOW + 3_600_000));
        assert_eq!(parse("2000-01-01T00:00:00Z"), Ok(946_684_800_000));
        assert!(parse("2016-10-21T07:26:40Z").is_ok(), "366 days exactly");
        assert!(parse("2016-10-22T07:26:40Z").is_err());
        assert!(parse("tomorrow").is_err());
        assert!(ExhaustedBody { until: None }.parse(NOW).is_err());
    }
}
