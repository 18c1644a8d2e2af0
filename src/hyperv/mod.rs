//! Hyper-V for a VM: which enlightenments it gets (decided by the `hv-model` crate from the
//! user's request and this host), and who provides them.
//!
//! Two backends exist in the model: the kernel backend (KVM's in-kernel Hyper-V emulation)
//! and the user backend (hvkvm emulates the Hyper-V MSRs and hypercalls itself). What the
//! user backend implements is listed in `hv_model::USER_BACKEND_IMPLEMENTS`; the model turns
//! off (with a reason) or refuses everything else, so a guest is never offered an
//! enlightenment nobody provides.

pub mod clock;
pub mod features;
pub mod hypercall;
pub mod inspect;
pub mod msrs;
pub mod partition;
pub mod report;
pub mod vcpu;

use hv_model::{Backend, HostCapabilities, Resolution, ResolveOptions};

pub use vcpu::{HvVcpu, UserBackend};

use crate::cpu::CpuidEntry;
use crate::kvm::caps::CpuVendor;
use crate::kvm::HostProbe;

/// What hvkvm does when the guest reports a crash through CRASH_CTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CrashAction {
    /// Log the bugcheck code and parameters and let the guest go on (so Windows can write
    /// its own dump).
    #[default]
    Log,
    /// Log, then pause every vCPU (the VM stays until --timeout or the process is killed).
    Pause,
    /// Log, then end the VM (exit status 123).
    Exit,
}

/// The user backend's part of a VM configuration.
#[derive(Debug, Clone)]
pub struct UserBackendConfig {
    /// The hypervisor CPUID leaves the guest gets (the backend reads its features from them).
    pub leaves: Vec<CpuidEntry>,
    /// Enlightenments offered, by QEMU name, for the report.
    pub offered: Vec<String>,
    /// Crash policy.
    pub on_crash: CrashAction,
}

impl UserBackendConfig {
    /// The backend configuration for a resolution, if it offers anything the backend serves.
    pub fn from_resolution(resolution: &Resolution, on_crash: CrashAction) -> Option<Self> {
        if resolution.backend != Backend::User || !resolution.hyperv_enabled() {
            return None;
        }
        Some(UserBackendConfig {
            leaves: cpuid_entries(resolution),
            offered: resolution
                .enabled()
                .iter()
                .map(|e| e.name().to_string())
                .collect(),
            on_crash,
        })
    }
}

/// Which backend `hvkvm run` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendChoice {
    /// The kernel backend where the host has in-kernel Hyper-V, else the user backend.
    #[default]
    Auto,
    /// KVM's in-kernel Hyper-V emulation.
    Kernel,
    /// hvkvm's own emulation.
    User,
}

/// Errors selecting enlightenments for a VM.
#[derive(Debug, thiserror::Error)]
pub enum HyperVError {
    /// The request is invalid or cannot be met on this host.
    #[error("cannot provide the requested Hyper-V enlightenments")]
    Model(#[source] hv_model::ModelError),
    /// The kernel backend was chosen but hvkvm does not drive it yet.
    #[error(
        "the kernel backend is not wired into hvkvm run yet (KVM caps are not enabled by hvkvm); \
         use --backend user"
    )]
    KernelBackendNotWired,
    /// The kernel backend was chosen on a host without in-kernel Hyper-V.
    #[error(
        "--backend kernel needs in-kernel Hyper-V, but every KVM_CAP_HYPERV_* is 0 on this \
         host; use --backend user (or auto)"
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
        supported_hv_cpuid: None,
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
    let kernel_available = probe.cap("KVM_CAP_HYPERV") > 0;
    let backend = match choice {
        BackendChoice::Kernel if !kernel_available => return Err(HyperVError::NoKernelHyperV),
        BackendChoice::Kernel => return Err(HyperVError::KernelBackendNotWired),
        BackendChoice::Auto if kernel_available => return Err(HyperVError::KernelBackendNotWired),
        BackendChoice::Auto | BackendChoice::User => Backend::User,
    };
    let host = host_capabilities(probe);
    let options = ResolveOptions {
        tsc_khz: probe.tsc_khz,
        ..ResolveOptions::default()
    };
    hv_model::resolve(request, &host, backend, &options)
        .map(Some)
        .map_err(HyperVError::Model)
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
