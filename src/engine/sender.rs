//! The sender of a session: files offered in batches, each streamed,
//! verified by BLAKE3 at the other end and acknowledged by a receipt. Run
//! by `haul send` (the client pushing, `send::haul`) and by a server
//! answering a Get (`server::get`), over a connection whose opening is
//! done; what it sends comes from a walk of local paths or of a store.

use std::collections::VecDeque;
use std::io::SeekFrom;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

use super::{Event, Summary};
use crate::connection::{Connection, ConnectionError, FrameReader, FrameWriter};
use crate::protocol::haul::{
    self, Answer, EntryKind, FailCode, Hash, Kind, MAX_DATA_LEN, Offer, ReceiverMessage,
    SenderMessage,
};
use crate::send::walk::{Entry, Source, Walked};
use crate::send::{SendError, unreadable};
use crate::transfer::{FileSource, PumpError, SMALL_FILE};

// A small file, read whole, goes out as one Data frame.
const _: () = assert!(SMALL_FILE <= MAX_DATA_LEN as u64);

/// Most entries offered in one batch.
const BATCH_ENTRIES: usize = 256;
/// A batch closes once its files add up to this much, so that receipts, which
/// come at the end of a batch, are never far behind.
const BATCH_BYTES: u64 = 256 * 1024 * 1024;

/// Files with at least this many bytes left to send are read in chunks of
/// [`MAX_DATA_LEN`]; shorter ones in [`SHORT_CHUNK`]s.
const LONG_TRANSFER: u64 = 64 * 1024 * 1024;
/// The chunk for a shorter transfer. The reading thread holds up to four
/// chunks, all fresh memory in a new process, so every `haul send` pays
/// their size in page faults however little it sends; larger chunks save
/// calls per byte, which pays that back only over a long transfer.
const SHORT_CHUNK: usize = 256 * 1024;

/// The chunk to read a file in when `left` bytes of it are to be sent.
fn chunk_len_for(left: u64) -> usize {
    if left >= LONG_TRANSFER {
        MAX_DATA_LEN as usize
    } else {
        SHORT_CHUNK
    }
}

pub(crate) struct Sender {
    /// The server's address, to name it when it turns out not to be haul.
    pub(crate) to: String,
    /// How long the server has to answer the Hello.
    pub(crate) reply: Duration,
    /// The file whose bytes are going out, to name it if the connection
    /// breaks meanwhile.
    pub(crate) in_flight: Option<String>,
    /// Whether that file is a stream, which the server never keeps to
    /// resume: running the send again sends it from its start.
    pub(crate) in_flight_is_stream: bool,
    /// The connection to the server; its reads wait at most `--idle-timeout`.
    pub(crate) conn: Connection,
    pub(crate) summary: Summary,
    /// Present once the server granted compression.
    pub(crate) compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Where each small file is read whole, reused from file to file.
    pub(crate) small_file: Vec<u8>,
    /// The server's address, once connected.
    pub(crate) peer: Option<std::net::SocketAddr>,
}

/// zstd's default level: fast, and most of the gain.
pub(crate) const ZSTD_LEVEL: i32 = 3;

/// A file the server asked for, and what was sent of it.
struct Sending {
    entry: Entry,
    offset: u64,
}

/// A file whose bytes went out, waiting for its receipt.
struct Streamed {
    path: String,
    hash: Hash,
    /// Why the local side could not send all it announced, if it could not.
    local_failure: Option<String>,
}

/// Cuts the walk into batches, putting first the files to offer again
/// with their hash, because the server holds a file of their name and size.
pub(crate) struct Batches<'a> {
    walked: Box<dyn Iterator<Item = Walked> + Send + 'a>,
    to_compare: VecDeque<Entry>,
}

impl<'a> Batches<'a> {
    /// Batches of what `walked` yields.
    pub(crate) fn new(walked: impl Iterator<Item = Walked> + Send + 'a) -> Batches<'a> {
        Batches {
            walked: Box::new(walked),
            to_compare: VecDeque::new(),
        }
    }

    /// The next batch; empty once everything was offered. What the walk
    /// cannot send or passes over is counted and reported here.
    fn next(&mut self, summary: &mut Summary, on_event: &mut impl FnMut(Event<'_>)) -> Vec<Entry> {
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        while batch.len() < BATCH_ENTRIES && batch_bytes < BATCH_BYTES {
            let entry = match self.to_compare.pop_front() {
                Some(entry) => entry,
                None => match self.walked.next() {
                    None => break,
                    Some(Walked::Entry(entry)) => entry,
                    Some(Walked::Unsendable { path, reason }) => {
                        summary.failed += 1;
                        on_event(Event::Failed {
                            path: &path,
                            reason: &reason,
                        });
                        continue;
                    }
                    Some(Walked::Skipped { path, reason }) => {
                        summary.skipped += 1;
                        on_event(Event::Skipped {
                            path: &path,
                            reason: &reason,
                        });
                        continue;
                    }
                },
            };
            batch_bytes += match (entry.kind, entry.size) {
                (EntryKind::Directory, _) => 0,
                (EntryKind::File, Some(size)) => size,
                // A stream of unknown length closes the batch.
                (EntryKind::File, None) => BATCH_BYTES,
            };
            batch.push(entry);
        }
        batch
    }
}

/// Sends a batch's Offer frames and its BatchEnd, and flushes them;
/// nothing for an empty batch.
async fn offer_batch(writer: &mut FrameWriter, batch: &[Entry]) -> Result<(), ConnectionError> {
    if batch.is_empty() {
        return Ok(());
    }
    for entry in batch {
        let offer = Offer {
            kind: entry.kind,
            size: entry.size,
            hash: entry.hash,
            mtime: entry.mtime,
            mode: entry.mode,
            path: entry.path.as_bytes(),
        };
        writer.send(&SenderMessage::Offer(offer)).await?;
    }
    writer.send(&SenderMessage::BatchEnd).await?;
    writer.flush().await
}

/// Sends what `walked` yields over a connection whose opening is done, as
/// the sender of a session, then says goodbye: how a server answers a
/// client's Get, with the code `haul send` pushes with. `compress` says
/// whether zstd was granted.
pub(crate) async fn send_over(
    conn: Connection,
    peer: String,
    compress: bool,
    walked: impl Iterator<Item = Walked> + Send,
    mut on_event: impl FnMut(Event<'_>) + Send,
    cut: impl FnOnce() -> Option<String>,
) -> (Connection, Result<Summary, SendError>) {
    let compressor = match compress.then(|| zstd::bulk::Compressor::new(ZSTD_LEVEL)) {
        None => None,
        Some(Ok(compressor)) => Some(compressor),
        Some(Err(error)) => return (conn, Err(error.into())),
    };
    let mut session = Sender {
        to: peer,
        reply: conn.idle(),
        in_flight: None,
        in_flight_is_stream: false,
        conn,
        summary: Summary::default(),
        compressor,
        small_file: Vec::new(),
        peer: None,
    };
    let mut batches = Batches {
        walked: Box::new(walked),
        to_compare: VecDeque::new(),
    };
    let mut outcome = session.send_batches(&mut batches, &mut on_event).await;
    if outcome.is_ok() {
        // A walk that could not give everything ends the session with its
        // reason, not a Bye: the receiver must not take its copy as whole.
        outcome = match cut() {
            Some(reason) => Err(SendError::Protocol(reason)),
            None => session.goodbye().await,
        };
    }
    (session.conn, outcome.map(|()| session.summary))
}

impl Sender {
    /// Offers every batch and sends what the server asks for. The next
    /// batch's offers go out while this one's receipts come in, so the
    /// server finds them waiting once it has sent its receipts, and the walk
    /// of the next batch happens while the server stores this one.
    pub(crate) async fn send_batches(
        &mut self,
        batches: &mut Batches<'_>,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), SendError> {
        let mut batch = batches.next(&mut self.summary, on_event);
        offer_batch(self.conn.halves().1, &batch).await?;
        while !batch.is_empty() {
            let sending = self
                .read_answers(batch, &mut batches.to_compare, on_event)
                .await?;
            let mut streamed = Vec::with_capacity(sending.len());
            for file in sending {
                let (hash, local_failure) = self.stream_file(&file, on_event).await?;
                streamed.push(Streamed {
                    path: file.entry.path,
                    hash,
                    local_failure,
                });
            }
            self.conn.flush().await?;

            batch = batches.next(&mut self.summary, on_event);
            // Written and read at once: neither side may wait for the other
            // to read before it reads, or both could stop with full buffers.
            let (reader, writer) = self.conn.halves();
            let send_offers = async { offer_batch(writer, &batch).await.map_err(SendError::from) };
            let receipts = read_receipts(reader, streamed, &mut self.summary, on_event);
            tokio::try_join!(send_offers, receipts)?;
            on_event(Event::BatchSettled);
        }
        Ok(())
    }

    /// Reads the answers to a batch's offers: the files the server asks for
    /// come back; files to offer again, with their hash, go to `to_compare`.
    async fn read_answers(
        &mut self,
        batch: Vec<Entry>,
        to_compare: &mut VecDeque<Entry>,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<Vec<Sending>, SendError> {
        let mut sending = Vec::new();
        for mut entry in batch {
            match self.conn.read_message().await? {
                // Bytes from `offset` to the end: an offset past it (or any
                // but 0 for a stream) would be hashed up to and sent nothing.
                ReceiverMessage::Answer(Answer::Send { offset })
                    if entry.kind == EntryKind::File
                        && entry.size.map_or(offset == 0, |size| offset <= size) =>
                {
                    sending.push(Sending { entry, offset });
                }
                ReceiverMessage::Answer(Answer::Send { offset })
                    if entry.kind == EntryKind::File =>
                {
                    return Err(SendError::Protocol(format!(
                        "asked for {} from byte {offset}, past its end ({} bytes)",
                        entry.path,
                        entry
                            .size
                            .map_or("unknown".to_owned(), |size| size.to_string())
                    )));
                }
                // The server holds a file of this name and size; whether it
                // is this one, it says only once shown this one's hash.
                ReceiverMessage::Answer(Answer::Compare)
                    if entry.kind == EntryKind::File && entry.hash.is_none() =>
                {
                    match local_hash(&entry).await {
                        Ok(hash) => {
                            entry.hash = Some(hash);
                            to_compare.push_back(entry);
                        }
                        Err(reason) => {
                            self.summary.failed += 1;
                            on_event(Event::Failed {
                                path: &entry.path,
                                reason: &reason,
                            });
                        }
                    }
                }
                ReceiverMessage::Answer(Answer::Same { stored_as }) if entry.hash.is_some() => {
                    self.summary.already_there += 1;
                    on_event(Event::AlreadyThere {
                        path: &entry.path,
                        stored_as,
                        bytes: entry.size.unwrap_or(0),
                    });
                }
                ReceiverMessage::Answer(Answer::Created) if entry.kind == EntryKind::Directory => {}
                ReceiverMessage::Answer(Answer::Refused { reason, .. }) => {
                    self.summary.failed += 1;
                    on_event(Event::Failed {
                        path: &entry.path,
                        reason: &format!("refused by the server: {}", reason),
                    });
                }
                other => return Err(unexpected(&other, "an answer fitting the offer")),
            }
        }
        Ok(sending)
    }

    /// Streams one file from its offset as Data frames, then its FileEnd.
    /// Returns the hash of the whole file and, if the local side could not
    /// produce the bytes it announced, why.
    async fn stream_file(
        &mut self,
        file: &Sending,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(Hash, Option<String>), SendError> {
        on_event(Event::Started {
            path: &file.entry.path,
            size: file.entry.size,
            offset: file.offset,
        });
        self.in_flight = Some(file.entry.path.clone());
        self.in_flight_is_stream = matches!(file.entry.source, Source::Stdin | Source::Stream(_));
        let mut hasher = blake3::Hasher::new();
        // Set when the file changed while it was read: what went out may
        // mix two versions of it, so its FileEnd withdraws it.
        let mut changed = false;
        let local_failure = match &file.entry.source {
            source @ (Source::File(_) | Source::Stored { .. })
                if file.offset == 0 && file.entry.size.is_some_and(|size| size <= SMALL_FILE) =>
            {
                // A small file is read whole, here: the runtime's hand-offs
                // to a file thread would cost more than the read itself.
                let size = file.entry.size.unwrap_or(0);
                let mut buffer = std::mem::take(&mut self.small_file);
                match read_small(source, size, &mut buffer) {
                    Ok((filled, unchanged)) => {
                        // Sent from the buffer it was read into, as one Data
                        // frame: a copy into a chunk buffer of its own would
                        // cost two fresh, zeroed buffers per file.
                        let sent = if filled == 0 {
                            Ok(())
                        } else {
                            self.send_chunk(&buffer[..filled], &mut hasher, on_event)
                                .await
                        };
                        self.small_file = buffer;
                        sent?;
                        if (filled as u64) < size {
                            Some(format!("{} shrank while it was being sent", source.label()))
                        } else {
                            changed = !unchanged;
                            changed.then(|| changed_while_sent(source))
                        }
                    }
                    Err(error) => {
                        self.small_file = buffer;
                        Some(format!(
                            "cannot read {}: {}",
                            source.label(),
                            unreadable(&error)
                        ))
                    }
                }
            }
            source @ (Source::File(_) | Source::Stored { .. }) => {
                match open_stamped(source).await {
                    Ok((mut opened, before)) => {
                        let size = file.entry.size.unwrap_or(0);
                        let failure = self
                            .send_known_length(
                                &mut opened,
                                file.offset,
                                size,
                                &mut hasher,
                                on_event,
                            )
                            .await?;
                        match failure {
                            Some(PumpError::EarlyEof { .. }) => {
                                Some(format!("{} shrank while it was being sent", source.label()))
                            }
                            Some(other) => Some(format!("cannot read {}: {other}", source.label())),
                            None => match opened.metadata().await {
                                Ok(after) => {
                                    changed = Stamp::of(&after) != before;
                                    changed.then(|| changed_while_sent(source))
                                }
                                Err(error) => Some(format!(
                                    "cannot read {}: {}",
                                    source.label(),
                                    unreadable(&error)
                                )),
                            },
                        }
                    }
                    Err(error) => Some(format!(
                        "cannot read {}: {}",
                        source.label(),
                        unreadable(&error)
                    )),
                }
            }
            Source::Stdin => {
                self.send_chunks(&mut tokio::io::stdin(), None, &mut hasher, on_event)
                    .await?;
                None
            }
            Source::Stream(path) => match tokio::fs::File::open(path).await {
                Ok(mut source) => {
                    self.send_chunks(&mut source, None, &mut hasher, on_event)
                        .await?;
                    None
                }
                Err(error) => Some(format!(
                    "cannot read {}: {}",
                    path.display(),
                    unreadable(&error)
                )),
            },
            Source::Directory => unreachable!("directories are never asked for data"),
        };
        let mut hash = *hasher.finalize().as_bytes();
        if changed {
            hash = haul::withdrawn(&hash);
        }
        self.conn.send(&SenderMessage::FileEnd { hash }).await?;
        self.in_flight = None;
        Ok((hash, local_failure))
    }

    /// Sends bytes `offset..size` of `source`, after hashing `..offset`
    /// locally. If the held part cannot be read, nothing is sent and the
    /// reason returned: the server then fails the file for its missing bytes
    /// and the session goes on.
    async fn send_known_length(
        &mut self,
        source: &mut tokio::fs::File,
        offset: u64,
        size: u64,
        hasher: &mut blake3::Hasher,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<Option<PumpError>, SendError> {
        if offset > 0 {
            let mut held = source.take(offset);
            let mut buffer = vec![0u8; 256 * 1024];
            loop {
                match held.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(read) => {
                        hasher.update(&buffer[..read]);
                    }
                    Err(error) => {
                        return Ok(Some(PumpError::Read {
                            moved: 0,
                            source: error,
                        }));
                    }
                }
            }
            if let Err(error) = source.seek(SeekFrom::Start(offset)).await {
                return Ok(Some(PumpError::Read {
                    moved: 0,
                    source: error,
                }));
            }
        }
        if self.compressor.is_some() {
            let left = size - offset;
            let sent = self
                .send_chunks(source, Some(left), &mut *hasher, on_event)
                .await?;
            return Ok((sent < left).then_some(PumpError::EarlyEof {
                moved: sent,
                expected: left,
            }));
        }
        // Reading and hashing run on a thread of their own; this task frames
        // and sends. A chunk is framed only once it has been read whole, so
        // a file that fails or shrinks leaves the stream in step.
        let left = size - offset;
        let file = source.try_clone().await?.into_std().await;
        let mut chunks = FileSource::start(
            file,
            left,
            chunk_len_for(left),
            Some(std::mem::take(hasher)),
        );
        let mut sent = 0u64;
        let mut failure = None;
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    failure = Some(PumpError::Read {
                        moved: sent,
                        source: error,
                    });
                    break;
                }
            };
            self.write_data_header(Kind::Data, chunk.len() as u32)
                .await?;
            match self.conn.write_data(&chunk).await {
                None => return Err(SendError::Pump(PumpError::Idle(self.conn.idle()))),
                Some(result) => result.map_err(|source| PumpError::Write {
                    moved: sent,
                    source,
                })?,
            }
            sent += chunk.len() as u64;
            self.summary.bytes_sent += chunk.len() as u64;
            self.summary.wire_bytes += chunk.len() as u64;
            on_event(Event::Progress {
                bytes: chunk.len() as u64,
                wire: chunk.len() as u64,
            });
            chunks.recycle(chunk);
        }
        if let Some(hashed) = chunks.finish().await? {
            *hasher = hashed;
        }
        Ok(failure.or((sent < left).then_some(PumpError::EarlyEof {
            moved: sent,
            expected: left,
        })))
    }

    /// Hashes and sends one chunk of a file, and counts it.
    async fn send_chunk(
        &mut self,
        chunk: &[u8],
        hasher: &mut blake3::Hasher,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), SendError> {
        hasher.update(chunk);
        let wire = self.write_chunk(chunk).await?;
        on_event(Event::Progress {
            bytes: chunk.len() as u64,
            wire,
        });
        self.summary.bytes_sent += chunk.len() as u64;
        self.summary.wire_bytes += wire;
        Ok(())
    }

    /// Sends what `source` yields, up to `limit` bytes or its end, in
    /// chunks that are compressed when the server granted it. Returns the
    /// number of bytes read from `source`.
    async fn send_chunks(
        &mut self,
        source: &mut (impl AsyncRead + Unpin),
        limit: Option<u64>,
        hasher: &mut blake3::Hasher,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<u64, SendError> {
        let buffer_len = limit.map_or(MAX_DATA_LEN as usize, |limit| {
            usize::try_from(limit).map_or(MAX_DATA_LEN as usize, |limit| {
                limit.min(MAX_DATA_LEN as usize)
            })
        });
        let mut buffer = vec![0u8; buffer_len];
        let mut total = 0u64;
        loop {
            let want = limit.map_or(buffer.len(), |limit| {
                usize::try_from(limit - total).map_or(buffer.len(), |left| left.min(buffer.len()))
            });
            let mut filled = 0;
            while filled < want {
                match source.read(&mut buffer[filled..want]).await? {
                    0 => break,
                    read => filled += read,
                }
            }
            if filled == 0 {
                return Ok(total);
            }
            self.send_chunk(&buffer[..filled], hasher, on_event).await?;
            total += filled as u64;
        }
    }

    /// Writes one chunk as a Data frame, or as a DataZstd frame when
    /// compression is on and actually makes it smaller. Returns the length
    /// of the frame's payload: the chunk's bytes as they went on the wire.
    async fn write_chunk(&mut self, chunk: &[u8]) -> Result<u64, SendError> {
        if let Some(compressor) = self.compressor.as_mut() {
            let packed = compressor.compress(chunk)?;
            if packed.len() < chunk.len() {
                self.write_data_header(Kind::DataZstd, packed.len() as u32)
                    .await?;
                self.write_data(&packed).await?;
                return Ok(packed.len() as u64);
            }
        }
        self.write_data_header(Kind::Data, chunk.len() as u32)
            .await?;
        self.write_data(chunk).await?;
        Ok(chunk.len() as u64)
    }

    /// Writes a frame's file bytes; fails if the receiver takes none of
    /// them for the connection's idle time.
    async fn write_data(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        match self.conn.write_data(bytes).await {
            None => Err(SendError::Pump(PumpError::Idle(self.conn.idle()))),
            Some(result) => Ok(result?),
        }
    }

    async fn write_data_header(&mut self, kind: Kind, len: u32) -> Result<(), SendError> {
        Ok(self.conn.write_data_header(kind, len).await?)
    }

    /// A write that failed because the server hung up usually has a reason
    /// waiting in an Error frame: prefer it to the bare connection error.
    pub(crate) async fn server_reason_for(&mut self, error: SendError) -> SendError {
        let hung_up = match &error {
            SendError::Pump(PumpError::Write { .. }) => true,
            SendError::Io(io) => matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            _ => false,
        };
        if !hung_up {
            return error;
        }
        const REASON_WAIT: Duration = Duration::from_secs(2);
        let idle = self.conn.idle();
        self.conn.set_idle(REASON_WAIT);
        let reason = loop {
            match self.conn.read_message().await {
                Ok(ReceiverMessage::Error { code, message }) => {
                    break Some(server_error(code, message, SendError::Server));
                }
                Ok(_) => continue,
                Err(_) => break None,
            }
        };
        self.conn.set_idle(idle);
        reason.unwrap_or(error)
    }

    pub(crate) async fn goodbye(&mut self) -> Result<(), SendError> {
        self.conn.send(&SenderMessage::Bye).await?;
        self.conn.shutdown().await?;
        let idle = self.conn.idle();
        match self.conn.drain(idle).await {
            Err(ConnectionError::Idle(_)) => Err(SendError::Silent(idle)),
            Err(ConnectionError::Io(error)) => Err(SendError::NotConfirmed(error)),
            Err(other) => Err(other.into()),
            Ok(0) => Ok(()),
            Ok(_) => Err(SendError::Protocol(
                "the server sent bytes after goodbye".into(),
            )),
        }
    }
}

/// Reads one receipt (or failure) per streamed file, in order, and reports
/// each.
async fn read_receipts(
    reader: &mut FrameReader,
    streamed: Vec<Streamed>,
    summary: &mut Summary,
    on_event: &mut impl FnMut(Event<'_>),
) -> Result<(), SendError> {
    for file in streamed {
        let path = file.path.as_str();
        match reader.read_message().await? {
            ReceiverMessage::Receipt {
                size,
                hash: stored_hash,
                stored_as,
            } if stored_hash == file.hash => {
                summary.stored += 1;
                on_event(Event::Stored {
                    path,
                    stored_as: Some(stored_as),
                    bytes: size,
                    hash: Some(&file.hash),
                });
            }
            ReceiverMessage::Receipt { .. } => {
                return Err(SendError::Protocol(format!(
                    "the receipt for {path} has the wrong hash"
                )));
            }
            ReceiverMessage::Failed { code, reason } => {
                summary.failed += 1;
                let reason = file.local_failure.unwrap_or_else(|| {
                    let reason = reason.to_owned();
                    let hint = match code {
                        FailCode::NoSpace => "; the server's disk is full",
                        _ => "",
                    };
                    format!("the server did not store it: {reason}{hint}")
                });
                on_event(Event::Failed {
                    path,
                    reason: &reason,
                });
            }
            other => return Err(unexpected(&other, "a receipt")),
        }
    }
    Ok(())
}

/// What the server's Error frame means for the send: by its code, a refusal
/// for this client's rights, or else `other`, with the server's words.
pub(crate) fn server_error(
    code: FailCode,
    message: &str,
    other: fn(String) -> SendError,
) -> SendError {
    let message = message.to_owned();
    match code {
        FailCode::NotAllowed => SendError::NotAllowed(message),
        _ => other(message),
    }
}

fn unexpected(message: &ReceiverMessage<'_>, wanted: &str) -> SendError {
    match message {
        ReceiverMessage::Error { code, message } => server_error(*code, message, SendError::Server),
        other => SendError::Protocol(format!("expected {wanted}, got {other:?}")),
    }
}

/// What tells that a file changed: its size and its modification and change
/// times, from the open descriptor. Taken when a file is opened for sending
/// and again after its last byte is read; if the two differ, what was sent
/// may mix bytes from before and after an edit, and must not be stored. A
/// change within one tick of the file system's clock that keeps the size
/// goes unseen, as it does for rsync and tar.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: metadata.size(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// Opens a file to send and takes its [`Stamp`].
async fn open_stamped(source: &Source) -> std::io::Result<(tokio::fs::File, Stamp)> {
    let source = source.clone();
    let file = tokio::task::spawn_blocking(move || source.open())
        .await
        .map_err(std::io::Error::other)??;
    let stamp = Stamp::of(&file.metadata()?);
    Ok((tokio::fs::File::from_std(file), stamp))
}

/// Why a file that changed while it was read is not stored.
fn changed_while_sent(source: &Source) -> String {
    format!(
        "{} changed while it was being sent; nothing was stored, run the command again",
        source.label()
    )
}

/// Reads the first `size` bytes of the file at `path` (fewer if it shrank)
/// into the start of `buffer`; returns how many, and whether the file's
/// [`Stamp`] after the read is the one it had when opened. With the size
/// known from the walk, one read takes the whole file: `std::fs::read`
/// reads once more to see the end, and `read_to_end` reads at most 8 KiB
/// at first. The buffer is reused from file to file and only grows, so it
/// is zeroed once rather than per file.
fn read_small(source: &Source, size: u64, buffer: &mut Vec<u8>) -> std::io::Result<(usize, bool)> {
    let mut file = source.open()?;
    let before = Stamp::of(&file.metadata()?);
    let size = usize::try_from(size).unwrap_or(0);
    if buffer.len() < size {
        buffer.resize(size, 0);
    }
    let mut filled = 0;
    while filled < size {
        match std::io::Read::read(&mut file, &mut buffer[filled..size]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    let unchanged = Stamp::of(&file.metadata()?) == before;
    Ok((filled, unchanged))
}

/// The BLAKE3 hash of a local file, to offer it again for comparison with
/// the server's copy; the reason, in words, when it cannot be read.
async fn local_hash(entry: &Entry) -> Result<Hash, String> {
    if !matches!(entry.source, Source::File(_) | Source::Stored { .. }) {
        return Err("only files can be compared".into());
    }
    let source = entry.source.clone();
    let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<Hash> {
        use crate::storage::Backend;
        // A store keeps the hashes of its files: an unchanged one is read
        // at most once however often it is compared.
        if let Source::Stored { store, path } = &source {
            return Ok(*store.hash_existing(path)?.as_bytes());
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(source.open()?)?;
        Ok(*hasher.finalize().as_bytes())
    })
    .await
    .unwrap_or_else(|error| Err(std::io::Error::other(error)));
    hashed.map_err(|error| {
        format!(
            "cannot read {}: {}",
            entry.source.label(),
            unreadable(&error)
        )
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::protocol::haul::Mtime;

    fn entry(kind: EntryKind, path: &str, size: Option<u64>) -> Walked {
        Walked::Entry(Entry {
            source: match kind {
                EntryKind::File => Source::File(PathBuf::from(path)),
                EntryKind::Directory => Source::Directory,
            },
            path: path.to_owned(),
            kind,
            size,
            mtime: Mtime { secs: 0, nanos: 0 },
            mode: 0o644,
            hash: None,
        })
    }

    fn paths_of_batches(walked: Vec<Walked>) -> Vec<Vec<String>> {
        let mut batches = Batches {
            walked: Box::new(walked.into_iter()),
            to_compare: VecDeque::new(),
        };
        let mut summary = Summary::default();
        std::iter::from_fn(|| {
            let batch = batches.next(&mut summary, &mut |_| {});
            (!batch.is_empty()).then(|| batch.into_iter().map(|entry| entry.path).collect())
        })
        .collect()
    }

    #[test]
    fn a_small_file_is_read_into_the_reused_buffer_and_a_shrunk_one_reads_short() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("long");
        let short = dir.path().join("short");
        std::fs::write(&long, [7u8; 300]).unwrap();
        std::fs::write(&short, b"abc").unwrap();
        let mut buffer = Vec::new();
        assert_eq!(
            read_small(&Source::File(long.clone()), 300, &mut buffer).unwrap(),
            (300, true)
        );
        assert_eq!(buffer[..300], [7u8; 300]);
        // Announced as 10 bytes by the walk, 3 by the time it is read: the
        // 3 come first, and what the last file left behind them is not sent.
        assert_eq!(
            read_small(&Source::File(short.clone()), 10, &mut buffer).unwrap(),
            (3, true)
        );
        assert_eq!(&buffer[..3], b"abc");
        assert_eq!(buffer.len(), 300, "the buffer is reused, not shrunk");
        assert!(read_small(&Source::File(dir.path().join("gone")), 5, &mut buffer).is_err());
    }

    #[test]
    fn a_withdrawn_hash_differs_from_the_real_one_in_every_byte() {
        let hash = *blake3::hash(b"abc").as_bytes();
        let withdrawn = haul::withdrawn(&hash);
        // The example in PROTOCOL.md.
        assert_eq!(withdrawn[..4], [0x9b, 0xc8, 0x4c, 0x53]);
        assert!(hash.iter().zip(withdrawn).all(|(a, b)| *a != b));
    }

    #[test]
    fn only_a_long_transfer_reads_in_the_largest_chunks() {
        assert_eq!(chunk_len_for(20 * 1024 * 1024), SHORT_CHUNK);
        assert_eq!(chunk_len_for(LONG_TRANSFER - 1), SHORT_CHUNK);
        assert_eq!(chunk_len_for(LONG_TRANSFER), MAX_DATA_LEN as usize);
        assert!(SHORT_CHUNK <= MAX_DATA_LEN as usize);
    }

    #[test]
    fn folders_share_a_batch_with_their_files() {
        let mut walked = Vec::new();
        for dir in 0..3 {
            walked.push(entry(EntryKind::Directory, &format!("d{dir}"), None));
            for file in 0..2 {
                walked.push(entry(EntryKind::File, &format!("d{dir}/f{file}"), Some(10)));
            }
        }
        let batches = paths_of_batches(walked);
        assert_eq!(batches.len(), 1, "{batches:?}");
        assert_eq!(batches[0].len(), 9);
    }

    #[test]
    fn batches_close_at_their_entry_or_byte_limit_and_after_a_stream() {
        let mut walked: Vec<Walked> = (0..BATCH_ENTRIES + 1)
            .map(|index| entry(EntryKind::File, &format!("f{index}"), Some(1)))
            .collect();
        walked.push(entry(EntryKind::File, "big", Some(BATCH_BYTES)));
        walked.push(entry(EntryKind::File, "after-big", Some(1)));
        walked.push(entry(EntryKind::File, "-", None));
        walked.push(entry(EntryKind::File, "after-stream", Some(1)));
        let sizes: Vec<usize> = paths_of_batches(walked).iter().map(Vec::len).collect();
        assert_eq!(sizes, [BATCH_ENTRIES, 2, 2, 1]);
    }
}
