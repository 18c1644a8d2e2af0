//! Cross-vCPU synchronisation with plain integer atomics.
//!
//! Only `lock`-prefixed integer instructions and `xchg` are used (the emulator executes those);
//! nothing here needs cmpxchg16b.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::x86::{pause, rdtsc};

/// A test-and-test-and-set spinlock.
///
/// Unbounded: a vCPU that dies while holding it (a failed assertion) ends the test anyway.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out at most one guard at a time, so sharing a SpinLock between vCPUs
// gives each of them exclusive access to `T` in turn, which is fine whenever T may be sent.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// A new, unlocked lock.
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Spins until the lock is free, then takes it.
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        loop {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return SpinLockGuard { lock: self };
            }
            // Wait with plain loads so the cache line (here: the emulator) is not hammered with
            // locked operations while someone else holds the lock.
            while self.locked.load(Ordering::Relaxed) {
                pause();
            }
        }
    }
}

/// Exclusive access to a [`SpinLock`]'s value; unlocks on drop.
pub struct SpinLockGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this vCPU holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while this vCPU holds the lock, and &mut self is unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// Minimum number of polls before [`spin_wait`] gives up.
///
/// Under KVM's emulator one poll costs some tens of microseconds, so this alone is a few seconds.
pub const SPIN_MIN_POLLS: u64 = 100_000;
/// Minimum number of TSC cycles before [`spin_wait`] gives up (about a second at 2 GHz): the
/// bound that matters where guest code runs natively and polls are fast.
pub const SPIN_MIN_TSC_CYCLES: u64 = 2_000_000_000;

/// Polls `done` (with PAUSE in between) until it returns true; returns false on timeout.
///
/// The timeout is reached only once *both* [`SPIN_MIN_POLLS`] polls were made and
/// [`SPIN_MIN_TSC_CYCLES`] TSC cycles passed, so it is a few seconds whether the guest is emulated
/// (slow polls) or native (fast polls). Use it to wait for other vCPUs, then ASSERT on false.
pub fn spin_wait(mut done: impl FnMut() -> bool) -> bool {
    let start = rdtsc();
    let mut polls: u64 = 0;
    loop {
        if done() {
            return true;
        }
        polls += 1;
        if polls >= SPIN_MIN_POLLS && rdtsc().wrapping_sub(start) >= SPIN_MIN_TSC_CYCLES {
            return false;
        }
        pause();
    }
}
