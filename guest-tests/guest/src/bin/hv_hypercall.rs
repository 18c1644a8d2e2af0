//! One Hyper-V hypercall, with #UD caught, for the user-backend conformance tests.
//!
//! The payload calls into its hypercall page (a page-aligned .data page pre-filled with `ud2`:
//! if the VMM never wrote its hypercall code there, the call raises #UD at the page's first byte).
//! It never executes `vmcall` itself.
//!
//! Parameters (CPUID; the host must define 0x400000F0 and 0x400000F1, and 0x400000F2/F3 when
//! flag bit 7 is set):
//! - 0x400000F0: EAX = control bits 31:0, EBX = control bits 63:32 (passed to RCX as given, except
//!   that flags bit 1 / bit 4 OR in the fast bit 16), ECX = flags:
//!   - bit 0: enable the hypercall page first: GUEST_OS_ID = 0x8100_0006_0100_0000, then
//!     HYPERCALL = page GPA | 1 (each wrmsr with #GP caught);
//!   - bit 1: fast call: control |= 1 << 16; RDX and R8 are the data words from 0x400000F1;
//!   - bit 2: slow call with an input page: 32 bytes at a page-aligned input page (zero, or the
//!     data words from F2/F3 with bit 7) and RDX = its GPA (ignored with bit 1 or bit 4);
//!   - bit 3: reserved, ignored;
//!   - bit 4: XMM-fast call: control |= 1 << 16, XMM0 = F2 data, XMM1 = F3 data (zero without
//!     bit 7), XMM2..XMM5 = 0, loaded with FXRSTOR (sets CR4.OSFXSR); RDX/R8 from 0x400000F1;
//!   - bit 5: R8 = GPA of a zeroed, page-aligned output page the payload owns (instead of F1);
//!   - bit 6: after enabling (bit 0), write GUEST_OS_ID = 0 (which disables the page) and then
//!     call anyway;
//!   - bit 7: take data words from 0x400000F2 and 0x400000F3 (each: word0 = EAX | EBX << 32,
//!     word1 = ECX | EDX << 32); otherwise they are zero.
//! - 0x400000F1: EAX/EBX = RDX bits 31:0 / 63:32, ECX/EDX = R8 bits 31:0 / 63:32.
//!
//! Reports:
//! - SYNC 1 = (faulted 0/1 (an exception, normally #UD), RAX (0 if faulted), status = RAX & 0xffff,
//!   reps completed = (RAX >> 32) & 0xfff, setup faults (bit 0: GUEST_OS_ID write #GP, bit 1:
//!   HYPERCALL write #GP, bit 2: GUEST_OS_ID = 0 write #GP), vector (u64::MAX if none)).
//! - SYNC 2 = (RCX used, RDX used, R8 used, output page u64 @0, output page u64 @8 (0 without
//!   bit 5), HYPERCALL MSR read after the call (u64::MAX if the read faulted)).
//! - with bit 4 only: SYNC 3 = XMM0..XMM2 after the call (XMM0 low, XMM0 high, XMM1 low, ...).
//! - DONE.
#![no_std]
#![no_main]

use hvkvm_guest::hyperv::{
    enable_hypercall_page, hypercall_raw, join, load_xmm, param, read_xmm, HypercallResult,
    Page, GUEST_OS_ID, HC_FAST, HYPERCALL,
};
use hvkvm_guest::idt::{self, rdmsr_safe, wrmsr_safe};
use hvkvm_guest::{guest_done, guest_sync, BootInfo};

hvkvm_guest::entry!(main);

static HYPERCALL_PAGE: Page = Page::ud2_filled();
static INPUT_PAGE: Page = Page::zeroed();
static OUTPUT_PAGE: Page = Page::zeroed();

const ENABLE: u32 = 1 << 0;
const FAST: u32 = 1 << 1;
const INPUT_PAGE_FLAG: u32 = 1 << 2;
const XMM_FAST: u32 = 1 << 4;
const OUTPUT_PAGE_FLAG: u32 = 1 << 5;
const DISABLE_OS_ID: u32 = 1 << 6;
const DATA_FROM_F2: u32 = 1 << 7;

fn main(_boot: BootInfo) -> ! {
    idt::install();
    let p0 = param(0);
    let p1 = param(1);
    let flags = p0.ecx;
    let mut control = join(p0.eax, p0.ebx);
    let mut rdx = join(p1.eax, p1.ebx);
    let mut r8 = join(p1.ecx, p1.edx);

    let mut data = [0u64; 4];
    if flags & DATA_FROM_F2 != 0 {
        let (f2, f3) = (param(2), param(3));
        data = [join(f2.eax, f2.ebx), join(f2.ecx, f2.edx), join(f3.eax, f3.ebx), join(f3.ecx, f3.edx)];
    }

    let mut setup_faults = 0u64;
    if flags & ENABLE != 0 {
        match enable_hypercall_page(&HYPERCALL_PAGE) {
            Ok(()) => {}
            Err((GUEST_OS_ID, _)) => setup_faults |= 1,
            Err(_) => setup_faults |= 2,
        }
        if flags & DISABLE_OS_ID != 0 {
            // SAFETY: GUEST_OS_ID = 0 only disables hypercalls.
            if unsafe { wrmsr_safe(GUEST_OS_ID, 0) }.is_err() {
                setup_faults |= 4;
            }
        }
    }

    let fast = flags & (FAST | XMM_FAST) != 0;
    if fast {
        control |= HC_FAST;
    } else if flags & INPUT_PAGE_FLAG != 0 {
        for (i, word) in data.iter().enumerate() {
            INPUT_PAGE.write_u64(8 * i, *word);
        }
        rdx = INPUT_PAGE.addr();
    }
    if flags & OUTPUT_PAGE_FLAG != 0 {
        r8 = OUTPUT_PAGE.addr();
    }
    if flags & XMM_FAST != 0 {
        let mut xmm = [0u64; 12];
        xmm[..4].copy_from_slice(&data);
        load_xmm(&xmm);
    }

    // SAFETY: the output GPA is either our own output page or whatever the host test chose.
    let result = unsafe { hypercall_raw(&HYPERCALL_PAGE, control, rdx, r8) };
    let xmm_after = if flags & XMM_FAST != 0 { Some(read_xmm()) } else { None };
    match result {
        Ok(rax) => guest_sync!(1, 0, rax, rax.status(), rax.reps_completed(), setup_faults, u64::MAX),
        Err(vector) => guest_sync!(1, 1, 0, 0, 0, setup_faults, vector),
    };
    let hypercall_msr = rdmsr_safe(HYPERCALL).unwrap_or(u64::MAX);
    let (out0, out1) = if flags & OUTPUT_PAGE_FLAG != 0 {
        (OUTPUT_PAGE.read_u64(0), OUTPUT_PAGE.read_u64(8))
    } else {
        (0, 0)
    };
    guest_sync!(2, control, rdx, r8, out0, out1, hypercall_msr);
    if let Some(x) = xmm_after {
        guest_sync!(3, x[0], x[1], x[2], x[3], x[4], x[5]);
    }
    guest_done!()
}
