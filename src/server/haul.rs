//! A haul-protocol connection on the server: the opening (Hello, Welcome,
//! the encrypted handshake and the rights it gives), then what the
//! client's first message asks for: a push, which the engine's receiver
//! (`engine::receiver`) takes; a listing (`listing`); or a get (`get`),
//! which the engine's sender answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::get;
use super::listing::{self, ListError};
use super::log_output;
use super::rights::Rights;
use super::{ServerConfig, blocking};
use crate::connection::{Connection, ConnectionError};
use crate::engine::receiver::{CreatedDirs, Pushed, Receiver, SessionError, Zstd};
use crate::engine::space::{SpaceLedger, sender_of};
use crate::protocol::haul::{
    self, CAP_SECRET, CAP_ZSTD, Hello, Incoming, Kind, MAX_DATA_LEN, ReceiverMessage, Request,
    SenderId, ServerOpening,
};
use crate::secure::{self, BoxedReader, BoxedWriter, Secret};
use crate::storage::{Holder, RelPath, Store};
use crate::text::printable;

pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    store: Store,
    space: Arc<SpaceLedger>,
    config: &ServerConfig,
    deadline: tokio::time::Instant,
) {
    let (reader, writer) = stream.into_split();
    // Room for several small files' frames per read, so that a folder of
    // small files costs a read per several files, not several per file (the
    // default 8 KiB would take three for one of 16 KiB); more would cost
    // every connection memory for a share of calls that is already small.
    // Large payloads bypass it.
    let reader: BoxedReader = Box::new(reader);
    let writer: BoxedWriter = Box::new(writer);
    let mut conn = Connection::new(reader, 128 * 1024, writer, 8 * 1024, config.header_timeout);
    conn.bound_writes(config.idle_timeout);
    let mut session = Receiver {
        conn,
        peer,
        store,
        space,
        owner: sender_of(peer),
        left_partial: false,
        policy: config.policy(),
        created: CreatedDirs::default(),
        zstd: None,
        sender: SenderId::default(),
        holder: Holder::new(),
        send_refused: Some(Rights::NONE.send_refusal()),
        accepts: None,
        events: None,
        // The log lines a batch gathered go out once its receipts are due.
        on_settled: Some(log_output::write_gathered),
    };
    match session.run(deadline, config).await {
        Ok(()) => debug!(%peer, "haul session ended"),
        Err(error @ SessionError::Auth(_)) => {
            // The client expects a handshake message now, not a frame: say
            // nothing, so that nothing is given away to a wrong secret.
            warn!(%peer, %error, "haul session refused");
        }
        Err(error) => {
            warn!(%peer, %error, "haul session failed");
            let _ = session
                .conn
                .send(&ReceiverMessage::Error {
                    code: error.code(),
                    message: &error.to_string(),
                })
                .await;
            let _ = session.conn.flush().await;
            session.linger().await;
        }
    }
    session.space.session_ended();
    if session.left_partial {
        let (space, sender) = (Arc::clone(&session.space), session.owner);
        let _ = blocking(move || {
            space.cap_partials(Some(sender));
            Ok(())
        })
        .await;
    }
}

/// How long a failed session keeps reading after its Error frame.
const LINGER: Duration = Duration::from_secs(2);

impl Receiver<'_> {
    /// Half-closes and reads (and drops) what the client still sends, for a
    /// short while. Closing with unread data would reset the connection, and
    /// a client still sending could then lose the Error frame that says why.
    async fn linger(&mut self) {
        let _ = self.conn.shutdown().await;
        let _ = self.conn.drain(LINGER).await;
    }

    /// Serves the session; the Hello and the handshake (encryption
    /// included) must be done by `deadline`.
    async fn run(
        &mut self,
        deadline: tokio::time::Instant,
        config: &ServerConfig,
    ) -> Result<(), SessionError> {
        let rights = match tokio::time::timeout_at(deadline, self.handshake(config)).await {
            Err(_) => return Err(SessionError::HandshakeTimeout(config.header_timeout)),
            Ok(result) => result?,
        };
        // The receiver checks the right to send at each offer.
        self.send_refused = (!rights.send).then(|| rights.send_refusal());
        self.conn.set_idle(config.idle_timeout);
        // The first message says what the session does; only it may be a
        // List or a Get, and such a session is that request alone.
        let first = match self.conn.read_message().await? {
            Request::List { path } => {
                let path = path.to_owned();
                return self.list(&path, rights, config).await;
            }
            Request::Get(paths) => {
                // Refused before anything is read from storage.
                if !rights.get {
                    return Err(SessionError::NotAllowed(
                        rights.get_refusal(config.access.has_secret()),
                    ));
                }
                let resolved = get::resolve(&self.store, paths)
                    .await
                    .map_err(SessionError::Refused)?;
                return self.get(resolved).await;
            }
            Request::Push(message) => Pushed::from(message),
        };
        self.receive(Some(first)).await
    }

    /// Serves a list session: refused, before anything is read from
    /// storage, unless its rights include get.
    async fn list(
        &mut self,
        path: &str,
        rights: Rights,
        config: &ServerConfig,
    ) -> Result<(), SessionError> {
        if !rights.get {
            return Err(SessionError::NotAllowed(
                rights.get_refusal(config.access.has_secret()),
            ));
        }
        match listing::serve(&mut self.conn, &self.store, path).await {
            Ok(entries) => {
                info!(peer = %self.peer, path = %printable(path.as_bytes()), entries, "listed");
                Ok(())
            }
            Err(ListError::Refused(refusal)) => Err(SessionError::Refused(refusal)),
            Err(ListError::Connection(error)) => Err(error.into()),
        }
    }

    /// Serves a get session: sends what was asked for, as a sender.
    async fn get(&mut self, resolved: Vec<(RelPath, get::Resolved)>) -> Result<(), SessionError> {
        let idle = self.conn.idle();
        let detached = Connection::detached(idle);
        let conn = std::mem::replace(&mut self.conn, detached);
        let (conn, outcome) =
            get::serve(conn, &self.store, resolved, self.peer, self.zstd.is_some()).await;
        self.conn = conn;
        match outcome {
            Ok(summary) => {
                info!(
                    peer = %self.peer,
                    sent = summary.stored,
                    already_there = summary.already_there,
                    failed = summary.failed,
                    bytes = summary.bytes_sent,
                    "get served"
                );
                Ok(())
            }
            // The sender's words name its peer "the server"; here the
            // peer is the client.
            Err(crate::send::SendError::Server(reason)) => Err(SessionError::Get(format!(
                "the client ended the get: {reason}"
            ))),
            Err(error) => Err(SessionError::Get(error.to_string())),
        }
    }

    /// Reads the Hello, answers it and, with a secret, runs the encrypted
    /// handshake; returns the rights the session has.
    async fn handshake(&mut self, config: &ServerConfig) -> Result<Rights, SessionError> {
        let header = self.conn.read_header().await?;
        if matches!(header.kind, Kind::Data | Kind::DataZstd) {
            return Err(ConnectionError::DataOutsideFile.into());
        }
        let payload = self.conn.read_payload(header).await?;
        // The version leads every Hello, whatever follows it in that
        // version: an older client is told why, not that its Hello is short.
        if let (Kind::Hello, Some(version)) = (header.kind, payload.first_chunk::<2>()) {
            let version = u16::from_be_bytes(*version);
            if version < haul::VERSION {
                return Err(SessionError::Version { client: version });
            }
        }
        if header.kind != Kind::Hello {
            return Err(SessionError::Violation(
                "the first frame must be Hello".into(),
            ));
        }
        let Hello {
            version,
            capabilities,
            sender,
        } = Hello::decode(header.kind, payload)?;
        self.sender = sender;
        debug!(peer = %self.peer, version, capabilities, "haul handshake");
        // Without a secret on the server, the flags give the rights; with
        // one, only the secret the handshake completes with does.
        let open_rights = config.access.without_secret();
        if open_rights.is_none() && capabilities & CAP_SECRET == 0 {
            return Err(SessionError::SecretRequired);
        }
        let secret_granted = if open_rights.is_none() { CAP_SECRET } else { 0 };
        let granted = capabilities & CAP_ZSTD | secret_granted;
        if granted & CAP_ZSTD != 0 {
            self.zstd = Some(Zstd {
                decompressor: zstd::bulk::Decompressor::new()?,
                plain: Vec::with_capacity(MAX_DATA_LEN as usize),
            });
        }
        self.conn
            .send(&ServerOpening::Welcome {
                version: haul::VERSION,
                capabilities: granted,
            })
            .await?;
        self.conn.flush().await?;
        let rights = match open_rights {
            Some(rights) => rights,
            None => {
                // The Hello as it arrived, the Welcome as it left: the
                // client holds them as it sent and received them.
                let prologue = secure::prologue(&self.conn.last_frame(), self.conn.last_sent());
                self.encrypt(&config.access.keys(), &prologue, config.header_timeout)
                    .await?
            }
        };
        Ok(rights)
    }

    /// Replaces the plain socket halves with the encrypted channel, with
    /// whichever of `keys` the client holds; returns the rights it gives.
    async fn encrypt(
        &mut self,
        keys: &[(Secret, Rights)],
        prologue: &[u8],
        wait: Duration,
    ) -> Result<Rights, SessionError> {
        let handshake = self.conn.encrypt_server(keys, prologue);
        let rights = match timeout(wait, handshake).await {
            Err(_) => return Err(SessionError::Idle(wait)),
            Ok(result) => result.map_err(SessionError::Auth)?,
        };
        debug!(peer = %self.peer, send = rights.send, get = rights.get, "encrypted session established");
        Ok(rights)
    }
}
