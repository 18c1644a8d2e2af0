//! What a host and its KVM can do, as far as Hyper-V enlightenments are concerned.
//! `hvkvm probe --json` fills it (key `"host_capabilities"`); tests and fleets write it by hand.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cpuid::CpuidLeaf;
use crate::tlfs::{self, KvmCap, Reg};

/// Host CPU vendor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuVendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD or HygonGenuine.
    Amd,
    /// Anything else (or unknown).
    #[default]
    Other,
}

impl fmt::Display for CpuVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CpuVendor::Intel => "Intel",
            CpuVendor::Amd => "AMD",
            CpuVendor::Other => "non-Intel/AMD",
        })
    }
}

/// Everything the model needs to know about a host. `Default` is a host that can do nothing;
/// every field but `cpu_vendor` may be omitted in JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCapabilities {
    /// Host CPU vendor ("intel", "amd", "other"). Required in JSON: it is how a host
    /// description is recognised.
    pub cpu_vendor: CpuVendor,
    /// The host CPU has VMX (Intel VT-x).
    #[serde(default)]
    pub vmx: bool,
    /// The host CPU has SVM (AMD-V).
    #[serde(default)]
    pub svm: bool,
    /// The kvm_intel/kvm_amd `nested` module parameter; `None` when unknown/not loaded.
    #[serde(default)]
    pub nested: Option<bool>,
    /// `KVM_CHECK_EXTENSION` answers by uAPI name (e.g. `"KVM_CAP_HYPERV_SYNIC2": 1`);
    /// absent or 0 means unsupported.
    #[serde(default)]
    pub kvm_caps: BTreeMap<String, i64>,
    /// The leaves of `KVM_GET_SUPPORTED_HV_CPUID` (0x40000000..0x40000082), when the kernel
    /// has it (cap 167/191). The primary source of truth for the kernel backend.
    #[serde(default)]
    pub supported_hv_cpuid: Option<Vec<CpuidLeaf>>,
    /// KVM's paravirt feature bits (supported CPUID 0x40000001.EAX).
    #[serde(default)]
    pub kvm_pv_features: u32,
    /// An in-kernel irqchip (LAPIC) can be created (`KVM_CAP_IRQCHIP`).
    #[serde(default)]
    pub irqchip: bool,
    /// A split irqchip (in-kernel LAPIC, user-space IOAPIC) is available.
    #[serde(default)]
    pub split_irqchip: bool,
    /// `KVM_CAP_X86_USER_SPACE_MSR`: MSR accesses can exit to user space.
    #[serde(default)]
    pub user_space_msr: bool,
    /// `KVM_CAP_X86_MSR_FILTER`: MSR ranges can be routed to user space.
    #[serde(default)]
    pub msr_filter: bool,
    /// `KVM_CAP_TSC_CONTROL`: TSC scaling (a guest can keep its TSC frequency elsewhere).
    #[serde(default)]
    pub tsc_control: bool,
    /// Host TSC frequency in kHz as KVM reports it.
    #[serde(default)]
    pub tsc_khz: Option<u32>,
    /// The host has an invariant TSC.
    #[serde(default)]
    pub invariant_tsc: bool,
    /// SMT can be active on the host (`None`: unknown). KVM sets `04.EAX[18]` only when not.
    #[serde(default)]
    pub smt_possible: Option<bool>,
    /// `KVM_CAP_NESTED_STATE`: nested (incl. eVMCS) state can be saved for migration.
    #[serde(default)]
    pub nested_state: bool,
    /// APIC virtualization (Intel APICv / AMD AVIC) is enabled in KVM (`None`: unknown).
    /// QEMU advises hv-avic only with it.
    #[serde(default)]
    pub apicv: Option<bool>,
}

/// Why a host description could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum HostLoadError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The path.
        path: String,
        /// Why (missing, not a regular file, too large, not UTF-8).
        #[source]
        source: input_file::InputError,
    },
    /// Not JSON, or a field has the wrong type.
    #[error("{path} is not a valid host description")]
    Json {
        /// The path.
        path: String,
        /// The parser's error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// Valid JSON, but neither a probe document nor a HostCapabilities object.
    #[error(
        "{path} is not a host description: expected the output of `hvkvm probe --json` \
         (an object with \"host_capabilities\") or a HostCapabilities object (with \
         \"cpu_vendor\"); found {found}"
    )]
    NotAHost {
        /// The path.
        path: String,
        /// What was found instead.
        found: String,
    },
}

impl HostCapabilities {
    /// Loads a probe document (`{"host_capabilities": {...}, ...}`) or a bare object.
    pub fn load(path: &Path) -> Result<HostCapabilities, HostLoadError> {
        let text = input_file::read_text(path, &input_file::Role::config("host description"))
            .map_err(|source| HostLoadError::Read {
                path: path.display().to_string(),
                source,
            })?;
        HostCapabilities::from_json(&text, &path.display().to_string())
    }

    /// Parses JSON text; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<HostCapabilities, HostLoadError> {
        let json = |source| HostLoadError::Json {
            path: origin.to_string(),
            source,
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(json)?;
        let not_host = |found: String| HostLoadError::NotAHost {
            path: origin.to_string(),
            found,
        };
        let serde_json::Value::Object(map) = &value else {
            return Err(not_host(format!("a JSON {}", json_kind(&value))));
        };
        let inner = match map.get("host_capabilities") {
            Some(inner) => inner.clone(),
            None if map.contains_key("cpu_vendor") => value.clone(),
            None => {
                let keys: Vec<&str> = map.keys().map(String::as_str).take(8).collect();
                return Err(not_host(format!(
                    "an object with keys [{}]",
                    keys.join(", ")
                )));
            }
        };
        if !inner.is_object() {
            return Err(not_host(format!(
                "\"host_capabilities\" is a JSON {}",
                json_kind(&inner)
            )));
        }
        serde_json::from_value(inner).map_err(json)
    }

    /// Whether `KVM_CHECK_EXTENSION(cap)` was positive.
    pub fn has_cap(&self, cap: KvmCap) -> bool {
        self.kvm_caps.get(cap.name).is_some_and(|v| *v > 0)
    }

    /// Whether the kernel has in-kernel Hyper-V emulation at all (`CONFIG_KVM_HYPERV`).
    pub fn kernel_hyperv(&self) -> bool {
        self.has_cap(tlfs::KVM_CAP_HYPERV) || self.supported_hv_cpuid.is_some()
    }

    /// A register of `KVM_GET_SUPPORTED_HV_CPUID`, if the probe has the leaves (a missing leaf
    /// reads as 0, as QEMU's `hv_cpuid_get_host()`).
    pub fn hv_leaf(&self, leaf: u32, reg: Reg) -> Option<u32> {
        let leaves = self.supported_hv_cpuid.as_ref()?;
        Some(
            leaves
                .iter()
                .find(|l| l.function == leaf && l.index == 0)
                .map_or(0, |l| l.reg(reg)),
        )
    }

    /// Whether an in-kernel LAPIC is possible (full or split irqchip).
    pub fn in_kernel_lapic(&self) -> bool {
        self.irqchip || self.split_irqchip
    }

    /// An example: a current Intel host with nested=1 and a complete KVM (Linux ≈6.8).
    /// Used by docs and tests.
    pub fn example_intel() -> HostCapabilities {
        let caps = [
            tlfs::KVM_CAP_HYPERV,
            tlfs::KVM_CAP_HYPERV_VAPIC,
            tlfs::KVM_CAP_HYPERV_SPIN,
            tlfs::KVM_CAP_HYPERV_TIME,
            tlfs::KVM_CAP_HYPERV_SYNIC,
            tlfs::KVM_CAP_HYPERV_SYNIC2,
            tlfs::KVM_CAP_HYPERV_VP_INDEX,
            tlfs::KVM_CAP_HYPERV_EVENTFD,
            tlfs::KVM_CAP_HYPERV_TLBFLUSH,
            tlfs::KVM_CAP_HYPERV_SEND_IPI,
            tlfs::KVM_CAP_HYPERV_ENLIGHTENED_VMCS,
            tlfs::KVM_CAP_HYPERV_CPUID,
            tlfs::KVM_CAP_SYS_HYPERV_CPUID,
            tlfs::KVM_CAP_HYPERV_ENFORCE_CPUID,
        ];
        HostCapabilities {
            cpu_vendor: CpuVendor::Intel,
            vmx: true,
            svm: false,
            nested: Some(true),
            kvm_caps: caps.iter().map(|c| (c.name.to_string(), 1)).collect(),
            supported_hv_cpuid: Some(kvm_supported_hv_cpuid(true, false)),
            // kvmclock..msi-ext-dest-id and the stable bit, as KVM ≈6.x reports.
            kvm_pv_features: 0x0100_FEFB,
            irqchip: true,
            split_irqchip: true,
            user_space_msr: true,
            msr_filter: true,
            tsc_control: true,
            tsc_khz: Some(2_500_000),
            invariant_tsc: true,
            smt_possible: Some(true),
            nested_state: true,
            apicv: Some(true),
        }
    }

    /// An example AMD host (nested=1); no eVMCS.
    pub fn example_amd() -> HostCapabilities {
        let mut host = HostCapabilities::example_intel();
        host.cpu_vendor = CpuVendor::Amd;
        host.vmx = false;
        host.svm = true;
        host.kvm_caps
            .insert(tlfs::KVM_CAP_HYPERV_ENLIGHTENED_VMCS.name.into(), 0);
        host.supported_hv_cpuid = Some(kvm_supported_hv_cpuid(false, false));
        host.tsc_khz = Some(3_000_000);
        host
    }
}

/// What upstream KVM returns from `KVM_GET_SUPPORTED_HV_CPUID` (reference §1, L-hv
/// `kvm_get_hv_cpuid`) with an in-kernel LAPIC; `evmcs` adds `04.EAX[14]` and the version
/// range, `no_smt` adds `04.EAX[18]`.
pub fn kvm_supported_hv_cpuid(evmcs: bool, no_smt: bool) -> Vec<CpuidLeaf> {
    let vendor = tlfs::pack_signature("Linux KVM Hv");
    let leaf = |function, eax, ebx, ecx, edx| CpuidLeaf {
        function,
        index: 0,
        eax,
        ebx,
        ecx,
        edx,
    };
    let bits = |list: &[u32]| list.iter().fold(0u32, |acc, b| acc | (1 << b));
    let mut recomm = bits(&[2, 3, 5, 9, 11, 10]);
    if evmcs {
        recomm |= 1 << 14;
    }
    if no_smt {
        recomm |= tlfs::HV_NO_NONARCH_CORESHARING;
    }
    let nested = bits(&[17, 19])
        | if evmcs {
            u32::from(tlfs::EVMCS_VERSION_RANGE)
        } else {
            0
        };
    vec![
        leaf(
            tlfs::HV_VENDOR_AND_MAX,
            tlfs::HV_SYNDBG_PLATFORM,
            vendor[0],
            vendor[1],
            vendor[2],
        ),
        leaf(tlfs::HV_INTERFACE, tlfs::HV_INTERFACE_SIGNATURE, 0, 0, 0),
        leaf(tlfs::HV_VERSION, 0x3839, 0x000A_0000, 0, 0),
        leaf(
            tlfs::HV_FEATURES,
            bits(&[0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15]),
            bits(&[4, 5, 11, 20]),
            0,
            bits(&[1, 4, 8, 10, 11, 14, 19]),
        ),
        leaf(tlfs::HV_RECOMMENDATIONS, recomm, 0xFFF, 0, 0),
        leaf(tlfs::HV_LIMITS, 4096, 64, 0, 0),
        leaf(tlfs::HV_NESTED_FEATURES, nested, u32::from(evmcs), 0, 0),
        leaf(
            tlfs::HV_SYNDBG_VENDOR,
            0,
            0x7263_694D,
            0x666F_736F,
            0x5356_2074,
        ),
        leaf(
            tlfs::HV_SYNDBG_INTERFACE,
            tlfs::HV_SYNDBG_INTERFACE_SIGNATURE,
            0,
            0,
            0,
        ),
        leaf(
            tlfs::HV_SYNDBG_PLATFORM,
            tlfs::HV_SYNDBG_ALLOW_KERNEL_DEBUGGING,
            0,
            0,
            0,
        ),
    ]
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_probe_documents_load() {
        let bare = serde_json::to_string(&HostCapabilities::example_intel()).unwrap();
        let a = HostCapabilities::from_json(&bare, "bare").unwrap();
        let probe = format!("{{\"kvm_api_version\": 12, \"host_capabilities\": {bare}}}");
        let b = HostCapabilities::from_json(&probe, "probe").unwrap();
        assert_eq!(a, HostCapabilities::example_intel());
        assert_eq!(a, b);
    }

    #[test]
    fn minimal_object_needs_only_the_vendor() {
        let h = HostCapabilities::from_json(r#"{"cpu_vendor": "amd"}"#, "x").unwrap();
        assert_eq!(h.cpu_vendor, CpuVendor::Amd);
        assert!(!h.kernel_hyperv());
    }

    #[test]
    fn anything_else_is_refused() {
        for text in [
            "",
            "[]",
            "42",
            "{}",
            r#"{"foo": 1}"#,
            r#"{"host_capabilities": 3}"#,
            r#"{"cpu_vendor": "sparc"}"#,
            r#"{"cpu_vendor": "intel", "vmx": "yes"}"#,
        ] {
            assert!(
                HostCapabilities::from_json(text, "t").is_err(),
                "{text} accepted"
            );
        }
    }
}
