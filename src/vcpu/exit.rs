//! What each KVM exit means for hvkvm.
//!
//! Dispatch happens in two steps so that it can be unit-tested without /dev/kvm and without
//! fighting the `kvm_run` borrow: [`ExitHandler::dispatch`] consumes kvm-ioctls' `VcpuExit`
//! (which borrows the vCPU's `kvm_run` page) and either finishes the exit or returns a
//! [`DeferredExit`] that needs register access; [`ExitHandler::handle_deferred`] then gets
//! the vCPU through the [`VcpuState`] trait.

use std::sync::Arc;

use kvm_bindings::{
    kvm_debug_exit_arch, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::VcpuExit;

use super::msr::MsrBus;
use super::stats::{ExitKind, VcpuStats};
use super::ucall::{self, Ucall};
use super::VcpuState;
use crate::devices::{GuestRequest, IoBus, PioOutcome, UCALL_PORT};
use crate::host_quirks::EmulationAssist;
use crate::hyperv::{HvExitError, HvVp};
use crate::kvm::run_data::InternalError;
use crate::memory::GuestMemory;
use crate::ratelimit::warn_ratelimited;
use crate::vm::control::VmControl;
use crate::vm::outcome::{StopReason, SyncEvent};

/// The [`ExitKind`] of `exit`, for the statistics.
fn exit_kind(exit: &VcpuExit<'_>) -> ExitKind {
    match exit {
        VcpuExit::IoIn(..) => ExitKind::IoIn,
        VcpuExit::IoOut(..) => ExitKind::IoOut,
        VcpuExit::MmioRead(..) => ExitKind::MmioRead,
        VcpuExit::MmioWrite(..) => ExitKind::MmioWrite,
        VcpuExit::X86Rdmsr(..) => ExitKind::MsrRead,
        VcpuExit::X86Wrmsr(..) => ExitKind::MsrWrite,
        VcpuExit::Hyperv => ExitKind::Hyperv,
        VcpuExit::InternalError => ExitKind::InternalError,
        VcpuExit::Debug(..) => ExitKind::Debug,
        _ => ExitKind::Other,
    }
}

/// The port of a port-I/O exit.
fn exit_port(exit: &VcpuExit<'_>) -> Option<u16> {
    match exit {
        VcpuExit::IoIn(port, _) | VcpuExit::IoOut(port, _) => Some(*port),
        _ => None,
    }
}

/// What the vCPU loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Re-enter the guest.
    Continue,
    /// Stop the whole VM for this reason.
    Stop(StopReason),
}

/// An exit whose handling needs the vCPU's registers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeferredExit {
    /// `out` to the ucall port: the struct address is in RDI.
    Ucall,
    /// KVM_EXIT_SHUTDOWN (triple fault): report RIP.
    Shutdown,
    /// KVM_EXIT_INTERNAL_ERROR: read its payload.
    InternalError,
    /// KVM_EXIT_DEBUG.
    Debug(kvm_debug_exit_arch),
    /// `out` to the Hyper-V hypercall port (from the hypercall page's trampoline).
    Hypercall,
    /// KVM_EXIT_HYPERV (kernel Hyper-V backend).
    Hyperv,
    /// KVM_SYSTEM_EVENT_CRASH: the guest reported a crash through the Hyper-V crash MSRs.
    GuestCrash,
    /// A WRMSR the host-quirk assist traps through the MSR filter (already let through to
    /// the guest's instruction; the assist must perform the write).
    TrappedMsrWrite {
        /// MSR index.
        index: u32,
        /// Value written.
        value: u64,
    },
}

/// The result of [`ExitHandler::dispatch`].
#[derive(Debug, Clone, PartialEq)]
pub enum Dispatch {
    /// Handled.
    Done(ExitAction),
    /// Needs [`ExitHandler::handle_deferred`].
    Deferred(DeferredExit),
}

/// Everything one vCPU's exits are handled with.
pub struct ExitHandler {
    /// The vCPU index.
    pub vcpu: u32,
    /// Port-I/O devices.
    pub io: IoBus,
    /// This vCPU's user-space MSR handlers (the Hyper-V user backend's among them).
    pub msrs: MsrBus,
    /// Guest RAM (for ucalls and assists).
    pub mem: GuestMemory,
    /// The VM's control block (ucall reports).
    pub control: Arc<VmControl>,
    /// This vCPU's counters.
    pub stats: Arc<VcpuStats>,
    /// Host-specific completion of instructions KVM cannot emulate (None on normal hosts).
    pub assist: Option<EmulationAssist>,
    /// This vCPU's handle on the VM's Hyper-V backend, when the VM has one.
    pub hyperv: Option<HvVp>,
}

impl std::fmt::Debug for ExitHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitHandler")
            .field("vcpu", &self.vcpu)
            .finish_non_exhaustive()
    }
}

impl ExitHandler {
    fn stop(&self, reason: StopReason) -> Dispatch {
        Dispatch::Done(ExitAction::Stop(reason))
    }

    /// What the VM does for a device's or an MSR's request.
    fn on_request(&self, request: GuestRequest) -> ExitAction {
        let vcpu = self.vcpu;
        ExitAction::Stop(match request {
            GuestRequest::PowerOff => StopReason::PowerOff,
            GuestRequest::Reset => StopReason::Reset,
            GuestRequest::TestExit(status) => StopReason::TestExit { status },
            GuestRequest::GuestCrash => StopReason::GuestCrash { vcpu },
            GuestRequest::Pause => {
                self.control.pause();
                return ExitAction::Continue;
            }
        })
    }

    /// The result of a Hyper-V backend's exit handling.
    fn after_hyperv(&self, result: Result<Option<GuestRequest>, HvExitError>) -> ExitAction {
        match result {
            Ok(None) => ExitAction::Continue,
            Ok(Some(request)) => self.on_request(request),
            Err(e) => ExitAction::Stop(StopReason::KvmRunFailed {
                vcpu: self.vcpu,
                error: crate::cli::error_chain(&e),
            }),
        }
    }

    /// Handles an exit that needs no register access, or defers it.
    pub fn dispatch(&mut self, exit: VcpuExit<'_>) -> Dispatch {
        let vcpu = self.vcpu;
        self.stats.exit(exit_kind(&exit), exit_port(&exit));
        match exit {
            VcpuExit::IoOut(port, data) => {
                if port == UCALL_PORT {
                    return Dispatch::Deferred(DeferredExit::Ucall);
                }
                if self.hyperv.as_ref().is_some_and(|hv| hv.claims_port(port)) {
                    return Dispatch::Deferred(DeferredExit::Hypercall);
                }
                match self.io.write(port, data) {
                    PioOutcome::Done => Dispatch::Done(ExitAction::Continue),
                    PioOutcome::Request(r) => Dispatch::Done(self.on_request(r)),
                }
            }
            VcpuExit::IoIn(port, data) => {
                self.io.read(port, data);
                Dispatch::Done(ExitAction::Continue)
            }
            VcpuExit::MmioRead(addr, data) => {
                warn_ratelimited!("vCPU {vcpu}: read of unassigned MMIO address {addr:#x}");
                data.fill(0xff);
                Dispatch::Done(ExitAction::Continue)
            }
            VcpuExit::MmioWrite(addr, _) => {
                warn_ratelimited!("vCPU {vcpu}: write to unassigned MMIO address {addr:#x}");
                Dispatch::Done(ExitAction::Continue)
            }
            VcpuExit::X86Rdmsr(exit) => {
                match self.msrs.read(exit.index) {
                    Ok(value) => *exit.data = value,
                    Err(_) => {
                        VcpuStats::bump(&self.stats.msr_gp);
                        log::debug!("vCPU {vcpu}: rdmsr {:#x} -> #GP", exit.index);
                        *exit.error = 1;
                    }
                }
                Dispatch::Done(ExitAction::Continue)
            }
            VcpuExit::X86Wrmsr(exit) => {
                if self
                    .assist
                    .as_ref()
                    .is_some_and(|a| a.traps_msr_write(exit.index))
                {
                    *exit.error = 0;
                    return Dispatch::Deferred(DeferredExit::TrappedMsrWrite {
                        index: exit.index,
                        value: exit.data,
                    });
                }
                match self.msrs.write(exit.index, exit.data) {
                    Err(_) => {
                        VcpuStats::bump(&self.stats.msr_gp);
                        log::debug!(
                            "vCPU {vcpu}: wrmsr {:#x}={:#x} -> #GP",
                            exit.index,
                            exit.data
                        );
                        *exit.error = 1;
                        Dispatch::Done(ExitAction::Continue)
                    }
                    Ok(None) => Dispatch::Done(ExitAction::Continue),
                    Ok(Some(request)) => Dispatch::Done(self.on_request(request)),
                }
            }
            VcpuExit::Hyperv if self.hyperv.is_some() => Dispatch::Deferred(DeferredExit::Hyperv),
            // With the in-kernel LAPIC, HLT is handled by KVM; a stray HLT exit just re-enters.
            VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => {
                Dispatch::Done(ExitAction::Continue)
            }
            VcpuExit::Shutdown => Dispatch::Deferred(DeferredExit::Shutdown),
            VcpuExit::InternalError => Dispatch::Deferred(DeferredExit::InternalError),
            VcpuExit::Debug(arch) => Dispatch::Deferred(DeferredExit::Debug(arch)),
            VcpuExit::FailEntry(reason, _) => self.stop(StopReason::EntryFailure { vcpu, reason }),
            VcpuExit::SystemEvent(kind, _) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => self.stop(StopReason::PowerOff),
                KVM_SYSTEM_EVENT_RESET => self.stop(StopReason::Reset),
                KVM_SYSTEM_EVENT_CRASH if self.hyperv.is_some() => {
                    Dispatch::Deferred(DeferredExit::GuestCrash)
                }
                KVM_SYSTEM_EVENT_CRASH => self.stop(StopReason::GuestCrash { vcpu }),
                other => self.stop(StopReason::UnhandledExit {
                    vcpu,
                    exit: format!("KVM_EXIT_SYSTEM_EVENT type {other}"),
                }),
            },
            other => self.stop(StopReason::UnhandledExit {
                vcpu,
                exit: format!("{other:?}"),
            }),
        }
    }

    /// Handles a deferred exit with access to the vCPU.
    pub fn handle_deferred(&mut self, exit: DeferredExit, state: &mut dyn VcpuState) -> ExitAction {
        let vcpu = self.vcpu;
        match exit {
            DeferredExit::Ucall => self.handle_ucall(state),
            DeferredExit::Hypercall | DeferredExit::Hyperv | DeferredExit::GuestCrash => {
                let Some(hv) = self.hyperv.as_mut() else {
                    return ExitAction::Stop(StopReason::UnhandledExit {
                        vcpu,
                        exit: format!("{exit:?} without a Hyper-V backend"),
                    });
                };
                let result = match exit {
                    DeferredExit::Hypercall => hv.hypercall_port(state),
                    DeferredExit::Hyperv => hv.hyperv_exit(state),
                    _ => hv.crash_event(state),
                };
                self.after_hyperv(result)
            }
            DeferredExit::Shutdown => {
                let rip = state.regs().map_or(0, |r| r.rip);
                ExitAction::Stop(StopReason::TripleFault { vcpu, rip })
            }
            DeferredExit::InternalError => {
                let error = state.internal_error();
                let rip = state.regs().map_or(0, |r| r.rip);
                match error {
                    InternalError::Emulation { insn } => {
                        if let Some(assist) = self.assist.as_mut() {
                            if assist.complete(state, &self.mem, &insn) {
                                VcpuStats::bump(&self.stats.emulation_assists);
                                return ExitAction::Continue;
                            }
                        }
                        ExitAction::Stop(StopReason::EmulationFailure { vcpu, rip, insn })
                    }
                    InternalError::Other { suberror, data } => {
                        ExitAction::Stop(StopReason::InternalError {
                            vcpu,
                            suberror,
                            data,
                        })
                    }
                }
            }
            DeferredExit::TrappedMsrWrite { index, value } => {
                let done = match self.assist.as_mut() {
                    Some(assist) => assist.on_trapped_msr_write(state, &self.mem, index, value),
                    None => false,
                };
                if done {
                    ExitAction::Continue
                } else {
                    ExitAction::Stop(StopReason::KvmRunFailed {
                        vcpu,
                        error: format!("cannot complete the trapped write of MSR {index:#x}"),
                    })
                }
            }
            DeferredExit::Debug(arch) => {
                if let Some(assist) = self.assist.as_mut() {
                    if assist.on_debug_exit(state, &self.mem, &arch) {
                        return ExitAction::Continue;
                    }
                }
                ExitAction::Stop(StopReason::UnhandledExit {
                    vcpu,
                    exit: format!("KVM_EXIT_DEBUG at {:#x}", arch.pc),
                })
            }
        }
    }

    fn handle_ucall(&mut self, state: &mut dyn VcpuState) -> ExitAction {
        let vcpu = self.vcpu;
        let addr = match state.regs() {
            Ok(regs) => regs.rdi,
            Err(e) => {
                return ExitAction::Stop(StopReason::KvmRunFailed {
                    vcpu,
                    error: format!("KVM_GET_REGS for a ucall: {e}"),
                })
            }
        };
        match ucall::decode(&self.mem, vcpu, addr) {
            Ok(Ucall::Sync { stage, values }) => {
                log::debug!("vCPU {vcpu}: ucall SYNC stage {stage} {values:x?}");
                self.control.record_sync(SyncEvent {
                    vcpu,
                    stage,
                    values,
                });
                ExitAction::Continue
            }
            Ok(Ucall::Print(text)) => {
                log::info!("guest vCPU {vcpu}: {text}");
                self.control.record_print(vcpu, text);
                ExitAction::Continue
            }
            Ok(Ucall::Assert(a)) => ExitAction::Stop(StopReason::GuestAssert(a)),
            Ok(Ucall::Done) => ExitAction::Stop(StopReason::GuestDone),
            Err(e) => ExitAction::Stop(StopReason::HostCheck {
                vcpu,
                message: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use kvm_bindings::{kvm_guest_debug, kvm_regs, kvm_sregs, kvm_vcpu_events};
    use kvm_ioctls::{MsrExitReason, ReadMsrExit, WriteMsrExit};

    use super::*;
    use crate::devices::test_exit::TestExit;
    use crate::memory::{Bytes, GuestAddress};
    use crate::vcpu::msr::{MsrFault, MsrHandler};

    /// A fake vCPU: registers in memory, a canned internal error.
    #[derive(Default)]
    struct FakeVcpu {
        regs: kvm_regs,
        internal: Option<InternalError>,
    }

    impl VcpuState for FakeVcpu {
        fn regs(&self) -> Result<kvm_regs, kvm_ioctls::Error> {
            Ok(self.regs)
        }
        fn set_regs(&self, _: &kvm_regs) -> Result<(), kvm_ioctls::Error> {
            Ok(())
        }
        fn sregs(&self) -> Result<kvm_sregs, kvm_ioctls::Error> {
            Ok(kvm_sregs::default())
        }
        fn set_sregs(&self, _: &kvm_sregs) -> Result<(), kvm_ioctls::Error> {
            Ok(())
        }
        fn msr(&self, _: u32) -> Result<u64, kvm_ioctls::Error> {
            Ok(0)
        }
        fn set_msr(&self, _: u32, _: u64) -> Result<(), kvm_ioctls::Error> {
            Ok(())
        }
        fn translate(&self, gva: u64) -> Option<u64> {
            Some(gva)
        }
        fn xmm(&self) -> Result<[u128; 6], kvm_ioctls::Error> {
            Ok([0; 6])
        }
        fn events(&self) -> Result<kvm_vcpu_events, kvm_ioctls::Error> {
            Ok(kvm_vcpu_events::default())
        }
        fn set_events(&self, _: &kvm_vcpu_events) -> Result<(), kvm_ioctls::Error> {
            Ok(())
        }
        fn set_guest_debug(&self, _: &kvm_guest_debug) -> Result<(), kvm_ioctls::Error> {
            Ok(())
        }
        fn internal_error(&mut self) -> InternalError {
            self.internal.clone().unwrap()
        }
        fn hyperv_exit(&mut self) -> crate::kvm::hyperv::HypervExit {
            crate::kvm::hyperv::HypervExit::Unknown { kind: 0 }
        }
        fn set_hcall_result(&mut self, _: u64) {}
    }

    struct Scratch(u64);
    impl MsrHandler for Scratch {
        fn read(&mut self, _: u32, _: u32) -> Result<u64, MsrFault> {
            Ok(self.0)
        }
        fn write(&mut self, _: u32, _: u32, value: u64) -> Result<(), MsrFault> {
            self.0 = value;
            Ok(())
        }
    }

    fn handler() -> ExitHandler {
        let mut io = IoBus::new();
        io.insert(0xf4, 1, Arc::new(Mutex::new(TestExit))).unwrap();
        let mut msrs = MsrBus::default();
        msrs.insert_shared(
            1,
            0x4856_4b4d..=0x4856_4b4d,
            Arc::new(Mutex::new(Scratch(0))),
        );
        ExitHandler {
            vcpu: 1,
            io,
            msrs,
            mem: crate::memory::allocate(16).unwrap(),
            control: Arc::new(VmControl::default()),
            stats: Arc::new(VcpuStats::default()),
            assist: None,
            hyperv: None,
        }
    }

    #[test]
    fn test_exit_port_stops_with_the_written_status() {
        let mut h = handler();
        assert_eq!(
            h.dispatch(VcpuExit::IoOut(0xf4, &[42])),
            Dispatch::Done(ExitAction::Stop(StopReason::TestExit { status: 42 }))
        );
        assert_eq!(
            h.dispatch(VcpuExit::IoOut(0x3f8, b"x")),
            Dispatch::Done(ExitAction::Continue)
        );
    }

    #[test]
    fn unhandled_msrs_get_gp_and_handled_ones_round_trip() {
        let mut h = handler();
        let rdmsr = |h: &mut ExitHandler, index| {
            let (mut error, mut data) = (0u8, 0u64);
            h.dispatch(VcpuExit::X86Rdmsr(ReadMsrExit {
                error: &mut error,
                reason: MsrExitReason::Unknown,
                index,
                data: &mut data,
            }));
            (error, data)
        };
        assert_eq!(rdmsr(&mut h, 0x1234_5678).0, 1, "unknown MSR read gets #GP");
        let mut werr = 0u8;
        h.dispatch(VcpuExit::X86Wrmsr(WriteMsrExit {
            error: &mut werr,
            reason: MsrExitReason::Unknown,
            index: 0x4856_4b4d,
            data: 0x1122,
        }));
        assert_eq!(werr, 0);
        assert_eq!(rdmsr(&mut h, 0x4856_4b4d), (0, 0x1122));
        let s = h.stats.snapshot();
        assert_eq!((s.msr, s.msr_gp), (3, 1));
    }

    #[test]
    fn triple_fault_reports_rip() {
        let mut h = handler();
        let mut vcpu = FakeVcpu {
            regs: kvm_regs {
                rip: 0xdead,
                ..Default::default()
            },
            ..Default::default()
        };
        let Dispatch::Deferred(d) = h.dispatch(VcpuExit::Shutdown) else {
            panic!()
        };
        assert_eq!(
            h.handle_deferred(d, &mut vcpu),
            ExitAction::Stop(StopReason::TripleFault {
                vcpu: 1,
                rip: 0xdead
            })
        );
    }

    #[test]
    fn emulation_failure_reports_instruction_bytes() {
        let mut h = handler();
        let mut vcpu = FakeVcpu {
            regs: kvm_regs {
                rip: 0x1000,
                ..Default::default()
            },
            internal: Some(InternalError::Emulation {
                insn: vec![0x66, 0x0f, 0xef, 0xc0],
            }),
        };
        let Dispatch::Deferred(d) = h.dispatch(VcpuExit::InternalError) else {
            panic!()
        };
        assert_eq!(
            h.handle_deferred(d, &mut vcpu),
            ExitAction::Stop(StopReason::EmulationFailure {
                vcpu: 1,
                rip: 0x1000,
                insn: vec![0x66, 0x0f, 0xef, 0xc0]
            })
        );
    }

    #[test]
    fn ucall_sync_is_recorded_and_done_stops() {
        let mut h = handler();
        for (i, w) in [1u64, 5, 10, 20, 0, 0, 0, 0].iter().enumerate() {
            h.mem
                .write_obj(*w, GuestAddress(0x2000 + 8 * i as u64))
                .unwrap();
        }
        let mut vcpu = FakeVcpu {
            regs: kvm_regs {
                rdi: 0x2000,
                ..Default::default()
            },
            ..Default::default()
        };
        let Dispatch::Deferred(d) = h.dispatch(VcpuExit::IoOut(UCALL_PORT, &[0; 4])) else {
            panic!()
        };
        assert_eq!(h.handle_deferred(d, &mut vcpu), ExitAction::Continue);
        let (syncs, _) = h.control.take_reports();
        assert_eq!(
            syncs,
            vec![SyncEvent {
                vcpu: 1,
                stage: 5,
                values: [10, 20, 0, 0, 0, 0]
            }]
        );
        h.mem.write_obj(4u64, GuestAddress(0x2000)).unwrap();
        assert_eq!(
            h.handle_deferred(d, &mut vcpu),
            ExitAction::Stop(StopReason::GuestDone)
        );
        vcpu.regs.rdi = u64::MAX;
        assert!(matches!(
            h.handle_deferred(d, &mut vcpu),
            ExitAction::Stop(StopReason::HostCheck { .. })
        ));
    }

    #[test]
    fn system_events_map_to_stop_reasons() {
        let mut h = handler();
        let data = [0u64; 1];
        assert_eq!(
            h.dispatch(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &data)),
            Dispatch::Done(ExitAction::Stop(StopReason::PowerOff))
        );
        assert_eq!(
            h.dispatch(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &data)),
            Dispatch::Done(ExitAction::Stop(StopReason::GuestCrash { vcpu: 1 }))
        );
    }
}
