//! Benchmark (guest-tests/benches/hyperv_timers.rs): how late a timer interrupt arrives, for
//! the in-kernel LAPIC's TSC-deadline timer, a direct-mode synthetic timer and a message-mode
//! synthetic timer, in the same guest, interleaved. Needs hv-time (the TSC page converts the
//! TSC deadline to reference time), hv-synic, hv-stimer, hv-stimer-direct, and CPUID's
//! TSC-deadline bit.
//!
//! Each sample: read the TSC, arm the timer for that TSC + D (the synthetic timers get the
//! reference time of that TSC, rounded up, through the TSC page formula), HLT until the
//! interrupt handler recorded its TSC; lateness = handler TSC − deadline TSC, in TSC cycles
//! (the interrupt entry and handler prologue are included, the same for all three).
//! Parameters: 0x400000F0 EAX = samples per timer (0 → 60), EBX = D in TSC cycles (0 → 2,000,000).
//! SYNC 100 + mode (0 LAPIC, 1 direct, 2 message) carries six samples at a time, in order;
//! SYNC 1 = (samples per timer, D, TSC page sequence, 0, 0, 0); then DONE.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use hvkvm_guest::hyperv::{param, tsc_page_params, Page, REFERENCE_TSC};
use hvkvm_guest::synic::{self, direct_config, message_config};
use hvkvm_guest::x86::{cpuid, rdtsc, wrmsr};
use hvkvm_guest::{guest_assert, guest_done, guest_sync, intr, BootInfo};

hvkvm_guest::entry!(main);

const VEC_LAPIC: u8 = 0xe8;
const VEC_DIRECT: u8 = 0xe9;
const VEC_MESSAGE: u8 = 0xf1;
const SINT: usize = 2;
const IA32_TSC_DEADLINE: u32 = 0x6e0;
const LVT_TIMER: u64 = 0xfee0_0320;
const LVT_TSC_DEADLINE: u32 = 0b10 << 17;
const MAX_SAMPLES: usize = 600;

static TSC_PAGE: Page = Page::zeroed();
static SIMP: Page = Page::zeroed();
static SEEN: AtomicU64 = AtomicU64::new(0);
static SAMPLES: [[AtomicU64; MAX_SAMPLES]; 3] =
    [const { [const { AtomicU64::new(0) }; MAX_SAMPLES] }; 3];

fn seen(vector: u8, _cpu: usize) {
    SEEN.store(rdtsc(), SeqCst);
    if vector == VEC_MESSAGE {
        synic::take(&SIMP, SINT);
    }
}

/// The reference time of TSC value `tsc`, rounded up (the TSC page formula).
fn reference_time_ceil(tsc: u64, scale: u64, offset: i64) -> u64 {
    let product = u128::from(tsc) * u128::from(scale);
    let mut t = (product >> 64) as u64;
    if product as u64 != 0 {
        t += 1;
    }
    t.wrapping_add(offset as u64)
}

fn main(boot: BootInfo) -> ! {
    guest_assert!(boot.cpu_count == 1, "one vCPU");
    guest_assert!(
        cpuid(1, 0).ecx & (1 << 24) != 0,
        "no TSC-deadline timer in CPUID"
    );
    let p = param(0);
    let samples = match p.eax as usize {
        0 => 60,
        n => n.min(MAX_SAMPLES),
    };
    let d = match p.ebx {
        0 => 2_000_000,
        n => u64::from(n),
    };
    intr::install();
    intr::lapic_enable();
    for v in [VEC_LAPIC, VEC_DIRECT, VEC_MESSAGE] {
        intr::set_hook(v, seen);
    }
    // SAFETY: the TSC page and SIMP are this payload's pages; the LVT write sets the LAPIC
    // timer to TSC-deadline mode with our vector.
    unsafe {
        wrmsr(REFERENCE_TSC, TSC_PAGE.addr() | 1);
        ((LVT_TIMER) as *mut u32).write_volatile(LVT_TSC_DEADLINE | u32::from(VEC_LAPIC));
    }
    synic::enable(&SIMP, None);
    synic::set_sint(SINT as u32, VEC_MESSAGE);
    let params = tsc_page_params(&TSC_PAGE);
    guest_assert!(params.sequence != 0, "no valid TSC page");

    for i in 0..samples * 3 {
        let mode = i % 3;
        SEEN.store(0, SeqCst);
        let deadline = rdtsc() + d;
        match mode {
            // SAFETY: arms the LAPIC timer; its interrupt is handled.
            0 => unsafe { wrmsr(IA32_TSC_DEADLINE, deadline) },
            1 => synic::start_timer(
                0,
                direct_config(VEC_DIRECT, false),
                reference_time_ceil(deadline, params.scale, params.offset),
            ),
            _ => synic::start_timer(
                1,
                message_config(SINT as u64, false),
                reference_time_ceil(deadline, params.scale, params.offset),
            ),
        }
        // HLT until the handler ran: the vCPU sleeps in KVM, as an idle guest does.
        let start = rdtsc();
        while SEEN.load(SeqCst) == 0 && rdtsc().wrapping_sub(start) < 100 * d {
            // SAFETY: STI;HLT waits for the interrupt, which the IDT handles; CLI after.
            unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
        }
        let at = SEEN.load(SeqCst);
        guest_assert!(at != 0, "a timer never fired");
        SAMPLES[mode][i / 3].store(at.wrapping_sub(deadline), SeqCst);
    }
    guest_sync!(1, samples, d, params.sequence, 0, 0, 0);
    for (mode, row) in SAMPLES.iter().enumerate() {
        let mut i = 0;
        while i < samples {
            let mut v = [0u64; 6];
            for (j, slot) in v.iter_mut().enumerate() {
                *slot = row.get(i + j).map_or(0, |s| s.load(SeqCst));
            }
            guest_sync!(100 + mode as u64, v[0], v[1], v[2], v[3], v[4], v[5]);
            i += 6;
        }
    }
    guest_done!()
}
