//! The VP assist page (`HV_VP_ASSIST_PAGE`, TLFS "datatypes/hv_vp_assist_page").
//!
//! One 4 KiB page per virtual processor, enabled through MSR `HV_X64_MSR_VP_ASSIST_PAGE`
//! (0x40000073). For nested virtualization it carries the switch that makes VMLAUNCH/VMRESUME use
//! an enlightened VMCS: L1 writes `enlighten_vmentry = 1` and the eVMCS GPA into
//! `current_nested_vmcs`, and executes no VMPTRLD. L0 re-reads both on every nested VM entry.
//!
//! Offsets: the TLFS typedef gives the fields up to `VirtualizationFaultInformation` (0x40); the
//! fields after it (`intercept_message` at 0x70, `vtl_ret_actions` at 0x170) and the 40-byte size
//! of the fault-information area come from Linux `include/hyperv/hvgdk_mini.h`. The TLFS splits
//! Linux's `vtl_reserved` at 0x0C into `VinaStatus` (u8) and two reserved members; this crate
//! follows the TLFS there.

use bitflags::bitflags;

use crate::access::{PageRead, PageWrite};
use crate::layout::layout_struct;
use crate::AccessError;

/// MSR that enables the VP assist page: bit 0 enable, bits 63:12 the page's GPA.
pub const HV_X64_MSR_VP_ASSIST_PAGE: u32 = 0x4000_0073;
/// Enable bit of [`HV_X64_MSR_VP_ASSIST_PAGE`].
pub const VP_ASSIST_PAGE_ENABLE: u64 = 1;
/// GPA bits of [`HV_X64_MSR_VP_ASSIST_PAGE`].
pub const VP_ASSIST_PAGE_ADDRESS_MASK: u64 = !0xFFF;

/// The GPA of the VP assist page named by an `HV_X64_MSR_VP_ASSIST_PAGE` value, or `None` when
/// the enable bit is clear.
pub const fn assist_page_gpa(msr_value: u64) -> Option<u64> {
    if msr_value & VP_ASSIST_PAGE_ENABLE == 0 {
        None
    } else {
        Some(msr_value & VP_ASSIST_PAGE_ADDRESS_MASK)
    }
}

layout_struct! {
    /// The defined part (624 bytes) of the VP assist page; the rest of the 4 KiB page is reserved.
    pub struct VpAssistPage, size = 0x270 {
        /// APIC assist: bit 0 = "no EOI required" (KVM backs it with PV-EOI).
        apic_assist: u32 = 0x000, "ApicAssist";
        /// Reserved, zero.
        rsvd0: u32 = 0x004, "ReservedZ0";
        /// `HV_VTL_ENTRY_REASON`: 1 VTL call, 2 interrupt.
        vtl_entry_reason: u32 = 0x008, "VtlControl.EntryReason";
        /// Bit 0: VINA asserted.
        vina_status: u8 = 0x00C, "VtlControl.VinaStatus";
        /// Reserved, zero.
        rsvd_vtl0: u8 = 0x00D, "VtlControl.ReservedZ00";
        /// Reserved, zero.
        rsvd_vtl1: u16 = 0x00E, "VtlControl.ReservedZ01";
        /// RAX to load on VTL return.
        vtl_ret_x64rax: u64 = 0x010, "VtlControl.VtlReturnX64Rax";
        /// RCX to load on VTL return.
        vtl_ret_x64rcx: u64 = 0x018, "VtlControl.VtlReturnX64Rcx";
        /// `HV_NESTED_ENLIGHTENMENTS_CONTROL.Features` ([`NestedFeatures`]).
        nested_features: u32 = 0x020, "NestedEnlightenmentsControl.Features";
        /// `HV_NESTED_ENLIGHTENMENTS_CONTROL.HypercallControls` ([`NestedHypercallControls`]).
        nested_hypercall_controls: u32 = 0x024, "NestedEnlightenmentsControl.HypercallControls";
        /// Non-zero: VMLAUNCH/VMRESUME use the eVMCS at `current_nested_vmcs`.
        enlighten_vmentry: u8 = 0x028, "EnlightenVmEntry";
        /// Reserved, zero.
        rsvd1: [u8; 7] = 0x029, "ReservedZ1";
        /// GPA of the current enlightened VMCS.
        current_nested_vmcs: u64 = 0x030, "CurrentNestedVmcs";
        /// Set by the hypervisor when the synthetic time-unhalted timer expired.
        synthetic_time_unhalted_timer_expired: u8 = 0x038, "SyntheticTimeUnhaltedTimerExpired";
        /// Reserved, zero.
        rsvd2: [u8; 7] = 0x039, "ReservedZ2";
        /// `HV_VIRTUALIZATION_FAULT_INFORMATION` (16-byte aligned). The TLFS defines its first 16
        /// bytes (u16 parameter0, u16 reserved, u32 code, u64 parameter1); Linux reserves 40.
        virtualization_fault_information: [u8; 40] = 0x040, "VirtualizationFaultInformation";
        /// Reserved, zero.
        rsvd3: [u8; 8] = 0x068;
        /// Intercept message (an `HV_MESSAGE`) for a higher VTL.
        intercept_message: [u8; 256] = 0x070;
        /// VTL return actions.
        vtl_ret_actions: [u8; 256] = 0x170;
    }
}

bitflags! {
    /// `HV_NESTED_ENLIGHTENMENTS_CONTROL.Features` (VP assist page offset 0x20).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct NestedFeatures: u32 {
        /// Bit 0 `DirectHypercall`: L0 handles L2's hypercalls that L1 allows (direct L2 TLB
        /// flush) instead of reflecting them to L1.
        const DIRECT_HYPERCALL = 1 << 0;
        /// Bit 1 `VirtualizationException` (TLFS; not in the Linux definition).
        const VIRTUALIZATION_EXCEPTION = 1 << 1;
    }
}

bitflags! {
    /// `HV_NESTED_ENLIGHTENMENTS_CONTROL.HypercallControls` (VP assist page offset 0x24).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct NestedHypercallControls: u32 {
        /// Bit 0 `InterPartitionCommunication`.
        const INTER_PARTITION_COMMUNICATION = 1 << 0;
    }
}

/// Offset of `enlighten_vmentry`.
pub const ENLIGHTEN_VMENTRY_OFFSET: usize = memoffset::offset_of!(VpAssistPage, enlighten_vmentry);
/// Offset of `current_nested_vmcs`.
pub const CURRENT_NESTED_VMCS_OFFSET: usize =
    memoffset::offset_of!(VpAssistPage, current_nested_vmcs);
/// Offset of `nested_features` (`NestedEnlightenmentsControl.Features`).
pub const NESTED_FEATURES_OFFSET: usize = memoffset::offset_of!(VpAssistPage, nested_features);

/// The eVMCS GPA an L0 must use for the next nested VM entry: `Some(current_nested_vmcs)` when
/// `enlighten_vmentry` is non-zero, `None` when L1 uses ordinary VMPTRLD.
///
/// # Errors
/// [`AccessError`] when `page` is too short or its backing fails.
pub fn current_evmcs<M: PageRead + ?Sized>(page: &M) -> Result<Option<u64>, AccessError> {
    if page.read_le(ENLIGHTEN_VMENTRY_OFFSET, 1)? == 0 {
        return Ok(None);
    }
    page.read_le(CURRENT_NESTED_VMCS_OFFSET, 8).map(Some)
}

/// L1 side: `Some(gpa)` writes `current_nested_vmcs = gpa` and then `enlighten_vmentry = 1`;
/// `None` writes `enlighten_vmentry = 0` (back to VMPTRLD) and leaves the GPA alone.
///
/// # Errors
/// [`AccessError`] when `page` is too short or its backing fails.
pub fn set_current_evmcs<M: PageWrite + ?Sized>(
    page: &mut M,
    gpa: Option<u64>,
) -> Result<(), AccessError> {
    match gpa {
        Some(gpa) => {
            page.write_le(CURRENT_NESTED_VMCS_OFFSET, 8, gpa)?;
            page.write_le(ENLIGHTEN_VMENTRY_OFFSET, 1, 1)
        }
        None => page.write_le(ENLIGHTEN_VMENTRY_OFFSET, 1, 0),
    }
}

/// `NestedEnlightenmentsControl.Features`; unknown bits are kept.
///
/// # Errors
/// [`AccessError`] when `page` is too short or its backing fails.
pub fn nested_features<M: PageRead + ?Sized>(page: &M) -> Result<NestedFeatures, AccessError> {
    let raw = page.read_le(NESTED_FEATURES_OFFSET, 4)?;
    Ok(NestedFeatures::from_bits_retain(raw as u32))
}

/// Writes `NestedEnlightenmentsControl.Features`.
///
/// # Errors
/// [`AccessError`] when `page` is too short or its backing fails.
pub fn set_nested_features<M: PageWrite + ?Sized>(
    page: &mut M,
    features: NestedFeatures,
) -> Result<(), AccessError> {
    page.write_le(NESTED_FEATURES_OFFSET, 4, u64::from(features.bits()))
}
