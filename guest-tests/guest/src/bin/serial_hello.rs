//! Prints one line on COM1, then reports DONE.
//!
//! The host test checks that hvkvm forwards the UART output verbatim.
#![no_std]
#![no_main]

use hvkvm_guest::{guest_done, BootInfo, Uart};

hvkvm_guest::entry!(main);

fn main(_boot: BootInfo) -> ! {
    // Single vCPU by design: no console lock needed, and none taken.
    Uart::com1().write_str("hvkvm guest: hello from COM1\n");
    guest_done!()
}
