//! The Hyper-V conformance tables (`hyperv_user`, `hyperv_synic`, `hyperv_stimer`,
//! `hyperv_ipi_flush`) again, on the kernel backend (KVM's
//! in-kernel Hyper-V), where only the emulated Intel host has it: every case runs unchanged
//! inside [`crate::with_backend`], named `hyperv_kernel/…`. The matrix rows are KVM's own
//! selftest (reference §4), so the kernel backend is the reference the user backend is held
//! to; where the two answer differently the case says which is right, and
//! docs/enlightenments.md ("Where the backends differ") lists it.

use hvkvm::hyperv::BackendChoice;

use super::{hyperv_ipi_flush, hyperv_stimer, hyperv_synic, hyperv_user, Case};

/// The user-backend cases on the kernel backend (Intel host only), as
/// `hyperv_kernel/<suite>/<case>`.
pub fn cases() -> Vec<Case> {
    let mut cases = hyperv_user::cases();
    cases.extend(hyperv_synic::cases());
    cases.extend(hyperv_stimer::cases());
    cases.extend(hyperv_ipi_flush::cases());
    cases
        .into_iter()
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
