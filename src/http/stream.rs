//! Bodies too large to hold: rendered on a blocking thread a chunk at a time, into a small
//! channel the response body reads. `/metrics` and the full admin listings are streamed so.
//!
//! So a streamed body holds at most [`CHUNKS_AHEAD`] chunks of about [`CHUNK`] bytes however
//! large the pool, a client that does not read stops the rendering rather than growing a
//! buffer, and the rendering never runs on the threads that answer `GET /key`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::Frame;
use tokio::sync::mpsc;

/// The size at which a chunk is handed to the response body.
const CHUNK: usize = 64 * 1024;
/// Chunks rendered ahead of the client.
const CHUNKS_AHEAD: usize = 2;
/// How long a chunk may wait for the client to take the one before: after that the rendering
/// ends, its connection is closed (the body ends in an error, so no client mistakes it for a
/// whole answer), and what it held (a snapshot, a place among the concurrent scrapes) is
/// released.
pub const STALLED_BODY: Duration = Duration::from_secs(30);

/// The response body `render` writes, on a blocking thread, into an [`Out`]. Whatever `render`
/// captures (a snapshot, a permit) is held until it returns.
pub fn spawn(render: impl FnOnce(&mut Out) + Send + 'static) -> Body {
    let (chunks, receiver) = mpsc::channel(CHUNKS_AHEAD);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut out = Out {
            buf: Vec::with_capacity(CHUNK + CHUNK / 8),
            sink: Some(Sink { chunks, runtime }),
            cut: false,
        };
        render(&mut out);
        out.finish();
    });
    Body::new(Streamed {
        chunks: receiver,
        done: false,
    })
}

/// Where a streamed body is written: a buffer handed on each time it reaches [`CHUNK`] bytes, or
/// kept whole (tests).
pub struct Out {
    buf: Vec<u8>,
    sink: Option<Sink>,
    /// The client is gone or stalled: the rest is skipped.
    cut: bool,
}

struct Sink {
    chunks: mpsc::Sender<Chunk>,
    runtime: tokio::runtime::Handle,
}

enum Chunk {
    Data(Bytes),
    /// Everything was rendered; without it, the end of the channel is an error.
    End,
}

impl Out {
    /// An `Out` that keeps everything, for tests of what is written.
    #[cfg(all(test, not(loom)))]
    pub fn kept() -> Self {
        Self {
            buf: Vec::new(),
            sink: None,
            cut: false,
        }
    }

    /// What a kept `Out` holds.
    #[cfg(all(test, not(loom)))]
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.buf).expect("rendered text is UTF-8")
    }

    /// The buffer to write the next item into; call [`Out::written`] after each item.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Whether the client is gone or stalled: a caller stops rendering.
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// Called after each item: hands the buffer on once it is a chunk.
    pub fn written(&mut self) {
        if self.buf.len() >= CHUNK && self.sink.is_some() {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + CHUNK / 8));
            self.send(Chunk::Data(Bytes::from(full)));
        }
    }

    /// Hands on what is buffered, then `bytes` as a chunk of its own.
    pub fn push_chunk(&mut self, bytes: impl Into<Bytes>) {
        let bytes = bytes.into();
        if self.sink.is_none() {
            self.buf.extend_from_slice(&bytes);
            return;
        }
        if !self.buf.is_empty() {
            let buffered = std::mem::take(&mut self.buf);
            self.send(Chunk::Data(Bytes::from(buffered)));
        }
        self.send(Chunk::Data(bytes));
    }

    fn finish(mut self) {
        let rest = std::mem::take(&mut self.buf);
        if !rest.is_empty() {
            self.send(Chunk::Data(Bytes::from(rest)));
        }
        self.send(Chunk::End);
    }

    /// Waits (this is a blocking thread) up to [`STALLED_BODY`] for room in the channel.
    fn send(&mut self, chunk: Chunk) {
        let Some(sink) = &self.sink else { return };
        if self.cut {
            return;
        }
        let sent = sink
            .runtime
            .block_on(tokio::time::timeout(STALLED_BODY, sink.chunks.send(chunk)));
        if !matches!(sent, Ok(Ok(()))) {
            self.cut = true;
            self.buf = Vec::new();
        }
    }
}

/// The response body: the chunks as they come, then the end, or an error if the rendering
/// stopped before its end (the connection is then closed mid-body).
struct Streamed {
    chunks: mpsc::Receiver<Chunk>,
    done: bool,
}

/// A body that ended before its last chunk.
#[derive(Debug, thiserror::Error)]
#[error("the streamed body was cut short")]
struct Cut;

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match std::task::ready!(this.chunks.poll_recv(cx)) {
            Some(Chunk::Data(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Some(Chunk::End) => {
                this.done = true;
                Poll::Ready(None)
            }
            None => {
                this.done = true;
                Poll::Ready(Some(Err(Cut)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
