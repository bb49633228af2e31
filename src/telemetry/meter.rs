//! Where metric handles come from. Each layer registers the handles it counts through once (the
//! broker when it builds a snapshot, the writer when it starts, the request metrics on first
//! use), so counting is an atomic increment: no registry lookup, no label built, no allocation.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Recorder};

/// Where handles are registered (a "meter", as OpenTelemetry calls what instruments are created
/// from): a recorder, or none (metrics off, every handle a no-op).
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

    /// The gauge `name{labels}`.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        match &self.0 {
            None => Gauge::noop(),
            Some(recorder) => metrics::with_local_recorder(recorder.as_ref(), || {
                metrics::gauge!(name, owned(labels))
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
