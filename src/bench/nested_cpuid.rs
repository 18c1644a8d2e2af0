//! `hvkvm bench nested-cpuid`: what an L2 exit costs with a classic VMCS and with the Hyper-V
//! enlightened VMCS, measured by a small L1 hypervisor in the guest.
//!
//! The guest is the `l1_hypervisor` payload (guest-tests/guest/src/bin/l1_hypervisor.rs,
//! embedded in hvkvm). It enters VMX operation, runs one L2 (64-bit code on its own page tables,
//! no EPT) and handles every CPUID exit of L2's loop: in `vmcs` mode through VMREAD/VMWRITE on a
//! processor-owned VMCS, in `evmcs` mode through an enlightened VMCS in ordinary memory (no
//! VMREAD/VMWRITE; L0 reloads only the groups whose clean bit L1 cleared). L2 times each CPUID
//! round trip with RDTSC; L1 reports the median, p10 and p90 and counts the VMREAD/VMWRITE
//! instructions it executed per exit.
//!
//! Both modes need a host that can nest (Intel VMX, kvm_intel nested=1: see
//! [`crate::cpu::nested::nesting_possible`]); `evmcs` also needs KVM's in-kernel Hyper-V with
//! KVM_CAP_HYPERV_ENLIGHTENED_VMCS (the kernel backend, `--hv hv-vapic,hv-evmcs`). The same
//! configuration and report decoding serve the conformance tests (guest-tests/src/nested.rs).
//!
//! Reference points (other setups, other hardware): FOSDEM 2019 "Enlightening KVM", Hyper-V as
//! L1 on KVM, an L2 CPUID exit 20,850 cycles without eVMCS, 19,400 with; Linux's "use
//! Enlightened VMCS when running on Hyper-V" (KVM as L1 on Hyper-V), 18,890 → 8,304.

use std::time::Duration;

use serde::Serialize;

use crate::cpu::nested::{self, NestedMode};
use crate::cpu::{CpuModel, CpuidEntry};
use crate::hyperv::{cpuid_entries, resolve_for_vm, BackendChoice, CrashAction, HvConfig};
use crate::kvm::HostProbe;
use crate::vm::{self, BootSource, StopReason, VmConfig, VmOutcome};

/// The payload's name.
pub const PAYLOAD: &str = "l1_hypervisor";

/// The payload, built from source by build.rs.
pub static L1_HYPERVISOR_ELF: &[u8] = include_bytes!(env!("HVKVM_L1_HYPERVISOR_ELF"));

/// The Hyper-V enlightenments the `evmcs` mode needs (the VP assist page and the eVMCS), served
/// by KVM (the kernel backend).
pub const EVMCS_HV_FLAGS: &str = "hv-vapic,hv-evmcs";

/// L2's timed CPUID leaf.
pub const BENCH_LEAF: u32 = 0x4C32_0000;
/// What L1 answers in EAX for [`BENCH_LEAF`] ("L1L1"); EBX = !leaf, ECX = the subleaf (L2's
/// round), EDX = L1's count of timed exits so far.
pub const ANSWER_EAX: u32 = 0x4C31_4C31;
/// Basic exit reason HLT, how L2 ends.
pub const EXIT_HLT: u64 = 12;
/// CR4 bits L1 owns in the clean-field row (VMXE, PCE); L2 reads them from the read shadow.
pub const CR4_MASK: u64 = (1 << 13) | (1 << 8);

/// Default and largest number of timed round trips per mode (one guest run each).
pub const DEFAULT_ITERATIONS: u32 = 1000;
/// The payload's limit.
pub const MAX_ITERATIONS: u32 = 4096;

/// Payload flags (0x400000F0 ECX).
pub mod flags {
    /// The clean-field row: L1 changes the CR4 read shadow without, then with, clearing CRDR.
    pub const CLEAN_ROW: u32 = 1 << 0;
    /// The wrong-revision row.
    pub const REVISION_ROW: u32 = 1 << 1;
    /// L2 reports SYNC 20 twice before its loop (the nested-state test moves the VM there).
    pub const NESTED_STATE: u32 = 1 << 2;
}

/// How L1 keeps its VMCS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A processor-owned VMCS through VMPTRLD/VMREAD/VMWRITE.
    Vmcs,
    /// The Hyper-V enlightened VMCS through the VP assist page.
    Evmcs,
}

impl Mode {
    /// Both, in report order.
    pub const ALL: [Mode; 2] = [Mode::Vmcs, Mode::Evmcs];

    /// The JSON key ("vmcs", "evmcs").
    pub fn key(self) -> &'static str {
        match self {
            Mode::Vmcs => "vmcs",
            Mode::Evmcs => "evmcs",
        }
    }

    /// The payload's mode parameter.
    pub fn param(self) -> u32 {
        match self {
            Mode::Vmcs => 0,
            Mode::Evmcs => 1,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Vmcs => "classic VMCS",
            Mode::Evmcs => "enlightened VMCS",
        })
    }
}

/// One run of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L1Params {
    /// The mode.
    pub mode: Mode,
    /// Timed CPUID round trips (1..=[`MAX_ITERATIONS`]).
    pub rounds: u32,
    /// [`flags`].
    pub flags: u32,
    /// The revision the wrong-revision row uses (0: the payload's default, 0xBAD0_0001).
    pub bad_revision: u32,
}

impl L1Params {
    /// `rounds` timed round trips in `mode`, no extra rows.
    pub fn new(mode: Mode, rounds: u32) -> Self {
        L1Params {
            mode,
            rounds,
            flags: 0,
            bad_revision: 0,
        }
    }

    /// The parameter leaves 0x400000F0 and 0x400000F1.
    pub fn leaves(&self) -> Vec<CpuidEntry> {
        [
            [
                self.mode.param(),
                self.rounds,
                self.flags,
                self.bad_revision,
            ],
            [0; 4],
        ]
        .iter()
        .enumerate()
        .map(|(i, r)| CpuidEntry {
            function: 0x4000_00f0 + i as u32,
            index: 0,
            eax: r[0],
            ebx: r[1],
            ecx: r[2],
            edx: r[3],
        })
        .collect()
    }
}

/// Why the nested benchmark (or a nested test) cannot run.
#[derive(Debug, thiserror::Error)]
pub enum NestedBenchError {
    /// The host could not be probed.
    #[error(transparent)]
    Probe(#[from] crate::kvm::ProbeError),
    /// This host cannot give a guest VMX.
    #[error(transparent)]
    NoNesting(#[from] nested::NestedUnavailable),
    /// This host cannot run the payload in this mode.
    #[error("this host cannot run an L1 hypervisor with the {mode}: {reason}")]
    Unavailable {
        /// The mode.
        mode: Mode,
        /// Why.
        reason: String,
    },
    /// The enlightened VMCS cannot be provided here.
    #[error("the evmcs mode needs {EVMCS_HV_FLAGS} on the kernel backend")]
    HyperV(#[source] crate::hyperv::HyperVError),
    /// Building or running the guest failed.
    #[error("running the {PAYLOAD} guest in {mode} mode failed")]
    Vm {
        /// The mode.
        mode: Mode,
        /// What failed.
        #[source]
        source: crate::vm::VmError,
    },
    /// The guest ended other than with DONE.
    #[error("the {PAYLOAD} guest in {mode} mode did not finish: {reason}")]
    GuestFailed {
        /// The mode.
        mode: Mode,
        /// How it ended.
        reason: String,
    },
    /// The guest's reports are incomplete or inconsistent.
    #[error("the {PAYLOAD} guest in {mode} mode reported {detail}")]
    BadReport {
        /// The mode.
        mode: Mode,
        /// What is wrong.
        detail: String,
    },
}

/// Why nested guests cannot run on `host` in `mode`, if they cannot.
pub fn unavailable(host: &HostProbe, mode: Mode) -> Option<String> {
    if let Err(reason) = nested::nesting_possible(host) {
        return Some(reason);
    }
    if mode == Mode::Evmcs {
        if !host.kernel_hyperv() {
            return Some(
                "the enlightened VMCS needs KVM's in-kernel Hyper-V, and KVM_CAP_HYPERV is 0 \
                 on this host"
                    .into(),
            );
        }
        if host.cap("KVM_CAP_HYPERV_ENLIGHTENED_VMCS") <= 0 {
            return Some("KVM does not offer KVM_CAP_HYPERV_ENLIGHTENED_VMCS on this host".into());
        }
    }
    None
}

/// Makes `config` run the payload as `p` says on `host`: `--cpu host --nested on`, and for the
/// eVMCS mode the kernel backend with [`EVMCS_HV_FLAGS`]; adds the parameter leaves.
pub fn configure(
    config: &mut VmConfig,
    p: &L1Params,
    host: &HostProbe,
) -> Result<(), NestedBenchError> {
    config.cpu_model = CpuModel::Host;
    config.nested = nested::resolve(NestedMode::On, CpuModel::Host, host)?;
    if p.mode == Mode::Evmcs {
        let request = hv_model::parse_hv_list(EVMCS_HV_FLAGS)
            .map_err(|e| NestedBenchError::HyperV(crate::hyperv::HyperVError::Model(e)))?;
        let resolution = resolve_for_vm(&request, host, BackendChoice::Kernel)
            .map_err(NestedBenchError::HyperV)?
            .ok_or(NestedBenchError::HyperV(
                crate::hyperv::HyperVError::NoKernelHyperV,
            ))?;
        config.hypervisor_leaves = Some(cpuid_entries(&resolution));
        config.hyperv = HvConfig::from_resolution(&resolution, CrashAction::Log);
    }
    config.cpuid_overrides.extend(p.leaves());
    Ok(())
}

/// A VM for one payload run (64 MiB, one vCPU, serial output dropped).
pub fn guest_config(
    p: &L1Params,
    host: &HostProbe,
    timeout: Duration,
) -> Result<VmConfig, NestedBenchError> {
    let mut config = VmConfig::new(BootSource::Payload {
        image: L1_HYPERVISOR_ELF.to_vec(),
        name: PAYLOAD.to_string(),
    });
    config.memory_mib = 64;
    config.timeout = Some(timeout);
    config.serial = Box::new(std::io::sink());
    configure(&mut config, p, host)?;
    Ok(config)
}

/// The round trips of one mode, as L1 measured them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timing {
    /// Timed CPUID exits L1 handled.
    pub exits: u64,
    /// Median cycles (RDTSC ticks) per L2 CPUID round trip.
    pub median: u64,
    /// 10th percentile.
    pub p10: u64,
    /// 90th percentile.
    pub p90: u64,
    /// VMREAD instructions L1 executed handling those exits (and re-entering).
    pub vmreads: u64,
    /// VMWRITE instructions.
    pub vmwrites: u64,
}

impl Timing {
    /// VMREADs per exit.
    pub fn vmreads_per_exit(&self) -> f64 {
        per(self.vmreads, self.exits)
    }

    /// VMWRITEs per exit.
    pub fn vmwrites_per_exit(&self) -> f64 {
        per(self.vmwrites, self.exits)
    }
}

fn per(n: u64, exits: u64) -> f64 {
    if exits == 0 {
        0.0
    } else {
        n as f64 / exits as f64
    }
}

/// Everything one payload run reported, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L1Report {
    /// SYNC 1: mode, VMCS revision id, TRUE controls used, IA32_FEATURE_CONTROL, CR4,
    /// setup VMREADs << 32 | VMWRITEs.
    pub setup: [u64; 6],
    /// SYNC 2: pin, processor, exit, entry controls; CR4 mask and shadow.
    pub controls: [u64; 6],
    /// SYNC 3.
    pub timing: Option<Timing>,
    /// SYNC 4: EAX..EDX of L2's first timed CPUID, mismatching answers, L2's end exit reason.
    pub l2: Option<[u64; 6]>,
    /// SYNC 5: the clean-field row.
    pub clean_row: Option<[u64; 6]>,
    /// SYNC 6: the wrong-revision row.
    pub revision_row: Option<[u64; 6]>,
    /// SYNC 20 from L2 (nested-state flag).
    pub l2_syncs: Vec<[u64; 6]>,
}

impl L1Report {
    /// Decodes a finished run; the run must have ended with DONE.
    pub fn decode(mode: Mode, outcome: &VmOutcome) -> Result<L1Report, NestedBenchError> {
        if outcome.reason != StopReason::GuestDone {
            return Err(NestedBenchError::GuestFailed {
                mode,
                reason: outcome.reason.to_string(),
            });
        }
        let stage = |n: u64| {
            outcome
                .syncs
                .iter()
                .filter(|s| s.stage == n)
                .map(|s| s.values)
                .collect::<Vec<_>>()
        };
        let one = |n: u64| -> Result<Option<[u64; 6]>, NestedBenchError> {
            match stage(n).as_slice() {
                [] => Ok(None),
                [v] => Ok(Some(*v)),
                more => Err(NestedBenchError::BadReport {
                    mode,
                    detail: format!("{} SYNCs of stage {n}", more.len()),
                }),
            }
        };
        let bad = |detail: &str| NestedBenchError::BadReport {
            mode,
            detail: detail.to_string(),
        };
        let revision_row = one(6)?;
        let setup = one(1)?;
        let controls = one(2)?;
        if revision_row.is_none() && (setup.is_none() || controls.is_none()) {
            return Err(bad("no setup report (SYNC 1 and 2)"));
        }
        let report = L1Report {
            setup: setup.unwrap_or_default(),
            controls: controls.unwrap_or_default(),
            timing: one(3)?.map(|v| Timing {
                exits: v[0],
                median: v[1],
                p10: v[2],
                p90: v[3],
                vmreads: v[4],
                vmwrites: v[5],
            }),
            l2: one(4)?,
            clean_row: one(5)?,
            revision_row,
            l2_syncs: stage(20),
        };
        if report.setup[0] != u64::from(mode.param()) && report.revision_row.is_none() {
            return Err(bad("the wrong mode in SYNC 1"));
        }
        Ok(report)
    }

    /// VMREADs and VMWRITEs L1 executed setting the VMCS up.
    pub fn setup_instructions(&self) -> (u64, u64) {
        (self.setup[5] >> 32, self.setup[5] & 0xffff_ffff)
    }
}

/// Runs the payload once, as `p` says.
pub fn run_l1(
    p: &L1Params,
    host: &HostProbe,
    timeout: Duration,
) -> Result<L1Report, NestedBenchError> {
    let config = guest_config(p, host, timeout)?;
    let outcome = vm::run(config).map_err(|source| NestedBenchError::Vm {
        mode: p.mode,
        source,
    })?;
    L1Report::decode(p.mode, &outcome)
}

/// One mode's result in the benchmark report.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    /// Cycles per L2 CPUID round trip.
    pub median: u64,
    /// 10th percentile.
    pub p10: u64,
    /// 90th percentile.
    pub p90: u64,
    /// Round trips timed.
    pub round_trips: u64,
    /// VMREAD instructions L1 executed per exit.
    pub vmreads_per_exit: f64,
    /// VMWRITE instructions L1 executed per exit.
    pub vmwrites_per_exit: f64,
    /// VMREAD/VMWRITE instructions L1 executed to set the VMCS up.
    pub setup_vmreads: u64,
    /// See `setup_vmreads`.
    pub setup_vmwrites: u64,
}

/// Where the benchmark ran.
#[derive(Debug, Clone, Serialize)]
pub struct BenchHost {
    /// CPU model name.
    pub cpu: String,
    /// The module serving /dev/kvm.
    pub kvm_module: String,
    /// TSC frequency KVM reports, in kHz.
    pub tsc_khz: Option<u32>,
    /// Whether this host's x86 CPU is itself emulated (Bochs), so that RDTSC counts emulated
    /// instructions.
    pub emulated_cpu: bool,
}

impl BenchHost {
    /// From a probe and the firmware's vendor string.
    pub fn from_probe(host: &HostProbe) -> BenchHost {
        BenchHost {
            cpu: host
                .cpu_model
                .clone()
                .unwrap_or_else(|| "unknown CPU".into()),
            kvm_module: host.kvm_module.clone().unwrap_or_else(|| "unknown".into()),
            tsc_khz: host.tsc_khz,
            emulated_cpu: emulated_cpu(),
        }
    }
}

/// Whether the machine is an x86 emulator (Bochs): its SMBIOS/DMI strings say so.
pub fn emulated_cpu() -> bool {
    ["bios_vendor", "sys_vendor", "product_name"]
        .iter()
        .any(|f| {
            std::fs::read_to_string(format!("/sys/class/dmi/id/{f}"))
                .is_ok_and(|s| s.to_ascii_lowercase().contains("bochs"))
        })
}

/// The benchmark's report: both modes, their ratio, the host.
#[derive(Debug, Clone, Serialize)]
pub struct NestedCpuidReport {
    /// "nested-cpuid".
    pub benchmark: &'static str,
    /// What the numbers are.
    pub unit: &'static str,
    /// Where.
    pub host: BenchHost,
    /// Round trips timed per mode.
    pub iterations: u32,
    /// Classic VMCS.
    pub vmcs: ModeResult,
    /// Enlightened VMCS.
    pub evmcs: ModeResult,
    /// vmcs median / evmcs median.
    pub ratio: f64,
    /// Caveats.
    pub notes: Vec<String>,
}

fn mode_result(mode: Mode, r: &L1Report) -> Result<ModeResult, NestedBenchError> {
    let t = r.timing.ok_or_else(|| NestedBenchError::BadReport {
        mode,
        detail: "no timing (SYNC 3)".into(),
    })?;
    let (setup_vmreads, setup_vmwrites) = r.setup_instructions();
    Ok(ModeResult {
        median: t.median,
        p10: t.p10,
        p90: t.p90,
        round_trips: t.exits,
        vmreads_per_exit: t.vmreads_per_exit(),
        vmwrites_per_exit: t.vmwrites_per_exit(),
        setup_vmreads,
        setup_vmwrites,
    })
}

/// Runs both modes with `iterations` timed round trips each.
pub fn run(iterations: u32) -> Result<NestedCpuidReport, NestedBenchError> {
    let host = HostProbe::probe()?;
    for mode in Mode::ALL {
        if let Some(reason) = unavailable(&host, mode) {
            return Err(NestedBenchError::Unavailable { mode, reason });
        }
    }
    let iterations = iterations.clamp(1, MAX_ITERATIONS);
    // Inside an emulated host a run takes minutes of wall time; the limit is generous.
    let timeout = Duration::from_secs(600);
    let mut results = Vec::new();
    let progress = super::Progress::new("hvkvm bench nested-cpuid: modes", 2);
    for (done, mode) in Mode::ALL.into_iter().enumerate() {
        let report = progress.during(done as u64, &format!("{mode}"), || {
            run_l1(&L1Params::new(mode, iterations), &host, timeout)
        })?;
        results.push(mode_result(mode, &report)?);
    }
    progress.finish();
    let evmcs = results
        .pop()
        .unwrap_or_else(|| unreachable!("two modes ran"));
    let vmcs = results
        .pop()
        .unwrap_or_else(|| unreachable!("two modes ran"));
    let bench_host = BenchHost::from_probe(&host);
    let ratio = if evmcs.median == 0 {
        0.0
    } else {
        vmcs.median as f64 / evmcs.median as f64
    };
    let mut notes = Vec::new();
    if bench_host.emulated_cpu {
        notes.push(
            "this host's CPU is emulated (Bochs): RDTSC counts emulated instructions, so these \
             figures are path lengths in instructions, not hardware cycles"
                .to_string(),
        );
    }
    notes.push(
        "reference points on real hardware: FOSDEM 2019 (Hyper-V as L1 on KVM) 20,850 -> 19,400 \
         cycles; KVM as L1 on Hyper-V 18,890 -> 8,304 cycles"
            .to_string(),
    );
    Ok(NestedCpuidReport {
        benchmark: "nested-cpuid",
        unit: if bench_host.emulated_cpu {
            "emulated instructions (RDTSC ticks)"
        } else {
            "TSC cycles"
        },
        host: bench_host,
        iterations,
        vmcs,
        evmcs,
        ratio,
        notes,
    })
}

impl NestedCpuidReport {
    /// A plain-text table.
    pub fn render(&self) -> String {
        let h = &self.host;
        let mut s = format!(
            "hvkvm bench nested-cpuid: one L2 CPUID exit handled by an L1 hypervisor in the guest\n  \
             host: {}, /dev/kvm from {}{}\n  {} round trips per mode; {} per round trip:\n",
            h.cpu,
            h.kvm_module,
            h.tsc_khz
                .map(|k| format!(", TSC {:.3} GHz", f64::from(k) / 1e6))
                .unwrap_or_default(),
            self.iterations,
            self.unit
        );
        s.push_str(&format!(
            "    {:<18} {:>10} {:>10} {:>10} {:>16} {:>17}\n",
            "", "p10", "median", "p90", "VMREADs/exit", "VMWRITEs/exit"
        ));
        for (mode, r) in [(Mode::Vmcs, &self.vmcs), (Mode::Evmcs, &self.evmcs)] {
            s.push_str(&format!(
                "    {:<18} {:>10} {:>10} {:>10} {:>16.1} {:>17.1}\n",
                format!(
                    "{} ({})",
                    mode.key(),
                    if mode == Mode::Vmcs {
                        "classic"
                    } else {
                        "enlightened"
                    }
                ),
                r.p10,
                r.median,
                r.p90,
                r.vmreads_per_exit,
                r.vmwrites_per_exit
            ));
        }
        s.push_str(&format!(
            "  vmcs / evmcs (medians): {:.2}\n  setup: vmcs {} VMREADs + {} VMWRITEs, evmcs {} + {}\n",
            self.ratio,
            self.vmcs.setup_vmreads,
            self.vmcs.setup_vmwrites,
            self.evmcs.setup_vmreads,
            self.evmcs.setup_vmwrites
        ));
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        s
    }

    /// The report as one JSON object (the modes under "vmcs" and "evmcs").
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::SyncEvent;

    fn outcome(syncs: &[(u64, [u64; 6])], reason: StopReason) -> VmOutcome {
        VmOutcome {
            reason,
            elapsed: Duration::ZERO,
            boot: String::new(),
            syncs: syncs
                .iter()
                .map(|&(stage, values)| SyncEvent {
                    vcpu: 0,
                    stage,
                    values,
                })
                .collect(),
            prints: Vec::new(),
            vcpu_stats: Vec::new(),
            stuck_vcpus: Vec::new(),
            hyperv: None,
            host_work: Default::default(),
        }
    }

    #[test]
    fn decodes_the_payload_reports() {
        let o = outcome(
            &[
                (1, [1, 0x11e57ed0, 1, 5, 0x2020, (3 << 32) | 60]),
                (2, [0x16, 0x8401e172, 0x236fff, 0x13ff, CR4_MASK, 0]),
                (3, [100, 9000, 8000, 12000, 300, 100]),
                (
                    4,
                    [
                        u64::from(ANSWER_EAX),
                        u64::from(!BENCH_LEAF),
                        0,
                        1,
                        0,
                        EXIT_HLT,
                    ],
                ),
            ],
            StopReason::GuestDone,
        );
        let r = L1Report::decode(Mode::Evmcs, &o).unwrap();
        assert_eq!(r.setup_instructions(), (3, 60));
        let t = r.timing.unwrap();
        assert_eq!((t.vmreads_per_exit(), t.vmwrites_per_exit()), (3.0, 1.0));
        let m = mode_result(Mode::Evmcs, &r).unwrap();
        assert_eq!(
            (m.median, m.p10, m.p90, m.round_trips),
            (9000, 8000, 12000, 100)
        );
        // A run that did not finish, or two reports of one stage, is an error naming it.
        let failed = outcome(&[], StopReason::PowerOff);
        let e = L1Report::decode(Mode::Vmcs, &failed).unwrap_err();
        assert!(e.to_string().contains("did not finish"), "{e}");
        let twice = outcome(
            &[(1, [0; 6]), (2, [0; 6]), (3, [0; 6]), (3, [0; 6])],
            StopReason::GuestDone,
        );
        let e = L1Report::decode(Mode::Vmcs, &twice).unwrap_err();
        assert!(e.to_string().contains("2 SYNCs of stage 3"), "{e}");
        // The setup report names the mode; a mismatch is caught.
        let wrong = outcome(&[(1, [1; 6]), (2, [0; 6])], StopReason::GuestDone);
        assert!(L1Report::decode(Mode::Vmcs, &wrong).is_err());
    }

    #[test]
    fn parameter_leaves_carry_mode_rounds_and_flags() {
        let mut p = L1Params::new(Mode::Evmcs, 123);
        p.flags = flags::CLEAN_ROW;
        let leaves = p.leaves();
        assert_eq!(leaves.len(), 2);
        assert_eq!(
            (
                leaves[0].function,
                leaves[0].eax,
                leaves[0].ebx,
                leaves[0].ecx
            ),
            (0x4000_00f0, 1, 123, 1)
        );
        assert_eq!((leaves[1].function, leaves[1].eax), (0x4000_00f1, 0));
    }

    #[test]
    fn json_has_one_object_per_mode() {
        let m = ModeResult {
            median: 10,
            p10: 9,
            p90: 11,
            round_trips: 5,
            vmreads_per_exit: 3.0,
            vmwrites_per_exit: 1.0,
            setup_vmreads: 0,
            setup_vmwrites: 60,
        };
        let r = NestedCpuidReport {
            benchmark: "nested-cpuid",
            unit: "TSC cycles",
            host: BenchHost {
                cpu: "x".into(),
                kvm_module: "kvm_intel".into(),
                tsc_khz: None,
                emulated_cpu: true,
            },
            iterations: 5,
            vmcs: m.clone(),
            evmcs: ModeResult {
                vmreads_per_exit: 0.0,
                vmwrites_per_exit: 0.0,
                ..m
            },
            ratio: 1.0,
            notes: vec!["path lengths".into()],
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["vmcs"]["vmreads_per_exit"], 3.0);
        assert_eq!(v["evmcs"]["vmreads_per_exit"], 0.0);
        assert_eq!(v["host"]["emulated_cpu"], true);
        let text = r.render();
        assert!(
            text.contains("vmcs (classic)") && text.contains("evmcs (enlightened)"),
            "{text}"
        );
    }
}
