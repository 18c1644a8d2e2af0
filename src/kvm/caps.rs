//! What this host's KVM can do: capabilities, CPU vendor and virtualization extensions,
//! the nested parameter, TSC facts. `hvkvm probe` prints this; the VM builder and the
//! Hyper-V model decide from it.

use std::fs;
use std::path::Path;

use kvm_bindings::*;
use kvm_ioctls::Kvm;
use raw_cpuid::{CpuId, CpuIdReader, CpuIdResult, VendorInfo};
use serde::Serialize;

/// Errors while probing the host.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// /dev/kvm could not be opened.
    #[error(
        "cannot open /dev/kvm; check that the kvm module is loaded and that this user may \
         read and write /dev/kvm (e.g. member of the 'kvm' group)"
    )]
    OpenKvm(#[source] vmm_sys_util::errno::Error),
    /// A throw-away VM or vCPU for probing could not be created.
    #[error("cannot create a probe VM/vCPU on this host")]
    ProbeVm(#[source] vmm_sys_util::errno::Error),
}

/// One `KVM_CHECK_EXTENSION` answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CapValue {
    /// The uAPI name, e.g. `KVM_CAP_HYPERV_SYNIC2`.
    pub name: &'static str,
    /// The capability number.
    pub number: u32,
    /// What `KVM_CHECK_EXTENSION` returned (0 = absent).
    pub value: i32,
}

/// Every Hyper-V capability KVM defines (reference §1).
pub const HYPERV_CAPS: &[(&str, u32)] = &[
    ("KVM_CAP_HYPERV", KVM_CAP_HYPERV),
    ("KVM_CAP_HYPERV_VAPIC", KVM_CAP_HYPERV_VAPIC),
    ("KVM_CAP_HYPERV_SPIN", KVM_CAP_HYPERV_SPIN),
    ("KVM_CAP_HYPERV_TIME", KVM_CAP_HYPERV_TIME),
    ("KVM_CAP_HYPERV_SYNIC", KVM_CAP_HYPERV_SYNIC),
    ("KVM_CAP_HYPERV_SYNIC2", KVM_CAP_HYPERV_SYNIC2),
    ("KVM_CAP_HYPERV_VP_INDEX", KVM_CAP_HYPERV_VP_INDEX),
    ("KVM_CAP_HYPERV_EVENTFD", KVM_CAP_HYPERV_EVENTFD),
    ("KVM_CAP_HYPERV_TLBFLUSH", KVM_CAP_HYPERV_TLBFLUSH),
    ("KVM_CAP_HYPERV_SEND_IPI", KVM_CAP_HYPERV_SEND_IPI),
    (
        "KVM_CAP_HYPERV_ENLIGHTENED_VMCS",
        KVM_CAP_HYPERV_ENLIGHTENED_VMCS,
    ),
    ("KVM_CAP_HYPERV_CPUID", KVM_CAP_HYPERV_CPUID),
    (
        "KVM_CAP_HYPERV_DIRECT_TLBFLUSH",
        KVM_CAP_HYPERV_DIRECT_TLBFLUSH,
    ),
    ("KVM_CAP_HYPERV_ENFORCE_CPUID", KVM_CAP_HYPERV_ENFORCE_CPUID),
    ("KVM_CAP_SYS_HYPERV_CPUID", KVM_CAP_SYS_HYPERV_CPUID),
];

/// Other capabilities that decide what hvkvm can do on a host.
pub const PLATFORM_CAPS: &[(&str, u32)] = &[
    ("KVM_CAP_IRQCHIP", KVM_CAP_IRQCHIP),
    ("KVM_CAP_SPLIT_IRQCHIP", KVM_CAP_SPLIT_IRQCHIP),
    ("KVM_CAP_PIT2", KVM_CAP_PIT2),
    ("KVM_CAP_X2APIC_API", KVM_CAP_X2APIC_API),
    ("KVM_CAP_TSC_DEADLINE_TIMER", KVM_CAP_TSC_DEADLINE_TIMER),
    ("KVM_CAP_NESTED_STATE", KVM_CAP_NESTED_STATE),
    ("KVM_CAP_TSC_CONTROL", KVM_CAP_TSC_CONTROL),
    ("KVM_CAP_GET_TSC_KHZ", KVM_CAP_GET_TSC_KHZ),
    ("KVM_CAP_X86_USER_SPACE_MSR", KVM_CAP_X86_USER_SPACE_MSR),
    ("KVM_CAP_X86_MSR_FILTER", KVM_CAP_X86_MSR_FILTER),
    ("KVM_CAP_EXIT_HYPERCALL", KVM_CAP_EXIT_HYPERCALL),
    (
        "KVM_CAP_EXIT_ON_EMULATION_FAILURE",
        KVM_CAP_EXIT_ON_EMULATION_FAILURE,
    ),
    ("KVM_CAP_IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT),
    ("KVM_CAP_SET_GUEST_DEBUG", KVM_CAP_SET_GUEST_DEBUG),
    ("KVM_CAP_SIGNAL_MSI", KVM_CAP_SIGNAL_MSI),
    ("KVM_CAP_IRQFD", KVM_CAP_IRQFD),
    ("KVM_CAP_IOEVENTFD", KVM_CAP_IOEVENTFD),
    ("KVM_CAP_ADJUST_CLOCK", KVM_CAP_ADJUST_CLOCK),
    ("KVM_CAP_MAX_VCPUS", KVM_CAP_MAX_VCPUS),
];

/// CPU vendor of the host.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CpuVendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD or HygonGenuine.
    Amd,
    /// Anything else.
    Other,
}

/// Everything `hvkvm probe` learns about the host.
#[derive(Debug, Clone, Serialize)]
pub struct HostProbe {
    /// `KVM_GET_API_VERSION` (12 on every kernel since 2.6.22).
    pub kvm_api_version: i32,
    /// The kernel module serving /dev/kvm (kvm_intel, kvm_amd, kvm_pvm, …), if identifiable.
    pub kvm_module: Option<String>,
    /// Host CPU vendor (CPUID leaf 0, decoded by raw-cpuid).
    pub cpu_vendor: CpuVendor,
    /// The CPU's brand string (CPUID 0x8000_0002..4).
    pub cpu_model: Option<String>,
    /// Whether the host CPU has VMX (CPUID.1:ECX.VMX).
    pub vmx: bool,
    /// Whether the host CPU has SVM (CPUID 0x8000_0001:ECX.SVM).
    pub svm: bool,
    /// The kvm_intel/kvm_amd `nested` module parameter; None when that module is not loaded.
    pub nested_param: Option<bool>,
    /// Host TSC frequency as KVM reports it to a vCPU.
    pub tsc_khz: Option<u32>,
    /// The host CPU has an invariant TSC (CPUID 0x80000007.EDX[8] as KVM supports it).
    pub invariant_tsc: bool,
    /// SMT is active on the host (/sys/devices/system/cpu/smt/active).
    pub smt_active: Option<bool>,
    /// KVM's paravirt feature bits (supported CPUID 0x40000001.EAX).
    pub kvm_pv_features: u32,
    /// Every KVM_CAP_HYPERV_* answer.
    pub hyperv_caps: Vec<CapValue>,
    /// The other capabilities hvkvm relies on.
    pub platform_caps: Vec<CapValue>,
    /// The Hyper-V leaves KVM can emulate (`KVM_GET_SUPPORTED_HV_CPUID` on /dev/kvm), when the
    /// kernel has in-kernel Hyper-V and KVM_CAP_SYS_HYPERV_CPUID.
    pub supported_hv_cpuid: Option<Vec<crate::cpu::CpuidEntry>>,
}

impl HostProbe {
    /// Probes /dev/kvm, /proc/cpuinfo and /sys.
    pub fn probe() -> Result<Self, ProbeError> {
        let kvm = Kvm::new().map_err(ProbeError::OpenKvm)?;
        let check = |list: &[(&'static str, u32)]| -> Vec<CapValue> {
            list.iter()
                .map(|&(name, number)| CapValue {
                    name,
                    number,
                    value: kvm.check_extension_raw(number.into()),
                })
                .collect()
        };
        let cpu = cpu_info(&CpuId::new());
        let supported: Vec<(u32, u32, [u32; 4])> = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map(|c| {
                c.as_slice()
                    .iter()
                    .map(|e| (e.function, e.index, [e.eax, e.ebx, e.ecx, e.edx]))
                    .collect()
            })
            .unwrap_or_default();
        // KVM's own paravirt leaf; raw-cpuid does not decode KVM's feature bits.
        let kvm_pv_features = table_reader(&supported)(0x4000_0001, 0).eax;
        let invariant_tsc = CpuId::with_cpuid_reader(table_reader(&supported))
            .get_advanced_power_mgmt_info()
            .is_some_and(|apm| apm.has_invariant_tsc());
        let tsc_khz = probe_tsc_khz(&kvm)?;
        let supported_hv_cpuid = (kvm.check_extension_raw(KVM_CAP_SYS_HYPERV_CPUID.into()) > 0)
            .then(|| super::hyperv::supported_hv_cpuid(&kvm).ok())
            .flatten()
            .map(|c| {
                c.as_slice()
                    .iter()
                    .map(crate::cpu::CpuidEntry::from)
                    .collect()
            });
        Ok(HostProbe {
            kvm_api_version: kvm.get_api_version(),
            kvm_module: detect_kvm_module(Path::new("/sys/module")),
            cpu_vendor: cpu.vendor,
            cpu_model: cpu.model,
            vmx: cpu.vmx,
            svm: cpu.svm,
            nested_param: read_nested_param(Path::new("/sys/module")),
            tsc_khz,
            invariant_tsc,
            smt_active: fs::read_to_string("/sys/devices/system/cpu/smt/active")
                .ok()
                .map(|s| s.trim() == "1"),
            kvm_pv_features,
            hyperv_caps: check(HYPERV_CAPS),
            platform_caps: check(PLATFORM_CAPS),
            supported_hv_cpuid,
        })
    }

    /// The value of a capability by uAPI name (0 when unknown or absent).
    pub fn cap(&self, name: &str) -> i32 {
        self.hyperv_caps
            .iter()
            .chain(&self.platform_caps)
            .find(|c| c.name == name)
            .map_or(0, |c| c.value)
    }

    /// Whether KVM has in-kernel Hyper-V emulation (the kernel backend can work).
    pub fn kernel_hyperv(&self) -> bool {
        self.cap("KVM_CAP_HYPERV") > 0
    }

    /// True when /dev/kvm is served by the page-table based `kvm_pvm` module, whose guests
    /// need the workarounds in `crate::host_quirks`.
    pub fn is_pvm(&self) -> bool {
        self.kvm_module.as_deref() == Some("kvm_pvm")
    }
}

fn probe_tsc_khz(kvm: &Kvm) -> Result<Option<u32>, ProbeError> {
    if kvm.check_extension_raw(KVM_CAP_GET_TSC_KHZ.into()) <= 0 {
        return Ok(None);
    }
    let vm = kvm.create_vm().map_err(ProbeError::ProbeVm)?;
    let vcpu = vm.create_vcpu(0).map_err(ProbeError::ProbeVm)?;
    Ok(vcpu.get_tsc_khz().ok())
}

struct CpuInfo {
    vendor: CpuVendor,
    model: Option<String>,
    vmx: bool,
    svm: bool,
}

/// A CPUID reader over a table of (leaf, subleaf) → registers, such as KVM's supported CPUID:
/// what raw-cpuid decodes when the leaves come from somewhere other than this CPU. A leaf the
/// table lacks reads as zeros.
fn table_reader(table: &[(u32, u32, [u32; 4])]) -> impl Fn(u32, u32) -> CpuIdResult + Clone + '_ {
    move |leaf, subleaf| {
        let [eax, ebx, ecx, edx] = table
            .iter()
            .find(|(l, s, _)| *l == leaf && *s == subleaf)
            .or_else(|| table.iter().find(|(l, _, _)| *l == leaf))
            .map_or([0; 4], |(_, _, regs)| *regs);
        CpuIdResult { eax, ebx, ecx, edx }
    }
}

/// The host CPU's vendor, brand string and virtualization extensions, as raw-cpuid decodes
/// CPUID leaves 0, 1, 0x8000_0001 and 0x8000_0002..4.
fn cpu_info<R: CpuIdReader>(cpuid: &CpuId<R>) -> CpuInfo {
    let vendor = match cpuid.get_vendor_info().as_ref().map(VendorInfo::as_str) {
        Some("GenuineIntel") => CpuVendor::Intel,
        Some("AuthenticAMD") | Some("HygonGenuine") => CpuVendor::Amd,
        _ => CpuVendor::Other,
    };
    CpuInfo {
        vendor,
        model: cpuid
            .get_processor_brand_string()
            .map(|b| b.as_str().trim().to_string())
            .filter(|b| !b.is_empty()),
        vmx: cpuid.get_feature_info().is_some_and(|f| f.has_vmx()),
        svm: cpuid
            .get_extended_processor_and_feature_identifiers()
            .is_some_and(|e| e.has_svm()),
    }
}

fn detect_kvm_module(sys_module: &Path) -> Option<String> {
    ["kvm_pvm", "kvm_intel", "kvm_amd"]
        .iter()
        .find(|m| sys_module.join(m).exists())
        .map(|m| m.to_string())
}

fn read_nested_param(sys_module: &Path) -> Option<bool> {
    ["kvm_intel", "kvm_amd"].iter().find_map(|m| {
        let v = fs::read_to_string(sys_module.join(m).join("parameters/nested")).ok()?;
        Some(matches!(v.trim(), "Y" | "y" | "1"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leaves 0x8000_0002..4 holding `brand` (NUL-padded to 48 bytes).
    fn brand_leaves(brand: &str) -> Vec<(u32, u32, [u32; 4])> {
        let mut bytes = brand.as_bytes().to_vec();
        bytes.resize(48, 0);
        let words: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (0..3u32)
            .map(|i| {
                let w = &words[i as usize * 4..i as usize * 4 + 4];
                (0x8000_0002 + i, 0, [w[0], w[1], w[2], w[3]])
            })
            .collect()
    }

    /// Leaf 0 with `vendor`, max basic leaf 1, max extended leaf 0x8000_0007.
    fn vendor_leaves(vendor: &[u8; 12]) -> Vec<(u32, u32, [u32; 4])> {
        let r =
            |i: usize| u32::from_le_bytes([vendor[i], vendor[i + 1], vendor[i + 2], vendor[i + 3]]);
        vec![
            (0, 0, [1, r(0), r(8), r(4)]),
            (0x8000_0000, 0, [0x8000_0007, 0, 0, 0]),
        ]
    }

    #[test]
    fn cpuid_vendor_brand_and_virtualization_bits() {
        let mut intel = vendor_leaves(b"GenuineIntel");
        intel.push((1, 0, [0, 0, 1 << 5, 0]));
        intel.extend(brand_leaves("  Xeon Test CPU  "));
        let info = cpu_info(&CpuId::with_cpuid_reader(table_reader(&intel)));
        assert_eq!(info.vendor, CpuVendor::Intel);
        assert!(info.vmx && !info.svm);
        assert_eq!(info.model.as_deref(), Some("Xeon Test CPU"));

        let mut amd = vendor_leaves(b"AuthenticAMD");
        amd.push((0x8000_0001, 0, [0, 0, 1 << 2, 0]));
        amd.push((0x8000_0007, 0, [0, 0, 0, 1 << 8]));
        let info = cpu_info(&CpuId::with_cpuid_reader(table_reader(&amd)));
        assert_eq!(info.vendor, CpuVendor::Amd);
        assert!(info.svm && !info.vmx);
        assert_eq!(info.model, None);
        assert!(CpuId::with_cpuid_reader(table_reader(&amd))
            .get_advanced_power_mgmt_info()
            .is_some_and(|a| a.has_invariant_tsc()));

        let hygon = vendor_leaves(b"HygonGenuine");
        let info = cpu_info(&CpuId::with_cpuid_reader(table_reader(&hygon)));
        assert_eq!(info.vendor, CpuVendor::Amd);
        let none = cpu_info(&CpuId::with_cpuid_reader(table_reader(&[])));
        assert_eq!(none.vendor, CpuVendor::Other);
        assert!(!none.vmx && !none.svm);
    }

    #[test]
    fn nested_param_parsing() {
        let dir = std::env::temp_dir().join(format!("hvkvm-nested-{}", std::process::id()));
        let params = dir.join("kvm_intel/parameters");
        fs::create_dir_all(&params).unwrap();
        fs::write(params.join("nested"), "Y\n").unwrap();
        assert_eq!(read_nested_param(&dir), Some(true));
        fs::write(params.join("nested"), "0\n").unwrap();
        assert_eq!(read_nested_param(&dir), Some(false));
        assert_eq!(detect_kvm_module(&dir).as_deref(), Some("kvm_intel"));
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read_nested_param(&dir), None);
    }
}
