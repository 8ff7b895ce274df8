//! A connection whose writes fail once they have made no progress for a
//! while, or, once backed up, go on slower than a floor. A client that
//! stops reading, or takes a byte a minute, would otherwise hold its
//! connection place, and the response buffered for it, for as long as it
//! likes: the server's timeouts cover reading requests, not writing answers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a write may wait for the peer to take any byte.
pub const WRITE_STALL: Duration = Duration::from_secs(60);
/// Bytes a second a backed-up peer must take, on average over each
/// [`WRITE_STALL`] it stays backed up.
pub const MIN_RATE: u64 = 1024;

pub struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    min_rate: u64,
    /// Running while a write waits; reset by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Since the first write that waited, and the bytes taken since: reset
    /// by a completed flush (hyper flushes after each answer) and by two
    /// writes in a row that did not wait (the peer keeps up).
    backed_up: Option<(Instant, u64)>,
    /// The last write waited.
    waited: bool,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, limit: Duration, min_rate: u64) -> Self {
        WriteDeadline {
            inner,
            limit,
            min_rate,
            stalled: None,
            backed_up: None,
            waited: false,
        }
    }

    /// After the inner write returned `Pending`: an error once the stall
    /// has lasted `limit`, or once the peer, backed up for a `limit` or
    /// more, took less than `min_rate` a second on average.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let (since, taken) = *self.backed_up.get_or_insert((Instant::now(), 0));
        let waited = since.elapsed();
        if waited >= limit && taken < self.min_rate.saturating_mul(waited.as_secs()) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the peer took {taken} bytes in {} s, under {} bytes a second",
                    waited.as_secs(),
                    self.min_rate
                ),
            )));
        }
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took nothing for {} s", limit.as_secs()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, cx: &mut Context<'_>, p: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match p {
            Poll::Pending => self.stall(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        p: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match &p {
            Poll::Pending => self.waited = true,
            Poll::Ready(_) if !std::mem::take(&mut self.waited) => self.backed_up = None,
            Poll::Ready(r) => {
                if let (Ok(n), Some((_, taken))) = (r, &mut self.backed_up) {
                    *taken += *n as u64;
                }
            }
        }
        self.progress(cx, p)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(cx, p)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, p)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_flush(cx);
        if p.is_ready() {
            self.backed_up = None;
        }
        self.progress(cx, p)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(cx, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_takes_fails_after_the_limit_and_progress_resets_it() {
        // A pipe that holds 16 bytes, read by no one.
        let (near, mut far) = tokio::io::duplex(16);
        let mut w = WriteDeadline::new(near, Duration::from_secs(5), 0);
        w.write_all(&[1; 16]).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let err = w.write_all(&[2; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_secs(5));

        // A reader that takes a byte every 3 s keeps a write going (the
        // 16 bytes already in the pipe, then the 8 written).
        let mut w = WriteDeadline::new(w.inner, Duration::from_secs(5), 0);
        let reader = tokio::spawn(async move {
            let mut b = [0u8; 1];
            for _ in 0..24 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                tokio::io::AsyncReadExt::read_exact(&mut far, &mut b)
                    .await
                    .unwrap();
            }
        });
        w.write_all(&[3; 8]).await.unwrap();
        reader.await.unwrap();
    }

    /// Takes a byte from `far` every `every`, `n` times.
    fn trickle(
        mut far: tokio::io::DuplexStream,
        every: Duration,
        n: usize,
    ) -> tokio::task::JoinHandle<tokio::io::DuplexStream> {
        tokio::spawn(async move {
            let mut b = [0u8; 1];
            for _ in 0..n {
                tokio::time::sleep(every).await;
                if tokio::io::AsyncReadExt::read_exact(&mut far, &mut b)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            far
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_backed_up_peer_taking_under_the_floor_is_cut_off_and_a_flush_forgives() {
        // 1 byte every 3 s against a floor of 1 byte a second: progress
        // every time, yet the write fails once backed up for 5 s.
        let (near, far) = tokio::io::duplex(16);
        let mut w = WriteDeadline::new(near, Duration::from_secs(5), 1);
        w.write_all(&[1; 16]).await.unwrap();
        let reader = trickle(far, Duration::from_secs(3), 40);
        let t0 = tokio::time::Instant::now();
        let err = w.write_all(&[2; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("under 1 bytes a second"), "{err}");
        assert!(t0.elapsed() >= Duration::from_secs(5) && t0.elapsed() < Duration::from_secs(10));
        drop(w);
        drop(reader.await.unwrap());

        // 4 bytes a second passes the floor of 1.
        let (near, far) = tokio::io::duplex(16);
        let mut w = WriteDeadline::new(near, Duration::from_secs(5), 1);
        w.write_all(&[1; 16]).await.unwrap();
        let reader = trickle(far, Duration::from_millis(250), 64);
        w.write_all(&[2; 40]).await.unwrap();
        w.flush().await.unwrap();
        assert!(w.backed_up.is_none(), "a completed flush ends the backlog");
        drop(w);
        reader.await.unwrap();
    }
}
