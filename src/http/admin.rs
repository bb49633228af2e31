//! The admin API: tiers, keys, pool health. Reads come from the current snapshot; writes go
//! through the writer and answer once they are on disk and published.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;

use super::AppState;
use super::auth::Admin;
use super::error::{ApiError, json_response};
use super::idempotency::{Answered, Retryable, respond, stored};
use super::json::JsonBody;
use super::listing::{Items, Listing, Source, list};
use crate::broker::{
    Amount, Catalog, Deadline, HealthState, KeyBody, KeyBudget, KeyEntry, KeyPatch, KeyPatchBody,
    KeyState, Limit, NewKey, Now, Snapshot, Tier, TierBody, TierSpec, Unit,
};

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

/// The answer to `POST /admin/keys`: the seed's `id`, `name` and `tier`, and the fields the Go
/// service's later versions added (`null` where not set; never a value or secret).
#[derive(Serialize, JsonSchema)]
pub struct AddedKey<'a> {
    id: &'a str,
    name: &'a str,
    tier: &'a str,
    expires_at: Option<String>,
    usage_limit: Option<u32>,
    usage_window_seconds: Option<u32>,
    metadata: serde_json::Map<String, serde_json::Value>,
    /// Sorted.
    secret_names: Vec<String>,
}

fn key_added(key: &Arc<KeyEntry>, catalog: &Catalog) -> Answered {
    let tier = catalog.tier_by_id(&key.info.tier_id);
    let cap = key.usage.as_deref();
    let Described {
        metadata,
        secret_names,
    } = described(key);
    let added = AddedKey {
        id: &key.info.id,
        name: &key.info.name,
        tier: tier.map_or("", |tier| &tier.name),
        expires_at: key.info.expires_at_ms.map(rfc3339),
        usage_limit: cap.map(|cap| cap.limit),
        usage_window_seconds: cap.and_then(|cap| cap.window_s),
        metadata,
        secret_names,
    };
    (StatusCode::CREATED, to_json(&added))
}

/// What the admin views show of a key's plaintext: its metadata and its secrets' names.
struct Described {
    metadata: serde_json::Map<String, serde_json::Value>,
    secret_names: Vec<String>,
}

fn described(key: &KeyEntry) -> Described {
    let described = key.described();
    Described {
        secret_names: described.secret_names().map(str::to_owned).collect(),
        metadata: described.metadata,
    }
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

/// A key's spend budget as the API shows it: `{"amount", "unit", "reset_day"}`.
#[derive(Serialize, JsonSchema)]
struct BudgetView {
    amount: Amount,
    #[schemars(with = "Unit")]
    unit: &'static str,
    /// The day of the month (1–28) the budget resets on at 00:00 UTC; `null`: a lifetime
    /// budget.
    reset_day: Option<u8>,
}

/// A key's spend figures at a wall time: `budget`, `spent`, `remaining` (never below 0) and
/// `resets_at` (`null` for a lifetime budget); without a budget `spent` is 0 (as in the Go
/// service) and the others `null`.
#[derive(Serialize, JsonSchema)]
pub struct BudgetFields {
    budget: Option<BudgetView>,
    spent: Amount,
    remaining: Option<Amount>,
    /// When `spent` starts again from 0 (RFC 3339).
    resets_at: Option<String>,
}

impl BudgetFields {
    /// The figures of `budget` at wall time `unix_ms`: a period that has ended counts from 0 at
    /// once, before the writer brings the key back.
    pub fn of(budget: Option<KeyBudget>, unix_ms: i64) -> Self {
        let budget = budget.map(|budget| budget.at(unix_ms));
        Self {
            budget: budget.map(|KeyBudget { limit, .. }| BudgetView {
                amount: Amount(limit.amount_nanos),
                unit: limit.unit.as_str(),
                reset_day: limit.reset_day,
            }),
            spent: Amount(budget.map_or(0, |budget| budget.spent_nanos)),
            remaining: budget.map(|budget| Amount(budget.remaining_nanos())),
            resets_at: budget.and_then(|budget| budget.resets_at_ms()).map(rfc3339),
        }
    }
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
    /// `disabled`, `inactive`, `expired`, `exhausted`, `over_budget`, `cooling` or `active`.
    #[schemars(with = "KeyState")]
    state: &'static str,
    disabled_reason: Option<&'a str>,
    /// When the whole key's cooldown ends, while it runs.
    cooldown_until: Option<String>,
    /// Features cooling, with when each ends.
    cooldowns: BTreeMap<&'a str, String>,
    exhausted_until: Option<String>,
    consecutive_failures: u32,
    metadata: serde_json::Map<String, serde_json::Value>,
    /// Sorted; never a value.
    secret_names: Vec<String>,
    #[serde(flatten)]
    budget: BudgetFields,
}

fn key_view<'a>(
    catalog: &'a Catalog,
    key: &'a KeyEntry,
    health: &'a HealthState,
    clocks: Now,
) -> KeyView<'a> {
    let now = clocks.running_ms;
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
    let Described {
        metadata,
        secret_names,
    } = described(key);
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
        budget: BudgetFields::of(key.budget(), clocks.unix_ms),
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
        state: key.state_with(health, clocks).0.as_str(),
        disabled_reason: health.disabled_reason.as_deref(),
        cooldown_until: running(health.key.until, clocks),
        cooldowns: health
            .cooling_features(clocks)
            .map(|(feature, until)| (&**feature, rfc3339(until.unix_ms)))
            .collect(),
        exhausted_until: running(health.exhausted, clocks),
        consecutive_failures: health.consecutive_failures,
        metadata,
        secret_names,
    }
}

/// A deadline still ahead at `now`, as RFC 3339.
fn running(deadline: Option<Deadline>, now: Now) -> Option<String> {
    deadline
        .filter(|d| now.running_ms < d.running_ms)
        .map(|d| rfc3339(d.unix_ms))
}

/// What `GET /admin/keys` lists: its filters, and the clock readings the views show.
struct Keys {
    /// `?tier=<name>`.
    tier: Option<String>,
    /// `?state=<name>`.
    state: Option<KeyState>,
    /// `?name_prefix=`.
    name_prefix: Option<String>,
    now: Now,
}

impl Keys {
    fn matches(&self, key: &KeyEntry, tier_id: Option<&str>) -> bool {
        tier_id.is_none_or(|id| *key.info.tier_id == *id)
            && (self.name_prefix.as_deref()).is_none_or(|prefix| key.info.name.starts_with(prefix))
            && self
                .state
                .is_none_or(|state| key.state(self.now).0 == state)
    }
}

impl Source for Keys {
    fn each(&self, snapshot: &Snapshot, after: Option<&str>, items: &mut impl Items) {
        let catalog = &snapshot.catalog;
        let tier_id = match self.tier.as_deref().map(|name| catalog.tier_by_name(name)) {
            None => None,
            Some(Some(tier)) => Some(&*tier.id),
            // No such tier: no key.
            Some(None) => return,
        };
        for key in catalog
            .keys_by_id(after)
            .filter(|key| self.matches(key, tier_id))
        {
            let health = key.health.state();
            if !items.push(&key.info.id, &key_view(catalog, key, &health, self.now)) {
                return;
            }
        }
    }
}

/// `GET /admin/keys`: by id, filtered by `tier`, `state` and `name_prefix`; paged with
/// `limit` and `after`, else streamed whole.
pub async fn list_keys(
    _: Admin,
    State(app): State<AppState>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let listing = Listing::new(&uri);
    let state = listing
        .param("state")
        .map(|name| {
            KeyState::named(name).ok_or_else(|| {
                let names: Vec<&str> = KeyState::ALL.iter().map(|state| state.as_str()).collect();
                ApiError::BadRequest(format!("state must be one of: {}", names.join(", ")))
            })
        })
        .transpose()?;
    let keys = Keys {
        tier: listing.param("tier").map(str::to_owned),
        state,
        name_prefix: listing.param("name_prefix").map(str::to_owned),
        now: Now::read(app.pool().clock()),
    };
    list(
        &listing,
        arc_swap::Guard::into_inner(app.pool().load()),
        keys,
    )
}

/// The answer to `PATCH /admin/keys/{id}`: the key's listing entry, plus `key_id` (the Go
/// service's answer names the key so).
#[derive(Serialize, JsonSchema)]
pub struct PatchedKey<'a> {
    key_id: &'a str,
    #[serde(flatten)]
    view: KeyView<'a>,
}

pub async fn patch_key(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<KeyPatchBody>,
) -> Result<Response, ApiError> {
    let key = app
        .writer()
        .patch_key(id, KeyPatch::try_from(body)?)
        .await?;
    let snapshot = app.pool().load();
    let now = Now::read(app.pool().clock());
    let health = key.health.state();
    let patched = PatchedKey {
        key_id: &key.info.id,
        view: key_view(&snapshot.catalog, &key, &health, now),
    };
    Ok(json(StatusCode::OK, &patched))
}

pub async fn delete_tier(
    _: Admin,
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    app.writer().delete_tier(name).await?;
    Ok(deleted())
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
    /// Increasing with time: the cursor of the next page.
    id: u64,
    key_id: &'a str,
    /// `"admin"` for the admin token.
    consumer_id: &'a str,
    feature: &'a str,
    created_at: String,
    /// A change to the key's health (`report 429`, `exhausted`): absent for a served key.
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
}

/// Audit events a listing without `limit` shows, as the Go service did.
const USAGE_PAGE: usize = 100;

/// `GET /admin/usage`: newest first, paged by `limit` (default 100) and `after` (an event's
/// `id`: the events older than it).
pub async fn usage(_: Admin, State(app): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let listing = Listing::new(&uri);
    let limit = listing.limit()?.unwrap_or(USAGE_PAGE);
    let before = listing
        .after()
        .map(|id| {
            id.parse::<u64>()
                .map_err(|_| ApiError::BadRequest("after must be the id of an audit event".into()))
        })
        .transpose()?;
    if app.audit().is_none() {
        return Err(ApiError::NotFound(
            "the audit trail is off (start with AUDIT=on to record usage)".into(),
        ));
    }
    // One more than the page, to know whether a next page exists.
    let events = app.writer().recent_usage(limit + 1, before).await?;
    Ok(listing.page(limit, |page| {
        for (id, event) in &events {
            let view = UsageView {
                id: *id,
                key_id: &event.key_id,
                consumer_id: event.consumer_id.as_deref().unwrap_or("admin"),
                feature: &event.feature,
                created_at: rfc3339(event.created_at_ms),
                event: event.event.as_deref(),
            };
            if !page.push(&id.to_string(), &view) {
                break;
            }
        }
    }))
}
