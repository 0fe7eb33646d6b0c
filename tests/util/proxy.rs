//! A TCP proxy on 127.0.0.1 that can damage the client-to-server stream
//! (flip a byte, cut the connection, or stall, after a given number of
//! bytes), or cut the server-to-client stream, for a client that receives.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Forward everything unchanged.
    None,
    /// Invert the byte at this offset of the client-to-server stream.
    FlipByteAt(u64),
    /// Close both connections once this many bytes have gone upstream.
    CutAfter(u64),
    /// Stop forwarding (but keep both connections open) after this many bytes.
    StallAfter(u64),
    /// Close both connections once this many bytes have gone downstream
    /// (server to client) on one connection: a cut `haul get`.
    CutDownstreamAfter(u64),
}

pub struct Proxy {
    pub addr: String,
    /// Client-to-server bytes forwarded, over all connections.
    forwarded: Arc<AtomicU64>,
    /// Server-to-client bytes forwarded, over all connections.
    returned: Arc<AtomicU64>,
    /// The fault each new connection gets; see [`Proxy::set_fault`].
    fault: Arc<Mutex<Fault>>,
    /// Every byte seen in each direction, for tests that inspect the wire.
    recording: Arc<Recording>,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct Recording {
    upstream: Mutex<Vec<u8>>,
    downstream: Mutex<Vec<u8>>,
}

impl Proxy {
    /// Proxies every connection to `upstream`, applying `fault` to each.
    pub fn start(upstream: &str, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let forwarded = Arc::new(AtomicU64::new(0));
        let returned = Arc::new(AtomicU64::new(0));
        let fault = Arc::new(Mutex::new(fault));
        let recording = Arc::new(Recording::default());
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        {
            let forwarded = Arc::clone(&forwarded);
            let returned = Arc::clone(&returned);
            let fault = Arc::clone(&fault);
            let recording = Arc::clone(&recording);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    // Read per connection, so that a test can heal the
                    // proxy between two runs of a client.
                    let fault = *fault.lock().unwrap();
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let (client_read, server_write) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let forwarded = Arc::clone(&forwarded);
                    let returned = Arc::clone(&returned);
                    let stop = Arc::clone(&stop);
                    let up = Arc::clone(&recording);
                    let down = Arc::clone(&recording);
                    std::thread::spawn(move || {
                        upstream_copy(
                            client_read,
                            server_write,
                            fault,
                            &forwarded,
                            &up.upstream,
                            &stop,
                        )
                    });
                    std::thread::spawn(move || {
                        downstream_copy(server, client, fault, &returned, &down.downstream)
                    });
                }
            });
        }
        Proxy {
            addr,
            forwarded,
            returned,
            fault,
            recording,
            stop,
        }
    }

    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }

    /// Server-to-client bytes forwarded so far, over all connections.
    pub fn returned(&self) -> u64 {
        self.returned.load(Ordering::SeqCst)
    }

    /// The fault for connections accepted from now on; connections already
    /// open keep theirs.
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Waits until at least `bytes` have gone upstream. A proxy that never
    /// forwards as many fails the test after [`super::LINE_WAIT`].
    pub fn wait_forwarded(&self, bytes: u64) {
        let deadline = std::time::Instant::now() + super::LINE_WAIT;
        while self.forwarded() < bytes {
            assert!(
                std::time::Instant::now() < deadline,
                "the proxy forwarded {} bytes, never {bytes}",
                self.forwarded()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// What the clients sent, as forwarded (after any fault).
    pub fn upstream_bytes(&self) -> Vec<u8> {
        self.recording.upstream.lock().unwrap().clone()
    }

    /// What the server answered.
    pub fn downstream_bytes(&self) -> Vec<u8> {
        self.recording.downstream.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag and ends.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn upstream_copy(
    mut client: TcpStream,
    mut server: TcpStream,
    fault: Fault,
    forwarded: &AtomicU64,
    record: &Mutex<Vec<u8>>,
    stop: &AtomicBool,
) {
    let mut offset: u64 = 0;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let limit = match fault {
            Fault::CutAfter(at) | Fault::StallAfter(at) => {
                usize::try_from(at.saturating_sub(offset))
                    .unwrap_or(usize::MAX)
                    .min(buffer.len())
            }
            _ => buffer.len(),
        };
        if limit == 0 {
            match fault {
                Fault::CutAfter(_) => {
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                }
                _ => {
                    // Stalled: hold both connections until the test ends.
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::park_timeout(std::time::Duration::from_millis(50));
                    }
                }
            }
            return;
        }
        let read = match client.read(&mut buffer[..limit]) {
            Ok(0) | Err(_) => {
                let _ = server.shutdown(Shutdown::Write);
                return;
            }
            Ok(read) => read,
        };
        if let Fault::FlipByteAt(at) = fault
            && (offset..offset + read as u64).contains(&at)
        {
            buffer[(at - offset) as usize] ^= 0xff;
        }
        record.lock().unwrap().extend_from_slice(&buffer[..read]);
        if server.write_all(&buffer[..read]).is_err() {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        offset += read as u64;
        forwarded.fetch_add(read as u64, Ordering::SeqCst);
    }
}

fn downstream_copy(
    mut server: TcpStream,
    mut client: TcpStream,
    fault: Fault,
    returned: &AtomicU64,
    record: &Mutex<Vec<u8>>,
) {
    let mut offset: u64 = 0;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let limit = match fault {
            Fault::CutDownstreamAfter(at) => usize::try_from(at.saturating_sub(offset))
                .unwrap_or(usize::MAX)
                .min(buffer.len()),
            _ => buffer.len(),
        };
        if limit == 0 {
            // The client sees its connection end mid-stream, the server its
            // writes fail; the upstream copy ends as its reads do.
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return;
        }
        match server.read(&mut buffer[..limit]) {
            Ok(0) | Err(_) => {
                let _ = client.shutdown(Shutdown::Write);
                return;
            }
            Ok(read) => {
                record.lock().unwrap().extend_from_slice(&buffer[..read]);
                if client.write_all(&buffer[..read]).is_err() {
                    return;
                }
                offset += read as u64;
                returned.fetch_add(read as u64, Ordering::SeqCst);
            }
        }
    }
}
