//! `GET /ui`: the admin page. Static and public: three files compiled into the binary (no build
//! step, no CDN), served with a Content-Security-Policy that lets the page load only its own
//! script and style and talk only to this server. Every data call the page makes is an admin
//! API call with the admin token in its `Authorization` header, like any other client; the page
//! keeps the token in `sessionStorage` and never puts it in a URL.

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// What the page may load and reach: its own script and style (no inline script, no `eval`),
/// requests to this origin only, no plugins, no framing, no form posted anywhere (its forms
/// are handled by its script, so a form that somehow submitted would not carry the token
/// away in a URL).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `body` as `content_type`, with the page's security headers. `no-cache`: the browser checks
/// again after an upgrade instead of running an old script against a new server.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}
