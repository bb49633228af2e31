//! A real browser for the page tests: Chromium, headless, driven through chromedriver
//! (WebDriver) by `fantoccini`. Both come from Debian (`apt-get install chromium
//! chromium-driver`); tests that use them are `#[ignore = "needs chromium"]`, and CI installs
//! them and runs them.
//!
//! The browser is kept hermetic, so that every request it makes is the page's: background
//! networking, component updates, sync, translation and the like are off, host names other than
//! the loopback address do not resolve, and anything not on loopback goes to a proxy that does
//! not exist. Its performance log records every request the page makes, which
//! [`Browser::requests`] returns; [`Browser::console`] reads its console.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::Method;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// How long a test waits for the page to show something. Generous: the page refreshes every
/// few seconds, and a debug build of the server answers large listings slowly.
const PATIENCE: Duration = Duration::from_secs(30);

/// A program on the `PATH`.
fn program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Whether a request's document is the browser's own (`chrome://`: its new-tab page, which
/// it loads from its own files, whatever a test asks for).
fn internal(document: &Value) -> bool {
    document
        .as_str()
        .is_some_and(|url| url.starts_with("chrome:"))
}

/// One entry of a browser log.
pub struct LogEntry {
    pub level: String,
    pub message: String,
}

pub struct Browser {
    pub client: Client,
    driver: Child,
    /// Requests seen so far: reading the performance log empties it.
    requests: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Chromium in a fresh profile, its window `width` × `height`.
    pub async fn start(width: u32, height: u32) -> Self {
        let driver_path = program(&["chromedriver"])
            .expect("chromedriver not found: apt-get install chromium chromium-driver");
        let chromium = program(&["chromium", "chromium-browser", "google-chrome"])
            .expect("chromium not found: apt-get install chromium chromium-driver");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless=new".to_owned(),
            // Tests run as root in CI, where Chromium's sandbox cannot start.
            "--no-sandbox".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-gpu".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={width},{height}"),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-default-apps".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-domain-reliability".to_owned(),
            "--disable-client-side-phishing-detection".to_owned(),
            "--disable-breakpad".to_owned(),
            "--disable-features=Translate,OptimizationHints,MediaRouter,\
             AutofillServerCommunication,CertificateTransparencyComponentUpdater"
                .to_owned(),
            "--password-store=basic".to_owned(),
            // Nothing but the loopback address resolves, and anything else would go to a
            // proxy that is not there.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".to_owned(),
            "--proxy-server=http://127.0.0.1:9".to_owned(),
        ];
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": args,
            },
            "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal")
        };
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let mut builder = ClientBuilder::new(HttpConnector::new());
            match builder
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                // chromedriver is still starting.
                Err(err) if started.elapsed() < PATIENCE => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("no WebDriver session: {err}"),
            }
        };
        Self {
            client,
            driver,
            requests: Vec::new(),
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The element `css` selects, once there is one.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no element {css}: {err}"))
    }

    /// The text of the element `css` selects, once `ready` accepts it.
    pub async fn text_when(&self, css: &str, ready: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        let mut last = None;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if ready(&text) {
                    return text;
                }
                last = Some(text);
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{css} never became ready; it last read {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until nothing matches `css`.
    pub async fn gone(&self, css: &str) {
        let started = Instant::now();
        while !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .is_empty()
        {
            assert!(started.elapsed() < PATIENCE, "{css} is still there");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the field `css` selects, replacing what it held.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// Runs `script` in the page and returns its value.
    pub async fn run(&self, script: &str) -> Value {
        self.client.execute(script, Vec::new()).await.unwrap()
    }

    /// The console's entries since the last call (messages the page logged, failed loads,
    /// script errors, Content-Security-Policy violations).
    pub async fn console(&self) -> Vec<LogEntry> {
        self.log("browser")
            .await
            .into_iter()
            .map(|entry| LogEntry {
                level: entry["level"].as_str().unwrap_or_default().to_owned(),
                message: entry["message"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// The URL of every request made so far, in order, but those of the browser's own pages.
    pub async fn requests(&mut self) -> &[String] {
        for entry in self.log("performance").await {
            let Some(message) = entry["message"].as_str() else {
                continue;
            };
            let event: Value = serde_json::from_str(message).unwrap();
            let params = &event["message"]["params"];
            if event["message"]["method"] != "Network.requestWillBeSent"
                || internal(&params["documentURL"])
            {
                continue;
            }
            let url = params["request"]["url"].as_str().unwrap();
            self.requests.push(url.to_owned());
        }
        &self.requests
    }

    async fn log(&self, kind: &'static str) -> Vec<Value> {
        let entries = self.client.issue_cmd(ReadLog(kind)).await.unwrap();
        entries.as_array().cloned().unwrap_or_default()
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.unwrap()
    }

    pub async fn close(mut self) {
        self.client.clone().close().await.unwrap();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test leaves no chromedriver (and so no Chromium) behind.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// chromedriver's log endpoint (outside the W3C set): the entries of one log since the last
/// read.
#[derive(Debug)]
struct ReadLog(&'static str);

impl WebDriverCompatibleCommand for ReadLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        let session = session_id.expect("a session");
        base_url.join(&format!("session/{session}/se/log"))
    }

    fn method_and_body(&self, _: &url::Url) -> (Method, Option<String>) {
        let body = json!({ "type": self.0 }).to_string();
        (Method::POST, Some(body))
    }
}
