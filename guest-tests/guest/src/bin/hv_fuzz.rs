//! Robustness: hostile Hyper-V MSR accesses and pseudo-random hypercalls; the VMM must survive
//! them and answer each with a value, a #GP/#UD, or a status, never by crashing or hanging.
//!
//! Parameters (optional): 0x400000F0 EAX | EBX << 32 = xorshift seed (0: the built-in seed),
//! ECX = hypercalls in phase 2 (0: 200), EDX = random MSR accesses in phase 3 (0: 200). Define
//! the leaf (zeros are fine): an undefined leaf above the hypervisor range's maximum reads as
//! another leaf's values, which still gives a fixed, if host-dependent, seed and counts.
//! `cargo bench --bench hv_fuzz` runs 50,000 of each (100,000 random inputs) and reports the
//! rate.
//!
//! Phase 1, MSRs: every index in 0x40000000..=0x40000120 plus 0x400001FF, 0x40000200, 0x40001000,
//! 0x40001080, 0x40001082, 0x40001083, 0x4FFFFFFF: one rdmsr, then wrmsr of
//! - for the MSRs the TLFS defines (see `is_defined`): u64::MAX, 0x8000_0000_0000_0001, the value
//!   read ^ 0xFFFF (0xFFFF if the read faulted), ram_top | 1 (a GPA beyond RAM), the GPA of a .bss
//!   page this payload dedicates to it | 1, and finally 0 (so that every overlay ends disabled);
//!   GUEST_OS_ID then gets a last write of 0x8100_0006_0100_0000, so that the HYPERCALL writes
//!   that follow it in the sweep are not ignored for a zero OS id;
//! - for the others: u64::MAX, then 0.
//! Exclusions, so that the payload survives a VMM that does what it is asked: GUEST_IDLE
//! (0x400000F0: reading it idles the VP until an interrupt, and interrupts are off) is not
//! touched; RESET and ICR (an INIT IPI to self) are only read; CRASH_CTL is only written 0. For
//! MSRs that hold a GPA the VMM may write to (HYPERCALL, REFERENCE_TSC, VP_ASSIST_PAGE, SIEFP,
//! SIMP, SIRBP, SYNDBG send/recv/pending buffers) a value is only written when its page is 0,
//! the dedicated page, or certainly not RAM (>= 64 GiB, or in [ram_top, 4 GiB)); other values are
//! skipped and counted.
//!
//! Phase 2, hypercalls, only if GUEST_OS_ID and HYPERCALL = (a dedicated ud2-filled .data page) | 1
//! can be written and HYPERCALL reads back enabled: ECX calls with xorshift control words (known
//! and random call codes, random fast bit, variable header size, rep count/start, sometimes
//! reserved bits). Slow calls: input GPA among (input page, +8, +3, +0xFF8, the payload image at
//! 0x200000, ram_top, 0xFFFF_FFFF_F000, 1 << 51, 0), output GPA among (output page, +8, +3,
//! +0xFF8 (crossing into an owned spill page), ram_top, 0xFFFF_FFFF_F000, 1 << 51,
//! 0xFFFF_FFFF_FFFF_F000); the first 64 bytes of the input page are refreshed with random words.
//! Fast calls: random RDX and R8.
//!
//! Phase 3, random MSR accesses (EDX of them): an index the TLFS defines (three in five), one
//! from the swept set (one in five) or any 0x4000_xxxx index, then a read (one in three) or a write of a random value, ram_top | 1, the
//! dedicated page | 1, a random value with bit 0 set, or 0, under the same exclusions and GPA
//! filter as phase 1. These may disable the hypercall page or the other overlays; phase 3 runs
//! after phase 2 and the report does not depend on their state.
//!
//! Phase 4, only where the SynIC exists (SCONTROL reads): the SynIC's message page outside RAM
//! with a timer due at once into it, EOM with nothing deliverable, every SINT vector below 16
//! unmasked (each must #GP), a direct-mode periodic timer with a 100 ns period left running for
//! 10 ms (interrupts stay off), and a periodic timer with COUNT = u64::MAX; then all off.
//!
//! Reports:
//! - SYNC 1 = (MSR accesses attempted, #GP count, hypercalls issued, #UD count (hypercalls),
//!   bitmask of the hypercall statuses < 64 seen).
//! - SYNC 2 = (MSR reads that succeeded, MSR writes that succeeded, writes skipped by the GPA
//!   filter, other faults (MSR accesses: any vector but #GP; hypercalls: any but #UD), hypercall
//!   page enabled 0/1,
//!   hypercalls that returned SUCCESS).
//! - SYNC 3 (phase 4) = (SynIC present 0/1, SINT vectors below 16 that got #GP, phase-4 writes
//!   that succeeded, phase-4 faults other than those #GPs, STIMER2_COUNT read back).
//! - DONE.
#![no_std]
#![no_main]

use hvkvm_guest::hyperv::{
    hypercall_raw, join, param, HypercallResult, Page, CRASH_CTL, GUEST_IDLE, GUEST_OS_ID,
    HC_FAST, HC_REP_COUNT_SHIFT, HC_REP_START_SHIFT, HC_VARHEAD_SHIFT, HVKVM_GUEST_OS_ID,
    HYPERCALL, ICR, PAGE_ENABLE, REFERENCE_TSC, RESET, SIEFP, SIMP, SIRBP, SYNDBG_PENDING_BUFFER,
    SYNDBG_RECV_BUFFER, SYNDBG_SEND_BUFFER, VP_ASSIST_PAGE,
};
use hvkvm_guest::idt::{self, rdmsr_safe, wrmsr_safe, GP, UD};
use hvkvm_guest::{guest_done, guest_sync, BootInfo, IMAGE_BASE};

hvkvm_guest::entry!(main);

/// The one page MSR writes may point the VMM at.
static MSR_PAGE: Page = Page::zeroed();
/// The hypercall page for phase 2.
static HYPERCALL_PAGE: Page = Page::ud2_filled();
/// Hypercall input page, output page and the spill page after it.
static IO_PAGES: [Page; 3] = [const { Page::zeroed() }; 3];

const HV_BASE: u32 = 0x4000_0000;
const HV_LAST: u32 = 0x4000_0120;
const EXTRA_MSRS: [u32; 7] =
    [0x4000_01FF, 0x4000_0200, 0x4000_1000, 0x4000_1080, 0x4000_1082, 0x4000_1083, 0x4FFF_FFFF];
const DEFAULT_HYPERCALLS: u32 = 200;
const DEFAULT_RANDOM_MSRS: u32 = 200;
const DEFAULT_SEED: u64 = 0x9E37_79B9_7F4A_7C15;
/// No RAM at or above this: hvkvm's RAM above 4 GiB ends below 4 GiB + 60 GiB.
const NO_RAM_ABOVE: u64 = 64 << 30;
const FOUR_GIB: u64 = 4 << 30;

/// The MSRs the TLFS defines in the swept range (they get the full set of hostile values).
fn is_defined(msr: u32) -> bool {
    matches!(msr - HV_BASE, 0x00..=0x03 | 0x10 | 0x20..=0x23 | 0x70..=0x73 | 0x80..=0x85
        | 0x90..=0x9F | 0xB0..=0xB7 | 0xF1..=0xF5 | 0xFF | 0x100..=0x108 | 0x118)
        && msr <= HV_LAST
}

/// MSRs whose value is a GPA the VMM may write to.
fn holds_gpa(msr: u32) -> bool {
    matches!(
        msr,
        HYPERCALL
            | REFERENCE_TSC
            | VP_ASSIST_PAGE
            | SIEFP
            | SIMP
            | SIRBP
            | SYNDBG_SEND_BUFFER
            | SYNDBG_RECV_BUFFER
            | SYNDBG_PENDING_BUFFER
    )
}

#[derive(Default)]
struct Stats {
    accesses: u64,
    gp: u64,
    other_vector: u64,
    reads_ok: u64,
    writes_ok: u64,
    skipped: u64,
    hypercalls: u64,
    ud: u64,
    statuses: u64,
    successes: u64,
}

impl Stats {
    /// A faulting MSR access: #GP expected, anything else is "other".
    fn msr_fault(&mut self, vector: u8) {
        match vector {
            GP => self.gp += 1,
            _ => self.other_vector += 1,
        }
    }

    /// A faulting hypercall: #UD expected, anything else is "other".
    fn hypercall_fault(&mut self, vector: u8) {
        match vector {
            UD => self.ud += 1,
            _ => self.other_vector += 1,
        }
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        let i = (self.next() % items.len() as u64) as usize;
        // `i < len`; `get` keeps a bounds-check panic path out of the image.
        match items.get(i) {
            Some(v) => *v,
            None => items[0],
        }
    }
}

fn main(boot: BootInfo) -> ! {
    idt::install();
    let p0 = param(0);
    let seed = match join(p0.eax, p0.ebx) {
        0 => DEFAULT_SEED,
        s => s,
    };
    let hypercalls = match p0.ecx {
        0 => DEFAULT_HYPERCALLS,
        n => n,
    };
    let random_msrs = match p0.edx {
        0 => DEFAULT_RANDOM_MSRS,
        n => n,
    };
    let mut rng = XorShift(seed);
    let mut st = Stats::default();
    let ram_top = boot.ram_top;

    let safe_gpa = |value: u64| {
        let page = value & !0xFFF;
        value == 0
            || page == MSR_PAGE.addr()
            || page >= NO_RAM_ABOVE
            || (page >= ram_top && page < FOUR_GIB)
    };

    // Phase 1: MSRs.
    for msr in (HV_BASE..=HV_LAST).chain(EXTRA_MSRS) {
        if msr == GUEST_IDLE {
            continue;
        }
        st.accesses += 1;
        let read = rdmsr_safe(msr);
        match read {
            Ok(_) => st.reads_ok += 1,
            Err(v) => st.msr_fault(v),
        }
        if msr == RESET || msr == ICR {
            continue;
        }
        let full = [
            u64::MAX,
            0x8000_0000_0000_0001,
            read.unwrap_or(0) ^ 0xFFFF,
            ram_top | 1,
            MSR_PAGE.addr() | PAGE_ENABLE,
            0,
        ];
        let with_os_id = [full[0], full[1], full[2], full[3], full[4], full[5], HVKVM_GUEST_OS_ID];
        let values: &[u64] = if msr == CRASH_CTL {
            &[0]
        } else if msr == GUEST_OS_ID {
            &with_os_id
        } else if is_defined(msr) {
            &full
        } else {
            &[u64::MAX, 0]
        };
        for &value in values {
            if holds_gpa(msr) && !safe_gpa(value) {
                st.skipped += 1;
                continue;
            }
            st.accesses += 1;
            // SAFETY: the exclusions above keep the VMM from resetting the VM, sending IPIs or
            // writing anywhere but MSR_PAGE.
            match unsafe { wrmsr_safe(msr, value) } {
                Ok(()) => st.writes_ok += 1,
                Err(v) => st.msr_fault(v),
            }
        }
    }

    // Phase 2: hypercalls.
    // SAFETY: the VMM writes its hypercall code into HYPERCALL_PAGE, used for nothing else.
    let enabled = unsafe {
        wrmsr_safe(GUEST_OS_ID, HVKVM_GUEST_OS_ID).is_ok()
            && wrmsr_safe(HYPERCALL, HYPERCALL_PAGE.addr() | PAGE_ENABLE).is_ok()
    } && rdmsr_safe(HYPERCALL).is_ok_and(|v| v & PAGE_ENABLE != 0);
    if enabled {
        let [input, output, _spill] = &IO_PAGES;
        let (inp, out) = (input.addr(), output.addr());
        let inputs = [inp, inp + 8, inp + 3, inp + 0xFF8, IMAGE_BASE, ram_top, 0xFFFF_FFFF_F000, 1 << 51, 0];
        let outputs =
            [out, out + 8, out + 3, out + 0xFF8, ram_top, 0xFFFF_FFFF_F000, 1 << 51, 0xFFFF_FFFF_FFFF_F000];
        const CODES: [u64; 24] = [
            0x0001, 0x0002, 0x0003, 0x0008, 0x000B, 0x0013, 0x0014, 0x0015, 0x0050, 0x0051, 0x005C,
            0x005D, 0x0069, 0x006A, 0x006B, 0x00AF, 0x00B0, 0x00C0, 0x00C1, 0x8001, 0x8002, 0x8003,
            0x0000, 0xFFFF,
        ];
        // Bits KVM treats as reserved: 31:27, 47:44, 63:60.
        const RESERVED: u64 = 0xF000_F000_F800_0000;
        for _ in 0..hypercalls {
            let r = rng.next();
            let mut control = if r & 3 == 0 { (r >> 8) & 0xFFFF } else { rng.pick(&CODES) };
            let fast = r & (1 << 20) != 0;
            if fast {
                control |= HC_FAST;
            }
            if (r >> 21) & 3 == 0 {
                control |= ((r >> 24) & 0x3FF) << HC_VARHEAD_SHIFT;
            }
            control |= match (r >> 34) & 3 {
                1 => 1 + ((r >> 40) & 7),
                2 => (r >> 40) & 0xFFF,
                _ => 0,
            } << HC_REP_COUNT_SHIFT;
            if (r >> 52) & 7 == 0 {
                control |= ((r >> 12) & 0xFFF) << HC_REP_START_SHIFT;
            }
            if (r >> 55) & 7 == 0 {
                control |= rng.next() & RESERVED;
            }
            let (rdx, r8) = if fast {
                (rng.next(), rng.next())
            } else {
                for i in 0..8 {
                    input.write_u64(8 * i, rng.next());
                }
                (rng.pick(&inputs), rng.pick(&outputs))
            };
            st.hypercalls += 1;
            // SAFETY: every output GPA is in IO_PAGES (output or spill page) or not RAM.
            match unsafe { hypercall_raw(&HYPERCALL_PAGE, control, rdx, r8) } {
                Ok(rax) => {
                    let status = rax.status();
                    if status < 64 {
                        st.statuses |= 1 << status;
                    }
                    if status == 0 {
                        st.successes += 1;
                    }
                }
                Err(v) => st.hypercall_fault(v),
            }
        }
    }

    // Phase 3: random MSR accesses, mostly to MSRs the TLFS defines (the rest of the range
    // only ever gives #GP).
    let swept = (HV_LAST - HV_BASE + 1) as u64;
    let mut defined = [0u32; (HV_LAST - HV_BASE + 1) as usize];
    let mut n_defined = 0;
    for msr in HV_BASE..=HV_LAST {
        if is_defined(msr) {
            if let Some(slot) = defined.get_mut(n_defined) {
                *slot = msr;
                n_defined += 1;
            }
        }
    }
    let defined = &defined[..n_defined];
    for _ in 0..random_msrs {
        let r = rng.next();
        let msr = match r % 5 {
            0..=2 => rng.pick(defined),
            3 => {
                let i = (r >> 8) % (swept + EXTRA_MSRS.len() as u64);
                match i.checked_sub(swept) {
                    None => HV_BASE + i as u32,
                    Some(extra) => EXTRA_MSRS.get(extra as usize).copied().unwrap_or(HV_BASE),
                }
            }
            _ => HV_BASE | ((r >> 8) as u32 & 0xFFFF),
        };
        if msr == GUEST_IDLE {
            continue;
        }
        st.accesses += 1;
        if (r >> 32) % 3 == 0 || msr == RESET || msr == ICR {
            match rdmsr_safe(msr) {
                Ok(_) => st.reads_ok += 1,
                Err(v) => st.msr_fault(v),
            }
            continue;
        }
        let value = match (r >> 40) % 5 {
            0 => rng.next(),
            1 => ram_top | 1,
            2 => MSR_PAGE.addr() | PAGE_ENABLE,
            3 => rng.next() | 1,
            _ => 0,
        };
        let value = if msr == CRASH_CTL { 0 } else { value };
        if holds_gpa(msr) && !safe_gpa(value) {
            st.skipped += 1;
            continue;
        }
        // SAFETY: the same exclusions as phase 1: no reset, no IPI, no crash notification, and
        // GPA-holding MSRs only point at MSR_PAGE or outside RAM.
        match unsafe { wrmsr_safe(msr, value) } {
            Ok(()) => st.writes_ok += 1,
            Err(v) => st.msr_fault(v),
        }
    }

    let phase4 = hostile_synic(ram_top);

    guest_sync!(1, st.accesses, st.gp, st.hypercalls, st.ud, st.statuses);
    guest_sync!(2, st.reads_ok, st.writes_ok, st.skipped, st.other_vector, enabled, st.successes);
    guest_sync!(3, phase4[0], phase4[1], phase4[2], phase4[3], phase4[4]);
    guest_done!()
}

/// Phase 4: (present, SINT #GPs, writes ok, other faults, STIMER2_COUNT).
fn hostile_synic(ram_top: u64) -> [u64; 5] {
    use hvkvm_guest::hyperv::{SCONTROL, SINT0, STIMER0_CONFIG, STIMER0_COUNT, TIME_REF_COUNT};
    let mut r = [0u64; 5];
    if rdmsr_safe(SCONTROL).is_err() {
        return r;
    }
    r[0] = 1;
    let write = |msr: u32, value: u64, r: &mut [u64; 5]| {
        // SAFETY: the only GPA written is outside RAM; the timers' interrupts stay pending
        // (interrupts off, LAPIC software-disabled).
        match unsafe { wrmsr_safe(msr, value) } {
            Ok(()) => r[2] += 1,
            Err(_) => r[3] += 1,
        }
    };
    write(SIMP, ram_top | PAGE_ENABLE, &mut r);
    write(SCONTROL, 1, &mut r);
    write(SINT0 + 2, 0x50, &mut r);
    write(STIMER0_COUNT, 1, &mut r);
    write(STIMER0_CONFIG, 1 | 2 << 16, &mut r);
    write(hvkvm_guest::hyperv::EOM, 0, &mut r);
    for vector in 0..16 {
        // SAFETY: a SINT value; #GP expected.
        if unsafe { wrmsr_safe(SINT0 + 3, vector) }.is_err() {
            r[1] += 1;
        }
    }
    write(STIMER0_COUNT + 2, 1, &mut r);
    write(STIMER0_CONFIG + 2, 1 | 2 | 1 << 12 | 0x50 << 4, &mut r);
    let until = rdmsr_safe(TIME_REF_COUNT).unwrap_or(0) + 100_000;
    while rdmsr_safe(TIME_REF_COUNT).is_ok_and(|t| t < until) {}
    write(STIMER0_COUNT + 4, u64::MAX, &mut r);
    write(STIMER0_CONFIG + 4, 1 | 2 | 2 << 16, &mut r);
    r[4] = rdmsr_safe(STIMER0_COUNT + 4).unwrap_or(0);
    for n in 0..4 {
        write(STIMER0_CONFIG + 2 * n, 0, &mut r);
    }
    write(SCONTROL, 0, &mut r);
    write(SIMP, 0, &mut r);
    r
}
