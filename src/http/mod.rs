//! HTTP: the route table, the state handlers share, auth, JSON bodies, the handlers of each
//! route (the online backup among them), paged and streamed listings, the one error type, the
//! request metrics and Prometheus exporter, and the admin page (`/ui`).

mod admin;
mod auth;
mod backup;
mod consumers;
mod docs;
mod error;
mod exporter;
mod health;
mod idempotency;
mod json;
mod key;
mod listing;
mod openapi;
mod page;
mod request_metrics;
mod routes;
mod scrape;
mod spend;
mod state;
mod stream;
mod ui;
mod wait;

pub use error::{ApiError, json_response};
pub use exporter::{CONCURRENT_SCRAPES, PrometheusExporter};
pub use idempotency::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
pub use json::{BODY_LIMIT, parse_json};
pub use key::{MAX_WAIT_SECONDS, waits};
pub use openapi::Doc;
pub use request_metrics::RequestMetricsService;
pub use routes::{Access, ROUTES, Route, Routed, api_router, metrics_router, router};
pub use state::AppState;
pub use wait::Waiters;
