//! Ends the VM through the test-exit port with status 42; hvkvm must exit with 42.
#![no_std]
#![no_main]

use hvkvm_guest::{test_exit, BootInfo};

hvkvm_guest::entry!(main);

fn main(_boot: BootInfo) -> ! {
    test_exit(42)
}
