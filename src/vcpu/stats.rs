//! Per-vCPU exit counters, passed by `Arc` (no globals) and read after the run.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters one vCPU thread updates.
#[derive(Debug, Default)]
pub struct VcpuStats {
    /// Every return from KVM_RUN, EINTR included.
    pub exits: AtomicU64,
    /// Port I/O exits.
    pub io: AtomicU64,
    /// MMIO exits.
    pub mmio: AtomicU64,
    /// User-space RDMSR/WRMSR exits.
    pub msr: AtomicU64,
    /// MSR accesses answered with #GP.
    pub msr_gp: AtomicU64,
    /// KVM_RUN returns caused by a kick (EINTR).
    pub interrupted: AtomicU64,
    /// Instructions completed on the guest's behalf after an emulation failure.
    pub emulation_assists: AtomicU64,
    /// KVM_EXIT_DEBUG exits (host-quirk breakpoints).
    pub debug_exits: AtomicU64,
    /// RIP when the vCPU thread left its loop (where a stopped or timed-out guest was).
    pub final_rip: AtomicU64,
}

impl VcpuStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A plain copy for reports.
    pub fn snapshot(&self) -> VcpuStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VcpuStatsSnapshot {
            exits: get(&self.exits),
            io: get(&self.io),
            mmio: get(&self.mmio),
            msr: get(&self.msr),
            msr_gp: get(&self.msr_gp),
            interrupted: get(&self.interrupted),
            emulation_assists: get(&self.emulation_assists),
            final_rip: get(&self.final_rip),
            debug_exits: get(&self.debug_exits),
        }
    }
}

/// A copy of [`VcpuStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct VcpuStatsSnapshot {
    /// See [`VcpuStats::exits`].
    pub exits: u64,
    /// See [`VcpuStats::io`].
    pub io: u64,
    /// See [`VcpuStats::mmio`].
    pub mmio: u64,
    /// See [`VcpuStats::msr`].
    pub msr: u64,
    /// See [`VcpuStats::msr_gp`].
    pub msr_gp: u64,
    /// See [`VcpuStats::interrupted`].
    pub interrupted: u64,
    /// See [`VcpuStats::emulation_assists`].
    pub emulation_assists: u64,
    /// See [`VcpuStats::final_rip`].
    pub final_rip: u64,
    /// See [`VcpuStats::debug_exits`].
    pub debug_exits: u64,
}
