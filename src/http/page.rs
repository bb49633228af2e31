//! The static pages' files (`/ui`, `/docs`): compiled into the binary, each answered with the
//! same security headers. One policy serves both pages: each loads its own script and style
//! (no inline script, no `eval`), talks only to this server, and needs nothing else, so the
//! strictest policy that lets them work is the same for both.

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};

pub const HTML: &str = "text/html; charset=utf-8";
pub const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
pub const CSS: &str = "text/css; charset=utf-8";

/// What a page may load and reach: its own script and style, requests to this origin only,
/// an inline empty icon (`data:`, so the browser asks for no `/favicon.ico`), no plugins, no
/// `<base>`, no framing, no form posted anywhere (the pages' forms are handled by their
/// scripts, so a form that somehow submitted would not carry the admin token away in a URL).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `body` as `content_type`, with the pages' security headers. `no-cache`: the browser checks
/// again after an upgrade instead of running an old script against a new server.
pub fn asset(content_type: &'static str, body: &'static str) -> Response {
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
