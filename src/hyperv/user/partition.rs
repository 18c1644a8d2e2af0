//! Partition-wide synthetic MSRs: one value for the whole VM, serialised by the backend's
//! partition lock (GUEST_OS_ID, HYPERCALL, REFERENCE_TSC, CRASH_*, RESET, the
//! reenlightenment and TSC emulation MSRs, TSC_INVARIANT_CONTROL).
//!
//! Every MSR answers as the TLFS and KVM with hv-enforce-cpuid do: a write to a read-only MSR
//! or with a reserved bit set gets #GP (whether the MSR exists at all is decided before, from
//! CPUID, by [`super::features::Features::msr_available`]). Pages the guest names (hypercall
//! page, TSC page) are written only inside guest RAM.

use hyperv_tlfs::msr::*;
use hyperv_tlfs::{PAGE_ADDRESS_MASK, PAGE_ENABLE};

use super::clock::{self, ReferenceClock};
use super::usage::{Refusal, Refusals};
use crate::hyperv::report::GuestOsId;
use crate::memory::{Bytes, GuestAddress, GuestMemory};
use crate::vcpu::msr::MsrFault;

/// The port the hypercall page's trampoline writes to (an 8-bit immediate port, so the guest's
/// RDX, which carries the input GPA, is left alone).
pub const HYPERCALL_PORT: u16 = 0x99;
/// The hypercall page: `out 0x99, al; ret`, the rest `int3` so a stray jump traps. RAX (the
/// result) is written by hvkvm during the exit; every other register is preserved.
const TRAMPOLINE: [u8; 3] = [0xe6, HYPERCALL_PORT as u8, 0xc3];
const INT3: u8 = 0xcc;

/// What a guest write asks of the VMM beyond storing the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionEffect {
    /// Nothing.
    None,
    /// RESET was written with bit 0 set.
    Reset,
    /// CRASH_CTL was written with CRASH_NOTIFY: the bugcheck code and parameters.
    Crash([u64; 5]),
}

/// Partition-wide Hyper-V state of one VM.
#[derive(Debug)]
pub struct Partition {
    guest_os_id: u64,
    hypercall: u64,
    reference_tsc: u64,
    tsc_page_sequence: u32,
    crash: [u64; 5],
    crash_ctl: u64,
    reenlightenment_control: u64,
    tsc_emulation_control: u64,
    tsc_emulation_status: u64,
    tsc_invariant_control: u64,
    /// Crash reports the guest made (bounded).
    pub crashes: Vec<[u64; 5]>,
    /// Partition-level refusals (pages outside RAM).
    pub refusals: Refusals,
}

/// Crash reports kept for the usage report.
const MAX_CRASHES: usize = 8;

impl Default for Partition {
    fn default() -> Self {
        Partition {
            guest_os_id: 0,
            hypercall: 0,
            reference_tsc: 0,
            tsc_page_sequence: 0,
            crash: [0; 5],
            // The host sets CRASH_NOTIFY so the guest sees that crash reporting is supported.
            crash_ctl: CRASH_CTL_NOTIFY,
            reenlightenment_control: 0,
            tsc_emulation_control: 0,
            tsc_emulation_status: 0,
            tsc_invariant_control: 0,
            crashes: Vec::new(),
            refusals: Refusals::default(),
        }
    }
}

impl Partition {
    /// Whether `index` is one of the partition-wide MSRs this module serves.
    pub fn owns(index: u32) -> bool {
        matches!(
            index,
            GUEST_OS_ID | HYPERCALL | RESET | REFERENCE_TSC | CRASH_P0
                ..=CRASH_P4
                    | CRASH_CTL
                    | REENLIGHTENMENT_CONTROL
                    | TSC_EMULATION_CONTROL
                    | TSC_EMULATION_STATUS
                    | TSC_INVARIANT_CONTROL
        )
    }

    /// The GPA of the hypercall page, when the guest enabled it (and may issue hypercalls).
    pub fn hypercall_page(&self) -> Option<u64> {
        hyperv_tlfs::overlay_page_gpa(self.hypercall)
    }

    /// The GPA of the reference TSC page, when enabled.
    pub fn tsc_page(&self) -> Option<u64> {
        hyperv_tlfs::overlay_page_gpa(self.reference_tsc)
    }

    /// The guest OS ID, decoded, once written.
    pub fn guest_os_id(&self) -> Option<GuestOsId> {
        (self.guest_os_id != 0 || self.hypercall != 0).then(|| GuestOsId::decode(self.guest_os_id))
    }

    /// RDMSR of a partition-wide MSR.
    pub fn read(&self, index: u32) -> Result<u64, MsrFault> {
        Ok(match index {
            GUEST_OS_ID => self.guest_os_id,
            HYPERCALL => self.hypercall,
            RESET => 0,
            REFERENCE_TSC => self.reference_tsc,
            CRASH_P0..=CRASH_P4 => self.crash[(index - CRASH_P0) as usize],
            CRASH_CTL => self.crash_ctl,
            REENLIGHTENMENT_CONTROL => self.reenlightenment_control,
            TSC_EMULATION_CONTROL => self.tsc_emulation_control,
            TSC_EMULATION_STATUS => self.tsc_emulation_status,
            TSC_INVARIANT_CONTROL => self.tsc_invariant_control,
            _ => return Err(MsrFault),
        })
    }

    /// WRMSR of a partition-wide MSR. `clock` is the partition's reference clock (for the TSC
    /// page), `mem` guest RAM.
    pub fn write(
        &mut self,
        index: u32,
        value: u64,
        clock: Option<&ReferenceClock>,
        mem: &GuestMemory,
    ) -> Result<PartitionEffect, MsrFault> {
        match index {
            GUEST_OS_ID => {
                self.guest_os_id = value;
                if value == 0 {
                    // TLFS: a zero guest OS ID disables the hypercall page.
                    self.hypercall &= !PAGE_ENABLE;
                }
            }
            HYPERCALL => self.write_hypercall(value, mem)?,
            REFERENCE_TSC => self.write_reference_tsc(value, clock, mem)?,
            RESET => {
                if value & 1 != 0 {
                    return Ok(PartitionEffect::Reset);
                }
            }
            CRASH_P0..=CRASH_P4 => self.crash[(index - CRASH_P0) as usize] = value,
            CRASH_CTL => {
                if value & !(CRASH_CTL_NOTIFY | CRASH_CTL_NOTIFY_MSG) != 0 {
                    return Err(MsrFault);
                }
                if value & CRASH_CTL_NOTIFY != 0 {
                    if self.crashes.len() < MAX_CRASHES {
                        self.crashes.push(self.crash);
                    }
                    return Ok(PartitionEffect::Crash(self.crash));
                }
            }
            REENLIGHTENMENT_CONTROL => {
                if value & !REENLIGHTENMENT_VALID != 0 {
                    return Err(MsrFault);
                }
                self.reenlightenment_control = value;
            }
            TSC_EMULATION_CONTROL => {
                if value & !TSC_EMULATION_BIT != 0 {
                    return Err(MsrFault);
                }
                self.tsc_emulation_control = value;
            }
            TSC_EMULATION_STATUS => {
                // The guest may only clear "in progress" (the matrix: writing 1 is #GP).
                if value != 0 {
                    return Err(MsrFault);
                }
                let acknowledged = self.tsc_emulation_status != 0;
                self.tsc_emulation_status = 0;
                if acknowledged {
                    // After a restore at a new TSC rate (user/snapshot.rs): the guest has
                    // taken the new rate, so the TSC page describes it again.
                    if let Some(gpa) = self.tsc_page() {
                        if let Ok(seq) =
                            clock::write_tsc_page(mem, gpa, clock, self.tsc_page_sequence)
                        {
                            self.tsc_page_sequence = seq;
                        }
                    }
                }
            }
            TSC_INVARIANT_CONTROL => {
                // Bit 0 only, and once set it stays set (KVM).
                if value & !1 != 0 || (self.tsc_invariant_control & 1 != 0 && value & 1 == 0) {
                    return Err(MsrFault);
                }
                self.tsc_invariant_control = value;
            }
            _ => return Err(MsrFault),
        }
        Ok(PartitionEffect::None)
    }

    /// The state a snapshot keeps (user/snapshot.rs).
    pub(super) fn state(&self) -> super::snapshot::PartitionState {
        super::snapshot::PartitionState {
            guest_os_id: self.guest_os_id,
            hypercall: self.hypercall,
            reference_tsc: self.reference_tsc,
            tsc_page_sequence: self.tsc_page_sequence,
            crash: self.crash,
            crash_ctl: self.crash_ctl,
            reenlightenment_control: self.reenlightenment_control,
            tsc_emulation_control: self.tsc_emulation_control,
            tsc_emulation_status: self.tsc_emulation_status,
            tsc_invariant_control: self.tsc_invariant_control,
            crashes: self.crashes.clone(),
        }
    }

    /// A partition continuing a snapshot's state.
    pub(super) fn from_state(s: &super::snapshot::PartitionState) -> Self {
        Partition {
            guest_os_id: s.guest_os_id,
            hypercall: s.hypercall,
            reference_tsc: s.reference_tsc,
            tsc_page_sequence: s.tsc_page_sequence,
            crash: s.crash,
            crash_ctl: s.crash_ctl,
            reenlightenment_control: s.reenlightenment_control,
            tsc_emulation_control: s.tsc_emulation_control,
            tsc_emulation_status: s.tsc_emulation_status,
            tsc_invariant_control: s.tsc_invariant_control,
            crashes: s.crashes.iter().take(MAX_CRASHES).copied().collect(),
            refusals: Refusals::default(),
        }
    }

    /// The host sets TSC_EMULATION_STATUS.InProgress (a restore at a new TSC rate).
    pub(super) fn begin_tsc_emulation(&mut self) {
        self.tsc_emulation_status = 1;
    }

    /// Whether TSC_EMULATION_STATUS.InProgress is set.
    pub(super) fn tsc_emulation_in_progress(&self) -> bool {
        self.tsc_emulation_status & 1 != 0
    }

    /// The TSC page's last sequence.
    pub(super) fn sequence(&self) -> u32 {
        self.tsc_page_sequence
    }

    /// Records a sequence written to the TSC page.
    pub(super) fn set_sequence(&mut self, sequence: u32) {
        self.tsc_page_sequence = sequence;
    }

    fn write_hypercall(&mut self, value: u64, mem: &GuestMemory) -> Result<(), MsrFault> {
        if value & !(PAGE_ADDRESS_MASK | PAGE_ENABLE | HYPERCALL_LOCKED) != 0 {
            return Err(MsrFault);
        }
        if self.hypercall & HYPERCALL_LOCKED != 0 {
            return Err(MsrFault);
        }
        if self.guest_os_id == 0 {
            // TLFS: the hypercall MSR ignores writes until the guest identified itself (KVM
            // does the same).
            self.refusals.push(Refusal::Ignored {
                index: HYPERCALL,
                value,
                reason: "GUEST_OS_ID is 0",
            });
            return Ok(());
        }
        if value & PAGE_ENABLE != 0 {
            let gpa = value & PAGE_ADDRESS_MASK;
            let mut page = [INT3; 0x1000];
            page[..TRAMPOLINE.len()].copy_from_slice(&TRAMPOLINE);
            if mem.write_slice(&page, GuestAddress(gpa)).is_err() {
                self.refusals.push(Refusal::PageOutsideRam {
                    index: HYPERCALL,
                    gpa,
                });
                return Err(MsrFault);
            }
        }
        self.hypercall = value;
        Ok(())
    }

    fn write_reference_tsc(
        &mut self,
        value: u64,
        clock: Option<&ReferenceClock>,
        mem: &GuestMemory,
    ) -> Result<(), MsrFault> {
        if value & !(PAGE_ADDRESS_MASK | PAGE_ENABLE) != 0 {
            return Err(MsrFault);
        }
        self.reference_tsc = value;
        let Some(gpa) = hyperv_tlfs::overlay_page_gpa(value) else {
            return Ok(());
        };
        // Like KVM, an unusable page is not a #GP: the guest keeps using TIME_REF_COUNT.
        match clock::write_tsc_page(mem, gpa, clock, self.tsc_page_sequence) {
            Ok(sequence) => self.tsc_page_sequence = sequence,
            Err(_) => {
                self.reference_tsc &= !PAGE_ENABLE;
                self.refusals.push(Refusal::PageOutsideRam {
                    index: REFERENCE_TSC,
                    gpa,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(
        p: &mut Partition,
        index: u32,
        value: u64,
        mem: &GuestMemory,
    ) -> Result<PartitionEffect, MsrFault> {
        let clock = ReferenceClock::new(2_000_000_000, 0);
        p.write(index, value, clock.as_ref(), mem)
    }

    #[test]
    fn hypercall_page_needs_an_os_id_and_ram() {
        let mem = crate::memory::allocate(16).unwrap();
        let mut p = Partition::default();
        assert_eq!(
            write(&mut p, HYPERCALL, 0x5000 | 1, &mem),
            Ok(PartitionEffect::None)
        );
        assert_eq!(p.hypercall_page(), None, "ignored while GUEST_OS_ID is 0");
        write(&mut p, GUEST_OS_ID, 0x8100_0006_0100_0000, &mem).unwrap();
        write(&mut p, HYPERCALL, 0x5000 | 1, &mem).unwrap();
        assert_eq!(p.hypercall_page(), Some(0x5000));
        let mut code = [0u8; 4];
        mem.read_slice(&mut code, GuestAddress(0x5000)).unwrap();
        assert_eq!(code, [0xe6, 0x99, 0xc3, 0xcc]);
        assert_eq!(
            write(&mut p, HYPERCALL, (16 << 20) | 1, &mem),
            Err(MsrFault)
        );
        let refusals: Vec<String> = p.refusals.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            refusals,
            [
                "wrmsr HYPERCALL = 0x5001 ignored: GUEST_OS_ID is 0",
                "HYPERCALL page at 0x1000000 is outside RAM"
            ]
        );
        assert_eq!(
            write(&mut p, HYPERCALL, 0x5000 | 1 | 0x10, &mem),
            Err(MsrFault),
            "reserved"
        );
        write(&mut p, GUEST_OS_ID, 0, &mem).unwrap();
        assert_eq!(p.hypercall_page(), None, "a zero OS ID disables the page");
    }

    #[test]
    fn a_locked_hypercall_msr_refuses_writes() {
        let mem = crate::memory::allocate(16).unwrap();
        let mut p = Partition::default();
        write(&mut p, GUEST_OS_ID, 1, &mem).unwrap();
        write(&mut p, HYPERCALL, 0x5000 | 1 | HYPERCALL_LOCKED, &mem).unwrap();
        assert_eq!(write(&mut p, HYPERCALL, 0, &mem), Err(MsrFault));
        assert_eq!(p.hypercall_page(), Some(0x5000));
    }

    #[test]
    fn tsc_page_outside_ram_is_ignored_not_faulted() {
        let mem = crate::memory::allocate(16).unwrap();
        let mut p = Partition::default();
        write(&mut p, REFERENCE_TSC, 0x6000 | 1, &mem).unwrap();
        let seq: u32 = mem.read_obj(GuestAddress(0x6000)).unwrap();
        assert_ne!(seq, 0);
        assert_eq!(p.tsc_page(), Some(0x6000));
        assert_eq!(
            write(&mut p, REFERENCE_TSC, (32 << 20) | 1, &mem),
            Ok(PartitionEffect::None)
        );
        assert_eq!(p.tsc_page(), None);
    }

    #[test]
    fn crash_reset_and_reenlightenment() {
        let mem = crate::memory::allocate(16).unwrap();
        let mut p = Partition::default();
        assert_eq!(p.read(CRASH_CTL), Ok(CRASH_CTL_NOTIFY));
        for i in 0..5 {
            write(&mut p, CRASH_P0 + i, 0x11 * u64::from(i + 1), &mem).unwrap();
        }
        assert_eq!(
            write(&mut p, CRASH_CTL, CRASH_CTL_NOTIFY, &mem),
            Ok(PartitionEffect::Crash([0x11, 0x22, 0x33, 0x44, 0x55]))
        );
        assert_eq!(write(&mut p, RESET, 0, &mem), Ok(PartitionEffect::None));
        assert_eq!(write(&mut p, RESET, 1, &mem), Ok(PartitionEffect::Reset));
        assert_eq!(p.read(RESET), Ok(0));
        // The matrix: REENLIGHTENMENT_CONTROL read and write 1 OK; TSC_EMULATION_STATUS write 1 → #GP.
        assert_eq!(
            write(&mut p, REENLIGHTENMENT_CONTROL, 1, &mem),
            Ok(PartitionEffect::None)
        );
        assert_eq!(p.read(REENLIGHTENMENT_CONTROL), Ok(1));
        assert_eq!(write(&mut p, TSC_EMULATION_STATUS, 1, &mem), Err(MsrFault));
        assert_eq!(
            write(&mut p, REENLIGHTENMENT_CONTROL, 1 << 20, &mem),
            Err(MsrFault)
        );
    }

    #[test]
    fn tsc_invariant_control_is_sticky() {
        let mem = crate::memory::allocate(16).unwrap();
        let mut p = Partition::default();
        assert_eq!(
            write(&mut p, TSC_INVARIANT_CONTROL, 0xdead_beef, &mem),
            Err(MsrFault)
        );
        assert_eq!(
            write(&mut p, TSC_INVARIANT_CONTROL, 1, &mem),
            Ok(PartitionEffect::None)
        );
        assert_eq!(write(&mut p, TSC_INVARIANT_CONTROL, 0, &mem), Err(MsrFault));
    }
}
