//! A connection whose writes must make progress: an answer the client does not read for a
//! while closes the connection, so a client that pipelines requests and never reads holds no
//! place for long (hyper has a deadline for reading a request head, none for writing). Reading
//! a byte now and then does not count as reading: once a write has waited, the deadline is
//! lifted only by [`MIN_PROGRESS`] bytes written or by everything written (a flush done).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Bytes a waiting writer must get out to lift its deadline (short of a complete flush).
pub(crate) const MIN_PROGRESS: usize = 16 * 1024;

/// `io`, failing a write (or flush) that has not made [`MIN_PROGRESS`] since it first waited,
/// `timeout` ago.
pub(crate) struct WriteDeadline<T> {
    io: T,
    timeout: Duration,
    /// Armed when a write first waits; dropped once the writes make real progress.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Bytes written since the deadline was armed.
    progressed: usize,
}

impl<T> WriteDeadline<T> {
    pub(crate) fn new(io: T, timeout: Duration) -> Self {
        WriteDeadline {
            io,
            timeout,
            stalled: None,
            progressed: 0,
        }
    }

    /// After a write that waits: an error once it has waited `timeout`.
    fn waited(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client read nothing of its answer for {} s",
                timeout.as_secs()
            ),
        ))
    }

    /// After a write: `written` bytes went out (or it waited).
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match poll {
            Poll::Ready(Ok(written)) => {
                if self.stalled.is_some() {
                    self.progressed = self.progressed.saturating_add(written);
                    if self.progressed >= MIN_PROGRESS {
                        self.lift();
                    }
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.waited(cx).map(Err),
        }
    }

    /// After a flush or shutdown: done means everything went out.
    fn flushed(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        match poll {
            Poll::Ready(result) => {
                if result.is_ok() {
                    self.lift();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.waited(cx).map(Err),
        }
    }

    fn lift(&mut self) {
        self.stalled = None;
        self.progressed = 0;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.flushed(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_shutdown(cx);
        this.flushed(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A peer that never reads: the writer fails once its writes have waited the timeout, and
    /// not before.
    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_after_the_timeout() {
        let (near, _far) = tokio::io::duplex(1024);
        let mut io = WriteDeadline::new(near, Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let chunk = vec![0u8; 4096];
        let error = loop {
            if let Err(error) = io.write_all(&chunk).await {
                break error;
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    /// A reader that takes a few bytes now and then (to reset a naive deadline) is cut off at
    /// the deadline all the same.
    #[tokio::test(start_paused = true)]
    async fn a_reader_that_sips_is_cut_off() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(1024);
        let mut io = WriteDeadline::new(near, Duration::from_secs(5));
        let _sipper = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if far.read(&mut buf).await.unwrap_or(0) == 0 {
                    break;
                }
            }
        });
        let started = tokio::time::Instant::now();
        let error = io.write_all(&vec![1u8; 256 * 1024]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() <= Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
    }

    /// A reader that keeps up (a few KiB a second): no error however long the exchange lasts.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_reads_is_served() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(8 * 1024);
        let mut io = WriteDeadline::new(near, Duration::from_secs(5));
        let total = 512 * 1024;
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 8 * 1024];
            let mut read = 0;
            while read < total {
                tokio::time::sleep(Duration::from_secs(1)).await;
                read += far.read(&mut buf).await.unwrap();
            }
            read
        });
        io.write_all(&vec![1u8; total]).await.unwrap();
        io.flush().await.unwrap();
        assert!(reader.await.unwrap() >= total);
    }
}
