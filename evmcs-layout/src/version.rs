//! eVMCS version negotiation and the VMCS fields eVMCS v1 cannot hold.

use crate::vmcs;

/// The eVMCS version this crate describes; also the value `revision_id` must hold
/// (KVM `KVM_EVMCS_VERSION`).
pub const EVMCS_VERSION: u8 = 1;

/// KVM capability number of `KVM_CAP_HYPERV_ENLIGHTENED_VMCS` (a vCPU `KVM_ENABLE_CAP`).
pub const KVM_CAP_HYPERV_ENLIGHTENED_VMCS: u32 = 163;

/// A range of supported eVMCS versions, as a `u16`: low byte = minimum, high byte = maximum.
///
/// This is the value KVM writes through `args[0]` of `KVM_ENABLE_CAP(KVM_CAP_HYPERV_ENLIGHTENED_VMCS)`
/// (0x0101 when VMX is available) and the value a VMM puts into CPUID 0x4000000A EAX\[15:0\].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EvmcsVersionRange {
    min: u8,
    max: u8,
}

impl EvmcsVersionRange {
    /// Exactly version 1 (raw 0x0101), what KVM reports and QEMU pins for migratability.
    pub const V1: Self = Self {
        min: EVMCS_VERSION,
        max: EVMCS_VERSION,
    };

    /// A range `min..=max`; `None` when `min` is 0 (no version 0 exists) or `min > max`.
    pub const fn new(min: u8, max: u8) -> Option<Self> {
        if min == 0 || min > max {
            None
        } else {
            Some(Self { min, max })
        }
    }

    /// Decodes the `u16` form (low byte min, high byte max); `None` if it is not a valid range,
    /// e.g. 0 from a host without eVMCS.
    pub const fn from_raw(raw: u16) -> Option<Self> {
        Self::new((raw & 0xFF) as u8, (raw >> 8) as u8)
    }

    /// The `u16` form: low byte min, high byte max.
    pub const fn to_raw(self) -> u16 {
        (self.max as u16) << 8 | self.min as u16
    }

    /// Lowest supported version.
    pub const fn min(self) -> u8 {
        self.min
    }

    /// Highest supported version.
    pub const fn max(self) -> u8 {
        self.max
    }

    /// True when `version` lies in the range.
    pub const fn contains(self, version: u8) -> bool {
        self.min <= version && version <= self.max
    }

    /// The versions both sides support, e.g. host range ∩ what a migration target accepts.
    pub const fn intersect(self, other: Self) -> Option<Self> {
        let min = if self.min > other.min {
            self.min
        } else {
            other.min
        };
        let max = if self.max < other.max {
            self.max
        } else {
            other.max
        };
        Self::new(min, max)
    }
}

/// A VMCS field that exists on Intel processors but has no home in eVMCS v1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnsupportedField {
    /// VMCS encoding.
    pub encoding: u32,
    /// Name of the encoding constant in [`crate::vmcs`].
    pub name: &'static str,
}

macro_rules! unsupported {
    ($($name:ident),* $(,)?) => {
        &[$(UnsupportedField { encoding: vmcs::$name, name: stringify!($name) }),*]
    };
}

/// VMCS fields eVMCS v1 cannot hold, so an L1 using eVMCS cannot use the features behind them and
/// an L0 must hide those features (KVM filters the VMX capability MSRs accordingly).
///
/// The first group is the list in Linux `arch/x86/kvm/vmx/hyperv_evmcs.h` minus TSC_MULTIPLIER,
/// which that comment still names but which has had an eVMCS home (offset 0x3D8) since the
/// definition was extended. The rest are the other SDM fields with no eVMCS member.
pub const UNSUPPORTED_FIELDS: &[UnsupportedField] = unsupported![
    // Listed by KVM.
    POSTED_INTR_NV,
    GUEST_INTR_STATUS,
    APIC_ACCESS_ADDR,
    POSTED_INTR_DESC_ADDR,
    EOI_EXIT_BITMAP0,
    EOI_EXIT_BITMAP1,
    EOI_EXIT_BITMAP2,
    EOI_EXIT_BITMAP3,
    GUEST_PML_INDEX,
    PML_ADDRESS,
    VM_FUNCTION_CONTROL,
    EPTP_LIST_ADDRESS,
    VMREAD_BITMAP,
    VMWRITE_BITMAP,
    PLE_GAP,
    PLE_WINDOW,
    VMX_PREEMPTION_TIMER_VALUE,
    GUEST_IA32_RTIT_CTL,
    // Other SDM fields without an eVMCS member.
    EPTP_INDEX,
    HLAT_PREFIX_SIZE,
    LAST_PID_POINTER_INDEX,
    GUEST_UINV,
    EXECUTIVE_VMCS_POINTER,
    VE_INFORMATION_ADDRESS,
    SPPT_POINTER,
    TERTIARY_VM_EXEC_CONTROL,
    ENCLV_EXITING_BITMAP,
    LOW_PASID_DIRECTORY,
    HIGH_PASID_DIRECTORY,
    SHARED_EPT_POINTER,
    PCONFIG_EXITING_BITMAP,
    HLAT_POINTER,
    PID_POINTER_TABLE,
    SECONDARY_VM_EXIT_CONTROLS,
    SPEC_CTRL_MASK,
    SPEC_CTRL_SHADOW,
    GUEST_IA32_PKRS,
    HOST_IA32_PKRS,
    NOTIFY_WINDOW,
    GUEST_SMBASE,
];

/// True when `encoding` (full access) is in [`UNSUPPORTED_FIELDS`].
pub fn is_unsupported(encoding: u32) -> bool {
    UNSUPPORTED_FIELDS.iter().any(|f| f.encoding == encoding)
}
