//! Reference TSC page, TIME_REF_COUNT and TSC_FREQUENCY, for the user-backend conformance tests.
//!
//! No parameters. Steps: enable REFERENCE_TSC with a page-aligned .bss page (#GP caught), read
//! the page's fields; then twice, separated by a busy wait of `WAIT_ITERATIONS` PAUSEs: read
//! TIME_REF_COUNT, the page time (TLFS read protocol) and RDTSC; then TSC_FREQUENCY and
//! APIC_FREQUENCY; finally disable the page again.
//!
//! Reports (u64::MAX marks a value that could not be obtained: an MSR read that faulted, or a
//! page whose sequence is 0):
//! - SYNC 1 = (enable faulted 0/1, sequence, scale, offset (as u64), REFERENCE_TSC read back,
//!   vector of the enable fault (u64::MAX if none)).
//! - SYNC 2 = (msr_t0, page_t0, msr_t1, page_t1, tsc0, tsc1): for each sample i the three reads
//!   are back to back in the order TIME_REF_COUNT, page, RDTSC.
//! - SYNC 3 = (TSC_FREQUENCY faulted 0/1, TSC frequency in Hz (0 if faulted), APIC_FREQUENCY
//!   faulted 0/1, APIC frequency (0 if faulted)).
//! - SYNC 4 = (disable (REFERENCE_TSC = 0) faulted 0/1, REFERENCE_TSC read back, sequence now).
//! - DONE.
#![no_std]
#![no_main]

use hvkvm_guest::hyperv::{
    read_tsc_page, tsc_page_params, Page, APIC_FREQUENCY, PAGE_ENABLE, REFERENCE_TSC,
    TIME_REF_COUNT, TSC_FREQUENCY,
};
use hvkvm_guest::idt::{self, rdmsr_safe, wrmsr_safe};
use hvkvm_guest::x86::{pause, rdtsc};
use hvkvm_guest::{guest_done, guest_sync, BootInfo};

hvkvm_guest::entry!(main);

static TSC_PAGE: Page = Page::zeroed();

/// About 30 k emulated instructions: about 50 ms on the test hosts.
const WAIT_ITERATIONS: u32 = 10_000;

fn sample() -> (u64, u64, u64) {
    let msr = rdmsr_safe(TIME_REF_COUNT).unwrap_or(u64::MAX);
    let page = read_tsc_page(&TSC_PAGE).unwrap_or(u64::MAX);
    let tsc = rdtsc();
    (msr, page, tsc)
}

fn main(_boot: BootInfo) -> ! {
    idt::install();

    // SAFETY: the VMM writes the reference TSC page into TSC_PAGE, which nothing else uses.
    let enable = unsafe { wrmsr_safe(REFERENCE_TSC, TSC_PAGE.addr() | PAGE_ENABLE) };
    let params = tsc_page_params(&TSC_PAGE);
    let readback = rdmsr_safe(REFERENCE_TSC).unwrap_or(u64::MAX);
    guest_sync!(
        1,
        enable.is_err(),
        params.sequence,
        params.scale,
        params.offset,
        readback,
        enable.err().map_or(u64::MAX, u64::from)
    );

    let (msr0, page0, tsc0) = sample();
    for _ in 0..WAIT_ITERATIONS {
        pause();
    }
    let (msr1, page1, tsc1) = sample();
    guest_sync!(2, msr0, page0, msr1, page1, tsc0, tsc1);

    let tsc_freq = rdmsr_safe(TSC_FREQUENCY);
    let apic_freq = rdmsr_safe(APIC_FREQUENCY);
    guest_sync!(
        3,
        tsc_freq.is_err(),
        tsc_freq.unwrap_or(0),
        apic_freq.is_err(),
        apic_freq.unwrap_or(0)
    );

    // SAFETY: disabling the page stops the VMM's writes.
    let disable = unsafe { wrmsr_safe(REFERENCE_TSC, 0) };
    let readback = rdmsr_safe(REFERENCE_TSC).unwrap_or(u64::MAX);
    guest_sync!(4, disable.is_err(), readback, tsc_page_params(&TSC_PAGE).sequence);
    guest_done!()
}
