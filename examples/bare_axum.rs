//! The ceiling `loadtest/run.sh --bare` measures keypooler against: the smallest axum server,
//! one route answering `{"status":"ok"}` on the same tokio runtime, with none of keypooler's
//! work (no token, no metrics, no timeouts, no connection limit). What it reaches on a machine is
//! what HTTP alone costs there.
//!
//! `cargo run --release --example bare_axum -- PORT` (default 18090); serves until killed.

use axum::Router;
use axum::http::header;
use axum::routing::get;

fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        None => 18090,
        Some(port) => port.parse().map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "usage: bare_axum [PORT]")
        })?,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let router = Router::new().route(
                "/health",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        r#"{"status":"ok"}"#,
                    )
                }),
            );
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            axum::serve(listener, router).await
        })
}
