//! What the partition offers, read back from the CPUID table the guest is given: the one
//! source of truth for which synthetic MSRs exist and which hypercalls are allowed
//! (hv-enforce-cpuid semantics, as KVM's `hyperv_features.c` matrix describes).

use hyperv_tlfs::cpuid::{
    feature, privilege, LEAF_FEATURES, LEAF_RECOMMENDATIONS, LEAF_SYNDBG_PLATFORM,
};
use hyperv_tlfs::msr::*;
use kvm_bindings::kvm_cpuid_entry2;

use super::hypercall::Offered;

/// The privilege and feature bits of leaves 0x40000003/4 and 0x40000082 that gate MSRs and
/// hypercalls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// 0x40000003.EAX: partition privileges.
    pub privileges: u32,
    /// 0x40000003.EBX.
    pub privileges_ebx: u32,
    /// 0x40000003.EDX: features.
    pub features: u32,
    /// 0x40000004.EAX: recommendations.
    pub recommendations: u32,
    /// 0x40000004.EBX: spinlock retries.
    pub spin_retries: u32,
    /// 0x40000082.EAX (syndbg).
    pub syndbg: u32,
}

impl Features {
    /// Reads the bits out of the CPUID table the guest runs with.
    pub fn from_cpuid(table: &[kvm_cpuid_entry2]) -> Self {
        let leaf = |f: u32| table.iter().find(|l| l.function == f && l.index == 0);
        let mut features = Features::default();
        if let Some(l) = leaf(LEAF_FEATURES) {
            features.privileges = l.eax;
            features.privileges_ebx = l.ebx;
            features.features = l.edx;
        }
        if let Some(l) = leaf(LEAF_RECOMMENDATIONS) {
            features.recommendations = l.eax;
            features.spin_retries = l.ebx;
        }
        if let Some(l) = leaf(LEAF_SYNDBG_PLATFORM) {
            features.syndbg = l.eax;
        }
        features
    }

    /// Whether every bit of `mask` is set in 0x40000003.EAX.
    pub fn has(&self, mask: u32) -> bool {
        self.privileges & mask == mask
    }

    /// Whether every bit of `mask` is set in 0x40000003.EDX.
    pub fn has_feature(&self, mask: u32) -> bool {
        self.features & mask == mask
    }

    /// Whether every bit of `mask` is set in 0x40000004.EAX.
    pub fn recommends(&self, mask: u32) -> bool {
        self.recommendations & mask == mask
    }

    /// Whether the guest may access MSR `index` at all (its CPUID bit is set). Everything
    /// else #GPs like an absent MSR.
    pub fn msr_available(&self, index: u32) -> bool {
        match index {
            GUEST_OS_ID | HYPERCALL => self.has(privilege::HYPERCALL_MSRS),
            VP_INDEX => self.has(privilege::VP_INDEX),
            RESET => self.has(privilege::RESET),
            VP_RUNTIME => self.has(privilege::VP_RUNTIME),
            TIME_REF_COUNT => self.has(privilege::TIME_REF_COUNT),
            REFERENCE_TSC => self.has(privilege::REFERENCE_TSC),
            // Linux reads them only with both bits; KVM gates on the privilege bit.
            TSC_FREQUENCY | APIC_FREQUENCY => self.has(privilege::FREQUENCY_MSRS),
            EOI | ICR | TPR | VP_ASSIST_PAGE => self.has(privilege::APIC_MSRS),
            SCONTROL | SVERSION | SIEFP | SIMP | EOM | SINT0..=SINT15 => self.has(privilege::SYNIC),
            STIMER0_CONFIG..=STIMER3_COUNT => self.has(privilege::SYNTIMERS),
            CRASH_P0..=CRASH_P4 | CRASH_CTL => self.has_feature(feature::CRASH_MSRS),
            REENLIGHTENMENT_CONTROL | TSC_EMULATION_CONTROL | TSC_EMULATION_STATUS => {
                self.has(privilege::REENLIGHTENMENT)
            }
            TSC_INVARIANT_CONTROL => self.has(privilege::TSC_INVARIANT),
            // Syndbg, guest idle, nested SynIC: not implemented by the user backend, so never
            // offered; #GP like any absent MSR.
            _ => false,
        }
    }

    /// The hypercall module's view of the same leaves (its [`Offered::from_cpuid`] is the one
    /// place that maps their bits to hypercall gates).
    pub fn offered(&self) -> Offered {
        Offered::from_cpuid(&[
            (
                LEAF_FEATURES,
                [self.privileges, self.privileges_ebx, 0, self.features],
            ),
            (
                LEAF_RECOMMENDATIONS,
                [self.recommendations, self.spin_retries, 0, 0],
            ),
            (LEAF_SYNDBG_PLATFORM, [self.syndbg, 0, 0, 0]),
        ])
    }
}
