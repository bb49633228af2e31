//! Metric handles of the read path. `GET /key` outcomes are counted per feature through handles
//! registered when a snapshot is built, so a request only increments an atomic: no registry
//! lookup, no label built, no allocation.

use std::sync::Arc;

use metrics::{Counter, Histogram, Recorder};

/// `GET /key` answers, by `feature` and `outcome`.
pub const KEY_REQUESTS: &str = "keypooler_key_requests_total";

/// The `feature` label of every request for a feature no tier lists: a string a client chose
/// never becomes a label, so random feature names add no series.
pub const UNKNOWN_FEATURE: &str = "unknown";

/// Where handles are registered: a recorder, or none (metrics off, every handle a no-op).
///
/// Registration takes the recorder's locks and allocates; it happens when a snapshot or a
/// component is built, never per request.
#[derive(Clone)]
pub struct Meter(Option<Arc<dyn Recorder + Send + Sync>>);

impl Meter {
    pub fn new(recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        Self(Some(recorder))
    }

    /// A meter whose handles do nothing.
    pub fn off() -> Self {
        Self(None)
    }

    /// The counter `name{labels}`.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        match &self.0 {
            None => Counter::noop(),
            Some(recorder) => metrics::with_local_recorder(recorder.as_ref(), || {
                metrics::counter!(name, owned(labels))
            }),
        }
    }

    /// The histogram `name{labels}`.
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        match &self.0 {
            None => Histogram::noop(),
            Some(recorder) => metrics::with_local_recorder(recorder.as_ref(), || {
                metrics::histogram!(name, owned(labels))
            }),
        }
    }
}

fn owned(labels: &[(&'static str, &str)]) -> Vec<metrics::Label> {
    labels
        .iter()
        .map(|&(name, value)| metrics::Label::new(name, value.to_owned()))
        .collect()
}

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
    /// 403: a consumer token whose tiers do not list the feature (consumer tokens: SPEC §4).
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

    /// The counters shared by every feature no tier lists, labelled `UNKNOWN_FEATURE`.
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
