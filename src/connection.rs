//! One haul connection: the socket's two halves (plain, or the encrypted
//! channel of [`crate::secure`] once the handshake replaced them), their
//! buffers and the deadlines, and the only code that reads or writes a
//! frame of haul's protocol.
//!
//! What must stay true here:
//! - A frame's header is checked against its kind's limit before any of its
//!   payload is read ([`haul::decode_frame_header`]), so a peer can make a
//!   connection hold at most one frame's worth of bytes: the payload buffer
//!   is reused from frame to frame and never outgrows [`haul::MAX_DATA_LEN`].
//! - Control messages are decoded borrowing from that buffer: no allocation
//!   per frame.
//! - No read waits longer than the connection's idle time with no byte
//!   arriving (or past the deadline its caller names); no write waits longer
//!   than its stall time, when it has one, with no byte leaving. The limits
//!   measure silence at the socket ([`crate::traffic`]), so a slow peer that
//!   keeps bytes moving is never taken for a silent one.
//!
//! File bytes are the data path's (`transfer`): [`Connection::data_reader`]
//! and [`Connection::data_writer`] hand it the buffered halves, and a data
//! frame's header goes through [`Connection::read_data_header`] and
//! [`Connection::write_data_header`] like any other. The seam for moving the
//! data loops in here is [`Connection::read_data_into`].

use std::io;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::time::{Instant, timeout, timeout_at};

use crate::protocol::haul::{
    self, DecodeError, FRAME_HEADER_LEN, FrameHeader, Incoming, Kind, MAGIC, Outgoing,
};
use crate::secure::{self, BoxedReader, BoxedWriter, HandshakeError, Secret};
use crate::traffic::{Counted, Traffic, unless_silent};
use crate::transfer::{FileSink, PumpError, Unbuffered, receive, receive_buffered};

/// Everything a connection can fail with, whichever side it is.
#[derive(Debug, Error)]
pub enum ConnectionError {
    /// The peer closed the connection where a frame would have begun.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer closed the connection part-way through a frame.
    #[error("the peer closed the connection in the middle of {0}")]
    Cut(Part),
    #[error("nothing received for {}s", .0.as_secs())]
    Idle(Duration),
    #[error("the peer read nothing for {}s", .0.as_secs())]
    Stalled(Duration),
    /// A malformed or oversized frame, or a message from the wrong side.
    #[error("bad frame: {0}")]
    Frame(#[from] DecodeError),
    /// File bytes came where a message was due.
    #[error("file data outside a file")]
    DataOutsideFile,
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
}

/// Which part of a frame the connection ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Header,
    Payload(Kind),
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Header => f.write_str("a frame's header"),
            Part::Payload(kind) => write!(f, "the {kind:?} frame's payload"),
        }
    }
}

/// What a peer that may not speak haul answered first.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    /// A whole frame header's worth of bytes, not yet judged.
    Header([u8; FRAME_HEADER_LEN]),
    /// Fewer bytes than a header before the peer closed or the deadline
    /// passed (which of the two, `timed_out` says).
    Short { bytes: Vec<u8>, timed_out: bool },
}

/// The reading half: the buffered stream and the reused payload buffer.
pub struct FrameReader {
    stream: BufReader<BoxedReader>,
    /// The payload of the last frame read whole; reused, and never longer
    /// than one frame's limit.
    payload: Vec<u8>,
    /// The kind of the frame in `payload`.
    kind: Option<Kind>,
    /// How long any read waits with nothing arriving.
    idle: Duration,
    /// When a byte last arrived, noted at the socket.
    traffic: Traffic,
}

/// The writing half: the buffered stream and the reused frame buffer.
pub struct FrameWriter {
    stream: BufWriter<BoxedWriter>,
    /// The last control frame written, whole; reused.
    frame: Vec<u8>,
    /// How long a write may wait with nothing taken by the peer, if bounded.
    stall: Option<Duration>,
    /// When a byte last left, noted at the socket.
    traffic: Traffic,
}

/// A haul connection, plain or encrypted.
pub struct Connection {
    reader: FrameReader,
    writer: FrameWriter,
}

impl Connection {
    /// A connection over a socket's two halves, with read and write
    /// buffers of the sizes given, whose reads give up after `idle` with
    /// nothing arriving. Writes wait as long as the peer takes until
    /// [`Self::bound_writes`].
    pub fn new(
        reader: BoxedReader,
        read_buffer: usize,
        writer: BoxedWriter,
        write_buffer: usize,
        idle: Duration,
    ) -> Connection {
        let incoming = Traffic::default();
        let outgoing = Traffic::default();
        let reader: BoxedReader = Box::new(Counted::new(reader, incoming.clone()));
        let writer: BoxedWriter = Box::new(Counted::new(writer, outgoing.clone()));
        Connection {
            reader: FrameReader {
                stream: BufReader::with_capacity(read_buffer, reader),
                payload: Vec::new(),
                kind: None,
                idle,
                traffic: incoming,
            },
            writer: FrameWriter {
                stream: BufWriter::with_capacity(write_buffer, writer),
                frame: Vec::new(),
                stall: None,
                traffic: outgoing,
            },
        }
    }

    /// A connection that reads nothing and writes nowhere: what a session
    /// holds while its connection is lent out.
    pub fn detached(idle: Duration) -> Connection {
        // The smallest buffers there are: nothing ever passes through them.
        Connection::new(
            Box::new(tokio::io::empty()),
            1,
            Box::new(tokio::io::sink()),
            1,
            idle,
        )
    }

    /// Makes every write wait at most `stall` for the peer to read.
    pub fn bound_writes(&mut self, stall: Duration) {
        self.writer.stall = Some(stall);
    }

    /// How long reads wait for the peer.
    pub fn idle(&self) -> Duration {
        self.reader.idle
    }

    /// Changes how long reads wait for the peer.
    pub fn set_idle(&mut self, idle: Duration) {
        self.reader.idle = idle;
    }

    /// Both halves at once, to read and write concurrently: neither side
    /// may wait for the other to read before it reads, or both could stop
    /// with full buffers.
    pub fn halves(&mut self) -> (&mut FrameReader, &mut FrameWriter) {
        (&mut self.reader, &mut self.writer)
    }

    /// Runs the encrypted handshake and puts the channel in place of the
    /// plain halves, keeping any bytes already read ahead.
    pub async fn encrypt_client(
        &mut self,
        secret: &Secret,
        prologue: &[u8],
    ) -> Result<(), HandshakeError> {
        secure::upgrade_client(
            &mut self.reader.stream,
            &mut self.writer.stream,
            secret,
            prologue,
        )
        .await
    }

    /// The server's side of [`Connection::encrypt_client`]: with whichever
    /// of `keys` the client holds, whose tag it returns.
    pub async fn encrypt_server<T: Copy>(
        &mut self,
        keys: &[(Secret, T)],
        prologue: &[u8],
    ) -> Result<T, HandshakeError> {
        secure::upgrade_server(
            &mut self.reader.stream,
            &mut self.writer.stream,
            keys,
            prologue,
        )
        .await
    }

    /// See [`FrameReader::read_opening`].
    pub async fn read_opening(&mut self, deadline: Instant) -> Result<Opening, ConnectionError> {
        self.reader.read_opening(deadline).await
    }

    /// See [`FrameReader::read_header`].
    pub async fn read_header(&mut self) -> Result<FrameHeader, ConnectionError> {
        self.reader.read_header().await
    }

    /// See [`FrameReader::read_data_header`].
    pub async fn read_data_header(&mut self) -> Result<FrameHeader, ConnectionError> {
        self.reader.read_data_header().await
    }

    /// See [`FrameReader::read_payload`].
    pub async fn read_payload(&mut self, header: FrameHeader) -> Result<&[u8], ConnectionError> {
        self.reader.read_payload(header).await
    }

    /// See [`FrameReader::read_message`].
    pub async fn read_message<'a, M: Incoming<'a>>(&'a mut self) -> Result<M, ConnectionError> {
        self.reader.read_message().await
    }

    /// See [`FrameReader::read_message_after`].
    pub async fn read_message_after<'a, M: Incoming<'a>>(
        &'a mut self,
        header: FrameHeader,
    ) -> Result<M, ConnectionError> {
        self.reader.read_message_after(header).await
    }

    /// See [`FrameReader::last_frame`].
    pub fn last_frame(&self) -> Vec<u8> {
        self.reader.last_frame()
    }

    /// Reads `len` bytes of a data frame's payload into `sink`: straight
    /// from the socket (`direct`, for a large file) or through the read
    /// buffer (a small file's frames, several per read).
    ///
    /// This is the seam for the data path: the loops that receive a file
    /// (`engine::receiver`) call it for every Data frame, so that moving the
    /// rest of them in here (decompression, the size checks) changes no
    /// call site but theirs.
    pub async fn read_data_into(
        &mut self,
        sink: &mut FileSink,
        len: u64,
        direct: bool,
    ) -> Result<(), PumpError> {
        let idle = self.reader.idle;
        let traffic = &self.reader.traffic;
        if direct {
            receive(
                &mut Unbuffered(&mut self.reader.stream),
                sink,
                len,
                traffic,
                idle,
            )
            .await
        } else {
            receive_buffered(&mut self.reader.stream, sink, len, traffic, idle).await
        }
    }

    /// Writes file bytes, right after their frame's header; `None` if the
    /// peer took none of them for the connection's idle time.
    pub async fn write_data(&mut self, bytes: &[u8]) -> Option<io::Result<()>> {
        let idle = self.reader.idle;
        unless_silent(
            &self.writer.traffic,
            idle,
            self.writer.stream.write_all(bytes),
        )
        .await
    }

    /// The buffered reading half, for the data path's own reads of file
    /// bytes. Whatever reads through it must leave it at a frame boundary.
    pub fn data_reader(&mut self) -> &mut BufReader<BoxedReader> {
        &mut self.reader.stream
    }

    /// See [`FrameWriter::write_magic`].
    pub async fn write_magic(&mut self) -> Result<(), ConnectionError> {
        self.writer.write_magic().await
    }

    /// See [`FrameWriter::send`].
    pub async fn send<M: Outgoing + ?Sized>(&mut self, message: &M) -> Result<(), ConnectionError> {
        self.writer.send(message).await
    }

    /// See [`FrameWriter::last_sent`].
    pub fn last_sent(&self) -> &[u8] {
        self.writer.last_sent()
    }

    /// See [`FrameWriter::write_data_header`].
    pub async fn write_data_header(&mut self, kind: Kind, len: u32) -> Result<(), ConnectionError> {
        self.writer.write_data_header(kind, len).await
    }

    /// The buffered writing half, for the data path's own writes of file
    /// bytes, each right after its frame's header.
    pub fn data_writer(&mut self) -> &mut BufWriter<BoxedWriter> {
        &mut self.writer.stream
    }

    /// See [`FrameWriter::flush`].
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        self.writer.flush().await
    }

    /// Flushes and closes the writing half: the peer reads the end of the
    /// stream after the last frame.
    pub async fn shutdown(&mut self) -> Result<(), ConnectionError> {
        self.writer.flush().await?;
        self.writer.stream.shutdown().await?;
        Ok(())
    }

    /// Reads and drops whatever the peer still sends until it closes, for
    /// at most `wait`; returns how many bytes that was.
    pub async fn drain(&mut self, wait: Duration) -> Result<u64, ConnectionError> {
        let mut sink = tokio::io::sink();
        match timeout(wait, tokio::io::copy(&mut self.reader.stream, &mut sink)).await {
            Err(_) => Err(ConnectionError::Idle(wait)),
            Ok(copied) => Ok(copied?),
        }
    }
}

impl FrameReader {
    /// The first bytes of a peer that may not speak haul: whole frame
    /// header's worth, or what came by `deadline` or before it closed, so
    /// that the caller can say what the peer looks like.
    pub async fn read_opening(&mut self, deadline: Instant) -> Result<Opening, ConnectionError> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        let mut filled = 0;
        while let Some(unfilled) = header.get_mut(filled..).filter(|rest| !rest.is_empty()) {
            match timeout_at(deadline, self.stream.read(unfilled)).await {
                Err(_) => {
                    return Ok(Opening::Short {
                        bytes: header[..filled].to_vec(),
                        timed_out: true,
                    });
                }
                Ok(Ok(0)) => {
                    return Ok(Opening::Short {
                        bytes: header[..filled].to_vec(),
                        timed_out: false,
                    });
                }
                Ok(Ok(read)) => filled += read,
                Ok(Err(error)) => return Err(error.into()),
            }
        }
        Ok(Opening::Header(header))
    }

    /// Reads and checks the next frame's header, through the read buffer.
    pub async fn read_header(&mut self) -> Result<FrameHeader, ConnectionError> {
        read_header_from(&mut self.stream, &self.traffic, self.idle).await
    }

    /// Reads and checks the next frame's header without refilling the read
    /// buffer, so that a large payload behind it is read straight from the
    /// socket: a refill would read up to a buffer's worth of it ahead, and
    /// every byte of that is copied twice.
    pub async fn read_data_header(&mut self) -> Result<FrameHeader, ConnectionError> {
        read_header_from(&mut Unbuffered(&mut self.stream), &self.traffic, self.idle).await
    }

    /// Reads the payload of the frame whose header was just read into the
    /// reused buffer. The header was checked against its kind's limit, so
    /// the buffer never grows past the largest frame.
    pub async fn read_payload(&mut self, header: FrameHeader) -> Result<&[u8], ConnectionError> {
        let len = header.len as usize;
        self.kind = None;
        self.payload.clear();
        self.payload.resize(len, 0);
        let reading = self.stream.read_exact(&mut self.payload);
        match unless_silent(&self.traffic, self.idle, reading).await {
            None => return Err(ConnectionError::Idle(self.idle)),
            Some(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ConnectionError::Cut(Part::Payload(header.kind)));
            }
            Some(result) => {
                result?;
            }
        }
        self.kind = Some(header.kind);
        Ok(&self.payload)
    }

    /// Reads one whole control frame and decodes it as a message this side
    /// may receive.
    pub async fn read_message<'a, M: Incoming<'a>>(&'a mut self) -> Result<M, ConnectionError> {
        let header = self.read_header().await?;
        self.read_message_after(header).await
    }

    /// Reads the payload of a control frame whose header was read, and
    /// decodes it. A data frame here is refused before its payload is read.
    pub async fn read_message_after<'a, M: Incoming<'a>>(
        &'a mut self,
        header: FrameHeader,
    ) -> Result<M, ConnectionError> {
        if matches!(header.kind, Kind::Data | Kind::DataZstd) {
            return Err(ConnectionError::DataOutsideFile);
        }
        let payload = self.read_payload(header).await?;
        Ok(M::decode(header.kind, payload)?)
    }

    /// The last frame read whole, exactly as it was on the wire: how each
    /// side keeps the Hello or Welcome it received for the handshake.
    pub fn last_frame(&self) -> Vec<u8> {
        match self.kind {
            Some(kind) => haul::raw_frame(kind, &self.payload),
            None => Vec::new(),
        }
    }
}

/// Reads a header from `reader`, giving up once `idle` passes with no
/// byte crossing in `traffic`.
async fn read_header_from(
    reader: &mut (impl AsyncRead + Unpin),
    traffic: &Traffic,
    idle: Duration,
) -> Result<FrameHeader, ConnectionError> {
    let mut bytes = [0u8; FRAME_HEADER_LEN];
    let mut filled = 0;
    let reading = async {
        while let Some(unfilled) = bytes.get_mut(filled..).filter(|rest| !rest.is_empty()) {
            match reader.read(unfilled).await? {
                0 if filled == 0 => return Err(ConnectionError::Closed),
                0 => return Err(ConnectionError::Cut(Part::Header)),
                read => filled += read,
            }
        }
        Ok(())
    };
    match unless_silent(traffic, idle, reading).await {
        None => Err(ConnectionError::Idle(idle)),
        Some(result) => {
            result?;
            Ok(haul::decode_frame_header(bytes)?)
        }
    }
}

impl FrameWriter {
    /// Writes the bytes that open every haul connection.
    pub async fn write_magic(&mut self) -> Result<(), ConnectionError> {
        within(self.stall, &self.traffic, self.stream.write_all(&MAGIC)).await
    }

    /// Writes one message as a whole frame, into the write buffer (flushed
    /// when it fills, or by [`Self::flush`]).
    pub async fn send<M: Outgoing + ?Sized>(&mut self, message: &M) -> Result<(), ConnectionError> {
        self.frame.clear();
        message.encode(&mut self.frame);
        within(
            self.stall,
            &self.traffic,
            self.stream.write_all(&self.frame),
        )
        .await
    }

    /// The last control frame written, whole: how each side keeps the Hello
    /// or Welcome it sent for the handshake.
    pub fn last_sent(&self) -> &[u8] {
        &self.frame
    }

    /// Writes the header of a data frame of `len` bytes; its payload
    /// follows through [`Connection::data_writer`].
    pub async fn write_data_header(&mut self, kind: Kind, len: u32) -> Result<(), ConnectionError> {
        let header = haul::data_header(kind, len);
        within(self.stall, &self.traffic, self.stream.write_all(&header)).await
    }

    /// Writes out everything buffered.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        within(self.stall, &self.traffic, self.stream.flush()).await
    }
}

/// Runs a write, giving up once `stall` (if any) passes with no byte
/// crossing in `traffic`.
async fn within(
    stall: Option<Duration>,
    traffic: &Traffic,
    writing: impl Future<Output = io::Result<()>>,
) -> Result<(), ConnectionError> {
    match stall {
        None => Ok(writing.await?),
        Some(stall) => match unless_silent(traffic, stall, writing).await {
            None => Err(ConnectionError::Stalled(stall)),
            Some(result) => Ok(result?),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::haul::{
        FailCode, MAX_CONTROL_LEN, Message, ReceiverMessage, SenderMessage,
    };
    use tokio::io::DuplexStream;

    const IDLE: Duration = Duration::from_secs(60);

    /// A connection over one end of an in-memory pipe.
    fn connection(stream: DuplexStream) -> Connection {
        let (reader, writer) = tokio::io::split(stream);
        Connection::new(Box::new(reader), 8192, Box::new(writer), 8192, IDLE)
    }

    /// A connection over one end of an in-memory pipe, and the other end.
    fn pair() -> (Connection, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        (connection(ours), theirs)
    }

    fn frame(message: &Message<'_>) -> Vec<u8> {
        let mut bytes = Vec::new();
        message.encode(&mut bytes);
        bytes
    }

    #[tokio::test]
    async fn messages_cross_both_ways_and_the_payload_buffer_is_reused() {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (mut ours, mut theirs) = (connection(ours), connection(theirs));
        for reason in ["first", "a longer second reason", "3"] {
            ours.send(&Message::Error {
                code: FailCode::Other,
                message: reason,
            })
            .await
            .unwrap();
        }
        ours.flush().await.unwrap();
        for expected in ["first", "a longer second reason", "3"] {
            let message: Message<'_> = theirs.read_message().await.unwrap();
            assert_eq!(
                message,
                Message::Error {
                    code: FailCode::Other,
                    message: expected
                }
            );
        }
        assert_eq!(
            theirs.last_frame(),
            frame(&Message::Error {
                code: FailCode::Other,
                message: "3"
            })
        );
        assert_eq!(
            ours.last_sent(),
            frame(&Message::Error {
                code: FailCode::Other,
                message: "3"
            })
        );
        let (reader, _) = theirs.halves();
        assert!(
            reader.payload.capacity() < 64,
            "one buffer for all three frames, sized for the largest"
        );
    }

    #[tokio::test]
    async fn a_frame_over_its_limit_is_refused_before_anything_is_allocated() {
        let (mut conn, mut peer) = pair();
        let mut header = vec![Kind::Offer as u8];
        header.extend_from_slice(&(MAX_CONTROL_LEN + 1).to_be_bytes());
        peer.write_all(&header).await.unwrap();
        let error = conn.read_message::<Message<'_>>().await.unwrap_err();
        assert!(
            matches!(
                error,
                ConnectionError::Frame(DecodeError::TooLong {
                    kind: Kind::Offer,
                    ..
                })
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!(
                "bad frame: Offer frame of {} bytes is over the limit of {MAX_CONTROL_LEN}",
                MAX_CONTROL_LEN + 1
            )
        );
        assert_eq!(conn.reader.payload.capacity(), 0, "nothing was allocated");
    }

    #[tokio::test]
    async fn a_message_from_the_wrong_side_is_refused_and_named() {
        let (mut conn, mut peer) = pair();
        let receipt = Message::Receipt {
            size: 1,
            hash: [0; 32],
            stored_as: "x",
        };
        peer.write_all(&frame(&receipt)).await.unwrap();
        peer.write_all(&frame(&Message::BatchEnd)).await.unwrap();
        peer.write_all(&frame(&Message::BatchEnd)).await.unwrap();
        let error = conn.read_message::<SenderMessage<'_>>().await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "bad frame: Receipt is not a message a sender sends"
        );
        let error = conn
            .read_message::<ReceiverMessage<'_>>()
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "bad frame: BatchEnd is not a message a receiver sends"
        );
        let message: SenderMessage<'_> = conn.read_message().await.unwrap();
        assert_eq!(message, SenderMessage::BatchEnd);
    }

    #[tokio::test]
    async fn file_data_where_a_message_is_due_is_refused_before_its_payload() {
        let (mut conn, mut peer) = pair();
        peer.write_all(&haul::data_header(Kind::Data, haul::MAX_DATA_LEN))
            .await
            .unwrap();
        let error = conn.read_message::<Message<'_>>().await.unwrap_err();
        assert!(
            matches!(error, ConnectionError::DataOutsideFile),
            "{error:?}"
        );
        assert_eq!(conn.reader.payload.capacity(), 0, "nothing was allocated");
    }

    #[tokio::test]
    async fn a_peer_that_closes_says_where_in_a_frame() {
        let whole = frame(&Message::Error {
            code: FailCode::Other,
            message: "ten bytes!",
        });
        for (cut, expected) in [
            (0, "the peer closed the connection"),
            (
                3,
                "the peer closed the connection in the middle of a frame's header",
            ),
            (
                FRAME_HEADER_LEN + 4,
                "the peer closed the connection in the middle of the Error frame's payload",
            ),
        ] {
            let (mut conn, mut peer) = pair();
            peer.write_all(&whole[..cut]).await.unwrap();
            drop(peer);
            let error = conn.read_message::<Message<'_>>().await.unwrap_err();
            assert_eq!(error.to_string(), expected, "cut after {cut} bytes");
        }
    }

    /// Time stands still until every task waits; then the runtime moves it
    /// to the next deadline, so the idle limit passes without a real wait.
    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_after_the_idle_limit() {
        let (mut conn, mut peer) = pair();
        peer.write_all(&[Kind::Bye as u8, 0]).await.unwrap();
        let error = conn.read_message::<Message<'_>>().await.unwrap_err();
        assert!(
            matches!(error, ConnectionError::Idle(wait) if wait == IDLE),
            "{error:?}"
        );
        drop(peer);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_stalls_a_bounded_writer() {
        let (ours, theirs) = tokio::io::duplex(64);
        let mut conn = connection(ours);
        conn.bound_writes(Duration::from_secs(5));
        let reason = "x".repeat(100_000);
        let error = async {
            conn.send(&Message::Error {
                code: FailCode::Other,
                message: &reason,
            })
            .await?;
            conn.flush().await
        }
        .await
        .unwrap_err();
        assert!(
            matches!(error, ConnectionError::Stalled(wait) if wait == Duration::from_secs(5)),
            "{error:?}"
        );
        drop(theirs);
    }

    /// A frame whose bytes trickle in, and one whose bytes the peer takes
    /// slowly, each cross whole however many limits that takes: the limits
    /// are on silence, not on a frame's time.
    #[tokio::test(start_paused = true)]
    async fn a_slow_peer_is_never_taken_for_a_silent_one() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut conn = connection(ours);
        let limit = Duration::from_secs(5);
        conn.set_idle(limit);
        conn.bound_writes(limit);
        let reason = "x".repeat(50_000);
        let sent = frame(&Message::Error {
            code: FailCode::Other,
            message: &reason,
        });
        let total = sent.len() + FRAME_HEADER_LEN + reason.len();
        let mut bytes = sent.clone();
        let peer = tokio::spawn(async move {
            // Time here is tokio's paused clock: exact, not measured.
            let started = tokio::time::Instant::now();
            while !bytes.is_empty() {
                tokio::time::sleep(limit / 2).await;
                let piece: Vec<u8> = bytes.drain(..bytes.len().min(1024)).collect();
                theirs.write_all(&piece).await.unwrap();
            }
            let mut echoed = Vec::new();
            while echoed.len() < total {
                tokio::time::sleep(limit / 2).await;
                let mut piece = [0u8; 1024];
                match theirs.read(&mut piece).await.unwrap() {
                    0 => break,
                    read => echoed.extend_from_slice(&piece[..read]),
                }
            }
            (echoed, started.elapsed())
        });
        let Message::Error { message, .. } = conn.read_message::<Message<'_>>().await.unwrap()
        else {
            panic!("not the Error frame");
        };
        assert_eq!(message, reason);
        conn.send(&Message::Error {
            code: FailCode::Other,
            message: &reason,
        })
        .await
        .unwrap();
        // File bytes after their header, bounded by the idle limit.
        conn.write_data_header(Kind::Data, reason.len() as u32)
            .await
            .unwrap();
        let written = conn.write_data(reason.as_bytes()).await;
        assert!(matches!(written, Some(Ok(()))), "{written:?}");
        conn.flush().await.unwrap();
        let (echoed, took) = peer.await.unwrap();
        let mut expected = sent.clone();
        expected.extend_from_slice(&haul::data_header(Kind::Data, reason.len() as u32));
        expected.extend_from_slice(reason.as_bytes());
        assert_eq!(echoed, expected);
        // Each way took many limits.
        assert!(took > 20 * limit, "{took:?}");
    }
}
