//! Completing what the CPL0 emulator of a `kvm_pvm` host cannot do on its own.

use kvm_bindings::{kvm_debug_exit_arch, kvm_vcpu_events};

use super::syscall::SyscallRepair;
use crate::memory::{Bytes, GuestAddress, GuestMemory};
use crate::vcpu::VcpuState;

const INT3: u8 = 0xcc;
const FWAIT: u8 = 0x9b;
const BP_VECTOR: u8 = 3;

/// Per-vCPU assist state.
///
/// - `int3` (Linux's live text patching plants it): advance RIP and inject #BP, exactly what
///   the instruction does; if the byte at RIP is no longer `int3` (the patch finished
///   meanwhile), just re-execute.
/// - `fwait` with no pending x87 exception is a no-op: skip it.
/// - SYSCALL from user space: see [`SyscallRepair`].
#[derive(Debug, Default)]
pub struct EmulationAssist {
    syscall: SyscallRepair,
}

impl EmulationAssist {
    /// Returns true if the refused instruction was completed and the vCPU can continue.
    pub fn complete(&mut self, state: &mut dyn VcpuState, mem: &GuestMemory, insn: &[u8]) -> bool {
        let Ok(mut regs) = state.regs() else {
            return false;
        };
        match insn.first() {
            Some(&INT3) => {
                if read_virt_byte(state, mem, regs.rip) != Some(INT3) {
                    // Patched away since KVM fetched it: run whatever is there now.
                    return true;
                }
                regs.rip += 1;
                let Ok(mut events) = state.events() else {
                    return false;
                };
                inject_breakpoint(&mut events);
                state.set_regs(&regs).is_ok() && state.set_events(&events).is_ok()
            }
            Some(&FWAIT) => {
                regs.rip += 1;
                state.set_regs(&regs).is_ok()
            }
            _ => false,
        }
    }

    /// Whether writes to MSR `index` must come to the assist (through the MSR filter).
    pub fn traps_msr_write(&self, index: u32) -> bool {
        SyscallRepair::traps_msr_write(index)
    }

    /// MSR indices whose writes the VM's MSR filter must send to user space.
    pub fn trapped_msr_writes() -> &'static [u32] {
        SyscallRepair::TRAPPED_MSRS
    }

    /// Performs a trapped MSR write; false if it could not be done.
    pub fn on_trapped_msr_write(
        &mut self,
        state: &mut dyn VcpuState,
        mem: &GuestMemory,
        index: u32,
        value: u64,
    ) -> bool {
        self.syscall.on_msr_write(state, mem, index, value)
    }

    /// After a snapshot restore: re-arms the SYSCALL repair for the LSTAR the guest had set
    /// (the guest-debug breakpoint is host state a snapshot does not carry).
    pub fn resume_after_restore(&mut self, state: &mut dyn VcpuState, mem: &GuestMemory) {
        for &index in SyscallRepair::TRAPPED_MSRS {
            if let Ok(value) = state.msr(index) {
                if value != 0 && !self.syscall.on_msr_write(state, mem, index, value) {
                    log::warn!("cannot re-arm the SYSCALL repair after the restore");
                }
            }
        }
    }

    /// Handles a KVM_EXIT_DEBUG this assist caused; false if it was not ours.
    pub fn on_debug_exit(
        &mut self,
        state: &mut dyn VcpuState,
        mem: &GuestMemory,
        arch: &kvm_debug_exit_arch,
    ) -> bool {
        self.syscall.on_debug_exit(state, mem, arch)
    }
}

fn inject_breakpoint(events: &mut kvm_vcpu_events) {
    events.exception.injected = 1;
    events.exception.nr = BP_VECTOR;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
}

/// Reads guest-virtual memory through the vCPU's page tables, page by page.
pub(super) fn read_virt(
    state: &dyn VcpuState,
    mem: &GuestMemory,
    gva: u64,
    buf: &mut [u8],
) -> Option<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let addr = gva.checked_add(done as u64)?;
        let in_page = (0x1000 - (addr & 0xfff)) as usize;
        let len = in_page.min(buf.len() - done);
        let gpa = state.translate(addr)?;
        mem.read_slice(&mut buf[done..done + len], GuestAddress(gpa))
            .ok()?;
        done += len;
    }
    Some(())
}

fn read_virt_byte(state: &dyn VcpuState, mem: &GuestMemory, gva: u64) -> Option<u8> {
    let mut b = [0u8; 1];
    read_virt(state, mem, gva, &mut b).map(|()| b[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakpoint_injection_fields() {
        let mut e = kvm_vcpu_events::default();
        inject_breakpoint(&mut e);
        assert_eq!((e.exception.injected, e.exception.nr), (1, 3));
    }
}
