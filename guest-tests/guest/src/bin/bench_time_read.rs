//! Benchmark payload: cycles per guest time read, through the TIME_REF_COUNT MSR (at CPL0, where
//! RDMSR is allowed: each read is an exit to the VMM, and on the test hosts an emulated
//! instruction) against the reference TSC page read as an application reads it (at CPL3, as
//! Linux's vDSO and Windows' QueryPerformanceCounter do), with bare RDTSC as the floor.
//!
//! Needs the Hyper-V user backend with hv-time and hv-frequencies (REFERENCE_TSC,
//! TIME_REF_COUNT, TSC_FREQUENCY). Parameters (read at CPL0: CPUID at CPL3 is the host's on the
//! test hosts): 0x400000F0 EAX = N_MSR (0 → 200), EBX = N_PAGE (0 → 1,000,000).
//!
//! Steps, at CPL0: install the IDT; enable REFERENCE_TSC on a page-aligned .bss page; read
//! TSC_FREQUENCY; one untimed TIME_REF_COUNT read, then N_MSR reads between two RDTSCs; one page
//! read; then the MSR loop without the RDMSR (its emulated loop control: the CPL0 loop overhead).
//! Then drop to CPL3 (`hvkvm_guest::usermode`) and there: one page read, N_PAGE page reads (TLFS
//! protocol, `read_tsc_page`) between two RDTSCs, N_PAGE plain RDTSCs between two RDTSCs.
//!
//! Sanity checks (a failure is an ASSERT, a and b = the two values compared): the single page
//! reads at CPL0 and at CPL3 agree within 10 ms with the last TIME_REF_COUNT value plus the TSC
//! time elapsed since that read (at TSC_FREQUENCY; extrapolating keeps a descheduled vCPU thread
//! from failing the check), and that elapsed TSC time is under 1 s (a CPL3 TSC that did not
//! continue the CPL0 one would cancel out of the extrapolation, not out of this bound); the CPL3
//! page time is no earlier than the CPL0 one; the page time advanced over the loop.
//!
//! Reports (cycles are guest TSC cycles, loop overhead included):
//! - SYNC 1 = (CPL seen at user level (3), TSC_FREQUENCY in Hz, total cycles of the N_MSR MSR
//!   reads, N_MSR, total cycles of the N_PAGE page reads, N_PAGE).
//! - SYNC 2 = (total cycles of the N_PAGE plain RDTSCs, N_PAGE, last page time, last MSR time
//!   (both in 100 ns units), the page's TscSequence, total cycles of the N_MSR-iteration empty
//!   loop at CPL0).
//! - DONE.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hvkvm_guest::hyperv::{
    param, read_tsc_page, tsc_page_params, Page, PAGE_ENABLE, REFERENCE_TSC, TIME_REF_COUNT,
    TSC_FREQUENCY,
};
use hvkvm_guest::idt::{self, rdmsr_safe, wrmsr_safe};
use hvkvm_guest::ucall::assert_fail;
use hvkvm_guest::usermode::{cpl, enter_user_mode};
use hvkvm_guest::x86::{rdmsr, rdtsc};
use hvkvm_guest::{guest_assert, guest_done, guest_sync, BootInfo};

hvkvm_guest::entry!(main);

static TSC_PAGE: Page = Page::zeroed();

const DEFAULT_N_MSR: u64 = 200;
const DEFAULT_N_PAGE: u64 = 1_000_000;
/// 10 ms in the reference time's 100 ns units.
const TEN_MS: u64 = 100_000;

/// What CPL0 hands to the CPL3 part (statics: the image is user-accessible, CPL0 stacks are not).
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static N_MSR: AtomicU64 = AtomicU64::new(0);
static N_PAGE: AtomicU64 = AtomicU64::new(0);
static MSR_CYCLES: AtomicU64 = AtomicU64::new(0);
static LOOP_CYCLES: AtomicU64 = AtomicU64::new(0);
static LAST_MSR: AtomicU64 = AtomicU64::new(0);
/// RDTSC right after the last TIME_REF_COUNT read.
static LAST_MSR_TSC: AtomicU64 = AtomicU64::new(0);
static PAGE_CPL0: AtomicU64 = AtomicU64::new(0);

/// The reference time expected at TSC `tsc_now`, `msr` having been read at TSC `tsc_msr`:
/// `msr` plus the TSC cycles since then in 100 ns units, at TSC_FREQUENCY. ASSERTs unless the
/// TSC moved forward by at most one second (which also keeps the product below 2^64: plain
/// 64-bit `mul`/`div`, no 128-bit division helper).
#[track_caller]
fn expected_time(msr: u64, tsc_msr: u64, tsc_now: u64, tsc_hz: u64) -> u64 {
    let elapsed = tsc_now.wrapping_sub(tsc_msr);
    check(
        elapsed <= tsc_hz,
        "the TSC here is not within 1 s after the TSC of the last TIME_REF_COUNT read",
        tsc_now,
        tsc_msr,
    );
    msr + elapsed * 10_000_000 / tsc_hz
}

/// ASSERT (at the caller's file:line) with both values unless `ok`.
#[track_caller]
fn check(ok: bool, msg: &str, a: u64, b: u64) {
    if !ok {
        let at = core::panic::Location::caller();
        assert_fail(at.file(), at.line(), msg, a, b);
    }
}

fn main(_boot: BootInfo) -> ! {
    idt::install();
    let p = param(0);
    let n_msr = if p.eax == 0 {
        DEFAULT_N_MSR
    } else {
        u64::from(p.eax)
    };
    let n_page = if p.ebx == 0 {
        DEFAULT_N_PAGE
    } else {
        u64::from(p.ebx)
    };

    // SAFETY: the VMM writes the reference TSC page into TSC_PAGE, which nothing else uses.
    let enabled = unsafe { wrmsr_safe(REFERENCE_TSC, TSC_PAGE.addr() | PAGE_ENABLE) };
    guest_assert!(
        enabled.is_ok(),
        "REFERENCE_TSC enable faulted (hv-time not offered?)"
    );
    let tsc_hz = rdmsr_safe(TSC_FREQUENCY).unwrap_or(0);
    guest_assert!(
        tsc_hz != 0,
        "TSC_FREQUENCY faulted or is 0 (hv-frequencies not offered?)"
    );
    // Untimed first read: faults here are reported, the timed loop below uses plain RDMSR.
    let first_msr = rdmsr_safe(TIME_REF_COUNT);
    guest_assert!(first_msr.is_ok(), "TIME_REF_COUNT faulted");

    let t0 = rdtsc();
    let mut last_msr = 0;
    for _ in 0..n_msr {
        last_msr = rdmsr(TIME_REF_COUNT);
    }
    let t1 = rdtsc();
    let tsc_page_cpl0 = rdtsc();
    let page_cpl0 = read_tsc_page(&TSC_PAGE).unwrap_or(u64::MAX);
    check(
        page_cpl0 != u64::MAX,
        "TSC page invalid (sequence 0) at CPL0",
        page_cpl0,
        last_msr,
    );
    check(
        page_cpl0.abs_diff(expected_time(last_msr, t1, tsc_page_cpl0, tsc_hz)) < TEN_MS,
        "page time at CPL0 vs last TIME_REF_COUNT: more than 10 ms apart",
        page_cpl0,
        last_msr,
    );
    // The MSR loop without the RDMSR: what the emulated loop control costs at CPL0.
    let t2 = rdtsc();
    for _ in 0..n_msr {
        // SAFETY: an empty asm statement; it only keeps the loop from being optimised away.
        unsafe { asm!("", options(nomem, nostack, preserves_flags)) };
    }
    let t3 = rdtsc();

    TSC_HZ.store(tsc_hz, Relaxed);
    N_MSR.store(n_msr, Relaxed);
    N_PAGE.store(n_page, Relaxed);
    MSR_CYCLES.store(t1.wrapping_sub(t0), Relaxed);
    LOOP_CYCLES.store(t3.wrapping_sub(t2), Relaxed);
    LAST_MSR.store(last_msr, Relaxed);
    LAST_MSR_TSC.store(t1, Relaxed);
    PAGE_CPL0.store(page_cpl0, Relaxed);
    enter_user_mode(user_main, 0)
}

/// Runs at CPL3: the page and RDTSC loops, the reports, DONE.
extern "sysv64" fn user_main(_arg: u64) -> ! {
    let level = cpl();
    let n_page = N_PAGE.load(Relaxed);
    let last_msr = LAST_MSR.load(Relaxed);
    let page_cpl0 = PAGE_CPL0.load(Relaxed);

    let tsc_first = rdtsc();
    let first = read_tsc_page(&TSC_PAGE).unwrap_or(u64::MAX);
    check(
        first != u64::MAX,
        "TSC page invalid (sequence 0) at CPL3",
        first,
        last_msr,
    );
    check(
        first >= page_cpl0,
        "page time at CPL3 is before the one at CPL0",
        first,
        page_cpl0,
    );
    let expected = expected_time(
        last_msr,
        LAST_MSR_TSC.load(Relaxed),
        tsc_first,
        TSC_HZ.load(Relaxed),
    );
    check(
        first.abs_diff(expected) < TEN_MS,
        "page time at CPL3 vs last TIME_REF_COUNT: more than 10 ms apart",
        first,
        last_msr,
    );

    let t0 = rdtsc();
    let mut last_page = 0;
    for _ in 0..n_page {
        last_page = read_tsc_page(&TSC_PAGE).unwrap_or(u64::MAX);
    }
    let t1 = rdtsc();
    for _ in 0..n_page {
        rdtsc();
    }
    let t2 = rdtsc();
    check(
        last_page != u64::MAX,
        "TSC page invalid (sequence 0) in the loop",
        last_page,
        first,
    );
    check(
        last_page > first,
        "page time did not advance",
        last_page,
        first,
    );

    guest_sync!(
        1,
        level,
        TSC_HZ.load(Relaxed),
        MSR_CYCLES.load(Relaxed),
        N_MSR.load(Relaxed),
        t1.wrapping_sub(t0),
        n_page
    );
    guest_sync!(
        2,
        t2.wrapping_sub(t1),
        n_page,
        last_page,
        last_msr,
        tsc_page_params(&TSC_PAGE).sequence,
        LOOP_CYCLES.load(Relaxed)
    );
    guest_done!()
}
