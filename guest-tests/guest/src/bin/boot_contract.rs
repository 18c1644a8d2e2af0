//! Checks, on every vCPU, the machine state hvkvm promises at `_start` (guest-tests/README.md):
//! long mode at CPL0 with paging, the flat GDT selectors, interrupts off, the boot arguments, the
//! per-vCPU stack and that RAM is mapped and writable where the contract says it is.
//!
//! Stage 1 (vCPU 0): (cpu_count, ram_top, cr0, cr4, efer, cr3). Then vCPU 0 waits until every vCPU
//! has checked in and reports DONE; the other vCPUs halt after checking in.
//!
//! The stack check uses the exact RSP of `_start`'s first instruction, which `entry!` captures
//! before any Rust code runs (`BootInfo::entry_rsp`), and also checks that a local variable of
//! `main` lies inside this vCPU's 64 KiB slot.
#![no_std]
#![no_main]

use core::hint::black_box;
use core::ptr::{addr_of, read_volatile, write_volatile};
use core::sync::atomic::{AtomicU64, Ordering};

use hvkvm_guest::x86::*;
use hvkvm_guest::{guest_assert, guest_assert_eq, guest_done, guest_sync, halt_forever, spin_wait};
use hvkvm_guest::{BootInfo, FIRST_FREE_RAM, STACK_SLOT_SIZE};

hvkvm_guest::entry!(main);

/// Selectors of hvkvm's flat GDT.
const CODE64_SELECTOR: u16 = 0x10;
const DATA_SELECTOR: u16 = 0x18;
/// Above this much RAM, also probe the page at 1 GiB (mapped by the second page directory).
const ONE_GIB: u64 = 0x4000_0000;

/// vCPUs that finished their checks.
static CHECKED_IN: AtomicU64 = AtomicU64::new(0);
/// Expected content of [`DATA_WORD`].
const DATA_PATTERN: u64 = 0x005E_ED0F_DA7A_0001;
/// Proves that the RW PT_LOAD's file contents were copied. Never written, so the explicit section
/// keeps LLVM from moving it to .rodata, and it is only read with volatile loads (below), so the
/// check cannot be constant-folded away.
#[link_section = ".data.boot_contract"]
static DATA_WORD: u64 = DATA_PATTERN;
/// Proves that hvkvm zeroed the RW PT_LOAD up to p_memsz (the .bss part has no file bytes).
#[link_section = ".bss.boot_contract"]
static BSS_WORD: u64 = 0;

extern "C" {
    /// End of the image (after .bss), defined by link.ld.
    static __image_end: u8;
}

/// Writes `pattern` at `addr` and returns what reads back from there.
fn probe(addr: u64, pattern: u64) -> u64 {
    let p = addr as *mut u64;
    // SAFETY: callers only pass 8-byte aligned addresses in RAM the contract leaves to the payload
    // (the scratch RAM below the image, below the stack area, at 1 GiB) that no other vCPU
    // writes at the same time.
    unsafe {
        write_volatile(p, pattern);
        read_volatile(p)
    }
}

fn main(boot: BootInfo) -> ! {
    let i = boot.cpu_index;
    let n = boot.cpu_count;

    // Long mode with paging: CR0.PE|PG, CR4.PAE, EFER.LME|LMA.
    let cr0 = read_cr0();
    let cr3 = read_cr3();
    let cr4 = read_cr4();
    let efer = rdmsr(MSR_EFER);
    guest_assert_eq!(
        cr0 & (CR0_PE | CR0_PG),
        CR0_PE | CR0_PG,
        "CR0.PE and CR0.PG must be set"
    );
    guest_assert_eq!(cr4 & CR4_PAE, CR4_PAE, "CR4.PAE must be set");
    guest_assert_eq!(
        efer & (EFER_LME | EFER_LMA),
        EFER_LME | EFER_LMA,
        "EFER.LME and EFER.LMA must be set"
    );

    // Flat GDT: 64-bit code at 0x10, data at 0x18 (both RPL 0, i.e. CPL0).
    guest_assert_eq!(read_cs(), CODE64_SELECTOR, "CS must be 0x10");
    guest_assert_eq!(read_ss(), DATA_SELECTOR, "SS must be 0x18");
    guest_assert_eq!(read_ds(), DATA_SELECTOR, "DS must be 0x18");
    guest_assert_eq!(read_rflags() & RFLAGS_IF, 0, "RFLAGS.IF must be clear");

    // Boot arguments.
    guest_assert!(n >= 1 && i < n, "cpu_index must be below cpu_count");
    guest_assert!(boot.ram_top <= 0xC000_0000, "ram_top must not exceed 3 GiB");
    // Only the address of the linker-defined symbol is taken (safe), never its contents.
    let image_end = addr_of!(__image_end) as u64;
    guest_assert!(
        n.checked_mul(STACK_SLOT_SIZE)
            .is_some_and(|s| s < boot.ram_top && boot.ram_top - s >= image_end),
        "the stack area must lie above the image"
    );

    // Stack: RSP = ram_top - i*64K - 8 at entry, inside this vCPU's slot, RSP+8 16-byte aligned.
    let rsp = boot.entry_rsp;
    guest_assert_eq!(
        rsp,
        boot.stack_slot_top() - 8,
        "entry RSP must be ram_top - i*64K - 8"
    );
    guest_assert!(
        rsp >= boot.stack_slot_bottom() && rsp < boot.stack_slot_top(),
        "entry RSP outside the stack slot"
    );
    guest_assert_eq!((rsp + 8) % 16, 0, "RSP+8 must be 16-byte aligned at entry");
    let local = black_box(0u64);
    let local_addr = addr_of!(local) as u64;
    guest_assert!(
        local_addr >= boot.stack_slot_bottom() && local_addr < boot.stack_slot_top(),
        "a local variable lies outside this vCPU's stack slot"
    );

    // The image was loaded: .data has its initial value, .bss is zero.
    // SAFETY: both statics are valid, aligned and never written.
    let (data_word, bss_word) = unsafe {
        (
            read_volatile(addr_of!(DATA_WORD)),
            read_volatile(addr_of!(BSS_WORD)),
        )
    };
    guest_assert_eq!(data_word, DATA_PATTERN, ".data was not loaded");
    guest_assert_eq!(bss_word, 0, ".bss was not zeroed");

    // RAM is mapped and writable: 1 MiB scratch (one word per vCPU, so no two vCPUs share one).
    let pattern = 0xA5A5_0000_0000_0000 | (i << 16) | 0x5A5A;
    let addr = FIRST_FREE_RAM + i * 8;
    guest_assert_eq!(
        probe(addr, pattern),
        pattern,
        "RAM at 1 MiB does not read back"
    );
    if boot.is_bsp() {
        // The last word below the stack area: the top of the RAM a payload may use.
        let below_stacks = boot.stack_area_bottom() - 8;
        guest_assert_eq!(
            probe(below_stacks, !pattern),
            !pattern,
            "RAM below the stack area does not read back"
        );
        // A page in the second GiB, when there is one (it uses another page directory).
        if boot.stack_area_bottom() > ONE_GIB + 8 {
            guest_assert_eq!(
                probe(ONE_GIB, pattern ^ 0xFFFF),
                pattern ^ 0xFFFF,
                "RAM at 1 GiB does not read back"
            );
        }
    }

    CHECKED_IN.fetch_add(1, Ordering::Release);
    if !boot.is_bsp() {
        halt_forever();
    }

    guest_sync!(1, n, boot.ram_top, cr0, cr4, efer, cr3);
    spin_wait(|| CHECKED_IN.load(Ordering::Acquire) == n);
    guest_assert_eq!(
        CHECKED_IN.load(Ordering::Acquire),
        n,
        "not every vCPU passed the checks in time"
    );
    guest_done!()
}
