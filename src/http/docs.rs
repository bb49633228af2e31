//! `GET /docs`: a page that renders `/openapi.json`, its script and style sheet embedded in the
//! binary (`src/http/docs/`). Nothing is fetched from anywhere but this server: every answer here
//! carries the pages' Content-Security-Policy ([`super::page`]), which allows scripts, styles
//! and requests from this origin only, and no inline script or style.

use axum::response::Response;

use super::page::{CSS, HTML, JAVASCRIPT, asset};

pub async fn page() -> Response {
    asset(HTML, include_str!("docs/index.html"))
}

pub async fn script() -> Response {
    asset(JAVASCRIPT, include_str!("docs/docs.js"))
}

pub async fn style() -> Response {
    asset(CSS, include_str!("docs/docs.css"))
}
