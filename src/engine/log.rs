//! The log line of each file a receiver takes or fails, for the operator
//! (what `haul serve` prints; a client's receiver has no log subscriber,
//! so for `haul get` they go nowhere).

use std::net::SocketAddr;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::transfer::Rate;

/// The target of the line logged for each stored file: the server's log
/// output gathers these lines and writes them once a batch settles.
pub(crate) const STORED_TARGET: &str = "haul::stored";

/// A byte count in binary units, as an operator reads it: `512 bytes`,
/// `3.5 KiB`, `318 MiB` (one decimal below 10).
pub(crate) struct Size(pub u64);

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        if self.0 < 1024 {
            return write!(f, "{} bytes", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = UNITS[0];
        for next in &UNITS[1..] {
            if value < 1024.0 {
                break;
            }
            value /= 1024.0;
            unit = next;
        }
        if value < 10.0 {
            write!(f, "{value:.1} {unit}")
        } else {
            write!(f, "{value:.0} {unit}")
        }
    }
}

/// Which protocol a transfer came by, named on its log line.
#[derive(Clone, Copy)]
pub(crate) enum Protocol {
    Haul,
    Seed,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Haul => "haul",
            Protocol::Seed => "seed",
        }
    }
}

/// How one file's transfer ended, for its log line.
pub(crate) enum Outcome<'a> {
    /// Stored under this name.
    Stored(&'a str),
    /// Not stored, for `reason`; `data` says what became of what arrived.
    Failed {
        reason: &'a dyn std::fmt::Display,
        data: Fate<'a>,
    },
}

/// What became of the data of a file that was not stored: an operator
/// reads from it whether running the same send again resumes.
pub(crate) enum Fate<'a> {
    /// None of it arrived.
    NoneReceived,
    /// What arrived is deleted.
    Deleted,
    /// `bytes` of it stay in the hidden area, for the same sender to resume.
    Kept { bytes: u64, name: &'a str },
}

impl std::fmt::Display for Fate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fate::NoneReceived => f.write_str("no data received"),
            Fate::Deleted => f.write_str("partial data deleted"),
            Fate::Kept { bytes, name } => {
                write!(f, "kept {} of {name} for resume", Size(*bytes))
            }
        }
    }
}

/// Logs the outcome of one file's transfer, in one line.
pub(crate) fn log_transfer(
    protocol: Protocol,
    peer: SocketAddr,
    name: &str,
    size: Option<u64>,
    elapsed: Duration,
    outcome: Outcome<'_>,
) {
    let protocol = protocol.name();
    let size_shown = size.map_or_else(|| "-".to_owned(), |size| size.to_string());
    let secs = format_args!("{:.3}", elapsed.as_secs_f64());
    match outcome {
        Outcome::Stored(stored_as) => info!(
            target: STORED_TARGET,
            protocol,
            %peer,
            name,
            size = %size_shown,
            stored_as,
            secs,
            rate = %Rate { bytes: size.unwrap_or(0), elapsed },
            result = "stored",
            "transfer"
        ),
        Outcome::Failed { reason, data } => warn!(
            protocol,
            %peer,
            name,
            size = %size_shown,
            secs,
            result = "failed",
            %reason,
            data = %data,
            "transfer"
        ),
    }
}

/// Logs, at debug level, a file the sender offered that is already stored.
pub(crate) fn log_already_there(peer: SocketAddr, name: &str, size: Option<u64>, stored_as: &str) {
    let size_shown = size.map_or_else(|| "-".to_owned(), |size| size.to_string());
    debug!(
        protocol = Protocol::Haul.name(),
        %peer,
        name,
        size = %size_shown,
        stored_as,
        result = "already there",
        "transfer"
    );
}
