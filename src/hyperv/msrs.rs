//! Synthetic MSR indices (TLFS; reference §2.1) and the CPUID bit that makes each available.

/// Partition: guest OS identity; writing 0 disables the hypercall page.
pub const GUEST_OS_ID: u32 = 0x4000_0000;
/// Partition: hypercall page enable and GPA.
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
/// VP: ICR alias.
pub const ICR: u32 = 0x4000_0071;
/// VP: TPR alias.
pub const TPR: u32 = 0x4000_0072;
/// VP: VP assist page enable and GPA.
pub const VP_ASSIST_PAGE: u32 = 0x4000_0073;
/// Partition: crash parameter registers P0..P4.
pub const CRASH_P0: u32 = 0x4000_0100;
/// Last crash parameter register.
pub const CRASH_P4: u32 = 0x4000_0104;
/// Partition: crash control (bit 63 CRASH_NOTIFY, bit 62 CRASH_MESSAGE).
pub const CRASH_CTL: u32 = 0x4000_0105;
/// Partition: reenlightenment notification control.
pub const REENLIGHTENMENT_CONTROL: u32 = 0x4000_0106;
/// Partition: TSC emulation control.
pub const TSC_EMULATION_CONTROL: u32 = 0x4000_0107;
/// Partition: TSC emulation status (the guest may only write 0).
pub const TSC_EMULATION_STATUS: u32 = 0x4000_0108;
/// Partition: TSC invariant control.
pub const TSC_INVARIANT_CONTROL: u32 = 0x4000_0118;

/// The MSR range hvkvm's MSR filter sends to the user backend.
pub const RANGE_START: u32 = 0x4000_0000;
/// Number of MSRs in that range.
pub const RANGE_LEN: u32 = 0x200;

/// A readable name for reports.
pub fn name(index: u32) -> String {
    let known = match index {
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
        0x4000_0080 => "SCONTROL",
        0x4000_0081 => "SVERSION",
        0x4000_0082 => "SIEFP",
        0x4000_0083 => "SIMP",
        0x4000_0084 => "EOM",
        0x4000_0090..=0x4000_009f => return format!("SINT{}", index - 0x4000_0090),
        0x4000_00b0..=0x4000_00b7 => {
            let n = (index - 0x4000_00b0) / 2;
            let kind = if index % 2 == 0 { "CONFIG" } else { "COUNT" };
            return format!("STIMER{n}_{kind}");
        }
        0x4000_00f0 => "GUEST_IDLE",
        0x4000_00f1..=0x4000_00f5 | 0x4000_00ff => "SYNDBG",
        CRASH_P0..=CRASH_P4 => return format!("CRASH_P{}", index - CRASH_P0),
        CRASH_CTL => "CRASH_CTL",
        REENLIGHTENMENT_CONTROL => "REENLIGHTENMENT_CONTROL",
        TSC_EMULATION_CONTROL => "TSC_EMULATION_CONTROL",
        TSC_EMULATION_STATUS => "TSC_EMULATION_STATUS",
        TSC_INVARIANT_CONTROL => "TSC_INVARIANT_CONTROL",
        _ => return format!("{index:#x}"),
    };
    known.to_string()
}
