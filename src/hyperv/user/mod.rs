//! The user backend: hvkvm emulates the Hyper-V interface itself, so enlightenments work on
//! kernels without in-kernel Hyper-V (and on hosts like kvm_pvm that have none).
//!
//! - [`UserBackend`]: one per VM. Immutable facts (the features read from the guest's CPUID,
//!   the reference clock, frequencies) need no lock; partition-wide MSRs sit behind one
//!   partition lock ([`partition`]); each VP's state sits behind its own lock ([`vp`]).
//! - [`UserVp`]: one handle per vCPU, registered on that vCPU's MSR bus for the synthetic
//!   range and called by the exit handler for hypercalls.
//!
//! Guest MSR accesses reach the backend because the VM's MSR filter denies the whole range
//! 0x40000000..=0x400001FF to KVM, so even a kernel with its own Hyper-V emulation forwards
//! them here. Hypercalls arrive through the hypercall page, an I/O-port trampoline (no
//! `vmcall`, which hangs on some hosts).
//!
//! What the backend sends the other way goes through the VM's [`VpLink`]: SynIC and timer
//! interrupts and synthetic IPIs are MSIs to the VP's in-kernel LAPIC (`KVM_SIGNAL_MSI`), and
//! remote TLB flushes kick the target out of `KVM_RUN` ([`tlb`]). Synthetic timers run on one
//! timer thread per VM ([`timers`]), started when the guest first arms a timer.

pub mod clock;
pub mod connections;
pub mod features;
pub mod hypercall;
pub mod link;
pub mod partition;
pub mod snapshot;
pub mod stimer;
pub mod synic;
pub mod timers;
pub mod tlb;
pub mod usage;
pub mod vp;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyperv_tlfs::cpuid::{feature, privilege};
use hyperv_tlfs::msr::{self, APIC_FREQUENCY, TIME_REF_COUNT, TSC_FREQUENCY};
use hyperv_tlfs::synic::{Message, MESSAGE_PAYLOAD_BYTES};
use kvm_bindings::{kvm_cpuid_entry2, kvm_vcpu_events};

use self::clock::ReferenceClock;
use self::connections::{Connections, GuestSynic, SynicError};
use self::features::Features;
use self::hypercall::{
    status, FlushRequest, HypercallRegs, HypercallServices, Offered, Outcome, PostMessage, VpSet,
};
use self::link::{NoLink, VpLink};
use self::partition::{Partition, PartitionEffect};
use self::stimer::TimerGates;
use self::timers::{TimerHost, TimerThread};
use self::tlb::FlushSlot;
use self::usage::{Event, MsrUse, Refusal};
use self::vp::{VpContext, VpState};
use super::report::{UsageReport, TIME_DILATION_FACTOR};
use super::{CrashAction, HvExitError};
use crate::devices::GuestRequest;
use crate::kvm::clock::host_tsc;
use crate::memory::GuestMemory;
use crate::ratelimit::warn_ratelimited;
use crate::vcpu::msr::{MsrFault, MsrWriteEffect, VcpuMsrHandler};
use crate::vcpu::VcpuState;

pub use self::partition::HYPERCALL_PORT;

/// KVM's in-kernel LAPIC timer runs at 1 GHz; APIC_FREQUENCY reports that (times the time
/// dilation factor, see [`UserBackendParams::time_dilation`]).
pub const APIC_FREQUENCY_HZ: u64 = 1_000_000_000;

/// Most VPs a VM has (vm::config::MAX_VCPUS), for fixed-size per-call arrays.
const MAX_VPS: usize = 256;
/// While the VM is paused, how often the timer thread looks again (10 ms of reference time).
const PAUSED_RECHECK: u64 = 100_000;

const UD_VECTOR: u8 = 6;
const EFER_LMA: u64 = 1 << 10;
/// Length of the trampoline's `out imm8, al`, to back RIP up to the hypercall instruction.
const OUT_IMM8_LEN: u64 = 2;

/// The user backend of one VM.
#[derive(Debug)]
pub struct UserBackend {
    features: Features,
    offered: Offered,
    gates: TimerGates,
    clock: Option<ReferenceClock>,
    /// The TSC rate the guest is told (the real one times the dilation factor).
    tsc_hz: u64,
    /// Time dilation: reference time and timers run this many times slower than host time.
    dilation: u32,
    /// guest TSC = host TSC + this (KVM gives all vCPUs of a VM the same offset).
    tsc_offset: u64,
    on_crash: CrashAction,
    mem: GuestMemory,
    offered_names: Vec<String>,
    link: Arc<dyn VpLink>,
    connections: Connections,
    timers: Arc<TimerThread>,
    partition: Mutex<Partition>,
    vps: Box<[Mutex<VpState>]>,
    flush: Box<[FlushSlot]>,
    /// Held while the timer thread delivers expirations ([`UserBackend::quiesce`]).
    timer_gate: Mutex<()>,
    /// What the guest used before the snapshot this backend was restored from.
    history: Option<UsageReport>,
}

/// What the user backend is built from.
#[derive(Debug)]
pub struct UserBackendParams<'a> {
    /// The CPUID table the guest runs with (the backend reads its features from it).
    pub cpuid: &'a [kvm_cpuid_entry2],
    /// Enlightenments offered, by QEMU name, for the report.
    pub offered_names: Vec<String>,
    /// vCPU count.
    pub vps: u32,
    /// Guest RAM.
    pub mem: GuestMemory,
    /// The guest TSC now, and its rate.
    pub guest_tsc: u64,
    /// Guest TSC rate in kHz.
    pub tsc_khz: u32,
    /// Crash policy.
    pub on_crash: CrashAction,
    /// Interrupts and kicks (None: a backend that reaches no VM, for tests and tools).
    pub link: Option<Arc<dyn VpLink>>,
    /// The connections HvPostMessage and HvSignalEvent reach.
    pub connections: Connections,
    /// Time dilation factor N ≥ 1: the guest is told N times the real TSC and APIC timer
    /// rates, and reference time and synthetic timers run N times slower, so that the guest's
    /// whole sense of time is consistently N times slower than the host's (a host quirk for
    /// hosts that emulate guest kernel code, see `host_quirks`). 1: real time.
    pub time_dilation: u32,
}

impl UserBackend {
    /// A backend whose reference time starts at 0 now.
    pub fn new(p: UserBackendParams<'_>) -> Self {
        let dilation = p.time_dilation.max(1);
        let tsc_hz = u64::from(p.tsc_khz) * 1000 * u64::from(dilation);
        let features = Features::from_cpuid(p.cpuid);
        UserBackend {
            features,
            offered: features.offered(),
            gates: TimerGates {
                synic: features.has(privilege::SYNIC),
                direct: features.has_feature(feature::DIRECT_SYNTHETIC_TIMERS),
            },
            clock: ReferenceClock::new(tsc_hz, p.guest_tsc),
            tsc_hz,
            dilation,
            tsc_offset: p.guest_tsc.wrapping_sub(host_tsc()),
            on_crash: p.on_crash,
            mem: p.mem,
            offered_names: p.offered_names,
            link: p.link.unwrap_or_else(|| Arc::new(NoLink)),
            connections: p.connections,
            timers: TimerThread::new("hv-stimers".into()),
            partition: Mutex::new(Partition::default()),
            vps: (0..p.vps).map(|_| Mutex::new(VpState::default())).collect(),
            flush: (0..p.vps).map(|_| FlushSlot::default()).collect(),
            timer_gate: Mutex::new(()),
            history: None,
        }
    }

    /// Stops the timer thread (and waits for it). The VM calls this once its vCPUs stopped;
    /// dropping the backend does it too.
    pub fn shutdown(&self) {
        self.timers.stop();
    }

    /// Arms the timer thread for the timers a restored backend already has.
    pub fn resume_timers(self: &Arc<Self>) {
        let next = self
            .vps
            .iter()
            .flat_map(|vp| {
                let vp = vp.lock().unwrap_or_else(|p| p.into_inner());
                vp.timers.iter().filter_map(|t| t.deadline()).min()
            })
            .min();
        if let Some(deadline) = next {
            self.timers.request(self, deadline);
        }
    }

    /// Returns once no timer expiration is being delivered, with none to come while the VM is
    /// paused: the timer thread checks the pause under the same gate. The VM calls this after
    /// pausing, before it reads vCPU state for a snapshot.
    pub fn quiesce(&self) {
        drop(self.timer_gate.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The number of VPs.
    pub fn vp_count(&self) -> u32 {
        self.vps.len() as u32
    }

    /// The time dilation factor (1: none).
    pub fn time_dilation(&self) -> u32 {
        self.dilation
    }

    /// The reference time now.
    pub fn now(&self) -> u64 {
        self.reference_time(self.guest_tsc())
    }

    /// Runs `f` on VP `vp`'s state with a context at reference time `now`; `arm` tells the
    /// timer thread about new deadlines.
    fn with_vp<R>(
        &self,
        vp: u32,
        now: u64,
        arm: &dyn Fn(u64),
        f: impl FnOnce(&mut VpState, &VpContext<'_>) -> R,
    ) -> Option<R> {
        let mut state = self.vp(vp)?;
        let ctx = VpContext {
            vp,
            mem: &self.mem,
            link: &*self.link,
            gates: self.gates,
            now,
            arm,
        };
        Some(f(&mut state, &ctx))
    }

    fn partition(&self) -> MutexGuard<'_, Partition> {
        self.partition.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn vp(&self, vp: u32) -> Option<MutexGuard<'_, VpState>> {
        let slot = self.vps.get(vp as usize)?;
        Some(slot.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The guest TSC now.
    pub fn guest_tsc(&self) -> u64 {
        host_tsc().wrapping_add(self.tsc_offset)
    }

    /// Reference time (100 ns units) at guest TSC `tsc`.
    pub fn reference_time(&self, tsc: u64) -> u64 {
        match &self.clock {
            Some(c) => c.time_at(tsc),
            // A TSC too slow for a 64.64 scale: count directly.
            None => ((u128::from(tsc) * 10_000_000) / u128::from(self.tsc_hz.max(1))) as u64,
        }
    }

    /// The handle vCPU `vp` uses.
    pub fn vp_handle(self: &Arc<Self>, vp: u32) -> UserVp {
        UserVp {
            vp,
            backend: self.clone(),
        }
    }

    /// What the guest used so far, with every enabled VP assist page (and the eVMCS it
    /// announces) decoded from guest memory now.
    pub fn report(&self) -> UsageReport {
        let mut report = UsageReport {
            backend: "user".into(),
            offered: self.offered_names.clone(),
            ..UsageReport::default()
        };
        if self.dilation > 1 {
            report
                .events
                .insert(TIME_DILATION_FACTOR.into(), u64::from(self.dilation));
        }
        let flushes: u64 = self.flush.iter().map(FlushSlot::performed).sum();
        if flushes > 0 {
            let (flush_ns, wait_ns) = self
                .flush
                .iter()
                .map(FlushSlot::times_ns)
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
            report
                .events
                .insert("remote TLB flushes performed".into(), flushes);
            report.events.insert(
                "remote TLB flushes: µs resetting the MMU".into(),
                flush_ns / 1000,
            );
            report.events.insert(
                "remote TLB flushes: µs senders waited".into(),
                wait_ns / 1000,
            );
        }
        {
            let p = self.partition();
            report.guest_os_id = p.guest_os_id();
            report.hypercall_page = p.hypercall_page();
            report.tsc_page = p.tsc_page();
            report.crashes = p.crashes.clone();
            report.add_refusals(p.refusals.iter(), p.refusals.dropped);
        }
        for (vp, state) in self.vps.iter().enumerate() {
            let state = state.lock().unwrap_or_else(|p| p.into_inner());
            let vp = vp as u32;
            if let Some(gpa) = state.assist_page_gpa() {
                report.vp_assist_pages.insert(vp, gpa);
                report
                    .vp_assist
                    .push(super::inspect::assist_page(&self.mem, vp, gpa));
            }
            add_vp_usage(&mut report, &state.usage);
        }
        if let Some(earlier) = &self.history {
            report.add_earlier(earlier);
        }
        report
    }

    fn read_msr(&self, vp: u32, index: u32) -> Result<u64, MsrFault> {
        if !self.features.msr_available(index) {
            return Err(MsrFault);
        }
        match index {
            TIME_REF_COUNT => Ok(self.now()),
            TSC_FREQUENCY => Ok(self.tsc_hz),
            APIC_FREQUENCY => Ok(APIC_FREQUENCY_HZ * u64::from(self.dilation)),
            _ if Partition::owns(index) => self.partition().read(index),
            _ if VpState::owns(index) => self.vp(vp).ok_or(MsrFault)?.read(vp, index),
            _ => Err(MsrFault),
        }
    }

    fn write_msr(
        self: &Arc<Self>,
        vp: u32,
        index: u32,
        value: u64,
    ) -> Result<MsrWriteEffect, MsrFault> {
        if !self.features.msr_available(index) {
            return Err(MsrFault);
        }
        if Partition::owns(index) {
            let effect = self
                .partition()
                .write(index, value, self.clock.as_ref(), &self.mem)?;
            return Ok(match effect {
                PartitionEffect::None => None,
                PartitionEffect::Reset => Some(GuestRequest::Reset),
                PartitionEffect::Crash(params) => super::crash_reported(vp, params, self.on_crash),
            });
        }
        if VpState::owns(index) {
            let arm = |deadline: u64| self.timers.request(self, deadline);
            return self
                .with_vp(vp, self.now(), &arm, |state, ctx| {
                    state.write(index, value, ctx)
                })
                .ok_or(MsrFault)?
                .map(|()| None);
        }
        // Read-only partition values (TIME_REF_COUNT, frequencies) and anything unserved.
        Err(MsrFault)
    }

    /// Flushes the TLB of every VP of `targets` (see [`tlb`]): each is asked, those in the
    /// guest are kicked, and this returns once none of them can still use a stale entry.
    fn flush_tlbs(&self, targets: &VpSet) {
        let mut waits = [None; MAX_VPS];
        for vp in targets.iter(self.vp_count()) {
            let Some(slot) = self.flush.get(vp as usize) else {
                continue;
            };
            let ticket = slot.request(vp, &*self.link);
            if let Some(mut state) = self.vp(vp) {
                state.usage.event(Event::FlushRequested);
                if ticket.is_some() {
                    state.usage.event(Event::FlushWaited);
                }
            }
            if let Some(w) = waits.get_mut(vp as usize) {
                *w = ticket;
            }
        }
        for (vp, ticket) in waits.iter().enumerate() {
            if let (Some(ticket), Some(slot)) = (ticket, self.flush.get(vp)) {
                slot.wait(vp as u32, *ticket, &*self.link);
            }
        }
    }

    /// Sends `vector` to every VP of `targets`.
    fn send_ipi(&self, vector: u8, targets: &VpSet) {
        for vp in targets.iter(self.vp_count()) {
            if let Some(mut state) = self.vp(vp) {
                state.usage.event(Event::IpiReceived);
            }
            if let Err(e) = self.link.interrupt(vp, vector) {
                warn_ratelimited!("cannot send synthetic IPI vector {vector} to VP {vp}: {e}");
            }
        }
    }
}

impl Drop for UserBackend {
    fn drop(&mut self) {
        self.timers.stop();
    }
}

impl TimerHost for UserBackend {
    fn now(&self) -> u64 {
        UserBackend::now(self)
    }

    fn run_timers(&self, now: u64) -> u64 {
        let _gate = self.timer_gate.lock().unwrap_or_else(|p| p.into_inner());
        if self.link.paused() {
            // Nothing reaches a paused guest (a snapshot may be reading its state); look again
            // later. Due expirations stay due and are delivered after the resume.
            return now.saturating_add(PAUSED_RECHECK);
        }
        let mut next = u64::MAX;
        for vp in 0..self.vp_count() {
            // The thread itself is what `arm` would wake: the returned deadline covers it.
            let deadline = self.with_vp(vp, now, &|_| {}, |state, ctx| state.run_timers(ctx));
            next = next.min(deadline.unwrap_or(u64::MAX));
        }
        next
    }

    fn wall_until(&self, now: u64, deadline: u64) -> Duration {
        // One reference unit is 100 ns of guest time, `dilation` times as much host time.
        let units = deadline.saturating_sub(now);
        Duration::from_nanos(units.saturating_mul(100 * u64::from(self.dilation)))
    }
}

impl GuestSynic for UserBackend {
    fn post_message(
        &self,
        vp: u32,
        sint: u8,
        message_type: u32,
        payload: &[u8],
    ) -> Result<(), SynicError> {
        if message_type == hyperv_tlfs::synic::message_type::NONE
            || payload.len() > MESSAGE_PAYLOAD_BYTES
        {
            return Err(SynicError::BadMessage {
                message_type,
                size: payload.len(),
            });
        }
        let message = Message::new(message_type, payload);
        self.with_vp(vp, self.now(), &|_| {}, |state, ctx| {
            state.post_message(sint, &message, ctx)
        })
        .ok_or(SynicError::NoVp(vp))?
    }

    fn signal_event(&self, vp: u32, sint: u8, flag: u32) -> Result<(), SynicError> {
        self.with_vp(vp, self.now(), &|_| {}, |state, ctx| {
            state.signal_event(sint, flag, ctx)
        })
        .ok_or(SynicError::NoVp(vp))?
    }
}

/// Adds one VP's counters to a report.
fn add_vp_usage(report: &mut UsageReport, usage: &usage::VpUsage) {
    for (offset, u) in (0u32..).zip(usage.msrs.iter()) {
        if *u == MsrUse::default() {
            continue;
        }
        let name = msr::Name(msr::RANGE_START + offset).to_string();
        let entry = report.msrs.entry(name).or_default();
        entry.reads += u.reads;
        entry.writes += u.writes;
        entry.faults += u.faults;
    }
    for (call, statuses) in usage.hypercalls.iter().enumerate() {
        for (status, n) in statuses.iter().enumerate().filter(|(_, n)| **n > 0) {
            *report
                .hypercalls
                .entry(hypercall::call_row_name(call).to_string())
                .or_default()
                .entry(hypercall::status_row_name(status).to_string())
                .or_default() += n;
        }
    }
    report.hypercall_ud += usage.hypercall_ud;
    report.add_refusals(usage.refusals.iter(), usage.refusals.dropped);
    for (event, n) in Event::ALL.iter().zip(usage.events.iter()) {
        if *n > 0 {
            *report.events.entry(event.name().to_string()).or_default() += n;
        }
    }
}

/// One vCPU's handle on the user backend.
#[derive(Debug, Clone)]
pub struct UserVp {
    vp: u32,
    backend: Arc<UserBackend>,
}

impl VcpuMsrHandler for UserVp {
    fn read(&mut self, index: u32) -> Result<u64, MsrFault> {
        let result = self.backend.read_msr(self.vp, index);
        self.count(index, false, result.is_err(), || Refusal::Rdmsr { index });
        result
    }

    fn write(&mut self, index: u32, value: u64) -> Result<MsrWriteEffect, MsrFault> {
        let result = UserBackend::write_msr(&self.backend, self.vp, index, value);
        self.count(index, true, result.is_err(), || Refusal::Wrmsr {
            index,
            value,
        });
        result
    }
}

impl UserVp {
    /// The VP index.
    pub fn index(&self) -> u32 {
        self.vp
    }

    /// Right before `KVM_RUN`: carries out the TLB flushes other VPs asked of this one.
    pub fn before_entry(&self, state: &mut dyn VcpuState) -> Result<(), HvExitError> {
        let Some(slot) = self.backend.flush.get(self.vp as usize) else {
            return Ok(());
        };
        let vp = self.vp;
        slot.before_entry(|| {
            tlb::flush_with_efer(
                || state.msr(tlb::MSR_EFER),
                |v| state.set_msr(tlb::MSR_EFER, v),
            )
            .map_err(|source| HvExitError::VcpuAccess {
                vp,
                what: "flush the TLB (EFER through KVM_GET_MSRS/KVM_SET_MSRS)",
                source,
            })
        })
    }

    /// Right after `KVM_RUN` returned.
    pub fn after_exit(&self) {
        if let Some(slot) = self.backend.flush.get(self.vp as usize) {
            slot.after_exit();
        }
    }

    /// Counts an MSR access in this VP's usage (after the access, so no other lock is held).
    fn count(&self, index: u32, write: bool, faulted: bool, refusal: impl FnOnce() -> Refusal) {
        let Some(mut vp) = self.backend.vp(self.vp) else {
            return;
        };
        vp.usage.msr(index, write, faulted);
        if faulted {
            let refusal = refusal();
            vp.usage.refusals.push(refusal);
            warn_ratelimited!("VP {}: {refusal}", self.vp);
        }
    }

    /// Serves the hypercall whose trampoline exit (an `out` to [`HYPERCALL_PORT`]) just
    /// happened: reads the registers, runs the call, writes RAX or injects #UD.
    pub fn hypercall(
        &self,
        state: &mut dyn VcpuState,
    ) -> Result<Option<GuestRequest>, HvExitError> {
        let vp = self.vp;
        let access =
            |what: &'static str| move |source| HvExitError::VcpuAccess { vp, what, source };
        let mut regs = state
            .regs()
            .map_err(access("read the registers (KVM_GET_REGS)"))?;
        let sregs = state
            .sregs()
            .map_err(access("read the segment registers (KVM_GET_SREGS)"))?;
        let page = self.backend.partition().hypercall_page();
        if page.is_none() {
            // No enabled hypercall page (never enabled, or disabled by GUEST_OS_ID = 0): the
            // guest has no hypercall instruction, so #UD, as KVM answers a VMCALL then.
            warn_ratelimited!("VP {vp}: hypercall without an enabled hypercall page: #UD");
            return self.raise_ud(state, regs).map(|()| None);
        }
        let offered = &self.backend.offered;
        let control = hypercall::Control::decode(regs.rcx);
        let mut call = HypercallRegs {
            rcx: regs.rcx,
            rdx: regs.rdx,
            r8: regs.r8,
            xmm: None,
        };
        if hypercall::needs_xmm(&control, offered) {
            call.xmm = Some(state.xmm().map_err(access("read XMM0-5 (KVM_GET_FPU)"))?);
        }
        let cpl = sregs.ss.dpl;
        let long_mode = sregs.efer & EFER_LMA != 0 && sregs.cs.l == 1;
        let mut services = Services {
            vp,
            backend: &self.backend,
        };
        let outcome = hypercall::handle(
            vp,
            cpl,
            long_mode,
            &call,
            offered,
            &self.backend.mem,
            &mut services,
        );
        match outcome {
            Outcome::Complete(rax) => {
                if let Some(mut state) = self.backend.vp(vp) {
                    state.usage.hypercall(control.code, rax as u16);
                }
                regs.rax = rax;
                state
                    .set_regs(&regs)
                    .map_err(access("write RAX (KVM_SET_REGS)"))?;
            }
            Outcome::InvalidOpcode => self.raise_ud(state, regs)?,
        }
        Ok(None)
    }

    /// #UD at the hypercall instruction (the start of the trampoline, before the `out`).
    fn raise_ud(
        &self,
        state: &mut dyn VcpuState,
        mut regs: kvm_bindings::kvm_regs,
    ) -> Result<(), HvExitError> {
        let vp = self.vp;
        let access =
            |what: &'static str| move |source| HvExitError::VcpuAccess { vp, what, source };
        if let Some(mut s) = self.backend.vp(vp) {
            s.usage.hypercall_ud += 1;
        }
        regs.rip = regs.rip.wrapping_sub(OUT_IMM8_LEN);
        let mut events = state
            .events()
            .map_err(access("read pending events (KVM_GET_VCPU_EVENTS)"))?;
        inject_ud(&mut events);
        state
            .set_regs(&regs)
            .map_err(access("move RIP back (KVM_SET_REGS)"))?;
        state
            .set_events(&events)
            .map_err(access("inject #UD (KVM_SET_VCPU_EVENTS)"))
    }
}

fn inject_ud(events: &mut kvm_vcpu_events) {
    events.exception.injected = 1;
    events.exception.nr = UD_VECTOR;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
}

/// The hypercalls the user backend carries out.
struct Services<'a> {
    vp: u32,
    backend: &'a UserBackend,
}

impl HypercallServices for Services<'_> {
    fn notify_long_spin_wait(&mut self, vcpu: u32) {
        debug_assert_eq!(vcpu, self.vp);
        // The spinning VP gives its host CPU away, which is what the hint asks for.
        std::thread::yield_now();
    }

    fn flush_virtual_address(&mut self, _vcpu: u32, request: &FlushRequest<'_>) -> u16 {
        // Every flush flushes everything the targets cached: over-flushing is always correct,
        // so the address space, the flags and the GVA list (either range format) need no
        // further interpretation.
        self.backend.flush_tlbs(&request.processors);
        status::SUCCESS
    }

    fn send_ipi(&mut self, _vcpu: u32, vector: u8, targets: &VpSet) -> u16 {
        // VP indices without a VP are ignored, as KVM does.
        self.backend.send_ipi(vector, targets);
        status::SUCCESS
    }

    fn synic_active(&self, _vcpu: u32) -> bool {
        self.backend.gates.synic
    }

    fn post_message(&mut self, vcpu: u32, message: &PostMessage) -> u16 {
        match self.backend.connections.get(message.connection_id) {
            Some(c) => c.post_message(self.backend, vcpu, message.message_type, message.payload()),
            None => status::INVALID_CONNECTION_ID,
        }
    }

    fn signal_event(&mut self, vcpu: u32, connection_id: u32, flag_number: u16) -> u16 {
        match self.backend.connections.get(connection_id) {
            Some(c) => c.signal_event(self.backend, vcpu, flag_number),
            None => status::INVALID_CONNECTION_ID,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperv_tlfs::cpuid::{feature, privilege, LEAF_FEATURES};
    use hyperv_tlfs::msr::*;

    const HZ: u32 = 2_000_000;

    fn backend(eax: u32, edx: u32) -> Arc<UserBackend> {
        let leaf = kvm_cpuid_entry2 {
            function: LEAF_FEATURES,
            eax,
            edx,
            ..Default::default()
        };
        Arc::new(UserBackend::new(UserBackendParams {
            cpuid: &[leaf],
            offered_names: vec!["hv-time".into()],
            vps: 2,
            mem: crate::memory::allocate(16).unwrap(),
            guest_tsc: 0,
            tsc_khz: HZ,
            on_crash: CrashAction::Log,
            link: None,
            connections: Connections::default(),
            time_dilation: 1,
        }))
    }

    #[test]
    fn absent_features_give_gp_and_are_counted() {
        let b = backend(0, 0);
        let mut vp = b.vp_handle(0);
        for index in [
            GUEST_OS_ID,
            VP_INDEX,
            TIME_REF_COUNT,
            TSC_FREQUENCY,
            CRASH_CTL,
            SCONTROL,
        ] {
            assert_eq!(vp.read(index), Err(MsrFault), "{}", Name(index));
            assert_eq!(vp.write(index, 0), Err(MsrFault), "{}", Name(index));
        }
        let report = b.report();
        assert_eq!(report.msrs["GUEST_OS_ID"].faults, 2);
        assert_eq!(report.refused.len(), 12);
        assert_eq!(report.backend, "user");
    }

    #[test]
    fn read_only_partition_values() {
        let all = privilege::VP_INDEX | privilege::TIME_REF_COUNT | privilege::FREQUENCY_MSRS;
        let b = backend(all, feature::FREQUENCIES);
        let mut vp1 = b.vp_handle(1);
        assert_eq!(vp1.read(VP_INDEX), Ok(1));
        assert_eq!(vp1.read(TSC_FREQUENCY), Ok(u64::from(HZ) * 1000));
        assert_eq!(vp1.read(APIC_FREQUENCY), Ok(APIC_FREQUENCY_HZ));
        for index in [VP_INDEX, TIME_REF_COUNT, TSC_FREQUENCY, APIC_FREQUENCY] {
            assert_eq!(vp1.write(index, 0), Err(MsrFault), "{}", Name(index));
        }
    }

    #[test]
    fn tsc_page_and_time_ref_count_agree() {
        use crate::memory::{Bytes, GuestAddress};
        let b = backend(privilege::REFERENCE_TSC | privilege::TIME_REF_COUNT, 0);
        let mut vp = b.vp_handle(0);
        vp.write(REFERENCE_TSC, 0x6000 | 1).unwrap();
        let scale: u64 = b.mem.read_obj(GuestAddress(0x6008)).unwrap();
        let offset: i64 = b.mem.read_obj(GuestAddress(0x6010)).unwrap();
        let tsc = 123_456_789_000u64;
        let page_time = hyperv_tlfs::tsc_page::reference_time(tsc, scale, offset);
        assert_eq!(b.reference_time(tsc), page_time);
        // 100 ns units at 2 GHz, within the truncation of the 64.64 scale.
        assert!(
            (page_time as i64 - (tsc / 200) as i64).abs() <= 1,
            "{page_time}"
        );
        assert_eq!(b.report().tsc_page, Some(0x6000));
    }

    #[test]
    fn crash_follows_the_policy() {
        let b = backend(privilege::RESET, feature::CRASH_MSRS);
        let mut vp = b.vp_handle(1);
        assert_eq!(
            vp.write(CRASH_CTL, CRASH_CTL_NOTIFY),
            Ok(None),
            "log: the guest goes on"
        );
        assert_eq!(vp.write(RESET, 1), Ok(Some(GuestRequest::Reset)));
        assert_eq!(b.report().crashes.len(), 1);
    }

    fn linked(eax: u32) -> (Arc<UserBackend>, Arc<link::RecordingLink>) {
        let leaf = kvm_cpuid_entry2 {
            function: LEAF_FEATURES,
            eax,
            ..Default::default()
        };
        let link = Arc::new(link::RecordingLink::default());
        let b = Arc::new(UserBackend::new(UserBackendParams {
            cpuid: &[leaf],
            offered_names: vec![],
            vps: 2,
            mem: crate::memory::allocate(16).unwrap(),
            guest_tsc: 0,
            tsc_khz: HZ,
            on_crash: CrashAction::Log,
            link: Some(link.clone()),
            connections: Connections::default(),
            time_dilation: 1,
        }));
        (b, link)
    }

    #[test]
    fn ipis_reach_existing_targets_only_and_flushes_need_no_wait_outside_the_guest() {
        let (b, link) = linked(0);
        let mut set = VpSet::from_mask(0b110);
        b.send_ipi(0x40, &set);
        assert_eq!(link.take_interrupts(), [(1, 0x40)], "VP 2 does not exist");
        set = VpSet::all();
        b.send_ipi(0x41, &set);
        assert_eq!(link.take_interrupts(), [(0, 0x41), (1, 0x41)]);
        // Neither VP is in the guest: no kick, no wait; each flushes before it enters.
        b.flush_tlbs(&set);
        assert!(link.kicks.lock().unwrap().is_empty());
        let mut flushed = 0;
        b.flush[1]
            .before_entry(|| -> Result<(), ()> {
                flushed += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(flushed, 1);
        assert_eq!(b.report().events["remote TLB flushes requested"], 2);
    }

    #[test]
    fn hvkvm_code_reaches_a_guest_sint() {
        use hyperv_tlfs::synic::message_type::TIMER_EXPIRED;
        let (b, link) = linked(privilege::SYNIC);
        let mut vp = b.vp_handle(1);
        assert_eq!(
            b.post_message(1, 3, 0x10, b"x"),
            Err(SynicError::NotEnabled(1))
        );
        vp.write(SIMP, 0x3000 | 1).unwrap();
        vp.write(SCONTROL, 1).unwrap();
        vp.write(SINT0 + 3, 0x33).unwrap();
        assert_eq!(b.post_message(1, 3, 0x10, b"x"), Ok(()));
        assert_eq!(link.take_interrupts(), [(1, 0x33)]);
        assert_eq!(
            b.post_message(1, 3, 0, b"x"),
            Err(SynicError::BadMessage {
                message_type: 0,
                size: 1
            })
        );
        assert_eq!(
            b.post_message(7, 3, TIMER_EXPIRED, b""),
            Err(SynicError::NoVp(7))
        );
        assert_eq!(b.signal_event(1, 3, 1), Err(SynicError::NotEnabled(1)));
    }

    #[test]
    fn the_timer_thread_starts_with_the_first_timer_and_stops_with_the_vm() {
        let b = backend(
            privilege::SYNIC | privilege::SYNTIMERS | privilege::TIME_REF_COUNT,
            0,
        );
        let mut vp = b.vp_handle(0);
        assert!(!b.timers.started(), "no thread before a timer is armed");
        vp.write(STIMER0_COUNT, 10_000_000).unwrap();
        vp.write(STIMER0_CONFIG, 1 | 2 | (2 << 16)).unwrap();
        assert!(b.timers.started() && b.timers.running());
        b.shutdown();
        assert!(!b.timers.running(), "shutdown joins the thread");
    }

    #[test]
    fn hostile_values_never_panic() {
        let b = backend(u32::MAX, u32::MAX);
        let mut vp = b.vp_handle(1);
        let mut x = 0x1234_5678_9abc_def0u64;
        for index in msr::RANGE_START..msr::RANGE_START + msr::RANGE_LEN {
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let _ = vp.read(index);
                let _ = vp.write(index, x);
            }
        }
        let _ = b.report();
    }
}
