//! Synthetic MSRs (TLFS; reference §2.1): indices, bit fields, names.
//!
//! "Partition" MSRs hold one value for the whole VM, "VP" MSRs one per virtual processor
//! (KVM serialises the partition-wide ones under one lock; everything else is per VP).

/// Partition: guest OS identity; writing 0 disables the hypercall page.
pub const GUEST_OS_ID: u32 = 0x4000_0000;
/// Partition: hypercall page enable (bit 0), lock (bit 1) and GPA.
pub const HYPERCALL: u32 = 0x4000_0001;
/// VP: this VP's index (read-only for the guest).
pub const VP_INDEX: u32 = 0x4000_0002;
/// Partition: write 1 to reset the VM.
pub const RESET: u32 = 0x4000_0003;
/// VP: run time in 100 ns units (read-only).
pub const VP_RUNTIME: u32 = 0x4000_0010;
/// Partition: reference time in 100 ns units (read-only).
pub const TIME_REF_COUNT: u32 = 0x4000_0020;
/// Partition: reference TSC page enable and GPA.
pub const REFERENCE_TSC: u32 = 0x4000_0021;
/// Partition: TSC frequency in Hz (read-only).
pub const TSC_FREQUENCY: u32 = 0x4000_0022;
/// Partition: APIC timer frequency in Hz (read-only).
pub const APIC_FREQUENCY: u32 = 0x4000_0023;
/// VP: EOI alias of the x2APIC register (write-only).
pub const EOI: u32 = 0x4000_0070;
/// VP: ICR alias of the x2APIC register (writing it sends an IPI).
pub const ICR: u32 = 0x4000_0071;
/// VP: TPR alias of the x2APIC register.
pub const TPR: u32 = 0x4000_0072;
/// VP: VP assist page enable and GPA.
pub const VP_ASSIST_PAGE: u32 = 0x4000_0073;
/// VP: SynIC control (bit 0 enable).
pub const SCONTROL: u32 = 0x4000_0080;
/// VP: SynIC version (read-only, 1).
pub const SVERSION: u32 = 0x4000_0081;
/// VP: SynIC event-flags page enable and GPA.
pub const SIEFP: u32 = 0x4000_0082;
/// VP: SynIC message page enable and GPA.
pub const SIMP: u32 = 0x4000_0083;
/// VP: end of message (write-only; redelivers pending messages).
pub const EOM: u32 = 0x4000_0084;
/// VP: SynIC interrupt-redirection base page (not emulated by KVM).
pub const SIRBP: u32 = 0x4000_0085;
/// VP: synthetic interrupt source 0; SINTn = SINT0 + n.
pub const SINT0: u32 = 0x4000_0090;
/// VP: the last SINT (SINT15).
pub const SINT15: u32 = 0x4000_009f;
/// VP: synthetic timer 0 configuration; STIMERn_CONFIG = STIMER0_CONFIG + 2n.
pub const STIMER0_CONFIG: u32 = 0x4000_00b0;
/// VP: synthetic timer 0 count; STIMERn_COUNT = STIMER0_COUNT + 2n.
pub const STIMER0_COUNT: u32 = 0x4000_00b1;
/// VP: the last synthetic timer MSR (STIMER3_COUNT).
pub const STIMER3_COUNT: u32 = 0x4000_00b7;
/// VP: guest idle (reading it idles the VP on Hyper-V; not emulated by KVM).
pub const GUEST_IDLE: u32 = 0x4000_00f0;
/// Partition: synthetic debugger control.
pub const SYNDBG_CONTROL: u32 = 0x4000_00f1;
/// Partition: synthetic debugger status.
pub const SYNDBG_STATUS: u32 = 0x4000_00f2;
/// Partition: synthetic debugger send buffer GPA.
pub const SYNDBG_SEND_BUFFER: u32 = 0x4000_00f3;
/// Partition: synthetic debugger receive buffer GPA.
pub const SYNDBG_RECV_BUFFER: u32 = 0x4000_00f4;
/// Partition: synthetic debugger pending buffer GPA.
pub const SYNDBG_PENDING_BUFFER: u32 = 0x4000_00f5;
/// Partition: synthetic debugger options (bit 2: use hypercalls).
pub const SYNDBG_OPTIONS: u32 = 0x4000_00ff;
/// Partition: crash parameter P0; CRASH_Pn = CRASH_P0 + n, n < 5.
pub const CRASH_P0: u32 = 0x4000_0100;
/// Partition: crash parameter P4.
pub const CRASH_P4: u32 = 0x4000_0104;
/// Partition: crash control ([`CRASH_CTL_NOTIFY`], [`CRASH_CTL_NOTIFY_MSG`]).
pub const CRASH_CTL: u32 = 0x4000_0105;
/// Partition: reenlightenment notification control.
pub const REENLIGHTENMENT_CONTROL: u32 = 0x4000_0106;
/// Partition: TSC emulation control (bit 0 enabled).
pub const TSC_EMULATION_CONTROL: u32 = 0x4000_0107;
/// Partition: TSC emulation status (bit 0 in progress; the guest may only write 0).
pub const TSC_EMULATION_STATUS: u32 = 0x4000_0108;
/// Partition: TSC invariant control (bit 0 exposes invariant TSC; sticky).
pub const TSC_INVARIANT_CONTROL: u32 = 0x4000_0118;

/// First MSR of the Hyper-V range hvkvm's user backend owns.
pub const RANGE_START: u32 = 0x4000_0000;
/// Number of MSRs in that range (0x40000000..=0x400001FF).
pub const RANGE_LEN: u32 = 0x200;

/// Whether `index` lies in the Hyper-V synthetic MSR range.
pub const fn in_range(index: u32) -> bool {
    index >= RANGE_START && index - RANGE_START < RANGE_LEN
}

/// HYPERCALL bit 1: the MSR is locked until reset (`03.EDX[18]`).
pub const HYPERCALL_LOCKED: u64 = 1 << 1;
/// CRASH_CTL bit 63: the guest crashed, P0..P4 are the parameters.
pub const CRASH_CTL_NOTIFY: u64 = 1 << 63;
/// CRASH_CTL bit 62: P3 is the GPA of a message, P4 its length.
pub const CRASH_CTL_NOTIFY_MSG: u64 = 1 << 62;
/// REENLIGHTENMENT_CONTROL: vector `[7:0]`.
pub const REENLIGHTENMENT_VECTOR_MASK: u64 = 0xff;
/// REENLIGHTENMENT_CONTROL: enabled, bit 16.
pub const REENLIGHTENMENT_ENABLED: u64 = 1 << 16;
/// REENLIGHTENMENT_CONTROL: target VP `[63:32]`.
pub const REENLIGHTENMENT_TARGET_VP_SHIFT: u32 = 32;
/// Every bit REENLIGHTENMENT_CONTROL defines (the rest #GPs).
pub const REENLIGHTENMENT_VALID: u64 = 0xffff_ffff_0001_00ff;
/// TSC_EMULATION_CONTROL / TSC_EMULATION_STATUS bit 0.
pub const TSC_EMULATION_BIT: u64 = 1;

/// The name of a synthetic MSR (`None` for indices the TLFS does not define). Allocation-free,
/// so it can be used on the exit path; [`Name`] formats unknown indices as hex.
pub const fn name(index: u32) -> Option<&'static str> {
    Some(match index {
        GUEST_OS_ID => "GUEST_OS_ID",
        HYPERCALL => "HYPERCALL",
        VP_INDEX => "VP_INDEX",
        RESET => "RESET",
        VP_RUNTIME => "VP_RUNTIME",
        TIME_REF_COUNT => "TIME_REF_COUNT",
        REFERENCE_TSC => "REFERENCE_TSC",
        TSC_FREQUENCY => "TSC_FREQUENCY",
        APIC_FREQUENCY => "APIC_FREQUENCY",
        EOI => "EOI",
        ICR => "ICR",
        TPR => "TPR",
        VP_ASSIST_PAGE => "VP_ASSIST_PAGE",
        SCONTROL => "SCONTROL",
        SVERSION => "SVERSION",
        SIEFP => "SIEFP",
        SIMP => "SIMP",
        EOM => "EOM",
        SIRBP => "SIRBP",
        0x4000_0090 => "SINT0",
        0x4000_0091 => "SINT1",
        0x4000_0092 => "SINT2",
        0x4000_0093 => "SINT3",
        0x4000_0094 => "SINT4",
        0x4000_0095 => "SINT5",
        0x4000_0096 => "SINT6",
        0x4000_0097 => "SINT7",
        0x4000_0098 => "SINT8",
        0x4000_0099 => "SINT9",
        0x4000_009a => "SINT10",
        0x4000_009b => "SINT11",
        0x4000_009c => "SINT12",
        0x4000_009d => "SINT13",
        0x4000_009e => "SINT14",
        SINT15 => "SINT15",
        STIMER0_CONFIG => "STIMER0_CONFIG",
        STIMER0_COUNT => "STIMER0_COUNT",
        0x4000_00b2 => "STIMER1_CONFIG",
        0x4000_00b3 => "STIMER1_COUNT",
        0x4000_00b4 => "STIMER2_CONFIG",
        0x4000_00b5 => "STIMER2_COUNT",
        0x4000_00b6 => "STIMER3_CONFIG",
        STIMER3_COUNT => "STIMER3_COUNT",
        GUEST_IDLE => "GUEST_IDLE",
        SYNDBG_CONTROL => "SYNDBG_CONTROL",
        SYNDBG_STATUS => "SYNDBG_STATUS",
        SYNDBG_SEND_BUFFER => "SYNDBG_SEND_BUFFER",
        SYNDBG_RECV_BUFFER => "SYNDBG_RECV_BUFFER",
        SYNDBG_PENDING_BUFFER => "SYNDBG_PENDING_BUFFER",
        SYNDBG_OPTIONS => "SYNDBG_OPTIONS",
        CRASH_P0 => "CRASH_P0",
        0x4000_0101 => "CRASH_P1",
        0x4000_0102 => "CRASH_P2",
        0x4000_0103 => "CRASH_P3",
        CRASH_P4 => "CRASH_P4",
        CRASH_CTL => "CRASH_CTL",
        REENLIGHTENMENT_CONTROL => "REENLIGHTENMENT_CONTROL",
        TSC_EMULATION_CONTROL => "TSC_EMULATION_CONTROL",
        TSC_EMULATION_STATUS => "TSC_EMULATION_STATUS",
        TSC_INVARIANT_CONTROL => "TSC_INVARIANT_CONTROL",
        _ => return None,
    })
}

/// An MSR index that displays as its TLFS name, or as hex when it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(pub u32);

impl core::fmt::Display for Name {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match name(self.0) {
            Some(n) => f.write_str(n),
            None => write!(f, "{:#x}", self.0),
        }
    }
}

/// The MSRs KVM's in-kernel Hyper-V emulation saves and restores (its `emulated_msrs`), which
/// the kernel backend reads back for the usage report and a snapshot needs.
pub const KVM_EMULATED: &[u32] = &[
    GUEST_OS_ID,
    HYPERCALL,
    VP_INDEX,
    RESET,
    VP_RUNTIME,
    TIME_REF_COUNT,
    REFERENCE_TSC,
    TSC_FREQUENCY,
    APIC_FREQUENCY,
    VP_ASSIST_PAGE,
    SCONTROL,
    SVERSION,
    SIEFP,
    SIMP,
    EOM,
    0x4000_0090,
    0x4000_0091,
    0x4000_0092,
    0x4000_0093,
    0x4000_0094,
    0x4000_0095,
    0x4000_0096,
    0x4000_0097,
    0x4000_0098,
    0x4000_0099,
    0x4000_009a,
    0x4000_009b,
    0x4000_009c,
    0x4000_009d,
    0x4000_009e,
    SINT15,
    STIMER0_CONFIG,
    STIMER0_COUNT,
    0x4000_00b2,
    0x4000_00b3,
    0x4000_00b4,
    0x4000_00b5,
    0x4000_00b6,
    STIMER3_COUNT,
    CRASH_P0,
    0x4000_0101,
    0x4000_0102,
    0x4000_0103,
    CRASH_P4,
    CRASH_CTL,
    REENLIGHTENMENT_CONTROL,
    TSC_EMULATION_CONTROL,
    TSC_EMULATION_STATUS,
    TSC_INVARIANT_CONTROL,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kvm_emulated_msr_has_a_name_and_is_in_range() {
        for &index in KVM_EMULATED {
            assert!(name(index).is_some(), "{index:#x}");
            assert!(in_range(index), "{index:#x}");
        }
        assert!(!in_range(RANGE_START + RANGE_LEN));
        assert!(!in_range(0x3fff_ffff));
    }

    #[test]
    fn sint_and_stimer_names_follow_their_index() {
        assert_eq!(name(SINT0 + 7), Some("SINT7"));
        assert_eq!(name(STIMER0_CONFIG + 2 * 3), Some("STIMER3_CONFIG"));
        assert_eq!(name(STIMER0_COUNT + 2), Some("STIMER1_COUNT"));
        assert_eq!(name(0x4000_0199), None);
    }
}
