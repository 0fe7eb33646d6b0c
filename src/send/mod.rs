//! The sending side: walks the sources and drives a connection per protocol.
//!
//! It never prints; it returns or reports what happened to each file so that
//! the CLI can show it.

mod haul;
mod seed;
mod walk;

pub use haul::{Event, HaulOptions, Summary, send_haul};
pub use seed::send_seed_file;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::protocol::haul::DecodeError;
use crate::protocol::seed::EncodeError;
use crate::transfer::PumpError;

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
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
    #[error("the server sent a bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("the server ended the session: {0}")]
    Server(String),
    #[error("{0}")]
    Auth(String),
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
}

impl SendError {
    /// True when the server could not be reached, or would not let this
    /// client in.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect { .. } | SendError::Auth(_))
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

/// The name a file is sent under by default: its own, which must be UTF-8.
pub(crate) fn base_name(path: &Path) -> Result<String, SendError> {
    let file_name = path.file_name().ok_or_else(|| SendError::Source {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "it names no file"),
    })?;
    file_name
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| SendError::NameNotUtf8(path.to_owned()))
}

/// Connects to the server, naming the address and a likely fix on failure.
pub(crate) async fn connect(to: &str) -> Result<tokio::net::TcpStream, SendError> {
    let stream = tokio::net::TcpStream::connect(to)
        .await
        .map_err(|source| SendError::Connect {
            to: to.to_owned(),
            source,
        })?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
