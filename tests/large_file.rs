//! A file larger than 4 GiB crosses intact, and neither side's memory grows
//! with it.

mod util;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use util::{HaulServer, haul, random_bytes, stderr_of};

const SIZE: u64 = 4 * 1024 * 1024 * 1024 + 12_345;
const MARK_EVERY: u64 = 256 * 1024 * 1024;
const MAX_RSS_KIB: u64 = 64 * 1024;

/// A sparse file with distinct random marks every 256 MiB and at its end, so
/// that a misplaced, lost or repeated chunk changes the hash, yet the file
/// costs little to make.
fn make_marked_sparse_file(path: &Path) {
    let mut file = File::create(path).unwrap();
    file.set_len(SIZE).unwrap();
    let mut offset = 0;
    let mut seed = 1;
    while offset < SIZE {
        let mark = random_bytes(65_536.min((SIZE - offset) as usize), seed);
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.write_all(&mark).unwrap();
        offset += MARK_EVERY;
        seed += 1;
    }
    let tail = random_bytes(1000, seed);
    file.seek(SeekFrom::Start(SIZE - tail.len() as u64))
        .unwrap();
    file.write_all(&tail).unwrap();
}

fn hash_file(path: &Path) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    let mut file = File::open(path).unwrap();
    let mut buffer = vec![0u8; 1024 * 1024];
    loop {
        let read = file.read(&mut buffer).unwrap();
        if read == 0 {
            return hasher.finalize();
        }
        hasher.update(&buffer[..read]);
    }
}

fn peak_rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Peak RSS of the largest child this process has waited for.
fn peak_rss_kib_of_waited_children() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete rusage into the pointer it is given.
    let usage = unsafe {
        assert_eq!(
            libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()),
            0
        );
        usage.assume_init()
    };
    usage.ru_maxrss as u64
}

#[test]
fn a_file_over_4_gib_arrives_identical_with_flat_memory_on_both_sides() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("huge.bin");
    make_marked_sparse_file(&path);

    let output = haul(&["send", "--to", server.addr(), path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let sender_peak = peak_rss_kib_of_waited_children();
    let server_peak = peak_rss_kib_of(server.running.pid());

    let stored = server.inbox.join("huge.bin");
    assert_eq!(std::fs::metadata(&stored).unwrap().len(), SIZE);
    assert_eq!(hash_file(&stored), hash_file(&path));
    assert!(
        sender_peak < MAX_RSS_KIB,
        "haul send peaked at {sender_peak} KiB"
    );
    assert!(
        server_peak < MAX_RSS_KIB,
        "haul serve peaked at {server_peak} KiB"
    );
}
