//! What the partition offers, read back from the CPUID leaves the guest is given: the one
//! source of truth for which MSRs exist and which hypercalls are allowed (hv-enforce-cpuid
//! semantics).

use crate::cpu::CpuidEntry;

/// The privilege and feature bits of leaves 0x40000003/4 and 0x40000082 that gate MSRs.
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

/// Bits of 0x40000003.EAX.
pub mod privilege {
    /// VP_RUNTIME.
    pub const VP_RUNTIME: u32 = 1 << 0;
    /// TIME_REF_COUNT.
    pub const TIME_REF_COUNT: u32 = 1 << 1;
    /// SynIC.
    pub const SYNIC: u32 = 1 << 2;
    /// Synthetic timers.
    pub const SYNTIMERS: u32 = 1 << 3;
    /// APIC MSRs and VP assist page.
    pub const APIC_MSRS: u32 = 1 << 4;
    /// GUEST_OS_ID and HYPERCALL.
    pub const HYPERCALL_MSRS: u32 = 1 << 5;
    /// VP_INDEX.
    pub const VP_INDEX: u32 = 1 << 6;
    /// RESET.
    pub const RESET: u32 = 1 << 7;
    /// REFERENCE_TSC.
    pub const REFERENCE_TSC: u32 = 1 << 9;
    /// TSC_FREQUENCY / APIC_FREQUENCY.
    pub const FREQUENCY_MSRS: u32 = 1 << 11;
    /// REENLIGHTENMENT_CONTROL and TSC emulation MSRs.
    pub const REENLIGHTENMENT: u32 = 1 << 13;
    /// TSC_INVARIANT_CONTROL.
    pub const TSC_INVARIANT: u32 = 1 << 15;
}

/// Bits of 0x40000003.EDX.
pub mod feature {
    /// XMM registers for hypercall input.
    pub const XMM_INPUT: u32 = 1 << 4;
    /// Timer frequencies are reported (TSC_FREQUENCY needs this too, as in Linux).
    pub const FREQUENCIES: u32 = 1 << 8;
    /// Crash MSRs.
    pub const CRASH_MSRS: u32 = 1 << 10;
}

impl Features {
    /// Reads the bits out of the leaves the guest gets.
    pub fn from_leaves(leaves: &[CpuidEntry]) -> Self {
        let leaf = |f: u32| leaves.iter().find(|l| l.function == f && l.index == 0);
        let mut features = Features::default();
        if let Some(l) = leaf(0x4000_0003) {
            features.privileges = l.eax;
            features.privileges_ebx = l.ebx;
            features.features = l.edx;
        }
        if let Some(l) = leaf(0x4000_0004) {
            features.recommendations = l.eax;
            features.spin_retries = l.ebx;
        }
        if let Some(l) = leaf(0x4000_0082) {
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

    /// The hypercall module's view of the same leaves.
    pub fn offered(&self) -> super::hypercall::Offered {
        super::hypercall::Offered {
            hypercall_msrs: self.has(privilege::HYPERCALL_MSRS),
            post_messages: self.privileges_ebx & (1 << 4) != 0,
            signal_events: self.privileges_ebx & (1 << 5) != 0,
            debugging: self.privileges_ebx & (1 << 11) != 0,
            ext_hypercalls: self.privileges_ebx & (1 << 20) != 0,
            xmm_input: self.has_feature(feature::XMM_INPUT),
            remote_flush: self.recommendations & (1 << 2) != 0,
            cluster_ipi: self.recommendations & (1 << 10) != 0,
            ex_processor_masks: self.recommendations & (1 << 11) != 0,
            spin_retries: self.spin_retries,
            syndbg: self.syndbg & (1 << 1) != 0,
        }
    }
}
