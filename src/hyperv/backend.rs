//! The one seam between a VM and its Hyper-V backend.
//!
//! [`HvBackend`] is chosen once per VM from the configuration; each vCPU gets an [`HvVp`].
//! Every Hyper-V exit reaches the backend through the vCPU's `HvVp`: the exit handler asks it
//! about hypercall ports, `KVM_EXIT_HYPERV` and crash events, and, for the user backend, the
//! `HvVp` is also the handler of the synthetic MSR range on the vCPU's MSR bus. The two
//! backends are concrete types behind an enum (hvkvm only runs on KVM; there is nothing to
//! abstract over beyond these two).

use std::ops::RangeInclusive;
use std::sync::Arc;

use hv_model::Backend;
use kvm_bindings::kvm_cpuid_entry2;
use kvm_ioctls::VcpuFd;

use super::kernel::{KernelBackend, KernelVp};
use super::report::UsageReport;
use super::user::link::VpLink;
use super::user::{UserBackend, UserBackendParams, UserVp, HYPERCALL_PORT};
use super::{HvConfig, HvExitError};
use crate::devices::GuestRequest;
use crate::memory::GuestMemory;
use crate::vcpu::msr::MsrBus;
use crate::vcpu::VcpuState;

/// The MSR range the user backend takes from KVM with an MSR filter.
pub const USER_MSR_RANGE: RangeInclusive<u32> =
    hyperv_tlfs::msr::RANGE_START..=hyperv_tlfs::msr::RANGE_START + hyperv_tlfs::msr::RANGE_LEN - 1;

/// Errors setting a backend up.
#[derive(Debug, thiserror::Error)]
pub enum HvSetupError {
    /// A KVM ioctl failed.
    #[error("KVM refused {what} on vCPU {vcpu}")]
    Kvm {
        /// The vCPU.
        vcpu: u32,
        /// Which step.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// hv-evmcs is offered but KVM would not enable the enlightened VMCS.
    #[error("cannot enable the enlightened VMCS on vCPU {vcpu}")]
    Evmcs {
        /// The vCPU.
        vcpu: u32,
        /// Why.
        #[source]
        source: crate::kvm::nested::EvmcsError,
    },
}

/// What a backend is built from.
#[derive(Debug)]
pub struct BackendParams<'a> {
    /// The Hyper-V configuration.
    pub config: &'a HvConfig,
    /// The CPUID table the guest runs with (vCPU 0's; the hypervisor leaves are the same on
    /// every vCPU).
    pub cpuid: &'a [kvm_cpuid_entry2],
    /// vCPU count.
    pub vcpus: u32,
    /// Guest RAM.
    pub mem: GuestMemory,
    /// The guest TSC now (vCPU 0's) and its rate.
    pub guest_tsc: u64,
    /// Guest TSC rate in kHz.
    pub tsc_khz: u32,
    /// How the user backend reaches the VPs (interrupts, kicks).
    pub link: Arc<dyn VpLink>,
    /// Time dilation factor for the user backend (1: none; see `host_quirks`).
    pub time_dilation: u32,
}

/// A VM's Hyper-V backend.
#[derive(Debug, Clone)]
pub enum HvBackend {
    /// hvkvm's user-space emulation.
    User(Arc<UserBackend>),
    /// KVM's in-kernel emulation.
    Kernel(Arc<KernelBackend>),
}

impl<'a> BackendParams<'a> {
    /// What the user backend is built from (a new one, or one continuing a snapshot).
    pub fn into_user(self) -> UserBackendParams<'a> {
        UserBackendParams {
            cpuid: self.cpuid,
            offered_names: self.config.offered.clone(),
            vps: self.vcpus,
            mem: self.mem,
            guest_tsc: self.guest_tsc,
            tsc_khz: self.tsc_khz,
            on_crash: self.config.on_crash,
            link: Some(self.link),
            connections: self.config.connections.clone(),
            time_dilation: self.time_dilation,
        }
    }
}

impl HvBackend {
    /// Builds the backend the configuration names.
    pub fn new(p: BackendParams<'_>) -> Self {
        match p.config.backend {
            Backend::User => HvBackend::User(Arc::new(UserBackend::new(p.into_user()))),
            Backend::Kernel => HvBackend::Kernel(Arc::new(KernelBackend::new(
                p.config, p.cpuid, p.vcpus, p.mem,
            ))),
        }
    }

    /// Whether a configuration with this backend needs the synthetic MSR range sent to user
    /// space (the VM's MSR filter), decided before the backend exists.
    pub fn filters_msrs(backend: Backend) -> Option<RangeInclusive<u32>> {
        (backend == Backend::User).then_some(USER_MSR_RANGE)
    }

    /// Per-vCPU setup, after KVM_SET_CPUID2 (the kernel backend enables its capabilities and
    /// sets VP_INDEX and CRASH_CTL here).
    pub fn setup_vcpu(&self, vp: u32, fd: &VcpuFd) -> Result<(), HvSetupError> {
        match self {
            HvBackend::User(_) => Ok(()),
            HvBackend::Kernel(k) => k.setup_vcpu(vp, fd),
        }
    }

    /// The handle of vCPU `vp`; the user backend's also joins the vCPU's MSR bus.
    pub fn attach_vcpu(&self, vp: u32, msrs: &mut MsrBus) -> HvVp {
        match self {
            HvBackend::User(u) => {
                let handle = u.vp_handle(vp);
                msrs.insert(USER_MSR_RANGE, Box::new(handle.clone()));
                HvVp::User(handle)
            }
            HvBackend::Kernel(k) => HvVp::Kernel(k.vp_handle(vp)),
        }
    }

    /// What the guest used so far.
    pub fn report(&self) -> UsageReport {
        match self {
            HvBackend::User(u) => u.report(),
            HvBackend::Kernel(k) => k.report(),
        }
    }

    /// The VM stopped: the user backend stops its timer thread.
    pub fn shutdown(&self) {
        if let HvBackend::User(u) = self {
            u.shutdown();
        }
    }
}

/// One vCPU's handle on the VM's Hyper-V backend.
#[derive(Debug, Clone)]
pub enum HvVp {
    /// User backend.
    User(UserVp),
    /// Kernel backend.
    Kernel(KernelVp),
}

impl HvVp {
    /// Whether an `out` to `port` is a hypercall (the user backend's trampoline).
    pub fn claims_port(&self, port: u16) -> bool {
        matches!(self, HvVp::User(_)) && port == HYPERCALL_PORT
    }

    /// The hypercall-page trampoline's exit (user backend).
    pub fn hypercall_port(
        &mut self,
        state: &mut dyn VcpuState,
    ) -> Result<Option<GuestRequest>, HvExitError> {
        match self {
            HvVp::User(u) => u.hypercall(state),
            HvVp::Kernel(_) => Ok(None),
        }
    }

    /// `KVM_EXIT_HYPERV` (kernel backend).
    pub fn hyperv_exit(
        &mut self,
        state: &mut dyn VcpuState,
    ) -> Result<Option<GuestRequest>, HvExitError> {
        match self {
            HvVp::Kernel(k) => k.hyperv_exit(state),
            HvVp::User(_) => Ok(None),
        }
    }

    /// `KVM_SYSTEM_EVENT_CRASH` (kernel backend: KVM reports the guest's CRASH_CTL write).
    pub fn crash_event(
        &mut self,
        state: &mut dyn VcpuState,
    ) -> Result<Option<GuestRequest>, HvExitError> {
        match self {
            HvVp::Kernel(k) => k.crash_event(state),
            HvVp::User(_) => Ok(Some(GuestRequest::GuestCrash)),
        }
    }

    /// Right before `KVM_RUN` (user backend: TLB flushes other VPs asked for).
    pub fn before_entry(&mut self, state: &mut dyn VcpuState) -> Result<(), HvExitError> {
        match self {
            HvVp::User(u) => u.before_entry(state),
            HvVp::Kernel(_) => Ok(()),
        }
    }

    /// Right after `KVM_RUN` returned, whatever the exit.
    pub fn after_exit(&mut self) {
        if let HvVp::User(u) = self {
            u.after_exit();
        }
    }

    /// The vCPU left its run loop: the kernel backend reads the synthetic MSRs for the
    /// report.
    pub fn vcpu_stopped(&mut self, state: &mut dyn VcpuState) {
        if let HvVp::Kernel(k) = self {
            k.capture(state);
        }
    }
}
