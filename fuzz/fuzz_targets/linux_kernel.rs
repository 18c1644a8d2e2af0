//! The Linux kernel loaders: bzImage setup-header parsing and payload location, the five
//! decompressors (gzip, xz, lzma, legacy lz4, zstd) with their size limits, the vmlinux ELF
//! checks, and the whole `boot::linux::load` (linux-loader's ELF and bzImage loaders, the
//! segment-in-RAM check, initrd placement, boot_params, ACPI) into a 16 MiB guest.
//!
//! Input: one byte (bit 0: give an initrd of the next 4 KiB), then the kernel image.
//! Checked: no panic, no allocation beyond the limit (libFuzzer's -rss_limit_mb), and an
//! extracted vmlinux never exceeds the guest RAM it was extracted for.
#![no_main]

use std::sync::OnceLock;

use hvkvm::boot::linux::{self, LinuxImage};
use hvkvm::boot::vmlinux;
use hvkvm::memory::GuestMemory;
use libfuzzer_sys::fuzz_target;

const RAM_MIB: u64 = 16;

fn guest() -> &'static GuestMemory {
    static MEM: OnceLock<GuestMemory> = OnceLock::new();
    MEM.get_or_init(|| hvkvm::memory::allocate(RAM_MIB).expect("guest RAM"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (initrd, kernel) = if flags & 1 != 0 {
        let (i, k) = rest.split_at(rest.len().min(4096));
        (Some(i.to_vec()), k)
    } else {
        (None, rest)
    };
    let limit = (RAM_MIB << 20) as usize;
    if let Ok(elf) = vmlinux::extract_vmlinux_within(kernel, limit) {
        assert!(elf.len() <= limit);
        assert!(vmlinux::check_vmlinux_elf(&elf).is_ok());
    }
    let image = LinuxImage {
        kernel: kernel.to_vec(),
        initrd,
        cmdline: "console=ttyS0".to_string(),
    };
    let _ = linux::load(guest(), RAM_MIB << 20, 1 + u32::from(flags >> 6), &image);
});
