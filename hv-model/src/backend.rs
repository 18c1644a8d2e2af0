//! Who implements the Hyper-V interface for the guest, and whether a flag is available there.
//!
//! * [`Backend::Kernel`]: KVM's in-kernel Hyper-V emulation (`CONFIG_KVM_HYPERV`). What it can
//!   do comes from `KVM_GET_SUPPORTED_HV_CPUID`, or from the `KVM_CAP_HYPERV_*` answers on
//!   kernels without it (QEMU's legacy path).
//! * [`Backend::User`]: hvkvm emulates the Hyper-V interface in user space. It needs
//!   `KVM_CAP_X86_USER_SPACE_MSR` and, when the kernel has its own Hyper-V emulation, an MSR
//!   filter so that KVM forwards the synthetic MSRs instead of handling them itself.
//!   [`USER_BACKEND_IMPLEMENTS`] is the single list of what it implements.
//!
//! Layer 3: depends on [`crate::flags`], [`crate::host`], [`crate::options`], [`crate::tlfs`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::flags::{Enlightenment, FlagDef, FlagKind};
use crate::host::{CpuVendor, HostCapabilities};
use crate::options::{HostChecks, Irqchip, ResolveOptions};
use crate::tlfs;

/// Which implementation serves the guest's Hyper-V interface.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// KVM's in-kernel Hyper-V emulation.
    #[default]
    Kernel,
    /// hvkvm's user-space emulation.
    User,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Kernel => "kernel",
            Backend::User => "user",
        })
    }
}

/// What hvkvm's user backend implements (src/hyperv/user in hvkvm): the partition and VP MSRs
/// of these enlightenments, the hypercall page, HvNotifyLongSpinWait, the SynIC (message and
/// event-flag pages, EOM, HvPostMessage/HvSignalEvent to connections hvkvm registers), the
/// synthetic timers in message and direct mode (one timer thread per VM), the synthetic
/// cluster IPI and TLB-flush hypercalls with sparse VP sets and the fast and XMM-fast forms
/// (a flush always flushes every translation of its targets, so the extended GVA range
/// format of `hv-tlbflush-ext` needs nothing more), plus the pure CPUID values (`hv-relaxed`
/// and `no-nonarch-coresharing` are hints, the identification values are data, and
/// `hv-enforce-cpuid` is inherent: the user backend serves only what CPUID exposes).
///
/// `hv-avic` (`04.EAX[9]`, "deprecate AutoEOI") is a hint the user backend gives whenever the
/// SynIC is on: it cannot honour AutoEOI. AutoEOI means the LAPIC acknowledges a SINT's
/// interrupt by itself when it delivers it; KVM implements that inside its in-kernel LAPIC
/// (`kvm_hv_synic_auto_eoi_set`), which user space cannot hook: an interrupt sent with
/// `KVM_SIGNAL_MSI` stays in service until the guest writes EOI, and user space never learns
/// when the guest accepted it. Everything else is refused with the user backend until it is
/// implemented.
pub const USER_BACKEND_IMPLEMENTS: &[Enlightenment] = &[
    Enlightenment::Relaxed,
    Enlightenment::Spinlocks,
    Enlightenment::Vpindex,
    Enlightenment::Runtime,
    Enlightenment::Crash,
    Enlightenment::Time,
    Enlightenment::Synic,
    Enlightenment::Stimer,
    Enlightenment::StimerDirect,
    Enlightenment::Reset,
    Enlightenment::Frequencies,
    Enlightenment::Reenlightenment,
    Enlightenment::Tlbflush,
    Enlightenment::TlbflushExt,
    Enlightenment::Ipi,
    Enlightenment::XmmInput,
    Enlightenment::Avic,
    Enlightenment::NoNonarchCoresharing,
    Enlightenment::EnforceCpuid,
    Enlightenment::VendorId,
    Enlightenment::VersionIdBuild,
    Enlightenment::VersionIdMajor,
    Enlightenment::VersionIdMinor,
    Enlightenment::VersionIdSpack,
    Enlightenment::VersionIdSbranch,
    Enlightenment::VersionIdSnumber,
];

/// Whether the user backend implements the hypercall interface (GUEST_OS_ID and HYPERCALL
/// MSRs and the hypercall page, advertised by `03.EAX[5]`).
pub const USER_BACKEND_HYPERCALL_INTERFACE: bool = true;

impl Backend {
    /// Whether this backend serves the hypercall MSRs (`03.EAX[5]`, always set by QEMU).
    pub fn hypercall_interface(self) -> bool {
        match self {
            Backend::Kernel => true,
            Backend::User => USER_BACKEND_HYPERCALL_INTERFACE,
        }
    }
}

/// Whether `flag` can be offered: `Ok(note)` says what proves it, `Err(reason)` why not and
/// what to do. KVM paravirt features are always KVM's, whatever the backend.
pub(crate) fn availability(
    flag: Enlightenment,
    host: &HostCapabilities,
    backend: Backend,
    opts: &ResolveOptions,
) -> Result<String, String> {
    config_constraints(flag, opts)?;
    let checked = opts.host_checks == HostChecks::Enforce;
    if flag.kind() == FlagKind::KvmParavirt {
        return if checked {
            kvm_paravirt(flag, host)
        } else {
            Ok("host not checked".into())
        };
    }
    match backend {
        Backend::User => user(flag, host, checked),
        Backend::Kernel if checked => kernel(flag, host),
        Backend::Kernel => Ok("host not checked".into()),
    }
}

/// Constraints from the VM configuration rather than the host.
fn config_constraints(flag: Enlightenment, opts: &ResolveOptions) -> Result<(), String> {
    use Enlightenment as E;
    match flag {
        E::StimerDirect | E::Ipi if opts.irqchip == Irqchip::Userspace => Err(
            "needs the in-kernel LAPIC, but this VM uses a user-space irqchip (KVM only offers \
             it with an in-kernel LAPIC)"
                .into(),
        ),
        E::KvmMsiExtDestId if opts.irqchip != Irqchip::Split => Err(
            "needs a split irqchip: the extended destination ID goes through the user-space \
             IOAPIC (QEMU: kernel-irqchip=split)"
                .into(),
        ),
        _ => Ok(()),
    }
}

fn user(flag: Enlightenment, host: &HostCapabilities, checked: bool) -> Result<String, String> {
    if flag == Enlightenment::Vapic {
        // The EOI/ICR/TPR MSRs must act exactly like the APIC accesses they alias, on KVM's
        // in-kernel LAPIC, which user space cannot drive (no EOI from user space in xAPIC mode).
        return Err(
            "the user backend cannot make hv-vapic's EOI/ICR/TPR MSRs act on KVM's \
                    in-kernel LAPIC exactly like APIC accesses, so it does not offer hv-vapic"
                .into(),
        );
    }
    if !USER_BACKEND_IMPLEMENTS.contains(&flag) {
        return Err(format!("the user backend does not implement {flag} yet"));
    }
    let note = match flag {
        Enlightenment::Avic => {
            "a hint the user backend always wants with hv-synic: it cannot honour AutoEOI, \
             which KVM implements inside its in-kernel LAPIC where user space cannot hook it"
        }
        Enlightenment::Tlbflush | Enlightenment::TlbflushExt => {
            "implemented by the user backend: each target VP leaves KVM_RUN and flushes its \
             whole TLB (an EFER write that resets KVM's MMU) before it runs guest code again"
        }
        _ => "implemented by the user backend",
    };
    if !checked {
        return Ok(format!("{note} (host not checked)"));
    }
    if !host.user_space_msr {
        return Err(
            "the user backend needs KVM_CAP_X86_USER_SPACE_MSR, which this host lacks".into(),
        );
    }
    if host.kernel_hyperv() && !host.msr_filter {
        return Err(
            "the user backend needs KVM_CAP_X86_MSR_FILTER on a kernel with Hyper-V \
                    emulation, so that KVM forwards the synthetic MSRs"
                .into(),
        );
    }
    Ok(note.into())
}

fn kvm_paravirt(flag: Enlightenment, host: &HostCapabilities) -> Result<String, String> {
    use Enlightenment as E;
    match flag {
        E::Kvm => Ok("KVM signature".into()),
        E::KvmHintDedicated => Ok("a hint; KVM never filters it".into()),
        _ => {
            let mask = flag.def().cpuid.iter().fold(0, |acc, b| acc | b.mask);
            if host.kvm_pv_features & mask == mask {
                Ok(format!("host KVM supports it (0x40000001.EAX & {mask:#x})"))
            } else {
                Err(format!(
                    "host KVM does not offer it (supported 0x40000001.EAX = {:#x} lacks {mask:#x})",
                    host.kvm_pv_features
                ))
            }
        }
    }
}

fn kernel(flag: Enlightenment, host: &HostCapabilities) -> Result<String, String> {
    use Enlightenment as E;
    let def = flag.def();
    if def.kind == FlagKind::Identity {
        return Ok("pure CPUID value".into());
    }
    if !host.kernel_hyperv() {
        return Err(
            "the host kernel has no Hyper-V emulation (KVM_CAP_HYPERV is 0: built \
                    without CONFIG_KVM_HYPERV?); use --backend user"
                .into(),
        );
    }
    match flag {
        E::Evmcs => evmcs(host)?,
        E::EmsrBitmap | E::TlbflushDirect => nested(host)?,
        E::StimerDirect | E::Ipi if !host.in_kernel_lapic() => {
            return Err("needs an in-kernel LAPIC, and this host offers neither \
                        KVM_CAP_IRQCHIP nor KVM_CAP_SPLIT_IRQCHIP"
                .into())
        }
        E::NoNonarchCoresharing => return Ok("pure CPUID hint".into()),
        E::Passthrough if host.supported_hv_cpuid.is_none() => {
            return Err(
                "hv-passthrough copies KVM_GET_SUPPORTED_HV_CPUID, and the probe has \
                        no such leaves (kernel < 5.0?)"
                    .into(),
            )
        }
        _ => {}
    }
    evidence(def, host)
}

fn evmcs(host: &HostCapabilities) -> Result<(), String> {
    if host.cpu_vendor != CpuVendor::Intel {
        return Err(format!(
            "eVMCS is Intel-only and this host is {}; on AMD, hv-emsr-bitmap and \
             hv-tlbflush-direct give the nested speed-ups",
            host.cpu_vendor
        ));
    }
    if !host.vmx {
        return Err("the host CPU does not expose VMX".into());
    }
    nested(host)
}

fn nested(host: &HostCapabilities) -> Result<(), String> {
    let module = if host.cpu_vendor == CpuVendor::Amd {
        "kvm_amd"
    } else {
        "kvm_intel"
    };
    if !(host.vmx || host.svm) {
        return Err("needs nested virtualization, and the host CPU has neither VMX nor SVM".into());
    }
    match host.nested {
        Some(true) => Ok(()),
        Some(false) => Err(format!(
            "needs nested virtualization, but {module} is loaded with nested=0; reload it \
             with nested=1"
        )),
        None => Err(format!(
            "needs nested virtualization, and {module}'s nested parameter is unknown \
             (module not loaded?); nested=1 is required"
        )),
    }
}

/// Evidence that KVM implements a flag: its CPUID bits in `KVM_GET_SUPPORTED_HV_CPUID`, or
/// the capability on kernels without that ioctl.
fn evidence(def: &FlagDef, host: &HostCapabilities) -> Result<String, String> {
    if host.supported_hv_cpuid.is_some() {
        if def.cpuid.is_empty() {
            return match def.kvm_cap {
                Some(cap) if !host.kvm_caps.is_empty() && !host.has_cap(cap) => {
                    Err(format!("KVM does not report {}", cap.name))
                }
                _ => Ok("KVM has it".into()),
            };
        }
        let missing: Vec<String> = def
            .cpuid
            .iter()
            .filter(|b| host.hv_leaf(b.leaf, b.reg).unwrap_or(0) & b.mask != b.mask)
            .map(|b| b.describe())
            .collect();
        if missing.is_empty() {
            let bits: Vec<String> = def.cpuid.iter().map(|b| b.describe()).collect();
            return Ok(format!("KVM reports {}", bits.join(" ")));
        }
        // The vCPU form of the ioctl omits 04.EAX[14] until eVMCS is enabled (QEMU ORs it in).
        if def.flag == Enlightenment::Evmcs && host.has_cap(tlfs::KVM_CAP_HYPERV_ENLIGHTENED_VMCS) {
            return Ok("KVM_CAP_HYPERV_ENLIGHTENED_VMCS".into());
        }
        return Err(format!(
            "KVM_GET_SUPPORTED_HV_CPUID lacks {}: the host kernel does not implement it",
            missing.join(" ")
        ));
    }
    match def.kvm_cap {
        Some(cap) if host.has_cap(cap) => Ok(format!(
            "{} (legacy check: the probe has no KVM_GET_SUPPORTED_HV_CPUID)",
            cap.name
        )),
        Some(cap) => Err(format!("KVM does not report {}", cap.name)),
        None => Err("cannot tell whether KVM has it: the probe has no \
                     KVM_GET_SUPPORTED_HV_CPUID leaves"
            .into()),
    }
}
