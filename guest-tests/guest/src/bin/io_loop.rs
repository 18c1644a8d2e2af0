//! The exit-rate benchmark guest: vCPU 0 writes port 0x1002 in an endless two-instruction loop,
//! so practically all of its time is I/O exits. The host counts them and stops the VM.
//! Other vCPUs (if any) halt.
#![no_std]
#![no_main]

use hvkvm_guest::{halt_forever, BootInfo};

hvkvm_guest::entry!(main);

/// A port no device claims: hvkvm's benchmark handler counts writes to it.
const BENCH_PORT: u16 = 0x1002;

fn main(boot: BootInfo) -> ! {
    if boot.is_bsp() {
        // SAFETY: an endless loop of port writes; touches no memory.
        unsafe {
            core::arch::asm!(
                "2:",
                "out dx, al",
                "jmp 2b",
                in("dx") BENCH_PORT,
                in("al") 0u8,
                options(noreturn, nomem, nostack),
            )
        }
    }
    halt_forever()
}
