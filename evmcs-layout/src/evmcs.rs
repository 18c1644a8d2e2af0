//! The enlightened VMCS v1 (`HV_VMX_ENLIGHTENED_VMCS`, TLFS "datatypes/hv_vmx_enlightened_vmcs").
//!
//! An L1 hypervisor running on Hyper-V keeps its VMCS for an L2 guest in ordinary memory instead
//! of a processor-owned VMCS: one zeroed 4 KiB page, of which the first 1024 bytes are this
//! structure. It writes fields directly, clears the clean-field bit of every group it touched,
//! and names the page through the VP assist page (see [`crate::vp_assist`]); L0 then loads only
//! the groups whose clean bit is clear.
//!
//! Where the offsets come from: every row below carries the offset obtained by compiling the
//! TLFS typedef (natural x86-64 alignment) and, for the twelve members the stored TLFS page
//! still shows inside `Rsvd6`/`Rsvd7`, Linux `include/hyperv/hvgdk.h`. Both definitions agree
//! on every byte. The compile-time assertions generated for each row check that `#[repr(C)]`
//! puts every member exactly there. Member names follow Linux/KVM (they are the VMCS field names);
//! each carries its TLFS name in the docs and in [`HvEnlightenedVmcs::MEMBERS`].

use crate::layout::layout_struct;

layout_struct! {
    /// `HV_VMX_ENLIGHTENED_VMCS`: the 1024-byte enlightened VMCS v1.
    ///
    /// Natural-width VMCS fields are stored as `u64`. Members named `rsvd*` are reserved and must
    /// be zero. Use [`HvEnlightenedVmcs::from_bytes`] to take a snapshot of a guest's eVMCS and
    /// the [`crate::access`] functions to work on the bytes in place.
    pub struct HvEnlightenedVmcs, size = 0x400 {
        /// Must equal the eVMCS version ([`crate::EVMCS_VERSION`], 1); L0 fails VM entry otherwise.
        revision_id: u32 = 0x000, "VersionNumber";
        /// VMX-abort indicator.
        abort: u32 = 0x004, "AbortIndicator";
        host_es_selector: u16 = 0x008, "HostEsSelector";
        host_cs_selector: u16 = 0x00A, "HostCsSelector";
        host_ss_selector: u16 = 0x00C, "HostSsSelector";
        host_ds_selector: u16 = 0x00E, "HostDsSelector";
        host_fs_selector: u16 = 0x010, "HostFsSelector";
        host_gs_selector: u16 = 0x012, "HostGsSelector";
        host_tr_selector: u16 = 0x014, "HostTrSelector";
        /// Reserved, zero (implicit padding in the TLFS definition).
        rsvd0: u16 = 0x016;
        host_ia32_pat: u64 = 0x018, "HostPat";
        host_ia32_efer: u64 = 0x020, "HostEfer";
        host_cr0: u64 = 0x028, "HostCr0";
        host_cr3: u64 = 0x030, "HostCr3";
        host_cr4: u64 = 0x038, "HostCr4";
        host_ia32_sysenter_esp: u64 = 0x040, "HostSysenterEspMsr";
        host_ia32_sysenter_eip: u64 = 0x048, "HostSysenterEipMsr";
        host_rip: u64 = 0x050, "HostRip";
        host_ia32_sysenter_cs: u32 = 0x058, "HostSysenterCsMsr";
        pin_based_vm_exec_control: u32 = 0x05C, "PinControls";
        vm_exit_controls: u32 = 0x060, "ExitControls";
        secondary_vm_exec_control: u32 = 0x064, "SecondaryProcessorControls";
        io_bitmap_a: u64 = 0x068, "IoBitmapA";
        io_bitmap_b: u64 = 0x070, "IoBitmapB";
        msr_bitmap: u64 = 0x078, "MsrBitmap";
        guest_es_selector: u16 = 0x080, "GuestEsSelector";
        guest_cs_selector: u16 = 0x082, "GuestCsSelector";
        guest_ss_selector: u16 = 0x084, "GuestSsSelector";
        guest_ds_selector: u16 = 0x086, "GuestDsSelector";
        guest_fs_selector: u16 = 0x088, "GuestFsSelector";
        guest_gs_selector: u16 = 0x08A, "GuestGsSelector";
        guest_ldtr_selector: u16 = 0x08C, "GuestLdtrSelector";
        guest_tr_selector: u16 = 0x08E, "GuestTrSelector";
        guest_es_limit: u32 = 0x090, "GuestEsLimit";
        guest_cs_limit: u32 = 0x094, "GuestCsLimit";
        guest_ss_limit: u32 = 0x098, "GuestSsLimit";
        guest_ds_limit: u32 = 0x09C, "GuestDsLimit";
        guest_fs_limit: u32 = 0x0A0, "GuestFsLimit";
        guest_gs_limit: u32 = 0x0A4, "GuestGsLimit";
        guest_ldtr_limit: u32 = 0x0A8, "GuestLdtrLimit";
        guest_tr_limit: u32 = 0x0AC, "GuestTrLimit";
        guest_gdtr_limit: u32 = 0x0B0, "GuestGdtrLimit";
        guest_idtr_limit: u32 = 0x0B4, "GuestIdtrLimit";
        guest_es_ar_bytes: u32 = 0x0B8, "GuestEsAttributes";
        guest_cs_ar_bytes: u32 = 0x0BC, "GuestCsAttributes";
        guest_ss_ar_bytes: u32 = 0x0C0, "GuestSsAttributes";
        guest_ds_ar_bytes: u32 = 0x0C4, "GuestDsAttributes";
        guest_fs_ar_bytes: u32 = 0x0C8, "GuestFsAttributes";
        guest_gs_ar_bytes: u32 = 0x0CC, "GuestGsAttributes";
        guest_ldtr_ar_bytes: u32 = 0x0D0, "GuestLdtrAttributes";
        guest_tr_ar_bytes: u32 = 0x0D4, "GuestTrAttributes";
        guest_es_base: u64 = 0x0D8, "GuestEsBase";
        guest_cs_base: u64 = 0x0E0, "GuestCsBase";
        guest_ss_base: u64 = 0x0E8, "GuestSsBase";
        guest_ds_base: u64 = 0x0F0, "GuestDsBase";
        guest_fs_base: u64 = 0x0F8, "GuestFsBase";
        guest_gs_base: u64 = 0x100, "GuestGsBase";
        guest_ldtr_base: u64 = 0x108, "GuestLdtrBase";
        guest_tr_base: u64 = 0x110, "GuestTrBase";
        guest_gdtr_base: u64 = 0x118, "GuestGdtrBase";
        guest_idtr_base: u64 = 0x120, "GuestIdtrBase";
        /// Reserved, zero.
        rsvd1: [u64; 3] = 0x128, "Rsvd1";
        vm_exit_msr_store_addr: u64 = 0x140, "ExitMsrStoreAddress";
        vm_exit_msr_load_addr: u64 = 0x148, "ExitMsrLoadAddress";
        vm_entry_msr_load_addr: u64 = 0x150, "EntryMsrLoadAddress";
        cr3_target_value0: u64 = 0x158, "Cr3Target0";
        cr3_target_value1: u64 = 0x160, "Cr3Target1";
        cr3_target_value2: u64 = 0x168, "Cr3Target2";
        cr3_target_value3: u64 = 0x170, "Cr3Target3";
        page_fault_error_code_mask: u32 = 0x178, "PfecMask";
        page_fault_error_code_match: u32 = 0x17C, "PfecMatch";
        cr3_target_count: u32 = 0x180, "Cr3TargetCount";
        vm_exit_msr_store_count: u32 = 0x184, "ExitMsrStoreCount";
        vm_exit_msr_load_count: u32 = 0x188, "ExitMsrLoadCount";
        vm_entry_msr_load_count: u32 = 0x18C, "EntryMsrLoadCount";
        tsc_offset: u64 = 0x190, "TscOffset";
        virtual_apic_page_addr: u64 = 0x198, "VirtualApicPage";
        /// VMCS link pointer (TLFS name `GuestWorkingVmcsPtr`).
        vmcs_link_pointer: u64 = 0x1A0, "GuestWorkingVmcsPtr";
        guest_ia32_debugctl: u64 = 0x1A8, "GuestIa32DebugCtl";
        guest_ia32_pat: u64 = 0x1B0, "GuestPat";
        guest_ia32_efer: u64 = 0x1B8, "GuestEfer";
        guest_pdptr0: u64 = 0x1C0, "GuestPdpte0";
        guest_pdptr1: u64 = 0x1C8, "GuestPdpte1";
        guest_pdptr2: u64 = 0x1D0, "GuestPdpte2";
        guest_pdptr3: u64 = 0x1D8, "GuestPdpte3";
        guest_pending_dbg_exceptions: u64 = 0x1E0, "GuestPendingDebugExceptions";
        guest_sysenter_esp: u64 = 0x1E8, "GuestSysenterEspMsr";
        guest_sysenter_eip: u64 = 0x1F0, "GuestSysenterEipMsr";
        /// Guest activity state (TLFS name `GuestSleepState`).
        guest_activity_state: u32 = 0x1F8, "GuestSleepState";
        guest_sysenter_cs: u32 = 0x1FC, "GuestSysenterCsMsr";
        cr0_guest_host_mask: u64 = 0x200, "Cr0GuestHostMask";
        cr4_guest_host_mask: u64 = 0x208, "Cr4GuestHostMask";
        cr0_read_shadow: u64 = 0x210, "Cr0ReadShadow";
        cr4_read_shadow: u64 = 0x218, "Cr4ReadShadow";
        guest_cr0: u64 = 0x220, "GuestCr0";
        guest_cr3: u64 = 0x228, "GuestCr3";
        guest_cr4: u64 = 0x230, "GuestCr4";
        guest_dr7: u64 = 0x238, "GuestDr7";
        host_fs_base: u64 = 0x240, "HostFsBase";
        host_gs_base: u64 = 0x248, "HostGsBase";
        host_tr_base: u64 = 0x250, "HostTrBase";
        host_gdtr_base: u64 = 0x258, "HostGdtrBase";
        host_idtr_base: u64 = 0x260, "HostIdtrBase";
        host_rsp: u64 = 0x268, "HostRsp";
        /// EPT pointer (TLFS name `EptRoot`).
        ept_pointer: u64 = 0x270, "EptRoot";
        virtual_processor_id: u16 = 0x278, "Vpid";
        /// Reserved, zero.
        rsvd2: [u16; 3] = 0x27A, "Rsvd2";
        /// Reserved, zero.
        rsvd3: [u64; 5] = 0x280, "Rsvd3";
        /// Guest-physical address of an EPT exit (TLFS name `ExitEptFaultGpa`).
        guest_physical_address: u64 = 0x2A8, "ExitEptFaultGpa";
        vm_instruction_error: u32 = 0x2B0, "ExitInstructionError";
        vm_exit_reason: u32 = 0x2B4, "ExitReason";
        vm_exit_intr_info: u32 = 0x2B8, "ExitInterruptionInfo";
        vm_exit_intr_error_code: u32 = 0x2BC, "ExitExceptionErrorCode";
        idt_vectoring_info_field: u32 = 0x2C0, "ExitIdtVectoringInfo";
        idt_vectoring_error_code: u32 = 0x2C4, "ExitIdtVectoringErrorCode";
        vm_exit_instruction_len: u32 = 0x2C8, "ExitInstructionLength";
        vmx_instruction_info: u32 = 0x2CC, "ExitInstructionInfo";
        exit_qualification: u64 = 0x2D0, "ExitQualification";
        exit_io_instruction_ecx: u64 = 0x2D8, "ExitIoInstructionEcx";
        exit_io_instruction_esi: u64 = 0x2E0, "ExitIoInstructionEsi";
        exit_io_instruction_edi: u64 = 0x2E8, "ExitIoInstructionEdi";
        exit_io_instruction_eip: u64 = 0x2F0, "ExitIoInstructionEip";
        guest_linear_address: u64 = 0x2F8, "GuestLinearAddress";
        guest_rsp: u64 = 0x300, "GuestRsp";
        guest_rflags: u64 = 0x308, "GuestRflags";
        guest_interruptibility_info: u32 = 0x310, "GuestInterruptibility";
        cpu_based_vm_exec_control: u32 = 0x314, "ProcessorControls";
        exception_bitmap: u32 = 0x318, "ExceptionBitmap";
        vm_entry_controls: u32 = 0x31C, "EntryControls";
        vm_entry_intr_info_field: u32 = 0x320, "EntryInterruptInfo";
        vm_entry_exception_error_code: u32 = 0x324, "EntryExceptionErrorCode";
        vm_entry_instruction_len: u32 = 0x328, "EntryInstructionLength";
        tpr_threshold: u32 = 0x32C, "TprThreshold";
        guest_rip: u64 = 0x330, "GuestRip";
        /// Clean-field bits ([`crate::CleanFields`]): a set bit tells L0 that group is unchanged
        /// since the last VM entry.
        hv_clean_fields: u32 = 0x338, "CleanFields";
        /// Reserved, zero.
        rsvd4: u32 = 0x33C, "Rsvd4";
        /// Synthetic controls (no bits defined for nested VMX).
        hv_synthetic_controls: u32 = 0x340, "SyntheticControls";
        /// Enlightenments control ([`crate::EnlightenmentsControl`]): bit 0 nested flush hypercall,
        /// bit 1 enlightened MSR bitmap.
        hv_enlightenments_control: u32 = 0x344, "EnlightenmentsControl";
        /// VP index of this L2 vCPU as seen by L1 (used by direct L2 TLB flush).
        hv_vp_id: u32 = 0x348, "VpId";
        /// Reserved, zero (implicit padding in the TLFS definition).
        rsvd4b: u32 = 0x34C;
        /// Identifier of the L2 VM, chosen by L1 (used by direct L2 TLB flush).
        hv_vm_id: u64 = 0x350, "VmId";
        /// GPA of the partition assist page (`tlb_lock_count` at offset 0) for direct L2 TLB flush.
        partition_assist_page: u64 = 0x358, "PartitionAssistPage";
        /// Reserved, zero.
        rsvd5: [u64; 4] = 0x360, "Rsvd5";
        guest_bndcfgs: u64 = 0x380, "GuestBndcfgs";
        /// Guest IA32_PERF_GLOBAL_CTRL. Inside `Rsvd6` on the stored TLFS page; defined by Linux
        /// `hvgdk.h`.
        guest_ia32_perf_global_ctrl: u64 = 0x388;
        /// Guest IA32_S_CET. Inside `Rsvd6` on the stored TLFS page; defined by Linux `hvgdk.h`.
        guest_ia32_s_cet: u64 = 0x390;
        /// Guest SSP. Inside `Rsvd6` on the stored TLFS page; defined by Linux `hvgdk.h`.
        guest_ssp: u64 = 0x398;
        /// Guest IA32_INTERRUPT_SSP_TABLE_ADDR. Inside `Rsvd6` on the stored TLFS page; defined by
        /// Linux `hvgdk.h`.
        guest_ia32_int_ssp_table_addr: u64 = 0x3A0;
        /// Guest IA32_LBR_CTL. Inside `Rsvd6` on the stored TLFS page; defined by Linux `hvgdk.h`.
        guest_ia32_lbr_ctl: u64 = 0x3A8;
        /// Reserved, zero (the last 16 bytes of the TLFS `Rsvd6[7]`).
        rsvd6: [u64; 2] = 0x3B0;
        xss_exit_bitmap: u64 = 0x3C0, "XssExitingBitmap";
        encls_exiting_bitmap: u64 = 0x3C8, "EnclsExitingBitmap";
        /// Host IA32_PERF_GLOBAL_CTRL. Inside `Rsvd7` on the stored TLFS page; defined by Linux
        /// `hvgdk.h`.
        host_ia32_perf_global_ctrl: u64 = 0x3D0;
        /// TSC multiplier. Inside `Rsvd7` on the stored TLFS page; defined by Linux `hvgdk.h`.
        tsc_multiplier: u64 = 0x3D8;
        /// Host IA32_S_CET. Inside `Rsvd7` on the stored TLFS page; defined by Linux `hvgdk.h`.
        host_ia32_s_cet: u64 = 0x3E0;
        /// Host SSP. Inside `Rsvd7` on the stored TLFS page; defined by Linux `hvgdk.h`.
        host_ssp: u64 = 0x3E8;
        /// Host IA32_INTERRUPT_SSP_TABLE_ADDR. Inside `Rsvd7` on the stored TLFS page; defined by
        /// Linux `hvgdk.h`.
        host_ia32_int_ssp_table_addr: u64 = 0x3F0;
        /// Reserved, zero (the last 8 bytes of the TLFS `Rsvd7[6]`).
        rsvd7: u64 = 0x3F8;
    }
}

/// Offset of `hv_clean_fields` (TLFS `CleanFields`).
pub const CLEAN_FIELDS_OFFSET: usize = memoffset::offset_of!(HvEnlightenedVmcs, hv_clean_fields);
/// Offset of `revision_id` (TLFS `VersionNumber`).
pub const REVISION_ID_OFFSET: usize = memoffset::offset_of!(HvEnlightenedVmcs, revision_id);
