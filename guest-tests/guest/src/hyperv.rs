//! Guest side of the Hyper-V interface: synthetic MSR indices, the hypercall page and hypercalls,
//! the reference TSC page, and the CPUID leaves host tests use to parameterise payloads.
//!
//! Everything that may fault goes through [`crate::idt`]'s recovery record, so a payload must call
//! [`crate::idt::install`] first. The guest never executes `vmcall`/`vmmcall` itself (they hang
//! the vCPU on the test hosts): a hypercall is a `call` into the hypercall page, whose contents
//! the VMM writes when the guest enables it (hvkvm: an I/O-port trampoline).
//!
//! Indices, bits and layouts come from the `hyperv-tlfs` crate (the TLFS, shared with hvkvm).

use core::arch::asm;
use core::cell::UnsafeCell;

use crate::idt::{self, arm, disarm, wrmsr_safe, RECOVERY};
use crate::x86::{cpuid, CpuidResult};

// MSR indices and bits, the hypercall ABI and status codes: one home, shared with the VMM.
pub use hyperv_tlfs::hypercall::status;
pub use hyperv_tlfs::hypercall::{
    FAST_BIT as HC_FAST, REP_COUNT_SHIFT as HC_REP_COUNT_SHIFT,
    REP_START_SHIFT as HC_REP_START_SHIFT, VAR_HEADER_SHIFT as HC_VARHEAD_SHIFT,
};
pub use hyperv_tlfs::msr::*;
pub use hyperv_tlfs::PAGE_ENABLE;

/// The GUEST_OS_ID the payloads write: the TLFS "open source" format Linux uses —
/// bit 63 open source, OS type [62:56] = 1 (Linux), OS id [55:48] = 0, version [47:16] =
/// 0x060100 (6.1.0), build [15:0] = 0. Any non-zero value enables hypercalls.
pub const HVKVM_GUEST_OS_ID: u64 = 0x8100_0006_0100_0000;

/// Hypercall result decoding.
pub trait HypercallResult {
    /// RAX[15:0].
    fn status(self) -> u16;
    /// RAX[43:32], reps completed.
    fn reps_completed(self) -> u16;
}

impl HypercallResult for u64 {
    fn status(self) -> u16 {
        self as u16
    }
    fn reps_completed(self) -> u16 {
        ((self >> 32) & 0xfff) as u16
    }
}

/// First of the CPUID leaves host tests set to parameterise a payload (0x400000F0; payloads also
/// read 0x400000F1..F3). Each payload documents its layout at the top of its file.
pub const PARAM_LEAF: u32 = 0x4000_00F0;

/// Reads parameter leaf `PARAM_LEAF + n`.
///
/// The host must define every leaf a payload reads (zeros where unused): KVM answers a leaf above
/// 0x40000000.EAX that is *not* in the CPUID table with the highest basic leaf's values.
pub fn param(n: u32) -> CpuidResult {
    cpuid(PARAM_LEAF + n, 0)
}

/// `lo | hi << 32`.
pub fn join(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

/// A page-aligned 4 KiB page a payload owns: for overlay pages the VMM writes (hypercall page,
/// reference TSC page, ...), hypercall input/output pages, scratch.
#[repr(C, align(4096))]
pub struct Page(UnsafeCell<[u8; 4096]>);

// SAFETY: accessed through raw pointers with volatile operations; sharing is the payload's call.
unsafe impl Sync for Page {}

impl Page {
    /// A zeroed page (lands in .bss).
    pub const fn zeroed() -> Self {
        Self(UnsafeCell::new([0; 4096]))
    }

    /// A page filled with `ud2` (0F 0B): a hypercall page the VMM never wrote raises #UD at its
    /// first byte instead of running into garbage (lands in .data).
    pub const fn ud2_filled() -> Self {
        let mut bytes = [0u8; 4096];
        let mut i = 0;
        while i < 4096 {
            bytes[i] = if i % 2 == 0 { 0x0F } else { 0x0B };
            i += 1;
        }
        Self(UnsafeCell::new(bytes))
    }

    /// Guest-physical (= virtual) address of the page.
    pub fn addr(&self) -> u64 {
        self.0.get() as u64
    }

    /// Raw pointer to the first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.0.get().cast()
    }

    /// Volatile read of the u64 at byte `offset` (must be 8-aligned and < 4096).
    pub fn read_u64(&self, offset: usize) -> u64 {
        assert!(offset % 8 == 0 && offset < 4096, "bad page offset");
        // SAFETY: in bounds and aligned (checked); the page lives forever.
        unsafe { self.as_ptr().add(offset).cast::<u64>().read_volatile() }
    }

    /// Volatile write of the u64 at byte `offset` (must be 8-aligned and < 4096).
    pub fn write_u64(&self, offset: usize, value: u64) {
        assert!(offset % 8 == 0 && offset < 4096, "bad page offset");
        // SAFETY: as for `read_u64`.
        unsafe { self.as_ptr().add(offset).cast::<u64>().write_volatile(value) }
    }
}

/// Writes GUEST_OS_ID = [`HVKVM_GUEST_OS_ID`], then HYPERCALL = GPA of `page` | enable.
/// Returns which write faulted: `Err((msr, vector))`. The VMM then fills `page` with its
/// hypercall code; use a page from [`Page::ud2_filled`] so that calling an unwritten page gives
/// #UD. Needs [`idt::install`].
pub fn enable_hypercall_page(page: &'static Page) -> Result<(), (u32, u8)> {
    // SAFETY: GUEST_OS_ID only identifies the guest; HYPERCALL makes the VMM write `page`,
    // which the caller dedicates to it.
    unsafe {
        wrmsr_safe(GUEST_OS_ID, HVKVM_GUEST_OS_ID).map_err(|v| (GUEST_OS_ID, v))?;
        wrmsr_safe(HYPERCALL, page.addr() | PAGE_ENABLE).map_err(|v| (HYPERCALL, v))
    }
}

/// Issues a hypercall with the raw register values: `call page` with RCX = `control`,
/// RDX = `rdx`, R8 = `r8`. Returns RAX, or `Err(vector)` when the call raised an exception
/// (normally #UD: hypercalls not enabled, a fast call not offered, an unwritten page).
/// Needs [`idt::install`].
///
/// Registers: RCX, RDX, R8-R11 are treated as clobbered, every other GPR as preserved (the TLFS
/// hypercall page preserves all but RAX). XMM registers are not touched here.
///
/// # Safety
/// For slow calls the VMM reads the input at GPA `rdx` and may write the output at GPA `r8`:
/// the output must be memory the caller owns (or not RAM at all).
#[inline(never)]
pub unsafe fn hypercall_raw(page: &Page, control: u64, rdx: u64, r8: u64) -> Result<u64, u8> {
    let rax: u64;
    // SAFETY: delegated to the caller; on a fault the handler resumes at label 2 with this RSP.
    unsafe {
        asm!(
            arm!("r9"),
            "call r10",
            disarm!(),
            rec = in(reg) idt::record(),
            recsym = sym RECOVERY,
            inout("r10") page.addr() => _,
            inout("rcx") control => _,
            inout("rdx") rdx => _,
            inout("r8") r8 => _,
            out("rax") rax,
            out("r9") _,
            out("r11") _,
        )
    };
    idt::outcome(rax)
}

/// Slow hypercall: `control` as given (the fast bit cleared), input and output parameter GPAs.
///
/// # Safety
/// See [`hypercall_raw`].
pub unsafe fn hypercall(page: &Page, control: u64, input_gpa: u64, output_gpa: u64) -> Result<u64, u8> {
    // SAFETY: delegated.
    unsafe { hypercall_raw(page, control & !HC_FAST, input_gpa, output_gpa) }
}

/// Fast hypercall: `control | HC_FAST`, two input words in RDX and R8.
pub fn hypercall_fast(page: &Page, control: u64, in0: u64, in1: u64) -> Result<u64, u8> {
    // SAFETY: a fast call passes no GPAs: the VMM reads and writes no guest memory for it.
    unsafe { hypercall_raw(page, control | HC_FAST, in0, in1) }
}

/// XMM-fast hypercall: `control | HC_FAST`, input words 0-1 in RDX and R8, words 2-13 in
/// XMM0..XMM5 (`xmm[2i]` = low half of XMMi, `xmm[2i+1]` = high half). See [`load_xmm`].
pub fn hypercall_xmm_fast(
    page: &Page,
    control: u64,
    in0: u64,
    in1: u64,
    xmm: &[u64; 12],
) -> Result<u64, u8> {
    load_xmm(xmm);
    hypercall_fast(page, control, in0, in1)
}

/// An FXSAVE area (512 bytes, 16-byte aligned). XMMi is at byte 160 + 16 i.
#[repr(C, align(16))]
struct FxArea(UnsafeCell<[u8; 512]>);
// SAFETY: single-vCPU use (documented at `load_xmm`).
unsafe impl Sync for FxArea {}
static FX_AREA: FxArea = FxArea(UnsafeCell::new([0; 512]));
const FX_XMM0: usize = 160;

/// CR0.MP, CR0.EM, CR0.TS; CR4.OSFXSR, CR4.OSXMMEXCPT.
const CR0_MP: u64 = 1 << 1;
const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;

/// Makes FXSAVE/FXRSTOR handle the XMM registers: CR0.EM and CR0.TS clear, CR0.MP set,
/// CR4.OSFXSR and CR4.OSXMMEXCPT set.
pub fn enable_sse_state() {
    let cr0 = crate::x86::read_cr0();
    let want0 = (cr0 & !(CR0_EM | CR0_TS)) | CR0_MP;
    let cr4 = crate::x86::read_cr4();
    let want4 = cr4 | CR4_OSFXSR | CR4_OSXMMEXCPT;
    // SAFETY: these bits only change how x87/SSE instructions behave; the payloads execute none
    // besides FXSAVE/FXRSTOR below.
    unsafe {
        if want0 != cr0 {
            asm!("mov cr0, {}", in(reg) want0, options(nomem, nostack, preserves_flags));
        }
        if want4 != cr4 {
            asm!("mov cr4, {}", in(reg) want4, options(nomem, nostack, preserves_flags));
        }
    }
}

/// Loads XMM0..XMM5 with `xmm` (`xmm[2i]` = low half of XMMi) without any SSE instruction:
/// FXSAVE the current state, patch the XMM slots, FXRSTOR (both are integer-safe for KVM's
/// emulator and pass the build's instruction scan, unlike `movdqu` into an xmm register).
/// The compiler never touches XMM registers in these payloads (SSE is disabled), so they keep
/// these values until the next hypercall. Single vCPU only (one static FXSAVE area).
pub fn load_xmm(xmm: &[u64; 12]) {
    enable_sse_state();
    let area = FX_AREA.0.get().cast::<u8>();
    // SAFETY: the area is 512 bytes and 16-aligned; FXSAVE/FXRSTOR read/write exactly it.
    unsafe {
        asm!("fxsave [{}]", in(reg) area, options(nostack, preserves_flags));
        for (i, v) in xmm.iter().enumerate() {
            area.add(FX_XMM0 + 8 * i).cast::<u64>().write_volatile(*v);
        }
        asm!("fxrstor [{}]", in(reg) area, options(nostack, preserves_flags));
    }
}

/// Reads XMM0..XMM5 (same layout as [`load_xmm`]) with FXSAVE. Call [`enable_sse_state`]
/// (or [`load_xmm`]) first: without CR4.OSFXSR the XMM slots may not be saved.
pub fn read_xmm() -> [u64; 12] {
    let area = FX_AREA.0.get().cast::<u8>();
    let mut out = [0u64; 12];
    // SAFETY: as in `load_xmm`.
    unsafe {
        asm!("fxsave [{}]", in(reg) area, options(nostack, preserves_flags));
        for (i, v) in out.iter_mut().enumerate() {
            *v = area.add(FX_XMM0 + 8 * i).cast::<u64>().read_volatile();
        }
    }
    out
}

/// The reference TSC page's parameters: `{u32 sequence @0; u32 reserved; u64 scale @8;
/// i64 offset @16}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscPageParams {
    /// TscSequence (0: the page is not valid, use TIME_REF_COUNT).
    pub sequence: u32,
    /// TscScale (64.64 fixed point, 100 ns per tick).
    pub scale: u64,
    /// TscOffset (100 ns units).
    pub offset: i64,
}

/// Reads the three fields once, without the retry protocol (for reporting).
pub fn tsc_page_params(page: &Page) -> TscPageParams {
    let p = page.as_ptr();
    // SAFETY: offsets 0, 8, 16 are inside the page and aligned.
    unsafe {
        TscPageParams {
            sequence: p.cast::<u32>().read_volatile(),
            scale: p.add(8).cast::<u64>().read_volatile(),
            offset: p.add(16).cast::<i64>().read_volatile(),
        }
    }
}

/// `lfence; rdtsc`: a TSC read that is not executed before the loads preceding it.
#[inline(always)]
pub fn rdtsc_ordered() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: LFENCE and RDTSC only order execution and write EDX:EAX.
    unsafe {
        asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    join(lo, hi)
}

/// Reference time from the TSC page, following the TLFS protocol: read the sequence (0: invalid,
/// `None`: the caller must read TIME_REF_COUNT), scale and offset, then the TSC, and retry if the
/// sequence changed meanwhile. Time = ((tsc × scale) >> 64) + offset, in 100 ns units.
/// Gives up (`None`) after 64 changed sequences in a row. The 128-bit product is an integer
/// `mul` (no SSE).
pub fn read_tsc_page(page: &Page) -> Option<u64> {
    let p = page.as_ptr();
    for _ in 0..64 {
        // SAFETY: as in `tsc_page_params`.
        let (seq, scale, offset) = unsafe {
            (
                p.cast::<u32>().read_volatile(),
                p.add(8).cast::<u64>().read_volatile(),
                p.add(16).cast::<u64>().read_volatile(),
            )
        };
        if seq == 0 {
            return None;
        }
        let tsc = rdtsc_ordered();
        // SAFETY: as above.
        if unsafe { p.cast::<u32>().read_volatile() } == seq {
            let scaled = ((u128::from(tsc) * u128::from(scale)) >> 64) as u64;
            return Some(scaled.wrapping_add(offset));
        }
    }
    None
}
