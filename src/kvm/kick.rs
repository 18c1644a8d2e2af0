//! Kicking a vCPU thread out of `KVM_RUN`.
//!
//! The protocol: the kicker updates the shared run state, then sends [`kick_signal`] to the
//! vCPU thread. The signal handler, running on that thread, sets `kvm_run.immediate_exit`.
//! If the thread is inside `KVM_RUN`, the signal makes it return `EINTR`; if it is between the
//! state check and `KVM_RUN`, `immediate_exit` makes the next `KVM_RUN` return `EINTR` at once.
//! Either way the thread re-reads the run state, so no kick is lost.

use std::cell::Cell;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{fence, Ordering};
use std::sync::Once;

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    /// The `kvm_run` page of the vCPU this thread runs, null when none.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal used to kick vCPU threads.
pub fn kick_signal() -> c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: c_int, _: *mut libc::siginfo_t, _: *mut c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer was set by `VcpuKickTarget::register` on this very thread from the
        // vCPU's mmapped kvm_run page and is cleared before that mapping can go away (the
        // guard's Drop). Writing one byte of immediate_exit is what the KVM API documents.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
    fence(Ordering::Acquire);
}

/// Installs the kick signal handler once per process.
pub fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| result = register_signal_handler(kick_signal(), handle_kick));
    result
}

/// While alive, kicks delivered to the current thread set `immediate_exit` on this vCPU.
#[derive(Debug)]
pub struct KickGuard(());

impl KickGuard {
    /// Registers `vcpu` as the kick target of the current thread.
    pub fn register(vcpu: &mut VcpuFd) -> Self {
        let run: *mut kvm_run = vcpu.get_kvm_run();
        KVM_RUN.with(|cell| cell.set(run));
        KickGuard(())
    }
}

impl Drop for KickGuard {
    fn drop(&mut self) {
        KVM_RUN.with(|cell| cell.set(std::ptr::null_mut()));
    }
}
