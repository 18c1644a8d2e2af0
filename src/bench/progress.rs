//! Progress for long runs (benchmarks, the emulated Intel host's boot): a line on stderr,
//! rewritten in place, when stderr is a terminal; nothing at all when it is not (logs, CI,
//! pipes stay clean).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often [`Progress::during`] redraws the line while a step runs.
const TICK: Duration = Duration::from_millis(500);

/// Progress over a known number of steps.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: u64,
    started: Instant,
    enabled: bool,
    /// The highest step count seen and the elapsed seconds when it was first seen: the
    /// estimate of the time left comes from completed steps only, so it does not grow while
    /// a step runs.
    completed: Mutex<(u64, f64)>,
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
            completed: Mutex::new((0, 0.0)),
        }
    }

    /// Whether the line is shown at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The line shown after `done` steps.
    pub fn line(&self, done: u64) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let at = {
            let mut completed = self.completed.lock().unwrap_or_else(|p| p.into_inner());
            if done > completed.0 {
                *completed = (done, elapsed);
            }
            completed.1
        };
        let eta = if done > 0 && done < self.total {
            let per_step = at / done as f64;
            let left = (per_step * (self.total - done) as f64 - (elapsed - at)).max(0.0);
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
        self.show(done, None);
    }

    /// Shows that `done` steps are complete and what runs now.
    pub fn show(&self, done: u64, now: Option<&str>) {
        if self.enabled {
            let mut line = self.line(done);
            if let Some(now) = now {
                line.push_str(": ");
                line.push_str(now);
            }
            let mut err = std::io::stderr().lock();
            // Progress is best effort: a failed write to the terminal changes nothing.
            let _ = write!(err, "\r\x1b[K{line}");
            let _ = err.flush();
        }
    }

    /// Runs `work`, the step after `done`, described as `now`; on a terminal the line is
    /// redrawn every half second meanwhile, so the elapsed time moves during a long step.
    pub fn during<T>(&self, done: u64, now: &str, work: impl FnOnce() -> T) -> T {
        if !self.enabled {
            return work();
        }
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let ticker = scope.spawn(|| {
                while !stop.load(Ordering::Acquire) {
                    self.show(done, Some(now));
                    std::thread::park_timeout(TICK);
                }
            });
            let result = work();
            stop.store(true, Ordering::Release);
            ticker.thread().unpark();
            result
        })
    }

    /// Clears the line (dropping the `Progress` does too).
    pub fn finish(&self) {
        if self.enabled {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        }
    }
}

impl Drop for Progress {
    /// A run that ends early (an error) leaves no half-drawn line behind.
    fn drop(&mut self) {
        self.finish();
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
        // The estimate comes from completed steps: it shrinks while the next step runs.
        let mut p = Progress::with_output("x", 3, false);
        p.started = Instant::now() - Duration::from_secs(15);
        *p.completed.lock().unwrap() = (1, 10.0);
        let line = p.line(1);
        assert!(line.contains("about 15 s left"), "{line}");
    }

    #[test]
    fn during_returns_the_work_and_stays_quiet_when_disabled() {
        let p = Progress::with_output("x", 2, false);
        assert!(!p.enabled());
        assert_eq!(p.during(0, "step", || 7), 7);
    }
}
