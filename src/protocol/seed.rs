//! The classroom ("seed") protocol, byte for byte.
//!
//! A client sends one header: the file size as 8 bytes, big-endian, followed by
//! the file name in UTF-8 with no terminator. The server answers exactly
//! [`GO_AHEAD`], then the client streams exactly `size` bytes and closes.
//!
//! The header carries no length for the name: the name ends where the client
//! stops sending and waits for the reply. Deciding *when* the client has
//! stopped is the caller's business (it needs a clock); this module only says
//! whether the bytes received so far can form a header at all.

use thiserror::Error;

/// The server's only reply: permission to stream the file's bytes.
pub const GO_AHEAD: &[u8; 8] = b"go ahead";

/// Width of the big-endian size that opens every header.
pub const SIZE_LEN: usize = 8;

/// The assignment's server reads the header with one `recv` of this many
/// bytes, so a header longer than this is cut by classroom servers.
pub const SEED_RECV_LEN: usize = 1024;

/// The longest name a sender may put in a header so that a classroom server's
/// single 1024-byte `recv` still gets the whole header.
pub const MAX_SENT_NAME_LEN: usize = SEED_RECV_LEN - SIZE_LEN;

/// The longest header haul's server waits for. Classroom clients send the
/// name as typed, directories included, so this allows a full path (Linux's
/// `PATH_MAX`) while still bounding what one connection can make us buffer.
pub const MAX_HEADER_LEN: usize = SIZE_LEN + 4096;

/// A decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// Number of file bytes that follow the server's `go ahead`.
    pub size: u64,
    /// The name exactly as the client sent it: untrusted, possibly with
    /// directories, possibly not UTF-8.
    pub raw_name: &'a [u8],
}

impl Header<'_> {
    /// The last path component of the name. Classroom clients send names as
    /// typed (`../data/report.pdf`, `C:\data\report.pdf`), and only the file's
    /// own name is meaningful to the receiver.
    pub fn last_component(&self) -> &[u8] {
        last_component(self.raw_name)
    }
}

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Not even the size and one byte of name yet: keep reading.
    NeedMore,
    /// A header, if the client has finished sending. More bytes may still
    /// extend the name; the caller decides when the client has paused.
    Header(Header<'a>),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("header is longer than {MAX_HEADER_LEN} bytes")]
    TooLong,
}

/// Decodes the header from everything the client has sent so far.
pub fn decode_header(received: &[u8]) -> Result<Decoded<'_>, HeaderError> {
    if received.len() > MAX_HEADER_LEN {
        return Err(HeaderError::TooLong);
    }
    let Some((size_bytes, raw_name)) = received.split_first_chunk::<SIZE_LEN>() else {
        return Ok(Decoded::NeedMore);
    };
    if raw_name.is_empty() {
        return Ok(Decoded::NeedMore);
    }
    Ok(Decoded::Header(Header {
        size: u64::from_be_bytes(*size_bytes),
        raw_name,
    }))
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error(
        "the name is {0} bytes long; the seed protocol allows at most {MAX_SENT_NAME_LEN} \
         so that a 1024-byte header read gets it whole"
    )]
    NameTooLong(usize),
    #[error("the name is empty")]
    EmptyName,
}

/// Encodes the header a client sends in one write.
pub fn encode_header(size: u64, name: &str) -> Result<Vec<u8>, EncodeError> {
    if name.is_empty() {
        return Err(EncodeError::EmptyName);
    }
    if name.len() > MAX_SENT_NAME_LEN {
        return Err(EncodeError::NameTooLong(name.len()));
    }
    let mut header = Vec::with_capacity(SIZE_LEN + name.len());
    header.extend_from_slice(&size.to_be_bytes());
    header.extend_from_slice(name.as_bytes());
    Ok(header)
}

/// What the server's reply amounts to so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Everything so far matches `go ahead`; keep reading.
    NeedMore,
    /// Exactly `go ahead`.
    GoAhead,
    /// Something else: the server refused or does not speak the protocol.
    Other,
}

/// Judges the bytes the server has answered so far. A reply may arrive split
/// across segments, so a strict prefix of `go ahead` asks for more.
pub fn judge_reply(received: &[u8]) -> Reply {
    if received == GO_AHEAD {
        Reply::GoAhead
    } else if received.len() < GO_AHEAD.len() && GO_AHEAD.starts_with(received) {
        Reply::NeedMore
    } else {
        Reply::Other
    }
}

/// The part of `name` after its last `/` or `\`.
pub fn last_component(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|&b| b == b'/' || b == b'\\') {
        Some(separator) => &name[separator + 1..],
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(size: u64, name: &[u8]) -> Vec<u8> {
        let mut bytes = size.to_be_bytes().to_vec();
        bytes.extend_from_slice(name);
        bytes
    }

    #[test]
    fn fewer_than_nine_bytes_need_more() {
        let full = header_bytes(5, b"a");
        for cut in 0..full.len() {
            assert_eq!(
                decode_header(&full[..cut]),
                Ok(Decoded::NeedMore),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn size_is_big_endian_and_name_is_the_rest() {
        let bytes = header_bytes(0x0102_0304_0506_0708, b"report.pdf");
        let Ok(Decoded::Header(header)) = decode_header(&bytes) else {
            panic!("expected a header");
        };
        assert_eq!(header.size, 0x0102_0304_0506_0708);
        assert_eq!(header.raw_name, b"report.pdf");
    }

    #[test]
    fn a_header_in_pieces_grows_its_name() {
        let bytes = header_bytes(1, b"abc");
        let Ok(Decoded::Header(partial)) = decode_header(&bytes[..9]) else {
            panic!("expected a header");
        };
        assert_eq!(partial.raw_name, b"a");
        let Ok(Decoded::Header(whole)) = decode_header(&bytes) else {
            panic!("expected a header");
        };
        assert_eq!(whole.raw_name, b"abc");
    }

    #[test]
    fn the_largest_size_decodes() {
        let bytes = header_bytes(u64::MAX, b"x");
        let Ok(Decoded::Header(header)) = decode_header(&bytes) else {
            panic!("expected a header");
        };
        assert_eq!(header.size, u64::MAX);
    }

    #[test]
    fn header_length_is_bounded_at_exactly_the_limit() {
        let at_limit = header_bytes(1, &vec![b'n'; MAX_HEADER_LEN - SIZE_LEN]);
        assert!(matches!(decode_header(&at_limit), Ok(Decoded::Header(_))));
        let over = header_bytes(1, &vec![b'n'; MAX_HEADER_LEN - SIZE_LEN + 1]);
        assert_eq!(decode_header(&over), Err(HeaderError::TooLong));
    }

    #[test]
    fn encoded_header_round_trips() {
        let bytes = encode_header(1025, "naïve file.txt").unwrap();
        assert_eq!(&bytes[..8], &1025u64.to_be_bytes());
        let Ok(Decoded::Header(header)) = decode_header(&bytes) else {
            panic!("expected a header");
        };
        assert_eq!(header.size, 1025);
        assert_eq!(header.raw_name, "naïve file.txt".as_bytes());
    }

    #[test]
    fn encoded_name_fits_one_classroom_recv_and_no_more() {
        let longest = "n".repeat(MAX_SENT_NAME_LEN);
        assert_eq!(encode_header(1, &longest).unwrap().len(), SEED_RECV_LEN);
        let too_long = "n".repeat(MAX_SENT_NAME_LEN + 1);
        assert_eq!(
            encode_header(1, &too_long),
            Err(EncodeError::NameTooLong(MAX_SENT_NAME_LEN + 1))
        );
        assert_eq!(encode_header(1, ""), Err(EncodeError::EmptyName));
    }

    #[test]
    fn reply_is_judged_on_partial_and_exact_input() {
        assert_eq!(judge_reply(b""), Reply::NeedMore);
        assert_eq!(judge_reply(b"go"), Reply::NeedMore);
        assert_eq!(judge_reply(b"go ahea"), Reply::NeedMore);
        assert_eq!(judge_reply(b"go ahead"), Reply::GoAhead);
        assert_eq!(judge_reply(b"go ahead!"), Reply::Other);
        assert_eq!(judge_reply(b"no"), Reply::Other);
        assert_eq!(judge_reply(b"GO AHEAD"), Reply::Other);
    }

    #[test]
    fn last_component_drops_directories_of_either_kind() {
        assert_eq!(last_component(b"../data/report.pdf"), b"report.pdf");
        assert_eq!(last_component(b"/etc/passwd"), b"passwd");
        assert_eq!(last_component(b"C:\\data\\report.pdf"), b"report.pdf");
        assert_eq!(last_component(b"plain"), b"plain");
        assert_eq!(last_component(b"dir/"), b"");
        assert_eq!(last_component(b"a/.."), b"..");
    }
}
