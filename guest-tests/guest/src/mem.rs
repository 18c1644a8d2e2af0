//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`.
//!
//! The compiler lowers struct copies, array initialisation and slice comparisons to calls to these
//! symbols. On a hosted target libc provides them; our payloads link with `-nostdlib`, and the
//! host target's `compiler_builtins` does not export them, so they are defined here.
//!
//! Copies and fills use `rep movsb` / `rep stosb`, which KVM's emulator executes in bulk; the
//! hosted libc versions would use SSE/AVX, which it cannot execute. The functions are written with
//! `asm!` or volatile accesses so that LLVM cannot recognise their loops as a memcpy/memset idiom
//! and compile them into a call to themselves.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dest` (the regions must not overlap).
///
/// # Safety
/// The usual `memcpy` contract: both regions valid for `n` bytes and disjoint.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the regions; DF is clear (the ABI requires it at calls).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags))
    };
    dest
}

/// Copies `n` bytes from `src` to `dest`; the regions may overlap.
///
/// # Safety
/// Both regions valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if n == 0 {
        return dest;
    }
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize) + n {
        // A forward copy never overwrites bytes it has still to read.
        // SAFETY: see above; memcpy's rep movsb copies front to back.
        return unsafe { memcpy(dest, src, n) };
    }
    // dest overlaps the tail of src: copy back to front with DF set, and clear DF again because
    // the ABI requires it clear everywhere else.
    // SAFETY: the caller guarantees both regions; rdi/rsi point at the last byte of each.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _,
             inout("rdi") dest.add(n - 1) => _,
             inout("rsi") src.add(n - 1) => _,
             options(nostack))
    };
    dest
}

/// Fills `n` bytes at `dest` with the byte `c`.
///
/// # Safety
/// `dest` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the region; DF is clear.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags))
    };
    dest
}

/// Compares `n` bytes; returns <0, 0 or >0 like C's `memcmp`.
///
/// # Safety
/// Both regions valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and the caller guarantees n readable bytes at a and b. Volatile keeps
        // LLVM from turning this loop back into a memcmp/bcmp call.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// Compares `n` bytes for equality (0 when equal), as LLVM's `bcmp`.
///
/// # Safety
/// Both regions valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
