//! The vCPU thread: `Running` → KVM_RUN → dispatch, `Paused` → wait, `Stopping` → return.

use std::sync::Arc;
use std::time::Instant;

use kvm_ioctls::VcpuFd;

use super::exit::{Dispatch, ExitAction, ExitHandler};
use super::stats::ExitKind;
use crate::kvm::kick::KickGuard;
use crate::vm::control::{RunState, VmControl};
use crate::vm::outcome::StopReason;

/// Runs `fd` until the VM stops. Any stop reason is reported through `control`.
pub fn run(mut fd: VcpuFd, mut handler: ExitHandler, control: Arc<VmControl>) {
    let _kick = KickGuard::register(&mut fd);
    control.thread_started();
    run_until_stopped(&mut fd, &mut handler, &control);
    if let Some(hv) = handler.hyperv.as_mut() {
        hv.vcpu_stopped(&mut fd);
    }
    handler.stats.cpu_ns.store(
        crate::kvm::clock::thread_cpu_time_ns(),
        std::sync::atomic::Ordering::Relaxed,
    );
    if let Ok(regs) = fd.get_regs() {
        handler
            .stats
            .final_rip
            .store(regs.rip, std::sync::atomic::Ordering::Relaxed);
    }
}

fn run_until_stopped(fd: &mut VcpuFd, handler: &mut ExitHandler, control: &VmControl) {
    let vcpu = handler.vcpu;
    loop {
        if control.pausing() {
            // Whoever paused the VM may want its state (a live report): read it back before
            // parking.
            if let Some(hv) = handler.hyperv.as_mut() {
                hv.vcpu_stopped(fd);
            }
        }
        let state = control.wait_runnable(vcpu, &mut |job| job(&mut *fd, &mut *handler));
        if state == RunState::Stopping {
            return;
        }
        if let Some(hv) = handler.hyperv.as_mut() {
            if let Err(e) = hv.before_entry(fd) {
                control.stop(StopReason::KvmRunFailed {
                    vcpu,
                    error: crate::cli::error_chain(&e),
                });
                return;
            }
        }
        let entered = Instant::now();
        let result = fd.run();
        let exited = Instant::now();
        handler.stats.ran(exited - entered);
        if let Some(hv) = handler.hyperv.as_mut() {
            hv.after_exit();
        }
        let dispatch = match result {
            Ok(exit) => handler.dispatch(exit),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // A kick: clear immediate_exit and re-check the run state.
                fd.set_kvm_immediate_exit(0);
                handler.stats.exit(ExitKind::Interrupted, None);
                continue;
            }
            Err(e) => {
                control.stop(StopReason::KvmRunFailed {
                    vcpu,
                    error: e.to_string(),
                });
                return;
            }
        };
        let action = match dispatch {
            Dispatch::Done(action) => action,
            Dispatch::Deferred(deferred) => handler.handle_deferred(deferred, fd),
        };
        handler.stats.handled(exited.elapsed());
        if let ExitAction::Stop(reason) = action {
            control.stop(reason);
            return;
        }
    }
}

/// Used by tests and benches that drive a vCPU directly: one KVM_RUN and its dispatch.
pub fn run_once(fd: &mut VcpuFd, handler: &mut ExitHandler) -> ExitAction {
    if let Some(hv) = handler.hyperv.as_mut() {
        if let Err(e) = hv.before_entry(fd) {
            return ExitAction::Stop(StopReason::KvmRunFailed {
                vcpu: handler.vcpu,
                error: crate::cli::error_chain(&e),
            });
        }
    }
    let result = fd.run();
    if let Some(hv) = handler.hyperv.as_mut() {
        hv.after_exit();
    }
    let dispatch = match result {
        Ok(exit) => handler.dispatch(exit),
        Err(e) if e.errno() == libc::EINTR => return ExitAction::Continue,
        Err(e) => {
            return ExitAction::Stop(StopReason::KvmRunFailed {
                vcpu: handler.vcpu,
                error: e.to_string(),
            })
        }
    };
    match dispatch {
        Dispatch::Done(action) => action,
        Dispatch::Deferred(deferred) => handler.handle_deferred(deferred, fd),
    }
}
