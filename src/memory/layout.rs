//! The guest-physical memory map hvkvm gives every guest.
//!
//! ```text
//! 0x0000_0500  GDT (flat: 0x10 = 64-bit code, 0x18 = data)
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_9000  PML4        0x0000_A000  PDPT
//! 0x0002_0000  kernel command line (up to CMDLINE_MAX bytes)
//! 0x0004_0000  page directories, one per GiB identity-mapped (2 MiB pages)
//! 0x000E_0000  ACPI tables (RSDP first, where legacy scans look for it)
//! 0x0010_0000  first byte an ELF payload or kernel may use (1 MiB)
//! ...          RAM up to min(size, 3 GiB)
//! 0xC000_0000  MMIO hole (IOAPIC at 0xFEC0_0000, LAPIC at 0xFEE0_0000)
//! 0x1_0000_0000 the rest of RAM above 4 GiB
//! ```
//! Payload vCPU stacks sit at the top of the low RAM region (see `boot::payload`).

/// Smallest guest RAM hvkvm accepts, in MiB.
pub const MIN_RAM_MIB: u64 = 16;
/// Largest guest RAM, in MiB: what the boot page tables identity-map (64 GiB) minus the hole.
pub const MAX_RAM_MIB: u64 = 60 * 1024;

/// Flat boot GDT.
pub const GDT_ADDR: u64 = 0x500;
/// Linux boot_params ("zero page").
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Top-level page table.
pub const PML4_ADDR: u64 = 0x9000;
/// The one PDPT (covers 512 GiB).
pub const PDPT_ADDR: u64 = 0xA000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest kernel command line, including the NUL.
pub const CMDLINE_MAX: usize = 0x1_0000;
/// First page directory; directory `i` maps GiB `i`.
pub const PD_BASE_ADDR: u64 = 0x4_0000;
/// How many GiB the boot page tables identity-map.
pub const IDENTITY_MAPPED_GIB: u64 = 64;

// All RAM (which sits above the hole once it exceeds 3 GiB) must be identity-mapped.
const _: () =
    assert!((MAX_RAM_MIB << 20) + (MMIO_HOLE_END - MMIO_HOLE_START) <= IDENTITY_MAPPED_GIB << 30);
/// ACPI tables; the RSDP is the first table here.
pub const ACPI_TABLES_ADDR: u64 = 0xE_0000;
/// End of the ACPI area (the legacy BIOS area ends at 1 MiB).
pub const ACPI_TABLES_END: u64 = 0x10_0000;
/// Everything below this address is reserved for the VMM's boot structures.
pub const LOW_RESERVED_END: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// End of the 32-bit MMIO hole, where high RAM begins.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// The IOAPIC's MMIO base.
pub const IOAPIC_ADDR: u64 = 0xFEC0_0000;
/// The local APIC's MMIO base.
pub const LAPIC_ADDR: u64 = 0xFEE0_0000;
/// Base of the EBDA-ish area Linux's e820 should see as reserved (up to 1 MiB).
pub const LOW_RAM_END: u64 = 0x9_FC00;

/// The RAM ranges `(start, length)` for `size` bytes of guest RAM.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(0, size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, size - MMIO_HOLE_START),
        ]
    }
}

/// End of the low (below 4 GiB) RAM region for `size` bytes of RAM.
pub fn low_ram_top(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_mmio_hole() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_ranges(MMIO_HOLE_START), vec![(0, MMIO_HOLE_START)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (0, MMIO_HOLE_START),
                (MMIO_HOLE_END, (4 << 30) - MMIO_HOLE_START)
            ]
        );
        assert_eq!(low_ram_top(4 << 30), MMIO_HOLE_START);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let pd_end = PD_BASE_ADDR + IDENTITY_MAPPED_GIB * 0x1000;
        let regions = [
            (GDT_ADDR, GDT_ADDR + 0x100),
            (ZERO_PAGE_ADDR, ZERO_PAGE_ADDR + 0x1000),
            (PML4_ADDR, PML4_ADDR + 0x1000),
            (PDPT_ADDR, PDPT_ADDR + 0x1000),
            (CMDLINE_ADDR, CMDLINE_ADDR + CMDLINE_MAX as u64),
            (PD_BASE_ADDR, pd_end),
            (ACPI_TABLES_ADDR, ACPI_TABLES_END),
        ];
        for (i, a) in regions.iter().enumerate() {
            assert!(a.1 <= LOW_RESERVED_END);
            for b in &regions[i + 1..] {
                assert!(a.1 <= b.0 || b.1 <= a.0, "{a:x?} overlaps {b:x?}");
            }
        }
    }
}
