//! What `haul send` shows and refuses, and the names no server stores: a
//! name never reaches a terminal raw, a secret is never ignored in silence,
//! and a name that would not read as it is stored is refused.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use haul::protocol::haul::{
    self as wire, EntryKind, FRAME_HEADER_LEN, MAGIC, Message, Mtime, Offer,
};
use util::{HaulServer, read_until_closed, seed_header};

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

fn frame(message: &Message<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    wire::encode(message, &mut bytes);
    bytes
}

/// Reads one frame and renders its message for assertions.
fn read_message(stream: &mut TcpStream) -> String {
    let mut header = [0u8; FRAME_HEADER_LEN];
    stream.read_exact(&mut header).unwrap();
    let header = wire::decode_frame_header(header).unwrap();
    let mut payload = vec![0u8; header.len as usize];
    stream.read_exact(&mut payload).unwrap();
    format!("{:?}", wire::decode_message(header.kind, &payload).unwrap())
}

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
            differs: false,
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
