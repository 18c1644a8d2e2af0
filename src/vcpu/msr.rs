//! User-space MSRs: KVM hands hvkvm every RDMSR/WRMSR of an MSR it does not know (and those
//! an MSR filter denies); each vCPU's [`MsrBus`] routes them by index range to a handler. An
//! MSR nobody handles gets #GP, the architectural answer for a non-existent MSR.
//!
//! Handlers come in two kinds, served by the same bus:
//! - [`VcpuMsrHandler`]: one instance per vCPU, owned by that vCPU's bus, so the exit path
//!   takes no VM-wide lock (the Hyper-V user backend's VP handle is one).
//! - [`MsrHandler`]: one instance for the whole VM, shared through a mutex (simple devices and
//!   tests), told which vCPU is asking.

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use crate::devices::GuestRequest;

/// The guest gets #GP for this access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsrFault;

/// What a WRMSR asks of the VM beyond storing the value (a reset, a crash report, …).
pub type MsrWriteEffect = Option<GuestRequest>;

/// A handler owned by one vCPU.
pub trait VcpuMsrHandler: Send {
    /// RDMSR `index`.
    fn read(&mut self, index: u32) -> Result<u64, MsrFault>;
    /// WRMSR `index`.
    fn write(&mut self, index: u32, value: u64) -> Result<MsrWriteEffect, MsrFault>;
}

/// A handler shared by every vCPU of a VM.
pub trait MsrHandler: Send {
    /// RDMSR `index` on vCPU `vcpu`.
    fn read(&mut self, vcpu: u32, index: u32) -> Result<u64, MsrFault>;
    /// WRMSR `index` on vCPU `vcpu`.
    fn write(&mut self, vcpu: u32, index: u32, value: u64) -> Result<(), MsrFault>;
}

/// A shared handler.
pub type SharedMsrHandler = Arc<Mutex<dyn MsrHandler>>;

/// A shared handler as one vCPU's bus sees it.
struct SharedForVcpu {
    vcpu: u32,
    handler: SharedMsrHandler,
}

impl VcpuMsrHandler for SharedForVcpu {
    fn read(&mut self, index: u32) -> Result<u64, MsrFault> {
        let mut h = self.handler.lock().unwrap_or_else(|p| p.into_inner());
        h.read(self.vcpu, index)
    }

    fn write(&mut self, index: u32, value: u64) -> Result<MsrWriteEffect, MsrFault> {
        let mut h = self.handler.lock().unwrap_or_else(|p| p.into_inner());
        h.write(self.vcpu, index, value).map(|()| None)
    }
}

/// One vCPU's MSR handlers by index range.
#[derive(Default)]
pub struct MsrBus {
    handlers: Vec<(RangeInclusive<u32>, Box<dyn VcpuMsrHandler>)>,
}

impl std::fmt::Debug for MsrBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.handlers.iter().map(|(r, _)| r.clone()).collect();
        f.debug_struct("MsrBus").field("ranges", &ranges).finish()
    }
}

impl MsrBus {
    /// Adds a per-vCPU handler for `range` (earlier registrations win on overlap).
    pub fn insert(&mut self, range: RangeInclusive<u32>, handler: Box<dyn VcpuMsrHandler>) {
        self.handlers.push((range, handler));
    }

    /// Adds a VM-wide handler for `range`, as vCPU `vcpu` reaches it.
    pub fn insert_shared(
        &mut self,
        vcpu: u32,
        range: RangeInclusive<u32>,
        handler: SharedMsrHandler,
    ) {
        self.insert(range, Box::new(SharedForVcpu { vcpu, handler }));
    }

    /// Whether any handler is registered.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    fn find(&mut self, index: u32) -> Option<&mut Box<dyn VcpuMsrHandler>> {
        self.handlers
            .iter_mut()
            .find(|(r, _)| r.contains(&index))
            .map(|(_, h)| h)
    }

    /// RDMSR; no handler means #GP.
    pub fn read(&mut self, index: u32) -> Result<u64, MsrFault> {
        self.find(index).ok_or(MsrFault)?.read(index)
    }

    /// WRMSR; no handler means #GP.
    pub fn write(&mut self, index: u32, value: u64) -> Result<MsrWriteEffect, MsrFault> {
        self.find(index).ok_or(MsrFault)?.write(index, value)
    }
}
