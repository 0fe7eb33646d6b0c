//! The encrypted channel: a Noise handshake keyed by the shared secret, then
//! every byte in both directions sealed with AES-256-GCM.
//!
//! The pattern is `NNpsk0`: both sides contribute fresh ephemeral keys (so
//! every session has its own keys and a recorded session cannot be
//! replayed), and the pre-shared key derived from the secret is mixed in
//! from the first message (so only holders of the secret get through, and
//! the secret itself never crosses the wire). On the wire every Noise
//! message is a u16 big-endian length followed by that many bytes.
//!
//! The clear negotiation before it (the magic, Hello and Welcome) is the
//! handshake's prologue ([`prologue`]): each side mixes in the bytes it sent
//! and received, so a change to any of them on the way fails the handshake.
//!
//! [`SealedWriter`] and [`OpenedReader`] wrap a socket's halves so that the
//! protocol code above reads and writes plain frames and never sees this.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use snow::{Builder, HandshakeState, StatelessTransportState};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, ReadBuf,
};

use crate::protocol::haul::MAGIC;

/// The Noise protocol name, fixed since protocol version 1.
const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Largest Noise message.
const MAX_MESSAGE: usize = 65535;
/// Bytes of authentication tag per message.
const TAG_LEN: usize = 16;
/// Largest plaintext per message.
const MAX_PLAIN: usize = MAX_MESSAGE - TAG_LEN;
/// Context for deriving the Noise key from the secret, so that the same
/// secret used elsewhere never yields the same key.
const KEY_CONTEXT: &str = "haul 2026-11 noise psk v1";

/// The shared secret, as given by the operator.
#[derive(Clone)]
pub struct Secret {
    key: [u8; 32],
}

/// Fewest characters a secret may have. `haul token` makes 64 hex digits
/// (256 bits); a short, guessable secret could be tried offline against a
/// recorded handshake, so it is refused outright.
pub const MIN_SECRET_LEN: usize = 16;

/// The environment variable that holds the secret when no token file is
/// given. Unset means no secret; set but blank is an error, so that a
/// variable emptied by mistake never starts a server, or a send, without
/// the protection its user asked for.
pub const TOKEN_VARIABLE: &str = "HAUL_TOKEN";

/// Permission bits of a token file that let other users read or replace
/// the secret, which draw a warning (as ssh warns of a private key that
/// others can read).
const LOOSE_BITS: u32 = 0o066;

impl Secret {
    /// Takes a secret from text, ignoring surrounding white space.
    pub fn new(text: &str) -> Result<Secret, SecretError> {
        let text = text.trim();
        if text.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort(text.len()));
        }
        Ok(Secret {
            key: blake3::derive_key(KEY_CONTEXT, text.as_bytes()),
        })
    }

    /// Whether two secrets are the same (after trimming). Not in constant
    /// time: for checks of the operator's own secrets at start, never of
    /// anything a peer sent.
    pub fn same_as(&self, other: &Secret) -> bool {
        self.key == other.key
    }
}

/// Why no secret could be had from where the user said it is.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "the secret is {0} characters long; use at least {MIN_SECRET_LEN} (`haul token` makes a strong one)"
    )]
    TooShort(usize),
    #[error("cannot read the secret from {}: {source}", .path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error(
        "the token file {} holds no secret (it is empty or blank); put one in it (`haul token` makes one) or leave out the option that names it",
        .0.display()
    )]
    EmptyFile(PathBuf),
    #[error(
        "{TOKEN_VARIABLE} is set but blank; set it to a secret (`haul token` makes one), or unset it to go without"
    )]
    BlankVariable,
    #[error("{TOKEN_VARIABLE} is not valid UTF-8")]
    VariableNotUtf8,
}

/// Where a secret was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOrigin {
    TokenFile(PathBuf),
    Variable,
}

impl fmt::Display for SecretOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretOrigin::TokenFile(path) => write!(f, "--token-file {}", path.display()),
            SecretOrigin::Variable => f.write_str(TOKEN_VARIABLE),
        }
    }
}

/// A token file that users other than its owner can read or write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LooseTokenFile {
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
}

impl fmt::Display for LooseTokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        write!(
            f,
            "the token file {path} can be read or written by other users (mode {:04o}), who could \
             learn or replace the secret; run `chmod 600 {path}`",
            self.mode
        )
    }
}

/// A secret, where it came from, and what is wrong with how it is kept.
pub struct LoadedSecret {
    pub secret: Secret,
    pub origin: SecretOrigin,
    /// Set when the token file is open to other users; the secret is still
    /// used, and the caller warns.
    pub loose: Option<LooseTokenFile>,
}

/// The shared secret from `token_file` if given, else from `variable` (the
/// value of [`TOKEN_VARIABLE`], if set), else none. Never from a plain
/// argument, where other users could read it in `ps`.
pub fn load_secret(
    token_file: Option<&Path>,
    variable: Option<&OsStr>,
) -> Result<Option<LoadedSecret>, SecretError> {
    let Some(path) = token_file else {
        let Some(value) = variable else {
            return Ok(None);
        };
        let text = value.to_str().ok_or(SecretError::VariableNotUtf8)?;
        if text.trim().is_empty() {
            return Err(SecretError::BlankVariable);
        }
        return Ok(Some(LoadedSecret {
            secret: Secret::new(text)?,
            origin: SecretOrigin::Variable,
            loose: None,
        }));
    };
    let unreadable = |source| SecretError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    // The mode of the file read, not of whatever the path names later.
    let mode = file.metadata().map_err(unreadable)?.permissions().mode() & 0o7777;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(unreadable)?;
    if text.trim().is_empty() {
        return Err(SecretError::EmptyFile(path.to_owned()));
    }
    Ok(Some(LoadedSecret {
        secret: Secret::new(&text)?,
        origin: SecretOrigin::TokenFile(path.to_owned()),
        loose: (mode & LOOSE_BITS != 0).then(|| LooseTokenFile {
            path: path.to_owned(),
            mode,
        }),
    }))
}

/// A new random secret: 256 bits as 64 hexadecimal digits.
pub fn new_token() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(io::Error::other)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Why the secure channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(
        "authentication failed: the secrets do not match, or the Hello or Welcome was changed on the way"
    )]
    WrongSecret,
    #[error("the encrypted handshake failed: {0}")]
    Noise(snow::Error),
    #[error("connection failed during the encrypted handshake: {0}")]
    Io(#[from] io::Error),
}

/// The two halves of an established channel.
pub type Channel<R, W> = (OpenedReader<R>, SealedWriter<W>);

/// A session's byte streams, plain or encrypted, behind one type.
pub type BoxedReader = Box<dyn AsyncRead + Unpin + Send>;
pub type BoxedWriter = Box<dyn AsyncWrite + Unpin + Send>;

/// The handshake's prologue: the magic, then the Hello frame and the
/// Welcome frame (header and payload), exactly as this side sent or
/// received them. Both sides must build the same bytes, or the first
/// handshake message that carries a tag fails: nobody on the path can
/// switch a capability (compression, say) on or off unseen.
pub fn prologue(hello_frame: &[u8], welcome_frame: &[u8]) -> Vec<u8> {
    [&MAGIC[..], hello_frame, welcome_frame].concat()
}

/// Runs the client's side of the handshake over a session's buffered
/// halves and replaces them with the encrypted channel, keeping any bytes
/// already read ahead. On failure the halves are left unusable: the session
/// must end.
pub async fn upgrade_client(
    reader: &mut BufReader<BoxedReader>,
    writer: &mut BufWriter<BoxedWriter>,
    secret: &Secret,
    prologue: &[u8],
) -> Result<(), HandshakeError> {
    let (raw_reader, raw_writer) = take_halves(reader, writer);
    let channel = connect(raw_reader, raw_writer, secret, prologue).await?;
    install(reader, writer, channel);
    Ok(())
}

/// Runs the server's side of the handshake over a session's buffered
/// halves, as [`upgrade_client`] does the client's, with every secret in
/// `keys` (see [`accept`]); returns the tag of the secret the client holds.
pub async fn upgrade_server<T: Copy>(
    reader: &mut BufReader<BoxedReader>,
    writer: &mut BufWriter<BoxedWriter>,
    keys: &[(Secret, T)],
    prologue: &[u8],
) -> Result<T, HandshakeError> {
    let (raw_reader, raw_writer) = take_halves(reader, writer);
    let (channel, tag) = accept(raw_reader, raw_writer, keys, prologue).await?;
    install(reader, writer, channel);
    Ok(tag)
}

/// The plain streams under a session's buffered halves, bytes already read
/// ahead first; the halves are left reading nothing and writing nowhere.
fn take_halves(
    reader: &mut BufReader<BoxedReader>,
    writer: &mut BufWriter<BoxedWriter>,
) -> (impl AsyncRead + Unpin + Send + 'static, BoxedWriter) {
    let placeholder_reader: BoxedReader = Box::new(tokio::io::empty());
    let placeholder_writer: BoxedWriter = Box::new(tokio::io::sink());
    let plain_reader = std::mem::replace(reader, BufReader::new(placeholder_reader));
    let plain_writer = std::mem::replace(writer, BufWriter::new(placeholder_writer));
    let read_ahead = plain_reader.buffer().to_vec();
    let raw_reader = std::io::Cursor::new(read_ahead).chain(plain_reader.into_inner());
    (raw_reader, plain_writer.into_inner())
}

/// Puts an established channel in place of a session's buffered halves.
fn install<R, W>(
    reader: &mut BufReader<BoxedReader>,
    writer: &mut BufWriter<BoxedWriter>,
    (opened, sealed): Channel<R, W>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Room for a whole message, so that each opens straight into the
    // session's buffer and a small file's frame is usually whole in it; with
    // a smaller buffer every message would be opened aside and handed out a
    // buffer's worth at a time.
    *reader = BufReader::with_capacity(2 * MAX_MESSAGE, Box::new(opened));
    // A message's worth, so that small frames are sealed together.
    *writer = BufWriter::with_capacity(MAX_PLAIN, Box::new(sealed));
}

/// Runs the client's side of the handshake.
pub async fn connect<R, W>(
    mut reader: R,
    mut writer: W,
    secret: &Secret,
    prologue: &[u8],
) -> Result<Channel<R, W>, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut noise = builder(secret, prologue)?
        .build_initiator()
        .map_err(HandshakeError::Noise)?;
    let mut message = vec![0u8; MAX_MESSAGE];
    let len = noise
        .write_message(&[], &mut message)
        .map_err(HandshakeError::Noise)?;
    write_message(&mut writer, &message[..len]).await?;
    let reply = read_message(&mut reader).await?;
    noise
        .read_message(&reply, &mut message)
        .map_err(|_| HandshakeError::WrongSecret)?;
    established(noise, reader, writer)
}

/// Most secrets a server holds, and so tries on a client's first
/// handshake message: one per set of rights (see `server::rights`).
pub const MAX_SECRETS: usize = 3;

/// Bytes of the client's first handshake message (`psk, e`): its ephemeral
/// public key and the tag of an empty payload. A first message of any other
/// length is refused before it is read.
const FIRST_MESSAGE_LEN: usize = 32 + TAG_LEN;

/// Runs the server's side of the handshake, accepting a client that holds
/// any one of `keys` (at most [`MAX_SECRETS`]); returns the channel and the
/// tag of the secret that client holds. Nothing the client says chooses
/// the secret: each one is tried on its first message (which the pre-shared
/// key authenticates), and only the one that opens it counts.
pub async fn accept<R, W, T: Copy>(
    mut reader: R,
    mut writer: W,
    keys: &[(Secret, T)],
    prologue: &[u8],
) -> Result<(Channel<R, W>, T), HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut len = [0u8; 2];
    reader.read_exact(&mut len).await?;
    if usize::from(u16::from_be_bytes(len)) != FIRST_MESSAGE_LEN {
        return Err(HandshakeError::WrongSecret);
    }
    let mut first = [0u8; FIRST_MESSAGE_LEN];
    reader.read_exact(&mut first).await?;
    let Some((mut noise, tag)) = open_first(keys, prologue, &first)?.opened else {
        return Err(HandshakeError::WrongSecret);
    };
    let mut message = vec![0u8; MAX_MESSAGE];
    let len = noise
        .write_message(&[], &mut message)
        .map_err(HandshakeError::Noise)?;
    write_message(&mut writer, &message[..len]).await?;
    Ok((established(noise, reader, writer)?, tag))
}

/// What trying the server's secrets on a client's first message gave.
struct Trial<T> {
    /// The handshake, one message in, and the tag of the secret that
    /// opened the message, if one did.
    opened: Option<(HandshakeState, T)>,
    /// How many secrets were tried.
    tries: usize,
}

/// Tries each of `keys` on the client's first handshake message. Every
/// one is tried, each with the same work (a few hashes and the check of one
/// 16-byte tag), whichever opens it: the time taken says how many secrets
/// the server holds, not which one the client has. Should two open it,
/// which [`crate::server`] refuses to start with, the first counts.
fn open_first<T: Copy>(
    keys: &[(Secret, T)],
    prologue: &[u8],
    message: &[u8; FIRST_MESSAGE_LEN],
) -> Result<Trial<T>, HandshakeError> {
    let mut trial = Trial {
        opened: None,
        tries: 0,
    };
    let mut payload = [0u8; FIRST_MESSAGE_LEN];
    for (secret, tag) in keys {
        let mut noise = builder(secret, prologue)?
            .build_responder()
            .map_err(HandshakeError::Noise)?;
        let opened = noise.read_message(message, &mut payload).is_ok();
        trial.tries += 1;
        if opened && trial.opened.is_none() {
            trial.opened = Some((noise, *tag));
        }
    }
    Ok(trial)
}

fn builder<'a>(secret: &'a Secret, prologue: &'a [u8]) -> Result<Builder<'a>, HandshakeError> {
    let params = NOISE_PARAMS.parse().map_err(HandshakeError::Noise)?;
    Builder::new(params)
        .psk(0, &secret.key)
        .and_then(|builder| builder.prologue(prologue))
        .map_err(HandshakeError::Noise)
}

fn established<R, W>(
    noise: HandshakeState,
    reader: R,
    writer: W,
) -> Result<Channel<R, W>, HandshakeError> {
    let keys = Arc::new(
        noise
            .into_stateless_transport_mode()
            .map_err(HandshakeError::Noise)?,
    );
    Ok((
        OpenedReader {
            inner: reader,
            keys: Arc::clone(&keys),
            nonce: 0,
            incoming: vec![0u8; READ_AHEAD],
            start: 0,
            end: 0,
            plain: vec![0u8; 64 + MAX_MESSAGE],
            plain_start: 0,
            plain_end: 0,
        },
        SealedWriter {
            inner: writer,
            keys,
            nonce: 0,
            plain: Vec::with_capacity(MAX_PLAIN),
            sealed: vec![0u8; SEALED_AT + 64 + MAX_MESSAGE],
            sealed_start: 0,
            sealed_end: 0,
        },
    ))
}

async fn write_message(writer: &mut (impl AsyncWrite + Unpin), message: &[u8]) -> io::Result<()> {
    let len =
        u16::try_from(message.len()).map_err(|_| io::Error::other("handshake message too long"))?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(message).await?;
    writer.flush().await
}

async fn read_message(reader: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    reader.read_exact(&mut len).await?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    reader.read_exact(&mut message).await?;
    Ok(message)
}

fn tampered() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the encrypted stream failed authentication: it was damaged or tampered with",
    )
}

/// Where a sealed message starts in [`SealedWriter`]'s buffer (or 64 bytes
/// later, see [`copy_is_slow`]), its length prefix just before.
const SEALED_AT: usize = 64;

/// Whether copying from `source` to `destination` would start the copy 1
/// to 63 bytes past its source, modulo 4 KiB. On some AMD cores such a copy
/// (glibc's `rep movsb`) takes a slow path many times slower than any other
/// alignment, and the cipher copies every message once: the sealed buffer
/// must never sit in that window relative to the plaintext.
fn copy_is_slow(source: *const u8, destination: *const u8) -> bool {
    let gap = (destination as usize).wrapping_sub(source as usize) % 4096;
    (1..64).contains(&gap)
}

/// Encrypts everything written through it, a Noise message at a time.
pub struct SealedWriter<W> {
    inner: W,
    keys: Arc<StatelessTransportState>,
    nonce: u64,
    /// Plaintext waiting to fill a message.
    plain: Vec<u8>,
    /// One sealed message (length prefix included) being written out.
    sealed: Vec<u8>,
    sealed_start: usize,
    sealed_end: usize,
}

impl<W: AsyncWrite + Unpin> SealedWriter<W> {
    /// Seals the waiting plaintext into one message.
    fn seal(&mut self) -> io::Result<()> {
        let plain = std::mem::take(&mut self.plain);
        let sealed = self.seal_from(&plain);
        self.plain = plain;
        self.plain.clear();
        sealed
    }

    /// Seals `plain` into one message, ready to be written out.
    fn seal_from(&mut self, plain: &[u8]) -> io::Result<()> {
        let slow = copy_is_slow(plain.as_ptr(), self.sealed[SEALED_AT..].as_ptr());
        let at = if slow { SEALED_AT + 64 } else { SEALED_AT };
        let len = self
            .keys
            .write_message(self.nonce, plain, &mut self.sealed[at..])
            .map_err(io::Error::other)?;
        self.nonce += 1;
        self.sealed[at - 2..at].copy_from_slice(&(len as u16).to_be_bytes());
        self.sealed_start = at - 2;
        self.sealed_end = at + len;
        Ok(())
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sealed_start < self.sealed_end {
            let written = ready!(
                Pin::new(&mut self.inner)
                    .poll_write(cx, &self.sealed[self.sealed_start..self.sealed_end])
            )?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sealed_start += written;
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SealedWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if this.plain.is_empty() && buf.len() >= MAX_PLAIN {
            // A whole message's worth: sealed from the caller's buffer, it
            // skips a copy into `plain`.
            this.seal_from(&buf[..MAX_PLAIN])?;
            return Poll::Ready(Ok(MAX_PLAIN));
        }
        let taken = buf.len().min(MAX_PLAIN - this.plain.len());
        this.plain.extend_from_slice(&buf[..taken]);
        if this.plain.len() == MAX_PLAIN {
            this.seal()?;
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if !this.plain.is_empty() {
            this.seal()?;
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Decrypts and authenticates everything read through it.
pub struct OpenedReader<R> {
    inner: R,
    keys: Arc<StatelessTransportState>,
    nonce: u64,
    /// Sealed bytes read ahead: `incoming[start..end]` is not yet opened.
    /// Reading several messages per system call halves the calls a
    /// message-at-a-time reader would make.
    incoming: Vec<u8>,
    start: usize,
    end: usize,
    /// The last message's plaintext, and how much of it was handed out.
    plain: Vec<u8>,
    plain_start: usize,
    plain_end: usize,
}

/// Sealed bytes an [`OpenedReader`] reads ahead at most.
const READ_AHEAD: usize = 4 * (2 + MAX_MESSAGE);

impl<R: AsyncRead + Unpin> OpenedReader<R> {
    /// The length of the whole next message (prefix included), if its
    /// prefix has arrived.
    fn next_message_len(&self) -> Option<usize> {
        let prefix = self.incoming.get(self.start..self.start + 2)?;
        (self.end - self.start >= 2)
            .then(|| 2 + usize::from(u16::from_be_bytes([prefix[0], prefix[1]])))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for OpenedReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.plain_start == this.plain_end {
            if let Some(len) = this.next_message_len()
                && this.end - this.start >= len
            {
                let sealed = &this.incoming[this.start + 2..this.start + len];
                if buf.remaining() >= sealed.len() {
                    // Opened straight into the caller's buffer, the bytes
                    // skip a copy out of `plain`.
                    let out = buf.initialize_unfilled_to(sealed.len());
                    if !copy_is_slow(sealed.as_ptr(), out.as_ptr()) {
                        let opened = this
                            .keys
                            .read_message(this.nonce, sealed, out)
                            .map_err(|_| tampered())?;
                        this.nonce += 1;
                        this.start += len;
                        if opened == 0 {
                            continue;
                        }
                        buf.advance(opened);
                        return Poll::Ready(Ok(()));
                    }
                }
                let at = if copy_is_slow(sealed.as_ptr(), this.plain.as_ptr()) {
                    64
                } else {
                    0
                };
                let opened = this
                    .keys
                    .read_message(this.nonce, sealed, &mut this.plain[at..])
                    .map_err(|_| tampered())?;
                this.nonce += 1;
                this.start += len;
                this.plain_start = at;
                this.plain_end = at + opened;
                continue;
            }
            // Not a whole message yet: make room at the end, then read.
            if this.start > 0 && this.incoming.len() - this.end < 2 + MAX_MESSAGE {
                this.incoming.copy_within(this.start..this.end, 0);
                this.end -= this.start;
                this.start = 0;
            }
            let mut window = ReadBuf::new(&mut this.incoming[this.end..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut window))?;
            let read = window.filled().len();
            if read == 0 {
                return if this.start == this.end {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
                };
            }
            this.end += read;
        }
        let take = buf.remaining().min(this.plain_end - this.plain_start);
        buf.put_slice(&this.plain[this.plain_start..this.plain_start + take]);
        this.plain_start += take;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(
        client_secret: &str,
        server_secret: &str,
        client_prologue: &[u8],
        server_prologue: &[u8],
    ) -> (Result<(), HandshakeError>, Result<(), HandshakeError>) {
        let (client_side, server_side) = tokio::io::duplex(1 << 20);
        let (client_read, client_write) = tokio::io::split(client_side);
        let (server_read, server_write) = tokio::io::split(server_side);
        let client_secret = Secret::new(client_secret).unwrap();
        let server_keys = [(Secret::new(server_secret).unwrap(), ())];
        let (client, server) = tokio::join!(
            connect(client_read, client_write, &client_secret, client_prologue),
            accept(server_read, server_write, &server_keys, server_prologue)
        );
        (client.map(drop), server.map(drop))
    }

    /// A client's sealed writer and a server's opened reader, after a
    /// handshake with one secret over an in-memory pipe of `capacity` bytes.
    async fn established(
        capacity: usize,
    ) -> (
        SealedWriter<tokio::io::WriteHalf<tokio::io::DuplexStream>>,
        OpenedReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
    ) {
        let (client_side, server_side) = tokio::io::duplex(capacity);
        let (client_read, client_write) = tokio::io::split(client_side);
        let (server_read, server_write) = tokio::io::split(server_side);
        let secret = Secret::new("a shared secret of some length").unwrap();
        let keys = [(secret.clone(), ())];
        let (client, server) = tokio::join!(
            connect(client_read, client_write, &secret, b"negotiation"),
            accept(server_read, server_write, &keys, b"negotiation")
        );
        let ((_, client_writer), ((server_reader, _), ())) = (client.unwrap(), server.unwrap());
        (client_writer, server_reader)
    }

    #[tokio::test]
    async fn matching_secrets_carry_bytes_both_ways_intact() {
        let (mut client_writer, mut server_reader) = established(1 << 20).await;
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client_writer.write_all(&sent).await.unwrap();
            client_writer.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        server_reader.read_to_end(&mut received).await.unwrap();
        writer.await.unwrap();
        assert_eq!(received, payload);
    }

    /// Writes of every size, flushed at odd places, read back through
    /// buffers of every size: whole messages are sealed from and opened
    /// into the caller's buffer when they fit, the rest goes through the
    /// channel's own buffers, and the bytes must come out the same.
    #[tokio::test]
    async fn bytes_survive_any_mix_of_write_and_read_sizes() {
        let (mut client_writer, mut server_reader) = established(1 << 16).await;
        let write_sizes = [1, MAX_PLAIN, 70_000, 3, 3 * MAX_PLAIN + 5, 200_000, 65_536];
        let total: usize = write_sizes.iter().sum();
        let payload: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            let mut rest = &sent[..];
            for (index, size) in write_sizes.into_iter().enumerate() {
                client_writer.write_all(&rest[..size]).await.unwrap();
                rest = &rest[size..];
                if index % 2 == 0 {
                    client_writer.flush().await.unwrap();
                }
            }
            client_writer.shutdown().await.unwrap();
        });
        let read_sizes = [7, MAX_MESSAGE, 300_000, 1, MAX_MESSAGE - 1, 100_000];
        let mut received = Vec::new();
        let mut buffer = vec![0u8; 300_000];
        for size in read_sizes.into_iter().cycle() {
            let read = server_reader.read(&mut buffer[..size]).await.unwrap();
            if read == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..read]);
        }
        writer.await.unwrap();
        assert_eq!(received.len(), payload.len());
        assert!(received == payload, "the bytes changed on the way");
    }

    #[test]
    fn copies_landing_just_past_their_source_are_flagged_slow() {
        let buffer = [0u8; 8192];
        let at = |offset: usize| buffer[offset..].as_ptr();
        assert!(!copy_is_slow(at(100), at(100)), "same offset");
        assert!(copy_is_slow(at(100), at(101)), "1 byte past");
        assert!(copy_is_slow(at(100), at(163)), "63 bytes past");
        assert!(!copy_is_slow(at(100), at(164)), "64 bytes past");
        assert!(!copy_is_slow(at(102), at(100)), "before the source");
        assert!(copy_is_slow(at(0), at(4096 + 2)), "modulo 4 KiB");
    }

    #[tokio::test]
    async fn different_secrets_fail_the_handshake() {
        let (client, server) = pair(
            "the client's secret, long",
            "the server's secret, long",
            b"same",
            b"same",
        )
        .await;
        assert!(
            matches!(server, Err(HandshakeError::WrongSecret)),
            "{server:?}"
        );
        assert!(client.is_err());
    }

    /// A server holding three secrets, each tagged with what it grants,
    /// and a client holding `client_secret`: what the server's handshake
    /// gave, and whether the channel then carries bytes.
    async fn three_secret_server(client_secret: &str) -> Result<&'static str, HandshakeError> {
        let keys = [
            (Secret::new("the main secret, long enough").unwrap(), "main"),
            (Secret::new("the send-only secret, long").unwrap(), "send"),
            (Secret::new("the get-only secret, long").unwrap(), "get"),
        ];
        let (client_side, server_side) = tokio::io::duplex(1 << 16);
        let (client_read, client_write) = tokio::io::split(client_side);
        let (server_read, server_write) = tokio::io::split(server_side);
        let client_secret = Secret::new(client_secret).unwrap();
        let (client, server) = tokio::join!(
            connect(client_read, client_write, &client_secret, b"same"),
            accept(server_read, server_write, &keys, b"same")
        );
        let ((mut server_reader, _), tag) = server?;
        let (_, mut client_writer) = client.expect("the server accepted, so must the client");
        client_writer.write_all(b"offer").await.unwrap();
        client_writer.shutdown().await.unwrap();
        let mut received = Vec::new();
        server_reader.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"offer");
        Ok(tag)
    }

    #[tokio::test]
    async fn each_of_three_secrets_opens_its_own_session_and_a_fourth_opens_none() {
        for (secret, tag) in [
            ("the main secret, long enough", "main"),
            ("the send-only secret, long", "send"),
            ("the get-only secret, long", "get"),
        ] {
            assert_eq!(three_secret_server(secret).await.unwrap(), tag);
        }
        let wrong = three_secret_server("a secret the server does not hold").await;
        assert!(
            matches!(wrong, Err(HandshakeError::WrongSecret)),
            "{wrong:?}"
        );
    }

    /// Every secret is tried on every first message, so that neither a
    /// wrong secret nor which right one is held changes the work done.
    #[test]
    fn every_secret_is_tried_on_every_first_message() {
        let names = [
            "the main secret, long enough",
            "the send-only secret, long",
            "the get-only secret, long",
        ];
        let keys: Vec<(Secret, usize)> = names
            .iter()
            .enumerate()
            .map(|(index, name)| (Secret::new(name).unwrap(), index))
            .collect();
        let first_message = |secret: &str| {
            let secret = Secret::new(secret).unwrap();
            let mut noise = builder(&secret, b"p").unwrap().build_initiator().unwrap();
            let mut message = [0u8; FIRST_MESSAGE_LEN];
            let len = noise.write_message(&[], &mut message).unwrap();
            assert_eq!(len, FIRST_MESSAGE_LEN, "the client's first message");
            message
        };
        for (index, name) in names.iter().enumerate() {
            let trial = open_first(&keys, b"p", &first_message(name)).unwrap();
            assert_eq!(trial.opened.map(|(_, tag)| tag), Some(index));
            assert_eq!(trial.tries, MAX_SECRETS);
        }
        let trial = open_first(&keys, b"p", &first_message("not one of the three")).unwrap();
        assert!(trial.opened.is_none());
        assert_eq!(trial.tries, MAX_SECRETS);
        // The right secret with another prologue opens nothing either.
        let trial = open_first(&keys, b"q", &first_message(names[1])).unwrap();
        assert!(trial.opened.is_none());
    }

    /// A first message of another length than an empty payload makes is
    /// refused from its length alone, before its bytes are read.
    #[tokio::test]
    async fn a_first_message_of_the_wrong_length_is_refused_unread() {
        let keys = [(Secret::new(LONG_SECRET).unwrap(), ())];
        for len in [0u16, 47, 49, 65535] {
            let mut sent = len.to_be_bytes().to_vec();
            sent.extend(std::iter::repeat_n(0u8, FIRST_MESSAGE_LEN + 1));
            let result = accept(&sent[..], tokio::io::sink(), &keys, b"p").await;
            assert!(matches!(result, Err(HandshakeError::WrongSecret)), "{len}");
        }
    }

    const LONG_SECRET: &str = "a shared secret of some length";

    fn token_file(dir: &Path, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join("token");
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn an_unset_variable_means_no_secret_and_a_blank_one_is_an_error() {
        assert!(matches!(load_secret(None, None), Ok(None)));
        for blank in ["", "   ", "\n\t "] {
            assert!(
                matches!(
                    load_secret(None, Some(OsStr::new(blank))),
                    Err(SecretError::BlankVariable)
                ),
                "{blank:?}"
            );
        }
        let loaded = load_secret(None, Some(OsStr::new(LONG_SECRET)))
            .unwrap()
            .unwrap();
        assert_eq!(loaded.origin, SecretOrigin::Variable);
        assert!(loaded.loose.is_none());
        let not_utf8 = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xff secret secret");
        assert!(matches!(
            load_secret(None, Some(not_utf8)),
            Err(SecretError::VariableNotUtf8)
        ));
    }

    #[test]
    fn an_empty_or_blank_token_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for blank in ["", "\n", "  \n\n"] {
            let path = token_file(dir.path(), blank, 0o600);
            match load_secret(Some(&path), None) {
                Err(SecretError::EmptyFile(named)) => assert_eq!(named, path),
                Err(other) => panic!("{blank:?}: {other}"),
                Ok(_) => panic!("{blank:?} was taken as a secret"),
            }
        }
    }

    #[test]
    fn a_token_file_others_can_read_or_write_is_used_and_flagged() {
        let dir = tempfile::tempdir().unwrap();
        for (mode, loose) in [
            (0o600, false),
            (0o400, false),
            (0o700, false),
            (0o640, true),
            (0o604, true),
            (0o620, true),
            (0o602, true),
        ] {
            let path = token_file(dir.path(), &format!("{LONG_SECRET}\n"), mode);
            let loaded = load_secret(Some(&path), None).unwrap().unwrap();
            assert_eq!(loaded.origin, SecretOrigin::TokenFile(path.clone()));
            let expected = loose.then(|| LooseTokenFile {
                path: path.clone(),
                mode,
            });
            assert_eq!(loaded.loose, expected, "{mode:o}");
        }
        let warning = LooseTokenFile {
            path: PathBuf::from("/k/token"),
            mode: 0o644,
        }
        .to_string();
        assert!(warning.contains("/k/token"), "{warning}");
        assert!(warning.contains("(mode 0644)"), "{warning}");
        assert!(warning.contains("chmod 600 /k/token"), "{warning}");
    }

    #[test]
    fn a_token_file_wins_over_the_variable_even_a_blank_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_file(dir.path(), LONG_SECRET, 0o600);
        let loaded = load_secret(Some(&path), Some(OsStr::new("")))
            .unwrap()
            .unwrap();
        assert_eq!(loaded.origin, SecretOrigin::TokenFile(path));
    }

    /// The prologue is what each side saw of the clear negotiation: with
    /// the same secret, one changed bit in it fails the handshake on the
    /// side that reads the first tagged message, and the other side too.
    #[tokio::test]
    async fn a_changed_negotiation_fails_the_handshake_even_with_the_right_secret() {
        let secret = "the same secret on both sides";
        let hello = [1u8, 0, 0, 0, 10, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3];
        let mut changed = hello;
        changed[14] ^= 1;
        let (client, server) = pair(secret, secret, &hello, &hello).await;
        assert!(client.is_ok() && server.is_ok(), "{client:?} {server:?}");
        let (client, server) = pair(secret, secret, &hello, &changed).await;
        assert!(
            matches!(server, Err(HandshakeError::WrongSecret)),
            "{server:?}"
        );
        assert!(client.is_err());
        assert_eq!(prologue(b"h", b"w"), [&MAGIC[..], b"hw"].concat());
    }

    #[test]
    fn short_secrets_are_refused_and_tokens_are_long_and_fresh() {
        assert!(Secret::new("hunter2").is_err());
        let (first, second) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(first.len(), 64);
        assert_ne!(first, second);
        assert!(Secret::new(&first).is_ok());
    }
}
