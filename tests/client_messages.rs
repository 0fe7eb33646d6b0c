//! What `haul send` says, and the code it exits with, when things are not
//! as they should be: a secret that does not fit, an address without a
//! port or given as a source, a peer that is not haul, Ctrl-C, a server
//! that dies, and the paths people type (`.`, a FIFO, `<(cmd)`).

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use util::proxy::{Fault, Proxy};
use util::{HaulServer, LINE_WAIT, haul, haul_command, json, random_bytes, stderr_of};

const SECRET: &str = "4f6d2c0a9be14e7f8a3d5c21b7e09f64d2a1c3e5f7b9d0e2a4c6e8f0a2b4c6d8";

/// `haul send --to TO ARGS…` with HAUL_TOKEN set to `secret`, or unset.
fn send_with_secret(secret: Option<&str>, to: &str, args: &[&str]) -> Output {
    let mut command = haul_command();
    command
        .args(["send", "--to", to])
        .args(args)
        .stdin(Stdio::null());
    match secret {
        Some(secret) => command.env("HAUL_TOKEN", secret),
        None => command.env_remove("HAUL_TOKEN"),
    };
    command.output().unwrap()
}

fn a_file(dir: &Path, name: &str, content: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_missing_or_wrong_secret_exits_4_and_does_not_ask_whether_the_server_runs() {
    let keys = tempfile::tempdir().unwrap();
    let token = a_file(keys.path(), "token", format!("{SECRET}\n").as_bytes());
    let server = HaulServer::start(&["--token-file", &token]);
    let source = tempfile::tempdir().unwrap();
    let path = a_file(source.path(), "private.txt", b"for members only");

    let without = send_with_secret(None, server.addr(), &[&path]);
    assert_eq!(without.status.code(), Some(4), "{}", stderr_of(&without));
    assert_eq!(
        stderr_of(&without),
        "haul: this server requires a shared secret: set HAUL_TOKEN or use --token-file\n"
    );

    let wrong = send_with_secret(
        Some("a-wrong-secret-that-is-long-enough"),
        server.addr(),
        &[&path],
    );
    assert_eq!(wrong.status.code(), Some(4), "{}", stderr_of(&wrong));
    assert!(
        stderr_of(&wrong).starts_with("haul: authentication failed"),
        "{}",
        stderr_of(&wrong)
    );
    assert!(
        !stderr_of(&wrong).contains("haul serve"),
        "{}",
        stderr_of(&wrong)
    );

    let plain = HaulServer::start(&[]);
    let unproven = send_with_secret(Some(SECRET), plain.addr(), &[&path]);
    assert_eq!(unproven.status.code(), Some(4), "{}", stderr_of(&unproven));
    assert!(
        stderr_of(&unproven).contains("the server has no secret set"),
        "{}",
        stderr_of(&unproven)
    );
    assert!(server.stored_names().is_empty());
    assert!(plain.stored_names().is_empty());
}

#[test]
fn nobody_listening_still_exits_3_with_the_hint_about_haul_serve() {
    // A port that was just free: bound, then let go.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let source = tempfile::tempdir().unwrap();
    let path = a_file(source.path(), "a.txt", b"a");
    let to = format!("127.0.0.1:{port}");
    let output = send_with_secret(None, &to, &[&path]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
    assert_eq!(
        stderr_of(&output),
        format!(
            "haul: could not connect to {to}: connection refused; is `haul serve` running there?\n"
        )
    );
}

#[test]
fn to_without_a_port_sends_to_port_12000() {
    // 127.0.0.77 is loopback and, unlike 127.0.0.1, has port 12000 free.
    let temp = tempfile::tempdir().unwrap();
    let inbox = temp.path().join("inbox");
    let mut command = Command::new(util::HAUL);
    command
        .args(["serve", "--listen", "127.0.0.77:12000", "--dir"])
        .arg(&inbox);
    let _server = util::Running::start(command);
    let source = tempfile::tempdir().unwrap();
    let path = a_file(source.path(), "portless.txt", b"to the default port");
    let output = send_with_secret(None, "127.0.0.77", &["--json", &path]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        json::summary(&json::lines(&output.stdout))["to"],
        "127.0.0.77:12000"
    );
    assert_eq!(
        std::fs::read(inbox.join("portless.txt")).unwrap(),
        b"to the default port"
    );

    // A host name is resolved, as an address would be used.
    let named = HaulServer::start(&[]);
    let port = named.addr().rsplit_once(':').unwrap().1;
    let output = send_with_secret(None, &format!("localhost:{port}"), &[&path]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(named.stored_names(), ["portless.txt"]);

    // A host name and a bracketed IPv6 address get the same port; a source
    // that does not exist keeps them from sending anything anywhere.
    for (given, meant) in [
        ("localhost", "localhost:12000"),
        ("[::1]", "[::1]:12000"),
        ("::1", "[::1]:12000"),
        ("localhost:12001", "localhost:12001"),
    ] {
        let missing = source.path().join("missing.txt");
        let output = send_with_secret(None, given, &["--json", missing.to_str().unwrap()]);
        assert_eq!(
            json::summary(&json::lines(&output.stdout))["to"],
            meant,
            "{}",
            stderr_of(&output)
        );
    }
}

#[test]
fn a_server_address_given_as_a_source_gets_a_hint_about_to() {
    let source = tempfile::tempdir().unwrap();
    let path = a_file(source.path(), "a.txt", b"a");
    for address in ["127.0.0.1:12000", "localhost:9000", "[::1]:12000"] {
        let output = haul(&["send", &path, address]);
        assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
        assert_eq!(
            stderr_of(&output),
            format!(
                "haul: there is no file or folder named {address}; did you mean --to {address}?\n"
            )
        );
    }
}

/// A peer on 127.0.0.1 that answers every connection with `answer` (after
/// reading the first bytes, or before, when `speaks_first`), then reads
/// until the client hangs up. Returns its address.
fn peer_answering(answer: &'static [u8], speaks_first: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut scratch = [0u8; 4096];
            if !speaks_first {
                let _ = stream.read(&mut scratch);
            }
            let _ = stream.write_all(answer);
            // Read to the end, so that the answer is not lost to a reset.
            while matches!(stream.read(&mut scratch), Ok(read) if read > 0) {}
        }
    });
    addr
}

#[test]
fn a_peer_that_is_not_haul_is_named_as_such_and_exits_3() {
    let source = tempfile::tempdir().unwrap();
    let path = a_file(source.path(), "a.txt", b"a");
    for (answer, speaks_first, like) in [
        (
            &b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"[..],
            false,
            "like an HTTP server",
        ),
        (&b"SSH-2.0-OpenSSH_9.6\r\n"[..], true, "like an SSH server"),
        (&b"220 mail.example ESMTP\r\n"[..], true, "something else"),
        (&b"ok"[..], false, "something else"),
        (
            &b"go ahead"[..],
            false,
            "\"go ahead\", as a classroom-protocol server does; use --protocol seed",
        ),
    ] {
        let to = peer_answering(answer, speaks_first);
        // An answer shorter than a frame header is judged at the timeout.
        let output = send_with_secret(None, &to, &["--reply-timeout", "2s", &path]);
        assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
        assert_eq!(
            stderr_of(&output),
            format!("haul: {to} does not speak haul; it answered {like}\n")
        );
    }
}

#[test]
fn a_peer_that_hangs_up_on_the_hello_is_no_haul_server_reached_and_exits_3() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap().to_string();
    // Hangs up without a byte, as a classroom server that cannot read
    // haul's Hello as a name does; reads to the end, so that the client
    // sees the end of the stream and not a reset.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let mut scratch = [0u8; 4096];
            while matches!(stream.read(&mut scratch), Ok(read) if read > 0) {}
        }
    });
    let source = tempfile::tempdir().unwrap();
    let path = a_file(source.path(), "a.txt", b"a");
    let output = send_with_secret(None, &to, &[&path]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
    assert_eq!(
        stderr_of(&output),
        format!(
            "haul: {to} closed the connection without answering haul's Hello; it may be at its \
             connection limit, or not a haul server (for a classroom-protocol server, use \
             --protocol seed)\n"
        )
    );
}

#[test]
fn a_server_that_never_answers_is_given_up_on_after_the_reply_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap().to_string();
    // Accepts, reads and never answers.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut scratch = [0u8; 4096];
                while matches!(stream.read(&mut scratch), Ok(read) if read > 0) {}
            });
        }
    });
    let source = tempfile::tempdir().unwrap();
    let path = a_file(source.path(), "a.txt", b"a");

    let output = send_with_secret(None, &to, &["--reply-timeout", "1s", &path]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
    assert_eq!(
        stderr_of(&output),
        format!(
            "haul: {to} did not answer haul's Hello within 1s; is it a server of the haul \
             protocol? (a busy one may answer later: --reply-timeout waits longer)\n"
        )
    );

    let output = send_with_secret(
        None,
        &to,
        &["--protocol", "seed", "--reply-timeout", "500ms", &path],
    );
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
    assert_eq!(
        stderr_of(&output),
        format!(
            "haul: {to} did not answer \"go ahead\" within 500ms; is it a server of the classroom \
             protocol? (a busy one may answer later: --reply-timeout waits longer)\n"
        )
    );
}

/// A running `haul send --json`, whose JSON lines can be waited for.
struct Sending {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Sending {
    fn start(to: &str, args: &[&str]) -> Sending {
        let mut child = haul_command()
            .args(["send", "--json", "--to", to])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Sending { child, stdout }
    }

    /// Waits for the `started` event of `path`. A child that ends first
    /// ends the wait (and fails the test).
    fn wait_started(&mut self, path: &str) {
        let mut line = String::new();
        loop {
            line.clear();
            let read = self.stdout.read_line(&mut line).unwrap();
            assert!(read > 0, "haul send ended before starting {path}");
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            if event["event"] == "started" && event["path"] == path {
                return;
            }
        }
    }

    /// Waits (at most [`LINE_WAIT`]) for the child to end; its exit code,
    /// its stderr and the rest of its stdout.
    fn finish(mut self) -> (Option<i32>, String, String) {
        // Stderr reaches its end when the child exits.
        let mut stderr = self.child.stderr.take().unwrap();
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            let _ = done.send(text);
        });
        let stderr = ended
            .recv_timeout(LINE_WAIT)
            .unwrap_or_else(|_| panic!("haul send did not end within {LINE_WAIT:?}"));
        let mut stdout = String::new();
        self.stdout.read_to_string(&mut stdout).unwrap();
        (self.child.wait().unwrap().code(), stderr, stdout)
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A folder `tree` of 255 small files and `zz-big.bin`: with the folder
/// itself, the small files fill the first batch of 256 offers, so their
/// receipts come before the big file starts.
fn tree_with_a_big_file_last(dir: &Path) -> (String, Vec<u8>) {
    let tree = dir.join("tree");
    std::fs::create_dir(&tree).unwrap();
    for index in 0..255 {
        std::fs::write(
            tree.join(format!("f{index:03}.txt")),
            format!("small {index}"),
        )
        .unwrap();
    }
    let big = random_bytes(8 << 20, 7);
    std::fs::write(tree.join("zz-big.bin"), &big).unwrap();
    (tree.to_str().unwrap().to_owned(), big)
}

#[test]
fn ctrl_c_says_how_many_files_are_stored_exits_130_and_a_rerun_resumes() {
    let server = HaulServer::start(&[]);
    let counting = Proxy::start(server.addr(), Fault::None);
    let source = tempfile::tempdir().unwrap();
    let (tree, big) = tree_with_a_big_file_last(source.path());

    // Slow enough that the big file is still going when SIGINT arrives,
    // and past its first megabyte, which the server must keep.
    let mut sending = Sending::start(&counting.addr, &["--limit-rate", "256K", &tree]);
    sending.wait_started("tree/zz-big.bin");
    counting.wait_forwarded(1 << 20);
    let status = Command::new("kill")
        .args(["-INT", &sending.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, stderr, stdout) = sending.finish();
    assert_eq!(code, Some(130), "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["event"], "summary", "{stdout}");
    assert_eq!(summary["stored"], 255, "{summary}");
    assert_eq!(
        summary["error"],
        "interrupted after 255 of 256 files; run the same command again to resume"
    );
    assert_eq!(
        stderr,
        "haul: interrupted after 255 of 256 files; run the same command again to resume\n"
    );
    assert!(!server.inbox.join("tree/zz-big.bin").exists());
    // The server keeps what arrived of the big file.
    server.running.wait_for_log(&[
        "name=\"tree/zz-big.bin\"",
        "result=\"failed\"",
        "data=kept ",
    ]);
    let hidden = server.hidden_files();
    let [(partial, held)] = hidden.as_slice() else {
        panic!("one partial file expected in .haul, found {hidden:?}");
    };
    assert!(partial.starts_with("resume-"), "{hidden:?}");
    assert!(*held > 0, "nothing of the big file was kept");
    let held = *held;

    let again = haul(&["send", "--json", "--to", server.addr(), &tree]);
    assert!(again.status.success(), "{}", stderr_of(&again));
    let lines = json::lines(&again.stdout);
    let summary = json::summary(&lines);
    assert_eq!(summary["already_there"], 255, "{summary}");
    assert_eq!(summary["stored"], 1, "{summary}");
    assert_eq!(
        json::started_offsets(&again.stdout),
        [held],
        "the big file resumed"
    );
    assert_eq!(summary["bytes_sent"], big.len() as u64 - held, "{summary}");
    assert_eq!(
        std::fs::read(server.inbox.join("tree/zz-big.bin")).unwrap(),
        big
    );
    assert!(
        server.hidden_files().is_empty(),
        "{:?}",
        server.hidden_files()
    );
}

#[test]
fn a_server_that_dies_mid_file_is_reported_with_the_file_and_how_to_resume() {
    let mut server = HaulServer::start(&["--max-file-size", "9M"]);
    let source = tempfile::tempdir().unwrap();
    let big = random_bytes(8 << 20, 11);
    let path = a_file(source.path(), "big.bin", &big);
    let refused = a_file(source.path(), "too-big.bin", &random_bytes(10 << 20, 12));

    let mut sending = Sending::start(server.addr(), &["--limit-rate", "256K", &refused, &path]);
    sending.wait_started("big.bin");
    server.running.kill();
    let (code, stderr, stdout) = sending.finish();
    assert_eq!(code, Some(1), "{stderr}");
    // The summary counts what happened before the break.
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap();
    assert_eq!(summary["event"], "summary", "{stdout}");
    assert_eq!(summary["failed"], 1, "{stdout}");
    assert!(
        summary["error"]
            .as_str()
            .is_some_and(|error| error.starts_with("big.bin was not finished: ")),
        "{stdout}"
    );
    assert!(
        stderr.starts_with("haul: too-big.bin: refused by the server: ")
            && stderr
                .lines()
                .last()
                .unwrap()
                .starts_with("haul: big.bin was not finished: "),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("; run the same command again to resume\n"),
        "{stderr}"
    );

    server.kill_and_restart(&[]);
    let again = haul(&["send", "--to", server.addr(), &path]);
    assert!(again.status.success(), "{}", stderr_of(&again));
    assert_eq!(std::fs::read(server.inbox.join("big.bin")).unwrap(), big);
}

/// Where nothing is kept to resume, Ctrl-C and a break say so instead of
/// promising a resume: the classroom protocol, and a stream.
#[test]
fn where_nothing_resumes_the_client_does_not_promise_it() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = a_file(source.path(), "big.bin", &random_bytes(8 << 20, 13));
    let mut sending = Sending::start(
        server.addr(),
        &["--protocol", "seed", "--limit-rate", "256K", &path],
    );
    sending.wait_started("big.bin");
    let status = Command::new("kill")
        .args(["-INT", &sending.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, stderr, _) = sending.finish();
    assert_eq!(code, Some(130), "{stderr}");
    assert_eq!(
        stderr,
        "haul: interrupted after 0 of 1 files; the classroom protocol does not resume: \
         the file cut short was not stored, and sending again sends every file again\n"
    );

    let mut server = server;
    let mut child = haul_command()
        .args([
            "send",
            "--json",
            "--to",
            server.addr(),
            "-",
            "--name",
            "s.bin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Fed until the client is gone: its end of the pipe then breaks.
    let feeder = std::thread::spawn(move || {
        let chunk = vec![5u8; 64 * 1024];
        while stdin.write_all(&chunk).is_ok() {}
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("\"started\"") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "no started event");
    }
    server.running.kill();
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("haul: s.bin was not finished: ")
            && stderr.ends_with(
                "; a stream is not kept to resume: run the same command again to send it from its start\n"
            ),
        "{stderr}"
    );
}

#[test]
fn send_dot_sends_the_current_folder_under_its_own_name() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let project = source.path().join("project");
    std::fs::create_dir_all(project.join("sub")).unwrap();
    std::fs::write(project.join("a.txt"), b"top").unwrap();
    std::fs::write(project.join("sub/b.txt"), b"below").unwrap();

    let output = haul_command()
        .args(["send", "--to", server.addr(), "."])
        .current_dir(&project)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(server.stored_names(), ["project"]);
    assert_eq!(
        std::fs::read(server.inbox.join("project/a.txt")).unwrap(),
        b"top"
    );
    assert_eq!(
        std::fs::read(server.inbox.join("project/sub/b.txt")).unwrap(),
        b"below"
    );
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn a_fifo_is_read_to_its_end_and_stored_under_its_name() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let fifo = source.path().join("piped.log");
    mkfifo(&fifo);
    let content = random_bytes(3 << 20, 3);
    let writer = {
        let (fifo, content) = (fifo.clone(), content.clone());
        std::thread::spawn(move || {
            // Opening waits for haul to open the other end.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .unwrap()
                .write_all(&content)
                .unwrap();
        })
    };
    let output = haul(&[
        "send",
        "--json",
        "--to",
        server.addr(),
        fifo.to_str().unwrap(),
    ]);
    writer.join().unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let started = json::of_kind(&json::lines(&output.stdout), "started")[0].clone();
    assert_eq!(started["size"], serde_json::Value::Null, "{started}");
    assert_eq!(
        std::fs::read(server.inbox.join("piped.log")).unwrap(),
        content
    );
}

#[test]
fn process_substitution_is_sent_as_a_stream_under_the_given_name() {
    let server = HaulServer::start(&[]);
    let script = format!(
        "exec {} send --to {} <(printf 'made by a command') --name made.txt",
        util::HAUL,
        server.addr()
    );
    let output = Command::new("bash")
        .env("XDG_STATE_HOME", util::state_home())
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        std::fs::read(server.inbox.join("made.txt")).unwrap(),
        b"made by a command"
    );
}

#[test]
fn the_seed_protocol_refuses_a_stream_and_says_why() {
    let server = HaulServer::start(&[]);
    let expected = |what: &str| {
        format!(
            "{what} is a stream, whose size is known only at its end, and the classroom \
             protocol's header needs the size first; send it with haul's protocol (leave out \
             --protocol seed), or save it to a file first"
        )
    };

    let mut child = haul_command()
        .args(["send", "--protocol", "seed", "--to", server.addr()])
        .args(["-", "--name", "hi.txt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let first = stderr_of(&output)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        first,
        format!("haul: hi.txt: {}", expected("standard input"))
    );

    // Nobody writes to this FIFO: it is refused without being opened.
    let source = tempfile::tempdir().unwrap();
    let fifo = source.path().join("pipe");
    mkfifo(&fifo);
    let fifo = fifo.to_str().unwrap();
    let output = haul(&["send", "--protocol", "seed", "--to", server.addr(), fifo]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let first = stderr_of(&output)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(first, format!("haul: pipe: {}", expected(fifo)));
    assert!(server.stored_names().is_empty());
}

#[test]
fn send_help_lists_every_exit_code() {
    let output = haul(&["send", "--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    for line in [
        "  0    every file was stored",
        "  1    some files failed",
        "  2    usage error",
        "  3    no haul server reached",
        "  4    authentication failed",
        "  130  interrupted (Ctrl-C)",
    ] {
        assert!(help.contains(line), "no {line:?} in:\n{help}");
    }
}

/// A peer on 127.0.0.1 that reads haul's magic and Hello, answers each
/// connection with `answer` and closes; what the clients sent comes back
/// through the handle once `connections` have been served.
fn raw_haul_server(
    answer: Vec<u8>,
    connections: usize,
) -> (String, std::thread::JoinHandle<Vec<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let served = std::thread::spawn(move || {
        let mut openings = Vec::new();
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().unwrap();
            let mut magic = [0u8; 8];
            stream.read_exact(&mut magic).unwrap();
            let hello = util::wire::read_raw_frame(&mut stream);
            stream.write_all(&answer).unwrap();
            openings.push([&magic[..], &hello].concat());
        }
        openings
    });
    (to, served)
}

#[test]
fn a_server_of_an_older_protocol_version_is_named_with_both_versions_and_exits_3() {
    use haul::protocol::haul::{MAGIC, Message, VERSION};
    let older = VERSION - 1;
    let welcome = util::wire::frame(&Message::Welcome {
        version: older,
        capabilities: 0,
    });
    let (to, served) = raw_haul_server(welcome, 2);
    let source = tempfile::tempdir().unwrap();
    let path = a_file(source.path(), "a.txt", b"never sent");

    let output = send_with_secret(None, &to, &[&path]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
    assert_eq!(
        stderr_of(&output),
        format!(
            "haul: {to} speaks version {older} of haul's protocol and this client version \
             {VERSION}; send with a haul of the server's version, or update the server\n"
        )
    );
    let output = send_with_secret(None, &to, &["--json", &path]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
    let lines = json::lines(&output.stdout);
    let error = json::summary(&lines)["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains(&format!("speaks version {older} of haul's protocol")),
        "{error}"
    );
    // What the client sent before it gave up: the magic and its Hello.
    for opening in served.join().unwrap() {
        assert_eq!(opening[..8], MAGIC);
        assert_eq!(opening.len(), 8 + 5 + 2 + 8 + 16, "a Hello of this version");
        assert_eq!(opening[8 + 5..8 + 7], VERSION.to_be_bytes());
    }
}

/// A newer server refuses this client's Hello with an Error of code
/// Version: that is a server this client cannot reach (exit 3), not an
/// authentication failure (exit 4), which a refusal with code 0 still is.
#[test]
fn a_server_that_refuses_this_clients_version_says_to_update_it_and_exits_3() {
    use haul::protocol::haul::{FailCode, Message, VERSION};
    let source = tempfile::tempdir().unwrap();
    let path = a_file(source.path(), "a.txt", b"never sent");
    let refusal = |code| {
        util::wire::frame(&Message::Error {
            code,
            message: "the client speaks protocol version 3; this server speaks 4",
        })
    };

    let (to, served) = raw_haul_server(refusal(FailCode::Version), 1);
    let output = send_with_secret(None, &to, &[&path]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
    assert_eq!(
        stderr_of(&output),
        format!(
            "haul: {to} speaks a newer version of haul's protocol than this client ({VERSION}); \
             update this client\n"
        )
    );
    served.join().unwrap();

    let (to, served) = raw_haul_server(refusal(FailCode::Other), 1);
    let output = send_with_secret(None, &to, &[&path]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr_of(&output));
    served.join().unwrap();
}

/// Ctrl-C typed at a terminal: the pseudo-terminal's interrupt character,
/// so that its line discipline signals haul as a real terminal does, with
/// the progress display drawn. The display is taken away, one line says
/// what was stored and how to resume, and the exit code is 130.
#[test]
fn ctrl_c_at_a_terminal_clears_the_display_and_says_how_to_resume() {
    let server = HaulServer::start(&[]);
    let counting = Proxy::start(server.addr(), Fault::None);
    let source = tempfile::tempdir().unwrap();
    let (tree, big) = tree_with_a_big_file_last(source.path());
    let command = format!(
        "stty cols 100 rows 40; exec '{}' send --limit-rate 256K --to {} '{}'",
        util::HAUL,
        counting.addr,
        tree
    );
    let mut script = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env("XDG_STATE_HOME", util::state_home())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run `script` (util-linux) to get a pseudo-terminal");
    // The small files are a few bytes each: past a megabyte, the big file
    // is on its way.
    counting.wait_forwarded(1 << 20);
    let mut keys = script.stdin.take().unwrap();
    keys.write_all(b"\x03").unwrap();
    keys.flush().unwrap();
    let output = script.wait_with_output().unwrap();
    drop(keys);
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(130), "{transcript}");
    let last = transcript
        .rsplit("\x1b[2K")
        .next()
        .unwrap()
        .trim_start_matches(|c: char| {
            c == '\r' || c == '\x1b' || c == '[' || c.is_ascii_digit() || c == 'A'
        });
    assert!(
        last.contains(
            "haul: interrupted after 255 of 256 files; run the same command again to resume"
        ),
        "{transcript:?}"
    );
    assert!(!server.inbox.join("tree/zz-big.bin").exists());

    let again = haul(&["send", "--json", "--to", server.addr(), &tree]);
    assert!(again.status.success(), "{}", stderr_of(&again));
    let offsets = json::started_offsets(&again.stdout);
    assert!(
        offsets.len() == 1 && offsets[0] > 0,
        "the big file resumed: {offsets:?}"
    );
    assert_eq!(
        std::fs::read(server.inbox.join("tree/zz-big.bin")).unwrap(),
        big
    );
}

#[test]
fn a_file_changed_while_it_is_sent_is_not_stored_and_the_rest_of_the_send_goes_on() {
    let server = HaulServer::start(&[]);
    let counting = Proxy::start(server.addr(), Fault::None);
    let source = tempfile::tempdir().unwrap();
    let changing = a_file(source.path(), "changing.bin", &random_bytes(4 << 20, 21));
    let steady_bytes = random_bytes(300 << 10, 22);
    let steady = a_file(source.path(), "steady.bin", &steady_bytes);
    // An old modification time: the edit below moves it to now, however
    // coarse the file system's clock.
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&changing)
        .unwrap();
    file.set_modified(old).unwrap();

    // Slow enough that the changing file is far from read whole (the reader
    // runs at most a few chunks ahead of the socket) once its first 256 KiB
    // are past the proxy.
    let mut sending = Sending::start(&counting.addr, &["--limit-rate", "2M", &changing, &steady]);
    sending.wait_started("changing.bin");
    counting.wait_forwarded(256 << 10);
    std::os::unix::fs::FileExt::write_at(&file, &[0xaa; 4096], 0).unwrap();
    drop(file);
    // Merely reading a file does not count as a change.
    assert_eq!(std::fs::read(&steady).unwrap(), steady_bytes);

    let (code, stderr, stdout) = sending.finish();
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "haul: changing.bin: {changing} changed while it was being sent; nothing was stored, \
             run the command again\n"
        )
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["stored"], 1, "{summary}");
    assert_eq!(summary["failed"], 1, "{summary}");
    assert_eq!(server.stored_names(), ["steady.bin"]);
    assert_eq!(
        std::fs::read(server.inbox.join("steady.bin")).unwrap(),
        steady_bytes
    );
    server.running.wait_for_log(&[
        "name=\"changing.bin\"",
        "the sender's file changed while it was being sent; nothing was stored",
    ]);
    assert_eq!(server.hidden_files(), [], "nothing of it is kept to resume");
}
