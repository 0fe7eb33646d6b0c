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

use util::{HaulServer, haul_command, stderr_of};

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

/// An authentication failure as `haul send` reports it: status 3, and a
/// line saying the handshake failed.
fn assert_authentication_failed(output: &Output) {
    let stderr = stderr_of(output);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
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
