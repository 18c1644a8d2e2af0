//! Reads the hypervisor CPUID leaves and reports them.
//!
//! Stage 1: (eax, ebx, ecx, edx) of leaf 0x4000_0000 (vendor leaf: max leaf and signature).
//! Stage 2: (eax, ebx, ecx, edx) of leaf 0x4000_00F0, a leaf only the host test harness defines,
//! which shows that hvkvm's KVM_SET_CPUID2 table reaches the guest.
#![no_std]
#![no_main]

use hvkvm_guest::x86::cpuid;
use hvkvm_guest::{guest_done, guest_sync, BootInfo};

hvkvm_guest::entry!(main);

fn main(_boot: BootInfo) -> ! {
    let vendor = cpuid(0x4000_0000, 0);
    guest_sync!(1, vendor.eax, vendor.ebx, vendor.ecx, vendor.edx);
    let test = cpuid(0x4000_00F0, 0);
    guest_sync!(2, test.eax, test.ebx, test.ecx, test.edx);
    guest_done!()
}
