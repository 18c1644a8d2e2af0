//! Dropping a vCPU to CPL3 (user mode) for good, to run code there as an application would.
//!
//! Why: on the test hosts CPL0 guest code is emulated instruction by instruction (µs each), while
//! CPL3 guest code runs natively (/work/shared/test-host.md). Anything that must be measured at
//! native speed, or that real guests do from user space (Linux's vDSO and Windows' QPC read the
//! reference TSC page at CPL3), belongs at CPL3.
//!
//! [`enter_user_mode`] does, at CPL0:
//! 1. GDT: copies the boot GDT (the contract's, at 0x500, found with SGDT) into a static GDT of
//!    this module and adds a user data segment ([`USER_DS`], DPL 3), a 64-bit user code segment
//!    ([`USER_CS`], DPL 3) and an available 64-bit TSS ([`TSS_SELECTOR`]) whose RSP0 is the
//!    CPL0 stack pointer at the call and whose I/O bitmap allows every port; LGDT, LTR.
//!    Selectors 0x10 (code) and 0x18 (data) keep their descriptors, so CPL0 code (exception
//!    handlers) works as before.
//! 2. Paging: sets the U/S bit (bit 2) at every level of the identity mapping (CR3 → PML4 → PDPT
//!    → PD, 2 MiB pages in the contract; 1 GiB and 4 KiB leaves are handled too) on the path to
//!    every page of the payload image `[__image_start, __image_end)`, which holds the code, the
//!    statics, the user stack of this module and any static page (a reference TSC page, say),
//!    then reloads CR3. [`allow_user_access`] does the same for other ranges.
//! 3. `iretq` to `entry(arg)` at CPL3 on [`USER_STACK`], with RFLAGS = IOPL 3 | bit 1: interrupts
//!    stay off, and `in`/`out` (hence ucalls, the UART, the test-exit port) keep working at CPL3.
//!
//! Port I/O at CPL3 is allowed twice over: by IOPL 3, and by the TSS's I/O permission bitmap,
//! which allows every port. The bitmap is what makes it work on the test hosts: there (kvm_pvm)
//! CPL3 guest code runs on the hardware at CPL3 with the *hardware* IOPL 0, so `in`/`out` fault
//! into KVM, whose instruction emulator decides; with IOPL 3 alone the ucall `out` got #GP
//! (measured), presumably because the emulator sees the hardware IOPL. When IOPL is insufficient
//! the emulator consults the guest TSS's I/O bitmap, as a CPU does, and that works.
//!
//! Limitations:
//! - One way: there is no way back to CPL0 (no syscall entry, no call gate). The CPL3 code reports
//!   through ucall SYNC and ends with ucall DONE (or ASSERT), all of them `out` instructions.
//!   What it needs from CPL0 (parameters, MSR values) must be gathered before, and handed over
//!   through `arg` or statics. After DONE/ASSERT the ucall helpers execute `cli; hlt`: `hlt` at
//!   CPL3 raises #GP, which is harmless once the VM has stopped.
//! - Privileged instructions (`rdmsr`, `wrmsr`, `mov cr`, `hlt`, `lgdt`...) raise #GP at CPL3.
//!   An exception at CPL3 is delivered on the TSS's RSP0 (the CPL0 stack of the caller, dead by
//!   then) to the IDT, so install [`crate::idt`] first: its handler reports "unexpected CPU
//!   exception" as an ASSERT (measured on the test hosts: a #GP at CPL3 arrived as that ASSERT,
//!   with the CPL3 RIP); without an IDT the VM triple-faults. `idt::catch` and the `*_safe`
//!   helpers are untested at CPL3.
//! - On the test hosts CPUID executed at CPL3 is native: it returns the *host's* leaves, not the
//!   VMM's, so [`crate::hyperv::param`] must be read at CPL0, before the switch.
//! - One vCPU, once: the GDT, TSS and user stack are statics of this module, and LTR of the one
//!   TSS descriptor marks it busy (a second LTR would #GP). A second call ends the test with an
//!   ASSERT.
//! - Only the memory made user-accessible is reachable at CPL3: the image (always) and what
//!   [`allow_user_access`] added. The vCPU stack slots at the top of RAM are not, unless added.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::ptr::addr_of;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::x86::{read_cr3, read_cs, read_rsp};

/// User data segment selector (GDT index 6, RPL 3).
pub const USER_DS: u16 = 0x30 | 3;
/// 64-bit user code segment selector (GDT index 7, RPL 3).
pub const USER_CS: u16 = 0x38 | 3;
/// This module's TSS (GDT indices 8 and 9).
pub const TSS_SELECTOR: u16 = 0x40;
/// RFLAGS at CPL3: IOPL = 3 (bits 12-13) so that port I/O is allowed, bit 1 (always one),
/// IF clear.
pub const USER_RFLAGS: u64 = (3 << 12) | (1 << 1);
/// Size of [`USER_STACK`].
pub const USER_STACK_SIZE: usize = 16 * 1024;

/// GDT slots: the boot GDT's six (null, unused, code 0x10, data 0x18, boot TSS 0x20/0x28), user
/// data 0x30, user code 0x38, this module's TSS 0x40/0x48.
const GDT_ENTRIES: usize = 10;
/// How many leading slots are copied from the boot GDT at most.
const BOOT_GDT_ENTRIES: usize = 6;
/// Present, DPL 3, data read/write accessed, D/B = 1, G = 1, limit 0xFFFFF.
const USER_DATA_DESC: u64 = 0x00cf_f300_0000_ffff;
/// Present, DPL 3, code execute/read accessed, L = 1 (64-bit), G = 1, limit 0xFFFFF.
const USER_CODE_DESC: u64 = 0x00af_fb00_0000_ffff;
/// Size of the 64-bit TSS proper.
const TSS_HEADER: usize = 104;
/// The I/O permission bitmap: one bit per port (65,536 ports), all clear (allowed), plus the
/// terminating 0xFF byte the architecture requires after it.
const IO_BITMAP_BYTES: usize = 65536 / 8 + 1;
/// The whole TSS segment: header, then the I/O bitmap.
const TSS_SIZE: usize = TSS_HEADER + IO_BITMAP_BYTES;
/// Offset of RSP0 in the TSS.
const TSS_RSP0: usize = 4;
/// Offset of the I/O map base field in the TSS.
const TSS_IOMAP_BASE: usize = 102;

/// Page-table entry bits.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_USER: u64 = 1 << 2;
const PTE_HUGE: u64 = 1 << 7;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

#[repr(C, align(16))]
struct Gdt(UnsafeCell<[u64; GDT_ENTRIES]>);
#[repr(C, align(16))]
struct Tss(UnsafeCell<[u8; TSS_SIZE]>);
/// The CPL3 stack [`enter_user_mode`] uses.
#[repr(C, align(16))]
pub struct UserStack(UnsafeCell<[u8; USER_STACK_SIZE]>);

// SAFETY: written once by `enter_user_mode` (guarded by ENTERED) before the CPU uses them.
unsafe impl Sync for Gdt {}
// SAFETY: as for `Gdt`.
unsafe impl Sync for Tss {}
// SAFETY: only the one CPL3 thread of execution uses it, as its stack.
unsafe impl Sync for UserStack {}

static GDT: Gdt = Gdt(UnsafeCell::new([0; GDT_ENTRIES]));
static TSS: Tss = Tss(UnsafeCell::new([0; TSS_SIZE]));
/// The user-mode stack (in .bss, hence inside the image and made user-accessible with it).
pub static USER_STACK: UserStack = UserStack(UnsafeCell::new([0; USER_STACK_SIZE]));
static ENTERED: AtomicBool = AtomicBool::new(false);

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

#[repr(C, packed)]
struct DescriptorTablePointer {
    limit: u16,
    base: u64,
}

/// The current privilege level (CS & 3). Works at any CPL (`mov r, cs` is unprivileged).
#[inline(always)]
pub fn cpl() -> u8 {
    (read_cs() & 3) as u8
}

/// Sets the U/S bit at every paging level on the path to each page of `[start, end)` in the
/// current page tables (identity mapped: table addresses are used as pointers), then reloads CR3.
/// Must run at CPL0. Pages must be mapped (an unmapped one ends the test with an ASSERT).
pub fn allow_user_access(start: u64, end: u64) {
    let root = read_cr3() & PTE_ADDR;
    let mut va = start;
    while va < end {
        // One entry of a table: the index for `va` at the level whose entries cover 2^shift bytes.
        let entry = |table: u64, shift: u32| (table + ((va >> shift) & 511) * 8) as *mut u64;
        let mut table = root;
        let mut step = 0;
        for (level, shift) in [(4u32, 39u32), (3, 30), (2, 21), (1, 12)] {
            let e = entry(table, shift);
            // SAFETY: `e` is an entry of a live page table (identity mapped, writable at CPL0);
            // adding U/S only widens who may access the memory it maps.
            let value = unsafe { e.read_volatile() };
            if value & PTE_PRESENT == 0 {
                crate::ucall::assert_fail(
                    file!(),
                    line!(),
                    "allow_user_access: page not mapped",
                    va,
                    u64::from(level),
                );
            }
            // SAFETY: as above.
            unsafe { e.write_volatile(value | PTE_USER) };
            if level == 1 || (level <= 3 && value & PTE_HUGE != 0) {
                step = 1u64 << shift;
                break;
            }
            table = value & PTE_ADDR;
        }
        // Next page boundary of the leaf just updated.
        va = (va & !(step - 1)).wrapping_add(step);
        if va == 0 {
            break;
        }
    }
    // SAFETY: reloading CR3 with its own value only flushes the TLB.
    unsafe { asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags)) };
}

/// Loads this module's GDT (the boot GDT plus user segments and a TSS with RSP0 = `rsp0`) and
/// its TSS. Called once, at CPL0.
fn load_gdt_and_tss(rsp0: u64) {
    let mut current = DescriptorTablePointer { limit: 0, base: 0 };
    // SAFETY: SGDT only stores the GDTR into `current`.
    unsafe { asm!("sgdt [{}]", in(reg) &raw mut current, options(nostack, preserves_flags)) };
    let (boot_base, boot_limit) = (current.base, current.limit);
    let copied = ((usize::from(boot_limit) + 1) / 8).min(BOOT_GDT_ENTRIES);

    let tss = TSS.0.get().cast::<u8>();
    // The I/O bitmap itself is .bss, hence already zero: every port allowed.
    // SAFETY: the TSS is our own TSS_SIZE-byte static, not in use yet; RSP0 (offset 4) is
    // unaligned by definition, hence write_unaligned.
    unsafe {
        tss.add(TSS_RSP0).cast::<u64>().write_unaligned(rsp0);
        tss.add(TSS_IOMAP_BASE)
            .cast::<u16>()
            .write_unaligned(TSS_HEADER as u16);
        tss.add(TSS_SIZE - 1).write_volatile(0xFF);
    }
    let tss_base = tss as u64;
    let tss_limit = (TSS_SIZE - 1) as u64;
    // Available 64-bit TSS (type 9), present, DPL 0.
    let tss_low = (tss_limit & 0xffff)
        | ((tss_base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((tss_limit >> 16) & 0xf) << 48)
        | (((tss_base >> 24) & 0xff) << 56);
    let tss_high = tss_base >> 32;

    let gdt = GDT.0.get().cast::<u64>();
    // SAFETY: indices < GDT_ENTRIES; the boot GDT is `copied` 8-byte entries at `boot_base`
    // (identity mapped); our GDT is not loaded yet.
    unsafe {
        for i in 0..copied {
            gdt.add(i)
                .write_volatile((boot_base as *const u64).add(i).read_volatile());
        }
        gdt.add(usize::from(USER_DS >> 3))
            .write_volatile(USER_DATA_DESC);
        gdt.add(usize::from(USER_CS >> 3))
            .write_volatile(USER_CODE_DESC);
        gdt.add(usize::from(TSS_SELECTOR >> 3))
            .write_volatile(tss_low);
        gdt.add(usize::from(TSS_SELECTOR >> 3) + 1)
            .write_volatile(tss_high);
    }
    let gdtr = DescriptorTablePointer {
        limit: (GDT_ENTRIES * 8 - 1) as u16,
        base: gdt as u64,
    };
    // SAFETY: the new GDT holds the same descriptors at the selectors in use (CS 0x10, data
    // 0x18, TR 0x20), so the loaded segment registers stay consistent; it lives forever. LTR
    // loads our (available) TSS and marks it busy.
    unsafe {
        asm!("lgdt [{}]", in(reg) &gdtr, options(readonly, nostack, preserves_flags));
        asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nomem, nostack, preserves_flags));
    }
}

/// Drops this vCPU to CPL3 and runs `entry(arg)` there, on [`USER_STACK`]; never returns (see the
/// module documentation for what it sets up and for the limitations). Must run at CPL0, once.
/// Install [`crate::idt`] first if faults at CPL3 should become ASSERTs instead of a triple
/// fault.
pub fn enter_user_mode(entry: extern "sysv64" fn(u64) -> !, arg: u64) -> ! {
    if ENTERED.swap(true, Ordering::Relaxed) {
        crate::ucall::assert_fail(file!(), line!(), "enter_user_mode called twice", 0, 0);
    }
    // Exceptions at CPL3 land on the stack this function runs on: nothing on it is used again.
    load_gdt_and_tss(read_rsp() & !15);
    let (image_start, image_end) = (addr_of!(__image_start) as u64, addr_of!(__image_end) as u64);
    allow_user_access(image_start, image_end);
    // As if `entry` had been called: RSP + 8 is 16-byte aligned at its first instruction.
    let user_rsp = USER_STACK.0.get() as u64 + USER_STACK_SIZE as u64 - 8;
    // SAFETY: the GDT just installed holds the DPL 3 segments, `user_rsp` is the top of a
    // user-accessible stack and `entry` lies in the image, which is user-accessible.
    unsafe { iret_to_user(entry, arg, user_rsp) }
}

/// Enters `entry(arg)` at CPL3 on `user_rsp` with interrupts off (RFLAGS = [`USER_RFLAGS`]),
/// DS/ES/FS/GS loaded with the user data selector (valid at CPL3; bases stay 0).
///
/// # Safety
/// The loaded GDT must hold [`USER_CS`] and [`USER_DS`] as DPL 3 segments, and the pages of
/// `entry` and of the stack below `user_rsp` must be user-accessible. Nothing returns here.
pub unsafe fn iret_to_user(entry: extern "sysv64" fn(u64) -> !, arg: u64, user_rsp: u64) -> ! {
    // SAFETY: the caller guarantees the segments, the code and the stack (above).
    unsafe {
        asm!(
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov fs, {ds:x}",
            "mov gs, {ds:x}",
            "push {ds}",
            "push {rsp}",
            "push {flags}",
            "push {cs}",
            "push {rip}",
            "iretq",
            ds = in(reg) u64::from(USER_DS),
            rsp = in(reg) user_rsp,
            flags = in(reg) USER_RFLAGS,
            cs = in(reg) u64::from(USER_CS),
            rip = in(reg) entry as usize as u64,
            in("rdi") arg,
            options(noreturn),
        )
    }
}
