//! `haul get` against a hand-made malicious server. The client is the real
//! binary; the server is a script on a loopback socket that speaks the
//! protocol and lies in one way per test. What must stay true: nothing the
//! server says reaches the disk outside `--into`, nor through a symbolic
//! link in it, nor under a final name unless it is whole and verified, and
//! every lie ends in exit 1 with the problem said on stderr.

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::{self, JoinHandle};

use haul::protocol::haul::{
    self as wire, Answer, EntryKind, FRAME_HEADER_LEN, FailCode, Kind, MAGIC, Message, Mtime, Offer,
};
use tempfile::TempDir;
use util::wire::{data_frame, frame};
use util::{haul_command, json, stderr_of};

/// The time every offer carries: far from now, so that a time written
/// through a link shows.
const OFFERED_SECS: i64 = 86_400;
/// The mode every offered folder carries, unlike any a test makes.
const OFFERED_DIR_MODE: u32 = 0o701;

/// What the client said to the hand-made server.
#[derive(Debug, Default)]
struct Seen {
    /// Whether it connected and opened a session at all.
    connected: bool,
    /// The paths of its `Get`.
    asked: Vec<String>,
    /// Every message after the `Get`, rendered, in order.
    messages: Vec<String>,
}

impl Seen {
    fn any(&self, prefix: &str) -> bool {
        self.messages
            .iter()
            .any(|message| message.starts_with(prefix))
    }
}

/// The server's end of one get session, for a script to play. Writes and
/// reads tolerate a client that has gone: a client that stops believing
/// the server may hang up at any point, and that is the test's subject,
/// not the script's failure.
struct Peer {
    stream: TcpStream,
    seen: Seen,
}

impl Peer {
    /// Writes `bytes`; false once the client has gone.
    fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    fn offer(&mut self, kind: EntryKind, path: &[u8], size: Option<u64>) -> bool {
        let mode = match kind {
            EntryKind::File => 0o644,
            EntryKind::Directory => OFFERED_DIR_MODE,
        };
        self.send(&frame(&Message::Offer(Offer {
            kind,
            size,
            hash: None,
            mtime: Mtime {
                secs: OFFERED_SECS,
                nanos: 0,
            },
            mode,
            path,
        })))
    }

    fn file_end(&mut self, content: &[u8]) -> bool {
        self.send(&frame(&Message::FileEnd {
            hash: *blake3::hash(content).as_bytes(),
        }))
    }

    /// The client's next message, rendered and recorded; `None` once it
    /// has closed.
    fn read(&mut self) -> Option<String> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        self.stream.read_exact(&mut header).ok()?;
        let rendered = match wire::decode_frame_header(header) {
            Err(error) => format!("bad frame header: {error}"),
            Ok(decoded) => {
                let mut payload = vec![0; decoded.len as usize];
                self.stream.read_exact(&mut payload).ok()?;
                match wire::decode_message(decoded.kind, &payload) {
                    Ok(message) => format!("{message:?}"),
                    Err(error) => format!("undecodable {:?}: {error}", decoded.kind),
                }
            }
        };
        self.seen.messages.push(rendered.clone());
        Some(rendered)
    }

    /// Up to `count` answers; fewer if the client ends the session.
    fn answers(&mut self, count: usize) -> Vec<String> {
        let mut answers = Vec::new();
        while answers.len() < count {
            match self.read() {
                Some(message) if message.starts_with("Answer(") => answers.push(message),
                _ => break,
            }
        }
        answers
    }
}

/// The offset of a `Send` answer, or `None` for any other answer.
fn send_offset(answer: &str) -> Option<usize> {
    answer
        .strip_prefix("Answer(Send { offset: ")?
        .strip_suffix(" })")?
        .parse()
        .ok()
}

/// One entry a script offers: a folder, or a file and its bytes.
enum Entry {
    Dir(Vec<u8>),
    File(Vec<u8>, Vec<u8>),
}

fn dir(path: &str) -> Entry {
    Entry::Dir(path.as_bytes().to_vec())
}

fn file(path: impl AsRef<[u8]>, content: &[u8]) -> Entry {
    Entry::File(path.as_ref().to_vec(), content.to_vec())
}

/// Plays an honest sender for `entries` in one batch: every offer, then
/// the bytes of each file the client asks for with their true hash, then
/// the receipts, then Bye. Used with lying names, it gives a client that
/// believes them every chance to write.
fn serve(peer: &mut Peer, entries: &[Entry]) {
    for entry in entries {
        let sent = match entry {
            Entry::Dir(path) => peer.offer(EntryKind::Directory, path, None),
            Entry::File(path, content) => {
                peer.offer(EntryKind::File, path, Some(content.len() as u64))
            }
        };
        if !sent {
            return;
        }
    }
    if !peer.send(&frame(&Message::BatchEnd)) {
        return;
    }
    let answers = peer.answers(entries.len());
    let mut sends = 0;
    for (entry, answer) in entries.iter().zip(&answers) {
        let (Entry::File(_, content), Some(offset)) = (entry, send_offset(answer)) else {
            continue;
        };
        if !(peer.send(&data_frame(&content[offset..])) && peer.file_end(content)) {
            return;
        }
        sends += 1;
    }
    for _ in 0..sends {
        if peer.read().is_none() {
            return;
        }
    }
    peer.send(&frame(&Message::Bye));
}

/// A hand-made server on 127.0.0.1 for one connection: it opens the
/// session as `haul serve` does (magic, Hello, Welcome, Get), then runs
/// `script`, then reads what the client says until it closes.
struct FakeServer {
    addr: String,
    serving: JoinHandle<Seen>,
}

impl FakeServer {
    fn start(script: impl FnOnce(&mut Peer) + Send + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let serving = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut peer = Peer {
                stream,
                seen: Seen::default(),
            };
            let mut magic = [0u8; MAGIC.len()];
            // A client that refuses before it speaks is let go by a
            // connection of the test's own that says nothing.
            if peer.stream.read_exact(&mut magic).is_err() {
                return peer.seen;
            }
            assert_eq!(magic, MAGIC);
            peer.seen.connected = true;
            let hello = util::wire::read_raw_frame(&mut peer.stream);
            assert_eq!(hello[0], Kind::Hello as u8);
            peer.stream
                .write_all(&frame(&Message::Welcome {
                    version: wire::VERSION,
                    capabilities: 0,
                }))
                .unwrap();
            let get = util::wire::read_raw_frame(&mut peer.stream);
            assert_eq!(get[0], Kind::Get as u8, "the client's first frame is a Get");
            match wire::decode_message(Kind::Get, &get[FRAME_HEADER_LEN..]).unwrap() {
                Message::Get(paths) => peer.seen.asked = paths.iter().map(str::to_owned).collect(),
                other => panic!("{other:?}"),
            }
            script(&mut peer);
            while peer.read().is_some() {}
            peer.seen
        });
        FakeServer { addr, serving }
    }

    fn seen(self) -> Seen {
        self.serving.join().unwrap()
    }
}

/// A temporary place: `into`, the directory the client gets into, and
/// `outside`, a sibling that nothing may reach.
struct Scene {
    temp: TempDir,
    into: PathBuf,
    outside: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let temp = TempDir::new().unwrap();
        let into = temp.path().join("into");
        let outside = temp.path().join("outside");
        std::fs::create_dir(&into).unwrap();
        std::fs::create_dir(&outside).unwrap();
        Scene {
            temp,
            into,
            outside,
        }
    }

    fn command(&self, server: &FakeServer, paths: &[&str], extra: &[&str]) -> Command {
        let mut command = haul_command();
        command
            .args(["get", "--from", &server.addr])
            .args(paths)
            .arg("--into")
            .arg(&self.into)
            .args(extra)
            .env_remove("HAUL_TOKEN")
            .stdin(Stdio::null());
        command
    }

    /// Runs `haul get --from SERVER PATHS --into INTO EXTRA` to its end.
    fn get(&self, server: &FakeServer, paths: &[&str], extra: &[&str]) -> Output {
        self.command(server, paths, extra).output().unwrap()
    }

    /// Starts the same, for a test that acts while it runs.
    fn spawn(&self, server: &FakeServer, paths: &[&str]) -> Child {
        self.command(server, paths, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Asserts that the temporary place holds `into` and an empty
    /// `outside`, and nothing else: nothing escaped beside the directory.
    fn assert_only_outside_untouched(&self) {
        let mut top: Vec<String> = std::fs::read_dir(self.temp.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(top, ["into", "outside"], "beside the directory");
        assert_eq!(tree(&self.outside), Vec::<String>::new(), "outside");
    }
}

/// Every path under `dir`, relative, sorted: folders end in `/`, links in
/// `@`. An empty hidden area is left out: partial data would wait there,
/// and an empty one holds none.
fn tree(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1) {
        let entry = entry.unwrap();
        let relative = entry
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let kind = entry.file_type();
        if kind.is_symlink() {
            found.push(format!("{relative}@"));
        } else if kind.is_dir() {
            let empty_hidden_area =
                relative == ".haul" && std::fs::read_dir(entry.path()).unwrap().next().is_none();
            if !empty_hidden_area {
                found.push(format!("{relative}/"));
            }
        } else {
            found.push(relative);
        }
    }
    found.sort();
    found
}

/// The files under `dir`, outside the hidden area (final names only).
fn final_files(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_iter()
        .filter(|path| !path.starts_with(".haul") && !path.ends_with('/') && !path.ends_with('@'))
        .collect()
}

/// Asserts exit 1 and a one-problem stderr in haul's voice containing
/// `needle`, with none of the server's control characters in it.
fn assert_refused(output: &Output, needle: &str, case: &str) {
    let stderr = stderr_of(output);
    assert_eq!(output.status.code(), Some(1), "{case}: {stderr}");
    assert!(stderr.starts_with("haul: "), "{case}: {stderr:?}");
    assert!(stderr.contains(needle), "{case}: {needle:?} in {stderr:?}");
    assert!(
        !stderr
            .chars()
            .any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c)),
        "{case}: the server's control characters reached the terminal: {stderr:?}"
    );
}

/// The mode and modification time of `path`, not following a link.
fn stamp(path: &Path) -> (u32, i64, i64) {
    let metadata = std::fs::symlink_metadata(path).unwrap();
    (
        metadata.permissions().mode(),
        metadata.mtime(),
        metadata.mtime_nsec(),
    )
}

/// The hand-made server is honest when asked to be: `haul get` believes
/// it, and so every refusal below is the lie's, not the script's.
#[test]
fn an_honest_hand_made_server_is_believed() {
    let scene = Scene::new();
    let content = util::random_bytes(70_000, 5);
    let sent = content.clone();
    let server = FakeServer::start(move |peer| {
        serve(peer, &[dir("a"), file("a/x.txt", &sent), dir("a/empty")]);
    });
    let output = scene.get(&server, &["docs/a"], &["--json"]);
    let seen = server.seen();
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(seen.asked, ["docs/a"]);
    assert_eq!(
        tree(&scene.into),
        ["a/", "a/empty/", "a/x.txt"],
        "{seen:#?}"
    );
    assert_eq!(std::fs::read(scene.into.join("a/x.txt")).unwrap(), content);
    assert!(seen.any("Receipt"), "{seen:#?}");
    let lines = json::lines(&output.stdout);
    let stored = json::of_kind(&lines, "stored");
    assert_eq!(stored.len(), 1, "{lines:#?}");
    assert_eq!(stored[0]["path"], "a/x.txt");
    assert_eq!(stored[0]["stored_as"], "a/x.txt");
    assert_eq!(
        stored[0]["blake3"],
        blake3::hash(&content).to_hex().as_str()
    );
    assert_eq!(json::summary(&lines)["error"], serde_json::Value::Null);
    scene.assert_only_outside_untouched();
}

/// A name that breaks the name rules, offered first for a requested `a`,
/// ends the get before anything of it is written: not outside the
/// directory, not inside it, and no byte of it is asked for.
#[test]
fn a_server_offering_a_name_that_breaks_the_rules_is_not_believed() {
    // `OUTSIDE` stands for the absolute path of the scene's watched sibling.
    let cases: [(&str, &[u8]); 12] = [
        ("a parent escape", b"../outside/escape.txt"),
        ("an absolute path into outside", b"OUTSIDE/escape.txt"),
        ("an absolute path", b"/abs/path"),
        ("a parent inside", b"a/../../outside/escape.txt"),
        ("an empty component", b"a//b"),
        ("a trailing slash", b"a/b/"),
        ("a dot component", b"a/./b"),
        ("a parent component", b"a/.."),
        ("a control character", b"a/bell\x07.txt"),
        ("an escape sequence", b"a/\x1b]0;owned\x07\x1b[2J"),
        ("a NUL", b"a/x\0y"),
        ("a bidi override", "a/invoice\u{202e}txt.exe".as_bytes()),
    ];
    for (case, name) in cases {
        let scene = Scene::new();
        let name = match name.strip_prefix(b"OUTSIDE") {
            Some(rest) => [scene.outside.to_str().unwrap().as_bytes(), rest].concat(),
            None => name.to_vec(),
        };
        let server = FakeServer::start(move |peer| {
            serve(peer, &[file(&name, b"owned\n")]);
        });
        let output = scene.get(&server, &["a"], &[]);
        let seen = server.seen();
        assert_refused(&output, "the server offered", case);
        assert!(!seen.any("Answer(Send"), "{case}: {seen:#?}");
        assert_eq!(tree(&scene.into), Vec::<String>::new(), "{case}");
        scene.assert_only_outside_untouched();
        // Where `/abs/path` would land if believed: tests may run as root.
        assert!(!Path::new("/abs").exists(), "{case}");
    }
}

/// Only what was asked for may be offered: every path must begin with
/// the last component of a requested path, exactly.
#[test]
fn a_server_offering_what_was_not_asked_for_is_not_believed() {
    for (asked, offered) in [
        ("a", file("b/x.txt", b"not asked for")),
        ("a", file("ab", b"a longer name")),
        ("a", file("a.txt", b"an extension")),
        ("a", file("ab/x.txt", b"a prefix")),
        ("a", file("A/x.txt", b"another case")),
        ("a", dir("b")),
        ("a", file(".haul/partial", b"the client's own hidden area")),
        ("docs/a", file("docs/a/x.txt", b"the whole requested path")),
        ("docs/a", file("docs", b"its first component")),
    ] {
        let scene = Scene::new();
        let case = match &offered {
            Entry::Dir(path) | Entry::File(path, _) => {
                format!("asked {asked}, offered {}", String::from_utf8_lossy(path))
            }
        };
        let server = FakeServer::start(move |peer| serve(peer, &[offered]));
        let output = scene.get(&server, &[asked], &[]);
        let seen = server.seen();
        assert_refused(&output, "the server offered", &case);
        assert!(!seen.any("Answer(Send"), "{case}: {seen:#?}");
        assert_eq!(tree(&scene.into), Vec::<String>::new(), "{case}");
        scene.assert_only_outside_untouched();
    }
}

/// `.haul` is the client's own hidden area: a get of it is refused,
/// whatever the server offers, and nothing lands in it.
#[test]
fn a_get_of_the_hidden_area_writes_nothing_into_it() {
    let scene = Scene::new();
    let server = FakeServer::start(|peer| {
        serve(peer, &[dir(".haul"), file(".haul/evil", b"planted")]);
    });
    let output = scene.get(&server, &[".haul"], &[]);
    // The client may refuse before it connects; then this connection is
    // the one the server takes, and it says nothing.
    drop(TcpStream::connect(&server.addr));
    let seen = server.seen();
    assert!(!seen.any("Answer(Send"), "{seen:#?}");
    assert_eq!(tree(&scene.into), Vec::<String>::new());
    scene.assert_only_outside_untouched();
    // Refused before anything is asked, as `haul ls .haul` is: a usage
    // error, naming the reserved name.
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains(".haul"),
        "{}",
        stderr_of(&output)
    );
}

/// A folder of the requested name that is a link to elsewhere is not
/// written through: nothing lands in, or changes on, what it points to,
/// and the get fails naming `a`.
#[test]
fn a_link_in_the_directory_is_not_followed() {
    let scene = Scene::new();
    symlink(&scene.outside, scene.into.join("a")).unwrap();
    let before = stamp(&scene.outside);
    let server = FakeServer::start(|peer| {
        serve(peer, &[dir("a"), file("a/x.txt", b"through the link\n")]);
    });
    let output = scene.get(&server, &["a"], &[]);
    let seen = server.seen();
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}\n{seen:#?}");
    assert!(stderr.starts_with("haul: a: refused: "), "{stderr}");
    assert_eq!(tree(&scene.outside), Vec::<String>::new());
    assert_eq!(
        stamp(&scene.outside),
        before,
        "the linked folder's mode and time"
    );
    assert_eq!(tree(&scene.into), ["a@"]);
    assert!(!seen.any("Receipt"), "{seen:#?}");
}

/// A file of the requested name that is a link to a file elsewhere is
/// never written through, whatever the conflict policy.
#[test]
fn a_link_to_a_file_is_not_written_through() {
    for policy in ["rename", "overwrite", "refuse"] {
        let scene = Scene::new();
        let target = scene.outside.join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        symlink(&target, scene.into.join("a")).unwrap();
        let before = stamp(&target);
        let server = FakeServer::start(|peer| serve(peer, &[file("a", b"through the link\n")]));
        let output = scene.get(&server, &["a"], &["--on-conflict", policy]);
        server.seen();
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"keep me",
            "{policy}: {}",
            stderr_of(&output)
        );
        assert_eq!(stamp(&target), before, "{policy}");
        assert_eq!(tree(&scene.outside), ["precious"], "{policy}");
    }
}

/// The folder is swapped for a link between the answers and the bytes:
/// the file still lands nowhere outside, and the get fails.
#[test]
fn a_folder_swapped_for_a_link_mid_get_is_not_followed() {
    let scene = Scene::new();
    let before = stamp(&scene.outside);
    let (answered, answered_rx): (Sender<Vec<String>>, Receiver<Vec<String>>) = channel();
    let (go, go_rx) = channel::<()>();
    let content = b"after the swap\n".to_vec();
    let server = FakeServer::start(move |peer| {
        peer.offer(EntryKind::Directory, b"a", None);
        peer.offer(EntryKind::File, b"a/x.txt", Some(content.len() as u64));
        peer.send(&frame(&Message::BatchEnd));
        answered.send(peer.answers(2)).unwrap();
        go_rx.recv().unwrap();
        peer.send(&data_frame(&content));
        peer.file_end(&content);
        peer.read();
        peer.send(&frame(&Message::Bye));
    });
    let child = scene.spawn(&server, &["a"]);
    let answers = answered_rx.recv().unwrap();
    assert_eq!(
        answers,
        ["Answer(Created)", "Answer(Send { offset: 0 })"],
        "the client takes both"
    );
    // What the client made is swapped for a link to elsewhere.
    std::fs::remove_dir(scene.into.join("a")).unwrap();
    symlink(&scene.outside, scene.into.join("a")).unwrap();
    go.send(()).unwrap();
    let output = child.wait_with_output().unwrap();
    let seen = server.seen();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}\n{seen:#?}",
        stderr_of(&output)
    );
    assert!(
        stderr_of(&output).starts_with(
            "haul: a/x.txt: could not store it: a file or link is in the way of one of its folders"
        ),
        "{}",
        stderr_of(&output)
    );
    assert_eq!(tree(&scene.outside), Vec::<String>::new());
    assert_eq!(
        stamp(&scene.outside),
        before,
        "the linked folder's mode and time"
    );
    assert_eq!(final_files(&scene.into), Vec::<String>::new());
    assert!(!seen.any("Receipt"), "{seen:#?}");
}

/// Bytes that do not have the hash the server announces are refused with
/// Failed (hash mismatch): nothing under the final name, no partial
/// anywhere but the hidden area, exit 1.
#[test]
fn a_wrong_hash_fails_the_file_and_stores_nothing() {
    for (asked, entries) in [
        ("a", vec![(None, "a")]),
        ("a", vec![(Some("a"), "a/x.txt")]),
    ] {
        let scene = Scene::new();
        let content = util::random_bytes(200_000, 9);
        let case = format!("{entries:?}");
        let server = FakeServer::start(move |peer| {
            let mut files = 0;
            for (folder, path) in &entries {
                if let Some(folder) = folder {
                    peer.offer(EntryKind::Directory, folder.as_bytes(), None);
                }
                peer.offer(EntryKind::File, path.as_bytes(), Some(content.len() as u64));
                files += 1 + usize::from(folder.is_some());
            }
            peer.send(&frame(&Message::BatchEnd));
            let answers = peer.answers(files);
            assert!(
                answers.iter().any(|answer| send_offset(answer) == Some(0)),
                "{answers:?}"
            );
            peer.send(&data_frame(&content));
            // The hash of other bytes.
            peer.file_end(b"something else");
            peer.read();
            peer.send(&frame(&Message::Bye));
        });
        let output = scene.get(&server, &[asked], &["--json"]);
        let seen = server.seen();
        assert_eq!(
            output.status.code(),
            Some(1),
            "{case}: {}",
            stderr_of(&output)
        );
        let failed = format!("Failed {{ code: {:?}", FailCode::HashMismatch);
        assert!(seen.any(&failed), "{case}: {seen:#?}");
        assert!(!seen.any("Receipt"), "{case}: {seen:#?}");
        assert_eq!(final_files(&scene.into), Vec::<String>::new(), "{case}");
        scene.assert_only_outside_untouched();
        let lines = json::lines(&output.stdout);
        let failures = json::of_kind(&lines, "failed");
        assert_eq!(failures.len(), 1, "{case}: {lines:#?}");
        assert!(
            failures[0]["path"] == "a" || failures[0]["path"] == "a/x.txt",
            "{case}: {lines:#?}"
        );
        assert!(json::of_kind(&lines, "stored").is_empty(), "{case}");
        assert_eq!(json::summary(&lines)["failed"], 1, "{case}: {lines:#?}");
    }
}

/// Fewer bytes than offered, then FileEnd: the file fails as incomplete
/// and nothing is stored under its name.
#[test]
fn fewer_bytes_than_offered_fail_the_file() {
    let scene = Scene::new();
    let server = FakeServer::start(|peer| {
        let content = b"only half of it";
        peer.offer(EntryKind::File, b"a", Some(2 * content.len() as u64));
        peer.send(&frame(&Message::BatchEnd));
        peer.answers(1);
        peer.send(&data_frame(content));
        peer.file_end(content);
        peer.read();
        peer.send(&frame(&Message::Bye));
    });
    let output = scene.get(&server, &["a"], &[]);
    let seen = server.seen();
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(!seen.any("Receipt"), "{seen:#?}");
    assert!(seen.any("Failed"), "{seen:#?}");
    assert_eq!(final_files(&scene.into), Vec::<String>::new());
    scene.assert_only_outside_untouched();
}

/// A session the server breaks, by frames that have no place where they
/// come, ends with exit 1 and the problem said, and nothing is stored.
#[test]
fn frames_out_of_place_end_the_get_and_store_nothing() {
    type Script = fn(&mut Peer);
    let cases: [(&str, &str, Script); 7] = [
        (
            "more bytes than offered",
            "more bytes than the 5 offered for a",
            |peer| {
                peer.offer(EntryKind::File, b"a", Some(5));
                peer.send(&frame(&Message::BatchEnd));
                peer.answers(1);
                peer.send(&data_frame(b"0123456789"));
                peer.file_end(b"0123456789");
            },
        ),
        (
            "more bytes than offered, frame after frame",
            "more bytes than the 5 offered for a",
            |peer| {
                peer.offer(EntryKind::File, b"a", Some(5));
                peer.send(&frame(&Message::BatchEnd));
                peer.answers(1);
                peer.send(&data_frame(b"012"));
                peer.send(&data_frame(b"345"));
                peer.file_end(b"012345");
            },
        ),
        (
            "data before any offer",
            "file data outside a file",
            |peer| {
                peer.send(&data_frame(b"loose bytes"));
            },
        ),
        ("data for a folder", "file data outside a file", |peer| {
            peer.offer(EntryKind::Directory, b"a", None);
            peer.send(&frame(&Message::BatchEnd));
            peer.answers(1);
            peer.send(&data_frame(b"loose bytes"));
            peer.file_end(b"loose bytes");
        }),
        ("an unknown frame kind", "unknown frame kind 0x7f", |peer| {
            peer.send(&[0x7f, 0, 0, 0, 1, b'?']);
        }),
        (
            "an unknown frame kind mid-file",
            "unknown frame kind 0x7f",
            |peer| {
                peer.offer(EntryKind::File, b"a", Some(10));
                peer.send(&frame(&Message::BatchEnd));
                peer.answers(1);
                peer.send(&data_frame(b"01234"));
                peer.send(&[0x7f, 0, 0, 0, 0]);
            },
        ),
        (
            "a receiver's message from the server",
            "got Answer",
            |peer| {
                peer.offer(EntryKind::File, b"a", Some(5));
                peer.send(&frame(&Message::BatchEnd));
                peer.answers(1);
                peer.send(&frame(&Message::Answer(Answer::Send { offset: 0 })));
            },
        ),
    ];
    for (case, problem, script) in cases {
        let scene = Scene::new();
        let server = FakeServer::start(script);
        let output = scene.get(&server, &["a"], &[]);
        let seen = server.seen();
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(1), "{case}: {stderr}");
        assert!(
            stderr.starts_with("haul: ") && stderr.contains(problem),
            "{case}: {problem:?} in {stderr}"
        );
        assert!(!seen.any("Receipt"), "{case}: {seen:#?}");
        assert_eq!(final_files(&scene.into), Vec::<String>::new(), "{case}");
        scene.assert_only_outside_untouched();
    }
}

/// An Error frame's words are the server's: shown without its control
/// characters, and the get fails.
#[test]
fn a_servers_error_text_reaches_the_terminal_without_its_escapes() {
    let scene = Scene::new();
    let server = FakeServer::start(|peer| {
        peer.send(&frame(&Message::Error {
            code: FailCode::NotFound,
            message: "no such file or folder on the server: a\x1b]0;owned\x07\x1b[2J\u{202e}",
        }));
    });
    let output = scene.get(&server, &["a"], &[]);
    server.seen();
    assert_refused(
        &output,
        "no such file or folder on the server",
        "an Error frame",
    );
    assert_eq!(tree(&scene.into), Vec::<String>::new());
}

/// A server that takes the Get and then says nothing: the client gives up
/// by itself (its idle timeout; `--reply-timeout` covers only the Hello)
/// instead of waiting for ever, with exit 1.
#[test]
fn a_server_that_never_offers_is_given_up_on() {
    let scene = Scene::new();
    let server = FakeServer::start(|_| {});
    let output = scene.get(&server, &["a"], &["--reply-timeout", "2s"]);
    let seen = server.seen();
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).starts_with("haul: nothing received for "),
        "{}",
        stderr_of(&output)
    );
    assert!(!seen.any("Answer"), "{seen:#?}");
    assert_eq!(tree(&scene.into), Vec::<String>::new());
}

/// A server that accepts the connection and never answers the Hello is
/// given up on after `--reply-timeout`, said in the message.
#[test]
fn a_server_that_never_answers_the_hello_is_given_up_on_after_the_reply_timeout() {
    let scene = Scene::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let serving = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        util::read_until_closed(&mut stream)
    });
    let output = haul_command()
        .args(["get", "--from", &addr, "a", "--into"])
        .arg(&scene.into)
        .args(["--reply-timeout", "1s"])
        .env_remove("HAUL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let received = serving.join().unwrap();
    assert!(received.starts_with(&MAGIC), "{received:?}");
    let stderr = stderr_of(&output);
    assert!(
        matches!(output.status.code(), Some(1 | 3)),
        "{:?}: {stderr}",
        output.status
    );
    assert!(
        stderr.starts_with("haul: ") && stderr.contains("1s"),
        "{stderr}"
    );
    assert_eq!(tree(&scene.into), Vec::<String>::new());
}
