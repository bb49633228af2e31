//! `GET /admin/backup`: the database as it stands, streamed as a redb file while the server
//! keeps serving and writing. The writer pins its last commit (a read transaction, which never
//! holds it back); the copy is made off the request workers into an unlinked temporary file,
//! then streamed from it. Values stay sealed: the file opens under the same `ENCRYPTION_KEY`.
//!
//! One backup at a time: another asked meanwhile gets `409`. The slot is held until the file
//! has been sent (or the client has gone), and until the copy ends even if the request was
//! given up on, so two copies never fill the disk at once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;
use super::auth::Admin;
use super::error::ApiError;
use crate::store::{Backup, StoreError};

/// Bytes read from the copy per chunk sent.
const CHUNK: usize = 64 * 1024;

/// The one backup slot (see the module doc).
pub fn slot() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(1))
}

pub async fn backup(_: Admin, State(app): State<AppState>) -> Result<Response, ApiError> {
    let permit = Arc::clone(app.backups()).try_acquire_owned().map_err(|_| {
        ApiError::Conflict("a backup is already running; try again once it has finished".into())
    })?;
    let snapshot = app.writer().snapshot().await?;
    let (backup, permit) = tokio::task::spawn_blocking(move || (snapshot.copy(), permit))
        .await
        .map_err(|err| ApiError::Internal(format!("the backup stopped: {err}")))?;
    let backup = backup.map_err(|err| match err {
        StoreError::Closed(_) => ApiError::Unavailable(err.to_string()),
        err => ApiError::Internal(format!("the backup failed: {err}")),
    })?;
    let name = file_name(app.pool().clock().unix_now_ms());
    Ok(attachment(FileBody::new(backup, permit), &name))
}

/// A `200` carrying `body` as the file `name`, never cached.
fn attachment(body: FileBody, name: &str) -> Response {
    let mut response = Response::new(Body::new(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::try_from(format!("attachment; filename=\"{name}\""))
            .expect("the name is ASCII digits and letters"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `keypooler-backup-20250102T030405Z.redb`, in UTC.
fn file_name(unix_ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1_000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let stamp = at
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    format!("keypooler-backup-{stamp}.redb")
}

/// The copy, read chunk by chunk as the client takes it; its exact length is the response's
/// `Content-Length`. Dropping it (sent, or the client gone) closes the unlinked file, which
/// frees its space, and frees the backup slot.
struct FileBody {
    file: tokio::fs::File,
    /// Bytes not sent yet.
    remaining: u64,
    buffer: BytesMut,
    _slot: OwnedSemaphorePermit,
}

impl FileBody {
    fn new(backup: Backup, slot: OwnedSemaphorePermit) -> Self {
        Self {
            file: tokio::fs::File::from_std(backup.file),
            remaining: backup.len,
            buffer: BytesMut::new(),
            _slot: slot,
        }
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(this.remaining).map_or(CHUNK, |left| left.min(CHUNK));
        this.buffer.resize(want, 0);
        let mut read = ReadBuf::new(&mut this.buffer[..want]);
        ready!(Pin::new(&mut this.file).poll_read(cx, &mut read))?;
        let filled = read.filled().len();
        if filled == 0 {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backup's temporary file ended early",
            ))));
        }
        this.remaining -= filled as u64;
        Poll::Ready(Some(Ok(Frame::data(this.buffer.split_to(filled).freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_file_name_is_the_utc_time() {
        assert_eq!(
            file_name(1_735_787_045_999),
            "keypooler-backup-20250102T030405Z.redb"
        );
    }
}
