//! Why a VM stopped, what it reported, and the process exit status for each case.

use std::time::Duration;

use serde::Serialize;

use crate::vcpu::stats::VcpuStatsSnapshot;
use crate::vcpu::ucall::GuestAssert;

/// Exit status for a failed guest assertion (ucall ASSERT).
pub const EXIT_GUEST_ASSERT: i32 = 120;
/// Exit status for a triple fault.
pub const EXIT_TRIPLE_FAULT: i32 = 121;
/// Exit status for an emulation failure, entry failure or unhandled exit.
pub const EXIT_VCPU_FAILURE: i32 = 122;
/// Exit status for a guest crash report (Hyper-V crash MSRs, KVM crash event).
pub const EXIT_GUEST_CRASH: i32 = 123;
/// Exit status when `--timeout` expired (as timeout(1)).
pub const EXIT_TIMEOUT: i32 = 124;

/// Why the VM stopped. The first reason reported wins; later ones are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopReason {
    /// ACPI S5 or KVM's shutdown system event.
    PowerOff,
    /// The guest asked for a reset (i8042, KVM reset event); hvkvm ends the VM.
    Reset,
    /// A byte written to the test-exit port.
    TestExit {
        /// The byte.
        status: u8,
    },
    /// ucall DONE.
    GuestDone,
    /// ucall ASSERT.
    GuestAssert(GuestAssert),
    /// A host-side check on a ucall SYNC failed, or a ucall was malformed.
    HostCheck {
        /// vCPU.
        vcpu: u32,
        /// What failed.
        message: String,
    },
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault {
        /// vCPU.
        vcpu: u32,
        /// RIP when KVM reported it.
        rip: u64,
    },
    /// KVM's instruction emulator could not execute an instruction.
    EmulationFailure {
        /// vCPU.
        vcpu: u32,
        /// RIP of the instruction.
        rip: u64,
        /// Its bytes as KVM fetched them.
        insn: Vec<u8>,
    },
    /// Another internal error.
    InternalError {
        /// vCPU.
        vcpu: u32,
        /// KVM's suberror.
        suberror: u32,
        /// Its data words.
        data: Vec<u64>,
    },
    /// KVM_EXIT_FAIL_ENTRY.
    EntryFailure {
        /// vCPU.
        vcpu: u32,
        /// Hardware reason.
        reason: u64,
    },
    /// An exit hvkvm has no handler for.
    UnhandledExit {
        /// vCPU.
        vcpu: u32,
        /// Its name.
        exit: String,
    },
    /// The guest reported a crash (KVM_SYSTEM_EVENT_CRASH).
    GuestCrash {
        /// vCPU.
        vcpu: u32,
    },
    /// KVM_RUN itself failed.
    KvmRunFailed {
        /// vCPU.
        vcpu: u32,
        /// errno text.
        error: String,
    },
    /// `--timeout` expired.
    Timeout {
        /// The limit.
        after_ms: u64,
    },
}

impl StopReason {
    /// The process exit status hvkvm uses for this reason (README, "Exit status").
    pub fn exit_status(&self) -> i32 {
        match self {
            StopReason::PowerOff | StopReason::Reset | StopReason::GuestDone => 0,
            StopReason::TestExit { status } => i32::from(*status),
            StopReason::GuestAssert(_) | StopReason::HostCheck { .. } => EXIT_GUEST_ASSERT,
            StopReason::TripleFault { .. } => EXIT_TRIPLE_FAULT,
            StopReason::EmulationFailure { .. }
            | StopReason::InternalError { .. }
            | StopReason::EntryFailure { .. }
            | StopReason::UnhandledExit { .. }
            | StopReason::KvmRunFailed { .. } => EXIT_VCPU_FAILURE,
            StopReason::GuestCrash { .. } => EXIT_GUEST_CRASH,
            StopReason::Timeout { .. } => EXIT_TIMEOUT,
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::PowerOff => write!(f, "the guest powered off"),
            StopReason::Reset => write!(
                f,
                "the guest requested a reset (and --no-reboot ended the VM)"
            ),
            StopReason::TestExit { status } => {
                write!(f, "the guest wrote {status} to the test-exit port 0xf4")
            }
            StopReason::GuestDone => write!(f, "the guest test reported DONE"),
            StopReason::GuestAssert(a) => write!(f, "{a}"),
            StopReason::HostCheck { vcpu, message } => {
                write!(f, "host-side check failed on vCPU {vcpu}: {message}")
            }
            StopReason::TripleFault { vcpu, rip } => write!(
                f,
                "vCPU {vcpu} triple-faulted (KVM_EXIT_SHUTDOWN) at RIP {rip:#x} (an exception \
                 with no usable IDT entry, or a fault while delivering one)"
            ),
            StopReason::EmulationFailure { vcpu, rip, insn } => write!(
                f,
                "vCPU {vcpu}: KVM cannot emulate the instruction at RIP {rip:#x} (bytes: {}); \
                 on hosts that emulate CPL0 code, build guest code without SSE/AVX/XSAVE",
                hex_bytes(insn)
            ),
            StopReason::InternalError {
                vcpu,
                suberror,
                data,
            } => {
                write!(
                    f,
                    "vCPU {vcpu}: KVM internal error, suberror {suberror}, data {data:x?}"
                )
            }
            StopReason::EntryFailure { vcpu, reason } => {
                write!(
                    f,
                    "vCPU {vcpu}: VM entry failed, hardware reason {reason:#x}"
                )
            }
            StopReason::UnhandledExit { vcpu, exit } => {
                write!(f, "vCPU {vcpu}: unhandled exit {exit}")
            }
            StopReason::GuestCrash { vcpu } => write!(f, "vCPU {vcpu}: the guest reported a crash"),
            StopReason::KvmRunFailed { vcpu, error } => {
                write!(f, "vCPU {vcpu}: KVM_RUN failed: {error}")
            }
            StopReason::Timeout { after_ms } => {
                write!(
                    f,
                    "the --timeout expired ({} s for this boot)",
                    *after_ms as f64 / 1000.0
                )
            }
        }
    }
}

fn hex_bytes(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "not reported".into();
    }
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One ucall SYNC as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncEvent {
    /// vCPU.
    pub vcpu: u32,
    /// Stage.
    pub stage: u64,
    /// Values.
    pub values: [u64; 6],
}

/// Everything a finished VM reports.
#[derive(Debug, Clone, Serialize)]
pub struct VmOutcome {
    /// Why it stopped.
    pub reason: StopReason,
    /// Wall-clock run time, from the first vCPU start.
    pub elapsed: Duration,
    /// What was booted.
    pub boot: String,
    /// Every ucall SYNC, in order.
    pub syncs: Vec<SyncEvent>,
    /// Every ucall PRINT, in order, as (vCPU, text).
    pub prints: Vec<(u32, String)>,
    /// Exit counters per vCPU.
    pub vcpu_stats: Vec<VcpuStatsSnapshot>,
    /// vCPU threads that did not leave KVM_RUN when stopped (they are abandoned).
    pub stuck_vcpus: Vec<u32>,
    /// What the guest used of the Hyper-V user backend, when it had one.
    pub hyperv: Option<crate::hyperv::report::UsageReport>,
    /// Host-side work outside the exit path: loading and building, the UART.
    pub host_work: HostWork,
}

/// Host-side work the exit counters do not show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostWork {
    /// Loading and building the VM, step by step.
    pub steps: Vec<crate::boot::HostStep>,
    /// The UART's bytes and interrupts.
    pub serial: crate::devices::serial::SerialStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_are_distinct_for_failures() {
        assert_eq!(StopReason::PowerOff.exit_status(), 0);
        assert_eq!(StopReason::TestExit { status: 42 }.exit_status(), 42);
        assert_eq!(StopReason::Timeout { after_ms: 1 }.exit_status(), 124);
        assert_eq!(
            StopReason::TripleFault { vcpu: 0, rip: 0 }.exit_status(),
            121
        );
        let emul = StopReason::EmulationFailure {
            vcpu: 1,
            rip: 0x1000,
            insn: vec![0x66, 0x0f],
        };
        assert_eq!(emul.exit_status(), 122);
        assert!(emul.to_string().contains("66 0f"));
    }
}
