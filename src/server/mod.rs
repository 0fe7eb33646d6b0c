//! The receiving server: accept loop, connection limit, timeouts, shutdown.
//!
//! One task per connection. The first 8 bytes tell the protocols apart:
//! haul's magic, or a seed header's size. A connection's failure is logged and
//! ends that connection alone; nothing a client sends can stop the accept
//! loop. A haul session pushes files (`haul`) or lists a folder
//! (`listing`), as its first message says. This module and its children
//! read and write sockets and call the codec and the store; they never name
//! a file themselves.

mod get;
use crate::engine::blocking;
pub(crate) use crate::engine::log::{Fate, Outcome, Protocol, log_transfer};
pub(crate) use crate::engine::space::{self, peer_key};
mod haul;

mod listing;
pub(crate) mod log_output;
pub(crate) mod rights;
mod seed;

pub use log_output::LogOutput;
pub use rights::{Access, Rights, SecretRole};
pub use seed::SeedSettle;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, error, info, warn};

use crate::config;
use crate::protocol::haul::MAGIC;
use crate::storage::{self, Backend, OnConflict, Store};
use space::SpaceLedger;

/// Everything an operator can tune about the server.
#[derive(Clone)]
pub struct ServerConfig {
    /// The receive directory (the inbox).
    pub dir: PathBuf,
    /// What happens when a received name already exists.
    pub on_conflict: OnConflict,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one peer address (an IPv6 peer's /64) may hold at once;
    /// further ones are closed at once. `None`: no limit. Without it, one
    /// host could take every one of `max_connections` and leave others
    /// waiting in the backlog.
    pub max_connections_per_ip: Option<usize>,
    /// How long a client may take to send its whole header.
    pub header_timeout: Duration,
    /// How long a transfer may make no progress before it is dropped.
    pub idle_timeout: Duration,
    /// How long a seed client must stay silent after sending at least one
    /// byte of name before the name counts as complete. The seed header has
    /// no length field: the name ends when the client stops to wait for
    /// `go ahead`, and a pause is the only sign of that.
    pub seed_settle: SeedSettle,
    /// How long transfers in flight may run on after a shutdown request.
    pub grace: Duration,
    /// Partial data not written to for this long is deleted.
    pub partial_max_age: Duration,
    /// Partial data of interrupted transfers kept for resuming, in all; one
    /// sender may keep half of it. Beyond it the oldest is deleted, and
    /// any of it is given up, oldest first, when a new file needs its room.
    pub max_partial: u64,
    /// Accept the classroom protocol (haul's own is always accepted).
    pub accept_seed: bool,
    /// Largest file accepted, if any limit.
    pub max_file_size: Option<u64>,
    /// Free space kept on the inbox's file system: a file that would eat
    /// into it is refused before any of its bytes is written.
    pub reserve: u64,
    /// Free inodes kept on the inbox's file system: a file that would need
    /// one of them is refused. Directories stop at twice as many.
    pub reserve_inodes: u64,
    /// The secrets and what each allows, and whether the directory is
    /// shared. With any secret, haul sessions must prove they hold one,
    /// and are encrypted.
    pub access: Access,
    /// Stored files whose BLAKE3 hashes are kept in memory (at most about
    /// 6 MiB for the default), so that a sender's hashed offer of an unchanged file reads
    /// nothing. A client can make the server read a stored file only by
    /// offering its name, its size and a hash, and once per version of the
    /// file while it stays among the most recently used this many.
    pub hash_cache_entries: usize,
    /// How long a haul session waits, once per batch, for stalled sessions
    /// of the same sender to let go of the partial data of files it
    /// offers, before it receives those files afresh instead. The stalled session lets go as soon as it sees
    /// the request, unless it is stuck outside a file's data (writing to a
    /// client that does not read, say); a few seconds cover a busy server.
    pub takeover_wait: Duration,
}

impl ServerConfig {
    /// What the server's receivers accept and keep.
    pub fn policy(&self) -> crate::engine::receiver::Policy {
        crate::engine::receiver::Policy {
            on_conflict: self.on_conflict,
            max_file_size: self.max_file_size,
            reserve: self.reserve,
            reserve_inodes: self.reserve_inodes,
            max_partial: self.max_partial,
            takeover_wait: self.takeover_wait,
        }
    }

    /// The defaults ([`crate::config`]): a sensible server for `dir`.
    pub fn new(dir: PathBuf) -> ServerConfig {
        ServerConfig {
            dir,
            on_conflict: OnConflict::Rename,
            max_connections: config::MAX_CONNECTIONS as usize,
            max_connections_per_ip: Some(config::MAX_CONNECTIONS_PER_IP as usize),
            header_timeout: config::HEADER_TIMEOUT.0,
            idle_timeout: config::IDLE_TIMEOUT.0,
            seed_settle: SeedSettle::Auto,
            grace: config::GRACE.0,
            partial_max_age: config::PARTIAL_MAX_AGE.0,
            max_partial: config::MAX_PARTIAL.0,
            accept_seed: true,
            max_file_size: None,
            reserve: config::RESERVE.0,
            reserve_inodes: config::RESERVE_INODES,
            access: Access::default(),
            hash_cache_entries: config::HASH_CACHE_ENTRIES,
            takeover_wait: Duration::from_secs(5),
        }
    }
}

/// Why a server could not start, in words that name what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The inbox cannot be made or opened.
    #[error("{}: {}", .dir.display(), dir_problem(.dir, .error))]
    Dir { dir: PathBuf, error: io::Error },
    /// Two of the secrets are the same, so that its holder would have the
    /// rights of both.
    #[error("{0} and {1} hold the same secret; each needs its own (`haul token` makes one)")]
    SameSecret(SecretRole, SecretRole),
    /// The address cannot be listened on.
    #[error("cannot listen on {address}: {}", listen_problem(*.address, .error))]
    Listen {
        address: SocketAddr,
        error: io::Error,
    },
}

/// What is wrong with the inbox `dir`, given the error that opening it met.
fn dir_problem(dir: &std::path::Path, error: &io::Error) -> String {
    match std::fs::metadata(dir) {
        Ok(metadata) if !metadata.is_dir() => return "it is a file, not a folder".to_owned(),
        _ => {}
    }
    match error.kind() {
        io::ErrorKind::PermissionDenied => {
            "permission denied (the server must be able to create and write it)".to_owned()
        }
        io::ErrorKind::NotADirectory => "a part of its path is a file, not a folder".to_owned(),
        _ => plain(error),
    }
}

/// What is wrong with listening on `address`.
fn listen_problem(address: SocketAddr, error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::PermissionDenied if address.port() < 1024 => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".to_owned()
        }
        io::ErrorKind::AddrInUse => {
            "the address is already in use (is another haul serve running?)".to_owned()
        }
        io::ErrorKind::AddrNotAvailable => {
            "no interface of this machine has that address".to_owned()
        }
        _ => plain(error),
    }
}

/// An error's words without the `(os error N)` that the standard library
/// adds, starting in lower case, to follow a colon.
fn plain(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

/// A bound, ready server.
pub struct Server {
    listener: TcpListener,
    store: Store,
    space: Arc<SpaceLedger>,
    config: Arc<ServerConfig>,
}

impl Server {
    /// Opens the inbox and binds the listening socket.
    pub async fn bind(listen: SocketAddr, config: ServerConfig) -> Result<Server, StartError> {
        if let Some((first, second)) = config.access.same_secrets() {
            return Err(StartError::SameSecret(first, second));
        }
        raise_open_file_limit();
        let store =
            Store::open(&config.dir, config.on_conflict).map_err(|error| StartError::Dir {
                dir: config.dir.clone(),
                error,
            })?;
        store.set_hash_cache_entries(config.hash_cache_entries);
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|error| StartError::Listen {
                address: listen,
                error,
            })?;
        Ok(Server {
            listener,
            space: SpaceLedger::new(store.clone(), &config.policy()),
            store,
            config: Arc::new(config),
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then closes the listening socket,
    /// lets transfers in flight finish within the grace period and returns;
    /// returns at once, cutting them, if `stop_now` completes during the
    /// grace period. Transfers cut when the runtime drops them keep their
    /// partial data, as after a crash, for haul's protocol to resume.
    pub async fn run(self, shutdown: impl Future<Output = ()>, stop_now: impl Future<Output = ()>) {
        let Server {
            listener,
            store,
            space,
            config,
        } = self;
        if let Ok(free) = store.free_space()
            && free.bytes <= config.reserve
        {
            warn!(
                free = free.bytes,
                reserve = config.reserve,
                "the inbox's disk has no more free space than --reserve keeps: every file will be \
                 refused until space is freed or --reserve lowered"
            );
        }
        tokio::spawn(remove_stale_partials(
            store.clone(),
            Arc::clone(&space),
            config.partial_max_age,
            config.dir.clone(),
        ));
        // Every handler holds a clone; `recv` returns `None` once all are gone.
        let (handlers_alive, mut all_handlers_done) = mpsc::channel::<()>(1);
        tokio::select! {
            () = accept_loop(listener, store, space, Arc::clone(&config), handlers_alive) => {}
            () = shutdown => {}
        }
        // The accept loop, its listener and its sender are gone now.
        info!(
            grace_secs = config.grace.as_secs_f64(),
            "shutting down: no new connections; transfers in flight may finish"
        );
        tokio::select! {
            finished = timeout(config.grace, all_handlers_done.recv()) => {
                if finished.is_err() {
                    warn!("transfers still running after the grace period were cut; they can resume");
                }
            }
            () = stop_now => {
                warn!(
                    connections = all_handlers_done.sender_strong_count(),
                    "stopping at once: transfers in flight are cut; haul's keep their partial data for resume"
                );
            }
        }
        log_output::write_gathered();
    }
}

/// Lifts the soft limit on open files to the hard one, as servers that hold
/// many connections and files commonly do: the usual soft limit of 1,024 is
/// below what the default `--max-connections` alone needs, and a client
/// that finds the server out of descriptors gets its files failed.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        ..limit
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => debug!(from = ?limit.current, to = ?limit.maximum, "raised the open-file limit"),
        Err(error) => warn!(%error, limit = ?limit.current, "cannot raise the open-file limit"),
    }
}

/// Accepts connections for as long as it runs; dropping it closes the
/// listening socket.
async fn accept_loop(
    listener: TcpListener,
    store: Store,
    space: Arc<SpaceLedger>,
    config: Arc<ServerConfig>,
    handlers_alive: mpsc::Sender<()>,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let per_peer = PerPeer::default();
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically out of file descriptors: wait for some to be
                // released instead of spinning or giving up.
                error!(%error, "accept failed; retrying shortly");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(held) = per_peer.admit(peer, config.max_connections_per_ip) else {
            // Closed before a byte is read: the seed protocol's only way to
            // say no is a reset, and haul's client reports the closed
            // connection.
            let _ = stream.set_zero_linger();
            continue;
        };
        let store = store.clone();
        let space = Arc::clone(&space);
        let config = Arc::clone(&config);
        let alive = handlers_alive.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, store, space, &config).await;
            drop(held);
            drop(permit);
            drop(alive);
        });
    }
}

/// How many connections each peer holds, for `max_connections_per_ip`.
/// Holds an entry only for peers with a connection open, so it is bounded
/// by `max_connections`.
#[derive(Clone, Default)]
struct PerPeer {
    open: Arc<std::sync::Mutex<HashMap<IpAddr, PeerCount>>>,
}

#[derive(Default)]
struct PeerCount {
    connections: usize,
    /// Set once a refusal was logged, until the peer is below the limit
    /// again: a flood of connections is not a flood of log lines.
    warned: bool,
}

/// One connection counted in [`PerPeer`]; uncounted when dropped.
struct PeerSlot {
    peers: PerPeer,
    key: IpAddr,
}

impl PerPeer {
    /// Counts a new connection from `peer`, unless that peer already holds
    /// `limit`: then returns `None`.
    fn admit(&self, peer: SocketAddr, limit: Option<usize>) -> Option<PeerSlot> {
        let key = peer_key(peer.ip());
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let count = open.entry(key).or_default();
        if let Some(limit) = limit
            && count.connections >= limit
        {
            if !count.warned {
                count.warned = true;
                warn!(%peer, limit, "refusing further connections from this address: it holds --max-connections-per-ip");
            }
            return None;
        }
        count.connections += 1;
        Some(PeerSlot {
            peers: self.clone(),
            key,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .peers
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            count.connections = count.connections.saturating_sub(1);
            count.warned = false;
            if count.connections == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Deletes abandoned partial data at start-up and every hour after: what
/// is stale, and what is over `--max-partial`. At start-up, then logs what
/// is still held, so that an operator sees what a restart kept.
async fn remove_stale_partials(
    store: Store,
    space: Arc<SpaceLedger>,
    max_age: Duration,
    dir: PathBuf,
) {
    let mut every_hour = tokio::time::interval(Duration::from_secs(60 * 60));
    let mut at_start = true;
    loop {
        every_hour.tick().await;
        let store = store.clone();
        let space = Arc::clone(&space);
        let removed = blocking(move || {
            let removed = store.remove_stale(max_age);
            space.cap_partials(None);
            let held = if at_start {
                Some(store.held_partials())
            } else {
                None
            };
            Ok((removed, held))
        });
        let Ok((removed, held)) = removed.await else {
            continue;
        };
        match removed {
            Ok(0) => {}
            Ok(removed) => info!(removed, "removed stale partial files"),
            Err(error) => warn!(%error, "could not remove stale partial files"),
        }
        match held {
            Some(Ok(held)) => log_held_partials(&held, &dir),
            Some(Err(error)) => warn!(%error, "cannot list the partial data held"),
            None => {}
        }
        at_start = false;
    }
}

/// Logs, in one line, the partial transfers held for resume, if any: how
/// many, their bytes in all, and how long ago the oldest was written to.
fn log_held_partials(held: &[storage::HeldPartial], dir: &std::path::Path) {
    // Private temporary files left by an earlier process cannot resume.
    let held: Vec<&storage::HeldPartial> = held
        .iter()
        .filter(|partial| partial.name.starts_with(storage::RESUME_PREFIX))
        .collect();
    let Some(oldest) = held.iter().map(|partial| partial.modified).min() else {
        return;
    };
    let bytes: u64 = held.iter().map(|partial| partial.bytes).sum();
    let age = std::time::SystemTime::now()
        .duration_since(oldest)
        .unwrap_or_default();
    let age = humantime::format_duration(Duration::from_secs(age.as_secs()));
    info!(
        "holding {} partial {} for resume in {}: {} in all, the oldest last written {age} ago",
        held.len(),
        if held.len() == 1 {
            "transfer"
        } else {
            "transfers"
        },
        dir.join(storage::HIDDEN_AREA).display(),
        log_output::Size(bytes),
    );
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    store: Store,
    space: Arc<SpaceLedger>,
    config: &ServerConfig,
) {
    // Replies are written whole and flushed on purpose; Nagle's algorithm
    // would hold a batch's receipts back until the client's delayed ACK.
    let _ = stream.set_nodelay(true);
    // A client that vanishes without a word frees its slot within about
    // the idle timeout, even while the server waits on no timer of its own.
    if let Err(error) = crate::keepalive::notice_dead_peer(&stream, config.idle_timeout) {
        debug!(%peer, %error, "cannot set TCP keepalive");
    }
    // One deadline for everything before a client is known: the first
    // 8 bytes, the seed header or haul's Hello and handshake together, so a
    // silent or slow client holds its slot for `header_timeout` at most,
    // however it spreads its bytes over the stages.
    let deadline = Instant::now() + config.header_timeout;
    let mut opening = [0u8; 8];
    match timeout_at(deadline, stream.read_exact(&mut opening)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            warn!(%peer, %error, "connection closed before the first 8 bytes");
            return;
        }
        Err(_) => {
            warn!(%peer, timeout_secs = config.header_timeout.as_secs(), "no first 8 bytes in time");
            return;
        }
    }
    if opening == MAGIC {
        haul::serve(stream, peer, store, space, config, deadline).await;
    } else if config.accept_seed {
        seed::serve(stream, peer, opening, store, &space, config, deadline).await;
    } else {
        warn!(%peer, "refused a seed-protocol connection: this server accepts only haul's protocol");
        let _ = stream.set_zero_linger();
    }
}
