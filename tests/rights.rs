//! Each secret gives its own rights: one may only send, one may only get
//! and list, the main one both (where the server shares). A right not
//! held is refused with a clear message and nothing is written, however the
//! client dresses up its Hello.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use haul::protocol::haul::{
    self as wire, CAP_SECRET, EntryKind, FRAME_HEADER_LEN, FailCode, Kind, MAGIC, Message, Mtime,
    Offer,
};
use haul::secure::{self, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use util::{HaulServer, seed_client, stderr_of};

const MAIN: &str = "6d61696e2d7365637265742d6f662d746865207365727665722d6c6f6e67";
const SEND: &str = "73656e642d6f6e6c792d7365637265742d6f662d7468652073657276657221";
const GET: &str = "6765742d6f6e6c792d7365637265742d6f662d74686520736572766572212121";

/// The message a session that may only get and list is refused with.
const GET_ONLY_REFUSAL: &str = "this secret may not send to this server; it may only get and list";

/// Token files for the given secrets, in a directory of their own.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A token file holding `secret`, under `name`, that only its owner
    /// can read.
    fn file(&self, name: &str, secret: &str) -> String {
        self.file_of(name, &format!("{secret}\n"))
    }

    /// A token file with exactly `contents`.
    fn file_of(&self, name: &str, contents: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

/// A server holding the main, the send-only and the get-only secret.
fn three_secret_server() -> (HaulServer, Keys) {
    let keys = Keys::new();
    let (main, send, get) = (
        keys.file("main", MAIN),
        keys.file("send", SEND),
        keys.file("get", GET),
    );
    let server = HaulServer::start(&[
        "--token-file",
        &main,
        "--send-token-file",
        &send,
        "--get-token-file",
        &get,
    ]);
    (server, keys)
}

/// `haul send` of `paths` to `to` with HAUL_TOKEN set to `secret`.
fn send_as(secret: Option<&str>, to: &str, paths: &[&Path]) -> Output {
    let mut command = util::haul_command();
    command
        .args(["send", "--to", to])
        .args(paths)
        .stdin(Stdio::null());
    match secret {
        Some(secret) => command.env("HAUL_TOKEN", secret),
        None => command.env_remove("HAUL_TOKEN"),
    };
    command.output().unwrap()
}

/// Every entry under `dir`, hidden area included, with its kind, size
/// and modification time: what a test compares before and after.
fn listing(dir: &Path) -> Vec<String> {
    let mut entries = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap();
            let metadata = entry.metadata().unwrap();
            let path: PathBuf = entry.path();
            entries.push(format!(
                "{} dir={} len={} mtime={:?}",
                path.strip_prefix(dir).unwrap().display(),
                metadata.is_dir(),
                metadata.len(),
                metadata.modified().unwrap()
            ));
            if metadata.is_dir() {
                pending.push(path);
            }
        }
    }
    entries.sort();
    entries
}

/// A file and a folder with a file in it, to send.
fn sources() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let source = tempfile::tempdir().unwrap();
    let file = source.path().join("report.txt");
    std::fs::write(&file, b"quarterly numbers").unwrap();
    let folder = source.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("a.jpg"), b"not really a photo").unwrap();
    (source, file, folder)
}

#[test]
fn a_get_only_secret_cannot_send_and_nothing_is_written() {
    let (server, _keys) = three_secret_server();
    // Something already stored, and something in the hidden area, so that
    // the listings compared are not empty.
    std::fs::write(server.inbox.join("kept.txt"), b"stored before").unwrap();
    std::fs::create_dir_all(server.inbox.join(".haul")).unwrap();
    let before = listing(&server.inbox);
    assert!(before.iter().any(|entry| entry.starts_with(".haul ")));
    let (_source, file, folder) = sources();

    for paths in [
        vec![file.as_path()],
        vec![folder.as_path()],
        vec![&folder, &file],
    ] {
        let output = send_as(Some(GET), server.addr(), &paths);
        assert_eq!(output.status.code(), Some(5), "{}", stderr_of(&output));
        assert_eq!(
            stderr_of(&output),
            format!("haul: not allowed: {GET_ONLY_REFUSAL}\n")
        );
        server
            .running
            .wait_for_log(&["haul session failed", GET_ONLY_REFUSAL]);
        assert_eq!(listing(&server.inbox), before, "sent {paths:?}");
    }
}

#[test]
fn the_send_only_secret_and_the_main_secret_can_send() {
    let (server, _keys) = three_secret_server();
    let (_source, file, folder) = sources();
    let output = send_as(Some(SEND), server.addr(), &[&file]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        std::fs::read(server.inbox.join("report.txt")).unwrap(),
        b"quarterly numbers"
    );
    let output = send_as(Some(MAIN), server.addr(), &[&folder]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        std::fs::read(server.inbox.join("photos/a.jpg")).unwrap(),
        b"not really a photo"
    );
}

#[test]
fn a_server_with_send_and_get_secrets_refuses_any_other_secret_or_none() {
    let keys = Keys::new();
    let (send, get) = (keys.file("send", SEND), keys.file("get", GET));
    let server = HaulServer::start(&["--send-token-file", &send, "--get-token-file", &get]);
    let (_source, file, _folder) = sources();

    let unknown = send_as(Some(MAIN), server.addr(), &[&file]);
    assert_eq!(unknown.status.code(), Some(4), "{}", stderr_of(&unknown));
    assert!(
        stderr_of(&unknown).contains("authentication failed"),
        "{}",
        stderr_of(&unknown)
    );
    let without = send_as(None, server.addr(), &[&file]);
    assert_eq!(without.status.code(), Some(4), "{}", stderr_of(&without));
    assert!(
        stderr_of(&without).contains("requires a shared secret"),
        "{}",
        stderr_of(&without)
    );
    assert!(server.stored_names().is_empty());
    assert_eq!(server.partial_count(), 0);

    let output = send_as(Some(SEND), server.addr(), &[&file]);
    assert!(output.status.success(), "{}", stderr_of(&output));
}

#[test]
fn two_equal_secrets_refuse_to_start_naming_both() {
    let keys = Keys::new();
    let main = keys.file("main", MAIN);
    // The same secret, with other white space around it.
    let same = keys.file_of("same", &format!("  {MAIN}\n\n"));
    let same = same.as_str();
    let send = keys.file("send", SEND);
    let serve = |args: &[&str], variable: Option<&str>| {
        let mut command = util::haul_command();
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null());
        match variable {
            Some(secret) => command.env("HAUL_TOKEN", secret),
            None => command.env_remove("HAUL_TOKEN"),
        };
        command.output().unwrap()
    };
    for (args, variable, named) in [
        (
            vec!["--token-file", main.as_str(), "--get-token-file", same],
            None,
            "--token-file and --get-token-file",
        ),
        (
            vec![
                "--send-token-file",
                send.as_str(),
                "--get-token-file",
                &send,
            ],
            None,
            "--send-token-file and --get-token-file",
        ),
        (
            vec!["--send-token-file", same],
            Some(MAIN),
            "HAUL_TOKEN and --send-token-file",
        ),
    ] {
        let output = serve(&args, variable);
        assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
        assert!(output.stdout.is_empty(), "it must not start listening");
        assert_eq!(
            stderr_of(&output),
            format!(
                "haul: {named} hold the same secret; each needs its own (`haul token` makes one)\n"
            )
        );
    }
}

/// A Hello dressed up to ask for more than the secret gives: every
/// capability bit, the highest version, another sender.
fn hellos() -> Vec<Vec<u8>> {
    let mut hellos = Vec::new();
    for capabilities in [CAP_SECRET, u64::MAX] {
        for version in [wire::VERSION, u16::MAX] {
            for sender in [[0; 16], [0xff; 16]] {
                hellos.push(util::wire::frame(&Message::Hello {
                    version,
                    capabilities,
                    sender,
                }));
            }
        }
    }
    hellos
}

/// Opens an encrypted session by hand with `hello` and `secret`, offers a
/// file and a directory, and returns the server's first frame after them.
async fn offer_by_hand(addr: &str, hello: &[u8], secret: &str) -> (Kind, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&[&MAGIC[..], hello].concat())
        .await
        .unwrap();
    let welcome = read_frame(&mut stream).await;
    assert_eq!(welcome[0], Kind::Welcome as u8, "{welcome:?}");
    let (reader, writer) = stream.into_split();
    let prologue = secure::prologue(hello, &welcome);
    let secret = Secret::new(secret).unwrap();
    let (mut reader, mut writer) = secure::connect(reader, writer, &secret, &prologue)
        .await
        .unwrap();
    let mut frames = Vec::new();
    for (kind, size, path) in [
        (EntryKind::File, Some(5), "by-hand.txt"),
        (EntryKind::Directory, None, "by-hand"),
    ] {
        wire::encode(
            &Message::Offer(Offer {
                kind,
                size,
                hash: None,
                mtime: Mtime::default(),
                mode: 0o644,
                path: path.as_bytes(),
            }),
            &mut frames,
        );
    }
    wire::encode(&Message::BatchEnd, &mut frames);
    writer.write_all(&frames).await.unwrap();
    writer.flush().await.unwrap();
    let frame = read_frame(&mut reader).await;
    let kind = wire::decode_frame_header(frame[..FRAME_HEADER_LEN].try_into().unwrap())
        .unwrap()
        .kind;
    (kind, frame[FRAME_HEADER_LEN..].to_vec())
}

/// One whole frame, header included.
async fn read_frame(reader: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    reader.read_exact(&mut header).await.unwrap();
    let len = wire::decode_frame_header(header).unwrap().len as usize;
    let mut frame = header.to_vec();
    frame.resize(FRAME_HEADER_LEN + len, 0);
    reader
        .read_exact(&mut frame[FRAME_HEADER_LEN..])
        .await
        .unwrap();
    frame
}

#[test]
fn no_field_of_the_hello_gives_a_get_only_secret_the_right_to_send() {
    let (server, _keys) = three_secret_server();
    let before = listing(&server.inbox);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for hello in hellos() {
        let (kind, payload) = runtime.block_on(offer_by_hand(server.addr(), &hello, GET));
        assert_eq!(
            wire::decode_message(kind, &payload).unwrap(),
            Message::Error {
                code: FailCode::NotAllowed,
                message: GET_ONLY_REFUSAL,
            },
            "Hello {hello:02x?}"
        );
        assert_eq!(listing(&server.inbox), before, "Hello {hello:02x?}");
    }
    // The same offers by hand with the send secret are answered: the
    // refusal above is the secret's, not the hand-made client's.
    let (kind, _) = runtime.block_on(offer_by_hand(server.addr(), &hellos()[0], SEND));
    assert_eq!(kind, Kind::Answer);
}

#[test]
fn a_read_only_share_refuses_the_classroom_protocol() {
    let keys = Keys::new();
    let get = keys.file("get", GET);
    let server = HaulServer::start(&["--get-token-file", &get]);
    server
        .running
        .wait_for_log(&["the classroom protocol is off because a secret is set"]);
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("classroom.txt"), b"pushed").unwrap();
    let port = server.addr().rsplit(':').next().unwrap().to_owned();
    let _ = seed_client("classroom.txt", &port, source.path());
    server
        .running
        .wait_for_log(&["refused a seed-protocol connection"]);
    assert!(server.stored_names().is_empty());
}

#[test]
fn allow_get_without_a_main_secret_warns_that_it_shares_with_nobody() {
    let keys = Keys::new();
    let send = keys.file("send", SEND);
    let server = HaulServer::start(&["--send-token-file", &send, "--allow-get"]);
    server
        .running
        .wait_for_log(&["WARN", "--allow-get shares with nobody here"]);
    // The send secret still sends.
    let (_source, file, _folder) = sources();
    let output = send_as(Some(SEND), server.addr(), &[&file]);
    assert!(output.status.success(), "{}", stderr_of(&output));
}
