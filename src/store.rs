//! The inbox: the only code that creates, renames or deletes files in the
//! server's receive directory.
//!
//! Every received name is judged here ([`SafeName::parse`]) and every file
//! operation goes through a directory handle (`cap-std`), so no name, however
//! it was crafted, can reach outside the directory. Data arrives under a
//! temporary name in a hidden area ([`HIDDEN_AREA`]) and only a complete file
//! is given its final name; a file under a final name is never partial.
//!
//! This module must never read from the network or decide what a protocol
//! means; it is handed names and bytes, and it keeps them safe.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use thiserror::Error;

/// Folder inside the inbox that holds data still arriving. Its name is
/// reserved: no sender may store a file under it.
pub const HIDDEN_AREA: &str = ".haul";

/// How the names of resumable partial files begin, in [`HIDDEN_AREA`].
const RESUME_PREFIX: &str = "resume-";

/// Longest file name most Linux file systems accept, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A single path component that is safe to create inside the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeName(String);

/// Why a received name was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is `.` or `..`")]
    DotOrDotDot,
    #[error("the name is not UTF-8")]
    NotUtf8,
    #[error("the name contains a NUL or another control character")]
    ControlCharacter,
    #[error("the name contains a path separator")]
    Separator,
    #[error("the name is {0} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    #[error("the name `{HIDDEN_AREA}` is reserved for haul's own use")]
    Reserved,
}

impl SafeName {
    /// Judges a received name. Only a single, printable, UTF-8 component of at
    /// most [`MAX_NAME_LEN`] bytes passes.
    pub fn parse(raw: &[u8]) -> Result<SafeName, NameError> {
        if raw.is_empty() {
            return Err(NameError::Empty);
        }
        let name = std::str::from_utf8(raw).map_err(|_| NameError::NotUtf8)?;
        if name.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        if name.contains(['/', '\\']) {
            return Err(NameError::Separator);
        }
        if name == "." || name == ".." {
            return Err(NameError::DotOrDotDot);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(name.len()));
        }
        if name == HIDDEN_AREA {
            return Err(NameError::Reserved);
        }
        Ok(SafeName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `n`th alternative to this name when it is taken: `report (1).pdf`.
    /// The stem is shortened when needed so that the result stays a valid name.
    fn numbered(&self, n: u64) -> String {
        let (stem, extension) = match self.0.rfind('.') {
            Some(dot) if dot > 0 => self.0.split_at(dot),
            _ => (self.0.as_str(), ""),
        };
        let suffix = format!(" ({n}){extension}");
        let mut stem_len = stem.len().min(MAX_NAME_LEN.saturating_sub(suffix.len()));
        while !stem.is_char_boundary(stem_len) {
            stem_len -= 1;
        }
        format!("{}{suffix}", &stem[..stem_len])
    }
}

impl fmt::Display for SafeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A relative path inside the inbox: one or more [`SafeName`] components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath(Vec<SafeName>);

impl RelPath {
    /// Judges a `/`-separated relative path: every component must pass
    /// [`SafeName::parse`], so absolute paths, `..`, empty components and
    /// backslashes are all refused.
    pub fn parse(raw: &[u8]) -> Result<RelPath, NameError> {
        raw.split(|&byte| byte == b'/')
            .map(SafeName::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(RelPath)
    }

    pub fn single(name: SafeName) -> RelPath {
        RelPath(vec![name])
    }

    fn to_path(&self) -> PathBuf {
        self.0.iter().map(SafeName::as_str).collect()
    }

    fn parent(&self) -> Option<PathBuf> {
        let (_, parents) = self.0.split_last()?;
        (!parents.is_empty()).then(|| parents.iter().map(SafeName::as_str).collect())
    }

    fn with_last(&self, last: String) -> PathBuf {
        let mut path = self.parent().unwrap_or_default();
        path.push(last);
        path
    }

    fn last(&self) -> &SafeName {
        self.0.last().expect("a RelPath has at least one component")
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, component) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("/")?;
            }
            f.write_str(component.as_str())?;
        }
        Ok(())
    }
}

/// What to do when a file with the incoming name already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// Keep both: the new file gets the first free `name (N).ext`.
    Rename,
    /// Replace the existing file.
    Overwrite,
    /// Keep the existing file and fail the new one.
    Refuse,
}

/// What the inbox holds under a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Nothing,
    File {
        size: u64,
    },
    Directory,
    /// A symlink or a special file: never written through or replaced.
    Other,
}

/// Metadata to give a received file or directory.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metadata {
    pub modified: Option<SystemTime>,
    /// Permission bits; anything beyond `0o777` is ignored.
    pub mode: Option<u32>,
}

/// The receive directory. Cheap to clone; every clone is the same inbox.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    /// Handle every operation goes through, so no name can reach outside.
    dir: Dir,
    /// Handle on [`HIDDEN_AREA`], where partial files live.
    hidden: Dir,
    /// The same folder opened for reading: `hidden` may be a path-only
    /// handle, which cannot name the file system to sync.
    hidden_for_sync: std::fs::File,
    on_conflict: OnConflict,
    /// Makes temporary names unique within this process.
    next_temp: AtomicU64,
    /// Set once the filesystem refused a rename that must not replace.
    no_replace_unsupported: AtomicBool,
    /// Resumable partials being written now, and the session holding
    /// each: a second session wanting the same file either asks the holder
    /// to let go ([`Store::begin_resumable_for`]) or gets a private
    /// temporary file, never a share of the same one.
    busy: Mutex<HashMap<String, Holder>>,
    /// Woken whenever a claim in `busy` is released, for sessions waiting
    /// to take one over.
    released: tokio::sync::Notify,
    /// Resumable partial files known to be on disk. An offer whose key is
    /// not here is answered without a lookup (one call per file, 5% of the
    /// server's time for small files); should another process have made
    /// that file meanwhile, creating it fails and the transfer goes to a
    /// private file instead, from 0 as answered.
    held: Mutex<HashSet<String>>,
    /// The process's umask, when it could be read: a file made with the
    /// mode it is to have then needs no change of mode afterwards.
    umask: Option<u32>,
}

impl Store {
    /// Opens (and creates, if missing) the receive directory at `path`.
    pub fn open(path: &Path, on_conflict: OnConflict) -> io::Result<Store> {
        std::fs::create_dir_all(path)?;
        let dir = Dir::open_ambient_dir(path, ambient_authority())?;
        dir.create_dir_all(HIDDEN_AREA)?;
        let hidden = dir.open_dir(HIDDEN_AREA)?;
        let mut held = HashSet::new();
        for entry in hidden.entries()? {
            if let Some(name) = entry?.file_name().to_str()
                && name.starts_with(RESUME_PREFIX)
            {
                held.insert(name.to_owned());
            }
        }
        let hidden_for_sync = dir
            .open_with(HIDDEN_AREA, OpenOptions::new().read(true))?
            .into_std();
        Ok(Store {
            inner: Arc::new(StoreInner {
                dir,
                hidden,
                hidden_for_sync,
                on_conflict,
                next_temp: AtomicU64::new(0),
                no_replace_unsupported: AtomicBool::new(false),
                busy: Mutex::new(HashMap::new()),
                released: tokio::sync::Notify::new(),
                held: Mutex::new(held),
                umask: process_umask(),
            }),
        })
    }

    /// Removes partial data not written to for `max_age`; returns how many
    /// files went.
    pub fn remove_stale(&self, max_age: Duration) -> io::Result<usize> {
        let busy: HashSet<String> = locked(&self.inner.busy).keys().cloned().collect();
        let mut removed = 0;
        for entry in self.inner.hidden.entries()? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if busy.contains(name) {
                continue;
            }
            let age = entry
                .metadata()?
                .modified()?
                .into_std()
                .elapsed()
                .unwrap_or_default();
            if age >= max_age && self.inner.hidden.remove_file(name).is_ok() {
                self.inner.forget_held(name);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Bytes an unprivileged writer may still add to the inbox's file system.
    pub fn available_space(&self) -> io::Result<u64> {
        let stat = rustix::fs::fstatvfs(&self.inner.dir)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// What is stored under `path` now. Symlinks are reported, not followed.
    pub fn existing(&self, path: &RelPath) -> io::Result<Existing> {
        match self.inner.dir.symlink_metadata(path.to_path()) {
            Ok(metadata) if metadata.is_file() => Ok(Existing::File {
                size: metadata.len(),
            }),
            Ok(metadata) if metadata.is_dir() => Ok(Existing::Directory),
            Ok(_) => Ok(Existing::Other),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Existing::Nothing),
            Err(error) => Err(error),
        }
    }

    /// The BLAKE3 hash of the file stored under `path`.
    pub fn hash_existing(&self, path: &RelPath) -> io::Result<blake3::Hash> {
        let file = self.inner.dir.open(path.to_path())?.into_std();
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(file)?;
        Ok(hasher.finalize())
    }

    /// Creates the directory `path` and its parents.
    pub fn create_dir(&self, path: &RelPath) -> io::Result<()> {
        self.inner.dir.create_dir_all(path.to_path())
    }

    /// Gives an existing directory its modification time and mode. Done after
    /// its files are in place, since adding a file changes the time.
    pub fn set_dir_metadata(&self, path: &RelPath, metadata: Metadata) -> io::Result<()> {
        let dir = self
            .inner
            .dir
            .open_with(path.to_path(), OpenOptions::new().read(true))?
            .into_std();
        apply_metadata(&dir, metadata, None)
    }

    /// Starts receiving a file that will be stored as `target`, in a fresh
    /// temporary file (made on the first [`Partial::writer`]). Until it is
    /// committed nothing exists under a final name, and dropping the
    /// [`Partial`] removes what was written.
    pub fn begin(&self, target: RelPath) -> Partial {
        Partial {
            store: self.clone(),
            file: None,
            on_disk: OnDisk::NotYet,
            temp_name: String::new(),
            target,
            offset: 0,
            resumable: false,
            claimed: false,
            committed: false,
            metadata: Metadata::default(),
            created_mode: None,
        }
    }

    /// Starts or resumes receiving the file identified by `key` (which must
    /// name its content: path, size and modification time). The data already
    /// held is kept across connections and server restarts; [`Partial::offset`]
    /// says how much there is. If another connection is receiving the same
    /// key right now, this one gets a fresh, private temporary file.
    ///
    /// Only looks: the file is opened, or made, by [`Partial::writer`], so
    /// that a batch of answered offers holds no open file each.
    pub fn begin_resumable(&self, target: RelPath, key: &str) -> io::Result<Partial> {
        match self.begin_resumable_for(target.clone(), key, &Holder::new(), false)? {
            Some(partial) => Ok(partial),
            None => Ok(self.begin(target)),
        }
    }

    /// [`Store::begin_resumable`] for the session `holder`, which then
    /// holds the claim. If another session holds it and `take_over` is set,
    /// that session is asked to let go and `None` returned: wait with
    /// [`Store::wait_released`], then call again without `take_over`.
    pub fn begin_resumable_for(
        &self,
        target: RelPath,
        key: &str,
        holder: &Holder,
        take_over: bool,
    ) -> io::Result<Option<Partial>> {
        let temp_name = format!("{RESUME_PREFIX}{key}");
        match locked(&self.inner.busy).entry(temp_name.clone()) {
            std::collections::hash_map::Entry::Vacant(free) => {
                free.insert(holder.clone());
            }
            std::collections::hash_map::Entry::Occupied(held)
                if take_over && !held.get().is(holder) =>
            {
                held.get().ask();
                return Ok(None);
            }
            std::collections::hash_map::Entry::Occupied(_) => return Ok(Some(self.begin(target))),
        }
        let known = locked(&self.inner.held).contains(&temp_name);
        let looked_up = if known {
            self.inner.hidden.symlink_metadata(&temp_name)
        } else {
            Err(io::ErrorKind::NotFound.into())
        };
        let held = match looked_up {
            Ok(metadata) if metadata.is_file() => Some(metadata.len()),
            Ok(_) => {
                self.release(&temp_name);
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "something other than partial data is in the way in the hidden area",
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => {
                self.release(&temp_name);
                return Err(error);
            }
        };
        Ok(Some(Partial {
            store: self.clone(),
            file: None,
            on_disk: if held.is_some() {
                OnDisk::Held
            } else {
                OnDisk::NotYet
            },
            temp_name,
            target,
            offset: held.unwrap_or(0),
            resumable: true,
            claimed: true,
            committed: false,
            metadata: Metadata::default(),
            created_mode: None,
        }))
    }

    /// Waits, until `deadline` at most, for no session to hold the claim
    /// on `key`; returns whether it was released in time.
    pub async fn wait_released(&self, key: &str, deadline: tokio::time::Instant) -> bool {
        let temp_name = format!("{RESUME_PREFIX}{key}");
        loop {
            // Registered before looking, so that a release between the look
            // and the wait still wakes it.
            let released = self.inner.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            if !locked(&self.inner.busy).contains_key(&temp_name) {
                return true;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return false;
            }
        }
    }

    /// Makes a new temporary file under a name unique to this process.
    fn create_temp(&self, mode: u32) -> io::Result<(String, std::fs::File)> {
        loop {
            let serial = self.inner.next_temp.fetch_add(1, Ordering::Relaxed);
            let temp_name = format!("tmp-{}-{serial}", std::process::id());
            match self.open_partial(&temp_name, true, mode) {
                Ok(file) => return Ok((temp_name, file)),
                // Left over from an earlier process with the same id.
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Opens the partial file `temp_name`; a file it makes gets `mode`,
    /// less the umask.
    fn open_partial(
        &self,
        temp_name: &str,
        create_new: bool,
        mode: u32,
    ) -> io::Result<std::fs::File> {
        let mut options = OpenOptions::new();
        options.read(true).append(true).mode(mode);
        if create_new {
            options.create_new(true);
        } else {
            options.create(true);
        }
        Ok(self.inner.hidden.open_with(temp_name, &options)?.into_std())
    }

    fn release(&self, temp_name: &str) {
        locked(&self.inner.busy).remove(temp_name);
        self.inner.released.notify_waiters();
    }

    /// Makes every partial durable with one file-system sync, then gives each
    /// its final name and syncs the directories that changed. Returns, for
    /// each partial in order, the path it was stored under.
    pub fn commit_all(&self, partials: Vec<Partial>) -> Vec<io::Result<String>> {
        let mut commit = self.start_commit();
        let placed = commit.place(partials);
        commit.finish(placed)
    }

    /// Starts committing one batch of files group by group, so that the
    /// first groups get their names while the rest are still arriving.
    pub fn start_commit(&self) -> Commit {
        Commit {
            store: self.clone(),
            parents: HashMap::new(),
        }
    }

    /// The folder (relative to the inbox, empty for the inbox itself) that
    /// received files go in, made if missing.
    fn open_parent(&self, relative: &Path) -> io::Result<Dir> {
        if relative.as_os_str().is_empty() {
            return self.inner.dir.try_clone();
        }
        self.inner.dir.create_dir_all(relative)?;
        self.inner.dir.open_dir(relative)
    }

    /// Makes a directory's entries durable. The handle `cap-std` keeps may be
    /// opened for path lookups only, which cannot be synced, so open it for
    /// reading.
    fn sync_dir(&self, relative: &Path) -> io::Result<()> {
        let path = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            relative
        };
        self.inner
            .dir
            .open_with(path, OpenOptions::new().read(true))?
            .into_std()
            .sync_all()
    }
}

/// One batch's commit, made of groups: each group's data is synced and
/// named as soon as it is whole, and the folders that gained names are
/// synced once, at the end. A file is named only after its data is durable,
/// and the batch is durable when [`Commit::finish`] returns, as with one
/// [`Store::commit_all`].
pub struct Commit {
    store: Store,
    /// Each folder is made and opened once per batch, not once per file:
    /// for a folder of small files that was 6 of the 19 calls per file.
    parents: HashMap<PathBuf, io::Result<Dir>>,
}

impl Commit {
    /// Makes the data of `partials` durable with one sync, then gives each
    /// its final name. Returns, for each partial in order, the path it was
    /// stored under; the names are durable only after [`Commit::finish`].
    pub fn place(&mut self, partials: Vec<Partial>) -> Vec<io::Result<String>> {
        let store = &self.store;
        // Times and modes first, so that the sync below covers them too.
        let prepared: Vec<io::Result<()>> = partials.iter().map(Partial::apply_metadata).collect();
        let synced = match partials.as_slice() {
            [] => return Vec::new(),
            [
                Partial {
                    file: Some(only), ..
                },
            ] => only.sync_all(),
            _ => rustix::fs::syncfs(&store.inner.hidden_for_sync).map_err(io::Error::from),
        };
        if let Err(error) = synced {
            return partials
                .iter()
                .map(|_| Err(io::Error::new(error.kind(), error.to_string())))
                .collect();
        }
        partials
            .into_iter()
            .zip(prepared)
            .map(|(partial, prepared)| {
                let parent = partial.target.parent().unwrap_or_default();
                prepared?;
                let dir = self
                    .parents
                    .entry(parent)
                    .or_insert_with_key(|parent| store.open_parent(parent));
                match dir {
                    Ok(dir) => partial.place(dir),
                    Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
                }
            })
            .collect()
    }

    /// Syncs every folder that gained a name, so that the names placed are
    /// durable; if that fails, every result in `placed` becomes the failure.
    pub fn finish(self, placed: Vec<io::Result<String>>) -> Vec<io::Result<String>> {
        let changed_dirs = self
            .parents
            .into_iter()
            .filter_map(|(path, dir)| dir.is_ok().then_some(path));
        for dir in changed_dirs {
            if let Err(error) = self.store.sync_dir(&dir) {
                return placed
                    .into_iter()
                    .map(|result| result.and(Err(io::Error::new(error.kind(), error.to_string()))))
                    .collect();
            }
        }
        placed
    }
}

/// One session's hold on the resumable partials it claimed. A newer
/// session of the same sender that wants one of them asks the holder to
/// let go: [`Holder::asked`] completes, and the holder ends its transfer,
/// keeping the data it wrote, which releases the claim. Cheap to clone;
/// every clone is the same holder.
#[derive(Clone)]
pub struct Holder {
    asked: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Holder {
    pub fn new() -> Holder {
        Holder {
            asked: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Completes once another session has asked for one of this holder's
    /// claims (at once, if it already has).
    pub async fn asked(&self) {
        let mut asked = self.asked.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = asked.wait_for(|asked| *asked).await;
    }

    fn ask(&self) {
        self.asked.send_replace(true);
    }

    fn is(&self, other: &Holder) -> bool {
        Arc::ptr_eq(&self.asked, &other.asked)
    }
}

impl Default for Holder {
    fn default() -> Holder {
        Holder::new()
    }
}

/// A file being received, under a temporary name in the hidden area.
pub struct Partial {
    store: Store,
    /// Open while data is written, and closed by [`Partial::close`] once the
    /// file is whole, so that a batch does not hold a descriptor per file.
    file: Option<Arc<std::fs::File>>,
    on_disk: OnDisk,
    /// Empty until a private temporary file is made.
    temp_name: String,
    target: RelPath,
    /// Bytes already held when this partial was opened.
    offset: u64,
    /// Kept when dropped uncommitted, so that a later transfer resumes it.
    resumable: bool,
    /// Holds the store's claim on `temp_name` (see `StoreInner::busy`).
    claimed: bool,
    committed: bool,
    /// Applied at close or commit, before the data is synced.
    metadata: Metadata,
    /// The mode the file was made with, when this partial made it.
    created_mode: Option<u32>,
}

/// Whether a partial's file exists yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDisk {
    /// Made on the first write.
    NotYet,
    /// Held from an earlier transfer, [`Partial::offset`] bytes long when
    /// the offer was answered.
    Held,
    /// Made or opened by this partial.
    Opened,
}

impl Partial {
    /// A handle to append the received bytes to, opening (or making) the
    /// file on first use. Shared, not duplicated: a duplicate cost two
    /// system calls per file.
    pub fn writer(&mut self) -> io::Result<Arc<std::fs::File>> {
        if let Some(file) = &self.file {
            return Ok(Arc::clone(file));
        }
        // Made with its final mode where it can be, so that it needs no
        // change of mode once whole; always writable by the server, so
        // that an interrupted transfer can resume.
        let mode = self
            .metadata
            .mode
            .map_or(0o666, |mode| (mode & 0o777) | 0o600);
        let mut made = true;
        let file = match self.on_disk {
            OnDisk::Opened => {
                return Err(io::Error::other("the partial file was already closed"));
            }
            OnDisk::Held => {
                made = false;
                let file = self.store.open_partial(&self.temp_name, false, mode)?;
                if file.metadata()?.len() != self.offset {
                    return Err(io::Error::other(
                        "the partial data changed after the offer was answered",
                    ));
                }
                file
            }
            OnDisk::NotYet if self.temp_name.is_empty() => {
                let (temp_name, file) = self.store.create_temp(mode)?;
                self.temp_name = temp_name;
                file
            }
            OnDisk::NotYet => match self.store.open_partial(&self.temp_name, true, mode) {
                Ok(file) => {
                    locked(&self.store.inner.held).insert(self.temp_name.clone());
                    file
                }
                // Made since the offer was answered, by another process on
                // this inbox: write privately, from 0 as answered.
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    self.store.release(&self.temp_name);
                    self.claimed = false;
                    self.resumable = false;
                    let (temp_name, file) = self.store.create_temp(mode)?;
                    self.temp_name = temp_name;
                    file
                }
                Err(error) => return Err(error),
            },
        };
        self.on_disk = OnDisk::Opened;
        if made {
            self.created_mode = self.store.inner.umask.map(|umask| mode & !umask);
        }
        let file = Arc::new(file);
        self.file = Some(Arc::clone(&file));
        Ok(file)
    }

    /// Gives the whole file its time and mode and closes it. The data is
    /// synced at commit all the same, by a sync of the whole file system
    /// when the batch has more than one file.
    pub fn close(&mut self) -> io::Result<()> {
        self.apply_metadata()?;
        self.file = None;
        Ok(())
    }

    /// Gives the file its time and mode while it is open; a closed one got
    /// them when it was closed.
    fn apply_metadata(&self) -> io::Result<()> {
        match &self.file {
            Some(file) => apply_metadata(file, self.metadata, self.created_mode),
            None => Ok(()),
        }
    }

    /// Bytes already held from an earlier, interrupted transfer.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Feeds the first [`Partial::offset`] bytes to `hasher`, so that a
    /// resumed file is verified whole.
    pub fn hash_held_bytes(&mut self, hasher: &mut blake3::Hasher) -> io::Result<()> {
        let file = self.writer()?;
        let mut buffer = vec![0u8; 1024 * 1024];
        let mut position = 0;
        while position < self.offset {
            let want = usize::try_from(self.offset - position)
                .map_or(buffer.len(), |left| left.min(buffer.len()));
            let read = file.read_at(&mut buffer[..want], position)?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "partial data shrank",
                ));
            }
            hasher.update(&buffer[..read]);
            position += read as u64;
        }
        Ok(())
    }

    /// The modification time and mode to give the file when it is committed.
    pub fn set_metadata(&mut self, metadata: Metadata) {
        self.metadata = metadata;
    }

    /// Deletes the data, resumable or not: it is known to be wrong.
    pub fn discard(mut self) {
        self.resumable = false;
    }

    /// Makes the file durable and gives it its final name; returns that name,
    /// which differs from the requested one when the store kept both.
    pub fn commit(self) -> io::Result<String> {
        let store = self.store.clone();
        store
            .commit_all(vec![self])
            .pop()
            .unwrap_or_else(|| Err(io::Error::other("nothing committed")))
    }

    /// Gives the synced data its final name in `parent`, the target's
    /// folder, by the store's conflict policy.
    fn place(mut self, parent: &Dir) -> io::Result<String> {
        let inner = Arc::clone(&self.store.inner);
        let stored_as = match inner.on_conflict {
            OnConflict::Overwrite => {
                if let Existing::Directory | Existing::Other = self.store.existing(&self.target)? {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "a directory or link is in the way",
                    ));
                }
                inner
                    .hidden
                    .rename(&self.temp_name, parent, self.target.last().as_str())?;
                self.committed = true;
                self.target.to_path()
            }
            OnConflict::Rename | OnConflict::Refuse => {
                let numbered = inner.on_conflict == OnConflict::Rename;
                let to = self.move_under_free_name(parent, numbered)?;
                self.committed = true;
                to
            }
        };
        Ok(stored_as.to_string_lossy().into_owned())
    }

    /// Moves the data to the first name not taken. The move never replaces
    /// an existing file, so two receivers racing for one name can never
    /// replace each other's file.
    fn move_under_free_name(&self, parent: &Dir, numbered: bool) -> io::Result<PathBuf> {
        let inner = &self.store.inner;
        let mut candidate = self.target.last().as_str().to_owned();
        for n in 1u64.. {
            match inner.move_without_replacing(&self.temp_name, parent, &candidate) {
                Ok(()) => return Ok(self.target.with_last(candidate)),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists && numbered => {
                    candidate = self.target.last().numbered(n);
                }
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "a different file already exists under this name",
                    ));
                }
                Err(error) => return Err(error),
            }
        }
        unreachable!("u64 counter exhausted")
    }
}

impl StoreInner {
    /// Notes that a resumable partial file is no longer on disk.
    fn forget_held(&self, temp_name: &str) {
        locked(&self.held).remove(temp_name);
    }

    /// Moves `temp_name` out of the hidden area to `name` in `parent`,
    /// failing with `AlreadyExists` if `name` is taken. One
    /// `renameat2(RENAME_NOREPLACE)` where the filesystem supports it;
    /// elsewhere a hard link, which also refuses to replace, and an unlink
    /// (one system call more per file, which small files notice).
    fn move_without_replacing(&self, temp_name: &str, parent: &Dir, name: &str) -> io::Result<()> {
        if !self.no_replace_unsupported.load(Ordering::Relaxed) {
            match rustix::fs::renameat_with(
                &self.hidden,
                temp_name,
                parent,
                name,
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                    self.no_replace_unsupported.store(true, Ordering::Relaxed);
                }
                Err(error) => return Err(error.into()),
            }
        }
        self.hidden.hard_link(temp_name, parent, name)?;
        self.hidden.remove_file(temp_name)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.committed && !self.resumable && self.on_disk != OnDisk::NotYet {
            // The data is incomplete; a failure to remove it only leaves
            // litter in the hidden area, never a partial file under its name.
            let _ = self.store.inner.hidden.remove_file(&self.temp_name);
            self.store.inner.forget_held(&self.temp_name);
        }
        if self.committed {
            self.store.inner.forget_held(&self.temp_name);
        }
        if self.claimed {
            self.store.release(&self.temp_name);
        }
    }
}

/// Locks `mutex`. The sets of names it guards here stay whole even if a
/// thread panicked while holding one, so the poison is ignored.
fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Gives `file` the time and mode in `metadata`; the mode is left alone
/// when the file was made with it (`created_mode`).
fn apply_metadata(
    file: &std::fs::File,
    metadata: Metadata,
    created_mode: Option<u32>,
) -> io::Result<()> {
    if let Some(mode) = metadata.mode
        && created_mode != Some(mode & 0o777)
    {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))?;
    }
    if let Some(modified) = metadata.modified {
        file.set_modified(modified)?;
    }
    Ok(())
}

/// The umask, from `/proc/self/status`: asking the kernel for it means
/// setting it, which would race with files being made by other threads.
fn process_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn ordinary_names_pass() {
        for name in [
            "report.pdf",
            "a b c.txt",
            "naïve – 日本.txt",
            ".bashrc",
            "x",
        ] {
            assert_eq!(SafeName::parse(name.as_bytes()).unwrap().as_str(), name);
        }
        let longest = "n".repeat(MAX_NAME_LEN);
        assert!(SafeName::parse(longest.as_bytes()).is_ok());
    }

    #[test]
    fn dangerous_names_are_refused_with_their_reason() {
        let cases: &[(&[u8], NameError)] = &[
            (b"", NameError::Empty),
            (b".", NameError::DotOrDotDot),
            (b"..", NameError::DotOrDotDot),
            (b"a\0b", NameError::ControlCharacter),
            (b"a\nb", NameError::ControlCharacter),
            (b"\x1b[31mred", NameError::ControlCharacter),
            ("a\u{9b}b".as_bytes(), NameError::ControlCharacter),
            (b"\xff\xfe", NameError::NotUtf8),
            (b"a/b", NameError::Separator),
            (b"..\\x", NameError::Separator),
            (b".haul", NameError::Reserved),
        ];
        for (raw, expected) in cases {
            assert_eq!(SafeName::parse(raw).as_ref(), Err(expected), "{raw:?}");
        }
        let too_long = "n".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            SafeName::parse(too_long.as_bytes()),
            Err(NameError::TooLong(MAX_NAME_LEN + 1))
        );
    }

    #[test]
    fn relative_paths_are_judged_component_by_component() {
        assert_eq!(
            RelPath::parse(b"a/b c/d.txt").unwrap().to_string(),
            "a/b c/d.txt"
        );
        let cases: &[(&[u8], NameError)] = &[
            (b"/etc/passwd", NameError::Empty),
            (b"a/../../b", NameError::DotOrDotDot),
            (b"a//b", NameError::Empty),
            (b"a/", NameError::Empty),
            (b"..\\x", NameError::Separator),
            (b".haul/x", NameError::Reserved),
            (b"a/\0/b", NameError::ControlCharacter),
        ];
        for (raw, expected) in cases {
            assert_eq!(RelPath::parse(raw).as_ref(), Err(expected), "{raw:?}");
        }
    }

    #[test]
    fn a_resumable_partial_survives_and_reports_what_it_holds() {
        let temp = tempfile::tempdir().unwrap();
        let store = Store::open(temp.path(), OnConflict::Rename).unwrap();
        let target = RelPath::parse(b"dir/big.bin").unwrap();
        let mut first = store.begin_resumable(target.clone(), "key").unwrap();
        assert_eq!(first.offset(), 0);
        first
            .writer()
            .unwrap()
            .as_ref()
            .write_all(b"first half ")
            .unwrap();
        // While one connection holds the key, a second gets a private file.
        let second = store.begin_resumable(target.clone(), "key").unwrap();
        assert_eq!(second.offset(), 0);
        drop(second);
        drop(first);
        let mut resumed = store.begin_resumable(target, "key").unwrap();
        assert_eq!(resumed.offset(), 11);
        let mut hasher = blake3::Hasher::new();
        resumed.hash_held_bytes(&mut hasher).unwrap();
        assert_eq!(hasher.finalize(), blake3::hash(b"first half "));
        resumed
            .writer()
            .unwrap()
            .as_ref()
            .write_all(b"second half")
            .unwrap();
        assert_eq!(resumed.commit().unwrap(), "dir/big.bin");
        assert_eq!(
            std::fs::read(temp.path().join("dir/big.bin")).unwrap(),
            b"first half second half"
        );
        assert_eq!(
            std::fs::read_dir(temp.path().join(HIDDEN_AREA))
                .unwrap()
                .count(),
            0
        );
    }

    /// A second session of the same sender asks the first to let go of
    /// the partial data it holds, and gets it, whole, once it has; the
    /// holder learns it was asked.
    #[tokio::test]
    async fn a_held_partial_is_handed_over_once_its_holder_lets_go() {
        let temp = tempfile::tempdir().unwrap();
        let store = Store::open(temp.path(), OnConflict::Rename).unwrap();
        let target = RelPath::parse(b"big.bin").unwrap();
        let (old, new) = (Holder::new(), Holder::new());
        let mut held = store
            .begin_resumable_for(target.clone(), "key", &old, true)
            .unwrap()
            .unwrap();
        held.writer()
            .unwrap()
            .as_ref()
            .write_all(b"first part")
            .unwrap();
        let again = store.begin_resumable_for(target.clone(), "key", &old, true);
        assert_eq!(
            again.unwrap().unwrap().temp_name,
            "",
            "a holder never asks itself: a second claim of its own is private"
        );

        let asked = store.begin_resumable_for(target.clone(), "key", &new, true);
        assert!(asked.unwrap().is_none(), "the holder is asked first");
        old.asked().await;
        let soon = tokio::time::Instant::now() + Duration::from_millis(10);
        assert!(!store.wait_released("key", soon).await, "still held");
        let later = tokio::time::Instant::now() + Duration::from_secs(60);
        let waiting = store.wait_released("key", later);
        let (released, ()) = tokio::join!(waiting, async move { drop(held) });
        assert!(released);
        let taken = store
            .begin_resumable_for(target, "key", &new, false)
            .unwrap()
            .unwrap();
        assert_eq!(taken.offset(), 10);
        assert_eq!(taken.temp_name, "resume-key");
    }

    #[test]
    fn a_batch_of_closed_partials_commits_with_content_time_and_mode() {
        let temp = tempfile::tempdir().unwrap();
        let store = Store::open(temp.path(), OnConflict::Rename).unwrap();
        let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        // Made with their modes where the umask allows, changed after
        // where it does not (0o666), or where the server keeps the right to
        // write (0o444).
        let modes = [0o640, 0o444, 0o666];
        let partials: Vec<Partial> = (0..3)
            .map(|index| {
                let name = format!("dir/{index}.txt");
                let key = format!("key-{index}");
                let mut partial = store
                    .begin_resumable(RelPath::parse(name.as_bytes()).unwrap(), &key)
                    .unwrap();
                partial.set_metadata(Metadata {
                    modified: Some(modified),
                    mode: Some(modes[index]),
                });
                let file = partial.writer().unwrap();
                file.as_ref().write_all(name.as_bytes()).unwrap();
                drop(file);
                partial.close().unwrap();
                assert!(partial.file.is_none(), "closed before the commit");
                partial
            })
            .collect();
        store.create_dir(&RelPath::parse(b"dir").unwrap()).unwrap();
        let stored: Vec<String> = store
            .commit_all(partials)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(stored, ["dir/0.txt", "dir/1.txt", "dir/2.txt"]);
        for (name, mode) in stored.into_iter().zip(modes) {
            let path = temp.path().join(&name);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), name);
            let metadata = std::fs::metadata(&path).unwrap();
            assert_eq!(metadata.modified().unwrap(), modified);
            assert_eq!(metadata.permissions().mode() & 0o777, mode, "{name}");
        }
        let leftovers = std::fs::read_dir(temp.path().join(HIDDEN_AREA)).unwrap();
        assert_eq!(leftovers.count(), 0);
    }

    #[test]
    fn a_commit_names_each_group_when_placed_and_keeps_the_conflict_policy_across_groups() {
        let temp = tempfile::tempdir().unwrap();
        let store = Store::open(temp.path(), OnConflict::Rename).unwrap();
        let whole = |name: &str, content: &str| {
            let mut partial = store.begin(RelPath::parse(name.as_bytes()).unwrap());
            partial
                .writer()
                .unwrap()
                .as_ref()
                .write_all(content.as_bytes())
                .unwrap();
            partial.close().unwrap();
            partial
        };
        let mut commit = store.start_commit();
        let first = commit.place(vec![whole("a.txt", "one"), whole("b.txt", "two")]);
        assert_eq!(
            std::fs::read_to_string(temp.path().join("b.txt")).unwrap(),
            "two",
            "a group is in place before the batch is finished"
        );
        let second = commit.place(vec![whole("a.txt", "three")]);
        let stored: Vec<String> = commit
            .finish(first.into_iter().chain(second).collect())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(stored, ["a.txt", "b.txt", "a (1).txt"]);
        for (name, content) in stored.iter().zip(["one", "two", "three"]) {
            assert_eq!(
                std::fs::read_to_string(temp.path().join(name)).unwrap(),
                content
            );
        }
        let leftovers = std::fs::read_dir(temp.path().join(HIDDEN_AREA)).unwrap();
        assert_eq!(leftovers.count(), 0);
    }

    #[test]
    fn an_answered_partial_holds_no_file_until_written() {
        let temp = tempfile::tempdir().unwrap();
        let store = Store::open(temp.path(), OnConflict::Rename).unwrap();
        let target = RelPath::parse(b"a.bin").unwrap();
        let fresh = store.begin_resumable(target.clone(), "fresh").unwrap();
        let private = store.begin(target.clone());
        assert!(fresh.file.is_none() && private.file.is_none());
        let hidden = temp.path().join(HIDDEN_AREA);
        assert_eq!(std::fs::read_dir(&hidden).unwrap().count(), 0);
        drop((fresh, private));
        // Its claim was released: the same key resumes rather than going
        // to a private file.
        let mut again = store.begin_resumable(target, "fresh").unwrap();
        again.writer().unwrap();
        assert_eq!(again.temp_name, "resume-fresh");
    }

    #[test]
    fn discarded_data_is_deleted_and_its_key_can_be_used_again() {
        let temp = tempfile::tempdir().unwrap();
        let store = Store::open(temp.path(), OnConflict::Rename).unwrap();
        let target = RelPath::parse(b"a.bin").unwrap();
        let mut damaged = store.begin_resumable(target.clone(), "key").unwrap();
        damaged
            .writer()
            .unwrap()
            .as_ref()
            .write_all(b"bad")
            .unwrap();
        damaged.discard();
        let mut next = store.begin_resumable(target, "key").unwrap();
        assert_eq!(next.offset(), 0);
        next.writer().unwrap();
        assert_eq!(next.temp_name, "resume-key", "not a private file");
    }

    #[test]
    fn data_held_before_start_resumes_and_data_made_since_is_left_alone() {
        let temp = tempfile::tempdir().unwrap();
        let hidden = temp.path().join(HIDDEN_AREA);
        std::fs::create_dir_all(&hidden).unwrap();
        std::fs::write(hidden.join("resume-earlier"), b"held").unwrap();
        let store = Store::open(temp.path(), OnConflict::Rename).unwrap();
        let earlier = store
            .begin_resumable(RelPath::parse(b"a.bin").unwrap(), "earlier")
            .unwrap();
        assert_eq!(earlier.offset(), 4);

        // Made by another process after this one looked: not known, so
        // answered from 0, and written to a private file instead.
        let mut since = store
            .begin_resumable(RelPath::parse(b"b.bin").unwrap(), "since")
            .unwrap();
        std::fs::write(hidden.join("resume-since"), b"theirs").unwrap();
        assert_eq!(since.offset(), 0);
        since.writer().unwrap().as_ref().write_all(b"ours").unwrap();
        assert_ne!(since.temp_name, "resume-since");
        assert_eq!(since.commit().unwrap(), "b.bin");
        assert_eq!(std::fs::read(temp.path().join("b.bin")).unwrap(), b"ours");
        assert_eq!(
            std::fs::read(hidden.join("resume-since")).unwrap(),
            b"theirs"
        );
    }

    #[test]
    fn numbered_names_keep_the_extension_and_the_length_limit() {
        let name = |s: &str| SafeName::parse(s.as_bytes()).unwrap();
        assert_eq!(name("report.pdf").numbered(1), "report (1).pdf");
        assert_eq!(name("README").numbered(2), "README (2)");
        assert_eq!(name(".bashrc").numbered(1), ".bashrc (1)");
        let long = name(&"é".repeat(MAX_NAME_LEN / 2));
        let numbered = long.numbered(7);
        assert!(numbered.len() <= MAX_NAME_LEN);
        assert!(numbered.ends_with(" (7)"));
    }

    fn receive(store: &Store, name: &str, content: &[u8]) -> String {
        let mut partial = store.begin(RelPath::parse(name.as_bytes()).unwrap());
        partial
            .writer()
            .unwrap()
            .as_ref()
            .write_all(content)
            .unwrap();
        partial.commit().unwrap()
    }

    #[test]
    fn an_existing_file_is_kept_and_the_new_one_numbered() {
        let temp = tempfile::tempdir().unwrap();
        let store = Store::open(temp.path(), OnConflict::Rename).unwrap();
        assert_eq!(receive(&store, "a.txt", b"one"), "a.txt");
        assert_eq!(receive(&store, "a.txt", b"two"), "a (1).txt");
        assert_eq!(receive(&store, "a.txt", b"three"), "a (2).txt");
        assert_eq!(std::fs::read(temp.path().join("a.txt")).unwrap(), b"one");
        assert_eq!(
            std::fs::read(temp.path().join("a (2).txt")).unwrap(),
            b"three"
        );
        let leftovers = std::fs::read_dir(temp.path().join(HIDDEN_AREA)).unwrap();
        assert_eq!(leftovers.count(), 0);
    }

    #[test]
    fn overwrite_replaces_the_existing_file() {
        let temp = tempfile::tempdir().unwrap();
        let store = Store::open(temp.path(), OnConflict::Overwrite).unwrap();
        receive(&store, "a.txt", b"one");
        assert_eq!(receive(&store, "a.txt", b"two"), "a.txt");
        assert_eq!(std::fs::read(temp.path().join("a.txt")).unwrap(), b"two");
    }

    #[test]
    fn an_abandoned_partial_leaves_nothing() {
        let temp = tempfile::tempdir().unwrap();
        let store = Store::open(temp.path(), OnConflict::Rename).unwrap();
        let mut partial = store.begin(RelPath::parse(b"a.txt").unwrap());
        partial
            .writer()
            .unwrap()
            .as_ref()
            .write_all(b"half")
            .unwrap();
        drop(partial);
        assert!(!temp.path().join("a.txt").exists());
        let leftovers = std::fs::read_dir(temp.path().join(HIDDEN_AREA)).unwrap();
        assert_eq!(leftovers.count(), 0);
    }

    #[test]
    fn a_symlink_planted_under_the_name_is_not_followed() {
        let temp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, b"precious").unwrap();
        std::os::unix::fs::symlink(&target, temp.path().join("a.txt")).unwrap();
        let keep_both = Store::open(temp.path(), OnConflict::Rename).unwrap();
        assert_eq!(receive(&keep_both, "a.txt", b"attack"), "a (1).txt");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");

        let overwrite = Store::open(temp.path(), OnConflict::Overwrite).unwrap();
        let mut partial = overwrite.begin(RelPath::parse(b"a.txt").unwrap());
        partial
            .writer()
            .unwrap()
            .as_ref()
            .write_all(b"attack")
            .unwrap();
        let error = partial.commit().unwrap_err();
        assert!(error.to_string().contains("link is in the way"), "{error}");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert!(
            std::fs::symlink_metadata(temp.path().join("a.txt"))
                .unwrap()
                .is_symlink()
        );
    }
}
