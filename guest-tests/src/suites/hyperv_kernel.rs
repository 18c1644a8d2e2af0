//! The Hyper-V conformance tables (`hyperv_user`, `hyperv_synic`, `hyperv_stimer`,
//! `hyperv_ipi_flush`) again, on the kernel backend (KVM's
//! in-kernel Hyper-V), where only the emulated Intel host has it: every case runs unchanged
//! inside [`crate::with_backend`], named `hyperv_kernel/…`. The matrix rows are KVM's own
//! selftest (reference §4), so the kernel backend is the reference the user backend is held
//! to; where the two answer differently the case says which is right, and
//! docs/enlightenments.md ("Where the backends differ") lists it.

use hvkvm::hyperv::BackendChoice;

use super::{hyperv_ipi_flush, hyperv_stimer, hyperv_synic, hyperv_user, Case};

/// Cases the kernel backend does not run, and why (docs/enlightenments.md lists them too).
pub const USER_BACKEND_ONLY: &[(&str, &str)] = &[(
    "hyperv_synic/messages_and_events_reach_a_registered_connection_and_come_back",
    "hvkvm's connections (HvConnection) are served by the user backend only: on the kernel \
     backend HvPostMessage and HvSignalEvent reach hvkvm, which registers none there and \
     answers INVALID_CONNECTION_ID (posting into a guest's SynIC under KVM needs the SINT \
     routes, KVM_IRQ_ROUTING_HV_SINT, which hvkvm does not set up yet)",
)];

/// The user-backend cases on the kernel backend (Intel host only), as
/// `hyperv_kernel/<suite>/<case>`.
pub fn cases() -> Vec<Case> {
    let mut cases = hyperv_user::cases();
    cases.extend(hyperv_synic::cases());
    cases.extend(hyperv_stimer::cases());
    cases.extend(hyperv_ipi_flush::cases());
    cases.push(Case::new(
        "snapshots/timer_ipi_and_flush_suites_with_a_restore_at_every_sync",
        timer_ipi_and_flush_suites_with_a_restore_at_every_sync,
    ));
    cases
        .into_iter()
        .filter(|case| !USER_BACKEND_ONLY.iter().any(|(name, _)| case.name == *name))
        .map(|case| {
            let name = format!("hyperv_kernel/{}", case.name);
            let run = case.run;
            Case::new(name, move || {
                crate::with_backend(BackendChoice::Kernel, run)
            })
            .intel_host_only()
        })
        .collect()
}

/// Snapshots of a kernel-backend VM: every synthetic MSR KVM emulates (SynIC, timers, the TSC
/// page, VP assist) goes through `KVM_GET_MSRS`/`KVM_SET_MSRS` with the rest of the vCPU, so
/// the timer and IPI/flush suites must pass with a snapshot and restore at every SYNC.
fn timer_ipi_and_flush_suites_with_a_restore_at_every_sync() {
    let suites = hyperv_stimer::cases()
        .into_iter()
        .chain(hyperv_ipi_flush::cases());
    for case in suites {
        eprintln!("{} with a restore at every SYNC", case.name);
        crate::snapshot_mode::at_every_sync(case.run);
    }
}
