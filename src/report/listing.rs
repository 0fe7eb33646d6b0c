//! What `haul ls` shows: a line per entry on stdout, like `ls -l` (mode,
//! size, modification time in UTC, name), or with `--json` one JSON object
//! per entry and a closing summary. Names were judged by the library (one
//! valid component each) and still pass through [`shown`] on their way to
//! a terminal.

use std::io::{self, Write};

use haul::protocol::haul::{EntryKind, Mtime};
use haul::send::{ListSummary, ListedEntry};
use haul::size::Human;
use haul::text::shown;
use serde::Serialize;

/// One line of `haul ls --json`. The field names are an interface: scripts
/// read them, and the README lists them.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum JsonLine<'a> {
    Entry {
        name: &'a str,
        /// `file` or `dir`.
        kind: &'a str,
        /// 0 for a folder.
        size: u64,
        /// UTC, ISO 8601, to the nanosecond.
        mtime: String,
        /// Permission bits, as a number (420 is 0o644).
        mode: u32,
    },
    Summary {
        entries: u64,
        files: u64,
        folders: u64,
        /// The files' sizes, added up.
        bytes: u64,
        from: &'a str,
        /// Why the listing failed or stopped early.
        error: Option<String>,
    },
}

/// Writes each frame's entries to stdout as they arrive, then the summary.
pub struct ListPrinter {
    json: bool,
    out: io::BufWriter<io::Stdout>,
}

impl ListPrinter {
    pub fn new(json: bool) -> ListPrinter {
        ListPrinter {
            json,
            out: io::BufWriter::new(io::stdout()),
        }
    }

    /// Writes one frame's entries and flushes them; `false` once stdout is
    /// gone (`haul ls | head`), so that the listing can stop.
    pub fn entries(&mut self, entries: &[ListedEntry]) -> bool {
        let written: io::Result<()> = entries
            .iter()
            .try_for_each(|entry| self.entry(entry))
            .and_then(|()| self.out.flush());
        written.is_ok()
    }

    fn entry(&mut self, entry: &ListedEntry) -> io::Result<()> {
        let name = entry.name.as_str();
        if self.json {
            let line = JsonLine::Entry {
                name,
                kind: match entry.kind {
                    EntryKind::File => "file",
                    EntryKind::Directory => "dir",
                },
                size: entry.size,
                mtime: utc(entry.mtime, true),
                mode: entry.mode,
            };
            serde_json::to_writer(&mut self.out, &line)?;
            return writeln!(self.out);
        }
        let (marker, size, slash) = match entry.kind {
            EntryKind::File => ('-', Human(entry.size).to_string(), ""),
            EntryKind::Directory => ('d', "-".to_owned(), "/"),
        };
        writeln!(
            self.out,
            "{marker}{}  {size:>10}  {}  {}{slash}",
            permissions(entry.mode),
            utc(entry.mtime, false),
            shown(name)
        )
    }

    /// The closing summary: a JSON line with `--json`, else a line on
    /// stderr, so that stdout holds the entries alone.
    pub fn finish(mut self, from: &str, summary: &ListSummary, error: Option<String>) {
        let entries = summary.files + summary.folders;
        if self.json {
            let line = JsonLine::Summary {
                entries,
                files: summary.files,
                folders: summary.folders,
                bytes: summary.bytes,
                from,
                error,
            };
            if serde_json::to_writer(&mut self.out, &line).is_ok() {
                let _ = writeln!(self.out);
            }
        } else if error.is_none() {
            eprintln!(
                "{entries} {}: {} {} ({}), {} {}",
                if entries == 1 { "entry" } else { "entries" },
                summary.files,
                if summary.files == 1 { "file" } else { "files" },
                Human(summary.bytes),
                summary.folders,
                if summary.folders == 1 {
                    "folder"
                } else {
                    "folders"
                },
            );
        }
        let _ = self.out.flush();
    }
}

/// `rwxr-xr-x` for the permission bits.
fn permissions(mode: u32) -> String {
    (0..9)
        .map(|bit| {
            if mode & (0o400 >> bit) == 0 {
                '-'
            } else {
                ['r', 'w', 'x'][bit % 3]
            }
        })
        .collect()
}

/// A modification time in UTC, ISO 8601: `2026-12-02T07:25:11Z`, with
/// nanoseconds when `nanos` is set. Any time the protocol can carry is
/// written (the proleptic Gregorian calendar, years past 9999 included);
/// none panics.
fn utc(mtime: Mtime, nanos: bool) -> String {
    let days = i128::from(mtime.secs.div_euclid(86_400));
    let second = mtime.secs.rem_euclid(86_400);
    let (hour, minute, second) = (second / 3600, second % 3600 / 60, second % 60);
    // Days to a civil date, after Howard Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i128::from(month <= 2);
    let fraction = if nanos {
        format!(".{:09}", mtime.nanos)
    } else {
        String::new()
    };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_in_utc_for_any_second() {
        for (secs, nanos, expected) in [
            (0, 0, "1970-01-01T00:00:00Z"),
            (-1, 0, "1969-12-31T23:59:59Z"),
            (951_782_400, 0, "2000-02-29T00:00:00Z"),
            (1_798_788_311, 0, "2027-01-01T07:25:11Z"),
            (253_402_300_800, 0, "10000-01-01T00:00:00Z"),
        ] {
            assert_eq!(utc(Mtime { secs, nanos }, false), expected, "{secs}");
        }
        assert_eq!(
            utc(Mtime { secs: 1, nanos: 5 }, true),
            "1970-01-01T00:00:01.000000005Z"
        );
        for secs in [i64::MIN, i64::MAX] {
            assert!(utc(Mtime { secs, nanos: 0 }, true).ends_with('Z'));
        }
    }

    #[test]
    fn permission_bits_read_as_ls_shows_them() {
        assert_eq!(permissions(0o644), "rw-r--r--");
        assert_eq!(permissions(0o750), "rwxr-x---");
        assert_eq!(permissions(0), "---------");
    }
}
