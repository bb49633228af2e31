//! A connection's IO with a deadline on writes that make no progress.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection's IO whose writes fail with `TimedOut` once one has stayed pending for
/// `timeout`: the socket's buffers are full because the client reads nothing. The error closes
/// the connection. A write that completes ends the wait, so a client that reads slowly but
/// keeps reading is never cut; only one that stops is.
///
/// While writes complete at once (every answer of a client that reads) this costs a cleared
/// flag per write; the timer is allocated the first time a write waits.
pub(super) struct WriteTimeout<IO> {
    io: IO,
    timeout: Duration,
    /// Fires `timeout` after the current wait began; `None` until a write first waits.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Whether a write is waiting now, counted by `deadline`.
    waiting: bool,
}

impl<IO> WriteTimeout<IO> {
    pub(super) fn new(io: IO, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            deadline: None,
            waiting: false,
        }
    }

    /// `poll` is what the IO answered to a write: ready ends the wait; pending begins one (or
    /// continues it), and fails once it has lasted `timeout`.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.waiting = false;
            return poll;
        }
        let timeout = self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if !self.waiting {
            self.waiting = true;
            deadline.as_mut().reset(Instant::now() + timeout);
        }
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for WRITE_TIMEOUT",
        )))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WriteTimeout<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_reads_fails_after_the_timeout() {
        let (server, _client) = duplex(64);
        let mut server = WriteTimeout::new(server, TIMEOUT);
        let started = Instant::now();
        let err = server.write_all(&[7; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn each_write_that_progresses_restarts_the_wait() {
        let (server, mut client) = duplex(64);
        let mut server = WriteTimeout::new(server, TIMEOUT);
        // The peer reads 64 bytes every 6 s: 16 waits, none as long as the timeout, 96 s in all.
        let reader = tokio::spawn(async move {
            let mut chunk = [0u8; 64];
            for _ in 0..16 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                client.read_exact(&mut chunk).await.unwrap();
            }
            client
        });
        let started = Instant::now();
        server.write_all(&[7; 17 * 64]).await.unwrap();
        assert!(started.elapsed() > 9 * TIMEOUT);
        // Then the peer stops reading: the next write that waits fails.
        let _client = reader.await.unwrap();
        let err = server.write_all(&[7; 128]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
