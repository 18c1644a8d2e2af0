//! Nested VMX and the enlightened VMCS: the L1 mini-hypervisor payload's conformance rows
//! (guest_tests::nested), each in both modes: `vmcs/<row>` (classic VMCS) and `evmcs/<row>`.
//!
//! Every row needs a host that can nest (Intel VMX, kvm_intel nested=1, and for the eVMCS
//! in-kernel Hyper-V). Elsewhere every row is reported ignored with `SKIP: <reason>` (never as
//! passed), unless HVKVM_REQUIRE_NESTED=1 makes that a failure (inside the emulated Intel host).

use std::process::ExitCode;

use guest_tests::nested::{self, L1Mode};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for mode in [L1Mode::Vmcs, L1Mode::Evmcs] {
        let missing = nested::unavailable(mode);
        if let Some(reason) = &missing {
            eprintln!("SKIP ({}): {reason}", mode.key());
        }
        for &(name, row) in nested::ROWS {
            let name = format!("{}/{name}", mode.key());
            trials.push(match missing.clone() {
                None => Trial::test(name, move || {
                    std::panic::catch_unwind(|| row(mode)).map_err(|p| Failed::from(panic_text(&p)))
                }),
                Some(reason) if nested::required() => Trial::test(name, move || {
                    Err(format!("{reason} ({}=1)", nested::REQUIRE_ENV).into())
                }),
                Some(reason) => Trial::ignorable_test(name, move || {
                    Ok(Completion::ignored_with(format!("SKIP: {reason}")))
                }),
            });
        }
    }
    libtest_mimic::run(&args, trials).exit_code()
}

fn panic_text(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}
