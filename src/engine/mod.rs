//! The engine both directions run on. Its parts:
//!
//! - `connection`: the framed connection, the only place frames are read
//!   and written, with its buffer and timeouts;
//! - `protocol::haul`: the messages, typed by who may send them (the
//!   opening by process; then [`sender`] and receiver messages by role);
//! - `storage`: the backend trait (what exists, begin or resume an upload,
//!   commit a group durably, free space, list, open for reading), with the
//!   local directory as its first implementation;
//! - [`sender`]: the sending side of a session, which `haul send` runs to
//!   push and a server runs to answer a Get;
//! - [`receiver`]: the receiving side of a session, which `haul serve`
//!   runs for a push and `haul get` runs into a local store, under a
//!   [`receiver::Policy`] (the server's flags, or a get's own);
//! - `space`: the receiver's account of the disk, shared by every session
//!   of one store; `log`: the line each file gets in an operator's log;
//! - [`Event`] and [`Summary`]: what either side reports of each file.
//!
//! The roles are the client (`send`: `haul send`, `haul get`, `haul ls`)
//! and the server (`server`): each opens the session its way (connecting,
//! the Hello, the encrypted handshake, the rights), then runs one side of
//! the engine. The engine depends on neither role, except that the sender
//! reports failures as the client's `SendError` and takes its entries from
//! the client's walk (`send::walk`), whose `Source::Stored` a server uses.

pub(crate) mod log;
pub mod receiver;
pub mod sender;
pub(crate) mod space;

use std::io;

use crate::protocol::haul::Hash;

/// Whether a write failed because the disk or a quota is full.
pub(crate) fn is_out_of_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Runs blocking file-system work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}

/// What happened to one entry, as it happens. `path` is the path the entry
/// is sent under, relative to the receiving side's directory, except for sources
/// that could not be read at all, which are named as given.
///
/// Names and reasons are as they are, not made safe to print: they may
/// hold control characters, and a terminal must be shown them through
/// [`crate::text::shown`].
#[derive(Debug)]
pub enum Event<'a> {
    /// A file's bytes start to go out; the server already holds the first
    /// `offset` of them. `size` is `None` for standard input.
    Started {
        path: &'a str,
        size: Option<u64>,
        offset: u64,
    },
    /// `bytes` more bytes of the file last started have been sent, and
    /// took `wire` bytes on the wire: fewer when compressed, never bytes the
    /// server already held.
    Progress { bytes: u64, wire: u64 },
    /// The server has the file. With haul's protocol it verified the bytes
    /// against `hash`, synced them and stored them under `stored_as`; the
    /// seed protocol gives no receipt, so both are `None` and all that is
    /// known is that the server read every byte and closed in good order.
    Stored {
        path: &'a str,
        stored_as: Option<&'a str>,
        bytes: u64,
        hash: Option<&'a Hash>,
    },
    /// The server already had identical content, under `stored_as`: it
    /// compared the file's hash with its copy's, and nothing was sent.
    AlreadyThere {
        path: &'a str,
        stored_as: &'a str,
        bytes: u64,
    },
    /// This entry was not delivered.
    Failed { path: &'a str, reason: &'a str },
    /// Something was passed over on purpose.
    Skipped { path: &'a str, reason: &'a str },
    /// Every file offered so far has its outcome; the next events may be a
    /// while coming. With haul's protocol, after each batch's receipts; with
    /// the seed protocol, after each file.
    BatchSettled,
}

/// Counts for the closing line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub stored: u64,
    pub already_there: u64,
    pub failed: u64,
    pub skipped: u64,
    /// File bytes sent, before compression (resumed parts excluded).
    pub bytes_sent: u64,
    /// The same file bytes as they went on the wire: after compression,
    /// without frame headers or encryption. Equal to `bytes_sent` without
    /// compression.
    pub wire_bytes: u64,
}
