//! Intel VMCS field encodings (Intel SDM Vol. 3, appendix "Field Encoding in VMCS").
//!
//! An encoding is a 32-bit value:
//!
//! | bits  | meaning                                                           |
//! |-------|-------------------------------------------------------------------|
//! | 0     | access type: 0 = full, 1 = high 32 bits (64-bit fields only)      |
//! | 9:1   | index within the (width, type) class                              |
//! | 11:10 | type: 0 control, 1 VM-exit information (read-only), 2 guest, 3 host |
//! | 12    | reserved, must be 0                                               |
//! | 14:13 | width: 0 = 16-bit, 1 = 64-bit, 2 = 32-bit, 3 = natural width      |
//! | 31:15 | reserved, must be 0                                               |
//!
//! The constants below name every field this crate talks about: the ones eVMCS v1 can hold
//! ([`crate::FIELD_TABLE`]) and the ones it cannot ([`crate::UNSUPPORTED_FIELDS`]). Names follow
//! the Linux/KVM spelling, which is also what the SDM tables abbreviate to.

/// Width class of a VMCS field (encoding bits 14:13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldWidth {
    /// 16-bit field (width bits = 0).
    Bits16,
    /// 64-bit field (width bits = 1); the only class with a "high" access encoding.
    Bits64,
    /// 32-bit field (width bits = 2).
    Bits32,
    /// Natural-width field (width bits = 3): 64 bits on x86-64, and stored as 64 bits in the eVMCS.
    Natural,
}

impl FieldWidth {
    /// Width class of `encoding` (only bits 14:13 are looked at).
    #[inline]
    pub const fn of(encoding: u32) -> Self {
        match (encoding >> 13) & 3 {
            0 => Self::Bits16,
            1 => Self::Bits64,
            2 => Self::Bits32,
            _ => Self::Natural,
        }
    }

    /// Size in bytes on x86-64 (natural width = 8).
    #[inline]
    pub const fn bytes(self) -> usize {
        match self {
            Self::Bits16 => 2,
            Self::Bits32 => 4,
            Self::Bits64 | Self::Natural => 8,
        }
    }

    /// Lower-case name used in the JSON dump.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bits16 => "16",
            Self::Bits32 => "32",
            Self::Bits64 => "64",
            Self::Natural => "natural",
        }
    }
}

/// Field type (encoding bits 11:10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// VM-execution, VM-exit and VM-entry control fields.
    Control,
    /// VM-exit information fields: read-only for VMWRITE, written by the processor (or by L0 for
    /// an eVMCS) on VM exit.
    ReadOnly,
    /// Guest-state area.
    Guest,
    /// Host-state area.
    Host,
}

impl FieldType {
    /// Type of `encoding` (only bits 11:10 are looked at).
    #[inline]
    pub const fn of(encoding: u32) -> Self {
        match (encoding >> 10) & 3 {
            0 => Self::Control,
            1 => Self::ReadOnly,
            2 => Self::Guest,
            _ => Self::Host,
        }
    }
}

/// Bits that must be zero in every encoding: 31:15 and 12.
const RESERVED_BITS: u32 = 0xFFFF_8000 | (1 << 12);

/// True when `encoding` has no reserved bit set and uses the "high" access type (bit 0) only on
/// a 64-bit field. Says nothing about whether the processor or the eVMCS implements the field.
#[inline]
pub const fn is_well_formed(encoding: u32) -> bool {
    encoding & RESERVED_BITS == 0
        && (encoding & 1 == 0 || matches!(FieldWidth::of(encoding), FieldWidth::Bits64))
}

/// True for the "high" access encoding of a 64-bit field (bit 0 set): it names bits 63:32.
#[inline]
pub const fn is_high_access(encoding: u32) -> bool {
    encoding & 1 == 1 && matches!(FieldWidth::of(encoding), FieldWidth::Bits64)
}

// --- 16-bit control fields -------------------------------------------------------------------
/// Virtual-processor identifier (VPID).
pub const VIRTUAL_PROCESSOR_ID: u32 = 0x0000;
/// Posted-interrupt notification vector.
pub const POSTED_INTR_NV: u32 = 0x0002;
/// EPTP index (EPT-violation #VE).
pub const EPTP_INDEX: u32 = 0x0004;
/// HLAT prefix size.
pub const HLAT_PREFIX_SIZE: u32 = 0x0006;
/// Last PID-pointer index (IPI virtualization).
pub const LAST_PID_POINTER_INDEX: u32 = 0x0008;

// --- 16-bit guest-state fields ---------------------------------------------------------------
/// Guest ES selector.
pub const GUEST_ES_SELECTOR: u32 = 0x0800;
/// Guest CS selector.
pub const GUEST_CS_SELECTOR: u32 = 0x0802;
/// Guest SS selector.
pub const GUEST_SS_SELECTOR: u32 = 0x0804;
/// Guest DS selector.
pub const GUEST_DS_SELECTOR: u32 = 0x0806;
/// Guest FS selector.
pub const GUEST_FS_SELECTOR: u32 = 0x0808;
/// Guest GS selector.
pub const GUEST_GS_SELECTOR: u32 = 0x080A;
/// Guest LDTR selector.
pub const GUEST_LDTR_SELECTOR: u32 = 0x080C;
/// Guest TR selector.
pub const GUEST_TR_SELECTOR: u32 = 0x080E;
/// Guest interrupt status (virtual-interrupt delivery).
pub const GUEST_INTR_STATUS: u32 = 0x0810;
/// PML index.
pub const GUEST_PML_INDEX: u32 = 0x0812;
/// Guest user-interrupt notification vector (UINV).
pub const GUEST_UINV: u32 = 0x0814;

// --- 16-bit host-state fields ----------------------------------------------------------------
/// Host ES selector.
pub const HOST_ES_SELECTOR: u32 = 0x0C00;
/// Host CS selector.
pub const HOST_CS_SELECTOR: u32 = 0x0C02;
/// Host SS selector.
pub const HOST_SS_SELECTOR: u32 = 0x0C04;
/// Host DS selector.
pub const HOST_DS_SELECTOR: u32 = 0x0C06;
/// Host FS selector.
pub const HOST_FS_SELECTOR: u32 = 0x0C08;
/// Host GS selector.
pub const HOST_GS_SELECTOR: u32 = 0x0C0A;
/// Host TR selector.
pub const HOST_TR_SELECTOR: u32 = 0x0C0C;

// --- 64-bit control fields -------------------------------------------------------------------
/// I/O bitmap A address.
pub const IO_BITMAP_A: u32 = 0x2000;
/// I/O bitmap B address.
pub const IO_BITMAP_B: u32 = 0x2002;
/// MSR bitmap address.
pub const MSR_BITMAP: u32 = 0x2004;
/// VM-exit MSR-store address.
pub const VM_EXIT_MSR_STORE_ADDR: u32 = 0x2006;
/// VM-exit MSR-load address.
pub const VM_EXIT_MSR_LOAD_ADDR: u32 = 0x2008;
/// VM-entry MSR-load address.
pub const VM_ENTRY_MSR_LOAD_ADDR: u32 = 0x200A;
/// Executive-VMCS pointer (SMM dual monitor).
pub const EXECUTIVE_VMCS_POINTER: u32 = 0x200C;
/// PML address.
pub const PML_ADDRESS: u32 = 0x200E;
/// TSC offset.
pub const TSC_OFFSET: u32 = 0x2010;
/// Virtual-APIC address.
pub const VIRTUAL_APIC_PAGE_ADDR: u32 = 0x2012;
/// APIC-access address.
pub const APIC_ACCESS_ADDR: u32 = 0x2014;
/// Posted-interrupt descriptor address.
pub const POSTED_INTR_DESC_ADDR: u32 = 0x2016;
/// VM-function controls.
pub const VM_FUNCTION_CONTROL: u32 = 0x2018;
/// EPT pointer.
pub const EPT_POINTER: u32 = 0x201A;
/// EOI-exit bitmap 0.
pub const EOI_EXIT_BITMAP0: u32 = 0x201C;
/// EOI-exit bitmap 1.
pub const EOI_EXIT_BITMAP1: u32 = 0x201E;
/// EOI-exit bitmap 2.
pub const EOI_EXIT_BITMAP2: u32 = 0x2020;
/// EOI-exit bitmap 3.
pub const EOI_EXIT_BITMAP3: u32 = 0x2022;
/// EPTP-list address.
pub const EPTP_LIST_ADDRESS: u32 = 0x2024;
/// VMREAD-bitmap address.
pub const VMREAD_BITMAP: u32 = 0x2026;
/// VMWRITE-bitmap address.
pub const VMWRITE_BITMAP: u32 = 0x2028;
/// Virtualization-exception information address.
pub const VE_INFORMATION_ADDRESS: u32 = 0x202A;
/// XSS-exiting bitmap.
pub const XSS_EXIT_BITMAP: u32 = 0x202C;
/// ENCLS-exiting bitmap.
pub const ENCLS_EXITING_BITMAP: u32 = 0x202E;
/// Sub-page-permission-table pointer.
pub const SPPT_POINTER: u32 = 0x2030;
/// TSC multiplier.
pub const TSC_MULTIPLIER: u32 = 0x2032;
/// Tertiary processor-based VM-execution controls.
pub const TERTIARY_VM_EXEC_CONTROL: u32 = 0x2034;
/// ENCLV-exiting bitmap.
pub const ENCLV_EXITING_BITMAP: u32 = 0x2036;
/// Low PASID directory address.
pub const LOW_PASID_DIRECTORY: u32 = 0x2038;
/// High PASID directory address.
pub const HIGH_PASID_DIRECTORY: u32 = 0x203A;
/// Shared EPT pointer.
pub const SHARED_EPT_POINTER: u32 = 0x203C;
/// PCONFIG-exiting bitmap.
pub const PCONFIG_EXITING_BITMAP: u32 = 0x203E;
/// Hypervisor-managed linear-address translation pointer (HLATP).
pub const HLAT_POINTER: u32 = 0x2040;
/// PID-pointer table address.
pub const PID_POINTER_TABLE: u32 = 0x2042;
/// Secondary VM-exit controls.
pub const SECONDARY_VM_EXIT_CONTROLS: u32 = 0x2044;
/// IA32_SPEC_CTRL mask.
pub const SPEC_CTRL_MASK: u32 = 0x204A;
/// IA32_SPEC_CTRL shadow.
pub const SPEC_CTRL_SHADOW: u32 = 0x204C;

// --- 64-bit read-only data field -------------------------------------------------------------
/// Guest-physical address (EPT violations and misconfigurations).
pub const GUEST_PHYSICAL_ADDRESS: u32 = 0x2400;

// --- 64-bit guest-state fields ---------------------------------------------------------------
/// VMCS link pointer.
pub const VMCS_LINK_POINTER: u32 = 0x2800;
/// Guest IA32_DEBUGCTL.
pub const GUEST_IA32_DEBUGCTL: u32 = 0x2802;
/// Guest IA32_PAT.
pub const GUEST_IA32_PAT: u32 = 0x2804;
/// Guest IA32_EFER.
pub const GUEST_IA32_EFER: u32 = 0x2806;
/// Guest IA32_PERF_GLOBAL_CTRL.
pub const GUEST_IA32_PERF_GLOBAL_CTRL: u32 = 0x2808;
/// Guest PDPTE0.
pub const GUEST_PDPTR0: u32 = 0x280A;
/// Guest PDPTE1.
pub const GUEST_PDPTR1: u32 = 0x280C;
/// Guest PDPTE2.
pub const GUEST_PDPTR2: u32 = 0x280E;
/// Guest PDPTE3.
pub const GUEST_PDPTR3: u32 = 0x2810;
/// Guest IA32_BNDCFGS.
pub const GUEST_BNDCFGS: u32 = 0x2812;
/// Guest IA32_RTIT_CTL.
pub const GUEST_IA32_RTIT_CTL: u32 = 0x2814;
/// Guest IA32_LBR_CTL.
pub const GUEST_IA32_LBR_CTL: u32 = 0x2816;
/// Guest IA32_PKRS.
pub const GUEST_IA32_PKRS: u32 = 0x2818;

// --- 64-bit host-state fields ----------------------------------------------------------------
/// Host IA32_PAT.
pub const HOST_IA32_PAT: u32 = 0x2C00;
/// Host IA32_EFER.
pub const HOST_IA32_EFER: u32 = 0x2C02;
/// Host IA32_PERF_GLOBAL_CTRL.
pub const HOST_IA32_PERF_GLOBAL_CTRL: u32 = 0x2C04;
/// Host IA32_PKRS.
pub const HOST_IA32_PKRS: u32 = 0x2C06;

// --- 32-bit control fields -------------------------------------------------------------------
/// Pin-based VM-execution controls.
pub const PIN_BASED_VM_EXEC_CONTROL: u32 = 0x4000;
/// Primary processor-based VM-execution controls.
pub const CPU_BASED_VM_EXEC_CONTROL: u32 = 0x4002;
/// Exception bitmap.
pub const EXCEPTION_BITMAP: u32 = 0x4004;
/// Page-fault error-code mask.
pub const PAGE_FAULT_ERROR_CODE_MASK: u32 = 0x4006;
/// Page-fault error-code match.
pub const PAGE_FAULT_ERROR_CODE_MATCH: u32 = 0x4008;
/// CR3-target count.
pub const CR3_TARGET_COUNT: u32 = 0x400A;
/// Primary VM-exit controls.
pub const VM_EXIT_CONTROLS: u32 = 0x400C;
/// VM-exit MSR-store count.
pub const VM_EXIT_MSR_STORE_COUNT: u32 = 0x400E;
/// VM-exit MSR-load count.
pub const VM_EXIT_MSR_LOAD_COUNT: u32 = 0x4010;
/// VM-entry controls.
pub const VM_ENTRY_CONTROLS: u32 = 0x4012;
/// VM-entry MSR-load count.
pub const VM_ENTRY_MSR_LOAD_COUNT: u32 = 0x4014;
/// VM-entry interruption-information field.
pub const VM_ENTRY_INTR_INFO_FIELD: u32 = 0x4016;
/// VM-entry exception error code.
pub const VM_ENTRY_EXCEPTION_ERROR_CODE: u32 = 0x4018;
/// VM-entry instruction length.
pub const VM_ENTRY_INSTRUCTION_LEN: u32 = 0x401A;
/// TPR threshold.
pub const TPR_THRESHOLD: u32 = 0x401C;
/// Secondary processor-based VM-execution controls.
pub const SECONDARY_VM_EXEC_CONTROL: u32 = 0x401E;
/// PLE_Gap.
pub const PLE_GAP: u32 = 0x4020;
/// PLE_Window.
pub const PLE_WINDOW: u32 = 0x4022;
/// Instruction-timeout control (notify window).
pub const NOTIFY_WINDOW: u32 = 0x4024;

// --- 32-bit read-only data fields ------------------------------------------------------------
/// VM-instruction error.
pub const VM_INSTRUCTION_ERROR: u32 = 0x4400;
/// Exit reason.
pub const VM_EXIT_REASON: u32 = 0x4402;
/// VM-exit interruption information.
pub const VM_EXIT_INTR_INFO: u32 = 0x4404;
/// VM-exit interruption error code.
pub const VM_EXIT_INTR_ERROR_CODE: u32 = 0x4406;
/// IDT-vectoring information field.
pub const IDT_VECTORING_INFO_FIELD: u32 = 0x4408;
/// IDT-vectoring error code.
pub const IDT_VECTORING_ERROR_CODE: u32 = 0x440A;
/// VM-exit instruction length.
pub const VM_EXIT_INSTRUCTION_LEN: u32 = 0x440C;
/// VM-exit instruction information.
pub const VMX_INSTRUCTION_INFO: u32 = 0x440E;

// --- 32-bit guest-state fields ---------------------------------------------------------------
/// Guest ES limit.
pub const GUEST_ES_LIMIT: u32 = 0x4800;
/// Guest CS limit.
pub const GUEST_CS_LIMIT: u32 = 0x4802;
/// Guest SS limit.
pub const GUEST_SS_LIMIT: u32 = 0x4804;
/// Guest DS limit.
pub const GUEST_DS_LIMIT: u32 = 0x4806;
/// Guest FS limit.
pub const GUEST_FS_LIMIT: u32 = 0x4808;
/// Guest GS limit.
pub const GUEST_GS_LIMIT: u32 = 0x480A;
/// Guest LDTR limit.
pub const GUEST_LDTR_LIMIT: u32 = 0x480C;
/// Guest TR limit.
pub const GUEST_TR_LIMIT: u32 = 0x480E;
/// Guest GDTR limit.
pub const GUEST_GDTR_LIMIT: u32 = 0x4810;
/// Guest IDTR limit.
pub const GUEST_IDTR_LIMIT: u32 = 0x4812;
/// Guest ES access rights.
pub const GUEST_ES_AR_BYTES: u32 = 0x4814;
/// Guest CS access rights.
pub const GUEST_CS_AR_BYTES: u32 = 0x4816;
/// Guest SS access rights.
pub const GUEST_SS_AR_BYTES: u32 = 0x4818;
/// Guest DS access rights.
pub const GUEST_DS_AR_BYTES: u32 = 0x481A;
/// Guest FS access rights.
pub const GUEST_FS_AR_BYTES: u32 = 0x481C;
/// Guest GS access rights.
pub const GUEST_GS_AR_BYTES: u32 = 0x481E;
/// Guest LDTR access rights.
pub const GUEST_LDTR_AR_BYTES: u32 = 0x4820;
/// Guest TR access rights.
pub const GUEST_TR_AR_BYTES: u32 = 0x4822;
/// Guest interruptibility state.
pub const GUEST_INTERRUPTIBILITY_INFO: u32 = 0x4824;
/// Guest activity state.
pub const GUEST_ACTIVITY_STATE: u32 = 0x4826;
/// Guest SMBASE.
pub const GUEST_SMBASE: u32 = 0x4828;
/// Guest IA32_SYSENTER_CS.
pub const GUEST_SYSENTER_CS: u32 = 0x482A;
/// VMX-preemption timer value.
pub const VMX_PREEMPTION_TIMER_VALUE: u32 = 0x482E;

// --- 32-bit host-state field -----------------------------------------------------------------
/// Host IA32_SYSENTER_CS.
pub const HOST_IA32_SYSENTER_CS: u32 = 0x4C00;

// --- natural-width control fields ------------------------------------------------------------
/// CR0 guest/host mask.
pub const CR0_GUEST_HOST_MASK: u32 = 0x6000;
/// CR4 guest/host mask.
pub const CR4_GUEST_HOST_MASK: u32 = 0x6002;
/// CR0 read shadow.
pub const CR0_READ_SHADOW: u32 = 0x6004;
/// CR4 read shadow.
pub const CR4_READ_SHADOW: u32 = 0x6006;
/// CR3-target value 0.
pub const CR3_TARGET_VALUE0: u32 = 0x6008;
/// CR3-target value 1.
pub const CR3_TARGET_VALUE1: u32 = 0x600A;
/// CR3-target value 2.
pub const CR3_TARGET_VALUE2: u32 = 0x600C;
/// CR3-target value 3.
pub const CR3_TARGET_VALUE3: u32 = 0x600E;

// --- natural-width read-only data fields -----------------------------------------------------
/// Exit qualification.
pub const EXIT_QUALIFICATION: u32 = 0x6400;
/// I/O RCX (SMIs after I/O instructions).
pub const EXIT_IO_INSTRUCTION_ECX: u32 = 0x6402;
/// I/O RSI.
pub const EXIT_IO_INSTRUCTION_ESI: u32 = 0x6404;
/// I/O RDI.
pub const EXIT_IO_INSTRUCTION_EDI: u32 = 0x6406;
/// I/O RIP.
pub const EXIT_IO_INSTRUCTION_EIP: u32 = 0x6408;
/// Guest-linear address.
pub const GUEST_LINEAR_ADDRESS: u32 = 0x640A;

// --- natural-width guest-state fields --------------------------------------------------------
/// Guest CR0.
pub const GUEST_CR0: u32 = 0x6800;
/// Guest CR3.
pub const GUEST_CR3: u32 = 0x6802;
/// Guest CR4.
pub const GUEST_CR4: u32 = 0x6804;
/// Guest ES base.
pub const GUEST_ES_BASE: u32 = 0x6806;
/// Guest CS base.
pub const GUEST_CS_BASE: u32 = 0x6808;
/// Guest SS base.
pub const GUEST_SS_BASE: u32 = 0x680A;
/// Guest DS base.
pub const GUEST_DS_BASE: u32 = 0x680C;
/// Guest FS base.
pub const GUEST_FS_BASE: u32 = 0x680E;
/// Guest GS base.
pub const GUEST_GS_BASE: u32 = 0x6810;
/// Guest LDTR base.
pub const GUEST_LDTR_BASE: u32 = 0x6812;
/// Guest TR base.
pub const GUEST_TR_BASE: u32 = 0x6814;
/// Guest GDTR base.
pub const GUEST_GDTR_BASE: u32 = 0x6816;
/// Guest IDTR base.
pub const GUEST_IDTR_BASE: u32 = 0x6818;
/// Guest DR7.
pub const GUEST_DR7: u32 = 0x681A;
/// Guest RSP.
pub const GUEST_RSP: u32 = 0x681C;
/// Guest RIP.
pub const GUEST_RIP: u32 = 0x681E;
/// Guest RFLAGS.
pub const GUEST_RFLAGS: u32 = 0x6820;
/// Guest pending debug exceptions.
pub const GUEST_PENDING_DBG_EXCEPTIONS: u32 = 0x6822;
/// Guest IA32_SYSENTER_ESP.
pub const GUEST_SYSENTER_ESP: u32 = 0x6824;
/// Guest IA32_SYSENTER_EIP.
pub const GUEST_SYSENTER_EIP: u32 = 0x6826;
/// Guest IA32_S_CET.
pub const GUEST_S_CET: u32 = 0x6828;
/// Guest SSP.
pub const GUEST_SSP: u32 = 0x682A;
/// Guest IA32_INTERRUPT_SSP_TABLE_ADDR.
pub const GUEST_INTR_SSP_TABLE: u32 = 0x682C;

// --- natural-width host-state fields ---------------------------------------------------------
/// Host CR0.
pub const HOST_CR0: u32 = 0x6C00;
/// Host CR3.
pub const HOST_CR3: u32 = 0x6C02;
/// Host CR4.
pub const HOST_CR4: u32 = 0x6C04;
/// Host FS base.
pub const HOST_FS_BASE: u32 = 0x6C06;
/// Host GS base.
pub const HOST_GS_BASE: u32 = 0x6C08;
/// Host TR base.
pub const HOST_TR_BASE: u32 = 0x6C0A;
/// Host GDTR base.
pub const HOST_GDTR_BASE: u32 = 0x6C0C;
/// Host IDTR base.
pub const HOST_IDTR_BASE: u32 = 0x6C0E;
/// Host IA32_SYSENTER_ESP.
pub const HOST_IA32_SYSENTER_ESP: u32 = 0x6C10;
/// Host IA32_SYSENTER_EIP.
pub const HOST_IA32_SYSENTER_EIP: u32 = 0x6C12;
/// Host RSP.
pub const HOST_RSP: u32 = 0x6C14;
/// Host RIP. (The TLFS mapping table prints 0x6C16 next to `HostSysenterCsMsr`; that is a typo
/// there: 0x6C16 is HOST_RIP and the host SYSENTER_CS field is 32-bit 0x4C00.)
pub const HOST_RIP: u32 = 0x6C16;
/// Host IA32_S_CET.
pub const HOST_S_CET: u32 = 0x6C18;
/// Host SSP.
pub const HOST_SSP: u32 = 0x6C1A;
/// Host IA32_INTERRUPT_SSP_TABLE_ADDR.
pub const HOST_INTR_SSP_TABLE: u32 = 0x6C1C;
