//! `GET /docs`: a page that renders `/openapi.json`, its script and style sheet embedded in the
//! binary (`assets/docs/`). Nothing is fetched from anywhere but this server: the
//! Content-Security-Policy every answer here carries allows scripts, styles and requests from
//! this origin only, and no inline script or style.

use axum::http::{HeaderValue, header};
use axum::response::Response;

pub const HTML: &str = "text/html; charset=utf-8";
pub const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
pub const CSS: &str = "text/css; charset=utf-8";

/// Only this origin, for everything; no plugin, no `<base>`, no framing, no form posts.
const POLICY: &str = "default-src 'self'; object-src 'none'; base-uri 'none'; \
                      frame-ancestors 'none'; form-action 'none'";

pub async fn page() -> Response {
    asset(HTML, include_str!("../../assets/docs/index.html"))
}

pub async fn script() -> Response {
    asset(JAVASCRIPT, include_str!("../../assets/docs/docs.js"))
}

pub async fn style() -> Response {
    asset(CSS, include_str!("../../assets/docs/docs.css"))
}

fn asset(media_type: &'static str, body: &'static str) -> Response {
    let mut response = Response::new(body.into());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
