//! Knobs of a resolution besides the request and the host: whether the host is checked, the
//! VM's irqchip, migration, TSC frequency.
//!
//! Layer 2: depends on no other module of the crate.

use serde::Serialize;

/// Whether to check the host at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostChecks {
    /// Check every flag against the host description.
    #[default]
    Enforce,
    /// No host description: validate syntax and dependencies only; host-dependent values
    /// (coresharing=auto, passthrough, profile `host`) cannot be decided.
    Skip,
}

/// How the VM's interrupt controller is set up (stimer-direct and hv-ipi need an in-kernel
/// LAPIC; kvm-msi-ext-dest-id needs a split irqchip).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Irqchip {
    /// In-kernel LAPIC, IOAPIC and PIC.
    #[default]
    Kernel,
    /// In-kernel LAPIC, user-space IOAPIC/PIC.
    Split,
    /// Everything in user space.
    Userspace,
}

/// Knobs of a resolution besides the request and the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ResolveOptions {
    /// Check the host (default) or skip host checks (no probe available).
    pub host_checks: HostChecks,
    /// The guest must be migratable: blockers are errors (explicit flags) or turn flags off.
    pub require_migration: bool,
    /// The VM's irqchip.
    pub irqchip: Irqchip,
    /// Guest TSC frequency in kHz, if the VM fixes it (alternative to `tsc-frequency=`).
    pub tsc_khz: Option<u32>,
    /// 40000005.EAX (max virtual processors); default QEMU's "no limit" (0xffffffff).
    pub max_vps: Option<u32>,
}
