//! `GET /metrics`, and the middleware that counts and times every request.
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

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use metrics::{Counter, Histogram};

use super::ROUTES;
use super::auth::{bearer, same_token};
use super::error::ApiError;
use crate::app::AppState;
use crate::broker::Meter;

/// Requests answered, by `route`, `method` and `status` class.
pub const HTTP_REQUESTS: &str = "keypooler_http_requests_total";
/// Seconds from a request reaching the router to its response head, by `route` and `method`.
pub const HTTP_DURATION: &str = "keypooler_http_request_duration_seconds";
/// The `route` label of a request that matched no route (a 404 from the fallback).
pub const UNMATCHED: &str = "unmatched";
/// The `method` label values; any other method counts as `other`.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// The Prometheus text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`: what the recorder holds, then the families read from the live snapshot.
pub async fn metrics(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let metrics = app
        .metrics()
        .ok_or_else(|| ApiError::NotFound("not found".into()))?;
    if let Some(token) = metrics.token()
        && !same_token(bearer(&headers)?, token)
    {
        return Err(ApiError::Unauthorized("invalid token"));
    }
    let body = metrics.render(
        &app.pool().load(),
        app.pool().clock(),
        app.writer().queue_depth(),
    );
    let mut response = Response::new(body.into());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}

/// The request counters and histograms, one slot per label set, registered on first use.
pub struct RequestMeters {
    meter: Meter,
    /// The distinct paths of [`ROUTES`], then [`UNMATCHED`].
    routes: Box<[&'static str]>,
    /// By route, method, class.
    counters: Box<[OnceLock<Counter>]>,
    /// By route, method.
    durations: Box<[OnceLock<Histogram>]>,
}

impl RequestMeters {
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
/// debug request line; with no meters it only passes requests through.
#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    meters: Option<Arc<RequestMeters>>,
}

impl<S> RequestMetrics<S> {
    pub fn new(inner: S, meters: Option<RequestMeters>) -> Self {
        Self {
            inner,
            meters: meters.map(Arc::new),
        }
    }
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for RequestMetrics<S>
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
        let meters = self.meters.as_ref().map(|meters| {
            let route = meters.route(request.uri().path());
            (Arc::clone(meters), route, method_index(request.method()))
        });
        ResponseFuture {
            started: Instant::now(),
            inner: self.inner.call(request),
            meters,
        }
    }
}

pin_project_lite::pin_project! {
    /// The wrapped response future, recording when the response is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // The meters, the route and the method, when measuring.
        meters: Option<(Arc<RequestMeters>, usize, usize)>,
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
        if let (Ok(response), Some((meters, route, method))) = (&result, this.meters) {
            meters.record(*route, *method, response.status(), this.started.elapsed());
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
