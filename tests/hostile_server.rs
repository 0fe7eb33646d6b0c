//! A hostile client against a real `haul serve`: each test makes one attack
//! by hand-made frames and asserts the bound that stops it, then that the
//! server still serves an honest sender.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use haul::protocol::haul::{self as wire, EntryKind, MAGIC, Message, Mtime, Offer};
use util::wire::{connect_from, frame, hello, raw_haul_session, read_message, try_connect_from};
use util::{HaulServer, haul, own_umask, random_bytes, stderr_of};

fn offer(kind: EntryKind, path: &[u8], size: Option<u64>, mode: u32, secs: i64) -> Vec<u8> {
    frame(&Message::Offer(Offer {
        kind,
        size,
        hash: None,
        mtime: Mtime { secs, nanos: 0 },
        mode,
        path,
    }))
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Sends one honest file with the real client and checks it arrived.
fn honest_send_succeeds(server: &HaulServer, name: &str) {
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join(name);
    let content = random_bytes(100_000, 3);
    std::fs::write(&path, &content).unwrap();
    let output = haul(&["send", "--to", server.addr(), path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(std::fs::read(server.inbox.join(name)).unwrap(), content);
}

/// A path of 2,001 components in 4 KiB: cheap to send and to create, and
/// costly to remember as parsed components.
fn deep_path(leaf: usize) -> Vec<u8> {
    let mut path = vec!["a"; 2000].join("/");
    path.push_str(&format!("/{leaf}"));
    path.into_bytes()
}

#[test]
fn a_flood_of_deep_directory_offers_keeps_the_server_small() {
    let server = HaulServer::start(&[]);
    let pid = server.running.pid();
    let before = util::proc_status(pid, "VmRSS:");
    let mut stream = raw_haul_session(server.addr());
    // 20 MiB of offers, each a directory the session creates: more than
    // a session may remember.
    let batches = 5;
    for batch in 0..batches {
        let mut frames = Vec::new();
        for index in 0..1024 {
            let path = deep_path(batch * 1024 + index);
            frames.extend(offer(EntryKind::Directory, &path, None, 0o755, 0));
        }
        frames.extend(frame(&Message::BatchEnd));
        stream.write_all(&frames).unwrap();
        for _ in 0..1024 {
            assert_eq!(read_message(&mut stream), "Answer(Created)");
        }
    }
    let after = util::proc_status(pid, "VmRSS:");
    let peak = util::proc_status(pid, "VmHWM:");
    eprintln!("server RSS {before} kB before, {after} kB after, peak {peak} kB");
    assert!(
        peak < 96 * 1024,
        "the server grew from {before} kB to {after} kB (peak {peak} kB) for 20 MiB of offers"
    );
    server
        .running
        .wait_for_log(&["created more directories than are tracked"]);
    stream.write_all(&frame(&Message::Bye)).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    util::read_until_closed(&mut stream);
    honest_send_succeeds(&server, "after-the-flood.bin");
}

#[test]
fn batches_of_deep_file_offers_keep_the_server_small() {
    let server = HaulServer::start(&[]);
    let pid = server.running.pid();
    let before = util::proc_status(pid, "VmRSS:");
    // Four sessions at once, each holding a whole batch of 1,024 file
    // offers of 2,001 components: 16 MiB of paths in all, each offer
    // answered and held until its batch ends.
    let sessions: Vec<TcpStream> = (0..4)
        .map(|session| {
            let mut stream = raw_haul_session(server.addr());
            let mut frames = Vec::new();
            for index in 0..1024 {
                let path = deep_path(session * 1024 + index);
                frames.extend(offer(EntryKind::File, &path, Some(1), 0o644, 0));
            }
            frames.extend(frame(&Message::BatchEnd));
            stream.write_all(&frames).unwrap();
            for _ in 0..1024 {
                assert_eq!(read_message(&mut stream), "Answer(Send { offset: 0 })");
            }
            stream
        })
        .collect();
    let after = util::proc_status(pid, "VmRSS:");
    let peak = util::proc_status(pid, "VmHWM:");
    eprintln!("server RSS {before} kB before, {after} kB after, peak {peak} kB");
    assert!(
        peak < 96 * 1024,
        "the server grew from {before} kB to {after} kB (peak {peak} kB) for 16 MiB of offers"
    );
    drop(sessions);
    honest_send_succeeds(&server, "after-the-offers.bin");
}

#[test]
fn an_existing_directory_keeps_its_mode_and_time_and_new_ones_get_the_umask() {
    let server = HaulServer::start(&[]);
    let operators = server.inbox.join("operators");
    std::fs::create_dir(&operators).unwrap();
    std::fs::set_permissions(&operators, std::fs::Permissions::from_mode(0o750)).unwrap();
    let their_time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    std::fs::File::open(&operators)
        .unwrap()
        .set_modified(their_time)
        .unwrap();

    let mut stream = raw_haul_session(server.addr());
    let mut frames = Vec::new();
    frames.extend(offer(EntryKind::Directory, b"operators", None, 0o777, 0));
    frames.extend(offer(EntryKind::Directory, b"fresh", None, 0o777, 86_400));
    frames.extend(frame(&Message::BatchEnd));
    stream.write_all(&frames).unwrap();
    assert_eq!(read_message(&mut stream), "Answer(Created)");
    assert_eq!(read_message(&mut stream), "Answer(Created)");
    stream.write_all(&frame(&Message::Bye)).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    // The server applies directory times and modes at Bye, then closes.
    util::read_until_closed(&mut stream);

    let metadata = std::fs::metadata(&operators).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o750);
    assert_eq!(metadata.modified().unwrap(), their_time);
    let fresh = std::fs::metadata(server.inbox.join("fresh")).unwrap();
    assert_eq!(
        fresh.permissions().mode() & 0o7777,
        0o777 & !own_umask(),
        "a directory the sender made gets its mode, masked by the umask"
    );
    assert_eq!(
        fresh.modified().unwrap(),
        SystemTime::UNIX_EPOCH + Duration::from_secs(86_400)
    );
}

#[test]
fn a_sent_file_mode_is_masked_by_the_server_umask() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("open.sh");
    std::fs::write(&path, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let output = haul(&["send", "--to", server.addr(), path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let stored = std::fs::metadata(server.inbox.join("open.sh")).unwrap();
    assert_eq!(stored.permissions().mode() & 0o7777, 0o777 & !own_umask());
}

/// The attack: one batch whose files each sit in a folder of their own,
/// held open before its end. Folder handles are released group by group,
/// so the server's descriptors stay bounded while the batch waits.
#[test]
fn a_batch_spread_over_a_thousand_folders_holds_few_descriptors() {
    let server = HaulServer::start(&[]);
    let pid = server.running.pid();
    let folders = 1000;
    let mut stream = raw_haul_session(server.addr());
    let mut frames = Vec::new();
    for index in 0..folders {
        let dir = format!("f{index}");
        frames.extend(offer(EntryKind::Directory, dir.as_bytes(), None, 0o755, 0));
    }
    frames.extend(frame(&Message::BatchEnd));
    for index in 0..folders {
        let file = format!("f{index}/x");
        frames.extend(offer(EntryKind::File, file.as_bytes(), Some(1), 0o644, 0));
    }
    frames.extend(frame(&Message::BatchEnd));
    stream.write_all(&frames).unwrap();
    for _ in 0..folders {
        assert_eq!(read_message(&mut stream), "Answer(Created)");
    }
    for _ in 0..folders {
        assert!(read_message(&mut stream).starts_with("Answer(Send"));
    }
    // Every file but the last, then the batch is held open.
    let mut data = Vec::new();
    for _ in 0..folders - 1 {
        wire::encode_data_header(wire::Kind::Data, 1, &mut data);
        data.push(b'x');
        data.extend(frame(&Message::FileEnd {
            hash: *blake3::hash(b"x").as_bytes(),
        }));
    }
    stream.write_all(&data).unwrap();
    // Groups are named as they complete: wait until all whole ones are.
    let deadline = Instant::now() + Duration::from_secs(120);
    let placed = |inbox: &Path| {
        (0..folders)
            .filter(|index| inbox.join(format!("f{index}/x")).exists())
            .count()
    };
    while placed(&server.inbox) < folders - 32 {
        assert!(Instant::now() < deadline, "the groups were never placed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let held = open_descriptors(pid);
    assert!(
        held < 200,
        "the server holds {held} descriptors for one waiting batch"
    );
    honest_send_succeeds(&server, "meanwhile.bin");
    drop(stream);
}

#[test]
fn a_dribbled_hello_is_cut_at_one_deadline_for_the_whole_handshake() {
    let server = HaulServer::start(&["--header-timeout", "2s"]);
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.write_all(&MAGIC).unwrap();
    // Each stage alone (the frame header, then its payload) would come in
    // under the timeout; the whole takes twice as long.
    let mut closed_after = None;
    for (sent, byte) in hello().into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(300));
        if stream.write_all(&[byte]).is_err() {
            closed_after = Some(sent);
            break;
        }
    }
    server
        .running
        .wait_for_log(&["the handshake was not complete within 2s"]);
    // Whatever was written, the server answered no Welcome.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert!(
        !reply.starts_with(&[0x02]),
        "a Welcome came after the deadline (closed after {closed_after:?} bytes)"
    );
}

#[test]
fn one_address_cannot_take_more_than_its_share_of_connections() {
    let server = HaulServer::start(&["--max-connections-per-ip", "3"]);
    let held: Vec<TcpStream> = (0..3)
        .map(|_| connect_from([127, 0, 0, 2], server.addr()))
        .collect();
    // The fourth is closed or reset at once; the reset can come before the
    // connect is seen to complete.
    match try_connect_from([127, 0, 0, 2], server.addr()) {
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}"),
        Ok(mut refused) => {
            refused
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            let mut byte = [0u8; 1];
            match refused.read(&mut byte) {
                Ok(0) => {}
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!("a fourth connection from one address was served: {other:?}"),
            }
        }
    }
    server.running.wait_for_log(&[
        "refusing further connections from this address",
        "127.0.0.2",
    ]);
    // Another address is served meanwhile.
    honest_send_succeeds(&server, "other-address.bin");
    // A slot given back is a slot to use again: a seed file over it lands.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut go_ahead = [0u8; 8];
        let served = try_connect_from([127, 0, 0, 2], server.addr()).and_then(|mut again| {
            again.write_all(&util::seed_header(2, b"back.txt"))?;
            again.read_exact(&mut go_ahead)?;
            Ok(again)
        });
        if let Ok(mut again) = served {
            assert_eq!(&go_ahead, b"go ahead");
            again.write_all(b"ok").unwrap();
            again.shutdown(std::net::Shutdown::Write).unwrap();
            util::read_until_closed(&mut again);
            break;
        }
        // The old connections' handlers may not have ended yet.
        assert!(
            Instant::now() < deadline,
            "the address never got a slot back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.wait_stored("back.txt");
}
