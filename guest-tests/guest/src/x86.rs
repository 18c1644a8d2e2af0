//! Thin wrappers around the privileged x86 instructions payloads use.
//!
//! All of them are plain integer instructions that KVM's emulator executes (in/out, rdmsr/wrmsr,
//! cpuid, mov from CR, pushf, rdtsc, hlt, pause). Each is a separate `asm!` so that the
//! disassembly of a payload maps one-to-one to what it asked for.

use core::arch::asm;

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension (required by long mode).
pub const CR4_PAE: u64 = 1 << 5;
/// RFLAGS.IF: maskable interrupts enabled.
pub const RFLAGS_IF: u64 = 1 << 9;
/// The EFER MSR.
pub const MSR_EFER: u32 = 0xC000_0080;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// The test-exit port: `out 0xf4, al` ends the VM and hvkvm exits with status AL.
pub const TEST_EXIT_PORT: u16 = 0xf4;
/// The i8042 command port; writing 0xFE resets the VM.
pub const I8042_COMMAND_PORT: u16 = 0x64;

/// Reads a byte from an I/O port.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port input has no effect on memory the compiler knows about; hvkvm's devices are
    // side-effect free to read apart from their own state.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a byte to an I/O port.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: as for `inb`; a port write cannot touch memory the compiler tracks (the ucall port,
    // which makes the host read guest memory, is driven by `ucall` with a memory clobber instead).
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a 32-bit value from an I/O port.
#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: see `inb`.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a 32-bit value to an I/O port.
#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: see `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a model-specific register.
///
/// An MSR that neither KVM nor hvkvm knows raises #GP, which (no IDT) triple-faults the VM.
#[inline(always)]
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reading an MSR has no memory side effects visible to the compiler.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// Writing an MSR can change how the CPU accesses memory (EFER, PAT, APIC base...). The caller
/// must know what the MSR does. No `nomem`: an MSR write may make the host touch guest memory.
#[inline(always)]
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: delegated to the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    };
}

/// The four registers CPUID returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidResult {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// Executes CPUID with EAX = `leaf`, ECX = `subleaf`.
#[inline(always)]
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let (eax, ecx, edx): (u32, u32, u32);
    let rbx: u64;
    // SAFETY: CPUID only writes the four registers. RBX is reserved by LLVM (it can be the base
    // pointer), so it cannot be an asm operand: it is saved in a scratch register around CPUID.
    unsafe {
        asm!(
            "mov {save}, rbx",
            "cpuid",
            "xchg {save}, rbx",
            save = out(reg) rbx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags),
        )
    };
    CpuidResult {
        eax,
        ebx: rbx as u32,
        ecx,
        edx,
    }
}

macro_rules! read_cr {
    ($(#[$doc:meta])* $name:ident, $cr:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub fn $name() -> u64 {
            let value: u64;
            // SAFETY: reading a control register has no side effects at CPL0.
            unsafe { asm!(concat!("mov {}, ", $cr), out(reg) value, options(nomem, nostack, preserves_flags)) };
            value
        }
    };
}

read_cr!(
    /// Reads CR0.
    read_cr0, "cr0"
);
read_cr!(
    /// Reads CR3 (the page-table root).
    read_cr3, "cr3"
);
read_cr!(
    /// Reads CR4.
    read_cr4, "cr4"
);

/// Reads RFLAGS.
#[inline(always)]
pub fn read_rflags() -> u64 {
    let value: u64;
    // SAFETY: pushes and pops one quadword on our own stack (hence no `nostack`).
    unsafe { asm!("pushfq", "pop {}", out(reg) value, options(nomem, preserves_flags)) };
    value
}

/// Reads the CS selector.
#[inline(always)]
pub fn read_cs() -> u16 {
    let value: u16;
    // SAFETY: reading a segment register has no side effects.
    unsafe { asm!("mov {:x}, cs", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Reads the SS selector.
#[inline(always)]
pub fn read_ss() -> u16 {
    let value: u16;
    // SAFETY: reading a segment register has no side effects.
    unsafe { asm!("mov {:x}, ss", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Reads the DS selector.
#[inline(always)]
pub fn read_ds() -> u16 {
    let value: u16;
    // SAFETY: reading a segment register has no side effects.
    unsafe { asm!("mov {:x}, ds", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Reads the current RSP.
#[inline(always)]
pub fn read_rsp() -> u64 {
    let value: u64;
    // SAFETY: copies a register.
    unsafe { asm!("mov {}, rsp", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Reads the time-stamp counter (RDTSC; RDTSCP is not emulated on the test hosts).
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only writes EDX:EAX.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Spin-loop hint.
#[inline(always)]
pub fn pause() {
    // SAFETY: PAUSE has no architectural effect.
    unsafe { asm!("pause", options(nomem, nostack, preserves_flags)) };
}

/// Stops this vCPU for good: interrupts off, then HLT in a loop (an NMI or SMI could wake it).
#[inline(always)]
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: disabling interrupts and halting only affects this vCPU's execution.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Ends the VM with exit status `code` through the test-exit port (hvkvm exits with `code`).
pub fn test_exit(code: u8) -> ! {
    // SAFETY: the write only reaches hvkvm's test-exit device.
    unsafe { asm!("out 0xf4, al", in("al") code, options(nomem, nostack, preserves_flags)) };
    // hvkvm stops the VM on that write; if it ever resumes us, stay put.
    halt_forever()
}

/// Asks the i8042 to reset the machine (hvkvm treats it as a reboot request).
pub fn i8042_reset() -> ! {
    outb(I8042_COMMAND_PORT, 0xFE);
    halt_forever()
}
