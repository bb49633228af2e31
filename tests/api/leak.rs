//! Secret hygiene: canary secrets (a key value, a bound secret, the admin token, the
//! encryption key) never appear, raw, hex or base64, in the logs of a full scenario at TRACE,
//! in any error body, in the admin endpoints' bodies, or in the `Debug` output of any type that
//! holds them. Only `GET /key` may carry the key and its secret (that is its job).

use std::process::Output;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use clap::Parser;
use keypooler::broker::{KeyEntry, KeyInfo, Plaintext};
use keypooler::config::{ServeConfig, Settings};
use keypooler::crypto::{EncryptionKey, Sealer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::binary::stderr;
use crate::process::{Server, free_port, keypooler};

/// Endpoints whose bodies are scanned after the scenario (admin token sent). Add one line per
/// endpoint that shows state, e.g. `/metrics`.
const SCANNED: &[&str] = &[
    "/admin/keys",
    "/admin/tiers",
    "/admin/health",
    "/admin/consumers",
    "/admin/usage",
    "/health",
    "/metrics",
];

struct Canaries {
    key: String,
    secret: String,
    admin_token: String,
    /// The encryption key's 32 bytes, and its 64 hex characters as configured.
    encryption_key: [u8; 32],
    encryption_hex: String,
}

impl Canaries {
    fn new() -> Self {
        let random = || hex::encode(rand::random::<[u8; 12]>());
        let encryption_key = rand::random::<[u8; 32]>();
        Self {
            key: format!("sk-canary-key-{}", random()),
            secret: format!("canary-secret-{}", random()),
            admin_token: format!("canary-admin-{}", random()),
            encryption_key,
            encryption_hex: hex::encode(encryption_key),
        }
    }

    /// Every secret, as bytes.
    fn all(&self) -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("key value", self.key.clone().into_bytes()),
            ("bound secret", self.secret.clone().into_bytes()),
            ("admin token", self.admin_token.clone().into_bytes()),
            ("encryption key", self.encryption_key.to_vec()),
            (
                "encryption key (hex)",
                self.encryption_hex.clone().into_bytes(),
            ),
        ]
    }

    /// Fails if `text` holds any secret in any form; `place` says where `text` came from.
    fn assert_absent(&self, place: &str, text: &str) {
        for (name, secret) in self.all() {
            for form in forms(&secret) {
                assert!(
                    !text.contains(&form),
                    "the {name} appears in {place} (as {form:?}):\n{text}"
                );
            }
        }
    }
}

/// `secret` raw (if text), in hex (both cases), and in base64 (standard and URL-safe, padded
/// or not). Base64 of a secret inside a longer value depends on the secret's offset modulo 3,
/// so the characters that encode only the secret's bytes are computed at each offset.
fn forms(secret: &[u8]) -> Vec<String> {
    let mut forms = vec![hex::encode(secret), hex::encode_upper(secret)];
    if let Ok(text) = std::str::from_utf8(secret) {
        forms.push(text.to_owned());
    }
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        forms.push(engine.encode(secret));
        for offset in 0..3usize {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(secret);
            let encoded = engine.encode(&shifted);
            let first = (offset * 8).div_ceil(6);
            let last = shifted.len() * 8 / 6;
            forms.push(encoded[first..last].to_owned());
        }
    }
    forms
}

#[test]
fn the_forms_cover_an_embedded_secret_at_any_offset() {
    let secret = b"canary-0123456789";
    for prefix in ["", "a", "ab", "abc"] {
        let mut value = prefix.as_bytes().to_vec();
        value.extend_from_slice(secret);
        value.extend_from_slice(b"tail");
        for engine in [STANDARD, URL_SAFE_NO_PAD] {
            let text = engine.encode(&value);
            assert!(
                forms(secret).iter().any(|form| text.contains(form)),
                "{prefix:?} {text}"
            );
        }
    }
}

fn start(dir: &std::path::Path, canaries: &Canaries) -> Server {
    let port = free_port();
    let port_text = port.to_string();
    let env = [
        ("ENCRYPTION_KEY", canaries.encryption_hex.as_str()),
        ("ADMIN_TOKEN", canaries.admin_token.as_str()),
        ("SERVER_PORT", port_text.as_str()),
        ("LOG_LEVEL", "trace"),
    ];
    Server::spawn(keypooler(dir, &env), port)
}

/// One request: its status and body text.
async fn call(
    client: &reqwest::Client,
    port: u16,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (StatusCode, String) {
    let mut request = client.request(method, format!("http://127.0.0.1:{port}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

#[tokio::test]
async fn no_secret_reaches_logs_errors_or_admin_bodies_in_a_full_scenario_at_trace() {
    let canaries = Canaries::new();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &canaries);
    let port = server.port;
    let client = reqwest::Client::new();
    let admin = format!("Bearer {}", canaries.admin_token);
    let admin = Some(admin.as_str());
    let (key, secret) = (&canaries.key, &canaries.secret);

    // The scenario: a tier, a key with a secret, serves, listings, a change, a deletion.
    let tier = json!({"name": "pro", "features": {"chat": 2}}).to_string();
    assert_eq!(
        call(
            &client,
            port,
            Method::POST,
            "/admin/tiers",
            admin,
            Some(tier)
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let new_key = json!({"name": "k1", "key": key, "tier": "pro", "secrets": {"sig": secret}, "metadata": {"team": "a"}});
    let (status, added) = call(
        &client,
        port,
        Method::POST,
        "/admin/keys",
        admin,
        Some(new_key.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    canaries.assert_absent("POST /admin/keys", &added);
    let id = serde_json::from_str::<Value>(&added).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, served) = call(&client, port, Method::GET, "/key?feature=chat", admin, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        served.contains(key.as_str()) && served.contains(secret.as_str()),
        "the canaries are real"
    );
    // The second and last use of this window: the next `GET /key` below is a 429.
    let (status, _) = call(&client, port, Method::GET, "/key?feature=chat", admin, None).await;
    assert_eq!(status, StatusCode::OK);

    // Errors, each provoked with the secrets in the request.
    let mut errors: Vec<(Method, String, Option<&str>, Option<String>)> = vec![
        (
            Method::POST,
            "/admin/keys".into(),
            admin,
            Some(json!({"name": "k2", "key": [key], "tier": "pro"}).to_string()),
        ),
        (
            Method::POST,
            "/admin/keys".into(),
            admin,
            Some(json!({"name": "k2", "key": key, "tier": "nope"}).to_string()),
        ),
        (
            Method::POST,
            "/admin/keys".into(),
            admin,
            Some(json!({"name": "k2", "key": key, "tier": "pro", "expires_at": key}).to_string()),
        ),
        (
            Method::POST,
            "/admin/keys".into(),
            admin,
            Some(
                json!({"name": "k2", "key": key, "tier": "pro", "secrets": {"sig": [secret]}})
                    .to_string(),
            ),
        ),
        (
            Method::POST,
            "/admin/keys".into(),
            admin,
            Some(json!({"name": "", "key": key, "tier": "pro"}).to_string()),
        ),
        (
            Method::POST,
            "/admin/keys".into(),
            admin,
            Some(format!(r#"{{"name": "k2", "key": "{key}", "tier": "#)),
        ),
        (
            Method::POST,
            "/admin/keys".into(),
            admin,
            Some(format!(r#"{{"name": "k2", "key": {key}}}"#)),
        ),
        // (A body over the limit is left out: its 413 message is a constant, and the server
        // may close before the client has sent it all, which fails the send, not the test.)
        (
            Method::PATCH,
            "/admin/tiers".into(),
            admin,
            Some(json!({"name": "pro", "features": {"chat": key}}).to_string()),
        ),
        (
            Method::POST,
            "/admin/tiers".into(),
            admin,
            Some(json!({"name": "pro", "features": {"chat": 1}}).to_string()),
        ),
        (Method::DELETE, "/admin/keys/not-an-id".into(), admin, None),
        (Method::PUT, "/admin/keys".into(), admin, None),
        (Method::GET, "/nowhere".into(), admin, None),
        (Method::GET, "/key".into(), admin, None),
        (Method::GET, "/key?feature=unknown".into(), admin, None),
        (Method::GET, "/key?feature=chat".into(), admin, None),
    ];
    let wrong = format!("Bearer {}x", canaries.admin_token);
    let prefix = format!(
        "Bearer {}",
        &canaries.admin_token[..canaries.admin_token.len() - 1]
    );
    let basic = format!("Basic {}", canaries.admin_token);
    let raw = canaries.admin_token.clone();
    for token in [&wrong, &prefix, &basic, &raw] {
        errors.push((
            Method::GET,
            "/admin/keys".into(),
            Some(token.as_str()),
            None,
        ));
        errors.push((
            Method::GET,
            "/key?feature=chat".into(),
            Some(token.as_str()),
            None,
        ));
    }
    for (method, path, token, body) in errors {
        let what = format!("{method} {path}");
        let (status, text) = call(&client, port, method, &path, token, body).await;
        assert!(status.is_client_error(), "{what}: {status} {text}");
        canaries.assert_absent(&format!("the {status} body of {what}"), &text);
    }

    let patch = json!({"name": "pro", "features": {"chat": 5}}).to_string();
    assert_eq!(
        call(
            &client,
            port,
            Method::PATCH,
            "/admin/tiers",
            admin,
            Some(patch)
        )
        .await
        .0,
        StatusCode::OK
    );
    // A key rotated in place, and a field named by a value sent by mistake.
    let path = format!("/admin/keys/{id}");
    for (body, expected) in [
        (
            json!({"key": key, "secrets": {"sig": secret}}),
            StatusCode::OK,
        ),
        (json!({ key.as_str(): 1 }), StatusCode::BAD_REQUEST),
        (
            json!({"secrets": {"sig": 1}, "key": key}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, text) = call(
            &client,
            port,
            Method::PATCH,
            &path,
            admin,
            Some(body.to_string()),
        )
        .await;
        assert_eq!(status, expected, "{text}");
        canaries.assert_absent(&format!("the {status} body of PATCH {path}"), &text);
    }
    for path in SCANNED {
        let (status, text) = call(&client, port, Method::GET, path, admin, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        canaries.assert_absent(path, &text);
    }
    let (status, _) = call(
        &client,
        port,
        Method::DELETE,
        &format!("/admin/keys/{id}"),
        admin,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, logs) = server.stop();
    assert!(status.success(), "{logs}");
    assert!(
        logs.contains(r#""level":"TRACE""#) || logs.contains(r#""level":"DEBUG""#),
        "verbose logs: {logs}"
    );
    canaries.assert_absent("the logs", &logs);

    // Start-up with the keys loaded, and a refused start-up under another key.
    let new_key =
        json!({"name": "k3", "key": key, "tier": "pro", "secrets": {"sig": secret}}).to_string();
    let server = start(dir.path(), &canaries);
    assert_eq!(
        call(
            &client,
            server.port,
            Method::POST,
            "/admin/keys",
            admin,
            Some(new_key)
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let (status, logs) = server.stop();
    assert!(status.success());
    let server = start(dir.path(), &canaries);
    let (_, restarted) = server.stop();
    assert!(restarted.contains("database opened"), "{restarted}");
    canaries.assert_absent("the logs of a restart", &format!("{logs}{restarted}"));
    let other = hex::encode(rand::random::<[u8; 32]>());
    let env = [
        ("ENCRYPTION_KEY", other.as_str()),
        ("ADMIN_TOKEN", canaries.admin_token.as_str()),
        ("LOG_LEVEL", "trace"),
    ];
    let output: Output = keypooler(dir.path(), &env).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    canaries.assert_absent("a refused start-up", &text);
    assert!(!text.contains(&other), "{text}");
}

#[test]
fn debug_output_of_every_type_holding_a_secret_hides_it() {
    let canaries = Canaries::new();
    let key = EncryptionKey::parse_hex(&canaries.encryption_hex).unwrap();
    let sealer = Sealer::new(&key);
    let args = [
        "keypooler",
        "--encryption-key",
        &canaries.encryption_hex,
        "--admin-token",
        &canaries.admin_token,
        "serve",
    ];
    let cli = keypooler::cli::Cli::try_parse_from(args).unwrap();
    let settings = Settings {
        encryption_key: Some(canaries.encryption_hex.clone()),
        admin_token: Some(canaries.admin_token.clone()),
        ..Settings::default()
    };
    let config = ServeConfig::from_settings(&settings).unwrap();
    let new_key = keypooler::broker::NewKey::new("k", "pro", Zeroizing::new(canaries.key.clone()))
        .and_then(|key| key.with_secret("sig", Zeroizing::new(canaries.secret.clone())))
        .unwrap();
    let secrets = [("sig".to_owned(), Zeroizing::new(canaries.secret.clone()))].into();
    let entry = KeyEntry::new(
        KeyInfo {
            id: "id".into(),
            name: "k".into(),
            tier_id: "t".into(),
            active: true,
            created_at_ms: 0,
            expires_at_ms: None,
        },
        &Plaintext {
            value: &canaries.key,
            metadata: &serde_json::Map::new(),
            secrets: &secrets,
        },
        None,
    );
    let shown: Vec<(&str, String)> = vec![
        ("EncryptionKey", format!("{key:?} {key:#?}")),
        ("Sealer", format!("{sealer:?} {sealer:#?}")),
        ("Cli", format!("{cli:?} {cli:#?}")),
        ("Settings", format!("{settings:?} {settings:#?}")),
        ("ServeConfig", format!("{config:?} {config:#?}")),
        ("NewKey", format!("{new_key:?} {new_key:#?}")),
        ("KeyEntry", format!("{entry:?} {entry:#?}")),
    ];
    for (name, text) in shown {
        canaries.assert_absent(&format!("Debug of {name}"), &text);
    }
    assert!(
        String::from_utf8_lossy(&entry.body()).contains(&canaries.key),
        "the canary is real"
    );
}
