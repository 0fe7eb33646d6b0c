//! haul's own protocol: verified, resumable, many files per connection.
//!
//! A connection opens with [`MAGIC`]; everything after it is a frame:
//! `kind: u8 | length: u32 | payload[length]`. The byte-exact layout of each
//! payload is in `docs/PROTOCOL.md`; this module is its only implementation.
//! File bytes travel in `Data` frames whose payload is handed to the caller
//! untouched, so this module never holds file content.
//!
//! Messages are typed by who may send them: [`Hello`] opens a session,
//! [`ServerOpening`] answers it, then [`SenderMessage`] and
//! [`ReceiverMessage`] by engine role (the side sending files and the side
//! receiving them), not by process, so that a fetch from the server can
//! swap the roles and keep the messages. A client's first message after
//! the opening, a [`Request`], says what the session does: a push (its
//! first [`SenderMessage`]) or a listing (`List`, answered with
//! [`ListingMessage`]s). Each decodes only its own kinds ([`Incoming`]),
//! so a message from the wrong side, or a request after the first
//! message, is a [`DecodeError`].
//! [`Message`] is every kind at once, for peers made by hand.

use thiserror::Error;

/// Opens every haul connection. As a seed header its size would be over
/// 2^63, which no seed client sends; the CR LF and 0x1A catch a channel that
/// rewrites line endings or stops at end-of-file markers, as PNG's signature
/// does.
pub const MAGIC: [u8; 8] = [0x89, b'H', b'A', b'U', b'L', b'\r', b'\n', 0x1a];

/// The protocol version this code speaks. Version 3 gives every Refused
/// answer and every Failed a [`FailCode`] before its text; version 2 bound
/// the Hello and Welcome into the encrypted handshake and added the
/// sender's resume identity to the Hello.
pub const VERSION: u16 = 3;

/// Bytes in a frame header: kind and length.
pub const FRAME_HEADER_LEN: usize = 5;

/// Largest payload of any frame but `Data`.
pub const MAX_CONTROL_LEN: u32 = 64 * 1024;

/// Largest payload of a `Data` frame.
pub const MAX_DATA_LEN: u32 = 1024 * 1024;

/// Longest relative path an offer may carry, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// A BLAKE3 hash.
pub type Hash = [u8; 32];

/// The hash a sender puts in FileEnd to withdraw a file whose bytes it
/// cannot vouch for (the file changed while it was read): the bitwise
/// complement of the hash of what it sent. It differs from that hash in
/// every bit, so a receiver that hashed the same bytes can never take it
/// for a match, and fails the file as it fails any mismatch, deleting what
/// it received; comparing with this tells it the sender meant it.
pub fn withdrawn(hash: &Hash) -> Hash {
    hash.map(|byte| !byte)
}

/// A sender's resume identity: random bits the client keeps, so that only
/// the sender that began a partial upload can continue it.
pub type SenderId = [u8; 16];

/// Capability bit: file bytes may travel zstd-compressed in `DataZstd`
/// frames, each decompressing to at most [`MAX_DATA_LEN`] bytes.
pub const CAP_ZSTD: u64 = 1;

/// Capability bit: everything after the Welcome is encrypted with the shared
/// secret (see `secure`). A server with a secret requires it; a client with a
/// secret refuses a server that does not grant it.
pub const CAP_SECRET: u64 = 2;

/// Why one entry was refused or not stored, as the number on the wire: what
/// the other side acts on. The text beside it is for a person and is never
/// matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FailCode {
    /// None of the others; also what a code this side does not know reads as.
    Other = 0,
    /// No room (bytes or inodes) left on the receiving side.
    NoSpace = 1,
    /// Larger than the receiving side accepts.
    TooLarge = 2,
    /// The name breaks the store's rules.
    NameRefused = 3,
    /// Something else is under the name, and the conflict policy keeps it.
    Conflict = 4,
    /// Another connection is receiving the same file.
    Busy = 5,
    /// The bytes that arrived do not have the hash the sender announced.
    HashMismatch = 6,
    /// Fewer bytes arrived than were offered.
    Incomplete = 7,
    /// Reading or writing storage failed.
    Io = 8,
    /// The peer's rights do not cover it.
    NotAllowed = 9,
    /// The receiving side does not speak the peer's protocol version (it
    /// speaks a newer one).
    Version = 10,
    /// Nothing is stored under the path asked for.
    NotFound = 11,
}

impl FailCode {
    const ALL: [FailCode; 12] = [
        FailCode::Other,
        FailCode::NoSpace,
        FailCode::TooLarge,
        FailCode::NameRefused,
        FailCode::Conflict,
        FailCode::Busy,
        FailCode::HashMismatch,
        FailCode::Incomplete,
        FailCode::Io,
        FailCode::NotAllowed,
        FailCode::Version,
        FailCode::NotFound,
    ];

    /// The code for a number off the wire; [`FailCode::Other`] for one this
    /// version does not know, so that a newer peer's codes still read.
    pub fn from_u16(number: u16) -> FailCode {
        FailCode::ALL
            .into_iter()
            .find(|code| *code as u16 == number)
            .unwrap_or(FailCode::Other)
    }
}

/// Frame kinds, as the first byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 0x01,
    Welcome = 0x02,
    Offer = 0x10,
    BatchEnd = 0x11,
    Answer = 0x12,
    Data = 0x20,
    FileEnd = 0x21,
    Receipt = 0x22,
    Failed = 0x23,
    DataZstd = 0x24,
    Bye = 0x30,
    Error = 0x31,
    List = 0x40,
    Entries = 0x41,
    ListEnd = 0x42,
    Get = 0x43,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            0x01 => Kind::Hello,
            0x02 => Kind::Welcome,
            0x10 => Kind::Offer,
            0x11 => Kind::BatchEnd,
            0x12 => Kind::Answer,
            0x20 => Kind::Data,
            0x21 => Kind::FileEnd,
            0x22 => Kind::Receipt,
            0x23 => Kind::Failed,
            0x24 => Kind::DataZstd,
            0x30 => Kind::Bye,
            0x31 => Kind::Error,
            0x40 => Kind::List,
            0x41 => Kind::Entries,
            0x42 => Kind::ListEnd,
            0x43 => Kind::Get,
            _ => return None,
        })
    }

    fn max_len(self) -> u32 {
        match self {
            Kind::Data | Kind::DataZstd => MAX_DATA_LEN,
            _ => MAX_CONTROL_LEN,
        }
    }
}

/// A validated frame header: the payload that follows is `len` bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: Kind,
    pub len: u32,
}

/// Why bytes are not a valid frame.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("{kind:?} frame of {len} bytes is over the limit of {max}")]
    TooLong { kind: Kind, len: u32, max: u32 },
    #[error("{0:?} frame is too short")]
    Truncated(Kind),
    #[error("{0:?} frame has bytes after its end")]
    Trailing(Kind),
    #[error("{0:?} frame carries text that is not UTF-8")]
    NotUtf8(Kind),
    #[error("invalid value in {kind:?} frame: {what}")]
    Invalid { kind: Kind, what: &'static str },
    /// A message the other side may not send: a receiver's from a sender,
    /// say, or anything but a Hello to open a session.
    #[error("{kind:?} is not a message {from} sends")]
    WrongSide { kind: Kind, from: &'static str },
}

/// Decodes and checks a frame header before anything of its payload is read.
pub fn decode_frame_header(bytes: [u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, DecodeError> {
    let [kind_byte, len @ ..] = bytes;
    let kind = Kind::from_byte(kind_byte).ok_or(DecodeError::UnknownKind(kind_byte))?;
    let len = u32::from_be_bytes(len);
    if len > kind.max_len() {
        return Err(DecodeError::TooLong {
            kind,
            len,
            max: kind.max_len(),
        });
    }
    Ok(FrameHeader { kind, len })
}

/// What kind of entry an offer announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
}

/// A modification time: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mtime {
    pub secs: i64,
    pub nanos: u32,
}

impl Mtime {
    /// A time as the protocol carries it; times before 1970 become 1970.
    pub fn from_system_time(time: std::time::SystemTime) -> Mtime {
        time.duration_since(std::time::UNIX_EPOCH).map_or_else(
            |_| Mtime::default(),
            |since| Mtime {
                secs: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
                nanos: since.subsec_nanos(),
            },
        )
    }
}

/// Longest name of one listed entry, in bytes: the longest file name most
/// Linux file systems accept (`storage::MAX_NAME_LEN`).
pub const MAX_ENTRY_NAME_LEN: usize = 255;

/// Bytes of one listed entry before its name: kind, size, mtime (seconds
/// and nanoseconds), mode, name length.
pub const ENTRY_HEADER_LEN: usize = 1 + 8 + 8 + 4 + 4 + 2;

const ENTRY_FILE: u8 = 0;
const ENTRY_DIRECTORY: u8 = 1;

/// One entry of a listing, as the server says it: untrusted, until the
/// client has judged the name with the store's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListEntry<'a> {
    pub kind: EntryKind,
    /// 0 for a directory.
    pub size: u64,
    pub mtime: Mtime,
    /// Permission bits (`0o777` at most).
    pub mode: u32,
    /// One path component, 1 to [`MAX_ENTRY_NAME_LEN`] bytes; not yet
    /// judged.
    pub name: &'a [u8],
}

/// The entries of one `Entries` frame: its payload, checked whole when it
/// was decoded (or built by [`EntriesBuilder`]), read an entry at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entries<'a> {
    payload: &'a [u8],
}

impl<'a> Entries<'a> {
    /// Checks every entry of a payload: at least one, each whole and
    /// valid, nothing after the last.
    fn check(payload: &'a [u8]) -> Result<Entries<'a>, DecodeError> {
        if payload.is_empty() {
            return Err(DecodeError::Invalid {
                kind: Kind::Entries,
                what: "no entries",
            });
        }
        let mut rest = payload;
        while !rest.is_empty() {
            rest = next_entry(rest)?.1;
        }
        Ok(Entries { payload })
    }

    /// The entries, in the order the server sent them.
    pub fn iter(&self) -> impl Iterator<Item = ListEntry<'a>> + 'a {
        let mut rest = self.payload;
        // Checked whole before an `Entries` exists, so no entry fails here.
        std::iter::from_fn(move || {
            let (entry, after) = next_entry(rest).ok()?;
            rest = after;
            Some(entry)
        })
    }
}

/// The first entry of `bytes`, and what follows it.
fn next_entry(bytes: &[u8]) -> Result<(ListEntry<'_>, &[u8]), DecodeError> {
    let kind = Kind::Entries;
    let invalid = |what| DecodeError::Invalid { kind, what };
    let mut fields = Fields { kind, rest: bytes };
    let entry_kind = match fields.u8()? {
        ENTRY_FILE => EntryKind::File,
        ENTRY_DIRECTORY => EntryKind::Directory,
        _ => return Err(invalid("unknown entry kind")),
    };
    let size = fields.u64()?;
    let secs = fields.i64()?;
    let nanos = fields.u32()?;
    let mode = fields.u32()?;
    let name_len = usize::from(fields.u16()?);
    if entry_kind == EntryKind::Directory && size != 0 {
        return Err(invalid("a size given for a directory"));
    }
    if nanos >= 1_000_000_000 {
        return Err(invalid("nanoseconds of a second over 999999999"));
    }
    if mode > 0o777 {
        return Err(invalid("mode beyond permission bits"));
    }
    if name_len == 0 || name_len > MAX_ENTRY_NAME_LEN {
        return Err(invalid("entry name empty or too long"));
    }
    let (name, rest) = fields
        .rest
        .split_at_checked(name_len)
        .ok_or(DecodeError::Truncated(kind))?;
    let entry = ListEntry {
        kind: entry_kind,
        size,
        mtime: Mtime { secs, nanos },
        mode,
        name,
    };
    Ok((entry, rest))
}

/// Most paths one Get may ask for.
pub const MAX_GET_PATHS: usize = 256;

/// The paths of a `Get` frame: its payload, checked whole when it was
/// decoded (or built by [`GetPaths::build`]), read a path at a time.
/// Layout: `count: u16`, then `count` times `len: u16 | path[len]`; count
/// from 1 to [`MAX_GET_PATHS`], each path 1 to [`MAX_PATH_LEN`] bytes of
/// UTF-8, nothing after the last. The frame's own limit bounds the whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetPaths<'a> {
    payload: &'a [u8],
}

impl<'a> GetPaths<'a> {
    fn check(payload: &'a [u8]) -> Result<GetPaths<'a>, DecodeError> {
        let invalid = |what| DecodeError::Invalid {
            kind: Kind::Get,
            what,
        };
        let Some((count, mut rest)) = payload.split_first_chunk::<2>() else {
            return Err(DecodeError::Truncated(Kind::Get));
        };
        let count = usize::from(u16::from_be_bytes(*count));
        if count == 0 || count > MAX_GET_PATHS {
            return Err(invalid("path count not between 1 and 256"));
        }
        for _ in 0..count {
            let (path, after) = next_get_path(rest)?;
            if path.is_empty() || path.len() > MAX_PATH_LEN {
                return Err(invalid("path empty or too long"));
            }
            rest = after;
        }
        if !rest.is_empty() {
            return Err(DecodeError::Trailing(Kind::Get));
        }
        Ok(GetPaths { payload })
    }

    /// Encodes `paths` as a Get payload into `out` (cleared first), and
    /// returns them as [`GetPaths`] over it; `None` when they break the
    /// rules above or do not fit in one frame.
    pub fn build<'b>(paths: &[&str], out: &'b mut Vec<u8>) -> Option<GetPaths<'b>> {
        out.clear();
        let count = u16::try_from(paths.len()).ok()?;
        out.extend_from_slice(&count.to_be_bytes());
        for path in paths {
            let len = u16::try_from(path.len()).ok()?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(path.as_bytes());
        }
        if out.len() > MAX_CONTROL_LEN as usize {
            return None;
        }
        GetPaths::check(out).ok()
    }

    /// The paths, in the order the client sent them.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut rest = self.payload.get(2..).unwrap_or_default();
        // Checked whole before a `GetPaths` exists, so no path fails here.
        std::iter::from_fn(move || {
            let (path, after) = next_get_path(rest).ok()?;
            rest = after;
            Some(path)
        })
    }
}

fn next_get_path(rest: &[u8]) -> Result<(&str, &[u8]), DecodeError> {
    let Some((len, rest)) = rest.split_first_chunk::<2>() else {
        return Err(DecodeError::Truncated(Kind::Get));
    };
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return Err(DecodeError::Truncated(Kind::Get));
    }
    let (path, rest) = rest.split_at(len);
    let path = std::str::from_utf8(path).map_err(|_| DecodeError::NotUtf8(Kind::Get))?;
    Ok((path, rest))
}

/// Packs listed entries into `Entries` frames: as many as fit in one
/// frame's [`MAX_CONTROL_LEN`], reusing its buffer from frame to frame.
#[derive(Debug, Default)]
pub struct EntriesBuilder {
    payload: Vec<u8>,
}

impl EntriesBuilder {
    pub fn new() -> EntriesBuilder {
        EntriesBuilder::default()
    }

    /// Adds `entry` if it fits in the frame; `false` when the frame is
    /// full, to be sent (and [`Self::clear`]ed) first. The entry is this
    /// side's own, already valid: a name of 1 to [`MAX_ENTRY_NAME_LEN`]
    /// bytes, permission bits only; a directory's size is sent as 0.
    pub fn push(&mut self, entry: &ListEntry<'_>) -> bool {
        debug_assert!((1..=MAX_ENTRY_NAME_LEN).contains(&entry.name.len()));
        debug_assert!(entry.mode <= 0o777 && entry.mtime.nanos < 1_000_000_000);
        let name = &entry.name[..entry.name.len().min(MAX_ENTRY_NAME_LEN)];
        if self.payload.len() + ENTRY_HEADER_LEN + name.len() > MAX_CONTROL_LEN as usize {
            return false;
        }
        let (kind, size) = match entry.kind {
            EntryKind::File => (ENTRY_FILE, entry.size),
            EntryKind::Directory => (ENTRY_DIRECTORY, 0),
        };
        self.payload.push(kind);
        self.payload.extend_from_slice(&size.to_be_bytes());
        self.payload
            .extend_from_slice(&entry.mtime.secs.to_be_bytes());
        self.payload
            .extend_from_slice(&entry.mtime.nanos.to_be_bytes());
        self.payload.extend_from_slice(&entry.mode.to_be_bytes());
        // At most MAX_ENTRY_NAME_LEN, so it fits.
        self.payload
            .extend_from_slice(&(name.len() as u16).to_be_bytes());
        self.payload.extend_from_slice(name);
        true
    }

    /// Whether no entry was added since the last [`Self::clear`].
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    /// The entries added, for an `Entries` frame.
    pub fn entries(&self) -> Entries<'_> {
        Entries {
            payload: &self.payload,
        }
    }

    /// Empties the frame, keeping its buffer.
    pub fn clear(&mut self) {
        self.payload.clear();
    }
}

/// The sender announces one file or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer<'a> {
    pub kind: EntryKind,
    /// `None` for a stream whose length is known only at its end.
    pub size: Option<u64>,
    /// The BLAKE3 hash of the whole file, sent only after the server
    /// answered [`Answer::Compare`]: the server compares it with its own
    /// copy's, so that it never tells a sender anything about a stored file
    /// beyond its name and size. Only for a file of known size.
    pub hash: Option<Hash>,
    pub mtime: Mtime,
    /// Permission bits (`0o777` at most).
    pub mode: u32,
    /// Relative path, `/`-separated, untrusted until the store judges it.
    pub path: &'a [u8],
}

/// The server's answer to one offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<'a> {
    /// Send the file's bytes from this offset (0: from the start; more:
    /// resume, the server already holds the bytes before it).
    Send { offset: u64 },
    /// A file of the same size is stored under this path: offer it again
    /// with its [`Offer::hash`] to learn whether it is the same.
    Compare,
    /// The directory exists now.
    Created,
    /// Nothing will be stored for this offer.
    Refused { code: FailCode, reason: &'a str },
    /// The file offered with its hash is stored, identical, under
    /// `stored_as`: nothing to send.
    Same { stored_as: &'a str },
}

/// Every message but `Data`, whose payload is file bytes, whichever side
/// sends it: the codec's view, for peers made by hand (tests, fuzzing). The
/// sessions read and write the typed sets below, split by who may send
/// what, so that a message from the wrong side is a decode error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Hello {
        version: u16,
        capabilities: u64,
        sender: SenderId,
    },
    Welcome {
        version: u16,
        capabilities: u64,
    },
    Offer(Offer<'a>),
    BatchEnd,
    Answer(Answer<'a>),
    FileEnd {
        hash: Hash,
    },
    Receipt {
        size: u64,
        hash: Hash,
        stored_as: &'a str,
    },
    Failed {
        code: FailCode,
        reason: &'a str,
    },
    Bye,
    Error {
        code: FailCode,
        message: &'a str,
    },
    List {
        path: &'a str,
    },
    Entries(Entries<'a>),
    ListEnd,
    Get(GetPaths<'a>),
}

const FLAG_DIRECTORY: u8 = 1;
const FLAG_SIZE_UNKNOWN: u8 = 2;
/// Bit 2 (`04`) meant "differs from the server's copy" until the hashed
/// offer replaced it; it is refused like any other unknown bit.
const FLAG_HASH: u8 = 8;
const KNOWN_FLAGS: u8 = FLAG_DIRECTORY | FLAG_SIZE_UNKNOWN | FLAG_HASH;

const ANSWER_SEND: u8 = 0;
const ANSWER_COMPARE: u8 = 1;
const ANSWER_CREATED: u8 = 2;
const ANSWER_REFUSED: u8 = 3;
const ANSWER_SAME: u8 = 4;

/// Reads fixed-width fields off the front of a payload.
struct Fields<'a> {
    kind: Kind,
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated(self.kind))?;
        self.rest = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take()?))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take()?))
    }
    /// The remaining bytes, as text.
    fn text(self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.rest).map_err(|_| DecodeError::NotUtf8(self.kind))
    }
    fn end(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.kind))
        }
    }
}

/// Decodes the payload of a frame of `kind` (any kind but `Data`).
pub fn decode_message(kind: Kind, payload: &[u8]) -> Result<Message<'_>, DecodeError> {
    let mut fields = Fields {
        kind,
        rest: payload,
    };
    let invalid = |what| DecodeError::Invalid { kind, what };
    let message = match kind {
        Kind::Hello => {
            let version = fields.u16()?;
            let capabilities = fields.u64()?;
            let sender = fields.take()?;
            fields.end()?;
            Message::Hello {
                version,
                capabilities,
                sender,
            }
        }
        Kind::Welcome => {
            let version = fields.u16()?;
            let capabilities = fields.u64()?;
            fields.end()?;
            Message::Welcome {
                version,
                capabilities,
            }
        }
        Kind::Offer => {
            let flags = fields.u8()?;
            if flags & !KNOWN_FLAGS != 0 {
                return Err(invalid("unknown offer flags"));
            }
            let size = fields.u64()?;
            let secs = fields.i64()?;
            let nanos = fields.u32()?;
            let mode = fields.u32()?;
            let hash = if flags & FLAG_HASH != 0 {
                Some(fields.take()?)
            } else {
                None
            };
            if nanos >= 1_000_000_000 {
                return Err(invalid("nanoseconds of a second over 999999999"));
            }
            if mode > 0o777 {
                return Err(invalid("mode beyond permission bits"));
            }
            let path = fields.rest;
            if path.is_empty() || path.len() > MAX_PATH_LEN {
                return Err(invalid("path empty or too long"));
            }
            let size_unknown = flags & FLAG_SIZE_UNKNOWN != 0;
            if size_unknown && size != 0 {
                return Err(invalid("size given for a stream of unknown size"));
            }
            let directory = flags & FLAG_DIRECTORY != 0;
            if hash.is_some() && (directory || size_unknown) {
                return Err(invalid("a hash offered for a directory or a stream"));
            }
            Message::Offer(Offer {
                kind: if directory {
                    EntryKind::Directory
                } else {
                    EntryKind::File
                },
                size: (!size_unknown).then_some(size),
                hash,
                mtime: Mtime { secs, nanos },
                mode,
                path,
            })
        }
        Kind::BatchEnd | Kind::Bye => {
            fields.end()?;
            if kind == Kind::Bye {
                Message::Bye
            } else {
                Message::BatchEnd
            }
        }
        Kind::Answer => match fields.u8()? {
            ANSWER_SEND => {
                let offset = fields.u64()?;
                fields.end()?;
                Message::Answer(Answer::Send { offset })
            }
            ANSWER_COMPARE => {
                fields.end()?;
                Message::Answer(Answer::Compare)
            }
            ANSWER_CREATED => {
                fields.end()?;
                Message::Answer(Answer::Created)
            }
            ANSWER_REFUSED => Message::Answer(Answer::Refused {
                code: FailCode::from_u16(fields.u16()?),
                reason: fields.text()?,
            }),
            ANSWER_SAME => Message::Answer(Answer::Same {
                stored_as: fields.text()?,
            }),
            _ => return Err(invalid("unknown answer")),
        },
        Kind::FileEnd => {
            let hash = fields.take()?;
            fields.end()?;
            Message::FileEnd { hash }
        }
        Kind::Receipt => {
            let size = fields.u64()?;
            let hash = fields.take()?;
            Message::Receipt {
                size,
                hash,
                stored_as: fields.text()?,
            }
        }
        Kind::Failed => Message::Failed {
            code: FailCode::from_u16(fields.u16()?),
            reason: fields.text()?,
        },
        Kind::Error => Message::Error {
            code: FailCode::from_u16(fields.u16()?),
            message: fields.text()?,
        },
        Kind::List => {
            if payload.len() > MAX_PATH_LEN {
                return Err(invalid("path too long"));
            }
            Message::List {
                path: fields.text()?,
            }
        }
        Kind::Entries => Message::Entries(Entries::check(payload)?),
        Kind::ListEnd => {
            fields.end()?;
            Message::ListEnd
        }
        Kind::Get => Message::Get(GetPaths::check(payload)?),
        Kind::Data | Kind::DataZstd => {
            return Err(invalid("data frames carry file bytes, not a message"));
        }
    };
    Ok(message)
}

/// The frame of `kind` around `payload`, exactly as it was on the wire:
/// how each side keeps the bytes of a Hello or Welcome it received. The
/// payload was read under its header's length, so it fits a frame.
pub fn raw_frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    frame.push(kind as u8);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The frame header of a `Data` (or `DataZstd`) frame of `len` bytes.
pub fn data_header(kind: Kind, len: u32) -> [u8; FRAME_HEADER_LEN] {
    debug_assert!(matches!(kind, Kind::Data | Kind::DataZstd) && len <= MAX_DATA_LEN);
    let [a, b, c, d] = len.to_be_bytes();
    [kind as u8, a, b, c, d]
}

/// The message that opens a session, from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub capabilities: u64,
    pub sender: SenderId,
}

/// A server's answer to a Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOpening<'a> {
    Welcome {
        version: u16,
        capabilities: u64,
    },
    /// The server will not serve this client; it closes next.
    Error {
        code: FailCode,
        message: &'a str,
    },
}

/// What the side that sends files may send, after the opening: the client
/// of `haul send`. (`Data` and `DataZstd` frames are this side's too; their
/// payload is file bytes, read by the data path, not decoded here.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderMessage<'a> {
    Offer(Offer<'a>),
    BatchEnd,
    FileEnd {
        hash: Hash,
    },
    Bye,
    /// Either side may end a session with an Error; it closes next.
    Error {
        code: FailCode,
        message: &'a str,
    },
}

/// What the side that receives files may send, after the opening: the
/// server of `haul send`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverMessage<'a> {
    Answer(Answer<'a>),
    Receipt {
        size: u64,
        hash: Hash,
        stored_as: &'a str,
    },
    Failed {
        code: FailCode,
        reason: &'a str,
    },
    Error {
        code: FailCode,
        message: &'a str,
    },
}

/// A client's first message after the opening: what the session does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// A push: the sender's first message (an Offer; or BatchEnd, Bye or
    /// Error for a send with nothing to offer). The rest of the session is
    /// [`SenderMessage`]s.
    Push(SenderMessage<'a>),
    /// List the folder (or the one file) at `path`, relative to the top of
    /// the store, `/`-separated; empty for the top. Untrusted until the
    /// store judges it. The server answers with [`ListingMessage`]s and
    /// closes; the client sends nothing more.
    List { path: &'a str },
    /// Fetch the files and folders at these paths: the server sends them
    /// as a sender does ([`SenderMessage`]s), and the client answers as a
    /// receiver ([`ReceiverMessage`]s). Untrusted until the store judges
    /// each path.
    Get(GetPaths<'a>),
}

/// What the server sends in a list session: the listing, as it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListingMessage<'a> {
    /// Some of the entries, at least one.
    Entries(Entries<'a>),
    /// The listing is whole; the server closes next.
    End,
    /// The listing is refused or cut short; the server closes next.
    Error { code: FailCode, message: &'a str },
}

impl<'a> Incoming<'a> for Request<'a> {
    fn decode(kind: Kind, payload: &'a [u8]) -> Result<Self, DecodeError> {
        // Anything but a List is judged as a sender's message, and a
        // message no sender sends is named as such.
        match kind {
            Kind::List | Kind::Get => match decode_message(kind, payload)? {
                Message::List { path } => Ok(Request::List { path }),
                Message::Get(paths) => Ok(Request::Get(paths)),
                _ => Err(DecodeError::WrongSide {
                    kind,
                    from: "a client beginning a session",
                }),
            },
            _ => SenderMessage::decode(kind, payload).map(Request::Push),
        }
    }
}

impl<'a> Incoming<'a> for ListingMessage<'a> {
    fn decode(kind: Kind, payload: &'a [u8]) -> Result<Self, DecodeError> {
        let from = "a server listing its files";
        if !matches!(kind, Kind::Entries | Kind::ListEnd | Kind::Error) {
            return Err(DecodeError::WrongSide { kind, from });
        }
        match decode_message(kind, payload)? {
            Message::Entries(entries) => Ok(ListingMessage::Entries(entries)),
            Message::ListEnd => Ok(ListingMessage::End),
            Message::Error { code, message } => Ok(ListingMessage::Error { code, message }),
            _ => Err(DecodeError::WrongSide { kind, from }),
        }
    }
}

impl Outgoing for Request<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Request::Push(message) => message.encode(out),
            Request::List { path } => encode(&Message::List { path }, out),
            Request::Get(paths) => encode(&Message::Get(*paths), out),
        }
    }
}

impl Outgoing for ListingMessage<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        let message = match *self {
            ListingMessage::Entries(entries) => Message::Entries(entries),
            ListingMessage::End => Message::ListEnd,
            ListingMessage::Error { code, message } => Message::Error { code, message },
        };
        encode(&message, out);
    }
}

impl<'a> Incoming<'a> for Hello {
    fn decode(kind: Kind, payload: &'a [u8]) -> Result<Self, DecodeError> {
        let from = "a client opening a session";
        if kind != Kind::Hello {
            return Err(DecodeError::WrongSide { kind, from });
        }
        match decode_message(kind, payload)? {
            Message::Hello {
                version,
                capabilities,
                sender,
            } => Ok(Hello {
                version,
                capabilities,
                sender,
            }),
            _ => Err(DecodeError::WrongSide { kind, from }),
        }
    }
}

impl<'a> Incoming<'a> for ServerOpening<'a> {
    fn decode(kind: Kind, payload: &'a [u8]) -> Result<Self, DecodeError> {
        let from = "a server answering a Hello";
        if !matches!(kind, Kind::Welcome | Kind::Error) {
            return Err(DecodeError::WrongSide { kind, from });
        }
        match decode_message(kind, payload)? {
            Message::Welcome {
                version,
                capabilities,
            } => Ok(ServerOpening::Welcome {
                version,
                capabilities,
            }),
            Message::Error { code, message } => Ok(ServerOpening::Error { code, message }),
            _ => Err(DecodeError::WrongSide { kind, from }),
        }
    }
}

impl<'a> Incoming<'a> for SenderMessage<'a> {
    fn decode(kind: Kind, payload: &'a [u8]) -> Result<Self, DecodeError> {
        let from = "a sender";
        if !matches!(
            kind,
            Kind::Offer | Kind::BatchEnd | Kind::FileEnd | Kind::Bye | Kind::Error
        ) {
            return Err(DecodeError::WrongSide { kind, from });
        }
        match decode_message(kind, payload)? {
            Message::Offer(offer) => Ok(SenderMessage::Offer(offer)),
            Message::BatchEnd => Ok(SenderMessage::BatchEnd),
            Message::FileEnd { hash } => Ok(SenderMessage::FileEnd { hash }),
            Message::Bye => Ok(SenderMessage::Bye),
            Message::Error { code, message } => Ok(SenderMessage::Error { code, message }),
            _ => Err(DecodeError::WrongSide { kind, from }),
        }
    }
}

impl<'a> Incoming<'a> for ReceiverMessage<'a> {
    fn decode(kind: Kind, payload: &'a [u8]) -> Result<Self, DecodeError> {
        let from = "a receiver";
        if !matches!(
            kind,
            Kind::Answer | Kind::Receipt | Kind::Failed | Kind::Error
        ) {
            return Err(DecodeError::WrongSide { kind, from });
        }
        match decode_message(kind, payload)? {
            Message::Answer(answer) => Ok(ReceiverMessage::Answer(answer)),
            Message::Receipt {
                size,
                hash,
                stored_as,
            } => Ok(ReceiverMessage::Receipt {
                size,
                hash,
                stored_as,
            }),
            Message::Failed { code, reason } => Ok(ReceiverMessage::Failed { code, reason }),
            Message::Error { code, message } => Ok(ReceiverMessage::Error { code, message }),
            _ => Err(DecodeError::WrongSide { kind, from }),
        }
    }
}

impl Outgoing for Hello {
    fn encode(&self, out: &mut Vec<u8>) {
        encode(
            &Message::Hello {
                version: self.version,
                capabilities: self.capabilities,
                sender: self.sender,
            },
            out,
        );
    }
}

impl Outgoing for ServerOpening<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        let message = match *self {
            ServerOpening::Welcome {
                version,
                capabilities,
            } => Message::Welcome {
                version,
                capabilities,
            },
            ServerOpening::Error { code, message } => Message::Error { code, message },
        };
        encode(&message, out);
    }
}

impl Outgoing for SenderMessage<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        let message = match self {
            SenderMessage::Offer(offer) => Message::Offer(offer.clone()),
            SenderMessage::BatchEnd => Message::BatchEnd,
            SenderMessage::FileEnd { hash } => Message::FileEnd { hash: *hash },
            SenderMessage::Bye => Message::Bye,
            SenderMessage::Error { code, message } => Message::Error {
                code: *code,
                message,
            },
        };
        encode(&message, out);
    }
}

impl Outgoing for ReceiverMessage<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        let message = match self {
            ReceiverMessage::Answer(answer) => Message::Answer(answer.clone()),
            ReceiverMessage::Receipt {
                size,
                hash,
                stored_as,
            } => Message::Receipt {
                size: *size,
                hash: *hash,
                stored_as,
            },
            ReceiverMessage::Failed { code, reason } => Message::Failed {
                code: *code,
                reason,
            },
            ReceiverMessage::Error { code, message } => Message::Error {
                code: *code,
                message,
            },
        };
        encode(&message, out);
    }
}

/// Appends the frame header of a `Data` (or `DataZstd`) frame of `len` bytes.
pub fn encode_data_header(kind: Kind, len: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&data_header(kind, len));
}

/// A message one side may receive, decoded from a frame's payload and
/// borrowing from it.
pub trait Incoming<'a>: Sized {
    fn decode(kind: Kind, payload: &'a [u8]) -> Result<Self, DecodeError>;
}

/// A message one side may send.
pub trait Outgoing {
    /// Appends the message as one whole frame.
    fn encode(&self, out: &mut Vec<u8>);
}

impl<'a> Incoming<'a> for Message<'a> {
    fn decode(kind: Kind, payload: &'a [u8]) -> Result<Self, DecodeError> {
        decode_message(kind, payload)
    }
}

impl Outgoing for Message<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        encode(self, out);
    }
}

/// Appends `message` as one whole frame. Text fields longer than a frame
/// allows are cut at a character boundary: they are human-readable reasons,
/// and paths are bounded by [`MAX_PATH_LEN`] well below the frame limit.
pub fn encode(message: &Message<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    let kind = match message {
        Message::Hello {
            version,
            capabilities,
            sender,
        } => {
            out.extend_from_slice(&version.to_be_bytes());
            out.extend_from_slice(&capabilities.to_be_bytes());
            out.extend_from_slice(sender);
            Kind::Hello
        }
        Message::Welcome {
            version,
            capabilities,
        } => {
            out.extend_from_slice(&version.to_be_bytes());
            out.extend_from_slice(&capabilities.to_be_bytes());
            Kind::Welcome
        }
        Message::Offer(offer) => {
            let mut flags = 0;
            if offer.kind == EntryKind::Directory {
                flags |= FLAG_DIRECTORY;
            }
            if offer.size.is_none() {
                flags |= FLAG_SIZE_UNKNOWN;
            }
            if offer.hash.is_some() {
                flags |= FLAG_HASH;
            }
            out.push(flags);
            out.extend_from_slice(&offer.size.unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&offer.mtime.secs.to_be_bytes());
            out.extend_from_slice(&offer.mtime.nanos.to_be_bytes());
            out.extend_from_slice(&offer.mode.to_be_bytes());
            if let Some(hash) = &offer.hash {
                out.extend_from_slice(hash);
            }
            out.extend_from_slice(offer.path);
            Kind::Offer
        }
        Message::BatchEnd => Kind::BatchEnd,
        Message::Answer(answer) => {
            match answer {
                Answer::Send { offset } => {
                    out.push(ANSWER_SEND);
                    out.extend_from_slice(&offset.to_be_bytes());
                }
                Answer::Compare => out.push(ANSWER_COMPARE),
                Answer::Created => out.push(ANSWER_CREATED),
                Answer::Refused { code, reason } => {
                    out.push(ANSWER_REFUSED);
                    out.extend_from_slice(&(*code as u16).to_be_bytes());
                    push_text(reason, out, start);
                }
                Answer::Same { stored_as } => {
                    out.push(ANSWER_SAME);
                    push_text(stored_as, out, start);
                }
            }
            Kind::Answer
        }
        Message::FileEnd { hash } => {
            out.extend_from_slice(hash);
            Kind::FileEnd
        }
        Message::Receipt {
            size,
            hash,
            stored_as,
        } => {
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(hash);
            push_text(stored_as, out, start);
            Kind::Receipt
        }
        Message::Failed { code, reason } => {
            out.extend_from_slice(&(*code as u16).to_be_bytes());
            push_text(reason, out, start);
            Kind::Failed
        }
        Message::Bye => Kind::Bye,
        Message::Error { code, message } => {
            out.extend_from_slice(&(*code as u16).to_be_bytes());
            push_text(message, out, start);
            Kind::Error
        }
        Message::List { path } => {
            debug_assert!(path.len() <= MAX_PATH_LEN);
            push_text(path, out, start);
            Kind::List
        }
        Message::Entries(entries) => {
            out.extend_from_slice(entries.payload);
            Kind::Entries
        }
        Message::ListEnd => Kind::ListEnd,
        Message::Get(paths) => {
            out.extend_from_slice(paths.payload);
            Kind::Get
        }
    };
    let len = u32::try_from(out.len() - start - FRAME_HEADER_LEN).expect("frames are small");
    out[start] = kind as u8;
    out[start + 1..start + FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

fn push_text(text: &str, out: &mut Vec<u8>, frame_start: usize) {
    let room =
        (MAX_CONTROL_LEN as usize).saturating_sub(out.len() - frame_start - FRAME_HEADER_LEN);
    let mut len = text.len().min(room);
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    out.extend_from_slice(&text.as_bytes()[..len]);
}

/// One frame found in a byte stream by [`split_frame`].
#[derive(Debug, PartialEq, Eq)]
pub struct RawFrame<'a> {
    pub header: FrameHeader,
    pub payload: &'a [u8],
}

/// Finds the first frame in `bytes`: `Ok(None)` when more bytes are needed,
/// otherwise the frame and the number of bytes it occupies.
pub fn split_frame(bytes: &[u8]) -> Result<Option<(RawFrame<'_>, usize)>, DecodeError> {
    let Some((header, rest)) = bytes.split_first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let header = decode_frame_header(*header)?;
    let len = header.len as usize;
    let Some(payload) = rest.get(..len) else {
        return Ok(None);
    };
    Ok(Some((RawFrame { header, payload }, FRAME_HEADER_LEN + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(message: &Message<'_>) {
        let mut bytes = Vec::new();
        encode(message, &mut bytes);
        let (frame, used) = split_frame(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            &decode_message(frame.header.kind, frame.payload).unwrap(),
            message
        );
        for cut in 0..bytes.len() {
            assert_eq!(split_frame(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn every_message_round_trips_and_needs_all_its_bytes() {
        let offer = Offer {
            kind: EntryKind::File,
            size: Some(1 << 40),
            hash: Some([3; 32]),
            mtime: Mtime {
                secs: -5,
                nanos: 999_999_999,
            },
            mode: 0o640,
            path: "dir/naïve.txt".as_bytes(),
        };
        for message in [
            Message::Hello {
                version: 1,
                capabilities: u64::MAX,
                sender: [0xa5; 16],
            },
            Message::Welcome {
                version: 7,
                capabilities: 0,
            },
            Message::Offer(offer.clone()),
            Message::Offer(Offer {
                size: None,
                kind: EntryKind::Directory,
                hash: None,
                ..offer
            }),
            Message::BatchEnd,
            Message::Answer(Answer::Send { offset: 12345 }),
            Message::Answer(Answer::Compare),
            Message::Answer(Answer::Same {
                stored_as: "dir/naïve.txt",
            }),
            Message::Answer(Answer::Created),
            Message::Answer(Answer::Refused {
                code: FailCode::Conflict,
                reason: "exists",
            }),
            Message::FileEnd { hash: [9; 32] },
            Message::Receipt {
                size: 3,
                hash: [1; 32],
                stored_as: "a (1).txt",
            },
            Message::Failed {
                code: FailCode::HashMismatch,
                reason: "hash mismatch",
            },
            Message::Bye,
            Message::Error {
                code: FailCode::Other,
                message: "unsupported version",
            },
            Message::Error {
                code: FailCode::NotAllowed,
                message: "this secret may not send",
            },
        ] {
            round_trip(&message);
            let mut bytes = Vec::new();
            encode(&message, &mut bytes);
            let (frame, _) = split_frame(&bytes).unwrap().unwrap();
            assert_eq!(raw_frame(frame.header.kind, frame.payload), bytes);
        }
    }

    #[test]
    fn an_error_leads_with_its_code_and_an_unknown_code_reads_as_other() {
        let mut bytes = Vec::new();
        encode(
            &Message::Error {
                code: FailCode::NotAllowed,
                message: "no",
            },
            &mut bytes,
        );
        assert_eq!(bytes, [0x31, 0, 0, 0, 4, 0, 9, b'n', b'o']);
        assert_eq!(
            decode_message(Kind::Error, &[0xff, 0x07, b'n', b'o']),
            Ok(Message::Error {
                code: FailCode::Other,
                message: "no"
            })
        );
        assert_eq!(
            decode_message(Kind::Error, &[9]),
            Err(DecodeError::Truncated(Kind::Error))
        );
    }

    #[test]
    fn the_magic_cannot_be_a_seed_size() {
        assert!(u64::from_be_bytes(MAGIC) >= 1 << 63);
    }

    #[test]
    fn oversized_frames_are_refused_before_their_payload() {
        let mut header = [Kind::Offer as u8, 0, 0, 0, 0];
        header[1..].copy_from_slice(&(MAX_CONTROL_LEN + 1).to_be_bytes());
        assert!(matches!(
            decode_frame_header(header),
            Err(DecodeError::TooLong { .. })
        ));
        header[0] = Kind::Data as u8;
        assert!(decode_frame_header(header).is_ok());
        header[1..].copy_from_slice(&(MAX_DATA_LEN + 1).to_be_bytes());
        assert!(matches!(
            decode_frame_header(header),
            Err(DecodeError::TooLong { .. })
        ));
        assert_eq!(
            decode_frame_header([0xee, 0, 0, 0, 0]),
            Err(DecodeError::UnknownKind(0xee))
        );
    }

    #[test]
    fn invalid_offers_are_refused() {
        let mut valid = Vec::new();
        encode(
            &Message::Offer(Offer {
                kind: EntryKind::File,
                size: Some(1),
                hash: None,
                mtime: Mtime::default(),
                mode: 0o644,
                path: b"a",
            }),
            &mut valid,
        );
        let payload = &valid[FRAME_HEADER_LEN..];
        let mut bad_flags = payload.to_vec();
        bad_flags[0] = 0x80;
        // The retired "differs" bit: its meaning is gone, so it is unknown.
        let mut differs = payload.to_vec();
        differs[0] = 0x04;
        // A hash flag with fewer than 32 bytes before the end.
        let mut short_hash = payload.to_vec();
        short_hash[0] = FLAG_HASH;
        let mut directory_hash = payload.to_vec();
        directory_hash[0] = FLAG_HASH | FLAG_DIRECTORY;
        directory_hash.splice(25..25, [0; 32]);
        let mut stream_hash = payload.to_vec();
        stream_hash[0] = FLAG_HASH | FLAG_SIZE_UNKNOWN;
        stream_hash[1..9].copy_from_slice(&0u64.to_be_bytes());
        stream_hash.splice(25..25, [0; 32]);
        let mut bad_mode = payload.to_vec();
        bad_mode[21..25].copy_from_slice(&0o4755u32.to_be_bytes());
        let mut bad_nanos = payload.to_vec();
        bad_nanos[17..21].copy_from_slice(&1_000_000_000u32.to_be_bytes());
        let no_path = &payload[..payload.len() - 1];
        for bad in [
            &bad_flags[..],
            &differs,
            &short_hash,
            &directory_hash,
            &stream_hash,
            &bad_mode,
            &bad_nanos,
            no_path,
            &payload[..3],
        ] {
            assert!(decode_message(Kind::Offer, bad).is_err(), "{bad:?}");
        }
    }

    /// Each side decodes only what the other may send: a message of the
    /// wrong side is an error that names it, decided by its kind alone.
    #[test]
    fn each_side_decodes_only_the_other_sides_messages() {
        let offer = Offer {
            kind: EntryKind::File,
            size: Some(1),
            hash: None,
            mtime: Mtime::default(),
            mode: 0o644,
            path: b"a",
        };
        let hello = Message::Hello {
            version: VERSION,
            capabilities: 0,
            sender: [1; 16],
        };
        let welcome = Message::Welcome {
            version: VERSION,
            capabilities: 0,
        };
        let receipt = Message::Receipt {
            size: 1,
            hash: [2; 32],
            stored_as: "a",
        };
        let failed = Message::Failed {
            code: FailCode::Io,
            reason: "r",
        };
        let error = Message::Error {
            code: FailCode::Other,
            message: "e",
        };
        // The message, and which of Hello, ServerOpening, SenderMessage and
        // ReceiverMessage accept it.
        let cases = [
            (hello, [true, false, false, false]),
            (welcome, [false, true, false, false]),
            (Message::Offer(offer), [false, false, true, false]),
            (Message::BatchEnd, [false, false, true, false]),
            (
                Message::FileEnd { hash: [3; 32] },
                [false, false, true, false],
            ),
            (Message::Bye, [false, false, true, false]),
            (
                Message::Answer(Answer::Compare),
                [false, false, false, true],
            ),
            (receipt, [false, false, false, true]),
            (failed, [false, false, false, true]),
            (error, [false, true, true, true]),
        ];
        for (message, accepted) in cases {
            let mut bytes = Vec::new();
            encode(&message, &mut bytes);
            let (frame, _) = split_frame(&bytes).unwrap().unwrap();
            let (kind, payload) = (frame.header.kind, frame.payload);
            let decoded = [
                Hello::decode(kind, payload).err(),
                ServerOpening::decode(kind, payload).err(),
                SenderMessage::decode(kind, payload).err(),
                ReceiverMessage::decode(kind, payload).err(),
            ];
            for (error, accepted) in decoded.into_iter().zip(accepted) {
                match error {
                    None => assert!(accepted, "{message:?} was accepted"),
                    Some(DecodeError::WrongSide { kind: named, .. }) => {
                        assert!(!accepted, "{message:?} was refused");
                        assert_eq!(named, kind);
                    }
                    Some(other) => panic!("{message:?}: {other}"),
                }
            }
        }
        assert_eq!(
            ReceiverMessage::decode(Kind::Offer, &[])
                .unwrap_err()
                .to_string(),
            "Offer is not a message a receiver sends",
            "refused by its kind, before its payload is looked at"
        );
        let mut bytes = Vec::new();
        SenderMessage::FileEnd { hash: [4; 32] }.encode(&mut bytes);
        let mut expected = Vec::new();
        encode(&Message::FileEnd { hash: [4; 32] }, &mut expected);
        assert_eq!(bytes, expected, "a typed message encodes as the codec's");
    }

    /// A code goes on the wire as its number, before the text; a number this
    /// version does not know reads as `Other`, the text intact.
    #[test]
    fn a_failure_carries_its_code_before_its_text() {
        let mut failed = Vec::new();
        encode(
            &Message::Failed {
                code: FailCode::NoSpace,
                reason: "full",
            },
            &mut failed,
        );
        assert_eq!(failed, [0x23, 0, 0, 0, 6, 0, 1, b'f', b'u', b'l', b'l']);
        let mut refused = Vec::new();
        encode(
            &Message::Answer(Answer::Refused {
                code: FailCode::NameRefused,
                reason: "no",
            }),
            &mut refused,
        );
        assert_eq!(
            refused,
            [0x12, 0, 0, 0, 5, ANSWER_REFUSED, 0, 3, b'n', b'o']
        );
        for (number, code) in FailCode::ALL.iter().enumerate() {
            assert_eq!(FailCode::from_u16(number as u16), *code);
        }
        assert_eq!(
            decode_message(Kind::Failed, &[0x01, 0x00, b'?']),
            Ok(Message::Failed {
                code: FailCode::Other,
                reason: "?"
            })
        );
        assert_eq!(
            decode_message(Kind::Failed, &[0]),
            Err(DecodeError::Truncated(Kind::Failed))
        );
    }

    /// The layouts `docs/PROTOCOL.md` gives: a Compare answer is its
    /// decision byte alone, and a hashed offer carries its hash between the
    /// mode and the path.
    #[test]
    fn a_compare_carries_nothing_and_a_hashed_offer_puts_its_hash_before_the_path() {
        let mut compare = Vec::new();
        encode(&Message::Answer(Answer::Compare), &mut compare);
        assert_eq!(compare, [Kind::Answer as u8, 0, 0, 0, 1, ANSWER_COMPARE]);

        let mut offer = Vec::new();
        encode(
            &Message::Offer(Offer {
                kind: EntryKind::File,
                size: Some(5),
                hash: Some([0xab; 32]),
                mtime: Mtime { secs: 1, nanos: 2 },
                mode: 0o644,
                path: b"a.txt",
            }),
            &mut offer,
        );
        let mut expected = vec![Kind::Offer as u8, 0, 0, 0, 62, FLAG_HASH];
        expected.extend_from_slice(&5u64.to_be_bytes());
        expected.extend_from_slice(&1i64.to_be_bytes());
        expected.extend_from_slice(&2u32.to_be_bytes());
        expected.extend_from_slice(&0o644u32.to_be_bytes());
        expected.extend_from_slice(&[0xab; 32]);
        expected.extend_from_slice(b"a.txt");
        assert_eq!(offer, expected);
    }

    fn entry(kind: EntryKind, size: u64, name: &[u8]) -> ListEntry<'_> {
        ListEntry {
            kind,
            size,
            mtime: Mtime {
                secs: -3,
                nanos: 999_999_999,
            },
            mode: 0o750,
            name,
        }
    }

    /// The layout `docs/PROTOCOL.md` gives for a List and for one entry.
    #[test]
    fn a_listing_round_trips_byte_for_byte() {
        let mut list = Vec::new();
        encode(&Message::List { path: "a/b" }, &mut list);
        assert_eq!(list, [0x40, 0, 0, 0, 3, b'a', b'/', b'b']);
        round_trip(&Message::List { path: "" });
        round_trip(&Message::List { path: "dir/naïve" });
        round_trip(&Message::ListEnd);

        let mut builder = EntriesBuilder::new();
        assert!(builder.is_empty());
        assert!(builder.push(&entry(EntryKind::File, 7, b"a.txt")));
        assert!(builder.push(&entry(EntryKind::Directory, 0, "naïve".as_bytes())));
        let message = Message::Entries(builder.entries());
        round_trip(&message);
        let mut bytes = Vec::new();
        encode(&message, &mut bytes);
        let mut expected = vec![0x41, 0, 0, 0, 2 * ENTRY_HEADER_LEN as u8 + 5 + 6];
        expected.push(ENTRY_FILE);
        expected.extend_from_slice(&7u64.to_be_bytes());
        expected.extend_from_slice(&(-3i64).to_be_bytes());
        expected.extend_from_slice(&999_999_999u32.to_be_bytes());
        expected.extend_from_slice(&0o750u32.to_be_bytes());
        expected.extend_from_slice(&5u16.to_be_bytes());
        expected.extend_from_slice(b"a.txt");
        assert_eq!(&bytes[..expected.len()], expected);
        let Ok(ListingMessage::Entries(entries)) =
            ListingMessage::decode(Kind::Entries, &bytes[FRAME_HEADER_LEN..])
        else {
            panic!("an Entries frame is a listing message");
        };
        let decoded: Vec<ListEntry<'_>> = entries.iter().collect();
        assert_eq!(
            decoded,
            [
                entry(EntryKind::File, 7, b"a.txt"),
                entry(EntryKind::Directory, 0, "naïve".as_bytes())
            ]
        );
    }

    /// A frame holds as many entries as fit in a control frame, and no
    /// more: the builder says when to send it.
    #[test]
    fn entries_fill_one_control_frame_at_most() {
        let name = [b'n'; MAX_ENTRY_NAME_LEN];
        let mut builder = EntriesBuilder::new();
        let mut count = 0;
        while builder.push(&entry(EntryKind::File, 1, &name)) {
            count += 1;
        }
        assert_eq!(
            count,
            MAX_CONTROL_LEN as usize / (ENTRY_HEADER_LEN + MAX_ENTRY_NAME_LEN)
        );
        let mut bytes = Vec::new();
        encode(&Message::Entries(builder.entries()), &mut bytes);
        assert!(bytes.len() - FRAME_HEADER_LEN <= MAX_CONTROL_LEN as usize);
        assert_eq!(
            decode_message(Kind::Entries, &bytes[FRAME_HEADER_LEN..])
                .map(|message| matches!(message, Message::Entries(e) if e.iter().count() == count)),
            Ok(true)
        );
        builder.clear();
        assert!(builder.is_empty());
    }

    #[test]
    fn invalid_listings_are_refused() {
        let too_long = "x".repeat(MAX_PATH_LEN + 1);
        assert_eq!(
            decode_message(Kind::List, too_long.as_bytes()),
            Err(DecodeError::Invalid {
                kind: Kind::List,
                what: "path too long"
            })
        );
        assert_eq!(
            decode_message(Kind::List, &[0xff]),
            Err(DecodeError::NotUtf8(Kind::List))
        );
        assert_eq!(
            decode_message(Kind::ListEnd, &[0]),
            Err(DecodeError::Trailing(Kind::ListEnd))
        );

        let mut builder = EntriesBuilder::new();
        builder.push(&entry(EntryKind::File, 7, b"a.txt"));
        let valid = builder.entries().payload.to_vec();
        let mut bad_kind = valid.clone();
        bad_kind[0] = 2;
        let mut directory_size = valid.clone();
        directory_size[0] = ENTRY_DIRECTORY;
        let mut bad_nanos = valid.clone();
        bad_nanos[17..21].copy_from_slice(&1_000_000_000u32.to_be_bytes());
        let mut bad_mode = valid.clone();
        bad_mode[21..25].copy_from_slice(&0o1777u32.to_be_bytes());
        let mut no_name = valid[..ENTRY_HEADER_LEN].to_vec();
        no_name[25..27].copy_from_slice(&0u16.to_be_bytes());
        let mut long_name = valid.clone();
        long_name[25..27].copy_from_slice(&256u16.to_be_bytes());
        long_name.extend_from_slice(&[b'x'; 251]);
        let mut trailing = valid.clone();
        trailing.push(0);
        for (bad, error) in [
            (
                &[][..],
                DecodeError::Invalid {
                    kind: Kind::Entries,
                    what: "no entries",
                },
            ),
            (
                &bad_kind,
                DecodeError::Invalid {
                    kind: Kind::Entries,
                    what: "unknown entry kind",
                },
            ),
            (
                &directory_size,
                DecodeError::Invalid {
                    kind: Kind::Entries,
                    what: "a size given for a directory",
                },
            ),
            (
                &bad_nanos,
                DecodeError::Invalid {
                    kind: Kind::Entries,
                    what: "nanoseconds of a second over 999999999",
                },
            ),
            (
                &bad_mode,
                DecodeError::Invalid {
                    kind: Kind::Entries,
                    what: "mode beyond permission bits",
                },
            ),
            (
                &no_name,
                DecodeError::Invalid {
                    kind: Kind::Entries,
                    what: "entry name empty or too long",
                },
            ),
            (
                &long_name,
                DecodeError::Invalid {
                    kind: Kind::Entries,
                    what: "entry name empty or too long",
                },
            ),
            (&trailing, DecodeError::Truncated(Kind::Entries)),
            (
                &valid[..valid.len() - 1],
                DecodeError::Truncated(Kind::Entries),
            ),
            (&valid[..10], DecodeError::Truncated(Kind::Entries)),
        ] {
            assert_eq!(decode_message(Kind::Entries, bad), Err(error), "{bad:?}");
        }
    }

    /// The layout `docs/PROTOCOL.md` gives for a Get, and its bounds: 1 to
    /// 256 paths of 1 to 4,096 bytes of UTF-8, nothing after the last.
    #[test]
    fn a_get_is_laid_out_as_documented_and_bounded() {
        let mut payload = Vec::new();
        let paths = GetPaths::build(&["docs/a.txt", "photos"], &mut payload).unwrap();
        assert_eq!(paths.iter().collect::<Vec<_>>(), ["docs/a.txt", "photos"]);
        let mut frame = Vec::new();
        encode(&Message::Get(paths), &mut frame);
        let documented =
            "43 00 00 00 16 00 02 00 0a 64 6f 63 73 2f 61 2e 74 78 74 00 06 70 68 6f 74 6f 73";
        let shown: Vec<String> = frame.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(shown.join(" "), documented);
        assert_eq!(
            Request::decode(Kind::Get, &frame[FRAME_HEADER_LEN..]),
            Ok(Request::Get(paths))
        );
        assert_eq!(
            SenderMessage::decode(Kind::Get, &frame[FRAME_HEADER_LEN..])
                .unwrap_err()
                .to_string(),
            "Get is not a message a sender sends",
            "after the first message a Get is refused"
        );
        let mut scratch = Vec::new();
        assert!(GetPaths::build(&[], &mut scratch).is_none());
        assert!(GetPaths::build(&[""], &mut scratch).is_none());
        let too_many = vec!["a"; MAX_GET_PATHS + 1];
        assert!(GetPaths::build(&too_many, &mut scratch).is_none());
        assert!(GetPaths::build(&vec!["a"; MAX_GET_PATHS], &mut scratch).is_some());
        let long = "a".repeat(MAX_PATH_LEN + 1);
        assert!(GetPaths::build(&[long.as_str()], &mut scratch).is_none());
        for (bad, error) in [
            (
                &[0u8, 0][..],
                DecodeError::Invalid {
                    kind: Kind::Get,
                    what: "path count not between 1 and 256",
                },
            ),
            (&[0, 1, 0, 2, b'a'][..], DecodeError::Truncated(Kind::Get)),
            (
                &[0, 1, 0, 1, b'a', b'b'][..],
                DecodeError::Trailing(Kind::Get),
            ),
            (&[0, 1, 0, 1, 0xff][..], DecodeError::NotUtf8(Kind::Get)),
            (
                &[0, 1, 0, 0][..],
                DecodeError::Invalid {
                    kind: Kind::Get,
                    what: "path empty or too long",
                },
            ),
            (&[0][..], DecodeError::Truncated(Kind::Get)),
        ] {
            assert_eq!(decode_message(Kind::Get, bad), Err(error), "{bad:?}");
        }
    }

    /// A List is a request only as a client's first message after the
    /// opening; the listing's messages are only a listing server's.
    #[test]
    fn a_list_is_only_a_first_request_and_entries_only_a_listing() {
        let list = Request::decode(Kind::List, b"dir");
        assert_eq!(list, Ok(Request::List { path: "dir" }));
        assert_eq!(
            Request::decode(Kind::BatchEnd, &[]),
            Ok(Request::Push(SenderMessage::BatchEnd))
        );
        assert_eq!(
            Request::decode(Kind::Receipt, &[]).unwrap_err().to_string(),
            "Receipt is not a message a sender sends"
        );
        assert_eq!(
            SenderMessage::decode(Kind::List, b"")
                .unwrap_err()
                .to_string(),
            "List is not a message a sender sends",
            "after the first message a List is refused"
        );
        for kind in [Kind::Entries, Kind::ListEnd] {
            for refused in [
                ReceiverMessage::decode(kind, &[]).err(),
                ServerOpening::decode(kind, &[]).err(),
                Request::decode(kind, &[]).err(),
            ] {
                assert!(
                    matches!(refused, Some(DecodeError::WrongSide { .. })),
                    "{kind:?}"
                );
            }
        }
        assert_eq!(
            ListingMessage::decode(Kind::ListEnd, &[]),
            Ok(ListingMessage::End)
        );
        assert_eq!(
            ListingMessage::decode(Kind::Answer, &[])
                .unwrap_err()
                .to_string(),
            "Answer is not a message a server listing its files sends"
        );
        let mut bytes = Vec::new();
        Request::List { path: "d" }.encode(&mut bytes);
        assert_eq!(bytes, [0x40, 0, 0, 0, 1, b'd']);
        bytes.clear();
        ListingMessage::End.encode(&mut bytes);
        assert_eq!(bytes, [0x42, 0, 0, 0, 0]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut rest = &bytes[..];
            while let Ok(Some((frame, used))) = split_frame(rest) {
                if !matches!(frame.header.kind, Kind::Data | Kind::DataZstd) {
                    let _ = decode_message(frame.header.kind, frame.payload);
                }
                rest = &rest[used..];
            }
        }

        #[test]
        fn arbitrary_payloads_never_panic_any_kind(kind in 0u8..=0x4f, payload in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Some(kind) = Kind::from_byte(kind) {
                let _ = decode_message(kind, &payload);
                let _ = Request::decode(kind, &payload);
                if let Ok(ListingMessage::Entries(entries)) = ListingMessage::decode(kind, &payload) {
                    prop_assert!(entries.iter().count() >= 1);
                }
                let _ = Hello::decode(kind, &payload);
                let _ = ServerOpening::decode(kind, &payload);
                let _ = SenderMessage::decode(kind, &payload);
                let _ = ReceiverMessage::decode(kind, &payload);
            }
        }

        #[test]
        fn offers_round_trip(
            size in proptest::option::of(any::<u64>()),
            hash in proptest::option::of(any::<[u8; 32]>()),
            directory in any::<bool>(),
            secs in any::<i64>(),
            nanos in 0u32..1_000_000_000,
            mode in 0u32..=0o777,
            path in proptest::collection::vec(any::<u8>(), 1..300),
        ) {
            // Only a file of known size may carry a hash.
            let hash = hash.filter(|_| !directory && size.is_some());
            let offer = Offer {
                kind: if directory { EntryKind::Directory } else { EntryKind::File },
                size, hash, mtime: Mtime { secs, nanos }, mode, path: &path,
            };
            let mut bytes = Vec::new();
            encode(&Message::Offer(offer.clone()), &mut bytes);
            let (frame, used) = split_frame(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(decode_message(frame.header.kind, frame.payload).unwrap(), Message::Offer(offer));
        }

        #[test]
        fn texts_round_trip(reason in ".{0,200}", size in any::<u64>(), hash in any::<[u8; 32]>(), code in 0u16..10) {
            let code = FailCode::from_u16(code);
            for message in [
                Message::Failed { code, reason: &reason },
                Message::Answer(Answer::Refused { code, reason: &reason }),
                Message::Answer(Answer::Same { stored_as: &reason }),
                Message::Receipt { size, hash, stored_as: &reason },
            ] {
                let mut bytes = Vec::new();
                encode(&message, &mut bytes);
                let (frame, _) = split_frame(&bytes).unwrap().unwrap();
                prop_assert_eq!(decode_message(frame.header.kind, frame.payload).unwrap(), message);
            }
        }
    }
}
