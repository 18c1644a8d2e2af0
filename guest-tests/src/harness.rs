//! Running cases: a case's panic becomes its failure message, and [`run_local`] gives every
//! case of a table its own test line (`local/<suite>/<case>`) on this machine's KVM.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::Once;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use crate::suites::{Case, Hosts};
use crate::{kvm_required, kvm_unavailable};

/// The host name of this machine's own KVM in test names and reports.
pub const LOCAL: &str = "local";

thread_local! {
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Makes [`run_case`] add each panic's file:line to the message (the panic payload alone has
/// no location). The previous hook still runs, so panics are printed as usual.
pub fn record_panic_locations() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if let Some(at) = info.location() {
                PANIC_AT.with(|p| *p.borrow_mut() = Some(at.to_string()));
            }
            previous(info);
        }));
    });
}

/// Runs a case body; `Err` carries its panic message (and location, see
/// [`record_panic_locations`]).
pub fn run_case(body: Box<dyn FnOnce() + Send>) -> Result<(), String> {
    PANIC_AT.with(|p| p.borrow_mut().take());
    panic::catch_unwind(AssertUnwindSafe(body)).map_err(|payload| {
        let message = panic_message(payload.as_ref());
        match PANIC_AT.with(|p| p.borrow_mut().take()) {
            Some(at) => format!("{message} (at {at})"),
            None => message,
        }
    })
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panicked with a non-string payload".into()
    }
}

/// Whether `name` is selected by test-name filters, with libtest's meaning: any of `filters`
/// (all when empty) matches, none of `skips` does; `exact` compares whole names instead of
/// substrings.
pub fn selected(name: &str, filters: &[String], skips: &[String], exact: bool) -> bool {
    let matches = |pattern: &String| {
        if exact {
            name == pattern
        } else {
            name.contains(pattern.as_str())
        }
    };
    (filters.is_empty() || filters.iter().any(matches)) && !skips.iter().any(matches)
}

/// The `main` of a local test target: runs `cases` (those for any host) on this machine's KVM,
/// one test line each. Without /dev/kvm every case is reported ignored with the reason
/// (`SKIP: …`), or failed under `HVKVM_REQUIRE_KVM=1`.
pub fn run_local(cases: Vec<Case>) -> ExitCode {
    let args = Arguments::from_args();
    let missing = kvm_unavailable();
    let required = kvm_required();
    if let Some(reason) = &missing {
        if required {
            eprintln!("error: {reason}, and HVKVM_REQUIRE_KVM=1 makes that a failure");
        } else {
            eprintln!("SKIP: {reason}");
        }
    }
    record_panic_locations();
    let trials = cases
        .into_iter()
        .filter(|case| case.hosts == Hosts::Any)
        .map(|case| {
            let name = format!("{LOCAL}/{}", case.name);
            match missing.clone() {
                None => Trial::test(name, move || run_case(case.run).map_err(Failed::from)),
                Some(reason) if required => Trial::test(name, move || {
                    Err(format!("{reason} (HVKVM_REQUIRE_KVM=1)").into())
                }),
                Some(reason) => Trial::ignorable_test(name, move || {
                    Ok(Completion::ignored_with(format!("SKIP: {reason}")))
                }),
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_follow_libtest() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let name = "intel-host/foundation/serial_output_reaches_the_host";
        assert!(selected(name, &[], &[], false));
        assert!(selected(name, &s(&["serial"]), &[], false));
        assert!(!selected(name, &s(&["serial"]), &[], true));
        assert!(selected(name, &s(&["x", name]), &[], true));
        assert!(!selected(name, &[], &s(&["intel-host/"]), false));
    }

    #[test]
    fn a_panic_becomes_the_failure_message_with_its_location() {
        record_panic_locations();
        let err = run_case(Box::new(|| panic!("row 3: expected #GP"))).unwrap_err();
        assert!(err.starts_with("row 3: expected #GP (at "), "{err}");
        assert!(err.contains("harness.rs"), "{err}");
        assert_eq!(run_case(Box::new(|| {})), Ok(()));
    }
}
