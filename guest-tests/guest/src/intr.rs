//! Interrupts for payloads that need them (SynIC, synthetic timers, IPIs): a 256-vector IDT,
//! the local APIC (xAPIC MMIO at 0xFEE00000, KVM's in-kernel LAPIC), per-vCPU counts of every
//! vector taken, per-vector hooks, and service calls from CPL3.
//!
//! [`install`] loads an IDT whose vectors 0–31 go to [`crate::idt`]'s exception handling (so
//! `rdmsr_safe`, `catch`, hypercall #UD recovery keep working) and whose vectors 32–255 go to
//! one interrupt handler: it counts the vector for this vCPU (by LAPIC ID), runs the vector's
//! hook if one is set, and writes the LAPIC EOI. Interrupts stay disabled until the payload
//! enables them ([`enable_interrupts`], or [`wait_for`] which enables them while it waits).
//!
//! #UD (vector 6) is special: raised at CPL3 it is a *service call* ([`service_call`] executes
//! `ud2`): the CPL0 handler runs the function set with [`set_service`] with the caller's RDI,
//! returns its result in RAX and resumes after the `ud2`. This is the way back from CPL3 that
//! [`crate::usermode`] lacks (`int n` from CPL3 is not usable on the test hosts). At CPL0, #UD
//! goes to `idt` as before.
//!
//! At most [`MAX_CPUS`] vCPUs (LAPIC IDs 0..MAX_CPUS); interrupts of others are handled but
//! not counted.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::mem::size_of;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::x86::{pause, rdtsc};

/// vCPUs whose interrupts are counted.
pub const MAX_CPUS: usize = 4;
/// Where KVM's LAPIC is (xAPIC mode).
pub const LAPIC_BASE: u64 = 0xfee0_0000;
const LAPIC_ID: u64 = 0x20;
const LAPIC_TPR: u64 = 0x80;
const LAPIC_EOI: u64 = 0xb0;
const LAPIC_SVR: u64 = 0xf0;
/// SVR: APIC software enable (bit 8) and spurious vector 0xFF.
const SVR_ENABLE: u32 = 0x1ff;

/// A hook: called with the vector and this vCPU's LAPIC ID, at CPL0, interrupts disabled,
/// before the EOI.
pub type Hook = fn(vector: u8, cpu: usize);
/// A service: called at CPL0 with the CPL3 caller's RDI; its result goes to the caller's RAX.
pub type Service = fn(arg: u64) -> u64;

static COUNTS: [[AtomicU32; 256]; MAX_CPUS] =
    [const { [const { AtomicU32::new(0) }; 256] }; MAX_CPUS];
static HOOKS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
static SERVICE: AtomicUsize = AtomicUsize::new(0);

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

const GATE_INTERRUPT: u8 = 0x8E;
const KERNEL_CS: u16 = 0x10;
const STUB_SIZE: u64 = 16;

#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; 256]>);
// SAFETY: written by `install` before LIDT; every vCPU writes identical contents.
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
    }; 256],
));

#[repr(C, packed)]
struct Idtr {
    limit: u16,
    base: u64,
}

unsafe extern "C" {
    /// `crate::idt`'s 32 exception stubs (16 bytes each).
    fn hvkvm_exc_stubs();
    /// The interrupt stubs for vectors 32..=255 below (16 bytes each).
    fn hvkvm_intr_stubs();
    /// The #UD entry below.
    fn hvkvm_intr_ud();
}

macro_rules! intr_stubs {
    ($($v:tt)*) => {
        concat!($(
            ".balign 16\n",
            "push ", $v, "\n",
            "jmp hvkvm_intr_common\n",
        )*)
    };
}

// Interrupt entry: [rsp] = vector, then the CPU's frame (RIP, CS, RFLAGS, RSP, SS). The
// caller-saved registers are saved around the Rust handler; 9 pushes after the vector keep
// the call 16-byte aligned after `sub rsp, 8` (the CPU aligned RSP before the 40-byte frame).
//
// #UD entry: no error code, [rsp] = RIP, [rsp + 8] = CS. From CPL3 it is a service call;
// from CPL0 it continues at `idt`'s stub for vector 6.
global_asm!(
    ".pushsection .text.hvkvm_intr,\"ax\",@progbits",
    ".balign 16",
    ".globl hvkvm_intr_stubs",
    "hvkvm_intr_stubs:",
    intr_stubs!(
        32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63
        64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95
        96 97 98 99 100 101 102 103 104 105 106 107 108 109 110 111 112 113 114 115 116 117 118 119 120 121 122 123 124 125 126 127
        128 129 130 131 132 133 134 135 136 137 138 139 140 141 142 143 144 145 146 147 148 149 150 151 152 153 154 155 156 157 158 159
        160 161 162 163 164 165 166 167 168 169 170 171 172 173 174 175 176 177 178 179 180 181 182 183 184 185 186 187 188 189 190 191
        192 193 194 195 196 197 198 199 200 201 202 203 204 205 206 207 208 209 210 211 212 213 214 215 216 217 218 219 220 221 222 223
        224 225 226 227 228 229 230 231 232 233 234 235 236 237 238 239 240 241 242 243 244 245 246 247 248 249 250 251 252 253 254 255
    ),
    ".balign 16",
    "hvkvm_intr_common:",
    "push rax",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "mov rdi, [rsp + 72]",
    "sub rsp, 8",
    "call {on_interrupt}",
    "add rsp, 8",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "add rsp, 8",
    "iretq",
    ".balign 16",
    ".globl hvkvm_intr_ud",
    "hvkvm_intr_ud:",
    "test byte ptr [rsp + 8], 3",
    "jz 2f",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "sub rsp, 8",
    "call {service}",
    "add rsp, 8",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    "pop rcx",
    "add qword ptr [rsp], 2",
    "iretq",
    "2:",
    "jmp hvkvm_exc_stubs + 6 * 16",
    ".popsection",
    on_interrupt = sym on_interrupt,
    service = sym run_service,
);

fn lapic_read(offset: u64) -> u32 {
    // SAFETY: the LAPIC page is identity mapped (the contract maps the first 64 GiB) and KVM's
    // in-kernel LAPIC answers it; 32-bit aligned register reads have no side effects here.
    unsafe { ((LAPIC_BASE + offset) as *const u32).read_volatile() }
}

fn lapic_write(offset: u64, value: u32) {
    // SAFETY: as for `lapic_read`; the callers write the registers as the SDM describes.
    unsafe { ((LAPIC_BASE + offset) as *mut u32).write_volatile(value) }
}

/// This vCPU's LAPIC ID (hvkvm: the vCPU index).
pub fn lapic_id() -> usize {
    (lapic_read(LAPIC_ID) >> 24) as usize
}

/// Software-enables this vCPU's LAPIC (spurious vector 0xFF) and accepts every priority.
pub fn lapic_enable() {
    lapic_write(LAPIC_SVR, SVR_ENABLE);
    lapic_write(LAPIC_TPR, 0);
}

/// Signals end of interrupt to this vCPU's LAPIC.
pub fn lapic_eoi() {
    lapic_write(LAPIC_EOI, 0);
}

extern "sysv64" fn on_interrupt(vector: u64) {
    let vector = (vector & 0xff) as usize;
    let cpu = lapic_id();
    if let Some(row) = COUNTS.get(cpu) {
        row[vector].fetch_add(1, Ordering::SeqCst);
    }
    let hook = HOOKS[vector].load(Ordering::SeqCst);
    if hook != 0 {
        // SAFETY: only `set_hook` stores non-zero values, and it stores `Hook` pointers.
        let hook: Hook = unsafe { core::mem::transmute::<usize, Hook>(hook) };
        hook(vector as u8, cpu);
    }
    lapic_eoi();
}

extern "sysv64" fn run_service(arg: u64) -> u64 {
    let f = SERVICE.load(Ordering::SeqCst);
    if f == 0 {
        crate::ucall::assert_fail(file!(), line!(), "service call without a service", arg, 0);
    }
    // SAFETY: only `set_service` stores non-zero values, and it stores `Service` pointers.
    let f: Service = unsafe { core::mem::transmute::<usize, Service>(f) };
    f(arg)
}

/// Fills the IDT (idempotent) and loads it on this vCPU.
pub fn install() {
    let exc = hvkvm_exc_stubs as *const () as u64;
    let intr = hvkvm_intr_stubs as *const () as u64;
    let ud = hvkvm_intr_ud as *const () as u64;
    let idt = IDT.0.get().cast::<Gate>();
    for v in 0..256u64 {
        let handler = match v {
            6 => ud,
            0..=31 => exc + v * STUB_SIZE,
            _ => intr + (v - 32) * STUB_SIZE,
        };
        let gate = Gate {
            offset_low: handler as u16,
            selector: KERNEL_CS,
            ist: 0,
            type_attr: GATE_INTERRUPT,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        };
        // SAFETY: v < 256; the IDT is our own static, written with identical values by every
        // vCPU.
        unsafe { idt.add(v as usize).write_volatile(gate) };
    }
    let idtr = Idtr {
        limit: (size_of::<[Gate; 256]>() - 1) as u16,
        base: idt as u64,
    };
    // SAFETY: the IDT is complete and lives forever; its gates point at valid handlers.
    unsafe { asm!("lidt [{}]", in(reg) &idtr, options(readonly, nostack, preserves_flags)) };
}

/// Runs `hook` for every interrupt with `vector` (before the EOI).
pub fn set_hook(vector: u8, hook: Hook) {
    HOOKS[usize::from(vector)].store(hook as usize, Ordering::SeqCst);
}

/// Sets what [`service_call`] runs.
pub fn set_service(service: Service) {
    SERVICE.store(service as usize, Ordering::SeqCst);
}

/// How many interrupts with `vector` vCPU `cpu` took.
pub fn count(cpu: usize, vector: u8) -> u32 {
    COUNTS
        .get(cpu)
        .map_or(0, |row| row[usize::from(vector)].load(Ordering::SeqCst))
}

/// STI.
pub fn enable_interrupts() {
    // SAFETY: the IDT handles every vector.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// CLI.
pub fn disable_interrupts() {
    // SAFETY: only masks interrupts on this vCPU.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Waits with interrupts enabled until `done` holds, or `tsc_cycles` TSC cycles passed
/// (false). Interrupts are disabled again on return.
pub fn wait_for(tsc_cycles: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = rdtsc();
    enable_interrupts();
    let ok = loop {
        if done() {
            break true;
        }
        if rdtsc().wrapping_sub(start) > tsc_cycles {
            break done();
        }
        pause();
    };
    disable_interrupts();
    ok
}

/// From CPL3: runs the [`set_service`] function at CPL0 with `arg` and returns its result.
#[inline(never)]
pub fn service_call(arg: u64) -> u64 {
    let result: u64;
    // SAFETY: `ud2` at CPL3 enters `hvkvm_intr_ud`, which preserves every register but RAX and
    // resumes after the `ud2`.
    unsafe { asm!("ud2", inout("rdi") arg => _, out("rax") result) };
    result
}

/// Parks interrupt handling on this vCPU's stack forever: interrupts on, HLT in a loop.
pub fn idle_forever() -> ! {
    loop {
        // SAFETY: STI;HLT waits for the next interrupt, which the IDT handles.
        unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
    }
}

/// A spin loop that counts TSC cycles: `tsc_cycles` cycles of PAUSE.
pub fn delay(tsc_cycles: u64) {
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < tsc_cycles {
        pause();
    }
}
