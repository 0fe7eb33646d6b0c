//! Every default an operator or user can change, in one place, with why.
//!
//! [`crate::server::ServerConfig::new`] and the command line's defaults (and
//! so `haul serve --help`) both read them from here, so they cannot drift
//! apart. Bounds that are not options live beside the code that enforces
//! them, each a named constant, and `docs/RELIABILITY.md` lists them all.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Where `haul serve` listens and `haul send` sends: loopback, so that a
/// server started without thought is reachable from this machine only.
pub const ADDRESS: &str = "127.0.0.1:12000";

/// The inbox, relative to where the server is started.
pub const DIR: &str = "received";

/// Connections served at once; more wait in the listen backlog. Each costs
/// a task, a socket and at most one open file, and the server raises its
/// open-file limit to fit.
pub const MAX_CONNECTIONS: u32 = 1024;

/// Connections one address (an IPv6 /64) may hold at once: one host cannot
/// take every slot. Room for the benchmark's 50 clients from one address.
pub const MAX_CONNECTIONS_PER_IP: u32 = 64;

/// From connecting to a whole seed header, or to the end of haul's
/// handshake: long enough for a slow link, short enough that silent
/// connections give their slots back.
pub const HEADER_TIMEOUT: Span = Span(Duration::from_secs(30));

/// How long a transfer may make no progress before it is dropped.
pub const IDLE_TIMEOUT: Span = Span(Duration::from_secs(60));

/// How long `haul send` waits for the server's first answer (haul's
/// Welcome, the seed protocol's `go ahead`) before it gives up: a peer
/// that is not such a server often says nothing at all.
pub const REPLY_TIMEOUT: Span = Span(Duration::from_secs(30));

/// How long transfers in flight may run on after SIGINT or SIGTERM.
pub const GRACE: Span = Span(Duration::from_secs(10));

/// Partial data of interrupted transfers not written to for this long is
/// deleted: a day is enough to come back after a night's interruption.
pub const PARTIAL_MAX_AGE: Span = Span(Duration::from_secs(24 * 60 * 60));

/// Partial data kept for resuming, in all; one sender may keep half. Enough
/// to resume any interrupted file of up to 8 GiB; abandoned data never holds
/// more, and gives way to new files before any is refused.
pub const MAX_PARTIAL: Bytes = Bytes(16 << 30);

/// Held partial files kept in all, however small each is; one sender may
/// keep half. Every session that leaves data behind lists them, so their
/// number must not grow with the number of sessions cut.
pub const MAX_HELD_PARTIALS: u64 = 4096;

/// Free space kept on the inbox's file system, for the system and its logs.
pub const RESERVE: Bytes = Bytes(64 << 20);

/// Free inodes kept, as [`RESERVE`] does for bytes (a 16 MiB ext4 has
/// 4,096 inodes; large disks, millions). Directories stop at twice as many.
pub const RESERVE_INODES: u64 = 1024;

/// Stored files whose BLAKE3 hashes are kept in memory (at most about
/// 6 MiB), so that a hashed offer of an unchanged file reads nothing.
pub const HASH_CACHE_ENTRIES: usize = 32 * 1024;

/// A duration as given on the command line (`30s`, `90m`, `24h`) and shown
/// in help: whole hours when it is some, else seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        match (secs, nanos) {
            (secs, 0) if secs >= 3600 && secs.is_multiple_of(3600) => write!(f, "{}h", secs / 3600),
            (secs, 0) => write!(f, "{secs}s"),
            _ => write!(f, "{}", humantime::format_duration(self.0)),
        }
    }
}

impl FromStr for Span {
    type Err = humantime::DurationError;

    fn from_str(text: &str) -> Result<Span, Self::Err> {
        humantime::parse_duration(text).map(Span)
    }
}

/// A size as given on the command line (`64M`, `4G`; powers of 1024) and
/// shown in help: in the largest unit it is a whole number of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            (1u64 << 40, "T"),
            (1 << 30, "G"),
            (1 << 20, "M"),
            (1 << 10, "K"),
        ];
        match units
            .iter()
            .find(|(size, _)| self.0 >= *size && self.0.is_multiple_of(*size))
        {
            Some((size, unit)) => write!(f, "{}{unit}", self.0 / size),
            None => write!(f, "{}", self.0),
        }
    }
}

impl FromStr for Bytes {
    type Err = String;

    fn from_str(text: &str) -> Result<Bytes, String> {
        crate::size::parse_byte_size(text).map(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Help shows each default as it would be typed, and it reads back.
    #[test]
    fn defaults_are_shown_as_typed_and_read_back() {
        for (span, shown) in [
            (HEADER_TIMEOUT, "30s"),
            (IDLE_TIMEOUT, "60s"),
            (GRACE, "10s"),
            (PARTIAL_MAX_AGE, "24h"),
        ] {
            assert_eq!(span.to_string(), shown);
            assert_eq!(shown.parse::<Span>().unwrap(), span);
        }
        for (bytes, shown) in [
            (RESERVE, "64M"),
            (MAX_PARTIAL, "16G"),
            (Bytes(1000), "1000"),
        ] {
            assert_eq!(bytes.to_string(), shown);
            assert_eq!(shown.parse::<Bytes>().unwrap(), bytes);
        }
        assert_eq!(Span(Duration::from_millis(250)).to_string(), "250ms");
    }
}
