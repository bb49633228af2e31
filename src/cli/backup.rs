//! `keypooler backup`: a running server's database (`GET /admin/backup`) written to a new file,
//! `0600`, whole or not at all; one summary line out. The file is a keypooler database under the
//! server's `ENCRYPTION_KEY`: restoring is starting a server on it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use http_body_util::BodyExt;
use hyper::Method;
use hyper::header::CONTENT_LENGTH;
use secrecy::SecretString;

use super::client::{Server, block_on, idle};
use super::{Failure, format_elapsed};
use crate::config::Settings;
use crate::store::inspect_backup;

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
    let mut partial = Partial::create(&args.to)?;
    let bytes = block_on(download(&server, &token, &mut partial.file))
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

/// Asks `server` for a backup and writes it into `file`: its length, once every byte the
/// server announced has arrived.
async fn download(server: &Server, token: &SecretString, file: &mut File) -> anyhow::Result<u64> {
    let response = server
        .send(token, Method::GET, "/admin/backup", None)
        .await?;
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
    Ok(written)
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
