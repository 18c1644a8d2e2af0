//! Clean-field groups and the enlightenments-control bits of the eVMCS.
//!
//! TLFS `HV_VMX_ENLIGHTENED_CLEAN_FIELD_*`: each of the 16 low bits of `hv_clean_fields` covers a
//! group of fields. A set bit promises L0 that no field of the group changed since the last VM
//! entry with this eVMCS, so L0 may keep its cached copy. L1 clears the bit whenever it writes a
//! field of the group; L0 sets all bits again after it has consumed the eVMCS.

use bitflags::bitflags;

bitflags! {
    /// The `hv_clean_fields` word (TLFS `CleanFields`). A set bit means "group unchanged".
    ///
    /// Bits above 15 are undefined; values read from a guest keep them
    /// ([`CleanFields::from_bits_retain`]) so that a read-modify-write does not lose them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct CleanFields: u32 {
        /// Bit 0, `IO_BITMAP`: I/O bitmap A and B addresses.
        const IO_BITMAP = 1 << 0;
        /// Bit 1, `MSR_BITMAP`: MSR bitmap address (and, with the enlightened MSR bitmap, its
        /// contents).
        const MSR_BITMAP = 1 << 1;
        /// Bit 2, `CONTROL_GRP2`: TSC offset and multiplier, virtual-APIC address, XSS- and
        /// ENCLS-exiting bitmaps.
        const CONTROL_GRP2 = 1 << 2;
        /// Bit 3, `CONTROL_GRP1`: pin-based, secondary processor-based and VM-exit controls.
        const CONTROL_GRP1 = 1 << 3;
        /// Bit 4, `CONTROL_PROC`: primary processor-based controls.
        const CONTROL_PROC = 1 << 4;
        /// Bit 5, `CONTROL_EVENT`: VM-entry event injection (info, error code, length).
        const CONTROL_EVENT = 1 << 5;
        /// Bit 6, `CONTROL_ENTRY`: VM-entry controls.
        const CONTROL_ENTRY = 1 << 6;
        /// Bit 7, `CONTROL_EXCPN`: exception bitmap.
        const CONTROL_EXCPN = 1 << 7;
        /// Bit 8, `CRDR`: CR0/CR4 masks and shadows, guest CR0/CR3/CR4 and DR7.
        const CRDR = 1 << 8;
        /// Bit 9, `CONTROL_XLAT`: EPT pointer and VPID.
        const CONTROL_XLAT = 1 << 9;
        /// Bit 10, `GUEST_BASIC`: guest RSP, RFLAGS, interruptibility (and SSP).
        const GUEST_BASIC = 1 << 10;
        /// Bit 11, `GUEST_GRP1`: link pointer, guest MSRs, PDPTEs, pending debug exceptions,
        /// activity state.
        const GUEST_GRP1 = 1 << 11;
        /// Bit 12, `GUEST_GRP2`: guest segment selectors, limits, access rights, bases; GDTR/IDTR.
        const GUEST_GRP2 = 1 << 12;
        /// Bit 13, `HOST_POINTER`: host FS/GS/TR/GDTR/IDTR bases and RSP.
        const HOST_POINTER = 1 << 13;
        /// Bit 14, `HOST_GRP1`: the other host-state fields.
        const HOST_GRP1 = 1 << 14;
        /// Bit 15, `ENLIGHTENMENTSCONTROL`: the `hv_*` enlightenment fields.
        const ENLIGHTENMENTS_CONTROL = 1 << 15;
    }
}

impl CleanFields {
    /// All 16 defined bits (Linux `HV_VMX_ENLIGHTENED_CLEAN_FIELD_ALL`, 0xFFFF): everything clean.
    pub const ALL: Self = Self::all();
}

/// Which clean-field group a field belongs to.
///
/// Besides the 16 TLFS groups there are two cases with no bit of their own:
/// [`CleanGroup::Always`] (TLFS `HV_VMX_ENLIGHTENED_CLEAN_FIELD_NONE`) for fields L0 reloads on
/// every entry, and [`CleanGroup::All`] for fields the TLFS gives no group at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum CleanGroup {
    /// TLFS `NONE`: no clean bit protects the field; L0 reloads it on every VM entry
    /// (guest RIP, TPR threshold) or it is a read-only exit-information field L0 writes.
    Always = 0,
    /// Bit 0, `IO_BITMAP`.
    IoBitmap,
    /// Bit 1, `MSR_BITMAP`.
    MsrBitmap,
    /// Bit 2, `CONTROL_GRP2`.
    ControlGrp2,
    /// Bit 3, `CONTROL_GRP1`.
    ControlGrp1,
    /// Bit 4, `CONTROL_PROC`.
    ControlProc,
    /// Bit 5, `CONTROL_EVENT`.
    ControlEvent,
    /// Bit 6, `CONTROL_ENTRY`.
    ControlEntry,
    /// Bit 7, `CONTROL_EXCPN`.
    ControlExcpn,
    /// Bit 8, `CRDR`.
    Crdr,
    /// Bit 9, `CONTROL_XLAT`.
    ControlXlat,
    /// Bit 10, `GUEST_BASIC`.
    GuestBasic,
    /// Bit 11, `GUEST_GRP1`.
    GuestGrp1,
    /// Bit 12, `GUEST_GRP2`.
    GuestGrp2,
    /// Bit 13, `HOST_POINTER`.
    HostPointer,
    /// Bit 14, `HOST_GRP1`.
    HostGrp1,
    /// Bit 15, `ENLIGHTENMENTSCONTROL`.
    EnlightenmentsControl,
    /// No group in the TLFS (MSR load/store addresses and counts, page-fault error-code
    /// mask/match, CR3-target count and values). Following KVM's `HV_VMX_ENLIGHTENED_CLEAN_FIELD_ALL`
    /// convention a write dirties every group, and since no bit can vouch for such a field an L0
    /// must reload it on every entry.
    All,
}

impl CleanGroup {
    /// Number of variants.
    pub const COUNT: usize = 18;

    /// Every group in discriminant order (the order of [`crate::FIELD_TABLE`]).
    pub const ALL_GROUPS: [Self; Self::COUNT] = [
        Self::Always,
        Self::IoBitmap,
        Self::MsrBitmap,
        Self::ControlGrp2,
        Self::ControlGrp1,
        Self::ControlProc,
        Self::ControlEvent,
        Self::ControlEntry,
        Self::ControlExcpn,
        Self::Crdr,
        Self::ControlXlat,
        Self::GuestBasic,
        Self::GuestGrp1,
        Self::GuestGrp2,
        Self::HostPointer,
        Self::HostGrp1,
        Self::EnlightenmentsControl,
        Self::All,
    ];

    /// Index in [`CleanGroup::ALL_GROUPS`].
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The clean-field bit number of a TLFS group; `None` for [`Always`](Self::Always) and
    /// [`All`](Self::All).
    #[inline]
    pub const fn bit(self) -> Option<u32> {
        match self {
            Self::Always | Self::All => None,
            group => Some(group as u32 - 1),
        }
    }

    /// The bits a write to a field of this group clears in `hv_clean_fields`: its own bit, nothing
    /// for [`Always`](Self::Always), every bit for [`All`](Self::All).
    #[inline]
    pub const fn dirty_mask(self) -> CleanFields {
        match self {
            Self::Always => CleanFields::empty(),
            Self::All => CleanFields::ALL,
            group => CleanFields::from_bits_retain(1 << (group as u32 - 1)),
        }
    }

    /// Whether L0 must reload this group's fields given the guest's `clean` word: always for
    /// [`Always`](Self::Always) and [`All`](Self::All), otherwise when the group's bit is clear.
    #[inline]
    pub const fn needs_reload(self, clean: CleanFields) -> bool {
        match self.bit() {
            None => true,
            Some(bit) => clean.bits() & (1 << bit) == 0,
        }
    }

    /// The TLFS suffix of `HV_VMX_ENLIGHTENED_CLEAN_FIELD_*` (`"ALL"` is the Linux name).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Always => "NONE",
            Self::IoBitmap => "IO_BITMAP",
            Self::MsrBitmap => "MSR_BITMAP",
            Self::ControlGrp2 => "CONTROL_GRP2",
            Self::ControlGrp1 => "CONTROL_GRP1",
            Self::ControlProc => "CONTROL_PROC",
            Self::ControlEvent => "CONTROL_EVENT",
            Self::ControlEntry => "CONTROL_ENTRY",
            Self::ControlExcpn => "CONTROL_EXCPN",
            Self::Crdr => "CRDR",
            Self::ControlXlat => "CONTROL_XLAT",
            Self::GuestBasic => "GUEST_BASIC",
            Self::GuestGrp1 => "GUEST_GRP1",
            Self::GuestGrp2 => "GUEST_GRP2",
            Self::HostPointer => "HOST_POINTER",
            Self::HostGrp1 => "HOST_GRP1",
            Self::EnlightenmentsControl => "ENLIGHTENMENTSCONTROL",
            Self::All => "ALL",
        }
    }
}

bitflags! {
    /// `hv_enlightenments_control` (TLFS `EnlightenmentsControl`), eVMCS offset 0x344.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EnlightenmentsControl: u32 {
        /// Bit 0, `NestedFlushVirtualHypercall`: L0 may handle L2's HvFlushVirtualAddress*
        /// hypercalls itself (needs VP-assist `directhypercall`, `hv_vm_id`, `hv_vp_id` and the
        /// partition assist page).
        const NESTED_FLUSH_HYPERCALL = 1 << 0;
        /// Bit 1, `MsrBitmap`: enlightened MSR bitmap; L0 re-reads the MSR bitmap only when
        /// clean bit [`CleanFields::MSR_BITMAP`] is clear.
        const MSR_BITMAP = 1 << 1;
    }
}

/// Synthetic VM-exit reason L0 reports to L1 after a direct L2 TLB flush while the partition
/// assist page's `tlb_lock_count` is non-zero (`HV_VMX_SYNTHETIC_EXIT_REASON_TRAP_AFTER_FLUSH`).
pub const SYNTHETIC_EXIT_REASON_TRAP_AFTER_FLUSH: u32 = 0x1000_0031;
