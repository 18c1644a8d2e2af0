//! Synthetic cluster IPIs, in the manner of KVM's `hyperv_ipi` selftest, on 2 vCPUs: VP 0
//! sends, VP 1 receives (vector 0xA5, counted by its interrupt handler; EOI through the LAPIC,
//! since the user backend does not offer hv-vapic). Where the selftest's second receiver is
//! VP 65 (bank 1), this VM has no such VP: the two-bank forms name VP 1 and VP 65, and only
//! VP 1 must get the interrupt. Needs hv-vpindex, hv-ipi and hv-xmm-input.
//!
//! One SYNC per case, stage = case number: (status, interrupts VP 1 got, interrupts VP 0 got,
//! 0, 0, 0). Cases:
//! 1 SendSyntheticClusterIpi slow, mask BIT(1); 2 fast; 3 Ex slow, one bank; 4 Ex XMM-fast,
//! one bank; 5 Ex slow, banks 0 and 1; 6 Ex XMM-fast, banks 0 and 1; 7 Ex slow, ALL;
//! 8 Ex XMM-fast, ALL; 9 Ex slow with all 64 banks valid (only bank 0 names a VP);
//! 10 vector 15 (slow); 11 vector 256 (fast); 12 fast with RDX bits 63:32 set;
//! 13 Ex slow whose variable header disagrees with the bank mask; 14 mask 0 (nobody).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};

use hvkvm_guest::hyperv::{
    self, hypercall, hypercall_fast, hypercall_xmm_fast, HypercallResult, Page, HC_VARHEAD_SHIFT,
};
use hvkvm_guest::{guest_assert, guest_done, guest_sync, intr, spin_wait, BootInfo};

hvkvm_guest::entry!(main);

const VECTOR: u8 = 0xa5;
const IPI: u64 = 0x0b;
const IPI_EX: u64 = 0x15;
const SPARSE: u64 = 0;
const ALL: u64 = 1;
const LIMIT: u64 = 5_000_000_000;

static HYPERCALL_PAGE: Page = Page::ud2_filled();
static INPUT: Page = Page::zeroed();
static READY: AtomicU32 = AtomicU32::new(0);

fn status(r: Result<u64, u8>) -> u64 {
    r.map_or(u64::MAX, |rax| u64::from(rax.status()))
}

/// Slow call with `words` as input.
fn slow(control: u64, words: &[u64]) -> u64 {
    for (i, w) in words.iter().enumerate() {
        INPUT.write_u64(8 * i, *w);
    }
    // SAFETY: the input page is ours; no output.
    status(unsafe { hypercall(&HYPERCALL_PAGE, control, INPUT.addr(), 0) })
}

fn var(n: u64) -> u64 {
    n << HC_VARHEAD_SHIFT
}

fn main(boot: BootInfo) -> ! {
    guest_assert!(boot.cpu_count == 2, "two vCPUs");
    intr::install();
    intr::lapic_enable();
    if boot.cpu_index == 1 {
        READY.store(1, SeqCst);
        intr::idle_forever();
    }
    guest_assert!(
        spin_wait(|| READY.load(SeqCst) == 1),
        "VP 1 never got ready"
    );
    guest_assert!(hyperv::enable_hypercall_page(&HYPERCALL_PAGE).is_ok());
    let v = u64::from(VECTOR);
    let vp1 = 1u64 << 1;
    let cases: [(u64, &dyn Fn() -> u64); 14] = [
        (1, &|| slow(IPI, &[v, vp1])),
        (2, &|| status(hypercall_fast(&HYPERCALL_PAGE, IPI, v, vp1))),
        (3, &|| slow(IPI_EX | var(1), &[v, SPARSE, 1, vp1])),
        (4, &|| {
            let mut xmm = [0u64; 12];
            xmm[0] = 1;
            xmm[1] = vp1;
            status(hypercall_xmm_fast(
                &HYPERCALL_PAGE,
                IPI_EX | var(1),
                v,
                SPARSE,
                &xmm,
            ))
        }),
        (5, &|| slow(IPI_EX | var(2), &[v, SPARSE, 0b11, vp1, vp1])),
        (6, &|| {
            let mut xmm = [0u64; 12];
            xmm[0] = 0b11;
            xmm[1] = vp1;
            xmm[2] = vp1;
            status(hypercall_xmm_fast(
                &HYPERCALL_PAGE,
                IPI_EX | var(2),
                v,
                SPARSE,
                &xmm,
            ))
        }),
        (7, &|| slow(IPI_EX, &[v, ALL, 0])),
        (8, &|| {
            status(hypercall_xmm_fast(
                &HYPERCALL_PAGE,
                IPI_EX,
                v,
                ALL,
                &[0; 12],
            ))
        }),
        (9, &|| {
            let mut words = [0u64; 3 + 64];
            words[0] = v;
            words[1] = SPARSE;
            words[2] = u64::MAX;
            words[3] = vp1;
            slow(IPI_EX | var(64), &words)
        }),
        (10, &|| slow(IPI, &[15, vp1])),
        (11, &|| {
            status(hypercall_fast(&HYPERCALL_PAGE, IPI, 256, vp1))
        }),
        (12, &|| {
            status(hypercall_fast(&HYPERCALL_PAGE, IPI, v | 1 << 32, vp1))
        }),
        (13, &|| slow(IPI_EX | var(1), &[v, SPARSE, 0b11, vp1, vp1])),
        (14, &|| slow(IPI, &[v, 0])),
    ];
    for (case, send) in cases.iter() {
        let (r0, s0) = (intr::count(1, VECTOR), intr::count(0, VECTOR));
        let st = send();
        // Wait until VP 1 took it (or give up), and let VP 0 take its own.
        intr::wait_for(LIMIT / 10, || intr::count(1, VECTOR) > r0);
        intr::wait_for(LIMIT / 100, || false);
        guest_sync!(
            *case,
            st,
            intr::count(1, VECTOR) - r0,
            intr::count(0, VECTOR) - s0,
            0,
            0,
            0
        );
    }
    guest_done!()
}
