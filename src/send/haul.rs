//! `haul send` with haul's protocol: connects, opens the session (Hello,
//! Welcome and, with a secret, the encrypted handshake), then runs the
//! engine's sender (`engine::sender`) over it. `haul ls` and `haul get` open
//! their sessions here too.

use std::path::PathBuf;

use tokio::time::timeout;

use super::walk::walk;
use super::{Event, SendError, SendOptions, Summary, connect};
use crate::connection::{Connection, Opening};
pub(crate) use crate::engine::sender::server_error;
use crate::engine::sender::{Batches, Sender, ZSTD_LEVEL};
use crate::protocol::haul::{
    self, CAP_SECRET, CAP_ZSTD, FailCode, FrameHeader, Hello, Kind, SenderId, ServerOpening,
};
use crate::secure::{self, BoxedReader, BoxedWriter, HandshakeError, Secret};
use crate::throttle::Throttle;

/// Sends every source over one haul connection, reporting each entry to
/// `on_event`. An `Err` means the session itself failed; per-file failures
/// are events and counts.
pub async fn send_haul(
    to: &str,
    sources: &[PathBuf],
    name: Option<&str>,
    options: SendOptions,
    mut on_event: impl FnMut(Event<'_>),
) -> Result<Summary, SendError> {
    let mut session = Sender::open(to, &options).await?;
    let mut batches = Batches::new(walk(sources, name));
    if let Err(error) = session.send_batches(&mut batches, &mut on_event).await {
        let error = session.server_reason_for(error).await;
        return Err(if error.is_break() {
            SendError::Broken {
                path: session.in_flight.take(),
                stream: session.in_flight_is_stream,
                source: Box::new(error),
            }
        } else {
            error
        });
    }
    session.goodbye().await?;
    Ok(session.summary)
}

/// Connects and opens a session (Hello, Welcome and, with a secret, the
/// encrypted handshake) for a request other than a push: `haul ls`.
pub(super) async fn open_session(to: &str, options: &SendOptions) -> Result<Connection, SendError> {
    Ok(Sender::open(to, options).await?.conn)
}

/// An opened session for a get: the connection, the server's address, and
/// whether compression was granted.
pub(super) async fn open_get_session(
    to: &str,
    options: &SendOptions,
) -> Result<(Connection, std::net::SocketAddr, bool), SendError> {
    let session = Sender::open(to, options).await?;
    let peer = session
        .peer
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    Ok((session.conn, peer, session.compressor.is_some()))
}

impl Sender {
    /// Connects to `to` and opens the session; what it does next is the
    /// caller's first message.
    async fn open(to: &str, options: &SendOptions) -> Result<Sender, SendError> {
        let stream = connect(to, options.idle).await?;
        let peer = stream.peer_addr().ok();
        let (reader, writer) = stream.into_split();
        let reader: BoxedReader = Box::new(reader);
        let writer: BoxedWriter = Box::new(Throttle::new(writer, options.limit));
        let mut session = Sender {
            to: to.to_owned(),
            reply: options.reply,
            in_flight: None,
            in_flight_is_stream: false,
            conn: Connection::new(reader, 8 * 1024, writer, 64 * 1024, options.idle),
            summary: Summary::default(),
            compressor: None,
            small_file: Vec::new(),
            peer,
        };
        session
            .handshake(options.compress, options.secret.as_ref(), options.sender)
            .await?;
        Ok(session)
    }

    async fn handshake(
        &mut self,
        compress: bool,
        secret: Option<&Secret>,
        sender: SenderId,
    ) -> Result<(), SendError> {
        let mut wanted = 0;
        if compress {
            wanted |= CAP_ZSTD;
        }
        if secret.is_some() {
            wanted |= CAP_SECRET;
        }
        self.conn.write_magic().await?;
        self.conn
            .send(&Hello {
                version: haul::VERSION,
                capabilities: wanted,
                sender,
            })
            .await?;
        let hello = self.conn.last_sent().to_vec();
        self.conn.flush().await?;
        let header = self.read_welcome().await?;
        let granted = match self.conn.read_message_after(header).await? {
            ServerOpening::Welcome {
                version,
                capabilities,
            } if version >= haul::VERSION => capabilities,
            ServerOpening::Welcome { version, .. } => {
                return Err(SendError::Version {
                    to: self.to.clone(),
                    server: version,
                });
            }
            // A server that refuses this client's version is not one it can
            // reach; one that refuses the client itself is an authentication
            // failure (a server with a secret refuses a Hello without one
            // with code 0).
            ServerOpening::Error {
                code: FailCode::Version,
                ..
            } => {
                return Err(SendError::NewerServer {
                    to: self.to.clone(),
                });
            }
            ServerOpening::Error { code, message } => {
                return Err(server_error(code, message, SendError::Auth));
            }
        };
        // A grant is a subset of what was asked: anything more is a server
        // or a path that changed the negotiation, and nothing it says can
        // be trusted to mean what this client thinks.
        let unasked = granted & !wanted;
        if unasked != 0 {
            return Err(SendError::Protocol(format!(
                "the server granted capabilities this client did not ask for (bits 0x{unasked:x}); \
                 the negotiation may have been changed on the way"
            )));
        }
        if granted & CAP_ZSTD != 0 {
            self.compressor = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
        }
        if let Some(secret) = secret {
            if granted & CAP_SECRET == 0 {
                return Err(SendError::Auth(
                    "the server has no secret set, so the session would be neither authenticated nor \
                     encrypted; unset HAUL_TOKEN to send in the clear"
                        .into(),
                ));
            }
            // The Hello as it left, the Welcome as it arrived: the server
            // holds them as it received and sent them.
            let prologue = secure::prologue(&hello, &self.conn.last_frame());
            self.encrypt(secret, &prologue).await?;
        }
        Ok(())
    }

    /// Reads the header of the server's answer to the Hello: a Welcome or an
    /// Error frame. Anything else means the peer is not a haul server, and
    /// is named for what it looks like.
    async fn read_welcome(&mut self) -> Result<FrameHeader, SendError> {
        let not_haul = |answer: &[u8]| SendError::NotHaul {
            to: self.to.clone(),
            answer: answer.to_vec(),
        };
        // A peer that is not haul may answer fewer bytes than a frame
        // header and then wait: what came by the deadline is judged.
        let deadline = tokio::time::Instant::now() + self.reply;
        let header = match self.conn.read_opening(deadline).await? {
            Opening::Header(header) => header,
            Opening::Short {
                bytes,
                timed_out: true,
            } if bytes.is_empty() => {
                return Err(SendError::NoAnswer {
                    to: self.to.clone(),
                    waited: self.reply,
                    seed: false,
                });
            }
            Opening::Short { bytes, .. } if bytes.is_empty() => {
                return Err(SendError::ClosedAtHello {
                    to: self.to.clone(),
                });
            }
            Opening::Short { bytes, .. } => return Err(not_haul(&bytes)),
        };
        let Ok(decoded) = haul::decode_frame_header(header) else {
            return Err(not_haul(&header));
        };
        if !matches!(decoded.kind, Kind::Welcome | Kind::Error) {
            return Err(not_haul(&header));
        }
        Ok(decoded)
    }

    /// Replaces the plain socket halves with the encrypted channel.
    async fn encrypt(&mut self, secret: &Secret, prologue: &[u8]) -> Result<(), SendError> {
        let idle = self.conn.idle();
        let handshake = self.conn.encrypt_client(secret, prologue);
        match timeout(idle, handshake).await {
            Err(_) => Err(SendError::Silent(idle)),
            Ok(Ok(())) => Ok(()),
            // A server that holds another secret just hangs up (or resets,
            // if our bytes were still unread): say what most likely happened.
            Ok(Err(HandshakeError::Io(error)))
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                Err(SendError::Auth(
                    "authentication failed: the server hung up during the handshake; do both sides use \
                     the same secret? (a Hello changed on the way ends it the same way)"
                        .into(),
                ))
            }
            Ok(Err(HandshakeError::WrongSecret)) => Err(SendError::Auth(format!(
                "{}; do both sides use the same secret?",
                HandshakeError::WrongSecret
            ))),
            Ok(Err(error)) => Err(SendError::Auth(error.to_string())),
        }
    }
}
