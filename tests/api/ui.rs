//! The admin page (`/ui`): its files and headers over HTTP, then in a real browser (Chromium
//! through chromedriver, see [`crate::browser`]): signing in, the keys, adding a tier and a
//! key, live usage, a key disabled by a report and enabled again, deleting, names that look
//! like HTML, no console error, no request that leaves this server or carries the token in its
//! URL; and the load time of a pool of 10,000 keys.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::browser::Browser;
use crate::helpers::{ADMIN_TOKEN, TestApp, expect};

/// The page's files, with the content type each is served as.
const ASSETS: [(&str, &str); 3] = [
    ("/ui", "text/html; charset=utf-8"),
    ("/ui/app.js", "text/javascript; charset=utf-8"),
    ("/ui/app.css", "text/css; charset=utf-8"),
];

#[tokio::test]
async fn the_page_is_public_and_served_under_a_policy_that_forbids_inline_script() {
    let app = TestApp::spawn().await;
    for (path, content_type) in ASSETS {
        // No token: the page is static; its data calls carry the token themselves.
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
        let body = response.text().await.unwrap();
        // Nothing is fetched from elsewhere: no absolute URL in any file.
        assert!(
            !body.contains("http://") && !body.contains("https://") && !body.contains("//cdn"),
            "{path} names another host"
        );
    }
    let page = app.get("/ui").await.text().await.unwrap();
    // One script, from a file; no inline script and no inline handler.
    assert_eq!(page.matches("<script").count(), 1);
    assert!(page.contains(r#"<script src="/ui/app.js" defer></script>"#));
    assert!(!has_inline_handler(&page));
}

/// An `onclick=`-style attribute anywhere in `html`.
fn has_inline_handler(html: &str) -> bool {
    html.split('<').skip(1).any(|tag| {
        let tag = tag.split('>').next().unwrap_or_default();
        tag.split_whitespace()
            .skip(1)
            .any(|attribute| attribute.to_ascii_lowercase().starts_with("on"))
    })
}

#[tokio::test]
async fn the_script_renders_values_as_text_and_never_puts_the_token_in_a_url() {
    let app = TestApp::spawn().await;
    let script = app.get("/ui/app.js").await.text().await.unwrap();
    // No API that parses a string as HTML or as code.
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "setTimeout('",
        "localStorage",
    ] {
        assert!(!script.contains(sink), "app.js uses {sink}");
    }
    // The token is sent in one place, a header.
    assert_eq!(script.matches("Bearer").count(), 1);
    assert!(script.contains("headers = { Authorization: `Bearer ${secret}` }"));
}

/// Writes `png` where `UI_SCREENSHOT` says (the README's picture is made this way).
fn keep_screenshot(png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    if let Some(path) = std::env::var_os("UI_SCREENSHOT") {
        std::fs::write(path, png).unwrap();
    }
}

const HOSTILE_TIER: &str = r#"<script>alert("tier")</script>"#;
const HOSTILE_KEY: &str = r#"<img src=x onerror=alert(1)><script>alert("key")</script>"#;
const HOSTILE_CONSUMER: &str = "<script>alert('consumer')</script>";
/// A key value typed into the page's form.
const TYPED_VALUE: &str = "sk-typed-into-the-page-4be1";

#[tokio::test]
#[ignore = "needs chromium"]
async fn an_operator_manages_the_pool_in_a_real_browser() {
    let app = TestApp::spawn().await;
    let hourly = json!({"rate_limit": 20, "window_seconds": 3600});
    app.create_tier("pro", json!({"chat": 100, "embeddings": hourly}))
        .await;
    let seeded = app.add_key("openai-1", "sk-seeded-0001", "pro").await;
    app.add_key("openai-2", "sk-seeded-0002", "pro").await;
    let consumer = expect(
        app.post(
            "/admin/consumers",
            &json!({"name": HOSTILE_CONSUMER, "description": "<b>bold</b>"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let scope = format!(
        "/admin/consumers/{}/scopes",
        consumer["id"].as_str().unwrap()
    );
    let scoped = app.post(&scope, &json!({"tier": "pro"})).await;
    assert!(scoped.status().is_success());
    for feature in ["chat", "chat", "chat", "embeddings"] {
        assert_eq!(app.key(feature).await.0, StatusCode::OK);
    }

    let mut browser = Browser::start(1280, 900).await;
    // Signed in by the fragment, which leaves the address bar at once.
    browser
        .goto(&format!("{}/ui#token={ADMIN_TOKEN}", app.address))
        .await;
    let row = format!(r#"tr[data-key-id="{seeded}"]"#);
    let name = browser
        .text_when(&format!("{row} .name"), |t| !t.is_empty())
        .await;
    assert_eq!(name, "openai-1");
    let url = browser.client.current_url().await.unwrap();
    assert_eq!(url.as_str(), format!("{}/ui", app.address));
    assert_eq!(
        browser
            .run("return sessionStorage.getItem('keypooler.admin-token')")
            .await,
        json!(ADMIN_TOKEN)
    );
    // The tiers, the consumer with its scope, the audit trail.
    browser
        .text_when(r#"tr[data-tier="pro"]"#, |t| {
            t.contains("chat 100 / 60s") && t.contains("embeddings 20 / 3600s")
        })
        .await;
    let consumer_row = browser
        .text_when("#consumers-table tbody tr", |t| !t.is_empty())
        .await;
    assert!(consumer_row.starts_with(HOSTILE_CONSUMER), "{consumer_row}");
    assert!(consumer_row.contains("<b>bold</b>") && consumer_row.ends_with("pro"));
    let audit = browser
        .text_when("#audit-table tbody", |t| t.lines().count() == 4)
        .await;
    assert!(
        audit.contains("openai-1") && audit.contains("openai-2"),
        "{audit}"
    );
    assert!(
        audit.lines().next().unwrap().ends_with("admin embeddings"),
        "{audit}"
    );
    keep_screenshot(&browser.screenshot().await);

    // A tier added through its form; its name shows as the text it is.
    browser.click("#tiers summary").await;
    browser.fill("#tier-name", HOSTILE_TIER).await;
    browser.fill("#tier-features", "chat 5 10\nimages 3").await;
    browser.click("#tier-form button[type=submit]").await;
    browser
        .text_when("#status", |t| t == format!("Tier {HOSTILE_TIER} added."))
        .await;
    let tiers = browser
        .text_when("#tiers-table tbody", |t| t.contains(HOSTILE_TIER))
        .await;
    assert!(
        tiers.contains("images 3 / 60s") && tiers.contains("chat 5 / 10s"),
        "{tiers}"
    );

    // A key added through its form: the value is sent, then gone from the page.
    browser.click("#keys summary").await;
    browser.fill("#key-name", HOSTILE_KEY).await;
    browser
        .find("#key-tier")
        .await
        .select_by_value(HOSTILE_TIER)
        .await
        .unwrap();
    browser.fill("#key-value", TYPED_VALUE).await;
    browser.click("#key-form button[type=submit]").await;
    browser
        .text_when("#status", |t| t == format!("Key {HOSTILE_KEY} added."))
        .await;
    assert_eq!(
        browser
            .find("#key-value")
            .await
            .prop("value")
            .await
            .unwrap(),
        Some(String::new())
    );
    let listed = expect(app.get("/admin/keys").await, StatusCode::OK).await;
    let added = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["name"] == HOSTILE_KEY)
        .expect("the key added in the page");
    let id = added["id"].as_str().unwrap().to_owned();
    assert_eq!(added["tier"], HOSTILE_TIER);
    let (status, served) = app.key("images").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served["value"], TYPED_VALUE, "the value the form sent");
    // Every name above rendered as text: no element came from them.
    assert_eq!(
        browser.run("return document.scripts.length").await,
        json!(1)
    );
    assert_eq!(browser.run("return document.images.length").await, json!(0));
    assert_eq!(
        browser
            .run("return document.querySelectorAll('b').length")
            .await,
        json!(0)
    );

    // Live usage: the use made above shows without a reload.
    let row = format!(r#"tr[data-key-id="{id}"]"#);
    let images = format!(r#"{row} [data-feature="images"] .count"#);
    browser.text_when(&images, |t| t == "1/3").await;
    app.key("images").await;
    browser.text_when(&images, |t| t == "2/3").await;
    let navigations = browser.run("return performance.getEntriesByType('navigation').length");
    assert_eq!(
        navigations.await,
        json!(1),
        "usage refreshed without a reload"
    );

    // A provider's 401, reported by a caller, disables the key.
    let reported = app
        .post(&format!("/key/{id}/report"), &json!({"status": 401}))
        .await;
    assert_eq!(reported.status(), StatusCode::OK);
    browser
        .text_when(&format!("{row} .state"), |t| t == "disabled")
        .await;
    // Enabled again from the page, then disabled and enabled with its button.
    let toggle = format!("{row} button.toggle");
    browser.text_when(&toggle, |t| t == "Enable").await;
    browser.click(&toggle).await;
    browser
        .text_when(&format!("{row} .state"), |t| t == "active")
        .await;
    browser.text_when(&toggle, |t| t == "Disable").await;
    browser.click(&toggle).await;
    browser
        .text_when(&format!("{row} .state"), |t| t == "inactive")
        .await;
    browser.click(&toggle).await;
    browser
        .text_when(&format!("{row} .state"), |t| t == "active")
        .await;
    let key = app.listed(&id).await;
    assert_eq!(key["is_active"], true);
    assert_eq!(key["disabled_reason"], serde_json::Value::Null);

    // Deleted: the first click arms the button, the second deletes.
    let delete = format!("{row} button.delete");
    browser.click(&delete).await;
    browser.text_when(&delete, |t| t == "Confirm delete").await;
    browser.click(&delete).await;
    browser.gone(&row).await;
    assert_eq!(app.key("images").await.0, StatusCode::TOO_MANY_REQUESTS);

    // Signing out forgets the token and clears what it showed.
    browser.click("#sign-out").await;
    browser.find("#sign-in-token").await;
    assert_eq!(browser.run("return sessionStorage.length").await, json!(0));
    assert_eq!(
        browser
            .run("return document.querySelectorAll('#keys-table tbody tr').length")
            .await,
        json!(0)
    );

    assert_hermetic(&mut browser, &app, &UI_FETCHES).await;
    let source = browser.client.source().await.unwrap();
    assert!(!source.contains(TYPED_VALUE) && !source.contains(ADMIN_TOKEN));
    browser.close().await;
}

/// What the admin page fetches whatever it shows.
const UI_FETCHES: [&str; 4] = ["/ui", "/ui/app.js", "/ui/app.css", "/admin/keys?limit=100"];

/// No console error or warning; the page fetched each of `paths`, every request went to `app`,
/// and none carried the token in its URL.
async fn assert_hermetic(browser: &mut Browser, app: &TestApp, paths: &[&str]) {
    let console = browser.console().await;
    let noisy: Vec<String> = console
        .iter()
        .filter(|entry| entry.level == "SEVERE" || entry.level == "WARNING")
        .map(|entry| format!("{}: {}", entry.level, entry.message))
        .collect();
    assert!(noisy.is_empty(), "console: {noisy:?}");
    let requests = browser.requests().await;
    for path in paths {
        let url = format!("{}{path}", app.address);
        assert!(requests.contains(&url), "{url} in {requests:?}");
    }
    let ours = format!("{}/", app.address);
    for url in requests {
        // The page's icon is an empty `data:` URL, which is no request to anyone.
        assert!(
            url.starts_with(&ours) && !url.contains('#') || url == "data:,",
            "a request to {url}"
        );
        assert!(!url.contains(ADMIN_TOKEN), "the token in {url}");
    }
}

/// 10,000 keys: signing in through the form, the first page shows, the next page turns, and
/// the time from navigation to the first page of keys is printed (the figure in
/// docs/testing.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium"]
async fn ten_thousand_keys_load_and_page_in_a_real_browser() {
    const KEYS: usize = 10_000;
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 1000, "images": 50}))
        .await;
    add_keys(&app, KEYS).await;

    let mut browser = Browser::start(1280, 900).await;
    browser.goto(&format!("{}/ui", app.address)).await;
    browser.fill("#sign-in-token", ADMIN_TOKEN).await;
    browser.click("#sign-in-form button[type=submit]").await;
    let first_page = format!("1–100 of {KEYS}");
    browser.text_when("#keys-range", |t| t == first_page).await;
    let rows = "return document.querySelectorAll('#keys-table tbody tr').length";
    assert_eq!(browser.run(rows).await, json!(100));

    // The time to the first page of keys, from a fresh navigation (the token is kept).
    let mut times = Vec::new();
    for _ in 0..3 {
        browser.client.refresh().await.unwrap();
        browser.text_when("#keys-range", |t| t == first_page).await;
        let shown = browser
            .run("return performance.getEntriesByName('keypooler:keys-shown')[0].startTime")
            .await;
        let listing = browser
            .run(
                "const keys = performance.getEntriesByType('resource')\
                     .filter((entry) => entry.name.includes('/admin/keys?'))[0];\
                 return `${keys.duration.toFixed()} ms, ${keys.encodedBodySize} bytes`;",
            )
            .await;
        times.push(format!(
            "first page after {:.0} ms (its listing: {})",
            shown.as_f64().unwrap(),
            listing.as_str().unwrap()
        ));
    }
    println!("/ui with {KEYS} keys: {}", times.join("; "));

    browser.click("#keys-next").await;
    browser
        .text_when("#keys-range", |t| t.starts_with("101–200"))
        .await;
    assert_eq!(browser.run(rows).await, json!(100));
    browser.click("#keys-prev").await;
    browser
        .text_when("#keys-range", |t| t.starts_with("1–100"))
        .await;
    // The server pages: the page asked for 100 keys at a time and followed its `Link`.
    let requests = browser.requests().await;
    let after = format!("{}/admin/keys?limit=100&after=", app.address);
    assert!(requests.iter().any(|url| url.starts_with(&after)));
    assert!(
        requests
            .iter()
            .all(|url| !url.contains("/admin/keys") || url.contains("limit=100"))
    );

    assert_hermetic(&mut browser, &app, &UI_FETCHES).await;
    browser.close().await;
}

/// Adds `count` keys to tier "pro", many requests at once so the writer commits them in large
/// batches.
async fn add_keys(app: &TestApp, count: usize) {
    const CLIENTS: usize = 32;
    let mut adds = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let request = app.request(Method::POST, "/admin/keys");
        adds.spawn(async move {
            for i in (client..count).step_by(CLIENTS) {
                let body =
                    json!({"name": format!("key-{i:05}"), "key": format!("sk-{i}"), "tier": "pro"});
                let request = request.try_clone().unwrap().json(&body);
                let response = request
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::CREATED);
            }
        });
    }
    while let Some(added) = adds.join_next().await {
        added.unwrap();
    }
}

/// `/docs` in a real browser: it renders one entry per operation of `/openapi.json`, with no
/// console error, and every request it makes goes to this server.
#[tokio::test]
#[ignore = "needs chromium"]
async fn the_docs_page_renders_every_operation_from_this_server_only() {
    let app = TestApp::spawn().await;
    let document: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    let operations: usize = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|path| path.as_object().unwrap().len())
        .sum();
    let mut browser = Browser::start(1280, 900).await;
    browser.goto(&format!("{}/docs", app.address)).await;
    browser.find("#routes details").await;
    assert_eq!(
        browser
            .run("return document.querySelectorAll('#routes details').length")
            .await,
        json!(operations)
    );
    assert_hermetic(
        &mut browser,
        &app,
        &["/docs", "/docs/docs.js", "/docs/docs.css", "/openapi.json"],
    )
    .await;
    browser.close().await;
}
