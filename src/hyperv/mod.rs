//! Hyper-V for a VM: which enlightenments it gets, and who provides them.
//!
//! ```text
//!   setup      hv-model glue: --hv/--profile + this host → a Resolution → HvConfig + CPUID leaves
//!   backend    the one seam: HvBackend (chosen once per VM), HvVp (one per vCPU)
//!     ├─ user/     hvkvm emulates the synthetic MSRs, hypercalls and clock itself, the SynIC,
//!     │            synthetic timers (one timer thread per VM), PV IPIs and remote TLB flushes
//!     └─ kernel/   KVM's in-kernel Hyper-V emulation, driven through its capabilities
//!   report     what the guest used (both backends), inspect: VP assist page and eVMCS
//! ```
//!
//! The model (`hv-model`) decides what each backend can offer and turns off, with a reason,
//! whatever it cannot, so a guest is never offered an enlightenment nobody provides. Both
//! backends read what the guest was offered from the guest's final CPUID table, the one
//! source of truth.

pub mod backend;
pub mod inspect;
pub mod kernel;
pub mod report;
pub mod setup;
pub mod user;

pub use backend::{HvBackend, HvVp};
pub use setup::{cpuid_entries, host_capabilities, resolve_for_vm, HyperVError};
pub use user::connections::{Connections, GuestSynic, HvConnection, SynicError};

use crate::devices::GuestRequest;
use crate::ratelimit::error_ratelimited;

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

/// The Hyper-V part of a VM configuration (the CPUID leaves travel with the rest of the CPUID
/// in the VM configuration; the backend reads its features from the final table).
#[derive(Debug, Clone)]
pub struct HvConfig {
    /// Who provides the enlightenments.
    pub backend: hv_model::Backend,
    /// Enlightenments offered, by QEMU name, for the report.
    pub offered: Vec<String>,
    /// hv-enforce-cpuid: the kernel backend enables KVM_CAP_HYPERV_ENFORCE_CPUID. (The user
    /// backend always serves exactly what CPUID offers.)
    pub enforce_cpuid: bool,
    /// Crash policy.
    pub on_crash: CrashAction,
    /// What HvPostMessage and HvSignalEvent reach (user backend): handlers hvkvm code
    /// registered by connection ID.
    pub connections: user::connections::Connections,
    /// Why the guest cannot move to another host, from the model (`flag: reason`); a
    /// snapshot for migration is refused while there is any.
    pub migration_blockers: Vec<String>,
}

impl HvConfig {
    /// The configuration for a resolution, when it enables anything of Hyper-V.
    pub fn from_resolution(
        resolution: &hv_model::Resolution,
        on_crash: CrashAction,
    ) -> Option<Self> {
        if !resolution.hyperv_enabled() {
            return None;
        }
        Some(HvConfig {
            backend: resolution.backend,
            offered: resolution
                .enabled()
                .iter()
                .map(|e| e.name().to_string())
                .collect(),
            enforce_cpuid: resolution.is_on(hv_model::Enlightenment::EnforceCpuid),
            on_crash,
            connections: Default::default(),
            migration_blockers: resolution
                .migration_blockers
                .iter()
                .map(|b| format!("{}: {}", b.flag.name(), b.reason))
                .collect(),
        })
    }

    /// `backend` serving whatever the CPUID leaves offer, with enforce-CPUID semantics (how
    /// conformance tests set bits row by row).
    pub fn raw(backend: hv_model::Backend) -> Self {
        HvConfig {
            backend,
            offered: Vec::new(),
            enforce_cpuid: true,
            on_crash: CrashAction::Log,
            connections: Default::default(),
            migration_blockers: Vec::new(),
        }
    }
}

/// A guest exit a Hyper-V backend could not complete: hvkvm could not read or write the
/// vCPU, so the VM stops with this as the reason.
#[derive(Debug, thiserror::Error)]
pub enum HvExitError {
    /// A vCPU ioctl failed.
    #[error("VP {vp}: cannot {what}")]
    VcpuAccess {
        /// The VP.
        vp: u32,
        /// What was being done.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// A guest crash report (CRASH_CTL with CRASH_NOTIFY, either backend): logs it and says what
/// the policy asks of the VM.
pub fn crash_reported(vp: u32, params: [u64; 5], policy: CrashAction) -> Option<GuestRequest> {
    error_ratelimited!(
        "guest crash reported by VP {vp}: bugcheck {:#x} ({:#x}, {:#x}, {:#x}, {:#x})",
        params[0],
        params[1],
        params[2],
        params[3],
        params[4]
    );
    match policy {
        CrashAction::Log => None,
        CrashAction::Pause => Some(GuestRequest::Pause),
        CrashAction::Exit => Some(GuestRequest::GuestCrash),
    }
}
