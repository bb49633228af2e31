//! The connection loop: accepts TCP connections under a limit, serves each with HTTP/1.1 under a
//! header read timeout and a request timeout, and shuts down gracefully.
//!
//! * At most [`ConnectionLimits::max_connections`] connections are open at once: a permit is
//!   taken *before* `accept`, so a connection over the limit waits in the kernel's listen
//!   backlog (its client sees no answer yet, nothing is read from it) until another closes.
//! * A client must send a whole request head within
//!   [`ConnectionLimits::header_read_timeout`], counted from the moment the server starts
//!   reading it (connection open, or the end of the previous response on a kept-alive
//!   connection); otherwise the connection is closed without a reply. This also closes idle
//!   kept-alive connections, so a silent client cannot hold a permit.
//! * Each request must be answered within [`ConnectionLimits::request_timeout`], reading its
//!   body included; otherwise it gets `408 {"error": "request timed out"}`. A `GET /key`, which
//!   may wait for a key (`wait=`), is bounded by its wait instead: it gets at least
//!   [`MAX_WAIT_SECONDS`] and a second (one that does not wait answers without awaiting).
//! * A write that makes no progress for [`ConnectionLimits::write_timeout`] (the client reads
//!   nothing, the socket's buffers are full) closes the connection, so a client that never
//!   reads cannot hold a permit.
//! * Pipelined requests are answered one at a time, and the next is read only once the answer
//!   before it is in the connection's write buffer, which holds at most [`BUFFER_BYTES`] plus
//!   one answer; the read buffer holds at most [`BUFFER_BYTES`]. A client that pipelines and
//!   never reads therefore gets answers only until the kernel's socket buffers and these are
//!   full, and then holds about twice [`BUFFER_BYTES`] plus one answer of memory and no thread
//!   (a stalled connection is a parked task), until the write timeout closes it.
//! * With [`ConnectionLimits::max_connections_per_ip`], a connection from an address that has
//!   that many open already is closed as soon as it is accepted.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::util::MapResponse;
use tower_http::timeout::Timeout;

use crate::config::ConnectionLimits;
use crate::http::{ApiError, MAX_WAIT_SECONDS, Routed};

mod per_ip;
mod timeouts;
mod write_timeout;

use per_ip::PerIp;
use timeouts::Timeouts;
use write_timeout::WriteTimeout;

/// The most a connection's read buffer holds, and the most its write buffer holds before the
/// answer it is writing (hyper's `max_buf_size`). A request head must fit (else 431); bodies
/// and answers of any size stream through it.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// Answers a request that ran out of time with the JSON error every other failure has.
/// tower-http's timeout answers with an empty body and no content type; nothing else in
/// keypooler answers 408.
fn timeout_as_json(response: Response) -> Response {
    if response.status() == StatusCode::REQUEST_TIMEOUT
        && !response.headers().contains_key(header::CONTENT_TYPE)
    {
        ApiError::RequestTimeout.into_response()
    } else {
        response
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` resolves; then stops
/// accepting, lets every open connection finish its in-flight request, and returns once all
/// are closed.
pub async fn serve(
    listener: TcpListener,
    router: Routed,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Wrapping the router whole (not each route with `Router::layer`) keeps both layers free of
    // allocation: their futures live inline in the connection's.
    let waiting_timeout = limits
        .request_timeout
        .max(Duration::from_secs(MAX_WAIT_SECONDS + 1));
    let service = MapResponse::new(
        Timeouts {
            request: Timeout::with_status_code(
                router.clone(),
                StatusCode::REQUEST_TIMEOUT,
                limits.request_timeout,
            ),
            waiting: Timeout::with_status_code(
                router,
                StatusCode::REQUEST_TIMEOUT,
                waiting_timeout,
            ),
        },
        timeout_as_json as fn(Response) -> Response,
    );
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Answers are small: one buffer copied whole beats a vectored write of head and body.
        .writev(false)
        .max_buf_size(BUFFER_BYTES);
    let per_ip = limits.max_connections_per_ip.map(PerIp::new);
    let permits = Arc::new(Semaphore::new(limits.max_connections as usize));
    let (stop, stopping) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => {
                permit.expect("the semaphore is never closed")
            }
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    if accept_failed(&err, &mut shutdown).await {
                        break;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match &per_ip {
            None => None,
            Some(per_ip) => match per_ip.admit(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(%peer, "connection closed: MAX_CONNECTIONS_PER_IP reached");
                    continue;
                }
            },
        };
        // Small JSON answers: send them at once rather than wait to coalesce.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let connection = builder
            .serve_connection(
                TokioIo::new(WriteTimeout::new(stream, limits.write_timeout)),
                TowerToHyperService::new(service.clone()),
            )
            .into_owned();
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                _ = stopping.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = outcome {
                tracing::debug!(%peer, error = %err, "connection closed");
            }
            drop(slot);
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop.send(());
    // Every connection holds a permit until it closes: all of them back means all are done.
    let _all_closed = permits
        .acquire_many(limits.max_connections)
        .await
        .expect("the semaphore is never closed");
    Ok(())
}

/// An `accept` error: a client that gave up is nothing to wait for; running out of file
/// descriptors or memory is, briefly, so the loop does not spin. True if `shutdown` resolved
/// meanwhile.
async fn accept_failed(
    err: &std::io::Error,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return false;
    }
    tracing::error!(error = %err, "cannot accept a connection; retrying in 1 s");
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => false,
        () = shutdown => true,
    }
}
