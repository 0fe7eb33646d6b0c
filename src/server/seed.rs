//! A seed-protocol connection: header, `go ahead`, exactly `size` bytes.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::space::{Sender, SpaceLedger, sender_of};
use super::{Fate, Outcome, Protocol, ServerConfig, blocking, log_output, log_transfer};
use crate::engine::is_out_of_space;
use crate::protocol::seed::{self, Decoded, HeaderError};
use crate::storage::{Backend, NameError, RelPath, SafeName, Store, Upload};
use crate::text::printable;
use crate::transfer::PumpError;
use crate::zero_copy;

/// Why a seed connection ended without storing a file.
#[derive(Debug, Error)]
enum SeedError {
    #[error("no complete header within {}s", .0.as_secs())]
    HeaderTimeout(Duration),
    #[error("the client closed the connection before sending a header")]
    ClosedBeforeHeader,
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("refused name \"{shown}\": {reason}")]
    RefusedName { shown: String, reason: NameError },
    #[error("refused: {0}")]
    Refused(String),
    #[error("no space left on the server")]
    NoSpace,
    #[error("storage failed: {0}")]
    Storage(io::Error),
    #[error(transparent)]
    Pump(#[from] PumpError),
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
}

/// What is known of the file, for the log line.
#[derive(Default)]
struct Announced {
    name: Option<String>,
    size: Option<u64>,
    /// Set once the client was told to go ahead: from then on, data may
    /// have arrived.
    receiving: bool,
}

pub(super) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    opening: [u8; 8],
    store: Store,
    space: &Arc<SpaceLedger>,
    config: &ServerConfig,
    deadline: tokio::time::Instant,
) {
    let started = Instant::now();
    let mut announced = Announced::default();
    let inbox = Inbox {
        store: &store,
        space,
        sender: sender_of(peer),
    };
    let result = receive(
        &mut stream,
        opening,
        &inbox,
        config,
        deadline,
        &mut announced,
    )
    .await;
    if result.is_err() {
        // The seed protocol has no message for "not stored": a reset instead
        // of an orderly close is the only way to tell the client it failed.
        let _ = stream.set_zero_linger();
    }
    let name = announced.name.as_deref().unwrap_or("-");
    let outcome = match &result {
        Ok(stored_as) => Outcome::Stored(stored_as),
        Err(error) => Outcome::Failed {
            reason: error,
            // A seed file cannot resume: its partial data is always deleted.
            data: if announced.receiving {
                Fate::Deleted
            } else {
                Fate::NoneReceived
            },
        },
    };
    log_transfer(
        Protocol::Seed,
        peer,
        name,
        announced.size,
        started.elapsed(),
        outcome,
    );
    log_output::write_gathered();
}

/// Where a seed file goes, and whose grant of space it is.
struct Inbox<'a> {
    store: &'a Store,
    space: &'a Arc<SpaceLedger>,
    sender: Sender,
}

async fn receive(
    stream: &mut TcpStream,
    opening: [u8; 8],
    inbox: &Inbox<'_>,
    config: &ServerConfig,
    deadline: tokio::time::Instant,
    announced: &mut Announced,
) -> Result<String, SeedError> {
    let header_bytes = read_header(stream, opening, config, deadline).await?;
    let Ok(Decoded::Header(header)) = seed::decode_header(&header_bytes) else {
        unreachable!("read_header returns only complete headers");
    };
    let raw_name = header.last_component();
    announced.name = Some(printable(raw_name));
    announced.size = Some(header.size);
    let name = SafeName::parse(raw_name).map_err(|reason| SeedError::RefusedName {
        shown: printable(raw_name),
        reason,
    })?;

    // Held until the file is committed or gone: grown and spent as the
    // bytes go to the file.
    let granted = {
        let (space, size, sender) = (Arc::clone(inbox.space), header.size, inbox.sender);
        blocking(move || Ok(space.reserve_file(sender, size, 0, true)))
            .await
            .map_err(SeedError::Storage)?
            .map_err(|refusal| SeedError::Refused(refusal.text))?
    };
    let (partial, file) = {
        let mut partial = inbox.store.begin(RelPath::single(name));
        blocking(move || {
            let file = partial.data_file()?;
            Ok((partial, file))
        })
        .await
        .map_err(SeedError::Storage)?
    };
    // The bytes are stored as they come, unhashed and unchanged, so they go
    // from the socket to the file inside the kernel; the wait for them is
    // done on this task, so a silent client holds no blocking thread.
    announced.receiving = true;
    stream.write_all(seed::GO_AHEAD).await?;
    let _granted =
        zero_copy::receive_to_file(stream, file, header.size, config.idle_timeout, granted)
            .await
            .map_err(|error| match error {
                PumpError::Write { source, .. } if is_out_of_space(&source) => SeedError::NoSpace,
                other => SeedError::Pump(other),
            })?;

    blocking(move || partial.commit())
        .await
        .map_err(SeedError::Storage)
}

/// How long a seed client's silence must last before its header counts as
/// complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedSettle {
    /// Measured per connection: a header split by TCP (a client that sends
    /// size and name in two writes, held back by Nagle's algorithm until
    /// the first is acknowledged) has its pieces about one round trip
    /// apart, so the wait is [`AUTO_ROUND_TRIPS`] round trips plus
    /// [`AUTO_MARGIN`] for scheduling, at most [`AUTO_MAX`].
    Auto,
    /// The same wait for every connection.
    Fixed(Duration),
}

/// Round trips an automatic settle waits.
const AUTO_ROUND_TRIPS: u32 = 4;
/// Added to an automatic settle: a client may be descheduled between two
/// writes however short the link.
const AUTO_MARGIN: Duration = Duration::from_millis(10);
/// Longest automatic settle.
const AUTO_MAX: Duration = Duration::from_secs(1);
/// The settle when the round trip cannot be read.
const AUTO_FALLBACK: Duration = Duration::from_millis(200);

impl SeedSettle {
    /// The wait for a connection whose smoothed round-trip time is
    /// `round_trip`, if known.
    pub fn wait(self, round_trip: Option<Duration>) -> Duration {
        match (self, round_trip) {
            (SeedSettle::Fixed(wait), _) => wait,
            (SeedSettle::Auto, Some(round_trip)) => {
                (round_trip * AUTO_ROUND_TRIPS + AUTO_MARGIN).min(AUTO_MAX)
            }
            (SeedSettle::Auto, None) => AUTO_FALLBACK,
        }
    }
}

impl std::str::FromStr for SeedSettle {
    type Err = String;

    fn from_str(text: &str) -> Result<SeedSettle, String> {
        if text == "auto" {
            return Ok(SeedSettle::Auto);
        }
        humantime::parse_duration(text)
            .map(SeedSettle::Fixed)
            .map_err(|error| format!("{error}; give a duration such as 200ms, or auto"))
    }
}

/// The kernel's smoothed round-trip time for `stream`.
fn smoothed_round_trip(stream: &TcpStream) -> Option<Duration> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which is
    // that large and zeroed, so it is initialised whatever it writes; the
    // descriptor is borrowed from a live socket.
    let info = unsafe {
        let result = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        );
        (result == 0).then(|| info.assume_init())?
    };
    // tcpi_rtt is in microseconds; 0 means no sample yet.
    (info.tcpi_rtt > 0).then(|| Duration::from_micros(info.tcpi_rtt.into()))
}

/// Reads until the bytes form a header and the client has paused for the
/// settle time, the sign that it is waiting for `go ahead`; the whole
/// header must be there by `deadline`.
async fn read_header(
    stream: &mut TcpStream,
    opening: [u8; 8],
    config: &ServerConfig,
    deadline: tokio::time::Instant,
) -> Result<Vec<u8>, SeedError> {
    let mut received = Vec::with_capacity(seed::SEED_RECV_LEN);
    received.extend_from_slice(&opening);
    let mut chunk = [0u8; seed::SEED_RECV_LEN];
    let mut settle = None;
    loop {
        let has_header = matches!(seed::decode_header(&received)?, Decoded::Header(_));
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let wait = if has_header {
            let settle =
                *settle.get_or_insert_with(|| config.seed_settle.wait(smoothed_round_trip(stream)));
            settle.min(left)
        } else {
            left
        };
        match timeout(wait, stream.read(&mut chunk)).await {
            Err(_) if has_header => return Ok(received),
            Err(_) => return Err(SeedError::HeaderTimeout(config.header_timeout)),
            Ok(Ok(0)) => return Err(SeedError::ClosedBeforeHeader),
            Ok(Ok(read)) => received.extend_from_slice(&chunk[..read]),
            Ok(Err(error)) => return Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_automatic_settle_follows_the_round_trip_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(
            SeedSettle::Auto.wait(Some(Duration::from_micros(50))),
            ms(10) + Duration::from_micros(200)
        );
        assert_eq!(SeedSettle::Auto.wait(Some(ms(40))), ms(170));
        assert_eq!(SeedSettle::Auto.wait(Some(ms(600))), ms(1000));
        assert_eq!(SeedSettle::Auto.wait(None), ms(200));
        assert_eq!(SeedSettle::Fixed(ms(5)).wait(Some(ms(600))), ms(5));
    }

    #[test]
    fn a_settle_is_auto_or_a_duration() {
        assert_eq!("auto".parse(), Ok(SeedSettle::Auto));
        assert_eq!(
            "250ms".parse(),
            Ok(SeedSettle::Fixed(Duration::from_millis(250)))
        );
        let error = "soon".parse::<SeedSettle>().unwrap_err();
        assert!(error.contains("or auto"), "{error}");
    }
}
