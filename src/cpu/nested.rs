//! VMX for the guest (nested virtualization): whether this host can give a guest VMX, and the
//! CPUID bit that does. KVM then offers the guest the VMX capability MSRs of its nested VMX
//! (and, once the enlightened VMCS is enabled on a vCPU, filters them the way an eVMCS guest
//! must see them: no posted interrupts, preemption timer, APIC virtualization, PML, VMFUNC,
//! shadow VMCS or TSC scaling).

use kvm_bindings::kvm_cpuid_entry2;

use super::CpuModel;
use crate::kvm::caps::CpuVendor;
use crate::kvm::HostProbe;

/// CPUID.1:ECX bit 5: VMX.
pub const VMX_BIT: u32 = 1 << 5;

/// `--nested`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NestedMode {
    /// On where the host can nest and `--cpu host` is chosen.
    #[default]
    Auto,
    /// VMX for the guest; an error where the host cannot nest.
    On,
    /// No VMX for the guest, whatever the CPU model.
    Off,
}

/// Nested VMX was asked for on a host that cannot provide it.
#[derive(Debug, thiserror::Error)]
#[error("--nested on: this host cannot give a guest VMX: {reason}")]
pub struct NestedUnavailable {
    /// Why.
    pub reason: String,
}

/// Whether this host can give a guest VMX, and why not.
pub fn nesting_possible(host: &HostProbe) -> Result<(), String> {
    if host.is_pvm() {
        return Err("/dev/kvm is served by kvm_pvm, which has no nested VMX".into());
    }
    if host.cpu_vendor != CpuVendor::Intel {
        return Err(format!(
            "hvkvm nests on Intel VMX only (the enlightened VMCS is Intel-only); this host's \
             CPU vendor is {:?}",
            host.cpu_vendor
        ));
    }
    if !host.vmx {
        return Err("the host CPU does not expose VMX to this kernel".into());
    }
    match host.nested_param {
        Some(true) => Ok(()),
        Some(false) => Err(
            "kvm_intel is loaded with nested=0; reload it with nested=1 \
                            (modprobe -r kvm_intel; modprobe kvm_intel nested=1)"
                .into(),
        ),
        None => Err("kvm_intel is not loaded".into()),
    }
}

/// Decides `--nested` for this host and CPU model: `Ok(true)` gives the guest VMX.
pub fn resolve(
    mode: NestedMode,
    model: CpuModel,
    host: &HostProbe,
) -> Result<bool, NestedUnavailable> {
    match mode {
        NestedMode::Off => Ok(false),
        NestedMode::On => nesting_possible(host)
            .map(|()| true)
            .map_err(|reason| NestedUnavailable { reason }),
        NestedMode::Auto => Ok(model == CpuModel::Host && nesting_possible(host).is_ok()),
    }
}

/// Sets or clears CPUID.1:ECX.VMX in a vCPU's table.
pub fn set_vmx(table: &mut [kvm_cpuid_entry2], on: bool) {
    for e in table.iter_mut().filter(|e| e.function == 1) {
        if on {
            e.ecx |= VMX_BIT;
        } else {
            e.ecx &= !VMX_BIT;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(vendor: CpuVendor, vmx: bool, nested: Option<bool>, module: &str) -> HostProbe {
        HostProbe {
            kvm_api_version: 12,
            kvm_module: Some(module.into()),
            cpu_vendor: vendor,
            cpu_model: None,
            vmx,
            svm: false,
            nested_param: nested,
            tsc_khz: None,
            invariant_tsc: false,
            smt_active: None,
            kvm_pv_features: 0,
            hyperv_caps: Vec::new(),
            platform_caps: Vec::new(),
            supported_hv_cpuid: None,
        }
    }

    #[test]
    fn on_is_refused_with_the_reason_where_nesting_is_impossible() {
        let pvm = host(CpuVendor::Amd, false, None, "kvm_pvm");
        let e = resolve(NestedMode::On, CpuModel::Host, &pvm).unwrap_err();
        assert!(e.to_string().contains("kvm_pvm"), "{e}");
        let amd = host(CpuVendor::Amd, false, Some(true), "kvm_amd");
        assert!(resolve(NestedMode::On, CpuModel::Host, &amd)
            .unwrap_err()
            .to_string()
            .contains("Intel"));
        let off = host(CpuVendor::Intel, true, Some(false), "kvm_intel");
        assert!(resolve(NestedMode::On, CpuModel::Host, &off)
            .unwrap_err()
            .to_string()
            .contains("nested=1"));
        assert!(!resolve(NestedMode::Auto, CpuModel::Host, &off).unwrap());
    }

    #[test]
    fn auto_nests_with_cpu_host_on_a_nesting_intel_host() {
        let intel = host(CpuVendor::Intel, true, Some(true), "kvm_intel");
        assert!(resolve(NestedMode::Auto, CpuModel::Host, &intel).unwrap());
        assert!(!resolve(NestedMode::Auto, CpuModel::Baseline, &intel).unwrap());
        assert!(resolve(NestedMode::On, CpuModel::Baseline, &intel).unwrap());
        assert!(!resolve(NestedMode::Off, CpuModel::Host, &intel).unwrap());
        let mut table = [kvm_cpuid_entry2 {
            function: 1,
            ..Default::default()
        }];
        set_vmx(&mut table, true);
        assert_eq!(table[0].ecx, VMX_BIT);
        set_vmx(&mut table, false);
        assert_eq!(table[0].ecx, 0);
    }
}
