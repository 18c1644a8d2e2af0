//! Fails an assertion on purpose. The host test checks that hvkvm reports the failure with this
//! file's name, the line of the `guest_assert_eq!` below, the message and both values (2 and 3).
//!
//! Keep the assertion the only one on its line, and print nothing else: the host test matches the
//! report exactly.
#![no_std]
#![no_main]

use hvkvm_guest::{guest_assert_eq, guest_done, BootInfo};

hvkvm_guest::entry!(main);

fn main(_boot: BootInfo) -> ! {
    guest_assert_eq!(1 + 1, 3, "arithmetic is broken");
    guest_done!()
}
