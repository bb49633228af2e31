//! HTTP: the route table, the state handlers share, auth, JSON bodies, the handlers of each
//! route (the online backup among them), the one error type, and the request metrics and
//! Prometheus exporter.

mod admin;
mod auth;
mod backup;
mod consumers;
mod error;
mod exporter;
mod idempotency;
mod json;
mod key;
mod request_metrics;
mod routes;
mod scrape;
mod spend;
mod state;

pub use error::{ApiError, json_response};
pub use exporter::{CONCURRENT_SCRAPES, PrometheusExporter};
pub use idempotency::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
pub use json::{BODY_LIMIT, parse_json};
pub use request_metrics::RequestMetricsService;
pub use routes::{Access, ROUTES, Route, Routed, api_router, metrics_router, router};
pub use state::AppState;
