//! What a person or a script sees of `haul send`: rate limits, progress on a
//! terminal, JSON lines, help text.

mod util;

use std::path::Path;
use std::time::Instant;

use util::{HaulServer, haul, random_bytes, stderr_of};

fn write_file(dir: &Path, name: &str, len: usize) -> String {
    let path = dir.join(name);
    std::fs::write(&path, random_bytes(len, len as u64)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn limit_rate_caps_the_sending_rate_with_either_protocol() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let len = 1024 * 1024;
    let rate = 512 * 1024;
    for protocol in ["haul", "seed"] {
        let name = format!("limited-{protocol}.bin");
        let path = write_file(source.path(), &name, len);
        let started = Instant::now();
        let output = haul(&[
            "send",
            "--to",
            server.addr(),
            "--protocol",
            protocol,
            "--limit-rate",
            "512K",
            &path,
        ]);
        let elapsed = started.elapsed().as_secs_f64();
        assert!(output.status.success(), "{}", stderr_of(&output));
        server.wait_stored(&name);
        let least = len as f64 / rate as f64 * 0.8;
        assert!(
            elapsed >= least,
            "{protocol}: {len} bytes at 512K/s took {elapsed:.2}s, less than {least:.2}s"
        );
        assert_eq!(
            std::fs::read(server.inbox.join(&name)).unwrap(),
            std::fs::read(&path).unwrap()
        );
    }
}

#[test]
fn a_rate_that_is_not_one_is_a_usage_error() {
    let output = haul(&["send", "--limit-rate", "fast", "x"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains("512K"),
        "{}",
        stderr_of(&output)
    );
}
