//! Bearer tokens: the admin token (every route), the metrics token (`/metrics`, when set) and,
//! later, consumer tokens (`GET /key` only).

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::app::AppState;

/// The token a request presents, borrowed from its headers.
pub fn bearer(headers: &HeaderMap) -> Result<&[u8], ApiError> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("missing authorization header"))?
        .as_bytes();
    let invalid = ApiError::Unauthorized("invalid authorization format");
    let space = value.iter().position(|b| *b == b' ').ok_or(invalid)?;
    let (scheme, rest) = value.split_at(space);
    let token = rest.trim_ascii();
    if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
        return Err(ApiError::Unauthorized("invalid authorization format"));
    }
    Ok(token)
}

/// Whether `token` is the admin token.
pub fn is_admin(token: &[u8], admin: &SecretString) -> bool {
    same_token(token, admin)
}

/// Compares in time that depends only on the lengths, never on where the bytes differ.
pub fn same_token(token: &[u8], expected: &SecretString) -> bool {
    let expected = expected.expose_secret().as_bytes();
    token.len() == expected.len() && bool::from(token.ct_eq(expected))
}

/// Proof that a request carries the admin token; extracting it answers 401 otherwise.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        if is_admin(bearer(&parts.headers)?, app.admin_token()) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized("invalid token"))
        }
    }
}
