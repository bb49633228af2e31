//! Key health: `POST /key/{id}/report` (what the provider answered) and
//! `POST /key/{id}/exhausted` (not to be served until a time). The admin token, or a consumer
//! token for keys of its scoped tiers.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use schemars::JsonSchema;
use serde::Serialize;

use super::AppState;
use super::admin::{json, rfc3339};
use super::auth::KeyCaller;
use super::error::ApiError;
use super::json::JsonBody;
use crate::broker::{
    Catalog, ExhaustedBody, KeyEntry, KeyHealth, KeyState, Now, Outcome, ReportBody,
};
use crate::writer::{Exhaustion, HealthReport};

/// `{"key_id","state","until","cooldowns"}`.
#[derive(Serialize, JsonSchema)]
pub struct HealthView<'a> {
    key_id: &'a str,
    #[schemars(with = "KeyState")]
    state: &'static str,
    /// When the state ends by itself (RFC 3339), if it does.
    until: Option<String>,
    /// The features cooling, with when each ends.
    cooldowns: BTreeMap<&'a str, String>,
}

fn health_view<'a>(key: &'a KeyEntry, health: &'a KeyHealth) -> HealthView<'a> {
    HealthView {
        key_id: &key.info.id,
        state: health.state.as_str(),
        until: health.until_ms.map(rfc3339),
        cooldowns: health
            .cooldowns
            .iter()
            .map(|(feature, until)| (&**feature, rfc3339(*until)))
            .collect(),
    }
}

pub async fn report(
    reporter: KeyCaller,
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReportBody>,
) -> Result<Response, ApiError> {
    let now = Now::read(app.pool().clock());
    let report = body.parse(now.unix_ms)?;
    let snapshot = app.pool().load();
    let key = reporter.key(&snapshot.catalog, &id)?;
    let feature = match report.feature {
        None => None,
        Some(feature) => Some(listed_feature(&snapshot.catalog, key, &feature)?),
    };
    // A success for a key with no failure run changes nothing durable, nor does a 429 inside
    // the cooldown it would set (another caller's report of the same refusal): answered from
    // memory, so such reports may come at the rate of `GET /key`.
    let unchanged = match report.outcome {
        Outcome::Success => !key.health.in_failure_run(),
        Outcome::TooManyRequests { .. } => {
            let state = key.health.state();
            let policy = app.writer().health_policy();
            state.after(report.outcome, feature.as_ref(), now, policy) == *state
        }
        _ => false,
    };
    if unchanged {
        app.pool().reports().count(report.outcome);
        let health = key.health_at(&key.health.state(), now);
        return Ok(json(StatusCode::OK, &health_view(key, &health)));
    }
    let reported = app
        .writer()
        .report(HealthReport {
            key_id: id,
            reporter: reporter.id(),
            outcome: report.outcome,
            feature,
        })
        .await?;
    app.pool().reports().count(report.outcome);
    Ok(json(
        StatusCode::OK,
        &health_view(&reported.key, &reported.health),
    ))
}

/// The key's tier's own name of `feature`: 400 if the tier does not list it.
fn listed_feature(catalog: &Catalog, key: &KeyEntry, feature: &str) -> Result<Arc<str>, ApiError> {
    catalog
        .tier_by_id(&key.info.tier_id)
        .and_then(|tier| tier.features.get_key_value(feature))
        .map(|(name, _)| Arc::clone(name))
        .ok_or_else(|| {
            ApiError::BadRequest(format!("the key's tier does not list feature {feature}"))
        })
}

/// `{"status":"exhausted","until"}`, as the Go service answers.
#[derive(Serialize, JsonSchema)]
pub struct ExhaustedView {
    status: &'static str,
    until: String,
}

pub async fn exhausted(
    reporter: KeyCaller,
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ExhaustedBody>,
) -> Result<Response, ApiError> {
    let until_ms = body.parse(app.pool().clock().unix_now_ms())?;
    reporter.key(&app.pool().load().catalog, &id)?;
    app.writer()
        .exhaust(Exhaustion {
            key_id: id,
            reporter: reporter.id(),
            until_ms,
        })
        .await?;
    let view = ExhaustedView {
        status: "exhausted",
        until: rfc3339(until_ms),
    };
    Ok(json(StatusCode::OK, &view))
}
