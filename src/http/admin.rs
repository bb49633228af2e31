//! The admin API: tiers, keys, pool health. Reads come from the current snapshot; writes go
//! through the writer and answer once they are on disk and published.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;

use super::AppState;
use super::auth::Admin;
use super::error::{ApiError, json_response};
use super::idempotency::{Answered, Retryable, respond, stored};
use super::json::JsonBody;
use crate::broker::{Catalog, KeyBody, KeyEntry, Limit, NewKey, Tier, TierBody, TierSpec};

pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    json_response(status, to_json(body))
}

pub fn to_json<T: Serialize>(body: &T) -> Vec<u8> {
    serde_json::to_vec(body).expect("admin views always serialize")
}

/// RFC 3339, UTC, from unix milliseconds.
pub fn rfc3339(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[derive(Serialize, JsonSchema)]
pub struct TierView<'a> {
    id: &'a str,
    name: &'a str,
    description: &'a str,
    features: BTreeMap<&'a str, Limit>,
    created_at: String,
}

impl<'a> From<&'a Tier> for TierView<'a> {
    fn from(tier: &'a Tier) -> Self {
        Self {
            id: &tier.id,
            name: &tier.name,
            description: &tier.description,
            features: tier.features.iter().map(|(f, l)| (&**f, *l)).collect(),
            created_at: rfc3339(tier.created_at_ms),
        }
    }
}

fn tier_created(tier: &Arc<Tier>, _: &Catalog) -> Answered {
    (StatusCode::CREATED, to_json(&TierView::from(&**tier)))
}

pub async fn create_tier(
    _: Admin,
    State(app): State<AppState>,
    Retryable { body, once }: Retryable<TierBody>,
) -> Result<Response, ApiError> {
    let spec = TierSpec::try_from(body)?;
    let once = once.map(|once| once.answered_by(|done, at| stored(done, at, tier_created)));
    let answer = app.writer().create_tier(spec, once).await?;
    Ok(respond(answer, &app.pool().load().catalog, tier_created))
}

pub async fn update_tier(
    _: Admin,
    State(app): State<AppState>,
    JsonBody(body): JsonBody<TierBody>,
) -> Result<Response, ApiError> {
    let tier = app.writer().update_tier(TierSpec::try_from(body)?).await?;
    Ok(json(StatusCode::OK, &TierView::from(&*tier)))
}

pub async fn list_tiers(_: Admin, State(app): State<AppState>) -> Response {
    let snapshot = app.pool().load();
    let tiers: Vec<TierView<'_>> = snapshot
        .catalog
        .tiers()
        .map(|tier| TierView::from(&**tier))
        .collect();
    json(StatusCode::OK, &tiers)
}

#[derive(Serialize, JsonSchema)]
pub struct AddedKey<'a> {
    id: &'a str,
    name: &'a str,
    tier: &'a str,
}

fn key_added(key: &Arc<KeyEntry>, catalog: &Catalog) -> Answered {
    let tier = catalog.tier_by_id(&key.info.tier_id);
    let added = AddedKey {
        id: &key.info.id,
        name: &key.info.name,
        tier: tier.map_or("", |tier| &tier.name),
    };
    (StatusCode::CREATED, to_json(&added))
}

pub async fn add_key(
    _: Admin,
    State(app): State<AppState>,
    Retryable { body, once }: Retryable<KeyBody>,
) -> Result<Response, ApiError> {
    let key = NewKey::try_from(body)?;
    let once = once.map(|once| once.answered_by(|done, at| stored(done, at, key_added)));
    let answer = app.writer().add_key(key, once).await?;
    Ok(respond(answer, &app.pool().load().catalog, key_added))
}

#[derive(Serialize, JsonSchema)]
pub struct Usage {
    used: u32,
    limit: u32,
    window_seconds: u32,
}

#[derive(Serialize, JsonSchema)]
pub struct KeyView<'a> {
    id: &'a str,
    name: &'a str,
    tier_id: &'a str,
    tier: &'a str,
    is_active: bool,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    usage: BTreeMap<&'a str, Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_limit: Option<u32>,
    /// Uses counted against `usage_limit` in its current window (or lifetime).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_window_seconds: Option<u32>,
}

fn key_view<'a>(catalog: &'a Catalog, key: &'a KeyEntry, now: u64) -> KeyView<'a> {
    let cap = key.usage.as_deref();
    let usage_count = cap.map(|cap| {
        let (end, used) = cap.used();
        if crate::broker::to_cap_seconds(now) >= end {
            0
        } else {
            used
        }
    });
    let tier = catalog.tier_by_id(&key.info.tier_id);
    let usage = catalog
        .budgets(key, now)
        .map(|(feature, budget)| {
            let usage = Usage {
                used: budget.used,
                limit: budget.limit.rate_limit,
                window_seconds: budget.limit.window_seconds,
            };
            (&**feature, usage)
        })
        .collect();
    KeyView {
        id: &key.info.id,
        name: &key.info.name,
        tier_id: &key.info.tier_id,
        tier: tier.map_or("", |tier| &tier.name),
        is_active: key.info.active,
        created_at: rfc3339(key.info.created_at_ms),
        expires_at: key.info.expires_at_ms.map(rfc3339),
        usage,
        usage_limit: cap.map(|cap| cap.limit),
        usage_count,
        usage_window_seconds: cap.and_then(|cap| cap.window_s),
    }
}

pub async fn list_keys(_: Admin, State(app): State<AppState>) -> Response {
    let snapshot = app.pool().load();
    let now = app.pool().clock().now_ms();
    let keys: Vec<KeyView<'_>> = snapshot
        .catalog
        .keys()
        .map(|key| key_view(&snapshot.catalog, key, now))
        .collect();
    json(StatusCode::OK, &keys)
}

pub async fn delete_key(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    app.writer().delete_key(id).await?;
    Ok(deleted())
}

/// `{"status": "…"}`: the liveness check's answer, and a deletion's.
#[derive(Serialize, JsonSchema)]
pub struct Status {
    /// `ok` or `deleted`.
    status: &'static str,
}

impl Status {
    pub fn response(status: &'static str) -> Response {
        json(StatusCode::OK, &Self { status })
    }
}

/// The answer to a successful `DELETE`.
pub fn deleted() -> Response {
    Status::response("deleted")
}

#[derive(Serialize, JsonSchema)]
pub struct PoolHealth<'a> {
    pool_size: usize,
    active_keys: usize,
    tiers: usize,
    features: usize,
    encryption: bool,
    keys_by_tier: BTreeMap<&'a str, usize>,
}

pub async fn health(_: Admin, State(app): State<AppState>) -> impl IntoResponse {
    let snapshot = app.pool().load();
    let catalog = &snapshot.catalog;
    let now = app.pool().clock().unix_now_ms();
    let mut active_keys = 0;
    let keys_by_tier = catalog
        .tier_keys(now)
        .map(|(tier, keys)| {
            active_keys += keys.active;
            (&*tier.name, keys.total)
        })
        .collect();
    let health = PoolHealth {
        pool_size: catalog.key_count(),
        active_keys,
        tiers: catalog.tier_count(),
        features: snapshot.feature_count(),
        encryption: true,
        keys_by_tier,
    };
    json(StatusCode::OK, &health)
}

#[derive(Serialize, JsonSchema)]
pub struct UsageView<'a> {
    key_id: &'a str,
    /// `"admin"` for the admin token.
    consumer_id: &'a str,
    feature: &'a str,
    created_at: String,
}

/// `?limit=N`: 1 or more (default 100); above 1000 reads as 1000.
fn usage_limit(query: Option<&str>) -> Result<usize, ApiError> {
    let Some((_, text)) = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(name, _)| name == "limit")
    else {
        return Ok(100);
    };
    text.parse::<u64>()
        .ok()
        .filter(|n| *n >= 1)
        .map(|n| n.min(1_000) as usize)
        .ok_or_else(|| ApiError::BadRequest("limit must be an integer from 1 to 1000".into()))
}

pub async fn usage(
    _: Admin,
    State(app): State<AppState>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let limit = usage_limit(uri.query())?;
    if app.audit().is_none() {
        return Err(ApiError::NotFound(
            "the audit trail is off (start with AUDIT=on to record usage)".into(),
        ));
    }
    let events = app.writer().recent_usage(limit).await?;
    let views: Vec<UsageView<'_>> = events
        .iter()
        .map(|event| UsageView {
            key_id: &event.key_id,
            consumer_id: event.consumer_id.as_deref().unwrap_or("admin"),
            feature: &event.feature,
            created_at: rfc3339(event.created_at_ms),
        })
        .collect();
    Ok(json(StatusCode::OK, &views))
}
