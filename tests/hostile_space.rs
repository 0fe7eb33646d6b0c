//! Hostile clients against the server's disk: however they send, together
//! or alone, streams, compressed data, directories or abandoned partial
//! data, the inbox's file system keeps `--reserve` free, and the server
//! goes on storing legitimate files. Each test mounts a small tmpfs of its
//! own (CI runs as root; a test that cannot mount fails, it never skips).

mod util;

use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use haul::protocol::haul::{EntryKind, Message, Mtime, Offer};
use util::disk::SmallDisk;
use util::wire::{connect_from, data_frame, frame, open_session, read_message};
use util::{HAUL, Running, haul, random_bytes, stderr_of};

const MIB: u64 = 1024 * 1024;

/// The inode bound of `ServerConfig::new`: files keep this many free,
/// directories twice as many.
const RESERVE_INODES: u64 = 1024;

/// `haul serve` on `disk`, with a debug log to wait on.
fn serve(disk: &SmallDisk, args: &[&str]) -> Running {
    let mut command = Command::new(HAUL);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(disk.inbox())
        .args(args)
        .env("RUST_LOG", "info,haul=debug");
    Running::start(command)
}

/// A legitimate one-file send, which must be stored whole.
fn assert_serves_a_legitimate_send(server: &Running, disk: &SmallDisk) {
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("legitimate.txt");
    std::fs::write(&path, b"still serving").unwrap();
    let output = haul(&["send", "--to", &server.addr, path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        std::fs::read(disk.inbox().join("legitimate.txt")).unwrap(),
        b"still serving"
    );
}

/// A haul session opened by hand from `source`, past the handshake.
fn raw_session(source: Ipv4Addr, addr: &str) -> TcpStream {
    let mut stream = connect_from(source.octets(), addr);
    open_session(&mut stream);
    stream
}

/// Offers one file of `size` bytes as a batch of its own; returns the answer.
fn offer_file(session: &mut TcpStream, path: &str, size: u64) -> String {
    let offer = Message::Offer(Offer {
        kind: EntryKind::File,
        size: Some(size),
        hash: None,
        mtime: Mtime::default(),
        mode: 0o644,
        path: path.as_bytes(),
    });
    session.write_all(&frame(&offer)).unwrap();
    session.write_all(&frame(&Message::BatchEnd)).unwrap();
    read_message(session)
}

/// Sends `content` in data frames of at most 1 MiB.
fn send_data(session: &mut TcpStream, content: &[u8]) {
    for chunk in content.chunks(MIB as usize) {
        session.write_all(&data_frame(chunk)).unwrap();
    }
}

/// `haul send - --name NAME [EXTRA]` fed by `feed` on its standard input,
/// while the free space of `disk` is sampled; returns the sender's output
/// and the least free space seen.
fn send_stream(
    server: &Running,
    disk: &SmallDisk,
    name: &str,
    extra: &[&str],
    feed: impl FnOnce(&mut std::process::ChildStdin) + Send + 'static,
) -> (std::process::Output, u64) {
    let mut sender = Command::new(HAUL)
        .args(["send", "--to", &server.addr, "-", "--name", name])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = sender.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || feed(&mut stdin));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        let mount_point = disk.path().to_owned();
        std::thread::spawn(move || {
            let mut least = u64::MAX;
            // Sampling, not synchronisation: the lowest point seen is a
            // lower bound on how well the reserve held.
            while !done.load(Ordering::Relaxed) {
                let stat = rustix::fs::statvfs(&mount_point).unwrap();
                least = least.min(stat.f_bavail * stat.f_frsize);
                std::thread::sleep(Duration::from_millis(2));
            }
            least
        })
    };
    let output = sender.wait_with_output().unwrap();
    feeder.join().unwrap();
    done.store(true, Ordering::Relaxed);
    let least = sampler.join().unwrap();
    (output, least)
}

#[test]
fn concurrent_sessions_together_cannot_go_below_the_reserve() {
    let disk = SmallDisk::mount("size=32m");
    let reserve = 8 * MIB;
    let server = serve(&disk, &["--reserve", "8M"]);
    let size = 10 * MIB;
    let (free, _) = disk.free();
    let fit = (free - reserve) / size;
    assert!((1..4).contains(&fit), "{free} bytes free");

    // Four sessions at once, each offered a file that fits on its own.
    let mut sessions: Vec<TcpStream> = (0..4)
        .map(|_| raw_session(Ipv4Addr::LOCALHOST, &server.addr))
        .collect();
    let mut accepted = Vec::new();
    for (index, session) in sessions.iter_mut().enumerate() {
        let answer = offer_file(session, &format!("file-{index}.bin"), size);
        if answer.contains("Send { offset: 0 }") {
            accepted.push(index);
        } else {
            assert!(
                answer.contains("no space left on the server: the file needs 10485760 bytes"),
                "session {index}: {answer}"
            );
        }
        disk.assert_keeps(reserve, &format!("the answer to session {index}"));
    }
    assert_eq!(accepted.len() as u64, fit, "accepted: {accepted:?}");

    for &index in &accepted {
        let content = random_bytes(size as usize, index as u64);
        let session = &mut sessions[index];
        send_data(session, &content);
        let hash = *blake3::hash(&content).as_bytes();
        session
            .write_all(&frame(&Message::FileEnd { hash }))
            .unwrap();
        let receipt = read_message(session);
        assert!(receipt.starts_with("Receipt"), "{receipt}");
        disk.assert_keeps(reserve, &format!("session {index}'s file"));
        assert_eq!(
            std::fs::read(disk.inbox().join(format!("file-{index}.bin"))).unwrap(),
            content
        );
    }
    for mut session in sessions {
        session.write_all(&frame(&Message::Bye)).unwrap();
        session.shutdown(Shutdown::Write).unwrap();
    }
    disk.assert_keeps(reserve, "every session");
    assert_serves_a_legitimate_send(&server, &disk);
    disk.assert_keeps(reserve, "the legitimate send");
}

#[test]
fn a_stream_that_grows_into_the_reserve_fails_with_no_space_and_leaves_no_data() {
    let disk = SmallDisk::mount("size=64m");
    let reserve = 16 * MIB;
    let server = serve(&disk, &["--reserve", "16M"]);
    // Would fit the disk, not beside the reserve.
    let content = random_bytes(56 * MIB as usize, 3);
    let (output, least) = send_stream(&server, &disk, "stream.bin", &[], move |stdin| {
        let _ = stdin.write_all(&content);
    });
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("no space left on the server"),
        "{}",
        stderr_of(&output)
    );
    assert!(
        least >= reserve,
        "free space fell to {least} during the stream"
    );
    server.wait_for_log(&["haul session failed", "no space left on the server"]);
    disk.assert_keeps(reserve, "the stream");
    assert!(!disk.inbox().join("stream.bin").exists());
    assert_eq!(disk.held_partial_bytes(), 0, "the stream's data was left");
    assert_serves_a_legitimate_send(&server, &disk);
    disk.assert_keeps(reserve, "the legitimate send");
}

#[test]
fn a_compressed_stream_of_zeros_cannot_pass_the_reserve() {
    let disk = SmallDisk::mount("size=64m");
    let reserve = 16 * MIB;
    let server = serve(&disk, &["--reserve", "16M"]);
    // Each MiB of zeros is a few dozen bytes on the wire and a MiB on disk.
    let (output, least) = send_stream(&server, &disk, "zeros.bin", &["--compress"], |stdin| {
        let zeros = vec![0u8; MIB as usize];
        for _ in 0..128 {
            if stdin.write_all(&zeros).is_err() {
                return;
            }
        }
    });
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("no space left on the server"),
        "{}",
        stderr_of(&output)
    );
    assert!(
        least >= reserve,
        "free space fell to {least} during the stream"
    );
    server.wait_for_log(&["haul session failed", "no space left on the server"]);
    disk.assert_keeps(reserve, "the compressed stream");
    assert!(!disk.inbox().join("zeros.bin").exists());
    assert_eq!(disk.held_partial_bytes(), 0, "the stream's data was left");
    assert_serves_a_legitimate_send(&server, &disk);
    disk.assert_keeps(reserve, "the legitimate send");
}

#[test]
fn a_flood_of_directory_offers_stops_at_the_inode_bound_with_a_reason() {
    let disk = SmallDisk::mount("size=16m,nr_inodes=3000");
    let reserve = MIB;
    let server = serve(&disk, &["--reserve", "1M"]);
    let mut session = raw_session(Ipv4Addr::LOCALHOST, &server.addr);
    let mut refused = None;
    let mut next = 0;
    // 3,000 inodes in all: four batches of 1,024 must meet the bound.
    for batch in 0..4 {
        let first = next;
        for _ in 0..1024 {
            let path = format!("d{next}");
            let offer = Message::Offer(Offer {
                kind: EntryKind::Directory,
                size: None,
                hash: None,
                mtime: Mtime::default(),
                mode: 0o755,
                path: path.as_bytes(),
            });
            session.write_all(&frame(&offer)).unwrap();
            next += 1;
        }
        session.write_all(&frame(&Message::BatchEnd)).unwrap();
        for index in first..next {
            let answer = read_message(&mut session);
            if answer.contains("Refused") && refused.is_none() {
                refused = Some((index, answer));
            }
        }
        let (_, inodes) = disk.free();
        assert!(
            inodes >= 2 * RESERVE_INODES,
            "after batch {batch}: {inodes} inodes free"
        );
        disk.assert_keeps(reserve, &format!("batch {batch}"));
    }
    let (index, reason) = refused.expect("some directory was refused");
    assert!(
        reason.contains("no inodes left on the server for more directories"),
        "directory {index}: {reason}"
    );
    let made = std::fs::read_dir(disk.inbox()).unwrap().count() - 1;
    assert_eq!(made, index, "directories made before the first refusal");
    session.write_all(&frame(&Message::Bye)).unwrap();
    session.shutdown(Shutdown::Write).unwrap();
    assert_serves_a_legitimate_send(&server, &disk);
    let (_, inodes) = disk.free();
    assert!(inodes >= RESERVE_INODES, "{inodes} inodes free");
    disk.assert_keeps(reserve, "the legitimate send");
}

/// Offers a 6 MiB file from `source`, sends half of it and vanishes; waits
/// until the server has applied `--max-partial` to what it left.
fn abandon_half_a_file(server: &Running, source: Ipv4Addr, name: &str, seed: u64) {
    let mut session = raw_session(source, &server.addr);
    let answer = offer_file(&mut session, name, 6 * MIB);
    assert!(answer.contains("Send { offset: 0 }"), "{name}: {answer}");
    send_data(&mut session, &random_bytes(3 * MIB as usize, seed));
    drop(session);
    server.wait_for_log(&["partial data held", &format!("sender=\"{source}\"")]);
}

#[test]
fn abandoned_partial_data_is_capped_and_gives_way_to_a_legitimate_file() {
    let disk = SmallDisk::mount("size=32m");
    let reserve = 4 * MIB;
    let server = serve(&disk, &["--reserve", "4M", "--max-partial", "8M"]);
    let (one, two, three) = (
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::new(127, 0, 0, 3),
        Ipv4Addr::new(127, 0, 0, 4),
    );
    let held = |disk: &SmallDisk, step: &str, expected: u64| {
        assert_eq!(disk.held_partial_bytes(), expected * MIB, "after {step}");
        disk.assert_keeps(reserve, step);
    };

    abandon_half_a_file(&server, one, "a.bin", 1);
    held(&disk, "a.bin", 3);
    // One sender keeps at most half of --max-partial: its oldest goes.
    abandon_half_a_file(&server, one, "b.bin", 2);
    server.wait_for_log(&["deleted held partial data", "one sender may keep"]);
    held(&disk, "b.bin", 3);
    abandon_half_a_file(&server, two, "c.bin", 3);
    held(&disk, "c.bin", 6);
    // All senders keep at most --max-partial: the oldest, b.bin's, goes.
    abandon_half_a_file(&server, three, "d.bin", 4);
    server.wait_for_log(&["deleted held partial data", "over --max-partial"]);
    held(&disk, "d.bin", 6);

    // It fits only where abandoned data was: the oldest gives way.
    let (free, _) = disk.free();
    let size = 24 * MIB;
    assert!(size + reserve > free && size + reserve <= free + 3 * MIB);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("legitimate.bin");
    let content = random_bytes(size as usize, 5);
    std::fs::write(&path, &content).unwrap();
    let output = haul(&["send", "--to", &server.addr, path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    server.wait_for_log(&["deleted held partial data", "needed for a new file"]);
    assert_eq!(
        std::fs::read(disk.inbox().join("legitimate.bin")).unwrap(),
        content
    );
    held(&disk, "the legitimate file", 3);
    assert_serves_a_legitimate_send(&server, &disk);
    disk.assert_keeps(reserve, "the legitimate send");
}

#[test]
fn a_file_that_cannot_fit_anyway_costs_no_sender_its_partial_data() {
    let disk = SmallDisk::mount("size=32m");
    let reserve = 4 * MIB;
    let server = serve(&disk, &["--reserve", "4M"]);
    let (victim, hostile) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    abandon_half_a_file(&server, victim, "a.bin", 1);
    assert_eq!(disk.held_partial_bytes(), 3 * MIB);

    // One size no disk holds, one that even all held data would not make
    // room for: both are refused, and the held data stays.
    let (free, _) = disk.free();
    for size in [1 << 62, free - reserve + 4 * MIB] {
        let mut session = raw_session(hostile, &server.addr);
        let answer = offer_file(&mut session, "huge.bin", size);
        assert!(
            answer.contains("Refused") && answer.contains("no space left on the server"),
            "{size}: {answer}"
        );
        assert_eq!(disk.held_partial_bytes(), 3 * MIB, "after offering {size}");
        let logged = server.log_through(&["huge.bin", "no space left on the server"]);
        assert!(
            !logged
                .iter()
                .any(|line| line.contains("deleted held partial data")),
            "{logged:#?}"
        );
    }

    // Its sender continues where its data ends.
    let mut session = raw_session(victim, &server.addr);
    let answer = offer_file(&mut session, "a.bin", 6 * MIB);
    assert!(
        answer.contains(&format!("Send {{ offset: {} }}", 3 * MIB)),
        "{answer}"
    );
    drop(session);
    assert_serves_a_legitimate_send(&server, &disk);
}

#[test]
fn a_sender_that_offers_the_whole_disk_and_trickles_keeps_no_one_else_out() {
    let disk = SmallDisk::mount("size=96m");
    let reserve = 16 * MIB;
    let server = serve(&disk, &["--reserve", "16M"]);
    let (free, _) = disk.free();
    let room = free - reserve;

    // A haul sender offers nearly all the room, and trickles.
    let mut hog = raw_session(Ipv4Addr::new(127, 0, 0, 2), &server.addr);
    let answer = offer_file(&mut hog, "hog.bin", room - MIB);
    assert!(answer.contains("Send { offset: 0 }"), "{answer}");
    send_data(&mut hog, &[1; 4096]);
    // A seed sender does the same with what it leaves.
    let seed_size = room / 2 - 2 * MIB;
    let seed_content = random_bytes(seed_size as usize, 7);
    let mut seed_hog = connect_from([127, 0, 0, 3], &server.addr);
    seed_hog
        .write_all(&util::seed_header(seed_size, b"seed-hog.bin"))
        .unwrap();
    let mut reply = [0u8; 8];
    std::io::Read::read_exact(&mut seed_hog, &mut reply).unwrap();
    assert_eq!(
        &reply, b"go ahead",
        "the seed file fits beside the haul one"
    );
    seed_hog.write_all(&seed_content[..4096]).unwrap();
    disk.assert_keeps(reserve, "both offers");

    // Neither keeps another sender's file out.
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("legitimate.bin");
    let content = random_bytes(10 * MIB as usize, 8);
    std::fs::write(&path, &content).unwrap();
    let output = haul(&["send", "--to", &server.addr, path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        std::fs::read(disk.inbox().join("legitimate.bin")).unwrap(),
        content
    );
    disk.assert_keeps(reserve, "the legitimate send");

    // What the haul file was not granted at once is not there for it now:
    // it fails cleanly as it grows, and its data goes.
    for chunk in random_bytes((room - MIB) as usize - 4096, 9).chunks(MIB as usize) {
        if hog.write_all(&data_frame(chunk)).is_err() {
            break;
        }
    }
    server.wait_for_log(&[
        "name=\"hog.bin\"",
        "result=\"failed\"",
        "no space left on the server",
    ]);
    // Logged once the session is over, and its grants given back.
    server.wait_for_log(&["haul session failed", "no space left on the server"]);
    disk.assert_keeps(reserve, "the haul file's growth");
    drop(hog);
    // The seed file's was, and it is stored whole.
    seed_hog.write_all(&seed_content[4096..]).unwrap();
    seed_hog.shutdown(Shutdown::Write).unwrap();
    util::read_until_closed(&mut seed_hog);
    server.wait_for_log(&["name=\"seed-hog.bin\"", "result=\"stored\""]);
    assert_eq!(
        blake3::hash(&std::fs::read(disk.inbox().join("seed-hog.bin")).unwrap()),
        blake3::hash(&seed_content)
    );
    assert!(!disk.inbox().join("hog.bin").exists());
    assert_eq!(
        disk.held_partial_bytes(),
        0,
        "the haul file's data was left"
    );
    disk.assert_keeps(reserve, "the seed file");
    assert_serves_a_legitimate_send(&server, &disk);
}

/// The helpers above must see what the server sees.
#[test]
fn a_connection_from_another_loopback_address_comes_from_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let _client = connect_from([127, 0, 0, 2], &addr);
    let (_, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip().to_string(), "127.0.0.2");
}
