//! Two request timeouts, chosen per request: `REQUEST_TIMEOUT` for every request but those that
//! may wait for a key, which their wait bounds instead.

use std::task::{Context, Poll};

use axum::http::Request;
use tower::Service;

use crate::http::waits;

/// Calls `waiting` for the requests that may wait for a key ([`waits`]), `request` for the
/// others. Both are the same service under different timeouts, so their futures are of one
/// type: nothing is boxed.
#[derive(Clone)]
pub struct Timeouts<S> {
    pub request: S,
    pub waiting: S,
}

impl<S, B> Service<Request<B>> for Timeouts<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.request.poll_ready(cx) {
            Poll::Ready(Ok(())) => self.waiting.poll_ready(cx),
            other => other,
        }
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        if waits(&request) {
            self.waiting.call(request)
        } else {
            self.request.call(request)
        }
    }
}
