//! HTTP: the route table, auth, JSON bodies, and the handlers of each route.

pub mod admin;
pub mod auth;
pub mod consumers;
pub mod error;
pub mod json;
pub mod key;
pub mod metrics;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{MethodRouter, delete, get, patch, post};

use self::metrics::{RequestMeters, RequestMetrics};
use crate::app::AppState;
use crate::broker::Meter;
pub use error::ApiError;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// The admin token, or a consumer token scoped to the feature.
    Key,
    /// The admin token only.
    Admin,
    /// Anyone, or only the `METRICS_TOKEN` when one is set.
    Metrics,
}

/// One route: the table below builds the router, and tests walk it to probe every route's
/// access rule.
#[derive(Clone, Debug)]
pub struct Route {
    pub method: Method,
    /// In axum syntax (`{id}` for a path parameter).
    pub path: &'static str,
    pub access: Access,
}

const fn route(method: Method, path: &'static str, access: Access) -> Route {
    Route {
        method,
        path,
        access,
    }
}

/// Every route keypooler serves.
pub const ROUTES: [Route; 15] = [
    route(Method::GET, "/health", Access::Public),
    route(Method::GET, "/key", Access::Key),
    route(Method::POST, "/admin/tiers", Access::Admin),
    route(Method::GET, "/admin/tiers", Access::Admin),
    route(Method::PATCH, "/admin/tiers", Access::Admin),
    route(Method::POST, "/admin/keys", Access::Admin),
    route(Method::GET, "/admin/keys", Access::Admin),
    route(Method::DELETE, "/admin/keys/{id}", Access::Admin),
    route(Method::GET, "/admin/health", Access::Admin),
    route(Method::POST, "/admin/consumers", Access::Admin),
    route(Method::GET, "/admin/consumers", Access::Admin),
    route(Method::DELETE, "/admin/consumers/{id}", Access::Admin),
    route(Method::POST, "/admin/consumers/{id}/scopes", Access::Admin),
    route(Method::GET, "/admin/usage", Access::Admin),
    route(Method::GET, "/metrics", Access::Metrics),
];

fn handler(route: &Route) -> MethodRouter<AppState> {
    match (route.method.as_str(), route.path) {
        ("GET", "/health") => get(health),
        ("GET", "/key") => get(key::get_key),
        ("POST", "/admin/tiers") => post(admin::create_tier),
        ("GET", "/admin/tiers") => get(admin::list_tiers),
        ("PATCH", "/admin/tiers") => patch(admin::update_tier),
        ("POST", "/admin/keys") => post(admin::add_key),
        ("GET", "/admin/keys") => get(admin::list_keys),
        ("DELETE", "/admin/keys/{id}") => delete(admin::delete_key),
        ("GET", "/admin/health") => get(admin::health),
        ("POST", "/admin/consumers") => post(consumers::create),
        ("GET", "/admin/consumers") => get(consumers::list),
        ("DELETE", "/admin/consumers/{id}") => delete(consumers::delete),
        ("POST", "/admin/consumers/{id}/scopes") => post(consumers::add_scope),
        ("GET", "/admin/usage") => get(admin::usage),
        ("GET", "/metrics") => get(metrics::metrics),
        _ => unreachable!("every route in ROUTES has a handler: {route:?}"),
    }
}

/// The whole HTTP surface over `state` (`/metrics` only if metrics are on).
pub fn router(state: AppState) -> Routed {
    build(state, |_| true)
}

/// Every route but `/metrics`, for the main listener when `/metrics` has its own.
pub fn api_router(state: AppState) -> Routed {
    build(state, |route| route.access != Access::Metrics)
}

/// `/metrics` alone, for its own listener (`METRICS_PORT`).
pub fn metrics_router(state: AppState) -> Routed {
    build(state, |route| route.access == Access::Metrics)
}

/// The routes, wrapped whole by the request metrics (a tower service, as `Router` is).
pub type Routed = RequestMetrics<Router>;

fn build(state: AppState, serves: impl Fn(&Route) -> bool) -> Routed {
    let meter = state.metrics().map(|metrics| metrics.meter());
    let router = ROUTES
        .iter()
        .filter(|route| serves(route) && (meter.is_some() || route.access != Access::Metrics))
        .fold(Router::new(), |router, route| {
            router.route(route.path, handler(route))
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(json::BODY_LIMIT));
    // With metrics off the middleware only passes requests through, unless debug logs want its
    // request lines.
    let meter = meter.or_else(|| tracing::enabled!(tracing::Level::DEBUG).then(Meter::off));
    RequestMetrics::new(router.with_state(state), meter.map(RequestMeters::new))
}

async fn health() -> Response {
    error::json_response(StatusCode::OK, r#"{"status":"ok"}"#)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("not found".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
