//! Sending with the seed protocol: one connection per file.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::{Event, SendError, SendOptions, Summary, base_name, connect};
use crate::protocol::seed::{self, Reply};
use crate::throttle::Throttle;
use crate::transfer::pump;
use crate::zero_copy;

/// Sends each source with the seed protocol, one connection per file,
/// reporting each file to `on_event`. An `Err` means the server could not be
/// reached; per-file failures are events and counts.
pub async fn send_seed(
    to: &str,
    sources: &[PathBuf],
    name: Option<&str>,
    options: SendOptions,
    mut on_event: impl FnMut(Event<'_>),
) -> Result<Summary, SendError> {
    let mut summary = Summary::default();
    for path in sources {
        let name = match name {
            Some(name) => name.to_owned(),
            None => match base_name(path) {
                Ok(name) => name,
                Err(error) => {
                    summary.failed += 1;
                    on_event(Event::Failed {
                        path: &path.display().to_string(),
                        reason: &error.to_string(),
                    });
                    continue;
                }
            },
        };
        match send_file(to, path, &name, &options, &mut on_event).await {
            Ok(bytes) => {
                summary.stored += 1;
                summary.bytes_sent += bytes;
                summary.wire_bytes += bytes;
                on_event(Event::Stored {
                    path: &name,
                    stored_as: None,
                    bytes,
                    hash: None,
                });
                on_event(Event::BatchSettled);
            }
            Err(error) if error.is_connect() => return Err(error),
            Err(error) => {
                summary.failed += 1;
                on_event(Event::Failed {
                    path: &name,
                    reason: &error.to_string(),
                });
            }
        }
    }
    Ok(summary)
}

/// Sends one file: one connection, the header in one write, `go ahead`, the
/// bytes, then a half-close and a wait for the server to close, so that a
/// server hanging up early is reported as a failure. Returns the bytes sent.
async fn send_file(
    to: &str,
    path: &Path,
    name: &str,
    options: &SendOptions,
    on_event: &mut impl FnMut(Event<'_>),
) -> Result<u64, SendError> {
    let source_error = |source| SendError::Source {
        path: path.to_owned(),
        source,
    };
    // The header carries the size before the name and the bytes: a stream
    // has none until its end, and is refused rather than held in memory or
    // on disk until then. A FIFO is asked first, as opening it waits for a
    // writer.
    let is_stream = path.as_os_str() == "-"
        || std::fs::metadata(path).is_ok_and(|metadata| metadata.file_type().is_fifo());
    if is_stream {
        return Err(SendError::StreamNeedsHaul(path.to_owned()));
    }
    let mut file = tokio::fs::File::open(path).await.map_err(source_error)?;
    let metadata = file.metadata().await.map_err(source_error)?;
    if metadata.is_dir() {
        return Err(SendError::IsDirectory(path.to_owned()));
    }
    let size = metadata.len();
    let header = seed::encode_header(size, name)?;

    let idle = options.idle;
    let mut stream = Throttle::new(connect(to, options.idle).await?, options.limit);
    stream.write_all(&header).await?;
    match await_go_ahead(&mut stream, options.reply).await {
        Err(SendError::Silent(waited)) => {
            return Err(SendError::NoAnswer {
                to: to.to_owned(),
                waited,
                seed: true,
            });
        }
        result => result?,
    }
    on_event(Event::Started {
        path: name,
        size: Some(size),
        offset: 0,
    });
    match stream.unlimited() {
        // Nothing to pace: the kernel moves the bytes from the page cache.
        Some(socket) => {
            let file = file.into_std().await;
            zero_copy::send_file(socket, &file, 0, size, idle, |bytes| {
                on_event(Event::Progress { bytes, wire: bytes });
            })
            .await?;
        }
        None => {
            pump(&mut file, &mut stream, size, idle, |chunk| {
                on_event(Event::Progress {
                    bytes: chunk.len() as u64,
                    wire: chunk.len() as u64,
                });
            })
            .await?;
        }
    }
    stream.shutdown().await?;
    await_close(&mut stream, idle).await?;
    Ok(size)
}

async fn await_go_ahead(
    stream: &mut (impl AsyncRead + Unpin),
    wait: Duration,
) -> Result<(), SendError> {
    let mut reply = Vec::with_capacity(seed::GO_AHEAD.len());
    let mut chunk = [0u8; 64];
    loop {
        match seed::judge_reply(&reply) {
            Reply::GoAhead => return Ok(()),
            Reply::Other => {
                return Err(SendError::NotGoAhead(rest_of_refusal(stream, reply).await));
            }
            Reply::NeedMore => {}
        }
        // Never read past `go ahead`: anything after it is not ours to eat.
        let want = seed::GO_AHEAD.len() - reply.len();
        match timeout(wait, stream.read(&mut chunk[..want])).await {
            Err(_) => return Err(SendError::Silent(wait)),
            Ok(Ok(0)) if reply.is_empty() => return Err(SendError::NoReply),
            Ok(Ok(0)) => return Err(SendError::NotGoAhead(reply)),
            Ok(Ok(read)) => reply.extend_from_slice(&chunk[..read]),
            // A server that refuses often closes with data unread: a reset.
            Ok(Err(error))
                if reply.is_empty() && error.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                return Err(SendError::NoReply);
            }
            Ok(Err(error)) => return Err(SendError::Io(error)),
        }
    }
}

/// Reads a little more of a reply that is not `go ahead`, so that the user
/// sees the server's whole message rather than its first eight bytes.
async fn rest_of_refusal(stream: &mut (impl AsyncRead + Unpin), mut reply: Vec<u8>) -> Vec<u8> {
    const QUOTE_LIMIT: usize = 200;
    const QUOTE_WAIT: Duration = Duration::from_millis(200);
    let mut chunk = [0u8; QUOTE_LIMIT];
    while reply.len() < QUOTE_LIMIT {
        match timeout(
            QUOTE_WAIT,
            stream.read(&mut chunk[..QUOTE_LIMIT - reply.len()]),
        )
        .await
        {
            Ok(Ok(read)) if read > 0 => reply.extend_from_slice(&chunk[..read]),
            _ => break,
        }
    }
    reply
}

/// Waits for the server to close its side. A seed server says nothing after
/// `go ahead`; an orderly close after the last byte is the only sign that it
/// read everything, and a reset means it did not.
async fn await_close(
    stream: &mut (impl AsyncRead + Unpin),
    idle: Duration,
) -> Result<(), SendError> {
    let mut scratch = [0u8; 64];
    loop {
        match timeout(idle, stream.read(&mut scratch)).await {
            Err(_) => return Err(SendError::Silent(idle)),
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(SendError::NotConfirmed(error)),
        }
    }
}
