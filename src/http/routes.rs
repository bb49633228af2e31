//! The route table, and the routers built from it. Everything that lists routes derives from
//! [`ROUTES`]: the routers, the request metrics' `route` labels, and the test that probes every
//! route's access rule.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};

use super::error::{ApiError, json_response};
use super::json::BODY_LIMIT;
use super::request_metrics::{RequestMetricsService, RequestSeries};
use super::{AppState, PrometheusExporter, admin, backup, consumers, exporter, key, spend};
use crate::telemetry::Meter;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// The admin token only.
    Admin,
    /// The admin token, or a consumer token whose tiers list the feature (or hold the key).
    AdminOrConsumer,
    /// Anyone, or only the `METRICS_TOKEN` when one is set.
    MetricsToken,
}

/// One route: its method, its path template, who may call it, and its handler.
#[derive(Clone, Debug)]
pub struct Route {
    pub method: Method,
    /// In axum syntax (`{id}` for a path parameter).
    pub path: &'static str,
    pub access: Access,
    /// The handler, routed for `method` alone (axum answers `HEAD` through a `GET` handler,
    /// unless the entry says `no HEAD`).
    handler: fn() -> MethodRouter<AppState>,
}

/// An entry of [`ROUTES`]; the method is named once, for both the table and the router.
macro_rules! route {
    ($method:ident $path:literal, $access:ident, $handler:path) => {
        Route {
            method: Method::$method,
            path: $path,
            access: Access::$access,
            handler: || on(MethodFilter::$method, $handler),
        }
    };
    // A GET that spends (a key's budget, an audit event): axum would answer HEAD through it and
    // drop the body, spending for nothing, so HEAD is refused.
    ($method:ident $path:literal, $access:ident, $handler:path, no HEAD) => {
        Route {
            method: Method::$method,
            path: $path,
            access: Access::$access,
            handler: || on(MethodFilter::$method, $handler).head(head_not_allowed),
        }
    };
}

/// Every route keypooler serves. The request metrics match a request's path against these
/// templates in this order, so `GET /key` comes early.
pub const ROUTES: [Route; 21] = [
    route!(GET "/health", Public, health),
    route!(GET "/key", AdminOrConsumer, key::get_key, no HEAD),
    route!(POST "/key/{id}/spend", AdminOrConsumer, spend::spend),
    route!(POST "/admin/tiers", Admin, admin::create_tier),
    route!(GET "/admin/tiers", Admin, admin::list_tiers),
    route!(PATCH "/admin/tiers", Admin, admin::update_tier),
    route!(DELETE "/admin/tiers/{name}", Admin, admin::delete_tier),
    route!(POST "/admin/keys", Admin, admin::add_key),
    route!(GET "/admin/keys", Admin, admin::list_keys),
    route!(PATCH "/admin/keys/{id}", Admin, admin::patch_key),
    route!(DELETE "/admin/keys/{id}", Admin, admin::delete_key),
    route!(GET "/admin/health", Admin, admin::health),
    route!(POST "/admin/consumers", Admin, consumers::create),
    route!(GET "/admin/consumers", Admin, consumers::list),
    route!(DELETE "/admin/consumers/{id}", Admin, consumers::delete),
    route!(POST "/admin/consumers/{id}/scopes", Admin, consumers::add_scope),
    route!(DELETE "/admin/consumers/{id}/scopes/{tier}", Admin, consumers::remove_scope),
    route!(POST "/admin/consumers/{id}/token", Admin, consumers::rotate_token),
    route!(GET "/admin/usage", Admin, admin::usage),
    route!(GET "/admin/backup", Admin, backup::backup),
    route!(GET "/metrics", MetricsToken, exporter::get_metrics),
];

/// The whole HTTP surface over `state` (`/metrics` only if metrics are on).
pub fn router(state: AppState) -> Routed {
    build(state, |_| true)
}

/// Every route but `/metrics`, for the main listener when `/metrics` has its own.
pub fn api_router(state: AppState) -> Routed {
    build(state, |route| route.access != Access::MetricsToken)
}

/// `/metrics` alone, for its own listener (`METRICS_PORT`).
pub fn metrics_router(state: AppState) -> Routed {
    build(state, |route| route.access == Access::MetricsToken)
}

/// The routes, wrapped whole by the request metrics (a tower service, as `Router` is).
pub type Routed = RequestMetricsService<Router>;

fn build(state: AppState, serves: impl Fn(&Route) -> bool) -> Routed {
    let meter = state.exporter().map(PrometheusExporter::meter);
    let router = ROUTES
        .iter()
        .filter(|route| serves(route) && (meter.is_some() || route.access != Access::MetricsToken))
        .fold(Router::new(), |router, route| {
            router.route(route.path, (route.handler)())
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    // With metrics off the middleware only passes requests through, unless debug logs want its
    // request lines.
    let meter = meter.or_else(|| tracing::enabled!(tracing::Level::DEBUG).then(Meter::off));
    RequestMetricsService::new(router.with_state(state), meter.map(RequestSeries::new))
}

async fn health() -> Response {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("not found".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// `HEAD` of a route that spends: 405, naming the one method it takes.
async fn head_not_allowed() -> Response {
    let mut response = ApiError::MethodNotAllowed.into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET"));
    response
}
