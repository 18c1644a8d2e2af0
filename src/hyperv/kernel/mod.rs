//! The kernel backend: KVM's in-kernel Hyper-V emulation serves the synthetic MSRs, SynIC,
//! synthetic timers, the TSC page and the flush/IPI hypercalls. hvkvm's part (reference §7):
//!
//! - give the guest the Hyper-V CPUID leaves (KVM_SET_CPUID2, done with the rest of CPUID);
//! - per vCPU: KVM_CAP_HYPERV_SYNIC2 when SynIC or synthetic timers are offered, KVM_CAP_HYPERV_ENLIGHTENED_VMCS
//!   when the eVMCS is recommended (its version range checked against evmcs-layout),
//!   KVM_CAP_HYPERV_ENFORCE_CPUID with hv-enforce-cpuid, VP_INDEX set by the host, CRASH_CTL =
//!   CRASH_NOTIFY so the guest sees crash reporting;
//! - answer what KVM leaves to user space: `KVM_EXIT_HYPERV` (SynIC MSR writes, hypercalls
//!   such as HvPostMessage, SynDbg) and `KVM_SYSTEM_EVENT_CRASH`;
//! - read the synthetic MSRs back (KVM_GET_MSRS) for the usage report.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use hyperv_tlfs::cpuid::{feature, privilege, recommendation};
use hyperv_tlfs::msr::{self, CRASH_CTL, CRASH_CTL_NOTIFY, CRASH_P0, VP_INDEX};
use kvm_bindings::kvm_cpuid_entry2;
use kvm_ioctls::VcpuFd;

use super::backend::HvSetupError;
use super::report::UsageReport;
use super::user::features::Features;
use super::user::hypercall::{self, HypercallRegs, HypercallServices, Offered, Outcome};
use super::{CrashAction, HvConfig, HvExitError};
use crate::devices::GuestRequest;
use crate::kvm::hyperv::HypervExit;
use crate::memory::GuestMemory;
use crate::ratelimit::warn_ratelimited;
use crate::vcpu::VcpuState;

/// What one VP did that KVM told user space about, and its MSRs when it stopped.
#[derive(Debug, Default)]
struct VpRecord {
    /// Synthetic MSR values read back when the vCPU stopped (non-zero ones).
    msrs: BTreeMap<u32, u64>,
    /// `KVM_EXIT_HYPERV` SynIC exits.
    synic_exits: u64,
    /// Hypercalls KVM forwarded, by (code, status).
    hypercalls: BTreeMap<(u16, u16), u64>,
    /// SynDbg exits.
    syndbg_exits: u64,
    /// Crash reports.
    crashes: Vec<[u64; 5]>,
    /// The eVMCS version range KVM agreed when the backend enabled the enlightened VMCS.
    evmcs_versions: Option<evmcs_layout::EvmcsVersionRange>,
}

/// The kernel backend of one VM.
#[derive(Debug)]
pub struct KernelBackend {
    features: Features,
    offered: Offered,
    enforce_cpuid: bool,
    on_crash: CrashAction,
    offered_names: Vec<String>,
    mem: GuestMemory,
    vps: Box<[Mutex<VpRecord>]>,
    /// What the guest used before the snapshot this VM was restored from.
    history: Mutex<Option<UsageReport>>,
}

/// Whether the kernel backend activates the SynIC (`KVM_CAP_HYPERV_SYNIC2`) of a guest with
/// these features: with SynIC, and with timers too, since KVM serves the STIMER MSRs only on a
/// vCPU whose SynIC it activated.
fn activates_synic(features: &Features) -> bool {
    features.has(privilege::SYNIC) || features.has(privilege::SYNTIMERS)
}

/// Drops from `msrs` (the MSRs a vCPU state holds) those that cannot be restored into a guest
/// with `cpuid`: KVM refuses host writes of non-zero SynIC and timer MSRs (SVERSION reads 1,
/// SINTs 0x10000) while the SynIC is not active, so a snapshot of a guest without it leaves
/// them out (the guest could never change them).
pub fn retain_restorable_msrs(cpuid: &[kvm_cpuid_entry2], msrs: &mut Vec<u32>) {
    if activates_synic(&Features::from_cpuid(cpuid)) {
        return;
    }
    msrs.retain(|&index| {
        !matches!(
            index,
            msr::SCONTROL..=msr::SINT15 | msr::STIMER0_CONFIG..=msr::STIMER3_COUNT
        )
    });
}

impl KernelBackend {
    /// A backend for `vcpus` vCPUs whose guest runs with `cpuid`.
    pub fn new(
        config: &HvConfig,
        cpuid: &[kvm_cpuid_entry2],
        vcpus: u32,
        mem: GuestMemory,
    ) -> Self {
        let features = Features::from_cpuid(cpuid);
        KernelBackend {
            features,
            offered: features.offered(),
            enforce_cpuid: config.enforce_cpuid,
            on_crash: config.on_crash,
            offered_names: config.offered.clone(),
            mem,
            vps: (0..vcpus)
                .map(|_| Mutex::new(VpRecord::default()))
                .collect(),
            history: Mutex::new(None),
        }
    }

    fn record(&self, vp: u32) -> Option<MutexGuard<'_, VpRecord>> {
        let slot = self.vps.get(vp as usize)?;
        Some(slot.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Enables this vCPU's Hyper-V capabilities and sets the host-owned MSRs. Runs after
    /// KVM_SET_CPUID2, so KVM already sees "Hv#1" and the offered bits.
    pub fn setup_vcpu(&self, vp: u32, fd: &VcpuFd) -> Result<(), HvSetupError> {
        let kvm = |what: &'static str| {
            move |source| HvSetupError::Kvm {
                vcpu: vp,
                what,
                source,
            }
        };
        if activates_synic(&self.features) {
            crate::kvm::hyperv::enable_synic2(fd).map_err(kvm("KVM_CAP_HYPERV_SYNIC2"))?;
        }
        if self.features.recommends(recommendation::ENLIGHTENED_VMCS) {
            let range = crate::kvm::nested::enable_evmcs(fd)
                .map_err(|source| HvSetupError::Evmcs { vcpu: vp, source })?;
            if let Some(mut record) = self.record(vp) {
                record.evmcs_versions = Some(range);
            }
        }
        if self.enforce_cpuid {
            crate::kvm::hyperv::enable_enforce_cpuid(fd)
                .map_err(kvm("KVM_CAP_HYPERV_ENFORCE_CPUID"))?;
        }
        // KVM's default VP index is the vCPU's creation index, which is also hvkvm's; setting
        // it makes that explicit (and is what a restored VM needs).
        fd.set_msr(VP_INDEX, u64::from(vp))
            .map_err(kvm("setting HV_X64_MSR_VP_INDEX (KVM_SET_MSRS)"))?;
        if self.features.has_feature(feature::CRASH_MSRS) {
            fd.set_msr(CRASH_CTL, CRASH_CTL_NOTIFY)
                .map_err(kvm("setting HV_X64_MSR_CRASH_CTL (KVM_SET_MSRS)"))?;
        }
        Ok(())
    }

    /// The handle vCPU `vp` uses.
    pub fn vp_handle(self: &Arc<Self>, vp: u32) -> KernelVp {
        KernelVp {
            vp,
            backend: self.clone(),
        }
    }

    /// What the guest used, from the MSR values read back when each vCPU stopped and from
    /// the exits KVM forwarded.
    pub fn report(&self) -> UsageReport {
        let mut report = UsageReport {
            backend: "kernel".into(),
            offered: self.offered_names.clone(),
            ..UsageReport::default()
        };
        for (vp, record) in self.vps.iter().enumerate() {
            let record = record.lock().unwrap_or_else(|p| p.into_inner());
            let vp = vp as u32;
            let value = |index: u32| record.msrs.get(&index).copied().unwrap_or(0);
            if vp == 0 {
                let os = value(msr::GUEST_OS_ID);
                report.guest_os_id = (os != 0).then(|| super::report::GuestOsId::decode(os));
                report.hypercall_page = hyperv_tlfs::overlay_page_gpa(value(msr::HYPERCALL));
                report.tsc_page = hyperv_tlfs::overlay_page_gpa(value(msr::REFERENCE_TSC));
            }
            if let Some(gpa) = hyperv_tlfs::overlay_page_gpa(value(msr::VP_ASSIST_PAGE)) {
                report.vp_assist_pages.insert(vp, gpa);
                let mut view = super::inspect::assist_page(&self.mem, vp, gpa);
                view.evmcs_versions = record
                    .evmcs_versions
                    .map(|r| format!("{}..={}", r.min(), r.max()));
                report.vp_assist.push(view);
            }
            for (&index, &v) in &record.msrs {
                report
                    .msr_values
                    .entry(msr::Name(index).to_string())
                    .or_default()
                    .insert(vp, v);
            }
            for (&(code, status), &n) in &record.hypercalls {
                *report
                    .hypercalls
                    .entry(hypercall::name(code).into_owned())
                    .or_default()
                    .entry(hypercall::status_name(status).into_owned())
                    .or_default() += n;
            }
            report.synic_exits += record.synic_exits;
            report.syndbg_exits += record.syndbg_exits;
            report.crashes.extend(record.crashes.iter().copied());
        }
        if let Some(earlier) = &*self.history.lock().unwrap_or_else(|p| p.into_inner()) {
            report.add_earlier(earlier);
            let mut crashes = earlier.crashes.clone();
            crashes.append(&mut report.crashes);
            report.crashes = crashes;
        }
        report
    }

    /// A restored VM: `earlier` is what the guest used before the snapshot.
    pub fn continue_report(&self, earlier: UsageReport) {
        *self.history.lock().unwrap_or_else(|p| p.into_inner()) = Some(earlier);
    }
}

/// One vCPU's handle on the kernel backend.
#[derive(Debug, Clone)]
pub struct KernelVp {
    vp: u32,
    backend: Arc<KernelBackend>,
}

impl KernelVp {
    /// `KVM_EXIT_HYPERV`: record SynIC and SynDbg exits, answer forwarded hypercalls.
    pub fn hyperv_exit(
        &mut self,
        state: &mut dyn VcpuState,
    ) -> Result<Option<GuestRequest>, HvExitError> {
        let exit = state.hyperv_exit();
        let Some(mut record) = self.backend.record(self.vp) else {
            return Ok(None);
        };
        match exit {
            HypervExit::Synic { .. } => record.synic_exits += 1,
            HypervExit::Syndbg { msr } => {
                record.syndbg_exits += 1;
                warn_ratelimited!(
                    "VP {}: SynDbg MSR {} written; no synthetic debugger is attached",
                    self.vp,
                    msr::Name(msr)
                );
            }
            HypervExit::Hcall { input, params } => {
                let rax = self.forwarded_hypercall(input, params);
                let key = (input as u16, rax as u16);
                *record.hypercalls.entry(key).or_default() += 1;
                state.set_hcall_result(rax);
            }
            HypervExit::Unknown { kind } => {
                warn_ratelimited!("VP {}: KVM_EXIT_HYPERV of unknown type {kind}", self.vp);
            }
        }
        Ok(None)
    }

    /// A hypercall KVM left to user space: the same validation and dispatch as the user
    /// backend (KVM already checked CPL, mode and the CPUID gates, which pass again here).
    fn forwarded_hypercall(&self, input: u64, params: [u64; 2]) -> u64 {
        let regs = HypercallRegs {
            rcx: input,
            rdx: params[0],
            r8: params[1],
            // KVM forwards no XMM input; the calls it forwards take none.
            xmm: None,
        };
        let mut services = ForwardedCalls;
        match hypercall::handle(
            self.vp,
            0,
            true,
            &regs,
            &self.backend.offered,
            &self.backend.mem,
            &mut services,
        ) {
            Outcome::Complete(rax) => rax,
            Outcome::InvalidOpcode => {
                hypercall::result(hypercall::status::INVALID_HYPERCALL_INPUT, 0)
            }
        }
    }

    /// `KVM_SYSTEM_EVENT_CRASH`: the guest set CRASH_NOTIFY; read P0..P4 and apply the policy.
    pub fn crash_event(
        &mut self,
        state: &mut dyn VcpuState,
    ) -> Result<Option<GuestRequest>, HvExitError> {
        let vp = self.vp;
        let mut params = [0u64; 5];
        for (i, p) in (0u32..).zip(params.iter_mut()) {
            *p = state
                .msr(CRASH_P0 + i)
                .map_err(|source| HvExitError::VcpuAccess {
                    vp,
                    what: "read the crash parameters (KVM_GET_MSRS)",
                    source,
                })?;
        }
        if let Some(mut record) = self.backend.record(vp) {
            record.crashes.push(params);
        }
        Ok(super::crash_reported(vp, params, self.backend.on_crash))
    }

    /// Reads every synthetic MSR KVM emulates into the record (one KVM_GET_MSRS each: KVM
    /// stops a batch at the first MSR this vCPU does not have, e.g. SynIC MSRs without
    /// SynIC).
    pub fn capture(&mut self, state: &mut dyn VcpuState) {
        let Some(mut record) = self.backend.record(self.vp) else {
            return;
        };
        // Only what the guest was offered: KVM answers host reads of the rest too (SINTs read
        // 0x10000 without SynIC), which would put MSRs in the report the guest never had.
        let offered = msr::KVM_EMULATED
            .iter()
            .filter(|&&index| self.backend.features.msr_available(index));
        for &index in offered {
            if let Ok(value) = state.msr(index) {
                if value != 0 {
                    record.msrs.insert(index, value);
                }
            }
        }
    }
}

/// What hvkvm provides for the hypercalls KVM forwards: no VMBus connections are registered
/// yet, so PostMessage and SignalEvent name unknown connections; no extended capabilities.
struct ForwardedCalls;

impl HypercallServices for ForwardedCalls {
    fn notify_long_spin_wait(&mut self, _vcpu: u32) {}

    fn synic_active(&self, _vcpu: u32) -> bool {
        // KVM forwards PostMessage/SignalEvent only once the VMM enabled SYNIC2.
        true
    }

    fn ext_query_capabilities(&mut self, _vcpu: u32) -> Result<u64, u16> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(eax: u32) -> [kvm_cpuid_entry2; 1] {
        [kvm_cpuid_entry2 {
            function: hyperv_tlfs::cpuid::LEAF_FEATURES,
            eax,
            ..Default::default()
        }]
    }

    #[test]
    fn synic_msrs_are_saved_only_where_the_synic_is_active() {
        let all = vec![
            msr::GUEST_OS_ID,
            msr::SVERSION,
            msr::SINT0,
            msr::SINT15,
            msr::STIMER0_CONFIG,
            msr::STIMER3_COUNT,
        ];
        let mut without_synic = all.clone();
        retain_restorable_msrs(&features(privilege::HYPERCALL_MSRS), &mut without_synic);
        assert_eq!(without_synic, [msr::GUEST_OS_ID]);
        let mut with_timers = all.clone();
        retain_restorable_msrs(&features(privilege::SYNTIMERS), &mut with_timers);
        assert_eq!(with_timers, all);
    }
}
