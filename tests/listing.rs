//! `haul ls` against real `haul serve` processes and hand-made peers: what
//! a server shares and to whom, exactly what a listing shows, and that a
//! client trusts no name a server lists.

mod util;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haul::protocol::haul::{
    self as wire, EntriesBuilder, EntryKind, FRAME_HEADER_LEN, Kind, ListEntry, MAGIC,
    MAX_PATH_LEN, Message, Mtime, Offer,
};
use util::wire::{data_frame, frame, raw_haul_session, read_message, read_raw_frame};
use util::{HaulServer, haul_command, json, stderr_of, stdout_of, token_file};

const MAIN: &str = "6d61696e2d7365637265742d6f662d7468652d7365727665722121212121212121";
const SEND: &str = "73656e642d6f6e6c792d7365637265742d6f662d7468652073657276657221";
const GET: &str = "6765742d6f6e6c792d7365637265742d6f662d74686520736572766572212121";

/// `haul ls --from ADDR ARGS...` with HAUL_TOKEN set to `secret`, or unset.
fn ls_as(secret: Option<&str>, addr: &str, args: &[&str]) -> Output {
    let mut command = haul_command();
    command
        .args(["ls", "--from", addr])
        .args(args)
        .stdin(Stdio::null());
    match secret {
        Some(secret) => command.env("HAUL_TOKEN", secret),
        None => command.env_remove("HAUL_TOKEN"),
    };
    command.output().unwrap()
}

fn ls(addr: &str, args: &[&str]) -> Output {
    ls_as(None, addr, args)
}

fn set_mtime(path: &Path, secs: u64, nanos: u32) -> SystemTime {
    let time = UNIX_EPOCH + Duration::new(secs, nanos);
    std::fs::File::open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
    time
}

/// Puts `a.txt` (5 bytes) and `photos/` (holding `b.jpg`) in `inbox`.
fn plant(inbox: &Path) {
    std::fs::write(inbox.join("a.txt"), b"hello").unwrap();
    std::fs::create_dir(inbox.join("photos")).unwrap();
    std::fs::write(inbox.join("photos/b.jpg"), b"not a photo").unwrap();
}

const DROP_REFUSAL: &str = "haul: not allowed: this server does not share its files; \
                            its operator can start it with --allow-get\n";

/// A drop server (the default) answers every listing the same way, whether
/// the path is there or not, and says how to share.
#[test]
fn a_drop_server_refuses_ls_saying_how_to_share_and_reveals_nothing() {
    let server = HaulServer::start(&[]);
    plant(&server.inbox);
    for path in [&[][..], &["a.txt"], &["photos"], &["missing"]] {
        let output = ls(server.addr(), path);
        assert_eq!(output.status.code(), Some(5), "{path:?}");
        assert_eq!(stderr_of(&output), DROP_REFUSAL, "{path:?}");
        assert_eq!(stdout_of(&output), "", "{path:?}");
    }
    let output = ls(server.addr(), &["--json"]);
    assert_eq!(output.status.code(), Some(5));
    let lines = json::lines(&output.stdout);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let summary = json::summary(&lines);
    assert_eq!(summary["entries"], 0);
    assert!(
        summary["error"].as_str().unwrap().contains("--allow-get"),
        "{summary}"
    );
    server
        .running
        .wait_for_log(&["WARN", "this server does not share its files"]);
}

/// What `--allow-get` lists is the folder as it is: every name, kind,
/// size, time and mode, from the file system itself.
#[test]
fn a_sharing_server_lists_names_kinds_sizes_and_times_exactly() {
    let server = HaulServer::start(&["--allow-get"]);
    let inbox = &server.inbox;
    plant(inbox);
    std::fs::write(inbox.join("naïve – 日本.txt"), vec![7u8; 3000]).unwrap();
    std::fs::set_permissions(inbox.join("a.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    set_mtime(&inbox.join("a.txt"), 1_700_000_000, 123_456_789);
    set_mtime(&inbox.join("naïve – 日本.txt"), 86_400, 0);
    set_mtime(&inbox.join("photos"), 1_000_000_000, 5);

    let output = ls(server.addr(), &["--json"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let lines = json::lines(&output.stdout);
    let mut listed: Vec<String> = json::of_kind(&lines, "entry")
        .iter()
        .map(|entry| entry.to_string())
        .collect();
    listed.sort();
    // Everything in the inbox but the hidden area (see the next test).
    let mut expected: Vec<String> = std::fs::read_dir(inbox)
        .unwrap()
        .map(Result::unwrap)
        .filter(|entry| entry.file_name() != ".haul")
        .map(|entry| {
            let metadata = entry.metadata().unwrap();
            serde_json::json!({
                "event": "entry",
                "name": entry.file_name().to_str().unwrap(),
                "kind": if metadata.is_dir() { "dir" } else { "file" },
                "size": if metadata.is_dir() { 0 } else { metadata.len() },
                "mode": metadata.permissions().mode() & 0o777,
            })
            .to_string()
        })
        .collect();
    expected.sort();
    // All but the times, which are compared below, as the clock wrote them.
    let without_mtime = |line: &String| {
        let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
        value.as_object_mut().unwrap().remove("mtime");
        value.to_string()
    };
    assert_eq!(
        listed.iter().map(without_mtime).collect::<Vec<_>>(),
        expected.iter().map(without_mtime).collect::<Vec<_>>()
    );
    let mtimes: Vec<(String, String)> = json::of_kind(&lines, "entry")
        .iter()
        .map(|entry| {
            (
                entry["name"].as_str().unwrap().to_owned(),
                entry["mtime"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (name, mtime) in [
        ("a.txt", "2023-11-14T22:13:20.123456789Z"),
        ("naïve – 日本.txt", "1970-01-02T00:00:00.000000000Z"),
        ("photos", "2001-09-09T01:46:40.000000005Z"),
    ] {
        assert!(
            mtimes.contains(&(name.to_owned(), mtime.to_owned())),
            "{name} {mtime} in {mtimes:?}"
        );
    }
    let summary = json::summary(&lines);
    assert_eq!(
        (
            &summary["entries"],
            &summary["files"],
            &summary["folders"],
            &summary["bytes"]
        ),
        (
            &serde_json::json!(3),
            &serde_json::json!(2),
            &serde_json::json!(1),
            &serde_json::json!(3005)
        )
    );
    assert_eq!(summary["error"], serde_json::Value::Null);

    // For people: ls -l's shape, the times in UTC, folders with a slash.
    let output = ls(server.addr(), &[]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let mut shown: Vec<String> = stdout_of(&output).lines().map(str::to_owned).collect();
    shown.sort();
    assert_eq!(
        shown,
        [
            "-rw-r-----         5 B  2023-11-14T22:13:20Z  a.txt",
            "-rw-r--r--     2.9 KiB  1970-01-02T00:00:00Z  naïve – 日本.txt",
            "drwxr-xr-x           -  2001-09-09T01:46:40Z  photos/",
        ]
    );
    assert_eq!(
        stderr_of(&output),
        "3 entries: 2 files (2.9 KiB), 1 folder\n"
    );

    // A folder, and a path that names one file.
    let output = ls(server.addr(), &["photos/"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(
        stdout_of(&output).ends_with("  b.jpg\n"),
        "{}",
        stdout_of(&output)
    );
    assert_eq!(stdout_of(&output).lines().count(), 1);
    let output = ls(server.addr(), &["a.txt"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        stdout_of(&output),
        "-rw-r-----         5 B  2023-11-14T22:13:20Z  a.txt\n"
    );

    // Nothing there: exit 1, the path named.
    let output = ls(server.addr(), &["photos/missing.jpg"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_of(&output),
        "haul: no such file or folder on the server: photos/missing.jpg\n"
    );
    assert_eq!(stdout_of(&output), "");
}

/// Partial data of an interrupted upload lives in `.haul/`, which is never
/// listed, and cannot be asked for.
#[test]
fn the_hidden_area_never_appears_in_a_listing() {
    let server = HaulServer::start(&["--allow-get"]);
    std::fs::write(server.inbox.join("kept.txt"), b"kept").unwrap();
    let mut stream = raw_haul_session(server.addr());
    stream
        .write_all(&frame(&Message::Offer(Offer {
            kind: EntryKind::File,
            size: Some(1000),
            hash: None,
            mtime: Mtime { secs: 5, nanos: 0 },
            mode: 0o644,
            path: b"half.bin",
        })))
        .unwrap();
    stream.write_all(&frame(&Message::BatchEnd)).unwrap();
    let answer = read_message(&mut stream);
    assert!(answer.contains("Send { offset: 0 }"), "{answer}");
    stream.write_all(&data_frame(&[1; 300])).unwrap();
    drop(stream);
    server.running.wait_for_log(&["half.bin", "kept"]);
    assert!(!server.hidden_files().is_empty(), "partial data is held");

    let output = ls(server.addr(), &[]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let listed = stdout_of(&output);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.ends_with("  kept.txt\n"), "{listed}");

    let output = ls(server.addr(), &["half.bin"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));

    // The client will not ask for it; a hand-made one is refused by name.
    let output = ls(server.addr(), &[".haul"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains("reserved"),
        "{}",
        stderr_of(&output)
    );
    for path in [".haul", ".haul/x", "../x"] {
        let mut stream = raw_haul_session(server.addr());
        stream.write_all(&frame(&Message::List { path })).unwrap();
        let answer = read_message(&mut stream);
        assert!(
            answer.starts_with("Error { code: NameRefused")
                && answer.contains(&format!("the path {path} is refused")),
            "{path}: {answer}"
        );
    }
}

/// Rights come from the secret: the get-only secret lists, the send-only
/// one is refused, and the main one lists on a server that shares.
#[test]
fn a_get_only_secret_lists_and_a_send_only_secret_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    let server = HaulServer::start(&[
        "--token-file",
        &token_file(keys.path(), "main", MAIN),
        "--send-token-file",
        &token_file(keys.path(), "send", SEND),
        "--get-token-file",
        &token_file(keys.path(), "get", GET),
    ]);
    plant(&server.inbox);
    for secret in [GET, MAIN] {
        let output = ls_as(Some(secret), server.addr(), &[]);
        assert!(output.status.success(), "{}", stderr_of(&output));
        let mut names: Vec<String> = stdout_of(&output)
            .lines()
            .map(|line| line.rsplit("  ").next().unwrap().to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a.txt", "photos/"]);
    }
    let output = ls_as(Some(SEND), server.addr(), &[]);
    assert_eq!(output.status.code(), Some(5), "{}", stderr_of(&output));
    assert_eq!(
        stderr_of(&output),
        "haul: not allowed: this secret may not get or list here\n"
    );
    assert_eq!(stdout_of(&output), "");

    let output = ls_as(None, server.addr(), &[]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr_of(&output));
}

/// A List is a session's first message or nothing: after an Offer it is
/// a sender's message from the wrong side, and the session ends.
#[test]
fn a_list_after_an_offer_is_refused() {
    let server = HaulServer::start(&["--allow-get"]);
    let mut stream = raw_haul_session(server.addr());
    stream
        .write_all(&frame(&Message::Offer(Offer {
            kind: EntryKind::Directory,
            size: None,
            hash: None,
            mtime: Mtime::default(),
            mode: 0o755,
            path: b"d",
        })))
        .unwrap();
    stream
        .write_all(&frame(&Message::List { path: "" }))
        .unwrap();
    let answer = read_message(&mut stream);
    assert_eq!(
        answer,
        "Error { code: Other, message: \"bad frame: List is not a message a sender sends\" }"
    );
    assert!(!server.inbox.join("d").exists(), "the batch never ran");
}

/// A List's path is bounded like an offer's: a longer one is refused
/// before it is looked at.
#[test]
fn a_list_with_a_path_over_the_limit_is_refused() {
    let server = HaulServer::start(&["--allow-get"]);
    let mut stream = raw_haul_session(server.addr());
    let path = "a/".repeat(MAX_PATH_LEN / 2) + "a";
    let mut list = vec![Kind::List as u8];
    list.extend_from_slice(&(path.len() as u32).to_be_bytes());
    list.extend_from_slice(path.as_bytes());
    stream.write_all(&list).unwrap();
    let answer = read_message(&mut stream);
    assert_eq!(
        answer,
        "Error { code: Other, message: \"bad frame: invalid value in List frame: path too long\" }"
    );
    let output = ls(server.addr(), &[&path]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains(&format!("at most {MAX_PATH_LEN}")),
        "{}",
        stderr_of(&output)
    );
}

/// A hand-made server that answers any List with one good entry, then
/// one named `bad`.
fn lying_server(bad: &'static [u8]) -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let serving = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut magic = [0u8; MAGIC.len()];
        std::io::Read::read_exact(&mut stream, &mut magic).unwrap();
        assert_eq!(magic, MAGIC);
        let hello = read_raw_frame(&mut stream);
        assert_eq!(hello[0], Kind::Hello as u8);
        stream
            .write_all(&frame(&Message::Welcome {
                version: wire::VERSION,
                capabilities: 0,
            }))
            .unwrap();
        let list = read_raw_frame(&mut stream);
        assert_eq!(list[0], Kind::List as u8);
        assert_eq!(&list[FRAME_HEADER_LEN..], b"");
        let entry = |name| ListEntry {
            kind: EntryKind::File,
            size: 1,
            mtime: Mtime::default(),
            mode: 0o644,
            name,
        };
        let mut entries = EntriesBuilder::new();
        entries.push(&entry(b"good.txt"));
        stream
            .write_all(&frame(&Message::Entries(entries.entries())))
            .unwrap();
        entries.clear();
        entries.push(&entry(bad));
        stream
            .write_all(&frame(&Message::Entries(entries.entries())))
            .unwrap();
        // The client may have gone already.
        let _ = stream.write_all(&frame(&Message::ListEnd));
        let mut stream: TcpStream = stream;
        let _ = util::read_until_closed(&mut stream);
    });
    (addr, serving)
}

/// Every name a server lists is judged as a stored name is: a path, `..`
/// or an escape sequence ends the listing with the problem named, and
/// nothing of it reaches the terminal.
#[test]
fn a_server_that_lists_a_bad_name_is_not_believed() {
    for (bad, problem) in [
        (&b"../../etc/passwd"[..], "a path separator"),
        (b"a/b", "a path separator"),
        (b"..", "`.` or `..`"),
        (
            b"\x1b]0;owned\x07\x1b[2J",
            "a NUL or another control character",
        ),
        (b"invoice\xe2\x80\xaefdp.exe", "a bidirectional control"),
    ] {
        let (addr, serving) = lying_server(bad);
        let output = ls(&addr, &[]);
        serving.join().unwrap();
        assert_eq!(output.status.code(), Some(1), "{bad:?}");
        let stderr = stderr_of(&output);
        assert!(
            stderr.starts_with("haul: the server broke the protocol: it listed the name \"")
                && stderr.contains("which is not one valid file name")
                && stderr.contains(problem),
            "{bad:?}: {stderr}"
        );
        assert!(
            !stderr.contains('\x1b') && !stderr.contains('\u{202e}'),
            "{stderr:?}"
        );
        let stdout = stdout_of(&output);
        assert!(stdout.ends_with("  good.txt\n"), "{stdout}");
        assert_eq!(stdout.lines().count(), 1, "only the good name: {stdout}");
    }
}

/// A client that asks for a large listing and then reads nothing holds
/// the server's writes for `--idle-timeout` at most: the session ends, and
/// the server lists for others meanwhile and after.
#[test]
fn a_client_that_stops_reading_a_listing_is_dropped() {
    let server = HaulServer::start(&["--allow-get", "--idle-timeout", "2s"]);
    let folder = server.inbox.join("many");
    std::fs::create_dir(&folder).unwrap();
    // 100,000 entries of 200-byte names: far more than the sockets' buffers.
    for index in 0..100_000 {
        let name = format!("{index:06}-{}", "y".repeat(193));
        std::fs::File::create(folder.join(name)).unwrap();
    }
    let mut stream = raw_haul_session(server.addr());
    stream
        .write_all(&frame(&Message::List { path: "many" }))
        .unwrap();
    server
        .running
        .wait_for_log(&["haul session failed", "the peer read nothing for 2s"]);
    let output = ls(server.addr(), &[]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        stdout_of(&output).lines().count(),
        1,
        "{}",
        stdout_of(&output)
    );
    drop(stream);
}
