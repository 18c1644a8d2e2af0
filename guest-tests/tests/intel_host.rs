//! Every case of guest_tests::suites, run inside the emulated Intel VMX host (Bochs with
//! `kvm-intel nested=1`, scripts/intel-host.sh), all in one boot, each reported as its own test
//! `intel-host/<suite>/<case>`; the `vmx` suite runs only there.
//!
//! Without Bochs and its companions this prints `SKIP: <reason>` and reports every case
//! ignored, unless HVKVM_REQUIRE_INTEL_HOST=1 (scripts/test.sh), where that is a failure. With
//! HVKVM_INTEL_HOST_SESSION=DIR it follows the session scripts/test.sh started in DIR instead
//! of booting its own. Cases run in table order, one at a time, since they share one boot.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use guest_tests::intel_host::{self, Session, HOST, SESSION_ENV};
use guest_tests::suites;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    let names: Vec<String> = suites::all().into_iter().map(|c| c.name).collect();
    let full = |name: &str| format!("{HOST}/{name}");

    // The cases this invocation selects, by libtest's own rules, so the session runs only those.
    let selected: Vec<&String> = names
        .iter()
        .filter(|n| {
            let probe = Trial::test(full(n), || Ok(()));
            !args.is_filtered_out(&probe) && !args.is_ignored(&probe)
        })
        .collect();
    if args.list || selected.is_empty() {
        let trials = names.iter().map(|n| Trial::test(full(n), || Ok(())));
        return libtest_mimic::run(&args, trials.collect()).exit_code();
    }

    if let Some(reason) = intel_host::unavailable() {
        let required = intel_host::required();
        if required {
            eprintln!("error: {reason}; HVKVM_REQUIRE_INTEL_HOST=1 makes that a failure");
        } else {
            eprintln!("SKIP: {reason}");
        }
        let trials = names.iter().map(|n| {
            let reason = reason.clone();
            if required {
                Trial::test(full(n), move || {
                    Err(Failed::from(format!(
                        "{HOST}: {reason} (HVKVM_REQUIRE_INTEL_HOST=1 makes this a failure)"
                    )))
                })
            } else {
                Trial::ignorable_test(full(n), move || {
                    Ok(Completion::ignored_with(format!("SKIP: {reason}")))
                })
            }
        });
        return libtest_mimic::run(&args, trials.collect()).exit_code();
    }

    let session = match std::env::var_os(SESSION_ENV) {
        Some(dir) => {
            eprintln!(
                "{HOST}: following the session in {}",
                PathBuf::from(&dir).display()
            );
            Session::follow(&PathBuf::from(dir))
        }
        None => {
            // Only the selected cases, named exactly, unless everything is selected.
            let mut runner_args = Vec::new();
            if args.filter.is_some() || !args.skip.is_empty() {
                runner_args.push("--exact".to_string());
                runner_args.extend(selected.iter().map(|n| full(n)));
            }
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("intel-host-session");
            eprintln!(
                "{HOST}: booting the emulated Intel host (about a minute before the first \
                 case); its console is {}",
                dir.join("serial.log").display()
            );
            Session::start(&dir, &runner_args)
                .unwrap_or_else(|e| panic!("cannot start scripts/intel-host.sh: {e}"))
        }
    };
    session.show_boot_progress(selected.len());
    let session = Arc::new(session);
    let trials = names.iter().map(|n| {
        let (session, name) = (session.clone(), n.clone());
        Trial::test(full(n), move || {
            session.wait_for(&name).map_err(Failed::from)
        })
    });
    // One boot runs the cases in order: waiting for them in the same order shows each result
    // as soon as it is known.
    args.test_threads = Some(1);
    let conclusion = libtest_mimic::run(&args, trials.collect());
    eprintln!("{}", session.timings());
    conclusion.exit_code()
}
