//! Time limits that measure silence: how long no byte has crossed a
//! connection, not how long one read or write takes.
//!
//! A frame or chunk can take longer than a connection's limit to cross a
//! slow link, or one held to `--limit-rate`, while its bytes keep moving;
//! the layers above the socket (read and write buffers, the encrypted
//! channel, the rate limit) see nothing of that until the whole of it has
//! crossed. So each direction of a connection notes when its bytes cross
//! where they meet the socket, and a wait above gives up only once none has
//! crossed for the whole limit: a slow peer is never cut off, a silent one
//! is, as soon as it has been silent for the limit.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, timeout_at};

/// When a byte last crossed one direction of a connection.
#[derive(Clone, Debug)]
pub struct Traffic(Arc<Moments>);

#[derive(Debug)]
struct Moments {
    /// The time the others count from.
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last crossing; 0 before the first.
    last: AtomicU64,
}

impl Default for Traffic {
    fn default() -> Traffic {
        Traffic(Arc::new(Moments {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }))
    }
}

impl Traffic {
    /// When a byte last crossed, if one did.
    fn last_moved(&self) -> Option<Instant> {
        match self.0.last.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(self.0.epoch + Duration::from_nanos(nanos)),
        }
    }

    fn count(&self, bytes: usize) {
        if bytes > 0 {
            let since = Instant::now().saturating_duration_since(self.0.epoch);
            let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX).max(1);
            self.0.last.fetch_max(nanos, Ordering::Relaxed);
        }
    }
}

/// A stream whose reads and writes are noted in a [`Traffic`]. It must be
/// the layer next to the socket (or next to the rate limit, which hands
/// bytes on to the socket at once), so that a byte counts when it crosses,
/// not when a layer above hands it on.
pub struct Counted<S> {
    inner: S,
    traffic: Traffic,
}

impl<S> Counted<S> {
    pub fn new(inner: S, traffic: Traffic) -> Counted<S> {
        Counted { inner, traffic }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.traffic.count(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.traffic.count(written);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.traffic.count(written);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Runs `work` to its end, unless `limit` passes with no byte crossing
/// in `traffic`: then `None`, and `work` is dropped. It gives up exactly
/// `limit` after the last byte crossed, or after it began if none crossed
/// since.
pub async fn unless_silent<F: Future>(
    traffic: &Traffic,
    limit: Duration,
    work: F,
) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    // Work that is done at once (a write into the buffer, a read of what it
    // holds) costs no timer.
    let at_once = std::future::poll_fn(|cx| match work.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    if let Some(output) = at_once {
        return Some(output);
    }
    let began = Instant::now();
    let quiet_since = || traffic.last_moved().map_or(began, |last| last.max(began));
    loop {
        let since = quiet_since();
        match timeout_at(since + limit, work.as_mut()).await {
            Ok(output) => return Some(output),
            Err(_) if quiet_since() == since => return None,
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMIT: Duration = Duration::from_secs(1);

    /// A whole write that takes many limits goes through, since some of
    /// it crosses within every limit.
    #[tokio::test(start_paused = true)]
    async fn a_slow_peer_is_waited_for_however_long_the_whole_takes() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let traffic = Traffic::default();
        let mut writer = Counted::new(ours, traffic.clone());
        let trickle = tokio::spawn(async move {
            let mut received = Vec::new();
            let mut piece = [0u8; 100];
            loop {
                // Time here is tokio's paused clock: exact, not measured.
                tokio::time::sleep(LIMIT / 2).await;
                match theirs.read(&mut piece).await.unwrap() {
                    0 => return received,
                    read => received.extend_from_slice(&piece[..read]),
                }
            }
        });
        let started = tokio::time::Instant::now();
        let bytes = vec![7u8; 10_000];
        let written = unless_silent(&traffic, LIMIT, async {
            writer.write_all(&bytes).await?;
            writer.shutdown().await
        })
        .await;
        assert!(matches!(written, Some(Ok(()))), "{written:?}");
        assert!(started.elapsed() > 10 * LIMIT);
        assert_eq!(trickle.await.unwrap(), bytes);
    }

    /// A peer that stops taking bytes is given up on once nothing has moved
    /// for the limit, and no later.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_is_given_up_on_after_the_limit() {
        // The peer's end stays open and unread: the first 1,024 bytes fill
        // the pipe, then nothing moves.
        let (ours, _theirs) = tokio::io::duplex(1024);
        let traffic = Traffic::default();
        let mut writer = Counted::new(ours, traffic.clone());
        let started = tokio::time::Instant::now();
        let written = unless_silent(&traffic, LIMIT, writer.write_all(&[7u8; 10_000])).await;
        assert!(written.is_none());
        // The first 1,024 bytes crossed at once, so the limit runs from
        // the start; tokio's timers round up to the next millisecond.
        let waited = started.elapsed();
        assert!(
            waited >= LIMIT && waited <= LIMIT + Duration::from_millis(1),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_counts_when_its_bytes_arrive() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let traffic = Traffic::default();
        let mut reader = Counted::new(ours, traffic.clone());
        theirs.write_all(b"abc").await.unwrap();
        let mut two = [0u8; 2];
        assert_eq!(traffic.last_moved(), None);
        tokio::time::advance(LIMIT).await;
        reader.read_exact(&mut two).await.unwrap();
        let first = traffic.last_moved().unwrap();
        tokio::time::advance(LIMIT).await;
        drop(theirs);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"c");
        assert_eq!(traffic.last_moved(), Some(first + LIMIT));
    }
}
