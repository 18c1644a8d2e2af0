//! The ucall client: how a payload talks to the host test.
//!
//! ABI (implemented by hvkvm's `vcpu::ucall`):
//! - The guest builds a [`Ucall`] in its own memory (on the stack), puts its address in RDI and
//!   executes a 32-bit `out dx, eax` with DX = [`UCALL_PORT`] (EAX is ignored).
//! - hvkvm sees the I/O exit, reads RDI with KVM_GET_REGS and the struct from guest memory
//!   (guest virtual == physical: RAM is identity mapped).
//! - Commands: [`SYNC`] (args[0] = stage, args[1..=6] = values; the guest continues, and the host
//!   may have written values back into args[]), [`ASSERT`] (args = file ptr, file len, line, msg
//!   ptr, msg len, value a, value b; the test fails), [`PRINT`] (args = ptr, len), [`DONE`] (the
//!   test passes).
//!
//! The `out` is an `asm!` without `nomem`: the compiler must assume it reads and writes the struct
//! (and any memory), so the struct is fully written before the exit, and what the host wrote back
//! is read afterwards. The read-back is volatile as well, to make that intent explicit.

use core::arch::asm;
use core::ptr::addr_of_mut;

use crate::x86::halt_forever;

/// The ucall I/O port.
pub const UCALL_PORT: u16 = 0x1000;
/// Report progress and values; the guest continues.
pub const SYNC: u64 = 1;
/// A failed assertion; ends the test as failed.
pub const ASSERT: u64 = 2;
/// Log a string on the host.
pub const PRINT: u64 = 3;
/// The test passed.
pub const DONE: u64 = 4;

/// The structure whose address the guest passes in RDI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Ucall {
    /// One of [`SYNC`], [`ASSERT`], [`PRINT`], [`DONE`].
    pub cmd: u64,
    /// Command arguments.
    pub args: [u64; 7],
}

/// Sends `cmd` with `args` and returns `args` as the host left them.
#[inline(never)]
pub fn ucall(cmd: u64, args: [u64; 7]) -> [u64; 7] {
    let mut call = Ucall { cmd, args };
    let ptr = addr_of_mut!(call);
    // SAFETY: the host only reads and writes the 64 bytes of `call`, which lives until the end
    // of this function. No `nomem`/`readonly`: the host accesses `*ptr` during the exit.
    unsafe {
        asm!("out dx, eax", in("rdi") ptr, in("dx") UCALL_PORT, in("eax") 0u32,
             options(nostack, preserves_flags))
    };
    // SAFETY: `ptr` points at `call`, which is alive and initialised.
    unsafe { addr_of_mut!((*ptr).args).read_volatile() }
}

/// SYNC: reports `stage` and up to six values; returns what the host left in `args[1..=6]`.
pub fn sync<const N: usize>(stage: u64, values: [u64; N]) -> [u64; 6] {
    const { assert!(N <= 6, "a SYNC ucall carries at most 6 values") };
    let mut args = [0u64; 7];
    args[0] = stage;
    let mut i = 0;
    while i < N {
        args[i + 1] = values[i];
        i += 1;
    }
    let back = ucall(SYNC, args);
    [back[1], back[2], back[3], back[4], back[5], back[6]]
}

/// ASSERT: reports a failed check at `file:line` with a message and two values; never returns.
#[cold]
#[inline(never)]
pub fn assert_fail(file: &str, line: u32, msg: &str, a: u64, b: u64) -> ! {
    ucall(
        ASSERT,
        [
            file.as_ptr() as u64,
            file.len() as u64,
            u64::from(line),
            msg.as_ptr() as u64,
            msg.len() as u64,
            a,
            b,
        ],
    );
    // The host ends the test on ASSERT; never run past a failed check.
    halt_forever()
}

/// PRINT: has the host log `s`.
pub fn print(s: &str) {
    ucall(PRINT, [s.as_ptr() as u64, s.len() as u64, 0, 0, 0, 0, 0]);
}

/// DONE: the test passed; never returns.
pub fn done() -> ! {
    ucall(DONE, [0; 7]);
    halt_forever()
}

/// `guest_sync!(stage, v1, ..., v6)`: SYNC with up to six values (each converted with `as u64`).
/// Evaluates to `[u64; 6]`, the values the host left in `args[1..=6]`.
#[macro_export]
macro_rules! guest_sync {
    ($stage:expr $(, $value:expr)* $(,)?) => {
        $crate::ucall::sync(($stage) as u64, [$(($value) as u64),*])
    };
}

/// `guest_assert!(cond)` / `guest_assert!(cond, "msg")`: ASSERT with this file:line if `cond` is
/// false. The message must be a string (it is sent as is, not formatted).
#[macro_export]
macro_rules! guest_assert {
    ($cond:expr $(,)?) => {
        $crate::guest_assert!(
            $cond,
            ::core::concat!("assertion failed: ", ::core::stringify!($cond))
        )
    };
    ($cond:expr, $msg:expr $(,)?) => {
        if !($cond) {
            $crate::ucall::assert_fail(::core::file!(), ::core::line!(), $msg, 0, 0);
        }
    };
}

/// `guest_assert_eq!(a, b)` / `guest_assert_eq!(a, b, "msg")`: ASSERT with this file:line and both
/// values (converted with `as u64`) if `a != b`.
#[macro_export]
macro_rules! guest_assert_eq {
    ($a:expr, $b:expr $(,)?) => {
        $crate::guest_assert_eq!(
            $a,
            $b,
            ::core::concat!(
                "assertion failed: ",
                ::core::stringify!($a),
                " == ",
                ::core::stringify!($b)
            )
        )
    };
    ($a:expr, $b:expr, $msg:expr $(,)?) => {
        match (&($a), &($b)) {
            (a, b) => {
                if *a != *b {
                    $crate::ucall::assert_fail(
                        ::core::file!(),
                        ::core::line!(),
                        $msg,
                        *a as u64,
                        *b as u64,
                    );
                }
            }
        }
    };
}

/// `guest_print!("text")`: PRINT, the host logs the string.
#[macro_export]
macro_rules! guest_print {
    ($s:expr $(,)?) => {
        $crate::ucall::print($s)
    };
}

/// `guest_done!()`: DONE, the test passed. Evaluates to `!`.
#[macro_export]
macro_rules! guest_done {
    () => {
        $crate::ucall::done()
    };
}
