//! Exception catching: a 64-bit IDT whose handlers let a payload survive an expected fault.
//!
//! The payload contract gives no IDT (any exception triple-faults). [`install`] loads one with an
//! interrupt gate for each of the 32 architectural vectors (selector 0x10, present, DPL 0,
//! type 0xE, IST 0). Interrupts stay disabled; nothing here enables them.
//!
//! How a fault is caught: code that may fault *arms* the single global recovery record
//! ([`Recovery`]) with a recovery RIP and RSP just before the risky instruction (or call), and
//! disarms it right after. When an exception arrives while the record is armed, the common handler
//! stores the vector, error code and faulting RIP in the record, disarms it, rewrites the
//! interrupted frame's RIP and RSP to the recovery point and returns with `iretq`. The code at the
//! recovery point then sees `vector != NO_FAULT`. This works both for a fault *at* the armed
//! instruction (`rdmsr`, `wrmsr`) and for one deeper inside a call (a hypercall page, a closure).
//!
//! An exception that arrives while nothing is armed is a bug in the payload or the VMM: the handler
//! ends the test with a ucall ASSERT "unexpected CPU exception", a = vector | error code << 32,
//! b = RIP (it does not return).
//!
//! Limits: one recovery record for the whole VM, so at most one vCPU may use the `*_safe`
//! helpers at a time, and they do not nest (a [`catch`] closure must not call `rdmsr_safe`).
//! The IDT itself is shared; every vCPU that wants it calls [`install`] (LIDT is per vCPU).
//!
//! Every helper costs only a handful of instructions besides the one it protects: CPL0 code is
//! emulated instruction by instruction on the test hosts.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::mem::size_of;

/// The value of [`Recovery::vector`] while no fault has been recorded.
pub const NO_FAULT: u64 = u64::MAX;

/// #DE, divide error.
pub const DE: u8 = 0;
/// #UD, invalid opcode.
pub const UD: u8 = 6;
/// #GP, general protection.
pub const GP: u8 = 13;
/// #PF, page fault.
pub const PF: u8 = 14;

/// Vectors that push an error code (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX).
const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// The recovery record shared by the handler and the `*_safe` helpers. Layout (byte offsets are
/// used by the assembly below): armed @0, recovery RIP @8, recovery RSP @16, vector @24,
/// error code @32, faulting RIP @40, number of caught faults @48.
#[repr(C)]
pub struct Recovery {
    armed: u64,
    rip: u64,
    rsp: u64,
    vector: u64,
    error_code: u64,
    fault_rip: u64,
    caught: u64,
}

pub(crate) struct RecoveryCell(UnsafeCell<Recovery>);
// SAFETY: only accessed with volatile reads/writes or from asm, by one vCPU at a time (documented).
unsafe impl Sync for RecoveryCell {}

/// The recovery record (other modules' asm names it with `sym`).
pub(crate) static RECOVERY: RecoveryCell = RecoveryCell(UnsafeCell::new(Recovery {
    armed: 0,
    rip: 0,
    rsp: 0,
    vector: NO_FAULT,
    error_code: 0,
    fault_rip: 0,
    caught: 0,
}));

/// What the handler recorded about a caught exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The exception vector (6 = #UD, 13 = #GP, ...).
    pub vector: u8,
    /// The error code the CPU pushed (0 for vectors without one).
    pub error_code: u64,
    /// RIP of the faulting instruction (for a fault inside a called hypercall page: inside it).
    pub rip: u64,
}

/// Address of the recovery record, for asm operands (see `arm!`).
pub(crate) fn record() -> *mut Recovery {
    RECOVERY.0.get()
}

/// The vector recorded by the last armed region (`NO_FAULT` if it ended without a fault).
#[inline(always)]
fn take_vector() -> u64 {
    // SAFETY: a plain volatile read of our own static.
    unsafe { core::ptr::addr_of!((*record()).vector).read_volatile() }
}

/// The fault recorded by the most recent protected region (`*_safe`, [`catch`], a hypercall):
/// `None` if that region completed without a fault (arming clears the record).
pub fn last_fault() -> Option<Fault> {
    let r = record();
    // SAFETY: volatile reads of our own static.
    unsafe {
        let vector = core::ptr::addr_of!((*r).vector).read_volatile();
        if vector == NO_FAULT {
            return None;
        }
        Some(Fault {
            vector: vector as u8,
            error_code: core::ptr::addr_of!((*r).error_code).read_volatile(),
            rip: core::ptr::addr_of!((*r).fault_rip).read_volatile(),
        })
    }
}

/// How many faults the handler has caught since boot.
pub fn caught_count() -> u64 {
    // SAFETY: volatile read of our own static.
    unsafe { core::ptr::addr_of!((*record()).caught).read_volatile() }
}

/// One 16-byte 64-bit IDT gate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const VECTORS: usize = 32;
/// Present, DPL 0, type 0xE (64-bit interrupt gate: IF is cleared on entry, already clear here).
const GATE_INTERRUPT: u8 = 0x8E;
/// The contract's 64-bit code selector.
const KERNEL_CS: u16 = 0x10;
/// Each stub is padded to this size, so stub `v` is at `stubs + v * STUB_SIZE`.
const STUB_SIZE: u64 = 16;

#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; VECTORS]>);
// SAFETY: written by `install` before LIDT; vCPUs write identical contents.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new(
    [Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    }; VECTORS],
));

#[repr(C, packed)]
struct Idtr {
    limit: u16,
    base: u64,
}

unsafe extern "C" {
    /// First of the 32 exception stubs defined in the `global_asm!` below.
    fn hvkvm_exc_stubs();
}

/// One stub: push a dummy error code when the CPU pushes none, push the vector, jump to the common
/// handler. Padded to `STUB_SIZE` bytes.
macro_rules! stubs {
    ($($v:tt)*) => {
        concat!($(
            ".balign 16\n",
            dummy_error_code!($v),
            "push ", $v, "\n",
            "jmp hvkvm_exc_common\n",
        )*)
    };
}
/// `push 0` for the vectors for which the CPU pushes no error code (must match `has_error_code`).
macro_rules! dummy_error_code {
    (8) => { "" };
    (10) => { "" };
    (11) => { "" };
    (12) => { "" };
    (13) => { "" };
    (14) => { "" };
    (17) => { "" };
    (21) => { "" };
    (29) => { "" };
    (30) => { "" };
    ($v:tt) => { "push 0\n" };
}

// The stubs and the common handler. After `push rax` the stack holds:
//   [rsp+0] saved rax, +8 vector, +16 error code, +24 RIP, +32 CS, +40 RFLAGS, +48 RSP, +56 SS.
// The handled path touches only RAX (restored) and the frame; it returns with IRETQ.
global_asm!(
    ".pushsection .text.hvkvm_exc,\"ax\",@progbits",
    ".balign 16",
    ".globl hvkvm_exc_stubs",
    "hvkvm_exc_stubs:",
    stubs!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31),
    ".balign 16",
    "hvkvm_exc_common:",
    "push rax",
    "cmp qword ptr [rip + {rec}], 0",
    "je 3f",
    "mov qword ptr [rip + {rec}], 0",
    "mov rax, [rsp + 8]",
    "mov [rip + {rec} + 24], rax",
    "mov rax, [rsp + 16]",
    "mov [rip + {rec} + 32], rax",
    "mov rax, [rsp + 24]",
    "mov [rip + {rec} + 40], rax",
    "add qword ptr [rip + {rec} + 48], 1",
    "mov rax, [rip + {rec} + 8]",
    "mov [rsp + 24], rax",
    "mov rax, [rip + {rec} + 16]",
    "mov [rsp + 48], rax",
    "pop rax",
    "add rsp, 16",
    "iretq",
    "3:",
    "mov rdi, [rsp + 8]",
    "mov rsi, [rsp + 16]",
    "mov rdx, [rsp + 24]",
    "mov rcx, cr2",
    "and rsp, -16",
    "call {unexpected}",
    "4:",
    "cli",
    "hlt",
    "jmp 4b",
    ".popsection",
    rec = sym RECOVERY,
    unexpected = sym unexpected_exception,
);

/// Called by the common handler for an exception nobody armed for: ends the test.
extern "sysv64" fn unexpected_exception(vector: u64, error_code: u64, rip: u64, _cr2: u64) -> ! {
    crate::ucall::assert_fail(
        file!(),
        line!(),
        "unexpected CPU exception (a = vector | error code << 32, b = RIP)",
        vector | (error_code << 32),
        rip,
    )
}

/// Fills the IDT (once is enough, but repeating is harmless) and loads it on this vCPU.
pub fn install() {
    let stubs = hvkvm_exc_stubs as *const () as u64;
    let idt = IDT.0.get();
    for v in 0..VECTORS {
        let handler = stubs + v as u64 * STUB_SIZE;
        let gate = Gate {
            offset_low: handler as u16,
            selector: KERNEL_CS,
            ist: 0,
            type_attr: GATE_INTERRUPT,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        };
        // SAFETY: `v < VECTORS`; the IDT is our own static, not yet (or identically) in use.
        unsafe { idt.cast::<Gate>().add(v).write_volatile(gate) };
    }
    let idtr = Idtr {
        limit: (size_of::<[Gate; VECTORS]>() - 1) as u16,
        base: idt as u64,
    };
    // SAFETY: the IDT is fully written and lives forever; its gates point at valid handlers.
    unsafe { asm!("lidt [{}]", in(reg) &idtr, options(readonly, nostack, preserves_flags)) };
    // `has_error_code` documents the stub table above; keep it checked against it.
    const { assert!(has_error_code(13) && !has_error_code(6)) };
}

/// Arms the recovery record with the local label `2:` as recovery RIP and the current RSP; the
/// expansion is a list of asm template lines. Uses `{rec}` (a register operand holding the
/// record's address: `rec = in(reg) idt::record()`; or the register named by the optional second
/// argument, for asm that must use explicit registers) and the scratch register named by the
/// first argument (`"{tmp}"` for an operand, or an explicit register the caller clobbers).
///
/// Why a register operand and not just `sym RECOVERY`: a symbol named only inside an asm
/// template is invisible to LLVM's alias analysis, which could then conclude that no asm writes
/// the (internal) static and reorder the Rust-side reads of the record around the asm. Passing
/// its address as an operand makes it escape, so every asm without `nomem` counts as a writer.
macro_rules! arm {
    ($tmp:literal) => {
        arm!($tmp, "{rec}")
    };
    ($tmp:literal, $rec:literal) => {
        concat!(
            "lea ", $tmp, ", [rip + 2f]\n",
            "mov [", $rec, " + 8], ", $tmp, "\n",
            "mov [", $rec, " + 16], rsp\n",
            "mov qword ptr [", $rec, " + 24], -1\n",
            "mov qword ptr [", $rec, "], 1\n",
        )
    };
}
/// Disarms after the protected instruction and defines the recovery label. Uses `{recsym}`
/// (`recsym = sym RECOVERY`): after a call, no register is known to still hold the address.
macro_rules! disarm {
    () => {
        concat!("mov qword ptr [rip + {recsym}], 0\n", "2:\n")
    };
}
pub(crate) use {arm, disarm};

/// Converts the vector left in the record into `Ok(value)` / `Err(vector)`.
#[inline(always)]
pub(crate) fn outcome<T>(value: T) -> Result<T, u8> {
    match take_vector() {
        NO_FAULT => Ok(value),
        v => Err(v as u8),
    }
}

/// `rdmsr` that returns `Err(vector)` (normally 13, #GP) instead of faulting. Needs [`install`].
#[inline(never)]
pub fn rdmsr_safe(index: u32) -> Result<u64, u8> {
    let (lo, hi): (u32, u32);
    // SAFETY: reading an MSR has no memory side effects; a fault resumes at label 2 with the RSP
    // saved here (the handler only rewrites the frame). EAX/EDX are garbage on that path.
    unsafe {
        asm!(
            arm!("{tmp}"),
            "rdmsr",
            disarm!(),
            rec = in(reg) record(),
            recsym = sym RECOVERY,
            tmp = out(reg) _,
            in("ecx") index,
            out("eax") lo,
            out("edx") hi,
        )
    };
    outcome((u64::from(hi) << 32) | u64::from(lo))
}

/// `wrmsr` that returns `Err(vector)` (normally 13, #GP) instead of faulting. Needs [`install`].
///
/// # Safety
/// As for [`crate::x86::wrmsr`]: the caller must know what the MSR does (an enabled overlay page
/// makes the VMM write guest memory at the GPA in `value`).
#[inline(never)]
pub unsafe fn wrmsr_safe(index: u32, value: u64) -> Result<(), u8> {
    // SAFETY: delegated to the caller; fault recovery as in `rdmsr_safe`.
    unsafe {
        asm!(
            arm!("{tmp}"),
            "wrmsr",
            disarm!(),
            rec = in(reg) record(),
            recsym = sym RECOVERY,
            tmp = out(reg) _,
            in("ecx") index,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
        )
    };
    outcome(())
}

/// Reads the u64 at `addr`, returning `Err(vector)` if the access faults (#GP for a
/// non-canonical address, #PF for an unmapped one). Needs [`install`].
///
/// # Safety
/// Reading `addr` must have no side effect the caller did not intend (MMIO).
#[inline(never)]
pub unsafe fn read_u64_safe(addr: u64) -> Result<u64, u8> {
    let value: u64;
    // SAFETY: delegated to the caller; fault recovery as in `rdmsr_safe`.
    unsafe {
        asm!(
            arm!("{tmp}"),
            "mov {val}, [{addr}]",
            disarm!(),
            rec = in(reg) record(),
            recsym = sym RECOVERY,
            tmp = out(reg) _,
            addr = in(reg) addr,
            val = out(reg) value,
            options(readonly),
        )
    };
    outcome(value)
}

/// Runs `f` and returns its result, or the [`Fault`] of the first exception it raised (`f` is
/// then abandoned at the faulting instruction: nothing after it runs and its captures are leaked,
/// never dropped). Callee-saved registers are restored on both paths. `f` must not use the other
/// `*_safe` helpers (they share the one recovery record) and must not hold a lock when it may
/// fault. Needs [`install`].
pub fn catch<F: FnOnce() -> u64>(f: F) -> Result<u64, Fault> {
    let mut slot = Some(f);
    let mut result = 0u64;
    // SAFETY: the asm saves RSP (realigned to 16 for the call) and every callee-saved register on
    // the stack, arms the record with the RSP that points at those saves, and calls `trampoline`.
    // Both the normal and the recovery path restore them and the original RSP. clobber_abi
    // covers what the call may clobber.
    unsafe {
        asm!(
            "mov rax, rsp",
            "and rsp, -16",
            "push rax",
            "push rax",
            "push rbx",
            "push rbp",
            "push r12",
            "push r13",
            "push r14",
            "push r15",
            arm!("rax", "r11"),
            "call {tramp}",
            disarm!(),
            "pop r15",
            "pop r14",
            "pop r13",
            "pop r12",
            "pop rbp",
            "pop rbx",
            "pop rax",
            "pop rsp",
            recsym = sym RECOVERY,
            tramp = sym trampoline::<F>,
            in("r11") record(),
            in("rdi") &raw mut slot,
            in("rsi") &raw mut result,
            clobber_abi("sysv64"),
        )
    };
    match take_vector() {
        NO_FAULT => Ok(result),
        _ => Err(last_fault().unwrap_or(Fault { vector: 0xFF, error_code: 0, rip: 0 })),
    }
}

/// Called from [`catch`]'s asm: runs the closure and stores its result.
unsafe extern "sysv64" fn trampoline<F: FnOnce() -> u64>(slot: *mut Option<F>, out: *mut u64) {
    // SAFETY: `catch` passes pointers to its live locals.
    unsafe {
        if let Some(f) = (*slot).take() {
            *out = f();
        }
    }
}
