//! The sender's resume identity: 128 random bits, made once and kept in
//! `$XDG_STATE_HOME/haul/sender-id` (by default
//! `~/.local/state/haul/sender-id`), sent in every Hello.
//!
//! The server mixes it into the name of a file's partial data, so that only
//! the sender that began an upload can continue it or have it replaced. It
//! is a capability, not a secret that must survive a wiretap (see
//! `docs/SECURITY.md`): the file is made readable by its owner alone, but
//! without a shared secret it crosses the network in the clear.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::protocol::haul::SenderId;

/// The file's name inside haul's state directory.
const FILE_NAME: &str = "sender-id";

/// This user's resume identity, made and kept on first use. An `Err` says
/// why it could not be read or kept; the caller then sends with
/// [`random`] for this run, and an interrupted send will not resume.
pub fn load_or_create() -> Result<SenderId, String> {
    let dir = state_dir().ok_or("neither XDG_STATE_HOME nor HOME is set")?;
    let path = dir.join(FILE_NAME);
    match read(&path) {
        Ok(id) => return Ok(id),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    }
    create(&dir, &path).map_err(|error| format!("cannot keep {}: {error}", path.display()))
}

/// A fresh random identity.
pub fn random() -> io::Result<SenderId> {
    let mut id = SenderId::default();
    getrandom::fill(&mut id).map_err(io::Error::other)?;
    Ok(id)
}

/// `$XDG_STATE_HOME/haul`, or `$HOME/.local/state/haul`. A relative
/// `XDG_STATE_HOME` is ignored, as the XDG specification asks.
fn state_dir() -> Option<PathBuf> {
    let from_env = |name| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    let base = from_env("XDG_STATE_HOME")
        .or_else(|| from_env("HOME").map(|home| home.join(".local/state")))?;
    Some(base.join("haul"))
}

/// The identity in `path`: 32 hexadecimal digits and a newline.
fn read(path: &Path) -> io::Result<SenderId> {
    let text = std::fs::read_to_string(path)?;
    parse(text.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "it does not hold 32 hexadecimal digits",
        )
    })
}

fn parse(text: &str) -> Option<SenderId> {
    let mut id = SenderId::default();
    if text.len() != 2 * id.len() || !text.is_ascii() {
        return None;
    }
    for (byte, pair) in id.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(id)
}

fn to_hex(id: &SenderId) -> String {
    id.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Makes a new identity and puts it in place whole: written to a file of
/// this process's own, then linked under the final name, which fails
/// rather than replace. Two senders starting at once thus agree on one
/// identity, and nobody reads a half-written file.
fn create(dir: &Path, path: &Path) -> io::Result<SenderId> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let id = random()?;
    let own = dir.join(format!("{FILE_NAME}.{}", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&own)
        .and_then(|mut file| {
            file.write_all(format!("{}\n", to_hex(&id)).as_bytes())?;
            file.sync_all()
        });
    let linked = written.and_then(|()| std::fs::hard_link(&own, path));
    let _ = std::fs::remove_file(&own);
    match linked {
        Ok(()) => Ok(id),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => read(path),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_identity_is_made_private_once_and_read_back_after() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("deeper/haul");
        let path = dir.join(FILE_NAME);
        let made = create(&dir, &path).unwrap();
        assert_eq!(read(&path).unwrap(), made);
        assert_eq!(create(&dir, &path).unwrap(), made, "never replaced");
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no leftovers");
        assert_ne!(random().unwrap(), random().unwrap());
    }

    #[test]
    fn only_32_hexadecimal_digits_are_an_identity() {
        let id = parse("00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(to_hex(&id), "00112233445566778899aabbccddeeff");
        for bad in [
            "",
            "0011",
            "zz112233445566778899aabbccddeeff",
            "é0112233445566778899aabbccddeef",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
