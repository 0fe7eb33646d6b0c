//! What `haul send` shows and refuses, and the names no server stores: a
//! name never reaches a terminal raw, a secret is never ignored in silence,
//! and a name that would not read as it is stored is refused.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use haul::protocol::haul::{self as wire, EntryKind, MAGIC, Message, Mtime, Offer};
use util::json;
use util::wire::{frame, read_message, read_raw_frame};
use util::{HAUL, HaulServer, SeedPeerServer, read_until_closed, seed_header, stderr_of};

/// A file name that, printed raw, would retitle the terminal window, clear
/// the screen and start a line of its own.
const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[2J\nhaul: forged line.txt";
/// The same name as the terminal must show it.
const HOSTILE_SHOWN: &str = "\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\nhaul: forged line.txt";

/// `haul send ARGS` with no secret in its environment.
fn send(args: &[&str]) -> Output {
    Command::new(HAUL)
        .arg("send")
        .args(args)
        .env_remove("HAUL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Asserts that `stderr` holds no byte a terminal would act on, and that
/// every line is one of haul's own (a name cannot start a line).
fn assert_terminal_safe(stderr: &[u8]) {
    let forbidden = stderr
        .iter()
        .find(|&&byte| (byte < 0x20 && byte != b'\n') || byte == 0x7f);
    assert_eq!(
        forbidden,
        None,
        "a raw control byte reached stderr: {:?}",
        String::from_utf8_lossy(stderr)
    );
    let text = String::from_utf8_lossy(stderr);
    for line in text.lines() {
        assert!(line.starts_with("haul: "), "{line:?} in {text}");
        assert!(!line.starts_with("haul: forged"), "{line:?} in {text}");
    }
}

/// A folder `sent` holding an ordinary file, a file with [`HOSTILE`] as
/// its name and a symbolic link with [`HOSTILE`] in its name.
fn hostile_folder(root: &Path) -> std::path::PathBuf {
    let folder = root.join("sent");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("plain.txt"), b"plain").unwrap();
    std::fs::write(folder.join(HOSTILE), b"hostile").unwrap();
    std::os::unix::fs::symlink("plain.txt", folder.join(format!("link {HOSTILE}"))).unwrap();
    folder
}

#[test]
fn a_hostile_file_name_reaches_stderr_escaped_in_every_line() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let folder = hostile_folder(source.path());
    let missing = source.path().join(format!("missing {HOSTILE}"));

    let output = send(&["--to", server.addr(), path_str(&folder), path_str(&missing)]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert_terminal_safe(&output.stderr);
    let stderr = stderr_of(&output);
    // The server refuses the name; the walk skips the link; the missing
    // source cannot be read: each line shows the name, escaped.
    for expected in [
        format!("haul: sent/{HOSTILE_SHOWN}: refused by the server"),
        format!("link {HOSTILE_SHOWN}: symbolic links are not followed"),
        format!("missing {HOSTILE_SHOWN}: no such file"),
        "haul: 1 stored".to_owned(),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} not in {stderr}");
    }
    assert_eq!(server.stored_names(), ["sent"]);
    assert_eq!(
        std::fs::read_dir(server.inbox.join("sent"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn json_lines_stay_valid_and_carry_a_hostile_name_exactly() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let folder = hostile_folder(source.path());

    let output = send(&["--json", "--to", server.addr(), path_str(&folder)]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert_terminal_safe(&output.stderr);
    let lines = json::lines(&output.stdout);
    let failed = json::of_kind(&lines, "failed");
    assert_eq!(failed.len(), 1, "{lines:?}");
    assert_eq!(failed[0]["path"], format!("sent/{HOSTILE}"));
    let skipped = json::of_kind(&lines, "skipped");
    assert_eq!(skipped.len(), 1, "{lines:?}");
    let skipped_path = skipped[0]["path"].as_str().unwrap();
    assert!(
        skipped_path.ends_with(&format!("link {HOSTILE}")),
        "{skipped_path:?}"
    );
    assert_eq!(json::of_kind(&lines, "stored").len(), 1, "{lines:?}");
    assert_eq!(json::of_kind(&lines, "summary")[0]["failed"], 1);
}

#[test]
fn a_hostile_name_a_seed_server_accepts_is_shown_escaped_and_carried_exactly() {
    let peer = SeedPeerServer::start();
    let source = tempfile::tempdir().unwrap();
    let file = source.path().join(HOSTILE);
    std::fs::write(&file, b"hostile").unwrap();
    let args = [
        "--protocol",
        "seed",
        "--to",
        &peer.running.addr,
        path_str(&file),
    ];

    let output = send(&args);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_terminal_safe(&output.stderr);
    let stderr = stderr_of(&output);
    let expected = format!("haul: sent {HOSTILE_SHOWN} (7 B)");
    assert!(stderr.contains(&expected), "{expected:?} not in {stderr}");
    // The server closes only after writing the file, and haul waits for that.
    let stored = peer.dir.path().join(format!("{HOSTILE}.temp"));
    assert_eq!(std::fs::read(&stored).unwrap(), b"hostile");

    let mut json_args = vec!["--json"];
    json_args.extend_from_slice(&args);
    let output = send(&json_args);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert!(output.stderr.is_empty(), "{}", stderr_of(&output));
    let lines = json::lines(&output.stdout);
    assert_eq!(json::of_kind(&lines, "started")[0]["path"], HOSTILE);
    assert_eq!(json::of_kind(&lines, "stored")[0]["path"], HOSTILE);
    assert_eq!(std::fs::read(&stored).unwrap(), b"hostile");
}

/// Names that reorder or hide characters, one per kind of trick, with the
/// words the server's reason must contain.
const DISGUISED: [(&str, &str); 6] = [
    ("invoice\u{202e}fdp.exe", "U+202E, a bidirectional control"),
    ("a\u{2066}b\u{2069}.txt", "U+2066, a bidirectional control"),
    ("left\u{200f}.txt", "U+200F, a bidirectional control"),
    ("pay\u{200b}pal.txt", "U+200B, an invisible character"),
    ("\u{feff}report.txt", "U+FEFF, an invisible character"),
    ("a\u{2060}b.txt", "U+2060, an invisible character"),
];

#[test]
fn a_seed_name_that_hides_or_reorders_characters_gets_no_go_ahead_and_nothing_is_stored() {
    let server = HaulServer::start(&[]);
    for (name, reason) in DISGUISED {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.write_all(&seed_header(4, name.as_bytes())).unwrap();
        let reply = read_until_closed(&mut stream);
        assert!(reply.is_empty(), "{name:?} got {reply:?}");
        server.running.wait_for_log(&["refused name", reason]);
    }
    assert!(
        server.stored_names().is_empty(),
        "{:?}",
        server.stored_names()
    );
    assert_eq!(server.partial_count(), 0);
}

#[test]
fn a_haul_path_that_hides_or_reorders_characters_is_refused_and_nothing_is_stored() {
    let server = HaulServer::start(&[]);
    let mut session = TcpStream::connect(server.addr()).unwrap();
    session.write_all(&MAGIC).unwrap();
    session
        .write_all(&frame(&Message::Hello {
            version: wire::VERSION,
            capabilities: 0,
            sender: [0; 16],
        }))
        .unwrap();
    assert!(read_message(&mut session).starts_with("Welcome"));

    // In the last component and in a folder's name alike.
    let paths: Vec<(String, &str)> = DISGUISED
        .iter()
        .flat_map(|&(name, reason)| {
            [
                (format!("docs/{name}"), reason),
                (format!("{name}/inner.txt"), reason),
            ]
        })
        .collect();
    for (path, _) in &paths {
        let offer = Message::Offer(Offer {
            kind: EntryKind::File,
            size: Some(4),
            hash: None,
            mtime: Mtime::default(),
            mode: 0o644,
            path: path.as_bytes(),
        });
        session.write_all(&frame(&offer)).unwrap();
    }
    session.write_all(&frame(&Message::BatchEnd)).unwrap();
    for (path, reason) in &paths {
        let answer = read_message(&mut session);
        assert!(
            answer.contains("Refused") && answer.contains(reason),
            "{path:?}: {answer}"
        );
    }
    session.write_all(&frame(&Message::Bye)).unwrap();
    session.shutdown(Shutdown::Write).unwrap();
    read_until_closed(&mut session);

    assert!(
        server.stored_names().is_empty(),
        "{:?}",
        server.stored_names()
    );
    assert_eq!(server.partial_count(), 0);
}

/// Reads one frame: its kind and payload.
fn read_frame(stream: &mut TcpStream) -> (wire::Kind, Vec<u8>) {
    let bytes = read_raw_frame(stream);
    let (frame, _) = wire::split_frame(&bytes).unwrap().unwrap();
    (frame.header.kind, frame.payload.to_vec())
}

/// A haul server that takes one file and hands back a receipt saying it
/// stored it under `stored_as`, as a hostile server may. Returns its
/// address and what it was sent.
fn rogue_haul_server(stored_as: &'static str) -> (String, std::thread::JoinHandle<Vec<u8>>) {
    haul_server_answering(Some(stored_as), None)
}

/// A haul server that takes one file and answers it with a receipt for
/// `stored_as` or with a Failed carrying `failed`.
fn haul_server_answering(
    stored_as: Option<&'static str>,
    failed: Option<(wire::FailCode, &'static str)>,
) -> (String, std::thread::JoinHandle<Vec<u8>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut magic = [0u8; MAGIC.len()];
        stream.read_exact(&mut magic).unwrap();
        assert_eq!(magic, MAGIC);
        assert_eq!(read_frame(&mut stream).0, wire::Kind::Hello);
        stream
            .write_all(&frame(&Message::Welcome {
                version: wire::VERSION,
                capabilities: 0,
            }))
            .unwrap();
        while read_frame(&mut stream).0 != wire::Kind::BatchEnd {}
        stream
            .write_all(&frame(&Message::Answer(wire::Answer::Send { offset: 0 })))
            .unwrap();
        let mut received = Vec::new();
        loop {
            let (kind, payload) = read_frame(&mut stream);
            if kind == wire::Kind::Data {
                received.extend_from_slice(&payload);
                continue;
            }
            let Ok(Message::FileEnd { hash }) = wire::decode_message(kind, &payload) else {
                panic!("expected data or FileEnd, got {kind:?}");
            };
            let answer = match (stored_as, failed) {
                (Some(stored_as), _) => Message::Receipt {
                    size: received.len() as u64,
                    hash,
                    stored_as,
                },
                (None, Some((code, reason))) => Message::Failed { code, reason },
                (None, None) => unreachable!("a receipt or a failure"),
            };
            stream.write_all(&frame(&answer)).unwrap();
            break;
        }
        read_until_closed(&mut stream);
        received
    });
    (addr, server)
}

#[test]
fn a_name_from_a_hostile_server_is_shown_escaped_and_carried_exactly() {
    let source = tempfile::tempdir().unwrap();
    let file = source.path().join("report.txt");
    std::fs::write(&file, b"report").unwrap();

    let (addr, server) = rogue_haul_server(HOSTILE);
    let output = send(&["--to", &addr, path_str(&file)]);
    assert_eq!(server.join().unwrap(), b"report");
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_terminal_safe(&output.stderr);
    let stderr = stderr_of(&output);
    let expected = format!("haul: stored report.txt as {HOSTILE_SHOWN} (6 B)");
    assert!(stderr.contains(&expected), "{expected:?} not in {stderr}");

    let (addr, server) = rogue_haul_server(HOSTILE);
    let output = send(&["--json", "--to", &addr, path_str(&file)]);
    server.join().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let lines = json::lines(&output.stdout);
    assert_eq!(json::of_kind(&lines, "stored")[0]["stored_as"], HOSTILE);
}

/// What the client says of a file the server did not store follows the
/// code in the Failed, never its words: a full disk is named as such
/// whatever the server wrote, and words that look like it mean nothing.
#[test]
fn a_full_server_disk_is_told_from_the_failure_code_not_its_words() {
    let source = tempfile::tempdir().unwrap();
    let file = source.path().join("report.txt");
    std::fs::write(&file, b"report").unwrap();
    for (code, reason, expected) in [
        (
            wire::FailCode::NoSpace,
            "quota exceeded",
            "the server did not store it: quota exceeded; the server's disk is full",
        ),
        (
            wire::FailCode::Io,
            "No space left on device",
            "the server did not store it: No space left on device\n",
        ),
    ] {
        let (addr, server) = haul_server_answering(None, Some((code, reason)));
        let output = send(&["--to", &addr, path_str(&file)]);
        assert_eq!(server.join().unwrap(), b"report");
        assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
        let stderr = stderr_of(&output);
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    }
}

#[test]
fn the_progress_display_shows_a_hostile_name_escaped() {
    let peer = SeedPeerServer::start();
    let source = tempfile::tempdir().unwrap();
    let file = source.path().join(HOSTILE);
    std::fs::write(&file, vec![b'x'; 96 * 1024]).unwrap();
    // `script` gives haul a terminal, so that it draws its live display; the
    // rate limit keeps the file on it for a number of redraws.
    let output = Command::new("script")
        .args([
            "--quiet",
            "--return",
            "--command",
            r#"stty cols 200 rows 40; exec "$HAUL_BIN" send --protocol seed --limit-rate 48K --to "$TO" "$FILE""#,
            "/dev/null",
        ])
        .env("HAUL_BIN", HAUL)
        .env("TO", &peer.running.addr)
        .env("FILE", &file)
        .env_remove("HAUL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("`script` (util-linux) runs haul on a terminal");
    assert!(output.status.success(), "{}", stderr_of(&output));
    let screen = &output.stdout;
    let contains = |needle: &[u8]| screen.windows(needle.len()).any(|window| window == needle);
    assert!(
        contains(HOSTILE_SHOWN.as_bytes()),
        "the display never showed the name: {:?}",
        String::from_utf8_lossy(screen)
    );
    for raw in [&b"\x1b]0;pwned"[..], b"\x07", b"\x1b[2J"] {
        assert!(
            !contains(raw),
            "{raw:?} reached the terminal: {:?}",
            String::from_utf8_lossy(screen)
        );
    }
}

const SECRET: &str = "9c1e5a7b3d2f4e6a8b0c1d3e5f7a9b2c4d6e8f0a1b3c5d7e9f2a4b6c8d0e1f3a";

/// `haul ARGS` with `HAUL_TOKEN` set to `token`, or unset for `None`.
fn haul_with_token(token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(HAUL);
    command.args(args).stdin(Stdio::null());
    match token {
        Some(token) => command.env("HAUL_TOKEN", token),
        None => command.env_remove("HAUL_TOKEN"),
    };
    command.output().unwrap()
}

/// A token file holding [`SECRET`] with the given permission bits.
fn token_file(dir: &Path, mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("token-{mode:o}"));
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn with_a_secret_set_the_seed_protocol_is_refused_unless_cleartext_is_asked_for() {
    // The server takes the classroom protocol from anyone: only the sender's
    // refusal stands between the secret's owner and a send in the clear.
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let file = source.path().join("private.txt");
    std::fs::write(&file, b"meant to be encrypted").unwrap();
    let keys = tempfile::tempdir().unwrap();
    let token = token_file(keys.path(), 0o600);
    let seed = ["send", "--protocol", "seed", "--to", server.addr()];

    for (variable, extra, origin) in [
        (Some(SECRET), vec![], "HAUL_TOKEN".to_owned()),
        (
            None,
            vec!["--token-file", &token],
            format!("--token-file {token}"),
        ),
    ] {
        let mut args = seed.to_vec();
        args.extend_from_slice(&extra);
        args.push(path_str(&file));
        let output = haul_with_token(variable, &args);
        assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
        let stderr = stderr_of(&output);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        for part in [
            "haul: a secret is set (",
            &origin,
            "the classroom protocol cannot be encrypted",
            "--cleartext",
        ] {
            assert!(stderr.contains(part), "{part:?} not in {stderr}");
        }
        assert!(output.stdout.is_empty());
    }
    assert!(
        server.stored_names().is_empty(),
        "{:?}",
        server.stored_names()
    );
    assert_eq!(server.partial_count(), 0);

    let mut args = seed.to_vec();
    args.extend_from_slice(&["--cleartext", path_str(&file)]);
    let output = haul_with_token(Some(SECRET), &args);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    server.wait_stored("private.txt");
    assert_eq!(
        std::fs::read(server.inbox.join("private.txt")).unwrap(),
        b"meant to be encrypted"
    );
}

#[test]
fn cleartext_with_haul_s_own_protocol_is_a_usage_error() {
    let source = tempfile::tempdir().unwrap();
    let file = source.path().join("a.txt");
    std::fs::write(&file, b"a").unwrap();
    let output = haul_with_token(
        Some(SECRET),
        &[
            "send",
            "--cleartext",
            "--to",
            "127.0.0.1:9",
            path_str(&file),
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("--cleartext applies to --protocol seed only"),
        "{}",
        stderr_of(&output)
    );
}

/// Runs `haul serve` that must refuse to start: returns its exit code and
/// stderr, and fails (stopping the server) if it announces an address.
fn serve_must_refuse(token: Option<&str>, extra: &[&str]) -> (Option<i32>, String) {
    use std::io::BufRead;
    let inbox = tempfile::tempdir().unwrap();
    let mut command = Command::new(HAUL);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(inbox.path())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match token {
        Some(token) => command.env("HAUL_TOKEN", token),
        None => command.env_remove("HAUL_TOKEN"),
    };
    let mut child = command.spawn().unwrap();
    let mut first = String::new();
    let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first);
    if first.starts_with("listening on") {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server started: {first:?}");
    }
    let output = child.wait_with_output().unwrap();
    (output.status.code(), stderr_of(&output))
}

#[test]
fn a_blank_secret_stops_the_server_and_the_sender() {
    let keys = tempfile::tempdir().unwrap();
    let empty = keys.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let empty = path_str(&empty).to_owned();
    let cases: [(Option<&str>, Vec<&str>, &str); 3] = [
        (Some(""), vec![], "HAUL_TOKEN is set but blank"),
        (Some("   "), vec![], "HAUL_TOKEN is set but blank"),
        (
            None,
            vec!["--token-file", &empty],
            "holds no secret (it is empty or blank)",
        ),
    ];

    for (token, extra, reason) in &cases {
        let (code, stderr) = serve_must_refuse(*token, extra);
        assert_eq!(code, Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("haul: "), "{stderr}");
        assert!(stderr.contains(reason), "{reason:?} not in {stderr}");
    }

    // A server without a secret, which would store whatever came.
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let file = source.path().join("a.txt");
    std::fs::write(&file, b"a").unwrap();
    for protocol in ["haul", "seed"] {
        for (token, extra, reason) in &cases {
            let mut args = vec!["send", "--protocol", protocol, "--to", server.addr()];
            args.extend_from_slice(extra);
            args.push(path_str(&file));
            let output = haul_with_token(*token, &args);
            assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
            let stderr = stderr_of(&output);
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.contains(reason), "{reason:?} not in {stderr}");
        }
    }
    assert!(
        server.stored_names().is_empty(),
        "{:?}",
        server.stored_names()
    );
}

#[test]
fn a_token_file_others_can_read_draws_a_warning_on_both_sides_and_still_works() {
    let keys = tempfile::tempdir().unwrap();
    let loose = token_file(keys.path(), 0o644);
    let server = HaulServer::start(&["--token-file", &loose]);
    let warning = server
        .running
        .wait_for_log(&["WARN", &loose, "other users", "chmod 600"]);
    assert!(
        warning.contains(&format!("`chmod 600 {loose}`")),
        "{warning}"
    );

    let source = tempfile::tempdir().unwrap();
    let file = source.path().join("kept.txt");
    std::fs::write(&file, b"kept").unwrap();
    let output = haul_with_token(
        None,
        &[
            "send",
            "--to",
            server.addr(),
            "--token-file",
            &loose,
            path_str(&file),
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    let expected = format!(
        "haul: warning: the token file {loose} can be read or written by other users (mode 0644)"
    );
    assert!(stderr.contains(&expected), "{expected:?} not in {stderr}");
    assert!(
        stderr.contains(&format!("run `chmod 600 {loose}`")),
        "{stderr}"
    );
    server.wait_stored("kept.txt");
    assert_eq!(
        std::fs::read(server.inbox.join("kept.txt")).unwrap(),
        b"kept"
    );

    // Kept as `haul token` advises, the same file draws no warning.
    let strict = token_file(keys.path(), 0o600);
    let output = haul_with_token(
        None,
        &[
            "send",
            "--to",
            server.addr(),
            "--token-file",
            &strict,
            path_str(&file),
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert!(
        !stderr_of(&output).contains("warning"),
        "{}",
        stderr_of(&output)
    );
}

/// A folder with haul's own staging area in it (left by an interrupted
/// get, or an inbox) sends everything else: `.haul` is passed over with a
/// note, since every haul store refuses the name.
#[test]
fn a_staging_area_inside_a_sent_folder_is_passed_over_with_a_note() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let folder = source.path().join("photos");
    std::fs::create_dir_all(folder.join(".haul")).unwrap();
    std::fs::write(folder.join(".haul/resume-0123"), b"partial").unwrap();
    std::fs::write(folder.join("a.jpg"), b"picture").unwrap();
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    std::fs::write(folder.join("sub/.haul"), b"a file of that name").unwrap();

    let output = send(&["--to", server.addr(), path_str(&folder)]);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    for skipped in [".haul", "sub/.haul"] {
        let line = format!(
            "haul: skipped {}: the name .haul is reserved for haul's partial data; not sent",
            folder.join(skipped).display()
        );
        assert!(
            stderr.lines().any(|shown| shown == line),
            "{line}\n{stderr}"
        );
    }
    assert_eq!(
        std::fs::read(server.inbox.join("photos/a.jpg")).unwrap(),
        b"picture"
    );
    assert!(server.inbox.join("photos/sub").is_dir());
    assert!(!server.inbox.join("photos/sub/.haul").exists());
}
