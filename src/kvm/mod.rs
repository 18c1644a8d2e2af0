//! The thin KVM layer: every `unsafe` block that touches an ioctl argument or the shared
//! `kvm_run` page lives here (the guest-memory layer in `crate::memory` is the only other one).
//!
//! kvm-ioctls already wraps most ioctls safely; this module adds the few things it does not:
//! reading the `kvm_run` union for exits whose payload kvm-ioctls drops (internal errors,
//! instruction bytes of an emulation failure), and the vCPU kick that has to write
//! `kvm_run.immediate_exit` from a signal handler.
#![allow(unsafe_code)]

pub mod caps;
pub mod clock;
pub mod hyperv;
pub mod kick;
pub mod nested;
pub mod run_data;
pub mod vcpu_state;

pub use caps::{HostProbe, ProbeError};
