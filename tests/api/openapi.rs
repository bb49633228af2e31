//! `GET /openapi.json` and `GET /docs`: the document lists every route of the table with its
//! method and access rule; real answers of a real server validate against the schemas it
//! declares; the page and its assets come from this server only.

use keypooler::http::{Access, ROUTES};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect};
use crate::routes::sample_path;

/// The document, as the server serves it.
struct Spec(Value);

impl Spec {
    async fn fetch(app: &TestApp) -> Self {
        let response = app
            .client
            .get(format!("{}/openapi.json", app.address))
            .send()
            .await
            .unwrap();
        Self(expect(response, StatusCode::OK).await)
    }

    fn operation(&self, method: &Method, path: &str) -> &Value {
        let operation = &self.0["paths"][path][method.as_str().to_ascii_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {path} is not in the document"
        );
        operation
    }

    /// A validator for `schema`, with the document's components beside it so its references
    /// resolve; every object that lists its properties is held to them, so a field sent but not
    /// described fails too.
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let mut root = json!({
            "allOf": [schema],
            "components": self.0["components"],
        });
        strict(&mut root);
        jsonschema::draft202012::new(&root).unwrap()
    }

    /// Checks `response` (to `method path`, `path` being the table's template) against the
    /// document: its status is listed, and its body validates against that status's schema.
    async fn check(&self, method: &Method, path: &str, response: Response) -> (StatusCode, Value) {
        let status = response.status();
        let what = format!("{method} {path} answered {status}");
        let declared = &self.operation(method, path)["responses"][status.as_str()];
        assert!(
            declared.is_object(),
            "{what}, which the document does not list"
        );
        // A header the answer carries that a client acts on is declared with it.
        for header in ["Link", "Retry-After"] {
            if response.headers().contains_key(header) {
                assert!(
                    declared["headers"][header].is_object(),
                    "{what} with a {header} header, which the document does not declare"
                );
            }
        }
        let media_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let content = &declared["content"][media_type.as_str()];
        assert!(content.is_object(), "{what} as {media_type}: not declared");
        if media_type != "application/json" {
            return (status, Value::Null);
        }
        let body: Value = response.json().await.unwrap();
        let validator = self.validator(&content["schema"]);
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|error| format!("{} at {}", error, error.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{what}: {body}\n{}", errors.join("\n"));
        (status, body)
    }
}

/// Sets `additionalProperties: false` on every schema that lists `properties` and says nothing
/// of others.
fn strict(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(strict);
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

/// What the document must say of each access rule.
fn security(access: Access) -> Value {
    match access {
        Access::Public => json!([]),
        Access::Admin => json!([{"admin": []}]),
        Access::AdminOrConsumer => json!([{"admin": []}, {"consumer": []}]),
        Access::MetricsToken => json!([{}, {"metrics": []}]),
    }
}

#[tokio::test]
async fn every_route_of_the_table_is_described_with_its_method_and_access() {
    let app = TestApp::spawn().await;
    let spec = Spec::fetch(&app).await;
    assert_eq!(spec.0["openapi"], "3.1.0");
    let undescribed: Vec<String> = ROUTES
        .iter()
        .filter(|route| route.doc.is_none())
        .map(|route| format!("{} {}", route.method, route.path))
        .collect();
    assert!(
        undescribed.is_empty(),
        "routes without a description: {undescribed:?}; give each entry of ROUTES \
         (src/http/routes.rs) a `.doc(doc(\"<summary>\")…)` naming its body and answers"
    );
    let mut listed = 0;
    for route in &ROUTES {
        let what = format!("{} {}", route.method, route.path);
        let operation = spec.operation(&route.method, route.path);
        listed += 1;
        assert!(
            operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{what}"
        );
        assert_eq!(operation["security"], security(route.access), "{what}");
        let responses = operation["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|status| status.starts_with('2')),
            "{what}: no success answer"
        );
        if route.access == Access::Admin || route.access == Access::AdminOrConsumer {
            assert_eq!(
                responses["401"]["content"]["application/json"]["schema"],
                json!({"$ref": "#/components/schemas/Error"}),
                "{what}"
            );
        }
        for (status, response) in responses {
            assert!(response["description"].is_string(), "{what} {status}");
            let Some(content) = response["content"].as_object() else {
                continue;
            };
            for media in content.values() {
                assert!(
                    jsonschema::draft202012::meta::is_valid(&media["schema"]),
                    "{what} {status}: {}",
                    media["schema"]
                );
            }
        }
        let declared: Vec<&str> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        let in_template: Vec<&str> = route
            .path
            .split('/')
            .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        assert_eq!(declared, in_template, "{what}");
        // Every admin POST takes a body, but the token rotation's (it has nothing to say).
        if route.method == Method::POST
            && route.path.starts_with("/admin")
            && route.path != "/admin/consumers/{id}/token"
        {
            assert!(operation["requestBody"].is_object(), "{what}: no body");
        }
    }
    let in_document: usize = spec.0["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(
        in_document, listed,
        "the document lists a route the table does not"
    );
    for (name, schema) in spec.0["components"]["schemas"].as_object().unwrap() {
        assert!(
            jsonschema::draft202012::meta::is_valid(schema),
            "{name}: {schema}"
        );
    }
    for scheme in ["admin", "consumer", "metrics"] {
        let declared = &spec.0["components"]["securitySchemes"][scheme];
        assert_eq!(declared["type"], "http", "{scheme}");
        assert_eq!(declared["scheme"], "bearer", "{scheme}");
    }
}

#[tokio::test]
async fn real_answers_validate_against_the_declared_schemas() {
    let app = TestApp::spawn().await;
    let spec = Spec::fetch(&app).await;
    let send = |method: Method, path: &str, body: Option<Value>| {
        let mut request = app.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };
    let check = async |method: Method, template: &str, path: &str, body: Option<Value>| {
        let response = send(method.clone(), path, body).await.unwrap();
        spec.check(&method, template, response).await
    };
    use Method as M;

    let health = check(M::GET, "/health", "/health", None).await;
    assert_eq!(health, (StatusCode::OK, json!({"status": "ok"})));
    let tier = json!({"name": "pro", "description": "paid", "features": {"chat": 2, "image": {"rate_limit": 5, "window_seconds": 10}}});
    let (status, _) = check(M::POST, "/admin/tiers", "/admin/tiers", Some(tier.clone())).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = check(M::POST, "/admin/tiers", "/admin/tiers", Some(tier)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let bad = json!({"name": "x", "features": {"chat": 0}});
    let (status, _) = check(M::POST, "/admin/tiers", "/admin/tiers", Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    check(
        M::POST,
        "/admin/tiers",
        "/admin/tiers",
        Some(json!({"name": "free", "features": {"other": 1}})),
    )
    .await;
    let patch = json!({"name": "pro", "features": {"chat": 2, "image": 5}});
    let (status, _) = check(M::PATCH, "/admin/tiers", "/admin/tiers", Some(patch)).await;
    assert_eq!(status, StatusCode::OK);
    let missing = json!({"name": "nope", "features": {"chat": 1}});
    let (status, _) = check(M::PATCH, "/admin/tiers", "/admin/tiers", Some(missing)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, tiers) = check(M::GET, "/admin/tiers", "/admin/tiers", None).await;
    assert_eq!(tiers.as_array().unwrap().len(), 2);

    let key = json!({
        "name": "openai-1", "key": "sk-one", "tier": "pro",
        "expires_at": "2999-01-01T00:00:00Z", "metadata": {"region": "eu", "n": 1},
        "secrets": {"org": "org-1"}, "usage_limit": 1000, "usage_window_seconds": 86400,
    });
    let (status, added) = check(M::POST, "/admin/keys", "/admin/keys", Some(key)).await;
    assert_eq!(status, StatusCode::CREATED);
    let key_id = added["id"].as_str().unwrap().to_owned();
    let budgeted = json!({"name": "plain", "key": "sk-two", "tier": "pro", "budget": {"amount": 0.3, "unit": "usd", "reset_day": 28}});
    let (_, plain) = check(M::POST, "/admin/keys", "/admin/keys", Some(budgeted)).await;
    let plain_id = plain["id"].as_str().unwrap().to_owned();
    let (status, _) = check(
        M::POST,
        "/admin/keys",
        "/admin/keys",
        Some(json!({"name": "k", "key": "v", "tier": "nope"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Two keys of 2 uses a minute: a draw of 2, two of 1, then none is left.
    let (status, served) = check(M::GET, "/key", "/key?feature=chat&cost=2", None).await;
    assert_eq!(status, StatusCode::OK, "{served}");
    for _ in 0..2 {
        let (status, _) = check(M::GET, "/key", "/key?feature=chat", None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = check(M::GET, "/key", "/key?feature=chat", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // A request that may wait, answered when the window rolls over (or at once, should the
    // clock move before it arrives).
    let waiting = app.request(M::GET, "/key?feature=chat&wait=30");
    let waiter = tokio::spawn(async move { waiting.send().await.unwrap() });
    app.clock.advance_ms(60_000);
    let (status, _) = spec.check(&M::GET, "/key", waiter.await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    for bad in ["cost=3", "cost=0", "wait=31"] {
        let path = format!("/key?feature=chat&{bad}");
        let (status, _) = check(M::GET, "/key", &path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    // A spend, its replay, and refusals: each answer as the document describes it.
    let spend = format!("/key/{plain_id}/spend");
    let template = "/key/{id}/spend";
    let body = json!({"amount": 0.1, "unit": "usd", "request_id": "call-1"});
    for duplicate in [false, true] {
        let (status, spent) = check(M::POST, template, &spend, Some(body.clone())).await;
        assert_eq!(status, StatusCode::OK, "{spent}");
        assert_eq!(
            (&spent["spent"], &spent["duplicate"]),
            (&json!(0.1), &json!(duplicate))
        );
    }
    let credits = json!({"amount": 1, "unit": "credits", "request_id": "call-2"});
    let (status, _) = check(M::POST, template, &spend, Some(credits)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let unbudgeted = Some(json!({"amount": 1, "unit": "usd", "request_id": "call-4"}));
    let no_budget = format!("/key/{key_id}/spend");
    let (status, _) = check(M::POST, template, &no_budget, unbudgeted).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let negative = json!({"amount": -1, "unit": "usd", "request_id": "call-3"});
    let (status, _) = check(M::POST, template, &spend, Some(negative)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = check(M::GET, "/key", "/key?feature=nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = check(M::GET, "/key", "/key", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, consumer) = check(
        M::POST,
        "/admin/consumers",
        "/admin/consumers",
        Some(json!({"name": "billing", "description": "svc"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let consumer_id = consumer["id"].as_str().unwrap().to_owned();
    let replay = app
        .request(M::POST, "/admin/consumers")
        .header("idempotency-key", "create-reporting")
        .json(&json!({"name": "reporting"}));
    let first = replay.try_clone().unwrap().send().await.unwrap();
    spec.check(&M::POST, "/admin/consumers", first).await;
    let (status, replayed) = spec
        .check(&M::POST, "/admin/consumers", replay.send().await.unwrap())
        .await;
    assert_eq!(
        (status, &replayed["replayed"]),
        (StatusCode::CREATED, &json!(true))
    );
    let scopes = format!("/admin/consumers/{consumer_id}/scopes");
    let (status, _) = check(
        M::POST,
        "/admin/consumers/{id}/scopes",
        &scopes,
        Some(json!({"tier": "free"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = check(
        M::POST,
        "/admin/consumers/{id}/scopes",
        &scopes,
        Some(json!({"tier": "nope"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, consumers) = check(M::GET, "/admin/consumers", "/admin/consumers", None).await;
    assert_eq!(consumers.as_array().unwrap().len(), 2);
    let token = consumer["token"].as_str().unwrap();
    let as_consumer = app
        .client
        .get(format!("{}/key?feature=chat", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (status, _) = spec.check(&M::GET, "/key", as_consumer).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let anonymous = app
        .client
        .get(format!("{}/admin/keys", app.address))
        .send()
        .await
        .unwrap();
    let (status, _) = spec.check(&M::GET, "/admin/keys", anonymous).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (_, keys) = check(M::GET, "/admin/keys", "/admin/keys", None).await;
    assert_eq!(keys.as_array().unwrap().len(), 2);
    // Paged, filtered: a page of one with its Link, then the last page without one.
    let response = send(M::GET, "/admin/keys?limit=1&tier=pro&state=active", None)
        .await
        .unwrap();
    let link = response.headers()["link"].to_str().unwrap().to_owned();
    let (_, page) = spec.check(&M::GET, "/admin/keys", response).await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    let next = link
        .strip_prefix('<')
        .and_then(|link| link.split_once(">; rel=\"next\""))
        .unwrap()
        .0;
    let response = send(M::GET, next, None).await.unwrap();
    assert!(!response.headers().contains_key("link"), "{next}");
    let (_, page) = spec.check(&M::GET, "/admin/keys", response).await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    let (_, none) = check(M::GET, "/admin/keys", "/admin/keys?name_prefix=zz", None).await;
    assert_eq!(none, json!([]));
    let (_, none) = check(M::GET, "/admin/keys", "/admin/keys?state=over_budget", None).await;
    assert_eq!(none, json!([]));
    let (status, _) = check(M::GET, "/admin/keys", "/admin/keys?state=asleep", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, page) = check(M::GET, "/admin/consumers", "/admin/consumers?limit=1", None).await;
    assert_eq!(page.as_array().unwrap().len(), 1);

    // A key changed in place: its listing entry and `key_id`.
    let patch_key = format!("/admin/keys/{key_id}");
    let change = json!({"name": "openai-one", "is_active": false, "expires_at": null, "metadata": {"region": "us"}, "usage_limit": null});
    let (status, patched) = check(M::PATCH, "/admin/keys/{id}", &patch_key, Some(change)).await;
    assert_eq!(
        (status, &patched["key_id"], &patched["name"]),
        (StatusCode::OK, &json!(key_id), &json!("openai-one"))
    );
    let patch_plain = format!("/admin/keys/{plain_id}");
    let larger = Some(json!({"budget": {"amount": 12.5, "unit": "usd"}}));
    let (status, patched) = check(M::PATCH, "/admin/keys/{id}", &patch_plain, larger).await;
    assert_eq!(
        (status, &patched["remaining"], &patched["resets_at"]),
        (StatusCode::OK, &json!(12.4), &json!(null))
    );
    let misspelt = Some(json!({"is_actve": true}));
    let (status, _) = check(M::PATCH, "/admin/keys/{id}", &patch_key, misspelt).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let nobody = "/admin/keys/00000000-0000-4000-8000-000000000000";
    let rename = Some(json!({"name": "x"}));
    let (status, _) = check(M::PATCH, "/admin/keys/{id}", nobody, rename).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A tier deleted (refused while it has keys); a scope removed; a token rotated, and the
    // rotation retried with its idempotency key.
    let (status, _) = check(M::DELETE, "/admin/tiers/{name}", "/admin/tiers/pro", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let spare = Some(json!({"name": "spare", "features": {"chat": 1}}));
    check(M::POST, "/admin/tiers", "/admin/tiers", spare).await;
    let (status, _) = check(M::DELETE, "/admin/tiers/{name}", "/admin/tiers/spare", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = check(M::DELETE, "/admin/tiers/{name}", "/admin/tiers/spare", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let unscope = format!("/admin/consumers/{consumer_id}/scopes/free");
    let template = "/admin/consumers/{id}/scopes/{tier}";
    let (status, unscoped) = check(M::DELETE, template, &unscope, None).await;
    assert_eq!((status, &unscoped["scopes"]), (StatusCode::OK, &json!([])));
    let rotate = format!("/admin/consumers/{consumer_id}/token");
    let template = "/admin/consumers/{id}/token";
    let (status, rotated) = check(M::POST, template, &rotate, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(rotated["token"], consumer["token"]);
    let again = app
        .request(M::POST, &rotate)
        .header("idempotency-key", "rotate-billing");
    let first = again.try_clone().unwrap().send().await.unwrap();
    spec.check(&M::POST, template, first).await;
    let (status, replayed) = spec
        .check(&M::POST, template, again.send().await.unwrap())
        .await;
    assert_eq!(
        (status, &replayed["replayed"]),
        (StatusCode::OK, &json!(true))
    );
    check(M::GET, "/admin/health", "/admin/health", None).await;
    let (_, usage) = check(M::GET, "/admin/usage", "/admin/usage?limit=1", None).await;
    let after = format!("/admin/usage?limit=10&after={}", usage[0]["id"]);
    let (_, older) = check(M::GET, "/admin/usage", &after, None).await;
    assert!(!older.as_array().unwrap().is_empty());
    let (status, _) = check(M::GET, "/admin/usage", "/admin/usage?limit=zero", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let delete_key = format!("/admin/keys/{key_id}");
    let (status, _) = check(M::DELETE, "/admin/keys/{id}", &delete_key, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = check(M::DELETE, "/admin/keys/{id}", &delete_key, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let delete_consumer = format!("/admin/consumers/{consumer_id}");
    let (status, _) = check(M::DELETE, "/admin/consumers/{id}", &delete_consumer, None).await;
    assert_eq!(status, StatusCode::OK);

    // Every route, as the route-auth test probes it (sample ids, a plausible body): whatever
    // it answers is listed, with a body that fits.
    let plausible =
        json!({"name": "probe", "features": {"chat": 1}, "key": "sk-probe", "tier": "pro"});
    for route in &ROUTES {
        let path = sample_path(route);
        let body = (route.method == M::POST || route.method == M::PATCH).then(|| plausible.clone());
        let response = send(route.method.clone(), &format!("{path}?feature=chat"), body)
            .await
            .unwrap();
        spec.check(&route.method, route.path, response).await;
    }
}

#[tokio::test]
async fn the_docs_page_and_its_assets_come_from_this_server_only() {
    let app = TestApp::spawn().await;
    let get = async |path: &str| {
        app.client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap()
    };
    let page = get("/docs").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_policy(&page);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    // The page's own references, relative to `/docs` (so they also work under a path prefix).
    let referenced: Vec<&str> = html
        .split(['"', '\''])
        .skip(1)
        .step_by(2)
        .filter(|value| value.starts_with("docs/"))
        .collect();
    assert_eq!(referenced, ["docs/docs.css", "docs/docs.js"]);
    assert!(!html.contains("<style"), "inline style");
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=").count(),
        "inline script"
    );
    let mut assets = vec![("/docs".to_owned(), html)];
    for (path, media_type) in [
        ("/docs/docs.js", "text/javascript; charset=utf-8"),
        ("/docs/docs.css", "text/css; charset=utf-8"),
    ] {
        let response = get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_policy(&response);
        assert_eq!(response.headers()["content-type"], media_type, "{path}");
        assets.push((path.to_owned(), response.text().await.unwrap()));
    }
    for (path, text) in &assets {
        for scheme in ["http:", "https:", "//"] {
            // `//` only as a protocol-relative URL: in a quoted string or `url(`.
            let found = match scheme {
                "//" => ["\"//", "'//", "(//"].iter().any(|p| text.contains(p)),
                scheme => text.contains(scheme),
            };
            assert!(!found, "{path} refers to another server ({scheme})");
        }
    }
    // What the script reads is served.
    let spec = get("/openapi.json").await;
    assert_eq!(spec.status(), StatusCode::OK);
    // The page is public; the admin token changes nothing.
    let with_token = app.get("/docs").await;
    assert_eq!(with_token.status(), StatusCode::OK);
}

fn assert_policy(response: &Response) {
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(policy.starts_with("default-src 'none';"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    assert!(!policy.contains("http"), "{policy}");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
}
