//! The Hyper-V report on demand while a VM runs: `kill -USR1 <hvkvm>` makes hvkvm pause the
//! vCPUs for a moment (each reads its synthetic MSRs back as it parks, VP_ASSIST_PAGE among
//! them), print the usage report with every VP's assist page and live eVMCS to stderr, and
//! resume. (A control socket can ask for the same once hvkvm has one.)

use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::Duration;

use vmm_sys_util::signal::register_signal_handler;

use super::control::{RunState, VmControl};
use crate::hyperv::report::UsageReport;
use crate::hyperv::HvBackend;

/// The signal that asks for a report.
pub const SIGNAL: c_int = libc::SIGUSR1;

/// How long the vCPUs get to park before the report is taken anyway.
const PARK_WAIT: Duration = Duration::from_secs(2);

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: c_int, _: *mut libc::siginfo_t, _: *mut c_void) {
    // Async-signal-safe: one atomic store.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the handler once per process (it only records the request).
pub fn install() -> Result<(), vmm_sys_util::errno::Error> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| result = register_signal_handler(SIGNAL, on_signal));
    result
}

/// Whether a report was asked for since the last call.
pub fn take_request() -> bool {
    REQUESTED.swap(false, Ordering::SeqCst)
}

/// Asks for a report as the signal does (for tests and other front ends).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// The report of a VM as it is now: a running VM is paused until every vCPU has parked (and
/// read its synthetic MSRs back, which the kernel backend needs), reported, and resumed; a
/// paused VM is reported as it is. `None` when the VM has no Hyper-V backend. Both SIGUSR1
/// and `hvkvm ctl report` come here.
pub fn take(control: &VmControl, hyperv: Option<&HvBackend>) -> Option<UsageReport> {
    let backend = hyperv?;
    if control.state() != RunState::Running {
        return Some(backend.report());
    }
    control.pause();
    let parked = control.wait_paused(PARK_WAIT);
    let report = backend.report();
    control.resume();
    if !parked {
        log::warn!(
            "some vCPUs did not pause in time for the report: their MSR values may be stale"
        );
    }
    Some(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hyperv::backend::BackendParams;
    use crate::hyperv::HvConfig;

    #[test]
    fn a_report_pauses_renders_and_resumes() {
        let control = Arc::new(VmControl::default());
        assert_eq!(take(&control, None), None, "no backend, no report");
        let backend = HvBackend::new(BackendParams {
            config: &HvConfig::raw(hv_model::Backend::User),
            cpuid: &[],
            vcpus: 1,
            mem: crate::memory::allocate(16).unwrap(),
            guest_tsc: 0,
            tsc_khz: 1_000_000,
            link: Arc::new(crate::hyperv::user::link::NoLink),
            time_dilation: 1,
        });
        // One vCPU thread that parks when paused, as run_loop's do.
        control.thread_started();
        let vcpu = {
            let control = control.clone();
            std::thread::spawn(move || {
                while !control.pausing() {
                    std::thread::yield_now();
                }
                control.wait_runnable(0, &mut |_| {})
            })
        };
        let text = take(&control, Some(&backend)).unwrap().render();
        assert!(
            text.contains("Hyper-V usage report (user backend)"),
            "{text}"
        );
        assert!(text.contains("VP assist page: not enabled"), "{text}");
        assert_eq!(
            vcpu.join().unwrap(),
            RunState::Running,
            "resumed after the report"
        );
        assert_eq!(control.state(), RunState::Running);
        request();
        assert!(take_request() && !take_request(), "a request is taken once");
    }
}
