//! A running VM and the handle that controls it from other threads (the API socket, tests).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use super::control::RunState;
use super::snapshot::SnapshotInfo;
use super::{StopReason, VmCore, VmOutcome, STOP_GRACE};
use crate::hyperv::report::UsageReport;
use crate::snapshot::{SnapshotError, SnapshotKind};

/// How long a pause may take to park every vCPU before it is reported as incomplete.
pub const PAUSE_WAIT: Duration = Duration::from_secs(5);

/// What a VM is doing, for `hvkvm ctl info`.
#[derive(Debug, Clone, Serialize)]
pub struct VmInfo {
    /// `running`, `paused` or `stopping`.
    pub state: &'static str,
    /// vCPU count.
    pub cpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// What was booted (or restored).
    pub boot: String,
    /// Seconds since the vCPUs started.
    pub uptime_s: f64,
    /// The guest's TSC rate in kHz.
    pub guest_tsc_khz: u32,
    /// The Hyper-V backend (`user`, `kernel`), if any.
    pub hyperv_backend: Option<String>,
    /// What would stop a snapshot for migration.
    pub migration_blockers: Vec<String>,
    /// Exits so far, per vCPU.
    pub vcpu_exits: Vec<u64>,
}

/// Controls a VM from any thread.
#[derive(Debug, Clone)]
pub struct VmHandle {
    core: Arc<VmCore>,
}

impl VmHandle {
    pub(super) fn new(core: Arc<VmCore>) -> Self {
        VmHandle { core }
    }

    /// The run state now.
    pub fn state(&self) -> RunState {
        self.core.control.state()
    }

    /// Pauses every vCPU and waits until they are all out of KVM_RUN; false if one did not
    /// park within [`PAUSE_WAIT`] (or the VM is stopping).
    pub fn pause(&self) -> bool {
        self.core.control.pause();
        self.core.control.wait_paused(PAUSE_WAIT)
    }

    /// How many ucall SYNCs the guest made so far.
    pub fn sync_count(&self) -> usize {
        self.core.control.sync_count()
    }

    /// Resumes a paused VM.
    pub fn resume(&self) {
        self.core.control.resume();
    }

    /// Stops the VM with `reason`.
    pub fn stop(&self, reason: StopReason) {
        self.core.control.stop(reason);
    }

    /// What the VM is doing.
    pub fn info(&self) -> VmInfo {
        let core = &self.core;
        let uptime = core
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(0.0, |s| s.elapsed().as_secs_f64());
        VmInfo {
            state: match core.control.state() {
                RunState::Running => "running",
                RunState::Paused => "paused",
                RunState::Stopping => "stopping",
            },
            cpus: core.saved.cpus,
            memory_mib: core.saved.memory_mib,
            boot: core.boot_description.clone(),
            uptime_s: uptime,
            guest_tsc_khz: core.guest_tsc_khz,
            hyperv_backend: core.saved.hyperv.as_ref().map(|h| h.backend.clone()),
            migration_blockers: core.migration_blockers.clone(),
            vcpu_exits: core.stats.iter().map(|s| s.snapshot().exits).collect(),
        }
    }

    /// The live Hyper-V usage report (`None` without Hyper-V).
    pub fn report(&self) -> Option<UsageReport> {
        super::live_report::take(&self.core.control, self.core.hyperv.as_ref())
    }

    /// Writes a snapshot of the paused VM to `dir` (which stays paused).
    pub fn snapshot(&self, dir: &Path, kind: SnapshotKind) -> Result<SnapshotInfo, SnapshotError> {
        super::snapshot::take(&self.core, dir, kind)
    }
}

/// What [`RunningVm::wait_event`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEvent {
    /// The VM is paused (by the guest's crash policy, a ucall SYNC pause, or a handle).
    Paused,
    /// The VM is stopping.
    Stopped,
    /// The wait ended first.
    TimedOut,
}

/// A VM whose vCPU threads run.
#[derive(Debug)]
pub struct RunningVm {
    core: Arc<VmCore>,
    start: Instant,
    timeout: Option<Duration>,
    _serial_irq: EventFd,
}

impl RunningVm {
    pub(super) fn new(
        core: Arc<VmCore>,
        start: Instant,
        timeout: Option<Duration>,
        serial_irq: EventFd,
    ) -> Self {
        RunningVm {
            core,
            start,
            timeout,
            _serial_irq: serial_irq,
        }
    }

    /// A handle on this VM.
    pub fn handle(&self) -> VmHandle {
        VmHandle::new(self.core.clone())
    }

    /// When the vCPUs were started (what [`VmOutcome::elapsed`] counts from).
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Waits until the VM is paused or stopping, up to `limit` and never past the VM's own
    /// timeout.
    pub fn wait_event(&self, limit: Option<Duration>) -> RunEvent {
        let left = self.timeout.map(|t| t.saturating_sub(self.start.elapsed()));
        let wait = match (limit, left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match self.core.control.wait_while_running(wait) {
            RunState::Paused => RunEvent::Paused,
            RunState::Stopping => RunEvent::Stopped,
            RunState::Running => RunEvent::TimedOut,
        }
    }

    /// Waits for the VM to stop (or its timeout), joins the vCPU threads and reports.
    pub fn finish(self) -> VmOutcome {
        let RunningVm {
            core,
            start,
            timeout,
            _serial_irq,
        } = self;
        let control = &core.control;
        let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
        let reason = match wait_for_stop(&core, left) {
            Some(reason) => reason,
            None => {
                let after_ms = timeout.map_or(0, |t| t.as_millis() as u64);
                control.stop(StopReason::Timeout { after_ms });
                control
                    .wait_for_stop(Some(Duration::ZERO))
                    .unwrap_or(StopReason::Timeout { after_ms })
            }
        };
        let elapsed = start.elapsed();
        let stuck_vcpus = control.join_threads(STOP_GRACE);
        if let Some(backend) = &core.hyperv {
            backend.shutdown();
        }
        for vcpu in &stuck_vcpus {
            log::error!(
                "vCPU {vcpu} did not leave KVM_RUN within {STOP_GRACE:?} of the stop; abandoning it"
            );
        }
        let (syncs, prints) = control.take_reports();
        let outcome = VmOutcome {
            reason,
            elapsed,
            boot: core.boot_description.clone(),
            syncs,
            prints,
            vcpu_stats: core.stats.iter().map(|s| s.snapshot()).collect(),
            stuck_vcpus,
            hyperv: core.hyperv.as_ref().map(|b| b.report()),
            host_work: super::outcome::HostWork {
                steps: core.host_steps.clone(),
                serial: core
                    .devices
                    .serial
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .stats(),
            },
        };
        if !outcome.stuck_vcpus.is_empty() {
            // A thread stuck in KVM_RUN still uses the VM and guest memory: leak them rather
            // than unmap memory under it.
            std::mem::forget(core);
        }
        outcome
    }
}

/// Waits until the VM stops or `timeout` passes (then `None`); meanwhile answers report
/// requests ([`super::live_report`], SIGUSR1) by printing the Hyper-V report to stderr.
fn wait_for_stop(core: &VmCore, timeout: Option<Duration>) -> Option<StopReason> {
    const SLICE: Duration = Duration::from_millis(100);
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let wait = deadline.map_or(SLICE, |d| {
            d.saturating_duration_since(Instant::now()).min(SLICE)
        });
        if let Some(reason) = core.control.wait_for_stop(Some(wait)) {
            return Some(reason);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        if super::live_report::take_request() {
            match super::live_report::take(&core.control, core.hyperv.as_ref()) {
                Some(report) => eprint!(
                    "hvkvm: Hyper-V report of the running VM\n{}",
                    report.render()
                ),
                None => eprintln!(
                    "hvkvm: no Hyper-V report: the VM has no Hyper-V enlightenment (use --hv or --profile)"
                ),
            }
        }
    }
}
