//! The one definition table: every flag hvkvm understands, with its QEMU name, accepted
//! aliases, CPUID bits, the dependencies QEMU enforces, and the KVM capability that proves
//! the host kernel has it. Everything else (parsing, dependency checks, host resolution, CPUID,
//! the config formats, the docs table) reads this table instead of matching on flags.
//!
//! Bits and dependencies follow QEMU's `kvm_hyperv_properties[]` (target/i386/kvm/kvm.c) and
//! the TLFS; doc-only recommendations from QEMU's hyperv.rst are kept apart in `recommends`.
//! `qemu_since` is the first QEMU release with the `-cpu` property (see docs/enlightenments.md,
//! "Target versions", for how each was established).
//!
//! Layer 1: depends only on [`crate::tlfs`] and [`crate::version`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::tlfs::{self, bit, CpuidBits, KvmCap, Reg};
use crate::version::Version;

/// One configurable item of the Hyper-V/KVM paravirt interface a guest is offered: a Hyper-V
/// enlightenment (`hv-synic`), an identification value (`hv-vendor-id`), a supplementary mode
/// (`hv-passthrough`) or a KVM paravirt feature (`kvm-pv-ipi`). Serialised as its QEMU name.
/// Each variant is described by its row in [`FLAGS`] (`name`, `summary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Enlightenment {
    Relaxed,
    Vapic,
    Spinlocks,
    Vpindex,
    Runtime,
    Crash,
    Time,
    Synic,
    Stimer,
    StimerDirect,
    Tlbflush,
    TlbflushExt,
    TlbflushDirect,
    Ipi,
    Reset,
    Frequencies,
    Reenlightenment,
    Evmcs,
    EmsrBitmap,
    XmmInput,
    Avic,
    NoNonarchCoresharing,
    Syndbg,
    Passthrough,
    EnforceCpuid,
    VendorId,
    VersionIdBuild,
    VersionIdMajor,
    VersionIdMinor,
    VersionIdSpack,
    VersionIdSbranch,
    VersionIdSnumber,
    Kvm,
    KvmClock,
    KvmNopiodelay,
    KvmAsyncpf,
    KvmStealTime,
    KvmPvEoi,
    KvmPvUnhalt,
    KvmPvTlbFlush,
    KvmAsyncpfVmexit,
    KvmPvIpi,
    KvmPollControl,
    KvmPvSchedYield,
    KvmAsyncpfInt,
    KvmMsiExtDestId,
    KvmClockStableBit,
    KvmHintDedicated,
}

/// What kind of item a flag is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlagKind {
    /// A Hyper-V enlightenment (CPUID bits, MSRs, hypercalls).
    Enlightenment,
    /// Identification values; QEMU: "not an enlightenment", they do not turn Hyper-V on alone.
    Identity,
    /// `hv-passthrough` and `hv-enforce-cpuid`: they change how the others are chosen/enforced.
    Supplementary,
    /// KVM's own paravirt interface (signature and feature leaf), relocated to 0x40000100.
    KvmParavirt,
}

/// What value a flag takes after `=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValueKind {
    /// on/off only.
    Switch,
    /// Spinlock retry count (u32, >= 0xfff, 0xffffffff = never notify).
    Retries,
    /// Up to 12 printable ASCII characters.
    Vendor,
    /// on/off/auto.
    OnOffAuto,
    /// An unsigned number of at most this many bits.
    Number(u32),
}

/// One row of the definition table.
#[derive(Debug)]
pub struct FlagDef {
    /// The flag.
    pub flag: Enlightenment,
    /// QEMU's canonical name, e.g. `hv-stimer-direct`.
    pub name: &'static str,
    /// Other accepted spellings (compared after lower-casing, `_`→`-` and dropping `hv-`).
    pub aliases: &'static [&'static str],
    /// Kind of item.
    pub kind: FlagKind,
    /// Value syntax.
    pub value: ValueKind,
    /// Whether turning it on makes the guest see Hyper-V (QEMU's `hyperv_enabled()`).
    pub enables_hyperv: bool,
    /// CPUID bits it sets; for the kernel backend the host must report all of them (QEMU's
    /// `hyperv_feature_supported()`).
    pub cpuid: &'static [CpuidBits],
    /// Bits the guest also gets but the host check ignores (QEMU adds them in
    /// `hyperv_fill_cpuids()`).
    pub extra_guest_bits: &'static [CpuidBits],
    /// Dependencies QEMU enforces in code: an error when missing.
    pub requires: &'static [Enlightenment],
    /// Doc-only recommendations (QEMU hyperv.rst): a warning when missing.
    pub recommends: &'static [Enlightenment],
    /// Capability that proves KVM has it when the probe has no `KVM_GET_SUPPORTED_HV_CPUID`
    /// leaves (legacy probing, as QEMU's `get_supported_hv_cpuid_legacy()`).
    pub kvm_cap: Option<KvmCap>,
    /// Per-vCPU capability the VMM must enable when the flag is on.
    pub enable_cap: Option<KvmCap>,
    /// `hv-passthrough` never turns it on (QEMU `skip_passthrough`).
    pub skip_passthrough: bool,
    /// The first QEMU release whose x86 CPU has this `-cpu` property. [`QEMU_BASELINE`] means
    /// "in every QEMU hvkvm exports for" (present in Debian 11's QEMU 5.2).
    pub qemu_since: Version,
    /// One-line description.
    pub summary: &'static str,
}

/// The oldest QEMU the table's `qemu_since` data reaches (`Tool::Qemu.oldest()`).
pub const QEMU_BASELINE: Version = Version::new(5, 2);
/// QEMU 6.0: `kvm-msi-ext-dest-id`.
const QEMU_6_0: Version = Version::new(6, 0);
/// QEMU 6.2: `hv-avic` (alias `hv-apicv`), `hv-enforce-cpuid`, `hv-version-id-*`.
const QEMU_6_2: Version = Version::new(6, 2);
/// QEMU 7.1: `hv-syndbg`, `hv-xmm-input`, `hv-tlbflush-ext`, `hv-tlbflush-direct`,
/// `hv-emsr-bitmap`.
const QEMU_7_1: Version = Version::new(7, 1);
/// QEMU 9.0: `kvm-asyncpf-vmexit`.
const QEMU_9_0: Version = Version::new(9, 0);

/// A name that is no flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown Hyper-V flag '{name}'{}; `hvkvm hv flags` lists every flag and its spellings",
    suggestion.map(|n| format!("; did you mean '{n}'?")).unwrap_or_default()
)]
pub struct UnknownFlag {
    /// What the user wrote.
    pub name: String,
    /// Closest known name.
    pub suggestion: Option<&'static str>,
}

use Enlightenment as E;

const HV3: u32 = tlfs::HV_FEATURES;
const HV4: u32 = tlfs::HV_RECOMMENDATIONS;
const HVA: u32 = tlfs::HV_NESTED_FEATURES;
const KVMF: u32 = tlfs::KVM_FEATURES;

const fn bits2(leaf: u32, reg: Reg, a: u32, b: u32) -> CpuidBits {
    CpuidBits {
        leaf,
        reg,
        mask: (1 << a) | (1 << b),
    }
}

/// Builds a table row with the common defaults; fields are overridden with struct update.
const fn row(flag: Enlightenment, name: &'static str, summary: &'static str) -> FlagDef {
    FlagDef {
        flag,
        name,
        aliases: &[],
        kind: FlagKind::Enlightenment,
        value: ValueKind::Switch,
        enables_hyperv: true,
        cpuid: &[],
        extra_guest_bits: &[],
        requires: &[],
        recommends: &[],
        kvm_cap: None,
        enable_cap: None,
        skip_passthrough: false,
        qemu_since: QEMU_BASELINE,
        summary,
    }
}

const fn kvm_pv(flag: Enlightenment, name: &'static str, bits: &'static [CpuidBits]) -> FlagDef {
    FlagDef {
        kind: FlagKind::KvmParavirt,
        enables_hyperv: false,
        cpuid: bits,
        // No `requires: kvm`: with kvm=off QEMU accepts them and they have no effect (the
        // leaf is hidden); resolve.rs turns them off with that reason.
        ..row(
            flag,
            name,
            "KVM paravirt feature (0x40000101, KVM's 0x40000001 moved)",
        )
    }
}

const fn version(flag: Enlightenment, name: &'static str, width: u32) -> FlagDef {
    FlagDef {
        kind: FlagKind::Identity,
        value: ValueKind::Number(width),
        enables_hyperv: false,
        qemu_since: QEMU_6_2,
        ..row(
            flag,
            name,
            "Hyper-V version identification (0x40000002); not an enlightenment",
        )
    }
}

/// The definition table, in the order explain/export list flags.
pub static FLAGS: &[FlagDef] = &[
    FlagDef {
        cpuid: &[bit(HV4, Reg::Eax, 5)],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV),
        ..row(
            E::Relaxed,
            "hv-relaxed",
            "relaxed timing: Windows disables watchdog timeouts",
        )
    },
    FlagDef {
        // 04.EAX[3] (APIC access recommended) is added in cpuid.rs unless hv-avic is on.
        cpuid: &[bit(HV3, Reg::Eax, 4)],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_VAPIC),
        ..row(
            E::Vapic,
            "hv-vapic",
            "APIC MSRs and VP assist page (PV EOI); eVMCS needs it",
        )
    },
    FlagDef {
        // The value goes to 04.EBX; KVM honours HvNotifyLongSpinWait when it is not 0/~0.
        value: ValueKind::Retries,
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_SPIN),
        ..row(
            E::Spinlocks,
            "hv-spinlocks",
            "spin-wait notification after N retries (04.EBX)",
        )
    },
    FlagDef {
        cpuid: &[bit(HV3, Reg::Eax, 6)],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_VP_INDEX),
        ..row(
            E::Vpindex,
            "hv-vpindex",
            "VP_INDEX MSR: the guest learns its VP numbers",
        )
    },
    FlagDef {
        cpuid: &[bit(HV3, Reg::Eax, 0)],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_CPUID),
        ..row(
            E::Runtime,
            "hv-runtime",
            "VP_RUNTIME MSR: time the vCPU actually ran",
        )
    },
    FlagDef {
        cpuid: &[bit(HV3, Reg::Edx, 10)],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_CPUID),
        ..row(
            E::Crash,
            "hv-crash",
            "crash MSRs: the guest reports its bugcheck code",
        )
    },
    FlagDef {
        aliases: &["hypervclock"],
        cpuid: &[bits2(HV3, Reg::Eax, 1, 9)],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_TIME),
        ..row(
            E::Time,
            "hv-time",
            "reference counter MSR and reference TSC page",
        )
    },
    FlagDef {
        cpuid: &[bit(HV3, Reg::Eax, 2)],
        // PostMessages/SignalEvents: QEMU adds them whenever SynIC is on (not KVM-only SynIC).
        extra_guest_bits: &[bits2(HV3, Reg::Ebx, 4, 5)],
        // QEMU checks this outside the table, in kvm_hyperv_expand_features().
        requires: &[E::Vpindex],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_SYNIC2),
        enable_cap: Some(tlfs::KVM_CAP_HYPERV_SYNIC2),
        ..row(
            E::Synic,
            "hv-synic",
            "synthetic interrupt controller (messages, events)",
        )
    },
    FlagDef {
        aliases: &["synictimer", "synic-timer"],
        cpuid: &[bit(HV3, Reg::Eax, 3)],
        requires: &[E::Synic, E::Time],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_SYNIC2),
        ..row(
            E::Stimer,
            "hv-stimer",
            "synthetic timers (Windows idles on HPET/RTC without)",
        )
    },
    FlagDef {
        aliases: &["synictimer-direct", "stimer-direct-mode"],
        cpuid: &[bit(HV3, Reg::Edx, 19)],
        requires: &[E::Stimer],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_CPUID),
        ..row(
            E::StimerDirect,
            "hv-stimer-direct",
            "direct-mode timers: nested Hyper-V needs",
        )
    },
    FlagDef {
        cpuid: &[bits2(HV4, Reg::Eax, 2, 11)],
        requires: &[E::Vpindex],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_TLBFLUSH),
        ..row(
            E::Tlbflush,
            "hv-tlbflush",
            "PV remote TLB flush hypercalls (incl. Ex forms)",
        )
    },
    FlagDef {
        aliases: &["tlbflush-extended"],
        cpuid: &[bit(HV3, Reg::Edx, 14)],
        requires: &[E::Tlbflush],
        qemu_since: QEMU_7_1,
        ..row(
            E::TlbflushExt,
            "hv-tlbflush-ext",
            "extended GVA ranges in flush hypercalls",
        )
    },
    FlagDef {
        cpuid: &[bit(HVA, Reg::Eax, 17)],
        requires: &[E::Vapic],
        recommends: &[E::Evmcs],
        qemu_since: QEMU_7_1,
        ..row(
            E::TlbflushDirect,
            "hv-tlbflush-direct",
            "L0 handles L2's TLB flush hypercalls",
        )
    },
    FlagDef {
        cpuid: &[bits2(HV4, Reg::Eax, 10, 11)],
        requires: &[E::Vpindex],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_SEND_IPI),
        ..row(
            E::Ipi,
            "hv-ipi",
            "PV IPI hypercalls (one call for >64 vCPUs)",
        )
    },
    FlagDef {
        cpuid: &[bit(HV3, Reg::Eax, 7)],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_CPUID),
        ..row(
            E::Reset,
            "hv-reset",
            "reset MSR (modern Hyper-V does not expose it)",
        )
    },
    FlagDef {
        cpuid: &[bit(HV3, Reg::Eax, 11), bit(HV3, Reg::Edx, 8)],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_CPUID),
        ..row(
            E::Frequencies,
            "hv-frequencies",
            "TSC/APIC frequency MSRs (no calibration)",
        )
    },
    FlagDef {
        cpuid: &[bit(HV3, Reg::Eax, 13)],
        recommends: &[E::Frequencies],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_CPUID),
        ..row(
            E::Reenlightenment,
            "hv-reenlightenment",
            "TSC change notifications (nested)",
        )
    },
    FlagDef {
        aliases: &["enlightened-vmcs"],
        // 0A.EAX[15:0] (version range 0x0101) is added in cpuid.rs.
        cpuid: &[bit(HV4, Reg::Eax, 14)],
        requires: &[E::Vapic],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_ENLIGHTENED_VMCS),
        enable_cap: Some(tlfs::KVM_CAP_HYPERV_ENLIGHTENED_VMCS),
        ..row(
            E::Evmcs,
            "hv-evmcs",
            "enlightened VMCS v1 for nested Hyper-V (Intel only)",
        )
    },
    FlagDef {
        cpuid: &[bit(HVA, Reg::Eax, 19)],
        recommends: &[E::Evmcs],
        qemu_since: QEMU_7_1,
        ..row(
            E::EmsrBitmap,
            "hv-emsr-bitmap",
            "enlightened MSR bitmap for L2 (nested)",
        )
    },
    FlagDef {
        cpuid: &[bit(HV3, Reg::Edx, 4)],
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_ENFORCE_CPUID),
        qemu_since: QEMU_7_1,
        ..row(E::XmmInput, "hv-xmm-input", "XMM fast hypercall input")
    },
    FlagDef {
        aliases: &["apicv"],
        cpuid: &[bit(HV4, Reg::Eax, 9)],
        qemu_since: QEMU_6_2,
        ..row(
            E::Avic,
            "hv-avic",
            "deprecate AutoEOI so APICv/AVIC stays on with SynIC",
        )
    },
    FlagDef {
        // 04.EAX[18]; on: always, auto: what KVM reports (SMT impossible). Set in resolve.rs.
        value: ValueKind::OnOffAuto,
        enables_hyperv: false,
        ..row(
            E::NoNonarchCoresharing,
            "hv-no-nonarch-coresharing",
            "vCPUs never share a core unless SMT siblings (needs pinning)",
        )
    },
    FlagDef {
        cpuid: &[bit(HV3, Reg::Edx, 11)],
        requires: &[E::Synic, E::Relaxed],
        recommends: &[E::Time, E::Vapic, E::Vpindex, E::Runtime, E::Stimer],
        skip_passthrough: true,
        qemu_since: QEMU_7_1,
        ..row(
            E::Syndbg,
            "hv-syndbg",
            "synthetic kernel debugger channel (needs VMBus)",
        )
    },
    FlagDef {
        kind: FlagKind::Supplementary,
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_CPUID),
        ..row(
            E::Passthrough,
            "hv-passthrough",
            "everything KVM supports (not migratable)",
        )
    },
    FlagDef {
        kind: FlagKind::Supplementary,
        enables_hyperv: false,
        kvm_cap: Some(tlfs::KVM_CAP_HYPERV_ENFORCE_CPUID),
        enable_cap: Some(tlfs::KVM_CAP_HYPERV_ENFORCE_CPUID),
        qemu_since: QEMU_6_2,
        ..row(
            E::EnforceCpuid,
            "hv-enforce-cpuid",
            "KVM allows only what CPUID exposes",
        )
    },
    FlagDef {
        aliases: &["vendorid"],
        kind: FlagKind::Identity,
        value: ValueKind::Vendor,
        enables_hyperv: false,
        ..row(
            E::VendorId,
            "hv-vendor-id",
            "vendor string in 0x40000000; not an enlightenment",
        )
    },
    version(E::VersionIdBuild, "hv-version-id-build", 32),
    version(E::VersionIdMajor, "hv-version-id-major", 16),
    version(E::VersionIdMinor, "hv-version-id-minor", 16),
    version(E::VersionIdSpack, "hv-version-id-spack", 32),
    version(E::VersionIdSbranch, "hv-version-id-sbranch", 8),
    version(E::VersionIdSnumber, "hv-version-id-snumber", 24),
    FlagDef {
        kind: FlagKind::KvmParavirt,
        enables_hyperv: false,
        ..row(
            E::Kvm,
            "kvm",
            "KVM signature leaf (moved to 0x40000100 while Hyper-V is on)",
        )
    },
    kvm_pv(E::KvmClock, "kvmclock", &[bits2(KVMF, Reg::Eax, 0, 3)]),
    kvm_pv(
        E::KvmNopiodelay,
        "kvm-nopiodelay",
        &[bit(KVMF, Reg::Eax, 1)],
    ),
    kvm_pv(E::KvmAsyncpf, "kvm-asyncpf", &[bit(KVMF, Reg::Eax, 4)]),
    kvm_pv(E::KvmStealTime, "kvm-steal-time", &[bit(KVMF, Reg::Eax, 5)]),
    kvm_pv(E::KvmPvEoi, "kvm-pv-eoi", &[bit(KVMF, Reg::Eax, 6)]),
    kvm_pv(E::KvmPvUnhalt, "kvm-pv-unhalt", &[bit(KVMF, Reg::Eax, 7)]),
    kvm_pv(
        E::KvmPvTlbFlush,
        "kvm-pv-tlb-flush",
        &[bit(KVMF, Reg::Eax, 9)],
    ),
    FlagDef {
        qemu_since: QEMU_9_0,
        ..kvm_pv(
            E::KvmAsyncpfVmexit,
            "kvm-asyncpf-vmexit",
            &[bit(KVMF, Reg::Eax, 10)],
        )
    },
    kvm_pv(E::KvmPvIpi, "kvm-pv-ipi", &[bit(KVMF, Reg::Eax, 11)]),
    kvm_pv(
        E::KvmPollControl,
        "kvm-poll-control",
        &[bit(KVMF, Reg::Eax, 12)],
    ),
    kvm_pv(
        E::KvmPvSchedYield,
        "kvm-pv-sched-yield",
        &[bit(KVMF, Reg::Eax, 13)],
    ),
    kvm_pv(
        E::KvmAsyncpfInt,
        "kvm-asyncpf-int",
        &[bit(KVMF, Reg::Eax, 14)],
    ),
    FlagDef {
        qemu_since: QEMU_6_0,
        ..kvm_pv(
            E::KvmMsiExtDestId,
            "kvm-msi-ext-dest-id",
            &[bit(KVMF, Reg::Eax, 15)],
        )
    },
    kvm_pv(
        E::KvmClockStableBit,
        "kvmclock-stable-bit",
        &[bit(KVMF, Reg::Eax, 24)],
    ),
    // KVM_HINTS_REALTIME (0x40000001.EDX[0]): a hint, so KVM never filters it.
    kvm_pv(
        E::KvmHintDedicated,
        "kvm-hint-dedicated",
        &[bit(KVMF, Reg::Edx, 0)],
    ),
];

impl Enlightenment {
    /// Every flag, in table order.
    pub fn all() -> impl Iterator<Item = Enlightenment> {
        FLAGS.iter().map(|d| d.flag)
    }

    /// The table row.
    pub fn def(self) -> &'static FlagDef {
        // The table has one row per variant in declaration order (checked by a unit test).
        &FLAGS[self as usize]
    }

    /// QEMU's canonical name.
    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// The flag's kind.
    pub fn kind(self) -> FlagKind {
        self.def().kind
    }

    /// Looks a flag up by any accepted spelling: `hv-relaxed`, `hv_relaxed`, `relaxed`,
    /// libvirt names (`vendor_id`, `emsr_bitmap`, `hypervclock`), `hv-apicv`, `kvm_pv_ipi`.
    pub fn from_name(name: &str) -> Result<Enlightenment, UnknownFlag> {
        let key = normalize(name);
        FLAGS
            .iter()
            .find(|d| short(d.name) == key || d.aliases.contains(&key.as_str()))
            .map(|d| d.flag)
            .ok_or_else(|| UnknownFlag {
                name: name.trim().to_string(),
                suggestion: suggest(&key),
            })
    }
}

impl fmt::Display for Enlightenment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Enlightenment {
    type Err = UnknownFlag;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Enlightenment::from_name(s)
    }
}

impl From<Enlightenment> for &'static str {
    fn from(flag: Enlightenment) -> Self {
        flag.name()
    }
}

impl TryFrom<String> for Enlightenment {
    type Error = UnknownFlag;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Enlightenment::from_name(&s)
    }
}

/// Lower-case, `_` → `-`, without a leading `hv-`.
fn normalize(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase().replace('_', "-");
    match lower.strip_prefix("hv-") {
        Some(rest) => rest.to_string(),
        None => lower,
    }
}

fn short(name: &'static str) -> &'static str {
    name.strip_prefix("hv-").unwrap_or(name)
}

/// The closest known name within edit distance 3, for "did you mean".
fn suggest(key: &str) -> Option<&'static str> {
    const MAX: usize = 3;
    FLAGS
        .iter()
        .flat_map(|d| {
            std::iter::once(short(d.name))
                .chain(d.aliases.iter().copied())
                .map(move |n| (n, d))
        })
        // The length difference bounds the distance from below; skip hopeless names cheaply.
        .filter(|(n, _)| n.len().abs_diff(key.len()) <= MAX)
        .map(|(n, d)| (edit_distance(key, n), d.name))
        .filter(|&(dist, _)| dist <= MAX)
        .min_by_key(|&(dist, _)| dist)
        .map(|(_, name)| name)
}

/// Levenshtein distance with two rolling rows.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_follow_variant_order() {
        for (i, d) in FLAGS.iter().enumerate() {
            assert_eq!(d.flag as usize, i, "{} is out of order", d.name);
        }
    }

    #[test]
    fn names_and_aliases_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for d in FLAGS {
            for n in std::iter::once(short(d.name)).chain(d.aliases.iter().copied()) {
                assert!(seen.insert(n), "{n} appears twice");
            }
        }
    }

    #[test]
    fn spellings_resolve() {
        for s in ["hv-relaxed", "hv_relaxed", "relaxed", " HV_Relaxed "] {
            assert_eq!(Enlightenment::from_name(s).unwrap(), E::Relaxed, "{s}");
        }
        assert_eq!(Enlightenment::from_name("hv-apicv").unwrap(), E::Avic);
        assert_eq!(Enlightenment::from_name("vendor_id").unwrap(), E::VendorId);
        assert_eq!(
            Enlightenment::from_name("emsr_bitmap").unwrap(),
            E::EmsrBitmap
        );
        assert_eq!(Enlightenment::from_name("hypervclock").unwrap(), E::Time);
        assert_eq!(Enlightenment::from_name("kvm_pv_ipi").unwrap(), E::KvmPvIpi);
    }

    #[test]
    fn unknown_name_suggests_the_closest() {
        let err = Enlightenment::from_name("hv-frequencys").unwrap_err();
        assert_eq!(err.suggestion, Some("hv-frequencies"));
        assert!(
            err.to_string().contains("did you mean 'hv-frequencies'"),
            "{err}"
        );
    }

    #[test]
    fn dependencies_are_never_newer_than_their_dependents() {
        // An export for an old QEMU drops flags newer than it; this keeps every flag it
        // keeps together with what QEMU requires for it.
        for d in FLAGS {
            for dep in d.requires {
                assert!(
                    dep.def().qemu_since <= d.qemu_since,
                    "{} (QEMU {}) requires {} (QEMU {})",
                    d.name,
                    d.qemu_since,
                    dep.name(),
                    dep.def().qemu_since
                );
            }
        }
    }

    #[test]
    fn dependencies_point_backwards_or_to_known_flags() {
        for d in FLAGS {
            for dep in d.requires {
                assert_ne!(*dep, d.flag, "{} requires itself", d.name);
            }
        }
    }
}
