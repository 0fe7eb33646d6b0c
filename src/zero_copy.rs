//! Moving file bytes between a file and a socket without copying them
//! through user space, for transfers where nothing transforms or hashes
//! them on the way (the classroom protocol).
//!
//! [`send_file`] hands pages from the page cache to the socket with
//! `sendfile(2)`; [`receive_to_file`] moves them from the socket into the
//! file through a pipe with `splice(2)`. Both fail the same ways as
//! [`crate::transfer::pump`], with the same [`PumpError`]s.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::OFlags;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::transfer::PumpError;

/// Most bytes one `sendfile` call is asked for, so that progress is
/// reported at least this often.
const SEND_STEP: usize = 4 * 1024 * 1024;

/// Pipe capacity asked for: the default 64 KiB would split every MiB into
/// 16 pairs of calls.
const PIPE_LEN: usize = 1024 * 1024;

/// Sends exactly `len` bytes of `file`, from `offset`, to `socket`.
/// `on_sent` sees the count of each step. Fails if the file ends early or
/// the socket takes nothing for `idle`.
pub async fn send_file(
    socket: &TcpStream,
    file: &File,
    offset: u64,
    len: u64,
    idle: Duration,
    mut on_sent: impl FnMut(u64),
) -> Result<(), PumpError> {
    let mut position = offset;
    let end = offset + len;
    while position < end {
        let moved = position - offset;
        let want = usize::try_from(end - position).map_or(SEND_STEP, |left| left.min(SEND_STEP));
        let step = async {
            loop {
                socket.writable().await?;
                match socket.try_io(Interest::WRITABLE, || {
                    rustix::fs::sendfile(socket, file, Some(&mut position), want)
                        .map_err(io::Error::from)
                }) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    result => return result,
                }
            }
        };
        let sent = match timeout(idle, step).await {
            Err(_) => return Err(PumpError::Idle(idle)),
            Ok(Err(source)) if is_socket_failure(&source) => {
                return Err(PumpError::Write { moved, source });
            }
            Ok(Err(source)) => return Err(PumpError::Read { moved, source }),
            Ok(Ok(0)) => {
                return Err(PumpError::EarlyEof {
                    moved,
                    expected: len,
                });
            }
            Ok(Ok(sent)) => sent as u64,
        };
        on_sent(sent);
    }
    Ok(())
}

/// Errors that `sendfile` reports for the socket, not the file.
fn is_socket_failure(error: &io::Error) -> bool {
    use io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, NotConnected};
    matches!(
        error.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | NotConnected
    )
}

/// Most bytes one step of [`receive_to_file`] moves before it hands its
/// blocking thread back, so that a sender that never pauses holds a thread
/// only for a bounded time per step.
const RECEIVE_STEP: u64 = 16 * 1024 * 1024;

/// Room on the disk for the bytes [`receive_to_file`] writes, asked for
/// before each step, on the step's blocking thread.
pub trait Room: Send + 'static {
    /// Makes room for up to `len` more bytes, or fails (an out-of-space
    /// error, as the file system's own would be) and nothing is written.
    fn make(&mut self, len: u64) -> io::Result<()>;
    /// Counts `len` bytes written into the room made.
    fn used(&mut self, len: u64);
}

/// No account kept: the file system's own limits alone.
impl Room for () {
    fn make(&mut self, _: u64) -> io::Result<()> {
        Ok(())
    }

    fn used(&mut self, _: u64) {}
}

/// Appends exactly `len` bytes from `socket` to `file`, asking `room` for
/// room before writing; returns `room` once done. Fails if the socket ends
/// early or stays silent for `idle`, or if `room` or the file cannot take
/// the bytes.
///
/// The wait for data is done here, on the async task; only the moving of
/// bytes that have arrived runs on a blocking thread (the write may wait on
/// the disk), in steps that never wait for the socket. So a silent client
/// holds no thread of the blocking pool, and however many of them there
/// are, other connections' file work is never queued behind them.
///
/// `splice(2)` refuses files opened to append, so `file` loses that flag
/// (for every handle that shares its opening) and is written at explicit
/// offsets from the end it had.
pub async fn receive_to_file<R: Room>(
    socket: &TcpStream,
    file: Arc<File>,
    len: u64,
    idle: Duration,
    room: R,
) -> Result<R, PumpError> {
    let duplicate = socket
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| PumpError::Read { moved: 0, source })?;
    let mut splice = Splice {
        socket: duplicate,
        file,
        pipe: None,
        moved: 0,
        len,
        room,
    };
    let mut readable = false;
    while splice.moved < len {
        if !readable {
            wait_readable(socket, idle, splice.moved).await?;
        }
        let moved = splice.moved;
        let (returned, step) = tokio::task::spawn_blocking(move || {
            let step = splice.step();
            (splice, step)
        })
        .await
        .map_err(|error| PumpError::Write {
            moved,
            source: io::Error::other(error),
        })?;
        splice = returned;
        // After a step that stopped at its budget, more is likely waiting.
        readable = step? == Step::Budget;
    }
    Ok(splice.room)
}

/// Waits on the async task until `socket` has something to read (or has
/// ended or failed); fails if `idle` passes first.
///
/// Whether there is nothing to read is asked inside `try_io`, with a peek
/// that takes nothing: only an answer given there clears tokio's readiness,
/// and only if no new data was signalled meanwhile, so no arrival is missed
/// and a drained socket is not taken for a readable one.
async fn wait_readable(socket: &TcpStream, idle: Duration, moved: u64) -> Result<(), PumpError> {
    let deadline = tokio::time::Instant::now() + idle;
    loop {
        match tokio::time::timeout_at(deadline, socket.readable()).await {
            Err(_) => return Err(PumpError::Idle(idle)),
            Ok(Err(source)) => return Err(PumpError::Read { moved, source }),
            Ok(Ok(())) => {}
        }
        match socket.try_io(Interest::READABLE, || peek(socket)) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(source) => return Err(PumpError::Read { moved, source }),
            // Bytes, or the end of the stream: the next step sees which.
            Ok(()) => return Ok(()),
        }
    }
}

/// Looks at the first unread byte of `socket` without taking it or waiting.
fn peek(socket: &TcpStream) -> io::Result<()> {
    let mut byte = 0u8;
    // SAFETY: `byte` is one writable byte and the length passed is 1; the
    // descriptor is borrowed from a live socket.
    let result = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The state of one [`receive_to_file`], carried from step to step.
struct Splice<R> {
    /// A duplicate of the connection's non-blocking socket, for `splice`.
    socket: OwnedFd,
    file: Arc<File>,
    /// Made by the first step, on the blocking thread.
    pipe: Option<Pipe>,
    moved: u64,
    len: u64,
    room: R,
}

/// The pipe bytes pass through on their way to the file, and where in the
/// file they go.
struct Pipe {
    out: OwnedFd,
    input: OwnedFd,
    len: usize,
    file_end: u64,
}

/// Why a step ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The socket had nothing more to read, or every byte has arrived.
    Drained,
    /// [`RECEIVE_STEP`] bytes were moved; more may be waiting.
    Budget,
}

impl<R: Room> Splice<R> {
    /// Moves what the socket holds into the file, up to [`RECEIVE_STEP`]
    /// bytes and never past `len`. Never waits for the socket; may wait
    /// for the disk.
    fn step(&mut self) -> Result<Step, PumpError> {
        let stop = self.len.min(self.moved.saturating_add(RECEIVE_STEP));
        self.room
            .make(stop - self.moved)
            .map_err(|source| PumpError::Write {
                moved: self.moved,
                source,
            })?;
        let start = self.moved;
        let moved = self.splice_until(stop);
        self.room.used(self.moved - start);
        moved?;
        Ok(if self.moved == self.len {
            Step::Drained
        } else {
            Step::Budget
        })
    }

    /// Moves bytes from the socket through the pipe into the file until
    /// `stop` bytes are moved in all or the socket holds no more.
    fn splice_until(&mut self, stop: u64) -> Result<(), PumpError> {
        let pipe = match &mut self.pipe {
            Some(pipe) => pipe,
            None => self.pipe.insert(open_pipe(&self.file, self.moved)?),
        };
        while self.moved < stop {
            let want =
                usize::try_from(stop - self.moved).map_or(pipe.len, |left| left.min(pipe.len));
            let taken = match rustix::pipe::splice(
                &self.socket,
                None,
                &pipe.input,
                None,
                want,
                SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
            ) {
                Ok(0) => {
                    return Err(PumpError::EarlyEof {
                        moved: self.moved,
                        expected: self.len,
                    });
                }
                Ok(taken) => taken,
                Err(rustix::io::Errno::AGAIN) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(error) => {
                    return Err(PumpError::Read {
                        moved: self.moved,
                        source: error.into(),
                    });
                }
            };
            let mut in_pipe = taken;
            while in_pipe > 0 {
                match rustix::pipe::splice(
                    &pipe.out,
                    None,
                    self.file.as_ref(),
                    Some(&mut pipe.file_end),
                    in_pipe,
                    SpliceFlags::MOVE,
                ) {
                    Ok(written) => in_pipe -= written,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(error) => {
                        return Err(PumpError::Write {
                            moved: self.moved,
                            source: error.into(),
                        });
                    }
                }
            }
            self.moved += taken as u64;
        }
        Ok(())
    }
}

/// Readies `file` for `splice` and makes the pipe; errors count `moved`.
fn open_pipe(file: &File, moved: u64) -> Result<Pipe, PumpError> {
    let read_error = |source: io::Error| PumpError::Read { moved, source };
    let write_error = |source: io::Error| PumpError::Write { moved, source };
    let flags = rustix::fs::fcntl_getfl(file).map_err(|error| write_error(error.into()))?;
    rustix::fs::fcntl_setfl(file, flags - OFlags::APPEND)
        .map_err(|error| write_error(error.into()))?;
    let file_end = file.metadata().map_err(write_error)?.len();
    let (out, input) =
        rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(|error| read_error(error.into()))?;
    // A smaller pipe only means more calls.
    let len = rustix::pipe::fcntl_setpipe_size(&input, PIPE_LEN).unwrap_or(64 * 1024);
    Ok(Pipe {
        out,
        input,
        len,
        file_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const IDLE: Duration = Duration::from_secs(5);

    async fn connected_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_range_arrives_whole_and_nothing_more() {
        let content = pattern(3 * SEND_STEP + 123);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&content).unwrap();
        let (sender, mut receiver) = connected_pair().await;
        let reading = tokio::spawn(async move {
            let mut received = Vec::new();
            receiver.read_to_end(&mut received).await.unwrap();
            received
        });
        let mut reported = 0;
        let len = content.len() as u64 - 17;
        send_file(&sender, &file, 10, len, IDLE, |sent| reported += sent)
            .await
            .unwrap();
        drop(sender);
        assert_eq!(reading.await.unwrap(), &content[10..content.len() - 7]);
        assert_eq!(reported, len);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_shorter_than_announced_is_an_early_eof() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"only this").unwrap();
        let (sender, _receiver) = connected_pair().await;
        let error = send_file(&sender, &file, 0, 100, IDLE, |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                PumpError::EarlyEof {
                    moved: 9,
                    expected: 100
                }
            ),
            "{error}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn received_bytes_land_in_the_file_and_the_rest_stays_in_the_socket() {
        // More than one step's worth, so that steps follow one another.
        let content = pattern(RECEIVE_STEP as usize + 5 * PIPE_LEN + 99);
        let (mut sender, mut receiver) = connected_pair().await;
        let writing = {
            let content = content.clone();
            tokio::spawn(async move {
                sender.write_all(&content).await.unwrap();
                sender.write_all(b"next message").await.unwrap();
                sender
            })
        };
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("appended");
        std::fs::write(&path, b"held ").unwrap();
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        receive_to_file(&receiver, Arc::new(file), content.len() as u64, IDLE, ())
            .await
            .unwrap();
        let stored = std::fs::read(&path).unwrap();
        assert_eq!(&stored[..5], b"held ");
        assert!(stored[5..] == content, "the received bytes differ");
        let _sender = writing.await.unwrap();
        let mut rest = [0u8; 12];
        receiver.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"next message");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_closed_early_and_a_silent_one_fail_with_what_arrived() {
        let (mut sender, receiver) = connected_pair().await;
        sender.write_all(b"abc").await.unwrap();
        drop(sender);
        let file = Arc::new(tempfile::tempfile().unwrap());
        let error = receive_to_file(&receiver, file, 10, IDLE, ())
            .await
            .unwrap_err();
        crate::transfer::tests::assert_early_eof(&error, 3, 10);

        let (_silent, receiver) = connected_pair().await;
        let file = Arc::new(tempfile::tempfile().unwrap());
        let idle = Duration::from_millis(20);
        let error = receive_to_file(&receiver, file, 10, idle, ())
            .await
            .unwrap_err();
        assert!(matches!(error, PumpError::Idle(_)), "{error}");
    }

    #[test]
    fn a_silent_sender_holds_no_blocking_thread() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (mut sender, receiver) = connected_pair().await;
            let temp = tempfile::tempdir().unwrap();
            let path = temp.path().join("stalled");
            let file = Arc::new(std::fs::File::create(&path).unwrap());
            let receiving = tokio::spawn(async move {
                receive_to_file(&receiver, file, 10, Duration::from_secs(600), ()).await
            });
            sender.write_all(b"abc").await.unwrap();
            // Once the three bytes are in the file, the receiver waits for
            // the rest, which never comes.
            let deadline = std::time::Instant::now() + IDLE;
            while std::fs::metadata(&path).unwrap().len() < 3 {
                assert!(std::time::Instant::now() < deadline, "no bytes arrived");
                tokio::task::yield_now().await;
            }
            let other_work = tokio::task::spawn_blocking(|| "done");
            let done = timeout(IDLE, other_work).await;
            assert_eq!(
                done.expect("the only blocking thread is held by the silent receive")
                    .unwrap(),
                "done"
            );
            receiving.abort();
        });
    }
}
