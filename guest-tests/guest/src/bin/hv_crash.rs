//! Hyper-V crash notification, for the user-backend conformance tests.
//!
//! No parameters. Reads CRASH_CTL (the capabilities the VMM offers), writes CRASH_P0..CRASH_P4 =
//! 0x11, 0x22, 0x33, 0x44, 0x55, then CRASH_CTL = bit 63 (CRASH_NOTIFY), each with #GP caught.
//! A VMM may end the VM on the notification; if it lets the guest continue:
//!
//! - SYNC 1 = (faults bitmask: bit i (0..=4) = the CRASH_Pi write faulted, bit 5 = the CRASH_CTL
//!   write faulted; CRASH_CTL value read first (0 if that read faulted); 1 if that read faulted).
//! - DONE.
#![no_std]
#![no_main]

use hvkvm_guest::hyperv::{CRASH_CTL, CRASH_CTL_NOTIFY, CRASH_P0};
use hvkvm_guest::idt::{self, rdmsr_safe, wrmsr_safe};
use hvkvm_guest::{guest_done, guest_sync, BootInfo};

hvkvm_guest::entry!(main);

fn main(_boot: BootInfo) -> ! {
    idt::install();
    let ctl = rdmsr_safe(CRASH_CTL);
    let mut faults = 0u64;
    for i in 0..5u32 {
        // SAFETY: the crash parameter MSRs are plain storage.
        if unsafe { wrmsr_safe(CRASH_P0 + i, 0x11 * u64::from(i + 1)) }.is_err() {
            faults |= 1 << i;
        }
    }
    // SAFETY: a crash notification only informs the VMM (which may stop the VM).
    if unsafe { wrmsr_safe(CRASH_CTL, CRASH_CTL_NOTIFY) }.is_err() {
        faults |= 1 << 5;
    }
    guest_sync!(1, faults, ctl.unwrap_or(0), ctl.is_err());
    guest_done!()
}
