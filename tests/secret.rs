//! Only those who hold the secret may send, and nobody on the way can read
//! or change what they send.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Output, Stdio};

use util::proxy::{Fault, Proxy};
use util::{HaulServer, haul, json, random_bytes, seed_client, stderr_of};

const SECRET: &str = "4f6d2c0a9be14e7f8a3d5c21b7e09f64d2a1c3e5f7b9d0e2a4c6e8f0a2b4c6d8";

fn token_file(dir: &Path, name: &str, secret: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `haul send` with HAUL_TOKEN set (or removed, for `None`).
fn send_with_env(secret: Option<&str>, to: &str, path: &Path) -> Output {
    let mut command = util::haul_command();
    command
        .args(["send", "--to", to, path.to_str().unwrap()])
        .stdin(Stdio::null());
    match secret {
        Some(secret) => command.env("HAUL_TOKEN", secret),
        None => command.env_remove("HAUL_TOKEN"),
    };
    command.output().unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn secret_server(extra: &[&str]) -> (HaulServer, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let file = token_file(keys.path(), "server-token", SECRET);
    let mut args = vec!["--token-file", file.as_str()];
    args.extend_from_slice(extra);
    (HaulServer::start(&args), keys)
}

#[test]
fn no_secret_or_a_wrong_one_is_refused_and_the_right_one_stores() {
    let (server, _keys) = secret_server(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("private.txt");
    std::fs::write(&path, b"for members only").unwrap();

    let without = send_with_env(None, server.addr(), &path);
    assert_eq!(without.status.code(), Some(4), "{}", stderr_of(&without));
    assert!(
        stderr_of(&without).contains("requires a shared secret"),
        "{}",
        stderr_of(&without)
    );

    let wrong = send_with_env(
        Some("a-wrong-secret-that-is-long-enough"),
        server.addr(),
        &path,
    );
    assert_eq!(wrong.status.code(), Some(4), "{}", stderr_of(&wrong));
    assert!(
        stderr_of(&wrong).contains("authentication failed"),
        "{}",
        stderr_of(&wrong)
    );
    server
        .running
        .wait_for_log(&["haul session refused", "secrets do not match"]);
    assert!(server.stored_names().is_empty());
    assert_eq!(server.partial_count(), 0);

    let right = send_with_env(Some(SECRET), server.addr(), &path);
    assert!(right.status.success(), "{}", stderr_of(&right));
    assert_eq!(
        std::fs::read(server.inbox.join("private.txt")).unwrap(),
        b"for members only"
    );

    let keys = tempfile::tempdir().unwrap();
    let file = token_file(keys.path(), "client-token", SECRET);
    let from_file = haul(&[
        "send",
        "--to",
        server.addr(),
        "--token-file",
        &file,
        path.to_str().unwrap(),
    ]);
    assert!(from_file.status.success(), "{}", stderr_of(&from_file));
}

#[test]
fn a_client_with_a_secret_refuses_a_server_without_one() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("private.txt");
    std::fs::write(&path, b"not in clear").unwrap();
    let output = send_with_env(Some(SECRET), server.addr(), &path);
    assert_eq!(output.status.code(), Some(4), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("no secret set"),
        "{}",
        stderr_of(&output)
    );
    assert!(server.stored_names().is_empty());
}

#[test]
fn the_wire_shows_neither_content_nor_name_nor_secret() {
    let (server, _keys) = secret_server(&[]);
    let source = tempfile::tempdir().unwrap();
    let name = "quarterly-results-confidential.xlsx";
    let path = source.path().join(name);
    let content = [b"TOP-SECRET-MARKER ".repeat(1000), random_bytes(200_000, 1)].concat();
    std::fs::write(&path, &content).unwrap();
    let proxy = Proxy::start(server.addr(), Fault::None);
    let output = send_with_env(Some(SECRET), &proxy.addr, &path);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(std::fs::read(server.inbox.join(name)).unwrap(), content);

    let (up, down) = (proxy.upstream_bytes(), proxy.downstream_bytes());
    assert!(up.len() > content.len() / 2, "the recording is empty");
    for wire in [&up, &down] {
        assert!(
            !contains(wire, b"TOP-SECRET-MARKER"),
            "content seen on the wire"
        );
        assert!(
            !contains(wire, &content[20_000..20_064]),
            "content seen on the wire"
        );
        assert!(
            !contains(wire, b"quarterly-results"),
            "name seen on the wire"
        );
        assert!(
            !contains(wire, SECRET.as_bytes()),
            "secret seen on the wire"
        );
        assert!(
            !contains(wire, &SECRET.as_bytes()[..16]),
            "secret seen on the wire"
        );
    }
}

#[test]
fn a_byte_flipped_in_the_encrypted_stream_fails_the_transfer() {
    let (server, _keys) = secret_server(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("fragile.bin");
    std::fs::write(&path, random_bytes(2 * 1024 * 1024, 2)).unwrap();
    let proxy = Proxy::start(server.addr(), Fault::FlipByteAt(1024 * 1024));
    let output = send_with_env(Some(SECRET), &proxy.addr, &path);
    assert_ne!(output.status.code(), Some(0), "{}", stderr_of(&output));
    server
        .running
        .wait_for_log(&["haul session failed", "tampered"]);
    assert!(server.stored_names().is_empty());
}

#[test]
fn replaying_a_recorded_session_stores_nothing() {
    let (server, _keys) = secret_server(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("once.txt");
    std::fs::write(&path, b"deliver exactly once").unwrap();
    let proxy = Proxy::start(server.addr(), Fault::None);
    let output = send_with_env(Some(SECRET), &proxy.addr, &path);
    assert!(output.status.success(), "{}", stderr_of(&output));
    std::fs::remove_file(server.inbox.join("once.txt")).unwrap();

    let recorded = proxy.upstream_bytes();
    let mut replay = TcpStream::connect(server.addr()).unwrap();
    let _ = replay.write_all(&recorded);
    let _ = replay.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let _ = replay.read_to_end(&mut answer);
    server
        .running
        .wait_for_log(&["haul session failed", "tampered"]);
    assert!(
        server.stored_names().is_empty(),
        "{:?}",
        server.stored_names()
    );
}

#[test]
fn the_seed_protocol_is_refused_with_a_secret_unless_allowed() {
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("classroom.txt"), b"no secret here").unwrap();

    let (strict, _keys) = secret_server(&[]);
    let port = strict.addr().rsplit(':').next().unwrap().to_owned();
    let _ = seed_client("classroom.txt", &port, source.path());
    strict
        .running
        .wait_for_log(&["refused a seed-protocol connection"]);
    assert!(strict.stored_names().is_empty());

    let (lenient, _keys) = secret_server(&["--allow-seed"]);
    lenient
        .running
        .wait_for_log(&["--allow-seed", "without authentication"]);
    let port = lenient.addr().rsplit(':').next().unwrap().to_owned();
    let output = seed_client("classroom.txt", &port, source.path());
    assert!(output.status.success(), "{}", stderr_of(&output));
    lenient.wait_stored("classroom.txt");
}

#[test]
fn haul_token_prints_a_fresh_strong_secret_and_short_ones_are_refused() {
    let first = haul(&["token"]);
    let second = haul(&["token"]);
    assert!(first.status.success());
    let (first, second) = (
        String::from_utf8(first.stdout).unwrap(),
        String::from_utf8(second.stdout).unwrap(),
    );
    assert_eq!(first.trim().len(), 64);
    assert!(first.trim().chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(first, second);

    let keys = tempfile::tempdir().unwrap();
    let short = token_file(keys.path(), "short", "hunter2");
    let output = haul(&["serve", "--listen", "127.0.0.1:0", "--token-file", &short]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains("at least 16"),
        "{}",
        stderr_of(&output)
    );
}

/// `haul send --json` of `sources` to `to` with `HAUL_TOKEN` set, or with
/// `--token-file FILE` when `token_file` is given.
fn send_encrypted(to: &str, sources: &[&Path], token_file: Option<&str>) -> Output {
    let mut command = util::haul_command();
    command.args(["send", "--json", "--to", to]);
    match token_file {
        Some(file) => command
            .args(["--token-file", file])
            .env_remove("HAUL_TOKEN"),
        None => command.env("HAUL_TOKEN", SECRET),
    };
    command.args(sources).stdin(Stdio::null()).output().unwrap()
}

#[test]
fn three_hundred_files_in_a_tree_arrive_encrypted_with_every_hash_right() {
    let (server, _keys) = secret_server(&[]);
    let source = tempfile::tempdir().unwrap();
    let tree = source.path().join("tree");
    let mut expected = Vec::new();
    for index in 0..300usize {
        let relative = format!("d{}/e{}/f{index:03}.bin", index % 7, index % 3);
        let path = tree.join(&relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Sizes from empty to past one Noise message (65,519 bytes).
        let content = random_bytes(index * 257 % 70_000, index as u64);
        std::fs::write(&path, &content).unwrap();
        expected.push((format!("tree/{relative}"), content));
    }
    let output = send_encrypted(server.addr(), &[&tree], None);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let lines = json::lines(&output.stdout);
    assert_eq!(json::summary(&lines)["stored"], 300);
    let stored = json::of_kind(&lines, "stored");
    for (relative, content) in &expected {
        let on_disk = std::fs::read(server.inbox.join(relative)).unwrap();
        assert!(on_disk == *content, "{relative} differs");
        let event = stored
            .iter()
            .find(|event| event["path"] == relative.as_str())
            .unwrap_or_else(|| panic!("no stored event for {relative}"));
        assert_eq!(event["blake3"], blake3::hash(content).to_hex().as_str());
        assert_eq!(event["verified"], true);
    }
    assert!(
        server.hidden_files().is_empty(),
        "{:?}",
        server.hidden_files()
    );
}

#[test]
fn an_encrypted_transfer_cut_short_resumes_and_sends_only_the_rest() {
    let (server, keys) = secret_server(&[]);
    let client_token = token_file(keys.path(), "client-token", SECRET);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("sealed.bin");
    let size = 16 * 1024 * 1024;
    let content = random_bytes(size, 21);
    std::fs::write(&path, &content).unwrap();

    // The cut lands inside a Noise message: the server must keep only
    // what it decrypted and verified.
    let cutting = Proxy::start(server.addr(), Fault::CutAfter(6 * 1024 * 1024 + 12_345));
    let cut = send_encrypted(&cutting.addr, &[&path], None);
    assert_ne!(cut.status.code(), Some(0), "{}", stderr_of(&cut));
    server
        .running
        .wait_for_log(&["name=\"sealed.bin\"", "result=\"failed\"", "data=kept "]);
    assert!(server.stored_names().is_empty());
    let hidden = server.hidden_files();
    let [(partial, held)] = hidden.as_slice() else {
        panic!("one partial file expected in .haul, found {hidden:?}");
    };
    let held = *held;
    assert!(
        held > 0 && held <= 6 * 1024 * 1024 + 12_345,
        "{held} bytes held"
    );
    assert!(
        std::fs::read(server.inbox.join(".haul").join(partial)).unwrap()
            == content[..held as usize],
        "the partial data is not the file's first {held} bytes"
    );

    // Resumed with the secret from a file this time: the same secret.
    let counting = Proxy::start(server.addr(), Fault::None);
    let resumed = send_encrypted(&counting.addr, &[&path], Some(&client_token));
    assert!(resumed.status.success(), "{}", stderr_of(&resumed));
    assert_eq!(json::started_offsets(&resumed.stdout), [held]);
    let lines = json::lines(&resumed.stdout);
    assert_eq!(json::summary(&lines)["bytes_sent"], size as u64 - held);
    assert!(
        counting.forwarded() < size as u64 - held + 256 * 1024,
        "{} bytes crossed for the {} missing",
        counting.forwarded(),
        size as u64 - held
    );
    let stored = json::of_kind(&lines, "stored");
    assert_eq!(
        stored[0]["blake3"],
        blake3::hash(&content).to_hex().as_str()
    );
    assert!(std::fs::read(server.inbox.join("sealed.bin")).unwrap() == content);
    assert!(
        server.hidden_files().is_empty(),
        "{:?}",
        server.hidden_files()
    );
}

/// A server's idle limit measures silence, not how long one encrypted
/// message takes: a sender held to a rate at which each message (64 KiB)
/// takes seconds to cross is never cut off by a limit of one second, since
/// its bytes keep coming.
#[test]
fn a_slow_encrypted_sender_is_never_taken_for_a_silent_one() {
    let (server, _keys) = secret_server(&["--idle-timeout", "1s"]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("slow.bin");
    let content = random_bytes(160 * 1024, 7);
    std::fs::write(&path, &content).unwrap();
    let mut command = util::haul_command();
    command
        .args(["send", "--to", server.addr(), "--limit-rate", "32K"])
        .arg(&path)
        .env("HAUL_TOKEN", SECRET)
        .stdin(Stdio::null());
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    server.wait_stored("slow.bin");
    assert_eq!(
        std::fs::read(server.inbox.join("slow.bin")).unwrap(),
        content
    );
}
