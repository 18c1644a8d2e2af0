//! The line protocol between `hvkvm-suites` (running cases inside another host) and the test
//! that reports them: one `HVKVM-CASE-START` line before a case and one `HVKVM-CASE` line with
//! its result, each a JSON document after the marker, on the runner's stdout (the emulated
//! host's serial console). Lines are found anywhere in a console line, since kernel messages
//! can share it.

use serde::{Deserialize, Serialize};

const START: &str = "HVKVM-CASE-START ";
const RESULT: &str = "HVKVM-CASE ";

/// One case's result, as the runner reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseReport {
    /// The case's name (`suite/case[/row]`, without the host).
    pub name: String,
    /// The host it ran on (`local`, `intel-host`).
    pub host: String,
    /// Whether it passed.
    pub passed: bool,
    /// How long it took by the runner's clock (inside an emulated host, its slow guest time).
    pub millis: u64,
    /// The failure: panic message and location.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Start {
    name: String,
}

/// The line announcing that case `name` starts.
pub fn start_line(name: &str) -> String {
    let doc = serde_json::to_string(&Start { name: name.into() }).expect("serializable");
    format!("{START}{doc}")
}

/// The line carrying `report`.
pub fn result_line(report: &CaseReport) -> String {
    let doc = serde_json::to_string(report).expect("serializable");
    format!("{RESULT}{doc}")
}

/// What a console line says, if it is one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A case started.
    Start(String),
    /// A case ended.
    Result(CaseReport),
}

/// Parses one console line (a trailing `\r` is fine).
pub fn parse(line: &str) -> Option<Line> {
    let line = line.trim_end();
    if let Some(at) = line.find(START) {
        let start: Start = serde_json::from_str(&line[at + START.len()..]).ok()?;
        return Some(Line::Start(start.name));
    }
    let at = line.find(RESULT)?;
    serde_json::from_str(&line[at + RESULT.len()..])
        .ok()
        .map(Line::Result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_even_behind_other_output() {
        let report = CaseReport {
            name: "hyperv_user/msr_rows/GUEST_OS_ID without 03.EAX[5]".into(),
            host: "intel-host".into(),
            passed: false,
            millis: 12,
            message: Some("expected #GP\nat src/x.rs:1".into()),
        };
        let line = format!("[ 1.0] noise {}\r", result_line(&report));
        assert_eq!(parse(&line), Some(Line::Result(report)));
        let start = start_line("foundation/a \"quoted\" name");
        assert_eq!(
            parse(&start),
            Some(Line::Start("foundation/a \"quoted\" name".into()))
        );
        assert_eq!(parse("HVKVM-CASE {broken"), None);
        assert_eq!(parse("L1| plain output"), None);
    }
}
