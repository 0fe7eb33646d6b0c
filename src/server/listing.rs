//! A list session: the entries of one folder of the store (or the one file
//! a path names), streamed to the client as the store reads them.
//!
//! What must stay true here:
//! - Nothing is read from storage before the session's rights were checked
//!   (the caller does, before it calls [`serve`]).
//! - The server holds one batch of the store's cursor (at most
//!   [`MAX_LIST_BATCH`] entries) and one frame at a time: a batch is
//!   written out before the next is read, and every write waits at most
//!   the connection's stall time, so a client that stops reading costs one
//!   frame and one batch of memory until the session ends.
//! - Only what [`Backend::list`] returns is listed: never the hidden area,
//!   a symlink or a special file. A path through or to one of them reads as
//!   nothing there, as a missing one does.

use std::io;

use super::blocking;
use crate::connection::{Connection, ConnectionError};
use crate::engine::receiver::Refusal;
use crate::protocol::haul::{
    EntriesBuilder, EntryKind, FailCode, ListEntry, ListingMessage, Mtime,
};
use crate::storage::{
    Backend, Listed, ListedKind, Listing, MAX_LIST_BATCH, Reader, RelPath, SafeName, Store,
};
use crate::text::printable;

/// Why a listing ended before its end.
#[derive(Debug)]
pub(super) enum ListError {
    /// Refused, or cut short, with a reason for the client.
    Refused(Refusal),
    Connection(ConnectionError),
}

impl From<ConnectionError> for ListError {
    fn from(error: ConnectionError) -> ListError {
        ListError::Connection(error)
    }
}

/// What a path names, once opened: a folder's cursor, or one file.
pub(super) enum Opened {
    Folder(<Store as Backend>::Listing),
    File(Listed),
}

/// Streams the listing of `path` (`/`-separated, relative; empty for the
/// top of the store) as `Entries` frames, then `ListEnd`; returns how many
/// entries it sent.
pub(super) async fn serve(
    conn: &mut Connection,
    store: &Store,
    path: &str,
) -> Result<u64, ListError> {
    let shown = printable(path.as_bytes());
    let dir = if path.is_empty() {
        None
    } else {
        Some(RelPath::parse(path.as_bytes()).map_err(|error| {
            ListError::Refused(Refusal::new(
                FailCode::NameRefused,
                format!("the path {shown} is refused: {error}"),
            ))
        })?)
    };
    let not_there = || {
        ListError::Refused(Refusal::new(
            FailCode::NotFound,
            format!("no such file or folder on the server: {shown}"),
        ))
    };
    let opening = {
        let store = store.clone();
        blocking(move || Ok(open(&store, dir.as_ref())))
    };
    let mut listing = match opening
        .await
        .map_err(|error| storage_failed(&shown, &error))?
    {
        Ok(Some(Opened::Folder(listing))) => listing,
        Ok(Some(Opened::File(file))) => {
            let mut entries = EntriesBuilder::new();
            entries.push(&entry_of(&file));
            conn.send(&ListingMessage::Entries(entries.entries()))
                .await?;
            conn.send(&ListingMessage::End).await?;
            conn.shutdown().await?;
            return Ok(1);
        }
        Ok(None) => return Err(not_there()),
        Err(error) => return Err(storage_failed(&shown, &error)),
    };
    let mut frame = EntriesBuilder::new();
    let mut sent = 0u64;
    loop {
        let (back, batch) = blocking(move || {
            let batch = listing.next_batch(MAX_LIST_BATCH)?;
            Ok((listing, batch))
        })
        .await
        .map_err(|error| storage_failed(&shown, &error))?;
        listing = back;
        if batch.is_empty() {
            break;
        }
        for listed in &batch {
            let entry = entry_of(listed);
            if !frame.push(&entry) {
                conn.send(&ListingMessage::Entries(frame.entries())).await?;
                frame.clear();
                // One entry always fits an empty frame.
                frame.push(&entry);
            }
        }
        if !frame.is_empty() {
            conn.send(&ListingMessage::Entries(frame.entries())).await?;
            frame.clear();
        }
        conn.flush().await?;
        sent += batch.len() as u64;
    }
    conn.send(&ListingMessage::End).await?;
    conn.shutdown().await?;
    Ok(sent)
}

/// Opens what `dir` names: `Ok(None)` when nothing the listing may show is
/// there (nothing at all, a symlink, a special file, a path through a file).
pub(super) fn open(store: &Store, dir: Option<&RelPath>) -> io::Result<Option<Opened>> {
    let path = match store.list(dir) {
        Ok(listing) => return Ok(Some(Opened::Folder(listing))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        // Something other than a folder is on the path: a file, maybe.
        Err(error) if error.kind() == io::ErrorKind::InvalidInput => match dir {
            Some(path) => path,
            None => return Err(error),
        },
        Err(error) => return Err(error),
    };
    let reader = match store.open_read(path) {
        Ok(reader) => reader,
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::InvalidInput
            ) =>
        {
            return Ok(None);
        }
        Err(error) => return Err(error),
    };
    Ok(Some(Opened::File(Listed {
        name: path.last(),
        kind: ListedKind::File(reader.info()),
    })))
}

/// A listed entry as the protocol carries it.
fn entry_of(listed: &Listed) -> ListEntry<'_> {
    let name: &SafeName = &listed.name;
    let (kind, size, modified, mode) = match listed.kind {
        ListedKind::File(info) => (EntryKind::File, info.size, info.modified, info.mode),
        ListedKind::Directory { modified, mode } => (EntryKind::Directory, 0, modified, mode),
    };
    ListEntry {
        kind,
        size,
        mtime: Mtime::from_system_time(modified),
        mode: mode & 0o777,
        name: name.as_str().as_bytes(),
    }
}

fn storage_failed(shown: &str, error: &io::Error) -> ListError {
    ListError::Refused(Refusal::new(
        FailCode::Io,
        format!("could not list {shown} on the server: {error}"),
    ))
}
