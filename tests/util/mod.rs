//! Helpers for integration tests: real `haul` processes, real Python peers,
//! real sockets on 127.0.0.1 and real files in temporary directories.
#![allow(dead_code)] // Each test file uses a different part of this.

use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod disk;
pub mod json;
pub mod proxy;
pub mod wire;

/// The binary under test.
pub const HAUL: &str = env!("CARGO_BIN_EXE_haul");

/// The longest any test waits for a line from a child: a bound so a broken
/// build fails instead of hanging, never a synchronisation device.
pub const LINE_WAIT: Duration = Duration::from_secs(120);

pub fn peer_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

/// A child process that announces `listening on ADDR:PORT` as its first line
/// on stdout; killed when dropped.
pub struct Running {
    child: Child,
    pub addr: String,
    stdout: Lines,
    stderr: Lines,
}

fn forward_lines(source: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (lines_in, lines_out) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines() {
            let Ok(line) = line else { break };
            if lines_in.send(line).is_err() {
                break;
            }
        }
    });
    lines_out
}

/// Lines from one of a child's streams. A line matched by a wait is taken;
/// lines that did not match stay for later waits, so the order in which a
/// test waits need not be the order in which the child wrote.
struct Lines {
    incoming: Receiver<String>,
    unmatched: RefCell<Vec<String>>,
}

impl Lines {
    fn new(source: impl std::io::Read + Send + 'static) -> Lines {
        Lines {
            incoming: forward_lines(source),
            unmatched: RefCell::new(Vec::new()),
        }
    }

    fn wait_for(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let mut unmatched = self.unmatched.borrow_mut();
        if let Some(index) = unmatched.iter().position(|line| matches(line)) {
            return unmatched.remove(index);
        }
        let deadline = Instant::now() + LINE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.incoming.recv_timeout(left) {
                Ok(line) if matches(&line) => return line,
                Ok(line) => unmatched.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line {what} within {LINE_WAIT:?}; saw {unmatched:#?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("process ended before a line {what}; saw {unmatched:#?}")
                }
            }
        }
    }

    /// Every line not yet taken, in the order the child wrote them, up to
    /// and including the first that matches; later lines stay for later
    /// waits.
    fn take_through(&self, what: &str, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let mut unmatched = self.unmatched.borrow_mut();
        if let Some(index) = unmatched.iter().position(|line| matches(line)) {
            return unmatched.drain(..=index).collect();
        }
        let mut taken: Vec<String> = unmatched.drain(..).collect();
        let deadline = Instant::now() + LINE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.incoming.recv_timeout(left) {
                Ok(line) => {
                    let last = matches(&line);
                    taken.push(line);
                    if last {
                        return taken;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line {what} within {LINE_WAIT:?}; saw {taken:#?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("process ended before a line {what}; saw {taken:#?}")
                }
            }
        }
    }
}

impl Running {
    pub fn start(mut command: Command) -> Running {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start child process");
        let stdout = Lines::new(child.stdout.take().unwrap());
        let stderr = Lines::new(child.stderr.take().unwrap());
        let first = stdout.incoming.recv_timeout(LINE_WAIT).unwrap_or_else(|_| {
            let errors: Vec<String> = stderr.incoming.try_iter().collect();
            panic!("no `listening on` line; stderr: {errors:#?}")
        });
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line is {first:?}, not `listening on ADDR:PORT`"))
            .to_owned();
        Running {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line (haul's log) containing every one of `parts`.
    pub fn wait_for_log(&self, parts: &[&str]) -> String {
        self.stderr
            .wait_for(&format!("containing {parts:?}"), |line| {
                parts.iter().all(|part| line.contains(part))
            })
    }

    /// The log lines (stderr) not yet taken, in the order written, through
    /// the first containing every one of `parts`: for tests of the order.
    pub fn log_through(&self, parts: &[&str]) -> Vec<String> {
        self.stderr
            .take_through(&format!("containing {parts:?}"), |line| {
                parts.iter().all(|part| line.contains(part))
            })
    }

    /// Stops the process and returns its exit status.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `haul serve` on a free port with a fresh inbox.
pub struct HaulServer {
    pub running: Running,
    pub inbox: PathBuf,
    _temp: TempDir,
}

impl HaulServer {
    pub fn start(extra_args: &[&str]) -> HaulServer {
        let temp = TempDir::new().unwrap();
        let inbox = temp.path().join("inbox");
        HaulServer {
            running: Self::spawn(&inbox, extra_args),
            inbox,
            _temp: temp,
        }
    }

    fn spawn(inbox: &Path, extra_args: &[&str]) -> Running {
        let mut command = Command::new(HAUL);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(inbox)
            .args(extra_args)
            // Session-level lines (handshakes) give tests points to wait on.
            .env("RUST_LOG", "info,haul=debug");
        Running::start(command)
    }

    /// Kills the server (SIGKILL) and starts a new one on the same inbox.
    pub fn kill_and_restart(&mut self, extra_args: &[&str]) {
        self.running.kill();
        self.running = Self::spawn(&self.inbox, extra_args);
    }

    pub fn addr(&self) -> &str {
        &self.running.addr
    }

    /// Names of the files in the inbox, sorted, without haul's hidden area.
    pub fn stored_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.inbox)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != ".haul")
            .collect();
        names.sort();
        names
    }

    /// Number of partial files in haul's hidden area.
    pub fn partial_count(&self) -> usize {
        std::fs::read_dir(self.inbox.join(".haul")).map_or(0, |entries| entries.count())
    }

    /// The files in haul's hidden area, `DIR/.haul`, with their sizes,
    /// sorted by name; empty if there is no hidden area.
    pub fn hidden_files(&self) -> Vec<(String, u64)> {
        let Ok(entries) = std::fs::read_dir(self.inbox.join(".haul")) else {
            return Vec::new();
        };
        let mut files: Vec<(String, u64)> = entries
            .map(|entry| entry.unwrap())
            .map(|entry| {
                let name = entry.file_name().into_string().unwrap();
                (name, entry.metadata().unwrap().len())
            })
            .collect();
        files.sort();
        files
    }

    /// Waits for the log line of a stored file and returns it.
    pub fn wait_stored(&self, name: &str) -> String {
        self.running
            .wait_for_log(&[&format!("name=\"{name}\""), "result=\"stored\""])
    }
}

/// The Python classroom server, run in its own temporary working directory.
pub struct SeedPeerServer {
    pub running: Running,
    pub dir: TempDir,
}

impl SeedPeerServer {
    pub fn start() -> SeedPeerServer {
        let dir = TempDir::new().unwrap();
        let mut command = Command::new("python3");
        command
            .arg(peer_script("seed_server.py"))
            .args(["127.0.0.1", "0"])
            .current_dir(dir.path());
        SeedPeerServer {
            running: Running::start(command),
            dir,
        }
    }
}

thread_local! {
    /// The state directory (`XDG_STATE_HOME`) of the test running on this
    /// thread: its `haul` processes share a resume identity, and none
    /// writes into the real home.
    static STATE_HOME: TempDir = TempDir::new().unwrap();
}

/// This test's state directory, for `XDG_STATE_HOME`.
pub fn state_home() -> PathBuf {
    STATE_HOME.with(|dir| dir.path().to_owned())
}

/// `haul`, ready for arguments, with this test's own state directory.
pub fn haul_command() -> Command {
    let mut command = Command::new(HAUL);
    command.env("XDG_STATE_HOME", state_home());
    command
}

/// Runs `haul` to completion with the given arguments.
pub fn haul(args: &[&str]) -> Output {
    haul_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run haul")
}

/// Runs the Python classroom client: `seed_client.py <name> 127.0.0.1 <port>`.
pub fn seed_client(name: &str, port: &str, cwd: &Path) -> Output {
    Command::new("python3")
        .arg(peer_script("seed_client.py"))
        .args([name, "127.0.0.1", port])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run the Python seed client")
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A classroom header: the size, 8 bytes big-endian, then the name.
pub fn seed_header(size: u64, name: &[u8]) -> Vec<u8> {
    let mut header = size.to_be_bytes().to_vec();
    header.extend_from_slice(name);
    header
}

/// Reads everything until the server closes; a reset counts as a close.
pub fn read_until_closed(stream: &mut std::net::TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let _ = std::io::Read::read_to_end(stream, &mut received);
    received
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// One field of `/proc/PID/status`, in the unit the kernel gives (kB).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.trim().trim_end_matches("kB").trim().parse().unwrap()
}

/// What a command printed on stdout, as text.
pub fn stdout_of(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// A token file holding `secret`, readable by its owner only.
pub fn token_file(dir: &Path, name: &str, secret: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The umask this test process (and so every haul it starts) runs with:
/// modes arrive masked by it.
pub fn own_umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix("Umask:"))
        .unwrap();
    u32::from_str_radix(value.trim(), 8).unwrap()
}
