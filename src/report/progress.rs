//! The live display of a send on a terminal: the whole send on one line,
//! the current file below it.
//!
//! What must stay true of it:
//! - The rate counts only bytes that went on the wire in this run, never
//!   the part of a file the server already held (a resume) nor a file that
//!   was already there; with `--compress`, bytes after compression, which
//!   is what `--limit-rate` caps.
//! - The time left is what is left of the whole (already-there files and
//!   resumed parts count as done) at the rate file bytes are going out.
//! - The file counter counts files that have their outcome (stored,
//!   already there, failed or skipped), never one that has only started.
//! - No line is wider than the terminal, whatever its width: the lines are
//!   laid out here, for the width of the moment, and a long name keeps its
//!   end. Names arrive made safe by [`shown`]; shortening one never brings
//!   back what that escaped.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haul::send::{self, Event};
use haul::size::Human;
use haul::text::shown;
use indicatif::{HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The live display.
pub(super) struct Progress {
    pub(super) multi: MultiProgress,
    /// The whole send: its position is the bytes done (sent, resumed or
    /// already there), against the total once it is counted.
    overall: ProgressBar,
    /// The file being sent: its position counts the part the server held.
    current: ProgressBar,
    /// What the lines show besides the bars' positions.
    figures: Arc<Figures>,
}

/// Counts shared between the events and the drawing thread.
struct Figures {
    /// Files with an outcome.
    files_done: AtomicU64,
    /// Files and passed-over paths to come, or [`COUNTING`].
    files_total: AtomicU64,
    /// File bytes sent in this run, before compression.
    sent: AtomicU64,
    /// The same bytes as they went on the wire.
    wire: AtomicU64,
    /// Recent samples of `sent` and `wire`, for the rates.
    meter: Mutex<Meter>,
    /// The current file's name, made safe to show.
    name: Mutex<String>,
}

/// Stands for "not counted yet" in the total of files.
const COUNTING: u64 = u64::MAX;

impl Progress {
    pub(super) fn start(sources: &[PathBuf], name: Option<&str>) -> Progress {
        let progress = Progress::open();
        // Count in the background, so that a large tree starts going at once.
        let sources = sources.to_vec();
        let name = name.map(str::to_owned);
        let bar = progress.overall.downgrade();
        let counted = Arc::clone(&progress.figures);
        std::thread::spawn(move || {
            let totals = send::measure(&sources, name.as_deref());
            if let (Some(bar), Some(bytes)) = (bar.upgrade(), totals.bytes) {
                bar.set_length(bytes);
            }
            counted
                .files_total
                .store(totals.files + totals.passed_over, Ordering::Relaxed);
        });
        progress
    }

    /// The display without totals, for a get: what is to come is learnt
    /// only as it arrives, so the whole shows what is done and its rate.
    pub(super) fn open() -> Progress {
        let figures = Arc::new(Figures {
            files_done: AtomicU64::new(0),
            files_total: AtomicU64::new(COUNTING),
            sent: AtomicU64::new(0),
            wire: AtomicU64::new(0),
            meter: Mutex::new(Meter::default()),
            name: Mutex::new(String::new()),
        });
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::no_length().with_style(overall_style(&figures)));
        let current = multi.add(ProgressBar::no_length().with_style(current_style(&figures)));
        overall.enable_steady_tick(Duration::from_millis(100));
        Progress {
            multi,
            overall,
            current,
            figures,
        }
    }

    pub(super) fn event(&self, event: &Event<'_>) {
        let figures = &self.figures;
        match *event {
            Event::Started { path, size, offset } => {
                self.current.reset();
                match size {
                    Some(size) => self.current.set_length(size),
                    None => self.current.unset_length(),
                }
                self.current.set_position(offset);
                *figures.name.lock().unwrap_or_else(|e| e.into_inner()) = shown(path).into_owned();
                // Done, but not sent: the position moves, the rate does not.
                self.overall.inc(offset);
            }
            Event::Progress { bytes, wire } => {
                figures.sent.fetch_add(bytes, Ordering::Relaxed);
                figures.wire.fetch_add(wire, Ordering::Relaxed);
                self.current.inc(bytes);
                self.overall.inc(bytes);
            }
            Event::AlreadyThere { bytes, .. } => {
                self.overall.inc(bytes);
                figures.files_done.fetch_add(1, Ordering::Relaxed);
            }
            Event::Stored { .. } | Event::Failed { .. } | Event::Skipped { .. } => {
                figures.files_done.fetch_add(1, Ordering::Relaxed);
            }
            Event::BatchSettled => {}
        }
    }

    /// Takes the display off the screen, leaving the cursor where it began,
    /// and stops it drawing again.
    pub(super) fn clear(self) {
        let _ = self.multi.clear();
        self.multi.set_draw_target(ProgressDrawTarget::hidden());
        self.overall.finish_and_clear();
        self.current.finish_and_clear();
    }
}

/// The terminal's width now, as the display measures it.
fn terminal_width() -> usize {
    usize::from(console::Term::stderr().size().1)
}

fn overall_style(figures: &Arc<Figures>) -> ProgressStyle {
    let figures = Arc::clone(figures);
    ProgressStyle::with_template("{spinner:.green} {overall}")
        .expect("a valid template")
        .with_key(
            "overall",
            move |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                let (file_rate, wire_rate) = figures
                    .meter
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .rates(
                        Instant::now(),
                        figures.sent.load(Ordering::Relaxed),
                        figures.wire.load(Ordering::Relaxed),
                    )
                    .unzip();
                let left = state
                    .len()
                    .zip(file_rate)
                    .and_then(|(len, rate)| time_left(len.saturating_sub(state.pos()), rate));
                let files_total = figures.files_total.load(Ordering::Relaxed);
                let shown = Shown {
                    done: state.pos(),
                    total: state.len(),
                    rate: wire_rate,
                    left,
                    files_done: figures.files_done.load(Ordering::Relaxed),
                    files_total: (files_total != COUNTING).then_some(files_total),
                };
                // The spinner and its space take two columns.
                let line = overall_line(&shown, terminal_width().saturating_sub(2));
                let _ = out.write_str(&line.painted());
            },
        )
}

fn current_style(figures: &Arc<Figures>) -> ProgressStyle {
    let figures = Arc::clone(figures);
    ProgressStyle::with_template("{file}")
        .expect("a valid template")
        .with_key(
            "file",
            move |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                let name = figures.name.lock().unwrap_or_else(|e| e.into_inner());
                let line = file_line(&name, state.pos(), state.len(), terminal_width());
                let _ = out.write_str(&line);
            },
        )
}

/// How long `left` bytes take at `rate` bytes per second; `None` when
/// nothing is moving.
fn time_left(left: u64, rate: f64) -> Option<Duration> {
    (rate > 0.0).then(|| Duration::from_secs_f64((left as f64 / rate).min(1e9)))
}

/// Rates over the last few seconds, from samples taken as the display is
/// drawn. It holds at most one sample per [`SAMPLE_EVERY`] over
/// [`RATE_WINDOW`], however often it is drawn.
#[derive(Default)]
struct Meter {
    /// (when, file bytes sent, wire bytes), oldest first.
    samples: VecDeque<(Instant, u64, u64)>,
}

/// The span the rates are averaged over: long enough to smooth out the
/// bursts of a batch, short enough to follow a change of speed.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// Samples closer together than this are not kept.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// No rate is shown until the samples span this much: over a shorter span
/// one chunk would read as a huge rate.
const RATE_AFTER: Duration = Duration::from_millis(500);

impl Meter {
    /// Records the counts at `now`; returns the file and wire bytes per
    /// second over the window, once it spans [`RATE_AFTER`].
    fn rates(&mut self, now: Instant, sent: u64, wire: u64) -> Option<(f64, f64)> {
        if self
            .samples
            .back()
            .is_none_or(|&(last, ..)| now.saturating_duration_since(last) >= SAMPLE_EVERY)
        {
            self.samples.push_back((now, sent, wire));
        }
        // The oldest sample kept is the newest that is a window old.
        while self
            .samples
            .get(1)
            .is_some_and(|&(at, ..)| now.saturating_duration_since(at) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let &(since, sent_then, wire_then) = self.samples.front()?;
        let span = now.saturating_duration_since(since);
        (span >= RATE_AFTER).then(|| {
            let seconds = span.as_secs_f64();
            (
                sent.saturating_sub(sent_then) as f64 / seconds,
                wire.saturating_sub(wire_then) as f64 / seconds,
            )
        })
    }
}

/// What the line of the whole send shows.
struct Shown {
    done: u64,
    total: Option<u64>,
    /// Wire bytes per second.
    rate: Option<f64>,
    left: Option<Duration>,
    files_done: u64,
    files_total: Option<u64>,
}

/// The line of the whole send, laid out for a width: the text before the
/// bar, the bar (if it fits), and the text after it.
#[derive(Debug)]
struct Line {
    head: String,
    bar: Option<Bar>,
    tail: String,
}

#[derive(Debug)]
struct Bar {
    width: usize,
    /// Columns filled, out of `width`.
    filled: usize,
}

/// The widest bar drawn, and the narrowest worth drawing.
const BAR_WIDEST: usize = 28;
const BAR_NARROWEST: usize = 8;

impl Line {
    fn plain(text: String) -> Line {
        Line {
            head: text,
            bar: None,
            tail: String::new(),
        }
    }

    #[cfg(test)]
    fn width(&self) -> usize {
        columns(&self.head) + self.bar.as_ref().map_or(0, |bar| bar.width + 4) + columns(&self.tail)
    }

    /// The line as drawn: `head [===>   ] tail`, the bar in colour when
    /// stderr takes colours.
    fn painted(&self) -> String {
        let Some(bar) = &self.bar else {
            return format!("{}{}", self.head, self.tail);
        };
        let filled: String = match bar.filled {
            0 => String::new(),
            full if full >= bar.width => "=".repeat(bar.width),
            some => format!("{}>", "=".repeat(some - 1)),
        };
        let empty = " ".repeat(bar.width - columns(&filled));
        let filled = console::style(filled).cyan().for_stderr();
        format!("{} [{filled}{empty}] {}", self.head, self.tail)
    }
}

/// The line of the whole send, as much of it as fits in `width` columns:
/// the bar goes first, then the padding, the words, the files and the time
/// left; the bytes done go last.
fn overall_line(shown: &Shown, width: usize) -> Line {
    let done = Human(shown.done).to_string();
    let total = shown
        .total
        .map_or_else(|| "?".to_owned(), |total| Human(total).to_string());
    let rate = shown.rate.map_or_else(
        || "?/s".to_owned(),
        |rate| format!("{}/s", Human(rate as u64)),
    );
    let left = shown.left.map_or_else(
        || "?".to_owned(),
        |left| format!("{:#}", HumanDuration(left)),
    );
    let files_done = match shown.files_total {
        Some(total) => shown.files_done.min(total),
        None => shown.files_done,
    };
    let files = match shown.files_total {
        Some(total) => format!("{files_done}/{total}"),
        None => format!("{files_done}"),
    };
    let with_bar = [
        (
            format!("{done:>10} of {total}"),
            format!("{rate:>12}, {left} left, {files} files"),
        ),
        (
            format!("{done} of {total}"),
            format!("{rate}, {left} left, {files} files"),
        ),
    ];
    for (head, tail) in with_bar {
        let room = width.saturating_sub(columns(&head) + columns(&tail) + 4);
        if room >= BAR_NARROWEST {
            let bar_width = room.min(BAR_WIDEST);
            let filled = match shown.total {
                Some(total) if total > 0 => {
                    (u128::from(shown.done.min(total)) * bar_width as u128 / u128::from(total))
                        as usize
                }
                _ => 0,
            };
            return Line {
                head,
                bar: Some(Bar {
                    width: bar_width,
                    filled,
                }),
                tail,
            };
        }
    }
    let without_bar = [
        format!("{done} of {total}, {rate}, {left} left, {files} files"),
        format!("{done}/{total} {rate} {left} {files}"),
        format!("{done}/{total} {rate} {left}"),
        format!("{done}/{total} {rate}"),
        format!("{done} {rate}"),
    ];
    without_bar
        .into_iter()
        .find(|text| columns(text) <= width)
        .map_or_else(|| Line::plain(keep_start(&done, width)), Line::plain)
}

/// The line of the current file: its name, then the bytes done of it. The
/// name gives way first, keeping its end (`…/photos/IMG_0042.jpg`): the
/// end tells files in one folder apart.
fn file_line(name: &str, done: u64, total: Option<u64>, width: usize) -> String {
    let done = Human(done).to_string();
    let total = total.map_or_else(|| "?".to_owned(), |total| Human(total).to_string());
    const INDENT: &str = "  ";
    /// Fewest columns left to a name before the figures give way instead.
    const NAME_NARROWEST: usize = 8;
    for figures in [
        format!(" {done:>10} of {total}"),
        format!(" {done} of {total}"),
        format!(" {done}"),
    ] {
        let room = width.saturating_sub(INDENT.len() + columns(&figures));
        if room >= NAME_NARROWEST.min(columns(name)) {
            let name = keep_end(name, room);
            // Padded, so that the figures stay in their column.
            let pad = room.saturating_sub(columns(&name));
            return format!("{INDENT}{name}{}{figures}", " ".repeat(pad));
        }
    }
    keep_end(name, width)
}

/// Columns `text` takes on a terminal.
fn columns(text: &str) -> usize {
    console::measure_text_width(text)
}

/// The end of `text` that fits in `width` columns, after an ellipsis when
/// something was cut.
fn keep_end(text: &str, width: usize) -> String {
    if columns(text) <= width {
        return text.to_owned();
    }
    let Some(room) = width.checked_sub(1) else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut used = 0;
    for c in text.chars().rev() {
        let wide = columns(c.encode_utf8(&mut [0; 4]));
        if used + wide > room {
            break;
        }
        used += wide;
        kept.push(c);
    }
    std::iter::once('…').chain(kept.into_iter().rev()).collect()
}

/// The start of `text` that fits in `width` columns.
fn keep_start(text: &str, width: usize) -> String {
    let mut kept = String::new();
    let mut used = 0;
    for c in text.chars() {
        let wide = columns(c.encode_utf8(&mut [0; 4]));
        if used + wide > width {
            break;
        }
        used += wide;
        kept.push(c);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn figures() -> Shown {
        Shown {
            done: 512 * MIB + 3,
            total: Some(1024 * MIB),
            rate: Some(10.0 * MIB as f64),
            left: Some(Duration::from_secs(51)),
            files_done: 1234,
            files_total: Some(56789),
        }
    }

    #[test]
    fn on_a_wide_terminal_the_line_has_every_figure_and_a_bar() {
        let line = overall_line(&figures(), 118);
        assert_eq!(
            console::strip_ansi_codes(&line.painted()),
            " 512.0 MiB of 1.0 GiB [=============>              ]   10.0 MiB/s, 51s left, \
             1234/56789 files"
        );
    }

    #[test]
    fn no_line_is_wider_than_the_terminal_at_any_width() {
        let unknown = Shown {
            total: None,
            rate: None,
            left: None,
            files_total: None,
            ..figures()
        };
        let long = "photos/2024/summer/a-very-long-folder-name/IMG_20240712_184502_0042.jpg";
        for width in 0..=140 {
            for figures in [&figures(), &unknown] {
                let line = overall_line(figures, width);
                assert!(line.width() <= width, "{width}: {line:?}");
                assert_eq!(columns(&line.painted()), line.width(), "{line:?}");
            }
            for total in [Some(1024 * MIB), None] {
                let line = file_line(long, 3 * MIB, total, width);
                assert!(columns(&line) <= width, "{width}: {line:?}");
            }
        }
        // The figures a user reads first survive down to 40 columns.
        let narrow = overall_line(&figures(), 38).painted();
        assert!(
            narrow.contains("512.0 MiB") && narrow.contains("10.0 MiB/s"),
            "{narrow}"
        );
    }

    #[test]
    fn a_long_name_keeps_its_end_and_its_escapes() {
        let line = file_line("folder/deep/inside/the-file.bin", 0, Some(MIB), 40);
        assert_eq!(line, "  …de/the-file.bin        0 B of 1.0 MiB");
        assert_eq!(columns(&line), 40);
        let escaped = shown("evil\u{1b}]0;x\u{7}name.txt");
        let line = file_line(&escaped, 0, Some(MIB), 40);
        assert!(
            line.contains("name.txt") && !line.contains('\u{1b}'),
            "{line:?}"
        );
        // Wide characters count double.
        assert_eq!(keep_end("写真/夏の写真.jpg", 9), "…写真.jpg");
        assert!(file_line("short.txt", 0, None, 60).starts_with("  short.txt "));
    }

    #[test]
    fn the_rate_counts_only_what_was_sent_in_the_window() {
        let start = Instant::now();
        let mut meter = Meter::default();
        assert_eq!(meter.rates(start, 0, 0), None);
        // Too soon for a rate: one chunk over a few milliseconds.
        assert_eq!(
            meter.rates(start + Duration::from_millis(200), MIB, MIB),
            None
        );
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(
            meter.rates(at(1), 2 * MIB, MIB),
            Some((2.0 * MIB as f64, MIB as f64))
        );
        // A steady 1 MiB/s for a minute reads as 1 MiB/s, not as the
        // average since the start.
        for second in 2..=60 {
            meter.rates(at(second), 2 * MIB + (second - 1) * MIB, second * MIB);
        }
        let (file_rate, wire_rate) = meter.rates(at(61), 62 * MIB, 61 * MIB).unwrap();
        assert_eq!((file_rate, wire_rate), (MIB as f64, MIB as f64));
        assert!(meter.samples.len() <= 6, "{}", meter.samples.len());
        // Nothing sent for a window: nothing moves, and no time is left
        // to compute.
        let (file_rate, _) = meter.rates(at(70), 62 * MIB, 61 * MIB).unwrap();
        assert_eq!(file_rate, 0.0);
        assert_eq!(time_left(MIB, file_rate), None);
        assert_eq!(
            time_left(10 * MIB, MIB as f64),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn the_counter_never_shows_more_files_than_the_total() {
        let over = Shown {
            files_done: 7,
            files_total: Some(5),
            ..figures()
        };
        assert!(overall_line(&over, 120).tail.ends_with(" 5/5 files"));
        let counting = Shown {
            files_total: None,
            ..over
        };
        assert!(overall_line(&counting, 120).tail.ends_with(" 7 files"));
    }
}
