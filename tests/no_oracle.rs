//! No oracle: a sender learns nothing about a stored file's content that it
//! has not shown it holds, and asking again costs the server no re-reading.
//! A real `haul serve`, spoken to with frames made by hand with the crate's
//! own codec, and through the real client.

mod util;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::path::Path;

use haul::protocol::haul::{
    self as wire, Answer, EntryKind, FRAME_HEADER_LEN, Hash, Kind, Message, Mtime, Offer,
};
use util::wire::{frame, raw_haul_session, read_message, read_raw_frame};
use util::{HaulServer, haul, json, random_bytes, read_until_closed, stderr_of};

fn file_offer(path: &[u8], size: u64, hash: Option<Hash>) -> Vec<u8> {
    frame(&Message::Offer(Offer {
        kind: EntryKind::File,
        size: Some(size),
        hash,
        mtime: Mtime::default(),
        mode: 0o644,
        path,
    }))
}

/// Offers one file as a batch of its own and returns the raw answer.
fn offer_alone(session: &mut TcpStream, path: &[u8], size: u64, hash: Option<Hash>) -> Vec<u8> {
    let mut batch = file_offer(path, size, hash);
    batch.extend(frame(&Message::BatchEnd));
    session.write_all(&batch).unwrap();
    read_raw_frame(session)
}

fn answer_of(raw: &[u8]) -> String {
    let (frame, _) = wire::split_frame(raw).unwrap().unwrap();
    assert_eq!(frame.header.kind, Kind::Answer, "{raw:?}");
    format!(
        "{:?}",
        wire::decode_message(frame.header.kind, frame.payload).unwrap()
    )
}

fn same_as(stored_as: &str) -> String {
    format!("{:?}", Message::Answer(Answer::Same { stored_as }))
}

fn goodbye(mut session: TcpStream) {
    session.write_all(&frame(&Message::Bye)).unwrap();
    session.shutdown(Shutdown::Write).unwrap();
    assert!(read_until_closed(&mut session).is_empty());
}

/// Bytes the process has read through system calls so far (`rchar`).
fn bytes_read_by(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|line| line.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

const PIN: &[u8] = b"PIN=4821";

#[test]
fn an_offer_of_a_stored_name_and_size_is_answered_without_any_hash() {
    let server = HaulServer::start(&[]);
    std::fs::write(server.inbox.join("secret.txt"), PIN).unwrap();
    let mut session = raw_haul_session(server.addr());
    let answer = offer_alone(&mut session, b"secret.txt", 8, None);
    // docs/PROTOCOL.md: an Answer frame of one byte, the Compare decision.
    assert_eq!(answer, [Kind::Answer as u8, 0, 0, 0, 1, 0x01]);
    goodbye(session);
    assert_eq!(server.stored_names(), ["secret.txt"]);
}

#[test]
fn a_wrong_hash_is_not_answered_same_and_never_replaces_the_original() {
    let server = HaulServer::start(&[]);
    std::fs::write(server.inbox.join("secret.txt"), PIN).unwrap();
    let guess = b"PIN=0000";
    let mut session = raw_haul_session(server.addr());
    let answer = answer_of(&offer_alone(
        &mut session,
        b"secret.txt",
        8,
        Some(*blake3::hash(guess).as_bytes()),
    ));
    assert_eq!(
        answer,
        format!("{:?}", Message::Answer(Answer::Send { offset: 0 })),
        "a different file: the rename policy keeps both"
    );
    session.write_all(&frame_data(guess)).unwrap();
    session
        .write_all(&frame(&Message::FileEnd {
            hash: *blake3::hash(guess).as_bytes(),
        }))
        .unwrap();
    let receipt = read_message(&mut session);
    assert!(
        receipt.contains("stored_as: \"secret (1).txt\""),
        "{receipt}"
    );
    goodbye(session);
    assert_eq!(std::fs::read(server.inbox.join("secret.txt")).unwrap(), PIN);
    assert_eq!(
        std::fs::read(server.inbox.join("secret (1).txt")).unwrap(),
        guess
    );

    // Where the policy refuses a different file, a wrong guess is refused
    // and the original stays.
    let refusing = HaulServer::start(&["--on-conflict", "refuse"]);
    std::fs::write(refusing.inbox.join("secret.txt"), PIN).unwrap();
    let mut session = raw_haul_session(refusing.addr());
    let answer = answer_of(&offer_alone(
        &mut session,
        b"secret.txt",
        8,
        Some(*blake3::hash(guess).as_bytes()),
    ));
    assert!(
        answer.contains("Refused") && answer.contains("different file"),
        "{answer}"
    );
    goodbye(session);
    assert_eq!(refusing.stored_names(), ["secret.txt"]);
    assert_eq!(
        std::fs::read(refusing.inbox.join("secret.txt")).unwrap(),
        PIN
    );
}

fn frame_data(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_data_header(Kind::Data, bytes.len() as u32, &mut out);
    out.extend_from_slice(bytes);
    out
}

#[test]
fn the_right_hash_is_answered_same_with_where_the_file_is() {
    let server = HaulServer::start(&[]);
    std::fs::create_dir(server.inbox.join("notes")).unwrap();
    std::fs::write(server.inbox.join("notes/secret.txt"), PIN).unwrap();
    let mut session = raw_haul_session(server.addr());
    let answer = answer_of(&offer_alone(
        &mut session,
        b"notes/secret.txt",
        8,
        Some(*blake3::hash(PIN).as_bytes()),
    ));
    assert_eq!(answer, same_as("notes/secret.txt"));
    goodbye(session);
    assert_eq!(server.stored_names(), ["notes"]);
    assert_eq!(
        std::fs::read_dir(server.inbox.join("notes"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn an_offer_with_the_retired_differs_flag_ends_the_session() {
    let server = HaulServer::start(&[]);
    std::fs::write(server.inbox.join("secret.txt"), PIN).unwrap();
    let mut session = raw_haul_session(server.addr());
    let mut offer = file_offer(b"secret.txt", 8, None);
    offer[FRAME_HEADER_LEN] = 0x04;
    session.write_all(&offer).unwrap();
    let reply = read_message(&mut session);
    assert!(
        reply.starts_with("Error") && reply.contains("unknown offer flags"),
        "{reply}"
    );
    assert_eq!(std::fs::read(server.inbox.join("secret.txt")).unwrap(), PIN);
}

const LARGE: usize = 64 * 1024 * 1024;
const PROBES: usize = 20;

/// Offers `path` with `hash` in `PROBES` batches; every answer must be
/// `expected`. Returns the bytes the server read meanwhile.
fn probe(server: &HaulServer, path: &str, hash: &blake3::Hash, expected: &str) -> u64 {
    let before = bytes_read_by(server.running.pid());
    let mut session = raw_haul_session(server.addr());
    for _ in 0..PROBES {
        let answer = answer_of(&offer_alone(
            &mut session,
            path.as_bytes(),
            LARGE as u64,
            Some(*hash.as_bytes()),
        ));
        assert_eq!(answer, expected);
    }
    goodbye(session);
    bytes_read_by(server.running.pid()) - before
}

#[test]
fn repeated_probes_of_a_large_stored_file_read_it_once_until_it_changes() {
    let server = HaulServer::start(&["--on-conflict", "refuse"]);
    let stored = server.inbox.join("big.bin");
    let content = random_bytes(LARGE, 1);
    std::fs::write(&stored, &content).unwrap();
    let hash = blake3::hash(&content);

    let first = probe(&server, "big.bin", &hash, &same_as("big.bin"));
    assert!(
        first >= LARGE as u64,
        "the first probe hashes the file: {first} bytes read"
    );
    let again = probe(&server, "big.bin", &hash, &same_as("big.bin"));
    assert!(
        again < (LARGE / 8) as u64,
        "{PROBES} more probes read {again} bytes, for a file of {LARGE}"
    );

    // Changed in place, same size, its modification time put back: its
    // old hash is no longer the same, and its new one is found by reading.
    let mut changed = content;
    changed[LARGE / 2] ^= 1;
    let modified = std::fs::metadata(&stored).unwrap().modified().unwrap();
    std::fs::write(&stored, &changed).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stored)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let mut session = raw_haul_session(server.addr());
    let answer = answer_of(&offer_alone(
        &mut session,
        b"big.bin",
        LARGE as u64,
        Some(*hash.as_bytes()),
    ));
    assert!(answer.contains("Refused"), "{answer}");
    goodbye(session);
    let new_hash = blake3::hash(&changed);
    let after_change = probe(&server, "big.bin", &new_hash, &same_as("big.bin"));
    assert!(
        after_change < (LARGE / 8) as u64,
        "hashed once, by the probe that found it changed: {after_change}"
    );
    assert_eq!(std::fs::read(&stored).unwrap(), changed);
}

#[test]
fn a_large_file_the_server_stored_is_compared_without_reading_it() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let file = source.path().join("big.bin");
    let content = random_bytes(LARGE, 2);
    std::fs::write(&file, &content).unwrap();
    let sent = haul(&["send", "--to", server.addr(), file.to_str().unwrap()]);
    assert!(sent.status.success(), "{}", stderr_of(&sent));

    let read = probe(
        &server,
        "big.bin",
        &blake3::hash(&content),
        &same_as("big.bin"),
    );
    assert!(
        read < (LARGE / 8) as u64,
        "{PROBES} probes read {read} bytes, for a file of {LARGE}"
    );
}

fn send_json(to: &str, folder: &Path) -> Vec<serde_json::Value> {
    let output = haul(&["send", "--json", "--to", to, folder.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    json::lines(&output.stdout)
}

#[test]
fn resending_moves_no_bytes_and_a_changed_file_of_the_same_size_is_kept_beside() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let folder = source.path().join("docs");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("a.txt"), b"first version").unwrap();
    std::fs::write(folder.join("b.bin"), random_bytes(300 * 1024, 3)).unwrap();
    let lines = send_json(server.addr(), &folder);
    assert_eq!(json::of_kind(&lines, "stored").len(), 2, "{lines:#?}");

    let lines = send_json(server.addr(), &folder);
    assert!(json::of_kind(&lines, "started").is_empty(), "{lines:#?}");
    let mut there: Vec<(String, String)> = json::of_kind(&lines, "already_there")
        .iter()
        .map(|line| {
            (
                line["path"].as_str().unwrap().to_owned(),
                line["stored_as"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    there.sort();
    assert_eq!(
        there,
        [
            ("docs/a.txt".to_owned(), "docs/a.txt".to_owned()),
            ("docs/b.bin".to_owned(), "docs/b.bin".to_owned())
        ]
    );
    let summary = lines.last().unwrap();
    assert_eq!(summary["already_there"], 2, "{summary}");
    assert_eq!(summary["bytes_sent"], 0, "{summary}");

    std::fs::write(folder.join("a.txt"), b"other version").unwrap();
    let lines = send_json(server.addr(), &folder);
    let stored = json::of_kind(&lines, "stored");
    assert_eq!(stored.len(), 1, "{lines:#?}");
    assert_eq!(stored[0]["path"], "docs/a.txt");
    assert_eq!(stored[0]["stored_as"], "docs/a (1).txt");
    assert_eq!(
        json::of_kind(&lines, "already_there").len(),
        1,
        "{lines:#?}"
    );
    let inbox = server.inbox.join("docs");
    assert_eq!(
        std::fs::read(inbox.join("a.txt")).unwrap(),
        b"first version"
    );
    assert_eq!(
        std::fs::read(inbox.join("a (1).txt")).unwrap(),
        b"other version"
    );
}
