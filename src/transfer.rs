//! Moving file bytes: the one place for buffer sizing, idle timeouts,
//! early-EOF detection and hashing on the way.
//!
//! [`pump`] moves exactly N bytes from a reader to a writer (the sending
//! side: file to socket). [`receive`] moves exactly N bytes from a socket
//! into a [`FileSink`], which writes and hashes them on a blocking thread
//! so that the connection's task goes on reading meanwhile (the receiving
//! side of haul's protocol); that thread runs only while there are bytes to
//! write, never while the socket is silent. None of it knows names or
//! headers.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf,
};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::traffic::{Traffic, unless_silent};

/// Size of one pump buffer. Large enough that per-call overhead vanishes
/// next to the copy, small enough that thousands of connections fit in memory.
pub const CHUNK_LEN: usize = 256 * 1024;

/// Why the pump stopped before moving every byte.
#[derive(Debug, Error)]
pub enum PumpError {
    #[error("the connection ended after {moved} of {expected} bytes")]
    EarlyEof { moved: u64, expected: u64 },
    #[error("nothing moved for {}s", .0.as_secs())]
    Idle(Duration),
    #[error("reading failed after {moved} bytes: {source}")]
    Read { moved: u64, source: io::Error },
    #[error("writing failed after {moved} bytes: {source}")]
    Write { moved: u64, source: io::Error },
}

/// Copies exactly `len` bytes from `reader` to `writer`, then flushes it.
/// Fails if the reader ends early or either side makes no progress for `idle`.
/// `on_chunk` sees every chunk after it is written, to hash or count it.
pub async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    len: u64,
    idle: Duration,
    mut on_chunk: impl FnMut(&[u8]),
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buffer = vec![0u8; CHUNK_LEN.min(usize::try_from(len).unwrap_or(CHUNK_LEN))];
    let mut moved: u64 = 0;
    while moved < len {
        let want = usize::try_from(len - moved).map_or(buffer.len(), |left| left.min(buffer.len()));
        let read = match timeout(idle, reader.read(&mut buffer[..want])).await {
            Err(_) => return Err(PumpError::Idle(idle)),
            Ok(Err(source)) => return Err(PumpError::Read { moved, source }),
            Ok(Ok(0)) => {
                return Err(PumpError::EarlyEof {
                    moved,
                    expected: len,
                });
            }
            Ok(Ok(read)) => read,
        };
        // Each write is timed alone: one returns once any bytes are taken,
        // so a slow peer (or a rate limit) is never taken for a silent one.
        let mut written = 0;
        while written < read {
            match timeout(idle, writer.write(&buffer[written..read])).await {
                Err(_) => return Err(PumpError::Idle(idle)),
                Ok(Err(source)) => return Err(PumpError::Write { moved, source }),
                Ok(Ok(0)) => {
                    return Err(PumpError::Write {
                        moved,
                        source: io::ErrorKind::WriteZero.into(),
                    });
                }
                Ok(Ok(taken)) => written += taken,
            }
        }
        moved += read as u64;
        on_chunk(&buffer[..read]);
    }
    match timeout(idle, writer.flush()).await {
        Err(_) => Err(PumpError::Idle(idle)),
        Ok(Err(source)) => Err(PumpError::Write { moved, source }),
        Ok(Ok(())) => Ok(()),
    }
}

/// Chunks a [`FileSink`] may hold queued besides the one being written:
/// enough to keep reading while the disk works, few enough that memory per
/// connection stays small (at most `(SINK_DEPTH + 2) * CHUNK_LEN`).
const SINK_DEPTH: usize = 2;

/// The queue depth of the first sinks running at once, one per core (see
/// [`DeepQueues`]): at most `(DEEP_SINK_DEPTH + 2) * CHUNK_LEN` each. A
/// deeper queue absorbs longer stalls between the reading task and the
/// writer, which is what a lone large transfer waits on. Giving it to every
/// sink would cost a server with many clients 1 MiB more per connection for
/// nothing, since there the connections keep the cores busy anyway.
const DEEP_SINK_DEPTH: usize = 6;

/// Hands out a fixed number of deep-queue slots; a slot is free again once
/// its [`DeepQueue`] is dropped.
struct DeepQueues {
    in_use: AtomicUsize,
    limit: usize,
}

/// A claimed deep-queue slot.
struct DeepQueue<'a>(&'a DeepQueues);

impl DeepQueues {
    const fn new(limit: usize) -> DeepQueues {
        DeepQueues {
            in_use: AtomicUsize::new(0),
            limit,
        }
    }

    /// A slot, if one is free.
    fn claim(&self) -> Option<DeepQueue<'_>> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| DeepQueue(self))
    }
}

impl Drop for DeepQueue<'_> {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The process's deep-queue slots: one per core.
fn deep_queues() -> &'static DeepQueues {
    static QUEUES: OnceLock<DeepQueues> = OnceLock::new();
    QUEUES.get_or_init(|| {
        DeepQueues::new(std::thread::available_parallelism().map_or(1, |cores| cores.get()))
    })
}

/// Files up to this size are written by the connection's task itself: for
/// them, handing chunks to a thread costs more than the write.
pub const SMALL_FILE: u64 = 64 * 1024;

/// Writes chunks to a file, and hashes them, on a blocking thread (or, for a
/// small file, right away). The hasher (about 2 KiB) is boxed, so that
/// handing it into and out of a sink, at least once per file, moves a
/// pointer and not the hasher.
///
/// The thread runs only while there are chunks to write: it ends once the
/// queue is empty, and the next push starts another. A connection that
/// goes silent in the middle of a file so holds no thread of the blocking
/// pool, and the wait for room in the queue is done on the async task.
pub struct FileSink {
    /// Set for a large file: the queue its workers drain.
    queue: Option<Arc<SinkQueue>>,
    /// The worker started last; once it has ended, every queued chunk is
    /// written, since a worker is started only after the previous one
    /// decided to end.
    worker: Option<JoinHandle<()>>,
    /// Set for a small file: the file and hasher, used without a worker.
    inline: Option<(Arc<std::fs::File>, Option<Box<blake3::Hasher>>)>,
    /// Bytes written to the file without a worker.
    landed_inline: u64,
    /// Held for the sink's life if it got a deep queue.
    _deep: Option<DeepQueue<'static>>,
    /// A large file's chunk being filled, [`CHUNK_LEN`] long, and how many
    /// of its bytes are received: frames shorter than a chunk are gathered
    /// into one, so that the writer thread is woken once per chunk, not
    /// once per frame. Queued when full, or before anything else is.
    filling: Option<(Vec<u8>, usize)>,
}

/// What a large file's sink shares with its workers.
struct SinkQueue {
    file: Arc<std::fs::File>,
    /// Bytes its workers have written to the file.
    landed: AtomicU64,
    state: std::sync::Mutex<SinkState>,
    /// One permit per chunk that may be queued or being written: a push
    /// takes one, a worker gives it back once the chunk is written.
    /// Closed when a worker stops early, so that no push waits for ever.
    room: Semaphore,
}

struct SinkState {
    chunks: VecDeque<Vec<u8>>,
    /// Whether a worker is draining `chunks`. Decided under the same lock
    /// as the queue, so that exactly one worker writes at a time, in order.
    running: bool,
    /// Held here between workers; a running worker has it.
    hasher: Option<Box<blake3::Hasher>>,
    /// Buffers already written, to be filled again; at most one per permit.
    spare: Vec<Vec<u8>>,
    /// Why a worker stopped early; no chunk is written after it.
    failure: Option<io::Error>,
}

impl SinkQueue {
    fn state(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A worker's run: writes and hashes queued chunks until none is left.
    fn drain(&self) {
        // Closes the queue if this worker unwinds, so that pushes and the
        // sink's end fail instead of waiting for room that never comes.
        struct Unwinding<'a>(&'a Semaphore);
        impl Drop for Unwinding<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.close();
                }
            }
        }
        let _unwinding = Unwinding(&self.room);
        let mut hasher = self.state().hasher.take();
        loop {
            let chunk = {
                let mut state = self.state();
                match state.chunks.pop_front() {
                    Some(chunk) => chunk,
                    None => {
                        state.hasher = hasher;
                        state.running = false;
                        return;
                    }
                }
            };
            if let Some(hasher) = hasher.as_mut() {
                hasher.update(&chunk);
            }
            let written = self.file.as_ref().write_all(&chunk);
            if written.is_ok() {
                self.landed.fetch_add(chunk.len() as u64, Ordering::Release);
            }
            let mut state = self.state();
            if let Err(error) = written {
                state.failure = Some(error);
                state.chunks.clear();
                state.hasher = hasher;
                state.running = false;
                self.room.close();
                return;
            }
            state.spare.push(chunk);
            drop(state);
            self.room.add_permits(1);
        }
    }
}

impl FileSink {
    /// A sink for a file expected to be `len` bytes (if known): a worker
    /// thread for large files, direct writes for small ones.
    pub fn for_len(
        file: Arc<std::fs::File>,
        hasher: Option<Box<blake3::Hasher>>,
        len: Option<u64>,
    ) -> FileSink {
        match len {
            Some(len) if len <= SMALL_FILE => FileSink {
                queue: None,
                worker: None,
                inline: Some((file, hasher)),
                landed_inline: 0,
                _deep: None,
                filling: None,
            },
            _ => FileSink::start(file, hasher),
        }
    }

    /// A sink whose workers append to `file`, feeding `hasher` if given.
    pub fn start(file: Arc<std::fs::File>, hasher: Option<Box<blake3::Hasher>>) -> FileSink {
        let deep = deep_queues().claim();
        let depth = if deep.is_some() {
            DEEP_SINK_DEPTH
        } else {
            SINK_DEPTH
        };
        let queue = SinkQueue {
            file,
            landed: AtomicU64::new(0),
            state: std::sync::Mutex::new(SinkState {
                chunks: VecDeque::with_capacity(depth + 1),
                running: false,
                hasher,
                spare: Vec::new(),
                failure: None,
            }),
            // The queued chunks and the one being written.
            room: Semaphore::new(depth + 1),
        };
        FileSink {
            queue: Some(Arc::new(queue)),
            worker: None,
            inline: None,
            landed_inline: 0,
            _deep: deep,
            filling: None,
        }
    }

    /// A buffer of exactly `len` bytes to fill, recycled when one is spare.
    /// Its old contents stay: only the bytes filled are ever written out (a
    /// chunk is cut to what was received), so zeroing a recycled chunk
    /// would be a pass over it for nothing.
    fn buffer(&self, len: usize) -> Vec<u8> {
        let spare = self
            .queue
            .as_ref()
            .and_then(|queue| queue.state().spare.pop())
            .unwrap_or_default();
        sized(spare, len)
    }

    /// Queues a chunk, starting a worker if none is running; waits while
    /// the queue is full.
    async fn push(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        if let Some(written) = self.write_inline(&chunk) {
            return written;
        }
        let Some(queue) = &self.queue else {
            return Err(io::Error::other("the file writer already stopped"));
        };
        // Whether a worker must be started; `None` once one has failed.
        let start = match queue.room.acquire().await {
            Ok(permit) => {
                permit.forget();
                let mut state = queue.state();
                state.failure.is_none().then(|| {
                    state.chunks.push_back(chunk);
                    !std::mem::replace(&mut state.running, true)
                })
            }
            Err(_) => None,
        };
        match start {
            Some(true) => {
                let queue = Arc::clone(queue);
                self.worker = Some(tokio::task::spawn_blocking(move || queue.drain()));
                Ok(())
            }
            Some(false) => Ok(()),
            // A worker stopped early: it failed to write; say why.
            None => match self.settle().await {
                Err(error) => Err(error),
                Ok(_) => Err(io::Error::other("the file writer stopped")),
            },
        }
    }

    /// For a small file's sink, hashes and writes `bytes` right away;
    /// `None` for a sink with a worker.
    fn write_inline(&mut self, bytes: &[u8]) -> Option<io::Result<()>> {
        let (file, hasher) = self.inline.as_mut()?;
        if let Some(hasher) = hasher.as_mut() {
            hasher.update(bytes);
        }
        let written = file.as_ref().write_all(bytes);
        if written.is_ok() {
            self.landed_inline += bytes.len() as u64;
        }
        Some(written)
    }

    /// Bytes written to the file so far: at least this many of those handed
    /// to the sink are in the file system's count of what is used. Read
    /// before [`FileSink::finish`], which lands them all.
    pub fn landed(&self) -> u64 {
        let queued = self
            .queue
            .as_ref()
            .map_or(0, |queue| queue.landed.load(Ordering::Acquire));
        self.landed_inline + queued
    }

    /// Queues the chunk being filled, if it holds any bytes.
    async fn push_filling(&mut self) -> io::Result<()> {
        match self.filling.take() {
            Some((mut chunk, filled)) if filled > 0 => {
                chunk.truncate(filled);
                self.push(chunk).await
            }
            _ => Ok(()),
        }
    }

    /// Waits until every queued byte is written; returns the hasher. Also
    /// the way to stop cleanly after a failure elsewhere, so that no write
    /// lands after the caller has moved on.
    pub async fn finish(&mut self) -> io::Result<Option<Box<blake3::Hasher>>> {
        let filled = self.push_filling().await;
        let settled = self.settle().await;
        filled.and(settled)
    }

    /// [`FileSink::finish`] for what is already queued.
    async fn settle(&mut self) -> io::Result<Option<Box<blake3::Hasher>>> {
        if let Some((_, hasher)) = self.inline.take() {
            return Ok(hasher);
        }
        let Some(queue) = self.queue.take() else {
            return Err(io::Error::other("the file writer already stopped"));
        };
        if let Some(worker) = self.worker.take() {
            worker.await.map_err(io::Error::other)?;
        }
        let mut state = queue.state();
        match state.failure.take() {
            Some(error) => Err(error),
            None => Ok(state.hasher.take()),
        }
    }
}

/// Reads a file in chunks, and hashes them, on a blocking thread, so that
/// the connection's task only frames and sends (the sending side's mirror of
/// [`FileSink`]).
pub struct FileSource {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    /// Chunks the caller is done with, for the reader to fill again.
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
    worker: Option<JoinHandle<Option<blake3::Hasher>>>,
}

impl FileSource {
    /// Starts reading `len` bytes from `file`'s current position, in chunks
    /// of `chunk_len`, feeding `hasher` if given. Fewer bytes arrive if the
    /// file ends early; a read error arrives as the last item.
    pub fn start(
        mut file: std::fs::File,
        len: u64,
        chunk_len: usize,
        mut hasher: Option<blake3::Hasher>,
    ) -> FileSource {
        let (sender, chunks) = mpsc::channel(SINK_DEPTH);
        let (recycle, spare) = std::sync::mpsc::channel();
        let worker = tokio::task::spawn_blocking(move || {
            let mut left = len;
            while left > 0 {
                let want = usize::try_from(left).map_or(chunk_len, |left| left.min(chunk_len));
                let mut chunk = sized(spare.try_recv().unwrap_or_default(), want);
                let mut filled = 0;
                while filled < want {
                    match io::Read::read(&mut file, &mut chunk[filled..]) {
                        Ok(0) => break,
                        Ok(read) => filled += read,
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(error) => {
                            let _ = sender.blocking_send(Err(error));
                            return hasher;
                        }
                    }
                }
                chunk.truncate(filled);
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(&chunk);
                }
                left -= filled as u64;
                let ended = filled < want;
                if filled > 0 && sender.blocking_send(Ok(chunk)).is_err() {
                    break;
                }
                if ended {
                    break;
                }
            }
            hasher
        });
        FileSource {
            chunks,
            recycle,
            worker: Some(worker),
        }
    }

    /// Hands a delivered chunk back, to be filled again instead of a new one.
    pub fn recycle(&self, chunk: Vec<u8>) {
        let _ = self.recycle.send(chunk);
    }

    /// The next chunk; `None` once the file's bytes are all delivered.
    pub async fn next(&mut self) -> Option<io::Result<Vec<u8>>> {
        self.chunks.recv().await
    }

    /// Stops reading and returns the hasher, fed with every chunk read.
    pub async fn finish(mut self) -> io::Result<Option<blake3::Hasher>> {
        self.chunks.close();
        match self.worker.take() {
            Some(worker) => worker.await.map_err(io::Error::other),
            None => Ok(None),
        }
    }
}

/// `buffer` made exactly `len` bytes long, zeroing only bytes it never had:
/// a recycled buffer's old bytes are about to be overwritten anyway.
fn sized(mut buffer: Vec<u8>, len: usize) -> Vec<u8> {
    if buffer.len() >= len {
        buffer.truncate(len);
    } else {
        buffer.resize(len, 0);
    }
    buffer
}

/// Reads exactly `len` bytes from `reader` into `sink`, gathered into
/// chunks of [`CHUNK_LEN`] across calls: a large file's sink queues a chunk
/// once it is full (or when it finishes), however short the frames its
/// bytes came in. Fails if the reader ends early, if `idle` passes with no
/// byte crossing in `traffic` (the connection's incoming side), or if the
/// sink cannot write; the bytes that did arrive are written when the sink
/// finishes.
pub async fn receive<R>(
    reader: &mut R,
    sink: &mut FileSink,
    len: u64,
    traffic: &Traffic,
    idle: Duration,
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut moved: u64 = 0;
    while moved < len {
        if sink.filling.is_none() {
            // A small file's sink writes each piece as it comes.
            let size = match sink.inline {
                Some(_) => {
                    usize::try_from(len - moved).map_or(CHUNK_LEN, |left| left.min(CHUNK_LEN))
                }
                None => CHUNK_LEN,
            };
            sink.filling = Some((sink.buffer(size), 0));
        }
        // The chunk stays in the sink while it fills, so that what arrived
        // is written when the sink finishes, even if this future is dropped
        // or fails halfway.
        let Some((chunk, filled)) = sink.filling.as_mut() else {
            unreachable!("a chunk to fill was just made");
        };
        let end = usize::try_from(len - moved)
            .map_or(chunk.len(), |left| chunk.len().min(*filled + left));
        let start = *filled;
        while *filled < end {
            match unless_silent(traffic, idle, reader.read(&mut chunk[*filled..end])).await {
                None => return Err(PumpError::Idle(idle)),
                Some(Err(source)) => return Err(PumpError::Read { moved, source }),
                Some(Ok(0)) => {
                    return Err(PumpError::EarlyEof {
                        moved: moved + (*filled - start) as u64,
                        expected: len,
                    });
                }
                Some(Ok(read)) => *filled += read,
            }
        }
        moved += (end - start) as u64;
        if *filled == chunk.len() || sink.inline.is_some() {
            sink.push_filling()
                .await
                .map_err(|source| PumpError::Write { moved, source })?;
        }
    }
    Ok(())
}

/// Reads through a `BufReader` without refilling it: the bytes it holds
/// come first, then reads go straight to the reader inside. For a large
/// file's frames: a refill reads up to a buffer's worth of the payload
/// ahead, and every byte of that is copied twice.
pub struct Unbuffered<'a, R>(pub &'a mut BufReader<R>);

impl<R: AsyncRead + Unpin> AsyncRead for Unbuffered<'_, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let reader = &mut *self.get_mut().0;
        if reader.buffer().is_empty() {
            Pin::new(reader.get_mut()).poll_read(cx, buf)
        } else {
            // A BufReader hands out what it holds without reading more.
            Pin::new(reader).poll_read(cx, buf)
        }
    }
}

/// Queues bytes already in memory (a decompressed chunk) into `sink`.
pub async fn receive_slice(sink: &mut FileSink, bytes: &[u8]) -> io::Result<()> {
    if let Some(written) = sink.write_inline(bytes) {
        return written;
    }
    sink.push_filling().await?;
    let mut chunk = sink.buffer(bytes.len());
    chunk.copy_from_slice(bytes);
    sink.push(chunk).await
}

/// [`receive`] for a small file's bytes, which come through `reader`'s
/// buffer: when they are all in it, they are written and hashed where they
/// lie, never copied into a chunk of their own first. A file that straddles
/// a refill goes the way [`receive`] takes, in one piece: written and
/// hashed in the pieces the buffer holds, it would cost a write and a hash
/// call per piece.
pub async fn receive_buffered<R>(
    reader: &mut BufReader<R>,
    sink: &mut FileSink,
    len: u64,
    traffic: &Traffic,
    idle: Duration,
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin,
{
    let Ok(want) = usize::try_from(len) else {
        return receive(reader, sink, len, traffic, idle).await;
    };
    if want == 0 {
        return Ok(());
    }
    let held = match unless_silent(traffic, idle, reader.fill_buf()).await {
        None => return Err(PumpError::Idle(idle)),
        Some(Err(source)) => return Err(PumpError::Read { moved: 0, source }),
        Some(Ok(held)) => held,
    };
    if held.len() < want {
        return receive(reader, sink, len, traffic, idle).await;
    }
    receive_slice(sink, &held[..want])
        .await
        .map_err(|source| PumpError::Write { moved: 0, source })?;
    reader.consume(want);
    Ok(())
}

/// A transfer rate, printed in binary units.
pub struct Rate {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per_second = self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9);
        write!(f, "{:.1} MiB/s", per_second / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(5);

    /// Asserts that `error` says the reader ended after `moved` of `expected`.
    pub(crate) fn assert_early_eof(error: &PumpError, moved: u64, expected: u64) {
        assert!(
            matches!(
                error,
                PumpError::EarlyEof { moved: m, expected: e } if *m == moved && *e == expected
            ),
            "{error}"
        );
    }

    #[test]
    fn deep_queues_go_to_the_first_sinks_and_come_back() {
        let queues = DeepQueues::new(2);
        let first = queues.claim();
        let second = queues.claim();
        assert!(first.is_some() && second.is_some());
        assert!(
            queues.claim().is_none(),
            "a third sink must get a shallow queue"
        );
        drop(first);
        let again = queues.claim();
        assert!(again.is_some(), "a finished sink gives its slot back");
        assert!(queues.claim().is_none());
    }

    /// A chunk that takes many idle limits to leave, because the writer
    /// takes it a little at a time, is still sent whole: the limit is on a
    /// write that takes nothing.
    #[tokio::test(start_paused = true)]
    async fn a_writer_that_keeps_taking_bytes_is_never_idle() {
        let source: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
        let rate = crate::throttle::RateLimit(std::num::NonZeroU64::new(10_000).unwrap());
        let mut writer = crate::throttle::Throttle::new(Vec::new(), Some(rate));
        let idle = Duration::from_secs(1);
        // Time here is tokio's paused clock: exact, not measured.
        let started = tokio::time::Instant::now();
        pump(&mut source.as_slice(), &mut writer, 100_000, idle, |_| ())
            .await
            .unwrap();
        assert!(started.elapsed() > 5 * idle);
        assert_eq!(writer.into_inner(), source);
    }

    #[tokio::test]
    async fn moves_exactly_len_bytes_and_leaves_the_rest() {
        let source: Vec<u8> = (0..CHUNK_LEN * 2 + 7).map(|i| (i % 251) as u8).collect();
        let len = source.len() as u64 - 3;
        let mut reader = source.as_slice();
        let mut sink = Vec::new();
        let mut seen = Vec::new();
        pump(&mut reader, &mut sink, len, IDLE, |chunk| {
            seen.extend_from_slice(chunk)
        })
        .await
        .unwrap();
        assert_eq!(sink, &source[..source.len() - 3]);
        assert_eq!(reader, &source[source.len() - 3..]);
        assert_eq!(seen, sink);
    }

    #[tokio::test]
    async fn unbuffered_reads_empty_the_buffer_then_bypass_it() {
        let source: Vec<u8> = (0..64u8).collect();
        let mut reader = BufReader::with_capacity(8, source.as_slice());
        let mut first = [0u8; 3];
        reader.read_exact(&mut first).await.unwrap();
        assert_eq!(reader.buffer(), &source[3..8], "the buffered read filled 8");

        let mut held = [0u8; 16];
        let read = Unbuffered(&mut reader).read(&mut held).await.unwrap();
        assert_eq!(
            &held[..read],
            &source[3..8],
            "what was held comes first, alone"
        );

        let mut rest = [0u8; 5];
        Unbuffered(&mut reader).read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, source[8..13]);
        assert!(
            reader.buffer().is_empty(),
            "a read past the buffer must not refill it"
        );
        let mut after = Vec::new();
        reader.read_to_end(&mut after).await.unwrap();
        assert_eq!(after, &source[13..]);
    }

    #[tokio::test]
    async fn zero_bytes_is_a_complete_transfer() {
        let mut sink = Vec::new();
        pump(&mut &b"unread"[..], &mut sink, 0, IDLE, |_| {})
            .await
            .unwrap();
        assert!(sink.is_empty());
    }

    #[tokio::test]
    async fn a_short_reader_is_an_early_eof() {
        let mut sink = Vec::new();
        let error = pump(&mut &b"abc"[..], &mut sink, 10, IDLE, |_| {})
            .await
            .unwrap_err();
        assert_early_eof(&error, 3, 10);
    }

    #[tokio::test]
    async fn received_bytes_land_in_the_file_whole_and_hashed() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("sink");
        let source: Vec<u8> = (0..CHUNK_LEN * 3 + 11).map(|i| (i % 241) as u8).collect();
        let mut sink = FileSink::start(
            Arc::new(std::fs::File::create(&path).unwrap()),
            Some(Box::default()),
        );
        let mut reader = source.as_slice();
        receive(
            &mut reader,
            &mut sink,
            source.len() as u64 - 5,
            &Traffic::default(),
            IDLE,
        )
        .await
        .unwrap();
        receive_slice(&mut sink, b"tail").await.unwrap();
        let hasher = sink.finish().await.unwrap().unwrap();
        let mut expected = source[..source.len() - 5].to_vec();
        expected.extend_from_slice(b"tail");
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(hasher.finalize(), blake3::hash(&expected));
    }

    #[tokio::test]
    async fn short_frames_are_gathered_and_a_cut_keeps_what_arrived() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("gathered");
        let mut sink = FileSink::start(
            Arc::new(std::fs::File::create(&path).unwrap()),
            Some(Box::default()),
        );
        // Frames of every size around a chunk's, one after another.
        let sizes = [
            1000,
            CHUNK_LEN - 1,
            1,
            CHUNK_LEN + 7,
            5000,
            3 * CHUNK_LEN,
            1,
        ];
        let mut expected = Vec::new();
        for (index, size) in sizes.into_iter().enumerate() {
            let frame: Vec<u8> = (0..size).map(|i| ((i + index) % 249) as u8).collect();
            receive(
                &mut frame.as_slice(),
                &mut sink,
                size as u64,
                &Traffic::default(),
                IDLE,
            )
            .await
            .unwrap();
            expected.extend_from_slice(&frame);
        }
        receive_slice(&mut sink, b"decompressed").await.unwrap();
        expected.extend_from_slice(b"decompressed");
        // A frame cut short: its first bytes are kept with the rest.
        let error = receive(&mut &b"cut"[..], &mut sink, 10, &Traffic::default(), IDLE)
            .await
            .unwrap_err();
        assert_early_eof(&error, 3, 10);
        expected.extend_from_slice(b"cut");
        let hasher = sink.finish().await.unwrap().unwrap();
        assert!(std::fs::read(&path).unwrap() == expected, "bytes differ");
        assert_eq!(hasher.finalize(), blake3::hash(&expected));
    }

    #[test]
    fn a_sink_waiting_for_its_next_chunk_holds_no_blocking_thread() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let temp = tempfile::tempdir().unwrap();
            let path = temp.path().join("sink");
            let file = Arc::new(std::fs::File::create(&path).unwrap());
            let mut sink = FileSink::start(file, Some(Box::default()));
            let first: Vec<u8> = (0..CHUNK_LEN + 3).map(|i| (i % 233) as u8).collect();
            receive_slice(&mut sink, &first).await.unwrap();
            // The sink's connection has gone quiet: the only blocking
            // thread must be free for other work.
            let other_work = tokio::task::spawn_blocking(|| "done");
            let done = timeout(IDLE, other_work).await;
            assert_eq!(
                done.expect("the only blocking thread is held by an idle sink")
                    .unwrap(),
                "done"
            );
            // The next chunks start a worker again, and land after the first.
            let second: Vec<u8> = (0..CHUNK_LEN * 3).map(|i| (i % 227) as u8).collect();
            receive(
                &mut second.as_slice(),
                &mut sink,
                second.len() as u64,
                &Traffic::default(),
                IDLE,
            )
            .await
            .unwrap();
            let hasher = sink.finish().await.unwrap().unwrap();
            let expected = [first, second].concat();
            assert!(std::fs::read(&path).unwrap() == expected, "bytes differ");
            assert_eq!(hasher.finalize(), blake3::hash(&expected));
        });
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_written_fails_the_sink_with_why() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("read-only");
        std::fs::write(&path, b"").unwrap();
        // Opened for reading only: every write fails with EBADF.
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        let mut sink = FileSink::start(file, Some(Box::default()));
        let source = vec![7u8; CHUNK_LEN * 12];
        let received = receive(
            &mut source.as_slice(),
            &mut sink,
            source.len() as u64,
            &Traffic::default(),
            IDLE,
        )
        .await;
        let finished = sink.finish().await;
        let error = match (received, finished) {
            (Err(PumpError::Write { source, .. }), Err(_)) => source,
            (Ok(()), Err(error)) => error,
            (received, finished) => panic!("{received:?} then {:?}", finished.map(|_| ())),
        };
        assert_eq!(error.raw_os_error(), Some(libc::EBADF), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    #[tokio::test]
    async fn a_small_file_lands_whole_from_the_read_buffer_or_across_refills() {
        let temp = tempfile::tempdir().unwrap();
        let source: Vec<u8> = (0..1003).map(|i| (i % 251) as u8).collect();
        // Whole in a 4 KiB buffer; in a 64-byte one it spans 16 refills.
        for capacity in [4096, 64] {
            let path = temp.path().join(format!("small-{capacity}"));
            let file = Arc::new(std::fs::File::create(&path).unwrap());
            let mut sink = FileSink::for_len(file, Some(Box::default()), Some(1000));
            let mut reader = BufReader::with_capacity(capacity, source.as_slice());
            receive_buffered(&mut reader, &mut sink, 1000, &Traffic::default(), IDLE)
                .await
                .unwrap();
            let hasher = sink.finish().await.unwrap().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), &source[..1000]);
            assert_eq!(hasher.finalize(), blake3::hash(&source[..1000]));
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, &source[1000..], "what follows the file is left");
        }

        let file = Arc::new(std::fs::File::create(temp.path().join("cut")).unwrap());
        let mut sink = FileSink::for_len(file, None, Some(10));
        let mut reader = BufReader::new(&b"abc"[..]);
        let error = receive_buffered(&mut reader, &mut sink, 10, &Traffic::default(), IDLE)
            .await
            .unwrap_err();
        assert_early_eof(&error, 3, 10);
    }

    #[tokio::test]
    async fn an_early_end_is_reported_with_what_was_received() {
        let temp = tempfile::tempdir().unwrap();
        let mut sink = FileSink::start(
            Arc::new(std::fs::File::create(temp.path().join("sink")).unwrap()),
            None,
        );
        let error = receive(&mut &b"abc"[..], &mut sink, 10, &Traffic::default(), IDLE)
            .await
            .unwrap_err();
        assert_early_eof(&error, 3, 10);
        sink.finish().await.unwrap();
    }

    #[tokio::test]
    async fn a_file_source_delivers_every_byte_hashed_and_stops_at_the_end() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("source");
        let content: Vec<u8> = (0..CHUNK_LEN * 2 + 99).map(|i| (i % 239) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(7)).unwrap();
        // Asking for more than is there: the source stops at the file's end.
        let mut source = FileSource::start(
            file,
            content.len() as u64,
            100_000,
            Some(blake3::Hasher::new()),
        );
        let mut received = Vec::new();
        while let Some(chunk) = source.next().await {
            received.extend_from_slice(&chunk.unwrap());
        }
        let hasher = source.finish().await.unwrap().unwrap();
        assert_eq!(received, &content[7..]);
        assert_eq!(hasher.finalize(), blake3::hash(&content[7..]));
    }

    #[tokio::test]
    async fn a_silent_reader_times_out() {
        let (_keep_open, mut silent) = tokio::io::duplex(64);
        let mut sink = Vec::new();
        let idle = Duration::from_millis(20);
        let error = pump(&mut silent, &mut sink, 1, idle, |_| {})
            .await
            .unwrap_err();
        assert!(matches!(error, PumpError::Idle(_)), "{error}");
    }
}
