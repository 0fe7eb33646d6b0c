//! The byte pump: moves exactly N bytes from a reader to a writer.
//!
//! Both sides and both protocols move file data through [`pump`], so buffer
//! sizing, idle timeouts and early-EOF detection live in one place. It knows
//! nothing of names, headers or files on disk.

use std::io;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

/// Size of one pump buffer. Large enough that per-call overhead vanishes
/// next to the copy, small enough that thousands of connections fit in memory.
pub const CHUNK_LEN: usize = 256 * 1024;

/// Why the pump stopped before moving every byte.
#[derive(Debug, Error)]
pub enum PumpError {
    #[error("the connection ended after {moved} of {expected} bytes")]
    EarlyEof { moved: u64, expected: u64 },
    #[error("nothing moved for {}s", .0.as_secs())]
    Idle(Duration),
    #[error("reading failed after {moved} bytes: {source}")]
    Read { moved: u64, source: io::Error },
    #[error("writing failed after {moved} bytes: {source}")]
    Write { moved: u64, source: io::Error },
}

/// Copies exactly `len` bytes from `reader` to `writer`, then flushes it.
/// Fails if the reader ends early or either side makes no progress for `idle`.
/// `on_chunk` sees every chunk after it is written, to hash or count it.
pub async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    len: u64,
    idle: Duration,
    mut on_chunk: impl FnMut(&[u8]),
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buffer = vec![0u8; CHUNK_LEN.min(usize::try_from(len).unwrap_or(CHUNK_LEN))];
    let mut moved: u64 = 0;
    while moved < len {
        let want = usize::try_from(len - moved).map_or(buffer.len(), |left| left.min(buffer.len()));
        let read = match timeout(idle, reader.read(&mut buffer[..want])).await {
            Err(_) => return Err(PumpError::Idle(idle)),
            Ok(Err(source)) => return Err(PumpError::Read { moved, source }),
            Ok(Ok(0)) => {
                return Err(PumpError::EarlyEof {
                    moved,
                    expected: len,
                });
            }
            Ok(Ok(read)) => read,
        };
        match timeout(idle, writer.write_all(&buffer[..read])).await {
            Err(_) => return Err(PumpError::Idle(idle)),
            Ok(Err(source)) => return Err(PumpError::Write { moved, source }),
            Ok(Ok(())) => {}
        }
        moved += read as u64;
        on_chunk(&buffer[..read]);
    }
    match timeout(idle, writer.flush()).await {
        Err(_) => Err(PumpError::Idle(idle)),
        Ok(Err(source)) => Err(PumpError::Write { moved, source }),
        Ok(Ok(())) => Ok(()),
    }
}

/// A transfer rate, printed in binary units.
pub struct Rate {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per_second = self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9);
        write!(f, "{:.1} MiB/s", per_second / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn moves_exactly_len_bytes_and_leaves_the_rest() {
        let source: Vec<u8> = (0..CHUNK_LEN * 2 + 7).map(|i| (i % 251) as u8).collect();
        let len = source.len() as u64 - 3;
        let mut reader = source.as_slice();
        let mut sink = Vec::new();
        let mut seen = Vec::new();
        pump(&mut reader, &mut sink, len, IDLE, |chunk| {
            seen.extend_from_slice(chunk)
        })
        .await
        .unwrap();
        assert_eq!(sink, &source[..source.len() - 3]);
        assert_eq!(reader, &source[source.len() - 3..]);
        assert_eq!(seen, sink);
    }

    #[tokio::test]
    async fn zero_bytes_is_a_complete_transfer() {
        let mut sink = Vec::new();
        pump(&mut &b"unread"[..], &mut sink, 0, IDLE, |_| {})
            .await
            .unwrap();
        assert!(sink.is_empty());
    }

    #[tokio::test]
    async fn a_short_reader_is_an_early_eof() {
        let mut sink = Vec::new();
        let error = pump(&mut &b"abc"[..], &mut sink, 10, IDLE, |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                PumpError::EarlyEof {
                    moved: 3,
                    expected: 10
                }
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_silent_reader_times_out() {
        let (_keep_open, mut silent) = tokio::io::duplex(64);
        let mut sink = Vec::new();
        let idle = Duration::from_millis(20);
        let error = pump(&mut silent, &mut sink, 1, idle, |_| {})
            .await
            .unwrap_err();
        assert!(matches!(error, PumpError::Idle(_)), "{error}");
    }
}
