//! Following a session's console (`serial.log`) as it grows: which case started, which
//! ended how, the recent lines, and whether the session has ended (its `exit-status`, or the
//! script gone).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{timeout, SHOWN_LINES};
use crate::report::{self, CaseReport, Line};

/// A case's result as the session saw it.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub(super) report: CaseReport,
    /// Wall time between its start line and its result line, as the poller saw them.
    pub(super) wall: Duration,
    /// The console lines it printed.
    pub(super) lines: Vec<String>,
}

/// How the session ended.
#[derive(Debug, Clone)]
pub(super) enum End {
    /// intel-host.sh exited with this status.
    Exited(i32),
    /// intel-host.sh is gone without an exit status (killed), or never started.
    Vanished(String),
    /// It ran past the session's limit and this process stopped waiting.
    GaveUp,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) results: HashMap<String, Seen>,
    pub(super) order: Vec<String>,
    pub(super) current: Option<(String, Instant, Vec<String>)>,
    pub(super) recent: VecDeque<String>,
    pub(super) first_case_at: Option<Instant>,
    pub(super) end: Option<End>,
    /// The session had ended before it was followed: its lines all arrived at once, so the
    /// wall times between them mean nothing.
    pub(super) ended_before_followed: bool,
}

/// Reads the console log as it grows and records starts, results and the end.
pub(super) struct Poller {
    pub(super) dir: PathBuf,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) offset: u64,
    pub(super) partial: String,
    pub(super) started: Instant,
}

impl Poller {
    pub(super) fn run(mut self) {
        // A session started elsewhere may not have written its pid yet; one that waits for the
        // host-cores lock (a 2-vCPU Linux boot holds it for minutes) has not started its clock.
        let grace = Duration::from_secs(60);
        let limit = timeout() + Duration::from_secs(1800);
        let mut first_poll = true;
        loop {
            let status = std::fs::read_to_string(self.dir.join("exit-status")).ok();
            self.read_new_lines();
            let end = if let Some(s) = status {
                Some(End::Exited(s.trim().parse().unwrap_or(-1)))
            } else if !self.script_alive() && self.started.elapsed() > grace {
                Some(End::Vanished(format!(
                    "scripts/intel-host.sh is not running and left no exit-status in {}",
                    self.dir.display()
                )))
            } else if self.started.elapsed() > limit {
                Some(End::GaveUp)
            } else {
                None
            };
            if let Some(end) = end {
                self.read_new_lines();
                let mut state = self.state.lock().unwrap();
                state.end = Some(end);
                state.ended_before_followed = first_poll;
                return;
            }
            first_poll = false;
            thread::sleep(Duration::from_millis(250));
        }
    }

    fn script_alive(&self) -> bool {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    fn read_new_lines(&mut self) {
        let Ok(mut file) = File::open(self.dir.join("serial.log")) else {
            return;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // The log was started afresh (a new session in the same directory).
            self.offset = 0;
            self.partial.clear();
        }
        let mut bytes = Vec::new();
        if io::Seek::seek(&mut file, io::SeekFrom::Start(self.offset)).is_err()
            || file.read_to_end(&mut bytes).is_err()
        {
            return;
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        while let Some(nl) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=nl).collect();
            let line = line.trim_end_matches(['\n', '\r']).to_string();
            record(&mut state, line, now);
        }
    }
}

fn record(state: &mut State, line: String, now: Instant) {
    match report::parse(&line) {
        Some(Line::Start(name)) => {
            state.first_case_at.get_or_insert(now);
            state.current = Some((name, now, Vec::new()));
        }
        Some(Line::Result(report)) => {
            let (wall, lines) = match state.current.take() {
                Some((name, at, lines)) if name == report.name => (now - at, lines),
                _ => (Duration::ZERO, Vec::new()),
            };
            state.order.push(report.name.clone());
            state.results.insert(
                report.name.clone(),
                Seen {
                    report,
                    wall,
                    lines,
                },
            );
        }
        None => {
            if let Some((_, _, lines)) = state.current.as_mut() {
                if lines.len() < 2000 {
                    lines.push(line.clone());
                }
            }
        }
    }
    state.recent.push_back(line);
    if state.recent.len() > SHOWN_LINES {
        state.recent.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{result_line, start_line};

    #[test]
    fn a_case_keeps_its_own_lines_and_the_running_case_is_known() {
        let mut state = State::default();
        let now = Instant::now();
        let pass = CaseReport {
            name: "a/one".into(),
            host: "intel-host".into(),
            passed: true,
            millis: 1,
            message: None,
        };
        for line in [
            "[ 0.1] kernel noise".to_string(),
            start_line("a/one"),
            "printed by a/one".into(),
            result_line(&pass),
            start_line("a/two"),
            "L1| printed by a/two".into(),
        ] {
            record(&mut state, line, now);
        }
        assert_eq!(state.order, ["a/one"]);
        assert_eq!(state.results["a/one"].lines, ["printed by a/one"]);
        let (running, _, lines) = state.current.as_ref().expect("a/two runs");
        assert_eq!((running.as_str(), lines.len()), ("a/two", 1));
        assert_eq!(state.recent.len(), 6);
    }
}
