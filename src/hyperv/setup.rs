//! The glue between a VM and the `hv-model` crate: describe this host to the model, resolve
//! the user's `--hv`/`--profile` request against it and the chosen backend, and turn the
//! resolution into CPUID leaves.

use hv_model::{Backend, HostCapabilities, Resolution, ResolveOptions};

use super::BackendChoice;
use crate::cpu::CpuidEntry;
use crate::kvm::caps::CpuVendor;
use crate::kvm::HostProbe;

/// Errors selecting enlightenments for a VM.
#[derive(Debug, thiserror::Error)]
pub enum HyperVError {
    /// The request is invalid or cannot be met on this host.
    #[error("cannot provide the requested Hyper-V enlightenments")]
    Model(#[source] hv_model::ModelError),
    /// The kernel backend was chosen on a host without in-kernel Hyper-V.
    #[error(
        "--backend kernel needs in-kernel Hyper-V, but every KVM_CAP_HYPERV_* is 0 on this \
         host (a kernel built without CONFIG_KVM_HYPERV, or not a VMX/SVM host); use \
         --backend user (or auto)"
    )]
    NoKernelHyperV,
}

/// The host description the Hyper-V model decides from.
pub fn host_capabilities(probe: &HostProbe) -> HostCapabilities {
    let kvm_caps = probe
        .hyperv_caps
        .iter()
        .chain(&probe.platform_caps)
        .map(|c| (c.number, i64::from(c.value)))
        .collect();
    HostCapabilities {
        cpu_vendor: match probe.cpu_vendor {
            CpuVendor::Intel => hv_model::CpuVendor::Intel,
            CpuVendor::Amd => hv_model::CpuVendor::Amd,
            CpuVendor::Other => hv_model::CpuVendor::Other,
        },
        vmx: probe.vmx,
        svm: probe.svm,
        nested: probe.nested_param,
        kvm_caps,
        supported_hv_cpuid: probe.supported_hv_cpuid.as_ref().map(|leaves| {
            leaves
                .iter()
                .map(|l| hv_model::CpuidLeaf {
                    function: l.function,
                    index: l.index,
                    eax: l.eax,
                    ebx: l.ebx,
                    ecx: l.ecx,
                    edx: l.edx,
                })
                .collect()
        }),
        kvm_pv_features: probe.kvm_pv_features,
        irqchip: probe.cap("KVM_CAP_IRQCHIP") > 0,
        split_irqchip: probe.cap("KVM_CAP_SPLIT_IRQCHIP") > 0,
        user_space_msr: probe.cap("KVM_CAP_X86_USER_SPACE_MSR") > 0,
        msr_filter: probe.cap("KVM_CAP_X86_MSR_FILTER") > 0,
        tsc_control: probe.cap("KVM_CAP_TSC_CONTROL") > 0,
        tsc_khz: probe.tsc_khz,
        invariant_tsc: probe.invariant_tsc,
        smt_possible: probe.smt_active,
        nested_state: probe.cap("KVM_CAP_NESTED_STATE") > 0,
        apicv: None,
    }
}

/// The backend `choice` means on this host: `auto` is the kernel backend wherever KVM has
/// in-kernel Hyper-V, else the user backend.
pub fn backend_for(choice: BackendChoice, probe: &HostProbe) -> Result<Backend, HyperVError> {
    let kernel_available = probe.kernel_hyperv();
    match choice {
        BackendChoice::Kernel if !kernel_available => Err(HyperVError::NoKernelHyperV),
        BackendChoice::Kernel => Ok(Backend::Kernel),
        BackendChoice::Auto if kernel_available => Ok(Backend::Kernel),
        BackendChoice::Auto | BackendChoice::User => Ok(Backend::User),
    }
}

/// Resolves `--hv`/`--profile` for a VM on this host. `None` when no enlightenment was asked
/// for.
pub fn resolve_for_vm(
    request: &hv_model::HvRequest,
    probe: &HostProbe,
    choice: BackendChoice,
) -> Result<Option<Resolution>, HyperVError> {
    if request.profile.is_none() && request.overrides == Default::default() {
        return Ok(None);
    }
    let backend = backend_for(choice, probe)?;
    if choice == BackendChoice::Auto {
        log::info!(
            "Hyper-V backend: {backend} ({})",
            match backend {
                Backend::Kernel => "this host's KVM has in-kernel Hyper-V",
                Backend::User => "this host's KVM has no in-kernel Hyper-V; hvkvm emulates it",
            }
        );
    }
    let host = host_capabilities(probe);
    let options = ResolveOptions {
        tsc_khz: probe.tsc_khz,
        ..ResolveOptions::default()
    };
    let resolution =
        hv_model::resolve(request, &host, backend, &options).map_err(HyperVError::Model)?;
    Ok(Some(deprecate_auto_eoi(
        resolution, request, &host, &options,
    )?))
}

/// The user backend cannot honour AutoEOI (see hv-model's `USER_BACKEND_IMPLEMENTS`), so
/// whenever the SynIC is on it tells the guest not to use it (`hv-avic`, `04.EAX[9]`),
/// unless the request turned `hv-avic` off explicitly; then it says what that means.
fn deprecate_auto_eoi(
    resolution: Resolution,
    request: &hv_model::HvRequest,
    host: &HostCapabilities,
    options: &ResolveOptions,
) -> Result<Resolution, HyperVError> {
    use hv_model::Enlightenment as E;
    if resolution.backend != Backend::User
        || !resolution.is_on(E::Synic)
        || resolution.is_on(E::Avic)
    {
        return Ok(resolution);
    }
    if request.overrides.state(E::Avic) == Some(false) {
        log::warn!(
            "-hv-avic with hv-synic on the user backend: the guest may use AutoEOI, which \
             the user backend cannot honour (its SINT interrupts then stay in service until \
             the guest writes EOI)"
        );
        return Ok(resolution);
    }
    let mut with_hint = request.clone();
    with_hint
        .overrides
        .enable(E::Avic)
        .map_err(HyperVError::Model)?;
    log::info!("hv-avic added: the user backend cannot honour AutoEOI for hv-synic");
    hv_model::resolve(&with_hint, host, Backend::User, options).map_err(HyperVError::Model)
}

/// The hypervisor CPUID leaves a resolution gives the guest (empty: keep KVM's own).
pub fn cpuid_entries(resolution: &Resolution) -> Vec<CpuidEntry> {
    hv_model::cpuid_leaves(resolution)
        .into_iter()
        .map(|l| CpuidEntry {
            function: l.function,
            index: l.index,
            eax: l.eax,
            ebx: l.ebx,
            ecx: l.ecx,
            edx: l.edx,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_model::Enlightenment as E;

    #[test]
    fn synic_on_the_user_backend_deprecates_auto_eoi() {
        let host = HostCapabilities {
            user_space_msr: true,
            msr_filter: true,
            irqchip: true,
            ..HostCapabilities::default()
        };
        let opts = ResolveOptions::default();
        let resolve = |list: &str| {
            let req = hv_model::parse_hv_list(list).unwrap();
            let r = hv_model::resolve(&req, &host, Backend::User, &opts).unwrap();
            deprecate_auto_eoi(r, &req, &host, &opts).unwrap()
        };
        let r = resolve("hv-vpindex,hv-synic");
        assert!(r.is_on(E::Avic));
        let hints = hv_model::cpuid_leaves(&r)
            .iter()
            .find(|l| l.function == 0x4000_0004)
            .unwrap()
            .eax;
        assert_ne!(hints & (1 << 9), 0);
        assert!(
            !resolve("hv-vpindex,hv-time").is_on(E::Avic),
            "no SynIC, no hint"
        );
        assert!(
            !resolve("hv-vpindex,hv-synic,-hv-avic").is_on(E::Avic),
            "explicit off"
        );
    }
}
