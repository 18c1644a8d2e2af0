//! The runtime shared by hvkvm's guest payloads.
//!
//! Every payload in `src/bin/` is a tiny bare-metal program. hvkvm loads its ELF image, starts every
//! vCPU at `_start` in 64-bit long mode at CPL0 (paging on, RAM identity mapped, interrupts off, no
//! IDT) and passes the System V argument registers RDI = vCPU index, RSI = vCPU count,
//! RDX = top of guest RAM. The payload reports back to the host test through *ucalls* (see
//! [`ucall`]) and the serial port.
//!
//! Constraints that shape this crate (see /work/shared/test-host.md and guest-tests/README.md):
//! - On the development hosts, CPL0 guest code is run by KVM's instruction emulator, which cannot
//!   execute SSE/AVX arithmetic, xsave, rdtscp, cmpxchg16b, popcnt, BMI2... The crate is compiled
//!   with SSE disabled, and guest-build rejects any image whose disassembly contains such an
//!   instruction or any xmm/ymm/zmm register.
//! - Emulation costs microseconds per instruction: payloads execute thousands of instructions, not
//!   millions, and nothing here formats text with `core::fmt` (big, slow, and it pulls in code we
//!   cannot audit easily). Numbers are printed by the small helpers in [`uart`].
//! - There is no libc: the `mem*` functions the compiler may call are defined in [`mem`].
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod hyperv;
pub mod idt;
pub mod intr;
pub mod mem;
pub mod sync;
pub mod synic;
pub mod uart;
pub mod ucall;
pub mod user_mp;
pub mod usermode;
pub mod vmx;
pub mod x86;

pub use sync::{spin_wait, SpinLock};
pub use uart::{serial_print, Uart};
pub use x86::{halt_forever, test_exit};

/// Size of each vCPU's stack slot (contract: vCPU i owns [ram_top-(i+1)*64K, ram_top-i*64K)).
pub const STACK_SLOT_SIZE: u64 = 64 * 1024;
/// First guest-physical byte a payload may use: below it are hvkvm's boot structures.
pub const FIRST_FREE_RAM: u64 = 0x10_0000;
/// Where `link.ld` places the image.
pub const IMAGE_BASE: u64 = 0x20_0000;

/// What hvkvm hands every vCPU at `_start`, plus the stack pointer it started with.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// This vCPU's index, 0..cpu_count (RDI at entry).
    pub cpu_index: u64,
    /// Number of vCPUs in the VM (RSI at entry).
    pub cpu_count: u64,
    /// Guest RAM is [0, ram_top) (RDX at entry).
    pub ram_top: u64,
    /// RSP at the first instruction of `_start`, captured by [`entry!`].
    pub entry_rsp: u64,
}

impl BootInfo {
    /// Lowest address of this vCPU's stack slot.
    pub fn stack_slot_bottom(&self) -> u64 {
        self.ram_top - (self.cpu_index + 1) * STACK_SLOT_SIZE
    }

    /// One past the highest address of this vCPU's stack slot.
    pub fn stack_slot_top(&self) -> u64 {
        self.ram_top - self.cpu_index * STACK_SLOT_SIZE
    }

    /// Lowest address of the stack area of all vCPUs (everything above is stacks).
    pub fn stack_area_bottom(&self) -> u64 {
        self.ram_top - self.cpu_count * STACK_SLOT_SIZE
    }

    /// True on the vCPU that coordinates a test (index 0).
    pub fn is_bsp(&self) -> bool {
        self.cpu_index == 0
    }
}

/// Defines the payload's `_start` and hands control to `$main: fn(BootInfo) -> !`.
///
/// `_start` is a naked function: its only instructions copy RSP into RCX (the fourth System V
/// argument register) and jump to a normal `extern "sysv64"` function. A jump, not a call, so the
/// Rust code sees exactly the stack hvkvm set up (RSP+8 16-byte aligned, as after a `call`), and
/// [`BootInfo::entry_rsp`] is the RSP of the very first instruction, untouched by any prologue.
///
/// ```ignore
/// hvkvm_guest::entry!(main);
/// fn main(boot: hvkvm_guest::BootInfo) -> ! { hvkvm_guest::guest_done!() }
/// ```
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        #[unsafe(naked)]
        pub extern "sysv64" fn _start() -> ! {
            ::core::arch::naked_asm!(
                "mov rcx, rsp",
                "jmp {entry}",
                entry = sym __hvkvm_guest_entry,
            )
        }

        extern "sysv64" fn __hvkvm_guest_entry(
            cpu_index: u64,
            cpu_count: u64,
            ram_top: u64,
            entry_rsp: u64,
        ) -> ! {
            let main: fn($crate::BootInfo) -> ! = $main;
            main($crate::BootInfo { cpu_index, cpu_count, ram_top, entry_rsp })
        }
    };
}

/// Panics (a failed bounds check, an `unwrap` on `None`, an explicit `panic!`) end the test as
/// failed through a ucall ASSERT carrying the panic's file:line. The message is only passed on
/// when it is a plain string literal: turning format arguments into text would need `core::fmt`.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let (file, line) = match info.location() {
        Some(loc) => (loc.file(), loc.line()),
        None => ("<unknown>", 0),
    };
    let msg = info.message().as_str().unwrap_or("panic");
    ucall::assert_fail(file, line, msg, 0, 0)
}
