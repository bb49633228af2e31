//! `POST /key/{id}/spend`: counts what a call with the key cost against its spend budget, once
//! per request id. The admin token, or a consumer token for keys of its scoped tiers.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use schemars::JsonSchema;
use serde::Serialize;

use super::AppState;
use super::admin::{BudgetFields, json};
use super::auth::KeyCaller;
use super::error::ApiError;
use super::json::JsonBody;
use crate::broker::{Spend, SpendBody};

/// `{"key_id","spent","budget","remaining","resets_at","duplicate"}`.
#[derive(Serialize, JsonSchema)]
pub struct Spent<'a> {
    key_id: &'a str,
    #[serde(flatten)]
    figures: BudgetFields,
    /// The request id had been counted before: nothing was counted now.
    duplicate: bool,
}

pub async fn spend(
    caller: KeyCaller,
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SpendBody>,
) -> Result<Response, ApiError> {
    let spend = Spend::try_from(body)?;
    caller.key(&app.pool().load().catalog, &id)?;
    let answer = app.writer().spend(id, spend).await?;
    let spent = Spent {
        key_id: &answer.key.info.id,
        figures: BudgetFields::of(answer.budget, app.pool().clock().unix_now_ms()),
        duplicate: answer.duplicate,
    };
    Ok(json(StatusCode::OK, &spent))
}
