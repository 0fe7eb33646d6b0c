//! What a get can make a `haul serve` spend, and where it stops: the Get
//! request's own bounds, rights checked before storage, and the depth of
//! a folder walk. Real server processes, frames made by hand.

mod util;

use std::io::Write;

use haul::protocol::haul::{Answer, GetPaths, Kind, MAX_GET_PATHS, Message};
use util::wire::{frame, raw_haul_session, read_message};
use util::{HaulServer, haul_command, stderr_of};

/// A Get frame for `paths`, built by hand past what `GetPaths::build`
/// allows: the count and each path as given.
fn raw_get(paths: &[&[u8]]) -> Vec<u8> {
    let mut payload = (paths.len() as u16).to_be_bytes().to_vec();
    for path in paths {
        payload.extend_from_slice(&(path.len() as u16).to_be_bytes());
        payload.extend_from_slice(path);
    }
    let mut bytes = vec![Kind::Get as u8];
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&payload);
    bytes
}

#[test]
fn a_get_over_its_bounds_is_refused_with_a_reason_and_nothing_is_sent() {
    let server = HaulServer::start(&["--allow-get"]);
    std::fs::write(server.inbox.join("a"), b"x").unwrap();
    let many: Vec<&[u8]> = vec![b"a"; MAX_GET_PATHS + 1];
    for (get, said) in [
        (raw_get(&many), "path count not between 1 and 256"),
        (raw_get(&[]), "path count not between 1 and 256"),
        (raw_get(&[b""]), "path empty or too long"),
        (raw_get(&[&[0xff]]), "not UTF-8"),
    ] {
        let mut stream = raw_haul_session(server.addr());
        stream.write_all(&get).unwrap();
        let answer = read_message(&mut stream);
        assert!(
            answer.starts_with("Error") && answer.contains(said),
            "{said}: {answer}"
        );
    }
    // One path the name rules refuse ends it before anything is offered,
    // even next to one that is there.
    let mut stream = raw_haul_session(server.addr());
    stream.write_all(&raw_get(&[b"a", b"../etc"])).unwrap();
    let answer = read_message(&mut stream);
    assert!(
        answer.starts_with("Error { code: NameRefused")
            && answer.contains("the path ../etc is refused"),
        "{answer}"
    );
    let mut payload = Vec::new();
    let get = GetPaths::build(&["a", ".haul"], &mut payload).unwrap();
    let mut stream = raw_haul_session(server.addr());
    stream.write_all(&frame(&Message::Get(get))).unwrap();
    let answer = read_message(&mut stream);
    assert!(answer.starts_with("Error { code: NameRefused"), "{answer}");
}

#[test]
fn a_drop_server_refuses_a_get_before_looking_at_the_path() {
    let server = HaulServer::start(&[]);
    std::fs::write(server.inbox.join("there"), b"x").unwrap();
    // The same answer whether the path is there, missing or refused: a drop
    // server says nothing of what it holds.
    for path in ["there", "missing", "../x"] {
        let mut stream = raw_haul_session(server.addr());
        stream.write_all(&raw_get(&[path.as_bytes()])).unwrap();
        let answer = read_message(&mut stream);
        assert!(
            answer.starts_with("Error { code: NotAllowed")
                && answer.contains("does not share its files"),
            "{path}: {answer}"
        );
    }
}

#[test]
fn a_tree_deeper_than_the_walk_goes_ends_the_get_with_a_reason() {
    let server = HaulServer::start(&["--allow-get"]);
    let mut deep = server.inbox.join("deep");
    for level in 0..70 {
        deep.push(format!("d{level}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom.txt"), b"far down").unwrap();
    std::fs::write(server.inbox.join("deep/top.txt"), b"near").unwrap();
    let into = tempfile::tempdir().unwrap();
    let output = haul_command()
        .args(["get", "--from", server.addr(), "deep", "--into"])
        .arg(into.path())
        .output()
        .unwrap();
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "is nested more than 64 folders deep; get a folder inside it by its own path"
        ),
        "{stderr}"
    );
    // What came before the cut is whole; the bottom never came.
    assert_eq!(
        std::fs::read(into.path().join("deep/top.txt")).unwrap(),
        b"near"
    );
    let mut bottom = into.path().join("deep");
    for level in 0..70 {
        bottom.push(format!("d{level}"));
    }
    assert!(!bottom.join("bottom.txt").exists());
    // The folder it stopped at is got by its own path.
    let mut inner = String::from("deep");
    for level in 0..40 {
        inner.push_str(&format!("/d{level}"));
    }
    let output = haul_command()
        .args(["get", "--from", server.addr(), &inner, "--into"])
        .arg(into.path().join("inner"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let mut bottom = into.path().join("inner/d39");
    for level in 40..70 {
        bottom.push(format!("d{level}"));
    }
    assert_eq!(
        std::fs::read(bottom.join("bottom.txt")).unwrap(),
        b"far down"
    );
}

/// A get client that asks for bytes past a file's end (or from its very
/// end, again and again) would make the server read and hash the whole
/// file to send nothing: anything past the end ends the get.
#[test]
fn a_get_answered_with_an_offset_past_the_end_ends_it_with_a_reason() {
    let server = HaulServer::start(&["--allow-get"]);
    std::fs::write(server.inbox.join("a.bin"), vec![7u8; 4096]).unwrap();
    for offset in [4097, u64::MAX] {
        let mut stream = raw_haul_session(server.addr());
        stream.write_all(&raw_get(&[b"a.bin"])).unwrap();
        let offer = read_message(&mut stream);
        assert!(
            offer.starts_with("Offer") && offer.contains("4096"),
            "{offer}"
        );
        assert_eq!(read_message(&mut stream), "BatchEnd");
        stream
            .write_all(&frame(&Message::Answer(Answer::Send { offset })))
            .unwrap();
        let answer = read_message(&mut stream);
        assert!(
            answer.starts_with("Error")
                && answer.contains(&format!(
                    "asked for a.bin from byte {offset}, past its end (4096 bytes)"
                )),
            "{offset}: {answer}"
        );
        server
            .running
            .wait_for_log(&["past its end", &offset.to_string()]);
    }
    // From the end itself is a file already whole: nothing read, nothing sent.
    let mut stream = raw_haul_session(server.addr());
    stream.write_all(&raw_get(&[b"a.bin"])).unwrap();
    read_message(&mut stream);
    read_message(&mut stream);
    stream
        .write_all(&frame(&Message::Answer(Answer::Send { offset: 4096 })))
        .unwrap();
    let end = read_message(&mut stream);
    assert!(end.starts_with("FileEnd"), "{end}");
}
