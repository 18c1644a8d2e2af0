//! The hypervisor CPUID leaves and their bits (TLFS `feature-discovery.md`; reference §1b).

/// EAX = highest Hyper-V leaf, EBX:ECX:EDX = vendor ("Microsoft Hv").
pub const LEAF_VENDOR_AND_MAX: u32 = 0x4000_0000;
/// EAX = interface signature "Hv#1" ([`INTERFACE_SIGNATURE`]).
pub const LEAF_INTERFACE: u32 = 0x4000_0001;
/// Hypervisor version.
pub const LEAF_VERSION: u32 = 0x4000_0002;
/// Partition privileges (EAX, EBX) and features (EDX).
pub const LEAF_FEATURES: u32 = 0x4000_0003;
/// Implementation recommendations (EAX), spinlock retries (EBX).
pub const LEAF_RECOMMENDATIONS: u32 = 0x4000_0004;
/// Implementation limits: EAX max VPs, EBX max LPs.
pub const LEAF_LIMITS: u32 = 0x4000_0005;
/// Nested features: `EAX[15:0]` eVMCS version range and more.
pub const LEAF_NESTED_FEATURES: u32 = 0x4000_000a;
/// SynDbg platform capabilities: `EAX[1]` kernel debugging allowed.
pub const LEAF_SYNDBG_PLATFORM: u32 = 0x4000_0082;

/// "Hv#1" as 0x40000001.EAX. KVM treats a vCPU as Hyper-V only when it sees this.
pub const INTERFACE_SIGNATURE: u32 = 0x3123_7648;

/// Bits of 0x40000003.EAX: which synthetic MSRs the partition may access.
pub mod privilege {
    /// VP_RUNTIME.
    pub const VP_RUNTIME: u32 = 1 << 0;
    /// TIME_REF_COUNT.
    pub const TIME_REF_COUNT: u32 = 1 << 1;
    /// SynIC MSRs.
    pub const SYNIC: u32 = 1 << 2;
    /// Synthetic timer MSRs.
    pub const SYNTIMERS: u32 = 1 << 3;
    /// APIC MSRs (EOI, ICR, TPR) and the VP assist page.
    pub const APIC_MSRS: u32 = 1 << 4;
    /// GUEST_OS_ID and HYPERCALL.
    pub const HYPERCALL_MSRS: u32 = 1 << 5;
    /// VP_INDEX.
    pub const VP_INDEX: u32 = 1 << 6;
    /// RESET.
    pub const RESET: u32 = 1 << 7;
    /// Statistics pages.
    pub const STATS_PAGES: u32 = 1 << 8;
    /// REFERENCE_TSC.
    pub const REFERENCE_TSC: u32 = 1 << 9;
    /// GUEST_IDLE.
    pub const GUEST_IDLE: u32 = 1 << 10;
    /// TSC_FREQUENCY and APIC_FREQUENCY.
    pub const FREQUENCY_MSRS: u32 = 1 << 11;
    /// REENLIGHTENMENT_CONTROL and the TSC emulation MSRs.
    pub const REENLIGHTENMENT: u32 = 1 << 13;
    /// TSC_INVARIANT_CONTROL.
    pub const TSC_INVARIANT: u32 = 1 << 15;
}

/// Bits of 0x40000003.EBX: which hypercall groups the partition may use.
pub mod privilege_ebx {
    /// HvPostMessage.
    pub const POST_MESSAGES: u32 = 1 << 4;
    /// HvSignalEvent.
    pub const SIGNAL_EVENTS: u32 = 1 << 5;
    /// Debugging hypercalls.
    pub const DEBUGGING: u32 = 1 << 11;
    /// Extended hypercalls (0x8001..).
    pub const EXTENDED_HYPERCALLS: u32 = 1 << 20;
}

/// Bits of 0x40000003.EDX: features.
pub mod feature {
    /// Guest debugging.
    pub const GUEST_DEBUGGING: u32 = 1 << 1;
    /// CPU dynamic partitioning (QEMU always sets it; Windows needs it for CPU hotplug).
    pub const CPU_DYNAMIC_PARTITIONING: u32 = 1 << 3;
    /// XMM registers for fast hypercall input.
    pub const XMM_INPUT: u32 = 1 << 4;
    /// Timer frequencies are reported (Linux reads TSC_FREQUENCY only with this too).
    pub const FREQUENCIES: u32 = 1 << 8;
    /// Crash MSRs.
    pub const CRASH_MSRS: u32 = 1 << 10;
    /// Synthetic debugger MSRs.
    pub const DEBUG_MSRS: u32 = 1 << 11;
    /// Extended GVA ranges for the flush-list hypercalls.
    pub const EXT_GVA_RANGES: u32 = 1 << 14;
    /// XMM registers for fast hypercall output.
    pub const XMM_OUTPUT: u32 = 1 << 15;
    /// SINT polling mode.
    pub const SINT_POLLING: u32 = 1 << 17;
    /// Direct-mode synthetic timers (STIMER config bit 12).
    pub const DIRECT_SYNTHETIC_TIMERS: u32 = 1 << 19;
}

/// Bits of 0x40000004.EAX: recommendations.
pub mod recommendation {
    /// Use a hypercall for address-space switches.
    pub const AS_SWITCH: u32 = 1 << 0;
    /// Use a hypercall for local TLB flushes.
    pub const LOCAL_FLUSH: u32 = 1 << 1;
    /// Use a hypercall for remote TLB flushes.
    pub const REMOTE_FLUSH: u32 = 1 << 2;
    /// Use the APIC MSRs for EOI, ICR and TPR.
    pub const APIC_MSRS: u32 = 1 << 3;
    /// Use the RESET MSR to reset.
    pub const RESET_MSR: u32 = 1 << 4;
    /// Relaxed timing: no watchdog timeouts.
    pub const RELAXED_TIMING: u32 = 1 << 5;
    /// Do not use AutoEOI (it cannot be honoured, or it defeats APIC virtualization).
    pub const DEPRECATE_AUTO_EOI: u32 = 1 << 9;
    /// Use the synthetic cluster IPI hypercall.
    pub const CLUSTER_IPI: u32 = 1 << 10;
    /// The Ex (sparse VP set) hypercall forms are available.
    pub const EX_PROCESSOR_MASKS: u32 = 1 << 11;
    /// Running nested inside Hyper-V.
    pub const NESTED: u32 = 1 << 12;
    /// Use the enlightened VMCS.
    pub const ENLIGHTENED_VMCS: u32 = 1 << 14;
    /// Virtual processors never share a physical core unless reported as SMT siblings.
    pub const NO_NONARCH_CORESHARING: u32 = 1 << 18;
}

/// Bits of 0x4000000A.
pub mod nested {
    /// EAX `[15:0]`: eVMCS version range (low byte minimum, high byte maximum).
    pub const EVMCS_VERSION_MASK: u32 = 0xffff;
    /// EAX bit 17: direct virtual flush.
    pub const DIRECT_FLUSH: u32 = 1 << 17;
    /// EAX bit 19: enlightened MSR bitmap.
    pub const ENLIGHTENED_MSR_BITMAP: u32 = 1 << 19;
    /// EBX bit 0: the eVMCS PERF_GLOBAL_CTRL fields may be used.
    pub const EVMCS_PERF_GLOBAL_CTRL: u32 = 1 << 0;
}

/// 0x40000082.EAX bit 1: the guest may use the synthetic kernel debugger.
pub const SYNDBG_ALLOW_KERNEL_DEBUGGING: u32 = 1 << 1;
