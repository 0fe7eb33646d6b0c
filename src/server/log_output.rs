//! Where the server's log goes: stderr, one line per event.
//!
//! The routine line of each stored file is gathered and written together
//! with the other lines of its batch, in one call, when the batch is done
//! ([`write_gathered`]), so that a folder of small files costs a write per
//! batch, not one per file. Every other line is written at once, after
//! whatever was gathered, so the log keeps its order.

use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

pub(crate) use crate::engine::log::{STORED_TARGET, Size};

/// Most bytes gathered before they are written anyway.
const GATHER_LIMIT: usize = 64 * 1024;

/// Lines waiting to be written.
static GATHERED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Hands `tracing_subscriber` a writer for each line: stderr, through the
/// gathering buffer for stored-file lines.
pub struct LogOutput;

impl<'a> MakeWriter<'a> for LogOutput {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { gather: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        LineWriter {
            gather: meta.target() == STORED_TARGET && *meta.level() == Level::INFO,
        }
    }
}

/// Writes one log line, or gathers it.
pub struct LineWriter {
    gather: bool,
}

impl Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut gathered = lock_gathered();
        gathered.extend_from_slice(line);
        if !self.gather || gathered.len() >= GATHER_LIMIT {
            write_out(&mut gathered)?;
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the gathered lines to stderr. Called when a batch of files is
/// done, and before the server stops.
pub fn write_gathered() {
    // A log that cannot be written has nowhere to report it.
    let _ = write_out(&mut lock_gathered());
}

fn lock_gathered() -> MutexGuard<'static, Vec<u8>> {
    GATHERED.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn write_out(gathered: &mut Vec<u8>) -> io::Result<()> {
    if gathered.is_empty() {
        return Ok(());
    }
    let written = io::stderr().write_all(gathered);
    gathered.clear();
    written
}

#[cfg(test)]
mod tests {
    use super::Size;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(Size(0).to_string(), "0 bytes");
        assert_eq!(Size(1023).to_string(), "1023 bytes");
        assert_eq!(Size(1024).to_string(), "1.0 KiB");
        assert_eq!(Size(3 * 1024 + 512).to_string(), "3.5 KiB");
        assert_eq!(Size(318 * 1024 * 1024).to_string(), "318 MiB");
        assert_eq!(Size(5 << 40).to_string(), "5.0 TiB");
    }
}
