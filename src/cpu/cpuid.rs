//! CPUID for each vCPU, built from `KVM_GET_SUPPORTED_CPUID`.
//!
//! `--cpu host` passes through everything KVM supports. `--cpu baseline` (the default) is an
//! x86-64-v1 CPU: it hides the vector, crypto and bit-manipulation extensions and XSAVE, which
//! both keeps guests portable across hosts and keeps them off instructions that KVM's
//! instruction emulator cannot execute (hosts whose CPL0 guest code is emulated).

use std::str::FromStr;

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// One CPUID leaf a caller sets explicitly (replacing any entry with the same leaf/subleaf).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CpuidEntry {
    /// EAX input.
    pub function: u32,
    /// ECX input (subleaf); ignored by leaves that have none.
    pub index: u32,
    /// Output registers.
    pub eax: u32,
    /// Output EBX.
    pub ebx: u32,
    /// Output ECX.
    pub ecx: u32,
    /// Output EDX.
    pub edx: u32,
}

impl From<&kvm_cpuid_entry2> for CpuidEntry {
    fn from(e: &kvm_cpuid_entry2) -> Self {
        CpuidEntry {
            function: e.function,
            index: e.index,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }
}

/// The CPU model a VM presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuModel {
    /// Everything KVM supports on this host.
    Host,
    /// x86-64-v1 plus the system features an OS needs (see module docs).
    #[default]
    Baseline,
}

impl FromStr for CpuModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(CpuModel::Host),
            "baseline" => Ok(CpuModel::Baseline),
            other => Err(format!(
                "unknown CPU model '{other}': use 'baseline' or 'host'"
            )),
        }
    }
}

/// Feature bits the baseline model clears, as (leaf, subleaf, register index 0..4 = EAX..EDX,
/// mask of bits to clear). One line per group, named.
const BASELINE_HIDDEN: &[(u32, u32, usize, u32, &str)] = &[
    // CPUID.1:ECX — SSE3, PCLMULQDQ, MONITOR, VMX, SMX, SSSE3, FMA, CX16, SSE4.1, SSE4.2,
    // MOVBE, POPCNT, AES, XSAVE, OSXSAVE, AVX, F16C, RDRAND.
    (
        1,
        0,
        2,
        0x7ed8_3a6b,
        "sse3+ vector/crypto, cx16, popcnt, xsave, avx, rdrand, vmx",
    ),
    // CPUID.7.0:EBX — FSGSBASE, BMI1, HLE, AVX2, BMI2, RTM, MPX, AVX512*, RDSEED, ADX, SMAP,
    // SHA.
    (
        7,
        0,
        1,
        0xfc3f_4939,
        "fsgsbase, bmi, tsx, avx2, avx512, rdseed, adx, smap, sha",
    ),
    // CPUID.7.0:ECX — every vector/crypto/PKU/RDPID extension.
    (
        7,
        0,
        2,
        0xffff_ffff,
        "avx512 ext, pku, gfni, vaes, rdpid, …",
    ),
    // CPUID.7.0:EDX — AVX512 4VNNIW/4FMAPS, AMX, …; speculation-control bits stay.
    (
        7,
        0,
        3,
        0x03ff_ffff,
        "avx512/amx/serialize/… (speculation control kept)",
    ),
    // CPUID.7.1:EAX — AVX-VNNI, AVX512-BF16, …
    (7, 1, 0, 0xffff_ffff, "avx-vnni, bf16, …"),
    // CPUID.80000001:ECX — ABM/LZCNT, SSE4A, XOP, FMA4, TBM; EDX — RDTSCP.
    (0x8000_0001, 0, 2, 0x0021_0860, "abm, sse4a, xop, fma4, tbm"),
    (0x8000_0001, 0, 3, 1 << 27, "rdtscp"),
];

/// Leaves the baseline model removes entirely (XSAVE state enumeration).
const BASELINE_REMOVED_LEAVES: &[u32] = &[0xd];

/// Bit 31 of CPUID.1:ECX: "running under a hypervisor".
const HYPERVISOR_BIT: u32 = 1 << 31;
/// CPUID.1:ECX bit 13: CMPXCHG16B.
pub const CX16_BIT: u32 = 1 << 13;

fn regs_mut(e: &mut kvm_cpuid_entry2, reg: usize) -> &mut u32 {
    match reg {
        0 => &mut e.eax,
        1 => &mut e.ebx,
        2 => &mut e.ecx,
        _ => &mut e.edx,
    }
}

/// The CPUID table for vCPU `index` (its APIC ID) of a VM built on `supported`.
pub fn for_vcpu(
    supported: &[kvm_cpuid_entry2],
    model: CpuModel,
    index: u32,
    overrides: &[CpuidEntry],
) -> Vec<kvm_cpuid_entry2> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|e| model == CpuModel::Host || !BASELINE_REMOVED_LEAVES.contains(&e.function))
        .copied()
        .collect();
    for e in &mut entries {
        if model == CpuModel::Baseline {
            for &(function, subleaf, reg, mask, _) in BASELINE_HIDDEN {
                if e.function == function && e.index == subleaf {
                    *regs_mut(e, reg) &= !mask;
                }
            }
        }
        match e.function {
            1 => {
                // Initial APIC ID in EBX[31:24]; Linux and the payload contract use it.
                e.ebx = (e.ebx & 0x00ff_ffff) | (index << 24);
                e.ecx |= HYPERVISOR_BIT;
            }
            // x2APIC ID of the topology leaves.
            0xb | 0x1f => e.edx = index,
            _ => {}
        }
    }
    apply_overrides(&mut entries, overrides);
    entries
}

/// Replaces or adds the `overrides` leaves in `entries`.
pub fn apply_overrides(entries: &mut Vec<kvm_cpuid_entry2>, overrides: &[CpuidEntry]) {
    for o in overrides {
        let entry = kvm_cpuid_entry2 {
            function: o.function,
            index: o.index,
            flags: if o.index != 0 {
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            eax: o.eax,
            ebx: o.ebx,
            ecx: o.ecx,
            edx: o.edx,
            ..Default::default()
        };
        match entries
            .iter_mut()
            .find(|e| e.function == o.function && e.index == o.index)
        {
            Some(existing) => {
                let flags = existing.flags;
                *existing = entry;
                existing.flags |= flags;
            }
            None => entries.push(entry),
        }
    }
}

/// Wraps entries for `KVM_SET_CPUID2`.
pub fn to_kvm(entries: &[kvm_cpuid_entry2]) -> Result<CpuId, vmm_sys_util::fam::Error> {
    CpuId::from_entries(entries)
}

/// Replaces every hypervisor leaf (0x4000_0000..=0x4fff_ffff) with `leaves`. Used when the
/// Hyper-V model supplies its own leaves, including KVM's moved to 0x4000_0100.
pub fn replace_hypervisor_leaves(entries: &mut Vec<kvm_cpuid_entry2>, leaves: &[CpuidEntry]) {
    entries.retain(|e| !(0x4000_0000..=0x4fff_ffff).contains(&e.function));
    entries.extend(leaves.iter().map(|l| kvm_cpuid_entry2 {
        function: l.function,
        index: l.index,
        eax: l.eax,
        ebx: l.ebx,
        ecx: l.ecx,
        edx: l.edx,
        ..Default::default()
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn host() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(0, 0, [0xd, 0, 0, 0]),
            leaf(1, 0, [0x806f8, 0x0080_0800, !HYPERVISOR_BIT, 0xffff_ffff]),
            leaf(7, 0, [0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff]),
            leaf(0xd, 0, [7, 0, 0, 0]),
            leaf(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
            leaf(0x8000_0001, 0, [0, 0, 0xffff_ffff, 0xffff_ffff]),
        ]
    }

    #[test]
    fn baseline_hides_extensions_the_cpl0_emulator_cannot_run() {
        let t = for_vcpu(&host(), CpuModel::Baseline, 3, &[]);
        let l1 = t.iter().find(|e| e.function == 1).unwrap();
        assert_eq!(l1.ecx & CX16_BIT, 0, "cmpxchg16b hidden");
        assert_eq!(l1.ecx & (1 << 26), 0, "xsave hidden");
        assert_eq!(l1.ecx & (1 << 28), 0, "avx hidden");
        assert_eq!(l1.ecx & (1 << 23), 0, "popcnt hidden");
        assert_ne!(l1.ecx & (1 << 21), 0, "x2apic kept");
        assert_ne!(l1.edx & (1 << 26), 0, "sse2 kept (x86-64 baseline)");
        assert_ne!(l1.ecx & HYPERVISOR_BIT, 0);
        assert_eq!(l1.ebx >> 24, 3, "APIC ID is the vCPU index");
        let l7 = t.iter().find(|e| e.function == 7).unwrap();
        assert_eq!(l7.ebx & (1 << 5), 0, "avx2 hidden");
        assert_ne!(l7.edx & (1 << 26), 0, "IBRS kept");
        assert!(t.iter().all(|e| e.function != 0xd));
        let ext = t.iter().find(|e| e.function == 0x8000_0001).unwrap();
        assert_eq!(ext.edx & (1 << 27), 0, "rdtscp hidden");
        assert_ne!(ext.edx & (1 << 29), 0, "long mode kept");
    }

    #[test]
    fn host_model_keeps_everything_but_sets_ids() {
        let t = for_vcpu(&host(), CpuModel::Host, 1, &[]);
        let l1 = t.iter().find(|e| e.function == 1).unwrap();
        assert_ne!(l1.ecx & CX16_BIT, 0);
        assert_eq!(l1.ebx >> 24, 1);
        assert!(t.iter().any(|e| e.function == 0xd));
    }

    #[test]
    fn overrides_replace_or_add_leaves() {
        let add = CpuidEntry {
            function: 0x4000_00f0,
            index: 0,
            eax: 1,
            ebx: 2,
            ecx: 3,
            edx: 4,
        };
        let replace = CpuidEntry {
            function: 0x4000_0000,
            index: 0,
            eax: 9,
            ebx: 0,
            ecx: 0,
            edx: 0,
        };
        let t = for_vcpu(&host(), CpuModel::Host, 0, &[add, replace]);
        let f0 = t.iter().find(|e| e.function == 0x4000_00f0).unwrap();
        assert_eq!((f0.eax, f0.ebx, f0.ecx, f0.edx), (1, 2, 3, 4));
        assert_eq!(t.iter().filter(|e| e.function == 0x4000_0000).count(), 1);
        assert_eq!(t.iter().find(|e| e.function == 0x4000_0000).unwrap().eax, 9);
    }

    #[test]
    fn hypervisor_leaves_are_replaced_wholesale() {
        let mut t = host();
        let hv = CpuidEntry {
            function: 0x4000_0001,
            index: 0,
            eax: 0x3123_7648,
            ebx: 0,
            ecx: 0,
            edx: 0,
        };
        replace_hypervisor_leaves(&mut t, &[hv]);
        let hv_leaves: Vec<_> = t
            .iter()
            .filter(|e| (0x4000_0000..0x5000_0000).contains(&e.function))
            .collect();
        assert_eq!(hv_leaves.len(), 1);
        assert_eq!(hv_leaves[0].eax, 0x3123_7648);
    }
}
