//! vCPUs: one thread each, an explicit run state shared with the VM, and exit dispatch.
//!
//! - [`state`]: the register-access seam ([`VcpuState`]) between dispatch and KVM, so that
//!   dispatch is unit-testable without /dev/kvm.
//! - [`exit`]: what each KVM exit means for hvkvm, as plain functions.
//! - [`msr`]: user-space MSR handlers (the user Hyper-V backend registers here).
//! - [`ucall`]: the guest-test channel on port 0x1000.
//! - [`run_loop`]: the thread body: run / paused / stopping.

pub mod exit;
pub mod msr;
pub mod run_loop;
pub mod state;
pub mod stats;
pub mod ucall;

pub use exit::{ExitAction, ExitHandler};
pub use state::VcpuState;
