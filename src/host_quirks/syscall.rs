//! Repairing 64-bit SYSCALL on `kvm_pvm` hosts.
//!
//! There, SYSCALL from guest user space loads RIP = LSTAR but leaves CPL at 3, so the first
//! fetch at LSTAR page-faults and the kernel kills the process. The repair:
//! 1. The guest's writes to LSTAR are trapped (MSR filter); hvkvm performs the write and arms
//!    a guest-debug hardware breakpoint (DR0) on the guest's #PF handler, found through IDT
//!    vector 14.
//! 2. When the breakpoint fires (the handler's first instruction, CPL0, exception frame on
//!    the stack), hvkvm checks the frame: a fault at RIP == LSTAR from CPL3 is the broken
//!    SYSCALL. It rewrites the vCPU into the state SYSCALL should have produced: RIP = LSTAR,
//!    RSP and RFLAGS of the frame (RCX/R11 were already set by the instruction), kernel CS/SS
//!    from STAR, and the frame is abandoned.
//! 3. Any other page fault proceeds: the breakpoint moves to the next instruction, and back
//!    to the handler once that one is reached (the emulator ignores RFLAGS.RF, so a
//!    breakpoint cannot simply be resumed over).

use kvm_bindings::{
    kvm_debug_exit_arch, kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_USE_HW_BP,
};

use super::emulation::read_virt;
use super::insn_len::entry_insn_len;
use crate::boot::long_mode::segment;
use crate::memory::GuestMemory;
use crate::ratelimit::warn_ratelimited;
use crate::vcpu::VcpuState;

const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
/// IA32_FMASK: the RFLAGS bits SYSCALL clears.
const MSR_FMASK: u32 = 0xc000_0084;
/// RFLAGS.RF, which SYSCALL clears too; bit 1 is always set.
const RFLAGS_RF: u64 = 1 << 16;
const RFLAGS_FIXED: u64 = 1 << 1;
const PF_VECTOR: u64 = 14;
/// DR7: G0 (global enable of DR0) plus the always-one bit 10; RW0 = LEN0 = 0 (execution).
const DR7_EXEC_DR0: u64 = (1 << 1) | (1 << 10);
/// DR6 bit 0: DR0 matched.
const DR6_B0: u64 = 1;

/// Where the breakpoint currently is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Armed {
    #[default]
    Off,
    /// On the #PF handler's first instruction.
    Handler(u64),
    /// On the instruction after it, stepping over; holds (handler, next).
    StepOver(u64, u64),
}

/// Per-vCPU SYSCALL repair state.
#[derive(Debug, Default)]
pub struct SyscallRepair {
    lstar: u64,
    armed: Armed,
    /// How many SYSCALLs were repaired (for logs and tests).
    pub repaired: u64,
    /// Whether a repaired SYSCALL's frame already had FMASK bits set was logged (once).
    noted_unmasked: bool,
}

impl SyscallRepair {
    /// MSRs whose guest writes must be trapped.
    pub const TRAPPED_MSRS: &'static [u32] = &[MSR_LSTAR];

    /// Whether a write to `index` is trapped.
    pub fn traps_msr_write(index: u32) -> bool {
        Self::TRAPPED_MSRS.contains(&index)
    }

    /// Performs the guest's LSTAR write and (re)arms the breakpoint.
    pub fn on_msr_write(
        &mut self,
        state: &mut dyn VcpuState,
        mem: &GuestMemory,
        index: u32,
        value: u64,
    ) -> bool {
        if state.set_msr(index, value).is_err() {
            return false;
        }
        if index == MSR_LSTAR {
            self.lstar = value;
            match pf_handler(state, mem) {
                Some(handler) => self.arm(state, Armed::Handler(handler)),
                None => warn_ratelimited!(
                    "host quirk: LSTAR written but the guest IDT has no #PF handler yet; \
                     SYSCALL from user space will not work"
                ),
            }
        }
        true
    }

    fn arm(&mut self, state: &mut dyn VcpuState, armed: Armed) {
        let addr = match armed {
            Armed::Off => None,
            Armed::Handler(a) | Armed::StepOver(_, a) => Some(a),
        };
        let mut debug = kvm_guest_debug::default();
        if let Some(addr) = addr {
            debug.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
            debug.arch.debugreg[0] = addr;
            debug.arch.debugreg[7] = DR7_EXEC_DR0;
        }
        if let Err(e) = state.set_guest_debug(&debug) {
            warn_ratelimited!("host quirk: KVM_SET_GUEST_DEBUG failed: {e}");
            self.armed = Armed::Off;
            return;
        }
        self.armed = armed;
    }

    /// Handles a debug exit; false if it was not caused by this repair.
    pub fn on_debug_exit(
        &mut self,
        state: &mut dyn VcpuState,
        mem: &GuestMemory,
        arch: &kvm_debug_exit_arch,
    ) -> bool {
        if arch.dr6 & DR6_B0 == 0 && arch.exception != 1 {
            return false;
        }
        match self.armed {
            Armed::Handler(handler) if arch.pc == handler => {
                if !self.repair_if_broken_syscall(state, mem) {
                    self.step_over(state, mem, handler);
                }
                true
            }
            Armed::StepOver(handler, next) if arch.pc == next => {
                self.arm(state, Armed::Handler(handler));
                true
            }
            _ => false,
        }
    }

    fn step_over(&mut self, state: &mut dyn VcpuState, mem: &GuestMemory, handler: u64) {
        let mut bytes = [0u8; 16];
        let len = read_virt(state, mem, handler, &mut bytes).and_then(|()| entry_insn_len(&bytes));
        match len {
            Some(len) => self.arm(state, Armed::StepOver(handler, handler + len as u64)),
            None => {
                warn_ratelimited!(
                    "host quirk: cannot decode the #PF handler's first instruction {bytes:02x?}; \
                     SYSCALL repair disabled on this vCPU"
                );
                self.arm(state, Armed::Off);
            }
        }
    }

    /// At the #PF handler's entry: if the fault is the broken SYSCALL, turn it into the
    /// kernel entry SYSCALL should have made.
    fn repair_if_broken_syscall(&mut self, state: &mut dyn VcpuState, mem: &GuestMemory) -> bool {
        let Ok(mut regs) = state.regs() else {
            return false;
        };
        // Frame: error code, RIP, CS, RFLAGS, RSP, SS.
        let mut raw = [0u8; 48];
        if read_virt(state, mem, regs.rsp, &mut raw).is_none() {
            return false;
        }
        let word =
            |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let (rip, cs, rflags, rsp) = (word(1), word(2), word(3), word(4));
        if rip != self.lstar || cs & 3 != 3 || self.lstar == 0 {
            log::trace!("host quirk: #PF at {rip:#x} (cs {cs:#x}) is not a broken SYSCALL");
            return false;
        }
        let (Ok(mut sregs), Ok(star), Ok(fmask)) =
            (state.sregs(), state.msr(MSR_STAR), state.msr(MSR_FMASK))
        else {
            return false;
        };
        let kernel_cs = ((star >> 32) & 0xfffc) as u16;
        sregs.cs = segment(kernel_cs, true);
        sregs.ss = segment(kernel_cs + 8, false);
        regs.rip = self.lstar;
        regs.rsp = rsp;
        if rflags & fmask != 0 && !self.noted_unmasked {
            self.noted_unmasked = true;
            log::info!(
                "host quirk: the broken SYSCALL left RFLAGS {rflags:#x} with IA32_FMASK \
                 {fmask:#x} bits set; the repair clears them"
            );
        }
        regs.rflags = syscall_rflags(rflags, fmask);
        if state.set_sregs(&sregs).is_err() || state.set_regs(&regs).is_err() {
            return false;
        }
        self.repaired += 1;
        true
    }
}

/// RFLAGS after SYSCALL from `rflags`: the IA32_FMASK bits and RF cleared.
fn syscall_rflags(rflags: u64, fmask: u64) -> u64 {
    (rflags & !fmask & !RFLAGS_RF) | RFLAGS_FIXED
}

/// The guest's #PF handler address, from IDT vector 14.
fn pf_handler(state: &dyn VcpuState, mem: &GuestMemory) -> Option<u64> {
    let sregs = state.sregs().ok()?;
    if u64::from(sregs.idt.limit) < PF_VECTOR * 16 + 15 {
        return None;
    }
    let mut gate = [0u8; 16];
    read_virt(state, mem, sregs.idt.base + PF_VECTOR * 16, &mut gate)?;
    let low = u64::from(u16::from_le_bytes([gate[0], gate[1]]));
    let mid = u64::from(u16::from_le_bytes([gate[6], gate[7]]));
    let high = u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]]));
    let present = gate[5] & 0x80 != 0;
    present.then_some(low | (mid << 16) | (high << 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_clears_the_fmask_bits_and_rf() {
        // Linux's FMASK: TF, IF, DF, AC, NT (and IOPL).
        let linux_fmask = 0x4_7700;
        let user = 0x1_0246 | (1 << 9) | (1 << 10); // RF, IF, DF, ZF, PF set
        let kernel = syscall_rflags(user, linux_fmask);
        assert_eq!(
            kernel & (1 << 9),
            0,
            "interrupts stay off in the kernel entry"
        );
        assert_eq!(kernel & (1 << 10), 0, "DF cleared");
        assert_eq!(kernel & RFLAGS_RF, 0);
        assert_eq!(kernel & 0xc4, 0x44, "ZF and PF kept");
        assert_eq!(kernel & RFLAGS_FIXED, RFLAGS_FIXED);
    }
}
