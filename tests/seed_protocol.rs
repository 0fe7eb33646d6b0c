//! The classroom protocol, proven against independent Python peers written
//! from the assignment text, in both directions, plus misbehaving peers.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;

use util::{
    HaulServer, SeedPeerServer, haul, random_bytes, read_until_closed, seed_client, seed_header,
    stderr_of,
};

const EDGE_SIZES: [usize; 6] = [0, 1, 1023, 1024, 1025, 5 * 1024 * 1024 + 3];

#[test]
fn python_client_files_of_every_edge_size_arrive_identical() {
    let server = HaulServer::start(&[]);
    let port = server.addr().rsplit(':').next().unwrap().to_owned();
    let source = tempfile::tempdir().unwrap();
    for (index, size) in EDGE_SIZES.into_iter().enumerate() {
        let name = format!("file-{size}.bin");
        let content = random_bytes(size, index as u64 + 1);
        std::fs::write(source.path().join(&name), &content).unwrap();
        let output = seed_client(&name, &port, source.path());
        assert!(output.status.success(), "{}", stderr_of(&output));
        let log = server.wait_stored(&name);
        for field in [
            "peer=127.0.0.1:",
            &format!("size={size} "),
            &format!("stored_as=\"{name}\""),
            "secs=",
            "rate=",
        ] {
            assert!(log.contains(field), "{field} missing from {log}");
        }
        assert_eq!(
            std::fs::read(server.inbox.join(&name)).unwrap(),
            content,
            "{name}"
        );
    }
    assert_eq!(server.partial_count(), 0);
}

#[test]
fn python_client_names_with_spaces_and_non_ascii_are_kept() {
    let server = HaulServer::start(&[]);
    let port = server.addr().rsplit(':').next().unwrap().to_owned();
    let source = tempfile::tempdir().unwrap();
    let name = "quarterly report – Müller 日本.txt";
    std::fs::write(source.path().join(name), b"contents").unwrap();
    let output = seed_client(name, &port, source.path());
    assert!(output.status.success(), "{}", stderr_of(&output));
    server.wait_stored(name);
    assert_eq!(std::fs::read(server.inbox.join(name)).unwrap(), b"contents");
}

#[test]
fn a_name_given_with_directories_is_stored_by_its_last_component() {
    let server = HaulServer::start(&[]);
    let port = server.addr().rsplit(':').next().unwrap().to_owned();
    let source = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(source.path().join("data")).unwrap();
    std::fs::create_dir_all(source.path().join("work")).unwrap();
    std::fs::write(source.path().join("data/report.pdf"), b"pdf bytes").unwrap();
    let output = seed_client("../data/report.pdf", &port, &source.path().join("work"));
    assert!(output.status.success(), "{}", stderr_of(&output));
    server.wait_stored("report.pdf");
    assert_eq!(server.stored_names(), ["report.pdf"]);
    assert_eq!(
        std::fs::read(server.inbox.join("report.pdf")).unwrap(),
        b"pdf bytes"
    );
}

#[test]
fn twenty_python_clients_at_once_all_arrive_intact() {
    let server = HaulServer::start(&[]);
    let port = server.addr().rsplit(':').next().unwrap().to_owned();
    let source = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("client-{i}.bin"),
                random_bytes(200_000 + i * 977, i as u64 + 100),
            )
        })
        .collect();
    for (name, content) in &files {
        std::fs::write(source.path().join(name), content).unwrap();
    }
    let clients: Vec<_> = files
        .iter()
        .map(|(name, _)| {
            std::process::Command::new("python3")
                .arg(util::peer_script("seed_client.py"))
                .args([name.as_str(), "127.0.0.1", &port])
                .current_dir(source.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for client in clients {
        let output = client.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr_of(&output));
    }
    for (name, content) in &files {
        server.wait_stored(name);
        assert_eq!(
            &std::fs::read(server.inbox.join(name)).unwrap(),
            content,
            "{name}"
        );
    }
}

#[test]
fn haul_sends_every_edge_size_to_the_python_server() {
    let peer = SeedPeerServer::start();
    let source = tempfile::tempdir().unwrap();
    for (index, size) in EDGE_SIZES.into_iter().enumerate() {
        let name = format!("file-{size}.bin");
        let path = source.path().join(&name);
        let content = random_bytes(size, index as u64 + 50);
        std::fs::write(&path, &content).unwrap();
        let output = haul(&[
            "send",
            "--protocol",
            "seed",
            "--to",
            &peer.running.addr,
            path.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", stderr_of(&output));
        let stored = peer.dir.path().join(format!("{name}.temp"));
        assert_eq!(std::fs::read(stored).unwrap(), content, "{name}");
    }
}

#[test]
fn haul_sends_a_non_ascii_name_and_a_chosen_name_to_the_python_server() {
    let peer = SeedPeerServer::start();
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("überweisung 2026 – 月.txt");
    std::fs::write(&path, b"payload").unwrap();
    let output = haul(&[
        "send",
        "--protocol",
        "seed",
        "--to",
        &peer.running.addr,
        path.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let stored = peer.dir.path().join("überweisung 2026 – 月.txt.temp");
    assert_eq!(std::fs::read(stored).unwrap(), b"payload");

    let output = haul(&[
        "send",
        "--protocol",
        "seed",
        "--to",
        &peer.running.addr,
        "--name",
        "chosen name.txt",
        path.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        std::fs::read(peer.dir.path().join("chosen name.txt.temp")).unwrap(),
        b"payload"
    );
}

#[test]
fn haul_sends_several_files_each_on_its_own_connection() {
    let peer = SeedPeerServer::start();
    let source = tempfile::tempdir().unwrap();
    let mut args = vec![
        "send".to_owned(),
        "--protocol".to_owned(),
        "seed".to_owned(),
        "--to".to_owned(),
        peer.running.addr.clone(),
    ];
    for i in 0..3 {
        let path = source.path().join(format!("part-{i}"));
        std::fs::write(&path, random_bytes(3000 * i + 1, i as u64)).unwrap();
        args.push(path.to_str().unwrap().to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = haul(&args);
    assert!(output.status.success(), "{}", stderr_of(&output));
    for i in 0..3 {
        let stored = std::fs::read(peer.dir.path().join(format!("part-{i}.temp"))).unwrap();
        assert_eq!(stored, random_bytes(3000 * i + 1, i as u64));
    }
}

#[test]
fn haul_client_and_server_speak_seed_to_each_other() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("both-sides.bin");
    let content = random_bytes(3 * 1024 * 1024 + 11, 7);
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
    // haul's seed client waits for the server's close, which comes after the
    // file is durable under its name: no log line is needed to know that.
    assert_eq!(
        std::fs::read(server.inbox.join("both-sides.bin")).unwrap(),
        content
    );
}

#[test]
fn a_header_split_across_writes_is_reassembled() {
    // The automatic settle waits a few round trips: on loopback, less than
    // the pause below. A client that pauses on purpose needs a fixed one.
    let server = HaulServer::start(&["--seed-settle", "300ms"]);
    for (index, split_at) in [3usize, 8, 12].into_iter().enumerate() {
        let name = format!("split-{index}.txt");
        let content = format!("content {index}").into_bytes();
        let header = seed_header(content.len() as u64, name.as_bytes());
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.write_all(&header[..split_at]).unwrap();
        // A pause makes the split real on the wire; correctness depends
        // only on it being shorter than the settle.
        std::thread::sleep(std::time::Duration::from_millis(30));
        stream.write_all(&header[split_at..]).unwrap();
        let mut reply = [0u8; 8];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"go ahead");
        stream.write_all(&content).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        read_until_closed(&mut stream);
        assert_eq!(std::fs::read(server.inbox.join(&name)).unwrap(), content);
    }
}

#[test]
fn a_client_that_quits_halfway_leaves_nothing_and_the_server_keeps_serving() {
    let server = HaulServer::start(&[]);
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.write_all(&seed_header(10_000, b"half.bin")).unwrap();
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"go ahead");
    stream.write_all(&random_bytes(5_000, 3)).unwrap();
    drop(stream);
    server
        .running
        .wait_for_log(&["name=\"half.bin\"", "result=\"failed\"", "5000 of 10000"]);
    assert!(
        server.stored_names().is_empty(),
        "{:?}",
        server.stored_names()
    );
    assert_eq!(server.partial_count(), 0);

    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("after.txt"), b"still serving").unwrap();
    let port = server.addr().rsplit(':').next().unwrap().to_owned();
    let output = seed_client("after.txt", &port, source.path());
    assert!(output.status.success(), "{}", stderr_of(&output));
    server.wait_stored("after.txt");
    assert_eq!(server.stored_names(), ["after.txt"]);
}

#[test]
fn unsafe_names_are_refused_without_go_ahead_and_nothing_is_written() {
    let server = HaulServer::start(&[]);
    let long_name = vec![b'n'; 256];
    let cases: [(&[u8], &str); 8] = [
        (b"..", "`.` or `..`"),
        (b"../..", "`.` or `..`"),
        (b"dir/", "empty"),
        (b"a\0b", "control character"),
        (b"\x1b[31mred", "control character"),
        (b"\xff\xfe.bin", "not UTF-8"),
        (&long_name, "256 bytes"),
        (b".haul", "reserved"),
    ];
    for (name, reason) in cases {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.write_all(&seed_header(4, name)).unwrap();
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
fn an_existing_file_is_kept_and_the_new_one_gets_a_free_name() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("report.pdf");
    for version in ["first", "second", "third"] {
        std::fs::write(&path, version).unwrap();
        let output = haul(&[
            "send",
            "--protocol",
            "seed",
            "--to",
            server.addr(),
            path.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", stderr_of(&output));
    }
    assert_eq!(
        server.stored_names(),
        ["report (1).pdf", "report (2).pdf", "report.pdf"]
    );
    assert_eq!(
        std::fs::read(server.inbox.join("report.pdf")).unwrap(),
        b"first"
    );
    assert_eq!(
        std::fs::read(server.inbox.join("report (2).pdf")).unwrap(),
        b"third"
    );
}

#[test]
fn overwrite_replaces_an_existing_file() {
    let server = HaulServer::start(&["--overwrite"]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("report.pdf");
    for version in ["first", "second"] {
        std::fs::write(&path, version).unwrap();
        let output = haul(&[
            "send",
            "--protocol",
            "seed",
            "--to",
            server.addr(),
            path.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", stderr_of(&output));
    }
    assert_eq!(server.stored_names(), ["report.pdf"]);
    assert_eq!(
        std::fs::read(server.inbox.join("report.pdf")).unwrap(),
        b"second"
    );
}

/// A one-connection server that reads the header and answers `reply`.
fn rogue_server(reply: &'static [u8]) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut header = [0u8; 1024];
        let _ = stream.read(&mut header).unwrap();
        stream.write_all(reply).unwrap();
    });
    (addr, handle)
}

fn small_file(dir: &Path) -> String {
    let path = dir.join("small.txt");
    std::fs::write(&path, b"hello").unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_server_that_does_not_say_go_ahead_fails_the_send_and_is_quoted() {
    let (addr, rogue) = rogue_server(b"no thanks");
    let source = tempfile::tempdir().unwrap();
    let output = haul(&[
        "send",
        "--protocol",
        "seed",
        "--to",
        &addr,
        &small_file(source.path()),
    ]);
    rogue.join().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    assert!(stderr.contains("\"no thanks\""), "{stderr}");
    assert!(stderr.contains("go ahead"), "{stderr}");
    // One line for the failure, then the closing line.
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(
        stderr.lines().last().unwrap().starts_with("haul: 0 stored"),
        "{stderr}"
    );
}

#[test]
fn a_server_that_hangs_up_halfway_fails_the_send() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let rogue = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buffer = vec![0u8; 64 * 1024];
        let _ = stream.read(&mut buffer[..1024]).unwrap();
        stream.write_all(b"go ahead").unwrap();
        stream.read_exact(&mut buffer).unwrap();
        // Dropping with unread data makes the kernel reset the connection.
    });
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("big.bin");
    std::fs::write(&path, random_bytes(16 * 1024 * 1024, 9)).unwrap();
    let output = haul(&[
        "send",
        "--protocol",
        "seed",
        "--to",
        &addr,
        path.to_str().unwrap(),
    ]);
    rogue.join().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    assert!(stderr.starts_with("haul: "), "{stderr}");
    assert!(
        stderr.contains("hung up") || stderr.contains("dropped the connection"),
        "{stderr}"
    );
}

#[test]
fn nobody_listening_names_the_address_and_suggests_haul_serve() {
    let unused = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap().to_string();
    drop(unused);
    let source = tempfile::tempdir().unwrap();
    let output = haul(&[
        "send",
        "--protocol",
        "seed",
        "--to",
        &addr,
        &small_file(source.path()),
    ]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&addr) && stderr.contains("haul serve"),
        "{stderr}"
    );
}

#[test]
fn a_missing_source_file_is_one_clear_line_and_the_others_still_go() {
    let peer = SeedPeerServer::start();
    let source = tempfile::tempdir().unwrap();
    let present = small_file(source.path());
    let missing = source.path().join("missing.txt");
    let output = haul(&[
        "send",
        "--protocol",
        "seed",
        "--to",
        &peer.running.addr,
        missing.to_str().unwrap(),
        &present,
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("missing.txt") && stderr.to_lowercase().contains("no such file"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(peer.dir.path().join("small.txt.temp")).unwrap(),
        b"hello"
    );
}
