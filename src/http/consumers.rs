//! Consumers: services with their own token, limited to the tiers they are scoped to.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::AppState;
use super::admin::{deleted, json};
use super::auth::Admin;
use super::error::ApiError;
use super::json::JsonBody;
use crate::broker::{Catalog, Consumer, ConsumerBody, NewConsumer, NewScope, ScopeBody};

#[derive(Serialize)]
struct Created<'a> {
    id: &'a str,
    name: &'a str,
    /// Shown once: only its SHA-256 is stored.
    token: &'a str,
}

pub async fn create(
    _: Admin,
    State(app): State<AppState>,
    JsonBody(body): JsonBody<ConsumerBody>,
) -> Result<Response, ApiError> {
    let new = NewConsumer::try_from(body)?;
    let (consumer, token) = app.writer().create_consumer(new).await?;
    let created = Created {
        id: &consumer.id,
        name: &consumer.name,
        token: &token,
    };
    Ok(json(StatusCode::CREATED, &created))
}

#[derive(Serialize)]
struct ConsumerView<'a> {
    id: &'a str,
    name: &'a str,
    description: &'a str,
    is_active: bool,
    /// Tier names, sorted.
    scopes: Vec<&'a str>,
}

fn view<'a>(catalog: &'a Catalog, consumer: &'a Consumer) -> ConsumerView<'a> {
    let mut scopes: Vec<&str> = consumer
        .scopes
        .iter()
        .filter_map(|id| catalog.tier_by_id(id))
        .map(|tier| &*tier.name)
        .collect();
    scopes.sort_unstable();
    ConsumerView {
        id: &consumer.id,
        name: &consumer.name,
        description: &consumer.description,
        is_active: consumer.active,
        scopes,
    }
}

pub async fn list(_: Admin, State(app): State<AppState>) -> Response {
    let snapshot = app.pool().load();
    let catalog = &snapshot.catalog;
    let mut consumers: Vec<&Consumer> = catalog.consumers().map(|c| &**c).collect();
    consumers.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    let views: Vec<ConsumerView<'_>> = consumers.into_iter().map(|c| view(catalog, c)).collect();
    json(StatusCode::OK, &views)
}

pub async fn delete(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    app.writer().delete_consumer(id).await?;
    Ok(deleted())
}

pub async fn add_scope(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ScopeBody>,
) -> Result<Response, ApiError> {
    let scope = NewScope::try_from(body)?;
    let consumer = app.writer().add_scope(id, scope).await?;
    let snapshot = app.pool().load();
    Ok(json(StatusCode::OK, &view(&snapshot.catalog, &consumer)))
}
