//! Clients that go silent where the server waits for their bytes hold no
//! thread of its blocking pool (tokio's, 512 threads), so however many of
//! them there are, a legitimate sender is still served.
//!
//! The silent clients connect from 127.0.0.2 and up, at most
//! [`PER_ADDRESS`] from each, so that a limit on connections per address
//! is not what turns them away; the legitimate sends come from 127.0.0.1.

mod util;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use haul::protocol::haul::{self as wire, EntryKind, MAGIC, Message, Mtime};
use tempfile::TempDir;
use util::wire::{frame, read_message};
use util::{HAUL, HaulServer, random_bytes, seed_header, stderr_of};

/// More silent clients than the blocking pool has threads.
const SILENT: usize = 515;

/// Silent clients connecting from one source address.
const PER_ADDRESS: usize = 40;

/// The longest a step of these tests may take: a bound so that a server
/// that starves its clients fails the test instead of hanging it, never a
/// measure of speed.
const DEADLINE: Duration = Duration::from_secs(120);

/// Longer than any of these tests, so that the server's idle timeout is
/// not what frees the silent clients' resources.
const IDLE_TIMEOUT: &str = "10m";

/// What a stalled haul session offers, and what it sends before it stops.
const STALLED_OFFER: u64 = 40 * 1024 * 1024;
const STALLED_SENT: usize = 2 * 1024 * 1024;

/// Opens `count` connections to `server`, from 127.0.0.2 upwards.
fn connect_silent_clients(server: &str, count: usize) -> Vec<TcpStream> {
    let server: SocketAddr = server.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut streams = Vec::with_capacity(count);
        for index in 0..count {
            let host = u8::try_from(2 + index / PER_ADDRESS).unwrap();
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0)))
                .unwrap();
            let stream = socket.connect(server).await.unwrap().into_std().unwrap();
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            streams.push(stream);
        }
        streams
    })
}

/// Runs `haul` with `args`; fails the test if it has not ended by
/// [`DEADLINE`].
fn haul_within_deadline(args: &[&str]) -> Output {
    let child = Command::new(HAUL)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = rustix::process::Pid::from_child(&child);
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match outcome.recv_timeout(DEADLINE) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            panic!("`haul {}` did not end within {DEADLINE:?}", args.join(" "));
        }
    }
}

/// A folder of a few files, small and large, to send.
fn a_few_files(temp: &TempDir) -> Vec<(String, Vec<u8>)> {
    let folder = temp.path().join("few");
    std::fs::create_dir(&folder).unwrap();
    let files: Vec<(String, Vec<u8>)> = [("tiny.txt", 700), ("middle.bin", 300_000)]
        .into_iter()
        .chain([("large.bin", 5 * 1024 * 1024 + 17)])
        .enumerate()
        .map(|(seed, (name, len))| (name.to_owned(), random_bytes(len, seed as u64 + 1)))
        .collect();
    for (name, content) in &files {
        std::fs::write(folder.join(name), content).unwrap();
    }
    files
}

/// Sends one file with the seed protocol and a folder with haul's, from
/// 127.0.0.1, and checks that every byte was stored.
fn legitimate_sends_are_stored(server: &HaulServer) {
    let temp = TempDir::new().unwrap();
    let single = temp.path().join("single.bin");
    let single_content = random_bytes(3 * 1024 * 1024 + 5, 99);
    std::fs::write(&single, &single_content).unwrap();
    let single = single.to_str().unwrap();
    let output =
        haul_within_deadline(&["send", "--protocol", "seed", "--to", server.addr(), single]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        std::fs::read(server.inbox.join("single.bin")).unwrap(),
        single_content
    );

    let files = a_few_files(&temp);
    let folder = temp.path().join("few");
    let output = haul_within_deadline(&["send", "--to", server.addr(), folder.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    for (name, content) in files {
        let stored = std::fs::read(server.inbox.join("few").join(&name)).unwrap();
        assert!(stored == content, "few/{name} differs");
    }
}

/// Bytes of every file in `dir` (the inbox's hidden area of partial data).
fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(|entry| entry.ok()?.metadata().ok())
            .map(|metadata| metadata.len())
            .sum()
    })
}

#[test]
fn a_send_completes_while_515_seed_clients_told_go_ahead_stay_silent() {
    let server = HaulServer::start(&["--idle-timeout", IDLE_TIMEOUT]);
    let mut silent = connect_silent_clients(server.addr(), SILENT);
    for (index, stream) in silent.iter_mut().enumerate() {
        let name = format!("silent-{index}.bin");
        stream
            .write_all(&seed_header(1024 * 1024, name.as_bytes()))
            .unwrap();
    }
    for stream in &mut silent {
        let mut reply = [0u8; 8];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"go ahead");
    }

    // Every silent client is now inside its transfer, waiting for bytes.
    legitimate_sends_are_stored(&server);
    drop(silent);
}

#[test]
fn a_send_completes_while_515_haul_sessions_stall_in_the_middle_of_a_large_file() {
    let server = HaulServer::start(&["--idle-timeout", IDLE_TIMEOUT]);
    let mut stalled = connect_silent_clients(server.addr(), SILENT);
    let mut data = Vec::new();
    wire::encode_data_header(wire::Kind::Data, STALLED_SENT as u32 / 2, &mut data);
    data.extend_from_slice(&random_bytes(STALLED_SENT / 2, 7));
    for (index, stream) in stalled.iter_mut().enumerate() {
        stream.write_all(&MAGIC).unwrap();
        stream
            .write_all(&frame(&Message::Hello {
                version: wire::VERSION,
                capabilities: 0,
                sender: [0; 16],
            }))
            .unwrap();
        let welcome = read_message(stream);
        assert!(welcome.starts_with("Welcome"), "{welcome}");
        let path = format!("stalled-{index}.bin");
        let offer = Message::Offer(wire::Offer {
            kind: EntryKind::File,
            size: Some(STALLED_OFFER),
            hash: None,
            mtime: Mtime::default(),
            mode: 0o644,
            path: path.as_bytes(),
        });
        stream.write_all(&frame(&offer)).unwrap();
        stream.write_all(&frame(&Message::BatchEnd)).unwrap();
        let answer = read_message(stream);
        assert!(answer.contains("Send { offset: 0 }"), "{answer}");
        stream.write_all(&data).unwrap();
        stream.write_all(&data).unwrap();
    }

    // Every session is in the middle of its file once all the bytes sent
    // are written; the partial data on disk is the only sign of that.
    let partial = server.inbox.join(".haul");
    let expected = (SILENT * STALLED_SENT) as u64;
    let deadline = Instant::now() + DEADLINE;
    while bytes_under(&partial) < expected {
        assert!(
            Instant::now() < deadline,
            "{} of {expected} bytes of the stalled sessions were written",
            bytes_under(&partial)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    legitimate_sends_are_stored(&server);
    drop(stalled);
}
