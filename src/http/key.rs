//! `GET /key`: the hot path. One snapshot load, one pick, a body that was encoded when the key
//! was loaded. No lock, no I/O, no allocation beyond the response. Each answer increments one
//! outcome counter whose handle the snapshot holds.
//!
//! `cost=<n>` draws n units of the served key's window in the same pick. `wait=<seconds>` sends
//! a request that finds no key free to [`super::wait`], off the hot path: without it (or with
//! `wait=0`) a request never touches the waiters.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::{Schema, SchemaGenerator, json_schema};

use super::AppState;
use super::auth::caller;
use super::error::{ApiError, json_response};
use super::wait::{Waiting, Who};
use crate::broker::{Caller, Event, KeyEntry, MAX_RATE_LIMIT, Pick, Tally};

/// The longest `wait`, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 30;

pub async fn get_key(State(app): State<AppState>, request: Request) -> Response {
    match serve(&app, &request) {
        Ok(response) => response,
        Err(Refused::Now(err)) => err.into_response(),
        // Boxed: the waiting path's timer and channel stay out of every request's future.
        Err(Refused::Wait(waiting)) => Box::pin(super::wait::wait(&app, waiting))
            .await
            .unwrap_or_else(IntoResponse::into_response),
    }
}

/// Whether `request` may wait for a key: any request to `/key`, which the server bounds by the
/// longest wait rather than by `REQUEST_TIMEOUT`. Only [`serve`] reads `wait`: a request to
/// `/key` that does not wait is answered at its first poll, before any timeout could fire, so
/// the path alone decides and the query is not scanned twice.
pub fn waits<B>(request: &axum::http::Request<B>) -> bool {
    request.uri().path() == "/key"
}

/// Why the hot path did not answer a key.
enum Refused {
    Now(ApiError),
    /// The request asked to wait, and waits off the hot path.
    Wait(Waiting),
}

impl From<ApiError> for Refused {
    fn from(err: ApiError) -> Self {
        Refused::Now(err)
    }
}

fn serve(app: &AppState, request: &Request) -> Result<Response, Refused> {
    let snapshot = app.pool().load();
    let [feature, cost, wait] = query_params(request.uri().query(), ["feature", "cost", "wait"]);
    let caller = match caller(app, &snapshot, request.headers()) {
        Ok(caller) => caller,
        Err(err) => {
            let feature = feature.unwrap_or_default();
            snapshot.outcomes(&feature).unauthorized.increment(1);
            return Err(err.into());
        }
    };
    let feature = required_feature(feature)?;
    let cost = cost.map_or(Ok(1), |text| cost_param(&text))?;
    if let Some(wait) = wait {
        let wait_ms = wait_param(&wait)?;
        if wait_ms > 0 {
            let who = match caller {
                Caller::Admin => Who::Admin,
                Caller::Consumer(scoped) => Who::Consumer(scoped.consumer.token_hash),
            };
            return Err(Refused::Wait(Waiting {
                who,
                feature: feature.into_owned(),
                cost,
                wait_ms,
            }));
        }
    }
    let pick = app
        .pool()
        .draw(caller, &snapshot, &feature, cost, Tally::Counted);
    let (key, feature_name) = served(pick, &feature)?;
    let consumer = match caller {
        Caller::Admin => None,
        Caller::Consumer(scoped) => Some(&scoped.consumer.id),
    };
    Ok(answer(app, key, feature_name, consumer))
}

/// The served key and the pool's name of its feature, or the error a refusal answers.
pub(super) fn served<'s>(
    pick: Pick<'s>,
    feature: &str,
) -> Result<(&'s Arc<KeyEntry>, &'s Arc<str>), ApiError> {
    match pick {
        Pick::Served(key, feature_name) => Ok((key, feature_name)),
        Pick::Spent(spent) => Err(ApiError::NoKeyAvailable {
            retry_after_secs: spent.retry_after_ms.div_ceil(1_000).max(1),
        }),
        Pick::UnknownFeature => Err(ApiError::NotFound(format!("unknown feature: {feature}"))),
        Pick::OutOfScope => Err(ApiError::Forbidden(format!(
            "feature not in this consumer's tiers: {feature}"
        ))),
        Pick::AboveLimit(max) => Err(ApiError::BadRequest(format!(
            "cost must be at most {max}, the largest rate_limit a tier gives {feature}"
        ))),
    }
}

/// The key's pre-encoded body, recorded in the audit trail when it is on.
pub(super) fn answer(
    app: &AppState,
    key: &Arc<KeyEntry>,
    feature: &Arc<str>,
    consumer: Option<&Arc<str>>,
) -> Response {
    if let Some(audit) = app.audit() {
        audit.record(|| Event {
            key_id: Arc::clone(&key.info.id),
            feature: Arc::clone(feature),
            consumer_id: consumer.map(Arc::clone),
            at_unix_ms: app.pool().clock().unix_now_ms(),
        });
    }
    json_response(StatusCode::OK, key.body())
}

/// The first value of each of `names` in the query, in one pass, borrowed from the URI unless
/// it was percent-encoded.
fn query_params<'q, const N: usize>(
    query: Option<&'q str>,
    names: [&str; N],
) -> [Option<Cow<'q, str>>; N] {
    let query = query.unwrap_or_default();
    let mut found = [const { None }; N];
    let mut keep = |name: &str, value: Cow<'q, str>| {
        if let Some(i) = names.iter().position(|wanted| *wanted == name)
            && found[i].is_none()
        {
            found[i] = Some(value);
        }
    };
    if query.bytes().any(|b| b == b'%' || b == b'+') {
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            keep(&name, value);
        }
    } else {
        // Nothing to decode (the usual query): the same pairs, without the decoder's copies
        // and UTF-8 checks, which took more instructions than the pick itself.
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            keep(name, Cow::Borrowed(value));
        }
    }
    found
}

/// The `feature` parameter, required non-empty.
fn required_feature(value: Option<Cow<'_, str>>) -> Result<Cow<'_, str>, ApiError> {
    value
        .filter(|value| !value.is_empty())
        .ok_or_else(|| ApiError::BadRequest("feature query param required".into()))
}

/// `cost`: an integer from 1 to [`MAX_RATE_LIMIT`] (then at most the feature's largest limit,
/// which the pick checks).
fn cost_param(text: &str) -> Result<u32, ApiError> {
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_RATE_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "cost must be an integer from 1 to {MAX_RATE_LIMIT}"
            ))
        })
}

/// The schema of `cost`, as [`cost_param`] reads it.
pub(super) fn cost_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "minimum": 1, "maximum": MAX_RATE_LIMIT})
}

/// The schema of `wait`, as [`wait_param`] reads it.
pub(super) fn wait_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS})
}

/// `wait`: seconds from 0 to [`MAX_WAIT_SECONDS`], fractions allowed, as milliseconds (rounded
/// up).
fn wait_param(text: &str) -> Result<u64, ApiError> {
    text.parse::<f64>()
        .ok()
        .filter(|s| (0.0..=MAX_WAIT_SECONDS as f64).contains(s))
        .map(|s| (s * 1_000.0).ceil() as u64)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS}"
            ))
        })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn feature_param(query: Option<&str>) -> Result<Cow<'_, str>, ApiError> {
        let [feature] = query_params(query, ["feature"]);
        required_feature(feature)
    }

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

    #[test]
    fn feature_cost_and_wait_are_found_in_one_pass() {
        let [feature, cost, wait] = query_params(
            Some("wait=2.5&feature=chat&cost=3&cost=9"),
            ["feature", "cost", "wait"],
        );
        assert_eq!(feature.as_deref(), Some("chat"));
        assert_eq!(cost.as_deref(), Some("3"), "the first one counts");
        assert_eq!(wait.as_deref(), Some("2.5"));
        let [feature, cost, wait] =
            query_params(Some("feature=a%20b&wait"), ["feature", "cost", "wait"]);
        assert_eq!(feature.as_deref(), Some("a b"));
        assert_eq!(cost, None);
        assert_eq!(wait.as_deref(), Some(""));
    }

    #[test]
    fn cost_is_a_whole_number_of_units_and_wait_at_most_thirty_seconds() {
        assert_eq!(cost_param("1").unwrap(), 1);
        assert_eq!(cost_param("2147483647").unwrap(), MAX_RATE_LIMIT);
        for bad in ["0", "-1", "1.5", "x", "", "2147483648", " 3"] {
            let err = cost_param(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                "cost must be an integer from 1 to 2147483647"
            );
        }
        assert_eq!(wait_param("0").unwrap(), 0);
        assert_eq!(wait_param("30").unwrap(), 30_000);
        assert_eq!(wait_param("0.0015").unwrap(), 2);
        for bad in ["31", "30.001", "-1", "x", "", "NaN", "inf", "1s"] {
            let err = wait_param(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                "wait must be a number of seconds from 0 to 30"
            );
        }
    }
}
