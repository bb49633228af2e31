//! Logs and metrics from outside: the built binary at TRACE level, its stdout captured, with
//! `/metrics` on its own port behind a token.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::hex_key;
use crate::process::{TOKEN, keypooler};

/// A running binary whose stdout and stderr are kept whole.
struct Captured {
    child: Child,
    stdout: JoinHandle<Vec<String>>,
    stderr: JoinHandle<String>,
}

impl Captured {
    /// Starts the binary and waits for its "listening" line.
    fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let mut child = keypooler(dir, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (listening, ready) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(out).lines() {
                let line = line.unwrap();
                if line.contains("listening") {
                    let _ = listening.send(());
                }
                lines.push(line);
            }
            lines
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            err.read_to_string(&mut text).unwrap();
            text
        });
        ready
            .recv_timeout(Duration::from_secs(30))
            .expect("the server exited or hung before listening");
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// SIGTERM, then everything it wrote.
    fn stop(mut self) -> (Vec<String>, String) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        assert!(self.child.wait().unwrap().success());
        (self.stdout.join().unwrap(), self.stderr.join().unwrap())
    }
}

fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

#[tokio::test]
async fn at_trace_level_no_key_value_token_or_encryption_key_reaches_logs_or_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let encryption_key = hex_key(0x3c);
    let admin = "admin-token-TRACE-7f3a";
    let scrape_token = "metrics-token-TRACE-91bd";
    let value = "sk-live-VALUE-5e2c";
    let secret = "org-secret-SECRET-a71d";
    let (port, metrics_port) = free_ports();
    let (port_text, metrics_port_text) = (port.to_string(), metrics_port.to_string());
    let server = Captured::start(
        dir.path(),
        &[
            ("ENCRYPTION_KEY", &encryption_key),
            ("ADMIN_TOKEN", admin),
            ("SERVER_PORT", &port_text),
            ("METRICS_PORT", &metrics_port_text),
            ("METRICS_TOKEN", scrape_token),
            ("LOG_LEVEL", "trace"),
            ("LOG_FORMAT", "json"),
        ],
    );

    let client = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{port}");
    let send = |method: reqwest::Method, path: &str, token: &str, body: Option<Value>| {
        let mut request = client
            .request(method, format!("{api}{path}"))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };
    use reqwest::Method;
    let tier = json!({ "name": "trace-tier", "features": { "chat": 5 } });
    let created = send(Method::POST, "/admin/tiers", admin, Some(tier))
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let key = json!({
        "name": "trace-key", "key": value, "tier": "trace-tier",
        "secrets": { "org": secret }, "metadata": { "team": "search" }
    });
    let added = send(Method::POST, "/admin/keys", admin, Some(key))
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    let id = added.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let served = send(Method::GET, "/key?feature=chat", admin, None)
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    let body = served.text().await.unwrap();
    assert!(
        body.contains(value) && body.contains(secret),
        "the secrets are in play"
    );
    // Tokens sent where they do not belong, and a body quoting the value in a wrong field.
    let wrong = send(Method::GET, "/key?feature=chat", scrape_token, None)
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let bad = json!({ "name": value, "features": { "chat": value } });
    let bad = send(Method::POST, "/admin/tiers", admin, Some(bad))
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let listed = send(Method::GET, "/admin/keys", admin, None).await.unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    let patch = json!({ "name": "trace-tier", "features": { "chat": 7, "img": 1 } });
    let patched = send(Method::PATCH, "/admin/tiers", admin, Some(patch))
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);

    // /metrics is on its own port, behind its token, and not on the main port.
    let on_main = send(Method::GET, "/metrics", scrape_token, None)
        .await
        .unwrap();
    assert_eq!(on_main.status(), StatusCode::NOT_FOUND);
    let scrape_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let refused = client
        .get(&scrape_url)
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let scraped = client
        .get(&scrape_url)
        .bearer_auth(scrape_token)
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    let metrics = scraped.text().await.unwrap();
    assert!(metrics.contains(r#"key_name="trace-key""#), "{metrics}");

    let deleted = send(Method::DELETE, &format!("/admin/keys/{id}"), admin, None)
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let (stdout, stderr) = server.stop();

    let secrets = [value, secret, admin, scrape_token, encryption_key.as_str()];
    for secret in secrets {
        assert!(!metrics.contains(secret), "/metrics shows {secret}");
        assert!(!stderr.contains(secret), "stderr shows {secret}");
        for line in &stdout {
            assert!(!line.contains(secret), "a log line shows {secret}: {line}");
        }
    }
    // One JSON object per line, and the lines an operator needs.
    let events: Vec<Value> = stdout
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(events.iter().all(Value::is_object));
    let find = |message: &str| {
        events
            .iter()
            .find(|e| e["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {stdout:#?}"))
    };
    let opened = find("database opened");
    assert_eq!(opened["encryption_verified"], true);
    assert_eq!(opened["pool_size"], 0);
    assert!(opened["path"].as_str().unwrap().ends_with("pool.redb"));
    let listening = find("listening");
    assert_eq!(listening["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        listening["address"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{port}"))
    );
    assert!(
        listening["metrics"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{metrics_port}"))
    );
    assert_eq!(find("tier created")["features"], "chat");
    let added = find("key added");
    assert_eq!(
        (&added["key_id"], &added["key"]),
        (&json!(id), &json!("trace-key"))
    );
    let updated = find("tier updated");
    assert_eq!(
        (&updated["added"], &updated["limits_changed"]),
        (&json!("img"), &json!("chat"))
    );
    assert_eq!(find("key deleted")["key_id"], json!(id));
    let requests: Vec<&Value> = events
        .iter()
        .filter(|e| e["message"] == "request")
        .collect();
    assert!(requests.iter().all(|e| e["level"] == "DEBUG"));
    assert!(
        requests
            .iter()
            .any(|e| e["route"] == "/admin/keys/{id}" && e["status"] == 200)
    );
}

#[test]
fn pretty_logs_are_lines_for_people() {
    let dir = tempfile::tempdir().unwrap();
    let key = hex_key(0x3d);
    let (port, _) = free_ports();
    let port = port.to_string();
    let server = Captured::start(
        dir.path(),
        &[
            ("ENCRYPTION_KEY", &key),
            ("ADMIN_TOKEN", TOKEN),
            ("SERVER_PORT", &port),
            ("LOG_FORMAT", "pretty"),
            ("METRICS", "off"),
        ],
    );
    let (stdout, _) = server.stop();
    let listening = stdout.iter().find(|l| l.contains("listening")).unwrap();
    assert!(!listening.starts_with('{'), "{listening}");
    assert!(
        listening.contains("INFO") && listening.contains("metrics=off"),
        "{listening}"
    );
}
