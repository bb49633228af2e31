//! `GET /ui`: the admin page. Static and public: three files compiled into the binary (no build
//! step, no CDN), served under the pages' Content-Security-Policy ([`super::page`]), which lets
//! the page load only its own script and style and talk only to this server. Every data call
//! the page makes is an admin API call with the admin token in its `Authorization` header, like
//! any other client; the page keeps the token in `sessionStorage` and never puts it in a URL.

use axum::response::Response;

use super::page::{CSS, HTML, JAVASCRIPT, asset};

pub async fn page() -> Response {
    asset(HTML, include_str!("ui/index.html"))
}

pub async fn script() -> Response {
    asset(JAVASCRIPT, include_str!("ui/app.js"))
}

pub async fn style() -> Response {
    asset(CSS, include_str!("ui/app.css"))
}
