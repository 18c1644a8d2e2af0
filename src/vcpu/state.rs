//! The vCPU operations exit handlers need, behind a trait so tests can use a fake vCPU.

use kvm_bindings::{kvm_guest_debug, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, Msrs};
use kvm_ioctls::VcpuFd;

use crate::kvm::hyperv::{self, HypervExit};
use crate::kvm::run_data::{self, InternalError};

/// Register and event access for one vCPU.
pub trait VcpuState {
    /// KVM_GET_REGS.
    fn regs(&self) -> Result<kvm_regs, kvm_ioctls::Error>;
    /// KVM_SET_REGS.
    fn set_regs(&self, regs: &kvm_regs) -> Result<(), kvm_ioctls::Error>;
    /// KVM_GET_SREGS.
    fn sregs(&self) -> Result<kvm_sregs, kvm_ioctls::Error>;
    /// KVM_SET_SREGS.
    fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), kvm_ioctls::Error>;
    /// Reads one MSR through KVM_GET_MSRS.
    fn msr(&self, index: u32) -> Result<u64, kvm_ioctls::Error>;
    /// Writes one MSR through KVM_SET_MSRS (a host-initiated write: MSR filters do not apply).
    fn set_msr(&self, index: u32, value: u64) -> Result<(), kvm_ioctls::Error>;
    /// Translates a guest-virtual address with the vCPU's current paging (KVM_TRANSLATE).
    fn translate(&self, gva: u64) -> Option<u64>;
    /// XMM0..XMM5 (for XMM-fast hypercall input), through KVM_GET_FPU.
    fn xmm(&self) -> Result<[u128; 6], kvm_ioctls::Error>;
    /// KVM_GET_VCPU_EVENTS.
    fn events(&self) -> Result<kvm_vcpu_events, kvm_ioctls::Error>;
    /// KVM_SET_VCPU_EVENTS.
    fn set_events(&self, events: &kvm_vcpu_events) -> Result<(), kvm_ioctls::Error>;
    /// KVM_SET_GUEST_DEBUG.
    fn set_guest_debug(&self, debug: &kvm_guest_debug) -> Result<(), kvm_ioctls::Error>;
    /// The payload of the internal-error exit just taken.
    fn internal_error(&mut self) -> InternalError;
    /// The payload of the `KVM_EXIT_HYPERV` just taken.
    fn hyperv_exit(&mut self) -> HypervExit;
    /// Sets the result of the hypercall of the `KVM_EXIT_HYPERV` just taken.
    fn set_hcall_result(&mut self, result: u64);
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
    fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), kvm_ioctls::Error> {
        VcpuFd::set_sregs(self, sregs)
    }
    fn msr(&self, index: u32) -> Result<u64, kvm_ioctls::Error> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
        match self.get_msrs(&mut msrs)? {
            1 => Ok(msrs.as_slice()[0].data),
            _ => Err(kvm_ioctls::Error::new(libc::EINVAL)),
        }
    }
    fn set_msr(&self, index: u32, value: u64) -> Result<(), kvm_ioctls::Error> {
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data: value,
            ..Default::default()
        }])
        .map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
        match self.set_msrs(&msrs)? {
            1 => Ok(()),
            _ => Err(kvm_ioctls::Error::new(libc::EINVAL)),
        }
    }
    fn translate(&self, gva: u64) -> Option<u64> {
        let t = self.translate_gva(gva).ok()?;
        (t.valid != 0).then_some(t.physical_address)
    }
    fn xmm(&self) -> Result<[u128; 6], kvm_ioctls::Error> {
        // KVM_GET_XSAVE, not KVM_GET_FPU: KVM_GET_FPU copies the raw FXSAVE image of the
        // guest's FPU state, which XSAVE's init optimisation leaves stale when the registers
        // are in their initial state (all XMM zero: measured, the previous values came back);
        // KVM_GET_XSAVE fills components outside XSTATE_BV with their initial values.
        const XMM0: usize = 160 / 4;
        const XSTATE_BV: usize = 512 / 4;
        const SSE: u32 = 1 << 1;
        let Ok(xsave) = self.get_xsave() else {
            let fpu = self.get_fpu()?;
            let mut xmm = [0u128; 6];
            for (dst, src) in xmm.iter_mut().zip(fpu.xmm.iter()) {
                *dst = u128::from_le_bytes(*src);
            }
            return Ok(xmm);
        };
        let mut xmm = [0u128; 6];
        if xsave.region[XSTATE_BV] & SSE == 0 {
            return Ok(xmm);
        }
        for (i, dst) in xmm.iter_mut().enumerate() {
            let words = &xsave.region[XMM0 + 4 * i..XMM0 + 4 * i + 4];
            *dst = words
                .iter()
                .rev()
                .fold(0u128, |acc, w| acc << 32 | u128::from(*w));
        }
        Ok(xmm)
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
    fn hyperv_exit(&mut self) -> HypervExit {
        hyperv::hyperv_exit(self)
    }
    fn set_hcall_result(&mut self, result: u64) {
        hyperv::set_hcall_result(self, result)
    }
}
