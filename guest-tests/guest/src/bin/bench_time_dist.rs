//! Benchmark payload for `hvkvm bench time-read`: the per-read cost distribution of guest time
//! reads, through the TIME_REF_COUNT MSR (at CPL0: every RDMSR is an exit to the VMM's Hyper-V
//! user backend) and through the reference TSC page as an application reads it (at CPL3, as
//! Linux's vDSO and Windows' QueryPerformanceCounter do), with a bare RDTSC pair as the floor.
//!
//! Each read is timed on its own between two `lfence; rdtsc` (the deltas include one RDTSC).
//! The CPL0 MSR deltas are stored raw (a store is all the emulated code adds per read); the
//! histograms are built at CPL3, natively, in log-linear buckets: values below 32 exactly,
//! above that 16 buckets per power of two (at most 1/16 = 6.25% wide). The host decodes them
//! with the same rule (`hvkvm::bench::Histogram`).
//!
//! Needs the Hyper-V user backend with hv-time and hv-frequencies. Parameters (CPUID at CPL0):
//! 0x400000F0 EAX = MSR reads (0 → 1,000; at most 65,536), EBX = TSC page reads and RDTSC
//! pairs (0 → 100,000).
//!
//! Reports, all from CPL3:
//! - SYNC 1 = (CPL at user level (3), TSC_FREQUENCY in Hz, MSR reads, page reads, bucket count,
//!   sub-bucket bits);
//! - SYNC 10 + m for each non-empty bucket of method m (0 = MSR, 1 = TSC page, 2 = RDTSC), six
//!   per SYNC, each `bucket << 40 | count` (0 = unused slot);
//! - SYNC 20 = (sum of MSR cycles, sum of page cycles, sum of RDTSC cycles, last page time,
//!   last MSR time (100 ns units), the page's TscSequence);
//! - DONE.
//!
//! Sanity checks (ASSERT): the TSC page is valid at CPL3, agrees within 10 ms with the last
//! TIME_REF_COUNT value extrapolated by the TSC, and advanced over the loop.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use hvkvm_guest::hyperv::{
    param, read_tsc_page, tsc_page_params, Page, PAGE_ENABLE, REFERENCE_TSC, TIME_REF_COUNT,
    TSC_FREQUENCY,
};
use hvkvm_guest::idt::{self, rdmsr_safe, wrmsr_safe};
use hvkvm_guest::ucall::assert_fail;
use hvkvm_guest::usermode::{cpl, enter_user_mode};
use hvkvm_guest::x86::rdmsr;
use hvkvm_guest::{guest_assert, guest_done, guest_sync, BootInfo};

hvkvm_guest::entry!(main);

static TSC_PAGE: Page = Page::zeroed();

const DEFAULT_N_MSR: u64 = 1_000;
const MAX_N_MSR: u64 = 65_536;
const DEFAULT_N_PAGE: u64 = 100_000;
/// 10 ms in the reference time's 100 ns units.
const TEN_MS: u64 = 100_000;

/// Log-linear buckets: values below 2^(SUB_BITS+1) exactly, then 2^SUB_BITS per octave, up to
/// 2^36 cycles (larger values land in the last bucket).
const SUB_BITS: u32 = 4;
const EXACT: u64 = 2 << SUB_BITS;
const BUCKETS: usize = 528;

/// The bucket of `v` (the host's `Histogram::bucket_range` inverts it).
fn bucket(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let v = v.min((1 << 36) - 1);
    let e = 63 - v.leading_zeros();
    let sub = (v >> (e - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    EXACT as usize + ((e - SUB_BITS - 1) as usize) * (1 << SUB_BITS) + sub as usize
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU32 = AtomicU32::new(0);
/// Raw MSR read deltas, written at CPL0, read at CPL3 (the image is user-accessible).
static MSR_DELTAS: [AtomicU32; MAX_N_MSR as usize] = [ZERO; MAX_N_MSR as usize];
/// One histogram per method.
#[allow(clippy::declare_interior_mutable_const)]
const ZERO_HIST: [AtomicU32; BUCKETS] = [ZERO; BUCKETS];
static HIST: [[AtomicU32; BUCKETS]; 3] = [ZERO_HIST; 3];

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static N_MSR: AtomicU64 = AtomicU64::new(0);
static N_PAGE: AtomicU64 = AtomicU64::new(0);
static LAST_MSR: AtomicU64 = AtomicU64::new(0);
/// RDTSC right after the last TIME_REF_COUNT read.
static LAST_MSR_TSC: AtomicU64 = AtomicU64::new(0);

/// RDTSC after every earlier instruction has completed (LFENCE works at CPL0 and CPL3 alike).
#[inline(always)]
fn tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: LFENCE and RDTSC only order execution and write EDX:EAX.
    unsafe { asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
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
    let n_msr = match u64::from(p.eax) {
        0 => DEFAULT_N_MSR,
        n => n.min(MAX_N_MSR),
    };
    let n_page = match u64::from(p.ebx) {
        0 => DEFAULT_N_PAGE,
        n => n,
    };
    // SAFETY: the VMM writes the reference TSC page into TSC_PAGE, which nothing else uses.
    let enabled = unsafe { wrmsr_safe(REFERENCE_TSC, TSC_PAGE.addr() | PAGE_ENABLE) };
    guest_assert!(enabled.is_ok(), "REFERENCE_TSC enable faulted (hv-time not offered?)");
    let tsc_hz = rdmsr_safe(TSC_FREQUENCY).unwrap_or(0);
    guest_assert!(tsc_hz != 0, "TSC_FREQUENCY faulted or is 0 (hv-frequencies not offered?)");
    guest_assert!(rdmsr_safe(TIME_REF_COUNT).is_ok(), "TIME_REF_COUNT faulted");

    let mut last_msr = 0;
    let mut t1 = 0;
    for slot in MSR_DELTAS.iter().take(n_msr as usize) {
        let t0 = tsc();
        last_msr = rdmsr(TIME_REF_COUNT);
        t1 = tsc();
        slot.store(t1.wrapping_sub(t0).min(u64::from(u32::MAX)) as u32, Relaxed);
    }
    TSC_HZ.store(tsc_hz, Relaxed);
    N_MSR.store(n_msr, Relaxed);
    N_PAGE.store(n_page, Relaxed);
    LAST_MSR.store(last_msr, Relaxed);
    LAST_MSR_TSC.store(t1, Relaxed);
    enter_user_mode(user_main, 0)
}

fn record(method: usize, delta: u64) -> u64 {
    HIST[method][bucket(delta)].fetch_add(1, Relaxed);
    delta
}

/// Sends method `m`'s non-empty buckets, six per SYNC.
fn report(m: usize) {
    let mut batch = [0u64; 6];
    let mut n = 0;
    for (i, count) in HIST[m].iter().enumerate() {
        let count = u64::from(count.load(Relaxed));
        if count == 0 {
            continue;
        }
        batch[n] = (i as u64) << 40 | count;
        n += 1;
        if n == batch.len() {
            hvkvm_guest::ucall::sync(10 + m as u64, batch);
            batch = [0; 6];
            n = 0;
        }
    }
    if n > 0 {
        hvkvm_guest::ucall::sync(10 + m as u64, batch);
    }
}

/// Runs at CPL3: the page and RDTSC loops, the histograms, the reports, DONE.
extern "sysv64" fn user_main(_arg: u64) -> ! {
    let level = cpl();
    let n_msr = N_MSR.load(Relaxed);
    let n_page = N_PAGE.load(Relaxed);
    let last_msr = LAST_MSR.load(Relaxed);
    let tsc_hz = TSC_HZ.load(Relaxed);

    let tsc_first = tsc();
    let first = read_tsc_page(&TSC_PAGE).unwrap_or(u64::MAX);
    check(first != u64::MAX, "TSC page invalid (sequence 0) at CPL3", first, last_msr);
    let elapsed = tsc_first.wrapping_sub(LAST_MSR_TSC.load(Relaxed));
    check(
        elapsed <= tsc_hz,
        "more than 1 s of TSC between the last MSR read and the first page read",
        elapsed,
        tsc_hz,
    );
    let expected = last_msr + elapsed * 10_000_000 / tsc_hz;
    check(
        first.abs_diff(expected) < TEN_MS,
        "page time at CPL3 vs last TIME_REF_COUNT: more than 10 ms apart",
        first,
        last_msr,
    );

    let mut msr_sum = 0u64;
    for d in MSR_DELTAS.iter().take(n_msr as usize) {
        msr_sum += record(0, u64::from(d.load(Relaxed)));
    }
    let mut page_sum = 0u64;
    let mut last_page = 0;
    for _ in 0..n_page {
        let t0 = tsc();
        last_page = read_tsc_page(&TSC_PAGE).unwrap_or(u64::MAX);
        let t1 = tsc();
        page_sum += record(1, t1.wrapping_sub(t0));
    }
    let mut rdtsc_sum = 0u64;
    for _ in 0..n_page {
        let t0 = tsc();
        let t1 = tsc();
        rdtsc_sum += record(2, t1.wrapping_sub(t0));
    }
    check(last_page != u64::MAX, "TSC page invalid (sequence 0) in the loop", last_page, first);
    check(last_page > first, "page time did not advance", last_page, first);

    guest_sync!(1, level, tsc_hz, n_msr, n_page, BUCKETS, SUB_BITS);
    for m in 0..3 {
        report(m);
    }
    guest_sync!(
        20,
        msr_sum,
        page_sum,
        rdtsc_sum,
        last_page,
        last_msr,
        tsc_page_params(&TSC_PAGE).sequence
    );
    guest_done!()
}
