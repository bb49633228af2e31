//! HTTP: the route table, auth, JSON bodies, and the handlers of each route.

pub mod admin;
pub mod auth;
pub mod consumers;
pub mod error;
pub mod json;
pub mod key;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{MethodRouter, delete, get, patch, post};

use crate::app::AppState;
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
pub const ROUTES: [Route; 14] = [
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
        _ => unreachable!("every route in ROUTES has a handler: {route:?}"),
    }
}

/// The whole HTTP surface over `state`.
pub fn router(state: AppState) -> Router {
    ROUTES
        .iter()
        .fold(Router::new(), |router, route| {
            router.route(route.path, handler(route))
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(json::BODY_LIMIT))
        .with_state(state)
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
