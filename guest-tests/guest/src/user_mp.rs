//! CPL3 on several vCPUs at once, with a way back to CPL0: what the TLB-flush test needs,
//! where one vCPU reads memory at native speed and another rewrites a page-table entry natively
//! and then issues a hypercall (CPL0 only).
//!
//! [`crate::usermode`] is the simpler one-vCPU, one-way version; this module builds its own
//! GDT with one TSS per vCPU (each TSS has its own CPL0 stack for exceptions from CPL3 and the
//! all-ports I/O bitmap that makes ucalls work at CPL3 on the test hosts, as in `usermode`),
//! and uses [`crate::intr`]'s #UD service calls to return to CPL0 for a moment.
//!
//! Requirements: [`crate::intr::install`] on every vCPU that enters CPL3 (exceptions and
//! service calls go through its IDT); at most [`MAX_CPUS`] vCPUs; [`enter`] once per vCPU.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::ptr::addr_of;
use core::sync::atomic::{AtomicU8, Ordering};

use crate::usermode::{allow_user_access, iret_to_user, USER_CS, USER_DS};
use crate::x86::pause;

/// vCPUs that can enter CPL3 (one TSS each).
pub const MAX_CPUS: usize = 4;
const STACK: usize = 16 * 1024;
const TSS_HEADER: usize = 104;
const IO_BITMAP_BYTES: usize = 65536 / 8 + 1;
const TSS_SIZE: usize = TSS_HEADER + IO_BITMAP_BYTES;
const TSS_RSP0: usize = 4;
const TSS_IOMAP_BASE: usize = 102;
/// Boot GDT slots copied (null, unused, code 0x10, data 0x18, boot TSS 0x20/0x28), user data
/// 0x30, user code 0x38, then a 16-byte TSS descriptor per vCPU from 0x40.
const BOOT_ENTRIES: usize = 6;
const FIRST_TSS: usize = 8;
const GDT_ENTRIES: usize = FIRST_TSS + 2 * MAX_CPUS;
const USER_DATA_DESC: u64 = 0x00cf_f300_0000_ffff;
const USER_CODE_DESC: u64 = 0x00af_fb00_0000_ffff;

#[repr(C, align(16))]
struct Gdt(UnsafeCell<[u64; GDT_ENTRIES]>);
#[repr(C, align(16))]
struct Tss(UnsafeCell<[[u8; TSS_SIZE]; MAX_CPUS]>);
#[repr(C, align(16))]
struct Stacks(UnsafeCell<[[u8; STACK]; MAX_CPUS]>);

// SAFETY: the GDT is written once, under the INIT protocol, before any vCPU loads it.
unsafe impl Sync for Gdt {}
// SAFETY: vCPU i writes only TSS i, before loading it.
unsafe impl Sync for Tss {}
// SAFETY: vCPU i uses only stack i.
unsafe impl Sync for Stacks {}

static GDT: Gdt = Gdt(UnsafeCell::new([0; GDT_ENTRIES]));
static TSS: Tss = Tss(UnsafeCell::new([[0; TSS_SIZE]; MAX_CPUS]));
static USER_STACKS: Stacks = Stacks(UnsafeCell::new([[0; STACK]; MAX_CPUS]));
static KERNEL_STACKS: Stacks = Stacks(UnsafeCell::new([[0; STACK]; MAX_CPUS]));
/// 0: not built, 1: being built, 2: built.
static INIT: AtomicU8 = AtomicU8::new(0);

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

#[repr(C, packed)]
struct DescriptorTablePointer {
    limit: u16,
    base: u64,
}

fn tss_base(cpu: usize) -> u64 {
    // SAFETY: cpu < MAX_CPUS (checked by the callers); pointer arithmetic inside the static.
    unsafe { TSS.0.get().cast::<u8>().add(cpu * TSS_SIZE) as u64 }
}

fn stack_top(stacks: &Stacks, cpu: usize) -> u64 {
    stacks.0.get() as u64 + ((cpu + 1) * STACK) as u64
}

/// Builds the shared GDT once: the boot GDT's descriptors, the user segments, and every
/// vCPU's TSS descriptor.
fn build_gdt() {
    if INIT
        .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        while INIT.load(Ordering::SeqCst) != 2 {
            pause();
        }
        return;
    }
    let mut current = DescriptorTablePointer { limit: 0, base: 0 };
    // SAFETY: SGDT only stores the GDTR into `current`.
    unsafe { asm!("sgdt [{}]", in(reg) &raw mut current, options(nostack, preserves_flags)) };
    let (boot_base, boot_limit) = (current.base, current.limit);
    let copied = ((usize::from(boot_limit) + 1) / 8).min(BOOT_ENTRIES);
    let gdt = GDT.0.get().cast::<u64>();
    // SAFETY: indices < GDT_ENTRIES; the boot GDT is identity mapped; nobody uses our GDT yet.
    unsafe {
        for i in 0..copied {
            gdt.add(i)
                .write_volatile((boot_base as *const u64).add(i).read_volatile());
        }
        gdt.add(usize::from(USER_DS >> 3))
            .write_volatile(USER_DATA_DESC);
        gdt.add(usize::from(USER_CS >> 3))
            .write_volatile(USER_CODE_DESC);
        for cpu in 0..MAX_CPUS {
            let base = tss_base(cpu);
            let limit = (TSS_SIZE - 1) as u64;
            let low = (limit & 0xffff)
                | ((base & 0xff_ffff) << 16)
                | (0x89 << 40)
                | (((limit >> 16) & 0xf) << 48)
                | (((base >> 24) & 0xff) << 56);
            gdt.add(FIRST_TSS + 2 * cpu).write_volatile(low);
            gdt.add(FIRST_TSS + 2 * cpu + 1).write_volatile(base >> 32);
        }
    }
    INIT.store(2, Ordering::SeqCst);
}

/// Drops vCPU `cpu` to CPL3 and runs `entry(arg)` there on its own user stack; never returns.
/// Exceptions at CPL3 (and [`crate::intr::service_call`]) run on the vCPU's own CPL0 stack.
pub fn enter(cpu: usize, entry: extern "sysv64" fn(u64) -> !, arg: u64) -> ! {
    if cpu >= MAX_CPUS {
        crate::ucall::assert_fail(
            file!(),
            line!(),
            "user_mp: vCPU index too large",
            cpu as u64,
            0,
        );
    }
    build_gdt();
    let tss = tss_base(cpu) as *mut u8;
    // SAFETY: this vCPU's TSS, not loaded yet; RSP0 is unaligned by definition.
    unsafe {
        tss.add(TSS_RSP0)
            .cast::<u64>()
            .write_unaligned(stack_top(&KERNEL_STACKS, cpu));
        tss.add(TSS_IOMAP_BASE)
            .cast::<u16>()
            .write_unaligned(TSS_HEADER as u16);
        tss.add(TSS_SIZE - 1).write_volatile(0xff);
    }
    let gdtr = DescriptorTablePointer {
        limit: (GDT_ENTRIES * 8 - 1) as u16,
        base: GDT.0.get() as u64,
    };
    let selector = ((FIRST_TSS + 2 * cpu) * 8) as u16;
    // SAFETY: the new GDT keeps the boot descriptors at the selectors in use; LTR loads this
    // vCPU's own available TSS.
    unsafe {
        asm!("lgdt [{}]", in(reg) &gdtr, options(readonly, nostack, preserves_flags));
        asm!("ltr {0:x}", in(reg) selector, options(nomem, nostack, preserves_flags));
    }
    let (start, end) = (addr_of!(__image_start) as u64, addr_of!(__image_end) as u64);
    allow_user_access(start, end);
    let user_rsp = stack_top(&USER_STACKS, cpu) - 8;
    // SAFETY: this vCPU's GDT (just loaded) holds the DPL 3 segments, its user stack and the
    // image are user-accessible.
    unsafe { iret_to_user(entry, arg, user_rsp) }
}
