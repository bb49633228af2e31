//! The route table, and the routers built from it. Everything that lists routes derives from
//! [`ROUTES`]: the routers, the request metrics' `route` labels, the OpenAPI document (with the
//! [`Doc`] of each entry), and the test that probes every route's access rule.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};

use super::admin::{AddedKey, KeyView, PatchedKey, PoolHealth, Status, TierView, UsageView};
use super::consumers::{ConsumerView, Created, Replayed, Rotated, RotatedAgain};
use super::error::ApiError;
use super::health::{self as key_health, ExhaustedView, HealthView};
use super::json::BODY_LIMIT;
use super::openapi::{Doc, doc};
use super::request_metrics::{RequestMetricsService, RequestSeries};
use super::{
    AppState, PrometheusExporter, admin, backup, consumers, docs, exporter, key, openapi, page,
    spend, ui,
};
use crate::broker::{
    ConsumerBody, ExhaustedBody, KeyBody, KeyPatch, KeyState, ReportBody, ScopeBody, ServedKey,
    SpendBody, TierBody,
};
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

/// One route: its method, its path template, who may call it, what the OpenAPI document says of
/// it, and its handler.
#[derive(Clone, Debug)]
pub struct Route {
    pub method: Method,
    /// In axum syntax (`{id}` for a path parameter), which is also OpenAPI's.
    pub path: &'static str,
    pub access: Access,
    /// Set with [`Route::doc`]; the test of the OpenAPI document fails for a route without one.
    pub doc: Option<Doc>,
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
            doc: None,
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
            doc: None,
            handler: || on(MethodFilter::$method, $handler).head(head_not_allowed),
        }
    };
}

impl Route {
    /// The entry with its description for the OpenAPI document.
    const fn doc(mut self, doc: Doc) -> Self {
        self.doc = Some(doc);
        self
    }
}

/// Every route keypooler serves. The request metrics match a request's path against these
/// templates in this order, so `GET /key` comes early. Each entry's [`doc`] names its summary,
/// its body and query types, and its answers (see [`Doc`] for those implied): a new route's
/// entry ends in `.doc(doc("…").body::<Body>().json::<View>(200).error(409))`, and a field
/// added to a view or body type shows in the document by its derive.
pub static ROUTES: [Route; 30] = [
    route!(GET "/health", Public, health).doc(doc("Liveness.").json::<Status>(200)),
    route!(GET "/key", AdminOrConsumer, key::get_key, no HEAD).doc(
        doc("The next key with budget left for a feature, round-robin.")
            .query::<String>("feature", true, "The feature to draw a key for.")
            .query_with(
                "cost",
                false,
                "Units of the key's window to draw, at most the feature's largest rate_limit \
                 (default 1).",
                key::cost_schema,
            )
            .query_with(
                "wait",
                false,
                "Seconds (fractions allowed) to wait for a key when none is free; 0, the \
                 default, answers 429 at once.",
                key::wait_schema,
            )
            .json::<ServedKey<'static>>(200)
            .error(400)
            .error(404)
            .error(429)
            .error(503),
    ),
    route!(POST "/key/{id}/report", AdminOrConsumer, key_health::report).doc(
        doc("What the provider answered for a key: cools, disables or counts it.")
            .body::<ReportBody>()
            .json::<HealthView<'static>>(200)
            .error(400)
            .error(403)
            .error(404),
    ),
    route!(POST "/key/{id}/exhausted", AdminOrConsumer, key_health::exhausted).doc(
        doc("Not to be served, for any feature, until a time (a time past clears it).")
            .body::<ExhaustedBody>()
            .json::<ExhaustedView>(200)
            .error(400)
            .error(403)
            .error(404),
    ),
    route!(POST "/key/{id}/spend", AdminOrConsumer, spend::spend).doc(
        doc("Count a call's cost against a key's spend budget, once per request_id.")
            .body::<SpendBody>()
            .json::<spend::Spent<'static>>(200)
            .error(400)
            .error(403)
            .error(404)
            .error(409),
    ),
    route!(POST "/admin/tiers", Admin, admin::create_tier).doc(
        doc("Create a tier with its features and limits.")
            .body::<TierBody>()
            .json::<TierView<'static>>(201)
            .error(409)
            .error(422),
    ),
    route!(GET "/admin/tiers", Admin, admin::list_tiers)
        .doc(doc("Every tier, by name.").json::<Vec<TierView<'static>>>(200)),
    route!(PATCH "/admin/tiers", Admin, admin::update_tier).doc(
        doc("Replace a tier's features (and description), named in the body.")
            .body::<TierBody>()
            .json::<TierView<'static>>(200)
            .error(404),
    ),
    route!(DELETE "/admin/tiers/{name}", Admin, admin::delete_tier).doc(
        doc("Delete a tier (by name or id) that no key belongs to; consumers lose the scope.")
            .json::<Status>(200)
            .error(409),
    ),
    route!(POST "/admin/keys", Admin, admin::add_key).doc(
        doc("Add a key: sealed at rest, servable at once.")
            .body::<KeyBody>()
            .json::<AddedKey<'static>>(201)
            .error(404)
            .error(422),
    ),
    route!(GET "/admin/keys", Admin, admin::list_keys).doc(
        doc("Keys by id with their live usage (never a value), filtered; paged, else streamed.")
            .paged(
                "Keys per page, from 1 (above 1000 reads as 1000); without it, every key.",
                "The id of the last key of the previous page.",
            )
            .query::<String>("tier", false, "Only the keys of this tier (by name).")
            .query::<KeyState>("state", false, "Only the keys in this state now.")
            .query::<String>("name_prefix", false, "Only the keys whose name starts so.")
            .json::<Vec<KeyView<'static>>>(200),
    ),
    route!(PATCH "/admin/keys/{id}", Admin, admin::patch_key).doc(
        doc("Change a key in place: its id, tier and counters stay.")
            .body::<KeyPatch>()
            .json::<PatchedKey<'static>>(200),
    ),
    route!(DELETE "/admin/keys/{id}", Admin, admin::delete_key)
        .doc(doc("Remove a key: never served again.").json::<Status>(200)),
    route!(GET "/admin/health", Admin, admin::health)
        .doc(doc("Pool size and key counts.").json::<PoolHealth<'static>>(200)),
    route!(POST "/admin/consumers", Admin, consumers::create).doc(
        doc("Create a consumer; its token is shown this once (a replay answers replayed: true).")
            .body::<ConsumerBody>()
            .json_either::<Created<'static>, Replayed<'static>>(201)
            .error(422),
    ),
    route!(GET "/admin/consumers", Admin, consumers::list).doc(
        doc("Consumers by id with their tiers; paged, else streamed.")
            .paged(
                "Consumers per page, from 1 (above 1000 reads as 1000); without it, every one.",
                "The id of the last consumer of the previous page.",
            )
            .json::<Vec<ConsumerView<'static>>>(200),
    ),
    route!(DELETE "/admin/consumers/{id}", Admin, consumers::delete)
        .doc(doc("Delete a consumer: its token stops working.").json::<Status>(200)),
    route!(POST "/admin/consumers/{id}/scopes", Admin, consumers::add_scope).doc(
        doc("Let a consumer draw keys from a tier.")
            .body::<ScopeBody>()
            .json::<ConsumerView<'static>>(200)
            .error(422),
    ),
    route!(DELETE "/admin/consumers/{id}/scopes/{tier}", Admin, consumers::remove_scope).doc(
        doc("Stop a consumer drawing keys from a tier (by name or id).")
            .json::<ConsumerView<'static>>(200),
    ),
    route!(POST "/admin/consumers/{id}/token", Admin, consumers::rotate_token).doc(
        doc("A new token for a consumer, shown this once; the old one is refused from now on.")
            .json_either::<Rotated<'static>, RotatedAgain<'static>>(200)
            .error(422),
    ),
    route!(GET "/admin/usage", Admin, admin::usage).doc(
        doc("The audit trail of served keys, newest first (404 when AUDIT is off).")
            .paged(
                "Events per page, from 1 (above 1000 reads as 1000; default 100).",
                "The id of an event: the page holds the events before it.",
            )
            .json::<Vec<UsageView<'static>>>(200)
            .error(404),
    ),
    route!(GET "/admin/backup", Admin, backup::backup).doc(
        doc("The database as it stands, as a redb file (one backup at a time).")
            .content(200, "application/octet-stream")
            .error(409),
    ),
    route!(GET "/metrics", MetricsToken, exporter::get_metrics)
        .doc(doc("Prometheus metrics.").content(200, exporter::CONTENT_TYPE)),
    route!(GET "/openapi.json", Public, openapi::document).doc(
        doc("This document: OpenAPI 3.1 of every route.").json_with(200, openapi::document_schema),
    ),
    route!(GET "/docs", Public, docs::page)
        .doc(doc("A page that renders this document.").content(200, page::HTML)),
    route!(GET "/docs/docs.js", Public, docs::script)
        .doc(doc("The script of the /docs page.").content(200, page::JAVASCRIPT)),
    route!(GET "/docs/docs.css", Public, docs::style)
        .doc(doc("The style sheet of the /docs page.").content(200, page::CSS)),
    route!(GET "/ui", Public, ui::page).doc(doc("The admin page.").content(200, page::HTML)),
    route!(GET "/ui/app.js", Public, ui::script)
        .doc(doc("The script of the admin page.").content(200, page::JAVASCRIPT)),
    route!(GET "/ui/app.css", Public, ui::style)
        .doc(doc("The style sheet of the admin page.").content(200, page::CSS)),
];

/// [`ROUTES`], through a function: the handler of `/openapi.json` reads the table it is an
/// entry of, which a constant in its body would make a cycle.
pub fn routes() -> Vec<Route> {
    ROUTES.to_vec()
}

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
    Status::response("ok")
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
