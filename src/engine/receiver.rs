//! The receiver of a session: batches of offers, answers, file data and
//! receipts, until the sender says goodbye. `haul serve` runs it for a
//! push (`server::haul`, after the opening), and `haul get` runs it into a
//! local store ([`receive_get`]): the same name rules, conflict policy,
//! space ledger, resume and atomic placement either way.
//!
//! Files of one batch are committed in groups: one file-system sync covers a
//! group, which gets its names while the rest of the batch arrives. The
//! receipts follow the batch's last group.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use thiserror::Error;
use tracing::{info, warn};

use super::Event;
use super::log::{Fate, Outcome, Protocol, log_already_there, log_transfer};
use super::space::{Charge, Sender, SpaceLedger, sender_of};
use super::{blocking, is_out_of_space};
use crate::connection::{Connection, ConnectionError};
use crate::protocol::haul::{
    self, Answer, DecodeError, EntryKind, FailCode, Hash, Kind, MAX_DATA_LEN, Mtime, Offer,
    ReceiverMessage, SenderId, SenderMessage,
};
use crate::secure::HandshakeError;
use crate::storage::{
    Backend, Commit, Existing, Holder, Metadata, OnConflict, Partial, RelPath, Store, Upload,
};
use crate::text::printable;
use crate::transfer::{FileSink, PumpError, SMALL_FILE, receive_slice};

/// Most offers one batch may carry: bounds what a client can make the
/// server hold in memory, and the receipts that pile up before it reads them.
pub const MAX_BATCH: usize = 1024;

/// What a receiver accepts and keeps: the server's flags, or a get's own.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// What happens when a different file is under a received name.
    pub on_conflict: OnConflict,
    /// Largest file accepted, if any limit.
    pub max_file_size: Option<u64>,
    /// Free space kept: a file that would eat into it is refused before
    /// any of its bytes is written.
    pub reserve: u64,
    /// Free inodes kept; directories stop at twice as many.
    pub reserve_inodes: u64,
    /// Partial data kept for resuming, in all; one sender may keep half.
    pub max_partial: u64,
    /// How long a session waits, once per batch, for stalled sessions of
    /// the same sender to let go of partial data it offers.
    pub takeover_wait: Duration,
}

/// What ends a whole connection (as opposed to failing one file).
#[derive(Debug, Error)]
pub(crate) enum SessionError {
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("protocol violation: {0}")]
    Violation(String),
    #[error(
        "the client speaks protocol version {client}; this server speaks {}",
        haul::VERSION
    )]
    Version { client: u16 },
    /// A stream of unknown size grew past `--max-file-size`: the sender
    /// could not know, so this is not its protocol error.
    #[error("the stream grew past {max} bytes, the most this server accepts")]
    StreamTooLarge { max: u64 },
    #[error("nothing received for {}s", .0.as_secs())]
    Idle(Duration),
    #[error("the handshake was not complete within {}s of connecting", .0.as_secs())]
    HandshakeTimeout(Duration),
    #[error("the client left without saying goodbye")]
    Vanished,
    #[error("the client ended the session: {1}")]
    Ended(FailCode, String),
    #[error(transparent)]
    Pump(#[from] PumpError),
    /// The connection ended inside a file's data: where, in the file.
    #[error("the connection ended after {}", match .size {
        Some(size) => format!("{at} of the file's {size} bytes"),
        None => format!("{at} bytes of the stream"),
    })]
    CutInFile { at: u64, size: Option<u64> },
    #[error("no space left on the server")]
    NoSpace,
    #[error("a newer connection of the same sender took over its file")]
    TakenOver,
    #[error("this server requires a shared secret: set HAUL_TOKEN or use --token-file")]
    SecretRequired,
    #[error("{0}")]
    Auth(HandshakeError),
    /// The session's rights lack what it asked for: why, in words.
    #[error("{0}")]
    NotAllowed(&'static str),
    /// What the client asked for is refused, with its code.
    #[error("{0}")]
    Refused(Refusal),
    #[error("storage failed: {0}")]
    Storage(io::Error),
    /// A server's offer a client receiving does not take.
    #[error("{0}")]
    Untrusted(String),
    /// A get that could not send everything asked for, and why.
    #[error("{0}")]
    Get(String),
    #[error(transparent)]
    Connection(ConnectionError),
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
}

impl SessionError {
    /// The code its Error frame carries.
    pub(crate) fn code(&self) -> FailCode {
        match self {
            SessionError::NotAllowed(_) => FailCode::NotAllowed,
            SessionError::Version { .. } => FailCode::Version,
            SessionError::Refused(refusal) => refusal.code,
            _ => FailCode::Other,
        }
    }
}

impl From<ConnectionError> for SessionError {
    fn from(error: ConnectionError) -> SessionError {
        match error {
            ConnectionError::Closed | ConnectionError::Cut(_) => SessionError::Vanished,
            ConnectionError::Idle(wait) => SessionError::Idle(wait),
            ConnectionError::Frame(error) => SessionError::Decode(error),
            other => SessionError::Connection(other),
        }
    }
}

/// Why one file is refused or not stored: the code its Refused answer or
/// its Failed carries, which the client acts on, and the words the log and
/// the client show.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: FailCode,
    pub(crate) text: String,
}

impl Refusal {
    pub(crate) fn new(code: FailCode, text: impl Into<String>) -> Refusal {
        Refusal {
            code,
            text: text.into(),
        }
    }

    /// A storage operation's failure, coded by what went wrong.
    fn storage(error: &io::Error, text: String) -> Refusal {
        let code = if is_out_of_space(error) {
            FailCode::NoSpace
        } else if error.kind() == io::ErrorKind::AlreadyExists {
            FailCode::Conflict
        } else {
            FailCode::Io
        };
        Refusal::new(code, text)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// An offer, owned, with what the server decided for it.
struct Planned {
    path_shown: String,
    size: Option<u64>,
    mtime: Mtime,
    mode: u32,
    /// Where the data goes, for files the server asked to receive.
    partial: Option<Partial>,
    /// The room granted to that data.
    charge: Option<Charge>,
}

/// A file that arrived whole and verified, waiting for the batch's commit.
struct Arrived {
    /// Its place in the batch.
    index: usize,
    hash: Hash,
    bytes: u64,
}

/// What the log line of a file that arrived whole says, once it is
/// committed.
struct ToLog {
    path_shown: String,
    bytes: u64,
    started: Instant,
    /// Whether its data stays in the hidden area, to be resumed, if it
    /// cannot be stored.
    resumable: bool,
}

impl ToLog {
    /// What becomes of the file's data when it is not stored.
    fn fate(&self) -> Fate<'_> {
        if self.resumable {
            Fate::Kept {
                bytes: self.bytes,
                name: &self.path_shown,
            }
        } else {
            Fate::Deleted
        }
    }
}

/// A committed file, for its receipt.
struct Stored {
    stored_as: String,
    bytes: u64,
    hash: Hash,
}

pub(crate) struct Receiver<'a> {
    pub(crate) conn: Connection,
    pub(crate) peer: SocketAddr,
    pub(crate) store: Store,
    /// The server's account of disk space, shared by every session.
    pub(crate) space: Arc<SpaceLedger>,
    /// Whose partial data this session leaves, for `--max-partial`.
    pub(crate) owner: Sender,
    /// Set once an interrupted file left data to be resumed.
    pub(crate) left_partial: bool,
    /// What this receiver accepts and keeps.
    pub(crate) policy: Policy,
    /// Directories this session created, with the time and mode they get
    /// when the client says goodbye (after their files are in them).
    pub(crate) created: CreatedDirs,
    /// Present once the client asked for compression and it was granted.
    pub(crate) zstd: Option<Zstd>,
    /// The sender's resume identity, from its Hello: part of the name of
    /// every partial file it sends, so that no other sender can continue
    /// or replace one.
    pub(crate) sender: SenderId,
    /// This session's hold on the partial data it claimed, through which a
    /// newer session of the same sender can ask for it.
    pub(crate) holder: Holder,
    /// What this session may do: none until the handshake, then what the
    /// secret it completed the handshake with gives (see `rights`).
    /// Why this session may not send, if it may not: the answer to its
    /// first offer.
    pub(crate) send_refused: Option<&'static str>,
    /// For a client receiving what it asked a server for: the names (last
    /// components of the paths asked for) an offer's path may begin with.
    /// An offer of anything else, or of a path the store's rules refuse,
    /// ends the session: such a server is not to be trusted with the rest.
    /// `None` on the server, whose senders are answered per offer.
    pub(crate) accepts: Option<Vec<(String, bool)>>,
    /// Called when a batch's outcomes are known, before its receipts go
    /// out: the server writes the log lines the batch gathered.
    pub(crate) on_settled: Option<fn()>,
    /// Where a client receiving reports each file, as `haul send` does.
    pub(crate) events: Option<&'a mut (dyn FnMut(Event<'_>) + Send)>,
}

/// Decompression state for `DataZstd` frames, kept for the whole session.
pub(crate) struct Zstd {
    pub(crate) decompressor: zstd::bulk::Decompressor<'static>,
    /// Decompressed bytes of one frame; never grows past `MAX_DATA_LEN`.
    pub(crate) plain: Vec<u8>,
}

/// A file of at least this many bytes has its hash entered in the store's
/// hash cache as it is committed, so that a later hashed offer of it reads
/// nothing. That costs two more metadata look-ups per file, as much as
/// hashing a small file again on the one offer that would ask for it.
const CACHE_ON_COMMIT: u64 = SMALL_FILE;

/// A batch's whole files go to a committing thread in groups of this many
/// files or bytes, whichever comes first.
const COMMIT_GROUP_FILES: usize = 32;
/// Most files one placing takes when groups that waited are named together
/// (four groups): what bounds the folder handles a batch holds at once.
const MERGED_GROUP_FILES: usize = 4 * COMMIT_GROUP_FILES;
const COMMIT_GROUP_BYTES: u64 = 64 * 1024 * 1024;

/// The whole, verified files of one batch on their way to their final
/// names. Once a group has come together, a thread syncs and names it while
/// the connection's task receives the rest of the batch, so that the client
/// does not wait on the whole batch's commit after its last file. A batch
/// smaller than one group is committed at its end. Either way the thread
/// that commits a file also logs it: the connection's task formats no log
/// lines between the batch's last file and its receipts, where the client
/// waits.
struct BatchCommit {
    store: Store,
    peer: SocketAddr,
    waiting: Vec<(Partial, ToLog)>,
    waiting_bytes: u64,
    committer: Option<Committer>,
}

/// The committing thread of a [`BatchCommit`], and the way to hand it groups.
struct Committer {
    groups: std::sync::mpsc::Sender<Vec<(Partial, ToLog)>>,
    worker: tokio::task::JoinHandle<Vec<io::Result<String>>>,
}

impl BatchCommit {
    fn new(store: Store, peer: SocketAddr) -> BatchCommit {
        BatchCommit {
            store,
            peer,
            waiting: Vec::new(),
            waiting_bytes: 0,
            committer: None,
        }
    }

    /// Adds a whole, verified file.
    fn add(&mut self, partial: Partial, to_log: ToLog) {
        self.waiting_bytes = self.waiting_bytes.saturating_add(to_log.bytes);
        self.waiting.push((partial, to_log));
        if self.waiting.len() < COMMIT_GROUP_FILES && self.waiting_bytes < COMMIT_GROUP_BYTES {
            return;
        }
        let group = std::mem::take(&mut self.waiting);
        self.waiting_bytes = 0;
        let (store, peer) = (&self.store, self.peer);
        let committer = self
            .committer
            .get_or_insert_with(|| Committer::start(store.clone(), peer));
        // A committer that stopped early is reported by `finish`.
        let _ = committer.groups.send(group);
    }

    /// Commits what is still waiting and the groups handed over; returns,
    /// for each file in the order added, the path it was stored under.
    async fn finish(self) -> io::Result<Vec<io::Result<String>>> {
        let BatchCommit {
            store,
            peer,
            waiting,
            committer,
            ..
        } = self;
        let Some(Committer { groups, worker }) = committer else {
            return blocking(move || {
                let mut placing = Placing::new(&store, peer);
                placing.place(waiting);
                Ok(placing.finish())
            })
            .await;
        };
        if !waiting.is_empty() {
            let _ = groups.send(waiting);
        }
        drop(groups);
        worker.await.map_err(io::Error::other)
    }
}

impl Committer {
    fn start(store: Store, peer: SocketAddr) -> Committer {
        let (groups, incoming) = std::sync::mpsc::channel::<Vec<(Partial, ToLog)>>();
        let worker = tokio::task::spawn_blocking(move || {
            let mut placing = Placing::new(&store, peer);
            while let Ok(mut group) = incoming.recv() {
                // Groups that came in during the last sync share the next:
                // where syncing is slow, the groups grow instead of queueing.
                // Not past MERGED_GROUP_FILES: placing a group holds a handle
                // on each of its folders, and a session's descriptors must
                // stay bounded however slow the disk.
                while group.len() + COMMIT_GROUP_FILES <= MERGED_GROUP_FILES
                    && let Ok(more) = incoming.try_recv()
                {
                    group.extend(more);
                }
                placing.place(group);
            }
            placing.finish()
        });
        Committer { groups, worker }
    }
}

/// One batch's commit on the thread that does it, logging each file's
/// outcome as it is known.
struct Placing {
    commit: <Store as Backend>::Commit,
    peer: SocketAddr,
    placed: Vec<io::Result<String>>,
    logged: Vec<ToLog>,
}

impl Placing {
    fn new(store: &Store, peer: SocketAddr) -> Placing {
        Placing {
            commit: store.start_commit(),
            peer,
            placed: Vec::new(),
            logged: Vec::new(),
        }
    }

    fn place(&mut self, group: Vec<(Partial, ToLog)>) {
        let (partials, to_log): (Vec<Partial>, Vec<ToLog>) = group.into_iter().unzip();
        for (result, file) in self.commit.place(partials).into_iter().zip(to_log) {
            let reason;
            let outcome = match &result {
                Ok(stored_as) => Outcome::Stored(stored_as),
                Err(error) => {
                    reason = not_stored(error);
                    Outcome::Failed {
                        reason: &reason,
                        data: file.fate(),
                    }
                }
            };
            log_transfer(
                Protocol::Haul,
                self.peer,
                &file.path_shown,
                Some(file.bytes),
                file.started.elapsed(),
                outcome,
            );
            self.placed.push(result);
            self.logged.push(file);
        }
    }

    /// Syncs the folders that gained names. Should that fail, every file
    /// fails with it, and those already logged as stored are logged again,
    /// as not stored.
    fn finish(self) -> Vec<io::Result<String>> {
        let was_placed: Vec<bool> = self.placed.iter().map(Result::is_ok).collect();
        let finished = self.commit.finish(self.placed);
        for ((result, was_placed), file) in finished.iter().zip(was_placed).zip(&self.logged) {
            if let (Err(error), true) = (result, was_placed) {
                log_transfer(
                    Protocol::Haul,
                    self.peer,
                    &file.path_shown,
                    Some(file.bytes),
                    file.started.elapsed(),
                    Outcome::Failed {
                        reason: &not_stored(error),
                        data: file.fate(),
                    },
                );
            }
        }
        finished
    }
}

/// Why a whole, verified file is not stored: what its receipt's Failed and
/// its log line say.
fn not_stored(error: &io::Error) -> String {
    format!("could not store it: {error}")
}

impl Receiver<'_> {
    /// Receives batches until the sender says goodbye; `first` is the
    /// sender's first message when the caller read it already (a server,
    /// to learn what the session does).
    pub(crate) async fn receive(&mut self, first: Option<Pushed>) -> Result<(), SessionError> {
        let mut offers: Vec<OwnedOffer> = Vec::new();
        let mut first = first;
        loop {
            let message = match first.take() {
                Some(message) => message,
                None => Pushed::from(self.conn.read_message::<SenderMessage>().await?),
            };
            match message {
                Pushed::Offer(offer) => {
                    // Refused before anything is planned: nothing is read
                    // or written for a session that may not send.
                    if let Some(refusal) = self.send_refused {
                        return Err(SessionError::NotAllowed(refusal));
                    }
                    if offers.len() == MAX_BATCH {
                        return Err(SessionError::Violation(format!(
                            "more than {MAX_BATCH} offers in a batch"
                        )));
                    }
                    if let Some(accepts) = &mut self.accepts {
                        untrusted(accepts, &offer.path)?;
                    }
                    offers.push(offer);
                }
                Pushed::BatchEnd => {
                    let batch = self.plan(std::mem::take(&mut offers)).await?;
                    self.run_batch(batch).await?;
                }
                Pushed::Bye => break,
                Pushed::Error(code, message) => {
                    return Err(SessionError::Ended(code, printable(message.as_bytes())));
                }
                Pushed::FileEnd => {
                    return Err(SessionError::Violation("unexpected FileEnd".into()));
                }
            }
        }
        self.finish_directories().await;
        Ok(())
    }

    /// Decides what to do with every offer of a batch, in one trip to a
    /// blocking thread, and sends the answers in order.
    async fn plan(&mut self, offers: Vec<OwnedOffer>) -> Result<Vec<Planned>, SessionError> {
        let store = self.store.clone();
        let policy = self.policy;
        let space = Arc::clone(&self.space);
        let mut created = std::mem::take(&mut self.created);
        let peer = self.peer;
        let (sender, holder, owner) = (self.sender, self.holder.clone(), self.owner);
        let (decided, created) = blocking(move || {
            let claimant = Claimant {
                sender: &sender,
                owner,
                holder: &holder,
                take_over: true,
            };
            // Files of this batch answered Send, by path and size: a second
            // offer of the same is asked for its hash (Compare), so that two
            // identical sources with one name store one copy; it is offered
            // again in a later batch, once the first is stored.
            let mut sending: HashMap<Vec<u8>, u64> = HashMap::new();
            let decided = offers
                .into_iter()
                .map(|offer| {
                    let twin = offer.hash.is_none()
                        && offer
                            .size
                            .is_some_and(|size| sending.get(offer.path.as_slice()) == Some(&size));
                    let decision = if twin {
                        Ok((Decision::Answer(Answer::Compare, None), None))
                    } else {
                        decide(&store, &policy, &space, &mut created, &offer, &claimant)
                    };
                    if let (Ok((Decision::Answer(Answer::Send { .. }, _), _)), Some(size)) =
                        (&decision, offer.size)
                    {
                        sending.entry(offer.path.clone()).or_insert(size);
                    }
                    if created.full_noticed() {
                        warn!(%peer, limit = MAX_CREATED_DIRS, "this session created more directories than are tracked; the rest keep the server's time and mode");
                    }
                    (offer, decision)
                })
                .collect::<Vec<_>>();
            Ok((decided, created))
        })
        .await
        .map_err(SessionError::Storage)?;
        self.created = created;
        // The holders were asked above; one wait for them all, so that a
        // batch of files held by a session that does not let go costs one
        // wait, not one per file.
        let takeover_deadline = tokio::time::Instant::now() + self.policy.takeover_wait;
        let mut batch = Vec::with_capacity(decided.len());
        for (offer, decision) in decided {
            let (offer, decision) = match decision {
                Ok((Decision::TakeOver { key }, _)) => {
                    self.take_over(offer, &key, takeover_deadline).await?
                }
                decision => (offer, decision),
            };
            let mut planned = Planned {
                path_shown: printable(&offer.path),
                size: offer.size,
                mtime: offer.mtime,
                mode: offer.mode,
                partial: None,
                charge: None,
            };
            match decision {
                Ok((Decision::Answer(answer, partial), charge)) => {
                    planned.partial = partial;
                    planned.charge = charge;
                    self.conn.send(&ReceiverMessage::Answer(answer)).await?;
                }
                Ok((Decision::Same(stored_as), _)) => {
                    log_already_there(self.peer, &planned.path_shown, planned.size, &stored_as);
                    self.emit(Event::AlreadyThere {
                        path: &planned.path_shown,
                        stored_as: &stored_as,
                        bytes: planned.size.unwrap_or(0),
                    });
                    self.conn
                        .send(&ReceiverMessage::Answer(Answer::Same {
                            stored_as: &stored_as,
                        }))
                        .await?;
                }
                // Decided again without asking anyone, a held file gets a
                // private one instead; this only keeps the match whole.
                Ok((Decision::TakeOver { .. }, _)) => {
                    let reason =
                        Refusal::new(FailCode::Busy, "another connection is receiving this file");
                    planned = planned.refused(self, reason).await?
                }
                Ok((Decision::Refuse(reason), _)) => {
                    planned = planned.refused(self, reason).await?
                }
                Err(error) => {
                    let reason = Refusal::storage(&error, format!("storage failed: {error}"));
                    planned = planned.refused(self, reason).await?
                }
            }
            batch.push(planned);
        }
        Ok(batch)
    }

    /// Decides again for an offer whose partial data another session of
    /// this sender holds, once that session has let go of it or at
    /// `deadline`; then a claim still held elsewhere gets a private file,
    /// as any second receiver of one file does.
    async fn take_over(
        &mut self,
        offer: OwnedOffer,
        key: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(OwnedOffer, io::Result<(Decision, Option<Charge>)>), SessionError> {
        let path_shown = printable(&offer.path);
        if self.store.wait_released(key, deadline).await {
            info!(peer = %self.peer, name = %path_shown, "took over partial data from a stalled session of the same sender");
        } else {
            warn!(peer = %self.peer, name = %path_shown, "the session holding this file's partial data did not let go in time; receiving it afresh");
        }
        let (store, policy) = (self.store.clone(), self.policy);
        let space = Arc::clone(&self.space);
        let (sender, holder, owner) = (self.sender, self.holder.clone(), self.owner);
        let mut created = std::mem::take(&mut self.created);
        let (offer, decision, created) = blocking(move || {
            let claimant = Claimant {
                sender: &sender,
                owner,
                holder: &holder,
                take_over: false,
            };
            let decision = decide(&store, &policy, &space, &mut created, &offer, &claimant);
            Ok((offer, decision, created))
        })
        .await
        .map_err(SessionError::Storage)?;
        self.created = created;
        Ok((offer, decision))
    }

    async fn run_batch(&mut self, mut batch: Vec<Planned>) -> Result<(), SessionError> {
        self.conn.flush().await?;
        let mut arrived: Vec<Arrived> = Vec::new();
        let mut commit = BatchCommit::new(self.store.clone(), self.peer);
        let mut replies: Vec<(usize, Result<Stored, Refusal>)> = Vec::new();
        // The room of files that arrived stays granted until their commit,
        // which may still make their folders.
        let mut granted: Vec<Charge> = Vec::new();
        // A lone file stays open to be synced by itself; in a batch of many,
        // each is closed once whole and one sync of the file system covers
        // a group of them, so the batch holds no open file per file.
        let keep_open = batch
            .iter()
            .filter(|planned| planned.partial.is_some())
            .count()
            == 1;
        for (index, planned) in batch.iter_mut().enumerate() {
            let (Some(partial), Some(mut charge)) = (planned.partial.take(), planned.charge.take())
            else {
                continue;
            };
            let started = Instant::now();
            match self
                .receive_file(partial, &mut charge, planned, started, keep_open)
                .await?
            {
                Ok((partial, hash, bytes)) => {
                    granted.push(charge);
                    let to_log = ToLog {
                        path_shown: planned.path_shown.clone(),
                        bytes,
                        started,
                        resumable: partial.resume_name().is_some(),
                    };
                    commit.add(partial, to_log);
                    arrived.push(Arrived { index, hash, bytes });
                }
                Err(reason) => {
                    log_transfer(
                        Protocol::Haul,
                        self.peer,
                        &planned.path_shown,
                        planned.size,
                        started.elapsed(),
                        Outcome::Failed {
                            reason: &reason,
                            data: Fate::Deleted,
                        },
                    );
                    replies.push((index, Err(reason)));
                }
            }
        }

        // Logged as committed, on the committing thread.
        let committed = commit.finish().await.map_err(SessionError::Storage)?;
        drop(granted);
        for (file, result) in arrived.into_iter().zip(committed) {
            let reply = match result {
                Ok(stored_as) => Ok(Stored {
                    stored_as,
                    bytes: file.bytes,
                    hash: file.hash,
                }),
                Err(error) => Err(Refusal::storage(&error, not_stored(&error))),
            };
            replies.push((file.index, reply));
        }

        // Receipts and failures go out in the order the files were offered.
        replies.sort_by_key(|(index, _)| *index);
        if let Some(settled) = self.on_settled {
            settled();
        }
        if let Some(events) = self.events.as_mut() {
            for (index, reply) in &replies {
                let path = &batch[*index].path_shown;
                match reply {
                    Ok(stored) => events(Event::Stored {
                        path,
                        stored_as: Some(&stored.stored_as),
                        bytes: stored.bytes,
                        hash: Some(&stored.hash),
                    }),
                    Err(reason) => events(Event::Failed {
                        path,
                        reason: &reason.text,
                    }),
                }
            }
            events(Event::BatchSettled);
        }
        for (_, reply) in &replies {
            let message = match reply {
                Ok(stored) => ReceiverMessage::Receipt {
                    size: stored.bytes,
                    hash: stored.hash,
                    stored_as: &stored.stored_as,
                },
                Err(reason) => ReceiverMessage::Failed {
                    code: reason.code,
                    reason: &reason.text,
                },
            };
            self.conn.send(&message).await?;
        }
        self.conn.flush().await?;
        Ok(())
    }

    /// Receives one file's Data frames and its FileEnd. The outer error ends
    /// the connection; the inner one fails this file alone.
    async fn receive_file(
        &mut self,
        mut partial: Partial,
        charge: &mut Charge,
        planned: &Planned,
        started: Instant,
        keep_open: bool,
    ) -> Result<Result<(Partial, Hash, u64), Refusal>, SessionError> {
        // Known before the file is made, so that it is made with its mode.
        partial.set_metadata(metadata_of(planned.mtime, planned.mode));
        self.emit(Event::Started {
            path: &planned.path_shown,
            size: planned.size,
            offset: partial.offset(),
        });
        let small = partial.offset() == 0 && planned.size.is_some_and(|size| size <= SMALL_FILE);
        let (mut partial, hasher, writer) = if small {
            // Made right here: a hand-off to a file thread would cost more.
            let writer = partial.data_file().map_err(storage_error)?;
            (partial, Box::default(), writer)
        } else {
            blocking(move || {
                let mut hasher = Box::<blake3::Hasher>::default();
                partial.hash_held_bytes(&mut hasher)?;
                let writer = partial.data_file()?;
                Ok((partial, hasher, writer))
            })
            .await
            .map_err(storage_error)?
        };
        let mut sink = FileSink::for_len(writer, Some(hasher), planned.size);
        // A newer session of this sender that wants a file this one holds
        // ends this one here: what was received is written out below and
        // kept, and the claim goes with the partial.
        let holder = self.holder.clone();
        let frames = tokio::select! {
            frames = self.receive_frames(&mut sink, charge, planned, partial.offset()) => frames,
            () = holder.asked() => Err(SessionError::TakenOver),
        };
        // Every queued write lands before anything else happens to the
        // partial file, so that a resumed transfer measures it whole.
        let written = sink.finish().await;
        if written.is_ok() {
            // Every byte written is in the file system's count now, so
            // none stays held twice while the file waits for its commit.
            charge.settled();
        }
        let (claimed_hash, received, hasher) = match (frames, written) {
            (Ok((claimed, received)), Ok(Some(hasher))) => (claimed, received, hasher),
            (Err(error @ (SessionError::Storage(_) | SessionError::NoSpace)), _) => {
                partial.discard();
                self.log_cut(planned, started, &error, Fate::Deleted);
                return Err(error);
            }
            (Err(error), _) => {
                let held = partial.len();
                // Nothing arrived, nothing held before: nothing to resume,
                // and no empty file left to list at every session's end.
                if matches!(held, Ok(0)) {
                    partial.discard();
                    self.log_cut(planned, started, &error, Fate::NoneReceived);
                    return Err(error);
                }
                // Kept, to be resumed.
                self.space.note_held(&partial, self.owner);
                self.left_partial = true;
                let fate = match held {
                    Ok(bytes) if partial.resume_name().is_some() => Fate::Kept {
                        bytes,
                        name: &planned.path_shown,
                    },
                    _ => Fate::Deleted,
                };
                self.log_cut(planned, started, &error, fate);
                return Err(error);
            }
            (Ok(_), Err(error)) => {
                partial.discard();
                let error = storage_error(error);
                self.log_cut(planned, started, &error, Fate::Deleted);
                return Err(error);
            }
            (Ok(_), Ok(None)) => unreachable!("the sink was given a hasher"),
        };
        if let Some(size) = planned.size
            && received != size
        {
            partial.discard();
            return Ok(Err(Refusal::new(
                FailCode::Incomplete,
                format!("received {received} of {size} bytes"),
            )));
        }
        let hash: Hash = *hasher.finalize().as_bytes();
        if hash != claimed_hash {
            partial.discard();
            let reason = if claimed_hash == haul::withdrawn(&hash) {
                "the sender's file changed while it was being sent; nothing was stored"
            } else {
                "BLAKE3 mismatch: the data was damaged on the way; nothing was stored"
            };
            return Ok(Err(Refusal::new(FailCode::HashMismatch, reason)));
        }
        if received >= CACHE_ON_COMMIT {
            partial.set_hash(blake3::Hash::from_bytes(hash));
        }
        if !keep_open && let Err(error) = partial.close() {
            partial.discard();
            return Ok(Err(Refusal::storage(&error, not_stored(&error))));
        }
        Ok(Ok((partial, hash, received)))
    }

    /// Reports an event to a client receiving; nothing on the server.
    fn emit(&mut self, event: Event<'_>) {
        if let Some(events) = self.events.as_mut() {
            events(event);
        }
    }

    /// Logs a file whose transfer ended with its session.
    fn log_cut(&self, planned: &Planned, started: Instant, error: &SessionError, data: Fate<'_>) {
        log_transfer(
            Protocol::Haul,
            self.peer,
            &planned.path_shown,
            planned.size,
            started.elapsed(),
            Outcome::Failed {
                reason: error,
                data,
            },
        );
    }

    /// Reads one file's Data frames into `sink`, up to its FileEnd;
    /// returns the hash the client claims and the bytes now held in all.
    async fn receive_frames(
        &mut self,
        sink: &mut FileSink,
        charge: &mut Charge,
        planned: &Planned,
        offset: u64,
    ) -> Result<(Hash, u64), SessionError> {
        let mut received = offset;
        // A large file's frames are read without refilling the session's
        // buffer; a small file's come out of it, several per read.
        let direct = planned.size.is_none_or(|size| size > SMALL_FILE);
        loop {
            let header = if direct {
                self.conn.read_data_header().await?
            } else {
                self.conn.read_header().await?
            };
            let len = match header.kind {
                Kind::Data => u64::from(header.len),
                Kind::DataZstd => {
                    let compressed = self.conn.read_payload(header).await?;
                    let Some(zstd) = self.zstd.as_mut() else {
                        return Err(SessionError::Violation(
                            "compressed data without compression".into(),
                        ));
                    };
                    zstd.plain.clear();
                    zstd.decompressor
                        .decompress_to_buffer(compressed, &mut zstd.plain)
                        .map_err(|error| {
                            SessionError::Violation(format!("bad compressed data: {error}"))
                        })?;
                    zstd.plain.len() as u64
                }
                Kind::FileEnd => {
                    // A FileEnd frame decodes to FileEnd or not at all.
                    return match self.conn.read_message_after(header).await? {
                        SenderMessage::FileEnd { hash } => Ok((hash, received)),
                        _ => Err(SessionError::Violation("a FileEnd that is not one".into())),
                    };
                }
                other => {
                    return Err(SessionError::Violation(format!(
                        "expected file data, got {other:?}"
                    )));
                }
            };
            check_stream_limit(&self.policy, received + len)?;
            if planned.size.is_some_and(|size| received + len > size) {
                return Err(SessionError::Violation(format!(
                    "more bytes than the {} offered for {}",
                    planned.size.unwrap_or(0),
                    planned.path_shown
                )));
            }
            // Counted before the write, decompressed.
            if let Some(growth) = charge.beyond(len) {
                charge.landed(sink.landed());
                let space = Arc::clone(&self.space);
                let granted = blocking(move || Ok(space.grow(growth)))
                    .await
                    .map_err(SessionError::Storage)?
                    .map_err(|_| SessionError::NoSpace)?;
                charge.absorb(granted);
            }
            charge.spend(len);
            if let Some(events) = self.events.as_mut() {
                events(Event::Progress {
                    bytes: len,
                    wire: u64::from(header.len),
                });
            }
            if header.kind == Kind::DataZstd {
                let plain = self.zstd.as_ref().map_or(&[][..], |zstd| &zstd.plain[..]);
                receive_slice(sink, plain).await.map_err(storage_error)?;
            } else {
                self.conn
                    .read_data_into(sink, len, direct)
                    .await
                    .map_err(|error| match error {
                        PumpError::EarlyEof { moved, .. } => SessionError::CutInFile {
                            at: received + moved,
                            size: planned.size,
                        },
                        other => pump_error(other),
                    })?;
            }
            received += len;
        }
    }

    pub(crate) async fn finish_directories(&mut self) {
        // Deepest first, so that setting a child's time does not disturb its
        // parent's afterwards.
        let mut directories: Vec<(Vec<u8>, Metadata)> =
            std::mem::take(&mut self.created).dirs.into_iter().collect();
        directories.sort_by_key(|(path, _)| {
            std::cmp::Reverse(path.iter().filter(|&&byte| byte == b'/').count())
        });
        let store = self.store.clone();
        let peer = self.peer;
        let _ = blocking(move || {
            for (raw, metadata) in directories {
                let Ok(path) = RelPath::parse(&raw) else {
                    continue;
                };
                if let Err(error) = store.set_dir_metadata(&path, metadata) {
                    warn!(%peer, %path, %error, "could not set directory time or mode");
                }
            }
            Ok(())
        })
        .await;
    }
}

impl Planned {
    async fn refused(
        self,
        session: &mut Receiver<'_>,
        reason: Refusal,
    ) -> Result<Planned, ConnectionError> {
        session.emit(Event::Failed {
            path: &self.path_shown,
            reason: &format!("refused: {reason}"),
        });
        log_transfer(
            Protocol::Haul,
            session.peer,
            &self.path_shown,
            self.size,
            Duration::ZERO,
            Outcome::Failed {
                reason: &reason,
                data: Fate::NoneReceived,
            },
        );
        session
            .conn
            .send(&ReceiverMessage::Answer(Answer::Refused {
                code: reason.code,
                reason: &reason.text,
            }))
            .await?;
        Ok(self)
    }
}

enum Decision {
    Answer(Answer<'static>, Option<Partial>),
    /// The file offered with its hash is stored, identical, under this path.
    Same(String),
    Refuse(Refusal),
    /// Another session of this sender holds the file's partial data and
    /// was asked to let go: decide again once it has.
    TakeOver {
        key: String,
    },
}

/// Who claims partial data: the sender whose identity names it, and the
/// session that would hold it.
struct Claimant<'a> {
    sender: &'a SenderId,
    /// Whose grants of space the claim's files are.
    owner: Sender,
    holder: &'a Holder,
    /// Whether another session holding the data is asked to let go (the
    /// first decision), or the data is received privately (after the wait).
    take_over: bool,
}

/// Most directories whose creation one session remembers (their time and
/// mode, applied at goodbye), and most bytes of their paths: what a
/// session's directory offers can make the server hold, across batches.
/// Directories created past either bound are still made; they keep the
/// time and mode the server gave them.
pub const MAX_CREATED_DIRS: usize = 65_536;
pub const MAX_CREATED_DIR_BYTES: usize = 16 * 1024 * 1024;

/// What a session's own directories cost to remember, counted with the
/// map's overhead, per entry.
const CREATED_DIR_OVERHEAD: usize = 64;

/// The directories a session created, as offered, with the time and mode
/// each gets at goodbye. Directories that were there already are not in
/// it: they are someone else's, and keep their time and mode.
///
/// Nothing can be under a name in one of them unless someone put it there
/// since, so a file offered in one skips the check for a file already
/// under its name (a failed lookup per file for a fresh folder of small
/// files). A file that did land there since is still never replaced: the
/// move into place refuses to.
#[derive(Default)]
pub(crate) struct CreatedDirs {
    dirs: HashMap<Vec<u8>, Metadata>,
    bytes: usize,
    /// Set when an insert was refused for the bounds.
    full: bool,
    /// Set once that was logged.
    full_logged: bool,
}

impl CreatedDirs {
    fn insert(&mut self, path: &[u8], metadata: Metadata) {
        let cost = path.len() + CREATED_DIR_OVERHEAD;
        if self.dirs.len() >= MAX_CREATED_DIRS || self.bytes + cost > MAX_CREATED_DIR_BYTES {
            self.full = true;
            return;
        }
        if self.dirs.insert(path.to_vec(), metadata).is_none() {
            self.bytes += cost;
        }
    }

    fn contains(&self, path: &[u8]) -> bool {
        self.dirs.contains_key(path)
    }

    /// True once, the first time the bounds turned a directory away.
    fn full_noticed(&mut self) -> bool {
        let first = self.full && !self.full_logged;
        self.full_logged |= self.full;
        first
    }
}

/// A sender's message outside a file's data, owned: what the receiver
/// acts on between files.
pub(crate) enum Pushed {
    Offer(OwnedOffer),
    BatchEnd,
    Bye,
    Error(FailCode, String),
    /// Only ever out of place here: a FileEnd ends a file's data.
    FileEnd,
}

impl From<SenderMessage<'_>> for Pushed {
    fn from(message: SenderMessage<'_>) -> Pushed {
        match message {
            SenderMessage::Offer(offer) => Pushed::Offer(OwnedOffer::from(offer)),
            SenderMessage::BatchEnd => Pushed::BatchEnd,
            SenderMessage::Bye => Pushed::Bye,
            SenderMessage::Error { code, message } => Pushed::Error(code, message.to_owned()),
            SenderMessage::FileEnd { .. } => Pushed::FileEnd,
        }
    }
}

/// An offer, owned, so that a whole batch can be judged on one thread.
pub(crate) struct OwnedOffer {
    kind: EntryKind,
    size: Option<u64>,
    hash: Option<Hash>,
    mtime: Mtime,
    mode: u32,
    path: Vec<u8>,
}

impl From<Offer<'_>> for OwnedOffer {
    fn from(offer: Offer<'_>) -> OwnedOffer {
        OwnedOffer {
            kind: offer.kind,
            size: offer.size,
            hash: offer.hash,
            mtime: offer.mtime,
            mode: offer.mode,
            path: offer.path.to_vec(),
        }
    }
}

/// What to answer one offer: path rules, what the inbox holds, the conflict
/// policy, then size and space limits for what is still to come.
fn decide(
    store: &Store,
    policy: &Policy,
    space: &Arc<SpaceLedger>,
    created: &mut CreatedDirs,
    offer: &OwnedOffer,
    claimant: &Claimant<'_>,
) -> io::Result<(Decision, Option<Charge>)> {
    let path = match RelPath::parse(&offer.path) {
        Ok(path) => path,
        Err(reason) => {
            let refusal = Refusal::new(FailCode::NameRefused, format!("refused path: {reason}"));
            return Ok((Decision::Refuse(refusal), None));
        }
    };
    // Components, each a directory that may have to be made.
    let depth = offer.path.iter().filter(|&&byte| byte == b'/').count() as u64 + 1;
    let decision = match offer.kind {
        EntryKind::Directory => {
            let (decision, made) = decide_directory(store, space, &path, depth)?;
            if made {
                created.insert(&offer.path, metadata_of(offer.mtime, offer.mode));
            }
            decision
        }
        EntryKind::File => {
            let in_fresh_directory = offer
                .path
                .iter()
                .rposition(|&byte| byte == b'/')
                .is_some_and(|slash| created.contains(&offer.path[..slash]));
            decide_file(
                store,
                path,
                offer,
                policy.on_conflict,
                in_fresh_directory,
                claimant,
            )?
        }
    };
    let Decision::Answer(Answer::Send { offset }, Some(partial)) = decision else {
        return Ok((decision, None));
    };
    // A stream is granted as it grows; a file, whole, with room for the
    // folders its commit may make.
    let needed = offer.size.map_or(0, |size| size.saturating_sub(offset));
    match space.reserve_file(claimant.owner, needed, depth - 1, offset == 0) {
        Ok(charge) => Ok((
            Decision::Answer(Answer::Send { offset }, Some(partial)),
            Some(charge),
        )),
        Err(reason) => {
            if partial.offset() == 0 {
                // Nothing was held for this offer: nothing to keep.
                partial.discard();
            }
            Ok((Decision::Refuse(reason), None))
        }
    }
}

/// The reason an entry is refused when a stored file (or a link) stands
/// where one of the folders of its path should be.
const FILE_IN_A_FOLDERS_PLACE: &str = "a file or link is in the way of one of its folders";

/// What to answer a directory's offer, and whether this created it.
fn decide_directory(
    store: &Store,
    space: &Arc<SpaceLedger>,
    path: &RelPath,
    depth: u64,
) -> io::Result<(Decision, bool)> {
    let existing = match store.existing(path) {
        Err(error) if error.kind() == io::ErrorKind::NotADirectory => {
            return Ok((
                Decision::Refuse(Refusal::new(FailCode::Conflict, FILE_IN_A_FOLDERS_PLACE)),
                false,
            ));
        }
        existing => existing?,
    };
    match existing {
        Existing::Directory => Ok((Decision::Answer(Answer::Created, None), false)),
        Existing::Nothing => {
            let _granted = match space.reserve_directory(depth) {
                Ok(granted) => granted,
                Err(reason) => return Ok((Decision::Refuse(reason), false)),
            };
            store.create_dir(path)?;
            Ok((Decision::Answer(Answer::Created, None), true))
        }
        Existing::File { .. } | Existing::Other => Ok((
            Decision::Refuse(Refusal::new(
                FailCode::Conflict,
                "a file or link is in the way",
            )),
            false,
        )),
    }
}

/// What to answer a file's offer. A file of the offered size under its name
/// may be the sender's own, sent before: the sender is asked for its hash
/// (Compare) and told "same" only if the hash it then offers is the stored
/// file's. So a sender learns nothing of a stored file's content that it
/// did not show it holds (`docs/SECURITY.md`).
fn decide_file(
    store: &Store,
    target: RelPath,
    offer: &OwnedOffer,
    on_conflict: OnConflict,
    in_fresh_directory: bool,
    claimant: &Claimant<'_>,
) -> io::Result<Decision> {
    let (size, hash) = (offer.size, offer.hash);
    let existing = if in_fresh_directory {
        Existing::Nothing
    } else {
        match store.existing(&target) {
            Err(error) if error.kind() == io::ErrorKind::NotADirectory => {
                return Ok(Decision::Refuse(Refusal::new(
                    FailCode::Conflict,
                    FILE_IN_A_FOLDERS_PLACE,
                )));
            }
            existing => existing?,
        }
    };
    if let Existing::Directory | Existing::Other = existing {
        return Ok(Decision::Refuse(Refusal::new(
            FailCode::Conflict,
            "a directory or link is in the way",
        )));
    }
    if let (Existing::File { size: held }, Some(size)) = (existing, size) {
        // Where the sender's file may be from an earlier send: under its
        // name, or, when the name was taken by another file, under one of
        // its numbered names.
        if let Some(decision) = answer_for_copy(store, &target, held, size, hash)? {
            return Ok(decision);
        }
        if on_conflict == OnConflict::Rename {
            for (copy, held) in store.numbered_copies(&target, MAX_COMPARED_COPIES)? {
                if let Some(decision) = answer_for_copy(store, &copy, held, size, hash)? {
                    return Ok(decision);
                }
            }
        }
    }
    if let Existing::File { .. } = existing
        && on_conflict == OnConflict::Refuse
    {
        return Ok(Decision::Refuse(Refusal::new(
            FailCode::Conflict,
            "a different file already exists under this name",
        )));
    }
    let partial = match size {
        // A stream cannot be identified before it ends, so it cannot resume.
        None => store.begin(target),
        Some(size) => {
            let key = resume_key(claimant.sender, &target, size, offer.mtime);
            let (holder, take_over) = (claimant.holder, claimant.take_over);
            let Some(partial) =
                store.begin_resumable_for(target.clone(), &key, holder, take_over)?
            else {
                return Ok(Decision::TakeOver { key });
            };
            if partial.offset() > size {
                partial.discard();
                store.begin_resumable(target, &key)?
            } else {
                partial
            }
        }
    };
    let offset = partial.offset();
    Ok(Decision::Answer(Answer::Send { offset }, Some(partial)))
}

/// What to answer an offer of `size` bytes with `hash` (if it came with
/// one) for the stored file `copy` of `held` bytes: Compare when the sizes
/// match and no hash came, Same when the hash is the copy's; `None` when
/// this copy is not the sender's file.
fn answer_for_copy(
    store: &Store,
    copy: &RelPath,
    held: u64,
    size: u64,
    hash: Option<Hash>,
) -> io::Result<Option<Decision>> {
    if held != size {
        return Ok(None);
    }
    let Some(offered) = hash else {
        return Ok(Some(Decision::Answer(Answer::Compare, None)));
    };
    // `blake3::Hash` compares in constant time.
    let same = store.hash_existing(copy)? == blake3::Hash::from_bytes(offered);
    Ok(same.then(|| Decision::Same(copy.to_string())))
}

/// Numbered names (`name (1).ext` ...) looked at, besides the name itself,
/// for an earlier copy of an offered file: a re-send of a file that was
/// stored under a numbered name is found there, at the cost of at most this
/// many metadata look-ups per offer of a taken name (and, for a hashed
/// offer, a hash of each copy of the same size, cached).
pub const MAX_COMPARED_COPIES: u64 = 16;

/// Names the partial data of one version of one file from one sender: the
/// same sender, path, size and modification time resume; anything else
/// starts afresh. Another sender offering the same path, size and time
/// names other data, so it can neither continue nor replace this one.
fn resume_key(sender: &SenderId, target: &RelPath, size: u64, mtime: Mtime) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(sender);
    hasher.update(target.to_string().as_bytes());
    hasher.update(&size.to_be_bytes());
    hasher.update(&mtime.secs.to_be_bytes());
    hasher.update(&mtime.nanos.to_be_bytes());
    hasher.finalize().to_hex().to_string()
}

fn metadata_of(mtime: Mtime, mode: u32) -> Metadata {
    let since_epoch = Duration::new(mtime.secs.unsigned_abs(), mtime.nanos);
    let modified = if mtime.secs >= 0 {
        UNIX_EPOCH.checked_add(since_epoch)
    } else {
        UNIX_EPOCH.checked_sub(since_epoch)
    };
    Metadata {
        modified,
        mode: Some(mode),
    }
}

/// A stream of unknown size is held to the size limit as it grows.
fn check_stream_limit(policy: &Policy, total: u64) -> Result<(), SessionError> {
    match policy.max_file_size {
        Some(max) if total > max => Err(SessionError::StreamTooLarge { max }),
        _ => Ok(()),
    }
}

fn pump_error(error: PumpError) -> SessionError {
    match error {
        PumpError::Write { source, .. } => storage_error(source),
        other => SessionError::Pump(other),
    }
}

fn storage_error(error: io::Error) -> SessionError {
    if is_out_of_space(&error) {
        SessionError::NoSpace
    } else {
        SessionError::Storage(error)
    }
}

/// Judges an offer's path for a client receiving what it asked for: the
/// store's name rules, and a first component among `accepts`, which is
/// marked as offered.
fn untrusted(accepts: &mut [(String, bool)], path: &[u8]) -> Result<(), SessionError> {
    let shown = printable(path);
    let parsed = RelPath::parse(path).map_err(|error| {
        SessionError::Untrusted(format!(
            "the server offered {shown}, a name that breaks the name rules ({error}); nothing of it was written"
        ))
    })?;
    let top = parsed.components().next();
    match accepts
        .iter_mut()
        .find(|(accepted, _)| Some(accepted.as_str()) == top)
    {
        Some((_, offered)) => {
            *offered = true;
            Ok(())
        }
        None => Err(SessionError::Untrusted(format!(
            "the server offered {shown}, which was not asked for; nothing of it was written"
        ))),
    }
}

/// How a client receives what it asked a server for.
pub struct GetSetup {
    /// The local directory things land in (`--into`), as a store: the
    /// same name rules, conflict policy, atomic placement and resume as
    /// the server's.
    pub store: Store,
    pub policy: Policy,
    /// Names partial data in the store's hidden area, so that a re-run
    /// resumes it.
    pub sender: SenderId,
    /// Whether the server was granted compression.
    pub zstd: bool,
    /// The last components of the paths asked for.
    pub accepts: Vec<String>,
}

/// Receives, as the receiver of a session, what the server sends after a
/// Get: the code `haul serve` receives with, reporting to `on_event`. An
/// `Err` says why the session ended early: with the code of the server's
/// Error frame when the server ended it, and its words.
pub async fn receive_get(
    conn: Connection,
    peer: SocketAddr,
    setup: GetSetup,
    on_event: &mut (dyn FnMut(Event<'_>) + Send),
) -> Result<(), (Option<FailCode>, String)> {
    let space = SpaceLedger::new(setup.store.clone(), &setup.policy);
    let zstd = if setup.zstd {
        Some(Zstd {
            decompressor: zstd::bulk::Decompressor::new()
                .map_err(|error| (None, error.to_string()))?,
            plain: Vec::with_capacity(MAX_DATA_LEN as usize),
        })
    } else {
        None
    };
    let mut session = Receiver {
        conn,
        peer,
        store: setup.store,
        space,
        owner: sender_of(peer),
        left_partial: false,
        policy: setup.policy,
        created: CreatedDirs::default(),
        zstd,
        sender: setup.sender,
        holder: Holder::new(),
        send_refused: None,
        accepts: Some(
            setup
                .accepts
                .into_iter()
                .map(|name| (name, false))
                .collect(),
        ),
        on_settled: None,
        events: Some(on_event),
    };
    let outcome = session.receive(None).await;
    if outcome.is_ok() {
        let _ = session.conn.shutdown().await;
        // A server that says goodbye without a path asked for, and without
        // saying it is missing, has not given what was asked: no success.
        let missing = session
            .accepts
            .iter()
            .flatten()
            .find(|(_, offered)| !offered);
        return match missing {
            Some((name, _)) => Err((
                None,
                format!(
                    "the server sent nothing for {}, and did not say it is missing; the get is not complete",
                    printable(name.as_bytes())
                ),
            )),
            None => Ok(()),
        };
    }
    let (code, reason) = match outcome {
        Err(SessionError::Ended(code, reason)) => (Some(code), reason),
        Err(SessionError::Vanished) => (
            None,
            "the server closed the connection before the get was complete".to_owned(),
        ),
        // Its words are the receiver's on a server; here the other side
        // is the server, and the fault is its.
        Err(
            error @ (SessionError::Decode(_)
            | SessionError::Violation(_)
            | SessionError::Connection(ConnectionError::DataOutsideFile)),
        ) => (None, format!("the server broke the protocol: {error}")),
        Err(other) => (None, other.to_string()),
        Ok(()) => (None, String::new()),
    };
    let _ = session
        .conn
        .send(&ReceiverMessage::Error {
            code: FailCode::Other,
            message: &reason,
        })
        .await;
    let _ = session.conn.flush().await;
    let _ = session.conn.shutdown().await;
    Err((code, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ServerConfig;

    fn offer(kind: EntryKind, path: &str, size: Option<u64>) -> OwnedOffer {
        OwnedOffer {
            kind,
            size,
            hash: None,
            mtime: Mtime { secs: 0, nanos: 0 },
            mode: 0o644,
            path: path.as_bytes().to_vec(),
        }
    }

    /// A directory the session created skips the check for a file already
    /// under the name; one it found keeps it. Either way nothing is
    /// replaced: a file that appeared in the fresh directory after it was
    /// made stays, and the sender's lands beside it.
    #[test]
    fn files_in_a_fresh_directory_skip_the_lookup_and_still_replace_nothing() {
        let inbox = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            reserve: 0,
            ..ServerConfig::new(inbox.path().to_path_buf())
        };
        let store = Store::open(inbox.path(), OnConflict::Rename).unwrap();
        let space = SpaceLedger::new(store.clone(), &config.policy());
        let mut fresh = CreatedDirs::default();
        let mut decide_one = |offer: OwnedOffer| {
            let claimant = Claimant {
                sender: &[7; 16],
                owner: sender_of(([127, 0, 0, 1], 9).into()),
                holder: &Holder::new(),
                take_over: true,
            };
            decide(
                &store,
                &config.policy(),
                &space,
                &mut fresh,
                &offer,
                &claimant,
            )
            .unwrap()
            .0
        };
        let theirs = b"someone else's";
        let ours = b"the sender's!!";

        std::fs::create_dir(inbox.path().join("found")).unwrap();
        std::fs::write(inbox.path().join("found/x"), theirs).unwrap();
        decide_one(offer(EntryKind::Directory, "found", None));
        let decision = decide_one(offer(EntryKind::File, "found/x", Some(14)));
        assert!(
            matches!(decision, Decision::Answer(Answer::Compare, None)),
            "a directory that was there is checked, and an equal-sized file compared"
        );

        decide_one(offer(EntryKind::Directory, "made", None));
        std::fs::write(inbox.path().join("made/x"), theirs).unwrap();
        let decision = decide_one(offer(EntryKind::File, "made/x", Some(14)));
        let Decision::Answer(Answer::Send { offset: 0 }, Some(mut partial)) = decision else {
            panic!("a file in a directory made by this session is asked for whole");
        };
        partial.append(ours).unwrap();
        assert_eq!(partial.commit().unwrap(), "made/x (1)");
        assert_eq!(std::fs::read(inbox.path().join("made/x")).unwrap(), theirs);
        assert_eq!(
            std::fs::read(inbox.path().join("made/x (1)")).unwrap(),
            ours
        );
        assert!(
            fresh.contains(b"made") && !fresh.contains(b"found"),
            "only the directory this session made is its own"
        );
    }

    /// Only a hash the sender offers decides "same": a bare offer of the
    /// name and size is asked for it, a wrong one is a different file.
    #[test]
    fn a_stored_file_is_the_same_only_for_its_own_hash() {
        let inbox = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            reserve: 0,
            ..ServerConfig::new(inbox.path().to_path_buf())
        };
        let store = Store::open(inbox.path(), OnConflict::Rename).unwrap();
        std::fs::write(inbox.path().join("x"), b"PIN=4821").unwrap();
        let space = SpaceLedger::new(store.clone(), &config.policy());
        let mut fresh = CreatedDirs::default();
        let mut decide_one = |hash: Option<&[u8]>| {
            let offer = OwnedOffer {
                hash: hash.map(|content| *blake3::hash(content).as_bytes()),
                ..offer(EntryKind::File, "x", Some(8))
            };
            let claimant = Claimant {
                sender: &[7; 16],
                owner: sender_of(([127, 0, 0, 1], 9).into()),
                holder: &Holder::new(),
                take_over: true,
            };
            decide(
                &store,
                &config.policy(),
                &space,
                &mut fresh,
                &offer,
                &claimant,
            )
            .unwrap()
            .0
        };
        assert!(matches!(
            decide_one(None),
            Decision::Answer(Answer::Compare, None)
        ));
        assert!(
            matches!(decide_one(Some(b"PIN=4821")), Decision::Same(stored_as) if stored_as == "x")
        );
        assert!(matches!(
            decide_one(Some(b"PIN=0000")),
            Decision::Answer(Answer::Send { offset: 0 }, Some(_))
        ));
    }
}
