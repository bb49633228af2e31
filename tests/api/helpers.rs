//! `TestApp`: the real server, in-process, on port 0 over a redb file in a temp folder, with a
//! clock the test moves by hand.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keypooler::app::{App, Options};
use keypooler::broker::{Clock, KeyInfo, ManualClock, Plaintext};
use keypooler::config::{ConnectionLimits, MetricsConfig};
use keypooler::crypto::{EncryptionKey, Sealer};
use keypooler::store::{Store, TierRecord, key_record};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub struct TestApp {
    pub address: String,
    /// Where `/metrics` is served when `METRICS_PORT` is set (else on `address`).
    pub metrics_address: Option<String>,
    pub client: reqwest::Client,
    pub clock: ManualClock,
    /// The server's clock, to read its wall time ([`Clock::unix_now_ms`]).
    pub wall: Clock,
    pub db_path: PathBuf,
    pub key_hex: String,
    options: Options,
    dir: Arc<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let db_path = dir.path().join("data/pool.redb");
        let key_hex = hex_key(0x5a);
        let (clock, hand) = Clock::manual();
        Self::start(dir, db_path, key_hex, options, clock, hand).await
    }

    /// The server over an existing database (e.g. one an import wrote), opened with `key_hex`,
    /// its clock starting at the wall time `unix_ms`. `dir` is kept alive as long as the app.
    pub async fn on_database_at(
        dir: tempfile::TempDir,
        db_path: PathBuf,
        key_hex: &str,
        unix_ms: i64,
    ) -> Self {
        let (clock, hand) = Clock::manual_at(unix_ms);
        Self::start(
            Arc::new(dir),
            db_path,
            key_hex.to_owned(),
            Options::default(),
            clock,
            hand,
        )
        .await
    }

    /// A server measuring as `metrics` says; a `port` in it (any value) puts `/metrics` on a
    /// second listener on an ephemeral port.
    pub async fn spawn_with_metrics(metrics: MetricsConfig) -> Self {
        Self::spawn_with(Options {
            metrics,
            ..Options::default()
        })
        .await
    }

    /// A server with these connection limits and timeouts.
    pub async fn spawn_with_limits(limits: ConnectionLimits) -> Self {
        Self::spawn_with(Options {
            limits,
            ..Options::default()
        })
        .await
    }

    async fn start(
        dir: Arc<tempfile::TempDir>,
        db_path: PathBuf,
        key_hex: String,
        options: Options,
        clock: Clock,
        hand: ManualClock,
    ) -> Self {
        let app = start_app_on(&db_path, &key_hex, options.clone(), clock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, signal) = oneshot::channel::<()>();
        let signal = async {
            let _ = signal.await;
        };
        let (server, metrics_address) = if options.metrics.port.is_some() {
            let scrape = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let metrics_address = format!("http://{}", scrape.local_addr().unwrap());
            let server = app.serve_with_metrics_listener(listener, scrape, signal);
            (tokio::spawn(server), Some(metrics_address))
        } else {
            (tokio::spawn(app.serve(listener, signal)), None)
        };
        Self {
            address,
            metrics_address,
            client: reqwest::Client::new(),
            clock: hand,
            wall: clock,
            db_path,
            key_hex,
            options,
            dir,
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    /// Stops the server gracefully: in-flight requests finish, the writer drains, the file closes.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// Stops and starts a new server on the same database file.
    pub async fn restart(self) -> Self {
        // The new process starts where the old one's wall clock stood.
        let unix_ms = self.wall.unix_now_ms();
        self.restart_at(unix_ms).await
    }

    /// Stops and starts a new server on the same database file, its wall clock at `unix_ms`.
    pub async fn restart_at(mut self, unix_ms: i64) -> Self {
        self.stop().await;
        let (clock, hand) = Clock::manual_at(unix_ms);
        Self::start(
            Arc::clone(&self.dir),
            self.db_path.clone(),
            self.key_hex.clone(),
            self.options.clone(),
            clock,
            hand,
        )
        .await
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(ADMIN_TOKEN)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.request(Method::DELETE, path).send().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn create_tier(&self, name: &str, features: Value) -> Value {
        let response = self
            .post(
                "/admin/tiers",
                &json!({ "name": name, "features": features }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    pub async fn add_key(&self, name: &str, value: &str, tier: &str) -> String {
        let response = self
            .post(
                "/admin/keys",
                &json!({ "name": name, "key": value, "tier": tier }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    /// `PATCH path` with the JSON `body`.
    pub async fn patch(&self, path: &str, body: &Value) -> Response {
        self.request(Method::PATCH, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// The listing entry of the key `id`.
    pub async fn listed(&self, id: &str) -> Value {
        let keys = expect(self.get("/admin/keys").await, StatusCode::OK).await;
        keys.as_array()
            .unwrap()
            .iter()
            .find(|key| key["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("key {id} is not listed"))
    }

    /// Creates a consumer scoped to `tier`: its id and token.
    pub async fn consumer_of(&self, name: &str, tier: &str) -> (String, String) {
        let created = expect(
            self.post("/admin/consumers", &json!({"name": name})).await,
            StatusCode::CREATED,
        )
        .await;
        let id = created["id"].as_str().unwrap().to_owned();
        let scoped = self
            .post(
                &format!("/admin/consumers/{id}/scopes"),
                &json!({"tier": tier}),
            )
            .await;
        assert_eq!(scoped.status(), StatusCode::OK);
        (id, created["token"].as_str().unwrap().to_owned())
    }

    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// The value of the series `series` (its name with its labels, as written) on `/metrics`,
    /// if listed.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().unwrap())
    }

    /// `GET /key` for `feature` with `token` (a consumer's, or any other): status and body.
    pub async fn key_as(&self, token: &str, feature: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}/key", self.address))
            .query(&[("feature", feature)])
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// `GET /key` for `feature` with the admin token.
    pub async fn key(&self, feature: &str) -> (StatusCode, Value) {
        self.key_as(ADMIN_TOKEN, feature).await
    }
}

/// `clients` concurrent clients each ask `requests` times for a key for `feature`: how many
/// times each key id was served. Every other answer must be 429.
pub async fn hammer(
    app: &TestApp,
    feature: &str,
    clients: usize,
    requests: usize,
) -> std::collections::HashMap<String, u32> {
    let url = format!("{}/key?feature={feature}", app.address);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let client = app.client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut served = Vec::new();
                for _ in 0..requests {
                    let response = client
                        .get(&url)
                        .bearer_auth(ADMIN_TOKEN)
                        .send()
                        .await
                        .unwrap();
                    if response.status() == StatusCode::OK {
                        let body: Value = response.json().await.unwrap();
                        served.push(body["key_id"].as_str().unwrap().to_owned());
                    } else {
                        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
                    }
                }
                served
            })
        })
        .collect();
    let mut total = std::collections::HashMap::new();
    for task in tasks {
        for id in task.await.unwrap() {
            *total.entry(id).or_default() += 1;
        }
    }
    total
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A started broker (not yet serving) over the redb file at `db_path`, on a manual clock.
pub fn start_app(db_path: &Path, key_hex: &str, options: Options) -> (App, ManualClock) {
    let (clock, hand) = Clock::manual();
    (start_app_on(db_path, key_hex, options, clock), hand)
}

fn start_app_on(db_path: &Path, key_hex: &str, options: Options, clock: Clock) -> App {
    let sealer = sealer(key_hex);
    let store = Store::open(db_path, &sealer).expect("open store");
    let token = SecretString::from(ADMIN_TOKEN);
    App::start_with(store, sealer, clock, token, options).unwrap()
}

/// The sealer of the encryption key `key_hex`.
pub fn sealer(key_hex: &str) -> Sealer {
    Sealer::new(&EncryptionKey::parse_hex(key_hex).unwrap())
}

pub fn hex_key(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

/// Asserts the status, the JSON content type, and returns the body.
pub async fn expect(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "every response is JSON"
    );
    response.json().await.unwrap()
}

/// Asserts an `{"error": ...}` body with this status and message.
pub async fn expect_error(response: Response, status: StatusCode, message: &str) {
    let body = expect(response, status).await;
    assert_eq!(body, json!({ "error": message }));
}

/// A database of `count` keys written through the store (faster than HTTP for 20k keys).
pub fn large_database(path: &Path, sealer: &Sealer, count: usize) {
    let store = Store::open(path, sealer).unwrap();
    let batch = store.begin().unwrap();
    batch
        .put_tier(&TierRecord {
            id: "tier-1".into(),
            name: "pro".into(),
            description: String::new(),
            created_at_ms: 1,
            features: BTreeMap::new(),
        })
        .unwrap();
    let secrets = BTreeMap::from([("org".to_string(), Zeroizing::new("org-1".to_string()))]);
    for i in 0..count {
        let info = KeyInfo {
            id: format!("key-{i:06}").into(),
            name: format!("k{i}").into(),
            tier_id: "tier-1".into(),
            active: true,
            created_at_ms: i as i64,
            expires_at_ms: None,
        };
        let value = format!("sk-{i}");
        let plain = Plaintext {
            value: &value,
            metadata: &serde_json::Map::new(),
            secrets: &secrets,
        };
        batch.put_key(&key_record(&info, &plain, sealer)).unwrap();
    }
    batch.commit().unwrap();
}
