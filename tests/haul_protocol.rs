//! haul's own protocol, end to end: real `haul serve` and `haul send`
//! processes, real sockets, and a proxy that damages the stream on purpose.

mod util;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use util::proxy::{Fault, Proxy};
use util::{HaulServer, LINE_WAIT, haul, json, random_bytes, seed_client, stderr_of};

fn send(to: &str, paths: &[&Path]) -> std::process::Output {
    let mut args = vec!["send", "--to", to];
    args.extend(paths.iter().map(|path| path.to_str().unwrap()));
    haul(&args)
}

/// Sends `paths` with `--json`; returns the output and its JSON lines.
fn send_json(to: &str, paths: &[&Path]) -> (std::process::Output, Vec<serde_json::Value>) {
    let mut args = vec!["send", "--json", "--to", to];
    args.extend(paths.iter().map(|path| path.to_str().unwrap()));
    let output = haul(&args);
    let lines = String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (output, lines)
}

/// The one `started` event and the summary of a resumed one-file send,
/// checked to agree: the bytes sent, and the bytes on the wire, are the
/// file's bytes after the offset it resumed from. Returns that offset.
fn resumed_offset(lines: &[serde_json::Value], size: u64) -> u64 {
    let started: Vec<_> = lines
        .iter()
        .filter(|line| line["event"] == "started")
        .collect();
    assert_eq!(started.len(), 1, "{lines:#?}");
    let offset = started[0]["offset"].as_u64().unwrap();
    let summary = lines.last().unwrap();
    assert_eq!(summary["event"], "summary", "{lines:#?}");
    assert_eq!(summary["bytes_sent"], size - offset, "{summary}");
    assert_eq!(summary["wire_bytes"], size - offset, "{summary}");
    offset
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::symlink_metadata(path).unwrap().modified().unwrap()
}

fn set_mtime(path: &Path, secs: u64, nanos: u32) {
    let time = UNIX_EPOCH + Duration::new(secs, nanos);
    let file = std::fs::File::options().read(true).open(path).unwrap();
    file.set_modified(time).unwrap();
}

/// Asserts that `copy` has the same files, bytes, modes and times as `original`.
fn assert_same_tree(original: &Path, copy: &Path) {
    let mut seen = 0;
    for entry in walkdir::WalkDir::new(original).sort_by_file_name() {
        let entry = entry.unwrap();
        if entry.file_type().is_symlink() {
            continue;
        }
        let relative = entry.path().strip_prefix(original).unwrap();
        let mirrored = copy.join(relative);
        let (a, b) = (
            entry.metadata().unwrap(),
            std::fs::metadata(&mirrored).unwrap(),
        );
        assert_eq!(a.is_dir(), b.is_dir(), "{}", relative.display());
        assert_eq!(
            a.permissions().mode() & 0o777,
            b.permissions().mode() & 0o777,
            "{}",
            relative.display()
        );
        assert_eq!(
            mtime(entry.path()),
            mtime(&mirrored),
            "{}",
            relative.display()
        );
        if a.is_file() {
            assert_eq!(
                std::fs::read(entry.path()).unwrap(),
                std::fs::read(&mirrored).unwrap()
            );
        }
        seen += 1;
    }
    assert!(seen > 1);
}

fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("docs/drafts")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::create_dir_all(root.join("Ünïcödé 目录")).unwrap();
    std::fs::write(root.join("top.txt"), b"top level").unwrap();
    std::fs::write(root.join("docs/report.pdf"), random_bytes(300_000, 1)).unwrap();
    std::fs::write(root.join("docs/drafts/v1.txt"), b"").unwrap();
    std::fs::write(
        root.join("Ünïcödé 目录/naïve – file.txt"),
        "contenu".as_bytes(),
    )
    .unwrap();
    std::fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(root.join("top.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("link-to-outside")).unwrap();
    for (index, path) in ["top.txt", "docs/report.pdf", "docs/drafts/v1.txt", "run.sh"]
        .iter()
        .enumerate()
    {
        set_mtime(
            &root.join(path),
            1_600_000_000 + index as u64 * 1000,
            123_456_789,
        );
    }
    // Directories last: writing into them changes their times.
    for (index, dir) in ["docs/drafts", "docs", "empty", "Ünïcödé 目录"]
        .iter()
        .enumerate()
    {
        set_mtime(&root.join(dir), 1_500_000_000 + index as u64 * 1000, 5);
    }
}

#[test]
fn a_folder_arrives_identical_with_modes_times_and_empty_directories() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let tree = source.path().join("project");
    make_tree(&tree);
    let output = send(server.addr(), &[&tree]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("link-to-outside") && stderr.contains("symbolic links"),
        "{stderr}"
    );
    assert!(
        stderr.contains("5 stored, 0 already there, 0 failed, 1 skipped"),
        "{stderr}"
    );
    assert_same_tree(&tree, &server.inbox.join("project"));
    assert!(!server.inbox.join("project/link-to-outside").exists());
    assert_eq!(server.partial_count(), 0);
}

#[test]
fn an_identical_resend_moves_almost_nothing_and_makes_no_copies() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let tree = source.path().join("project");
    make_tree(&tree);
    std::fs::write(tree.join("big.bin"), random_bytes(8 * 1024 * 1024, 2)).unwrap();
    let first = send(server.addr(), &[&tree]);
    assert!(first.status.success(), "{}", stderr_of(&first));
    let listing_before: Vec<_> = walkdir::WalkDir::new(&server.inbox)
        .sort_by_file_name()
        .into_iter()
        .map(|entry| entry.unwrap().path().to_owned())
        .collect();

    let proxy = Proxy::start(server.addr(), Fault::None);
    let second = send(&proxy.addr, &[&tree]);
    assert!(second.status.success(), "{}", stderr_of(&second));
    assert!(
        stderr_of(&second).contains("0 stored, 6 already there"),
        "{}",
        stderr_of(&second)
    );
    assert!(
        proxy.forwarded() < 16 * 1024,
        "{} bytes went upstream",
        proxy.forwarded()
    );
    let listing_after: Vec<_> = walkdir::WalkDir::new(&server.inbox)
        .sort_by_file_name()
        .into_iter()
        .map(|entry| entry.unwrap().path().to_owned())
        .collect();
    assert_eq!(listing_before, listing_after);
}

#[test]
fn a_byte_flipped_in_flight_fails_the_send_and_stores_nothing() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("precious.bin");
    std::fs::write(&path, random_bytes(4 * 1024 * 1024, 3)).unwrap();
    let proxy = Proxy::start(server.addr(), Fault::FlipByteAt(2 * 1024 * 1024));
    let output = send(&proxy.addr, &[&path]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("precious.bin") && stderr.contains("BLAKE3 mismatch"),
        "{stderr}"
    );
    assert!(
        server.stored_names().is_empty(),
        "{:?}",
        server.stored_names()
    );
    assert_eq!(server.partial_count(), 0);
}

#[test]
fn a_transfer_cut_short_resumes_and_sends_only_the_rest() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("video.bin");
    let content = random_bytes(24 * 1024 * 1024, 4);
    std::fs::write(&path, &content).unwrap();

    let cutting = Proxy::start(server.addr(), Fault::CutAfter(10 * 1024 * 1024));
    let cut = send(&cutting.addr, &[&path]);
    assert_ne!(cut.status.code(), Some(0), "{}", stderr_of(&cut));
    server.running.wait_for_log(&["haul session failed"]);
    assert!(server.stored_names().is_empty());

    let counting = Proxy::start(server.addr(), Fault::None);
    let (resumed, lines) = send_json(&counting.addr, &[&path]);
    assert!(resumed.status.success(), "{}", stderr_of(&resumed));
    assert_eq!(
        std::fs::read(server.inbox.join("video.bin")).unwrap(),
        content
    );
    let offset = resumed_offset(&lines, content.len() as u64);
    assert!(offset >= 9 * 1024 * 1024, "resumed from {offset}");
    assert!(
        counting.forwarded() < 15 * 1024 * 1024,
        "{}",
        counting.forwarded()
    );
    assert_eq!(server.partial_count(), 0);
}

#[test]
fn a_server_killed_mid_transfer_resumes_after_restart() {
    let mut server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("archive.bin");
    let size = 32 * 1024 * 1024;
    let content = random_bytes(size, 5);
    std::fs::write(&path, &content).unwrap();

    let stalling = Proxy::start(server.addr(), Fault::StallAfter(12 * 1024 * 1024));
    let mut sender = util::haul_command()
        .args(["send", "--to", &stalling.addr, path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the server has written most of what the proxy let through.
    let deadline = std::time::Instant::now() + LINE_WAIT;
    while server
        .hidden_files()
        .iter()
        .map(|(_, len)| len)
        .sum::<u64>()
        < 8 * 1024 * 1024
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never held 8 MiB: {:?}",
            server.hidden_files()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill_and_restart(&[]);
    let _ = sender.kill();
    let _ = sender.wait();
    assert!(
        server.stored_names().is_empty(),
        "{:?}",
        server.stored_names()
    );
    // The killed server left one resumable partial file and nothing else:
    // no private temporary file, nothing under the final name.
    let hidden = server.hidden_files();
    let [(partial, held)] = hidden.as_slice() else {
        panic!("one partial file expected in .haul, found {hidden:?}");
    };
    assert!(partial.starts_with("resume-"), "{hidden:?}");
    assert!(
        (8 * 1024 * 1024..=12 * 1024 * 1024).contains(held),
        "{held} bytes held"
    );
    assert_eq!(
        std::fs::read(server.inbox.join(".haul").join(partial)).unwrap(),
        content[..*held as usize],
        "the partial data is the file's first {held} bytes"
    );
    server
        .running
        .wait_for_log(&["holding 1 partial transfer for resume"]);

    let (resumed, lines) = send_json(server.addr(), &[&path]);
    assert!(resumed.status.success(), "{}", stderr_of(&resumed));
    assert_eq!(json::started_offsets(&resumed.stdout), [*held]);
    assert_eq!(json::summary(&lines)["bytes_sent"], size as u64 - held);
    assert_eq!(
        std::fs::read(server.inbox.join("archive.bin")).unwrap(),
        content
    );
    assert_eq!(resumed_offset(&lines, content.len() as u64), *held);
    assert_eq!(server.stored_names(), ["archive.bin"]);
    assert!(
        server.hidden_files().is_empty(),
        "nothing left in .haul: {:?}",
        server.hidden_files()
    );
}

#[test]
fn standard_input_is_sent_under_the_given_name() {
    let server = HaulServer::start(&[]);
    let content = random_bytes(3 * 1024 * 1024 + 17, 6);
    let mut sender = util::haul_command()
        .args(["send", "--to", server.addr(), "-", "--name", "dir.tar"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sender.stdin.take().unwrap().write_all(&content).unwrap();
    let output = sender.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        std::fs::read(server.inbox.join("dir.tar")).unwrap(),
        content
    );

    // A usage error, said before connecting.
    let unnamed = haul(&["send", "--to", server.addr(), "-"]);
    assert_eq!(unnamed.status.code(), Some(2));
    assert!(
        stderr_of(&unnamed).contains("--name"),
        "{}",
        stderr_of(&unnamed)
    );
}

#[test]
fn ten_thousand_small_files_arrive_in_one_send() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let tree = source.path().join("many");
    for dir in 0..100 {
        std::fs::create_dir_all(tree.join(format!("d{dir:02}"))).unwrap();
        for file in 0..100 {
            let index = dir * 100 + file;
            let content = format!("file {index} {}", "x".repeat(index % 300));
            std::fs::write(tree.join(format!("d{dir:02}/f{file:02}.txt")), content).unwrap();
        }
    }
    let output = send(server.addr(), &[&tree]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(stderr_of(&output).contains("10000 stored, 0 already there, 0 failed"));
    for dir in 0..100 {
        for file in 0..100 {
            let index = dir * 100 + file;
            let expected = format!("file {index} {}", "x".repeat(index % 300));
            let stored = std::fs::read_to_string(
                server.inbox.join(format!("many/d{dir:02}/f{file:02}.txt")),
            )
            .unwrap();
            assert_eq!(stored, expected);
        }
    }
}

/// The name in a log line: what follows `name="`, to the next quote.
fn logged_name(line: &str) -> &str {
    let after = line
        .split_once("name=\"")
        .unwrap_or_else(|| panic!("no name: {line}"))
        .1;
    after.split('"').next().unwrap()
}

#[test]
fn every_stored_file_gets_its_log_line_in_order() {
    // Lines of a batch are written together; long names make a batch's
    // lines overflow the gathering buffer too, and 600 files make three
    // batches.
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let folder = source.path().join("logged");
    std::fs::create_dir(&folder).unwrap();
    let names: Vec<String> = (0..600)
        .map(|index| format!("{index:03}-{}.txt", "n".repeat(150)))
        .collect();
    for name in &names {
        std::fs::write(folder.join(name), name).unwrap();
    }
    let output = send(server.addr(), &[&folder]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    // Everything the server wrote from its handshake to the session's
    // end, in the order written: the session's last line comes after
    // every gathered line.
    let log = server.running.log_through(&["haul session ended"]);
    let handshake = log
        .iter()
        .position(|line| line.contains("haul handshake"))
        .unwrap_or_else(|| panic!("no handshake in {log:#?}"));
    let session = &log[handshake..];
    let stored: Vec<&str> = session
        .iter()
        .filter(|line| line.contains("result=\"stored\""))
        .map(|line| logged_name(line))
        .collect();
    let expected: Vec<String> = names.iter().map(|name| format!("logged/{name}")).collect();
    assert_eq!(stored, expected, "every file once, in the order sent");
    for line in session {
        assert_eq!(
            line.matches(" INFO ").count() + line.matches(" DEBUG ").count(),
            1,
            "one event per line: {line}"
        );
    }
}

#[test]
fn both_protocols_share_one_port_and_seed_can_be_turned_off() {
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("seed.txt"), b"from the classroom").unwrap();
    std::fs::write(source.path().join("haul.txt"), b"from haul").unwrap();

    let both = HaulServer::start(&[]);
    let port = both.addr().rsplit(':').next().unwrap().to_owned();
    let output = seed_client("seed.txt", &port, source.path());
    assert!(output.status.success(), "{}", stderr_of(&output));
    let output = send(both.addr(), &[&source.path().join("haul.txt")]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    both.wait_stored("seed.txt");
    assert_eq!(both.stored_names(), ["haul.txt", "seed.txt"]);

    let haul_only = HaulServer::start(&["--protocols", "haul"]);
    let port = haul_only.addr().rsplit(':').next().unwrap().to_owned();
    let _ = seed_client("seed.txt", &port, source.path());
    haul_only
        .running
        .wait_for_log(&["refused a seed-protocol connection"]);
    let output = send(haul_only.addr(), &[&source.path().join("haul.txt")]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(haul_only.stored_names(), ["haul.txt"]);
}

#[test]
fn different_content_under_an_existing_name_follows_the_conflict_policy() {
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("notes.txt");
    for (policy, expected_names, exit_code) in [
        ("rename", vec!["notes (1).txt", "notes.txt"], 0),
        ("overwrite", vec!["notes.txt"], 0),
        ("refuse", vec!["notes.txt"], 1),
    ] {
        let server = HaulServer::start(&["--on-conflict", policy]);
        std::fs::write(&path, b"version one").unwrap();
        assert!(send(server.addr(), &[&path]).status.success());
        // Same size, different bytes: only the hash comparison can tell.
        std::fs::write(&path, b"version two").unwrap();
        let output = send(server.addr(), &[&path]);
        assert_eq!(
            output.status.code(),
            Some(exit_code),
            "{policy}: {}",
            stderr_of(&output)
        );
        assert_eq!(server.stored_names(), expected_names, "{policy}");
        let kept = std::fs::read(server.inbox.join("notes.txt")).unwrap();
        let expected_kept: &[u8] = if policy == "overwrite" {
            b"version two"
        } else {
            b"version one"
        };
        assert_eq!(kept, expected_kept, "{policy}");
        if policy == "rename" {
            assert!(stderr_of(&output).contains("stored notes.txt as notes (1).txt"));
        }
        if policy == "refuse" {
            assert!(
                stderr_of(&output).contains("already exists"),
                "{}",
                stderr_of(&output)
            );
        }
    }
}

#[test]
fn a_symlink_planted_in_the_inbox_leads_nowhere() {
    let server = HaulServer::start(&[]);
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("target.txt");
    std::fs::write(&target, b"outside, untouched").unwrap();
    // One link where a folder is offered, one where a file is.
    std::os::unix::fs::symlink(outside.path(), server.inbox.join("project")).unwrap();
    std::os::unix::fs::symlink(&target, server.inbox.join("notes.txt")).unwrap();
    let source = tempfile::tempdir().unwrap();
    let tree = source.path().join("project");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("payload.txt"), b"should not escape").unwrap();
    let notes = source.path().join("notes.txt");
    std::fs::write(&notes, b"should not replace the target").unwrap();

    let output = send(server.addr(), &[&tree, &notes]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    for refusal in [
        "haul: project: refused by the server: a file or link is in the way\n",
        "haul: project/payload.txt: refused by the server: storage failed: \
         a path led outside of the filesystem\n",
        "haul: notes.txt: refused by the server: a directory or link is in the way\n",
    ] {
        assert!(stderr.contains(refusal), "{refusal:?} not in {stderr}");
    }
    assert!(
        stderr.contains("0 stored, 0 already there, 3 failed"),
        "{stderr}"
    );
    let mut outside_names: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    outside_names.sort();
    assert_eq!(
        outside_names,
        ["target.txt"],
        "nothing written through the link"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"outside, untouched");
    for link in ["project", "notes.txt"] {
        let kept = std::fs::symlink_metadata(server.inbox.join(link)).unwrap();
        assert!(kept.file_type().is_symlink(), "{link} is still the link");
    }
    assert!(
        server.hidden_files().is_empty(),
        "no data was received: {:?}",
        server.hidden_files()
    );
}

#[test]
fn compression_shrinks_what_crosses_the_wire_and_keeps_every_byte() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let text = source.path().join("log.txt");
    let lines: String = (0..200_000)
        .map(|i| format!("line {i}: all is well\n"))
        .collect();
    std::fs::write(&text, &lines).unwrap();
    let noise = source.path().join("noise.bin");
    std::fs::write(&noise, random_bytes(3 * 1024 * 1024 + 5, 7)).unwrap();

    let proxy = Proxy::start(server.addr(), Fault::None);
    let output = haul(&[
        "send",
        "--compress",
        "--to",
        &proxy.addr,
        text.to_str().unwrap(),
        noise.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        std::fs::read(server.inbox.join("log.txt")).unwrap(),
        lines.as_bytes()
    );
    assert_eq!(
        std::fs::read(server.inbox.join("noise.bin")).unwrap(),
        std::fs::read(&noise).unwrap()
    );
    let wire = proxy.forwarded();
    let plain = lines.len() as u64 + 3 * 1024 * 1024 + 5;
    assert!(
        wire < plain - lines.len() as u64 / 2,
        "{wire} bytes on the wire for {plain}"
    );
}

#[test]
fn stale_partial_data_is_removed_at_start_up_and_fresh_data_kept() {
    let temp = tempfile::tempdir().unwrap();
    let hidden = temp.path().join("inbox/.haul");
    std::fs::create_dir_all(&hidden).unwrap();
    std::fs::write(hidden.join("resume-old"), b"abandoned").unwrap();
    std::fs::write(hidden.join("resume-fresh"), b"recent").unwrap();
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 60 * 60);
    std::fs::File::options()
        .write(true)
        .open(hidden.join("resume-old"))
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    let mut command = util::haul_command();
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--partial-max-age",
            "1d",
            "--dir",
        ])
        .arg(temp.path().join("inbox"));
    let server = util::Running::start(command);
    server.wait_for_log(&["removed stale partial files", "removed=1"]);
    assert!(!hidden.join("resume-old").exists());
    assert_eq!(
        std::fs::read(hidden.join("resume-fresh")).unwrap(),
        b"recent"
    );
}

/// Megabytes of text and of noise in turn: with `--compress`, the text
/// goes in compressed frames and the noise in plain ones.
fn half_compressible(len: usize) -> Vec<u8> {
    let mut content = Vec::with_capacity(len);
    let mut block = 0;
    while content.len() < len {
        if block % 2 == 0 {
            let lines: String = (0..80_000)
                .map(|line| format!("block {block} line {line}\n"))
                .collect();
            content.extend_from_slice(&lines.as_bytes()[..1 << 20]);
        } else {
            content.extend_from_slice(&random_bytes(1 << 20, block));
        }
        block += 1;
    }
    content.truncate(len);
    content
}

#[test]
fn a_compressed_transfer_cut_short_resumes_with_every_byte_right() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("mixed.log");
    let size = 16 * 1024 * 1024;
    let content = half_compressible(size);
    std::fs::write(&path, &content).unwrap();
    let send_compressed = |to: &str| {
        haul(&[
            "send",
            "--json",
            "--compress",
            "--to",
            to,
            path.to_str().unwrap(),
        ])
    };

    let cutting = Proxy::start(server.addr(), Fault::CutAfter(3 * 1024 * 1024 + 777));
    let cut = send_compressed(&cutting.addr);
    assert_ne!(cut.status.code(), Some(0), "{}", stderr_of(&cut));
    server
        .running
        .wait_for_log(&["name=\"mixed.log\"", "result=\"failed\"", "data=kept "]);
    let hidden = server.hidden_files();
    let [(partial, held)] = hidden.as_slice() else {
        panic!("one partial file expected in .haul, found {hidden:?}");
    };
    let held = *held;
    // Compressed frames carry more than they weigh: the server holds the
    // decompressed bytes, more than crossed.
    assert!(held > 3 * 1024 * 1024 + 777, "{held} bytes held");
    assert!(
        std::fs::read(server.inbox.join(".haul").join(partial)).unwrap()
            == content[..held as usize],
        "the partial data is not the file's first {held} bytes"
    );

    let resumed = send_compressed(server.addr());
    assert!(resumed.status.success(), "{}", stderr_of(&resumed));
    assert_eq!(json::started_offsets(&resumed.stdout), [held]);
    let lines = json::lines(&resumed.stdout);
    let stored = json::of_kind(&lines, "stored");
    assert_eq!(
        stored[0]["blake3"],
        blake3::hash(&content).to_hex().as_str()
    );
    assert_eq!(stored[0]["verified"], true);
    assert!(std::fs::read(server.inbox.join("mixed.log")).unwrap() == content);
    assert!(
        server.hidden_files().is_empty(),
        "{:?}",
        server.hidden_files()
    );
}

#[test]
fn standard_input_sent_compressed_arrives_whole_and_smaller_on_the_wire() {
    let server = HaulServer::start(&[]);
    let proxy = Proxy::start(server.addr(), Fault::None);
    let content = half_compressible(6 * 1024 * 1024 + 3);
    let mut sender = util::haul_command()
        .args(["send", "--json", "--compress", "--to", &proxy.addr])
        .args(["-", "--name", "piped.log"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = sender.stdin.take().unwrap();
    let writer = {
        let content = content.clone();
        std::thread::spawn(move || stdin.write_all(&content).unwrap())
    };
    let output = sender.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let lines = json::lines(&output.stdout);
    let stored = json::of_kind(&lines, "stored");
    assert_eq!(stored[0]["bytes"], content.len() as u64);
    assert_eq!(
        stored[0]["blake3"],
        blake3::hash(&content).to_hex().as_str()
    );
    assert!(std::fs::read(server.inbox.join("piped.log")).unwrap() == content);
    // Half of it is text that compresses to almost nothing.
    assert!(
        proxy.forwarded() < content.len() as u64 * 3 / 4,
        "{} bytes on the wire for {}",
        proxy.forwarded(),
        content.len()
    );
    assert!(
        server.hidden_files().is_empty(),
        "{:?}",
        server.hidden_files()
    );
}

#[test]
fn a_file_where_a_folder_is_and_a_folder_where_a_file_is_are_refused_under_every_policy() {
    let source = tempfile::tempdir().unwrap();
    // notes.txt is a file here and a folder on the server; docs is a
    // folder here and a file on the server.
    let notes = source.path().join("notes.txt");
    std::fs::write(&notes, b"a file now").unwrap();
    let docs = source.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    std::fs::write(docs.join("inside.txt"), b"inside the folder").unwrap();
    let fine = source.path().join("fine.txt");
    std::fs::write(&fine, b"no conflict").unwrap();
    for policy in ["rename", "overwrite", "refuse"] {
        let server = HaulServer::start(&["--on-conflict", policy]);
        std::fs::create_dir_all(server.inbox.join("notes.txt")).unwrap();
        std::fs::write(server.inbox.join("notes.txt/kept.txt"), b"the operator's").unwrap();
        std::fs::write(server.inbox.join("docs"), b"the operator's docs").unwrap();

        let output = send(server.addr(), &[&notes, &docs, &fine]);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{policy}: {}",
            stderr_of(&output)
        );
        let stderr = stderr_of(&output);
        for refusal in [
            "haul: notes.txt: refused by the server: a directory or link is in the way\n",
            "haul: docs: refused by the server: a file or link is in the way\n",
            "haul: docs/inside.txt: refused by the server: \
             a file or link is in the way of one of its folders\n",
        ] {
            assert!(
                stderr.contains(refusal),
                "{policy}: {refusal:?} not in {stderr}"
            );
        }
        assert!(
            stderr.contains("1 stored, 0 already there, 3 failed"),
            "{policy}: {stderr}"
        );
        assert_eq!(
            server.stored_names(),
            ["docs", "fine.txt", "notes.txt"],
            "{policy}: nothing stored beside"
        );
        assert!(server.inbox.join("notes.txt").is_dir(), "{policy}");
        let inside: Vec<_> = std::fs::read_dir(server.inbox.join("notes.txt"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(inside, ["kept.txt"], "{policy}");
        assert_eq!(
            std::fs::read(server.inbox.join("notes.txt/kept.txt")).unwrap(),
            b"the operator's"
        );
        assert_eq!(
            std::fs::read(server.inbox.join("docs")).unwrap(),
            b"the operator's docs",
            "{policy}"
        );
        assert_eq!(
            std::fs::read(server.inbox.join("fine.txt")).unwrap(),
            b"no conflict"
        );
        assert!(
            server.hidden_files().is_empty(),
            "{policy}: {:?}",
            server.hidden_files()
        );
    }
}
