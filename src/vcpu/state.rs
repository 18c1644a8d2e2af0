//! The vCPU operations exit handlers need, behind a trait so tests can use a fake vCPU.

use kvm_bindings::{kvm_guest_debug, kvm_regs, kvm_sregs, kvm_vcpu_events};
use kvm_ioctls::VcpuFd;

use crate::kvm::run_data::{self, InternalError};

/// Register and event access for one vCPU.
pub trait VcpuState {
    /// KVM_GET_REGS.
    fn regs(&self) -> Result<kvm_regs, kvm_ioctls::Error>;
    /// KVM_SET_REGS.
    fn set_regs(&self, regs: &kvm_regs) -> Result<(), kvm_ioctls::Error>;
    /// KVM_GET_SREGS.
    fn sregs(&self) -> Result<kvm_sregs, kvm_ioctls::Error>;
    /// KVM_GET_VCPU_EVENTS.
    fn events(&self) -> Result<kvm_vcpu_events, kvm_ioctls::Error>;
    /// KVM_SET_VCPU_EVENTS.
    fn set_events(&self, events: &kvm_vcpu_events) -> Result<(), kvm_ioctls::Error>;
    /// KVM_SET_GUEST_DEBUG.
    fn set_guest_debug(&self, debug: &kvm_guest_debug) -> Result<(), kvm_ioctls::Error>;
    /// The payload of the internal-error exit just taken.
    fn internal_error(&mut self) -> InternalError;
}

impl VcpuState for VcpuFd {
    fn regs(&self) -> Result<kvm_regs, kvm_ioctls::Error> {
        self.get_regs()
    }
    fn set_regs(&self, regs: &kvm_regs) -> Result<(), kvm_ioctls::Error> {
        VcpuFd::set_regs(self, regs)
    }
    fn sregs(&self) -> Result<kvm_sregs, kvm_ioctls::Error> {
        self.get_sregs()
    }
    fn events(&self) -> Result<kvm_vcpu_events, kvm_ioctls::Error> {
        self.get_vcpu_events()
    }
    fn set_events(&self, events: &kvm_vcpu_events) -> Result<(), kvm_ioctls::Error> {
        self.set_vcpu_events(events)
    }
    fn set_guest_debug(&self, debug: &kvm_guest_debug) -> Result<(), kvm_ioctls::Error> {
        VcpuFd::set_guest_debug(self, debug)
    }
    fn internal_error(&mut self) -> InternalError {
        run_data::internal_error(self)
    }
}
