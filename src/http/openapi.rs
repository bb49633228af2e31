//! `GET /openapi.json`: an OpenAPI 3.1 document of every route, built from the route table (method,
//! path, access rule, and the [`Doc`] each entry carries) and from the request and response
//! types themselves (`schemars` derives): a field added to a view shows in the document, and a
//! route added to the table without a [`Doc`] fails the test that reads the document.
//!
//! Response schemas describe what is sent (the serialize contract: a field skipped when empty
//! is not required); request schemas what is accepted, inlined in each operation. Neither
//! forbids other fields: later versions add fields, and clients ignore those they do not know.

use std::sync::OnceLock;

use axum::http::StatusCode;
use axum::response::Response;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema, json_schema};
use serde_json::{Map, Value, json};

use super::error::json_response;
use super::routes::{Access, Route, routes};

/// Adds a type's schema to a generator (a reference to it, for a named type).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// Either of two types: an answer that is one shape or another (a replay's, say).
fn either<A: JsonSchema, B: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({"anyOf": [generator.subschema_for::<A>(), generator.subschema_for::<B>()]})
}

/// The `limit` of a paged listing: from 1 (a larger number reads as the most a page holds).
fn page_limit(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "minimum": 1})
}

/// The most query parameters and answers one [`Doc`] lists (a route needing more fails to
/// compile, where the table is built).
const MAX_QUERY: usize = 5;
const MAX_ANSWERS: usize = 8;

/// What the document says of one route beyond its method, path and access rule. Built with
/// [`doc`] and chained `const` calls, in the route's entry of the table. Answers every route
/// has by its nature are added without being listed: 401 for a route that takes a token, 403
/// for one a consumer may call, 400 and 413 for one with a body, 404 for one with a path
/// parameter.
#[derive(Clone, Copy, Debug)]
pub struct Doc {
    summary: &'static str,
    body: Option<SchemaFn>,
    query: [Option<Query>; MAX_QUERY],
    answers: [Option<Answer>; MAX_ANSWERS],
    /// A listing paged by `limit` and `after`: its 200 may carry a `Link` to the next page.
    paged: bool,
}

#[derive(Clone, Copy, Debug)]
struct Query {
    name: &'static str,
    required: bool,
    description: &'static str,
    schema: SchemaFn,
}

#[derive(Clone, Copy, Debug)]
struct Answer {
    status: u16,
    content: Content,
}

#[derive(Clone, Copy, Debug)]
enum Content {
    /// `application/json` with this schema.
    Json(SchemaFn),
    /// `{"error": "…"}`.
    Error,
    /// Another media type (a file, a page, Prometheus text).
    Other(&'static str),
}

/// A route's description, starting with its one-line summary.
pub const fn doc(summary: &'static str) -> Doc {
    Doc {
        summary,
        body: None,
        query: [None; MAX_QUERY],
        answers: [None; MAX_ANSWERS],
        paged: false,
    }
}

impl Doc {
    /// The route takes a JSON body of type `T`.
    pub const fn body<T: JsonSchema>(mut self) -> Self {
        self.body = Some(schema_of::<T>);
        self
    }

    /// A query parameter of type `T`.
    pub const fn query<T: JsonSchema>(
        self,
        name: &'static str,
        required: bool,
        description: &'static str,
    ) -> Self {
        self.query_with(name, required, description, schema_of::<T>)
    }

    /// A query parameter that `schema` describes.
    pub const fn query_with(
        mut self,
        name: &'static str,
        required: bool,
        description: &'static str,
        schema: SchemaFn,
    ) -> Self {
        let mut slot = 0;
        while self.query[slot].is_some() {
            slot += 1;
        }
        self.query[slot] = Some(Query {
            name,
            required,
            description,
            schema,
        });
        self
    }

    /// A listing paged by `limit` (what it does without one: `limit`) and `after` (the id of
    /// the item it continues after: `after`); its 200 carries a `Link` to the next page while
    /// one follows. A `limit` that is not a number from 1 is a 400 (listed here).
    pub const fn paged(self, limit: &'static str, after: &'static str) -> Self {
        let mut doc = self
            .query_with("limit", false, limit, page_limit)
            .query::<String>("after", false, after)
            .error(400);
        doc.paged = true;
        doc
    }

    /// Answers `status` with a JSON body of type `T`.
    pub const fn json<T: JsonSchema>(self, status: u16) -> Self {
        self.answer(status, Content::Json(schema_of::<T>))
    }

    /// Answers `status` with a JSON body that `schema` describes.
    pub const fn json_with(self, status: u16, schema: SchemaFn) -> Self {
        self.answer(status, Content::Json(schema))
    }

    /// Answers `status` with a JSON body of type `A` or of type `B` (a replay, say).
    pub const fn json_either<A: JsonSchema, B: JsonSchema>(self, status: u16) -> Self {
        self.json_with(status, either::<A, B>)
    }

    /// Answers `status` with `{"error": "…"}`.
    pub const fn error(self, status: u16) -> Self {
        self.answer(status, Content::Error)
    }

    /// Answers `status` with a body of `media_type`.
    pub const fn content(self, status: u16, media_type: &'static str) -> Self {
        self.answer(status, Content::Other(media_type))
    }

    const fn answer(mut self, status: u16, content: Content) -> Self {
        let mut slot = 0;
        while self.answers[slot].is_some() {
            slot += 1;
        }
        self.answers[slot] = Some(Answer { status, content });
        self
    }
}

/// The schema of the document's own route: an OpenAPI 3.1 document.
pub fn document_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "An OpenAPI 3.1 document.",
        "properties": {"openapi": {"const": "3.1.0"}},
        "required": ["openapi", "info", "paths", "components"],
        "additionalProperties": true,
    })
}

/// The document, built once.
pub async fn document() -> Response {
    static DOCUMENT: OnceLock<Vec<u8>> = OnceLock::new();
    let body = DOCUMENT.get_or_init(|| {
        serde_json::to_vec(&openapi(&routes())).expect("a JSON value always serializes")
    });
    json_response(StatusCode::OK, body.as_slice())
}

/// The OpenAPI 3.1 document of `routes`. A route without a [`Doc`] is listed with its method,
/// path and security, and `x-undocumented: true` (the test of the document refuses that).
fn openapi(routes: &[Route]) -> Value {
    let mut responses = SchemaSettings::draft2020_12()
        .with(|settings| {
            settings.definitions_path = "/components/schemas".into();
            settings.meta_schema = None;
        })
        .for_serialize()
        .into_generator();
    let mut requests = SchemaSettings::draft2020_12()
        .with(|settings| {
            settings.inline_subschemas = true;
            settings.meta_schema = None;
        })
        .into_generator();
    let mut paths = Map::new();
    for route in routes {
        let operation = operation(route, &mut requests, &mut responses);
        let item = paths
            .entry(route.path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("a path item is an object");
        item.insert(route.method.as_str().to_ascii_lowercase(), operation);
    }
    let mut schemas = responses.take_definitions(true);
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "description": "Every error: a message for people (never key material).",
            "properties": {"error": {"type": "string"}},
            "required": ["error"],
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "keypooler",
            "version": env!("CARGO_PKG_VERSION"),
            "description": env!("CARGO_PKG_DESCRIPTION"),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "admin": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The ADMIN_TOKEN: every route.",
                },
                "consumer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A consumer's token (POST /admin/consumers): GET /key for the features of its tiers.",
                },
                "metrics": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The METRICS_TOKEN, when one is set.",
                },
            },
        },
    })
}

fn operation(
    route: &Route,
    requests: &mut SchemaGenerator,
    responses: &mut SchemaGenerator,
) -> Value {
    let mut operation = Map::new();
    operation.insert("security".into(), security(route.access));
    let mut parameters: Vec<Value> = path_parameters(route.path)
        .map(|name| {
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
        })
        .collect();
    let Some(doc) = route.doc else {
        operation.insert("x-undocumented".into(), Value::Bool(true));
        return Value::Object(operation);
    };
    operation.insert("summary".into(), doc.summary.into());
    parameters.extend(doc.query.iter().flatten().map(|query| {
        json!({
            "name": query.name,
            "in": "query",
            "required": query.required,
            "description": query.description,
            "schema": (query.schema)(requests),
        })
    }));
    if !parameters.is_empty() {
        operation.insert("parameters".into(), parameters.into());
    }
    if let Some(body) = doc.body {
        operation.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": body(requests)}}}),
        );
    }
    let mut answers: Vec<(u16, Value)> = doc
        .answers
        .iter()
        .flatten()
        .map(|answer| {
            let mut answered = response(answer.status, answer.content, responses);
            if doc.paged && answer.status == 200 {
                answered["headers"] = json!({
                    "Link": {
                        "description": "`<path?…&after=<last id>>; rel=\"next\"`: the next page, with this request's other parameters; absent on the last page.",
                        "schema": {"type": "string"},
                    },
                });
            }
            (answer.status, answered)
        })
        .collect();
    let implied = [
        (
            route.access != Access::Public && route.access != Access::MetricsToken,
            401,
        ),
        (route.access == Access::AdminOrConsumer, 403),
        (doc.body.is_some(), 400),
        (doc.body.is_some(), 413),
        (path_parameters(route.path).next().is_some(), 404),
    ];
    for (applies, status) in implied {
        if applies && !answers.iter().any(|(listed, _)| *listed == status) {
            answers.push((status, response(status, Content::Error, responses)));
        }
    }
    answers.sort_by_key(|(status, _)| *status);
    let mut listed: Map<String, Value> = answers
        .into_iter()
        .map(|(status, answer)| (status.to_string(), answer))
        .collect();
    listed.insert(
        "default".into(),
        json!({
            "description": "Any other error (408 request timed out, 500, 503 shutting down): {\"error\": \"…\"}",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }),
    );
    operation.insert("responses".into(), listed.into());
    Value::Object(operation)
}

fn response(status: u16, content: Content, responses: &mut SchemaGenerator) -> Value {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or("Answer");
    let (media_type, schema) = match content {
        Content::Json(schema) => ("application/json", Value::from(schema(responses))),
        Content::Error => (
            "application/json",
            json!({"$ref": "#/components/schemas/Error"}),
        ),
        Content::Other(media_type) => (media_type, json!({"type": "string"})),
    };
    let mut response = json!({
        "description": reason,
        "content": {media_type: {"schema": schema}},
    });
    if status == 429 || status == 503 {
        response["headers"] = json!({
            "Retry-After": {
                "description": "Seconds until trying again may succeed.",
                "schema": {"type": "integer", "minimum": 1},
            },
        });
    }
    response
}

/// Who may call: the `security` of an operation.
fn security(access: Access) -> Value {
    match access {
        Access::Public => json!([]),
        Access::Admin => json!([{"admin": []}]),
        Access::AdminOrConsumer => json!([{"admin": []}, {"consumer": []}]),
        Access::MetricsToken => json!([{}, {"metrics": []}]),
    }
}

/// The names of a path template's parameters: `id` of `/admin/keys/{id}`.
fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
}
