//! Hyper-V reset MSR, for the user-backend conformance tests.
//!
//! No parameters. Writes RESET = 1 with #GP caught. A VMM that implements it resets (hvkvm ends
//! the VM as for any reset request) and the write never returns; if it does return:
//!
//! - SYNC 1 = (faulted 0/1, vector (u64::MAX if none)).
//! - DONE.
#![no_std]
#![no_main]

use hvkvm_guest::hyperv::RESET;
use hvkvm_guest::idt::{self, wrmsr_safe};
use hvkvm_guest::{guest_done, guest_sync, BootInfo};

hvkvm_guest::entry!(main);

fn main(_boot: BootInfo) -> ! {
    idt::install();
    // SAFETY: a reset request ends the VM; that is what this payload asks for.
    let result = unsafe { wrmsr_safe(RESET, 1) };
    guest_sync!(1, result.is_err(), result.err().map_or(u64::MAX, u64::from));
    guest_done!()
}
