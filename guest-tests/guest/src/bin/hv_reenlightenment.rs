//! Reenlightenment after a restore at another TSC rate (`guest-tests/tests/snapshot_restore.rs`;
//! needs hv-time, hv-frequencies, hv-reenlightenment).
//!
//! Before the snapshot: software-enables the LAPIC (SVR bit 8; interrupts stay off, so a
//! delivered interrupt stays pending in the IRR), enables the reference TSC page, sets
//! REENLIGHTENMENT_CONTROL = vector 0xEC, enabled, target VP 0, and TSC_EMULATION_CONTROL = 1.
//! SYNC 1 = (TSC_FREQUENCY, TIME_REF_COUNT, TSC page sequence): the host snapshots here.
//!
//! After the restore: SYNC 2 = (vector 0xEC pending in the IRR 0/1, TSC_EMULATION_STATUS,
//! TSC_FREQUENCY, TSC page sequence, TIME_REF_COUNT); then the guest acknowledges (writes
//! TSC_EMULATION_STATUS = 0) and SYNC 3 = (TSC page sequence, page time, TIME_REF_COUNT before
//! and after the page read); DONE.
#![no_std]
#![no_main]

use hvkvm_guest::hyperv::{read_tsc_page, tsc_page_params, Page};
use hvkvm_guest::x86::{rdmsr, wrmsr};
use hvkvm_guest::{guest_done, guest_sync, halt_forever, BootInfo};

hvkvm_guest::entry!(main);

const TIME_REF_COUNT: u32 = 0x4000_0020;
const REFERENCE_TSC: u32 = 0x4000_0021;
const TSC_FREQUENCY: u32 = 0x4000_0022;
const REENLIGHTENMENT_CONTROL: u32 = 0x4000_0106;
const TSC_EMULATION_CONTROL: u32 = 0x4000_0107;
const TSC_EMULATION_STATUS: u32 = 0x4000_0108;
const VECTOR: u64 = 0xec;
const LAPIC: u64 = 0xfee0_0000;
const SVR: u64 = 0xf0;
const IRR: u64 = 0x200;

static TSC_PAGE: Page = Page::zeroed();

fn lapic_read(offset: u64) -> u32 {
    // SAFETY: the xAPIC page is identity-mapped MMIO (payload contract); reads have no effect.
    unsafe { ((LAPIC + offset) as *const u32).read_volatile() }
}

fn lapic_write(offset: u64, value: u32) {
    // SAFETY: as above; SVR only enables the APIC.
    unsafe { ((LAPIC + offset) as *mut u32).write_volatile(value) }
}

fn main(boot: BootInfo) -> ! {
    if !boot.is_bsp() {
        halt_forever();
    }
    lapic_write(SVR, lapic_read(SVR) | 0x1ff);
    // SAFETY: Hyper-V MSRs of the offered enlightenments; the page is this image's.
    unsafe {
        wrmsr(REFERENCE_TSC, TSC_PAGE.addr() | 1);
        wrmsr(REENLIGHTENMENT_CONTROL, VECTOR | (1 << 16));
        wrmsr(TSC_EMULATION_CONTROL, 1);
    }
    guest_sync!(
        1,
        rdmsr(TSC_FREQUENCY),
        rdmsr(TIME_REF_COUNT),
        tsc_page_params(&TSC_PAGE).sequence
    );
    let irr = lapic_read(IRR + (VECTOR / 32) * 0x10);
    let pending = (irr >> (VECTOR % 32)) & 1;
    guest_sync!(
        2,
        pending,
        rdmsr(TSC_EMULATION_STATUS),
        rdmsr(TSC_FREQUENCY),
        tsc_page_params(&TSC_PAGE).sequence,
        rdmsr(TIME_REF_COUNT)
    );
    // SAFETY: clearing InProgress is what the TLFS asks of the guest.
    unsafe { wrmsr(TSC_EMULATION_STATUS, 0) };
    let before = rdmsr(TIME_REF_COUNT);
    let page = read_tsc_page(&TSC_PAGE).unwrap_or(u64::MAX);
    let after = rdmsr(TIME_REF_COUNT);
    guest_sync!(3, tsc_page_params(&TSC_PAGE).sequence, page, before, after);
    guest_done!()
}
