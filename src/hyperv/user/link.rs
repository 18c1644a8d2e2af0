//! What the user backend needs from the VM to reach its VPs: interrupts through the in-kernel
//! LAPIC, and kicks out of `KVM_RUN`. The VM implements it (`vm::VmLink`); unit tests use
//! [`RecordingLink`].

use std::sync::Mutex;

/// The VM side of the user backend.
pub trait VpLink: Send + Sync + std::fmt::Debug {
    /// Sends a fixed, edge-triggered interrupt with `vector` to VP `vp` through KVM's in-kernel
    /// LAPIC (physical destination: the VP's APIC ID, which hvkvm makes equal to its index).
    /// A LAPIC that is software-disabled, or a vector the LAPIC rejects, drops it, as on
    /// hardware.
    fn interrupt(&self, vp: u32, vector: u8) -> Result<(), kvm_ioctls::Error>;

    /// Makes VP `vp` leave `KVM_RUN` soon (or not enter it next time).
    fn kick(&self, vp: u32);

    /// Whether the VM is stopping: no VP will run guest code again, so nothing needs to wait
    /// for one.
    fn stopping(&self) -> bool;

    /// Whether the VM is paused: nothing may reach its VPs until it resumes.
    fn paused(&self) -> bool;
}

/// A link that reaches nothing (a backend built without a VM: unit tests, tools).
#[derive(Debug, Default)]
pub struct NoLink;

impl VpLink for NoLink {
    fn interrupt(&self, _vp: u32, _vector: u8) -> Result<(), kvm_ioctls::Error> {
        Ok(())
    }
    fn kick(&self, _vp: u32) {}
    fn stopping(&self) -> bool {
        false
    }
    fn paused(&self) -> bool {
        false
    }
}

/// A link that records what it was asked to do (unit tests).
#[derive(Debug, Default)]
pub struct RecordingLink {
    /// (vp, vector) of every interrupt, in order.
    pub interrupts: Mutex<Vec<(u32, u8)>>,
    /// Every kicked VP, in order.
    pub kicks: Mutex<Vec<u32>>,
}

impl RecordingLink {
    /// The interrupts so far, cleared.
    pub fn take_interrupts(&self) -> Vec<(u32, u8)> {
        std::mem::take(&mut *self.interrupts.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl VpLink for RecordingLink {
    fn interrupt(&self, vp: u32, vector: u8) -> Result<(), kvm_ioctls::Error> {
        self.interrupts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((vp, vector));
        Ok(())
    }
    fn kick(&self, vp: u32) {
        self.kicks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(vp);
    }
    fn stopping(&self) -> bool {
        false
    }
    fn paused(&self) -> bool {
        false
    }
}
