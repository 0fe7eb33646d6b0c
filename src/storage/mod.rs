//! Stored files: the only code that creates, renames or deletes them.
//!
//! [`names`] judges every name that arrives; [`local`] keeps files in a
//! directory on this machine.

pub mod local;
pub mod names;

pub use local::*;
pub use names::{MAX_NAME_LEN, NameError, RelPath, SafeName};

/// Folder inside the inbox that holds data still arriving. Its name is
/// reserved: no sender may store a file under it.
pub const HIDDEN_AREA: &str = ".haul";

/// How the names of resumable partial files begin, in [`HIDDEN_AREA`].
pub const RESUME_PREFIX: &str = "resume-";
