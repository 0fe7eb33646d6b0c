//! What `haul send` shows of a send. Part of the binary, not the library:
//! the library reports [`Event`]s and a [`Summary`]; this module decides how
//! they look. Everything for people goes to stderr; with `--json`, stdout
//! carries one JSON object per event and nothing else.
//!
//! Names come from the file system and the server, and may hold anything:
//! every line for the terminal passes through [`shown`] on its way out (in
//! [`print_to_stderr`], [`Reporter::routine`] and the progress display), so
//! that no name can send the terminal an escape sequence or break a line.
//! JSON carries the real names; serde escapes control characters in it.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use haul::send::{Event, SendError, Summary};
use haul::size::Human;
use haul::text::shown;
use serde::Serialize;

pub mod listing;
mod progress;

use progress::Progress;

/// How a send is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// One line per file and a closing line: for logs and pipes.
    Lines,
    /// A live display of the whole send and the current file, lines only
    /// for what needs attention, and the closing line: for a terminal.
    Progress,
    /// Only failures.
    Quiet,
    /// One JSON object per line on stdout for each event and a closing
    /// summary; only failures on stderr.
    Json,
}

/// One line of `--json` output. The field names are an interface: scripts
/// read them, and the README lists them.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum JsonLine<'a> {
    Started {
        path: &'a str,
        /// `null` for standard input.
        size: Option<u64>,
        /// Bytes the server already held: the send resumes after them.
        offset: u64,
    },
    Stored {
        path: &'a str,
        /// `null` with the seed protocol, which gives no receipt.
        stored_as: Option<&'a str>,
        bytes: u64,
        /// Hex; `null` with the seed protocol.
        blake3: Option<String>,
        /// Whether the server confirmed the content by its hash.
        verified: bool,
    },
    AlreadyThere {
        path: &'a str,
        /// Where the server holds the identical file.
        stored_as: &'a str,
        bytes: u64,
    },
    Skipped {
        path: &'a str,
        reason: &'a str,
    },
    Failed {
        path: &'a str,
        reason: &'a str,
    },
    /// The closing line of a get.
    #[serde(rename = "summary")]
    GetSummary {
        stored: u64,
        already_there: u64,
        failed: u64,
        skipped: u64,
        /// File bytes that arrived, before decompression's growth is counted
        /// out: what was written locally (resumed parts excluded).
        bytes_received: u64,
        /// `bytes_received` as it came on the wire.
        wire_bytes: u64,
        seconds: f64,
        from: &'a str,
        /// Why the get as a whole failed.
        error: Option<String>,
    },
    Summary {
        stored: u64,
        already_there: u64,
        failed: u64,
        skipped: u64,
        bytes_sent: u64,
        /// `bytes_sent` as it went on the wire: fewer with `--compress`.
        wire_bytes: u64,
        seconds: f64,
        to: &'a str,
        /// Why the send as a whole failed (e.g. the server is unreachable).
        error: Option<String>,
    },
}

impl JsonLine<'_> {
    /// Writes the line to stdout at once, so that a reader sees each event
    /// as it happens. A closed stdout is not haul's failure to report.
    fn print(&self) {
        let mut stdout = std::io::stdout().lock();
        if serde_json::to_writer(&mut stdout, self).is_ok() {
            let _ = writeln!(stdout);
            let _ = stdout.flush();
        }
    }
}

/// Turns the events of one send into what the user sees.
pub struct Reporter {
    output: Output,
    /// A line for every file, also those that went as expected (`-v`).
    verbose: bool,
    /// Present while a live display is drawn.
    progress: Option<Progress>,
    /// The server's address, for the closing line.
    to: String,
    /// When the send began, for the closing line's rate.
    started: Instant,
    /// Routine lines not written yet. They go out together when a batch
    /// settles: one write per file was a twentieth of the sender's time for
    /// many small files, and on the critical path between a batch's
    /// receipts and the next batch's data.
    gathered: String,
    /// What the events said so far, for the report of an interrupted
    /// send, which ends without the library's summary.
    seen: Summary,
    /// Bytes of the files found already there.
    already_there_bytes: u64,
    /// Whether this reports a get: files come from the server at `to`.
    get: bool,
}

impl Reporter {
    /// Starts reporting a send of `sources` to `to`; with
    /// [`Output::Progress`], the display appears at once.
    pub fn new(
        output: Output,
        verbose: bool,
        to: &str,
        sources: &[PathBuf],
        name: Option<&str>,
    ) -> Reporter {
        Reporter {
            output,
            verbose,
            progress: (output == Output::Progress).then(|| Progress::start(sources, name)),
            to: to.to_owned(),
            started: Instant::now(),
            gathered: String::new(),
            seen: Summary::default(),
            already_there_bytes: 0,
            get: false,
        }
    }

    /// Starts reporting a get from `from`. On a terminal the live display
    /// shows what is done and its rate, without totals: a get learns what
    /// is to come only as it arrives.
    pub fn for_get(output: Output, verbose: bool, from: &str) -> Reporter {
        Reporter {
            output,
            verbose,
            progress: (output == Output::Progress).then(Progress::open),
            to: from.to_owned(),
            started: Instant::now(),
            gathered: String::new(),
            seen: Summary::default(),
            already_there_bytes: 0,
            get: true,
        }
    }

    pub fn event(&mut self, event: Event<'_>) {
        if self.output == Output::Json {
            Self::json(&event);
        }
        if let Some(progress) = &self.progress {
            progress.event(&event);
        }
        match event {
            Event::Stored { .. } => self.seen.stored += 1,
            Event::AlreadyThere { bytes, .. } => {
                self.seen.already_there += 1;
                self.already_there_bytes += bytes;
            }
            Event::Failed { .. } => self.seen.failed += 1,
            Event::Skipped { .. } => self.seen.skipped += 1,
            Event::Progress { bytes, wire } => {
                self.seen.bytes_sent += bytes;
                self.seen.wire_bytes += wire;
            }
            Event::Started { .. } | Event::BatchSettled => {}
        }
        match event {
            Event::Started { .. } | Event::Progress { .. } => {}
            Event::Stored {
                path,
                stored_as: Some(stored_as),
                bytes,
                ..
            } if stored_as != path => {
                let verb = if self.get { "got" } else { "stored" };
                self.note(&format!("{verb} {path} as {stored_as} ({})", Human(bytes)));
            }
            Event::Stored {
                path,
                stored_as: Some(_),
                bytes,
                ..
            } => {
                let verb = if self.get { "got" } else { "stored" };
                self.routine(&format!("{verb} {path} ({})", Human(bytes)));
            }
            Event::Stored {
                path,
                stored_as: None,
                bytes,
                ..
            } => self.routine(&format!("sent {path} ({})", Human(bytes))),
            // Where the identical copy is, when it is not under the name
            // sent: worth its line in a log.
            Event::AlreadyThere {
                path, stored_as, ..
            } if *stored_as != *path => {
                self.routine(&format!(
                    "{path} is already there, identical, as {stored_as}"
                ));
            }
            // Otherwise one line at the end counts them all (a re-send of a
            // tree is mostly such files), unless every file is to be named.
            Event::AlreadyThere { path, .. } => {
                if self.verbose {
                    self.routine(&format!("{path} is already there, identical"));
                }
            }
            Event::Failed { path, reason } => self.error(&format!("{path}: {reason}")),
            Event::Skipped { path, reason } => self.note(&format!("skipped {path}: {reason}")),
            Event::BatchSettled => self.write_gathered(),
        }
    }

    /// Ends the report with the closing line, or with why the send failed.
    pub fn finish(&mut self, outcome: &Result<Summary, SendError>) {
        self.write_gathered();
        if let Some(progress) = self.progress.take() {
            progress.clear();
        }
        if self.output == Output::Json {
            // A send that broke still did what its events said.
            let counts = outcome.as_ref().copied().unwrap_or(self.seen);
            self.json_summary(&counts, outcome.as_ref().err().map(ToString::to_string));
        }
        self.already_there_line();
        match outcome {
            Ok(summary) if matches!(self.output, Output::Lines | Output::Progress) => {
                let mut line = closing_line(summary, &self.to, self.started.elapsed());
                if self.get {
                    line = line.replacen(" sent to ", " received from ", 1);
                }
                print_to_stderr(&line);
            }
            Ok(_) => {}
            Err(error) => print_to_stderr(&error.to_string()),
        }
    }

    /// Ends the report of a send stopped by Ctrl-C: how many of the
    /// `total` files the server holds, and how to go on (`next`).
    pub fn interrupted(&mut self, total: u64, next: &str) {
        self.write_gathered();
        if let Some(progress) = self.progress.take() {
            progress.clear();
        }
        self.already_there_line();
        let line = format!(
            "interrupted after {} of {total} files; {next}",
            self.seen.stored + self.seen.already_there
        );
        if self.output == Output::Json {
            self.json_summary(&self.seen, Some(line.clone()));
        }
        print_to_stderr(&line);
    }

    /// The closing JSON line: `error` says why the send ended early.
    fn json_summary(&self, counts: &Summary, error: Option<String>) {
        if self.get {
            JsonLine::GetSummary {
                stored: counts.stored,
                already_there: counts.already_there,
                failed: counts.failed,
                skipped: counts.skipped,
                bytes_received: counts.bytes_sent,
                wire_bytes: counts.wire_bytes,
                seconds: self.started.elapsed().as_secs_f64(),
                from: &self.to,
                error,
            }
            .print();
            return;
        }
        JsonLine::Summary {
            stored: counts.stored,
            already_there: counts.already_there,
            failed: counts.failed,
            skipped: counts.skipped,
            bytes_sent: counts.bytes_sent,
            wire_bytes: counts.wire_bytes,
            seconds: self.started.elapsed().as_secs_f64(),
            to: &self.to,
            error,
        }
        .print();
    }

    fn json(event: &Event<'_>) {
        let line = match *event {
            Event::Started { path, size, offset } => JsonLine::Started { path, size, offset },
            Event::Progress { .. } | Event::BatchSettled => return,
            Event::Stored {
                path,
                stored_as,
                bytes,
                hash,
            } => JsonLine::Stored {
                path,
                stored_as,
                bytes,
                blake3: hash.map(|hash| blake3::Hash::from_bytes(*hash).to_hex().to_string()),
                verified: hash.is_some(),
            },
            Event::AlreadyThere {
                path,
                stored_as,
                bytes,
            } => JsonLine::AlreadyThere {
                path,
                stored_as,
                bytes,
            },
            Event::Failed { path, reason } => JsonLine::Failed { path, reason },
            Event::Skipped { path, reason } => JsonLine::Skipped { path, reason },
        };
        line.print();
    }

    /// A line worth a look on a terminal too: a rename, a skip.
    fn note(&mut self, line: &str) {
        if matches!(self.output, Output::Lines | Output::Progress) {
            self.print(line);
        }
    }

    /// Without a terminal and without `-v`, the one line that stands for
    /// the lines of files already there under their own name.
    fn already_there_line(&mut self) {
        let count = self.seen.already_there;
        if self.output == Output::Lines && !self.verbose && count > 0 {
            self.print(&format!(
                "{count} {} already there ({}), nothing {} for {}",
                if count == 1 { "file" } else { "files" },
                Human(self.already_there_bytes),
                if self.get { "fetched" } else { "sent" },
                if count == 1 { "it" } else { "them" },
            ));
        }
    }

    /// A line for each file that went as expected: in a log, or with `-v`
    /// above the display too; gathered until the batch settles.
    fn routine(&mut self, line: &str) {
        if self.output == Output::Lines || (self.verbose && self.output == Output::Progress) {
            self.gathered.push_str("haul: ");
            self.gathered.push_str(&shown(line));
            self.gathered.push('\n');
            if self.gathered.len() >= GATHER_LIMIT {
                self.write_gathered();
            }
        }
    }

    fn error(&mut self, line: &str) {
        self.print(line);
    }

    /// Prints a line at once, after the routine lines before it.
    fn print(&mut self, line: &str) {
        self.write_gathered();
        match &self.progress {
            Some(progress) => progress.multi.suspend(|| print_to_stderr(line)),
            None => print_to_stderr(line),
        }
    }

    /// Writes the gathered routine lines in one call, above the display if
    /// there is one.
    fn write_gathered(&mut self) {
        if !self.gathered.is_empty() {
            // A closed stderr is not haul's failure to report.
            let write = || {
                let _ = std::io::stderr().write_all(self.gathered.as_bytes());
            };
            match &self.progress {
                Some(progress) => progress.multi.suspend(write),
                None => write(),
            }
            self.gathered.clear();
        }
    }
}

/// Most bytes of routine lines held before they are written anyway.
const GATHER_LIMIT: usize = 64 * 1024;

/// Writes `haul: LINE` to stderr in one call, escaped for the terminal:
/// `eprintln!` makes one call per piece of its format, three system calls
/// per file sent.
fn print_to_stderr(line: &str) {
    let text = format!("haul: {}\n", shown(line));
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// The closing line: the counts, then what went to the server in human
/// units, and with compression what that took on the wire. The rate counts
/// wire bytes, as `--limit-rate` does.
fn closing_line(summary: &Summary, to: &str, elapsed: Duration) -> String {
    let mut line = format!(
        "{} stored, {} already there, {} failed, {} skipped; {} sent to {to}",
        summary.stored,
        summary.already_there,
        summary.failed,
        summary.skipped,
        Human(summary.bytes_sent),
    );
    let rate = Human((summary.wire_bytes as f64 / elapsed.as_secs_f64().max(1e-3)) as u64);
    if summary.wire_bytes == summary.bytes_sent {
        line.push_str(&format!(" ({rate}/s)"));
    } else {
        line.push_str(&format!(
            " ({} on the wire, {:.1}x smaller; {rate}/s)",
            Human(summary.wire_bytes),
            summary.bytes_sent as f64 / summary.wire_bytes.max(1) as f64,
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closing_line_is_in_human_units_and_shows_what_compression_saved() {
        let plain = Summary {
            stored: 3,
            bytes_sent: 25_000_000,
            wire_bytes: 25_000_000,
            ..Summary::default()
        };
        assert_eq!(
            closing_line(&plain, "127.0.0.1:9", Duration::from_secs(2)),
            "3 stored, 0 already there, 0 failed, 0 skipped; 23.8 MiB sent to 127.0.0.1:9 \
             (11.9 MiB/s)"
        );
        let compressed = Summary {
            wire_bytes: 3_125_000,
            ..plain
        };
        assert_eq!(
            closing_line(&compressed, "127.0.0.1:9", Duration::from_secs(1)),
            "3 stored, 0 already there, 0 failed, 0 skipped; 23.8 MiB sent to 127.0.0.1:9 \
             (3.0 MiB on the wire, 8.0x smaller; 3.0 MiB/s)"
        );
    }
}
