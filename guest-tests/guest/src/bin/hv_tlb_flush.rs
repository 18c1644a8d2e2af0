//! Remote TLB flushes, in the manner of KVM's `hyperv_tlb_flush` selftest, on 2 vCPUs: VP 1
//! (the worker) reads a test page through a 4 KiB mapping at CPL3, at native speed, in a
//! loop; VP 0 (the sender) rewrites that mapping's PTE to point at another page, then flushes
//! VP 1's TLB with a hypercall, and checks that VP 1 reads the new page afterwards. Needs
//! hv-vpindex, hv-tlbflush (with its Ex forms) and hv-xmm-input.
//!
//! Why both run at CPL3: on hosts that emulate CPL0 code, KVM's emulator writes page tables
//! through its write tracking, which updates the shadow page tables at once (no stale entry to
//! flush), and walks the guest page tables itself (no TLB at all). Only natively executed code
//! leaves stale translations: a native write to a page-table page makes KVM's shadow page
//! *unsync*, and the worker's translation stays stale until its vCPU syncs (a guest TLB
//! flush). So the sender rewrites the PTE natively at CPL3 and comes back to CPL0 only for the
//! hypercall (an `intr` service call). Case 0 is the control: no flush, and the worker must
//! still see the old page (if it did not, this test could not tell a flush from none).
//!
//! One SYNC per case (stage = case): (status, worker saw the old page after the PTE write
//! (before the flush), worker saw the new page after the flush, worker reads in between,
//! TSC cycles of the flush call including the CPL3→CPL0→CPL3 round trip, worker reads whose
//! FS-relative check value was wrong so far: the worker's FS base must survive its flushes).
//! Cases:
//! 0 no flush (control); 1 FlushVirtualAddressSpace slow, mask BIT(1); 2 the same XMM-fast;
//! 3 FlushVirtualAddressList slow, 1 rep (the test page); 4 FlushVirtualAddressSpaceEx slow,
//! bank 0; 5 FlushVirtualAddressListEx slow, bank 0, 1 rep; 6 FlushVirtualAddressSpace with
//! HV_FLUSH_ALL_PROCESSORS; 7 FlushVirtualAddressSpaceEx, format ALL; 8 FlushVirtualAddress-
//! SpaceEx XMM-fast, banks 0 and 1 (VP 65 does not exist); 9 FlushVirtualAddressSpace, mask 0
//! (KVM: all); 10 FlushVirtualAddressSpace, mask BIT(0) only (the worker is not a target:
//! informational, since with shadow paging the sender's own flush syncs the shadow page
//! both vCPUs share); 11 a synthetic IPI to the worker instead of a flush (a second control:
//! kicking the worker out of the guest and back does not flush it). Needs hv-ipi too.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

use hvkvm_guest::hyperv::{
    self, hypercall, hypercall_xmm_fast, HypercallResult, Page, HC_REP_COUNT_SHIFT,
    HC_VARHEAD_SHIFT,
};
use hvkvm_guest::x86::{rdtsc, read_cr3};
use hvkvm_guest::{guest_assert, guest_done, guest_sync, intr, spin_wait, user_mp, BootInfo};

hvkvm_guest::entry!(main);

/// The test window: 32 GiB (identity mapped by 2 MiB pages in the contract, no RAM there),
/// remapped with one 4 KiB page table.
const WINDOW: u64 = 0x8_0000_0000;
const PTE_P: u64 = 1;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_PS: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
const MARK_A: u64 = 0xaaaa;
const MARK_B: u64 = 0xbbbb;
const CASES: u64 = 12;
/// About 4 s at 2.5 GHz.
const LIMIT: u64 = 10_000_000_000;
/// Worker reads that must pass after a PTE write before the sender looks (a stale entry
/// stays; a coherent MMU shows the new page long before).
const SETTLE_READS: u64 = 20_000;

const SPACE: u64 = 0x2;
const LIST: u64 = 0x3;
const SPACE_EX: u64 = 0x13;
const LIST_EX: u64 = 0x14;
const ALL_PROCESSORS: u64 = 1;

static HYPERCALL_PAGE: Page = Page::ud2_filled();
static INPUT: Page = Page::zeroed();
static PAGE_TABLE: Page = Page::zeroed();
static PAGE_A: Page = Page::zeroed();
static PAGE_B: Page = Page::zeroed();
/// The worker's latest read: sequence << 32 | the mark it read.
static SNAP: AtomicU64 = AtomicU64::new(0);
static READY: AtomicU32 = AtomicU32::new(0);
static CR3: AtomicU64 = AtomicU64::new(0);

fn entry(table: u64, index: u64) -> *mut u64 {
    ((table & ADDR) + 8 * index) as *mut u64
}

/// Points the window's 2 MiB slot at PAGE_TABLE, whose entry 0 maps PAGE_A. At CPL0.
fn build_window() {
    let cr3 = read_cr3();
    // SAFETY: the contract's identity-mapped page tables, walked at CPL0; the 32 GiB slot maps
    // no RAM, so replacing it takes nothing from anyone.
    unsafe {
        let pml4e = entry(cr3, (WINDOW >> 39) & 511).read_volatile();
        let pdpte = entry(pml4e, (WINDOW >> 30) & 511).read_volatile();
        guest_assert!(
            pdpte & PTE_P != 0 && pdpte & PTE_PS == 0,
            "2 MiB identity map expected"
        );
        PAGE_TABLE.write_u64(0, PAGE_A.addr() | PTE_P | PTE_RW | PTE_US);
        entry(pdpte, (WINDOW >> 21) & 511)
            .write_volatile(PAGE_TABLE.addr() | PTE_P | PTE_RW | PTE_US);
    }
    PAGE_A.write_u64(0, MARK_A);
    PAGE_B.write_u64(0, MARK_B);
    hvkvm_guest::usermode::allow_user_access(WINDOW, WINDOW + 4096);
    CR3.store(cr3, SeqCst);
}

fn var(n: u64) -> u64 {
    n << HC_VARHEAD_SHIFT
}

fn reps(n: u64) -> u64 {
    n << HC_REP_COUNT_SHIFT
}

fn slow(control: u64, words: &[u64]) -> u64 {
    for (i, w) in words.iter().enumerate() {
        INPUT.write_u64(8 * i, *w);
    }
    // SAFETY: the input page is ours; flushes have no output.
    let r = unsafe { hypercall(&HYPERCALL_PAGE, control, INPUT.addr(), 0) };
    r.map_or(u64::MAX, |rax| u64::from(rax.status()))
}

/// The service that gives the worker its FS base (it cannot WRMSR at CPL3).
const SET_FS_BASE: u64 = 1000;
const IA32_FS_BASE: u32 = 0xc000_0100;
/// What the worker's FS base points at: it checks this value through FS on every read, so a
/// VMM that clobbers the segment state of a vCPU while flushing it is caught.
static FS_MARK: AtomicU64 = AtomicU64::new(0x5e6_f5ba_5e);
static FS_BAD: AtomicU64 = AtomicU64::new(0);

/// CPL0 service: flush case `case`; returns the status (0 for the control case).
fn flush(case: u64) -> u64 {
    if case == SET_FS_BASE {
        // SAFETY: FS_BASE only changes where this vCPU's FS-relative accesses go.
        unsafe { hvkvm_guest::x86::wrmsr(IA32_FS_BASE, FS_MARK.as_ptr() as u64) };
        return 0;
    }
    let space = CR3.load(SeqCst) & ADDR;
    let worker = 1u64 << 1;
    match case {
        1 => slow(SPACE, &[space, 0, worker]),
        2 => {
            let mut xmm = [0u64; 12];
            xmm[0] = worker;
            hypercall_xmm_fast(&HYPERCALL_PAGE, SPACE, space, 0, &xmm)
                .map_or(u64::MAX, |rax| u64::from(rax.status()))
        }
        3 => slow(LIST | reps(1), &[space, 0, worker, WINDOW]),
        4 => slow(SPACE_EX | var(1), &[space, 0, 0, 1, worker]),
        5 => slow(
            LIST_EX | var(1) | reps(1),
            &[space, 0, 0, 1, worker, WINDOW],
        ),
        6 => slow(SPACE, &[space, ALL_PROCESSORS, 0]),
        7 => slow(SPACE_EX, &[space, 0, 1, 0]),
        8 => {
            let mut xmm = [0u64; 12];
            xmm[0] = 0; // format: sparse
            xmm[1] = 0b11;
            xmm[2] = worker;
            xmm[3] = worker;
            hypercall_xmm_fast(&HYPERCALL_PAGE, SPACE_EX | var(2), space, 0, &xmm)
                .map_or(u64::MAX, |rax| u64::from(rax.status()))
        }
        9 => slow(SPACE, &[space, 0, 0]),
        10 => slow(SPACE, &[space, 0, 1]),
        // SendSyntheticClusterIpi, vector 0xA5: the worker runs with interrupts off, so it
        // only leaves the guest and re-enters.
        11 => slow(0x0b, &[0xa5, worker]),
        _ => 0,
    }
}

/// The worker: reads the window forever at CPL3.
extern "sysv64" fn worker(_: u64) -> ! {
    let mut seq = 0u64;
    intr::service_call(SET_FS_BASE);
    READY.store(1, SeqCst);
    loop {
        // SAFETY: the window is mapped (user, present) to PAGE_A or PAGE_B.
        let mark = unsafe { (WINDOW as *const u64).read_volatile() };
        let fs: u64;
        // SAFETY: FS points at FS_MARK, in the user-accessible image.
        unsafe { core::arch::asm!("mov {}, fs:[0]", out(reg) fs, options(nostack, readonly)) };
        if fs != FS_MARK.load(SeqCst) {
            FS_BAD.fetch_add(1, SeqCst);
        }
        seq += 1;
        SNAP.store(seq << 32 | (mark & 0xffff_ffff), SeqCst);
    }
}

fn snap() -> (u64, u64) {
    let s = SNAP.load(SeqCst);
    (s >> 32, s & 0xffff_ffff)
}

/// Waits (at CPL3, natively) until the worker made `reads` more reads; returns the last mark.
fn after_reads(reads: u64) -> Option<u64> {
    let (start, _) = snap();
    let t0 = rdtsc();
    loop {
        let (seq, mark) = snap();
        if seq >= start + reads {
            return Some(mark);
        }
        if rdtsc().wrapping_sub(t0) > LIMIT {
            return None;
        }
    }
}

/// The sender at CPL3.
extern "sysv64" fn sender(_: u64) -> ! {
    let mut current = (PAGE_A.addr(), MARK_A);
    let mut other = (PAGE_B.addr(), MARK_B);
    for case in 0..CASES {
        // A native write of the PTE: KVM's shadow page for the table becomes unsync.
        // SAFETY: PAGE_TABLE is in the image, which is user accessible and writable.
        unsafe {
            PAGE_TABLE
                .as_ptr()
                .cast::<u64>()
                .write_volatile(other.0 | PTE_P | PTE_RW | PTE_US)
        };
        let before = after_reads(SETTLE_READS);
        let stale = before == Some(current.1);
        let (seq0, _) = snap();
        let t0 = rdtsc();
        let status = intr::service_call(case);
        let cycles = rdtsc() - t0;
        // Two reads that began after the call returned.
        let after = after_reads(2);
        let (seq1, _) = snap();
        let fresh = after == Some(other.1);
        guest_sync!(case, status, stale, fresh, seq1 - seq0, cycles, FS_BAD.load(SeqCst));
        if matches!(case, 0 | 10 | 11) {
            // The worker was not flushed: bring it in sync before the next case.
            intr::service_call(1);
            after_reads(2);
        }
        core::mem::swap(&mut current, &mut other);
    }
    guest_done!()
}

fn main(boot: BootInfo) -> ! {
    guest_assert!(boot.cpu_count == 2, "two vCPUs");
    intr::install();
    intr::set_service(flush);
    if boot.cpu_index == 1 {
        guest_assert!(spin_wait(|| CR3.load(SeqCst) != 0), "no window");
        // Use the new mapping with a clean TLB.
        // SAFETY: reloading CR3 with its own value only flushes the TLB.
        unsafe { core::arch::asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack)) };
        user_mp::enter(1, worker, 0);
    }
    guest_assert!(hyperv::enable_hypercall_page(&HYPERCALL_PAGE).is_ok());
    build_window();
    guest_assert!(
        spin_wait(|| READY.load(SeqCst) == 1),
        "the worker did not start"
    );
    guest_assert!(after_reads(1000).is_some(), "the worker does not read");
    user_mp::enter(0, sender, 0)
}
