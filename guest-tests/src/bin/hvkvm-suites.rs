//! hvkvm-suites: runs the guest test tables (guest_tests::suites) outside `cargo test`, on
//! whatever host it is started on, and reports each case as one machine-readable line. This
//! is what runs inside the emulated Intel host (scripts/intel-host.sh puts it on the image).
//!
//! ```text
//! hvkvm-suites run [--host NAME] [--exact] [--skip PATTERN]... [FILTER]...
//! hvkvm-suites list [--host NAME]
//! hvkvm-suites guest-dir
//! hvkvm-suites sessions
//! ```
//!
//! `--host` (default `local`) names the host in the reports and decides which cases apply:
//! `intel-host` adds the cases that need it; `intel-host-2cpu` runs only the cases that need
//! its two CPUs. Filters select by substring of `HOST/suite/case`
//! (whole names with `--exact`), as `cargo test` filters do. `run` prints
//! `HVKVM-CASE-START {json}` before and `HVKVM-CASE {json}` after each case (guest_tests::report)
//! and exits 1 if any case failed. `guest-dir` prints where this build's payloads are.
//! `sessions` prints one line per emulated Intel host: its name, then the scripts/intel-host.sh
//! options that boot it (scripts/test.sh starts a session of each).

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use guest_tests::harness::{record_panic_locations, run_case, selected, LOCAL};
use guest_tests::intel_host::EMULATED_HOSTS;
use guest_tests::report::{result_line, start_line, CaseReport};
use guest_tests::suites::{self, Case};

const USAGE: &str = "usage: hvkvm-suites run [--host local|intel-host|intel-host-2cpu] [--exact] \
                     [--skip PATTERN]... [FILTER]...\n       hvkvm-suites list [--host NAME]\n       \
                     hvkvm-suites guest-dir\n       hvkvm-suites sessions";

struct Selection {
    host: String,
    filters: Vec<String>,
    skips: Vec<String>,
    exact: bool,
}

fn parse(args: &[String]) -> Result<Selection, String> {
    let mut sel = Selection {
        host: LOCAL.to_string(),
        filters: Vec::new(),
        skips: Vec::new(),
        exact: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--host" => sel.host = it.next().ok_or("--host needs a name")?.clone(),
            "--skip" => sel
                .skips
                .push(it.next().ok_or("--skip needs a pattern")?.clone()),
            "--exact" => sel.exact = true,
            a if a.starts_with("--") => return Err(format!("unknown option {a}")),
            _ => sel.filters.push(arg.clone()),
        }
    }
    Ok(sel)
}

/// The cases for `sel.host` that its filters select, with their host-qualified names.
fn cases(sel: &Selection) -> Vec<(String, Case)> {
    suites::all()
        .into_iter()
        .filter(|c| c.hosts.include(&sel.host))
        .map(|c| (format!("{}/{}", sel.host, c.name), c))
        .filter(|(full, _)| selected(full, &sel.filters, &sel.skips, sel.exact))
        .collect()
}

fn run(sel: &Selection) -> ExitCode {
    record_panic_locations();
    let (mut passed, mut failed) = (0, 0);
    for (_, case) in cases(sel) {
        let name = case.name.clone();
        println!("{}", start_line(&name));
        let _ = std::io::stdout().flush();
        let start = Instant::now();
        let outcome = run_case(case.run);
        let report = CaseReport {
            name,
            host: sel.host.clone(),
            passed: outcome.is_ok(),
            millis: start.elapsed().as_millis() as u64,
            message: outcome.err(),
        };
        // Whatever the case printed (a panic message on stderr) goes out before its result.
        let _ = std::io::stderr().flush();
        println!("{}", result_line(&report));
        let _ = std::io::stdout().flush();
        if report.passed {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("hvkvm-suites: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let sel = match parse(rest) {
        Ok(sel) => sel,
        Err(e) => {
            eprintln!("hvkvm-suites: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command.as_str() {
        "run" => run(&sel),
        "list" => {
            for (full, _) in cases(&sel) {
                println!("{full}");
            }
            ExitCode::SUCCESS
        }
        "guest-dir" => {
            println!("{}", guest_tests::GUEST_DIR);
            ExitCode::SUCCESS
        }
        "sessions" => {
            for host in EMULATED_HOSTS {
                println!("{} {}", host.name, host.script_options().join(" "));
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
