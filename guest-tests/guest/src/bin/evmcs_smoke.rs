//! Uses `evmcs-layout` inside the guest: writes two eVMCS fields by VMCS encoding into a 4 KiB
//! page-aligned static page, reads them back through the crate and directly from the bytes.
//!
//! This checks that the crate builds `no_std` with the guest's flags (no SSE) and that its field
//! accessors work in CPL0 guest code; the host test compares the offsets with its own copy of the
//! layout.
//!
//! Stage 1: (GUEST_RIP read back, its byte offset, the raw little-endian u64 at that offset,
//!           GUEST_CS_SELECTOR read back, its byte offset, the raw u16 at that offset).
#![no_std]
#![no_main]

use evmcs_layout::vmcs::{GUEST_CS_SELECTOR, GUEST_RIP};
use evmcs_layout::{fields, read_field, write_field, Page};
use hvkvm_guest::{guest_assert, guest_assert_eq, guest_done, guest_sync, BootInfo, SpinLock};

hvkvm_guest::entry!(main);

const RIP_VALUE: u64 = 0xFFFF_8000_1234_5678;
const CS_VALUE: u64 = 0x0010;

/// The eVMCS page (in .bss: hvkvm zeroes it, which is what a fresh eVMCS must be).
static EVMCS: SpinLock<Page> = SpinLock::new(Page::ZERO);

/// Reads `size` little-endian bytes at `offset` straight from the page, without the crate.
fn raw_le(page: &Page, offset: usize, size: usize) -> u64 {
    let mut value = 0u64;
    for (i, &b) in page.0.iter().skip(offset).take(size).enumerate() {
        value |= u64::from(b) << (8 * i);
    }
    value
}

fn main(_boot: BootInfo) -> ! {
    let mut page = EVMCS.lock();
    guest_assert_eq!(
        &*page as *const Page as u64 % 4096,
        0,
        "the eVMCS page is not 4 KiB aligned"
    );

    let rip = fields::lookup(GUEST_RIP);
    let cs = fields::lookup(GUEST_CS_SELECTOR);
    guest_assert!(
        rip.is_some() && cs.is_some(),
        "GUEST_RIP/GUEST_CS_SELECTOR missing from the eVMCS map"
    );
    let (rip_offset, cs_offset) = match (rip, cs) {
        (Some(r), Some(c)) => (usize::from(r.offset), usize::from(c.offset)),
        _ => (0, 0),
    };

    guest_assert!(
        write_field(&mut *page, GUEST_RIP, RIP_VALUE).is_ok(),
        "write_field(GUEST_RIP) failed"
    );
    guest_assert!(
        write_field(&mut *page, GUEST_CS_SELECTOR, CS_VALUE).is_ok(),
        "write_field(GUEST_CS_SELECTOR) failed"
    );

    let rip_read = read_field(&*page, GUEST_RIP).unwrap_or(0);
    let cs_read = read_field(&*page, GUEST_CS_SELECTOR).unwrap_or(0);
    guest_assert_eq!(rip_read, RIP_VALUE, "GUEST_RIP did not read back");
    guest_assert_eq!(cs_read, CS_VALUE, "GUEST_CS_SELECTOR did not read back");

    let rip_raw = raw_le(&page, rip_offset, 8);
    let cs_raw = raw_le(&page, cs_offset, 2);
    guest_sync!(1, rip_read, rip_offset, rip_raw, cs_read, cs_offset, cs_raw);
    guest_done!()
}
