//! The client: walks the sources and drives a connection per protocol to
//! send them, or asks a haul server for a listing (`list`).
//!
//! It never prints; it returns or reports what happened to each file so that
//! the CLI can show it.

pub mod get;
pub(crate) mod haul;
pub mod identity;
mod list;
mod seed;
pub(crate) mod walk;

pub use haul::send_haul;
pub use list::{Entry as ListedEntry, ListSummary, list_haul};
pub use seed::send_seed;
pub use walk::{STDIN_NEEDS_A_NAME, Totals, measure};

/// The port `haul send --to HOST` uses when HOST names none: the one
/// `haul serve` listens on by default.
pub const DEFAULT_PORT: u16 = 12000;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::protocol::haul::{DecodeError, SenderId};
use crate::protocol::seed::EncodeError;
use crate::secure::Secret;
use crate::throttle::RateLimit;
use crate::transfer::PumpError;

pub use crate::engine::{Event, Summary};

/// How to drive a send.
#[derive(Clone)]
pub struct SendOptions {
    /// How long to wait for any sign of progress from the server.
    pub idle: Duration,
    /// How long to wait for the server's first answer: haul's Welcome, or
    /// the seed protocol's `go ahead`. A peer that is not a server of that
    /// protocol often says nothing at all; this is when the send gives up.
    pub reply: Duration,
    /// Ask the server for zstd-compressed data frames (haul's protocol only).
    pub compress: bool,
    /// Cap on the bytes per second written to the socket.
    pub limit: Option<RateLimit>,
    /// Authenticate with this secret and encrypt the session (haul's
    /// protocol only).
    pub secret: Option<Secret>,
    /// Who is sending, for resuming (haul's protocol only): see
    /// [`identity`].
    pub sender: SenderId,
}

/// Why one file was not sent completely.
#[derive(Debug, Error)]
pub enum SendError {
    #[error("cannot read {}: {}", path.display(), unreadable(source))]
    Source { path: PathBuf, source: io::Error },
    #[error("{} is a directory; the seed protocol sends single files", .0.display())]
    IsDirectory(PathBuf),
    #[error(
        "{} is a stream, whose size is known only at its end, and the classroom protocol's header \
         needs the size first; send it with haul's protocol (leave out --protocol seed), or save \
         it to a file first",
        shown_source(.0)
    )]
    StreamNeedsHaul(PathBuf),
    #[error("the file name of {} is not UTF-8; give one with --name", .0.display())]
    NameNotUtf8(PathBuf),
    #[error("{0}")]
    Name(#[from] EncodeError),
    #[error(
        "could not connect to {to}: {}; is `haul serve` running there?",
        plain(source)
    )]
    Connect { to: String, source: io::Error },
    #[error("{to} does not speak haul; it answered {}", like(.answer))]
    NotHaul { to: String, answer: Vec<u8> },
    /// The peer hung up on the Hello without a byte: a haul server at its
    /// connection limit for this address, or a peer of another protocol
    /// that gave up on haul's opening.
    #[error(
        "{to} closed the connection without answering haul's Hello; it may be at its connection \
         limit, or not a haul server (for a classroom-protocol server, use --protocol seed)"
    )]
    ClosedAtHello { to: String },
    #[error(
        "{to} speaks version {server} of haul's protocol and this client version {}; \
         send with a haul of the server's version, or update the server",
        crate::protocol::haul::VERSION
    )]
    Version { to: String, server: u16 },
    /// The server refused this client's version: it speaks a newer one.
    #[error(
        "{to} speaks a newer version of haul's protocol than this client ({}); update this client",
        crate::protocol::haul::VERSION
    )]
    NewerServer { to: String },
    #[error(
        "{to} did not answer {} within {}; is it a server of the {}? \
         (a busy one may answer later: --reply-timeout waits longer)",
        if *.seed { "\"go ahead\"" } else { "haul's Hello" },
        crate::config::Span(*.waited),
        if *.seed { "classroom protocol" } else { "haul protocol" }
    )]
    NoAnswer {
        to: String,
        waited: Duration,
        /// Whether the answer awaited was the seed protocol's `go ahead`.
        seed: bool,
    },
    #[error("the server answered {} instead of \"go ahead\"", quote(.0))]
    NotGoAhead(Vec<u8>),
    #[error(
        "the server closed the connection without answering \"go ahead\"; it may have refused the name (its log says why)"
    )]
    NoReply,
    #[error(
        "the server sent nothing for {}; it may be busy (at its connection limit) or stuck",
        crate::config::Span(*.0)
    )]
    Silent(Duration),
    #[error("{}", describe_pump(.0))]
    Pump(#[from] PumpError),
    #[error(
        "the server dropped the connection after receiving the file ({0}); it may not have stored it"
    )]
    NotConfirmed(io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("{}: {source}; {}", match .path {
        Some(path) => format!("{path} was not finished"),
        None => "the send was cut short".to_owned(),
    }, if *.stream {
        "a stream is not kept to resume: run the same command again to send it from its start"
    } else {
        "run the same command again to resume"
    })]
    Broken {
        /// The file whose bytes were going out, if any.
        path: Option<String>,
        /// Whether that file is a stream (standard input, a FIFO).
        stream: bool,
        source: Box<SendError>,
    },
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
    #[error("the server sent a bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("the server ended the session: {0}")]
    Server(String),
    /// The server has nothing it may show under the path asked for, or
    /// refused the path.
    #[error("{0}")]
    NotThere(String),
    #[error("{0}")]
    Auth(String),
    /// The server refused what was asked for this client's secret (or for
    /// any client, on a server without one); nothing was stored.
    /// A get that ended early, in words.
    #[error("{0}")]
    Get(String),
    #[error("not allowed: {0}")]
    NotAllowed(String),
    #[error("connection failed: {}", plain(.0))]
    Io(#[from] io::Error),
    /// `haul get --into -` could not hand the bytes on: the reader went
    /// away, or what stdout leads to is full.
    #[error("cannot write to standard output: {}", plain(.0))]
    Stdout(io::Error),
}

impl From<crate::connection::ConnectionError> for SendError {
    fn from(error: crate::connection::ConnectionError) -> SendError {
        use crate::connection::ConnectionError;
        match error {
            ConnectionError::Closed | ConnectionError::Cut(_) => SendError::Closed,
            ConnectionError::Idle(wait) => SendError::Silent(wait),
            ConnectionError::Frame(error) => SendError::Decode(error),
            ConnectionError::Io(error) => SendError::Io(error),
            stalled @ ConnectionError::Stalled(_) => {
                SendError::Io(io::Error::new(io::ErrorKind::TimedOut, stalled.to_string()))
            }
            ConnectionError::DataOutsideFile => {
                SendError::Protocol("file data where a message was due".into())
            }
        }
    }
}

impl SendError {
    /// True when no server of the protocol could be reached: nobody
    /// listens, something else does, or a server of another version.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            SendError::Connect { .. }
                | SendError::NotHaul { .. }
                | SendError::ClosedAtHello { .. }
                | SendError::Version { .. }
                | SendError::NewerServer { .. }
                | SendError::NoAnswer { .. }
        )
    }

    /// True when the server would not let this client in, or could not
    /// prove it holds this client's secret.
    pub fn is_auth(&self) -> bool {
        matches!(self, SendError::Auth(_))
    }

    /// True when the server let this client in, but not to do what it
    /// asked.
    pub fn is_not_allowed(&self) -> bool {
        matches!(self, SendError::NotAllowed(_))
    }

    /// True when the connection broke or went silent after the session
    /// began: running the send again resumes it.
    pub(crate) fn is_break(&self) -> bool {
        matches!(
            self,
            SendError::Closed
                | SendError::Silent(_)
                | SendError::Io(_)
                | SendError::Pump(PumpError::Write { .. } | PumpError::Idle(_))
        )
    }
}

/// What an answer that is not the protocol's looks like, in words.
fn like(answer: &[u8]) -> &'static str {
    if answer.starts_with(b"HTTP/") {
        "like an HTTP server"
    } else if answer.starts_with(b"SSH-") {
        "like an SSH server"
    } else if answer.starts_with(b"go ah") {
        "\"go ahead\", as a classroom-protocol server does; use --protocol seed"
    } else {
        "something else"
    }
}

/// A source as the user gave it, for a message.
fn shown_source(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "standard input".to_owned()
    } else {
        path.display().to_string()
    }
}

/// Adds [`DEFAULT_PORT`] to an address that names no port: `HOST`,
/// `[IPv6]` or a bare IPv6 address. Anything else is left as it is.
pub fn with_default_port(to: &str) -> String {
    if to.parse::<std::net::SocketAddr>().is_ok() {
        return to.to_owned();
    }
    if to.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{to}]:{DEFAULT_PORT}");
    }
    if (to.starts_with('[') && to.ends_with(']')) || !to.contains(':') {
        return format!("{to}:{DEFAULT_PORT}");
    }
    to.to_owned()
}

/// When a source that does not exist reads as `HOST:PORT`, that address:
/// the `--to` the user probably meant (the scp habit: `haul send a.txt
/// host:12000`).
pub fn address_hint(path: &Path) -> Option<&str> {
    let text = path.to_str()?;
    let (host, port) = text.rsplit_once(':')?;
    let looks_like_host = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    (looks_like_host && port.parse::<u16>().is_ok() && std::fs::symlink_metadata(path).is_err())
        .then_some(text)
}

/// An I/O error as words, without Rust's "(os error N)".
pub(crate) fn plain(error: &io::Error) -> String {
    let text = error.to_string();
    let text = text.split(" (os error ").next().unwrap_or_default();
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

/// Why a local file cannot be read, with a hint where there is one.
pub(crate) fn unreadable(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => format!("{} (check the path)", plain(error)),
        io::ErrorKind::PermissionDenied => format!("{} (check its permissions)", plain(error)),
        _ => plain(error),
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
/// A path that ends in `.` or `..` is named after the folder it resolves
/// to, so that `haul send .` is `haul send "$(pwd)"`.
pub(crate) fn base_name(path: &Path) -> Result<String, SendError> {
    let resolved;
    let named = match path.file_name() {
        Some(_) => path,
        None => {
            resolved = std::fs::canonicalize(path).map_err(|source| SendError::Source {
                path: path.to_owned(),
                source,
            })?;
            &resolved
        }
    };
    let file_name = named.file_name().ok_or_else(|| SendError::Source {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "it names no file"),
    })?;
    file_name
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| SendError::NameNotUtf8(path.to_owned()))
}

/// Connects to the server, naming the address and a likely fix on failure.
/// A server that vanishes without a word is noticed within about `idle`.
pub(crate) async fn connect(to: &str, idle: Duration) -> Result<tokio::net::TcpStream, SendError> {
    let stream = tokio::net::TcpStream::connect(to)
        .await
        .map_err(|source| SendError::Connect {
            to: to.to_owned(),
            source,
        })?;
    stream.set_nodelay(true)?;
    // A socket without them still works; it only notices a dead server
    // later, by the idle timeout.
    let _ = crate::keepalive::notice_dead_peer(&stream, idle);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_port_gets_12000_and_one_with_a_port_is_kept() {
        for (given, meant) in [
            ("127.0.0.1", "127.0.0.1:12000"),
            ("localhost", "localhost:12000"),
            ("[::1]", "[::1]:12000"),
            ("::1", "[::1]:12000"),
            ("127.0.0.1:9", "127.0.0.1:9"),
            ("[::1]:9", "[::1]:9"),
            ("files.example:9", "files.example:9"),
        ] {
            assert_eq!(with_default_port(given), meant, "{given}");
        }
    }

    #[test]
    fn only_a_source_that_reads_as_host_and_port_gets_the_hint() {
        assert_eq!(
            address_hint(Path::new("127.0.0.1:12000")),
            Some("127.0.0.1:12000")
        );
        assert_eq!(
            address_hint(Path::new("host-1.lan:80")),
            Some("host-1.lan:80")
        );
        assert_eq!(address_hint(Path::new("missing.txt")), None);
        assert_eq!(address_hint(Path::new("dir/a:1")), None);
        assert_eq!(address_hint(Path::new("host:99999")), None);
    }
}
