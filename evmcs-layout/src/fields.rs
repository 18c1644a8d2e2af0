//! The eVMCS v1 field map: VMCS encoding → (offset, size, clean-field group).
//!
//! This is the information Linux keeps in `vmcs_field_to_evmcs_1[]` (`EVMCS1_FIELD(...)` in
//! `arch/x86/kvm/vmx/hyperv_evmcs.c`) and the TLFS in the "Physical VMCS Encoding" table, written
//! out in full:
//! - the seven CET fields and `guest_ia32_lbr_ctl`, which KVM lists only in a comment, are
//!   included with the groups that comment gives;
//! - the four I/O-SMI exit fields (`exit_io_instruction_*`, 0x6402..0x6408) are included as
//!   read-only [`CleanGroup::Always`] fields;
//! - the four CR3-target values (0x6008..0x600E), which have a home in the eVMCS but appear in
//!   neither table, are included with [`CleanGroup::All`] like the CR3-target count.
//!
//! The table is ordered by clean group ([`CleanGroup`] discriminant order) so that a sync can
//! walk only the dirty groups; inside a group, rows follow the eVMCS layout. Offsets and sizes are
//! taken from [`HvEnlightenedVmcs`] itself, whose offsets are asserted against the TLFS-derived
//! values, and a compile-time check verifies that each row's size matches the width class of its
//! encoding and that no encoding appears twice.

use crate::clean::CleanGroup;
use crate::evmcs::HvEnlightenedVmcs;
use crate::vmcs::{self, FieldType, FieldWidth};

/// One VMCS field that has a home in the eVMCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EvmcsField {
    /// VMCS encoding (the "full" access encoding; bit 0 clear).
    pub encoding: u32,
    /// Name of the encoding, e.g. `"GUEST_RIP"` (constant name in [`crate::vmcs`]).
    pub vmcs_name: &'static str,
    /// Name of the [`HvEnlightenedVmcs`] member that stores it.
    pub name: &'static str,
    /// Byte offset inside the eVMCS.
    pub offset: u16,
    /// Size in bytes inside the eVMCS (2, 4 or 8; natural width is stored as 8).
    pub size: u8,
    /// The clean-field group that covers it.
    pub group: CleanGroup,
}

impl EvmcsField {
    /// Width class of the encoding.
    #[inline]
    pub const fn width(&self) -> FieldWidth {
        FieldWidth::of(self.encoding)
    }

    /// Field type of the encoding (control, read-only exit information, guest, host).
    #[inline]
    pub const fn field_type(&self) -> FieldType {
        FieldType::of(self.encoding)
    }

    /// True for VM-exit information fields: L0 writes them on VM exit, L1 only reads them.
    #[inline]
    pub const fn is_read_only(&self) -> bool {
        matches!(self.field_type(), FieldType::ReadOnly)
    }

    /// One past the last byte of the field inside the eVMCS.
    #[inline]
    pub const fn end(&self) -> usize {
        self.offset as usize + self.size as usize
    }
}

/// Size of the pointee, to take a member's size from the struct rather than restating it.
const fn member_size<T>(_: &T) -> usize {
    core::mem::size_of::<T>()
}

macro_rules! one {
    ($x:ident) => {
        1
    };
}

macro_rules! field_table {
    ($( $group:ident { $( $enc:ident => $member:ident, )* } )*) => {
        /// Number of rows in [`FIELD_TABLE`].
        pub const FIELD_COUNT: usize = 0 $($( + one!($enc) )*)*;

        /// Every VMCS field eVMCS v1 can hold, grouped by clean-field group (see the module docs).
        pub const FIELD_TABLE: &[EvmcsField; FIELD_COUNT] = &[
            $($(
                EvmcsField {
                    encoding: vmcs::$enc,
                    vmcs_name: stringify!($enc),
                    name: stringify!($member),
                    offset: memoffset::offset_of!(HvEnlightenedVmcs, $member) as u16,
                    size: member_size(&HvEnlightenedVmcs::ZERO.$member) as u8,
                    group: CleanGroup::$group,
                },
            )*)*
        ];
    };
}

field_table! {
    // TLFS NONE: reloaded on every entry, plus the read-only exit information L0 fills in.
    Always {
        TPR_THRESHOLD => tpr_threshold,
        GUEST_RIP => guest_rip,
        GUEST_PHYSICAL_ADDRESS => guest_physical_address,
        VM_INSTRUCTION_ERROR => vm_instruction_error,
        VM_EXIT_REASON => vm_exit_reason,
        VM_EXIT_INTR_INFO => vm_exit_intr_info,
        VM_EXIT_INTR_ERROR_CODE => vm_exit_intr_error_code,
        IDT_VECTORING_INFO_FIELD => idt_vectoring_info_field,
        IDT_VECTORING_ERROR_CODE => idt_vectoring_error_code,
        VM_EXIT_INSTRUCTION_LEN => vm_exit_instruction_len,
        VMX_INSTRUCTION_INFO => vmx_instruction_info,
        EXIT_QUALIFICATION => exit_qualification,
        EXIT_IO_INSTRUCTION_ECX => exit_io_instruction_ecx,
        EXIT_IO_INSTRUCTION_ESI => exit_io_instruction_esi,
        EXIT_IO_INSTRUCTION_EDI => exit_io_instruction_edi,
        EXIT_IO_INSTRUCTION_EIP => exit_io_instruction_eip,
        GUEST_LINEAR_ADDRESS => guest_linear_address,
    }
    // Bit 0.
    IoBitmap {
        IO_BITMAP_A => io_bitmap_a,
        IO_BITMAP_B => io_bitmap_b,
    }
    // Bit 1.
    MsrBitmap {
        MSR_BITMAP => msr_bitmap,
    }
    // Bit 2.
    ControlGrp2 {
        TSC_OFFSET => tsc_offset,
        VIRTUAL_APIC_PAGE_ADDR => virtual_apic_page_addr,
        XSS_EXIT_BITMAP => xss_exit_bitmap,
        ENCLS_EXITING_BITMAP => encls_exiting_bitmap,
        TSC_MULTIPLIER => tsc_multiplier,
    }
    // Bit 3.
    ControlGrp1 {
        PIN_BASED_VM_EXEC_CONTROL => pin_based_vm_exec_control,
        VM_EXIT_CONTROLS => vm_exit_controls,
        SECONDARY_VM_EXEC_CONTROL => secondary_vm_exec_control,
    }
    // Bit 4.
    ControlProc {
        CPU_BASED_VM_EXEC_CONTROL => cpu_based_vm_exec_control,
    }
    // Bit 5.
    ControlEvent {
        VM_ENTRY_INTR_INFO_FIELD => vm_entry_intr_info_field,
        VM_ENTRY_EXCEPTION_ERROR_CODE => vm_entry_exception_error_code,
        VM_ENTRY_INSTRUCTION_LEN => vm_entry_instruction_len,
    }
    // Bit 6.
    ControlEntry {
        VM_ENTRY_CONTROLS => vm_entry_controls,
    }
    // Bit 7.
    ControlExcpn {
        EXCEPTION_BITMAP => exception_bitmap,
    }
    // Bit 8.
    Crdr {
        CR0_GUEST_HOST_MASK => cr0_guest_host_mask,
        CR4_GUEST_HOST_MASK => cr4_guest_host_mask,
        CR0_READ_SHADOW => cr0_read_shadow,
        CR4_READ_SHADOW => cr4_read_shadow,
        GUEST_CR0 => guest_cr0,
        GUEST_CR3 => guest_cr3,
        GUEST_CR4 => guest_cr4,
        GUEST_DR7 => guest_dr7,
    }
    // Bit 9.
    ControlXlat {
        EPT_POINTER => ept_pointer,
        VIRTUAL_PROCESSOR_ID => virtual_processor_id,
    }
    // Bit 10. Guest SSP is here, not in GUEST_GRP1 (KVM's commented EVMCS1_FIELD line).
    GuestBasic {
        GUEST_RSP => guest_rsp,
        GUEST_RFLAGS => guest_rflags,
        GUEST_INTERRUPTIBILITY_INFO => guest_interruptibility_info,
        GUEST_SSP => guest_ssp,
    }
    // Bit 11.
    GuestGrp1 {
        VMCS_LINK_POINTER => vmcs_link_pointer,
        GUEST_IA32_DEBUGCTL => guest_ia32_debugctl,
        GUEST_IA32_PAT => guest_ia32_pat,
        GUEST_IA32_EFER => guest_ia32_efer,
        GUEST_PDPTR0 => guest_pdptr0,
        GUEST_PDPTR1 => guest_pdptr1,
        GUEST_PDPTR2 => guest_pdptr2,
        GUEST_PDPTR3 => guest_pdptr3,
        GUEST_PENDING_DBG_EXCEPTIONS => guest_pending_dbg_exceptions,
        GUEST_SYSENTER_ESP => guest_sysenter_esp,
        GUEST_SYSENTER_EIP => guest_sysenter_eip,
        GUEST_ACTIVITY_STATE => guest_activity_state,
        GUEST_SYSENTER_CS => guest_sysenter_cs,
        GUEST_BNDCFGS => guest_bndcfgs,
        GUEST_IA32_PERF_GLOBAL_CTRL => guest_ia32_perf_global_ctrl,
        GUEST_S_CET => guest_ia32_s_cet,
        GUEST_INTR_SSP_TABLE => guest_ia32_int_ssp_table_addr,
        GUEST_IA32_LBR_CTL => guest_ia32_lbr_ctl,
    }
    // Bit 12.
    GuestGrp2 {
        GUEST_ES_SELECTOR => guest_es_selector,
        GUEST_CS_SELECTOR => guest_cs_selector,
        GUEST_SS_SELECTOR => guest_ss_selector,
        GUEST_DS_SELECTOR => guest_ds_selector,
        GUEST_FS_SELECTOR => guest_fs_selector,
        GUEST_GS_SELECTOR => guest_gs_selector,
        GUEST_LDTR_SELECTOR => guest_ldtr_selector,
        GUEST_TR_SELECTOR => guest_tr_selector,
        GUEST_ES_LIMIT => guest_es_limit,
        GUEST_CS_LIMIT => guest_cs_limit,
        GUEST_SS_LIMIT => guest_ss_limit,
        GUEST_DS_LIMIT => guest_ds_limit,
        GUEST_FS_LIMIT => guest_fs_limit,
        GUEST_GS_LIMIT => guest_gs_limit,
        GUEST_LDTR_LIMIT => guest_ldtr_limit,
        GUEST_TR_LIMIT => guest_tr_limit,
        GUEST_GDTR_LIMIT => guest_gdtr_limit,
        GUEST_IDTR_LIMIT => guest_idtr_limit,
        GUEST_ES_AR_BYTES => guest_es_ar_bytes,
        GUEST_CS_AR_BYTES => guest_cs_ar_bytes,
        GUEST_SS_AR_BYTES => guest_ss_ar_bytes,
        GUEST_DS_AR_BYTES => guest_ds_ar_bytes,
        GUEST_FS_AR_BYTES => guest_fs_ar_bytes,
        GUEST_GS_AR_BYTES => guest_gs_ar_bytes,
        GUEST_LDTR_AR_BYTES => guest_ldtr_ar_bytes,
        GUEST_TR_AR_BYTES => guest_tr_ar_bytes,
        GUEST_ES_BASE => guest_es_base,
        GUEST_CS_BASE => guest_cs_base,
        GUEST_SS_BASE => guest_ss_base,
        GUEST_DS_BASE => guest_ds_base,
        GUEST_FS_BASE => guest_fs_base,
        GUEST_GS_BASE => guest_gs_base,
        GUEST_LDTR_BASE => guest_ldtr_base,
        GUEST_TR_BASE => guest_tr_base,
        GUEST_GDTR_BASE => guest_gdtr_base,
        GUEST_IDTR_BASE => guest_idtr_base,
    }
    // Bit 13.
    HostPointer {
        HOST_FS_BASE => host_fs_base,
        HOST_GS_BASE => host_gs_base,
        HOST_TR_BASE => host_tr_base,
        HOST_GDTR_BASE => host_gdtr_base,
        HOST_IDTR_BASE => host_idtr_base,
        HOST_RSP => host_rsp,
    }
    // Bit 14.
    HostGrp1 {
        HOST_ES_SELECTOR => host_es_selector,
        HOST_CS_SELECTOR => host_cs_selector,
        HOST_SS_SELECTOR => host_ss_selector,
        HOST_DS_SELECTOR => host_ds_selector,
        HOST_FS_SELECTOR => host_fs_selector,
        HOST_GS_SELECTOR => host_gs_selector,
        HOST_TR_SELECTOR => host_tr_selector,
        HOST_IA32_PAT => host_ia32_pat,
        HOST_IA32_EFER => host_ia32_efer,
        HOST_CR0 => host_cr0,
        HOST_CR3 => host_cr3,
        HOST_CR4 => host_cr4,
        HOST_IA32_SYSENTER_ESP => host_ia32_sysenter_esp,
        HOST_IA32_SYSENTER_EIP => host_ia32_sysenter_eip,
        HOST_RIP => host_rip,
        HOST_IA32_SYSENTER_CS => host_ia32_sysenter_cs,
        HOST_IA32_PERF_GLOBAL_CTRL => host_ia32_perf_global_ctrl,
        HOST_S_CET => host_ia32_s_cet,
        HOST_SSP => host_ssp,
        HOST_INTR_SSP_TABLE => host_ia32_int_ssp_table_addr,
    }
    // Bit 15 (ENLIGHTENMENTSCONTROL) covers only synthetic fields: see `SyntheticField`.
    // No group in the TLFS.
    All {
        VM_EXIT_MSR_STORE_ADDR => vm_exit_msr_store_addr,
        VM_EXIT_MSR_LOAD_ADDR => vm_exit_msr_load_addr,
        VM_ENTRY_MSR_LOAD_ADDR => vm_entry_msr_load_addr,
        CR3_TARGET_VALUE0 => cr3_target_value0,
        CR3_TARGET_VALUE1 => cr3_target_value1,
        CR3_TARGET_VALUE2 => cr3_target_value2,
        CR3_TARGET_VALUE3 => cr3_target_value3,
        PAGE_FAULT_ERROR_CODE_MASK => page_fault_error_code_mask,
        PAGE_FAULT_ERROR_CODE_MATCH => page_fault_error_code_match,
        CR3_TARGET_COUNT => cr3_target_count,
        VM_EXIT_MSR_STORE_COUNT => vm_exit_msr_store_count,
        VM_EXIT_MSR_LOAD_COUNT => vm_exit_msr_load_count,
        VM_ENTRY_MSR_LOAD_COUNT => vm_entry_msr_load_count,
    }
}

/// eVMCS members that have no VMCS encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyntheticField {
    /// `revision_id` (TLFS `VersionNumber`), u32.
    RevisionId,
    /// `abort` (TLFS `AbortIndicator`), u32.
    Abort,
    /// `hv_clean_fields` (TLFS `CleanFields`), u32.
    CleanFields,
    /// `hv_synthetic_controls` (TLFS `SyntheticControls`), u32.
    SyntheticControls,
    /// `hv_enlightenments_control` (TLFS `EnlightenmentsControl`), u32.
    EnlightenmentsControl,
    /// `hv_vp_id` (TLFS `VpId`), u32.
    VpId,
    /// `hv_vm_id` (TLFS `VmId`), u64.
    VmId,
    /// `partition_assist_page` (TLFS `PartitionAssistPage`), u64.
    PartitionAssistPage,
}

impl SyntheticField {
    /// Every synthetic member, in layout order.
    pub const ALL: [Self; 8] = [
        Self::RevisionId,
        Self::Abort,
        Self::CleanFields,
        Self::SyntheticControls,
        Self::EnlightenmentsControl,
        Self::VpId,
        Self::VmId,
        Self::PartitionAssistPage,
    ];

    /// The [`HvEnlightenedVmcs`] member name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RevisionId => "revision_id",
            Self::Abort => "abort",
            Self::CleanFields => "hv_clean_fields",
            Self::SyntheticControls => "hv_synthetic_controls",
            Self::EnlightenmentsControl => "hv_enlightenments_control",
            Self::VpId => "hv_vp_id",
            Self::VmId => "hv_vm_id",
            Self::PartitionAssistPage => "partition_assist_page",
        }
    }

    /// Byte offset inside the eVMCS.
    pub const fn offset(self) -> usize {
        use memoffset::offset_of;
        match self {
            Self::RevisionId => offset_of!(HvEnlightenedVmcs, revision_id),
            Self::Abort => offset_of!(HvEnlightenedVmcs, abort),
            Self::CleanFields => offset_of!(HvEnlightenedVmcs, hv_clean_fields),
            Self::SyntheticControls => offset_of!(HvEnlightenedVmcs, hv_synthetic_controls),
            Self::EnlightenmentsControl => offset_of!(HvEnlightenedVmcs, hv_enlightenments_control),
            Self::VpId => offset_of!(HvEnlightenedVmcs, hv_vp_id),
            Self::VmId => offset_of!(HvEnlightenedVmcs, hv_vm_id),
            Self::PartitionAssistPage => offset_of!(HvEnlightenedVmcs, partition_assist_page),
        }
    }

    /// Size in bytes.
    pub const fn size(self) -> usize {
        match self {
            Self::VmId | Self::PartitionAssistPage => 8,
            _ => 4,
        }
    }

    /// Clean-field group; `None` for the header words (`revision_id`, `abort`,
    /// `hv_clean_fields`), which no clean bit covers.
    pub const fn group(self) -> Option<CleanGroup> {
        match self {
            Self::RevisionId | Self::Abort | Self::CleanFields => None,
            _ => Some(CleanGroup::EnlightenmentsControl),
        }
    }
}

/// Number of encoding classes: (width bits 14:13) × (type bits 11:10).
const CLASSES: usize = 16;
/// Index slots per class (encoding bits 9:1). The largest index in the table is 0x19
/// (TSC_MULTIPLIER); 64 leaves room without making the map large.
const SLOTS: usize = 64;
const NO_ROW: u8 = u8::MAX;

/// (class, index) of a full-access encoding.
#[inline]
const fn slot_of(encoding: u32) -> (usize, usize) {
    let class = ((encoding >> 11) & 0b1100) | ((encoding >> 10) & 0b11);
    (class as usize, ((encoding >> 1) & 0x1FF) as usize)
}

/// Encoding → row map, built and checked at compile time.
static LOOKUP: [[u8; SLOTS]; CLASSES] = build_lookup();

const fn build_lookup() -> [[u8; SLOTS]; CLASSES] {
    assert!(
        FIELD_COUNT < NO_ROW as usize,
        "FIELD_TABLE too large for u8 row numbers"
    );
    let mut map = [[NO_ROW; SLOTS]; CLASSES];
    let mut row = 0;
    while row < FIELD_COUNT {
        let field = &FIELD_TABLE[row];
        assert!(
            vmcs::is_well_formed(field.encoding),
            "malformed encoding in FIELD_TABLE"
        );
        assert!(
            !vmcs::is_high_access(field.encoding),
            "FIELD_TABLE must use full encodings"
        );
        assert!(
            field.size as usize == field.width().bytes(),
            "eVMCS member size differs from the encoding's width class"
        );
        assert!(field.end() <= crate::EVMCS_SIZE, "field outside the eVMCS");
        if row > 0 {
            assert!(
                FIELD_TABLE[row - 1].group as u8 <= field.group as u8,
                "FIELD_TABLE rows must be ordered by clean group"
            );
        }
        let (class, index) = slot_of(field.encoding);
        assert!(index < SLOTS, "encoding index beyond the lookup map");
        assert!(
            map[class][index] == NO_ROW,
            "duplicate encoding in FIELD_TABLE"
        );
        map[class][index] = row as u8;
        row += 1;
    }
    map
}

/// Row range `[start, end)` of every clean group in [`FIELD_TABLE`], by [`CleanGroup::index`].
pub(crate) static GROUP_ROWS: [(usize, usize); CleanGroup::COUNT] = build_group_rows();

const fn build_group_rows() -> [(usize, usize); CleanGroup::COUNT] {
    let mut rows = [(0, 0); CleanGroup::COUNT];
    let mut g = 0;
    let mut row = 0;
    while g < CleanGroup::COUNT {
        let start = row;
        while row < FIELD_COUNT && FIELD_TABLE[row].group as usize == g {
            row += 1;
        }
        rows[g] = (start, row);
        g += 1;
    }
    assert!(
        row == FIELD_COUNT,
        "FIELD_TABLE rows are not grouped by clean group"
    );
    rows
}

/// Row number in [`FIELD_TABLE`] of a full-access `encoding`, or `None` when eVMCS v1 has no
/// home for it (including malformed and "high" encodings).
#[inline]
pub fn row_of(encoding: u32) -> Option<usize> {
    if !vmcs::is_well_formed(encoding) || encoding & 1 != 0 {
        return None;
    }
    let (class, index) = slot_of(encoding);
    match *LOOKUP.get(class)?.get(index)? {
        NO_ROW => None,
        row => Some(row as usize),
    }
}

/// The table row for a full-access `encoding`; `None` when eVMCS v1 has no home for it.
#[inline]
pub fn lookup(encoding: u32) -> Option<&'static EvmcsField> {
    FIELD_TABLE.get(row_of(encoding)?)
}

/// The clean-field bits a write to `encoding` clears (L1 side) or, for L0, which cached group it
/// invalidates. `None` when eVMCS v1 has no home for the field. Accepts "high" encodings.
pub fn dirtied_by(encoding: u32) -> Option<crate::CleanFields> {
    if !vmcs::is_well_formed(encoding) {
        return None;
    }
    lookup(encoding & !1).map(|f| f.group.dirty_mask())
}
