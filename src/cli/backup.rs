//! `keypooler backup`: a running server's database (`GET /admin/backup`) written to a new file,
//! `0600`, whole or not at all; one summary line out. The file is a keypooler database under the
//! server's `ENCRYPTION_KEY`: restoring is starting a server on it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret, SecretString};

use super::{Failure, format_elapsed};
use crate::config::{ConfigError, Settings};
use crate::store::inspect_backup;

/// Where the server is when `KEYPOOLER_URL` is not set.
const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may send nothing (its answer's head, then each part of the file).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// The most of an error answer read, for its message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The file to write (a new file; see --force).
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    /// Replace FILE if it exists (it is replaced only once the new copy is complete).
    #[arg(long)]
    pub force: bool,
    /// The running server, as http://host:port [default: http://127.0.0.1:8080].
    #[arg(long, env = "KEYPOOLER_URL")]
    pub url: Option<String>,
}

pub(super) fn run(settings: &Settings, args: &BackupArgs) -> Result<(), Failure> {
    let token = settings.admin_token()?;
    let server = Server::parse(args.url.as_deref())?;
    if !args.force && fs::symlink_metadata(&args.to).is_ok() {
        return Err(anyhow!("{} exists; pass --force to replace it", args.to.display()).into());
    }
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)?;
    let mut partial = Partial::create(&args.to)?;
    let bytes = runtime
        .block_on(server.download(&token, &mut partial.file))
        .with_context(|| format!("backup from {} failed; no file was written", server.url))?;
    partial
        .file
        .sync_all()
        .with_context(|| format!("cannot write {}", args.to.display()))?;
    let counts = inspect_backup(&partial.path)
        .with_context(|| format!("the backup {} sent is not whole", server.url))?;
    partial.keep(&args.to, args.force)?;
    println!(
        "backed up {} to {}: {} tiers, {} keys, {} consumers, {} usage events, {bytes} bytes, in {}",
        server.url,
        args.to.display(),
        counts.tiers,
        counts.keys,
        counts.consumers,
        counts.usage_events,
        format_elapsed(started.elapsed())
    );
    Ok(())
}

/// The running server, from `KEYPOOLER_URL`.
struct Server {
    /// As given, for messages (it holds no credentials: those are refused).
    url: String,
    /// `host:port`, to connect to and for the `Host` header.
    authority: String,
    /// The request's path: `/admin/backup` under the URL's own path, if it has one.
    path: String,
}

impl Server {
    fn parse(given: Option<&str>) -> Result<Self, ConfigError> {
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
            path: format!("{}/admin/backup", uri.path().trim_end_matches('/')),
        })
    }

    /// Asks for a backup and writes it into `file`: its length, once every byte the server
    /// announced has arrived.
    async fn download(&self, token: &SecretString, file: &mut File) -> anyhow::Result<u64> {
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&self.authority),
        )
        .await
        .map_err(|_| anyhow!("no connection within {} s", CONNECT_TIMEOUT.as_secs()))?
        .context("cannot connect")?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let request = hyper::Request::get(self.path.as_str())
            .header(HOST, self.authority.as_str())
            .header(AUTHORIZATION, format!("Bearer {}", token.expose_secret()))
            .body(Empty::<Bytes>::new())?;
        let response = idle(sender.send_request(request)).await??;
        let status = response.status();
        if !status.is_success() {
            let body = Limited::new(response.into_body(), ERROR_BODY_LIMIT);
            let body = idle(body.collect()).await?.map(|body| body.to_bytes());
            bail!("the server answered {status}: {}", message(body.ok()));
        }
        let announced = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        let mut body = response.into_body();
        let mut written = 0u64;
        while let Some(frame) = idle(body.frame()).await? {
            if let Ok(data) = frame?.into_data() {
                file.write_all(&data)?;
                written += data.len() as u64;
            }
        }
        if announced.is_some_and(|announced| announced != written) {
            bail!("the answer was cut short");
        }
        connection.abort();
        Ok(written)
    }
}

/// `future`, unless the server sends nothing for [`IDLE_TIMEOUT`].
async fn idle<T>(future: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(IDLE_TIMEOUT, future)
        .await
        .map_err(|_| anyhow!("the server sent nothing for {} s", IDLE_TIMEOUT.as_secs()))
}

/// The message of an error answer (`{"error": "…"}`), on one line.
fn message(body: Option<Bytes>) -> String {
    let text = body
        .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .and_then(|json| json.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "no error message".into());
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect()
}

/// The file being written, under a temporary name beside its destination; removed unless kept.
struct Partial {
    file: File,
    path: PathBuf,
    kept: bool,
}

impl Partial {
    fn create(to: &Path) -> anyhow::Result<Self> {
        let folder = to
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = to
            .file_name()
            .ok_or_else(|| anyhow!("{} is not a file name", to.display()))?;
        let path = folder.join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            uuid::Uuid::new_v4()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create a file in {}", folder.display()))?;
        Ok(Self {
            file,
            path,
            kept: false,
        })
    }

    /// Gives the file its name: replacing `to` with `force`, else only if `to` still does not
    /// exist (a link, which never replaces).
    fn keep(mut self, to: &Path, force: bool) -> anyhow::Result<()> {
        let placed = if force {
            fs::rename(&self.path, to)
        } else {
            match fs::hard_link(&self.path, to) {
                Ok(()) => fs::remove_file(&self.path),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    bail!("{} exists; pass --force to replace it", to.display())
                }
                // A file system without hard links.
                Err(_) if fs::symlink_metadata(to).is_err() => fs::rename(&self.path, to),
                Err(err) => Err(err),
            }
        };
        placed.with_context(|| format!("cannot write {}", to.display()))?;
        self.kept = true;
        if let Some(folder) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(folder)
                .and_then(|folder| folder.sync_all())
                .with_context(|| format!("cannot write {}", to.display()))?;
        }
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_an_http_server() {
        let server = Server::parse(None).unwrap();
        assert_eq!(
            (server.authority.as_str(), server.path.as_str()),
            ("127.0.0.1:8080", "/admin/backup")
        );
        let server = Server::parse(Some("http://[::1]/keys/")).unwrap();
        assert_eq!(
            (server.authority.as_str(), server.path.as_str()),
            ("[::1]:80", "/keys/admin/backup")
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
    fn an_error_answer_is_shown_on_one_line() {
        let body = Bytes::from_static(br#"{"error":"invalid\ntoken"}"#);
        assert_eq!(message(Some(body)), "invalid token");
        assert_eq!(
            message(Some(Bytes::from_static(b"<html>"))),
            "no error message"
        );
    }
}
