//! The sending side: opens the sources and drives a connection per protocol.
//!
//! It never prints; it returns what happened to each file so that the CLI can
//! report it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::protocol::seed::{self, EncodeError, Reply};
use crate::transfer::{PumpError, pump};

/// How a file reached the server.
#[derive(Debug)]
pub struct Sent {
    /// The name the server was asked to store the file under.
    pub name: String,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Why one file was not sent completely.
#[derive(Debug, Error)]
pub enum SendError {
    #[error("cannot read {}: {source}", path.display())]
    Source { path: PathBuf, source: io::Error },
    #[error("{} is a directory; the seed protocol sends single files", .0.display())]
    IsDirectory(PathBuf),
    #[error("the file name of {} is not UTF-8; give one with --name", .0.display())]
    NameNotUtf8(PathBuf),
    #[error("{0}")]
    Name(#[from] EncodeError),
    #[error("could not connect to {to}: {source}; is `haul serve` running there?")]
    Connect { to: String, source: io::Error },
    #[error("the server answered {} instead of \"go ahead\"", quote(.0))]
    NotGoAhead(Vec<u8>),
    #[error("the server closed the connection without answering \"go ahead\"")]
    NoReply,
    #[error("the server sent nothing for {}s", .0.as_secs())]
    Silent(Duration),
    #[error("{}", describe_pump(.0))]
    Pump(#[from] PumpError),
    #[error(
        "the server dropped the connection after receiving the file ({0}); it may not have stored it"
    )]
    NotConfirmed(io::Error),
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
}

impl SendError {
    /// True when the server could not be reached at all.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect { .. })
    }
}

fn quote(bytes: &[u8]) -> String {
    format!("\"{}\"", String::from_utf8_lossy(bytes).escape_debug())
}

fn describe_pump(error: &PumpError) -> String {
    match error {
        PumpError::Write { moved, source }
            if matches!(
                source.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
            ) =>
        {
            format!(
                "the server hung up after {moved} bytes had been sent; the file was not delivered"
            )
        }
        PumpError::EarlyEof { moved, expected } => {
            format!(
                "the file shrank while it was being sent ({moved} of {expected} bytes could be read)"
            )
        }
        other => other.to_string(),
    }
}

/// Sends one file with the seed protocol: one connection, the header in one
/// write, `go ahead`, the bytes, then a half-close and a wait for the server
/// to close, so that a server hanging up early is reported as a failure.
pub async fn send_seed_file(
    to: &str,
    path: &Path,
    name: Option<&str>,
    idle: Duration,
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

    let mut stream = TcpStream::connect(to)
        .await
        .map_err(|source| SendError::Connect {
            to: to.to_owned(),
            source,
        })?;
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

fn base_name(path: &Path) -> Result<String, SendError> {
    let file_name = path.file_name().ok_or_else(|| SendError::Source {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "it names no file"),
    })?;
    file_name
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| SendError::NameNotUtf8(path.to_owned()))
}

async fn await_go_ahead(stream: &mut TcpStream, idle: Duration) -> Result<(), SendError> {
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
async fn rest_of_refusal(stream: &mut TcpStream, mut reply: Vec<u8>) -> Vec<u8> {
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
async fn await_close(stream: &mut TcpStream, idle: Duration) -> Result<(), SendError> {
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
