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
