//! The nested rows (`crate::nested::ROWS`) in both modes, and an unmodified Debian kernel as an
//! L1 hypervisor on the enlightened VMCS: Intel host only (elsewhere tests/nested_evmcs.rs
//! reports them as skipped with the reason).

use super::Case;
use crate::l1::L1;
use crate::nested::{self, L1Mode};

/// The `nested` suite (Intel host only).
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for mode in [L1Mode::Vmcs, L1Mode::Evmcs] {
        for &(name, row) in nested::ROWS {
            let name = format!("nested/{}/{name}", mode.key());
            cases.push(Case::new(name, move || row(mode)).intel_host_only());
        }
    }
    cases.push(Case::new("nested/linux_l1_uses_the_enlightened_vmcs", linux_l1).intel_host_only());
    cases
}

fn linux_l1() {
    let mut l1 = L1::default();
    for arg in nested::LINUX_L1_HVKVM_ARGS {
        l1 = l1.hvkvm_arg(arg);
    }
    let run = l1.run(nested::LINUX_L1_COMMAND);
    nested::check_linux_l1_evmcs(run.status, &run.console);
}
