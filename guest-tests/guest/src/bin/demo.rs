//! The guest `hvkvm demo` runs (on 2 vCPUs by default, with Hyper-V enlightenments).
//!
//! Every vCPU looks at the hypervisor it runs on, the way a Hyper-V guest does, and prints what
//! it sees on COM1:
//! - the hypervisor leaf 0x4000_0000 as raw-cpuid identifies it ("Microsoft Hv" is Hyper-V) and
//!   the interface signature of 0x4000_0001 ("Hv#1");
//! - its VP index (HV_X64_MSR_VP_INDEX), read only when 0x4000_0003 grants AccessVpIndex;
//! - the reference TSC page (vCPU 0 enables it with HV_X64_MSR_REFERENCE_TSC when
//!   AccessPartitionReferenceTsc is granted): sequence, scale, offset and the time it gives,
//!   and TIME_REF_COUNT (AccessPartitionReferenceCounter) next to it.
//!
//! vCPU 0 waits (bounded) until every vCPU has reported, reads the page and the MSR once more
//! to show that reference time advanced, and, when 0x4000_0003 grants the synthetic timers
//! with direct mode, enables the SynIC and arms synthetic timer 0 in direct mode (vector
//! [`TIMER_VECTOR`], one-shot, due [`TIMER_DELAY`] from now) and waits (bounded) for its
//! interrupt. It ends the VM with exit status 0 through the test-exit port (status 1 if some
//! vCPU never reported).
//!
//! The same facts go to the host as ucall SYNCs, which `hvkvm demo` decodes (its JSON and
//! its checks come from these, not from the text):
//! - SYNC 1 (each vCPU) = (vCPU index, initial APIC id, hypervisor as raw-cpuid identifies it
//!   (0 none, 1 Hyper-V, 2 KVM, 3 another), vendor EBX | ECX << 32, vendor EDX | max leaf << 32,
//!   0x4000_0001 EAX);
//! - SYNC 2 (each vCPU) = (VP index, or u64::MAX when not granted, 0x4000_0003 EAX, EBX, EDX,
//!   0x4000_0004 EAX, 0);
//! - SYNC 3 (each vCPU) = (TscSequence, TscScale, TscOffset, the page's time or u64::MAX when
//!   the page is invalid or not granted, TIME_REF_COUNT or u64::MAX when not granted, RDTSC);
//! - SYNC 4 (vCPU 0, at the end) = (first page time, last page time, first TIME_REF_COUNT, last
//!   TIME_REF_COUNT, TSC ticks between the two page reads, TSC_FREQUENCY or 0);
//! - SYNC 5 (vCPU 0, only when direct-mode timers are granted) = (1 if the timer's interrupt
//!   came, the expiration time it was armed for, TIME_REF_COUNT in the interrupt handler,
//!   interrupts taken on the vector, the vector, timer 0's CONFIG afterwards).
//!
//! Times are in the reference time's 100 ns units. Nothing here faults when an enlightenment
//! is missing: every MSR is read only when CPUID grants it.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hvkvm_guest::hyperv::{
    read_tsc_page, tsc_page_params, Page, PAGE_ENABLE, REFERENCE_TSC, TIME_REF_COUNT,
    TSC_FREQUENCY, VP_INDEX,
};
use hvkvm_guest::synic::{self, direct_config};
use hvkvm_guest::uart::{Uart, CONSOLE};
use hvkvm_guest::x86::{cpuid, rdmsr, rdtsc, wrmsr, CpuidResult};
use hvkvm_guest::{guest_sync, halt_forever, intr, spin_wait, test_exit, BootInfo};
use hyperv_tlfs::cpuid::{
    feature, privilege, INTERFACE_SIGNATURE, LEAF_FEATURES, LEAF_INTERFACE, LEAF_RECOMMENDATIONS,
    LEAF_VENDOR_AND_MAX,
};
use raw_cpuid::{CpuId, Hypervisor};

hvkvm_guest::entry!(main);

/// The reference TSC page; the VMM writes it once vCPU 0 enables it.
static TSC_PAGE: Page = Page::zeroed();
/// vCPU 0 has enabled the page (or found that it may not).
static PAGE_READY: AtomicBool = AtomicBool::new(false);
/// vCPUs that printed their lines.
static REPORTED: AtomicU64 = AtomicU64::new(0);

/// "not granted / not valid" in the SYNC values.
const NONE: u64 = u64::MAX;

/// The synthetic timer's interrupt vector (direct mode).
const TIMER_VECTOR: u8 = 0xe0;
/// When the timer is due: 10 ms from arming, in 100 ns units.
const TIMER_DELAY: u64 = 100_000;
/// The bound of the wait for the timer, in TSC cycles (about 2 s at 2.5 GHz).
const TIMER_WAIT: u64 = 5_000_000_000;
/// The SynIC message page (the SynIC must be on for timers; direct mode sends no message).
static SIMP: Page = Page::zeroed();
/// TIME_REF_COUNT when the timer's interrupt came (0: not yet).
static TIMER_FIRED_AT: AtomicU64 = AtomicU64::new(0);

fn on_timer(_vector: u8, _cpu: usize) {
    TIMER_FIRED_AT.store(rdmsr(TIME_REF_COUNT).max(1), Ordering::SeqCst);
}

/// Arms synthetic timer 0 in direct mode and waits for it; the SYNC 5 values.
fn synthetic_timer() -> [u64; 6] {
    intr::install();
    intr::lapic_enable();
    intr::set_hook(TIMER_VECTOR, on_timer);
    synic::enable(&SIMP, None);
    let due = synic::now() + TIMER_DELAY;
    synic::start_timer(0, direct_config(TIMER_VECTOR, false), due);
    let fired = intr::wait_for(TIMER_WAIT, || TIMER_FIRED_AT.load(Ordering::SeqCst) != 0);
    let config = rdmsr(synic::config_msr(0));
    synic::stop_timer(0);
    [
        u64::from(fired),
        due,
        TIMER_FIRED_AT.load(Ordering::SeqCst),
        u64::from(intr::count(0, TIMER_VECTOR)),
        u64::from(TIMER_VECTOR),
        config,
    ]
}

/// What raw-cpuid decodes for the demo: this vCPU's initial APIC id (CPUID.1 EBX[31:24]) and
/// the hypervisor as it identifies leaf 0x4000_0000 (the SYNC 1 code and a name).
fn raw_cpuid_facts() -> (u64, u64, &'static str) {
    let cpuid = CpuId::with_cpuid_reader(|leaf: u32, subleaf: u32| {
        let r = cpuid(leaf, subleaf);
        raw_cpuid::CpuIdResult {
            eax: r.eax,
            ebx: r.ebx,
            ecx: r.ecx,
            edx: r.edx,
        }
    });
    let apic_id = cpuid
        .get_feature_info()
        .map_or(0, |f| u64::from(f.initial_local_apic_id()));
    let (code, name) = match cpuid.get_hypervisor_info().map(|h| h.identify()) {
        None => (0, "none (no hypervisor bit)"),
        Some(Hypervisor::HyperV) => (1, "Hyper-V"),
        Some(Hypervisor::KVM) => (2, "KVM"),
        Some(_) => (3, "another hypervisor"),
    };
    (apic_id, code, name)
}

/// The 12 vendor bytes, made printable: trailing NULs dropped, other bytes outside ASCII
/// printing range shown as '.'.
fn printable(buf: &mut [u8; 12]) -> &[u8] {
    let mut len = buf.len();
    while len > 0 && buf[len - 1] == 0 {
        len -= 1;
    }
    for b in &mut buf[..len] {
        if !(0x20..0x7f).contains(b) {
            *b = b'.';
        }
    }
    &buf[..len]
}

/// Writes `value` (100 ns units) as milliseconds with four decimals.
fn write_ms(uart: &mut Uart, value: u64) {
    uart.write_dec(value / 10_000);
    uart.write_str(".");
    let frac = value % 10_000;
    for digit in [1000, 100, 10, 1] {
        uart.write_byte(b'0' + ((frac / digit) % 10) as u8);
    }
    uart.write_str(" ms");
}

fn main(boot: BootInfo) -> ! {
    let (apic_id, hv_code, hv_name) = raw_cpuid_facts();
    let vendor = cpuid(LEAF_VENDOR_AND_MAX, 0);
    let interface = cpuid(LEAF_INTERFACE, 0).eax;
    let hyperv = hv_code == 1 && interface == INTERFACE_SIGNATURE;
    let features = if hyperv {
        cpuid(LEAF_FEATURES, 0)
    } else {
        CpuidResult::default()
    };
    let granted = |bit: u32| hyperv && features.eax & bit != 0;
    let recommendations = if hyperv {
        cpuid(LEAF_RECOMMENDATIONS, 0).eax
    } else {
        0
    };

    let vp_index = if granted(privilege::VP_INDEX) {
        rdmsr(VP_INDEX)
    } else {
        NONE
    };
    if boot.is_bsp() {
        if granted(privilege::REFERENCE_TSC) {
            // SAFETY: the VMM writes the reference TSC page into TSC_PAGE, which nothing else
            // writes.
            unsafe { wrmsr(REFERENCE_TSC, TSC_PAGE.addr() | PAGE_ENABLE) };
        }
        PAGE_READY.store(true, Ordering::Release);
    } else {
        // Bounded: without vCPU 0 the page just reads as invalid.
        spin_wait(|| PAGE_READY.load(Ordering::Acquire));
    }
    let page = tsc_page_params(&TSC_PAGE);
    let page_time = read_tsc_page(&TSC_PAGE).unwrap_or(NONE);
    let ref_count = if granted(privilege::TIME_REF_COUNT) {
        rdmsr(TIME_REF_COUNT)
    } else {
        NONE
    };
    let tsc = rdtsc();

    guest_sync!(
        1,
        boot.cpu_index,
        apic_id,
        hv_code,
        u64::from(vendor.ebx) | u64::from(vendor.ecx) << 32,
        u64::from(vendor.edx) | u64::from(vendor.eax) << 32,
        interface
    );
    guest_sync!(
        2,
        vp_index,
        features.eax,
        features.ebx,
        features.edx,
        recommendations,
        0
    );
    guest_sync!(3, page.sequence, page.scale, page.offset, page_time, ref_count, tsc);

    {
        let mut vendor_buf = [0u8; 12];
        for (chunk, reg) in vendor_buf
            .chunks_exact_mut(4)
            .zip([vendor.ebx, vendor.ecx, vendor.edx])
        {
            chunk.copy_from_slice(&reg.to_le_bytes());
        }
        let mut uart = CONSOLE.lock();
        uart.write_str("vCPU ");
        uart.write_dec(boot.cpu_index);
        uart.write_str(" of ");
        uart.write_dec(boot.cpu_count);
        uart.write_str(": APIC id ");
        uart.write_dec(apic_id);
        uart.write_str(", hypervisor \"");
        uart.write_bytes(printable(&mut vendor_buf));
        uart.write_str("\" (raw-cpuid: ");
        uart.write_str(hv_name);
        uart.write_str("), interface ");
        uart.write_hex(u64::from(interface));
        uart.write_str(if hyperv { " (\"Hv#1\")" } else { "" });
        uart.write_str(", VP index ");
        if vp_index == NONE {
            uart.write_str("not offered");
        } else {
            uart.write_dec(vp_index);
        }
        uart.write_str("\n  reference TSC page: ");
        if page_time == NONE {
            uart.write_str(if granted(privilege::REFERENCE_TSC) {
                "invalid (sequence 0)"
            } else {
                "not offered"
            });
        } else {
            uart.write_str("sequence ");
            uart.write_dec(u64::from(page.sequence));
            uart.write_str(", scale ");
            uart.write_hex(page.scale);
            uart.write_str(", offset ");
            if page.offset < 0 {
                uart.write_str("-");
            }
            uart.write_dec(page.offset.unsigned_abs());
            uart.write_str(", time ");
            uart.write_dec(page_time);
            uart.write_str(" x 100 ns = ");
            write_ms(&mut uart, page_time);
        }
        uart.write_str("\n  TIME_REF_COUNT: ");
        if ref_count == NONE {
            uart.write_str("not offered");
        } else {
            uart.write_dec(ref_count);
            uart.write_str(" x 100 ns = ");
            write_ms(&mut uart, ref_count);
        }
        uart.write_str("\n");
        // Counted under the lock: when vCPU 0 sees everyone, every line has been written.
        REPORTED.fetch_add(1, Ordering::Release);
    }

    if !boot.is_bsp() {
        halt_forever();
    }

    let all = spin_wait(|| REPORTED.load(Ordering::Acquire) == boot.cpu_count);
    let last_page = read_tsc_page(&TSC_PAGE).unwrap_or(NONE);
    let last_tsc = rdtsc();
    let last_ref = if granted(privilege::TIME_REF_COUNT) {
        rdmsr(TIME_REF_COUNT)
    } else {
        NONE
    };
    let tsc_hz = if granted(privilege::FREQUENCY_MSRS) && features.edx & feature::FREQUENCIES != 0
    {
        rdmsr(TSC_FREQUENCY)
    } else {
        0
    };
    guest_sync!(
        4,
        page_time,
        last_page,
        ref_count,
        last_ref,
        last_tsc.wrapping_sub(tsc),
        tsc_hz
    );

    let timer = (granted(privilege::SYNIC)
        && granted(privilege::SYNTIMERS)
        && features.edx & feature::DIRECT_SYNTHETIC_TIMERS != 0)
        .then(synthetic_timer);
    if let Some(t) = timer {
        guest_sync!(5, t[0], t[1], t[2], t[3], t[4], t[5]);
    }

    let mut uart = CONSOLE.lock();
    if let Some([fired, due, at, ..]) = timer {
        uart.write_str("vCPU 0: synthetic timer 0 (direct mode, vector ");
        uart.write_hex(u64::from(TIMER_VECTOR));
        uart.write_str(") due at ");
        write_ms(&mut uart, due);
        if fired == 1 {
            uart.write_str(", its interrupt came at ");
            write_ms(&mut uart, at);
            uart.write_str("\n");
        } else {
            uart.write_str(": no interrupt\n");
        }
    }
    if page_time != NONE && last_page != NONE {
        uart.write_str("vCPU 0: the TSC page's time advanced by ");
        write_ms(&mut uart, last_page.wrapping_sub(page_time));
        uart.write_str(" while the others reported\n");
    }
    if all {
        uart.write_str("all ");
        uart.write_dec(boot.cpu_count);
        uart.write_str(" vCPUs reported; exiting with status 0\n");
        test_exit(0)
    }
    uart.write_str("only ");
    uart.write_dec(REPORTED.load(Ordering::Acquire));
    uart.write_str(" of ");
    uart.write_dec(boot.cpu_count);
    uart.write_str(" vCPUs reported; exiting with status 1\n");
    test_exit(1)
}
