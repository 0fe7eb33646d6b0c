//! A listing of a folder of 100,000 entries streams through both sides:
//! neither the server nor `haul ls` holds the whole listing. A binary of its
//! own, with one test, so that the peak memory of this process's waited-for
//! children (`getrusage(RUSAGE_CHILDREN)`) is that of the one `haul ls`.

mod util;

use std::process::Stdio;

use util::{HaulServer, haul_command, stderr_of};

/// Entries in the folder, and the length of each name: 20 MB of names,
/// which a side holding the listing would hold at once.
const ENTRIES: usize = 100_000;
const NAME_LEN: usize = 200;

/// How much more memory than a small listing's either side may take: far
/// below the 20 MB of names, far above one batch and one frame.
const BOUND_KB: u64 = 8 * 1024;

/// The largest peak resident size of any child this process waited for,
/// in kB.
fn children_peak_kb() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid place for one rusage, which getrusage
    // fills; RUSAGE_CHILDREN is a valid `who`.
    let usage = unsafe {
        assert_eq!(
            libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()),
            0
        );
        usage.assume_init()
    };
    u64::try_from(usage.ru_maxrss).unwrap()
}

#[test]
fn a_listing_of_100_000_entries_streams_through_both_sides() {
    let server = HaulServer::start(&["--allow-get"]);
    let folder = server.inbox.join("many");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(server.inbox.join("one.txt"), b"1").unwrap();
    for index in 0..ENTRIES {
        let name = format!("{index:06}-{}", "x".repeat(NAME_LEN - 7));
        std::fs::File::create(folder.join(name)).unwrap();
    }
    let pid = server.running.pid();

    // A small listing first: the client's and the server's memory with
    // everything a listing needs, but few entries.
    let small = haul_command()
        .args(["ls", "--from", server.addr(), "one.txt"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(small.status.success(), "{}", stderr_of(&small));
    let client_small = children_peak_kb();
    let server_small = util::proc_status(pid, "VmHWM:");

    let mut child = haul_command()
        .args(["ls", "--from", server.addr(), "many", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read as it comes, and counted, not kept.
    let stdout = child.stdout.take().unwrap();
    let reading = std::thread::spawn(move || {
        let mut names = 0;
        let mut summary = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let line = line.unwrap();
            if line.starts_with("{\"event\":\"entry\"") {
                assert!(line.contains(&"x".repeat(NAME_LEN - 7)), "{line}");
                names += 1;
            } else {
                summary = line;
            }
        }
        (names, summary)
    });
    let output = child.wait_with_output().unwrap();
    let (names, summary) = reading.join().unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(names, ENTRIES);
    assert!(
        summary.contains(&format!("\"entries\":{ENTRIES},\"files\":{ENTRIES}")),
        "{summary}"
    );

    let client_large = children_peak_kb();
    let server_large = util::proc_status(pid, "VmHWM:");
    println!(
        "client peak {client_small} kB small, {client_large} kB large; \
         server peak {server_small} kB, then {server_large} kB"
    );
    assert!(
        client_large < client_small + BOUND_KB,
        "haul ls peaked at {client_large} kB for {ENTRIES} entries, {client_small} kB for one"
    );
    assert!(
        server_large < server_small + BOUND_KB,
        "the server peaked at {server_large} kB listing {ENTRIES} entries, {server_small} kB before"
    );
}
