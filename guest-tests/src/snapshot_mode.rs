//! The snapshot harness mode: a guest run with a pause, snapshot, kill and restore injected at
//! every ucall SYNC.
//!
//! At each SYNC the VM pauses (the vCPU that made it completes the ucall first); the harness
//! writes a snapshot to a temporary directory, stops the VM and drops it, restores the
//! snapshot into a fresh VM in the same process (giving it the same extra devices and MSR
//! handlers, which are the test's own), and lets it run to the next SYNC. The outcome is the
//! final VM's, with the SYNC and PRINT reports of every generation before it, so a test checks
//! it exactly like a plain run.
//!
//! `GuestTest::run_with_snapshots` uses it; `HVKVM_TEST_SNAPSHOT=1` makes every
//! `GuestTest::run` use it, which runs the existing guest tests in this mode unchanged.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hvkvm::devices::serial::CaptureBuffer;
use hvkvm::snapshot::{SnapshotKind, SnapshotReader};
use hvkvm::vcpu::stats::VcpuStatsSnapshot;
use hvkvm::vm::{RestoreParams, RunEvent, StopReason, Vm, VmConfig, VmOutcome};

use crate::error_chain;

thread_local! {
    static FORCED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether guest tests on this thread run in this mode: `HVKVM_TEST_SNAPSHOT=1` asks it of
/// every guest test, [`at_every_sync`] of those it runs.
pub fn requested() -> bool {
    FORCED.with(|f| f.get()) || std::env::var("HVKVM_TEST_SNAPSHOT").is_ok_and(|v| v == "1")
}

/// Runs `f` (guest tests, e.g. a suite's cases) with every `GuestTest::run` on this thread in
/// this mode.
pub fn at_every_sync<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            FORCED.with(|f| f.set(self.0));
        }
    }
    let _reset = Reset(FORCED.with(|f| f.replace(true)));
    f()
}

/// A run in snapshot mode: the final outcome and how many times the VM was restored.
#[derive(Debug)]
pub struct SnapshotRun {
    /// The last VM's outcome, with every generation's SYNC and PRINT reports.
    pub outcome: VmOutcome,
    /// Snapshot-and-restore cycles done.
    pub restores: u32,
}

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "hvkvm-harness-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Runs `config` with a snapshot and restore at every SYNC. Panics (naming the step) when a
/// snapshot or restore fails.
pub fn run(config: VmConfig, serial: CaptureBuffer, name: &str) -> SnapshotRun {
    let extra_pio = config.extra_pio.clone();
    let msr_handlers = config.msr_handlers.clone();
    let timeout = config.timeout.unwrap_or(crate::DEFAULT_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let dir = temp_dir(name);
    let vm =
        Vm::new(config).unwrap_or_else(|e| panic!("cannot build '{name}': {}", error_chain(&e)));
    vm.control().set_pause_on_sync(true);
    let mut running = vm
        .start()
        .unwrap_or_else(|e| panic!("cannot start '{name}': {}", error_chain(&e)));
    let (mut syncs, mut prints) = (Vec::new(), Vec::new());
    let mut stats: Vec<VcpuStatsSnapshot> = Vec::new();
    let mut restores = 0;
    loop {
        let event = running.wait_event(Some(deadline.saturating_duration_since(Instant::now())));
        let handle = running.handle();
        if event != RunEvent::Paused || handle.sync_count() == 0 {
            // Stopped, timed out, or paused by the guest itself (crash policy): no snapshot.
            let mut outcome = running.finish();
            syncs.append(&mut outcome.syncs);
            prints.append(&mut outcome.prints);
            outcome.syncs = syncs;
            outcome.prints = prints;
            add_stats(&mut stats, &outcome.vcpu_stats);
            outcome.vcpu_stats = stats;
            let _ = std::fs::remove_dir_all(&dir);
            return SnapshotRun { outcome, restores };
        }
        assert!(handle.pause(), "'{name}': the vCPUs did not park");
        handle
            .snapshot(&dir, SnapshotKind::SameHost)
            .unwrap_or_else(|e| panic!("'{name}': snapshot {}: {}", restores + 1, error_chain(&e)));
        handle.stop(StopReason::HostCheck {
            vcpu: 0,
            message: "replaced by its restored snapshot".into(),
        });
        let mut old = running.finish();
        assert!(
            old.stuck_vcpus.is_empty(),
            "'{name}': vCPUs {:?} stuck",
            old.stuck_vcpus
        );
        syncs.append(&mut old.syncs);
        prints.append(&mut old.prints);
        add_stats(&mut stats, &old.vcpu_stats);
        let reader = SnapshotReader::open(&dir)
            .unwrap_or_else(|e| panic!("'{name}': open snapshot: {}", error_chain(&e)));
        let mut params = RestoreParams::new(Box::new(serial.clone()));
        params.timeout = Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
        params.extra_pio = extra_pio.clone();
        params.msr_handlers = msr_handlers.clone();
        let vm = Vm::restore(&reader, params)
            .unwrap_or_else(|e| panic!("'{name}': restore {}: {}", restores + 1, error_chain(&e)));
        vm.control().set_pause_on_sync(true);
        running = vm
            .start()
            .unwrap_or_else(|e| panic!("'{name}': start restored VM: {}", error_chain(&e)));
        restores += 1;
    }
}

/// Adds one generation's exit counters to the totals (the final RIP is the last one's).
fn add_stats(total: &mut Vec<VcpuStatsSnapshot>, generation: &[VcpuStatsSnapshot]) {
    if total.len() < generation.len() {
        total.resize(generation.len(), VcpuStatsSnapshot::default());
    }
    for (t, g) in total.iter_mut().zip(generation) {
        t.add(g);
    }
}
