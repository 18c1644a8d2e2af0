//! Every case of guest_tests::suites, run inside the emulated Intel VMX host (Bochs with
//! `kvm-intel nested=1`, scripts/intel-host.sh), each reported as its own test
//! `<host>/<suite>/<case>`. Each emulated host (`intel-host` with one CPU, `intel-host-2cpu`
//! with two for the 2-vCPU L1 guest) runs its cases in one boot; the `vmx` suite runs only
//! there.
//!
//! Without Bochs and its companions this prints `SKIP: <reason>` and reports every case
//! ignored, unless HVKVM_REQUIRE_INTEL_HOST=1 (scripts/test.sh), where that is a failure. With
//! HVKVM_INTEL_HOST_SESSION=DIR it follows the sessions scripts/test.sh started in DIR/<host>
//! instead of booting its own. Cases run in table order, one at a time, since they share a
//! boot.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use guest_tests::intel_host::{self, EmulatedHost, Session, EMULATED_HOSTS, SESSION_ENV};
use guest_tests::suites;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// A case as this binary reports it: its host and its name within the suites.
struct HostCase {
    host: EmulatedHost,
    name: String,
}

impl HostCase {
    fn full(&self) -> String {
        format!("{}/{}", self.host.name, self.name)
    }
}

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    let cases: Vec<HostCase> = EMULATED_HOSTS
        .into_iter()
        .flat_map(|host| {
            suites::all()
                .into_iter()
                .filter(move |c| c.hosts.include(host.name))
                .map(move |c| HostCase { host, name: c.name })
        })
        .collect();

    // The cases this invocation selects, by libtest's own rules, so the sessions run only those.
    let selected: Vec<&HostCase> = cases
        .iter()
        .filter(|c| {
            let probe = Trial::test(c.full(), || Ok(()));
            !args.is_filtered_out(&probe) && !args.is_ignored(&probe)
        })
        .collect();
    if args.list || selected.is_empty() {
        let trials = cases.iter().map(|c| Trial::test(c.full(), || Ok(())));
        return libtest_mimic::run(&args, trials.collect()).exit_code();
    }

    if let Some(reason) = intel_host::unavailable() {
        return skip_or_fail_all(&args, &cases, &reason);
    }

    // One session per host that has selected cases; started together, they run one after the
    // other (each waits for the host-cores lock).
    let following = std::env::var_os(SESSION_ENV).map(PathBuf::from);
    let sessions: Vec<Arc<Session>> = EMULATED_HOSTS
        .into_iter()
        .filter(|host| selected.iter().any(|c| c.host == *host))
        .map(|host| {
            let session = match &following {
                Some(dir) => {
                    let dir = dir.join(host.name);
                    eprintln!("{}: following the session in {}", host.name, dir.display());
                    Session::follow(&dir, host)
                }
                None => start_session(&args, host, &selected),
            };
            Arc::new(session)
        })
        .collect();
    let total = selected.len();
    if let Some(first) = sessions.first() {
        first.show_boot_progress(total);
    }

    let trials = cases.iter().map(|c| {
        let name = c.name.clone();
        match sessions.iter().find(|s| s.host() == c.host) {
            Some(session) => {
                let session = session.clone();
                Trial::test(c.full(), move || {
                    session.wait_for(&name).map_err(Failed::from)
                })
            }
            // Filtered out: libtest reports it so and never runs it.
            None => Trial::test(c.full(), || Ok(())),
        }
    });
    // One boot runs a host's cases in order, and the hosts run in order: waiting for them in
    // the same order shows each result as soon as it is known.
    args.test_threads = Some(1);
    let conclusion = libtest_mimic::run(&args, trials.collect());
    for session in &sessions {
        eprintln!("{}", session.timings());
    }
    conclusion.exit_code()
}

/// Boots `host` for the selected cases of it: only those, named exactly, unless everything
/// is selected.
fn start_session(args: &Arguments, host: EmulatedHost, selected: &[&HostCase]) -> Session {
    let mut runner_args = Vec::new();
    if args.filter.is_some() || !args.skip.is_empty() {
        runner_args.push("--exact".to_string());
        runner_args.extend(selected.iter().filter(|c| c.host == host).map(|c| c.full()));
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("intel-host-sessions")
        .join(host.name);
    eprintln!(
        "{}: booting the emulated Intel host ({} CPU(s); about a minute before the first case, \
         after any session before it); its console is {}",
        host.name,
        host.cpus,
        dir.join("serial.log").display()
    );
    Session::start(&dir, host, &runner_args)
        .unwrap_or_else(|e| panic!("cannot start scripts/intel-host.sh: {e}"))
}

/// Without the emulated host: every case a SKIP with `reason`, or a failure where
/// HVKVM_REQUIRE_INTEL_HOST=1.
fn skip_or_fail_all(args: &Arguments, cases: &[HostCase], reason: &str) -> ExitCode {
    let required = intel_host::required();
    if required {
        eprintln!("error: {reason}; HVKVM_REQUIRE_INTEL_HOST=1 makes that a failure");
    } else {
        eprintln!("SKIP: {reason}");
    }
    let trials = cases.iter().map(|c| {
        let (reason, host) = (reason.to_string(), c.host.name);
        if required {
            Trial::test(c.full(), move || {
                Err(Failed::from(format!(
                    "{host}: {reason} (HVKVM_REQUIRE_INTEL_HOST=1 makes this a failure)"
                )))
            })
        } else {
            Trial::ignorable_test(c.full(), move || {
                Ok(Completion::ignored_with(format!("SKIP: {reason}")))
            })
        }
    });
    libtest_mimic::run(args, trials.collect()).exit_code()
}
