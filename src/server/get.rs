//! A get session: the server sends the files and folders a client asked
//! for, as the sender of a session, with the code `haul send` pushes with
//! (`send::haul::send_over`); the client receives them with the code this
//! server receives with.
//!
//! What must stay true here:
//! - Nothing is read from storage before the session's rights were checked
//!   (the caller does, before it calls [`serve`]).
//! - Every path asked for is judged by the store's name rules and resolved
//!   before the first Offer: a refused or missing one ends the session
//!   with an Error, and nothing is sent.
//! - Only what [`Backend::list`] and [`Backend::open_read`] give is sent:
//!   never the hidden area, a symlink or a special file.
//! - The walk of a folder holds, per folder level it is inside, one open
//!   cursor and at most [`WALK_BATCH`] names, and goes at most
//!   [`MAX_GET_DEPTH`] levels down: a deeper folder ends the session with
//!   an Error (after what came before it), so the client knows its copy is
//!   not whole. A folder of a million entries costs what one of 64 does.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::blocking;
use super::listing::{self, Opened};
use crate::connection::Connection;
use crate::engine::receiver::Refusal;
use crate::protocol::haul::{EntryKind, FailCode, GetPaths, MAX_GET_PATHS, Mtime};
use crate::send::walk::{Entry, Source, Walked};
use crate::send::{Event, SendError, Summary};
use crate::storage::{Backend, Listed, ListedKind, Listing, RelPath, Store};
use crate::text::printable;

/// Names read from a folder's cursor at a time.
pub const WALK_BATCH: usize = 64;

/// Most folder levels below a path asked for that a get descends.
pub const MAX_GET_DEPTH: usize = 64;

/// What a path asked for names.
pub(super) enum Resolved {
    File(crate::storage::FileInfo),
    Folder(crate::storage::Metadata),
}

/// Judges and resolves every path of a Get; the refusal (name rules, code
/// 3; nothing there, code 11) names the first path that fails.
pub(super) async fn resolve(
    store: &Store,
    paths: GetPaths<'_>,
) -> Result<Vec<(RelPath, Resolved)>, Refusal> {
    let mut parsed = Vec::with_capacity(MAX_GET_PATHS);
    for raw in paths.iter() {
        let shown = printable(raw.as_bytes());
        let path = RelPath::parse(raw.trim_matches('/').as_bytes()).map_err(|error| {
            Refusal::new(
                FailCode::NameRefused,
                format!("the path {shown} is refused: {error}"),
            )
        })?;
        parsed.push((path, shown));
    }
    let store = store.clone();
    blocking(move || {
        Ok(parsed
            .into_iter()
            .map(|(path, shown)| match resolve_one(&store, &path) {
                Ok(Some(resolved)) => Ok((path, resolved)),
                Ok(None) => Err(Refusal::new(
                    FailCode::NotFound,
                    format!("no such file or folder on the server: {shown}"),
                )),
                Err(error) => Err(Refusal::new(
                    FailCode::Io,
                    format!("could not read {shown} on the server: {error}"),
                )),
            })
            .collect::<Result<Vec<_>, _>>())
    })
    .await
    .map_err(|error| Refusal::new(FailCode::Io, format!("storage failed: {error}")))?
}

/// What `path` names, if it is a file or a folder the store shows: as a
/// listing judges it.
fn resolve_one(store: &Store, path: &RelPath) -> io::Result<Option<Resolved>> {
    Ok(match listing::open(store, Some(path))? {
        Some(Opened::Folder(listing)) => Some(Resolved::Folder(listing.folder())),
        Some(Opened::File(Listed {
            kind: ListedKind::File(info),
            ..
        })) => Some(Resolved::File(info)),
        Some(Opened::File(_)) | None => None,
    })
}

/// Sends what was asked for, each under its last component, then Bye.
/// Returns the connection, for the Error frame of a session that failed.
pub(super) async fn serve(
    conn: Connection,
    store: &Store,
    resolved: Vec<(RelPath, Resolved)>,
    peer: SocketAddr,
    compress: bool,
) -> (Connection, Result<Summary, SendError>) {
    let cut = Arc::new(Mutex::new(None));
    let walk = StoreWalk {
        store: store.clone(),
        roots: resolved.into(),
        stack: Vec::new(),
        cut: Arc::clone(&cut),
    };
    let on_event = move |event: Event<'_>| match event {
        Event::Stored { path, bytes, .. } => {
            info!(%peer, name = %printable(path.as_bytes()), bytes, result = "sent", "get");
        }
        Event::AlreadyThere { path, .. } => {
            info!(%peer, name = %printable(path.as_bytes()), result = "already there", "get");
        }
        Event::Failed { path, reason } => {
            warn!(%peer, name = %printable(path.as_bytes()), reason = %printable(reason.as_bytes()), "get");
        }
        _ => {}
    };
    let cut_reason = move || cut.lock().ok().and_then(|mut cut| cut.take());
    crate::engine::sender::send_over(conn, peer.to_string(), compress, walk, on_event, cut_reason)
        .await
}

/// The entries under the paths asked for, read from the store as the
/// batches need them.
struct StoreWalk {
    store: Store,
    roots: VecDeque<(RelPath, Resolved)>,
    /// The folders the walk is inside, innermost last.
    stack: Vec<Level>,
    /// Set when the walk could not give everything: the session then ends
    /// with this reason instead of a Bye.
    cut: Arc<Mutex<Option<String>>>,
}

struct Level {
    dir: RelPath,
    /// Its path as offered: from the last component of the path asked for.
    shown: String,
    listing: <Store as Backend>::Listing,
    batch: VecDeque<Listed>,
}

impl StoreWalk {
    fn stop(&mut self, reason: String) -> Option<Walked> {
        if let Ok(mut cut) = self.cut.lock() {
            cut.get_or_insert(reason);
        }
        self.roots.clear();
        self.stack.clear();
        None
    }

    /// Enters a folder: its entry, and its cursor on the stack.
    fn enter(&mut self, dir: RelPath, shown: String, mtime: Mtime, mode: u32) -> Option<Walked> {
        if self.stack.len() >= MAX_GET_DEPTH {
            return self.stop(format!(
                "{} is nested more than {MAX_GET_DEPTH} folders deep; get a folder inside it by its own path",
                printable(shown.as_bytes())
            ));
        }
        match self.store.list(Some(&dir)) {
            Ok(listing) => {
                self.stack.push(Level {
                    dir,
                    shown: shown.clone(),
                    listing,
                    batch: VecDeque::new(),
                });
                Some(Walked::Entry(Entry {
                    source: Source::Directory,
                    path: shown,
                    kind: EntryKind::Directory,
                    size: None,
                    mtime,
                    mode,
                    hash: None,
                }))
            }
            Err(error) => self.stop(format!(
                "could not read the folder {} on the server: {error}",
                printable(shown.as_bytes())
            )),
        }
    }

    fn file(&self, path: RelPath, shown: String, info: crate::storage::FileInfo) -> Walked {
        Walked::Entry(Entry {
            source: Source::Stored {
                store: self.store.clone(),
                path,
            },
            path: shown,
            kind: EntryKind::File,
            size: Some(info.size),
            mtime: Mtime::from_system_time(info.modified),
            mode: info.mode & 0o777,
            hash: None,
        })
    }
}

impl Iterator for StoreWalk {
    type Item = Walked;

    fn next(&mut self) -> Option<Walked> {
        loop {
            let Some(level) = self.stack.last_mut() else {
                let (path, resolved) = self.roots.pop_front()?;
                let shown = path.components().next_back()?.to_owned();
                return match resolved {
                    Resolved::File(info) => Some(self.file(path, shown, info)),
                    Resolved::Folder(metadata) => {
                        let mtime = metadata
                            .modified
                            .map(Mtime::from_system_time)
                            .unwrap_or_default();
                        self.enter(path, shown, mtime, metadata.mode.unwrap_or(0o755) & 0o777)
                    }
                };
            };
            if level.batch.is_empty() {
                match level.listing.next_batch(WALK_BATCH) {
                    Ok(batch) if batch.is_empty() => {
                        self.stack.pop();
                        continue;
                    }
                    Ok(batch) => level.batch = batch.into(),
                    Err(error) => {
                        let reason = format!(
                            "could not read the folder {} on the server: {error}",
                            printable(level.shown.as_bytes())
                        );
                        return self.stop(reason);
                    }
                }
            }
            let Some(listed) = level.batch.pop_front() else {
                continue;
            };
            let shown = format!("{}/{}", level.shown, listed.name.as_str());
            let path = level.dir.child(listed.name);
            return match listed.kind {
                ListedKind::File(info) => Some(self.file(path, shown, info)),
                ListedKind::Directory { modified, mode } => {
                    self.enter(path, shown, Mtime::from_system_time(modified), mode & 0o777)
                }
            };
        }
    }
}
