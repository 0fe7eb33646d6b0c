//! Stored files: the only code that creates, renames or deletes them, and
//! the only place where a received name is judged.
//!
//! [`names`] holds the rules every name from the other side must pass
//! ([`SafeName`], [`RelPath`]), whatever keeps the files. [`Backend`] is what
//! the server asks of the place files are kept: what exists, begin or resume
//! an upload, commit a group durably under names the conflict policy
//! chooses, free space, the partial data held, list a folder, open a file
//! for reading. [`local`] keeps them in a directory on this machine, through
//! a `cap-std` handle, so that no name reaches outside it.
//!
//! What must stay true of every backend:
//!
//! - Nothing exists under a final name until its upload is committed, and
//!   a committed file is whole: its data is durable before its name is.
//! - A commit never replaces a file it was not told to (`OnConflict`): two
//!   uploads racing for one name both survive, or one is refused.
//! - Data still arriving, and what interrupted uploads left to be resumed,
//!   live apart from stored files ([`HIDDEN_AREA`]), and are never listed,
//!   opened or offered as stored files.
//! - A symlink or special file in the store is never written through,
//!   replaced, listed as a file or opened.
//!
//! # Dispatch and async
//!
//! The server names its backend only through [`Store`], [`Partial`] and
//! the trait's associated types, and, once it has opened it, calls only
//! [`Backend`], [`Upload`] and [`Commit`] methods on them. Dispatch is
//! static: a second backend makes [`Store`] an enum of backends (and each
//! associated type an enum of theirs) that implements [`Backend`] by
//! delegating to its variants. That keeps associated types for uploads, commits,
//! readers and listings (a `dyn Backend` could not have them without
//! boxing each), adds no generic parameter to every server type, and costs
//! no allocation per call.
//!
//! The operations are blocking and are called on blocking threads: the
//! server judges a whole batch of offers, or commits a whole group of files,
//! in one trip to a blocking thread, which is what keeps small files cheap.
//! An async trait would cost the local directory a trip per operation. An
//! object store, whose operations are requests, drives them from those
//! threads with its runtime's `Handle::block_on`, and can answer the batch
//! operations ([`Commit::place`]) with its requests in flight together.
//! Only waiting for another session is async
//! ([`Backend::wait_released`]): it parks no thread.
//!
//! # Costs and bounds
//!
//! What each operation costs the local directory, and what bounds it (a
//! sender chooses the names and how many; the limits in `server` bound how
//! many operations a session can cause):
//!
//! | operation | costs | bounded by |
//! |---|---|---|
//! | [`Backend::existing`] | one `fstatat` | — |
//! | [`Backend::numbered_copies`] | at most `limit` `fstatat`s | its `limit` |
//! | [`Backend::hash_existing`] | a read of the whole file, unless its version is cached | the hash cache ([`Backend::set_hash_cache_entries`]) |
//! | [`Backend::create_dir`] | one `mkdirat` per missing component | the path's depth |
//! | [`Backend::begin`], [`Backend::begin_resumable_for`] | no file until the first write; a map entry per claim | one per offer answered Send |
//! | [`Upload::append`], [`Upload::write_at`] | one `write` each | the size granted |
//! | [`Commit::place`] | one `fsync` (or `syncfs` for a group), a rename per file, tries for a free numbered name | a group's files |
//! | [`Commit::finish`] | one `fsync` per folder that gained a name | the group's folders |
//! | [`Backend::free_space`] | one `fstatvfs` | — |
//! | [`Backend::held_partials`], [`Backend::remove_stale`] | a listing of the hidden area, an `fstatat` per entry | the partial data kept (`--max-partial`) |
//! | [`Backend::list`] | an `openat` per component of the folder's path; then one `getdents` per buffer of entries and an `fstatat` per entry; one descriptor while the listing lives, and memory for one batch | [`MAX_LIST_BATCH`] entries per batch; the path's depth |
//! | [`Backend::open_read`] | an `openat` per folder on the path, then an `fstatat`, an `openat` and an `fstat` for the file; one descriptor while the reader lives | the path's depth |
//!
//! # What comes next fits
//!
//! - Delta transfers: a receiver opens its basis with
//!   [`Backend::open_read`] and builds the new file in an [`Upload`], from
//!   copied ranges ([`Reader::read_at`]) and literal bytes
//!   ([`Upload::append`]); the local fast path can copy ranges in the
//!   kernel between [`Reader::local_file`] and [`Upload::local_file`].
//! - One session over several connections: each connection writes its
//!   ranges with [`Upload::write_at`]; the upload is committed once, when
//!   all are in.
//! - An object store: an upload is a multipart upload (its parts the
//!   ranges written; the resume key names it, so the resume state lives in
//!   the bucket and [`Backend::held_partials`] lists unfinished uploads); a
//!   commit completes it with a conditional write (`If-None-Match`) that
//!   refuses to replace, as the local rename does; [`Upload::local_file`]
//!   and [`Reader::local_file`] say no, so the data goes through
//!   [`Upload::append`]; a listing is the bucket's paginated listing, its
//!   continuation token the cursor.

pub mod local;
pub mod names;

use std::fs::File;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use names::{MAX_NAME_LEN, NameError, RelPath, SafeName};

/// The backend the server runs on.
pub type Store = local::LocalDir;

/// An upload to [`Store`].
pub type Partial = <Store as Backend>::Upload;

/// Folder inside the inbox that holds data still arriving. Its name is
/// reserved: no sender may store a file under it.
pub const HIDDEN_AREA: &str = ".haul";

/// How the names of resumable partial files begin, in [`HIDDEN_AREA`].
pub const RESUME_PREFIX: &str = "resume-";

/// Most entries one [`Listing::next_batch`] returns, whatever it is asked
/// for: what a listing holds in memory at once.
pub const MAX_LIST_BATCH: usize = 1024;

/// The place stored files are kept. Cheap to clone; every clone is the same
/// store. Every method blocks; call it on a blocking thread.
pub trait Backend: Clone + Send + Sync + 'static {
    /// A file being received.
    type Upload: Upload;
    /// One batch's commit.
    type Commit: Commit<Upload = Self::Upload>;
    /// A stored file opened for reading.
    type Reader: Reader;
    /// A folder's entries, a batch at a time.
    type Listing: Listing;

    /// What is stored under `path` now. Symlinks are reported, not followed.
    fn existing(&self, path: &RelPath) -> io::Result<Existing>;

    /// The regular files stored under the first `limit` numbered names of
    /// `path` (`name (1).ext` ...), with their sizes: where a file sent
    /// before under this name may have been stored when the name was taken.
    /// Stops at the first number with nothing under it; costs at most
    /// `limit` look-ups; symlinks and other kinds are left out.
    fn numbered_copies(&self, path: &RelPath, limit: u64) -> io::Result<Vec<(RelPath, u64)>> {
        let mut copies = Vec::new();
        for n in 1..=limit {
            let candidate = path.numbered(n);
            match self.existing(&candidate)? {
                Existing::File { size } => copies.push((candidate, size)),
                Existing::Nothing => break,
                Existing::Directory | Existing::Other => {}
            }
        }
        Ok(copies)
    }

    /// The BLAKE3 hash of the file stored under `path`, from the cache when
    /// this version of the file was hashed or committed before; otherwise
    /// read whole, and then kept.
    fn hash_existing(&self, path: &RelPath) -> io::Result<blake3::Hash>;

    /// How many stored files' hashes to keep (0: none). Until it is set,
    /// every hash is computed anew.
    fn set_hash_cache_entries(&self, entries: usize);

    /// Creates the folder `path` and its parents.
    fn create_dir(&self, path: &RelPath) -> io::Result<()>;

    /// Gives a folder its modification time and mode. Done after its files
    /// are in place, since adding a file changes the time. The mode is
    /// masked by the umask, and the owner (the server) keeps every right on
    /// it, so that later files can still be placed in it.
    fn set_dir_metadata(&self, path: &RelPath, metadata: Metadata) -> io::Result<()>;

    /// Starts receiving a file that will be stored as `target`, privately.
    /// Until it is committed nothing exists under a final name, and
    /// dropping the upload removes what was written.
    fn begin(&self, target: RelPath) -> Self::Upload;

    /// Starts or resumes receiving the file identified by `key` (which must
    /// name its content: sender, path, size and modification time). The
    /// data already held is kept across connections and server restarts;
    /// [`Upload::offset`] says how much there is. If another connection is
    /// receiving the same key right now, this one gets a private upload.
    fn begin_resumable(&self, target: RelPath, key: &str) -> io::Result<Self::Upload> {
        match self.begin_resumable_for(target.clone(), key, &Holder::new(), false)? {
            Some(upload) => Ok(upload),
            None => Ok(self.begin(target)),
        }
    }

    /// [`Backend::begin_resumable`] for the session `holder`, which then
    /// holds the claim. If another session holds it and `take_over` is set,
    /// that session is asked to let go and `None` returned: wait with
    /// [`Backend::wait_released`], then call again without `take_over`.
    fn begin_resumable_for(
        &self,
        target: RelPath,
        key: &str,
        holder: &Holder,
        take_over: bool,
    ) -> io::Result<Option<Self::Upload>>;

    /// Waits, until `deadline` at most, for no session to hold the claim
    /// on `key`; returns whether it was released in time.
    fn wait_released(
        &self,
        key: &str,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = bool> + Send;

    /// Starts committing one batch of files group by group, so that the
    /// first groups get their names while the rest are still arriving.
    fn start_commit(&self) -> Self::Commit;

    /// Makes every upload durable, then gives each its final name. Returns,
    /// for each upload in order, the path it was stored under.
    fn commit_all(&self, uploads: Vec<Self::Upload>) -> Vec<io::Result<String>> {
        let mut commit = self.start_commit();
        let placed = commit.place(uploads);
        commit.finish(placed)
    }

    /// What an unprivileged writer may still add to the store.
    fn free_space(&self) -> io::Result<FreeSpace>;

    /// Partial data that no upload of this process is using: what
    /// interrupted transfers left to be resumed, and litter of earlier
    /// processes.
    fn held_partials(&self) -> io::Result<Vec<HeldPartial>>;

    /// Deletes the held partial data `name`, unless an upload took it up
    /// since it was listed; returns whether it was deleted.
    fn remove_held(&self, name: &str) -> io::Result<bool>;

    /// Removes partial data not written to for `max_age`; returns how many
    /// went.
    fn remove_stale(&self, max_age: Duration) -> io::Result<usize>;

    /// The entries of the folder `dir` (`None`: the top of the store), in
    /// no particular order: stored files and folders only. Partial data,
    /// symlinks, special files and names the rules in [`names`] refuse are
    /// left out, and no symlink is followed to reach `dir`.
    fn list(&self, dir: Option<&RelPath>) -> io::Result<Self::Listing>;

    /// Opens the regular file stored under `path` for reading. A symlink,
    /// anywhere on the path, is refused, not followed; so is anything but a
    /// regular file.
    fn open_read(&self, path: &RelPath) -> io::Result<Self::Reader>;
}

/// A file being received. Dropped uncommitted, a resumable upload keeps its
/// data to be resumed and a private one removes it.
pub trait Upload: Send + 'static {
    /// Bytes already held from an earlier, interrupted transfer: where the
    /// data to come starts.
    fn offset(&self) -> u64;

    /// The name its data keeps among the held partials when the transfer
    /// is interrupted, for a resumable upload.
    fn resume_name(&self) -> Option<&str>;

    /// The modification time and mode to give the file when it is
    /// committed; known before the first write, so that it can be made with
    /// its mode.
    fn set_metadata(&mut self, metadata: Metadata);

    /// The verified hash of the whole file: once it is committed,
    /// [`Backend::hash_existing`] knows it without reading the file.
    fn set_hash(&mut self, hash: blake3::Hash);

    /// Adds `bytes` at the end of what the upload holds.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// Writes `bytes` at `offset`, leaving the rest as it is.
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;

    /// Reads what the upload holds at `offset` into `buffer`; returns how
    /// many bytes were read, 0 at the end.
    fn read_at(&mut self, buffer: &mut [u8], offset: u64) -> io::Result<usize>;

    /// How many bytes the upload holds now.
    fn len(&mut self) -> io::Result<u64>;

    /// Whether the upload holds nothing yet.
    fn is_empty(&mut self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The file the data goes into, where the backend has one: the fast
    /// path for data moved inside the kernel, or by a thread of its own.
    /// The file is opened for appending. `None` from a backend that keeps
    /// no local file (an object store), which takes data through
    /// [`Upload::append`] and [`Upload::write_at`] only.
    fn local_file(&mut self) -> io::Result<Option<Arc<File>>>;

    /// [`Upload::local_file`], for a data path that has no other way yet.
    fn data_file(&mut self) -> io::Result<Arc<File>> {
        self.local_file()?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "this storage cannot take data through a local file",
            )
        })
    }

    /// Feeds the first [`Upload::offset`] bytes to `hasher`, so that a
    /// resumed file is verified whole.
    fn hash_held_bytes(&mut self, hasher: &mut blake3::Hasher) -> io::Result<()> {
        let held = self.offset();
        let mut buffer = vec![0u8; 1024 * 1024];
        let mut position = 0;
        while position < held {
            let want = usize::try_from(held - position)
                .map_or(buffer.len(), |left| left.min(buffer.len()));
            let read = self.read_at(&mut buffer[..want], position)?;
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

    /// Gives the whole file its time and mode and lets go of what it holds
    /// open, so that a batch holds nothing open per file. The data is made
    /// durable at commit all the same.
    fn close(&mut self) -> io::Result<()>;

    /// Deletes the data, resumable or not: it is known to be wrong.
    fn discard(self);

    /// Makes the file durable and gives it its final name; returns that
    /// name, which differs from the requested one when the store kept both.
    fn commit(self) -> io::Result<String>;
}

/// One batch's commit, made of groups: each group's data is made durable
/// and named as soon as it is whole, and the names are made durable once,
/// at the end. A file is named only after its data is durable, and the
/// batch is durable when [`Commit::finish`] returns.
pub trait Commit: Send + 'static {
    type Upload;

    /// Makes the data of `uploads` durable, then gives each its final name.
    /// Returns, for each upload in order, the path it was stored under; the
    /// names are durable only after [`Commit::finish`].
    fn place(&mut self, uploads: Vec<Self::Upload>) -> Vec<io::Result<String>>;

    /// Makes the names placed durable; if that fails, every result in
    /// `placed` becomes the failure.
    fn finish(self, placed: Vec<io::Result<String>>) -> Vec<io::Result<String>>;
}

/// A stored file opened for reading: the file as it was when it was
/// opened, even if it is replaced meanwhile.
pub trait Reader: io::Read + Send + 'static {
    /// Its size, time and mode when it was opened.
    fn info(&self) -> FileInfo;

    /// Reads at `offset` into `buffer`; returns how many bytes were read, 0
    /// at the end.
    fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<usize>;

    /// The open file, where the backend has one: the fast path for data
    /// sent inside the kernel. `None` from an object store.
    fn local_file(&self) -> Option<&File>;
}

/// A cursor over a folder's entries. It holds no more than one batch of
/// them, so that a folder of any size can be listed.
pub trait Listing: Send + 'static {
    /// The next entries, at most `max` and at most [`MAX_LIST_BATCH`];
    /// empty once the listing is done.
    fn next_batch(&mut self, max: usize) -> io::Result<Vec<Listed>>;

    /// The listed folder's own time and mode, as it was when opened.
    fn folder(&self) -> Metadata;
}

/// One entry of a [`Listing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: SafeName,
    pub kind: ListedKind,
}

/// What a listed entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListedKind {
    File(FileInfo),
    /// A folder, with its modification time and permission bits
    /// (`0o777` at most).
    Directory {
        modified: SystemTime,
        mode: u32,
    },
}

/// A stored file's size, modification time and permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub size: u64,
    pub modified: SystemTime,
    /// Permission bits only (`0o777` at most).
    pub mode: u32,
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

/// What the store holds under a path.
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
    /// Permission bits; anything beyond `0o777` is ignored, and the
    /// server's umask is applied.
    pub mode: Option<u32>,
}

/// Room left in the store, as an unprivileged writer sees it.
#[derive(Debug, Clone, Copy)]
pub struct FreeSpace {
    pub bytes: u64,
    /// The unit space is handed out in: a file takes whole blocks.
    pub block: u64,
    /// Free inodes; `None` where the file system has no limit on them.
    pub inodes: Option<u64>,
}

/// Partial data no transfer is using.
#[derive(Debug, Clone)]
pub struct HeldPartial {
    /// Its name among the held partials.
    pub name: String,
    pub bytes: u64,
    /// When it was last written to.
    pub modified: SystemTime,
}

/// One session's hold on the resumable uploads it claimed. A newer session
/// of the same sender that wants one of them asks the holder to let go:
/// [`Holder::asked`] completes, and the holder ends its transfer, keeping
/// the data it wrote, which releases the claim. Cheap to clone; every clone
/// is the same holder.
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

    /// Asks this holder to let go of its claims.
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
