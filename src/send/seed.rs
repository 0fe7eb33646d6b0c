//! Sending with the seed protocol: one connection per file.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::{SendError, Sent, base_name, connect};
use crate::protocol::seed::{self, Reply};
use crate::throttle::{RateLimit, Throttle};
use crate::transfer::pump;

/// Sends one file with the seed protocol: one connection, the header in one
/// write, `go ahead`, the bytes, then a half-close and a wait for the server
/// to close, so that a server hanging up early is reported as a failure.
pub async fn send_seed_file(
    to: &str,
    path: &Path,
    name: Option<&str>,
    idle: Duration,
    limit: Option<RateLimit>,
) -> Result<Sent, SendError> {
    let started = Instant::now();
    let source_error = |source| SendError::Source {
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(source_error)?;
    let metadata = file.metadata().await.map_err(source_error)?;
    if metadata.is_dir() {
        return Err(SendError::IsDirectory(path.to_owned()));
    }
    let name = match name {
        Some(name) => name.to_owned(),
        None => base_name(path)?,
    };
    let size = metadata.len();
    let header = seed::encode_header(size, &name)?;

    let mut stream = Throttle::new(connect(to).await?, limit);
    stream.write_all(&header).await?;
    await_go_ahead(&mut stream, idle).await?;
    pump(&mut file, &mut stream, size, idle, |_| {}).await?;
    stream.shutdown().await?;
    await_close(&mut stream, idle).await?;
    Ok(Sent {
        name,
        bytes: size,
        elapsed: started.elapsed(),
    })
}

async fn await_go_ahead(
    stream: &mut (impl AsyncRead + Unpin),
    idle: Duration,
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
        match timeout(idle, stream.read(&mut chunk[..want])).await {
            Err(_) => return Err(SendError::Silent(idle)),
            Ok(Ok(0)) if reply.is_empty() => return Err(SendError::NoReply),
            Ok(Ok(0)) => return Err(SendError::NotGoAhead(reply)),
            Ok(Ok(read)) => reply.extend_from_slice(&chunk[..read]),
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
