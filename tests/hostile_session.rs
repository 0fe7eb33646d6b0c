//! A session belongs to the sender that opened it: nobody on the path can
//! change what the two sides agreed, nobody else can continue or destroy a
//! sender's partial upload, and a sender whose connection died silently
//! takes its upload back at once.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use util::proxy::{Fault, Proxy};
use util::{HaulServer, haul_command, json, random_bytes, stderr_of};

const SECRET: &str = "4f6d2c0a9be14e7f8a3d5c21b7e09f64d2a1c3e5f7b9d0e2a4c6e8f0a2b4c6d8";

/// Where the capability bits' lowest byte is: in the client's stream after
/// the magic (8), the Hello's header (5), version (2) and the first seven
/// bytes of the u64; in the server's stream after the Welcome's header
/// and version.
const HELLO_CAPS_LOW_BYTE: u64 = 8 + 5 + 2 + 7;
const WELCOME_CAPS_LOW_BYTE: u64 = 5 + 2 + 7;

/// Bits as `docs/PROTOCOL.md` numbers them.
const CAP_ZSTD: u8 = 1;
const UNKNOWN_CAP: u8 = 0x80;

/// A proxy on 127.0.0.1 that XORs chosen bytes of each direction of every
/// connection with a mask: the exact change an on-path attacker would make.
struct EditingProxy {
    addr: String,
    stop: Arc<AtomicBool>,
}

/// Byte offsets in one direction's stream, and the mask each is XORed with.
type Edits = Vec<(u64, u8)>;

impl EditingProxy {
    fn start(upstream: &str, to_server: Edits, to_client: Edits) -> EditingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let stopped = Arc::clone(&stop);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let (Ok(client), Ok(server)) = (client, TcpStream::connect(&upstream)) else {
                    continue;
                };
                let (client_in, server_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (up, down) = (to_server.clone(), to_client.clone());
                std::thread::spawn(move || copy_edited(client_in, server_out, &up));
                std::thread::spawn(move || copy_edited(server, client, &down));
            }
        });
        EditingProxy { addr, stop }
    }
}

impl Drop for EditingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag and ends.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn copy_edited(mut from: TcpStream, mut to: TcpStream, edits: &[(u64, u8)]) {
    let mut offset = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        for &(at, mask) in edits {
            if let Some(byte) = at
                .checked_sub(offset)
                .and_then(|index| buffer[..read].get_mut(index as usize))
            {
                *byte ^= mask;
            }
        }
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
        offset += read as u64;
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A server with the shared secret, and the folder holding its token file.
fn secret_server() -> (HaulServer, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let token = keys.path().join("token");
    std::fs::write(&token, format!("{SECRET}\n")).unwrap();
    let server = HaulServer::start(&["--token-file", token.to_str().unwrap()]);
    (server, keys)
}

/// `haul send` of `path` to `to`, with `HAUL_TOKEN` set to `secret` (or
/// unset), and `extra` arguments.
fn send(to: &str, path: &Path, secret: Option<&str>, extra: &[&str]) -> Output {
    let mut command = haul_command();
    command
        .args(["send", "--to", to])
        .args(extra)
        .arg(path)
        .stdin(std::process::Stdio::null());
    match secret {
        Some(secret) => command.env("HAUL_TOKEN", secret),
        None => command.env_remove("HAUL_TOKEN"),
    };
    command.output().unwrap()
}

/// A compressible file, so that `--compress` has a reason to be on.
fn compressible_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("report.txt");
    std::fs::write(&path, b"quarterly figures, again and again. ".repeat(4096)).unwrap();
    path
}

/// An authentication failure as `haul send` reports it: status 4, and a
/// line saying the handshake failed.
fn assert_authentication_failed(output: &Output) {
    let stderr = stderr_of(output);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("authentication failed"), "{stderr}");
}

#[test]
fn a_proxy_that_turns_compression_off_under_encryption_fails_the_session() {
    let (server, _keys) = secret_server();
    let source = tempfile::tempdir().unwrap();
    let path = compressible_file(source.path());
    // Unchanged, the same send goes through: the failure below is the edit.
    let clean = EditingProxy::start(server.addr(), vec![], vec![]);
    let output = send(&clean.addr, &path, Some(SECRET), &["--compress"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    std::fs::remove_file(server.inbox.join("report.txt")).unwrap();

    let proxy = EditingProxy::start(server.addr(), vec![(HELLO_CAPS_LOW_BYTE, CAP_ZSTD)], vec![]);
    let output = send(&proxy.addr, &path, Some(SECRET), &["--compress"]);
    assert_authentication_failed(&output);
    server
        .running
        .wait_for_log(&["haul session refused", "changed on the way"]);
    assert!(server.stored_names().is_empty());
    assert_eq!(server.partial_count(), 0);
}

#[test]
fn a_proxy_that_adds_an_unknown_capability_under_encryption_fails_the_session() {
    let (server, _keys) = secret_server();
    let source = tempfile::tempdir().unwrap();
    let path = compressible_file(source.path());
    let proxy = EditingProxy::start(
        server.addr(),
        vec![(HELLO_CAPS_LOW_BYTE, UNKNOWN_CAP)],
        vec![],
    );
    let output = send(&proxy.addr, &path, Some(SECRET), &["--compress"]);
    assert_authentication_failed(&output);
    server
        .running
        .wait_for_log(&["haul session refused", "changed on the way"]);
    assert!(server.stored_names().is_empty());
    assert_eq!(server.partial_count(), 0);
}

#[test]
fn a_client_refuses_a_welcome_granting_what_it_did_not_ask_for() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = compressible_file(source.path());
    let proxy = EditingProxy::start(
        server.addr(),
        vec![],
        vec![(WELCOME_CAPS_LOW_BYTE, CAP_ZSTD)],
    );
    let output = send(&proxy.addr, &path, None, &[]);
    let stderr = stderr_of(&output);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("granted capabilities this client did not ask for (bits 0x1)"),
        "{stderr}"
    );
    assert!(server.stored_names().is_empty());
}

/// The resumable partial files in the inbox's hidden area, with their
/// contents.
fn resumable_partials(inbox: &Path) -> Vec<(String, Vec<u8>)> {
    let mut partials: Vec<(String, Vec<u8>)> = std::fs::read_dir(inbox.join(".haul"))
        .unwrap()
        .map(|entry| entry.unwrap())
        .map(|entry| entry.file_name().into_string().unwrap())
        .filter(|name| name.starts_with("resume-"))
        .map(|name| {
            let content = std::fs::read(inbox.join(".haul").join(&name)).unwrap();
            (name, content)
        })
        .collect();
    partials.sort();
    partials
}

#[test]
fn another_sender_of_the_same_path_size_and_time_neither_continues_nor_destroys_a_partial_upload() {
    let server = HaulServer::start(&[]);
    let size = 16 * 1024 * 1024;
    let (a_files, b_files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a_path = a_files.path().join("dataset.bin");
    let b_path = b_files.path().join("dataset.bin");
    let a_content = random_bytes(size, 11);
    std::fs::write(&a_path, &a_content).unwrap();
    std::fs::write(&b_path, random_bytes(size, 12)).unwrap();
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    for path in [&a_path, &b_path] {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
    // Sender B keeps its identity in a state directory of its own.
    let b_state = tempfile::tempdir().unwrap();
    let send_as_b = |to: &str| {
        let mut command = haul_command();
        command
            .env("XDG_STATE_HOME", b_state.path())
            .args(["send", "--json", "--to", to])
            .arg(&b_path);
        command.output().unwrap()
    };

    let cutting = Proxy::start(server.addr(), Fault::CutAfter(8 * 1024 * 1024));
    let cut = send(&cutting.addr, &a_path, None, &["--json"]);
    assert_ne!(cut.status.code(), Some(0), "{}", stderr_of(&cut));
    server.running.wait_for_log(&["haul session failed"]);
    let held_by_a = resumable_partials(&server.inbox);
    let [(a_partial, a_held)] = held_by_a.as_slice() else {
        panic!("one partial upload expected, found {held_by_a:?}");
    };
    assert!(!a_held.is_empty() && a_content.starts_with(a_held));

    let cutting_b = Proxy::start(server.addr(), Fault::CutAfter(2 * 1024 * 1024));
    let b = send_as_b(&cutting_b.addr);
    assert_ne!(b.status.code(), Some(0), "{}", stderr_of(&b));
    assert_eq!(
        json::started_offsets(&b.stdout),
        [0],
        "B must not continue A's upload"
    );
    server.running.wait_for_log(&["haul session failed"]);
    let after_b = resumable_partials(&server.inbox);
    assert_eq!(after_b.len(), 2, "B's upload has partial data of its own");
    assert!(
        after_b.contains(&(a_partial.clone(), a_held.clone())),
        "A's partial data changed"
    );

    let counting = Proxy::start(server.addr(), Fault::None);
    let resumed = send(&counting.addr, &a_path, None, &["--json"]);
    assert!(resumed.status.success(), "{}", stderr_of(&resumed));
    assert_eq!(
        json::started_offsets(&resumed.stdout),
        [a_held.len() as u64]
    );
    assert!(
        counting.forwarded() < (size - a_held.len()) as u64 + 64 * 1024,
        "{} bytes crossed to resume after {}",
        counting.forwarded(),
        a_held.len()
    );
    assert_eq!(
        std::fs::read(server.inbox.join("dataset.bin")).unwrap(),
        a_content
    );
}

#[test]
fn a_sender_that_cannot_keep_its_identity_warns_and_still_sends() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = compressible_file(source.path());
    // A state directory under a plain file can never be made.
    let blocker = source.path().join("not-a-directory");
    std::fs::write(&blocker, b"").unwrap();
    let output = haul_command()
        .env("XDG_STATE_HOME", blocker.join("state"))
        .args(["send", "--to", server.addr()])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        stderr
            .matches("an interrupted send will not resume")
            .count(),
        1,
        "{stderr}"
    );
    assert!(server.inbox.join("report.txt").exists());
}

#[test]
fn a_send_run_again_after_a_silently_dead_connection_takes_over_and_sends_only_the_rest() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("footage.bin");
    let size = 64 * 1024 * 1024;
    let content = random_bytes(size, 21);
    std::fs::write(&path, &content).unwrap();

    // The path goes dead part-way: no FIN, no reset, nothing more forwarded.
    let stall_at = 24 * 1024 * 1024;
    let stalling = Proxy::start(server.addr(), Fault::StallAfter(stall_at));
    let mut first = haul_command()
        .args(["send", "--json", "--to", &stalling.addr])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    stalling.wait_forwarded(stall_at);
    // The user gives up on the hung send; the server still sees a live,
    // silent connection.
    first.kill().unwrap();
    first.wait().unwrap();

    let counting = Proxy::start(server.addr(), Fault::None);
    let again = send(&counting.addr, &path, None, &["--json"]);
    assert!(again.status.success(), "{}", stderr_of(&again));
    let offsets = json::started_offsets(&again.stdout);
    let [offset] = offsets.as_slice() else {
        panic!("one started event expected, got {offsets:?}");
    };
    let offset = *offset;
    assert!(
        offset > 0 && offset <= stall_at,
        "resumed at {offset} after {stall_at} bytes had crossed"
    );
    let missing = size as u64 - offset;
    assert!(
        counting.forwarded() < missing + 64 * 1024,
        "{} bytes crossed the second time for the {missing} missing",
        counting.forwarded()
    );
    server
        .running
        .wait_for_log(&["took over partial data from a stalled session"]);
    server
        .running
        .wait_for_log(&["haul session failed", "took over its file"]);
    let stored = std::fs::read(server.inbox.join("footage.bin")).unwrap();
    assert!(
        blake3::hash(&stored) == blake3::hash(&content),
        "the stored file differs"
    );
    assert_eq!(server.partial_count(), 0, "nothing was received privately");
}

/// Versions 1 and 2 had other Hellos (1 no sender) and other Refused and
/// Failed frames (no code): each is told why, not that its frames are bad.
#[test]
fn an_older_client_is_told_its_version_is_too_old() {
    use haul::protocol::haul::MAGIC;
    let server = HaulServer::start(&[]);
    let hello_v1 = [&[0x01, 0, 0, 0, 10][..], &[0, 1], &[0; 8]].concat();
    let hello_v2 = [&[0x01, 0, 0, 0, 26][..], &[0, 2], &[0; 8], &[7; 16]].concat();
    for (version, hello) in [(1, hello_v1), (2, hello_v2)] {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.write_all(&[&MAGIC[..], &hello].concat()).unwrap();
        assert_eq!(
            util::wire::read_message(&mut stream),
            format!(
                "Error {{ code: Version, message: \"the client speaks protocol version {version}; this server speaks 3\" }}"
            )
        );
    }
}

/// A client that sends what only a receiver sends (a Receipt) is told,
/// by name, that it came from the wrong side, and nothing is stored.
#[test]
fn a_client_sending_a_receivers_message_is_told_it_is_from_the_wrong_side() {
    use haul::protocol::haul::Message;
    let server = HaulServer::start(&[]);
    let mut stream = util::wire::raw_haul_session(server.addr());
    let receipt = Message::Receipt {
        size: 1,
        hash: [0; 32],
        stored_as: "x",
    };
    stream.write_all(&util::wire::frame(&receipt)).unwrap();
    assert_eq!(
        util::wire::read_message(&mut stream),
        "Error { code: Other, message: \"bad frame: Receipt is not a message a sender sends\" }"
    );
    assert!(server.stored_names().is_empty());
}

#[test]
fn a_hello_of_an_unknown_older_version_is_refused_naming_it_and_a_newer_one_is_answered() {
    use haul::protocol::haul::{MAGIC, Message, VERSION};
    let server = HaulServer::start(&[]);
    for version in [0, VERSION - 1] {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        let hello = util::wire::frame(&Message::Hello {
            version,
            capabilities: 0,
            sender: [0; 16],
        });
        stream.write_all(&[&MAGIC[..], &hello].concat()).unwrap();
        assert_eq!(
            util::wire::read_message(&mut stream),
            format!(
                "Error {{ code: Version, message: \"the client speaks protocol version {version}; \
                 this server speaks {VERSION}\" }}"
            )
        );
        // And then the server closes.
        assert!(util::read_until_closed(&mut stream).is_empty());
        server.running.wait_for_log(&[
            "haul session failed",
            &format!("the client speaks protocol version {version};"),
        ]);
    }
    // A newer client is answered with the server's own version, for it
    // to decide whether it can speak that.
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    let hello = util::wire::frame(&Message::Hello {
        version: VERSION + 1,
        capabilities: 0,
        sender: [0; 16],
    });
    stream.write_all(&[&MAGIC[..], &hello].concat()).unwrap();
    assert_eq!(
        util::wire::read_message(&mut stream),
        format!("Welcome {{ version: {VERSION}, capabilities: 0 }}")
    );
    assert!(server.stored_names().is_empty());
}
