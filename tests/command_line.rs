//! What a person or a script sees of `haul send`: rate limits, progress on a
//! terminal, JSON lines, help text.

mod util;

use std::path::Path;
use std::time::Instant;

use haul::size::Human;
use util::{HaulServer, haul, haul_command, json, random_bytes, stderr_of};

fn write_file(dir: &Path, name: &str, len: usize) -> String {
    let path = dir.join(name);
    std::fs::write(&path, random_bytes(len, len as u64)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn limit_rate_caps_the_sending_rate_with_either_protocol() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let len = 1024 * 1024;
    let rate = 512 * 1024;
    for protocol in ["haul", "seed"] {
        let name = format!("limited-{protocol}.bin");
        let path = write_file(source.path(), &name, len);
        let started = Instant::now();
        let output = haul(&[
            "send",
            "--to",
            server.addr(),
            "--protocol",
            protocol,
            "--limit-rate",
            "512K",
            &path,
        ]);
        let elapsed = started.elapsed().as_secs_f64();
        assert!(output.status.success(), "{}", stderr_of(&output));
        server.wait_stored(&name);
        let least = len as f64 / rate as f64 * 0.8;
        assert!(
            elapsed >= least,
            "{protocol}: {len} bytes at 512K/s took {elapsed:.2}s, less than {least:.2}s"
        );
        assert_eq!(
            std::fs::read(server.inbox.join(&name)).unwrap(),
            std::fs::read(&path).unwrap()
        );
    }
}

#[test]
fn a_rate_that_is_not_one_is_a_usage_error() {
    let output = haul(&["send", "--limit-rate", "fast", "x"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains("512K"),
        "{}",
        stderr_of(&output)
    );
}

#[test]
fn contradictory_protocol_options_of_serve_are_a_usage_error() {
    let inbox = tempfile::tempdir().unwrap();
    let dir = inbox.path().join("inbox");
    for (args, said) in [
        (
            vec!["--protocols", "seed"],
            "haul: the server always speaks haul's protocol; --protocols can only add or drop seed\n",
        ),
        (
            vec!["--protocols", "haul", "--allow-seed"],
            "haul: --allow-seed accepts the classroom protocol, which --protocols haul turns off\n",
        ),
    ] {
        let output = haul_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(&dir)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr_of(&output), said, "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).is_empty(),
            "{args:?}"
        );
    }
}

/// A name the send cannot use is a usage error said before connecting: a
/// listener that is never called proves nothing was sent.
#[test]
fn a_missing_or_unusable_name_is_a_usage_error_before_connecting() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let source = tempfile::tempdir().unwrap();
    let file = write_file(source.path(), "a.txt", 10);
    for (args, said) in [
        (
            vec!["-"],
            "haul: standard input needs a name: add --name NAME\n",
        ),
        (
            vec!["--name", "", file.as_str()],
            "haul: --name \"\": the name is empty\n",
        ),
        (
            vec!["--name", "../evil.txt", file.as_str()],
            "haul: --name \"../evil.txt\": the name is `.` or `..`\n",
        ),
        (
            vec!["--name", "/etc/x", file.as_str()],
            "haul: --name \"/etc/x\": the name is empty\n",
        ),
        (
            vec!["--protocol", "seed", "--name", "", file.as_str()],
            "haul: --name \"\": the name is empty\n",
        ),
    ] {
        let output = haul_command()
            .args(["send", "--to", &to])
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr_of(&output), said, "{args:?}");
    }
    assert_eq!(
        listener.accept().map(drop).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "a usage error connected"
    );
}

/// Runs `haul ARGS` in a pseudo-terminal made by util-linux's `script`, and
/// returns everything the terminal received, escape sequences included.
fn haul_on_a_terminal(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    haul_on_a_terminal_of(120, args, env)
}

/// [`haul_on_a_terminal`] on a terminal `columns` wide.
fn haul_on_a_terminal_of(
    columns: usize,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let quoted: Vec<String> = std::iter::once(util::HAUL)
        .chain(args.iter().copied())
        .map(|arg| format!("'{}'", arg.replace('\'', r"'\''")))
        .collect();
    let command = format!("stty cols {columns} rows 40; exec {}", quoted.join(" "));
    let output = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env("XDG_STATE_HOME", util::state_home())
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run `script` (util-linux) to get a pseudo-terminal");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// The text after the last "erase line" sequence and the cursor moves up
/// that follow it: what is written once the progress display is taken away.
fn after_last_erase(transcript: &str) -> &str {
    let mut rest = transcript.rsplit("\x1b[2K").next().unwrap();
    while let Some(after) = rest.strip_prefix("\x1b[") {
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        match after[digits..].strip_prefix('A') {
            Some(moved) => rest = moved,
            None => break,
        }
    }
    rest
}

#[test]
fn on_a_terminal_send_shows_progress_then_one_clean_summary_line() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let folder = source.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    write_file(&folder, "big.bin", 1024 * 1024);
    for index in 0..50 {
        write_file(&folder, &format!("small-{index}.txt"), 100 + index);
    }
    // The rate limit makes the send last about a second, long enough for
    // the display to be drawn several times.
    let (code, transcript) = haul_on_a_terminal(
        &[
            "send",
            "--to",
            server.addr(),
            "--limit-rate",
            "1M",
            folder.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{transcript:?}");
    assert!(
        transcript.contains("folder/big.bin") && transcript.contains("/51 files"),
        "no progress display in {transcript:?}"
    );
    assert!(transcript.contains(" left, "), "{transcript:?}");
    assert!(
        transcript.contains("\x1b[3"),
        "no colours in {transcript:?}"
    );
    let rest = after_last_erase(&transcript);
    assert!(
        rest.starts_with("haul: 51 stored, 0 already there, 0 failed, 0 skipped; ")
            && rest.trim_end().lines().count() == 1
            && !rest.contains('\x1b'),
        "the display did not end in one clean line: {rest:?}"
    );
    // Per-file lines are for logs, not for a terminal with a display.
    assert!(!transcript.contains("haul: stored"), "{transcript:?}");
    // The counter counts files with a receipt: while big.bin, the first
    // file, is still going out, none has one.
    let mut while_big = 0;
    for frame in frames(&transcript) {
        let chars: Vec<char> = frame.chars().collect();
        if chars.len() != 2 * 120 {
            continue;
        }
        let (overall, current): (String, String) =
            (chars[..120].iter().collect(), chars[120..].iter().collect());
        if current.contains("folder/big.bin") && !current.contains("1.0 MiB of 1.0 MiB") {
            while_big += 1;
            assert!(
                overall.contains(" 0/51 files") || overall.contains(" 0 files"),
                "a file counted before its receipt: {overall:?}"
            );
        }
    }
    assert!(while_big > 0, "big.bin was never drawn: {transcript:?}");
}

/// What the terminal shows of a transcript, frame by frame: the text
/// between carriage returns and newlines, without escape sequences.
/// indicatif pads each line it draws with spaces to the terminal's width,
/// so a frame of the two-line display whose lines fit is exactly two
/// widths long; a line that wraps makes it longer.
fn frames(transcript: &str) -> Vec<String> {
    let mut plain = String::new();
    let mut chars = transcript.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            plain.push(c);
        } else if chars.next_if_eq(&'[').is_some() {
            // Parameters, then one final character in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    plain
        .split(['\r', '\n'])
        .filter(|frame| !frame.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn on_a_narrow_terminal_no_line_of_the_display_wraps_and_long_names_keep_their_end() {
    let source = tempfile::tempdir().unwrap();
    let folder = source.path().join("a-folder-with-a-rather-long-name");
    std::fs::create_dir(&folder).unwrap();
    write_file(
        &folder,
        "a-name-longer-than-a-narrow-terminal-is-wide.bin",
        512 * 1024,
    );
    for index in 0..5 {
        write_file(&folder, &format!("small-{index}.txt"), 100);
    }
    for columns in [60, 40] {
        let server = HaulServer::start(&[]);
        let (code, transcript) = haul_on_a_terminal_of(
            columns,
            &[
                "send",
                "--to",
                server.addr(),
                "--limit-rate",
                "512K",
                folder.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, Some(0), "{transcript:?}");
        // The closing line is printed, not drawn: it may wrap.
        let drawn: Vec<String> = frames(&transcript)
            .into_iter()
            .filter(|frame| !frame.starts_with("haul: "))
            .collect();
        for frame in &drawn {
            let width = frame.chars().count();
            assert!(
                width <= columns || width == 2 * columns,
                "at {columns} columns a line wrapped: {frame:?}"
            );
        }
        assert!(
            drawn
                .iter()
                .any(|frame| frame.contains("…") && frame.contains("-is-wide.bin")),
            "at {columns} columns the long name was not shortened to its end: {drawn:#?}"
        );
    }
}

#[test]
fn no_color_turns_the_colours_of_the_progress_display_off() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = write_file(source.path(), "plain.bin", 512 * 1024);
    let (code, transcript) = haul_on_a_terminal(
        &["send", "--to", server.addr(), "--limit-rate", "1M", &path],
        &[("NO_COLOR", "1")],
    );
    assert_eq!(code, Some(0), "{transcript:?}");
    assert!(transcript.contains("plain.bin"), "{transcript:?}");
    assert!(
        !transcript.contains("\x1b[3"),
        "colours despite NO_COLOR: {transcript:?}"
    );
}

#[test]
fn quiet_draws_nothing_and_prints_nothing_on_success() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = write_file(source.path(), "hush.bin", 64 * 1024);
    let (code, transcript) =
        haul_on_a_terminal(&["send", "--quiet", "--to", server.addr(), &path], &[]);
    assert_eq!(code, Some(0), "{transcript:?}");
    assert_eq!(transcript, "");
    server.wait_stored("hush.bin");
}

#[test]
fn without_a_terminal_nothing_is_drawn() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = write_file(source.path(), "piped.bin", 64 * 1024);
    let output = haul(&["send", "--to", server.addr(), &path]);
    assert!(output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "{stderr:?}"
    );
    assert_eq!(
        stderr.lines().collect::<Vec<_>>()[0],
        "haul: stored piped.bin (64.0 KiB)"
    );
}

#[test]
fn without_a_terminal_every_file_gets_its_line_in_order_before_the_closing_line() {
    // More files than one batch, so that lines gathered per batch must all
    // come out, in order, and before the closing line.
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let folder = source.path().join("many");
    std::fs::create_dir(&folder).unwrap();
    let names: Vec<String> = (0..600).map(|index| format!("f{index:03}.txt")).collect();
    for name in &names {
        write_file(&folder, name, 10);
    }
    let output = haul(&["send", "--to", server.addr(), folder.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    let lines: Vec<&str> = stderr.lines().collect();
    let expected: Vec<String> = names
        .iter()
        .map(|name| format!("haul: stored many/{name} (10 B)"))
        .collect();
    assert_eq!(lines.len(), names.len() + 1, "{stderr}");
    assert_eq!(lines[..names.len()], expected);
    // Sizes in the units the progress display and --limit-rate use.
    let closing = format!(
        "haul: 600 stored, 0 already there, 0 failed, 0 skipped; 5.9 KiB sent to {} (",
        server.addr()
    );
    assert!(lines[names.len()].starts_with(&closing), "{stderr}");
}

#[test]
fn without_a_terminal_a_resend_of_a_tree_says_in_one_line_what_was_already_there() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let tree = source.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let names: Vec<String> = (0..200).map(|index| format!("f{index:03}.txt")).collect();
    for name in &names {
        write_file(&tree, name, 1024);
    }
    let tree = tree.to_str().unwrap();
    let first = haul(&["send", "--to", server.addr(), tree]);
    assert!(first.status.success(), "{}", stderr_of(&first));

    let again = haul(&["send", "--to", server.addr(), tree]);
    assert!(again.status.success(), "{}", stderr_of(&again));
    assert_eq!(
        stderr_of(&again),
        format!(
            "haul: 200 files already there (200.0 KiB), nothing sent for them\n\
             haul: 0 stored, 200 already there, 0 failed, 0 skipped; 0 B sent to {} (0 B/s)\n",
            server.addr()
        )
    );

    // With -v, a line for each, as they come, and no line counting them.
    let verbose = haul(&["send", "-v", "--to", server.addr(), tree]);
    assert!(verbose.status.success(), "{}", stderr_of(&verbose));
    let stderr = stderr_of(&verbose);
    let lines: Vec<&str> = stderr.lines().collect();
    let expected: Vec<String> = names
        .iter()
        .map(|name| format!("haul: tree/{name} is already there, identical"))
        .collect();
    assert_eq!(lines.len(), names.len() + 1, "{stderr}");
    assert_eq!(lines[..names.len()], expected);
    assert!(
        lines[names.len()].starts_with("haul: 0 stored, 200 already there, "),
        "{stderr}"
    );

    // JSON keeps one event per file; none of them put a byte on the wire.
    let json = haul(&["send", "--json", "--to", server.addr(), tree]);
    assert!(json.status.success(), "{}", stderr_of(&json));
    let lines = json::lines(&json.stdout);
    assert_eq!(
        json::of_kind(&lines, "already_there").len(),
        200,
        "{lines:#?}"
    );
    let summary = lines.last().unwrap();
    assert_eq!(summary["already_there"], 200);
    assert_eq!(summary["bytes_sent"], 0);
    assert_eq!(summary["wire_bytes"], 0);
}

#[test]
fn with_compress_the_summary_says_what_went_on_the_wire_and_the_ratio() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("app.log");
    let content: Vec<u8> = (0..200_000)
        .flat_map(|index| format!("{index:08} GET /index.html 200\n").into_bytes())
        .collect();
    std::fs::write(&path, &content).unwrap();
    let path = path.to_str().unwrap();

    let output = haul(&["send", "--json", "--compress", "--to", server.addr(), path]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let lines = json::lines(&output.stdout);
    let summary = lines.last().unwrap();
    let sent = summary["bytes_sent"].as_u64().unwrap();
    let wire = summary["wire_bytes"].as_u64().unwrap();
    assert_eq!(sent, content.len() as u64, "{summary}");
    assert!(wire > 0 && wire * 4 < sent, "{summary}");
    assert_eq!(
        std::fs::read(server.inbox.join("app.log")).unwrap(),
        content
    );

    // The same bytes again, under another name so that they go again, and
    // compressed the same way.
    let output = haul(&[
        "send",
        "--compress",
        "--name",
        "again.log",
        "--to",
        server.addr(),
        path,
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    let expected = format!(
        "haul: 1 stored, 0 already there, 0 failed, 0 skipped; {} sent to {} \
         ({} on the wire, {:.1}x smaller; ",
        Human(sent),
        server.addr(),
        Human(wire),
        sent as f64 / wire as f64
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines[0],
        format!("haul: stored again.log ({})", Human(sent)),
        "{stderr}"
    );
    assert!(
        lines.len() == 2 && lines[1].starts_with(&expected),
        "{expected:?} does not start the closing line of {stderr:?}"
    );
}

#[test]
fn json_reports_each_file_with_its_receipt_a_failure_and_a_summary() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let folder = source.path().join("docs");
    std::fs::create_dir(&folder).unwrap();
    write_file(&folder, "a.txt", 1000);
    write_file(&folder, "b.txt", 2000);
    let missing = source.path().join("missing.txt");
    let output = haul(&[
        "send",
        "--json",
        "--to",
        server.addr(),
        folder.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let lines = json::lines(&output.stdout);

    let started = json::of_kind(&lines, "started");
    assert_eq!(started.len(), 2, "{lines:#?}");
    assert_eq!(started[0]["path"], "docs/a.txt");
    assert_eq!(started[0]["size"], 1000);
    assert_eq!(started[0]["offset"], 0);

    let stored = json::of_kind(&lines, "stored");
    assert_eq!(stored.len(), 2, "{lines:#?}");
    for (line, name) in stored.iter().zip(["a.txt", "b.txt"]) {
        let bytes = std::fs::read(folder.join(name)).unwrap();
        assert_eq!(line["path"], format!("docs/{name}"));
        assert_eq!(line["stored_as"], format!("docs/{name}"));
        assert_eq!(line["bytes"], bytes.len());
        assert_eq!(line["blake3"], blake3::hash(&bytes).to_hex().as_str());
        assert_eq!(line["verified"], true);
    }

    let failed = json::of_kind(&lines, "failed");
    assert_eq!(failed.len(), 1, "{lines:#?}");
    assert_eq!(failed[0]["path"], missing.to_str().unwrap());
    assert!(failed[0]["reason"].is_string());

    let summary = lines.last().unwrap();
    assert_eq!(summary["event"], "summary", "{lines:#?}");
    assert_eq!(summary["stored"], 2);
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["already_there"], 0);
    assert_eq!(summary["bytes_sent"], 3000);
    assert_eq!(
        summary["wire_bytes"], 3000,
        "no compression: the same bytes"
    );
    assert_eq!(summary["to"], server.addr());
    assert!(summary["error"].is_null());

    // Only the failure reaches stderr, in words.
    let stderr = stderr_of(&output);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("missing.txt"), "{stderr}");

    // Sent again: both files are already there.
    let again = haul(&[
        "send",
        "--json",
        "--to",
        server.addr(),
        folder.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr_of(&again));
    let lines = json::lines(&again.stdout);
    assert_eq!(
        json::of_kind(&lines, "already_there").len(),
        2,
        "{lines:#?}"
    );
    assert_eq!(lines.last().unwrap()["already_there"], 2);
    assert_eq!(lines.last().unwrap()["bytes_sent"], 0);
    assert_eq!(lines.last().unwrap()["wire_bytes"], 0);
    assert_eq!(stderr_of(&again), "");
}

#[test]
fn json_with_the_seed_protocol_says_the_file_is_not_verified() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = write_file(source.path(), "plain.txt", 500);
    let output = haul(&[
        "send",
        "--json",
        "--protocol",
        "seed",
        "--to",
        server.addr(),
        &path,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let lines = json::lines(&output.stdout);
    let kinds: Vec<&str> = lines
        .iter()
        .map(|line| line["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["started", "stored", "summary"]);
    let stored = &lines[1];
    assert_eq!(stored["path"], "plain.txt");
    assert_eq!(stored["bytes"], 500);
    assert_eq!(stored["verified"], false);
    assert!(stored["blake3"].is_null() && stored["stored_as"].is_null());
}

#[test]
fn json_for_an_unreachable_server_is_one_summary_with_the_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let output = haul(&["send", "--json", "--to", &addr, "Cargo.toml"]);
    assert_eq!(output.status.code(), Some(3));
    let lines = json::lines(&output.stdout);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["event"], "summary");
    let error = lines[0]["error"].as_str().unwrap();
    assert!(
        error.contains(&addr) && error.contains("haul serve"),
        "{error}"
    );
}

/// Compares `actual` with tests/snapshots/NAME.txt, so that changes to what
/// users read are deliberate. `UPDATE_SNAPSHOTS=1 cargo test` rewrites them.
fn assert_snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no snapshot {}; run UPDATE_SNAPSHOTS=1 cargo test",
            path.display()
        )
    });
    assert!(
        actual == expected,
        "{} changed; if that is deliberate, run UPDATE_SNAPSHOTS=1 cargo test and commit it.\n\
         --- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn help_texts_change_only_on_purpose() {
    for (name, args) in [
        ("help", &["--help"][..]),
        ("help-send", &["send", "--help"]),
        ("help-serve", &["serve", "--help"]),
        ("help-ls", &["ls", "--help"]),
        ("help-get", &["get", "--help"]),
        ("help-completions", &["completions", "--help"]),
        ("help-man", &["man", "--help"]),
    ] {
        let output = haul(args);
        assert!(output.status.success(), "{args:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.contains("Examples:"), "{args:?} shows no examples");
        assert_snapshot(name, &text);
    }
}

#[test]
fn completions_and_the_manual_page_are_printed() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = haul(&["completions", shell]);
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(
            script.contains("limit-rate") && script.contains("haul"),
            "{shell}"
        );
    }
    let output = haul(&["man"]);
    assert!(output.status.success());
    let page = String::from_utf8(output.stdout).unwrap();
    assert!(page.contains(".TH haul 1"), "{page}");
    assert!(page.contains("completions"), "{page}");

    let output = haul(&["man", "ls"]);
    assert!(output.status.success());
    let page = String::from_utf8(output.stdout).unwrap();
    assert!(page.contains(".TH haul-ls 1"), "{page}");
    let output = haul(&["completions", "bash"]);
    let script = String::from_utf8(output.stdout).unwrap();
    assert!(
        script.contains("haul__subcmd__ls") && script.contains("--from"),
        "{script}"
    );

    let output = haul(&["completions", "tcsh"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn serve_verbose_logs_each_session() {
    let server = HaulServer::start(&["--verbose"]);
    let source = tempfile::tempdir().unwrap();
    let path = write_file(source.path(), "told.txt", 10);
    let output = haul(&["send", "--to", server.addr(), &path]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    server.running.wait_for_log(&["DEBUG", "haul handshake"]);
    server
        .running
        .wait_for_log(&["DEBUG", "haul session ended"]);
}

#[test]
fn a_source_that_cannot_be_read_is_one_plain_line_with_a_hint() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let missing = source.path().join("missing.txt");
    let missing = missing.to_str().unwrap();
    for protocol in ["haul", "seed"] {
        let output = haul(&[
            "send",
            "--to",
            server.addr(),
            "--protocol",
            protocol,
            missing,
        ]);
        assert_eq!(output.status.code(), Some(1), "{protocol}");
        let stderr = stderr_of(&output);
        let line = stderr.lines().next().unwrap();
        assert!(
            line.starts_with("haul: ")
                && line.contains(missing)
                && line.contains("no such file or directory (check the path)")
                && !line.contains("os error"),
            "{protocol}: {stderr}"
        );
    }
}

#[test]
fn a_refused_name_says_the_server_refused_it() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = write_file(source.path(), "fine.txt", 10);
    // A file of that name, not a --name, which the client judges itself.
    let reserved = write_file(source.path(), ".haul", 10);

    let output = haul(&["send", "--to", server.addr(), &reserved]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    assert!(
        stderr.starts_with("haul: .haul: refused by the server: ") && stderr.contains("reserved"),
        "{stderr}"
    );

    let output = haul(&[
        "send",
        "--to",
        server.addr(),
        "--protocol",
        "seed",
        "--name",
        ".haul",
        &path,
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    assert!(
        stderr.starts_with("haul: .haul: ") && stderr.contains("may have refused the name"),
        "{stderr}"
    );
}

#[test]
fn nobody_listening_names_the_address_and_the_fix() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let output = haul(&["send", "--to", &addr, "Cargo.toml"]);
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(
        stderr_of(&output),
        format!(
            "haul: could not connect to {addr}: connection refused; is `haul serve` running there?\n"
        )
    );
}

#[test]
fn a_wrong_secret_is_one_line_with_a_hint_and_exit_code_4() {
    let keys = tempfile::tempdir().unwrap();
    // Kept private, as `haul token` advises: a token file others can read
    // would draw a warning line of its own.
    let token_file = |name: &str, secret: &str| {
        use std::os::unix::fs::PermissionsExt;
        let path = keys.path().join(name);
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let server_token = token_file("server", "the-server-holds-this-secret");
    let client_token = token_file("client", "the-client-holds-another-one");
    let server = HaulServer::start(&["--token-file", &server_token]);
    let source = tempfile::tempdir().unwrap();
    let path = write_file(source.path(), "private.bin", 1000);
    let send = |extra: &[&str]| {
        let mut args = vec!["send", "--to", server.addr(), "--token-file", &client_token];
        args.extend_from_slice(extra);
        args.push(&path);
        haul(&args)
    };

    let output = send(&[]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("haul: authentication failed")
            && stderr.contains("do both sides use the same secret?"),
        "{stderr}"
    );

    let output = send(&["--json"]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr_of(&output));
    let lines = json::lines(&output.stdout);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["event"], "summary");
    let error = lines[0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("authentication failed") && error.contains("same secret"),
        "{error}"
    );
    assert!(server.stored_names().is_empty());
}

#[test]
fn serve_listens_on_a_host_name_as_send_sends_to_one() {
    let inbox = tempfile::tempdir().unwrap();
    let mut command = util::haul_command();
    command
        .args(["serve", "--listen", "localhost:0", "--dir"])
        .arg(inbox.path());
    let server = util::Running::start(command);
    let port = server
        .addr
        .strip_prefix("127.0.0.1:")
        .unwrap_or_else(|| panic!("localhost is not 127.0.0.1 here: {}", server.addr));
    let source = tempfile::tempdir().unwrap();
    let path = write_file(source.path(), "named.txt", 1000);
    let output = haul(&["send", "--to", &format!("localhost:{port}"), &path]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        std::fs::read(inbox.path().join("named.txt")).unwrap(),
        std::fs::read(&path).unwrap()
    );

    // A port that is not one is named in one line, with the usage code.
    let output = haul(&["serve", "--listen", "localhost:99999"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("invalid value 'localhost:99999' for '--listen <ADDR:PORT>': \"99999\" is not a port (0 to 65535)"),
        "{stderr}"
    );
}
