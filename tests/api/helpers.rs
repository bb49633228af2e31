//! `TestApp`: the real server, in-process, on port 0 over a redb file in a temp folder, with a
//! clock the test moves by hand.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keypooler::app::App;
use keypooler::broker::{Clock, ManualClock};
use keypooler::crypto::{EncryptionKey, Sealer};
use keypooler::server::Limits;
use keypooler::store::Store;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub clock: ManualClock,
    pub db_path: PathBuf,
    pub key_hex: String,
    limits: Limits,
    dir: Arc<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Limits::default()).await
    }

    /// A server with these connection limits and timeouts.
    pub async fn spawn_with(limits: Limits) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let db_path = dir.path().join("data/pool.redb");
        let key_hex = hex_key(0x5a);
        Self::start(dir, db_path, key_hex, limits).await
    }

    async fn start(
        dir: Arc<tempfile::TempDir>,
        db_path: PathBuf,
        key_hex: String,
        limits: Limits,
    ) -> Self {
        let (app, hand) = start_app(&db_path, &key_hex);
        let app = app.with_limits(limits);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, signal) = oneshot::channel::<()>();
        let server = tokio::spawn(app.serve(listener, async {
            let _ = signal.await;
        }));
        Self {
            address,
            client: reqwest::Client::new(),
            clock: hand,
            db_path,
            key_hex,
            limits,
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
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        Self::start(
            Arc::clone(&self.dir),
            self.db_path.clone(),
            self.key_hex.clone(),
            self.limits,
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

    /// `GET /key?feature=...`: the status and the JSON body.
    pub async fn key(&self, feature: &str) -> (StatusCode, Value) {
        let response = self
            .request(Method::GET, "/key")
            .query(&[("feature", feature)])
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A started broker (not yet serving) over the redb file at `db_path`, on a manual clock.
pub fn start_app(db_path: &Path, key_hex: &str) -> (App, ManualClock) {
    let key = EncryptionKey::parse_hex(key_hex).unwrap();
    let sealer = Sealer::new(&key);
    let store = Store::open(db_path, &sealer).expect("open store");
    let (clock, hand) = Clock::manual();
    let app = App::start(store, sealer, clock, SecretString::from(ADMIN_TOKEN)).unwrap();
    (app, hand)
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
