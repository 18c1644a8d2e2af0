//! Per-VP synthetic MSRs and state: each VP's lives in its own [`VpState`], locked only by
//! that VP's exits (and, once SynIC and timers arrive, by whoever delivers to it), never by a
//! VM-wide lock.

use hyperv_tlfs::msr::*;
use hyperv_tlfs::{PAGE_ADDRESS_MASK, PAGE_ENABLE};

use super::usage::{Refusal, VpUsage};
use crate::memory::{self, GuestMemory};
use crate::vcpu::msr::MsrFault;

/// One VP's Hyper-V state.
#[derive(Debug, Default)]
pub struct VpState {
    /// VP_ASSIST_PAGE as written.
    pub assist_page: u64,
    /// What this VP used.
    pub usage: VpUsage,
}

impl VpState {
    /// Whether `index` is a per-VP MSR this module serves.
    pub fn owns(index: u32) -> bool {
        matches!(
            index,
            VP_INDEX | VP_RUNTIME | VP_ASSIST_PAGE | EOI | ICR | TPR
        )
    }

    /// RDMSR of a per-VP MSR by VP `vp`.
    pub fn read(&self, vp: u32, index: u32) -> Result<u64, MsrFault> {
        Ok(match index {
            VP_INDEX => u64::from(vp),
            // 100 ns units of this vCPU thread's CPU time: MSR exits are handled on the VP's
            // own thread.
            VP_RUNTIME => crate::kvm::clock::thread_cpu_time_ns() / 100,
            VP_ASSIST_PAGE => self.assist_page,
            // EOI is write-only; ICR and TPR alias the in-kernel LAPIC's registers, which user
            // space cannot make behave exactly like the APIC accesses (hv-vapic is not offered
            // by this backend, see hv-model).
            _ => return Err(MsrFault),
        })
    }

    /// WRMSR of a per-VP MSR.
    pub fn write(&mut self, index: u32, value: u64, mem: &GuestMemory) -> Result<(), MsrFault> {
        match index {
            VP_ASSIST_PAGE => {
                if value & !(PAGE_ADDRESS_MASK | PAGE_ENABLE) != 0 {
                    return Err(MsrFault);
                }
                let gpa = value & PAGE_ADDRESS_MASK;
                if value & PAGE_ENABLE != 0 && !memory::range_is_ram(mem, gpa, 0x1000) {
                    self.usage.refusals.push(Refusal::PageOutsideRam {
                        index: VP_ASSIST_PAGE,
                        gpa,
                    });
                    return Err(MsrFault);
                }
                self.assist_page = value;
                Ok(())
            }
            // Read-only (VP_INDEX, VP_RUNTIME) or not served (EOI, ICR, TPR).
            _ => Err(MsrFault),
        }
    }

    /// The GPA of the assist page, when enabled.
    pub fn assist_page_gpa(&self) -> Option<u64> {
        hyperv_tlfs::overlay_page_gpa(self.assist_page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_vp_msrs_refuse_writes() {
        let mem = memory::allocate(16).unwrap();
        let mut vp = VpState::default();
        assert_eq!(vp.read(3, VP_INDEX), Ok(3));
        assert!(vp.read(0, VP_RUNTIME).is_ok());
        for index in [VP_INDEX, VP_RUNTIME, EOI, ICR, TPR] {
            assert_eq!(vp.write(index, 0, &mem), Err(MsrFault), "{}", Name(index));
        }
    }

    #[test]
    fn assist_page_must_be_in_ram_with_no_reserved_bits() {
        let mem = memory::allocate(16).unwrap();
        let mut vp = VpState::default();
        assert_eq!(vp.write(VP_ASSIST_PAGE, 0x7000 | 1, &mem), Ok(()));
        assert_eq!(vp.assist_page_gpa(), Some(0x7000));
        assert_eq!(
            vp.write(VP_ASSIST_PAGE, (64 << 20) | 1, &mem),
            Err(MsrFault)
        );
        assert_eq!(vp.write(VP_ASSIST_PAGE, 0x7000 | 2, &mem), Err(MsrFault));
        assert_eq!(vp.write(VP_ASSIST_PAGE, 0, &mem), Ok(()));
        assert_eq!(vp.assist_page_gpa(), None);
        assert_eq!(vp.usage.refusals.iter().count(), 1);
    }
}
