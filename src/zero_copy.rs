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
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
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

/// Appends exactly `len` bytes from `socket` to `file`.
/// Blocks: run it on a blocking thread. `socket` is a duplicate of a
/// non-blocking socket, so waiting for data is done here with `poll`.
/// Fails if the socket ends early or stays silent for `idle`, or if the
/// file cannot take the bytes.
///
/// `splice(2)` refuses files opened to append, so `file` loses that flag
/// (for every handle that shares its opening) and is written at explicit
/// offsets from the end it had.
pub fn receive_to_file(
    socket: OwnedFd,
    file: &File,
    len: u64,
    idle: Duration,
) -> Result<(), PumpError> {
    let read_error = |moved, source: io::Error| PumpError::Read { moved, source };
    let write_error = |moved, source: io::Error| PumpError::Write { moved, source };
    let flags = rustix::fs::fcntl_getfl(file).map_err(|error| write_error(0, error.into()))?;
    rustix::fs::fcntl_setfl(file, flags - OFlags::APPEND)
        .map_err(|error| write_error(0, error.into()))?;
    let mut file_end = file
        .metadata()
        .map_err(|error| write_error(0, error))?
        .len();
    let (pipe_out, pipe_in) =
        rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(|error| read_error(0, error.into()))?;
    // A smaller pipe only means more calls.
    let pipe_len = rustix::pipe::fcntl_setpipe_size(&pipe_in, PIPE_LEN).unwrap_or(64 * 1024);
    let mut moved: u64 = 0;
    while moved < len {
        let want = usize::try_from(len - moved).map_or(pipe_len, |left| left.min(pipe_len));
        let taken = match rustix::pipe::splice(
            &socket,
            None,
            &pipe_in,
            None,
            want,
            SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
        ) {
            Ok(0) => {
                return Err(PumpError::EarlyEof {
                    moved,
                    expected: len,
                });
            }
            Ok(taken) => taken,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
                if !wait_readable(&socket, idle).map_err(|error| read_error(moved, error))? {
                    return Err(PumpError::Idle(idle));
                }
                continue;
            }
            Err(error) => return Err(read_error(moved, error.into())),
        };
        let mut in_pipe = taken;
        while in_pipe > 0 {
            match rustix::pipe::splice(
                &pipe_out,
                None,
                file,
                Some(&mut file_end),
                in_pipe,
                SpliceFlags::MOVE,
            ) {
                Ok(written) => in_pipe -= written,
                Err(rustix::io::Errno::INTR) => {}
                Err(error) => return Err(write_error(moved, error.into())),
            }
        }
        moved += taken as u64;
    }
    Ok(())
}

/// Waits until `socket` has something to read (or has failed or closed);
/// `false` if `idle` passed first.
fn wait_readable(socket: &impl AsFd, idle: Duration) -> io::Result<bool> {
    let limit = Timespec {
        tv_sec: idle.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: idle.subsec_nanos().into(),
    };
    let mut fds = [PollFd::new(socket, PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut fds, Some(&limit)) {
            Ok(ready) => return Ok(ready > 0),
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
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
        let content = pattern(5 * PIPE_LEN + 99);
        let (mut sender, receiver) = connected_pair().await;
        let socket = receiver.as_fd().try_clone_to_owned().unwrap();
        let writing = {
            let content = content.clone();
            tokio::spawn(async move {
                sender.write_all(&content).await.unwrap();
                sender.write_all(b"next message").await.unwrap();
                sender
            })
        };
        let len = content.len() as u64;
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("appended");
        std::fs::write(&path, b"held ").unwrap();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        let mut file = tokio::task::spawn_blocking(move || {
            receive_to_file(socket, &file, len, IDLE).unwrap();
            file.rewind().unwrap();
            file
        })
        .await
        .unwrap();
        let mut stored = Vec::new();
        file.read_to_end(&mut stored).unwrap();
        assert_eq!(&stored[..5], b"held ");
        assert!(stored[5..] == content, "the received bytes differ");
        let _sender = writing.await.unwrap();
        let mut rest = [0u8; 12];
        let mut receiver = receiver;
        receiver.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"next message");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_closed_early_and_a_silent_one_fail_with_what_arrived() {
        let (mut sender, receiver) = connected_pair().await;
        sender.write_all(b"abc").await.unwrap();
        drop(sender);
        let socket = receiver.as_fd().try_clone_to_owned().unwrap();
        let error = tokio::task::spawn_blocking(move || {
            receive_to_file(socket, &tempfile::tempfile().unwrap(), 10, IDLE).unwrap_err()
        })
        .await
        .unwrap();
        crate::transfer::tests::assert_early_eof(&error, 3, 10);

        let (_silent, receiver) = connected_pair().await;
        let socket = receiver.as_fd().try_clone_to_owned().unwrap();
        let idle = Duration::from_millis(20);
        let error = tokio::task::spawn_blocking(move || {
            receive_to_file(socket, &tempfile::tempfile().unwrap(), 10, idle).unwrap_err()
        })
        .await
        .unwrap();
        assert!(matches!(error, PumpError::Idle(_)), "{error}");
    }
}
