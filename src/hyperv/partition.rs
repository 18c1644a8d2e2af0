//! The user backend's partition and VP state, and the synthetic MSRs it answers.
//!
//! Every MSR answers exactly as the TLFS and KVM with hv-enforce-cpuid do: an MSR whose
//! CPUID bit the guest was not given, a write to a read-only MSR, or a reserved bit set gets
//! #GP. Pages the guest names (hypercall page, TSC page) are written only inside guest RAM.

use super::clock::{self, ReferenceClock};
use super::features::{feature, privilege, Features};
use super::msrs::*;
use super::report::{GuestOsId, UsageReport};
use crate::memory::{self, Bytes, GuestAddress, GuestMemory};
use crate::vcpu::msr::MsrFault;

/// The port the hypercall page's trampoline writes to (an 8-bit immediate port, so the guest's
/// RDX, which carries the input GPA, is left alone).
pub const HYPERCALL_PORT: u16 = 0x99;
/// The hypercall page: `out 0x99, al; ret`, the rest `int3` so a stray jump traps. RAX (the
/// result) is written by hvkvm during the exit; every other register is preserved.
const TRAMPOLINE: [u8; 3] = [0xe6, HYPERCALL_PORT as u8, 0xc3];
const INT3: u8 = 0xcc;
/// KVM's in-kernel LAPIC timer runs at 1 GHz.
pub const APIC_FREQUENCY_HZ: u64 = 1_000_000_000;

const PAGE_ENABLE: u64 = 1;
const PAGE_MASK: u64 = !0xfff;
const HYPERCALL_LOCKED: u64 = 1 << 1;
const CRASH_NOTIFY: u64 = 1 << 63;
const CRASH_MESSAGE: u64 = 1 << 62;
const REENLIGHTENMENT_VALID: u64 = 0xffff_ffff_0001_00ff;

/// What a guest write asks of the VMM beyond storing the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MsrEffect {
    /// Nothing.
    None,
    /// RESET was written with bit 0 set.
    Reset,
    /// CRASH_CTL was written with CRASH_NOTIFY: the bugcheck code and parameters.
    Crash([u64; 5]),
}

/// Per-VP state.
#[derive(Debug, Clone, Default)]
pub struct VpState {
    /// VP_ASSIST_PAGE as written.
    pub assist_page: u64,
}

/// Partition-wide Hyper-V state of one VM.
#[derive(Debug)]
pub struct Partition {
    features: Features,
    clock: Option<ReferenceClock>,
    tsc_hz: u64,
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
    vps: Vec<VpState>,
    /// What the guest used.
    pub report: UsageReport,
}

impl Partition {
    /// A fresh partition of `vps` VPs offering `features`, whose guest TSC runs at `tsc_hz`
    /// and read `tsc_at_start` when the partition was created.
    pub fn new(features: Features, vps: u32, tsc_hz: u64, tsc_at_start: u64) -> Self {
        Partition {
            features,
            clock: ReferenceClock::new(tsc_hz, tsc_at_start),
            tsc_hz,
            guest_os_id: 0,
            hypercall: 0,
            reference_tsc: 0,
            tsc_page_sequence: 0,
            crash: [0; 5],
            // The host sets CRASH_NOTIFY so the guest sees that crash reporting is supported.
            crash_ctl: CRASH_NOTIFY,
            reenlightenment_control: 0,
            tsc_emulation_control: 0,
            tsc_emulation_status: 0,
            tsc_invariant_control: 0,
            vps: vec![VpState::default(); vps as usize],
            report: UsageReport::default(),
        }
    }

    /// The features the partition offers.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Whether the guest enabled the hypercall page (and may issue hypercalls).
    pub fn hypercall_page(&self) -> Option<u64> {
        (self.hypercall & PAGE_ENABLE != 0).then_some(self.hypercall & PAGE_MASK)
    }

    /// A VP's assist page GPA, when enabled.
    pub fn vp_assist_page(&self, vp: u32) -> Option<u64> {
        let page = self.vps.get(vp as usize)?.assist_page;
        (page & PAGE_ENABLE != 0).then_some(page & PAGE_MASK)
    }

    /// Reference time at guest TSC `tsc` (100 ns units).
    pub fn reference_time(&self, tsc: u64) -> u64 {
        match &self.clock {
            Some(c) => c.time_at(tsc),
            // A TSC too slow for a 64.64 scale: count directly.
            None => ((u128::from(tsc) * 10_000_000) / u128::from(self.tsc_hz.max(1))) as u64,
        }
    }

    fn gate(&self, index: u32) -> bool {
        let f = &self.features;
        match index {
            GUEST_OS_ID | HYPERCALL => f.has(privilege::HYPERCALL_MSRS),
            VP_INDEX => f.has(privilege::VP_INDEX),
            RESET => f.has(privilege::RESET),
            VP_RUNTIME => f.has(privilege::VP_RUNTIME),
            TIME_REF_COUNT => f.has(privilege::TIME_REF_COUNT),
            REFERENCE_TSC => f.has(privilege::REFERENCE_TSC),
            // Linux reads them only with both bits; KVM gates on the privilege bit.
            TSC_FREQUENCY | APIC_FREQUENCY => f.has(privilege::FREQUENCY_MSRS),
            EOI | ICR | TPR | VP_ASSIST_PAGE => f.has(privilege::APIC_MSRS),
            CRASH_P0..=CRASH_P4 | CRASH_CTL => f.has_feature(feature::CRASH_MSRS),
            REENLIGHTENMENT_CONTROL | TSC_EMULATION_CONTROL | TSC_EMULATION_STATUS => {
                f.has(privilege::REENLIGHTENMENT)
            }
            TSC_INVARIANT_CONTROL => f.has(privilege::TSC_INVARIANT),
            // SynIC, synthetic timers, syndbg, guest idle, nested SynIC: not implemented by
            // the user backend, so never offered; #GP like any absent MSR.
            _ => false,
        }
    }

    /// RDMSR of a synthetic MSR by VP `vp` whose guest TSC is `tsc`.
    pub fn read_msr(&mut self, vp: u32, index: u32, tsc: u64) -> Result<u64, MsrFault> {
        let result = self.read_inner(vp, index, tsc);
        self.report.msr(index, false, result.is_err());
        if result.is_err() {
            self.report.refuse(format!("rdmsr {} (#GP)", name(index)));
        }
        result
    }

    fn read_inner(&mut self, vp: u32, index: u32, tsc: u64) -> Result<u64, MsrFault> {
        if !self.gate(index) {
            return Err(MsrFault);
        }
        Ok(match index {
            GUEST_OS_ID => self.guest_os_id,
            HYPERCALL => self.hypercall,
            VP_INDEX => u64::from(vp),
            RESET => 0,
            VP_RUNTIME => thread_run_time_100ns(),
            TIME_REF_COUNT => self.reference_time(tsc),
            REFERENCE_TSC => self.reference_tsc,
            TSC_FREQUENCY => self.tsc_hz,
            APIC_FREQUENCY => APIC_FREQUENCY_HZ,
            VP_ASSIST_PAGE => self.vps.get(vp as usize).map_or(0, |v| v.assist_page),
            // EOI is write-only; ICR/TPR need the in-kernel LAPIC (hv-vapic is never offered
            // by this backend, see hv-model), so the gate already refused them.
            CRASH_P0..=CRASH_P4 => self.crash[(index - CRASH_P0) as usize],
            CRASH_CTL => self.crash_ctl,
            REENLIGHTENMENT_CONTROL => self.reenlightenment_control,
            TSC_EMULATION_CONTROL => self.tsc_emulation_control,
            TSC_EMULATION_STATUS => self.tsc_emulation_status,
            TSC_INVARIANT_CONTROL => self.tsc_invariant_control,
            _ => return Err(MsrFault),
        })
    }

    /// WRMSR of a synthetic MSR by VP `vp`.
    pub fn write_msr(
        &mut self,
        vp: u32,
        index: u32,
        value: u64,
        mem: &GuestMemory,
    ) -> Result<MsrEffect, MsrFault> {
        let result = self.write_inner(vp, index, value, mem);
        self.report.msr(index, true, result.is_err());
        if result.is_err() {
            self.report
                .refuse(format!("wrmsr {} = {value:#x} (#GP)", name(index)));
        }
        result
    }

    fn write_inner(
        &mut self,
        vp: u32,
        index: u32,
        value: u64,
        mem: &GuestMemory,
    ) -> Result<MsrEffect, MsrFault> {
        if !self.gate(index) {
            return Err(MsrFault);
        }
        match index {
            GUEST_OS_ID => {
                self.guest_os_id = value;
                self.report.guest_os_id = Some(GuestOsId::decode(value));
                if value == 0 {
                    // TLFS: a zero guest OS ID disables the hypercall page.
                    self.hypercall &= !PAGE_ENABLE;
                    self.report.hypercall_page = None;
                }
            }
            HYPERCALL => self.write_hypercall(value, mem)?,
            REFERENCE_TSC => self.write_reference_tsc(value, mem)?,
            RESET => {
                if value & 1 != 0 {
                    return Ok(MsrEffect::Reset);
                }
            }
            VP_ASSIST_PAGE => {
                if value & !(PAGE_MASK | PAGE_ENABLE) != 0 {
                    return Err(MsrFault);
                }
                let gpa = value & PAGE_MASK;
                if value & PAGE_ENABLE != 0 && !memory::range_is_ram(mem, gpa, 0x1000) {
                    self.report
                        .refuse(format!("VP assist page at {gpa:#x} is outside RAM"));
                    return Err(MsrFault);
                }
                if let Some(state) = self.vps.get_mut(vp as usize) {
                    state.assist_page = value;
                }
                if value & PAGE_ENABLE != 0 {
                    self.report.vp_assist_pages.insert(vp, gpa);
                } else {
                    self.report.vp_assist_pages.remove(&vp);
                }
            }
            CRASH_P0..=CRASH_P4 => self.crash[(index - CRASH_P0) as usize] = value,
            CRASH_CTL => {
                if value & !(CRASH_NOTIFY | CRASH_MESSAGE) != 0 {
                    return Err(MsrFault);
                }
                if value & CRASH_NOTIFY != 0 {
                    self.report.crashes.push(self.crash);
                    return Ok(MsrEffect::Crash(self.crash));
                }
            }
            REENLIGHTENMENT_CONTROL => {
                if value & !REENLIGHTENMENT_VALID != 0 {
                    return Err(MsrFault);
                }
                self.reenlightenment_control = value;
            }
            TSC_EMULATION_CONTROL => {
                if value & !1 != 0 {
                    return Err(MsrFault);
                }
                self.tsc_emulation_control = value;
            }
            // The guest may only clear "in progress"; hvkvm never migrates, so it is 0.
            TSC_EMULATION_STATUS => {
                if value != 0 {
                    return Err(MsrFault);
                }
                self.tsc_emulation_status = 0;
            }
            TSC_INVARIANT_CONTROL => {
                // Bit 0 only, and once set it stays set.
                if value & !1 != 0 || (self.tsc_invariant_control & 1 != 0 && value & 1 == 0) {
                    return Err(MsrFault);
                }
                self.tsc_invariant_control = value;
            }
            // Read-only: VP_INDEX, VP_RUNTIME, TIME_REF_COUNT, frequencies.
            _ => return Err(MsrFault),
        }
        Ok(MsrEffect::None)
    }

    fn write_hypercall(&mut self, value: u64, mem: &GuestMemory) -> Result<(), MsrFault> {
        if self.hypercall & HYPERCALL_LOCKED != 0 {
            self.report
                .refuse("write to the locked HYPERCALL MSR".into());
            return Err(MsrFault);
        }
        if value & !(PAGE_MASK | PAGE_ENABLE | HYPERCALL_LOCKED) != 0 {
            return Err(MsrFault);
        }
        if self.guest_os_id == 0 {
            // TLFS and KVM: ignored (not refused) until the guest identified itself.
            self.report
                .refuse("HYPERCALL written while GUEST_OS_ID is 0 (ignored)".into());
            return Ok(());
        }
        if value & PAGE_ENABLE != 0 {
            let gpa = value & PAGE_MASK;
            let mut page = [INT3; 0x1000];
            page[..TRAMPOLINE.len()].copy_from_slice(&TRAMPOLINE);
            if mem.write_slice(&page, GuestAddress(gpa)).is_err() {
                self.report
                    .refuse(format!("hypercall page at {gpa:#x} is outside RAM"));
                return Err(MsrFault);
            }
            self.report.hypercall_page = Some(gpa);
        } else {
            self.report.hypercall_page = None;
        }
        self.hypercall = value;
        Ok(())
    }

    fn write_reference_tsc(&mut self, value: u64, mem: &GuestMemory) -> Result<(), MsrFault> {
        if value & !(PAGE_MASK | PAGE_ENABLE) != 0 {
            return Err(MsrFault);
        }
        self.reference_tsc = value;
        if value & PAGE_ENABLE == 0 {
            self.report.tsc_page = None;
            return Ok(());
        }
        let gpa = value & PAGE_MASK;
        // Like KVM, an unusable page is not a #GP: the guest keeps using TIME_REF_COUNT.
        match clock::write_tsc_page(mem, gpa, self.clock.as_ref(), self.tsc_page_sequence) {
            Ok(sequence) => {
                self.tsc_page_sequence = sequence;
                self.report.tsc_page = Some(gpa);
            }
            Err(_) => self
                .report
                .refuse(format!("TSC page at {gpa:#x} is outside RAM (ignored)")),
        }
        Ok(())
    }
}

/// This thread's CPU time in 100 ns units (the calling vCPU's run time: MSR exits are handled
/// on the vCPU's own thread).
fn thread_run_time_100ns() -> u64 {
    // /proc/thread-self/schedstat: "<ns on cpu> <ns waiting> <timeslices>".
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |ns| ns / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u64 = 2_000_000_000;

    fn features(eax: u32, edx: u32) -> Features {
        Features {
            privileges: eax,
            features: edx,
            ..Default::default()
        }
    }

    fn partition(eax: u32, edx: u32) -> Partition {
        Partition::new(features(eax, edx), 2, HZ, 0)
    }

    #[test]
    fn absent_features_give_gp() {
        let mem = memory::allocate(16).unwrap();
        let mut p = partition(0, 0);
        for index in [
            GUEST_OS_ID,
            HYPERCALL,
            VP_INDEX,
            VP_RUNTIME,
            TIME_REF_COUNT,
            REFERENCE_TSC,
            TSC_FREQUENCY,
            RESET,
            CRASH_P0,
            CRASH_CTL,
            REENLIGHTENMENT_CONTROL,
            0x4000_0080,
        ] {
            assert_eq!(p.read_msr(0, index, 0), Err(MsrFault), "{}", name(index));
            assert_eq!(
                p.write_msr(0, index, 0, &mem),
                Err(MsrFault),
                "{}",
                name(index)
            );
        }
        assert_eq!(p.report.msrs["GUEST_OS_ID"].faults, 2);
    }

    #[test]
    fn read_only_msrs_refuse_writes() {
        let mem = memory::allocate(16).unwrap();
        let all = privilege::VP_INDEX
            | privilege::VP_RUNTIME
            | privilege::TIME_REF_COUNT
            | privilege::FREQUENCY_MSRS;
        let mut p = partition(all, feature::FREQUENCIES);
        assert_eq!(p.read_msr(1, VP_INDEX, 0), Ok(1));
        assert_eq!(p.read_msr(0, TSC_FREQUENCY, 0), Ok(HZ));
        assert_eq!(p.read_msr(0, APIC_FREQUENCY, 0), Ok(APIC_FREQUENCY_HZ));
        assert!(p.read_msr(0, VP_RUNTIME, 0).is_ok());
        for index in [
            VP_INDEX,
            VP_RUNTIME,
            TIME_REF_COUNT,
            TSC_FREQUENCY,
            APIC_FREQUENCY,
        ] {
            assert_eq!(
                p.write_msr(0, index, 0, &mem),
                Err(MsrFault),
                "{}",
                name(index)
            );
        }
    }

    #[test]
    fn hypercall_page_needs_an_os_id_and_ram() {
        let mem = memory::allocate(16).unwrap();
        let mut p = partition(privilege::HYPERCALL_MSRS, 0);
        assert_eq!(
            p.write_msr(0, HYPERCALL, 0x5000 | 1, &mem),
            Ok(MsrEffect::None)
        );
        assert_eq!(p.hypercall_page(), None, "ignored while GUEST_OS_ID is 0");
        p.write_msr(0, GUEST_OS_ID, 0x8100_0006_0100_0000, &mem)
            .unwrap();
        p.write_msr(0, HYPERCALL, 0x5000 | 1, &mem).unwrap();
        assert_eq!(p.hypercall_page(), Some(0x5000));
        let mut code = [0u8; 4];
        mem.read_slice(&mut code, GuestAddress(0x5000)).unwrap();
        assert_eq!(code, [0xe6, 0x99, 0xc3, 0xcc]);
        assert_eq!(
            p.write_msr(0, HYPERCALL, (16 << 20) | 1, &mem),
            Err(MsrFault)
        );
        assert_eq!(
            p.write_msr(0, HYPERCALL, 0x5000 | 1 | 0x10, &mem),
            Err(MsrFault),
            "reserved"
        );
        p.write_msr(0, GUEST_OS_ID, 0, &mem).unwrap();
        assert_eq!(p.hypercall_page(), None, "a zero OS ID disables the page");
    }

    #[test]
    fn tsc_page_and_time_ref_count_agree() {
        let mem = memory::allocate(16).unwrap();
        let mut p = partition(privilege::REFERENCE_TSC | privilege::TIME_REF_COUNT, 0);
        p.write_msr(0, REFERENCE_TSC, 0x6000 | 1, &mem).unwrap();
        let seq: u32 = mem.read_obj(GuestAddress(0x6000)).unwrap();
        let scale: u64 = mem.read_obj(GuestAddress(0x6008)).unwrap();
        let offset: i64 = mem.read_obj(GuestAddress(0x6010)).unwrap();
        assert_ne!(seq, 0);
        let tsc = 123_456_789_000u64;
        let page_time =
            (((u128::from(tsc) * u128::from(scale)) >> 64) as u64).wrapping_add(offset as u64);
        assert_eq!(p.read_msr(0, TIME_REF_COUNT, tsc), Ok(page_time));
        // 100 ns units at 2 GHz, within the truncation of the 64.64 scale.
        assert!(
            (page_time as i64 - (tsc / 200) as i64).abs() <= 1,
            "{page_time}"
        );
        // A page outside RAM is accepted (KVM behaviour) but not written.
        assert_eq!(
            p.write_msr(0, REFERENCE_TSC, (32 << 20) | 1, &mem),
            Ok(MsrEffect::None)
        );
        assert_eq!(p.report.tsc_page, Some(0x6000));
    }

    #[test]
    fn crash_reset_and_reenlightenment() {
        let mem = memory::allocate(16).unwrap();
        let mut p = partition(
            privilege::RESET | privilege::REENLIGHTENMENT,
            feature::CRASH_MSRS,
        );
        assert_eq!(p.read_msr(0, CRASH_CTL, 0), Ok(CRASH_NOTIFY));
        for i in 0..5 {
            p.write_msr(0, CRASH_P0 + i, 0x11 * u64::from(i + 1), &mem)
                .unwrap();
        }
        assert_eq!(
            p.write_msr(0, CRASH_CTL, CRASH_NOTIFY, &mem),
            Ok(MsrEffect::Crash([0x11, 0x22, 0x33, 0x44, 0x55]))
        );
        assert_eq!(p.write_msr(0, RESET, 0, &mem), Ok(MsrEffect::None));
        assert_eq!(p.write_msr(0, RESET, 1, &mem), Ok(MsrEffect::Reset));
        assert_eq!(p.read_msr(0, RESET, 0), Ok(0));
        // The matrix: REENLIGHTENMENT_CONTROL read and write 1 OK; TSC_EMULATION_STATUS write 1 → #GP.
        assert_eq!(
            p.write_msr(0, REENLIGHTENMENT_CONTROL, 1, &mem),
            Ok(MsrEffect::None)
        );
        assert_eq!(p.read_msr(0, REENLIGHTENMENT_CONTROL, 0), Ok(1));
        assert_eq!(p.write_msr(0, TSC_EMULATION_STATUS, 1, &mem), Err(MsrFault));
        assert_eq!(
            p.write_msr(0, REENLIGHTENMENT_CONTROL, 1 << 20, &mem),
            Err(MsrFault)
        );
    }

    #[test]
    fn tsc_invariant_control_is_sticky() {
        let mem = memory::allocate(16).unwrap();
        let mut p = partition(privilege::TSC_INVARIANT, 0);
        assert_eq!(
            p.write_msr(0, TSC_INVARIANT_CONTROL, 0xdead_beef, &mem),
            Err(MsrFault)
        );
        assert_eq!(
            p.write_msr(0, TSC_INVARIANT_CONTROL, 1, &mem),
            Ok(MsrEffect::None)
        );
        assert_eq!(
            p.write_msr(0, TSC_INVARIANT_CONTROL, 0, &mem),
            Err(MsrFault)
        );
    }

    #[test]
    fn hostile_values_never_panic() {
        let mem = memory::allocate(16).unwrap();
        let mut p = partition(u32::MAX, u32::MAX);
        let mut x = 0x1234_5678_9abc_def0u64;
        for index in RANGE_START..RANGE_START + RANGE_LEN {
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let _ = p.read_msr(x as u32 % 4, index, x);
                let _ = p.write_msr(x as u32 % 4, index, x, &mem);
            }
        }
    }
}
