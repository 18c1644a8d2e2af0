//! CPUID leaf numbers and bit positions from the Hyper-V TLFS (`feature-discovery.md`) and
//! KVM's paravirt ABI (`Documentation/virt/kvm/x86/cpuid.rst`), the KVM capabilities that
//! report them, and the plain data types for CPUID leaves. This is the bottom layer: it
//! depends on no other module. The flag table (`flags.rs`) says which flag sets which bit.

use serde::{Deserialize, Serialize};

/// Vendor and maximum leaf: EAX = highest Hyper-V leaf, EBX:ECX:EDX = vendor string.
pub const HV_VENDOR_AND_MAX: u32 = 0x4000_0000;
/// Interface signature: EAX = "Hv#1". KVM only treats the vCPU as Hyper-V when it sees this.
pub const HV_INTERFACE: u32 = 0x4000_0001;
/// Hypervisor version: EAX build, EBX `major[31:16]` `minor[15:0]`, ECX service pack,
/// EDX service `branch[31:24]` service `number[23:0]`.
pub const HV_VERSION: u32 = 0x4000_0002;
/// Partition privileges (EAX/EBX) and feature flags (EDX).
pub const HV_FEATURES: u32 = 0x4000_0003;
/// Implementation recommendations (EAX) and spinlock retries (EBX).
pub const HV_RECOMMENDATIONS: u32 = 0x4000_0004;
/// Implementation limits: EAX max virtual processors, EBX max logical processors.
pub const HV_LIMITS: u32 = 0x4000_0005;
/// Nested-virtualization features: `EAX[15:0]` eVMCS version range, `EAX[17]`/`[19]` direct flush
/// and enlightened MSR bitmap.
pub const HV_NESTED_FEATURES: u32 = 0x4000_000A;
/// SynDbg vendor: EBX:ECX:EDX = "Microsoft VS".
pub const HV_SYNDBG_VENDOR: u32 = 0x4000_0080;
/// SynDbg interface: EAX = "VS#1".
pub const HV_SYNDBG_INTERFACE: u32 = 0x4000_0081;
/// SynDbg platform capabilities: `EAX[1]` = kernel debugging allowed.
pub const HV_SYNDBG_PLATFORM: u32 = 0x4000_0082;

/// Where KVM's own signature leaf lives while Hyper-V owns 0x40000000 (QEMU's
/// `KVM_CPUID_SIGNATURE_NEXT`; Linux guests scan every 0x100 for "KVMKVMKVM").
pub const KVM_SIGNATURE_RELOCATED: u32 = 0x4000_0100;
/// KVM's feature leaf in its native place (0x40000001); relocated to 0x40000101.
pub const KVM_FEATURES: u32 = 0x4000_0001;
/// Offset of KVM's leaves while Hyper-V is on.
pub const KVM_RELOCATION: u32 = 0x100;

/// "Hv#1" as 40000001.EAX.
pub const HV_INTERFACE_SIGNATURE: u32 = 0x3123_7648;
/// "VS#1" as 40000081.EAX.
pub const HV_SYNDBG_INTERFACE_SIGNATURE: u32 = 0x3123_5356;
/// `40000082.EAX[1]`: the guest may use the synthetic kernel debugger.
pub const HV_SYNDBG_ALLOW_KERNEL_DEBUGGING: u32 = 1 << 1;

/// `40000003.EAX[5]`: hypercall MSRs (GUEST_OS_ID, HYPERCALL). QEMU always sets it.
pub const HV_HYPERCALL_MSRS: u32 = 1 << 5;
/// `40000003.EDX[3]`: CPU dynamic partitioning. KVM does not report it, but QEMU always sets it
/// because Windows needs it for CPU hotplug.
pub const HV_CPU_DYNAMIC_PARTITIONING: u32 = 1 << 3;
/// `40000004.EAX[3]`: use the APIC MSRs. QEMU sets it with hv-vapic unless hv-avic is on.
pub const HV_APIC_ACCESS_RECOMMENDED: u32 = 1 << 3;
/// `40000004.EAX[18]`: virtual processors never share a physical core unless reported as SMT
/// siblings. KVM reports it when SMT is impossible on the host.
pub const HV_NO_NONARCH_CORESHARING: u32 = 1 << 18;
/// eVMCS version range 1..=1 (low byte minimum, high byte maximum); QEMU pins the maximum at
/// 1 so the guest stays migratable when KVM grows a version 2.
pub const EVMCS_VERSION_RANGE: u16 = 0x0101;

/// Default vendor string (40000000.EBX:ECX:EDX).
pub const DEFAULT_VENDOR: &str = "Microsoft Hv";
/// QEMU's default version: Windows Server 2016, build 14393 (0x3839), 10.0.
pub const DEFAULT_VERSION_BUILD: u32 = 0x3839;
/// Default major version (WS2016).
pub const DEFAULT_VERSION_MAJOR: u32 = 10;
/// Default minor version (WS2016).
pub const DEFAULT_VERSION_MINOR: u32 = 0;
/// QEMU's default for 40000005.EAX (`x-hv-max-vps=-1`: no limit).
pub const DEFAULT_MAX_VPS: u32 = u32::MAX;
/// QEMU's 40000005.EBX (maximum logical processors).
pub const DEFAULT_MAX_LPS: u32 = 64;
/// 40000004.EBX meaning "never notify on long spin waits".
pub const SPINLOCKS_NEVER_NOTIFY: u32 = u32::MAX;
/// Smallest useful spinlock retry count (QEMU before 5.x, libvirt and KubeVirt enforce it).
pub const SPINLOCKS_MIN: u32 = 0xFFF;

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

impl Reg {
    /// Upper-case register name, e.g. "EAX".
    pub fn name(self) -> &'static str {
        match self {
            Reg::Eax => "EAX",
            Reg::Ebx => "EBX",
            Reg::Ecx => "ECX",
            Reg::Edx => "EDX",
        }
    }
}

/// One bit (or group of bits) in a CPUID leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidBits {
    /// Leaf (CPUID function).
    pub leaf: u32,
    /// Output register.
    pub reg: Reg,
    /// The bits.
    pub mask: u32,
}

impl CpuidBits {
    /// The bit number(s) as `[n]` or `[n,m]`, for tables.
    pub fn describe(&self) -> String {
        let bits: Vec<String> = (0..32)
            .filter(|b| self.mask & (1 << b) != 0)
            .map(|b| b.to_string())
            .collect();
        format!(
            "{:02X}.{}[{}]",
            self.leaf & 0xFF,
            self.reg.name(),
            bits.join(",")
        )
    }
}

/// Shorthand for the table: `bit(leaf, reg, n)`.
pub const fn bit(leaf: u32, reg: Reg, n: u32) -> CpuidBits {
    CpuidBits {
        leaf,
        reg,
        mask: 1 << n,
    }
}

/// A KVM capability: its `KVM_CHECK_EXTENSION` number, taken from kvm-bindings (the KVM uAPI
/// as bound by rust-vmm), and its uAPI name, which is how host descriptions spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KvmCap {
    /// uAPI name, the key used in the JSON of [`crate::HostCapabilities::kvm_caps`].
    pub name: &'static str,
    /// Capability number (`kvm_bindings::KVM_CAP_*`).
    pub number: u32,
}

impl KvmCap {
    /// The capability with this uAPI name, if the model knows it.
    pub fn from_name(name: &str) -> Option<KvmCap> {
        ALL_CAPS.iter().copied().find(|c| c.name == name)
    }

    /// The capability with this number, if the model knows it.
    pub fn from_number(number: u32) -> Option<KvmCap> {
        ALL_CAPS.iter().copied().find(|c| c.number == number)
    }
}

/// Declares each capability once: the name is the constant's own name and the number is
/// kvm-bindings' constant of that name, so the two cannot disagree.
macro_rules! caps {
    ($($id:ident),* $(,)?) => {
        $(
            #[doc = concat!("`", stringify!($id), "`.")]
            pub const $id: KvmCap = KvmCap { name: stringify!($id), number: kvm_bindings::$id };
        )*
        /// Every capability the model knows by name: the Hyper-V ones and the platform ones
        /// `hvkvm probe` reports beside them (host descriptions may carry all of them).
        pub const ALL_CAPS: &[KvmCap] = &[$($id),*];
    };
}

caps! {
    KVM_CAP_HYPERV,
    KVM_CAP_HYPERV_VAPIC,
    KVM_CAP_HYPERV_SPIN,
    KVM_CAP_HYPERV_TIME,
    KVM_CAP_HYPERV_SYNIC,
    KVM_CAP_HYPERV_SYNIC2,
    KVM_CAP_HYPERV_VP_INDEX,
    KVM_CAP_HYPERV_EVENTFD,
    KVM_CAP_HYPERV_TLBFLUSH,
    KVM_CAP_HYPERV_SEND_IPI,
    KVM_CAP_HYPERV_ENLIGHTENED_VMCS,
    KVM_CAP_HYPERV_CPUID,
    KVM_CAP_HYPERV_DIRECT_TLBFLUSH,
    KVM_CAP_SYS_HYPERV_CPUID,
    KVM_CAP_HYPERV_ENFORCE_CPUID,
    KVM_CAP_IRQCHIP,
    KVM_CAP_SPLIT_IRQCHIP,
    KVM_CAP_PIT2,
    KVM_CAP_X2APIC_API,
    KVM_CAP_TSC_DEADLINE_TIMER,
    KVM_CAP_NESTED_STATE,
    KVM_CAP_TSC_CONTROL,
    KVM_CAP_GET_TSC_KHZ,
    KVM_CAP_X86_USER_SPACE_MSR,
    KVM_CAP_X86_MSR_FILTER,
    KVM_CAP_EXIT_HYPERCALL,
    KVM_CAP_EXIT_ON_EMULATION_FAILURE,
    KVM_CAP_IMMEDIATE_EXIT,
    KVM_CAP_SET_GUEST_DEBUG,
    KVM_CAP_SIGNAL_MSI,
    KVM_CAP_IRQFD,
    KVM_CAP_IOEVENTFD,
    KVM_CAP_ADJUST_CLOCK,
    KVM_CAP_MAX_VCPUS,
}

/// One CPUID leaf, as `kvm_cpuid_entry2` carries it (without flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CpuidLeaf {
    /// Leaf (EAX input).
    pub function: u32,
    /// Subleaf (ECX input); 0 for every hypervisor leaf.
    #[serde(default)]
    pub index: u32,
    /// EAX output.
    pub eax: u32,
    /// EBX output.
    pub ebx: u32,
    /// ECX output.
    pub ecx: u32,
    /// EDX output.
    pub edx: u32,
}

impl CpuidLeaf {
    /// A leaf with subleaf 0.
    pub fn new(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidLeaf {
        CpuidLeaf {
            function,
            index: 0,
            eax,
            ebx,
            ecx,
            edx,
        }
    }

    /// One output register.
    pub fn reg(&self, reg: Reg) -> u32 {
        match reg {
            Reg::Eax => self.eax,
            Reg::Ebx => self.ebx,
            Reg::Ecx => self.ecx,
            Reg::Edx => self.edx,
        }
    }
}

/// Packs up to 12 ASCII bytes into three little-endian registers, zero padded (the layout of
/// 40000000.EBX:ECX:EDX).
pub fn pack_signature(s: &str) -> [u32; 3] {
    let mut bytes = [0u8; 12];
    for (dst, src) in bytes.iter_mut().zip(s.bytes()) {
        *dst = src;
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    [word(0), word(4), word(8)]
}

/// Inverse of [`pack_signature`]: trailing NULs are dropped, other bytes kept as Latin-1.
pub fn unpack_signature(regs: [u32; 3]) -> String {
    let bytes: Vec<u8> = regs.iter().flat_map(|r| r.to_le_bytes()).collect();
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    bytes[..end].iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsoft_hv_packs_like_hyper_v() {
        assert_eq!(
            pack_signature("Microsoft Hv"),
            [0x7263_694D, 0x666F_736F, 0x7648_2074]
        );
        assert_eq!(unpack_signature(pack_signature("KVMKVMKVM")), "KVMKVMKVM");
    }

    #[test]
    fn capability_numbers_are_kvms() {
        // Spot checks against the uAPI (include/uapi/linux/kvm.h); the rest follows from
        // the macro taking number and name from the same kvm-bindings constant.
        assert_eq!(KVM_CAP_HYPERV.number, 44);
        assert_eq!(KVM_CAP_HYPERV_SYNIC2.number, 148);
        assert_eq!(KVM_CAP_HYPERV_ENFORCE_CPUID.number, 199);
        let mut numbers: Vec<u32> = ALL_CAPS.iter().map(|c| c.number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), ALL_CAPS.len(), "two names share a number");
        assert_eq!(
            KvmCap::from_name("KVM_CAP_HYPERV_TIME"),
            Some(KVM_CAP_HYPERV_TIME)
        );
        assert_eq!(KvmCap::from_number(96), Some(KVM_CAP_HYPERV_TIME));
        assert_eq!(KvmCap::from_name("KVM_CAP_HYPERV_TYPO"), None);
    }

    #[test]
    fn interface_signature_spells_hv1() {
        assert_eq!(pack_signature("Hv#1")[0], HV_INTERFACE_SIGNATURE);
        assert_eq!(pack_signature("VS#1")[0], HV_SYNDBG_INTERFACE_SIGNATURE);
    }
}
