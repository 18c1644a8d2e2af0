//! User-space MSRs: KVM hands hvkvm every RDMSR/WRMSR of an MSR it does not know (and those
//! an MSR filter denies); handlers registered by index range answer them. An MSR nobody
//! handles gets #GP, the architectural answer for a non-existent MSR.

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

/// The guest gets #GP for this access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsrFault;

/// Something that owns a range of MSRs.
pub trait MsrHandler: Send {
    /// RDMSR `index` on vCPU `vcpu`.
    fn read(&mut self, vcpu: u32, index: u32) -> Result<u64, MsrFault>;
    /// WRMSR `index` on vCPU `vcpu`.
    fn write(&mut self, vcpu: u32, index: u32, value: u64) -> Result<(), MsrFault>;
}

/// A shared handler.
pub type SharedMsrHandler = Arc<Mutex<dyn MsrHandler>>;

/// Handlers by MSR range, shared by all vCPUs of a VM.
#[derive(Clone, Default)]
pub struct MsrBus {
    handlers: Vec<(RangeInclusive<u32>, SharedMsrHandler)>,
}

impl std::fmt::Debug for MsrBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.handlers.iter().map(|(r, _)| r.clone()).collect();
        f.debug_struct("MsrBus").field("ranges", &ranges).finish()
    }
}

impl MsrBus {
    /// Adds a handler for `range` (earlier registrations win on overlap).
    pub fn insert(&mut self, range: RangeInclusive<u32>, handler: SharedMsrHandler) {
        self.handlers.push((range, handler));
    }

    /// Whether any handler is registered.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    fn find(&self, index: u32) -> Option<&SharedMsrHandler> {
        self.handlers
            .iter()
            .find(|(r, _)| r.contains(&index))
            .map(|(_, h)| h)
    }

    /// RDMSR; no handler means #GP.
    pub fn read(&self, vcpu: u32, index: u32) -> Result<u64, MsrFault> {
        let handler = self.find(index).ok_or(MsrFault)?;
        handler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read(vcpu, index)
    }

    /// WRMSR; no handler means #GP.
    pub fn write(&self, vcpu: u32, index: u32, value: u64) -> Result<(), MsrFault> {
        let handler = self.find(index).ok_or(MsrFault)?;
        handler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(vcpu, index, value)
    }
}
