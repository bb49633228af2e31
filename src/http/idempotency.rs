//! The `Idempotency-Key` header of the admin POST routes: reading it with the JSON body, and
//! answering a replay. The writer applies and stores (see [`crate::writer::Once`]); this side
//! says what an answer looks like on the wire, once, for both the first answer and the stored
//! one.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde::de::DeserializeOwned;

use super::error::{ApiError, json_response};
use super::json::{parse_json, read_body};
use crate::broker::Catalog;
use crate::writer::{Answer, Idempotency, IdempotencyKey, StoredAnswer, WriteError};

/// The request header naming an idempotency key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The response header marking a stored answer given again.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// An answer's status and JSON body.
pub type Answered = (StatusCode, Vec<u8>);

/// A JSON body, and the request's idempotency key when it sent one (fingerprinted with the
/// method, the path and the body's bytes). A malformed key is a 400, before the body is read.
pub struct Retryable<T> {
    pub body: T,
    pub once: Option<Idempotency>,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Retryable<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (once, bytes) = keyed_body(req, state).await?;
        Ok(Self {
            body: parse_json(&bytes)?,
            once,
        })
    }
}

/// The idempotency key of a request that takes no body (whatever body it has is ignored, but
/// fingerprinted with the rest).
pub struct RetryableBodiless {
    pub once: Option<Idempotency>,
}

impl<S: Send + Sync> FromRequest<S> for RetryableBodiless {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (once, _) = keyed_body(req, state).await?;
        Ok(Self { once })
    }
}

/// The request's idempotency key, fingerprinted with its method, path and body, and the body.
/// A malformed key is a 400, before the body is read.
async fn keyed_body<S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<(Option<Idempotency>, bytes::Bytes), ApiError> {
    let mut sent = req.headers().get_all(IDEMPOTENCY_KEY).iter();
    let key = match (sent.next(), sent.next()) {
        (None, _) => None,
        (Some(value), None) => Some(IdempotencyKey::parse(value.as_bytes())?),
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "send at most one Idempotency-Key header".into(),
            ));
        }
    };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let bytes = read_body(req, state).await?;
    let once = key.map(|key| Idempotency::new(key, method.as_str(), &path, &bytes));
    Ok((once, bytes))
}

/// What to store for a write's answer, rendered by `applied` when it succeeded: every answer but
/// a server error, which a retry should try again.
pub fn stored<O>(
    answer: &Result<O, WriteError>,
    catalog: &Catalog,
    applied: fn(&O, &Catalog) -> Answered,
) -> Option<StoredAnswer> {
    let (status, body) = match answer {
        Ok(output) => applied(output, catalog),
        Err(err) => {
            let err = ApiError::from(err);
            (err.status(), err.body())
        }
    };
    if status.is_server_error() {
        return None;
    }
    Some(StoredAnswer {
        status: status.as_u16(),
        // The views and errors are serde_json's output: UTF-8.
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The response to a write: rendered by `applied` when applied now (over the current catalog),
/// else the stored answer, marked as a replay.
pub fn respond<O>(
    answer: Answer<O>,
    catalog: &Catalog,
    applied: fn(&O, &Catalog) -> Answered,
) -> Response {
    match answer {
        Answer::Applied(output) => {
            let (status, body) = applied(&output, catalog);
            json_response(status, body)
        }
        Answer::Replayed(stored) => {
            let status =
                StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = json_response(status, stored.body);
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            response
        }
    }
}
