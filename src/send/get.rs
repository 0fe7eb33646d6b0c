//! `haul get`: the client of a get session. It opens a session as a send
//! does, asks for paths with a `Get`, and then receives what the server
//! sends with the code `haul serve` receives with ([`receive_get`]), into
//! a local store: the same name rules, conflict policy, atomic placement
//! and resume. Or, with `--into -`, it writes one file to standard output.
//!
//! Nothing the server says is trusted: every offered path must pass the
//! store's name rules and begin with the last component of a path asked
//! for, or the session ends before anything of it is written; and nothing
//! is written through a symlink in the directory (the store opens every
//! folder without following links).

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::haul::{open_get_session, server_error};
use super::{Event, SendError, SendOptions, Summary};
use crate::connection::Connection;
use crate::engine::receiver::{GetSetup, Policy, receive_get};
use crate::protocol::haul::{
    Answer, EntryKind, FailCode, GetPaths, Hash, Kind, MAX_GET_PATHS, MAX_PATH_LEN,
    ReceiverMessage, Request, SenderMessage,
};
use crate::storage::{HIDDEN_AREA, OnConflict, RelPath, Store};
use crate::text::printable;

/// Where what is got goes.
#[derive(Debug, Clone)]
pub enum Into {
    /// Into this directory, each path under its last component.
    Dir(PathBuf),
    /// One file's bytes, to standard output.
    Stdout,
}

/// The paths to ask for, judged as the server will judge them, and the
/// names they land under (their last components), which must differ.
pub fn requested(paths: &[String]) -> Result<Vec<RelPath>, String> {
    if paths.len() > MAX_GET_PATHS {
        return Err(format!(
            "{} paths were given; one get asks for at most {MAX_GET_PATHS}",
            paths.len()
        ));
    }
    let mut judged: Vec<RelPath> = Vec::with_capacity(paths.len());
    for path in paths {
        let trimmed = path.trim_matches('/');
        if trimmed.is_empty() || trimmed == "." {
            return Err(
                "name a file or folder on the server to get; haul ls shows what is there".into(),
            );
        }
        if trimmed.len() > MAX_PATH_LEN {
            return Err(format!(
                "the path is {} bytes long; at most {MAX_PATH_LEN} are allowed",
                trimmed.len()
            ));
        }
        let parsed = RelPath::parse(trimmed.as_bytes())
            .map_err(|error| format!("cannot get {}: {error}", printable(path.as_bytes())))?;
        let name = last_name(&parsed);
        if judged.iter().any(|other| last_name(other) == name) {
            return Err(format!(
                "two of the paths end in {}, and both would land under that name; get them one at a time, into different folders",
                printable(name.as_bytes())
            ));
        }
        judged.push(parsed);
    }
    Ok(judged)
}

fn last_name(path: &RelPath) -> &str {
    path.components().next_back().unwrap_or("")
}

/// Gets `paths` from the server at `from` into `into`, reporting each
/// file to `on_event` as `haul send` does (`stored_as` is the local path,
/// under the directory). An `Err` means the session itself failed.
pub async fn get_haul(
    from: &str,
    paths: &[RelPath],
    into: &Into,
    on_conflict: OnConflict,
    options: &SendOptions,
    on_event: impl FnMut(Event<'_>) + Send,
) -> Result<Summary, SendError> {
    // A directory made for this get is removed again if the get fails
    // with nothing in it.
    let made = matches!(into, Into::Dir(dir) if !dir.exists());
    let outcome = get_into(from, paths, into, on_conflict, options, on_event).await;
    if let Into::Dir(dir) = into {
        remove_empty_hidden_area(dir);
        if made && outcome.is_err() {
            let _ = std::fs::remove_dir(dir);
        }
    }
    outcome
}

async fn get_into(
    from: &str,
    paths: &[RelPath],
    into: &Into,
    on_conflict: OnConflict,
    options: &SendOptions,
    mut on_event: impl FnMut(Event<'_>) + Send,
) -> Result<Summary, SendError> {
    // The directory is opened first: a get that cannot write asks for
    // nothing.
    let store = match into {
        Into::Dir(dir) => Some(Store::open(dir, on_conflict).map_err(|source| {
            SendError::Get(format!("cannot write into {}: {source}", dir.display()))
        })?),
        Into::Stdout => None,
    };
    let (mut conn, peer, zstd) = open_get_session(from, options).await?;
    let shown: Vec<String> = paths.iter().map(RelPath::to_string).collect();
    let shown: Vec<&str> = shown.iter().map(String::as_str).collect();
    let mut payload = Vec::new();
    let Some(request) = GetPaths::build(&shown, &mut payload) else {
        return Err(SendError::Get(
            "the paths do not fit in one request; get fewer at a time".into(),
        ));
    };
    conn.send(&Request::Get(request)).await?;
    conn.flush().await?;
    let Some(store) = store else {
        return to_stdout(conn, &mut on_event).await;
    };
    let setup = GetSetup {
        store,
        // The user's own disk: fill it if they ask to, and no more.
        policy: Policy {
            on_conflict,
            max_file_size: None,
            reserve: 0,
            reserve_inodes: 0,
            max_partial: crate::config::MAX_PARTIAL.0,
            takeover_wait: std::time::Duration::from_secs(1),
        },
        sender: options.sender,
        zstd,
        accepts: paths
            .iter()
            .map(|path| last_name(path).to_owned())
            .collect(),
    };
    let mut summary = Summary::default();
    let mut counting = |event: Event<'_>| {
        count(&mut summary, &event);
        on_event(event);
    };
    let outcome = receive_get(conn, peer, setup, &mut counting).await;
    match outcome {
        Ok(()) => Ok(summary),
        Err((Some(code), message)) => Err(match code {
            FailCode::NotFound | FailCode::NameRefused => SendError::NotThere(message),
            code => server_error(code, &message, SendError::Server),
        }),
        Err((None, message)) => Err(SendError::Get(message)),
    }
}

/// The counts of the closing line, from the events.
fn count(summary: &mut Summary, event: &Event<'_>) {
    match event {
        Event::Stored { .. } => summary.stored += 1,
        Event::AlreadyThere { .. } => summary.already_there += 1,
        Event::Failed { .. } => summary.failed += 1,
        Event::Skipped { .. } => summary.skipped += 1,
        Event::Progress { bytes, wire } => {
            summary.bytes_sent += bytes;
            summary.wire_bytes += wire;
        }
        Event::Started { .. } | Event::BatchSettled => {}
    }
}

/// The store keeps partial data in a hidden folder of the directory; one
/// left empty is removed, so that a get leaves only what it got.
fn remove_empty_hidden_area(dir: &Path) {
    let _ = std::fs::remove_dir(dir.join(HIDDEN_AREA));
}

/// Receives one file and writes its bytes to standard output as they
/// come; its hash is checked at its end, and a mismatch fails the get
/// (the bytes already written cannot be taken back: a script must look at
/// the exit code).
async fn to_stdout(
    mut conn: Connection,
    on_event: &mut (impl FnMut(Event<'_>) + Send),
) -> Result<Summary, SendError> {
    let mut summary = Summary::default();
    let offered = match conn.read_message().await? {
        SenderMessage::Offer(offer) => Ok((printable(offer.path), offer.kind, offer.size)),
        other => Err(unexpected(&other)),
    };
    let (path, size) = match offered? {
        (path, EntryKind::File, size) => (path, size),
        (path, EntryKind::Directory, _) => {
            return Err(refuse_stdout(
                &mut conn,
                format!("{path} is a folder; --into - writes one file to standard output"),
            )
            .await);
        }
    };
    let ended = match conn.read_message().await? {
        SenderMessage::BatchEnd => Ok(true),
        SenderMessage::Offer(_) => Ok(false),
        other => Err(unexpected(&other)),
    };
    if !ended? {
        return Err(refuse_stdout(
            &mut conn,
            "the server offered more than one file; --into - writes one file".into(),
        )
        .await);
    }
    conn.send(&ReceiverMessage::Answer(Answer::Send { offset: 0 }))
        .await?;
    conn.flush().await?;
    on_event(Event::Started {
        path: &path,
        size,
        offset: 0,
    });
    let mut stdout = tokio::io::stdout();
    let mut hasher = blake3::Hasher::new();
    let mut received = 0u64;
    let claimed: Hash = loop {
        let header = conn.read_header().await?;
        match header.kind {
            Kind::Data => {
                let len = u64::from(header.len);
                if size.is_some_and(|size| received + len > size) {
                    return Err(SendError::Protocol(format!(
                        "more bytes than the {} offered for {path}",
                        size.unwrap_or(0)
                    )));
                }
                let bytes = conn.read_payload(header).await?;
                hasher.update(bytes);
                stdout.write_all(bytes).await.map_err(SendError::Stdout)?;
                received += len;
                summary.bytes_sent += len;
                summary.wire_bytes += len;
                on_event(Event::Progress {
                    bytes: len,
                    wire: len,
                });
            }
            Kind::FileEnd => match conn.read_message_after(header).await? {
                SenderMessage::FileEnd { hash } => break hash,
                other => return Err(unexpected(&other)),
            },
            other => {
                return Err(SendError::Protocol(format!(
                    "expected file data, got {other:?}"
                )));
            }
        }
    };
    stdout.flush().await.map_err(SendError::Stdout)?;
    let hash = *hasher.finalize().as_bytes();
    let failure = if size.is_some_and(|size| received != size) {
        Some((
            FailCode::Incomplete,
            format!("received {received} of {} bytes", size.unwrap_or(0)),
        ))
    } else if hash != claimed {
        Some((
            FailCode::HashMismatch,
            "BLAKE3 mismatch: the data was damaged on the way; what was written to standard output is not the file".to_owned(),
        ))
    } else {
        None
    };
    match &failure {
        None => {
            conn.send(&ReceiverMessage::Receipt {
                size: received,
                hash,
                stored_as: "-",
            })
            .await?;
            summary.stored = 1;
            on_event(Event::Stored {
                path: &path,
                stored_as: Some("-"),
                bytes: received,
                hash: Some(&hash),
            });
        }
        Some((code, reason)) => {
            conn.send(&ReceiverMessage::Failed {
                code: *code,
                reason,
            })
            .await?;
            summary.failed = 1;
            on_event(Event::Failed {
                path: &path,
                reason,
            });
        }
    }
    conn.flush().await?;
    match conn.read_message().await? {
        SenderMessage::Bye => {}
        other => return Err(unexpected(&other)),
    }
    conn.shutdown().await?;
    on_event(Event::BatchSettled);
    Ok(summary)
}

/// Tells the server why the get ends here, and says so to the caller.
async fn refuse_stdout(conn: &mut Connection, reason: String) -> SendError {
    let _ = conn
        .send(&ReceiverMessage::Error {
            code: FailCode::Other,
            message: &reason,
        })
        .await;
    let _ = conn.flush().await;
    SendError::Get(reason)
}

fn unexpected(message: &SenderMessage<'_>) -> SendError {
    match message {
        SenderMessage::Error { code, message } => match code {
            FailCode::NotFound | FailCode::NameRefused => {
                SendError::NotThere((*message).to_owned())
            }
            code => server_error(*code, message, SendError::Server),
        },
        other => SendError::Protocol(format!("expected a file, got {other:?}")),
    }
}

/// The engine in-process: the sender `haul send` and a server's get use
/// (`send::haul::send_over`) against the receiver `haul serve` and `haul
/// get` use ([`receive_get`]), over an in-memory duplex, no process or
/// socket between them.
#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::protocol::haul::{Message, Mtime, Offer, encode};
    use crate::send::walk::walk;

    const IDLE: Duration = Duration::from_secs(30);

    fn pair() -> (Connection, Connection) {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let wrap = |stream: tokio::io::DuplexStream| {
            let (reader, writer) = tokio::io::split(stream);
            Connection::new(Box::new(reader), 8192, Box::new(writer), 8192, IDLE)
        };
        (wrap(ours), wrap(theirs))
    }

    fn setup(into: &Path, accepts: &[&str]) -> GetSetup {
        GetSetup {
            store: Store::open(into, OnConflict::Rename).unwrap(),
            policy: Policy {
                on_conflict: OnConflict::Rename,
                max_file_size: None,
                reserve: 0,
                reserve_inodes: 0,
                max_partial: 1 << 30,
                takeover_wait: Duration::from_secs(1),
            },
            sender: [7; 16],
            zstd: false,
            accepts: accepts.iter().map(|name| (*name).to_owned()).collect(),
        }
    }

    fn peer() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 9))
    }

    /// Runs the sender over `source` against the receiver into `into`;
    /// returns the receiver's events, as `(kind, path)`.
    async fn run(source: &Path, into: &Path) -> Vec<(String, String)> {
        let (sending, receiving) = pair();
        let sources = [source.to_owned()];
        let walked: Vec<_> = walk(&sources, None).collect();
        let name = source.file_name().unwrap().to_str().unwrap().to_owned();
        let sender = crate::engine::sender::send_over(
            sending,
            "receiver".into(),
            false,
            walked.into_iter(),
            |_| {},
            || None,
        );
        let mut events = Vec::new();
        let mut on_event = |event: Event<'_>| match event {
            Event::Stored { path, .. } => events.push(("stored".into(), path.to_owned())),
            Event::AlreadyThere { path, .. } => events.push(("same".into(), path.to_owned())),
            Event::Failed { path, reason } => {
                events.push(("failed".into(), format!("{path}: {reason}")))
            }
            _ => {}
        };
        let receiver = receive_get(receiving, peer(), setup(into, &[&name]), &mut on_event);
        let ((_, sent), received) = tokio::join!(sender, receiver);
        sent.unwrap();
        received.unwrap();
        events.sort();
        events
    }

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("a.txt"), b"alpha").unwrap();
        std::fs::write(root.join("sub/naïve.bin"), vec![3u8; 300_000]).unwrap();
        std::fs::write(root.join("sub/deeper/z"), b"").unwrap();
        std::fs::set_permissions(root.join("a.txt"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        let time = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
        for path in ["a.txt", "sub/naïve.bin", "sub", "empty"] {
            std::fs::File::open(root.join(path))
                .unwrap()
                .set_modified(time)
                .unwrap();
        }
    }

    fn described(root: &Path) -> Vec<(String, Vec<u8>, u32, SystemTime)> {
        let mut all: Vec<_> = walkdir::WalkDir::new(root)
            .min_depth(1)
            .into_iter()
            .map(|entry| {
                let entry = entry.unwrap();
                let meta = entry.metadata().unwrap();
                let relative = entry
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .display()
                    .to_string();
                let bytes = if meta.is_file() {
                    std::fs::read(entry.path()).unwrap()
                } else {
                    Vec::new()
                };
                (
                    relative,
                    bytes,
                    meta.permissions().mode() & 0o777,
                    meta.modified().unwrap(),
                )
            })
            .filter(|(relative, ..)| !relative.starts_with(".haul"))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tree_crosses_the_engine_whole_and_a_second_run_moves_nothing() {
        let temp = tempfile::tempdir().unwrap();
        let source = temp.path().join("tree");
        tree(&source);
        let into = temp.path().join("into");
        let events = run(&source, &into).await;
        assert_eq!(
            events,
            [
                ("stored".to_owned(), "tree/a.txt".to_owned()),
                ("stored".to_owned(), "tree/sub/deeper/z".to_owned()),
                ("stored".to_owned(), "tree/sub/naïve.bin".to_owned()),
            ]
        );
        assert_eq!(described(&source), described(&into.join("tree")));
        // Every file is there, identical: each is compared by its hash and
        // none is sent again.
        let again = run(&source, &into).await;
        assert!(again.iter().all(|(kind, _)| kind == "same"), "{again:?}");
        assert_eq!(again.len(), 3);
        assert_eq!(described(&source), described(&into.join("tree")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_receiver_ends_the_session_at_a_name_it_did_not_ask_for() {
        let temp = tempfile::tempdir().unwrap();
        let into = temp.path().join("into");
        for (path, said) in [
            (&b"../escape"[..], "breaks the name rules"),
            (b"other/x", "was not asked for"),
            (b"asked2", "was not asked for"),
        ] {
            let (mut sending, receiving) = pair();
            let offer = Offer {
                kind: EntryKind::File,
                size: Some(1),
                hash: None,
                mtime: Mtime::default(),
                mode: 0o644,
                path,
            };
            let mut frames = Vec::new();
            encode(&Message::Offer(offer), &mut frames);
            encode(&Message::BatchEnd, &mut frames);
            let hostile = async move {
                use tokio::io::AsyncWriteExt;
                sending.data_writer().write_all(&frames).await.unwrap();
                sending.flush().await.unwrap();
                // Holds its end until the receiver has answered.
                let _ = sending.drain(IDLE).await;
            };
            let mut nothing = |_: Event<'_>| {};
            let receiver = receive_get(receiving, peer(), setup(&into, &["asked"]), &mut nothing);
            let ((), received) = tokio::join!(hostile, receiver);
            let (_, reason) = received.unwrap_err();
            assert!(
                reason.contains("the server offered") && reason.contains(said),
                "{reason}"
            );
            assert!(!temp.path().join("escape").exists());
            let left: Vec<_> = std::fs::read_dir(&into)
                .unwrap()
                .map(|entry| entry.unwrap().file_name())
                .filter(|name| name != ".haul")
                .collect();
            assert!(left.is_empty(), "{left:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_goodbye_without_what_was_asked_for_is_no_success() {
        let temp = tempfile::tempdir().unwrap();
        let (mut sending, receiving) = pair();
        let mut frames = Vec::new();
        encode(&Message::Bye, &mut frames);
        let hostile = async move {
            use tokio::io::AsyncWriteExt;
            sending.data_writer().write_all(&frames).await.unwrap();
            sending.flush().await.unwrap();
            let _ = sending.drain(IDLE).await;
        };
        let mut nothing = |_: Event<'_>| {};
        let receiver = receive_get(
            receiving,
            peer(),
            setup(temp.path(), &["asked"]),
            &mut nothing,
        );
        let ((), received) = tokio::join!(hostile, receiver);
        let (_, reason) = received.unwrap_err();
        assert_eq!(
            reason,
            "the server sent nothing for asked, and did not say it is missing; the get is not complete"
        );
    }
}
