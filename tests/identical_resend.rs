//! Identical means identical, whatever the name: content the server already
//! holds, under the name or under one of its numbered copies, is reported
//! already there and moves no bytes, and a re-send never adds a copy.

mod util;

use std::path::Path;

use serde_json::Value;
use util::{HaulServer, haul, json, stderr_of};

/// Runs `haul send --json` with `args` and returns its events.
fn send_json(server: &HaulServer, sources: &[&Path]) -> Vec<Value> {
    let mut args = vec!["send", "--json", "--to", server.addr()];
    args.extend(sources.iter().map(|path| path.to_str().unwrap()));
    let output = haul(&args);
    assert!(output.status.success(), "{}", stderr_of(&output));
    json::lines(&output.stdout)
}

#[test]
fn two_identical_sources_with_one_name_store_one_copy() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    for folder in ["x", "y"] {
        std::fs::create_dir(source.path().join(folder)).unwrap();
        std::fs::write(
            source.path().join(folder).join("notes.txt"),
            b"the same notes",
        )
        .unwrap();
    }
    let x = source.path().join("x/notes.txt");
    let y = source.path().join("y/notes.txt");
    for run in 0..4 {
        let events = send_json(&server, &[&x, &y]);
        let stored = json::of_kind(&events, "stored");
        let there = json::of_kind(&events, "already_there");
        if run == 0 {
            assert_eq!(stored.len(), 1, "{events:?}");
            assert_eq!(there.len(), 1, "{events:?}");
        } else {
            assert_eq!(stored.len(), 0, "run {run}: {events:?}");
            assert_eq!(there.len(), 2, "run {run}: {events:?}");
            assert_eq!(json::summary(&events)["bytes_sent"], 0);
        }
        assert!(there.iter().all(|event| event["stored_as"] == "notes.txt"));
        assert_eq!(server.stored_names(), ["notes.txt"], "run {run}");
    }
}

#[test]
fn a_resend_after_a_rename_stores_nothing_new_and_says_where_it_is() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let path = source.path().join("egl.h");
    std::fs::write(&path, b"first version").unwrap();
    send_json(&server, &[&path]);
    // Changed, of a different size: kept beside the first.
    std::fs::write(&path, b"second version, longer").unwrap();
    let events = send_json(&server, &[&path]);
    assert_eq!(
        json::of_kind(&events, "stored")[0]["stored_as"],
        "egl (1).h"
    );
    for _ in 0..3 {
        let events = send_json(&server, &[&path]);
        let there = json::of_kind(&events, "already_there");
        assert_eq!(there.len(), 1, "{events:?}");
        assert_eq!(there[0]["stored_as"], "egl (1).h");
        assert_eq!(json::summary(&events)["bytes_sent"], 0);
        assert!(json::of_kind(&events, "started").is_empty(), "{events:?}");
    }
    assert_eq!(server.stored_names(), ["egl (1).h", "egl.h"]);
    // Without --json the line says where the file is.
    let output = haul(&["send", "--to", server.addr(), path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("is already there, identical, as egl (1).h"),
        "{}",
        stderr_of(&output)
    );
}

#[test]
fn two_different_sources_with_one_name_make_two_copies_and_no_more() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    // The same size, so that only their hashes tell them apart.
    for (folder, content) in [("x", b"version x"), ("y", b"version y")] {
        std::fs::create_dir(source.path().join(folder)).unwrap();
        std::fs::write(source.path().join(folder).join("a.txt"), content).unwrap();
    }
    let x = source.path().join("x/a.txt");
    let y = source.path().join("y/a.txt");
    for run in 0..4 {
        let events = send_json(&server, &[&x, &y]);
        if run > 0 {
            assert_eq!(
                json::of_kind(&events, "already_there").len(),
                2,
                "{events:?}"
            );
            assert_eq!(json::summary(&events)["bytes_sent"], 0);
        }
        assert_eq!(server.stored_names(), ["a (1).txt", "a.txt"], "run {run}");
    }
    assert_eq!(
        std::fs::read(server.inbox.join("a.txt")).unwrap(),
        b"version x"
    );
    assert_eq!(
        std::fs::read(server.inbox.join("a (1).txt")).unwrap(),
        b"version y"
    );
}

#[test]
fn a_name_with_quotes_already_there_is_reported_as_it_is_stored() {
    let server = HaulServer::start(&[]);
    let source = tempfile::tempdir().unwrap();
    let name = r#"it's "quoted".txt"#;
    let copy = r#"it's "quoted" (1).txt"#;
    for (folder, content) in [
        ("x", &b"the first"[..]),
        ("y", b"the second, stored beside"),
    ] {
        std::fs::create_dir(source.path().join(folder)).unwrap();
        std::fs::write(source.path().join(folder).join(name), content).unwrap();
    }
    let (x, y) = (
        source.path().join("x").join(name),
        source.path().join("y").join(name),
    );
    send_json(&server, &[&x]);
    let events = send_json(&server, &[&y]);
    assert_eq!(json::of_kind(&events, "stored")[0]["stored_as"], copy);

    let events = send_json(&server, &[&y]);
    let there = json::of_kind(&events, "already_there");
    assert_eq!(there.len(), 1, "{events:?}");
    assert_eq!(there[0]["stored_as"], copy, "carried exactly");
    let output = haul(&["send", "--to", server.addr(), y.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let expected = format!("haul: {name} is already there, identical, as {copy}\n");
    assert!(
        stderr_of(&output).contains(&expected),
        "{expected:?} not in {}",
        stderr_of(&output)
    );
}
