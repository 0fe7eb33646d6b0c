//! `haul get` end to end: real `haul serve --allow-get` processes, real
//! sockets and real folders. What is got is what the server holds, byte for
//! byte and with its times and modes; a cut get resumes; rights are the
//! secret's; haul's hidden area is never handed out; and `--json` is only
//! JSON lines.

mod util;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haul::protocol::haul::{GetPaths, Message};
use serde_json::Value;
use util::proxy::{Fault, Proxy};
use util::wire::{frame, raw_haul_session, read_message};
use util::{
    HaulServer, haul_command, json, own_umask, random_bytes, stderr_of, stdout_of, token_file,
};

const MAIN: &str = "6d61696e2d7365637265742d6f662d7468652d7365727665722121212121212121";
const SEND: &str = "73656e642d6f6e6c792d7365637265742d6f662d7468652073657276657221";
const GET: &str = "6765742d6f6e6c792d7365637265742d6f662d74686520736572766572212121";

/// `haul get --from FROM ARGS...`, with HAUL_TOKEN set to `secret` or
/// unset, ready to run (a test may change its working directory).
fn get_command(secret: Option<&str>, from: &str, args: &[&str]) -> Command {
    let mut command = haul_command();
    command
        .args(["get", "--from", from])
        .args(args)
        .stdin(Stdio::null());
    match secret {
        Some(secret) => command.env("HAUL_TOKEN", secret),
        None => command.env_remove("HAUL_TOKEN"),
    };
    command
}

fn get_as(secret: Option<&str>, from: &str, args: &[&str]) -> Output {
    get_command(secret, from, args).output().unwrap()
}

fn get(from: &str, args: &[&str]) -> Output {
    get_as(None, from, args)
}

/// `haul send --to TO PATHS...` with HAUL_TOKEN set to `secret` or unset.
fn send_as(secret: Option<&str>, to: &str, paths: &[&Path]) -> Output {
    let mut command = haul_command();
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

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::symlink_metadata(path).unwrap().modified().unwrap()
}

fn set_mtime(path: &Path, secs: u64, nanos: u32) {
    let time = UNIX_EPOCH + Duration::new(secs, nanos);
    let file = std::fs::File::options().read(true).open(path).unwrap();
    file.set_modified(time).unwrap();
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Every entry under `dir`, its own hidden area included, with its kind,
/// size and time: for "nothing here changed" and "nothing was written".
fn listing(dir: &Path) -> Vec<String> {
    let mut entries: Vec<String> = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(|entry| {
            let entry = entry.unwrap();
            let metadata = entry.metadata().unwrap();
            format!(
                "{} dir={} len={} mtime={:?}",
                entry.path().strip_prefix(dir).unwrap().display(),
                metadata.is_dir(),
                metadata.len(),
                metadata.modified().unwrap()
            )
        })
        .collect();
    entries.sort();
    entries
}

/// The files (not folders) in `dir`'s hidden area `.haul/`, with their
/// bytes; empty when there is no hidden area.
fn hidden_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let hidden = dir.join(".haul");
    if !hidden.exists() {
        return Vec::new();
    }
    let mut files: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(&hidden)
        .into_iter()
        .map(Result::unwrap)
        .filter(|entry| entry.file_type().is_file())
        .map(|entry| {
            (
                entry
                    .path()
                    .strip_prefix(&hidden)
                    .unwrap()
                    .display()
                    .to_string(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// A finished get leaves no partial data behind.
fn assert_nothing_partial(dir: &Path) {
    let hidden = hidden_files(dir);
    let names: Vec<&String> = hidden.iter().map(|(name, _)| name).collect();
    assert!(names.is_empty(), "partial data left in .haul: {names:?}");
}

/// The names directly in `dir` but its hidden area, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != ".haul")
        .collect();
    names.sort();
    names
}

/// Asserts that `copy` holds exactly what `original` holds: the same
/// entries (no more, no fewer), kinds, bytes (and so BLAKE3 hashes), modes
/// (masked by the umask, as every receiver masks them) and times to the
/// nanosecond, the top folder included.
fn assert_same_tree(original: &Path, copy: &Path) {
    let umask = own_umask();
    let relative_entries = |root: &Path| -> Vec<PathBuf> {
        walkdir::WalkDir::new(root)
            .sort_by_file_name()
            .into_iter()
            .map(|entry| {
                entry
                    .unwrap()
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_path_buf()
            })
            .filter(|relative| !relative.starts_with(".haul"))
            .collect()
    };
    let entries = relative_entries(original);
    assert_eq!(entries, relative_entries(copy), "the same entries");
    for relative in &entries {
        let (from, to) = (original.join(relative), copy.join(relative));
        let shown = relative.display();
        let (a, b) = (
            std::fs::symlink_metadata(&from).unwrap(),
            std::fs::symlink_metadata(&to).unwrap(),
        );
        assert_eq!(a.is_dir(), b.is_dir(), "{shown}: kind");
        assert!(b.is_dir() || b.is_file(), "{shown}: a plain file or folder");
        assert_eq!(
            b.permissions().mode() & 0o777,
            a.permissions().mode() & 0o777 & !umask,
            "{shown}: mode"
        );
        assert_eq!(mtime(&from), mtime(&to), "{shown}: time");
        if a.is_file() {
            let (x, y) = (std::fs::read(&from).unwrap(), std::fs::read(&to).unwrap());
            assert_eq!(blake3_hex(&x), blake3_hex(&y), "{shown}: BLAKE3");
            assert!(x == y, "{shown}: bytes");
        }
    }
}

/// The files of the tree [`make_tree`] makes, as `/`-separated paths
/// under its top.
const TREE_FILES: [&str; 6] = [
    "top.txt",
    "naïve.txt",
    "日本/深い/歌.txt",
    "docs/drafts/v1.txt",
    "docs/big.bin",
    "bin/run.sh",
];

/// A tree with nested folders, an empty folder and an empty file,
/// non-ASCII names, a 3 MiB file, several modes and times with nanoseconds.
fn make_tree(root: &Path) {
    for dir in ["docs/drafts", "empty", "日本/深い", "bin"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("top.txt"), b"top level").unwrap();
    std::fs::write(root.join("naïve.txt"), "naïve – contenu".as_bytes()).unwrap();
    std::fs::write(root.join("日本/深い/歌.txt"), "古池や".as_bytes()).unwrap();
    std::fs::write(root.join("docs/drafts/v1.txt"), b"").unwrap();
    std::fs::write(root.join("docs/big.bin"), random_bytes(3 << 20, 17)).unwrap();
    std::fs::write(root.join("bin/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    set_mode(&root.join("top.txt"), 0o640);
    set_mode(&root.join("bin/run.sh"), 0o755);
    set_mode(&root.join("docs/drafts/v1.txt"), 0o600);
    set_mode(&root.join("bin"), 0o700);
    set_mode(&root.join("日本"), 0o755);
    set_mode(&root.join("empty"), 0o750);
    for (index, file) in TREE_FILES.iter().enumerate() {
        set_mtime(
            &root.join(file),
            1_600_000_000 + index as u64 * 1000,
            123_456_789 - index as u32,
        );
    }
    // Folders last, deepest first: writing into a folder changes its time.
    for (index, dir) in [
        "docs/drafts",
        "日本/深い",
        "docs",
        "empty",
        "日本",
        "bin",
        "",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(
            &root.join(dir),
            1_500_000_000 + index as u64 * 1000,
            5 + index as u32,
        );
    }
}

/// A tree pushed with `haul send` and fetched back with `haul get` is the
/// tree that was sent: every byte, mode, time and empty folder.
#[test]
fn a_tree_sent_and_got_back_is_identical() {
    let server = HaulServer::start(&["--allow-get"]);
    let source = tempfile::tempdir().unwrap();
    let tree = source.path().join("project");
    make_tree(&tree);
    let sent = send_as(None, server.addr(), &[&tree]);
    assert!(sent.status.success(), "{}", stderr_of(&sent));
    assert_same_tree(&tree, &server.inbox.join("project"));

    let into = tempfile::tempdir().unwrap();
    let output = get(
        server.addr(),
        &["--json", "project", "--into", path_str(into.path())],
    );
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_same_tree(&tree, &into.path().join("project"));
    assert_eq!(names_in(into.path()), ["project"]);
    assert_nothing_partial(into.path());

    // Each file reported once, named as the server offered it and as it
    // landed, with the hash of the bytes that were sent.
    let lines = json::lines(&output.stdout);
    let mut stored: Vec<(String, String, u64, String, bool)> = json::of_kind(&lines, "stored")
        .iter()
        .map(|event| {
            (
                event["path"].as_str().unwrap().to_owned(),
                event["stored_as"].as_str().unwrap().to_owned(),
                event["bytes"].as_u64().unwrap(),
                event["blake3"].as_str().unwrap().to_owned(),
                event["verified"].as_bool().unwrap(),
            )
        })
        .collect();
    stored.sort();
    let mut expected: Vec<(String, String, u64, String, bool)> = TREE_FILES
        .iter()
        .map(|file| {
            let bytes = std::fs::read(tree.join(file)).unwrap();
            let path = format!("project/{file}");
            (
                path.clone(),
                path,
                bytes.len() as u64,
                blake3_hex(&bytes),
                true,
            )
        })
        .collect();
    expected.sort();
    assert_eq!(stored, expected);
    let total: u64 = expected.iter().map(|(_, _, bytes, _, _)| bytes).sum();
    let summary = json::summary(&lines);
    assert_eq!(summary["stored"], TREE_FILES.len(), "{summary}");
    assert_eq!(summary["already_there"], 0, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["bytes_received"], total, "{summary}");
    assert_eq!(summary["error"], Value::Null, "{summary}");

    // A file deep in the tree lands under its own name only.
    let output = get(
        server.addr(),
        &[
            "project/日本/深い/歌.txt",
            "--into",
            path_str(&into.path().join("one")),
        ],
    );
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(names_in(&into.path().join("one")), ["歌.txt"]);
    assert_eq!(
        std::fs::read(into.path().join("one/歌.txt")).unwrap(),
        "古池や".as_bytes()
    );
    assert_eq!(
        mtime(&into.path().join("one/歌.txt")),
        mtime(&tree.join("日本/深い/歌.txt"))
    );
}

/// Puts `a.txt` (5 bytes), `docs/a.bin` (200 kB) and `photos/b.jpg` in
/// `inbox`; returns the bytes of `docs/a.bin`.
fn plant(inbox: &Path) -> Vec<u8> {
    std::fs::write(inbox.join("a.txt"), b"hello").unwrap();
    std::fs::create_dir_all(inbox.join("docs")).unwrap();
    let bin = random_bytes(200_000, 23);
    std::fs::write(inbox.join("docs/a.bin"), &bin).unwrap();
    std::fs::create_dir_all(inbox.join("photos")).unwrap();
    std::fs::write(inbox.join("photos/b.jpg"), b"not a photo").unwrap();
    bin
}

/// `--into -` is one file's bytes on standard output and nothing on disk;
/// a folder cannot go there, and neither can two paths.
#[test]
fn into_stdout_writes_exactly_one_files_bytes() {
    let server = HaulServer::start(&["--allow-get"]);
    let bin = plant(&server.inbox);
    let cwd = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        get_command(None, server.addr(), args)
            .current_dir(cwd.path())
            .output()
            .unwrap()
    };

    let output = run(&["docs/a.bin", "--into", "-"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert!(output.stdout == bin, "stdout is the file's bytes, no more");
    assert_eq!(listing(cwd.path()), Vec::<String>::new(), "nothing on disk");

    let output = run(&["photos", "--into", "-"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("is a folder"),
        "{}",
        stderr_of(&output)
    );
    assert!(
        stderr_of(&output).starts_with("haul: "),
        "{}",
        stderr_of(&output)
    );
    assert_eq!(output.stdout, b"");

    for args in [
        &["docs/a.bin", "a.txt", "--into", "-"][..],
        &["--json", "docs/a.bin", "--into", "-"],
    ] {
        let output = run(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr_of(&output)
        );
        assert_eq!(output.stdout, b"", "{args:?}");
    }
    assert_eq!(listing(cwd.path()), Vec::<String>::new(), "nothing on disk");

    // Without --into, a path lands under its last component in `.`.
    let output = run(&["docs/a.bin"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(names_in(cwd.path()), ["a.bin"]);
    assert!(std::fs::read(cwd.path().join("a.bin")).unwrap() == bin);
}

/// Standard output that takes no more is named as the fault, not the
/// connection.
#[test]
fn into_stdout_that_is_full_says_so() {
    let server = HaulServer::start(&["--allow-get"]);
    plant(&server.inbox);
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let output = get_command(None, server.addr(), &["docs/a.bin", "--into", "-"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert_eq!(
        stderr_of(&output),
        "haul: cannot write to standard output: no space left on device\n"
    );
}

/// A get whose connection is cut mid-file leaves its partial data in
/// `INTO/.haul/`, nothing under the final name, and the same command run
/// again moves only the rest.
#[test]
fn a_cut_get_resumes_and_moves_only_the_rest() {
    let server = HaulServer::start(&["--allow-get"]);
    let size: u64 = 8 << 20;
    let content = random_bytes(size as usize, 29);
    std::fs::create_dir(server.inbox.join("media")).unwrap();
    std::fs::write(server.inbox.join("media/big.bin"), &content).unwrap();
    let into = tempfile::tempdir().unwrap();
    let into_arg = path_str(into.path());
    let args = ["--json", "media/big.bin", "--into", into_arg];

    let proxy = Proxy::start(server.addr(), Fault::CutDownstreamAfter(3 << 20));
    let cut = get(&proxy.addr, &args);
    assert_eq!(cut.status.code(), Some(1), "{}", stderr_of(&cut));
    let lines = json::lines(&cut.stdout);
    assert!(
        json::summary(&lines)["error"].is_string(),
        "{:#?}",
        json::summary(&lines)
    );
    assert_eq!(names_in(into.path()), Vec::<String>::new(), "no final name");
    let hidden = hidden_files(into.path());
    let held = hidden
        .iter()
        .map(|(_, bytes)| bytes)
        .filter(|bytes| !bytes.is_empty() && content.starts_with(bytes))
        .map(|bytes| bytes.len() as u64)
        .max()
        .unwrap_or_else(|| {
            let sizes: Vec<_> = hidden.iter().map(|(n, b)| (n, b.len())).collect();
            panic!("no partial data of the file in .haul: {sizes:?}")
        });
    assert!(held < size, "{held}");

    // The same command, through the same (now healed) proxy.
    proxy.set_fault(Fault::None);
    let before = proxy.returned();
    let resumed = get(&proxy.addr, &args);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr_of(&resumed));
    let moved = proxy.returned() - before;
    assert!(
        std::fs::read(into.path().join("big.bin")).unwrap() == content,
        "the resumed file is the server's"
    );
    assert_eq!(names_in(into.path()), ["big.bin"]);
    assert_nothing_partial(into.path());

    let lines = json::lines(&resumed.stdout);
    let started = json::of_kind(&lines, "started");
    assert_eq!(started.len(), 1, "{lines:#?}");
    // Named as the server offers it: from the last component asked for.
    assert_eq!(started[0]["path"], "big.bin");
    assert_eq!(started[0]["size"], size);
    let offset = started[0]["offset"].as_u64().unwrap();
    assert!(
        offset > 0 && offset <= held,
        "resumed from {offset}, {held} held"
    );
    let stored = json::of_kind(&lines, "stored");
    assert_eq!(stored.len(), 1, "{lines:#?}");
    assert_eq!(stored[0]["stored_as"], "big.bin");
    assert_eq!(stored[0]["blake3"], blake3_hex(&content));
    let summary = json::summary(&lines);
    assert_eq!(summary["bytes_received"], size - offset, "{summary}");
    assert!(
        moved < size,
        "the re-run moved {moved} bytes, as many as the file ({size})"
    );
}

const DROP_REFUSAL: &str = "does not share its files";

/// A drop server (no --allow-get) hands out nothing, whatever is asked
/// for, and the client writes nothing.
#[test]
fn a_drop_server_refuses_get_and_nothing_is_written() {
    let server = HaulServer::start(&[]);
    plant(&server.inbox);
    let into = tempfile::tempdir().unwrap();
    for paths in [
        &["a.txt"][..],
        &["photos"],
        &["docs/a.bin", "a.txt"],
        &["missing"],
    ] {
        let mut args = paths.to_vec();
        args.extend(["--into", path_str(into.path())]);
        let output = get(server.addr(), &args);
        assert_eq!(
            output.status.code(),
            Some(5),
            "{paths:?}: {}",
            stderr_of(&output)
        );
        let stderr = stderr_of(&output);
        assert!(
            stderr.starts_with("haul: ") && stderr.contains(DROP_REFUSAL),
            "{paths:?}: {stderr}"
        );
        assert_eq!(stdout_of(&output), "", "{paths:?}");
        assert_eq!(listing(into.path()), Vec::<String>::new(), "{paths:?}");
    }
    let output = get(
        server.addr(),
        &["--json", "a.txt", "--into", path_str(into.path())],
    );
    assert_eq!(output.status.code(), Some(5), "{}", stderr_of(&output));
    let lines = json::lines(&output.stdout);
    let summary = json::summary(&lines);
    assert!(
        summary["error"].as_str().unwrap().contains(DROP_REFUSAL),
        "{summary}"
    );
    assert_eq!(listing(into.path()), Vec::<String>::new());
}

/// A server holding the main, the send-only and the get-only secret, and
/// the directory of their token files.
fn three_secret_server() -> (HaulServer, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let server = HaulServer::start(&[
        "--token-file",
        &token_file(keys.path(), "main", MAIN),
        "--send-token-file",
        &token_file(keys.path(), "send", SEND),
        "--get-token-file",
        &token_file(keys.path(), "get", GET),
    ]);
    (server, keys)
}

/// Rights come from the secret: the send-only secret cannot get, the
/// get-only one gets but cannot send.
#[test]
fn a_get_only_secret_gets_and_a_send_only_secret_cannot() {
    let (server, _keys) = three_secret_server();
    let bin = plant(&server.inbox);
    let into = tempfile::tempdir().unwrap();
    let into_arg = path_str(into.path());

    let output = get_as(Some(SEND), server.addr(), &["a.txt", "--into", into_arg]);
    assert_eq!(output.status.code(), Some(5), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    assert!(
        stderr.starts_with("haul: ") && stderr.contains("may not get or list"),
        "{stderr}"
    );
    assert_eq!(listing(into.path()), Vec::<String>::new());

    let output = get_as(
        Some(GET),
        server.addr(),
        &["docs", "a.txt", "--into", into_arg],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert!(std::fs::read(into.path().join("docs/a.bin")).unwrap() == bin);
    assert_eq!(std::fs::read(into.path().join("a.txt")).unwrap(), b"hello");

    // The get-only secret sends nothing.
    let before = listing(&server.inbox);
    let source = tempfile::tempdir().unwrap();
    let file = source.path().join("pushed.txt");
    std::fs::write(&file, b"pushed").unwrap();
    let output = send_as(Some(GET), server.addr(), &[&file]);
    assert_eq!(output.status.code(), Some(5), "{}", stderr_of(&output));
    assert_eq!(listing(&server.inbox), before);
}

/// A get that is not let in (no secret, a secret the server does not
/// hold) or reaches no server at all writes nothing into an existing
/// --into: not even an empty hidden area.
#[test]
fn a_get_not_let_in_or_reaching_nobody_writes_nothing() {
    let (server, _keys) = three_secret_server();
    plant(&server.inbox);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = closed.local_addr().unwrap().to_string();
    drop(closed);
    let wrong = "77726f6e672d7365637265742d6e6f742d6f6e652d6f662d7468656d21";
    // Every case is run and its exit code checked before any listing is
    // judged, so that one failure shows all of them.
    let mut written = Vec::new();
    for (case, secret, from, code) in [
        ("no secret", None, server.addr(), 4),
        ("a wrong secret", Some(wrong), server.addr(), 4),
        ("no server", None, nobody.as_str(), 3),
    ] {
        let into = tempfile::tempdir().unwrap();
        let output = get_as(secret, from, &["a.txt", "--into", path_str(into.path())]);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{case}: {}",
            stderr_of(&output)
        );
        assert_eq!(stdout_of(&output), "", "{case}");
        let left = listing(into.path());
        if !left.is_empty() {
            written.push(format!("{case}: {left:?}"));
        }
    }
    assert!(written.is_empty(), "written into --into: {written:#?}");
}

/// The main secret, given in HAUL_TOKEN, gets from a server that shares.
#[test]
fn the_main_secret_gets_from_a_sharing_server() {
    let keys = tempfile::tempdir().unwrap();
    let server = HaulServer::start(&[
        "--token-file",
        &token_file(keys.path(), "main", MAIN),
        "--allow-get",
    ]);
    let bin = plant(&server.inbox);
    let into = tempfile::tempdir().unwrap();
    let output = get_as(
        Some(MAIN),
        server.addr(),
        &["docs/a.bin", "photos", "--into", path_str(into.path())],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert!(std::fs::read(into.path().join("a.bin")).unwrap() == bin);
    assert_eq!(
        std::fs::read(into.path().join("photos/b.jpg")).unwrap(),
        b"not a photo"
    );
    assert_eq!(names_in(into.path()), ["a.bin", "photos"]);
}

/// Something in the server's hidden area, `.haul/`, as partial data of an
/// upload would be: the bytes that must never be got.
const HIDDEN_BYTES: &[u8] = b"half of someone else's upload";

/// A sharing server holding `kept.txt`, `box/inner.txt` and, put there by
/// hand, `.haul/secret.bin`.
fn server_with_hidden_data() -> HaulServer {
    let server = HaulServer::start(&["--allow-get"]);
    let inbox = &server.inbox;
    std::fs::write(inbox.join("kept.txt"), b"kept").unwrap();
    std::fs::create_dir_all(inbox.join("box")).unwrap();
    std::fs::write(inbox.join("box/inner.txt"), b"inner").unwrap();
    std::fs::create_dir_all(inbox.join(".haul")).unwrap();
    std::fs::write(inbox.join(".haul/secret.bin"), HIDDEN_BYTES).unwrap();
    server
}

/// The contract: `haul get .haul` is "not found / refused", exit 1, and
/// writes nothing.
#[test]
fn getting_the_hidden_area_by_name_is_a_usage_error() {
    let server = server_with_hidden_data();
    let into = tempfile::tempdir().unwrap();
    let output = get(server.addr(), &[".haul", "--into", path_str(into.path())]);
    // Judged by the name rules before anything is asked, as `haul ls .haul`.
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("the name `.haul` is reserved for haul's own use"),
        "{}",
        stderr_of(&output)
    );
    assert_eq!(stdout_of(&output), "");
    assert_eq!(listing(into.path()), Vec::<String>::new());
}

/// Partial data of uploads lives in the server's `.haul/`; nobody gets it,
/// by name or with everything else.
#[test]
fn the_hidden_area_is_never_got() {
    let server = server_with_hidden_data();
    let inbox = &server.inbox;
    let secret = HIDDEN_BYTES;
    let into = tempfile::tempdir().unwrap();
    let into_arg = path_str(into.path());

    // Refused before anything is asked or written (the exit code of
    // `.haul` itself is the previous test's).
    for path in [".haul", ".haul/secret.bin", "/.haul/", "box/../.haul"] {
        let output = get(server.addr(), &[path, "--into", into_arg]);
        assert!(
            matches!(output.status.code(), Some(1 | 2)),
            "{path}: {:?} {}",
            output.status,
            stderr_of(&output)
        );
    }
    assert_eq!(listing(into.path()), Vec::<String>::new());

    // Asked for by a hand-made client, it is refused before any Offer.
    for path in [".haul", ".haul/secret.bin", "box/../.haul/secret.bin"] {
        let mut stream = raw_haul_session(server.addr());
        let mut payload = Vec::new();
        let request = GetPaths::build(&[path], &mut payload).unwrap();
        stream.write_all(&frame(&Message::Get(request))).unwrap();
        let answer = read_message(&mut stream);
        assert!(
            answer.starts_with("Error { code: NameRefused")
                || answer.starts_with("Error { code: NotFound"),
            "{path}: {answer}"
        );
    }

    // Everything at the top, got, is everything but the hidden area.
    let output = get(
        server.addr(),
        &["--json", "kept.txt", "box", "--into", into_arg],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(names_in(into.path()), ["box", "kept.txt"]);
    assert_eq!(names_in(&into.path().join("box")), ["inner.txt"]);
    assert_nothing_partial(into.path());
    let lines = json::lines(&output.stdout);
    let mut paths: Vec<&str> = json::of_kind(&lines, "stored")
        .iter()
        .map(|event| event["path"].as_str().unwrap())
        .collect();
    paths.sort();
    assert_eq!(paths, ["box/inner.txt", "kept.txt"]);

    // A folder called `.haul` deeper down, made by hand on the server, is
    // not handed out either, and does not break the get of its parent.
    std::fs::create_dir_all(inbox.join("box/.haul")).unwrap();
    std::fs::write(inbox.join("box/.haul/nested.bin"), secret).unwrap();
    let again = tempfile::tempdir().unwrap();
    let output = get(server.addr(), &["box", "--into", path_str(again.path())]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(names_in(&again.path().join("box")), ["inner.txt"]);
    for entry in walkdir::WalkDir::new(again.path()) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            assert_ne!(
                std::fs::read(entry.path()).unwrap(),
                secret,
                "{}",
                entry.path().display()
            );
        }
    }
}

/// A path that is not on the server fails the get, names the path, and
/// nothing of the other paths asked for is written either.
#[test]
fn a_missing_path_is_named_and_nothing_is_got() {
    let server = HaulServer::start(&["--allow-get"]);
    plant(&server.inbox);
    let into = tempfile::tempdir().unwrap();
    let into_arg = path_str(into.path());
    for (paths, missing) in [
        (&["nope"][..], "nope"),
        (&["photos/nope.jpg"], "photos/nope.jpg"),
        (&["a.txt", "nope"], "nope"),
        (&["nope/"], "nope"),
    ] {
        let mut args = paths.to_vec();
        args.extend(["--into", into_arg]);
        let output = get(server.addr(), &args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{paths:?}: {}",
            stderr_of(&output)
        );
        let stderr = stderr_of(&output);
        assert!(
            stderr.contains(&format!(
                "haul: no such file or folder on the server: {missing}"
            )),
            "{paths:?}: {stderr}"
        );
        assert_eq!(listing(into.path()), Vec::<String>::new(), "{paths:?}");
    }
}

/// The `already_there` events of a `--json` get, as (path, stored_as).
fn already_there(lines: &[Value]) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = json::of_kind(lines, "already_there")
        .iter()
        .map(|event| {
            (
                event["path"].as_str().unwrap().to_owned(),
                event["stored_as"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    found
}

/// What is already here is not fetched again; a different local file is
/// kept, and the server's lands beside it.
#[test]
fn identical_files_are_skipped_and_a_changed_one_is_kept() {
    let server = HaulServer::start(&["--allow-get"]);
    let tree = server.inbox.join("t");
    std::fs::create_dir_all(tree.join("b")).unwrap();
    std::fs::write(tree.join("a.txt"), b"server's a").unwrap();
    std::fs::write(tree.join("b/c.bin"), random_bytes(500_000, 31)).unwrap();
    let into = tempfile::tempdir().unwrap();
    let into_arg = path_str(into.path());
    let args = ["--json", "t", "--into", into_arg];

    let first = get(server.addr(), &args);
    assert_eq!(first.status.code(), Some(0), "{}", stderr_of(&first));
    assert_same_tree(&tree, &into.path().join("t"));
    let before = listing(into.path());

    let counting = Proxy::start(server.addr(), Fault::None);
    let second = get(&counting.addr, &args);
    assert_eq!(second.status.code(), Some(0), "{}", stderr_of(&second));
    let lines = json::lines(&second.stdout);
    assert_eq!(
        already_there(&lines),
        [
            ("t/a.txt".to_owned(), "t/a.txt".to_owned()),
            ("t/b/c.bin".to_owned(), "t/b/c.bin".to_owned())
        ]
    );
    assert_eq!(json::of_kind(&lines, "stored").len(), 0, "{lines:#?}");
    let summary = json::summary(&lines);
    assert_eq!(summary["already_there"], 2, "{summary}");
    assert_eq!(summary["bytes_received"], 0, "{summary}");
    assert!(
        counting.returned() < 100_000,
        "{} bytes came from the server for files already here",
        counting.returned()
    );
    assert_eq!(listing(into.path()), before, "nothing here changed");

    // A local change is kept; the server's file lands as `a (1).txt`.
    std::fs::write(into.path().join("t/a.txt"), b"my own a").unwrap();
    let third = get(server.addr(), &args);
    assert_eq!(third.status.code(), Some(0), "{}", stderr_of(&third));
    assert_eq!(
        std::fs::read(into.path().join("t/a.txt")).unwrap(),
        b"my own a"
    );
    assert_eq!(
        std::fs::read(into.path().join("t/a (1).txt")).unwrap(),
        b"server's a"
    );
    assert_eq!(
        names_in(&into.path().join("t")),
        ["a (1).txt", "a.txt", "b"]
    );
    let lines = json::lines(&third.stdout);
    let stored = json::of_kind(&lines, "stored");
    assert_eq!(stored.len(), 1, "{lines:#?}");
    assert_eq!(stored[0]["path"], "t/a.txt");
    assert_eq!(stored[0]["stored_as"], "t/a (1).txt");
    assert_eq!(
        already_there(&lines),
        [("t/b/c.bin".to_owned(), "t/b/c.bin".to_owned())]
    );
}

/// The event names `--json` may print.
const EVENTS: [&str; 5] = ["started", "stored", "already_there", "failed", "summary"];

/// Asserts that `stdout` is JSON lines only, of known events, with one
/// summary, last, naming the server; returns the lines.
fn assert_json_lines(stdout: &[u8], from: &str) -> Vec<Value> {
    let lines = json::lines(stdout);
    for line in &lines {
        let event = line["event"].as_str().unwrap_or_else(|| panic!("{line}"));
        assert!(EVENTS.contains(&event), "{line}");
    }
    let summaries = json::of_kind(&lines, "summary");
    assert_eq!(summaries.len(), 1, "{lines:#?}");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "summary", "{lines:#?}");
    assert_eq!(last["from"], from, "{last}");
    for field in [
        "stored",
        "already_there",
        "failed",
        "skipped",
        "bytes_received",
        "wire_bytes",
    ] {
        assert!(last[field].is_u64(), "{field} in {last}");
    }
    assert!(last["seconds"].is_number(), "{last}");
    lines
}

/// `--json` prints JSON lines and nothing else on stdout, whether the get
/// works or fails, the summary last with the server it asked.
#[test]
fn json_is_only_json_lines_with_the_summary_last() {
    let server = HaulServer::start(&["--allow-get"]);
    let bin = plant(&server.inbox);
    let into = tempfile::tempdir().unwrap();
    let into_arg = path_str(into.path());

    let output = get(
        server.addr(),
        &["--json", "a.txt", "docs", "--into", into_arg],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(stderr_of(&output), "", "stderr gets only failures");
    let lines = assert_json_lines(&output.stdout, server.addr());
    assert_eq!(json::summary(&lines)["error"], Value::Null);
    assert_eq!(json::summary(&lines)["stored"], 2);
    // Each file starts, from its first byte, before it is stored.
    for (path, stored_as, bytes) in [
        ("a.txt", "a.txt", b"hello".to_vec()),
        ("docs/a.bin", "docs/a.bin", bin),
    ] {
        let started = lines
            .iter()
            .position(|line| line["event"] == "started" && line["path"] == path)
            .unwrap_or_else(|| panic!("no started for {path}: {lines:#?}"));
        assert_eq!(lines[started]["size"], bytes.len());
        assert_eq!(lines[started]["offset"], 0);
        let stored = lines
            .iter()
            .position(|line| line["event"] == "stored" && line["path"] == path)
            .unwrap_or_else(|| panic!("no stored for {path}: {lines:#?}"));
        assert!(started < stored, "{lines:#?}");
        let event = &lines[stored];
        assert_eq!(event["stored_as"], stored_as);
        assert_eq!(event["bytes"], bytes.len());
        assert_eq!(event["blake3"], blake3_hex(&bytes));
        assert_eq!(event["verified"], true);
    }

    let output = get(server.addr(), &["--json", "nope", "--into", into_arg]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let lines = assert_json_lines(&output.stdout, server.addr());
    let error = json::summary(&lines)["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("no such file or folder on the server: nope"),
        "{error}"
    );

    // No server there: exit 3, and still only JSON lines.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = closed.local_addr().unwrap().to_string();
    drop(closed);
    let output = get(&nobody, &["--json", "a.txt", "--into", into_arg]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
    let lines = assert_json_lines(&output.stdout, &nobody);
    assert!(json::summary(&lines)["error"].is_string(), "{lines:#?}");
}

/// On a terminal `haul get` draws the live display instead of a line per
/// file, as `haul send` does, and ends with the closing line.
#[test]
fn on_a_terminal_a_get_shows_the_display_and_the_closing_line() {
    let server = HaulServer::start(&["--allow-get"]);
    let content = random_bytes(2 * 1024 * 1024, 7);
    std::fs::write(server.inbox.join("shown.bin"), &content).unwrap();
    let into = tempfile::tempdir().unwrap();
    // `script` gives haul a terminal.
    let output = Command::new("script")
        .args([
            "--quiet",
            "--return",
            "--command",
            r#"stty cols 200 rows 40; exec "$HAUL_BIN" get --from "$FROM" shown.bin --into "$INTO""#,
            "/dev/null",
        ])
        .env("HAUL_BIN", util::HAUL)
        .env("FROM", server.addr())
        .env("INTO", into.path())
        .env_remove("HAUL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("`script` (util-linux) runs haul on a terminal");
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{screen}");
    assert_eq!(
        std::fs::read(into.path().join("shown.bin")).unwrap(),
        content
    );
    assert!(
        screen.contains(
            "haul: 1 stored, 0 already there, 0 failed, 0 skipped; 2.0 MiB received from "
        ),
        "{screen}"
    );
    // The display stands for the per-file lines of a log.
    assert!(!screen.contains("haul: got shown.bin"), "{screen}");
}
