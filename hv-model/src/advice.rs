//! Advice from QEMU's hyperv.rst that does not stop a guest: soft gates for profile flags and
//! warnings for explicit choices.
//!
//! Layer 9: reads [`crate::decision`] data; [`crate::resolve`] calls it.

use crate::backend::Backend;
use crate::config::{Coresharing, HvConfig};
use crate::decision::{GuestSettings, Origin, Slot};
use crate::error::and_list;
use crate::flags::{Enlightenment as E, Enlightenment, FlagKind};
use crate::host::{CpuVendor, HostCapabilities};
use crate::options::{HostChecks, ResolveOptions};
use crate::profiles::Profile;
use crate::request::HvRequest;

/// Turns off profile/default flags that QEMU advises against on this host.
pub(crate) fn gate_soft_flags(slots: &mut [Slot], host: &HostCapabilities, host_checked: bool) {
    let avic = &mut slots[E::Avic as usize];
    if host_checked && avic.on && avic.origin != Origin::Explicit && host.apicv == Some(false) {
        avic.on = false;
        avic.reason += ", but APICv/AVIC is off on this host and QEMU advises hv-avic only with it";
    }
}

/// Warnings for the final set.
pub(crate) fn warnings(
    slots: &[Slot],
    wanted: &HvConfig,
    guest: &GuestSettings,
    host: &HostCapabilities,
    backend: Backend,
    request: &HvRequest,
    opts: &ResolveOptions,
) -> Vec<String> {
    let on = |f: E| slots[f as usize].on;
    let checked = opts.host_checks == HostChecks::Enforce;
    let hyperv = Enlightenment::all()
        .zip(slots)
        .any(|(f, s)| s.on && f.def().enables_hyperv);
    let mut w = Vec::new();
    if !checked {
        w.push(
            "host not checked: pass --host FILE (from `hvkvm probe --json`) to check each flag \
                against the host"
                .to_string(),
        );
    }
    for flag in Enlightenment::all().filter(|f| on(*f)) {
        let missing: Vec<Enlightenment> = flag
            .def()
            .recommends
            .iter()
            .copied()
            .filter(|d| !on(*d))
            .collect();
        if missing.is_empty() {
            continue;
        }
        if missing == [E::Evmcs] {
            match (checked, host.cpu_vendor) {
                (true, CpuVendor::Intel) => w.push(format!(
                    "on Intel, {flag} only takes effect together with hv-evmcs"
                )),
                (false, _) => w.push(format!(
                    "on Intel hosts, {flag} only takes effect together with hv-evmcs"
                )),
                _ => {}
            }
            continue;
        }
        w.push(format!(
            "{flag}: QEMU's documentation recommends also {}",
            and_list(&missing)
        ));
    }
    let mut say = |cond: bool, text: &str| {
        if cond {
            w.push(text.to_string());
        }
    };
    say(
        on(E::Syndbg),
        "hv-syndbg needs a VMBus bridge, which hvkvm does not provide yet; Windows may not boot \
         (this is why hv-passthrough never enables it)",
    );
    say(
        on(E::Crash),
        "hv-crash: a Windows bugcheck makes KVM exit with SYSTEM_EVENT_CRASH; the VMM must log \
         P0-P4 and let the guest continue, or Windows cannot write its crash dump",
    );
    say(
        !on(E::Kvm)
            && Enlightenment::all().any(|f| {
                f.kind() == FlagKind::KvmParavirt
                    && f != E::Kvm
                    && slots[f as usize].origin == Origin::Explicit
                    && slots[f as usize].requested
            }),
        "kvm=off hides KVM's leaves, so the KVM paravirt features requested have no effect",
    );
    say(
        on(E::Reset),
        "hv-reset: modern Hyper-V does not expose it; QEMU advises leaving it off",
    );
    say(
        on(E::Evmcs),
        "hv-evmcs hides posted interrupts, APICv, PML, VMFUNC and TSC scaling from L1; measure \
         the nested workload with and without it",
    );
    say(
        !hyperv && wanted.vendor_id().is_some(),
        "hv-vendor-id alone does not turn Hyper-V on (QEMU: it is not an enlightenment)",
    );
    say(
        on(E::NoNonarchCoresharing) && wanted.coresharing() == Some(Coresharing::On),
        "hv-no-nonarch-coresharing=on is only safe with pinned vCPUs and a topology that reports \
         SMT siblings correctly",
    );
    say(
        on(E::NoNonarchCoresharing) && wanted.coresharing() == Some(Coresharing::Auto) && !checked,
        "hv-no-nonarch-coresharing=auto cannot be decided without a host; the bit stays clear",
    );
    say(
        checked && on(E::Avic) && host.apicv == Some(false),
        "hv-avic without APICv/AVIC on the host may slow the guest down (QEMU docs)",
    );
    if let (true, true, Some(hz), Some(khz)) = (
        checked,
        on(E::Reenlightenment),
        guest.tsc_frequency_hz,
        host.tsc_khz,
    ) {
        say(
            hz / 1000 != u64::from(khz) && !host.tsc_control,
            "tsc-frequency differs from this host's TSC and the host has no TSC scaling: \
             KVM_SET_TSC_KHZ will fail",
        );
    }
    say(
        backend == Backend::Kernel
            && hyperv
            && slots[E::EnforceCpuid as usize].origin == Origin::NotRequested,
        "without hv-enforce-cpuid KVM lets the guest use every enlightenment it implements, not \
         only those in CPUID; add hv-enforce-cpuid",
    );
    say(
        request.profile == Some(Profile::Host),
        "profile host lists what this host can do; for several hosts use `hvkvm hv baseline`",
    );
    say(
        opts.require_migration
            && Enlightenment::all().any(|f| {
                f.kind() == FlagKind::KvmParavirt
                    && f != E::Kvm
                    && slots[f as usize].origin == Origin::Default
            }),
        "KVM paravirt features default to what this host offers; list them explicitly (as \
         the migratable profile does) so that every host offers the same",
    );
    w
}
