//! The receiving server: accept loop, connection limit, timeouts, shutdown.
//!
//! One task per connection. A connection's failure is logged and ends that
//! connection alone; nothing a client sends can stop the accept loop. This
//! module reads and writes sockets and calls the codec and the store; it never
//! names a file itself.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;
use tracing::{error, info, warn};

use crate::protocol::seed::{self, Decoded, HeaderError};
use crate::store::{NameError, OnConflict, SafeName, Store, printable};
use crate::transfer::{PumpError, Rate, pump};

/// Everything an operator can tune about the server.
#[derive(Debug, Clone)]
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
    pub seed_settle: Duration,
    /// How long transfers in flight may run on after a shutdown request.
    pub grace: Duration,
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
            seed_settle: Duration::from_millis(200),
            grace: Duration::from_secs(10),
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

    /// Serves until `shutdown` completes, then stops accepting, lets
    /// transfers in flight finish within the grace period and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let permits = Arc::new(Semaphore::new(self.config.max_connections));
        // Every handler holds a clone; `recv` returns `None` once all are gone.
        let (handlers_alive, mut all_handlers_done) = mpsc::channel::<()>(1);
        tokio::select! {
            () = self.accept_loop(&permits, &handlers_alive) => {}
            () = shutdown => info!("shutting down: no new connections"),
        }
        drop(handlers_alive);
        if timeout(self.config.grace, all_handlers_done.recv())
            .await
            .is_err()
        {
            warn!(
                grace_secs = self.config.grace.as_secs(),
                "transfers still running after the grace period were cut"
            );
        }
    }

    async fn accept_loop(&self, permits: &Arc<Semaphore>, handlers_alive: &mpsc::Sender<()>) {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically out of file descriptors: wait for some to be
                    // released instead of spinning or giving up.
                    error!(%error, "accept failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let store = self.store.clone();
            let config = Arc::clone(&self.config);
            let alive = handlers_alive.clone();
            tokio::spawn(async move {
                serve_connection(stream, peer, store, &config).await;
                drop(permit);
                drop(alive);
            });
        }
    }
}

/// Why a connection ended without storing a file.
#[derive(Debug, Error)]
enum ConnectionError {
    #[error("no complete header within {}s", .0.as_secs())]
    HeaderTimeout(Duration),
    #[error("the client closed the connection before sending a header")]
    ClosedBeforeHeader,
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("refused name \"{shown}\": {reason}")]
    RefusedName { shown: String, reason: NameError },
    #[error("storage failed: {0}")]
    Storage(io::Error),
    #[error(transparent)]
    Pump(#[from] PumpError),
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
}

/// What one connection did, for its log line.
#[derive(Default)]
struct TransferRecord {
    name: Option<String>,
    size: Option<u64>,
    stored_as: Option<String>,
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    store: Store,
    config: &ServerConfig,
) {
    let started = Instant::now();
    let mut record = TransferRecord::default();
    let result = receive_seed(&mut stream, &store, config, &mut record).await;
    let elapsed = started.elapsed();
    let name = record.name.as_deref().unwrap_or("-");
    let size = record
        .size
        .map_or_else(|| "-".to_owned(), |size| size.to_string());
    if result.is_err() {
        // The seed protocol has no message for "not stored": a reset instead
        // of an orderly close is the only way to tell the client it failed.
        let _ = stream.set_zero_linger();
    }
    match result {
        Ok(()) => {
            let bytes = record.size.unwrap_or(0);
            info!(
                %peer,
                name,
                %size,
                stored_as = record.stored_as.as_deref().unwrap_or("-"),
                secs = format_args!("{:.3}", elapsed.as_secs_f64()),
                rate = %Rate { bytes, elapsed },
                result = "stored",
                "transfer"
            );
        }
        Err(error) => warn!(
            %peer,
            name,
            %size,
            secs = format_args!("{:.3}", elapsed.as_secs_f64()),
            result = "failed",
            reason = %error,
            "transfer"
        ),
    }
}

async fn receive_seed(
    stream: &mut TcpStream,
    store: &Store,
    config: &ServerConfig,
    record: &mut TransferRecord,
) -> Result<(), ConnectionError> {
    let header_bytes = read_seed_header(stream, config).await?;
    let Ok(Decoded::Header(header)) = seed::decode_header(&header_bytes) else {
        unreachable!("read_seed_header returns only complete headers");
    };
    let raw_name = header.last_component();
    record.name = Some(printable(raw_name));
    record.size = Some(header.size);
    let name = SafeName::parse(raw_name).map_err(|reason| ConnectionError::RefusedName {
        shown: printable(raw_name),
        reason,
    })?;

    let partial = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.begin(name))
            .await
            .map_err(|join| ConnectionError::Storage(io::Error::other(join)))?
            .map_err(ConnectionError::Storage)?
    };
    let mut file = tokio::fs::File::from_std(partial.writer().map_err(ConnectionError::Storage)?);

    stream.write_all(seed::GO_AHEAD).await?;
    pump(stream, &mut file, header.size, config.idle_timeout, |_| {}).await?;
    drop(file);

    let stored_as = tokio::task::spawn_blocking(move || partial.commit())
        .await
        .map_err(|join| ConnectionError::Storage(io::Error::other(join)))?
        .map_err(ConnectionError::Storage)?;
    record.stored_as = Some(stored_as);
    Ok(())
}

/// Reads until the bytes form a header and the client has paused for
/// `seed_settle`, the sign that it is waiting for `go ahead`.
async fn read_seed_header(
    stream: &mut TcpStream,
    config: &ServerConfig,
) -> Result<Vec<u8>, ConnectionError> {
    let deadline = Instant::now() + config.header_timeout;
    let mut received = Vec::with_capacity(seed::SEED_RECV_LEN);
    let mut chunk = [0u8; seed::SEED_RECV_LEN];
    loop {
        let has_header = matches!(seed::decode_header(&received)?, Decoded::Header(_));
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = if has_header {
            config.seed_settle.min(left)
        } else {
            left
        };
        match timeout(wait, stream.read(&mut chunk)).await {
            Err(_) if has_header => return Ok(received),
            Err(_) => return Err(ConnectionError::HeaderTimeout(config.header_timeout)),
            Ok(Ok(0)) => return Err(ConnectionError::ClosedBeforeHeader),
            Ok(Ok(read)) => received.extend_from_slice(&chunk[..read]),
            Ok(Err(error)) => return Err(error.into()),
        }
    }
}
