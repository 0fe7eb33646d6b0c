//! Text that came from the other side, made safe to show.
//!
//! Names, paths and reasons arrive from peers that may be hostile; printed
//! raw, control characters could rewrite a terminal or forge log lines.

/// `raw` made safe to print: invalid UTF-8 is replaced and control
/// characters (terminal escape sequences among them) are escaped.
pub fn printable(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_terminal_sequences() {
        assert_eq!(printable(b"\x1b[2Jx\n"), "\\u{1b}[2Jx\\n");
        assert_eq!(printable(b"\xffok"), "\u{fffd}ok");
        assert_eq!(printable("naïve 日本".as_bytes()), "naïve 日本");
    }
}
