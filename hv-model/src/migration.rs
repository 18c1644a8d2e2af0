//! What prevents live migration of a guest with a given set of enlightenments
//! (reference §7.6; QEMU's migration blockers in target/i386/kvm/kvm.c).
//!
//! Layer 9: reads [`crate::decision`] data; [`crate::resolve`] calls it.

use crate::config::{Coresharing, HvConfig};
use crate::decision::{MigrationBlocker, Slot};
use crate::flags::Enlightenment as E;
use crate::host::HostCapabilities;
use crate::tlfs::{self, Reg};

/// The blockers for the flags that are on.
pub(crate) fn blockers(
    slots: &[Slot],
    wanted: &HvConfig,
    tsc_frequency_hz: Option<u64>,
    host: &HostCapabilities,
    host_checked: bool,
) -> Vec<MigrationBlocker> {
    let on = |f: E| slots[f as usize].on;
    let mut out = Vec::new();
    let mut block = |flag, reason: &str| {
        out.push(MigrationBlocker {
            flag,
            reason: reason.into(),
        })
    };
    if on(E::Passthrough) {
        block(
            E::Passthrough,
            "hv-passthrough follows this host's kernel and the destination may offer a \
             different set; use the explicit list instead (`hvkvm hv export` prints it)",
        );
    }
    if on(E::NoNonarchCoresharing) && wanted.coresharing() == Some(Coresharing::Auto) {
        block(
            E::NoNonarchCoresharing,
            "hv-no-nonarch-coresharing=auto follows this host's SMT state, which the \
             destination may not share; use =on (vCPUs pinned, SMT off) or =off",
        );
    }
    if on(E::Reenlightenment) && tsc_frequency_hz.is_none() {
        block(
            E::Reenlightenment,
            "KVM does not emulate the TSC after migration, so a guest using \
             reenlightenment needs a fixed TSC frequency: set tsc-frequency=HZ (the same on \
             every host, or hosts with TSC scaling)",
        );
    }
    if host_checked && !host.nested_state {
        if let Some(flag) = [E::Evmcs, E::EmsrBitmap, E::TlbflushDirect]
            .into_iter()
            .find(|f| on(*f))
        {
            block(
                flag,
                "nested state (including the eVMCS pointer) cannot be saved: the host lacks \
                 KVM_CAP_NESTED_STATE",
            );
        }
    }
    out
}

/// Whether the host reports that SMT is impossible (what `coresharing=auto` follows; KVM sets
/// `04.EAX[18]` exactly then).
pub(crate) fn host_says_no_smt(host: &HostCapabilities) -> bool {
    host.smt_possible == Some(false)
        || host
            .hv_leaf(tlfs::HV_RECOMMENDATIONS, Reg::Eax)
            .unwrap_or(0)
            & tlfs::HV_NO_NONARCH_CORESHARING
            != 0
}
