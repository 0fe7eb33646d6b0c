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

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use thiserror::Error;

/// Folder inside the inbox that holds data still arriving. Its name is
/// reserved: no sender may store a file under it.
pub const HIDDEN_AREA: &str = ".haul";

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

/// A received name made safe to print: invalid UTF-8 is replaced and control
/// characters (terminal escape sequences among them) are escaped.
pub fn printable(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).escape_debug().to_string()
}

/// What to do when a file with the incoming name already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// Keep both: the new file gets the first free `name (N).ext`.
    Rename,
    /// Replace the existing file.
    Overwrite,
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
    on_conflict: OnConflict,
    /// Makes temporary names unique within this process.
    next_temp: AtomicU64,
}

impl Store {
    /// Opens (and creates, if missing) the receive directory at `path`.
    pub fn open(path: &Path, on_conflict: OnConflict) -> io::Result<Store> {
        std::fs::create_dir_all(path)?;
        let dir = Dir::open_ambient_dir(path, ambient_authority())?;
        dir.create_dir_all(HIDDEN_AREA)?;
        let hidden = dir.open_dir(HIDDEN_AREA)?;
        Ok(Store {
            inner: Arc::new(StoreInner {
                dir,
                hidden,
                on_conflict,
                next_temp: AtomicU64::new(0),
            }),
        })
    }

    /// Starts receiving a file that will be stored as `name`. Until
    /// [`Partial::commit`] succeeds, nothing exists under a final name, and
    /// dropping the [`Partial`] removes what was written.
    pub fn begin(&self, name: SafeName) -> io::Result<Partial> {
        loop {
            let serial = self.inner.next_temp.fetch_add(1, Ordering::Relaxed);
            let temp_name = format!("{}-{serial}.partial", std::process::id());
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            match self.inner.hidden.open_with(&temp_name, &options) {
                Ok(file) => {
                    return Ok(Partial {
                        store: self.clone(),
                        file: file.into_std(),
                        temp_name,
                        name,
                        committed: false,
                    });
                }
                // Left over from an earlier process with the same id.
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(error),
            }
        }
    }
}

/// A file being received, under a temporary name in the hidden area.
pub struct Partial {
    store: Store,
    file: std::fs::File,
    temp_name: String,
    name: SafeName,
    committed: bool,
}

impl Partial {
    /// A handle to write the received bytes to.
    pub fn writer(&self) -> io::Result<std::fs::File> {
        self.file.try_clone()
    }

    /// The name the sender asked for.
    pub fn name(&self) -> &SafeName {
        &self.name
    }

    /// Makes the file durable and gives it its final name; returns that name,
    /// which differs from the requested one when the store kept both.
    pub fn commit(mut self) -> io::Result<String> {
        self.file.sync_all()?;
        let inner = &self.store.inner;
        let stored_as = match inner.on_conflict {
            OnConflict::Overwrite => {
                inner
                    .hidden
                    .rename(&self.temp_name, &inner.dir, self.name.as_str())?;
                self.committed = true;
                self.name.as_str().to_owned()
            }
            OnConflict::Rename => {
                let stored_as = self.link_under_free_name()?;
                self.committed = true;
                inner.hidden.remove_file(&self.temp_name)?;
                stored_as
            }
        };
        sync_dir(&inner.dir)?;
        Ok(stored_as)
    }

    /// Links the data under the first name not taken. A hard link, unlike a
    /// rename, fails when the target exists, so two receivers racing for one
    /// name can never replace each other's file.
    fn link_under_free_name(&self) -> io::Result<String> {
        let inner = &self.store.inner;
        let mut candidate = self.name.as_str().to_owned();
        for n in 1u64.. {
            match inner
                .hidden
                .hard_link(&self.temp_name, &inner.dir, &candidate)
            {
                Ok(()) => return Ok(candidate),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    candidate = self.name.numbered(n);
                }
                Err(error) => return Err(error),
            }
        }
        unreachable!("u64 counter exhausted")
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.committed {
            // The data is incomplete; a failure to remove it only leaves
            // litter in the hidden area, never a partial file under its name.
            let _ = self.store.inner.hidden.remove_file(&self.temp_name);
        }
    }
}

/// Makes a directory's entries durable. The handle `cap-std` keeps may be
/// opened for path lookups only, which cannot be synced, so open it for reading.
fn sync_dir(dir: &Dir) -> io::Result<()> {
    dir.open_with(".", OpenOptions::new().read(true))?
        .into_std()
        .sync_all()
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

    #[test]
    fn printable_escapes_terminal_sequences() {
        assert_eq!(printable(b"\x1b[2Jx\n"), "\\u{1b}[2Jx\\n");
        assert_eq!(printable(b"\xffok"), "\u{fffd}ok");
    }

    fn receive(store: &Store, name: &str, content: &[u8]) -> String {
        let partial = store
            .begin(SafeName::parse(name.as_bytes()).unwrap())
            .unwrap();
        partial.writer().unwrap().write_all(content).unwrap();
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
        let partial = store.begin(SafeName::parse(b"a.txt").unwrap()).unwrap();
        partial.writer().unwrap().write_all(b"half").unwrap();
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
        for on_conflict in [OnConflict::Rename, OnConflict::Overwrite] {
            let store = Store::open(temp.path(), on_conflict).unwrap();
            receive(&store, "a.txt", b"attack");
            assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        }
    }
}
