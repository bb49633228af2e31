//! The HTTP client of the commands that talk to a running server (`KEYPOOLER_URL`, with
//! `ADMIN_TOKEN`): `backup`, `tiers`, `keys`, `consumers`. Plain HTTP/1.1, one connection per
//! request. An answer that is not a success becomes an error carrying the server's message:
//! [`Refused`] for a 4xx (exit 3), a runtime error otherwise (exit 1).

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, LINK};
use hyper::{Method, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::config::ConfigError;

/// Where the server is when `KEYPOOLER_URL` is not set.
const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may send nothing (an answer's head, then each part of its body).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// The most of an error answer read, for its message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// The most of a JSON answer read (a listing of a large pool).
const JSON_BODY_LIMIT: usize = 1 << 30;

/// The server said no (a 4xx): its status and message.
#[derive(Debug, thiserror::Error)]
#[error("the server answered {status}: {message}")]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
}

/// The running server, from `KEYPOOLER_URL`.
pub struct Server {
    /// As given, for messages (it holds no credentials: those are refused).
    pub url: String,
    /// `host:port`, to connect to and for the `Host` header.
    authority: String,
    /// The URL's own path, without its trailing `/`: what every request's path goes under.
    base: String,
}

impl Server {
    pub fn parse(given: Option<&str>) -> Result<Self, ConfigError> {
        let url = given
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .unwrap_or(DEFAULT_URL);
        let invalid = |why: &str| {
            ConfigError(format!(
                "KEYPOOLER_URL must be an http:// URL such as {DEFAULT_URL} ({why})"
            ))
        };
        if url.contains('@') {
            return Err(invalid(
                "credentials do not belong in it: the token is ADMIN_TOKEN",
            ));
        }
        let uri: Uri = url.parse().map_err(|_| invalid(&format!("got {url:?}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(invalid(
                    "this client speaks plain HTTP: reach the server's port directly, or through a tunnel",
                ));
            }
            _ => return Err(invalid(&format!("got {url:?}"))),
        }
        if uri.query().is_some() {
            return Err(invalid(&format!("got {url:?}, with a query")));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| invalid(&format!("got {url:?}, with no host")))?;
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self {
            url: url.to_owned(),
            authority: format!("{}:{port}", authority.host()),
            base: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The request's target: `path` (which starts with `/`) under the URL's own path.
    fn target(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one request; its answer if it is a success, else the server's message as an
    /// error ([`Refused`] for a 4xx). The connection closes once the answer has been read (the
    /// request's sender is gone) or the runtime ends.
    pub async fn send(
        &self,
        token: &SecretString,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response<Incoming>> {
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&self.authority),
        )
        .await
        .map_err(|_| anyhow!("no connection within {} s", CONNECT_TIMEOUT.as_secs()))?
        .context("cannot connect")?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(self.target(path))
            .header(HOST, self.authority.as_str())
            .header(AUTHORIZATION, format!("Bearer {}", token.expose_secret()));
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = idle(sender.send_request(request)).await??;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = Limited::new(response.into_body(), ERROR_BODY_LIMIT);
        let body = idle(body.collect()).await?.map(|body| body.to_bytes());
        let message = message(body.ok());
        if status.is_client_error() {
            return Err(Refused { status, message }.into());
        }
        bail!("the server answered {status}: {message}")
    }

    /// Sends one request with a JSON body (or none) and reads the JSON answer.
    pub async fn json(
        &self,
        token: &SecretString,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Value> {
        read_json(self.send(token, method, path, body).await?).await
    }

    /// `GET path`, a page of a listing: its items, and the path of the next page when the
    /// answer's `Link` names one.
    pub async fn page(
        &self,
        token: &SecretString,
        path: &str,
    ) -> anyhow::Result<(Vec<Value>, Option<String>)> {
        let response = self.send(token, Method::GET, path, None).await?;
        let next = response
            .headers()
            .get(LINK)
            .and_then(|link| link.to_str().ok())
            .and_then(next_page)
            .map(str::to_owned);
        match read_json(response).await? {
            Value::Array(items) => Ok((items, next)),
            _ => bail!("the server's answer to {path} is not a list"),
        }
    }
}

/// The JSON body of `response`.
async fn read_json(response: Response<Incoming>) -> anyhow::Result<Value> {
    let body = Limited::new(response.into_body(), JSON_BODY_LIMIT);
    let body = idle(body.collect())
        .await?
        .map_err(|err| anyhow!("the answer was cut short: {err}"))?
        .to_bytes();
    serde_json::from_slice(&body).context("the server's answer is not JSON")
}

/// The target of a `Link: <target>; rel="next"` header: a path on the server (as the server
/// saw it, so under the same URL prefix as the request).
fn next_page(link: &str) -> Option<&str> {
    let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
    let next = params
        .split(';')
        .any(|param| param.trim().replace(' ', "") == "rel=\"next\"");
    (next && target.starts_with('/')).then_some(target)
}

/// `future`, unless the server sends nothing for [`IDLE_TIMEOUT`].
pub async fn idle<T>(future: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(IDLE_TIMEOUT, future)
        .await
        .map_err(|_| anyhow!("the server sent nothing for {} s", IDLE_TIMEOUT.as_secs()))
}

/// Runs `future` to its end on a runtime of its own (the commands are one request or a few).
pub fn block_on<T>(future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

/// The message of an error answer (`{"error": "…"}`), on one line.
fn message(body: Option<Bytes>) -> String {
    let text = body
        .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
        .and_then(|json| json.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "no error message".into());
    one_line(&text, 500)
}

/// `text` with its control characters as spaces, at most `chars` long: what a terminal shows
/// of a value the server sent.
pub fn one_line(text: &str, chars: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(chars)
        .collect()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_an_http_server() {
        let server = Server::parse(None).unwrap();
        assert_eq!(
            (server.authority.as_str(), server.target("/admin/backup")),
            ("127.0.0.1:8080", "/admin/backup".to_owned())
        );
        let server = Server::parse(Some("http://[::1]/keys/")).unwrap();
        assert_eq!(
            (server.authority.as_str(), server.target("/admin/backup")),
            ("[::1]:80", "/keys/admin/backup".to_owned())
        );
        for bad in [
            "https://pool.example",
            "ftp://pool.example",
            "pool.example:8080",
            "http://user:secret@pool.example",
            "http://pool.example/?x=1",
            "http://",
        ] {
            let err = Server::parse(Some(bad)).err().unwrap();
            assert!(err.0.starts_with("KEYPOOLER_URL must be"), "{bad}: {err}");
            assert!(!err.0.contains("secret"), "{err}");
        }
    }

    #[test]
    fn the_next_page_is_a_path_on_the_server() {
        let link = "</admin/keys?limit=2&after=a%2Fb>; rel=\"next\"";
        assert_eq!(next_page(link), Some("/admin/keys?limit=2&after=a%2Fb"));
        assert_eq!(next_page("</k?after=1>; rel=next"), None);
        assert_eq!(next_page("</k?after=1>; rel=\"prev\""), None);
        assert_eq!(next_page("<http://elsewhere/k>; rel=\"next\""), None);
        assert_eq!(next_page("garbage"), None);
    }

    #[test]
    fn an_error_answer_is_shown_on_one_line() {
        let body = Bytes::from_static(br#"{"error":"invalid\ntoken"}"#);
        assert_eq!(message(Some(body)), "invalid token");
        assert_eq!(
            message(Some(Bytes::from_static(b"<html>"))),
            "no error message"
        );
    }
}
