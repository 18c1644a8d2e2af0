//! What a host and its KVM can do, as far as Hyper-V enlightenments are concerned.
//! `hvkvm probe --json` fills it (key `"host_capabilities"`); tests and fleets write it by hand.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::tlfs::{self, CpuidLeaf, KvmCap, Reg};

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
    /// `KVM_CHECK_EXTENSION` answers, keyed by capability number and written in JSON by uAPI
    /// name (e.g. `"KVM_CAP_HYPERV_SYNIC2": 1`); absent or 0 means unsupported.
    #[serde(default)]
    pub kvm_caps: KvmCaps,
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

/// `KVM_CHECK_EXTENSION` answers, keyed by capability number (`kvm_bindings::KVM_CAP_*`).
///
/// JSON keeps the readable form `hvkvm probe --json` has always written: an object from uAPI
/// name to answer, `{"KVM_CAP_HYPERV": 1, "KVM_CAP_HYPERV_SYNIC2": 1}`. A key may also be a
/// capability number in decimal (`"148": 1`). A `KVM_CAP_*` name this model does not know
/// (from a newer probe) is kept as it is and ignored; any other key is an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvmCaps {
    known: BTreeMap<u32, i64>,
    /// Well-formed names of capabilities this model does not know, kept for round trips.
    unknown: BTreeMap<String, i64>,
}

impl KvmCaps {
    /// The answer for `cap`, if the host description has one.
    pub fn get(&self, cap: KvmCap) -> Option<i64> {
        self.known.get(&cap.number).copied()
    }

    /// Records the answer for `cap`.
    pub fn set(&mut self, cap: KvmCap, value: i64) {
        self.known.insert(cap.number, value);
    }

    /// Whether there are no answers at all.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty() && self.unknown.is_empty()
    }

    /// Every answer by capability number, in number order (unknown names excluded).
    pub fn iter(&self) -> impl Iterator<Item = (u32, i64)> + '_ {
        self.known.iter().map(|(n, v)| (*n, *v))
    }

    fn insert_key(&mut self, key: &str, value: i64) -> Result<(), String> {
        if let Some(cap) = KvmCap::from_name(key) {
            self.known.insert(cap.number, value);
        } else if let Ok(number) = key.parse::<u32>() {
            self.known.insert(number, value);
        } else if is_cap_name(key) {
            self.unknown.insert(key.to_string(), value);
        } else {
            return Err(format!(
                "kvm_caps key '{key}' is not a KVM capability: use the uAPI name (e.g. \
                 KVM_CAP_HYPERV_SYNIC2) or the capability number, as `hvkvm probe --json` writes"
            ));
        }
        Ok(())
    }
}

fn is_cap_name(key: &str) -> bool {
    key.strip_prefix("KVM_CAP_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// Capability numbers with their answers, as the VMM's probe has them.
impl FromIterator<(u32, i64)> for KvmCaps {
    fn from_iter<I: IntoIterator<Item = (u32, i64)>>(iter: I) -> Self {
        KvmCaps {
            known: iter.into_iter().collect(),
            unknown: BTreeMap::new(),
        }
    }
}

impl Serialize for KvmCaps {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.known.len() + self.unknown.len()))?;
        for (number, value) in &self.known {
            match KvmCap::from_number(*number) {
                Some(cap) => map.serialize_entry(cap.name, value)?,
                None => map.serialize_entry(&number.to_string(), value)?,
            }
        }
        for (name, value) in &self.unknown {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for KvmCaps {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, i64>::deserialize(deserializer)?;
        let mut caps = KvmCaps::default();
        for (key, value) in raw {
            caps.insert_key(&key, value)
                .map_err(serde::de::Error::custom)?;
        }
        Ok(caps)
    }
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
        self.kvm_caps.get(cap).is_some_and(|v| v > 0)
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
            kvm_caps: caps.iter().map(|c| (c.number, 1)).collect(),
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
        host.kvm_caps.set(tlfs::KVM_CAP_HYPERV_ENLIGHTENED_VMCS, 0);
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
    fn kvm_caps_keep_the_probe_json_format() {
        // What `hvkvm probe --json` has always written: uAPI names, including platform caps.
        let text = r#"{"cpu_vendor": "intel", "kvm_caps": {"KVM_CAP_HYPERV": 1,
            "KVM_CAP_HYPERV_SYNIC2": 1, "KVM_CAP_IRQCHIP": 1, "KVM_CAP_HYPERV_TIME": 0,
            "KVM_CAP_FROM_A_NEWER_PROBE": 3, "163": 1}}"#;
        let h = HostCapabilities::from_json(text, "t").unwrap();
        assert!(h.has_cap(tlfs::KVM_CAP_HYPERV_SYNIC2));
        assert!(
            h.has_cap(tlfs::KVM_CAP_HYPERV_ENLIGHTENED_VMCS),
            "numeric key 163"
        );
        assert!(!h.has_cap(tlfs::KVM_CAP_HYPERV_TIME), "answer 0");
        assert!(!h.has_cap(tlfs::KVM_CAP_HYPERV_VAPIC), "absent");
        let json = serde_json::to_value(&h).unwrap();
        let caps = &json["kvm_caps"];
        assert_eq!(
            caps["KVM_CAP_HYPERV_ENLIGHTENED_VMCS"], 1,
            "written by name: {caps}"
        );
        assert_eq!(caps["KVM_CAP_FROM_A_NEWER_PROBE"], 3, "kept: {caps}");
        let again = HostCapabilities::from_json(&json.to_string(), "again").unwrap();
        assert_eq!(again, h);
    }

    #[test]
    fn a_misspelt_cap_key_names_the_fix() {
        let err = HostCapabilities::from_json(
            r#"{"cpu_vendor": "intel", "kvm_caps": {"hyperv_synic2": 1}}"#,
            "t",
        )
        .unwrap_err();
        let source = std::error::Error::source(&err).map(ToString::to_string);
        let text = format!("{err}: {}", source.unwrap_or_default());
        assert!(
            text.contains("'hyperv_synic2'") && text.contains("KVM_CAP_HYPERV_SYNIC2"),
            "{text}"
        );
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
