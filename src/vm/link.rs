//! How a VM's Hyper-V user backend reaches its VPs: MSIs to the in-kernel LAPICs through the
//! VM fd, and kicks through the VM's control block.

use std::sync::Arc;

use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;

use super::control::VmControl;
use crate::hyperv::user::link::VpLink;

/// MSI address of the LAPICs (physical destination mode, no redirection hint).
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;
/// MSI address bits 19:12: the destination APIC ID.
const MSI_DEST_SHIFT: u32 = 12;

/// The [`VpLink`] of one VM.
#[derive(Debug)]
pub struct VmLink {
    vm: Arc<VmFd>,
    control: Arc<VmControl>,
}

impl VmLink {
    /// A link through `vm` and `control`.
    pub fn new(vm: Arc<VmFd>, control: Arc<VmControl>) -> Self {
        VmLink { vm, control }
    }
}

/// The MSI that makes the in-kernel LAPIC with `apic_id` take a fixed, edge-triggered
/// interrupt with `vector` (Intel SDM "Message Signalled Interrupts": delivery mode 000,
/// trigger mode edge).
pub fn fixed_msi(apic_id: u32, vector: u8) -> kvm_msi {
    let (low, high) = (apic_id & 0xff, apic_id >> 8);
    kvm_msi {
        address_lo: MSI_ADDRESS_BASE | low << MSI_DEST_SHIFT,
        // KVM_CAP_X2APIC_API: bits 31:8 of an x2APIC ID go in address_hi[31:8].
        address_hi: high << 8,
        data: u32::from(vector),
        ..Default::default()
    }
}

impl VpLink for VmLink {
    fn interrupt(&self, vp: u32, vector: u8) -> Result<(), kvm_ioctls::Error> {
        // hvkvm creates vCPU i with APIC ID i, and VP index i is vCPU i.
        self.vm.signal_msi(fixed_msi(vp, vector)).map(|_| ())
    }

    fn kick(&self, vp: u32) {
        self.control.kick_vcpu(vp);
    }

    fn stopping(&self) -> bool {
        self.control.is_stopping()
    }

    fn paused(&self) -> bool {
        self.control.pausing()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_names_the_apic_and_the_vector() {
        let m = fixed_msi(3, 0xec);
        assert_eq!((m.address_lo, m.address_hi, m.data), (0xfee0_3000, 0, 0xec));
        assert_eq!(fixed_msi(0x1ff, 0x20).address_hi, 0x100);
    }
}
