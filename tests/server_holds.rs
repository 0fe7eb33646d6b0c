//! The server under hostile input, load and faults: it refuses what it must,
//! writes nothing outside its inbox, never leaves a partial file under a
//! final name, and keeps serving everyone else.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use haul::protocol::haul::{EntryKind, MAGIC, Message, Mtime, Offer};
use util::disk::SmallDisk;
use util::proxy::{Fault, Proxy};
use util::wire::{data_frame, frame, raw_haul_session, read_message};
use util::{
    HaulServer, Running, haul, json, random_bytes, read_until_closed, seed_client, seed_header,
    stderr_of,
};

fn file_offer(path: &[u8], size: u64) -> Message<'_> {
    Message::Offer(Offer {
        kind: EntryKind::File,
        size: Some(size),
        hash: None,
        mtime: Mtime::default(),
        mode: 0o644,
        path,
    })
}

/// Everything under `root` except the inbox's own hidden area.
fn files_under(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|entry| entry.unwrap().path().to_owned())
        .filter(|path| path.is_file() && !path.components().any(|part| part.as_os_str() == ".haul"))
        .collect()
}

#[test]
fn traversal_names_never_leave_the_inbox_in_either_protocol() {
    let server = HaulServer::start(&[]);
    let sandbox = server.inbox.parent().unwrap().to_owned();

    // Seed: only the last component counts, so these land inside, by that name.
    for (raw, stored) in [
        (&b"../../escaped-1"[..], "escaped-1"),
        (b"/etc/escaped-2", "escaped-2"),
        (b"a/../../escaped-3", "escaped-3"),
        (b"..\\..\\escaped-4", "escaped-4"),
    ] {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.write_all(&seed_header(2, raw)).unwrap();
        let mut reply = [0u8; 8];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"go ahead");
        stream.write_all(b"ok").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        read_until_closed(&mut stream);
        assert_eq!(std::fs::read(server.inbox.join(stored)).unwrap(), b"ok");
    }

    // haul: a path is judged whole, and any bad component refuses it.
    let mut session = raw_haul_session(server.addr());
    let long_component = vec![b'n'; 256];
    let bad_paths: Vec<&[u8]> = vec![
        b"../../x",
        b"/abs/x",
        b"a/../../b",
        b"a\\b",
        b"a\0b",
        b"\xff\xfe",
        &long_component,
        b".haul/resume-x",
        b"a//b",
    ];
    for path in &bad_paths {
        session.write_all(&frame(&file_offer(path, 1))).unwrap();
    }
    session.write_all(&frame(&Message::BatchEnd)).unwrap();
    for path in &bad_paths {
        let answer = read_message(&mut session);
        assert!(
            answer.contains("Refused") && answer.contains("refused path"),
            "{path:?}: {answer}"
        );
    }
    session.write_all(&frame(&Message::Bye)).unwrap();
    session.shutdown(Shutdown::Write).unwrap();
    read_until_closed(&mut session);

    let mut stored = files_under(&sandbox);
    stored.sort();
    let expected: Vec<PathBuf> = (1..=4)
        .map(|n| server.inbox.join(format!("escaped-{n}")))
        .collect();
    assert_eq!(stored, expected);
}

#[test]
fn an_absurd_size_is_refused_before_any_byte_in_either_protocol() {
    let server = HaulServer::start(&[]);
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .write_all(&seed_header(1 << 63, b"huge.bin"))
        .unwrap();
    assert!(read_until_closed(&mut stream).is_empty());
    server
        .running
        .wait_for_log(&["huge.bin", "no space left on the server"]);

    let mut session = raw_haul_session(server.addr());
    session
        .write_all(&frame(&file_offer(b"huge.bin", 1 << 63)))
        .unwrap();
    session.write_all(&frame(&Message::BatchEnd)).unwrap();
    let answer = read_message(&mut session);
    assert!(
        answer.contains("Refused") && answer.contains("no space left"),
        "{answer}"
    );
    assert!(server.stored_names().is_empty());
    assert_eq!(server.partial_count(), 0);
}

/// A --reserve larger than the disk's free space refuses every file: the
/// server says so at start, and each refusal names the reserve.
#[test]
fn a_reserve_beyond_the_free_space_is_said_at_start_and_in_each_refusal() {
    let server = HaulServer::start(&["--reserve", "100T"]);
    server
        .running
        .wait_for_log(&["WARN", "no more free space than --reserve keeps"]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("small.txt");
    std::fs::write(&path, b"nine byte").unwrap();
    let output = haul(&["send", "--to", server.addr(), path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    assert!(
        stderr.starts_with(
            "haul: small.txt: refused by the server: no space left on the server: the file needs 9 bytes and 0 are free beyond the 109951162777600 kept free"
        ),
        "{stderr}"
    );
}

/// Sessions cut before a file's first byte leave nothing to resume: no
/// empty file in the hidden area for every later session to list.
#[test]
fn a_session_cut_before_any_byte_leaves_no_partial_file() {
    let server = HaulServer::start(&[]);
    for index in 0..3 {
        let name = format!("empty-{index}.bin");
        let mut session = raw_haul_session(server.addr());
        session
            .write_all(&frame(&file_offer(name.as_bytes(), 1 << 20)))
            .unwrap();
        session.write_all(&frame(&Message::BatchEnd)).unwrap();
        let answer = read_message(&mut session);
        assert!(answer.contains("Send { offset: 0 }"), "{answer}");
        drop(session);
        server
            .running
            .wait_for_log(&[name.as_str(), "no data received"]);
        assert_eq!(server.partial_count(), 0, "after {name}");
    }
    // One byte is worth keeping.
    let mut session = raw_haul_session(server.addr());
    session
        .write_all(&frame(&file_offer(b"one.bin", 1 << 20)))
        .unwrap();
    session.write_all(&frame(&Message::BatchEnd)).unwrap();
    read_message(&mut session);
    session.write_all(&data_frame(b"x")).unwrap();
    drop(session);
    server
        .running
        .wait_for_log(&["one.bin", "data=kept 1 bytes"]);
    assert_eq!(server.hidden_files().len(), 1);
}

#[test]
fn a_megabyte_of_random_bytes_gets_a_closed_connection_and_no_file() {
    let server = HaulServer::start(&[]);
    let garbage = random_bytes(1024 * 1024, 42);

    let mut as_seed = TcpStream::connect(server.addr()).unwrap();
    let _ = as_seed.write_all(&garbage);
    let reply = read_until_closed(&mut as_seed);
    assert!(reply.is_empty(), "{reply:?}");
    server.running.wait_for_log(&["result=\"failed\""]);

    let mut as_haul = TcpStream::connect(server.addr()).unwrap();
    as_haul.write_all(&MAGIC).unwrap();
    let _ = as_haul.write_all(&garbage);
    let reply = read_until_closed(&mut as_haul);
    assert_eq!(
        reply.first(),
        Some(&0x31),
        "expected an Error frame, got {reply:?}"
    );
    server
        .running
        .wait_for_log(&["haul session failed", "bad frame"]);

    // Frames out of order: file data before any batch.
    let mut session = raw_haul_session(server.addr());
    session.write_all(&data_frame(b"abc")).unwrap();
    let reply = read_until_closed(&mut session);
    assert_eq!(reply.first(), Some(&0x31));
    server
        .running
        .wait_for_log(&["haul session failed", "file data outside a file"]);

    // A truncated frame: the client vanishes mid-header.
    let mut session = raw_haul_session(server.addr());
    session.write_all(&[0x10, 0, 0]).unwrap();
    drop(session);
    server
        .running
        .wait_for_log(&["haul session failed", "without saying goodbye"]);

    assert!(server.stored_names().is_empty());
    assert_eq!(server.partial_count(), 0);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("after.txt");
    std::fs::write(&path, b"still serving").unwrap();
    let output = haul(&["send", "--to", server.addr(), path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
}

#[test]
fn three_hundred_idle_connections_do_not_stop_real_transfers() {
    // All from one address, so the limit per address is lifted; that one
    // has its own test.
    let server = HaulServer::start(&["--max-connections-per-ip", "0"]);
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("real.bin");
    let content = random_bytes(2 * 1024 * 1024, 8);
    std::fs::write(&path, &content).unwrap();
    let output = haul(&["send", "--to", server.addr(), path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let port = server.addr().rsplit(':').next().unwrap().to_owned();
    std::fs::write(source.path().join("seed.txt"), b"seed too").unwrap();
    let output = seed_client("seed.txt", &port, source.path());
    assert!(output.status.success(), "{}", stderr_of(&output));
    server.wait_stored("seed.txt");
    assert_eq!(
        std::fs::read(server.inbox.join("real.bin")).unwrap(),
        content
    );
    drop(idle);
}

#[test]
fn silent_clients_are_dropped_and_free_their_slot() {
    let server = HaulServer::start(&["--max-connections", "2", "--header-timeout", "1s"]);
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("patient.txt");
    std::fs::write(&path, b"waited for a slot").unwrap();
    let output = haul(&["send", "--to", server.addr(), path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    server.running.wait_for_log(&["no first 8 bytes in time"]);
    assert_eq!(
        std::fs::read(server.inbox.join("patient.txt")).unwrap(),
        b"waited for a slot"
    );
    drop(silent);
}

#[test]
fn a_full_disk_refuses_or_fails_cleanly_and_the_server_keeps_serving() {
    let disk = SmallDisk::mount("size=16m");
    let inbox = disk.path().join("inbox");
    let mut command = util::haul_command();
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--reserve",
            "0",
            "--dir",
        ])
        .arg(&inbox);
    let server = Running::start(command);
    let source = tempfile::tempdir().unwrap();

    // Known to be too big: refused before any byte is written.
    let big = source.path().join("big.bin");
    std::fs::write(&big, random_bytes(32 * 1024 * 1024, 9)).unwrap();
    let output = haul(&["send", "--to", &server.addr, big.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("no space left on the server"),
        "{}",
        stderr_of(&output)
    );

    // A stream of unknown size fills the disk on the way.
    let mut sender = util::haul_command()
        .args(["send", "--to", &server.addr, "-", "--name", "stream.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = sender.stdin.take().unwrap();
    let _ = stdin.write_all(&random_bytes(32 * 1024 * 1024, 10));
    drop(stdin);
    let output = sender.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("no space left on the server"),
        "{}",
        stderr_of(&output)
    );
    server.wait_for_log(&["haul session failed", "no space left on the server"]);
    let hidden = inbox.join(".haul");
    assert_eq!(
        std::fs::read_dir(&hidden).unwrap().count(),
        0,
        "partial data was left"
    );
    assert!(!inbox.join("stream.bin").exists());

    // The seed protocol is refused up front, without `go ahead`.
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .write_all(&seed_header(32 * 1024 * 1024, b"seed.bin"))
        .unwrap();
    assert!(read_until_closed(&mut stream).is_empty());

    // A batch that fits file by file but not as a whole: the files that
    // would not fit are refused up front, not failed half-written.
    let trio = source.path().join("trio");
    std::fs::create_dir(&trio).unwrap();
    for (index, name) in ["a.bin", "b.bin", "c.bin"].into_iter().enumerate() {
        std::fs::write(
            trio.join(name),
            random_bytes(6 * 1024 * 1024, 20 + index as u64),
        )
        .unwrap();
    }
    let output = haul(&["send", "--to", &server.addr, trio.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    // Refused before sending: the reason gives the size the batch lacked.
    let refusals = stderr_of(&output)
        .matches("no space left on the server: the file needs 6291456 bytes")
        .count();
    assert_eq!(refusals, 1, "{}", stderr_of(&output));
    let stored = std::fs::read_dir(inbox.join("trio")).unwrap().count();
    assert_eq!(stored, 2, "{}", stderr_of(&output));
    assert_eq!(
        std::fs::read_dir(&hidden).unwrap().count(),
        0,
        "partial data was left"
    );
    std::fs::remove_dir_all(inbox.join("trio")).unwrap();

    let small = source.path().join("small.txt");
    std::fs::write(&small, b"fits").unwrap();
    let output = haul(&["send", "--to", &server.addr, small.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(std::fs::read(inbox.join("small.txt")).unwrap(), b"fits");
}

#[test]
fn a_server_killed_during_a_seed_transfer_leaves_no_partial_file_and_restarts_cleanly() {
    let mut server = HaulServer::start(&[]);
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .write_all(&seed_header(1_000_000, b"interrupted.bin"))
        .unwrap();
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).unwrap();
    stream.write_all(&random_bytes(500_000, 11)).unwrap();
    let killed = server.running.pid();
    server.kill_and_restart(&[]);
    drop(stream);
    assert!(
        server.stored_names().is_empty(),
        "{:?}",
        server.stored_names()
    );
    // What the killed server received is at most its own private
    // temporary file in .haul: never under a final name, and never taken
    // for resumable data. It stays until --partial-max-age or
    // --max-partial removes it.
    let litter = server.hidden_files();
    assert!(
        litter
            .iter()
            .all(|(name, _)| name.starts_with(&format!("tmp-{killed}-"))),
        "{litter:?}"
    );

    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("interrupted.bin");
    let content = random_bytes(1_000_000, 11);
    std::fs::write(&path, &content).unwrap();
    let output = haul(&[
        "send",
        "--protocol",
        "seed",
        "--to",
        server.addr(),
        path.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        std::fs::read(server.inbox.join("interrupted.bin")).unwrap(),
        content
    );
    assert_eq!(server.stored_names(), ["interrupted.bin"]);
    assert_eq!(
        server.hidden_files(),
        litter,
        "the re-send left nothing of its own in .haul"
    );
}

#[test]
fn ten_senders_of_one_name_at_once_all_land_intact() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    // Even seeds: `random_bytes` sets the lowest bit, so seeds 2n and 2n+1
    // give the same bytes, and a haul sender would rightly find its file
    // already there.
    let contents: Vec<Vec<u8>> = (0..10)
        .map(|i| random_bytes(100_000, 200 + 2 * i))
        .collect();
    let senders: Vec<_> = contents
        .iter()
        .enumerate()
        .map(|(i, content)| {
            let dir = source.path().join(format!("sender-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("same.txt");
            std::fs::write(&path, content).unwrap();
            let protocol = if i % 2 == 0 { "haul" } else { "seed" };
            util::haul_command()
                // Ten senders, so ten resume identities: files of one sender
                // with the same name, size and time are one upload.
                .env("XDG_STATE_HOME", dir.join("state"))
                .args([
                    "send",
                    "--protocol",
                    protocol,
                    "--to",
                    server.addr(),
                    path.to_str().unwrap(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for sender in senders {
        let output = sender.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr_of(&output));
    }
    let mut stored: Vec<Vec<u8>> = server
        .stored_names()
        .iter()
        .map(|name| std::fs::read(server.inbox.join(name)).unwrap())
        .collect();
    assert_eq!(stored.len(), 10, "{:?}", server.stored_names());
    let mut expected = contents.clone();
    stored.sort();
    expected.sort();
    assert_eq!(stored, expected);
}

#[test]
fn forty_clients_with_five_files_each_at_once_all_arrive() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let senders: Vec<_> = (0..40u64)
        .map(|client| {
            let paths: Vec<String> = (0..5u64)
                .map(|file| {
                    let path = source.path().join(format!("c{client}-f{file}.bin"));
                    std::fs::write(
                        &path,
                        random_bytes(50_000 + (client * 5 + file) as usize, client * 5 + file),
                    )
                    .unwrap();
                    path.to_str().unwrap().to_owned()
                })
                .collect();
            let protocol = if client % 4 == 0 { "seed" } else { "haul" };
            util::haul_command()
                .args(["send", "--protocol", protocol, "--to", server.addr()])
                .args(&paths)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for sender in senders {
        let output = sender.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr_of(&output));
    }
    assert_eq!(server.stored_names().len(), 200);
    for client in 0..40u64 {
        for file in 0..5u64 {
            let name = format!("c{client}-f{file}.bin");
            let expected = random_bytes(50_000 + (client * 5 + file) as usize, client * 5 + file);
            assert_eq!(
                std::fs::read(server.inbox.join(&name)).unwrap(),
                expected,
                "{name}"
            );
        }
    }
}

/// Starts `haul serve` on a fresh inbox with its open-file limits lowered to
/// `soft` and, if given, `hard`. Its clients all come from one address, so
/// the limit per address is lifted.
fn server_with_open_file_limit(inbox: &Path, soft: u64, hard: Option<u64>) -> Running {
    use std::os::unix::process::CommandExt;
    let mut command = util::haul_command();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(inbox)
        .args(["--max-connections-per-ip", "0"]);
    // SAFETY: between fork and exec this only calls getrlimit and setrlimit,
    // which are async-signal-safe, on a local struct.
    unsafe {
        command.pre_exec(move || {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_cur = soft;
            if let Some(hard) = hard {
                limit.rlim_max = hard;
            }
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Running::start(command)
}

/// A folder of `count` small files with distinct contents; returns its path.
fn folder_of_small_files(root: &Path, count: usize) -> PathBuf {
    let folder = root.join("many");
    for index in 0..count {
        let sub = folder.join(format!("d{}", index / 50));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{index}.txt")), format!("file {index}")).unwrap();
    }
    folder
}

fn assert_small_files_stored(inbox: &Path, count: usize) {
    for index in 0..count {
        let stored = inbox.join(format!("many/d{}/f{index}.txt", index / 50));
        assert_eq!(
            std::fs::read_to_string(&stored).unwrap(),
            format!("file {index}")
        );
    }
}

#[test]
fn a_low_soft_open_file_limit_is_raised_so_that_connections_fit() {
    // 1,024 is a common soft limit, below the default --max-connections;
    // with 64, a hundred idle connections would leave no descriptor to
    // accept a real sender with.
    let temp = tempfile::tempdir().unwrap();
    let inbox = temp.path().join("inbox");
    let mut server = server_with_open_file_limit(&inbox, 64, None);
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    let folder = folder_of_small_files(temp.path(), 300);
    let output = haul(&["send", "--to", &server.addr, folder.to_str().unwrap()]);
    drop(idle);
    server.kill();
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("300 stored, 0 already there, 0 failed"),
        "{}",
        stderr_of(&output)
    );
    assert_small_files_stored(&inbox, 300);
}

#[test]
fn a_batch_needs_no_open_file_per_file_even_under_a_low_hard_limit() {
    // Here the server cannot raise its limit: a batch of 256 files must fit
    // in 64 descriptors, with two clients at once.
    let temp = tempfile::tempdir().unwrap();
    let inbox = temp.path().join("inbox");
    let mut server = server_with_open_file_limit(&inbox, 64, Some(64));
    let folder = folder_of_small_files(temp.path(), 300);
    let senders: Vec<_> = ["first", "second"]
        .into_iter()
        .map(|name| {
            util::haul_command()
                .args(["send", "--to", &server.addr, "--name", name])
                .arg(&folder)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = senders
        .into_iter()
        .map(|sender| sender.wait_with_output().unwrap())
        .collect();
    server.kill();
    for (output, name) in outputs.iter().zip(["first", "second"]) {
        assert!(output.status.success(), "{}", stderr_of(output));
        assert!(
            stderr_of(output).contains("300 stored, 0 already there, 0 failed"),
            "{}",
            stderr_of(output)
        );
        for index in 0..300 {
            let stored = inbox.join(format!("{name}/d{}/f{index}.txt", index / 50));
            assert_eq!(
                std::fs::read_to_string(&stored).unwrap(),
                format!("file {index}")
            );
        }
    }
}

fn signal(running: &Running, signal: libc::c_int) {
    // SAFETY: kill only sends a signal to the child process this test started.
    assert_eq!(
        unsafe { libc::kill(running.pid() as libc::pid_t, signal) },
        0
    );
}

#[test]
fn sigterm_lets_a_transfer_in_flight_finish_and_exits_zero() {
    let mut server = HaulServer::start(&[]);
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    let content = random_bytes(200_000, 12);
    stream
        .write_all(&seed_header(content.len() as u64, b"in-flight.bin"))
        .unwrap();
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).unwrap();
    stream.write_all(&content[..100_000]).unwrap();

    signal(&server.running, libc::SIGTERM);
    server.running.wait_for_log(&["shutting down"]);
    assert!(
        TcpStream::connect(server.addr()).is_err(),
        "still accepting after SIGTERM"
    );
    stream.write_all(&content[100_000..]).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    read_until_closed(&mut stream);

    let status = server.running.child_mut().wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        std::fs::read(server.inbox.join("in-flight.bin")).unwrap(),
        content
    );
}

#[test]
fn sigint_cuts_a_stalled_transfer_after_the_grace_period_and_it_resumes_later() {
    let mut server = HaulServer::start(&["--grace", "1s"]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("stalled.bin");
    let size = 16 * 1024 * 1024;
    let content = random_bytes(size, 13);
    std::fs::write(&path, &content).unwrap();
    let stall_at = 6 * 1024 * 1024;
    let stalling = Proxy::start(server.addr(), Fault::StallAfter(stall_at));
    let mut sender = util::haul_command()
        .args(["send", "--to", &stalling.addr, path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    stalling.wait_forwarded(stall_at);

    signal(&server.running, libc::SIGINT);
    server.running.wait_for_log(&["grace period were cut"]);
    let status = server.running.child_mut().wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let _ = sender.kill();
    let _ = sender.wait();
    assert!(server.stored_names().is_empty());
    let hidden = server.hidden_files();
    let [(partial, held)] = hidden.as_slice() else {
        panic!("one partial file expected in .haul, found {hidden:?}");
    };
    assert!(partial.starts_with("resume-"), "{hidden:?}");
    assert!(
        *held > 0 && *held <= stall_at,
        "{held} bytes kept of the {stall_at} that crossed"
    );
    let held = *held;

    server.kill_and_restart(&[]);
    let counting = Proxy::start(server.addr(), Fault::None);
    let output = haul(&[
        "send",
        "--json",
        "--to",
        &counting.addr,
        path.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        json::started_offsets(&output.stdout),
        [held],
        "resumed where the data ends"
    );
    let lines = json::lines(&output.stdout);
    assert_eq!(json::summary(&lines)["bytes_sent"], size as u64 - held);
    assert!(
        counting.forwarded() < size as u64 - held + 64 * 1024,
        "{} bytes crossed for the {} missing",
        counting.forwarded(),
        size as u64 - held
    );
    assert_eq!(
        std::fs::read(server.inbox.join("stalled.bin")).unwrap(),
        content
    );
    assert!(
        server.hidden_files().is_empty(),
        "{:?}",
        server.hidden_files()
    );
}

/// `haul send ARGS…` to `to`, with `content` on its standard input.
fn send_stdin(to: &str, args: &[&str], content: &[u8]) -> std::process::Output {
    let mut sender = util::haul_command()
        .args(["send", "--to", to])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = sender.stdin.take().unwrap();
    let content = content.to_vec();
    // The send may end before it has read everything (a refused stream):
    // a write that then fails is no failure of the test.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&content);
    });
    let output = sender.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

#[test]
fn a_file_over_the_size_limit_is_refused_and_nothing_of_it_is_stored() {
    let limit = 1024 * 1024;
    let server = HaulServer::start(&["--max-file-size", "1M"]);
    let source = tempfile::tempdir().unwrap();
    let over = source.path().join("over.bin");
    std::fs::write(&over, random_bytes(limit + 1, 31)).unwrap();
    let at = source.path().join("at.bin");
    let at_content = random_bytes(limit, 32);
    std::fs::write(&at, &at_content).unwrap();

    let output = haul(&[
        "send",
        "--to",
        server.addr(),
        over.to_str().unwrap(),
        at.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(
            "haul: over.bin: refused by the server: the file is 1048577 bytes; \
             this server accepts at most 1048576\n"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 stored, 0 already there, 1 failed"),
        "{stderr}"
    );
    let line = server
        .running
        .wait_for_log(&["name=\"over.bin\"", "result=\"failed\""]);
    assert!(line.contains("data=no data received"), "{line}");
    assert_eq!(server.stored_names(), ["at.bin"]);
    assert_eq!(
        std::fs::read(server.inbox.join("at.bin")).unwrap(),
        at_content
    );
    assert!(
        server.hidden_files().is_empty(),
        "{:?}",
        server.hidden_files()
    );
}

#[test]
fn a_stream_growing_past_the_size_limit_fails_and_its_data_is_removed() {
    let limit = 1024 * 1024;
    let server = HaulServer::start(&["--max-file-size", "1M"]);
    let over = random_bytes(3 * limit, 33);
    for (name, extra) in [("plain.bin", None), ("packed.bin", Some("--compress"))] {
        let mut args = vec!["-", "--name", name];
        args.extend(extra);
        let output = send_stdin(server.addr(), &args, &over);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{name}: {}",
            stderr_of(&output)
        );
        assert_eq!(
            stderr_of(&output),
            "haul: the server ended the session: the stream grew past 1048576 bytes, \
             the most this server accepts\n",
            "{name}"
        );
        let line = server
            .running
            .wait_for_log(&[&format!("name=\"{name}\""), "result=\"failed\""]);
        assert!(line.contains("data=partial data deleted"), "{line}");
        // The session's last line: its partial file is gone by then.
        server
            .running
            .wait_for_log(&["haul session failed", "the stream grew past"]);
        assert!(
            server.stored_names().is_empty(),
            "{:?}",
            server.stored_names()
        );
        assert!(
            server.hidden_files().is_empty(),
            "{name}: {:?}",
            server.hidden_files()
        );
    }

    // A stream of exactly the limit is within it.
    let at = random_bytes(limit, 34);
    let output = send_stdin(server.addr(), &["-", "--name", "at.bin"], &at);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(std::fs::read(server.inbox.join("at.bin")).unwrap(), at);
    assert!(
        server.hidden_files().is_empty(),
        "{:?}",
        server.hidden_files()
    );
}
