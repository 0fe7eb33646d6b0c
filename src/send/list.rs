//! `haul ls`: the client of a list session. It opens a session as a send
//! does, asks for one folder's listing with a `List`, and hands each frame's
//! entries to its caller as they arrive, so that a folder of any size costs
//! one frame of memory.
//!
//! Nothing the server says is trusted: every name must be one valid path
//! component by the store's own rules ([`SafeName`]) before the caller sees
//! it; a bad one ends the listing with an error that names the problem.

use super::haul::{open_session, server_error};
use super::{SendError, SendOptions};
use crate::protocol::haul::{EntryKind, FailCode, ListingMessage, Mtime, Request};
use crate::storage::{RelPath, SafeName};
use crate::text::printable;

/// One entry of the listing, its name judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: SafeName,
    pub kind: EntryKind,
    /// 0 for a directory.
    pub size: u64,
    pub mtime: Mtime,
    /// Permission bits (`0o777` at most).
    pub mode: u32,
}

/// Counts for the closing summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ListSummary {
    pub files: u64,
    pub folders: u64,
    /// The files' sizes, added up.
    pub bytes: u64,
}

/// Lists the folder `path` (`None`: the top) of the server at `to`, or
/// the one file it names, handing `on_entries` each frame's entries as
/// they arrive; when it returns `false` (its reader went away), the listing
/// stops there. Not recursive: a folder's folders are entries.
pub async fn list_haul(
    to: &str,
    path: Option<&RelPath>,
    options: &SendOptions,
    mut on_entries: impl FnMut(&[Entry]) -> bool,
) -> Result<ListSummary, SendError> {
    let mut conn = open_session(to, options).await?;
    let path = path.map(RelPath::to_string).unwrap_or_default();
    conn.send(&Request::List { path: &path }).await?;
    conn.flush().await?;
    let mut summary = ListSummary::default();
    // Reused from frame to frame: at most one frame's entries.
    let mut entries = Vec::new();
    loop {
        match conn.read_message().await? {
            ListingMessage::Entries(frame) => {
                entries.clear();
                for entry in frame.iter() {
                    let name = SafeName::parse(entry.name).map_err(|error| {
                        SendError::Protocol(format!(
                            "it listed the name \"{}\", which is not one valid file name: {error}",
                            printable(entry.name)
                        ))
                    })?;
                    match entry.kind {
                        EntryKind::File => {
                            summary.files += 1;
                            summary.bytes = summary.bytes.saturating_add(entry.size);
                        }
                        EntryKind::Directory => summary.folders += 1,
                    }
                    entries.push(Entry {
                        name,
                        kind: entry.kind,
                        size: entry.size,
                        mtime: entry.mtime,
                        mode: entry.mode,
                    });
                }
                if !on_entries(&entries) {
                    return Ok(summary);
                }
            }
            ListingMessage::End => return Ok(summary),
            ListingMessage::Error {
                code: FailCode::NotFound | FailCode::NameRefused,
                message,
            } => return Err(SendError::NotThere(message.to_owned())),
            ListingMessage::Error { code, message } => {
                return Err(server_error(code, message, SendError::Server));
            }
        }
    }
}
