//! A guest to snapshot mid-run (needs hv-time: TIME_REF_COUNT and REFERENCE_TSC).
//!
//! Every vCPU fills its own 64 KiB at `FIRST_FREE_RAM + i * 64 KiB` with a xorshift pattern,
//! then reads TIME_REF_COUNT in a loop for RUN_UNITS of reference time (4 s, or 0x400000F0.EAX
//! seconds when that leaf is defined and non-zero), asserting that it never goes backwards and
//! printing `soak vCPU i: t=N` every second. vCPU 0 also enables the reference TSC page and
//! asserts that page time and TIME_REF_COUNT agree within 1 ms at every print. Then each vCPU
//! checks its pattern. vCPU 0 waits for the others and reports SYNC 1 = (vCPUs finished,
//! largest step between two TIME_REF_COUNT reads, reads, page/MSR checks), prints
//! `soak done`, and ends with DONE.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use hvkvm_guest::hyperv::{read_tsc_page, Page};
use hvkvm_guest::uart::CONSOLE;
use hvkvm_guest::x86::{cpuid, rdmsr, wrmsr};
use hvkvm_guest::{guest_assert, guest_done, guest_sync, halt_forever, BootInfo, FIRST_FREE_RAM};

hvkvm_guest::entry!(main);

const TIME_REF_COUNT: u32 = 0x4000_0020;
const REFERENCE_TSC: u32 = 0x4000_0021;
const UNITS_PER_SECOND: u64 = 10_000_000;
const REGION: u64 = 64 * 1024;

static FINISHED: AtomicU64 = AtomicU64::new(0);
static TSC_PAGE: Page = Page::zeroed();

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn region(cpu: u64) -> *mut u64 {
    (FIRST_FREE_RAM + cpu * REGION) as *mut u64
}

fn fill(cpu: u64) {
    let mut x = cpu + 0x9e37_79b9;
    for i in 0..(REGION / 8) as usize {
        // SAFETY: the region is this vCPU's scratch RAM below the image (payload contract).
        unsafe { region(cpu).add(i).write_volatile(xorshift(&mut x)) };
    }
}

fn check(cpu: u64) -> bool {
    let mut x = cpu + 0x9e37_79b9;
    (0..(REGION / 8) as usize).all(|i| {
        // SAFETY: as in `fill`.
        unsafe { region(cpu).add(i).read_volatile() == xorshift(&mut x) }
    })
}

fn say(cpu: u64, what: &str, value: u64) {
    let mut uart = CONSOLE.lock();
    uart.write_str("soak vCPU ");
    uart.write_dec(cpu);
    uart.write_str(what);
    uart.write_dec(value);
    uart.write_str("\n");
}

fn main(boot: BootInfo) -> ! {
    let cpu = boot.cpu_index;
    guest_assert!(cpu < 16, "snapshot_soak supports 16 vCPUs");
    let seconds = match cpuid(0x4000_0000, 0).eax >= 0x4000_00f0 {
        true => u64::from(cpuid(0x4000_00f0, 0).eax),
        false => 0,
    };
    let run = (if seconds == 0 { 4 } else { seconds }) * UNITS_PER_SECOND;
    if boot.is_bsp() {
        // SAFETY: REFERENCE_TSC names a page of this image; the VMM writes only that page.
        unsafe { wrmsr(REFERENCE_TSC, TSC_PAGE.addr() | 1) };
    }
    fill(cpu);
    let start = rdmsr(TIME_REF_COUNT);
    let mut last = start;
    let mut next_print = start;
    let (mut reads, mut max_step, mut page_checks) = (0u64, 0u64, 0u64);
    while last - start < run {
        let now = rdmsr(TIME_REF_COUNT);
        guest_assert!(now >= last, "TIME_REF_COUNT went backwards");
        max_step = max_step.max(now - last);
        reads += 1;
        last = now;
        if now >= next_print {
            say(cpu, ": t=", (now - start) / UNITS_PER_SECOND);
            next_print = now + UNITS_PER_SECOND;
            if boot.is_bsp() {
                let before = rdmsr(TIME_REF_COUNT);
                let page = read_tsc_page(&TSC_PAGE);
                let after = rdmsr(TIME_REF_COUNT);
                if let Some(page) = page {
                    guest_assert!(
                        page + 10_000 >= before && page <= after + 10_000,
                        "the TSC page and TIME_REF_COUNT disagree"
                    );
                    page_checks += 1;
                }
            }
        }
    }
    guest_assert!(check(cpu), "guest memory changed under the guest");
    FINISHED.fetch_add(1, Ordering::AcqRel);
    if !boot.is_bsp() {
        halt_forever();
    }
    let deadline = rdmsr(TIME_REF_COUNT) + 30 * UNITS_PER_SECOND;
    while FINISHED.load(Ordering::Acquire) < boot.cpu_count && rdmsr(TIME_REF_COUNT) < deadline {}
    let finished = FINISHED.load(Ordering::Acquire);
    guest_assert!(finished == boot.cpu_count, "a vCPU did not finish");
    guest_sync!(1, finished, max_step, reads, page_checks);
    CONSOLE.lock().write_str("soak done\n");
    guest_done!()
}
