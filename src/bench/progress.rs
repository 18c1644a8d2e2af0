//! Progress for long benchmark runs: a line on stderr, rewritten in place, when stderr is a
//! terminal; nothing at all when it is not (logs, CI, pipes stay clean).

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Progress over a known number of steps.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: u64,
    started: Instant,
    enabled: bool,
}

impl Progress {
    /// Progress of `label` over `total` steps; shown only if stderr is a terminal.
    pub fn new(label: impl Into<String>, total: u64) -> Progress {
        Progress::with_output(label, total, std::io::stderr().is_terminal())
    }

    /// As [`Progress::new`], shown or not as `enabled` says.
    pub fn with_output(label: impl Into<String>, total: u64, enabled: bool) -> Progress {
        Progress {
            label: label.into(),
            total,
            started: Instant::now(),
            enabled,
        }
    }

    /// The line shown after `done` steps.
    pub fn line(&self, done: u64) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = if done > 0 && done < self.total {
            let left = elapsed / done as f64 * (self.total - done) as f64;
            format!(", about {left:.0} s left")
        } else {
            String::new()
        };
        format!(
            "{}: {done}/{} ({:.0}%), {elapsed:.1} s{eta}",
            self.label,
            self.total,
            done as f64 * 100.0 / self.total.max(1) as f64
        )
    }

    /// Shows that `done` steps are complete.
    pub fn update(&self, done: u64) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            // Progress is best effort: a failed write to the terminal changes nothing.
            let _ = write!(err, "\r\x1b[K{}", self.line(done));
            let _ = err.flush();
        }
    }

    /// Clears the line.
    pub fn finish(&self) {
        if self.enabled {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_counts_steps_and_estimates_the_rest() {
        let p = Progress::with_output("time-read", 4, false);
        let line = p.line(1);
        assert!(line.starts_with("time-read: 1/4 (25%), "), "{line}");
        assert!(line.contains("s left"), "{line}");
        assert!(!p.line(4).contains("left"));
    }
}
