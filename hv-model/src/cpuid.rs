//! The hypervisor CPUID leaves a resolution gives the guest, as QEMU's `hyperv_fill_cpuids()`
//! builds them: 0x40000000–0x40000005 always, zeroed 0x40000006–0x40000009 plus 0x4000000A when
//! a nested feature is on, 0x40000080–0x40000082 for hv-syndbg, and KVM's own leaves moved to
//! 0x40000100/0x40000101 when `kvm=on`.

use std::collections::BTreeMap;

use crate::flags::{Enlightenment as E, Enlightenment, FlagKind};
use crate::resolve::Resolution;
use crate::tlfs::{self, Reg};

pub use crate::tlfs::CpuidLeaf;

/// The leaves for this resolution, sorted by function. Empty when no Hyper-V enlightenment is
/// on: the VMM then keeps KVM's own leaves at 0x40000000 (or hides them for `kvm=off`).
pub fn cpuid_leaves(resolution: &Resolution) -> Vec<CpuidLeaf> {
    if !resolution.hyperv_enabled() {
        return Vec::new();
    }
    let g = &resolution.guest;
    let on = |f: Enlightenment| resolution.is_on(f);

    // OR together the table bits of every Hyper-V flag that is on (QEMU hv_build_cpuid_leaf).
    let mut regs: BTreeMap<(u32, Reg), u32> = BTreeMap::new();
    for d in resolution.decisions.iter().filter(|d| d.on) {
        let def = d.flag.def();
        if def.kind == FlagKind::KvmParavirt {
            continue;
        }
        for b in def.cpuid.iter().chain(def.extra_guest_bits) {
            *regs.entry((b.leaf, b.reg)).or_default() |= b.mask;
        }
    }
    let reg = |leaf, r| regs.get(&(leaf, r)).copied().unwrap_or(0);

    let mut features = [
        reg(tlfs::HV_FEATURES, Reg::Eax),
        reg(tlfs::HV_FEATURES, Reg::Ebx),
        reg(tlfs::HV_FEATURES, Reg::Ecx),
        reg(tlfs::HV_FEATURES, Reg::Edx),
    ];
    if g.hypercall_interface {
        // Unconditionally required with any Hyper-V enlightenment (QEMU).
        features[0] |= tlfs::HV_HYPERCALL_MSRS;
    }
    // Not reported by KVM, but Windows needs it for CPU hotplug (QEMU sets it always).
    features[3] |= tlfs::HV_CPU_DYNAMIC_PARTITIONING;

    let mut recommendations = reg(tlfs::HV_RECOMMENDATIONS, Reg::Eax);
    if on(E::Vapic) && !on(E::Avic) {
        // With hv-avic the guest is told to avoid AutoEOI instead of using the APIC MSRs.
        recommendations |= tlfs::HV_APIC_ACCESS_RECOMMENDED;
    }
    if g.no_nonarch_coresharing {
        recommendations |= tlfs::HV_NO_NONARCH_CORESHARING;
    }

    let mut nested_eax = reg(tlfs::HV_NESTED_FEATURES, Reg::Eax);
    if let Some(range) = g.evmcs_version {
        nested_eax |= u32::from(range);
    }
    let nested = nested_eax != 0;
    let mut max_leaf = if nested {
        tlfs::HV_NESTED_FEATURES
    } else {
        tlfs::HV_LIMITS
    };
    if on(E::Syndbg) {
        max_leaf = max_leaf.max(tlfs::HV_SYNDBG_PLATFORM);
    }

    let vendor = tlfs::pack_signature(&g.vendor_id);
    let v = &g.version;
    let mut out = vec![
        CpuidLeaf::new(
            tlfs::HV_VENDOR_AND_MAX,
            max_leaf,
            vendor[0],
            vendor[1],
            vendor[2],
        ),
        CpuidLeaf::new(tlfs::HV_INTERFACE, tlfs::HV_INTERFACE_SIGNATURE, 0, 0, 0),
        CpuidLeaf::new(
            tlfs::HV_VERSION,
            v.build,
            (v.major << 16) | (v.minor & 0xFFFF),
            v.service_pack,
            (v.service_branch << 24) | (v.service_number & 0xFF_FFFF),
        ),
        CpuidLeaf::new(
            tlfs::HV_FEATURES,
            features[0],
            features[1],
            features[2],
            features[3],
        ),
        CpuidLeaf::new(
            tlfs::HV_RECOMMENDATIONS,
            recommendations,
            g.spinlock_retries,
            0,
            0,
        ),
        CpuidLeaf::new(tlfs::HV_LIMITS, g.max_vps, g.max_lps, 0, 0),
    ];
    if nested {
        // QEMU creates zeroed 0x40000006..0x40000009 before the nested leaf.
        out.extend(
            (tlfs::HV_LIMITS + 1..tlfs::HV_NESTED_FEATURES).map(|f| CpuidLeaf::new(f, 0, 0, 0, 0)),
        );
        out.push(CpuidLeaf::new(
            tlfs::HV_NESTED_FEATURES,
            nested_eax,
            0,
            0,
            0,
        ));
    }
    if on(E::Syndbg) {
        let vs = tlfs::pack_signature("Microsoft VS");
        out.push(CpuidLeaf::new(
            tlfs::HV_SYNDBG_VENDOR,
            0,
            vs[0],
            vs[1],
            vs[2],
        ));
        out.push(CpuidLeaf::new(
            tlfs::HV_SYNDBG_INTERFACE,
            tlfs::HV_SYNDBG_INTERFACE_SIGNATURE,
            0,
            0,
            0,
        ));
        out.push(CpuidLeaf::new(
            tlfs::HV_SYNDBG_PLATFORM,
            tlfs::HV_SYNDBG_ALLOW_KERNEL_DEBUGGING,
            0,
            0,
            0,
        ));
    }
    if g.kvm_signature {
        let kvm = tlfs::pack_signature("KVMKVMKVM");
        let base = tlfs::KVM_SIGNATURE_RELOCATED;
        out.push(CpuidLeaf::new(
            base,
            tlfs::KVM_FEATURES + tlfs::KVM_RELOCATION,
            kvm[0],
            kvm[1],
            kvm[2],
        ));
        out.push(CpuidLeaf::new(
            tlfs::KVM_FEATURES + tlfs::KVM_RELOCATION,
            g.kvm_features,
            0,
            0,
            g.kvm_hints,
        ));
    }
    out
}
