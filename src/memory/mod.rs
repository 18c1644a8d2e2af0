//! Guest RAM: allocation, registration with KVM, and the guest-physical layout.
//!
//! This is the only module that re-exports vm-memory, and (with `crate::kvm`) the only one
//! allowed `unsafe`: registering a host mapping with KVM. Everything else reads and writes
//! guest memory through [`Bytes`], which copies and never hands out Rust references into
//! memory the guest can change underneath.
#![allow(unsafe_code)]

pub mod layout;
pub mod ram_file;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
pub use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion,
};

/// The guest RAM of one VM.
pub type GuestMemory = vm_memory::GuestMemoryMmap;

/// Errors setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is not usable.
    #[error("guest RAM of {mib} MiB is not supported: use --memory between {min} and {max} MiB")]
    BadSize {
        /// What was asked for.
        mib: u64,
        /// Smallest supported size.
        min: u64,
        /// Largest supported size.
        max: u64,
    },
    /// mmap of guest RAM failed.
    #[error("cannot allocate {mib} MiB of guest RAM")]
    Allocate {
        /// What was asked for.
        mib: u64,
        /// The mmap failure.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// KVM refused the memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION failed for slot {slot}")]
    RegisterSlot {
        /// The slot number.
        slot: u32,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Allocates `mib` MiB of guest RAM laid out as [`layout::ram_ranges`] says.
pub fn allocate(mib: u64) -> Result<GuestMemory, MemoryError> {
    if !(layout::MIN_RAM_MIB..=layout::MAX_RAM_MIB).contains(&mib) {
        return Err(MemoryError::BadSize {
            mib,
            min: layout::MIN_RAM_MIB,
            max: layout::MAX_RAM_MIB,
        });
    }
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(mib << 20)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemory::from_ranges(&ranges).map_err(|source| MemoryError::Allocate { mib, source })
}

/// Makes every region of `mem` visible to the guest of `vm`, one KVM slot per region.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemory) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let kvm_region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the host range [as_ptr, as_ptr + len) is a live mmap owned by `mem`, which
        // the VM object keeps alive for as long as `vm` exists (both are dropped together in
        // `Vm`); slots do not overlap because vm-memory rejects overlapping regions.
        unsafe { vm.set_user_memory_region(kvm_region) }
            .map_err(|source| MemoryError::RegisterSlot { slot, source })?;
    }
    Ok(())
}

/// True when `[addr, addr + len)` lies entirely inside guest RAM (one region).
pub fn range_is_ram(mem: &GuestMemory, addr: u64, len: u64) -> bool {
    let Some(last) = addr.checked_add(len.saturating_sub(1)) else {
        return false;
    };
    match mem.find_region(GuestAddress(addr)) {
        Some(region) => len == 0 || last <= region.last_addr().raw_value(),
        None => false,
    }
}

/// Atomically ORs `bits` into the aligned u64 at guest-physical `gpa` and returns the old
/// value: for guest structures the guest updates concurrently with atomic instructions (the
/// SynIC event-flags page). The atomic is reached through vm-memory's volatile slice, used for
/// this one operation, and never kept.
pub fn fetch_or_u64(
    mem: &GuestMemory,
    gpa: u64,
    bits: u64,
) -> Result<u64, vm_memory::GuestMemoryError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use vm_memory::{GuestMemoryBackend as _, VolatileMemory};
    let slice = mem.get_slice(GuestAddress(gpa), 8)?;
    let word = slice.get_atomic_ref::<AtomicU64>(0)?;
    Ok(word.fetch_or(bits, Ordering::SeqCst))
}

/// Atomically replaces the aligned u64 at guest-physical `gpa` with `new` if it still holds
/// `current`: `Ok(Ok(current))` when it did, `Ok(Err(actual))` when the guest changed it first
/// (the SynIC message header, whose type the guest clears while hvkvm sets its pending flag).
pub fn compare_exchange_u64(
    mem: &GuestMemory,
    gpa: u64,
    current: u64,
    new: u64,
) -> Result<Result<u64, u64>, vm_memory::GuestMemoryError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use vm_memory::{GuestMemoryBackend as _, VolatileMemory};
    let slice = mem.get_slice(GuestAddress(gpa), 8)?;
    let word = slice.get_atomic_ref::<AtomicU64>(0)?;
    Ok(word.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst))
}

#[cfg(test)]
mod atomic_tests {
    use super::*;

    #[test]
    fn atomics_on_guest_memory() {
        let mem = allocate(16).unwrap();
        mem.write_obj(0x10u64, GuestAddress(0x1000)).unwrap();
        assert_eq!(fetch_or_u64(&mem, 0x1000, 0x3).unwrap(), 0x10);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x1000)).unwrap(), 0x13);
        assert_eq!(
            compare_exchange_u64(&mem, 0x1000, 0x13, 7).unwrap(),
            Ok(0x13)
        );
        assert_eq!(compare_exchange_u64(&mem, 0x1000, 0x13, 9).unwrap(), Err(7));
        assert!(fetch_or_u64(&mem, 1 << 40, 1).is_err(), "outside RAM");
        assert!(fetch_or_u64(&mem, 0x1001, 1).is_err(), "misaligned");
    }
}
