//! What `haul send --json` printed: one JSON object per line on stdout.

use serde_json::Value;

/// The JSON objects of `stdout`; every line must be one JSON object.
pub fn lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8(stdout.to_vec())
        .unwrap()
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("{line:?} is not JSON: {error}"));
            assert!(value.is_object(), "{line}");
            value
        })
        .collect()
}

/// The events of one kind (`started`, `stored`, …), in the order printed.
pub fn of_kind<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["event"] == kind).collect()
}

/// The closing `summary` event; fails the test if there is none.
pub fn summary(lines: &[Value]) -> &Value {
    lines
        .iter()
        .find(|line| line["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary in {lines:#?}"))
}

/// The `offset` of each `started` event: where each file picked up.
pub fn started_offsets(stdout: &[u8]) -> Vec<u64> {
    of_kind(&lines(stdout), "started")
        .iter()
        .map(|event| event["offset"].as_u64().unwrap())
        .collect()
}
