//! Text that came from the other side, made safe to show.
//!
//! Names, paths and reasons arrive from peers that may be hostile, and local
//! file names may hold anything but `/` and NUL; printed raw, control
//! characters could rewrite a terminal or forge log lines, and direction
//! changes or invisible characters could make one name look like another.

use std::borrow::Cow;

/// `raw` made safe to print: invalid UTF-8 is replaced and control
/// characters (terminal escape sequences among them) are escaped.
pub fn printable(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).escape_debug().to_string()
}

/// `text` made safe to show on a terminal: control characters, direction
/// changes, invisible characters and line separators are written as
/// escapes (`\n`, `\u{1b}`, `\u{202e}`); everything else, quotes and
/// backslashes included, is left as it is, so that messages around a name
/// read as written. Borrows when there is nothing to escape, which is
/// almost always.
pub fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs_escape(c) {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || changes_direction(c)
        || is_invisible(c)
        || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Whether `c` is a bidirectional control: an embedding, override, isolate
/// or mark. Such a character reorders what follows it on screen, so that
/// `report\u{202e}fdp.exe` reads as `reportexe.pdf`.
pub fn changes_direction(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// Whether `c` is drawn as nothing, or as a blank, although it is there:
/// zero-width spaces and joiners, the byte-order mark, fillers, tags, and
/// the other default-ignorable format characters of Unicode. Two names that
/// differ only by such characters look the same. The variation selectors,
/// also default-ignorable, are not among them: they only choose how the
/// character before them is drawn (an emoji, an ideograph), and some names
/// cannot be spelt without them.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}' // soft hyphen
            | '\u{034f}' // combining grapheme joiner
            | '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}' // Hangul fillers
            | '\u{17b4}' | '\u{17b5}' // Khmer inherent vowels
            | '\u{180e}' // Mongolian vowel separator
            | '\u{200b}'..='\u{200d}' // zero-width space, non-joiner, joiner
            | '\u{2060}'..='\u{2065}' // word joiner, invisible operators
            | '\u{206a}'..='\u{206f}' // deprecated format controls
            | '\u{feff}' // zero-width no-break space (byte-order mark)
            | '\u{fff0}'..='\u{fffb}' // reserved, interlinear annotation
            | '\u{1bca0}'..='\u{1bca3}' // shorthand format controls
            | '\u{1d173}'..='\u{1d17a}' // musical format controls
            | '\u{e0000}'..='\u{e00ff}' // tags: an invisible copy of ASCII
            | '\u{e01f0}'..='\u{e0fff}' // reserved, default-ignorable
    )
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

    #[test]
    fn shown_escapes_what_could_rewrite_or_disguise_a_line() {
        assert_eq!(shown("\x1b]0;pwned\x07a\nb"), "\\u{1b}]0;pwned\\u{7}a\\nb");
        assert_eq!(shown("a\u{9b}b\u{7f}"), "a\\u{9b}b\\u{7f}");
        assert_eq!(shown("report\u{202e}fdp.exe"), "report\\u{202e}fdp.exe");
        assert_eq!(shown("pay\u{200b}pal\u{feff}"), "pay\\u{200b}pal\\u{feff}");
        assert_eq!(shown("one\u{2028}two"), "one\\u{2028}two");
    }

    #[test]
    fn shown_leaves_ordinary_text_alone_and_borrows_it() {
        for text in [
            "report.pdf",
            "naïve – 日本.txt",
            "e\u{301}t\u{e9}",
            "the server answered \"no\" instead of \"go ahead\"",
            "C:\\path",
            "❤\u{fe0f}",
        ] {
            assert!(
                matches!(shown(text), Cow::Borrowed(same) if same == text),
                "{text:?}"
            );
        }
    }
}
