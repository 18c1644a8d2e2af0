//! Snapshot benchmark guest (`benches/snapshot.rs`): fills 0x400000F0.EAX MiB of RAM from
//! 16 MiB up with non-zero data at CPL3 (native speed on hosts that emulate CPL0 code), then
//! reports SYNC 1 = (MiB filled) and spins until the host ends the VM. With 0 MiB only the
//! image and boot structures are non-zero: the idle, sparse case.
#![no_std]
#![no_main]

use hvkvm_guest::hyperv::param;
use hvkvm_guest::usermode::{allow_user_access, enter_user_mode};
use hvkvm_guest::{guest_assert, guest_sync, halt_forever, BootInfo};

hvkvm_guest::entry!(main);

const FILL_START: u64 = 16 << 20;

fn main(boot: BootInfo) -> ! {
    if !boot.is_bsp() {
        halt_forever();
    }
    let mib = u64::from(param(0).eax);
    let end = FILL_START + (mib << 20);
    guest_assert!(end + (1 << 20) <= boot.ram_top, "too much to fill for this RAM");
    if mib > 0 {
        allow_user_access(FILL_START, end);
    }
    enter_user_mode(fill, mib)
}

extern "sysv64" fn fill(mib: u64) -> ! {
    let words = (mib << 20) / 8;
    let base = FILL_START as *mut u64;
    for i in 0..words as usize {
        // SAFETY: [FILL_START, FILL_START + mib MiB) is RAM below the vCPU stacks, made
        // user-accessible above, owned by this payload.
        unsafe { base.add(i).write_volatile(i as u64 | 1) };
    }
    guest_sync!(1, mib);
    #[allow(clippy::empty_loop)]
    loop {}
}
