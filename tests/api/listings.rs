//! Paged and streamed listings: `GET /admin/keys`, `/admin/consumers` and `/admin/usage` with
//! `limit`, `after`, the key filters and the `Link` to the next page; without `limit`, the whole
//! listing streamed, equal to its pages end to end.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::helpers::{TestApp, expect, expect_error, hammer};

/// Adds the keys `(name, tier)` all at once (the writer commits them in a few batches).
async fn add_keys(app: &TestApp, keys: impl IntoIterator<Item = (String, &str)>) {
    let mut adds = JoinSet::new();
    for (i, (name, tier)) in keys.into_iter().enumerate() {
        let request = app
            .request(Method::POST, "/admin/keys")
            .json(&json!({"name": name, "key": format!("sk-{i}"), "tier": tier}));
        adds.spawn(async move { request.send().await.unwrap().status() });
    }
    while let Some(status) = adds.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::CREATED);
    }
}

/// One page: its items and the path its `Link` names, if any.
async fn page(app: &TestApp, path: &str) -> (Vec<Value>, Option<String>) {
    let response = app.get(path).await;
    let next = response.headers().get("link").map(|link| {
        let link = link.to_str().unwrap();
        let target = link
            .strip_prefix('<')
            .and_then(|rest| rest.strip_suffix(">; rel=\"next\""))
            .unwrap_or_else(|| panic!("a next link: {link}"));
        target.to_owned()
    });
    let body = expect(response, StatusCode::OK).await;
    (body.as_array().expect("an array").clone(), next)
}

/// Every page from `first` on, following the links: the items end to end and each page's size.
async fn walk(app: &TestApp, first: &str) -> (Vec<Value>, Vec<usize>) {
    let (mut items, mut sizes) = (Vec::new(), Vec::new());
    let mut next = Some(first.to_owned());
    while let Some(path) = next {
        let (page, link) = page(app, &path).await;
        sizes.push(page.len());
        items.extend(page);
        next = link;
    }
    (items, sizes)
}

/// The listing without `limit`: streamed (no `Content-Length`), never with a link.
async fn streamed(app: &TestApp, path: &str) -> Vec<Value> {
    let response = app.get(path).await;
    assert!(response.headers().get("link").is_none(), "{path}");
    assert_eq!(response.content_length(), None, "{path} is streamed");
    let body = expect(response, StatusCode::OK).await;
    body.as_array().expect("an array").clone()
}

fn ids(items: &[Value]) -> Vec<&str> {
    items
        .iter()
        .map(|item| item["id"].as_str().unwrap())
        .collect()
}

fn names(items: &[Value]) -> Vec<&str> {
    items
        .iter()
        .map(|item| item["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn keys_are_paged_by_id_and_the_pages_make_the_streamed_listing() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    app.create_tier("free", json!({"chat": 1})).await;
    let pro = (0..200).map(|i| (format!("pro-{i}"), "pro"));
    // Names a query must encode: a space and an ampersand.
    let free = (0..100).map(|i| (format!("free {i}&"), "free"));
    add_keys(&app, pro.chain(free)).await;

    let all = streamed(&app, "/admin/keys").await;
    assert_eq!(all.len(), 300);
    let mut sorted = ids(&all);
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(ids(&all), sorted, "by id, each once");

    // Pages of 7, end to end, are the streamed listing; only the last has no link.
    let (items, sizes) = walk(&app, "/admin/keys?limit=7").await;
    assert_eq!(items, all);
    assert_eq!(sizes.len(), 43);
    assert!(sizes[..42].iter().all(|size| *size == 7) && sizes[42] == 6);
    // A page of the whole: no link.
    let (items, next) = page(&app, "/admin/keys?limit=1001").await;
    assert_eq!((items.len(), next), (300, None));
    // Exactly one page's worth left: no link either.
    let (items, next) = page(
        &app,
        &format!("/admin/keys?limit=5&after={}", ids(&all)[294]),
    )
    .await;
    assert_eq!((ids(&items), next), (ids(&all[295..]), None));

    // From a cursor in the middle, with or without a limit.
    let after = ids(&all)[99];
    let (items, _) = page(&app, &format!("/admin/keys?limit=5&after={after}")).await;
    assert_eq!(items, all[100..105]);
    assert_eq!(
        streamed(&app, &format!("/admin/keys?after={after}")).await,
        all[100..]
    );
    // A cursor at or past the end: an empty page, no link.
    for after in [ids(&all)[299], "ffffffff-ffff", "zzz"] {
        let (items, next) = page(&app, &format!("/admin/keys?limit=10&after={after}")).await;
        assert_eq!((items.len(), next), (0, None), "after={after}");
    }
    // A cursor need not be a key's id (one deleted since still places the next page).
    let (items, _) = page(&app, "/admin/keys?limit=3&after=").await;
    assert_eq!(items, all[..3]);

    for bad in ["0", "-1", "x", "", "2.5"] {
        expect_error(
            app.get(&format!("/admin/keys?limit={bad}")).await,
            StatusCode::BAD_REQUEST,
            "limit must be an integer from 1 to 1000",
        )
        .await;
    }
    // Unknown parameters are ignored.
    assert_eq!(streamed(&app, "/admin/keys?colour=blue").await, all);
}

#[tokio::test]
async fn key_filters_narrow_the_listing_and_the_link_keeps_them() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    app.create_tier("free", json!({"chat": 1})).await;
    let pro = (0..60).map(|i| (format!("pro-{i}"), "pro"));
    let free = (0..40).map(|i| (format!("free {i}&"), "free"));
    add_keys(&app, pro.chain(free)).await;
    let all = streamed(&app, "/admin/keys").await;

    let free = streamed(&app, "/admin/keys?tier=free").await;
    assert_eq!(free.len(), 40);
    assert!(free.iter().all(|key| key["tier"] == "free"));
    assert_eq!(
        free,
        all.iter()
            .filter(|key| key["tier"] == "free")
            .cloned()
            .collect::<Vec<_>>()
    );
    assert!(streamed(&app, "/admin/keys?tier=nope").await.is_empty());

    // "free 1" and "free 10" to "free 19".
    let prefixed = streamed(&app, "/admin/keys?name_prefix=free%201").await;
    let mut got = names(&prefixed);
    got.sort_unstable();
    let mut wanted: Vec<String> = std::iter::once(1)
        .chain(10..20)
        .map(|i| format!("free {i}&"))
        .collect();
    wanted.sort_unstable();
    assert_eq!(got, wanted);

    // Filters and pages: the link carries every other parameter, encoded.
    let first = "/admin/keys?limit=4&tier=free&name_prefix=free%201&state=active";
    let (items, next) = page(&app, first).await;
    assert_eq!(items, prefixed[..4]);
    assert_eq!(
        next.unwrap(),
        format!(
            "/admin/keys?limit=4&tier=free&name_prefix=free+1&state=active&after={}",
            ids(&items)[3]
        )
    );
    let (items, sizes) = walk(&app, first).await;
    assert_eq!((items, sizes), (prefixed.clone(), vec![4, 4, 3]));
    assert!(
        streamed(&app, "/admin/keys?tier=pro&name_prefix=free")
            .await
            .is_empty()
    );

    // Every key here is active.
    assert_eq!(streamed(&app, "/admin/keys?state=active").await, all);
    assert!(streamed(&app, "/admin/keys?state=expired").await.is_empty());
    expect_error(
        app.get("/admin/keys?state=sleepy").await,
        StatusCode::BAD_REQUEST,
        "state must be one of: disabled, inactive, expired, exhausted, over_budget, cooling, active",
    )
    .await;
}

#[tokio::test]
async fn an_expired_key_is_listed_by_its_state() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    let lasting = app.add_key("lasting", "sk-1", "pro").await;
    let soon = time::OffsetDateTime::from_unix_timestamp(app.wall.unix_now_ms() / 1_000 + 60)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body = json!({"name": "expiring", "key": "sk-2", "tier": "pro", "expires_at": soon});
    let added = expect(app.post("/admin/keys", &body).await, StatusCode::CREATED).await;
    let expiring = added["id"].as_str().unwrap().to_owned();
    let listed = async |state: &str| -> Vec<String> {
        let keys = streamed(&app, &format!("/admin/keys?state={state}")).await;
        ids(&keys).into_iter().map(str::to_owned).collect()
    };
    let mut both = vec![lasting.clone(), expiring.clone()];
    both.sort_unstable();
    assert_eq!(listed("active").await, both);
    assert!(listed("expired").await.is_empty());

    app.clock.advance_ms(61_000);
    assert_eq!(listed("active").await, vec![lasting]);
    assert_eq!(listed("expired").await, vec![expiring]);
    assert!(listed("inactive").await.is_empty());
}

#[tokio::test]
async fn keys_are_listed_by_their_health_state() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 10})).await;
    let mut id = std::collections::BTreeMap::new();
    for name in [
        "active",
        "inactive",
        "disabled",
        "exhausted",
        "cooling",
        "feature",
    ] {
        id.insert(name, app.add_key(name, &format!("sk-{name}"), "pro").await);
    }
    let post = async |path: String, body: Value| {
        expect(app.post(&path, &body).await, StatusCode::OK).await;
    };
    post(
        format!("/key/{}/report", id["disabled"]),
        json!({"status": 401}),
    )
    .await;
    post(
        format!("/key/{}/report", id["cooling"]),
        json!({"status": 429, "retry_after": 30}),
    )
    .await;
    // A feature's cooldown leaves the key active.
    post(
        format!("/key/{}/report", id["feature"]),
        json!({"status": 429, "feature": "chat", "retry_after": 30}),
    )
    .await;
    post(
        format!("/key/{}/exhausted", id["exhausted"]),
        json!({"until": "2026-06-01T01:00:00Z"}),
    )
    .await;
    let patch = json!({"is_active": false});
    let path = format!("/admin/keys/{}", id["inactive"]);
    expect(app.patch(&path, &patch).await, StatusCode::OK).await;

    let listed = async |state: &str| -> Vec<String> {
        let keys = streamed(&app, &format!("/admin/keys?state={state}")).await;
        assert!(keys.iter().all(|key| key["state"] == state), "{keys:?}");
        ids(&keys).into_iter().map(str::to_owned).collect()
    };
    for state in ["inactive", "disabled", "exhausted", "cooling"] {
        assert_eq!(listed(state).await, vec![id[state].clone()], "{state}");
    }
    let mut active = vec![id["active"].clone(), id["feature"].clone()];
    active.sort_unstable();
    assert_eq!(listed("active").await, active);
    assert!(listed("expired").await.is_empty());

    // The cooldown ends: the key is active again.
    app.clock.advance_ms(30_000);
    assert!(listed("cooling").await.is_empty());
    assert_eq!(listed("active").await.len(), 3);
}

#[tokio::test]
async fn consumers_are_paged_by_id_and_the_pages_make_the_streamed_listing() {
    let app = TestApp::spawn().await;
    let mut creates = JoinSet::new();
    for i in 0..45 {
        let request = app
            .request(Method::POST, "/admin/consumers")
            .json(&json!({"name": format!("svc-{i}")}));
        creates.spawn(async move { request.send().await.unwrap().status() });
    }
    while let Some(status) = creates.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::CREATED);
    }

    let all = streamed(&app, "/admin/consumers").await;
    assert_eq!(all.len(), 45);
    let mut sorted = ids(&all);
    sorted.sort_unstable();
    assert_eq!(ids(&all), sorted, "by id");
    let (items, sizes) = walk(&app, "/admin/consumers?limit=10").await;
    assert_eq!((items, sizes), (all.clone(), vec![10, 10, 10, 10, 5]));
    let (items, next) = page(
        &app,
        &format!("/admin/consumers?limit=10&after={}", ids(&all)[44]),
    )
    .await;
    assert_eq!((items.len(), next), (0, None));
    expect_error(
        app.get("/admin/consumers?limit=0").await,
        StatusCode::BAD_REQUEST,
        "limit must be an integer from 1 to 1000",
    )
    .await;
}

#[tokio::test]
async fn the_audit_trail_is_paged_newest_first_by_event_id() {
    let app = TestApp::spawn().await;
    app.create_tier("pro", json!({"chat": 100_000})).await;
    app.add_key("k", "sk-audited", "pro").await;
    hammer(&app, "chat", 10, 105).await;

    // A limit above 1,000 reads as 1,000.
    let (all, sizes) = walk(&app, "/admin/usage?limit=1001").await;
    assert_eq!(sizes, vec![1_000, 50]);
    let seq: Vec<u64> = all.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(seq.windows(2).all(|w| w[0] > w[1]), "newest first");
    let (items, _) = page(&app, "/admin/usage?limit=99999").await;
    assert_eq!(items, all[..1_000]);

    // Without a limit: the newest 100, and a link to the older ones.
    let (newest, next) = page(&app, "/admin/usage").await;
    assert_eq!(newest, all[..100]);
    assert_eq!(next.unwrap(), format!("/admin/usage?after={}", seq[99]));
    let (items, sizes) = walk(&app, "/admin/usage").await;
    assert_eq!(items, all);
    assert_eq!(sizes, [vec![100; 10], vec![50]].concat());
    let (items, sizes) = walk(&app, "/admin/usage?limit=300").await;
    assert_eq!((items, sizes), (all.clone(), vec![300, 300, 300, 150]));

    // Past the oldest: empty, no link.
    for after in [seq[1_049], 0] {
        let (items, next) = page(&app, &format!("/admin/usage?limit=5&after={after}")).await;
        assert_eq!((items.len(), next), (0, None));
    }
    expect_error(
        app.get("/admin/usage?after=abc").await,
        StatusCode::BAD_REQUEST,
        "after must be the id of an audit event",
    )
    .await;
}
