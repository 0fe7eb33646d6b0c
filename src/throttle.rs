//! Caps the rate at which bytes leave: a token bucket around a writer, for
//! `haul send --limit-rate`.
//!
//! It throttles what is written to the socket, after framing and compression,
//! so it limits the bytes on the wire whatever the protocol, as rsync's
//! `--bwlimit` does. It knows nothing of files or messages.

use std::future::Future;
use std::io;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::size::parse_byte_size;

/// A rate limit in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit(pub NonZeroU64);

impl FromStr for RateLimit {
    type Err = String;

    /// Reads a size as [`parse_byte_size`] does, with an optional `/s`:
    /// `512K`, `10M`, `1.5G`, `250000`.
    fn from_str(text: &str) -> Result<RateLimit, String> {
        let trimmed = text.trim();
        let trimmed = trimmed
            .strip_suffix("/s")
            .or_else(|| trimmed.strip_suffix("/S"))
            .unwrap_or(trimmed);
        let rate = parse_byte_size(trimmed)
            .map_err(|_| format!("`{text}` is not a rate such as 512K or 10M"))?;
        if rate < MIN_RATE {
            return Err(
                "the rate must be at least 1K (1024 bytes) per second: slower, the \
                        opening of a session alone would outlast a server's --header-timeout"
                    .into(),
            );
        }
        NonZeroU64::new(rate)
            .map(RateLimit)
            .ok_or_else(|| "the rate must be at least 1K per second".into())
    }
}

/// The slowest `--limit-rate`: the handshake is throttled too, and at
/// 1 KiB/s even an encrypted opening takes well under a second.
const MIN_RATE: u64 = 1024;

/// The most a bucket holds: 50 ms of sending at the limit, so that a burst
/// after a pause stays short, and at most 4 MiB.
fn burst_of(rate: f64) -> f64 {
    (rate / 20.0).clamp(1.0, 4.0 * 1024.0 * 1024.0)
}

struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    wake: Pin<Box<Sleep>>,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
    }
}

/// A writer that lets at most `limit` bytes per second through; without a
/// limit it passes everything straight on. Reads pass through untouched.
pub struct Throttle<W> {
    inner: W,
    bucket: Option<Bucket>,
}

impl<W> Throttle<W> {
    pub fn new(inner: W, limit: Option<RateLimit>) -> Throttle<W> {
        let bucket = limit.map(|RateLimit(rate)| {
            let rate = rate.get() as f64;
            let now = Instant::now();
            Bucket {
                rate,
                burst: burst_of(rate),
                tokens: burst_of(rate),
                refilled: now,
                wake: Box::pin(tokio::time::sleep_until(now)),
            }
        });
        Throttle { inner, bucket }
    }

    /// The wrapped writer, given back.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// The wrapped writer, and so a way around the limit: only for when
    /// there is none.
    pub fn unlimited(&self) -> Option<&W> {
        self.bucket.is_none().then_some(&self.inner)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Throttle<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(bucket) = this.bucket.as_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        if buf.is_empty() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        // Wait until a worthwhile amount may go, not byte by byte.
        let wanted = (buf.len() as f64).min(bucket.burst);
        loop {
            bucket.refill(Instant::now());
            if bucket.tokens >= wanted {
                break;
            }
            let wait = Duration::from_secs_f64((wanted - bucket.tokens) / bucket.rate);
            bucket
                .wake
                .as_mut()
                .reset(bucket.refilled + wait.max(Duration::from_millis(1)));
            ready!(bucket.wake.as_mut().poll(cx));
        }
        let allowed = (bucket.tokens as usize).min(buf.len());
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..allowed]))?;
        bucket.tokens -= written as f64;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Throttle<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn limit(text: &str) -> Result<u64, String> {
        text.parse::<RateLimit>().map(|RateLimit(rate)| rate.get())
    }

    #[test]
    fn rates_read_like_rsync() {
        assert_eq!(limit("250000"), Ok(250_000));
        assert_eq!(limit("512K"), Ok(512 * 1024));
        assert_eq!(limit("512k"), Ok(512 * 1024));
        assert_eq!(limit("10M"), Ok(10 * 1024 * 1024));
        assert_eq!(limit("10MiB/s"), Ok(10 * 1024 * 1024));
        assert_eq!(limit("1.5G"), Ok(1024 * 1024 * 1024 * 3 / 2));
        assert_eq!(limit("10MB"), Ok(10 * 1024 * 1024));
        assert_eq!(limit("2kb"), Ok(2 * 1024));
        assert_eq!(limit("1K"), Ok(1024));
        for bad in [
            "", "0", "0.1", "0.5", "1", "1023", "fast", "10X", "-5M", "1..5M",
        ] {
            assert!(limit(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_go_no_faster_than_the_limit() {
        let rate = 100_000u64;
        let len = 1_000_000usize;
        let mut throttled = Throttle::new(
            tokio::io::sink(),
            Some(RateLimit(NonZeroU64::new(rate).unwrap())),
        );
        let started = Instant::now();
        throttled.write_all(&vec![7u8; len]).await.unwrap();
        // Time here is tokio's paused clock: exact, not a measurement.
        let elapsed = started.elapsed().as_secs_f64();
        let burst = burst_of(rate as f64);
        let least = (len as f64 - burst) / rate as f64;
        assert!(elapsed >= least, "{len} bytes took {elapsed}s at {rate}/s");
        assert!(
            elapsed <= least + 0.1,
            "{len} bytes took {elapsed}s at {rate}/s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limit_nothing_waits() {
        let mut throttled = Throttle::new(tokio::io::sink(), None);
        let started = Instant::now();
        throttled.write_all(&vec![7u8; 10_000_000]).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
