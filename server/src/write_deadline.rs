//! A deadline on writes that make no progress, at the IO level.
//!
//! A client that stops reading fills the socket's send buffer; from then on
//! every write is pending, and whatever is waiting to write — hyper's
//! connection task for an SSE body, a WebSocket's writer, tungstenite
//! answering pings — waits forever, holding its buffers and the session it
//! serves. [`WriteDeadline`] wraps the IO: once a write (or flush, or
//! shutdown) has been pending for the deadline without a single byte
//! accepted, it fails with [`io::ErrorKind::TimedOut`], and so does every
//! later write. The owner of the IO sees an ordinary write error and ends
//! the connection.
//!
//! Only the absence of progress counts: a slow reader that keeps accepting
//! bytes is never cut, and reads are untouched (an idle connection is the
//! session's business: its heartbeat and peer timeout).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// IO whose writes fail once they have made no progress for a deadline.
#[derive(Debug)]
pub(crate) struct WriteDeadline<T> {
    inner: T,
    timeout: Duration,
    /// Armed at the first pending write after the last progress; `None`
    /// until a write is first pending (most connections never stall).
    stall: Option<Pin<Box<Sleep>>>,
    /// Whether `stall` counts down now.
    armed: bool,
    /// The deadline passed: every write fails from now on.
    expired: bool,
}

impl<T> WriteDeadline<T> {
    /// Wraps `inner`; a write pending without progress for `timeout` fails.
    pub(crate) fn new(inner: T, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stall: None,
            armed: false,
            expired: false,
        }
    }

    /// Applies the deadline to the outcome of one write-side poll.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if let Poll::Ready(result) = polled {
            // Bytes accepted (or a definite error): the stall, if any, is over.
            self.armed = false;
            return Poll::Ready(result);
        }
        if !self.armed {
            let deadline = Instant::now() + self.timeout;
            match &mut self.stall {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        if let Some(sleep) = &mut self.stall {
            ready!(sleep.as_mut().poll(cx));
        }
        self.expired = true;
        Poll::Ready(Err(self.timed_out()))
    }

    fn timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the peer accepted nothing for {:?}: write deadline passed",
                self.timeout
            ),
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.expired {
            return Poll::Ready(Err(self.timed_out()));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.expired {
            return Poll::Ready(Err(self.timed_out()));
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.expired {
            return Poll::Ready(Err(self.timed_out()));
        }
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.expired {
            // Nothing more can be written; closing is all that is left.
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A pipe whose reader never reads: writes stall once its buffer is
    /// full.
    #[tokio::test]
    async fn a_write_stalled_past_the_deadline_fails() {
        let (client, _server) = tokio::io::duplex(1024);
        let mut io = WriteDeadline::new(client, Duration::from_millis(100));
        let started = std::time::Instant::now();
        let error = loop {
            match io.write(&[0; 512]).await {
                Ok(_) => continue,
                Err(error) => break error,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(5));
        // Sticky: later writes fail at once.
        let again = io.write(&[0]).await.map_err(|e| e.kind());
        assert_eq!(again, Err(io::ErrorKind::TimedOut));
    }

    /// A slow reader that keeps taking bytes is never cut: only the
    /// absence of progress counts.
    #[tokio::test]
    async fn a_slow_but_moving_reader_is_not_cut() {
        use tokio::io::AsyncReadExt;
        let (client, mut server) = tokio::io::duplex(64);
        let mut io = WriteDeadline::new(client, Duration::from_millis(150));
        let reader = tokio::spawn(async move {
            let mut buf = [0; 16];
            let mut total = 0;
            while total < 1024 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                total += server.read(&mut buf).await.unwrap_or(0);
            }
            total
        });
        // 1 KiB at ~1.6 KB/s: ~0.6 s in all, far past the deadline, but
        // never 150 ms without progress.
        io.write_all(&[7; 1024])
            .await
            .expect("a moving reader is not cut");
        io.flush().await.expect("flush");
        assert_eq!(reader.await.ok(), Some(1024));
    }
}
