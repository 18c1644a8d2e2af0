//! Every vCPU prints "cpu N up" on COM1 and sets bit N of a shared mask; vCPU 0 waits until all
//! bits are set and reports stage 1 = (mask, cpu_count), then DONE. Supports up to 64 vCPUs.
//!
//! The line is printed and the bit set under the console lock, so once vCPU 0 sees every bit, all
//! lines are out: the host sees every line before DONE.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use hvkvm_guest::uart::CONSOLE;
use hvkvm_guest::{
    guest_assert, guest_assert_eq, guest_done, guest_sync, halt_forever, spin_wait, BootInfo,
};

hvkvm_guest::entry!(main);

/// Bit i is set once vCPU i has printed its line.
static UP_MASK: AtomicU64 = AtomicU64::new(0);

fn main(boot: BootInfo) -> ! {
    let n = boot.cpu_count;
    guest_assert!(
        (1..=64).contains(&n) && boot.cpu_index < n,
        "multi_vcpu needs 1..=64 vCPUs"
    );

    {
        let mut uart = CONSOLE.lock();
        uart.write_str("cpu ");
        uart.write_dec(boot.cpu_index);
        uart.write_str(" up\n");
        UP_MASK.fetch_or(1 << boot.cpu_index, Ordering::Release);
    }

    if !boot.is_bsp() {
        halt_forever();
    }

    // (1 << 64) would overflow: all 64 bits is u64::MAX.
    let all = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    spin_wait(|| UP_MASK.load(Ordering::Acquire) == all);
    let mask = UP_MASK.load(Ordering::Acquire);
    guest_assert_eq!(mask, all, "not every vCPU came up in time");
    guest_sync!(1, mask, n);
    guest_done!()
}
