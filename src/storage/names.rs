//! The rules a stored name must pass, on whichever side receives it.
//!
//! A [`SafeName`] is one path component that reads on screen as it is
//! stored and is safe to create in any directory; a [`RelPath`] is one or
//! more of them. Every name from the other side is judged here before any
//! backend sees it.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

use super::HIDDEN_AREA;
use crate::text;

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
    /// A bidirectional control (U+202E and its kin), which reorders what
    /// follows it on screen: the name would not read as it is.
    #[error(
        "the name contains U+{:04X}, a bidirectional control that reorders the text around it",
        u32::from(*.0)
    )]
    DirectionChange(char),
    /// A zero-width or otherwise invisible character: the name would look
    /// like another one that lacks it.
    #[error(
        "the name contains U+{:04X}, an invisible character (zero-width or default-ignorable)",
        u32::from(*.0)
    )]
    Invisible(char),
    #[error("the name contains a path separator")]
    Separator,
    #[error("the name is {0} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    #[error("the name `{HIDDEN_AREA}` is reserved for haul's own use")]
    Reserved,
}

impl SafeName {
    /// Judges a received name. Only a single, printable, UTF-8 component of at
    /// most [`MAX_NAME_LEN`] bytes passes, which reads on screen as it is
    /// stored: no direction changes, no invisible characters.
    pub fn parse(raw: &[u8]) -> Result<SafeName, NameError> {
        Self::check(raw).map(|name| SafeName(name.to_owned()))
    }

    /// What [`SafeName::parse`] judges, without keeping the name.
    fn check(raw: &[u8]) -> Result<&str, NameError> {
        if raw.is_empty() {
            return Err(NameError::Empty);
        }
        let name = std::str::from_utf8(raw).map_err(|_| NameError::NotUtf8)?;
        if name.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        if let Some(c) = name.chars().find(|&c| text::changes_direction(c)) {
            return Err(NameError::DirectionChange(c));
        }
        if let Some(c) = name.chars().find(|&c| text::is_invisible(c)) {
            return Err(NameError::Invisible(c));
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
        Ok(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `n`th alternative to this name when it is taken: `report (1).pdf`.
    /// The stem is shortened when needed so that the result stays a valid name.
    pub(super) fn numbered(&self, n: u64) -> String {
        numbered(&self.0, n)
    }
}

/// The `n`th alternative to the valid name `name`; see [`SafeName::numbered`].
fn numbered(name: &str, n: u64) -> String {
    let (stem, extension) = match name.rfind('.') {
        Some(dot) if dot > 0 => name.split_at(dot),
        _ => (name, ""),
    };
    let suffix = format!(" ({n}){extension}");
    let mut stem_len = stem.len().min(MAX_NAME_LEN.saturating_sub(suffix.len()));
    while !stem.is_char_boundary(stem_len) {
        stem_len -= 1;
    }
    format!("{}{suffix}", &stem[..stem_len])
}

impl fmt::Display for SafeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A relative path inside the inbox: one or more [`SafeName`] components,
/// kept joined by `/` (which no component holds), so that a path of many
/// short components costs its length and one allocation, not one per
/// component: a batch holds a path per offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath(String);

impl RelPath {
    /// Judges a `/`-separated relative path: every component must pass
    /// [`SafeName::parse`], so absolute paths, `..`, empty components and
    /// backslashes are all refused.
    pub fn parse(raw: &[u8]) -> Result<RelPath, NameError> {
        for component in raw.split(|&byte| byte == b'/') {
            SafeName::check(component)?;
        }
        let joined = std::str::from_utf8(raw).map_err(|_| NameError::NotUtf8)?;
        Ok(RelPath(joined.to_owned()))
    }

    pub fn single(name: SafeName) -> RelPath {
        RelPath(name.0)
    }

    /// The path of `name` inside this one.
    pub fn child(&self, name: SafeName) -> RelPath {
        RelPath(format!("{}/{}", self.0, name.0))
    }

    /// Its components, from the top; there is at least one.
    pub fn components(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Its last component.
    pub fn last(&self) -> SafeName {
        SafeName(self.last_str().to_owned())
    }

    /// Its folders from the top, and its last component, borrowed.
    pub(super) fn split_last(&self) -> (impl Iterator<Item = &str>, &str) {
        let (parents, last) = match self.0.rsplit_once('/') {
            Some((parents, last)) => (Some(parents), last),
            None => (None, self.0.as_str()),
        };
        (
            parents.into_iter().flat_map(|parents| parents.split('/')),
            last,
        )
    }

    fn last_str(&self) -> &str {
        self.split_last().1
    }

    pub(super) fn to_path(&self) -> PathBuf {
        PathBuf::from(&self.0)
    }

    pub(super) fn parent(&self) -> Option<PathBuf> {
        let (parents, _) = self.0.rsplit_once('/')?;
        Some(PathBuf::from(parents))
    }

    pub(super) fn with_last(&self, last: String) -> PathBuf {
        let mut path = self.parent().unwrap_or_default();
        path.push(last);
        path
    }

    /// This path with its last component numbered: `dir/report (2).pdf`.
    pub(super) fn numbered(&self, n: u64) -> RelPath {
        // A numbered valid name is valid: it only gains ` (n)` and may
        // lose the end of its stem to stay within the length limit.
        let last = numbered(self.last_str(), n);
        match self.0.rsplit_once('/') {
            Some((parents, _)) => RelPath(format!("{parents}/{last}")),
            None => RelPath(last),
        }
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass() {
        for name in [
            "report.pdf",
            "a b c.txt",
            "naïve – 日本.txt",
            "שלום.txt",
            "e\u{301}t\u{e9}",
            "\u{2764}\u{fe0f} notes",
            "葛\u{e0100}城",
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
            (
                "invoice\u{202e}fdp.exe".as_bytes(),
                NameError::DirectionChange('\u{202e}'),
            ),
            (
                "\u{2067}x".as_bytes(),
                NameError::DirectionChange('\u{2067}'),
            ),
            (
                "a\u{200f}".as_bytes(),
                NameError::DirectionChange('\u{200f}'),
            ),
            (
                "a\u{61c}b".as_bytes(),
                NameError::DirectionChange('\u{61c}'),
            ),
            (
                "pay\u{200b}pal".as_bytes(),
                NameError::Invisible('\u{200b}'),
            ),
            ("a\u{200d}b".as_bytes(), NameError::Invisible('\u{200d}')),
            (
                "\u{feff}report".as_bytes(),
                NameError::Invisible('\u{feff}'),
            ),
            ("a\u{2060}b".as_bytes(), NameError::Invisible('\u{2060}')),
            ("a\u{ad}b".as_bytes(), NameError::Invisible('\u{ad}')),
            ("\u{3164}".as_bytes(), NameError::Invisible('\u{3164}')),
            ("x\u{e0041}".as_bytes(), NameError::Invisible('\u{e0041}')),
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
}
