//! The receiving server: accept loop, connection limit, timeouts, shutdown.
//!
//! One task per connection. The first 8 bytes tell the protocols apart:
//! haul's magic, or a seed header's size. A connection's failure is logged and
//! ends that connection alone; nothing a client sends can stop the accept
//! loop. This module and its children read and write sockets and call the
//! codec and the store; they never name a file themselves.

mod haul;
mod log_output;
mod seed;

pub use log_output::LogOutput;
pub use seed::SeedSettle;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;
use tracing::{debug, error, info, warn};

use crate::protocol::haul::MAGIC;
use crate::secure::Secret;
use crate::store::{OnConflict, Store};
use crate::transfer::Rate;

/// Everything an operator can tune about the server.
#[derive(Clone)]
pub struct ServerConfig {
    /// The receive directory (the inbox).
    pub dir: PathBuf,
    /// What happens when a received name already exists.
    pub on_conflict: OnConflict,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
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
    /// Accept the classroom protocol (haul's own is always accepted).
    pub accept_seed: bool,
    /// Largest file accepted, if any limit.
    pub max_file_size: Option<u64>,
    /// Free space kept on the inbox's file system: a file that would eat
    /// into it is refused before any of its bytes is written.
    pub reserve: u64,
    /// When set, haul sessions must prove they hold it, and are encrypted.
    pub secret: Option<Secret>,
    /// How long a haul session waits, once per batch, for stalled sessions
    /// of the same sender to let go of the partial data of files it
    /// offers, before it receives those files afresh instead. The stalled session lets go as soon as it sees
    /// the request, unless it is stuck outside a file's data (writing to a
    /// client that does not read, say); a few seconds cover a busy server.
    pub takeover_wait: Duration,
}

impl ServerConfig {
    /// The defaults: a sensible server for `dir`.
    pub fn new(dir: PathBuf) -> ServerConfig {
        ServerConfig {
            dir,
            on_conflict: OnConflict::Rename,
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            seed_settle: SeedSettle::Auto,
            grace: Duration::from_secs(10),
            partial_max_age: Duration::from_secs(24 * 60 * 60),
            accept_seed: true,
            max_file_size: None,
            reserve: 64 * 1024 * 1024,
            secret: None,
            takeover_wait: Duration::from_secs(5),
        }
    }
}

/// A bound, ready server.
pub struct Server {
    listener: TcpListener,
    store: Store,
    config: Arc<ServerConfig>,
}

impl Server {
    /// Opens the inbox and binds the listening socket.
    pub async fn bind(listen: SocketAddr, config: ServerConfig) -> io::Result<Server> {
        raise_open_file_limit();
        let store = Store::open(&config.dir, config.on_conflict)?;
        let listener = TcpListener::bind(listen).await?;
        Ok(Server {
            listener,
            store,
            config: Arc::new(config),
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then closes the listening socket,
    /// lets transfers in flight finish within the grace period and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listener,
            store,
            config,
        } = self;
        tokio::spawn(remove_stale_partials(store.clone(), config.partial_max_age));
        // Every handler holds a clone; `recv` returns `None` once all are gone.
        let (handlers_alive, mut all_handlers_done) = mpsc::channel::<()>(1);
        tokio::select! {
            () = accept_loop(listener, store, Arc::clone(&config), handlers_alive) => {}
            () = shutdown => {}
        }
        // The accept loop, its listener and its sender are gone now.
        info!(
            grace_secs = config.grace.as_secs_f64(),
            "shutting down: no new connections; transfers in flight may finish"
        );
        if timeout(config.grace, all_handlers_done.recv())
            .await
            .is_err()
        {
            warn!("transfers still running after the grace period were cut; they can resume");
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
    config: Arc<ServerConfig>,
    handlers_alive: mpsc::Sender<()>,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
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
        let store = store.clone();
        let config = Arc::clone(&config);
        let alive = handlers_alive.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, store, &config).await;
            drop(permit);
            drop(alive);
        });
    }
}

/// Deletes abandoned partial data at start-up and every hour after.
async fn remove_stale_partials(store: Store, max_age: Duration) {
    let mut every_hour = tokio::time::interval(Duration::from_secs(60 * 60));
    loop {
        every_hour.tick().await;
        let store = store.clone();
        match blocking(move || store.remove_stale(max_age)).await {
            Ok(0) => {}
            Ok(removed) => info!(removed, "removed stale partial files"),
            Err(error) => warn!(%error, "could not remove stale partial files"),
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    store: Store,
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
    let mut opening = [0u8; 8];
    match timeout(config.header_timeout, stream.read_exact(&mut opening)).await {
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
        haul::serve(stream, peer, store, config).await;
    } else if config.accept_seed {
        seed::serve(stream, peer, opening, store, config).await;
    } else {
        warn!(%peer, "refused a seed-protocol connection: this server accepts only haul's protocol");
        let _ = stream.set_zero_linger();
    }
}

/// Says why a file of `size` bytes cannot be taken, if it cannot: over the
/// size limit, or more than the file system can hold beside the reserve.
/// Checked before any byte is written; a stream of unknown size is checked
/// as it grows.
fn refusal_for_size(store: &Store, config: &ServerConfig, size: u64) -> Option<String> {
    SpaceBudget::default().refusal_for(store, config, size)
}

/// The free space for a batch of files: read from the file system once,
/// then counted down by each file accepted, so that a batch that would not
/// fit as a whole is refused file by file before any byte is written.
#[derive(Default)]
struct SpaceBudget {
    free: Option<u64>,
}

impl SpaceBudget {
    /// [`refusal_for_size`], with `size` taken from the budget if accepted.
    fn refusal_for(&mut self, store: &Store, config: &ServerConfig, size: u64) -> Option<String> {
        if let Some(max) = config.max_file_size
            && size > max
        {
            return Some(format!(
                "the file is {size} bytes; this server accepts at most {max}"
            ));
        }
        let free = match self.free {
            Some(free) => free,
            None => match store.available_space() {
                Ok(free) => *self.free.insert(free),
                Err(error) => {
                    return Some(format!("cannot check the server's free space: {error}"));
                }
            },
        };
        if size.saturating_add(config.reserve) > free {
            return Some(format!(
                "no space left on the server: the file needs {size} bytes and {} are free",
                free.saturating_sub(config.reserve)
            ));
        }
        self.free = Some(free - size);
        None
    }
}

/// Whether a write failed because the disk or a quota is full.
fn is_out_of_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}

/// Logs the outcome of one file's transfer, in one line.
fn log_transfer(
    peer: SocketAddr,
    name: &str,
    size: Option<u64>,
    elapsed: Duration,
    outcome: Result<&str, &dyn std::fmt::Display>,
) {
    let size_shown = size.map_or_else(|| "-".to_owned(), |size| size.to_string());
    let secs = format_args!("{:.3}", elapsed.as_secs_f64());
    match outcome {
        Ok(stored_as) => info!(
            target: log_output::STORED_TARGET,
            %peer,
            name,
            size = %size_shown,
            stored_as,
            secs,
            rate = %Rate { bytes: size.unwrap_or(0), elapsed },
            result = "stored",
            "transfer"
        ),
        Err(reason) => warn!(
            %peer,
            name,
            size = %size_shown,
            secs,
            result = "failed",
            %reason,
            "transfer"
        ),
    }
}
