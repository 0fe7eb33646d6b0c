//! The local directory backend: stored files in a directory on this
//! machine, the server's inbox.
//!
//! Every file operation goes through a directory handle (`cap-std`), so no
//! name, however it was crafted, can reach outside the directory; names
//! arrive judged ([`SafeName`], [`RelPath`]). Data arrives under a temporary
//! name in a hidden area ([`HIDDEN_AREA`]) and only a complete file is given
//! its final name; a file under a final name is never partial.
//!
//! This module must never read from the network or decide what a protocol
//! means; it is handed names and bytes, and it keeps them safe.

use std::collections::{HashMap, HashSet};
use std::io;
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cap_std::ambient_authority;
use cap_std::fs::{Dir, MetadataExt, OpenOptions, OpenOptionsExt};
use rustix::fs::{Mode, OFlags};

use super::names::{RelPath, SafeName};
use super::{
    Backend, Commit, Existing, FileInfo, FreeSpace, HIDDEN_AREA, HeldPartial, Holder, Listed,
    ListedKind, Listing, MAX_LIST_BATCH, Metadata, OnConflict, RESUME_PREFIX, Reader, Upload,
};

/// The umask assumed when the process's cannot be read.
const DEFAULT_UMASK: u32 = 0o022;

/// Most target paths whose next copy number is remembered; the hints are
/// forgotten all at once when there are more, and rebuilt as needed.
const MAX_COPY_HINTS: usize = 4096;

/// The receive directory. Cheap to clone; every clone is the same inbox.
#[derive(Clone)]
pub struct LocalDir {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalDir")
    }
}

struct Inner {
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
    /// to let go ([`LocalDir::begin_resumable_for`]) or gets a private
    /// temporary file, never a share of the same one.
    busy: Mutex<HashMap<String, Holder>>,
    /// Woken whenever a claim in `busy` is released, for sessions waiting
    /// to take one over.
    released: tokio::sync::Notify,
    /// Resumable partial files known to be on disk. An offer whose key is
    /// not here is answered without a lookup, so that a folder of small
    /// files, none of them held, costs no call per offer for it; should
    /// another process have made that file meanwhile, creating it fails and
    /// the transfer goes to a private file instead, from 0 as answered.
    held: Mutex<HashSet<String>>,
    /// The process's umask (022 when it cannot be read). Every mode a
    /// sender asks for is masked by it, as a file the server made itself
    /// would be; and a file made with the mode it is to have then needs no
    /// change of mode afterwards.
    umask: u32,
    /// For each target path that needed a numbered name, the number to try
    /// next, so that the k-th copy of a name is placed in one try, not k.
    copy_hints: Mutex<HashMap<PathBuf, u64>>,
    /// Moves into place tried, for the tests of what naming costs.
    #[cfg(test)]
    moves_tried: AtomicU64,
    /// Hashes of stored files, so that comparing a sender's hash with a
    /// stored file reads that file at most once while it stays unchanged.
    hashes: Mutex<HashCache>,
}

impl LocalDir {
    /// Opens (and creates, if missing) the receive directory at `path`.
    pub fn open(path: &Path, on_conflict: OnConflict) -> io::Result<LocalDir> {
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
        Ok(LocalDir {
            inner: Arc::new(Inner {
                dir,
                hidden,
                hidden_for_sync,
                on_conflict,
                next_temp: AtomicU64::new(0),
                no_replace_unsupported: AtomicBool::new(false),
                busy: Mutex::new(HashMap::new()),
                released: tokio::sync::Notify::new(),
                held: Mutex::new(held),
                umask: process_umask().unwrap_or(DEFAULT_UMASK),
                copy_hints: Mutex::new(HashMap::new()),
                #[cfg(test)]
                moves_tried: AtomicU64::new(0),
                hashes: Mutex::new(HashCache::new(0)),
            }),
        })
    }

    /// The folder `components` name, from the top, opened one component at
    /// a time without following a symlink: a symlinked folder leads nowhere,
    /// not even to another folder inside the store.
    fn open_dir_no_links<'a>(
        &self,
        components: impl IntoIterator<Item = &'a str>,
    ) -> io::Result<Dir> {
        let mut dir = self.inner.dir.try_clone()?;
        for component in components {
            let next = rustix::fs::openat(
                &dir,
                component,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|error| match error {
                rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "something other than a folder is on the path (a symlink is not followed)",
                ),
                other => other.into(),
            })?;
            dir = Dir::from_std_file(std::fs::File::from(next));
        }
        Ok(dir)
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

    /// The folder (relative to the inbox, empty for the inbox itself) that
    /// received files go in, made if missing. Something other than a folder
    /// on the way (a file, or a link, which is never followed) is named as
    /// such: it can appear after the offer was judged, swapped in meanwhile.
    fn open_parent(&self, relative: &Path) -> io::Result<Dir> {
        if relative.as_os_str().is_empty() {
            return self.inner.dir.try_clone();
        }
        match self.inner.dir.create_dir_all(relative) {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file or link is in the way of one of its folders",
                ));
            }
            result => result?,
        }
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

impl Backend for LocalDir {
    type Upload = LocalUpload;
    type Commit = LocalCommit;
    type Reader = LocalReader;
    type Listing = LocalListing;

    /// Removes partial data not written to for `max_age`; returns how many
    /// files went.
    fn remove_stale(&self, max_age: Duration) -> io::Result<usize> {
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

    /// What an unprivileged writer may still add to the inbox's file system.
    fn free_space(&self) -> io::Result<FreeSpace> {
        let stat = rustix::fs::fstatvfs(&self.inner.dir)?;
        Ok(FreeSpace {
            bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
            block: stat.f_frsize.max(1),
            // A file system with no inode limit (btrfs, for one) reports
            // none at all.
            inodes: (stat.f_files > 0).then_some(stat.f_favail),
        })
    }

    /// LocalUpload data in the hidden area that no transfer of this process is
    /// using: what interrupted transfers left to be resumed, and litter of
    /// earlier processes.
    fn held_partials(&self) -> io::Result<Vec<HeldPartial>> {
        let busy: HashSet<String> = locked(&self.inner.busy).keys().cloned().collect();
        let mut held = Vec::new();
        for entry in self.inner.hidden.entries()? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if busy.contains(&name) || self.inner.is_own_temp(&name) {
                continue;
            }
            let metadata = match entry.metadata() {
                Ok(metadata) if metadata.is_file() => metadata,
                Ok(_) => continue,
                // Gone since it was listed.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            held.push(HeldPartial {
                bytes: metadata.len(),
                modified: metadata.modified()?.into_std(),
                name,
            });
        }
        Ok(held)
    }

    /// Deletes the held partial data `name`, unless a transfer took it up
    /// since it was listed; returns whether it was deleted.
    fn remove_held(&self, name: &str) -> io::Result<bool> {
        if self.inner.is_own_temp(name) {
            return Ok(false);
        }
        // Claimed for the deletion, by a holder no session can ask.
        match locked(&self.inner.busy).entry(name.to_owned()) {
            std::collections::hash_map::Entry::Occupied(_) => return Ok(false),
            std::collections::hash_map::Entry::Vacant(free) => {
                free.insert(Holder::new());
            }
        }
        let removed = match self.inner.hidden.remove_file(name) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        };
        self.inner.forget_held(name);
        self.release(name);
        removed
    }

    /// What is stored under `path` now. Symlinks are reported, not followed.
    fn existing(&self, path: &RelPath) -> io::Result<Existing> {
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

    /// How many stored files' hashes to keep (0: none). Until it is set,
    /// every hash is computed anew.
    fn set_hash_cache_entries(&self, entries: usize) {
        *locked(&self.inner.hashes) = HashCache::new(entries);
    }

    /// The BLAKE3 hash of the file stored under `path`, from the cache when
    /// this version of the file was hashed or committed before; otherwise
    /// read whole, and then kept.
    fn hash_existing(&self, path: &RelPath) -> io::Result<blake3::Hash> {
        let file = self.inner.dir.open(path.to_path())?;
        let version = FileVersion::of(&file.metadata()?);
        if let Some(hash) = locked(&self.inner.hashes).get(&version) {
            return Ok(hash);
        }
        // Read without the lock: another session may hash the same file
        // at the same time, which costs a read each, never a wrong answer.
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(&file)?;
        let hash = hasher.finalize();
        // A file written to while it was read has a hash of no one version.
        if FileVersion::of(&file.metadata()?) == version {
            locked(&self.inner.hashes).insert(version, hash);
        }
        Ok(hash)
    }

    /// Creates the directory `path` and its parents.
    fn create_dir(&self, path: &RelPath) -> io::Result<()> {
        self.inner.dir.create_dir_all(path.to_path())
    }

    /// Gives a directory its modification time and mode. Done after its
    /// files are in place, since adding a file changes the time. The mode
    /// is masked by the umask, and the owner (the server) keeps every right
    /// on it, so that later files can still be placed in it.
    fn set_dir_metadata(&self, path: &RelPath, metadata: Metadata) -> io::Result<()> {
        let dir = self
            .inner
            .dir
            .open_with(path.to_path(), OpenOptions::new().read(true))?
            .into_std();
        let metadata = Metadata {
            mode: metadata.mode.map(|mode| mode | 0o700),
            ..metadata
        };
        apply_metadata(&dir, metadata, self.inner.umask, None)
    }

    /// Starts receiving a file that will be stored as `target`, in a fresh
    /// temporary file, made on the first write or [`Upload::local_file`].
    /// Until it is committed nothing exists under a final name, and
    /// dropping the [`LocalUpload`] removes what was written.
    fn begin(&self, target: RelPath) -> LocalUpload {
        LocalUpload {
            store: self.clone(),
            file: None,
            positional: None,
            on_disk: OnDisk::NotYet,
            temp_name: String::new(),
            target,
            offset: 0,
            resumable: false,
            claimed: false,
            committed: false,
            metadata: Metadata::default(),
            created_mode: None,
            hash: None,
        }
    }

    /// [`LocalDir::begin_resumable`] for the session `holder`, which then
    /// holds the claim. If another session holds it and `take_over` is set,
    /// that session is asked to let go and `None` returned: wait with
    /// [`LocalDir::wait_released`], then call again without `take_over`.
    fn begin_resumable_for(
        &self,
        target: RelPath,
        key: &str,
        holder: &Holder,
        take_over: bool,
    ) -> io::Result<Option<LocalUpload>> {
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
        Ok(Some(LocalUpload {
            store: self.clone(),
            file: None,
            positional: None,
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
            hash: None,
        }))
    }

    /// Waits, until `deadline` at most, for no session to hold the claim
    /// on `key`; returns whether it was released in time.
    async fn wait_released(&self, key: &str, deadline: tokio::time::Instant) -> bool {
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

    fn list(&self, dir: Option<&RelPath>) -> io::Result<LocalListing> {
        let dir = self.open_dir_no_links(dir.into_iter().flat_map(RelPath::components))?;
        let own = dir.dir_metadata()?;
        Ok(LocalListing {
            entries: dir.entries()?,
            folder: Metadata {
                modified: Some(own.modified()?.into_std()),
                mode: Some(own.mode() & 0o777),
            },
        })
    }

    fn open_read(&self, path: &RelPath) -> io::Result<LocalReader> {
        let (parents, name) = path.split_last();
        let parent = self.open_dir_no_links(parents)?;
        // Looked at first, so that a special file is never opened (opening
        // a device can act on it); checked again once open, for one put in
        // its place meanwhile.
        if !parent.symlink_metadata(name)?.is_file() {
            return Err(not_a_regular_file());
        }
        let file = rustix::fs::openat(
            &parent,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|error| match error {
            rustix::io::Errno::LOOP => not_a_regular_file(),
            other => other.into(),
        })?;
        let file = std::fs::File::from(file);
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(not_a_regular_file());
        }
        let info = FileInfo {
            size: metadata.len(),
            modified: metadata.modified()?,
            mode: metadata.permissions().mode() & 0o777,
        };
        Ok(LocalReader { file, info })
    }

    fn start_commit(&self) -> LocalCommit {
        LocalCommit {
            store: self.clone(),
            changed: HashSet::new(),
        }
    }
}

/// One batch's commit, made of groups: each group's data is synced and
/// named as soon as it is whole, and the folders that gained names are
/// synced once, at the end. A file is named only after its data is durable,
/// and the batch is durable when [`Commit::finish`] returns, as with one
/// [`LocalDir::commit_all`].
pub struct LocalCommit {
    store: LocalDir,
    /// The folders that gained names, to be synced at the end. Paths, not
    /// open handles: a batch spread over many folders must not hold a
    /// descriptor for each until it ends.
    changed: HashSet<PathBuf>,
}

impl Commit for LocalCommit {
    type Upload = LocalUpload;

    /// Makes the data of `partials` durable with one sync, then gives each
    /// its final name. Returns, for each partial in order, the path it was
    /// stored under; the names are durable only after [`Commit::finish`].
    fn place(&mut self, partials: Vec<LocalUpload>) -> Vec<io::Result<String>> {
        let store = &self.store;
        // Times and modes first, so that the sync below covers them too.
        let prepared: Vec<io::Result<()>> =
            partials.iter().map(LocalUpload::apply_metadata).collect();
        let synced = match partials.as_slice() {
            [] => return Vec::new(),
            [
                LocalUpload {
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
        // Each folder is opened once per group, not once per file, and
        // closed with the group, so that a session holds at most a group's
        // worth of folder descriptors.
        let mut parents: HashMap<PathBuf, io::Result<Dir>> = HashMap::new();
        let placed = partials
            .into_iter()
            .zip(prepared)
            .map(|(partial, prepared)| {
                let parent = partial.target.parent().unwrap_or_default();
                prepared?;
                let dir = parents
                    .entry(parent)
                    .or_insert_with_key(|parent| store.open_parent(parent));
                match dir {
                    Ok(dir) => partial.place(dir),
                    Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
                }
            })
            .collect();
        self.changed.extend(
            parents
                .into_iter()
                .filter_map(|(path, dir)| dir.is_ok().then_some(path)),
        );
        placed
    }

    /// Syncs every folder that gained a name, so that the names placed are
    /// durable; if that fails, every result in `placed` becomes the failure.
    fn finish(self, placed: Vec<io::Result<String>>) -> Vec<io::Result<String>> {
        for dir in self.changed {
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

/// A stored file opened for reading.
pub struct LocalReader {
    file: std::fs::File,
    /// What the file was when it was opened.
    info: FileInfo,
}

impl io::Read for LocalReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.file.read(buffer)
    }
}

impl Reader for LocalReader {
    fn info(&self) -> FileInfo {
        self.info
    }

    fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buffer, offset)
    }

    fn local_file(&self) -> Option<&std::fs::File> {
        Some(&self.file)
    }
}

/// A folder's entries, read from the kernel a buffer at a time: it holds
/// a directory stream and its buffer, never the entries it has returned.
pub struct LocalListing {
    entries: cap_std::fs::ReadDir,
    folder: Metadata,
}

impl Listing for LocalListing {
    /// An entry skipped (a refused name, a symlink, a special file, one
    /// gone since it was read) costs its look-up and no memory, so a batch
    /// may take a while to fill, never more room.
    fn next_batch(&mut self, max: usize) -> io::Result<Vec<Listed>> {
        let max = max.clamp(1, MAX_LIST_BATCH);
        let mut batch = Vec::with_capacity(max);
        while batch.len() < max {
            let Some(entry) = self.entries.next() else {
                break;
            };
            let entry = entry?;
            // The hidden area's name is reserved, so it is refused here too.
            let Ok(name) = SafeName::parse(entry.file_name().as_encoded_bytes()) else {
                continue;
            };
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            let kind = if metadata.is_file() {
                ListedKind::File(FileInfo {
                    size: metadata.len(),
                    modified: metadata.modified()?.into_std(),
                    mode: metadata.mode() & 0o777,
                })
            } else if metadata.is_dir() {
                ListedKind::Directory {
                    modified: metadata.modified()?.into_std(),
                    mode: metadata.mode() & 0o777,
                }
            } else {
                continue;
            };
            batch.push(Listed { name, kind });
        }
        Ok(batch)
    }

    fn folder(&self) -> Metadata {
        self.folder
    }
}

fn not_a_regular_file() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "not a regular file (a symlink is not followed)",
    )
}

/// A file being received, under a temporary name in the hidden area.
pub struct LocalUpload {
    store: LocalDir,
    /// Open while data is written, and closed by [`LocalUpload::close`] once the
    /// file is whole, so that a batch does not hold a descriptor per file.
    file: Option<Arc<std::fs::File>>,
    /// A second descriptor, without `O_APPEND`, for [`Upload::write_at`];
    /// made on its first use and closed with `file`.
    positional: Option<std::fs::File>,
    on_disk: OnDisk,
    /// Empty until a private temporary file is made.
    temp_name: String,
    target: RelPath,
    /// Bytes already held when this partial was opened.
    offset: u64,
    /// Kept when dropped uncommitted, so that a later transfer resumes it.
    resumable: bool,
    /// Holds the store's claim on `temp_name` (see `Inner::busy`).
    claimed: bool,
    committed: bool,
    /// Applied at close or commit, before the data is synced.
    metadata: Metadata,
    /// The mode the file was made with, when this partial made it.
    created_mode: Option<u32>,
    /// The verified hash of the whole file, to enter in the hash cache once
    /// it is under its final name.
    hash: Option<blake3::Hash>,
}

/// Whether a partial's file exists yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDisk {
    /// Made on the first write.
    NotYet,
    /// Held from an earlier transfer, [`LocalUpload::offset`] bytes long when
    /// the offer was answered.
    Held,
    /// Made or opened by this partial.
    Opened,
}

impl LocalUpload {
    /// A handle to append the received bytes to, opening (or making) the
    /// file on first use. Shared, not duplicated: a duplicate would cost two
    /// system calls (`dup` and `close`) per file.
    fn writer(&mut self) -> io::Result<Arc<std::fs::File>> {
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
            self.created_mode = Some(mode & !self.store.inner.umask);
        }
        let file = Arc::new(file);
        self.file = Some(Arc::clone(&file));
        Ok(file)
    }

    /// Gives the file its time and mode while it is open; a closed one got
    /// them when it was closed.
    fn apply_metadata(&self) -> io::Result<()> {
        match &self.file {
            Some(file) => apply_metadata(
                file,
                self.metadata,
                self.store.inner.umask,
                self.created_mode,
            ),
            None => Ok(()),
        }
    }

    /// Gives the synced data its final name in `parent`, the target's
    /// folder, by the store's conflict policy.
    fn place(mut self, parent: &Dir) -> io::Result<String> {
        let inner = Arc::clone(&self.store.inner);
        // Which file this is, to know it again under its final name.
        let identity = self
            .hash
            .and_then(|_| inner.hidden.symlink_metadata(&self.temp_name).ok());
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
        if let (Some(hash), Some(identity), Some(name)) =
            (self.hash, identity, stored_as.file_name())
        {
            inner.remember_hash(parent, name, &identity, hash);
        }
        Ok(stored_as.to_string_lossy().into_owned())
    }

    /// Moves the data to a name not taken: its own, or else (when
    /// `numbered`) a numbered one. The move never replaces an existing
    /// file, so two receivers racing for one name can never replace each
    /// other's file. The number tried first is remembered per target, or
    /// found by [`first_free_number`], so that a copy costs a few tries
    /// whatever the number of copies before it.
    fn move_under_free_name(&self, parent: &Dir, numbered: bool) -> io::Result<PathBuf> {
        let inner = &self.store.inner;
        let name = self.target.last();
        match inner.move_without_replacing(&self.temp_name, parent, name.as_str()) {
            Ok(()) => return Ok(self.target.to_path()),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists && numbered => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a different file already exists under this name",
                ));
            }
            Err(error) => return Err(error),
        }
        let key = self.target.to_path();
        let hint = locked(&inner.copy_hints).get(&key).copied();
        let mut n = match hint {
            Some(n) => n,
            None => first_free_number(parent, &name),
        };
        loop {
            let candidate = name.numbered(n);
            match inner.move_without_replacing(&self.temp_name, parent, &candidate) {
                Ok(()) => {
                    let mut hints = locked(&inner.copy_hints);
                    if hints.len() >= MAX_COPY_HINTS && !hints.contains_key(&key) {
                        hints.clear();
                    }
                    hints.insert(key, n.saturating_add(1));
                    return Ok(self.target.with_last(candidate));
                }
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    n = n.checked_add(1).ok_or_else(|| {
                        io::Error::new(io::ErrorKind::AlreadyExists, "no free numbered name")
                    })?;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

impl Upload for LocalUpload {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer()?.as_ref().write_all(bytes)
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        // The data path's file appends whatever the offset (`O_APPEND`), so
        // positional writes go through a second descriptor, made on first
        // use and closed with the first.
        self.writer()?;
        if self.positional.is_none() {
            let file = self
                .store
                .inner
                .hidden
                .open_with(&self.temp_name, OpenOptions::new().write(true))?;
            self.positional = Some(file.into_std());
        }
        match &self.positional {
            Some(file) => file.write_all_at(bytes, offset),
            None => unreachable!("opened above"),
        }
    }

    fn read_at(&mut self, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
        self.writer()?.read_at(buffer, offset)
    }

    fn len(&mut self) -> io::Result<u64> {
        Ok(self.writer()?.metadata()?.len())
    }

    fn local_file(&mut self) -> io::Result<Option<Arc<std::fs::File>>> {
        self.writer().map(Some)
    }

    /// Gives the whole file its time and mode and closes it. The data is
    /// synced at commit all the same, by a sync of the whole file system
    /// when the batch has more than one file.
    fn close(&mut self) -> io::Result<()> {
        self.apply_metadata()?;
        self.file = None;
        self.positional = None;
        Ok(())
    }

    /// The name its data keeps in the hidden area when the transfer is
    /// interrupted, for a resumable partial.
    fn resume_name(&self) -> Option<&str> {
        (self.resumable && self.claimed).then_some(self.temp_name.as_str())
    }

    /// Bytes already held from an earlier, interrupted transfer.
    fn offset(&self) -> u64 {
        self.offset
    }

    /// The modification time and mode to give the file when it is committed.
    fn set_metadata(&mut self, metadata: Metadata) {
        self.metadata = metadata;
    }

    /// The verified hash of the whole file: once the file is under its final
    /// name, [`LocalDir::hash_existing`] knows it without reading the file.
    fn set_hash(&mut self, hash: blake3::Hash) {
        self.hash = Some(hash);
    }

    /// Deletes the data, resumable or not: it is known to be wrong.
    fn discard(mut self) {
        self.resumable = false;
    }

    /// Makes the file durable and gives it its final name; returns that name,
    /// which differs from the requested one when the store kept both.
    fn commit(self) -> io::Result<String> {
        let store = self.store.clone();
        store
            .commit_all(vec![self])
            .pop()
            .unwrap_or_else(|| Err(io::Error::other("nothing committed")))
    }
}

/// A number `n` such that `name (n)` is free in `parent` and `name (n-1)`
/// is not (or `n` is 1), found in a number of looks that grows with the
/// logarithm of the copies there, not with the copies: doubling until a
/// free number, then halving the gap. With gaps (copies deleted since) it
/// may find a free number that is not the lowest, which is fine.
fn first_free_number(parent: &Dir, name: &SafeName) -> u64 {
    let taken = |n: u64| parent.symlink_metadata(name.numbered(n)).is_ok();
    // Invariant: `below` is 0 or taken; `free` is free.
    let (mut below, mut free) = (0u64, 1u64);
    while taken(free) {
        below = free;
        match free.checked_mul(2) {
            Some(next) => free = next,
            None => return free,
        }
    }
    while free - below > 1 {
        let middle = below + (free - below) / 2;
        if taken(middle) {
            below = middle;
        } else {
            free = middle;
        }
    }
    free
}

impl Inner {
    /// Whether `name` is a private temporary file of this process: always
    /// in use, until its transfer commits or removes it.
    fn is_own_temp(&self, name: &str) -> bool {
        name.strip_prefix("tmp-")
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(pid, _)| pid == std::process::id().to_string())
    }

    /// Enters the hash of a file just moved to `name` in `parent`, if the
    /// file there is still the one that was moved (`identity`, its metadata
    /// before the move): the move itself changed its ctime, so its version
    /// is read anew.
    fn remember_hash(
        &self,
        parent: &Dir,
        name: &std::ffi::OsStr,
        identity: &cap_std::fs::Metadata,
        hash: blake3::Hash,
    ) {
        if let Ok(now) = parent.symlink_metadata(name)
            && now.is_file()
            && (now.dev(), now.ino()) == (identity.dev(), identity.ino())
        {
            locked(&self.hashes).insert(FileVersion::of(&now), hash);
        }
    }

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
        #[cfg(test)]
        self.moves_tried.fetch_add(1, Ordering::Relaxed);
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

impl Drop for LocalUpload {
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

/// One version of one stored file. Writing to a file moves its mtime and
/// its ctime, replacing it changes the inode, and setting its mtime back
/// still moves its ctime, which the kernel sets and no sender can choose:
/// a file whose content may have changed has another version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileVersion {
    fn of(metadata: &cap_std::fs::Metadata) -> FileVersion {
        FileVersion {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// The hashes of at most `capacity` file versions. When full, the eighth
/// used longest ago goes at once, so that making room costs a sort of the
/// cache once per `capacity / 8` insertions, not a search per insertion.
struct HashCache {
    capacity: usize,
    /// Each version's hash and when it was last used, by `clock`.
    entries: HashMap<FileVersion, (blake3::Hash, u64)>,
    /// Counts uses, to order them.
    clock: u64,
}

impl HashCache {
    fn new(capacity: usize) -> HashCache {
        HashCache {
            capacity,
            entries: HashMap::new(),
            clock: 0,
        }
    }

    fn get(&mut self, version: &FileVersion) -> Option<blake3::Hash> {
        self.clock += 1;
        let (hash, used) = self.entries.get_mut(version)?;
        *used = self.clock;
        Some(*hash)
    }

    fn insert(&mut self, version: FileVersion, hash: blake3::Hash) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&version) {
            let mut uses: Vec<u64> = self.entries.values().map(|(_, used)| *used).collect();
            let oldest = (self.capacity / 8).max(1) - 1;
            let (_, &mut cutoff, _) = uses.select_nth_unstable(oldest);
            self.entries.retain(|_, (_, used)| *used > cutoff);
        }
        self.clock += 1;
        self.entries.insert(version, (hash, self.clock));
    }
}

/// Locks `mutex`. The sets of names and the hash cache it guards here stay
/// whole even if a thread panicked while holding one, so the poison is
/// ignored.
fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Gives `file` the time and mode in `metadata`. The mode keeps only
/// permission bits (never setuid, setgid or sticky) and is masked by
/// `umask`; it is left alone when the file was made with it
/// (`created_mode`).
fn apply_metadata(
    file: &std::fs::File,
    metadata: Metadata,
    umask: u32,
    created_mode: Option<u32>,
) -> io::Result<()> {
    if let Some(mode) = metadata.mode {
        let mode = mode & 0o777 & !umask;
        if created_mode != Some(mode) {
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
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
    use std::io::Read;
    use std::time::SystemTime;

    #[test]
    fn a_resumable_partial_survives_and_reports_what_it_holds() {
        let temp = tempfile::tempdir().unwrap();
        let store = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
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
        let store = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
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
        let store = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
        let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        // Made with their modes where the umask allows, changed after
        // where it does not (0o666), or where the server keeps the right to
        // write (0o444); setuid, setgid and sticky bits never survive.
        let modes = [0o640, 0o444, 0o666, 0o7777];
        let partials: Vec<LocalUpload> = (0..modes.len())
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
        assert_eq!(stored, ["dir/0.txt", "dir/1.txt", "dir/2.txt", "dir/3.txt"]);
        let umask = store.inner.umask;
        for (name, mode) in stored.into_iter().zip(modes) {
            let path = temp.path().join(&name);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), name);
            let metadata = std::fs::metadata(&path).unwrap();
            assert_eq!(metadata.modified().unwrap(), modified);
            assert_eq!(
                metadata.permissions().mode() & 0o7777,
                mode & 0o777 & !umask,
                "{name}: the sender's mode, masked by the umask"
            );
        }
        let leftovers = std::fs::read_dir(temp.path().join(HIDDEN_AREA)).unwrap();
        assert_eq!(leftovers.count(), 0);
    }

    #[test]
    fn a_commit_names_each_group_when_placed_and_keeps_the_conflict_policy_across_groups() {
        let temp = tempfile::tempdir().unwrap();
        let store = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
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
        let store = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
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
        let store = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
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
        let store = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
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

    /// The k-th copy of a name is placed in as few tries as the first:
    /// its own name, then the number remembered for it. A store that has
    /// no memory of the name (a restarted server) finds a free number in a
    /// number of looks that grows with the logarithm of the copies.
    #[test]
    fn the_three_thousandth_copy_of_a_name_costs_no_more_than_the_first() {
        let temp = tempfile::tempdir().unwrap();
        let store = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
        let tries = || store.inner.moves_tried.load(Ordering::Relaxed);
        // Committed a hundred at a time, to spare the test 3,000 syncs.
        // Every copy takes at least two tries (its own name, taken, and a
        // numbered one), so a batch's total says that each took exactly
        // as many.
        for batch in 0..30u32 {
            let partials: Vec<LocalUpload> = (0..100u32)
                .map(|index| {
                    let mut partial = store.begin(RelPath::parse(b"x.txt").unwrap());
                    let content = (batch * 100 + index).to_be_bytes();
                    partial
                        .writer()
                        .unwrap()
                        .as_ref()
                        .write_all(&content)
                        .unwrap();
                    partial
                })
                .collect();
            let before = tries();
            let stored: Vec<String> = store
                .commit_all(partials)
                .into_iter()
                .map(Result::unwrap)
                .collect();
            let first = batch * 100;
            assert_eq!(stored.last().unwrap(), &format!("x ({}).txt", first + 99));
            let expected = if batch == 0 { 1 + 2 * 99 } else { 2 * 100 };
            assert_eq!(tries() - before, expected, "batch {batch}");
        }
        assert_eq!(
            std::fs::read(temp.path().join("x (2999).txt")).unwrap(),
            2999u32.to_be_bytes()
        );
        let restarted = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
        assert_eq!(
            receive(&restarted, "x.txt", b"after a restart"),
            "x (3000).txt"
        );
        assert_eq!(
            restarted.inner.moves_tried.load(Ordering::Relaxed),
            2,
            "the free number is found by looking, not by trying each"
        );
    }

    fn receive(store: &LocalDir, name: &str, content: &[u8]) -> String {
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
        let store = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
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
        let store = LocalDir::open(temp.path(), OnConflict::Overwrite).unwrap();
        receive(&store, "a.txt", b"one");
        assert_eq!(receive(&store, "a.txt", b"two"), "a.txt");
        assert_eq!(std::fs::read(temp.path().join("a.txt")).unwrap(), b"two");
    }

    #[test]
    fn an_abandoned_partial_leaves_nothing() {
        let temp = tempfile::tempdir().unwrap();
        let store = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
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
    fn a_stored_hash_is_kept_until_the_file_changes_even_with_its_mtime_put_back() {
        let temp = tempfile::tempdir().unwrap();
        let store = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
        store.set_hash_cache_entries(16);
        let path = temp.path().join("a.bin");
        std::fs::write(&path, b"one version").unwrap();
        let target = RelPath::parse(b"a.bin").unwrap();
        assert_eq!(
            store.hash_existing(&target).unwrap(),
            blake3::hash(b"one version")
        );
        assert_eq!(locked(&store.inner.hashes).entries.len(), 1);
        assert_eq!(
            store.hash_existing(&target).unwrap(),
            blake3::hash(b"one version")
        );

        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, b"two version").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        assert_eq!(
            store.hash_existing(&target).unwrap(),
            blake3::hash(b"two version")
        );
    }

    #[test]
    fn a_committed_file_with_its_hash_is_known_without_reading_it() {
        let temp = tempfile::tempdir().unwrap();
        let store = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
        store.set_hash_cache_entries(16);
        std::fs::write(temp.path().join("a.txt"), b"theirs").unwrap();
        let mut partial = store.begin(RelPath::parse(b"a.txt").unwrap());
        partial
            .writer()
            .unwrap()
            .as_ref()
            .write_all(b"ours")
            .unwrap();
        partial.set_hash(blake3::hash(b"ours"));
        assert_eq!(partial.commit().unwrap(), "a (1).txt");
        let stored = std::fs::symlink_metadata(temp.path().join("a (1).txt")).unwrap();
        let version = FileVersion {
            dev: std::os::unix::fs::MetadataExt::dev(&stored),
            ino: std::os::unix::fs::MetadataExt::ino(&stored),
            size: 4,
            mtime: (
                std::os::unix::fs::MetadataExt::mtime(&stored),
                std::os::unix::fs::MetadataExt::mtime_nsec(&stored),
            ),
            ctime: (
                std::os::unix::fs::MetadataExt::ctime(&stored),
                std::os::unix::fs::MetadataExt::ctime_nsec(&stored),
            ),
        };
        let cached = locked(&store.inner.hashes).get(&version);
        assert_eq!(cached, Some(blake3::hash(b"ours")));
        assert_eq!(locked(&store.inner.hashes).entries.len(), 1);
    }

    #[test]
    fn the_hash_cache_holds_its_bound_and_keeps_what_was_used_last() {
        let mut cache = HashCache::new(16);
        let version = |ino| FileVersion {
            dev: 1,
            ino,
            size: 0,
            mtime: (0, 0),
            ctime: (0, 0),
        };
        for ino in 0..16 {
            cache.insert(version(ino), blake3::hash(&ino.to_be_bytes()));
        }
        assert!(cache.get(&version(0)).is_some());
        for ino in 16..100 {
            cache.insert(version(ino), blake3::hash(&ino.to_be_bytes()));
            assert!(cache.entries.len() <= 16);
        }
        assert!(cache.get(&version(99)).is_some());
        assert!(cache.get(&version(1)).is_none(), "used longest ago");
        let mut none = HashCache::new(0);
        none.insert(version(1), blake3::hash(b""));
        assert!(none.entries.is_empty());
    }

    #[test]
    fn a_symlink_planted_under_the_name_is_not_followed() {
        let temp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, b"precious").unwrap();
        std::os::unix::fs::symlink(&target, temp.path().join("a.txt")).unwrap();
        let keep_both = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
        assert_eq!(receive(&keep_both, "a.txt", b"attack"), "a (1).txt");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");

        let overwrite = LocalDir::open(temp.path(), OnConflict::Overwrite).unwrap();
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

    /// A store as a sender and a planter of traps left it: a file and a
    /// folder it may list and open, and around them what it must not.
    struct Planted {
        inbox: tempfile::TempDir,
        outside: tempfile::TempDir,
        store: LocalDir,
        modified: SystemTime,
    }

    fn planted() -> Planted {
        let inbox = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let store = LocalDir::open(inbox.path(), OnConflict::Rename).unwrap();
        let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
        let mut upload = store.begin(RelPath::parse(b"a.txt").unwrap());
        upload.set_metadata(Metadata {
            modified: Some(modified),
            mode: Some(0o640),
        });
        upload.append(b"stored").unwrap();
        assert_eq!(upload.commit().unwrap(), "a.txt");
        store.create_dir(&RelPath::parse(b"sub").unwrap()).unwrap();
        std::fs::write(inbox.path().join("sub/inner.txt"), b"inner").unwrap();
        // Partial data, in the hidden area.
        let mut held = store
            .begin_resumable(RelPath::parse(b"big.bin").unwrap(), "key")
            .unwrap();
        held.append(b"half").unwrap();
        drop(held);
        std::fs::write(outside.path().join("secret"), b"outside").unwrap();
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, inbox.path().join(name)).unwrap();
        };
        link(&outside.path().join("secret"), "out-link");
        link(outside.path(), "out-dir");
        link(Path::new("a.txt"), "in-link");
        link(Path::new("sub"), "in-dir");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            inbox.path().join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        for refused in ["new\nline", "invoice\u{202e}fdp.exe", "zero\u{200b}width"] {
            std::fs::write(inbox.path().join(refused), b"refused").unwrap();
        }
        Planted {
            inbox,
            outside,
            store,
            modified,
        }
    }

    fn list_all(store: &LocalDir, dir: Option<&RelPath>) -> io::Result<Vec<Listed>> {
        let mut listing = store.list(dir)?;
        let mut all = Vec::new();
        loop {
            let batch = listing.next_batch(2)?;
            if batch.is_empty() {
                break;
            }
            all.extend(batch);
        }
        all.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        Ok(all)
    }

    #[test]
    fn a_listing_shows_stored_files_and_folders_and_nothing_else() {
        let planted = planted();
        let store = &planted.store;
        let umask = store.inner.umask;
        let listed = list_all(store, None).unwrap();
        let sub = std::fs::metadata(planted.inbox.path().join("sub")).unwrap();
        let expected = [
            Listed {
                name: SafeName::parse(b"a.txt").unwrap(),
                kind: ListedKind::File(FileInfo {
                    size: 6,
                    modified: planted.modified,
                    mode: 0o640 & !umask,
                }),
            },
            Listed {
                name: SafeName::parse(b"sub").unwrap(),
                kind: ListedKind::Directory {
                    modified: sub.modified().unwrap(),
                    mode: sub.permissions().mode() & 0o777,
                },
            },
        ];
        assert_eq!(
            listed, expected,
            "no hidden area, symlink, special file or refused name"
        );

        let sub = list_all(store, Some(&RelPath::parse(b"sub").unwrap())).unwrap();
        let names: Vec<&str> = sub.iter().map(|entry| entry.name.as_str()).collect();
        assert_eq!(names, ["inner.txt"]);
        for link in ["out-dir", "in-dir", "a.txt"] {
            let error =
                list_all(store, Some(&RelPath::parse(link.as_bytes()).unwrap())).expect_err(link);
            assert!(
                error.to_string().contains("a symlink is not followed"),
                "{link}: {error}"
            );
        }
        assert!(
            list_all(store, Some(&RelPath::parse(b"in-dir/inner.txt").unwrap())).is_err(),
            "not through a symlink on the way either"
        );
    }

    #[test]
    fn a_stored_file_opens_for_reading_and_nothing_else_does() {
        let planted = planted();
        let store = &planted.store;
        let mut reader = store.open_read(&RelPath::parse(b"a.txt").unwrap()).unwrap();
        let mut content = Vec::new();
        reader.read_to_end(&mut content).unwrap();
        assert_eq!(content, b"stored");
        let mut tail = [0u8; 3];
        assert_eq!(reader.read_at(&mut tail, 3).unwrap(), 3);
        assert_eq!(&tail, b"red");
        assert_eq!(
            reader.info(),
            FileInfo {
                size: 6,
                modified: planted.modified,
                mode: 0o640 & !store.inner.umask,
            }
        );
        assert!(reader.local_file().is_some());
        let inner = store.open_read(&RelPath::parse(b"sub/inner.txt").unwrap());
        assert_eq!(inner.unwrap().info().size, 5);

        // A FIFO would block an open without O_NONBLOCK: this returns.
        for refused in [
            "out-link",
            "in-link",
            "out-dir/secret",
            "in-dir/inner.txt",
            "fifo",
            "sub",
        ] {
            let error = store
                .open_read(&RelPath::parse(refused.as_bytes()).unwrap())
                .err()
                .unwrap_or_else(|| panic!("{refused} opened"));
            assert!(
                error.to_string().contains("a symlink is not followed"),
                "{refused}: {error}"
            );
        }
        let missing = store.open_read(&RelPath::parse(b"missing").unwrap());
        assert_eq!(
            missing.err().map(|error| error.kind()),
            Some(io::ErrorKind::NotFound)
        );
        assert_eq!(
            std::fs::read(planted.outside.path().join("secret")).unwrap(),
            b"outside"
        );
        assert!(
            planted
                .inbox
                .path()
                .join(HIDDEN_AREA)
                .join("resume-key")
                .exists()
        );
    }

    /// A listing holds one batch of entries at a time, whatever the size of
    /// the folder and whatever it is asked for.
    #[test]
    fn a_folder_of_twenty_thousand_files_is_listed_a_bounded_batch_at_a_time() {
        let temp = tempfile::tempdir().unwrap();
        let store = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
        let count = 20_000;
        for index in 0..count {
            std::fs::File::create(temp.path().join(format!("f{index}"))).unwrap();
        }
        let mut listing = store.list(None).unwrap();
        let mut seen = HashSet::new();
        let mut batches = 0;
        loop {
            let batch = listing.next_batch(100).unwrap();
            assert!(batch.capacity() <= 100, "{}", batch.capacity());
            if batch.is_empty() {
                break;
            }
            batches += 1;
            for entry in batch {
                assert!(matches!(
                    entry.kind,
                    ListedKind::File(FileInfo { size: 0, .. })
                ));
                assert!(seen.insert(entry.name.as_str().to_owned()), "listed twice");
            }
        }
        assert_eq!(seen.len(), count);
        assert!(batches >= count / 100);
        let mut greedy = store.list(None).unwrap();
        let batch = greedy.next_batch(usize::MAX).unwrap();
        assert_eq!(batch.len(), MAX_LIST_BATCH);
        assert!(batch.capacity() <= MAX_LIST_BATCH);
    }

    #[test]
    fn an_upload_takes_bytes_at_an_offset_and_reads_back_what_it_holds() {
        let temp = tempfile::tempdir().unwrap();
        let store = LocalDir::open(temp.path(), OnConflict::Rename).unwrap();
        let mut upload = store.begin(RelPath::parse(b"pieces.bin").unwrap());
        assert!(upload.is_empty().unwrap());
        upload.append(b"0123").unwrap();
        upload.write_at(8, b"89").unwrap();
        upload.write_at(4, b"4567").unwrap();
        upload.append(b"ab").unwrap();
        assert_eq!(upload.len().unwrap(), 12);
        let mut back = [0u8; 12];
        assert_eq!(upload.read_at(&mut back, 0).unwrap(), 12);
        assert_eq!(&back, b"0123456789ab");
        upload.close().unwrap();
        assert_eq!(upload.commit().unwrap(), "pieces.bin");
        assert_eq!(
            std::fs::read(temp.path().join("pieces.bin")).unwrap(),
            b"0123456789ab"
        );
    }
}
