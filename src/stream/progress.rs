//! One line of progress on stderr, for people watching a terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::serialize_secs;
use crate::config::human_bytes;

/// How often the line is redrawn.
const REDRAW: Duration = Duration::from_millis(250);

/// Counts bytes and, when stderr is a terminal and the run is not quiet,
/// redraws `backup: 1.2 GiB, 85.3 MiB/s, 0:00:14` in place. Under systemd,
/// cron or a pipe it prints nothing; the figures still come back.
#[derive(Debug)]
pub struct Progress {
    label: &'static str,
    show: bool,
    started: Instant,
    last_drawn: Option<Instant>,
    bytes: u64,
}

/// What the progress line showed last, for the summary and `--json`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Figures {
    pub bytes: u64,
    #[serde(serialize_with = "serialize_secs")]
    pub elapsed: Duration,
    pub bytes_per_sec: f64,
}

impl Progress {
    /// `label` starts the line ("backup", "restore", "verify").
    pub fn new(label: &'static str, quiet: bool) -> Progress {
        Progress::with_display(label, !quiet && std::io::stderr().is_terminal())
    }

    /// Never prints: for tests and callers that report otherwise.
    pub fn hidden(label: &'static str) -> Progress {
        Progress::with_display(label, false)
    }

    fn with_display(label: &'static str, show: bool) -> Progress {
        Progress {
            label,
            show,
            started: Instant::now(),
            last_drawn: None,
            bytes: 0,
        }
    }

    /// Records the total so far; redraws at most every 250 ms.
    pub fn update(&mut self, bytes: u64) {
        self.bytes = bytes;
        if !self.show {
            return;
        }
        let now = Instant::now();
        if self.last_drawn.is_some_and(|t| now - t < REDRAW) {
            return;
        }
        self.last_drawn = Some(now);
        self.draw("");
    }

    /// The final figures; ends the line on the terminal.
    pub fn finish(&mut self) -> Figures {
        if self.show && self.last_drawn.is_some() {
            self.draw("\n");
        }
        self.figures()
    }

    pub fn figures(&self) -> Figures {
        let elapsed = self.started.elapsed();
        let secs = elapsed.as_secs_f64();
        Figures {
            bytes: self.bytes,
            elapsed,
            bytes_per_sec: if secs > 0.0 {
                self.bytes as f64 / secs
            } else {
                0.0
            },
        }
    }

    fn draw(&self, end: &str) {
        let line = format!("\r\x1b[2K{}{end}", render(self.label, &self.figures()));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

fn render(label: &str, f: &Figures) -> String {
    let s = f.elapsed.as_secs();
    format!(
        "{label}: {}, {}/s, {}:{:02}:{:02}",
        human_bytes(f.bytes),
        human_bytes(f.bytes_per_sec as u64),
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bytes_rate_and_elapsed() {
        let f = Figures {
            bytes: 3 << 30,
            elapsed: Duration::from_secs(3725),
            bytes_per_sec: (85 << 20) as f64,
        };
        assert_eq!(render("backup", &f), "backup: 3.0 GiB, 85.0 MiB/s, 1:02:05");
    }

    #[test]
    fn hidden_progress_still_counts() {
        let mut p = Progress::hidden("verify");
        p.update(10);
        p.update(42);
        let f = p.finish();
        assert_eq!(f.bytes, 42);
        assert!(f.bytes_per_sec >= 0.0);
    }
}
