//! What `haul send` shows of a send. Part of the binary, not the library:
//! the library reports [`Event`]s and a [`Summary`]; this module decides how
//! they look. Messages for people go to stderr, one line each.

use std::time::Instant;

use haul::send::{Event, SendError, Summary};
use haul::transfer::Rate;

/// Turns the events of one send into what the user sees.
pub struct Reporter {
    /// The server's address, for the closing line.
    to: String,
    /// When the send began, for the closing line's rate.
    started: Instant,
}

impl Reporter {
    pub fn new(to: &str) -> Reporter {
        Reporter {
            to: to.to_owned(),
            started: Instant::now(),
        }
    }

    pub fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Started { .. } | Event::Progress { .. } => {}
            Event::Stored {
                path,
                stored_as: Some(stored_as),
                bytes,
                ..
            } if stored_as != path => {
                eprintln!("haul: stored {path} as {stored_as} ({bytes} bytes)");
            }
            Event::Stored {
                path,
                stored_as: Some(_),
                bytes,
                ..
            } => eprintln!("haul: stored {path} ({bytes} bytes)"),
            Event::Stored {
                path,
                stored_as: None,
                bytes,
                ..
            } => eprintln!("haul: sent {path} ({bytes} bytes)"),
            Event::AlreadyThere { path, .. } => {
                eprintln!("haul: {path} is already there, identical");
            }
            Event::Failed { path, reason } => eprintln!("haul: {path}: {reason}"),
            Event::Skipped { path, reason } => eprintln!("haul: skipped {path}: {reason}"),
        }
    }

    /// Ends the report with the closing line, or with why the send failed.
    pub fn finish(&mut self, outcome: &Result<Summary, SendError>) {
        match outcome {
            Ok(summary) => eprintln!(
                "haul: {} stored, {} already there, {} failed, {} skipped; {} bytes sent to {} ({})",
                summary.stored,
                summary.already_there,
                summary.failed,
                summary.skipped,
                summary.bytes_sent,
                self.to,
                Rate {
                    bytes: summary.bytes_sent,
                    elapsed: self.started.elapsed()
                }
            ),
            Err(error) => eprintln!("haul: {error}"),
        }
    }
}
