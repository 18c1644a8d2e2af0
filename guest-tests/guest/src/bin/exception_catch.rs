//! Self-test of the guest library's exception catching (`idt`) and XMM loading (`hyperv`): needs
//! no Hyper-V emulation, only a VMM that injects #GP for an MSR it does not know.
//!
//! No parameters. Reports:
//! - SYNC 1 = (vector of rdmsr 0x4856_0001 (13), vector of wrmsr 0x4856_0001 (13), vector of
//!   `ud2` inside `catch` (6), vector of a read of a non-canonical address (13), vector of a
//!   divide by zero inside `catch` (0), caught-fault count (5)).
//! - SYNC 2 = (RIP of the `ud2` the handler recorded == the RIP the closure reported, and
//!   `last_fault()` agrees (1), `catch` of a closure that does not fault returned its value
//!   (0x1234), rbx/rbp/r12..r15 survived a fault inside `catch` (1), the stack pointer is
//!   unchanged (1), the recorded RIP, the RIP the closure reported).
//! - SYNC 3 = (XMM0 low, XMM0 high, XMM5 low, XMM5 high) read back with FXSAVE after loading
//!   them with FXRSTOR: (0x0011_2233_4455_6677, 0x8899_AABB_CCDD_EEFF, 0x5555_0000_0000_0005,
//!   0x5555_0000_0000_1005).
//! - DONE.
#![no_std]
#![no_main]

use core::arch::asm;

use hvkvm_guest::hyperv::{load_xmm, read_xmm};
use hvkvm_guest::idt::{self, caught_count, catch, last_fault, rdmsr_safe, read_u64_safe, wrmsr_safe};
use hvkvm_guest::x86::read_rsp;
use hvkvm_guest::{guest_done, guest_sync, BootInfo};

hvkvm_guest::entry!(main);

/// An MSR index nobody implements.
const BOGUS_MSR: u32 = 0x4856_0001;

fn vector<T>(r: Result<T, u8>) -> u64 {
    r.err().map_or(u64::MAX, u64::from)
}

fn main(_boot: BootInfo) -> ! {
    idt::install();
    let rsp_before = read_rsp();

    let rd = vector(rdmsr_safe(BOGUS_MSR));
    // SAFETY: an unimplemented MSR: the write faults.
    let wr = vector(unsafe { wrmsr_safe(BOGUS_MSR, 1) });
    let mut ud_rip = 0u64;
    let ud = catch(|| {
        // SAFETY: ud2 raises #UD, which `catch` recovers from; the RIP is recorded first.
        unsafe {
            asm!("lea {rip}, [rip + 3f]", "mov [{slot}], {rip}", "3:", "ud2",
                 rip = out(reg) _, slot = in(reg) &raw mut ud_rip)
        };
        0
    });
    let ud_last = last_fault();
    // SAFETY: a non-canonical address: the read raises #GP, nothing is accessed.
    let gp = vector(unsafe { read_u64_safe(0x8000_0000_0000_0000) });
    let divisor = core::hint::black_box(0u64);
    let de = catch(|| {
        let q: u64;
        // SAFETY: `div` by zero raises #DE, which `catch` recovers from.
        unsafe {
            asm!("div {d}", d = in(reg) divisor, inout("rax") 1u64 => q, inout("rdx") 0u64 => _)
        };
        q
    });
    let ud_fault = ud.err();
    guest_sync!(
        1,
        rd,
        wr,
        ud_fault.map_or(u64::MAX, |f| u64::from(f.vector)),
        gp,
        de.err().map_or(u64::MAX, |f| u64::from(f.vector)),
        caught_count()
    );

    // Callee-saved registers must survive a fault that abandons the closure mid-way.
    let (mut b, mut bp, mut a, mut c, mut d, mut e) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let _ = catch(|| {
        // SAFETY: clobbers only callee-saved registers, which `catch` must restore, then faults.
        unsafe {
            asm!("mov rbx, -1", "mov rbp, -1", "mov r12, -1", "mov r13, -1", "mov r14, -1",
                 "mov r15, -1", "ud2", out("r12") _, out("r13") _, out("r14") _, out("r15") _)
        };
        0
    });
    // SAFETY: copies registers; rbx/rbp cannot be operands, hence the explicit moves.
    unsafe {
        asm!("mov {b}, rbx", "mov {bp}, rbp", "mov {a}, r12", "mov {c}, r13", "mov {d}, r14",
             "mov {e}, r15", b = out(reg) b, bp = out(reg) bp, a = out(reg) a, c = out(reg) c,
             d = out(reg) d, e = out(reg) e)
    };
    let regs_ok = [b, bp, a, c, d, e].iter().all(|&r| r != u64::MAX);
    let fine = catch(|| 0x1234).unwrap_or(0);
    guest_sync!(
        2,
        ud_fault.is_some_and(|f| f.rip == ud_rip) && ud_last == ud_fault,
        fine,
        regs_ok,
        read_rsp() == rsp_before,
        ud_fault.map_or(0, |f| f.rip),
        ud_rip
    );

    let mut xmm = [0u64; 12];
    xmm[0] = 0x0011_2233_4455_6677;
    xmm[1] = 0x8899_AABB_CCDD_EEFF;
    for (i, v) in xmm.iter_mut().enumerate().skip(2) {
        *v = 0x5555_0000_0000_0000 | ((i as u64 & 1) << 12) | (i as u64 / 2);
    }
    load_xmm(&xmm);
    let back = read_xmm();
    guest_sync!(3, back[0], back[1], back[10], back[11]);
    guest_done!()
}
