//! Consumers: services with their own token, limited to the tiers they are scoped to.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Serialize;
use zeroize::Zeroizing;

use super::AppState;
use super::admin::{deleted, json, to_json};
use super::auth::Admin;
use super::error::ApiError;
use super::idempotency::{Answered, Retryable, respond, stored};
use crate::broker::{Catalog, Consumer, ConsumerBody, NewConsumer, NewScope, ScopeBody};

#[derive(Serialize, JsonSchema)]
#[schemars(rename = "CreatedConsumer")]
pub struct Created<'a> {
    id: &'a str,
    name: &'a str,
    /// Shown once: only its SHA-256 is stored.
    token: &'a str,
}

/// What a retry with the creation's idempotency key answers: the token is gone (only its hash
/// was stored).
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "ReplayedConsumer")]
pub struct Replayed<'a> {
    id: &'a str,
    name: &'a str,
    /// Always true: says why there is no `token`.
    replayed: bool,
}

/// The `201` of `POST /admin/consumers`: the consumer created, or a replay of its creation.
pub fn created_schema(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [generator.subschema_for::<Created>(), generator.subschema_for::<Replayed>()],
    })
}

fn created((consumer, token): &(Arc<Consumer>, Zeroizing<String>), _: &Catalog) -> Answered {
    let created = Created {
        id: &consumer.id,
        name: &consumer.name,
        token,
    };
    (StatusCode::CREATED, to_json(&created))
}

fn created_again((consumer, _): &(Arc<Consumer>, Zeroizing<String>), _: &Catalog) -> Answered {
    let replayed = Replayed {
        id: &consumer.id,
        name: &consumer.name,
        replayed: true,
    };
    (StatusCode::CREATED, to_json(&replayed))
}

pub async fn create(
    _: Admin,
    State(app): State<AppState>,
    Retryable { body, once }: Retryable<ConsumerBody>,
) -> Result<Response, ApiError> {
    let new = NewConsumer::try_from(body)?;
    let once = once.map(|once| once.answered_by(|done, at| stored(done, at, created_again)));
    let answer = app.writer().create_consumer(new, once).await?;
    Ok(respond(answer, &app.pool().load().catalog, created))
}

#[derive(Serialize, JsonSchema)]
pub struct ConsumerView<'a> {
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

fn scoped(consumer: &Arc<Consumer>, catalog: &Catalog) -> Answered {
    (StatusCode::OK, to_json(&view(catalog, consumer)))
}

pub async fn add_scope(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
    Retryable { body, once }: Retryable<ScopeBody>,
) -> Result<Response, ApiError> {
    let scope = NewScope::try_from(body)?;
    let once = once.map(|once| once.answered_by(|done, at| stored(done, at, scoped)));
    let answer = app.writer().add_scope(id, scope, once).await?;
    Ok(respond(answer, &app.pool().load().catalog, scoped))
}
