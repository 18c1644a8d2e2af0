//! Writes and reads back MSR 0x4856_4B4D ("HVKM"), an index neither hardware nor KVM knows; the
//! host test installs a handler for it, so both accesses must reach hvkvm as MSR exits.
//! Stage 1: the value read back (the harness's handler stores the written value).
#![no_std]
#![no_main]

use hvkvm_guest::x86::{rdmsr, wrmsr};
use hvkvm_guest::{guest_done, guest_sync, BootInfo};

hvkvm_guest::entry!(main);

const TEST_MSR: u32 = 0x4856_4B4D;
const PATTERN: u64 = 0x1122_3344_5566_7788;

fn main(_boot: BootInfo) -> ! {
    // SAFETY: the MSR is a host-test invention with no effect on the guest's memory or state.
    unsafe { wrmsr(TEST_MSR, PATTERN) };
    let value = rdmsr(TEST_MSR);
    guest_sync!(1, value);
    guest_done!()
}
