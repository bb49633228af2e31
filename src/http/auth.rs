//! Bearer tokens: reading one from the request, and comparing it with the admin token (the admin
//! routes and the `/key` routes) or the metrics token (`/metrics`, when set). Consumer tokens
//! (the `/key` routes only) are found by their hash in the snapshot instead ([`caller`]).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use secrecy::{ExposeSecret, SecretString};

use super::AppState;
use super::error::ApiError;
use crate::broker::{Caller, Catalog, Consumer, KeyEntry, Snapshot};
use crate::crypto::token_hash;

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

/// Compares in time that depends only on the lengths, never on where the bytes differ
/// (`constant_time_eq` compares a vector at a time; `subtle`'s byte-at-a-time loop took more
/// instructions per `GET /key` than the pick itself, PERFORMANCE.md).
pub fn same_token(token: &[u8], expected: &SecretString) -> bool {
    constant_time_eq::constant_time_eq(token, expected.expose_secret().as_bytes())
}

/// The admin, or the active consumer whose token this is (`GET /key`, and [`KeyCaller`]).
pub fn caller<'s>(
    app: &AppState,
    snapshot: &'s Snapshot,
    headers: &HeaderMap,
) -> Result<Caller<'s>, ApiError> {
    let token = bearer(headers)?;
    if is_admin(token, app.admin_token()) {
        return Ok(Caller::Admin);
    }
    // Consumer tokens are looked up by hash: the hash is what is stored, and a lookup by a
    // uniformly random digest leaks nothing about stored tokens through timing.
    snapshot
        .consumer(&token_hash(token))
        .map(Caller::Consumer)
        .ok_or(ApiError::Unauthorized("invalid token"))
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

/// Who acts on one key (`POST /key/{id}/report`, `/exhausted`, `/spend`): the admin, or an
/// active consumer (by its token), which may act only on keys of its scoped tiers. Extracted
/// before the body is read, so a request without a valid token is 401 whatever it carries.
pub enum KeyCaller {
    Admin,
    Consumer(Arc<Consumer>),
}

impl FromRequestParts<AppState> for KeyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        Ok(match caller(app, &app.pool().load(), &parts.headers)? {
            Caller::Admin => KeyCaller::Admin,
            Caller::Consumer(scoped) => KeyCaller::Consumer(Arc::clone(&scoped.consumer)),
        })
    }
}

impl KeyCaller {
    /// The id the audit trail names (`None`: the admin).
    pub fn id(&self) -> Option<Arc<str>> {
        match self {
            KeyCaller::Admin => None,
            KeyCaller::Consumer(consumer) => Some(Arc::clone(&consumer.id)),
        }
    }

    /// The key `id`, if this caller may act on it: 404 unknown, 403 outside a consumer's tiers.
    pub fn key<'c>(&self, catalog: &'c Catalog, id: &str) -> Result<&'c Arc<KeyEntry>, ApiError> {
        let key = catalog
            .key(id)
            .ok_or_else(|| ApiError::NotFound(format!("key not found: {id}")))?;
        match self {
            KeyCaller::Consumer(consumer) if !consumer.scopes.contains(&key.info.tier_id) => Err(
                ApiError::Forbidden("key not in this consumer's tiers".into()),
            ),
            _ => Ok(key),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn only_the_whole_token_matches() {
        let expected = SecretString::from("0123456789abcdef0123456789abcdef".to_owned());
        assert!(same_token(b"0123456789abcdef0123456789abcdef", &expected));
        for wrong in [
            &b"x123456789abcdef0123456789abcdef"[..],
            b"0123456789abcdef0123456789abcdex",
            b"0123456789abcdef0123456789abcde",
            b"0123456789abcdef0123456789abcdef0",
            b"",
        ] {
            assert!(!same_token(wrong, &expected), "{wrong:?}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_blind_and_the_token_trimmed() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "bEaReR  tok ".parse().unwrap());
        assert_eq!(bearer(&headers).unwrap(), b"tok");
        headers.insert(AUTHORIZATION, "Basic tok".parse().unwrap());
        assert!(bearer(&headers).is_err());
        headers.insert(AUTHORIZATION, "Bearer ".parse().unwrap());
        assert!(bearer(&headers).is_err());
    }
}
