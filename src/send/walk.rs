//! Turns the paths given on the command line into a lazy stream of entries
//! to offer, so that a tree of millions of files is never listed in memory.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use super::{base_name, unreadable};
use crate::protocol::haul::{EntryKind, Hash, Mtime};

/// Where an entry's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Stdin,
    /// A pipe named on the command line (a FIFO, or `<(cmd)`'s
    /// `/dev/fd/N`): read to its end, its size known only then.
    Stream(PathBuf),
    Directory,
    /// A file of a store, sent by a server to a client that asked to get
    /// it: opened through the store, so never through a link.
    Stored {
        store: crate::storage::Store,
        path: crate::storage::RelPath,
    },
}

impl Source {
    /// Opens a file to read it: a local path, or a stored file through its
    /// store.
    pub fn open(&self) -> std::io::Result<std::fs::File> {
        use crate::storage::{Backend, Reader};
        match self {
            Source::File(path) => std::fs::File::open(path),
            Source::Stored { store, path } => {
                let reader = store.open_read(path)?;
                match reader.local_file() {
                    Some(file) => file.try_clone(),
                    None => Err(std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        "this storage cannot be read through a local file",
                    )),
                }
            }
            Source::Stdin | Source::Stream(_) | Source::Directory => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a file to open",
            )),
        }
    }

    /// What it is called in a message about it.
    pub fn label(&self) -> String {
        match self {
            Source::File(path) | Source::Stream(path) => path.display().to_string(),
            Source::Stored { path, .. } => path.to_string(),
            Source::Stdin => "standard input".to_owned(),
            Source::Directory => "a folder".to_owned(),
        }
    }
}

/// One file or directory to offer.
#[derive(Debug, Clone)]
pub struct Entry {
    pub source: Source,
    /// Relative path on the server, `/`-separated.
    pub path: String,
    pub kind: EntryKind,
    /// `None` for stdin, whose length is known only at its end.
    pub size: Option<u64>,
    pub mtime: Mtime,
    pub mode: u32,
    /// The file's BLAKE3 hash, once the server asked for it to compare with
    /// the file of the same name and size it holds.
    pub hash: Option<Hash>,
}

/// What the walk yields: an entry, a path that cannot be sent (with the
/// reason), or something deliberately passed over (with a warning).
#[derive(Debug)]
pub enum Walked {
    Entry(Entry),
    Unsendable { path: String, reason: String },
    Skipped { path: String, reason: String },
}

/// Why `-` alone cannot be sent: a stream has no name of its own.
pub const STDIN_NEEDS_A_NAME: &str = "standard input needs a name: add --name NAME";

/// Walks every source in order. `name` replaces the top-level name of a
/// single source (and is required for stdin, `-`).
pub fn walk(sources: &[PathBuf], name: Option<&str>) -> impl Iterator<Item = Walked> {
    let name = name.map(str::to_owned);
    sources
        .iter()
        .cloned()
        .flat_map(move |source| walk_one(source, name.clone()))
}

/// How much there is to send, for showing progress against a total.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    /// `None` when a size is known only at the end (standard input).
    pub bytes: Option<u64>,
    /// Paths the walk reports as skipped or unsendable: each gets an
    /// outcome as a file does, but is never offered.
    pub passed_over: u64,
}

/// Counts the files under `sources` and adds up their sizes, walking them
/// exactly as the walk that sends them does.
pub fn measure(sources: &[PathBuf], name: Option<&str>) -> Totals {
    let mut totals = Totals {
        files: 0,
        bytes: Some(0),
        passed_over: 0,
    };
    for walked in walk(sources, name) {
        match walked {
            Walked::Entry(entry) if entry.kind == EntryKind::File => {
                totals.files += 1;
                totals.bytes = totals.bytes.zip(entry.size).map(|(sum, size)| sum + size);
            }
            Walked::Entry(_) => {}
            Walked::Unsendable { .. } | Walked::Skipped { .. } => totals.passed_over += 1,
        }
    }
    totals
}

fn walk_one(source: PathBuf, name: Option<String>) -> Box<dyn Iterator<Item = Walked> + Send> {
    let shown = source.display().to_string();
    if source.as_os_str() == "-" {
        let Some(name) = name else {
            return Box::new(std::iter::once(Walked::Unsendable {
                path: shown,
                reason: STDIN_NEEDS_A_NAME.into(),
            }));
        };
        return Box::new(std::iter::once(Walked::Entry(Entry {
            source: Source::Stdin,
            path: name,
            kind: EntryKind::File,
            size: None,
            mtime: Mtime::from_system_time(std::time::SystemTime::now()),
            mode: 0o644,
            hash: None,
        })));
    }
    let top = match name {
        Some(name) => name,
        None => match base_name(&source) {
            Ok(top) => top,
            Err(error) => {
                return Box::new(std::iter::once(Walked::Unsendable {
                    path: shown,
                    reason: error.to_string(),
                }));
            }
        },
    };
    let walker = WalkDir::new(&source)
        .follow_links(false)
        .sort_by_file_name();
    let mut items = walker.into_iter();
    Box::new(std::iter::from_fn(move || {
        Some(match items.next()? {
            // Where a receiving haul keeps partial data (a folder an
            // interrupted get left, an inbox): every haul store refuses the
            // name, so it is passed over here, with all it holds.
            Ok(dir_entry)
                if dir_entry.depth() > 0
                    && dir_entry.file_name() == crate::storage::HIDDEN_AREA =>
            {
                if dir_entry.file_type().is_dir() {
                    items.skip_current_dir();
                }
                Walked::Skipped {
                    path: dir_entry.path().display().to_string(),
                    reason: format!(
                        "the name {} is reserved for haul's partial data; not sent",
                        crate::storage::HIDDEN_AREA
                    ),
                }
            }
            Ok(dir_entry) => describe(&source, &top, dir_entry.path(), dir_entry.depth() == 0),
            Err(error) => Walked::Unsendable {
                path: error.path().unwrap_or(&source).display().to_string(),
                reason: error
                    .io_error()
                    .map_or_else(|| error.to_string(), unreadable),
            },
        })
    }))
}

fn describe(root: &Path, top: &str, path: &Path, is_root: bool) -> Walked {
    let relative = if is_root {
        top.to_owned()
    } else {
        let Ok(inner) = path.strip_prefix(root) else {
            unreachable!("walkdir yields paths under its root");
        };
        match inner.to_str() {
            Some(inner) => format!("{top}/{inner}"),
            None => {
                return Walked::Unsendable {
                    path: path.display().to_string(),
                    reason: "the name is not UTF-8".into(),
                };
            }
        }
    };
    // The root is followed if it is a symlink the user named; below it,
    // links are never followed.
    let metadata = match if is_root {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    } {
        Ok(metadata) => metadata,
        Err(error) => {
            return Walked::Unsendable {
                path: path.display().to_string(),
                reason: unreadable(&error),
            };
        }
    };
    if is_root && metadata.file_type().is_fifo() {
        return Walked::Entry(Entry {
            source: Source::Stream(path.to_owned()),
            path: relative,
            kind: EntryKind::File,
            size: None,
            mtime: Mtime::from_system_time(std::time::SystemTime::now()),
            mode: 0o644,
            hash: None,
        });
    }
    let kind = if metadata.is_dir() {
        EntryKind::Directory
    } else if metadata.is_file() {
        EntryKind::File
    } else if metadata.is_symlink() {
        return Walked::Skipped {
            path: path.display().to_string(),
            reason: "symbolic links are not followed".into(),
        };
    } else {
        return Walked::Skipped {
            path: path.display().to_string(),
            reason: "not a regular file or directory".into(),
        };
    };
    let mtime = metadata
        .modified()
        .map_or_else(|_| Mtime::default(), Mtime::from_system_time);
    Walked::Entry(Entry {
        source: match kind {
            EntryKind::File => Source::File(path.to_owned()),
            EntryKind::Directory => Source::Directory,
        },
        path: relative,
        kind,
        size: (kind == EntryKind::File).then_some(metadata.len()),
        mtime,
        mode: metadata.permissions().mode() & 0o777,
        hash: None,
    })
}
