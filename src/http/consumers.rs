//! Consumers: services with their own token, limited to the tiers they are scoped to.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use schemars::JsonSchema;
use serde::Serialize;
use zeroize::Zeroizing;

use super::AppState;
use super::admin::{deleted, to_json};
use super::auth::Admin;
use super::error::{ApiError, json_response};
use super::idempotency::{Answered, Retryable, RetryableBodiless, respond, stored};
use super::listing::{self, Items, Listing, Source};
use crate::broker::{Catalog, Consumer, ConsumerBody, NewConsumer, NewScope, ScopeBody, Snapshot};

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

/// What `GET /admin/consumers` lists: every consumer, by id.
struct Consumers;

impl Source for Consumers {
    fn each(&self, snapshot: &Snapshot, after: Option<&str>, items: &mut impl Items) {
        let catalog = &snapshot.catalog;
        for consumer in catalog.consumers_by_id(after) {
            if !items.push(&consumer.id, &view(catalog, consumer)) {
                return;
            }
        }
    }
}

/// `GET /admin/consumers`: by id; paged with `limit` and `after`, else streamed whole.
pub async fn list(_: Admin, State(app): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let listing = Listing::new(&uri);
    listing::list(
        &listing,
        arc_swap::Guard::into_inner(app.pool().load()),
        Consumers,
    )
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

pub async fn remove_scope(
    _: Admin,
    State(app): State<AppState>,
    Path((id, tier)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let consumer = app.writer().remove_scope(id, tier).await?;
    let (status, body) = scoped(&consumer, &app.pool().load().catalog);
    Ok(json_response(status, body))
}

/// The answer to `POST /admin/consumers/{id}/token`.
#[derive(Serialize, JsonSchema)]
pub struct Rotated<'a> {
    id: &'a str,
    /// Shown once: only its SHA-256 is stored.
    token: &'a str,
}

/// What a retry with the rotation's idempotency key answers: the token is gone (only its hash
/// was stored); rotating again (without the key) gives a new one.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "ReplayedRotation")]
pub struct RotatedAgain<'a> {
    id: &'a str,
    /// Always true: says why there is no `token`.
    replayed: bool,
}

fn rotated((consumer, token): &(Arc<Consumer>, Zeroizing<String>), _: &Catalog) -> Answered {
    let rotated = Rotated {
        id: &consumer.id,
        token,
    };
    (StatusCode::OK, to_json(&rotated))
}

fn rotated_again((consumer, _): &(Arc<Consumer>, Zeroizing<String>), _: &Catalog) -> Answered {
    let replayed = RotatedAgain {
        id: &consumer.id,
        replayed: true,
    };
    (StatusCode::OK, to_json(&replayed))
}

pub async fn rotate_token(
    _: Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
    RetryableBodiless { once }: RetryableBodiless,
) -> Result<Response, ApiError> {
    let once = once.map(|once| once.answered_by(|done, at| stored(done, at, rotated_again)));
    let answer = app.writer().rotate_token(id, once).await?;
    Ok(respond(answer, &app.pool().load().catalog, rotated))
}
