//! The middleware that counts and times every request.
//!
//! The middleware labels a request with its route template (never the raw path), its method
//! (one of a fixed set) and its status class, so the series are bounded whatever clients send.
//! Its handles are registered the first time each label set occurs; after that a request costs
//! two clock reads, one counter increment and one histogram sample: no lookup, no allocation of
//! its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use axum::response::Response;
use metrics::{Counter, Histogram};

use super::ROUTES;
use crate::telemetry::{HTTP_DURATION, HTTP_REQUESTS, Meter};

/// The `route` label of a request that matched no route (a 404 from the fallback).
const UNMATCHED: &str = "unmatched";
/// The `method` label values; any other method counts as `other`.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The request series (counters and histograms), one slot per label set, registered on first
/// use.
pub struct RequestSeries {
    meter: Meter,
    /// The distinct paths of [`ROUTES`], then [`UNMATCHED`].
    routes: Box<[&'static str]>,
    /// By route, method, class.
    counters: Box<[OnceLock<Counter>]>,
    /// By route, method.
    durations: Box<[OnceLock<Histogram>]>,
}

impl RequestSeries {
    pub fn new(meter: Meter) -> Self {
        let mut routes: Vec<&'static str> = Vec::new();
        for route in &ROUTES {
            if !routes.contains(&route.path) {
                routes.push(route.path);
            }
        }
        routes.push(UNMATCHED);
        let slots = routes.len() * METHODS.len();
        Self {
            meter,
            routes: routes.into_boxed_slice(),
            counters: (0..slots * CLASSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            durations: (0..slots).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The route template `path` matches (segment by segment, `{…}` matching any one
    /// segment), or [`UNMATCHED`]. Matching here, outside the router, lets the middleware wrap
    /// the router whole: `Router::layer` would box every route's service and future.
    fn route(&self, path: &str) -> usize {
        let unmatched = self.routes.len() - 1;
        self.routes[..unmatched]
            .iter()
            .position(|template| matches(template, path))
            .unwrap_or(unmatched)
    }

    fn record(&self, route: usize, method: usize, status: StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        let slot = route * METHODS.len() + method;
        let labels = [("route", self.routes[route]), ("method", METHODS[method])];
        self.counters[slot * CLASSES.len() + class]
            .get_or_init(|| {
                let [route, method] = labels;
                self.meter
                    .counter(HTTP_REQUESTS, &[route, method, ("status", CLASSES[class])])
            })
            .increment(1);
        self.durations[slot]
            .get_or_init(|| self.meter.histogram(HTTP_DURATION, &labels))
            .record(elapsed.as_secs_f64());
        tracing::debug!(
            method = METHODS[method],
            route = self.routes[route],
            status = status.as_u16(),
            micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "request"
        );
    }
}

fn matches(template: &str, path: &str) -> bool {
    // Most templates have no parameter: one comparison, no split (this runs on every request).
    if !template.contains('{') {
        return template == path;
    }
    let mut path = path.split('/');
    template.split('/').all(|part| {
        path.next().is_some_and(|segment| {
            part == segment || (part.starts_with('{') && !segment.is_empty())
        })
    }) && path.next().is_none()
}

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// Counts and times every request of the service it wraps (the whole router), and writes the
/// debug request line; with no series it only passes requests through.
#[derive(Clone)]
pub struct RequestMetricsService<S> {
    inner: S,
    series: Option<Arc<RequestSeries>>,
}

impl<S> RequestMetricsService<S> {
    pub fn new(inner: S, series: Option<RequestSeries>) -> Self {
        Self {
            inner,
            series: series.map(Arc::new),
        }
    }
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for RequestMetricsService<S>
where
    S: tower_service::Service<axum::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let series = self.series.as_ref().map(|series| {
            let route = series.route(request.uri().path());
            (Arc::clone(series), route, method_index(request.method()))
        });
        ResponseFuture {
            started: Instant::now(),
            inner: self.inner.call(request),
            series,
        }
    }
}

pin_project_lite::pin_project! {
    /// The wrapped response future, recording when the response is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // The series, the route and the method, when measuring.
        series: Option<(Arc<RequestSeries>, usize, usize)>,
        started: Instant,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some((series, route, method))) = (&result, this.series) {
            series.record(*route, *method, response.status(), this.started.elapsed());
        }
        Poll::Ready(result)
    }
}

#[cfg(all(test, not(loom)))]
mod route_tests {
    use super::matches;

    #[test]
    fn templates_match_whole_segments() {
        assert!(matches("/admin/keys/{id}", "/admin/keys/abc"));
        assert!(!matches("/admin/keys/{id}", "/admin/keys/"));
        assert!(!matches("/admin/keys/{id}", "/admin/keys"));
        assert!(!matches("/admin/keys/{id}", "/admin/keys/a/b"));
        assert!(matches("/key", "/key"));
        assert!(!matches("/key", "/keys"));
        assert!(!matches("/key", "/key/"));
        assert!(!matches("/health", "//health"));
        assert!(matches(
            "/admin/consumers/{id}/scopes",
            "/admin/consumers/x/scopes"
        ));
    }
}
