//! Hostile input: every route of `http::ROUTES` (the table the router is built from) enforces
//! its access rule. A route added to the table is probed here without a new line.

use keypooler::http::{Access, ROUTES, Route};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, TestApp, expect, expect_error};

/// A path parameter's sample value (an id, or a tier's name).
const SAMPLE_ID: &str = "00000000-0000-4000-8000-000000000000";
/// Every path parameter the route table uses.
const PARAMETERS: [&str; 3] = ["{id}", "{name}", "{tier}"];

/// A query valid for every route (each ignores the parameters it does not know): the feature of
/// `GET /key`, and a listing's page, cursor and filters.
const PLAUSIBLE_QUERY: [(&str, &str); 6] = [
    ("feature", "chat"),
    ("limit", "2"),
    ("after", "0"),
    ("tier", "probe"),
    ("state", "active"),
    ("name_prefix", "p"),
];

/// A query every listing refuses (400), but only once the caller is known.
const BAD_QUERY: [(&str, &str); 3] = [("limit", "0"), ("after", "x"), ("state", "x")];

/// The route's path with sample values, and a plausible query and body: valid for every admin
/// body (unknown fields are ignored), so a refusal can only come from the access rule.
fn probe(app: &TestApp, route: &Route, token: Option<&str>, body: &str) -> RequestBuilder {
    probe_with(app, route, token, body, &PLAUSIBLE_QUERY)
}

fn probe_with(
    app: &TestApp,
    route: &Route,
    token: Option<&str>,
    body: &str,
    query: &[(&str, &str)],
) -> RequestBuilder {
    let path = sample_path(route);
    let mut request = app
        .client
        .request(route.method.clone(), format!("{}{path}", app.address))
        .query(query);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if route.method == Method::POST || route.method == Method::PATCH {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    request
}

/// The route's path with every parameter given the sample value.
pub fn sample_path(route: &Route) -> String {
    let path = PARAMETERS
        .iter()
        .fold(route.path.to_owned(), |path, parameter| {
            path.replace(parameter, SAMPLE_ID)
        });
    assert!(!path.contains('{'), "a parameter without a sample: {path}");
    path
}

fn plausible_body() -> String {
    json!({
        "name": "probe",
        "features": {"chat": 1},
        "key": "sk-probe",
        "tier": "probe",
    })
    .to_string()
}

#[tokio::test]
async fn every_route_enforces_its_access_rule() {
    let app = TestApp::spawn().await;
    let plausible = plausible_body();
    let wrong = format!("{ADMIN_TOKEN}x");
    let prefix = &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1];
    for route in &ROUTES {
        let what = format!("{} {}", route.method, route.path);
        match route.access {
            Access::Admin | Access::AdminOrConsumer => {
                // Auth comes before the body is even parsed: a malformed one changes nothing.
                for body in [plausible.as_str(), "{", ""] {
                    let none = probe(&app, route, None, body).send().await.unwrap();
                    assert_eq!(none.status(), StatusCode::UNAUTHORIZED, "{what}: no token");
                    expect_error(
                        none,
                        StatusCode::UNAUTHORIZED,
                        "missing authorization header",
                    )
                    .await;
                    for token in [wrong.as_str(), prefix, "Bearer"] {
                        let response = probe(&app, route, Some(token), body).send().await.unwrap();
                        assert_eq!(
                            response.status(),
                            StatusCode::UNAUTHORIZED,
                            "{what}: {token}"
                        );
                        expect_error(response, StatusCode::UNAUTHORIZED, "invalid token").await;
                    }
                    let basic = probe(&app, route, None, body)
                        .header("authorization", format!("Basic {ADMIN_TOKEN}"))
                        .send()
                        .await
                        .unwrap();
                    expect_error(
                        basic,
                        StatusCode::UNAUTHORIZED,
                        "invalid authorization format",
                    )
                    .await;
                    // Nor is the query looked at before the caller is known.
                    let bad = probe_with(&app, route, None, body, &BAD_QUERY);
                    let response = bad.send().await.unwrap();
                    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}: query");
                }
            }
            // `/metrics` is public unless METRICS_TOKEN is set (tests/api/metrics.rs checks that).
            Access::Public | Access::MetricsToken => {
                let response = probe(&app, route, None, &plausible).send().await.unwrap();
                assert!(response.status().is_success(), "{what}: public");
            }
        }
    }
    // Nothing the refused probes carried was applied.
    assert_eq!(
        expect(app.get("/admin/tiers").await, StatusCode::OK).await,
        json!([])
    );
    assert_eq!(
        expect(app.get("/admin/keys").await, StatusCode::OK).await,
        json!([])
    );
    // With the admin token the same probes reach their handlers: the table's method and path
    // are routed (no 401, 404 "not found" or 405).
    for route in &ROUTES {
        let response = probe(&app, route, Some(ADMIN_TOKEN), &plausible)
            .send()
            .await
            .unwrap();
        let status = response.status();
        if route.access == Access::MetricsToken {
            assert_eq!(status, StatusCode::OK, "/metrics");
            continue;
        }
        // The backup answers a file, and the pages (/ui, /docs) and their assets are not JSON.
        if response.headers()["content-type"] != "application/json" {
            assert_eq!(status, StatusCode::OK, "{} {}", route.method, route.path);
            continue;
        }
        let body = expect(response, status).await;
        assert!(
            status != StatusCode::UNAUTHORIZED
                && status != StatusCode::METHOD_NOT_ALLOWED
                && body != json!({"error": "not found"}),
            "{} {}: {status} {body}",
            route.method,
            route.path
        );
    }
}

/// Consumer tokens: refused by every admin route, taken by the routes open to consumers.
#[tokio::test]
async fn admin_routes_refuse_a_consumer_token() {
    let app = TestApp::spawn().await;
    app.create_tier("probe", json!({"chat": 100})).await;
    let (_, token) = app.consumer_of("svc", "probe").await;
    let plausible = plausible_body();
    for route in ROUTES.iter().filter(|route| route.access == Access::Admin) {
        let response = probe(&app, route, Some(&token), &plausible)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{} {}",
            route.method,
            route.path
        );
        expect_error(response, StatusCode::UNAUTHORIZED, "invalid token").await;
    }
    // The routes a consumer may call take its token: past auth, to the handler (403 outside its
    // tiers, 404 for an unknown key, 400 for the probe's body), never 401.
    for route in ROUTES
        .iter()
        .filter(|r| r.access == Access::AdminOrConsumer)
    {
        let response = probe(&app, route, Some(&token), &plausible)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = expect(response, status).await;
        assert!(
            status != StatusCode::UNAUTHORIZED && status != StatusCode::METHOD_NOT_ALLOWED,
            "{} {}: {status} {body}",
            route.method,
            route.path
        );
    }
}
