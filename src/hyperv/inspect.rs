//! Reading a VP's assist page and, when it announces one, the enlightened VMCS it points to,
//! decoded with the `evmcs-layout` crate. Both pages are copied out of guest memory first
//! (vm-memory copies, never references into guest RAM): the guest may be changing them.
//!
//! Both GPAs come from the guest, which may be hostile or buggy: a page in the MMIO hole, beyond
//! RAM, unaligned across the end of a RAM region, or a GPA that overflows is reported as
//! `invalid` with the reason, never followed further and never a panic.
//!
//! What the eVMCS holds is what L0 last wrote back or L1 last wrote: KVM copies its cached
//! VMCS12 into the eVMCS at nested VM exits, so while L2 runs, the exit fields describe the
//! previous exit and GUEST_RIP the RIP L2 was last entered at.

use std::collections::BTreeMap;

use evmcs_layout::{access, vmcs, vp_assist, CleanFields, CleanGroup, PageRead, EVMCS_VERSION};
use serde::Serialize;

use crate::memory::{Bytes, GuestAddress, GuestMemory};

const PAGE: usize = 4096;

/// The highest guest-physical address width x86 defines (MAXPHYADDR ≤ 52).
const MAX_GPA_BITS: u32 = 52;

/// A VP assist page as the VMM sees it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AssistPageView {
    /// The VP.
    pub vp: u32,
    /// Its GPA (from HV_X64_MSR_VP_ASSIST_PAGE).
    pub gpa: u64,
    /// Why the page could not be read (then nothing else is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    /// `enlighten_vmentry`: VMLAUNCH/VMRESUME use the eVMCS at `current_nested_vmcs`.
    pub enlighten_vmentry: bool,
    /// `current_nested_vmcs` (whether or not `enlighten_vmentry` is set).
    pub current_nested_vmcs: u64,
    /// The GPA of the eVMCS L1 announces for its next enlightened VM entry:
    /// `current_nested_vmcs` when `enlighten_vmentry` is set.
    pub current_evmcs: Option<u64>,
    /// The eVMCS version range KVM agreed for this vCPU (`"1..=1"`), when the backend enabled
    /// the enlightened VMCS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evmcs_versions: Option<String>,
    /// The eVMCS `current_nested_vmcs` names, decoded, when `enlighten_vmentry` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evmcs: Option<EvmcsView>,
}

/// An enlightened VMCS, decoded.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, Default)]
pub struct EvmcsView {
    /// Its GPA.
    pub gpa: u64,
    /// Why it could not be read (then only `gpa` is meaningful).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    /// The revision ID, the eVMCS version (1 for eVMCS v1; KVM fails the entry otherwise).
    pub revision_id: u32,
    /// Whether the revision is the one evmcs-layout describes.
    pub revision_ok: bool,
    /// The clean-fields word (a set bit: group unchanged since the last entry).
    pub clean_fields: u32,
    /// The groups L1 marked changed (clean bit clear), by TLFS name.
    pub dirty_groups: Vec<String>,
    /// GUEST_RIP (L2's RIP at the last sync).
    pub guest_rip: u64,
    /// VM_EXIT_REASON of the last exit to L1.
    pub exit_reason: u32,
    /// Its basic reason (bits 15:0) by name, with "(VM-entry failure)" when bit 31 is set.
    pub exit_reason_name: String,
    /// EXIT_QUALIFICATION.
    pub exit_qualification: u64,
    /// VM_INSTRUCTION_ERROR.
    pub vm_instruction_error: u32,
    /// Every field with a non-zero value, by VMCS name.
    pub fields: BTreeMap<String, u64>,
}

/// Copies the 4 KiB at `gpa`, or says why it cannot be read.
fn copy_page(mem: &GuestMemory, gpa: u64) -> Result<Box<[u8; PAGE]>, String> {
    if gpa % PAGE as u64 != 0 {
        return Err(format!("{gpa:#x} is not 4 KiB aligned"));
    }
    if gpa >> MAX_GPA_BITS != 0 {
        return Err(format!(
            "{gpa:#x} is beyond the 52-bit physical address space"
        ));
    }
    let mut page = Box::new([0u8; PAGE]);
    mem.read_slice(&mut page[..], GuestAddress(gpa))
        .map_err(|_| {
            format!(
                "{gpa:#x} is not guest RAM (MMIO, unbacked, or the page crosses the end of a RAM \
                 region)"
            )
        })?;
    Ok(page)
}

/// Decodes VP `vp`'s assist page at `gpa` (and its eVMCS, if it announces one).
pub fn assist_page(mem: &GuestMemory, vp: u32, gpa: u64) -> AssistPageView {
    let mut view = AssistPageView {
        vp,
        gpa,
        invalid: None,
        enlighten_vmentry: false,
        current_nested_vmcs: 0,
        current_evmcs: None,
        evmcs_versions: None,
        evmcs: None,
    };
    let assist = match copy_page(mem, gpa) {
        Ok(page) => page,
        Err(reason) => {
            view.invalid = Some(reason);
            return view;
        }
    };
    let read = |offset, size| assist[..].read_le(offset, size).unwrap_or(0);
    view.enlighten_vmentry = read(vp_assist::ENLIGHTEN_VMENTRY_OFFSET, 1) != 0;
    view.current_nested_vmcs = read(vp_assist::CURRENT_NESTED_VMCS_OFFSET, 8);
    view.current_evmcs = view.enlighten_vmentry.then_some(view.current_nested_vmcs);
    view.evmcs = view.current_evmcs.map(|evmcs_gpa| evmcs(mem, evmcs_gpa));
    view
}

/// Decodes the eVMCS at `gpa`.
pub fn evmcs(mem: &GuestMemory, gpa: u64) -> EvmcsView {
    let page = match copy_page(mem, gpa) {
        Ok(page) => page,
        Err(reason) => {
            return EvmcsView {
                gpa,
                invalid: Some(reason),
                ..EvmcsView::default()
            }
        }
    };
    let bytes = &page[..];
    let field = |encoding| access::read_field(bytes, encoding).unwrap_or(0);
    let revision_id = bytes.read_le(0, 4).unwrap_or(0) as u32;
    let clean = access::clean_fields(bytes).unwrap_or(CleanFields::empty());
    let exit_reason = field(vmcs::VM_EXIT_REASON) as u32;
    EvmcsView {
        gpa,
        invalid: None,
        revision_id,
        revision_ok: revision_id == u32::from(EVMCS_VERSION),
        clean_fields: clean.bits(),
        dirty_groups: CleanGroup::ALL_GROUPS
            .iter()
            .filter(|g| g.bit().is_some() && g.needs_reload(clean))
            .map(|g| g.name().to_string())
            .collect(),
        guest_rip: field(vmcs::GUEST_RIP),
        exit_reason,
        exit_reason_name: exit_reason_name(exit_reason),
        exit_qualification: field(vmcs::EXIT_QUALIFICATION),
        vm_instruction_error: field(vmcs::VM_INSTRUCTION_ERROR) as u32,
        fields: evmcs_layout::FIELD_TABLE
            .iter()
            .filter_map(|f| {
                let value = access::read_field(bytes, f.encoding).ok()?;
                (value != 0).then(|| (f.vmcs_name.to_string(), value))
            })
            .collect(),
    }
}

/// The name of a VM-exit reason (SDM Vol. 3C appendix C), e.g. "CPUID", with
/// "(VM-entry failure)" for bit 31.
pub fn exit_reason_name(reason: u32) -> String {
    let basic = reason & 0xffff;
    let name = match basic {
        0 => "exception or NMI",
        1 => "external interrupt",
        2 => "triple fault",
        3 => "INIT",
        7 => "interrupt window",
        8 => "NMI window",
        9 => "task switch",
        10 => "CPUID",
        12 => "HLT",
        13 => "INVD",
        14 => "INVLPG",
        15 => "RDPMC",
        16 => "RDTSC",
        18 => "VMCALL",
        19 => "VMCLEAR",
        20 => "VMLAUNCH",
        21 => "VMPTRLD",
        22 => "VMPTRST",
        23 => "VMREAD",
        24 => "VMRESUME",
        25 => "VMWRITE",
        26 => "VMXOFF",
        27 => "VMXON",
        28 => "control-register access",
        29 => "MOV DR",
        30 => "I/O instruction",
        31 => "RDMSR",
        32 => "WRMSR",
        33 => "invalid guest state",
        34 => "MSR loading",
        36 => "MWAIT",
        37 => "monitor trap flag",
        39 => "MONITOR",
        40 => "PAUSE",
        41 => "machine-check event",
        43 => "TPR below threshold",
        44 => "APIC access",
        45 => "virtualized EOI",
        46 => "GDTR/IDTR access",
        47 => "LDTR/TR access",
        48 => "EPT violation",
        49 => "EPT misconfiguration",
        50 => "INVEPT",
        51 => "RDTSCP",
        52 => "VMX-preemption timer",
        53 => "INVVPID",
        54 => "WBINVD",
        55 => "XSETBV",
        _ => "",
    };
    let mut s = if name.is_empty() {
        format!("reason {basic}")
    } else {
        name.to_string()
    };
    if reason == evmcs_layout::clean::SYNTHETIC_EXIT_REASON_TRAP_AFTER_FLUSH {
        s = "Hyper-V trap after flush (synthetic)".into();
    } else if reason & (1 << 31) != 0 {
        s.push_str(" (VM-entry failure)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use evmcs_layout::{access, vmcs, vp_assist, Page};

    fn assist_announcing(evmcs_gpa: u64) -> Page {
        let mut assist = Page::ZERO;
        vp_assist::set_current_evmcs(&mut assist, Some(evmcs_gpa)).unwrap();
        assist
    }

    #[test]
    fn decodes_the_evmcs_an_assist_page_announces() {
        let mem = crate::memory::allocate(16).unwrap();
        let mut evmcs_page = Page::ZERO;
        access::initialize(&mut evmcs_page).unwrap();
        access::set_clean_fields(&mut evmcs_page, CleanFields::ALL).unwrap();
        access::write_field_and_dirty(&mut evmcs_page, vmcs::GUEST_RIP, 0x1234).unwrap();
        access::write_field_and_dirty(&mut evmcs_page, vmcs::CR4_READ_SHADOW, 0x2000).unwrap();
        access::write_field(&mut evmcs_page, vmcs::VM_EXIT_REASON, 10).unwrap();
        mem.write_slice(&evmcs_page.0, GuestAddress(0x6000))
            .unwrap();
        mem.write_slice(&assist_announcing(0x6000).0, GuestAddress(0x5000))
            .unwrap();
        let view = assist_page(&mem, 1, 0x5000);
        assert_eq!(view.invalid, None);
        assert!(view.enlighten_vmentry);
        assert_eq!(view.current_evmcs, Some(0x6000));
        let evmcs = view.evmcs.unwrap();
        assert_eq!((evmcs.revision_id, evmcs.revision_ok), (1, true));
        assert_eq!(evmcs.guest_rip, 0x1234);
        assert_eq!(
            (evmcs.exit_reason, evmcs.exit_reason_name.as_str()),
            (10, "CPUID")
        );
        assert_eq!(evmcs.dirty_groups, ["CRDR"]);
        assert_eq!(evmcs.fields.get("GUEST_RIP"), Some(&0x1234));
        // No enlightened entry announced: the eVMCS is not followed.
        mem.write_slice(&[0u8; 64], GuestAddress(0x5000)).unwrap();
        let view = assist_page(&mem, 1, 0x5000);
        assert_eq!((view.enlighten_vmentry, view.evmcs), (false, None));
    }

    /// A hostile L1 pointing the assist page or the eVMCS at MMIO, at unbacked memory, across
    /// the end of RAM or the 3 GiB hole, or at an address that overflows gets "invalid" with a
    /// reason, never a crash.
    #[test]
    fn hostile_pointers_are_reported_invalid() {
        let ram_mib = 16;
        let mem = crate::memory::allocate(ram_mib).unwrap();
        let ram_end = ram_mib << 20;
        // The assist page itself outside RAM.
        for gpa in [
            crate::memory::layout::LAPIC_ADDR,
            crate::memory::layout::IOAPIC_ADDR,
            ram_end,
            0xF_FFFF_FFFF_F000,
            !0xFFF,
        ] {
            let view = assist_page(&mem, 0, gpa);
            assert!(view.invalid.is_some(), "assist page at {gpa:#x}: {view:?}");
            assert_eq!(view.evmcs, None);
        }
        // An assist page in RAM announcing hostile eVMCS addresses.
        for evmcs_gpa in [
            crate::memory::layout::LAPIC_ADDR,
            ram_end,
            ram_end - 2048,
            0x7001,
            u64::MAX,
            u64::MAX - 100,
            1 << 60,
        ] {
            mem.write_slice(&assist_announcing(evmcs_gpa).0, GuestAddress(0x5000))
                .unwrap();
            let view = assist_page(&mem, 2, 0x5000);
            assert_eq!(view.invalid, None);
            let evmcs = view.evmcs.expect("announced");
            assert_eq!(evmcs.gpa, evmcs_gpa);
            assert!(
                evmcs.invalid.is_some(),
                "eVMCS at {evmcs_gpa:#x}: {evmcs:?}"
            );
        }
        // Across the RAM hole below 4 GiB: RAM above 3 GiB makes two regions.
        let big = crate::memory::allocate(3 * 1024 + 16).unwrap();
        let hole = crate::memory::layout::MMIO_HOLE_START;
        big.write_slice(
            &assist_announcing(hole - PAGE as u64).0,
            GuestAddress(0x5000),
        )
        .unwrap();
        assert_eq!(assist_page(&big, 0, 0x5000).evmcs.unwrap().invalid, None);
        for evmcs_gpa in [
            hole,
            hole - 2048,
            crate::memory::layout::MMIO_HOLE_END - 2048,
        ] {
            big.write_slice(&assist_announcing(evmcs_gpa).0, GuestAddress(0x5000))
                .unwrap();
            let evmcs = assist_page(&big, 0, 0x5000).evmcs.unwrap();
            assert!(
                evmcs.invalid.is_some(),
                "eVMCS at {evmcs_gpa:#x}: {evmcs:?}"
            );
        }
        // A wrong revision is decoded but flagged.
        let mut bad = Page::ZERO;
        access::initialize(&mut bad).unwrap();
        bad.0[..4].copy_from_slice(&0xBAD0_0001u32.to_le_bytes());
        mem.write_slice(&bad.0, GuestAddress(0x6000)).unwrap();
        mem.write_slice(&assist_announcing(0x6000).0, GuestAddress(0x5000))
            .unwrap();
        let evmcs = assist_page(&mem, 0, 0x5000).evmcs.unwrap();
        assert_eq!((evmcs.revision_id, evmcs.revision_ok), (0xBAD0_0001, false));
    }

    #[test]
    fn exit_reasons_have_names() {
        assert_eq!(exit_reason_name(12), "HLT");
        assert_eq!(
            exit_reason_name(0x8000_0021),
            "invalid guest state (VM-entry failure)"
        );
        assert_eq!(exit_reason_name(99), "reason 99");
        assert_eq!(
            exit_reason_name(0x1000_0031),
            "Hyper-V trap after flush (synthetic)"
        );
    }
}
