//! The user backend as the vCPU exit handler sees it: one [`UserBackend`] per VM holding the
//! partition, one [`HvVcpu`] handle per vCPU.

use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::kvm_vcpu_events;

use super::hypercall::{self, HypercallRegs, HypercallServices, Outcome};
use super::partition::{MsrEffect, Partition, HYPERCALL_PORT};
use super::report::UsageReport;
use super::{features::Features, msrs, CrashAction, UserBackendConfig};
use crate::kvm::clock::host_tsc;
use crate::memory::GuestMemory;
use crate::ratelimit::warn_ratelimited;
use crate::vcpu::msr::MsrFault;
use crate::vcpu::VcpuState;

const UD_VECTOR: u8 = 6;
const EFER_LMA: u64 = 1 << 10;

/// The user backend of one VM.
#[derive(Debug)]
pub struct UserBackend {
    partition: Mutex<Partition>,
    /// guest TSC = host TSC + this (KVM gives all vCPUs of a VM the same offset).
    tsc_offset: u64,
    on_crash: CrashAction,
    mem: GuestMemory,
}

/// What the exit handler must do after a Hyper-V MSR write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEffect {
    /// Nothing.
    None,
    /// Reset the VM.
    Reset,
    /// Pause the VM (crash with `--on-guest-crash pause`).
    Pause,
    /// End the VM (crash with `--on-guest-crash exit`).
    Exit,
}

impl UserBackend {
    /// A backend for `vcpus` vCPUs whose guest TSC currently reads `guest_tsc` and runs at
    /// `tsc_khz`.
    pub fn new(
        config: &UserBackendConfig,
        vcpus: u32,
        mem: GuestMemory,
        guest_tsc: u64,
        tsc_khz: u32,
    ) -> Self {
        let tsc_offset = guest_tsc.wrapping_sub(host_tsc());
        let mut partition = Partition::new(
            Features::from_leaves(&config.leaves),
            vcpus,
            u64::from(tsc_khz) * 1000,
            guest_tsc,
        );
        partition.report.offered = config.offered.clone();
        UserBackend {
            partition: Mutex::new(partition),
            tsc_offset,
            on_crash: config.on_crash,
            mem,
        }
    }

    fn partition(&self) -> MutexGuard<'_, Partition> {
        self.partition.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The guest TSC now.
    pub fn guest_tsc(&self) -> u64 {
        host_tsc().wrapping_add(self.tsc_offset)
    }

    /// A copy of the usage report, with every enabled VP assist page (and the eVMCS it
    /// announces) decoded from guest memory now.
    pub fn report(&self) -> UsageReport {
        let mut report = self.partition().report.clone();
        report.vp_assist = report
            .vp_assist_pages
            .iter()
            .filter_map(|(&vp, &gpa)| super::inspect::assist_page(&self.mem, vp, gpa))
            .collect();
        report
    }

    /// The GPA of a VP's assist page, if enabled (for inspection, e.g. of an eVMCS).
    pub fn vp_assist_page(&self, vp: u32) -> Option<u64> {
        self.partition().vp_assist_page(vp)
    }
}

/// One vCPU's handle on the user backend.
#[derive(Debug, Clone)]
pub struct HvVcpu {
    /// The VP index (= vCPU index).
    pub vp: u32,
    /// The VM's backend.
    pub backend: Arc<UserBackend>,
}

impl HvVcpu {
    /// Whether `index` is a Hyper-V MSR this backend answers (every other MSR goes elsewhere).
    pub fn owns_msr(index: u32) -> bool {
        (msrs::RANGE_START..msrs::RANGE_START + msrs::RANGE_LEN).contains(&index)
    }

    /// Whether an `out` to `port` is a hypercall.
    pub fn is_hypercall_port(port: u16) -> bool {
        port == HYPERCALL_PORT
    }

    /// RDMSR.
    pub fn read_msr(&self, index: u32) -> Result<u64, MsrFault> {
        let tsc = self.backend.guest_tsc();
        self.backend.partition().read_msr(self.vp, index, tsc)
    }

    /// WRMSR.
    pub fn write_msr(&self, index: u32, value: u64) -> Result<VmEffect, MsrFault> {
        let effect =
            self.backend
                .partition()
                .write_msr(self.vp, index, value, &self.backend.mem)?;
        Ok(match effect {
            MsrEffect::None => VmEffect::None,
            MsrEffect::Reset => VmEffect::Reset,
            MsrEffect::Crash(p) => {
                log::error!(
                    "guest crash reported by VP {}: bugcheck {:#x} ({:#x}, {:#x}, {:#x}, {:#x})",
                    self.vp,
                    p[0],
                    p[1],
                    p[2],
                    p[3],
                    p[4]
                );
                match self.backend.on_crash {
                    CrashAction::Log => VmEffect::None,
                    CrashAction::Pause => VmEffect::Pause,
                    CrashAction::Exit => VmEffect::Exit,
                }
            }
        })
    }

    /// Serves the hypercall whose trampoline exit just happened. Returns false if the vCPU
    /// state could not be read or written (the caller stops the VM).
    pub fn hypercall(&self, state: &mut dyn VcpuState) -> bool {
        let (Ok(mut regs), Ok(sregs)) = (state.regs(), state.sregs()) else {
            return false;
        };
        let (offered, page) = {
            let partition = self.backend.partition();
            (partition.features().offered(), partition.hypercall_page())
        };
        if page.is_none() {
            // No enabled hypercall page (never enabled, or disabled by GUEST_OS_ID = 0): the
            // guest has no hypercall instruction, so #UD, as KVM answers a VMCALL then.
            warn_ratelimited!(
                "VP {}: hypercall without an enabled hypercall page: #UD",
                self.vp
            );
            return self.raise_ud(state, regs);
        }
        let control = hypercall::Control::decode(regs.rcx);
        let mut call = HypercallRegs {
            rcx: regs.rcx,
            rdx: regs.rdx,
            r8: regs.r8,
            xmm: None,
        };
        if hypercall::needs_xmm(&control, &offered) {
            match state.xmm() {
                Ok(xmm) => call.xmm = Some(xmm),
                Err(_) => return false,
            }
        }
        let cpl = sregs.ss.dpl;
        let long_mode = sregs.efer & EFER_LMA != 0 && sregs.cs.l == 1;
        let mut services = Services { vp: self.vp };
        let outcome = hypercall::handle(
            self.vp,
            cpl,
            long_mode,
            &call,
            &offered,
            &self.backend.mem,
            &mut services,
        );
        let name = hypercall::name(control.code);
        match outcome {
            Outcome::Complete(rax) => {
                let status = hypercall::status_name((rax & 0xffff) as u16);
                self.backend.partition().report.hypercall(&name, &status);
                regs.rax = rax;
                state.set_regs(&regs).is_ok()
            }
            Outcome::InvalidOpcode => self.raise_ud(state, regs),
        }
    }

    /// #UD at the hypercall instruction (the start of the trampoline, before the `out`).
    fn raise_ud(&self, state: &mut dyn VcpuState, mut regs: kvm_bindings::kvm_regs) -> bool {
        self.backend.partition().report.hypercall_ud += 1;
        regs.rip = regs.rip.wrapping_sub(2);
        let Ok(mut events) = state.events() else {
            return false;
        };
        inject_ud(&mut events);
        state.set_regs(&regs).is_ok() && state.set_events(&events).is_ok()
    }
}

fn inject_ud(events: &mut kvm_vcpu_events) {
    events.exception.injected = 1;
    events.exception.nr = UD_VECTOR;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
}

/// The hypercalls the user backend carries out.
struct Services {
    vp: u32,
}

impl HypercallServices for Services {
    fn notify_long_spin_wait(&mut self, vcpu: u32) {
        debug_assert_eq!(vcpu, self.vp);
        // The spinning VP gives its host CPU away, which is what the hint asks for.
        std::thread::yield_now();
    }
}
