//! What an operator reads from `haul serve`: a line per transfer that names
//! the file, its protocol and what became of its data; the partial
//! transfers a restart still holds; start-up errors that say which
//! argument is wrong; a second Ctrl-C that stops the server at once; and a
//! manual that covers every subcommand's options.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use util::proxy::{Fault, Proxy};
use util::{
    HAUL, HaulServer, Running, haul, haul_command, json, random_bytes, read_until_closed,
    seed_header, stderr_of,
};

/// A byte count as the server's log writes it: binary units, one decimal
/// below 10.
fn in_binary_units(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = "KiB";
    for next in ["MiB", "GiB", "TiB"] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if value < 10.0 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

/// The resumable partial files in the inbox's hidden area and their sizes.
fn resumable_partials(inbox: &Path) -> Vec<u64> {
    std::fs::read_dir(inbox.join(".haul"))
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("resume-"))
        .map(|entry| entry.metadata().unwrap().len())
        .collect()
}

fn send(to: &str, path: &Path, extra: &[&str]) -> Output {
    haul_command()
        .args(["send", "--to", to])
        .args(extra)
        .arg(path)
        .env_remove("HAUL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Leaves the first part of `path` in the server's hidden area: the send
/// goes through a proxy that closes both connections after `cut_after`
/// bytes.
fn interrupted_send(server: &HaulServer, path: &Path, cut_after: u64) {
    let cutting = Proxy::start(server.addr(), Fault::CutAfter(cut_after));
    let output = send(&cutting.addr, path, &[]);
    assert!(!output.status.success(), "{}", stderr_of(&output));
}

#[test]
fn a_haul_transfer_cut_off_logs_the_file_its_protocol_and_the_data_kept_for_resume() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("big.bin");
    std::fs::write(&path, random_bytes(8 * 1024 * 1024, 1)).unwrap();

    interrupted_send(&server, &path, 3 * 1024 * 1024);

    let line = server
        .running
        .wait_for_log(&["name=\"big.bin\"", "result=\"failed\""]);
    let held = resumable_partials(&server.inbox);
    let [held] = held.as_slice() else {
        panic!("one resumable partial expected, found {held:?}");
    };
    assert!(*held > 0, "nothing was kept");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("protocol=\"haul\""), "{line}");
    // Where in the file it was cut, not where in one frame.
    assert!(
        line.contains(&format!(
            "reason=the connection ended after {held} of the file's 8388608 bytes"
        )),
        "{line}"
    );
    assert!(line.contains("size=8388608"), "{line}");
    assert!(
        line.contains(&format!(
            "data=kept {} of big.bin for resume",
            in_binary_units(*held)
        )),
        "{line}"
    );
}

#[test]
fn a_seed_transfer_cut_short_logs_the_file_its_protocol_and_that_its_data_is_deleted() {
    let server = HaulServer::start(&[]);
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.write_all(&seed_header(10_000, b"half.bin")).unwrap();
    let mut go_ahead = [0u8; 8];
    stream.read_exact(&mut go_ahead).unwrap();
    stream.write_all(&random_bytes(5_000, 2)).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    read_until_closed(&mut stream);

    let line = server
        .running
        .wait_for_log(&["name=\"half.bin\"", "result=\"failed\""]);
    assert!(line.contains("protocol=\"seed\""), "{line}");
    assert!(
        line.contains("reason=the connection ended after 5000 of 10000 bytes"),
        "{line}"
    );
    assert!(line.contains("data=partial data deleted"), "{line}");
    assert_eq!(server.partial_count(), 0);
    assert!(server.stored_names().is_empty());
}

#[test]
fn a_refused_seed_name_logs_that_no_data_was_received() {
    let server = HaulServer::start(&[]);
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.write_all(&seed_header(10, b".haul")).unwrap();
    read_until_closed(&mut stream);

    let line = server
        .running
        .wait_for_log(&["protocol=\"seed\"", "result=\"failed\""]);
    assert!(line.contains("name=\".haul\""), "{line}");
    assert!(line.contains("data=no data received"), "{line}");
}

#[test]
fn stored_files_name_their_protocol_and_already_there_files_show_with_verbose() {
    let server = HaulServer::start(&["--verbose"]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("notes.txt");
    std::fs::write(&path, b"the same notes\n").unwrap();

    let first = send(server.addr(), &path, &[]);
    assert!(first.status.success(), "{}", stderr_of(&first));
    let stored = server.wait_stored("notes.txt");
    assert!(stored.contains("protocol=\"haul\""), "{stored}");

    let again = send(server.addr(), &path, &[]);
    assert!(again.status.success(), "{}", stderr_of(&again));
    let line = server
        .running
        .wait_for_log(&["name=\"notes.txt\"", "result=\"already there\""]);
    assert!(line.contains("DEBUG"), "{line}");
    assert!(line.contains("protocol=\"haul\""), "{line}");
    assert!(line.contains("stored_as=\"notes.txt\""), "{line}");

    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.write_all(&seed_header(3, b"seed.txt")).unwrap();
    let mut go_ahead = [0u8; 8];
    stream.read_exact(&mut go_ahead).unwrap();
    stream.write_all(b"abc").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    read_until_closed(&mut stream);
    let stored = server.wait_stored("seed.txt");
    assert!(stored.contains("protocol=\"seed\""), "{stored}");
}

#[test]
fn a_restarted_server_says_which_partial_transfers_it_still_holds() {
    let mut server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    for (name, seed) in [("one.bin", 3), ("two.bin", 4)] {
        let path = source.path().join(name);
        std::fs::write(&path, random_bytes(8 * 1024 * 1024, seed)).unwrap();
        interrupted_send(&server, &path, 2 * 1024 * 1024);
        server
            .running
            .wait_for_log(&[&format!("name=\"{name}\""), "result=\"failed\""]);
    }
    let held = resumable_partials(&server.inbox);
    assert_eq!(held.len(), 2, "{held:?}");

    server.kill_and_restart(&[]);
    let line = server.running.wait_for_log(&["holding"]);
    let expected = format!(
        "holding 2 partial transfers for resume in {}: {} in all, the oldest last written ",
        server.inbox.join(".haul").display(),
        in_binary_units(held.iter().sum())
    );
    assert!(line.contains(&expected), "{line}\nexpected {expected}");
    assert!(line.ends_with(" ago"), "{line}");
}

/// Runs `haul serve` with `args` to its end and returns its output; it must
/// not start.
fn serve_that_fails(args: &[&str]) -> Output {
    Command::new(HAUL)
        .arg("serve")
        .args(args)
        .env_remove("HAUL_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_file_given_as_dir_is_named_in_one_line() {
    let temp = tempfile::tempdir().unwrap();
    std::fs::write(temp.path().join("afile"), b"not a folder").unwrap();
    let output = Command::new(HAUL)
        .args(["serve", "--listen", "127.0.0.1:0", "--dir", "afile"])
        .current_dir(temp.path())
        .env_remove("HAUL_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        stderr_of(&output),
        "haul: --dir afile: it is a file, not a folder\n"
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
}

#[test]
fn a_port_in_use_is_named_in_one_line_with_a_hint() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let inbox = tempfile::tempdir().unwrap();
    let output = serve_that_fails(&[
        "--listen",
        &address,
        "--dir",
        inbox.path().to_str().unwrap(),
    ]);
    assert_eq!(
        stderr_of(&output),
        format!(
            "haul: cannot listen on {address}: the address is already in use (is another haul serve running?)\n"
        )
    );
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn a_port_below_1024_for_a_normal_user_says_what_it_needs() {
    let unprivileged_start: u32 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    assert!(
        unprivileged_start > 80,
        "this machine lets anyone bind port 80 (ip_unprivileged_port_start = {unprivileged_start}): \
         the refusal cannot be shown here"
    );
    let inbox = tempfile::tempdir().unwrap();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:80",
        "--dir",
        inbox.path().to_str().unwrap(),
    ];
    // SAFETY: geteuid has no preconditions.
    let mut command = if unsafe { libc::geteuid() } == 0 {
        // As root (as in CI) the server runs as `nobody`, which needs to
        // reach and write the inbox.
        std::fs::set_permissions(
            inbox.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let mut command = Command::new("setpriv");
        command.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            HAUL,
        ]);
        command
    } else {
        Command::new(HAUL)
    };
    let output = command
        .args(args)
        .env_remove("HAUL_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv (util-linux) to drop root");
    assert_eq!(
        stderr_of(&output),
        "haul: cannot listen on 127.0.0.1:80: permission denied \
         (ports below 1024 need root or CAP_NET_BIND_SERVICE)\n"
    );
    assert_eq!(output.status.code(), Some(1));
}

fn signal(running: &Running, signal: libc::c_int) {
    // SAFETY: kill only sends a signal to the child process this test started.
    assert_eq!(
        unsafe { libc::kill(running.pid() as libc::pid_t, signal) },
        0
    );
}

#[test]
fn a_second_ctrl_c_stops_the_server_at_once_and_the_send_resumes_later() {
    // A grace period far longer than any test: only the second signal can
    // end this server before the test's deadline.
    let mut server = HaulServer::start(&["--grace", "1h"]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("stalled.bin");
    let size = 16 * 1024 * 1024;
    let content = random_bytes(size, 5);
    std::fs::write(&path, &content).unwrap();
    let stall_at = 6 * 1024 * 1024;
    let stalling = Proxy::start(server.addr(), Fault::StallAfter(stall_at));
    let mut sender = haul_command()
        .args(["send", "--to", &stalling.addr])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    stalling.wait_forwarded(stall_at);

    signal(&server.running, libc::SIGINT);
    server.running.wait_for_log(&["shutting down"]);
    signal(&server.running, libc::SIGINT);
    let line = server.running.wait_for_log(&["stopping at once"]);
    assert!(
        line.contains("transfers in flight are cut; haul's keep their partial data for resume"),
        "{line}"
    );
    assert!(line.contains("connections=1"), "{line}");
    let status = server.running.child_mut().wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let _ = sender.kill();
    let _ = sender.wait();
    assert!(server.stored_names().is_empty());

    server.kill_and_restart(&[]);
    server
        .running
        .wait_for_log(&["holding 1 partial transfer for resume"]);
    let counting = Proxy::start(server.addr(), Fault::None);
    let resumed = send(&counting.addr, &path, &["--json"]);
    assert!(resumed.status.success(), "{}", stderr_of(&resumed));
    let offsets = json::started_offsets(&resumed.stdout);
    let [offset] = offsets.as_slice() else {
        panic!("one started event expected, got {offsets:?}");
    };
    assert!(
        *offset > 0 && *offset <= stall_at,
        "resumed at {offset} after {stall_at} bytes had crossed"
    );
    assert!(
        counting.forwarded() < size as u64 - offset + 64 * 1024,
        "{} bytes crossed again for the {} missing",
        counting.forwarded(),
        size as u64 - offset
    );
    assert!(
        std::fs::read(server.inbox.join("stalled.bin")).unwrap() == content,
        "the stored file differs"
    );
}

/// The subcommands that `haul --help` lists.
fn subcommands() -> Vec<String> {
    let help = String::from_utf8(haul(&["--help"]).stdout).unwrap();
    help.lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// The long options (and short ones) that `haul ARGS --help` lists.
fn options_in_help(args: &[&str]) -> Vec<String> {
    let mut args = args.to_vec();
    args.push("--help");
    let help = String::from_utf8(haul(&args).stdout).unwrap();
    help.lines()
        .skip_while(|line| *line != "Options:")
        .skip(1)
        .take_while(|line| line.is_empty() || line.starts_with(' '))
        .filter(|line| line.starts_with("  -") || line.starts_with("      --"))
        .flat_map(|line| {
            line.split_whitespace()
                .take_while(|word| word.starts_with('-'))
                .map(|word| word.trim_end_matches(',').to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_manual_has_a_page_for_every_subcommand_with_every_option() {
    let output = haul(&["man", "--all"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    // roff writes a hyphen as `\-`.
    let manual = String::from_utf8(output.stdout)
        .unwrap()
        .replace("\\-", "-");
    let pages: Vec<(&str, &str)> = manual
        .split("\n.TH ")
        .skip(1)
        .map(|page| page.split_once(' ').unwrap())
        .collect();
    let titles: Vec<&str> = pages.iter().map(|(title, _)| *title).collect();

    let subcommands = subcommands();
    assert!(
        subcommands.len() >= 5,
        "too few subcommands in --help: {subcommands:?}"
    );
    let mut expected_titles = vec!["haul".to_owned()];
    expected_titles.extend(subcommands.iter().map(|name| format!("haul-{name}")));
    assert_eq!(titles, expected_titles);

    let (_, top) = pages[0];
    for name in &subcommands {
        assert!(
            top.contains(&format!("haul-{name}(1)")),
            "haul(1) does not point to haul-{name}(1)"
        );
    }
    for (title, page) in &pages {
        let help_args: Vec<&str> = title.strip_prefix("haul-").into_iter().collect();
        let options = options_in_help(&help_args);
        assert!(
            options.iter().any(|option| option == "--help"),
            "no options read from the help of {title}: {options:?}"
        );
        for option in options {
            assert!(
                page.contains(&format!("\\fB{option}\\fR")),
                "{title}(1) does not describe {option}"
            );
        }
        // Every page of haul's it points to is in the manual.
        for (at, _) in page.match_indices("(1)") {
            let reference = page[..at]
                .rsplit(|c: char| c.is_whitespace() || c == '>' || c == ',')
                .next()
                .unwrap();
            if !reference.starts_with("haul") {
                continue;
            }
            assert!(
                titles.contains(&reference),
                "{title}(1) points to {reference}(1), which is not in the manual"
            );
        }
    }

    let send_page = haul(&["man", "send"]);
    assert!(send_page.status.success(), "{}", stderr_of(&send_page));
    let send_page = String::from_utf8(send_page.stdout).unwrap();
    assert!(send_page.contains(".TH haul-send 1"), "{send_page}");
    assert!(!send_page.contains(".TH haul 1"), "{send_page}");
}
