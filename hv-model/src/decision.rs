//! What resolution decides, as data: per-flag decisions with their origin and reason,
//! migration blockers, and the values the guest sees. [`crate::resolve`] fills them;
//! [`crate::advice`] and [`crate::migration`] read them.
//!
//! Layer 5: depends on [`crate::flags`].

use serde::Serialize;

use crate::flags::Enlightenment;

/// Where a flag's state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Given in `--hv` (or an imported config): failures are errors.
    Explicit,
    /// From the profile: on where possible.
    Profile,
    /// Turned on by hv-passthrough.
    Passthrough,
    /// Default (kvm and KVM paravirt features).
    Default,
    /// Nobody asked for it.
    NotRequested,
}

impl Origin {
    pub(crate) fn is_soft(self) -> bool {
        matches!(
            self,
            Origin::Profile | Origin::Passthrough | Origin::Default
        )
    }
}

/// The decision for one flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The flag.
    pub flag: Enlightenment,
    /// On or off.
    pub on: bool,
    /// Where the state came from.
    pub origin: Origin,
    /// Whether the request (profile, explicit flags, passthrough or default) wanted it on,
    /// before host, backend, dependency and migration checks.
    pub requested: bool,
    /// The effective value for value flags (spinlocks, vendor, version, coresharing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Why, in words.
    pub reason: String,
}

/// Something that prevents live migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationBlocker {
    /// The flag responsible.
    pub flag: Enlightenment,
    /// Why, and how to avoid it.
    pub reason: String,
}

/// The Hyper-V version the guest sees (40000002).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HvVersion {
    /// EAX: build number.
    pub build: u32,
    /// `EBX[31:16]`.
    pub major: u32,
    /// `EBX[15:0]`.
    pub minor: u32,
    /// ECX: service pack.
    pub service_pack: u32,
    /// `EDX[31:24]`: service branch.
    pub service_branch: u32,
    /// `EDX[23:0]`: service number.
    pub service_number: u32,
}

/// Every value the CPUID builder and the VMM need, decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestSettings {
    /// 40000004.EBX (0xffffffff: never notify).
    pub spinlock_retries: u32,
    /// 40000000.EBX:ECX:EDX.
    pub vendor_id: String,
    /// 40000002.
    pub version: HvVersion,
    /// `40000004.EAX[18]`.
    pub no_nonarch_coresharing: bool,
    /// 40000005.EAX.
    pub max_vps: u32,
    /// 40000005.EBX.
    pub max_lps: u32,
    /// `4000000A.EAX[15:0]` when eVMCS is on.
    pub evmcs_version: Option<u16>,
    /// `03.EAX[5]`: the backend serves the hypercall MSRs.
    pub hypercall_interface: bool,
    /// KVM's signature leaf is exposed (`kvm=on`).
    pub kvm_signature: bool,
    /// KVM feature leaf EAX (0x40000101 while Hyper-V is on).
    pub kvm_features: u32,
    /// KVM feature leaf EDX (hints).
    pub kvm_hints: u32,
    /// Fixed guest TSC frequency in Hz, if any.
    pub tsc_frequency_hz: Option<u64>,
}

/// Working state of one flag.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) on: bool,
    pub(crate) requested: bool,
    pub(crate) origin: Origin,
    pub(crate) reason: String,
}
