//! `GET /key`: the hot path. One snapshot load, one pick, a body that was encoded when the key
//! was loaded. No lock, no I/O, no allocation beyond the response. Each answer increments one
//! outcome counter whose handle the snapshot holds.

use std::borrow::Cow;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::{bearer, is_admin};
use super::error::{ApiError, json_response};
use crate::broker::{Caller, Event, Pick, Snapshot};
use crate::crypto::token_hash;

pub async fn get_key(State(app): State<AppState>, request: Request) -> Response {
    serve(&app, &request).unwrap_or_else(IntoResponse::into_response)
}

fn serve(app: &AppState, request: &Request) -> Result<Response, ApiError> {
    let snapshot = app.pool().load();
    let query = request.uri().query();
    let caller = match caller(app, &snapshot, request.headers()) {
        Ok(caller) => caller,
        Err(err) => {
            let feature = feature_param(query).unwrap_or_default();
            snapshot.outcomes(&feature).unauthorized.increment(1);
            return Err(err);
        }
    };
    let feature = feature_param(query)?;
    match app.pool().pick_for(caller, &snapshot, &feature) {
        Pick::Served(key, feature_name) => {
            if let Some(audit) = app.audit() {
                audit.record(|| Event {
                    key_id: std::sync::Arc::clone(&key.info.id),
                    feature: std::sync::Arc::clone(feature_name),
                    consumer_id: match caller {
                        Caller::Admin => None,
                        Caller::Consumer(scoped) => {
                            Some(std::sync::Arc::clone(&scoped.consumer.id))
                        }
                    },
                    at_unix_ms: app.pool().clock().unix_now_ms(),
                });
            }
            Ok(json_response(StatusCode::OK, key.body()))
        }
        Pick::Spent(spent) => Err(ApiError::NoKeyAvailable {
            retry_after_secs: spent.retry_after_ms.div_ceil(1_000).max(1),
        }),
        Pick::UnknownFeature => Err(ApiError::NotFound(format!("unknown feature: {feature}"))),
        Pick::OutOfScope => Err(ApiError::Forbidden(format!(
            "feature not in this consumer's tiers: {feature}"
        ))),
    }
}

/// The admin, or the active consumer whose token this is.
fn caller<'s>(
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

/// The `feature` query parameter (the first one), borrowed from the URI unless it was
/// percent-encoded.
fn feature_param(query: Option<&str>) -> Result<Cow<'_, str>, ApiError> {
    let query = query.unwrap_or_default();
    let value = if query.bytes().any(|b| b == b'%' || b == b'+') {
        form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "feature")
            .map(|(_, value)| value)
    } else {
        // Nothing to decode (the usual query): the same pairs, without the decoder's copies
        // and UTF-8 checks, which took more instructions than the pick itself.
        query
            .split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|&(name, _)| name == "feature")
            .map(|(_, value)| Cow::Borrowed(value))
    };
    value
        .filter(|value| !value.is_empty())
        .ok_or_else(|| ApiError::BadRequest("feature query param required".into()))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What the parameter is by the form-urlencoded rules, always through the decoder.
    fn decoded(query: &str) -> Option<String> {
        form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "feature")
            .map(|(_, value)| value.into_owned())
            .filter(|value| !value.is_empty())
    }

    fn pair() -> impl Strategy<Value = String> {
        let name = prop::sample::select(vec!["feature", "feat", "f%65ature", "feature+", "", "é"]);
        let value = prop::sample::select(vec!["chat", "", "image%20gen", "a+b", "%zz", "é", "x=y"]);
        (name, any::<bool>(), value).prop_map(|(name, has_value, value)| {
            if has_value {
                format!("{name}={value}")
            } else {
                name.to_owned()
            }
        })
    }

    proptest! {
        #[test]
        fn the_fast_path_finds_what_the_decoder_finds(
            pairs in proptest::collection::vec(pair(), 0..5),
            separator in prop::sample::select(vec!["&", "&&"]),
        ) {
            let query = pairs.join(separator);
            let found = feature_param(Some(&query)).ok();
            let expected = decoded(&query);
            prop_assert_eq!(found.as_deref(), expected.as_deref(), "{}", query);
            if let Some(value) = found && !query.contains(['%', '+']) {
                prop_assert!(matches!(value, Cow::Borrowed(_)));
            }
        }
    }

    #[test]
    fn the_feature_param_is_found_decoded_and_required() {
        assert_eq!(feature_param(Some("feature=chat")).unwrap(), "chat");
        assert_eq!(
            feature_param(Some("x=1&feature=image%20gen")).unwrap(),
            "image gen"
        );
        assert!(matches!(
            feature_param(Some("feature=")),
            Err(ApiError::BadRequest(_))
        ));
        assert!(feature_param(None).is_err());
        assert!(matches!(
            feature_param(Some("feature=chat")).unwrap(),
            Cow::Borrowed(_)
        ));
    }
}
