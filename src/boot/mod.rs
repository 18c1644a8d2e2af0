//! Getting a guest to its first instruction: guest-memory images and initial vCPU state.
//!
//! Both boot paths enter 64-bit long mode directly (no firmware, no real-mode code):
//! - [`payload`]: an ELF64 test payload, every vCPU at the ELF entry (the payload contract
//!   in README.md);
//! - [`linux`]: a Linux kernel through the 64-bit boot protocol, with an e820 map and ACPI
//!   tables ([`acpi`]) so that SMP works without an MP table.

pub mod acpi;
pub mod linux;
pub mod long_mode;
pub mod payload;
pub mod vmlinux;

use kvm_bindings::{kvm_regs, kvm_sregs};

/// The state one vCPU starts in.
#[derive(Debug, Clone, Copy)]
pub struct VcpuBootState {
    /// General-purpose registers (RIP, RSP, argument registers, RFLAGS).
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// Whether the vCPU runs from the start; otherwise it waits for INIT/SIPI from the BSP
    /// (the in-kernel LAPIC's default for application processors).
    pub runnable: bool,
}

/// Everything a loader produced: the per-vCPU entry state.
#[derive(Debug, Clone)]
pub struct BootPlan {
    /// One entry per vCPU, in vCPU index order.
    pub vcpus: Vec<VcpuBootState>,
    /// A one-line description for logs and the demo ("ELF payload demo, entry 0x200000").
    pub description: String,
    /// Host time of each loading step, in order (`hvkvm run --stats`).
    pub host_steps: Vec<HostStep>,
}

/// One step of host-side work before the guest runs, and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostStep {
    /// What was done ("decompress the bzImage", "ACPI tables", ...).
    pub name: &'static str,
    /// Host nanoseconds.
    pub ns: u64,
}

impl HostStep {
    /// Runs `f` and records its time under `name` in `steps`.
    pub fn time<T>(steps: &mut Vec<HostStep>, name: &'static str, f: impl FnOnce() -> T) -> T {
        let start = std::time::Instant::now();
        let value = f();
        steps.push(HostStep {
            name,
            ns: start.elapsed().as_nanos() as u64,
        });
        value
    }
}
