//! The `GET /key` outcome counters. They are registered per feature when a snapshot is built, so
//! a request only increments an atomic: no registry lookup, no label built, no allocation.

use metrics::Counter;

use crate::telemetry::{KEY_REQUESTS, Meter};

/// The `feature` label of every request for a feature no tier lists: a string a client chose
/// never becomes a label, so random feature names add no series.
const UNKNOWN_FEATURE: &str = "unknown";

/// The `GET /key` outcome counters of one `feature` label. A handle that cannot apply to the
/// label (`served` for an unknown feature, `unknown_feature` for a listed one) is a no-op, so
/// it adds no series.
#[derive(Debug)]
pub struct Outcomes {
    pub served: Counter,
    /// 429: every candidate key is spent (or the feature has no servable key).
    pub spent: Counter,
    /// 404: no tier lists the feature.
    pub unknown_feature: Counter,
    /// 401: no valid token.
    pub unauthorized: Counter,
    /// 403: a consumer token whose tiers do not list the feature.
    pub forbidden: Counter,
}

impl Outcomes {
    /// The counters of a feature some tier lists.
    pub fn listed(meter: &Meter, feature: &str) -> Self {
        let count =
            |outcome| meter.counter(KEY_REQUESTS, &[("feature", feature), ("outcome", outcome)]);
        Self {
            served: count("served"),
            spent: count("spent"),
            unknown_feature: Counter::noop(),
            unauthorized: count("unauthorized"),
            forbidden: count("forbidden"),
        }
    }

    /// The counters shared by every feature no tier lists, labelled `unknown`.
    pub fn unlisted(meter: &Meter) -> Self {
        let count = |outcome| {
            meter.counter(
                KEY_REQUESTS,
                &[("feature", UNKNOWN_FEATURE), ("outcome", outcome)],
            )
        };
        Self {
            served: Counter::noop(),
            spent: Counter::noop(),
            unknown_feature: count("unknown_feature"),
            unauthorized: count("unauthorized"),
            forbidden: count("forbidden"),
        }
    }
}
