//! Executes `ud2`. hvkvm installs no IDT (limit 0), so the #UD cannot be delivered, the CPU
//! escalates to a double and then a triple fault, and the VM shuts down. The host test checks that
//! hvkvm reports the triple fault (and does not hang or report success).
#![no_std]
#![no_main]

use hvkvm_guest::{halt_forever, BootInfo};

hvkvm_guest::entry!(main);

fn main(_boot: BootInfo) -> ! {
    // SAFETY: deliberately raises #UD; nothing after it runs on a conforming VMM.
    unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    // Only reached if the VMM resumed us past the fault: stay put so the host times out visibly.
    halt_forever()
}
