//! Taking a paused VM's snapshot and building a VM from one, with the migration rules.
//!
//! Taking ([`take`]): the VM must be paused. Each vCPU thread completes the I/O of its last
//! exit (`kvm::vcpu_state::complete_pending_io`) and reads its own vCPU's state
//! (`kvm::vcpu_state::capture`) as a job posted through the pause protocol
//! (`VmControl::post_job`), so no vCPU fd ever leaves its thread and the exit path gains no
//! lock. Then the VM-wide state (PIC, IOAPIC, PIT, KVM clock), the devices, the user Hyper-V
//! backend and guest RAM are written (`crate::snapshot::store`).
//!
//! Restoring ([`prepare`] then `Vm::build`): every file is verified and decoded before
//! anything is built; the VM gets the snapshot's CPUID tables, RAM, vCPU state in KVM's order
//! (`kvm::vcpu_state`), devices and Hyper-V state, then the interrupt controllers, the PIT and
//! the KVM clock right before its vCPUs may run.
//!
//! # Clocks
//! Guest time stops while a VM is paused or saved, and continues from the same value after a
//! restore: every vCPU's TSC is set to the value vCPU 0 had when the snapshot was taken (one
//! value, written once per vCPU, so KVM matches the writes and keeps one offset and its master
//! clock), the KVM clock is set to its saved value (no `KVM_CLOCK_REALTIME` downtime
//! accounting), and the Hyper-V reference time and TSC page continue from the saved scale and
//! offset. Nothing then jumps: TIME_REF_COUNT never goes backwards, the TSC page agrees with it,
//! and a timer due 3 ms after the snapshot fires 3 ms after the restore. What the guest does
//! see is its wall clock lagging by the time it spent saved (the CMOS RTC reads the host's
//! clock, so a guest that re-reads it, or NTP, catches up). Advancing the clocks by the
//! downtime instead would make every periodic timer catch up at once and would let reference
//! time and the TSC jump by minutes or days, which is the class of bug this avoids.
//!
//! # Migration rules
//! - A same-host snapshot restores only on the host that took it (same /etc/machine-id).
//!   A migration snapshot (`--for-migration`) is refused while the guest has a migration
//!   blocker the Hyper-V model knows (hv-passthrough, hv-no-nonarch-coresharing=auto,
//!   hv-reenlightenment without a fixed TSC frequency, nested state the host cannot save).
//! - The guest keeps its TSC rate ([`plan_tsc`]): nothing to do where the host's rate matches
//!   (within KVM's 250 ppm); else TSC scaling (`KVM_CAP_TSC_CONTROL`, `KVM_SET_TSC_KHZ`) keeps
//!   the saved rate; else, if the guest was offered hv-reenlightenment and enabled
//!   REENLIGHTENMENT_CONTROL, it runs at the host's rate and is told through the
//!   reenlightenment interrupt (the user backend's side is in `hyperv::user::snapshot`); else
//!   the restore is refused.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyperv_tlfs::msr::{
    REENLIGHTENMENT_CONTROL, REFERENCE_TSC, TSC_EMULATION_CONTROL, TSC_EMULATION_STATUS,
};
use kvm_bindings::{kvm_clock_data, kvm_cpuid_entry2, kvm_irqchip, kvm_msi, kvm_pit_state2};
use kvm_ioctls::{VcpuFd, VmFd};

use super::config::{BootSource, VmConfig};
use super::control::RunState;
use super::handle::PAUSE_WAIT;
use super::{VmCore, VmError};
use crate::devices::bus::SharedPioDevice;
use crate::devices::serial::SerialSink;
use crate::devices::PlatformState;
use crate::host_quirks::QuirksMode;
use crate::hyperv::backend::BackendParams;
use crate::hyperv::user::snapshot::{RateChange, Reenlightenment, UserBackendState};
use crate::hyperv::user::UserBackend;
use crate::hyperv::{CrashAction, HvBackend, HvConfig};
use crate::kvm::vcpu_state::{self, StateCaps, VcpuArchState, MSR_IA32_TSC};
use crate::kvm::HostProbe;
use crate::memory::GuestMemory;
use crate::snapshot::format::{
    Hex, HostIdentity, Manifest, SavedConfig, SavedHyperv, VcpuFile, VmFile, MAGIC,
};
use crate::snapshot::{SnapshotError, SnapshotKind, SnapshotReader, SnapshotWriter, VERSION};
use crate::vcpu::msr::SharedMsrHandler;

/// How long a paused vCPU gets to hand over its state.
const VCPU_ANSWER: Duration = Duration::from_secs(10);
/// KVM's default TSC tolerance: rates this close need no scaling.
const TSC_TOLERANCE_PPM: u64 = 250;
/// The in-kernel IOAPIC's chip id in `kvm_irqchip`; 0 and 1 are the PICs.
const IRQCHIP_COUNT: u32 = 3;

/// What a snapshot wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotInfo {
    /// Where.
    pub dir: PathBuf,
    /// Same-host or migration.
    pub kind: SnapshotKind,
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// Non-zero 4 KiB pages written.
    pub ram_nonzero_pages: u64,
    /// Bytes the snapshot's files occupy on disk (holes excluded).
    pub disk_bytes: u64,
    /// How long it took, in milliseconds.
    pub elapsed_ms: f64,
}

/// What a restored VM gets from the program restoring it (none of it is in the snapshot).
pub struct RestoreParams {
    /// Where COM1 output goes.
    pub serial: SerialSink,
    /// Stop the restored VM after this long.
    pub timeout: Option<Duration>,
    /// The guest TSC rate to run at (default: the snapshot's).
    pub tsc_khz: Option<u32>,
    /// Host workarounds (the restored VM's shape follows the snapshot regardless).
    pub host_quirks: QuirksMode,
    /// Devices the snapshot's VM had beyond the platform ones, at the same ports.
    pub extra_pio: Vec<(u16, u16, SharedPioDevice)>,
    /// MSR handlers it had, for the same ranges.
    pub msr_handlers: Vec<(std::ops::RangeInclusive<u32>, SharedMsrHandler)>,
}

impl std::fmt::Debug for RestoreParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreParams")
            .field("timeout", &self.timeout)
            .field("tsc_khz", &self.tsc_khz)
            .finish_non_exhaustive()
    }
}

impl RestoreParams {
    /// Output to `serial`, no timeout, the snapshot's TSC rate, no extra devices.
    pub fn new(serial: SerialSink) -> Self {
        RestoreParams {
            serial,
            timeout: None,
            tsc_khz: None,
            host_quirks: QuirksMode::Auto,
            extra_pio: Vec::new(),
            msr_handlers: Vec::new(),
        }
    }
}

/// This host, as a snapshot records it.
pub(crate) fn host_identity(host: &HostProbe) -> HostIdentity {
    let machine_id = [
        "/etc/machine-id",
        "/var/lib/dbus/machine-id",
        "/proc/sys/kernel/hostname",
    ]
    .iter()
    .find_map(|p| {
        let id = std::fs::read_to_string(p).ok()?;
        let id = id.trim();
        (!id.is_empty() && id.len() <= 256).then(|| id.to_string())
    })
    .unwrap_or_else(|| "unknown".into());
    HostIdentity {
        machine_id,
        cpu_model: host.cpu_model.clone(),
        kvm_module: host.kvm_module.clone(),
        tsc_khz: host.tsc_khz,
    }
}

/// The Hyper-V configuration as a snapshot records it.
pub(crate) fn saved_hyperv(h: &HvConfig) -> SavedHyperv {
    use clap::ValueEnum;
    SavedHyperv {
        backend: h.backend.to_string(),
        offered: h.offered.clone(),
        enforce_cpuid: h.enforce_cpuid,
        on_crash: h
            .on_crash
            .to_possible_value()
            .map_or("log".into(), |v| v.get_name().to_string()),
    }
}

fn hv_config(s: &SavedHyperv, blockers: &[String]) -> Result<HvConfig, SnapshotError> {
    use clap::ValueEnum;
    let bad = |problem: String| SnapshotError::Invalid {
        file: crate::snapshot::MANIFEST.into(),
        problem,
    };
    let backend = match s.backend.as_str() {
        "user" => hv_model::Backend::User,
        "kernel" => hv_model::Backend::Kernel,
        other => return Err(bad(format!("unknown Hyper-V backend '{other}'"))),
    };
    let on_crash = CrashAction::from_str(&s.on_crash, false)
        .map_err(|_| bad(format!("unknown crash policy '{}'", s.on_crash)))?;
    Ok(HvConfig {
        backend,
        offered: s.offered.clone(),
        enforce_cpuid: s.enforce_cpuid,
        on_crash,
        // hvkvm code registers connections on a running VM's configuration; a restored VM
        // starts with none.
        connections: Default::default(),
        migration_blockers: blockers.to_vec(),
    })
}

/// Writes a snapshot of the paused VM `core` to `dir`.
pub(crate) fn take(
    core: &VmCore,
    dir: &Path,
    kind: SnapshotKind,
) -> Result<SnapshotInfo, SnapshotError> {
    let started = Instant::now();
    if kind == SnapshotKind::Migration && !core.migration_blockers.is_empty() {
        return Err(SnapshotError::MigrationBlocked {
            blockers: core.migration_blockers.clone(),
        });
    }
    let control = &core.control;
    if control.state() != RunState::Paused || !control.wait_paused(PAUSE_WAIT) {
        return Err(SnapshotError::NotPaused);
    }
    if let Some(HvBackend::User(u)) = &core.hyperv {
        // No synthetic timer may fire between the vCPU state and the backend's being read.
        u.quiesce();
    }
    let mut answers = Vec::new();
    for index in 0..core.saved.cpus {
        let (tx, rx) = mpsc::channel();
        let caps = core.caps.clone();
        control
            .post_job(
                index,
                Box::new(move |fd: &mut VcpuFd, _| {
                    let state = vcpu_state::complete_pending_io(fd)
                        .map_err(|source| vcpu_state::VcpuStateError::Ioctl {
                            vcpu: index,
                            what: "KVM_RUN (immediate exit, to complete the last I/O)",
                            source,
                        })
                        .and_then(|()| vcpu_state::capture(fd, index, &caps));
                    let _ = tx.send(state);
                }),
            )
            .map_err(|e| SnapshotError::Vcpu {
                vcpu: index,
                problem: e.to_string(),
            })?;
        answers.push(rx);
    }
    let mut vcpus = Vec::new();
    for (index, rx) in (0u32..).zip(answers) {
        let state = match rx.recv_timeout(VCPU_ANSWER) {
            Ok(result) => result?,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(SnapshotError::Vcpu {
                    vcpu: index,
                    problem: format!("no answer within {VCPU_ANSWER:?}"),
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(SnapshotError::Vcpu {
                    vcpu: index,
                    problem: "the VM stopped".into(),
                })
            }
        };
        vcpus.push(state);
    }
    let kvm = |what| move |source| SnapshotError::Kvm { what, source };
    let mut irqchips = Vec::new();
    for chip_id in 0..IRQCHIP_COUNT {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        core.vm
            .get_irqchip(&mut chip)
            .map_err(kvm("KVM_GET_IRQCHIP"))?;
        irqchips.push(Hex::of(&chip));
    }
    let pit = if core.saved.pit {
        Some(Hex::of(&core.vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?))
    } else {
        None
    };
    let clock = core.vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?;
    let vm_file = VmFile {
        irqchips,
        pit,
        clock: Hex::of(&clock),
        devices: core.devices.save(),
        hyperv_user: match &core.hyperv {
            Some(HvBackend::User(u)) => Some(u.save()),
            _ => None,
        },
        hyperv_kernel_usage: match &core.hyperv {
            Some(HvBackend::Kernel(k)) => Some(k.report()),
            _ => None,
        },
    };

    let mut writer = SnapshotWriter::create(dir)?;
    for (index, state) in (0u32..).zip(&vcpus) {
        writer.add_json(&format!("vcpu-{index}"), &vcpu_file(index, state))?;
    }
    writer.add_json("vm", &vm_file)?;
    let ram = writer.add_ram(&core.mem)?;
    let manifest = Manifest {
        format: MAGIC.into(),
        version: VERSION,
        hvkvm_version: env!("CARGO_PKG_VERSION").into(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        kind,
        migration_blockers: core.migration_blockers.clone(),
        host: core.host.clone(),
        guest_tsc_khz: core.guest_tsc_khz,
        config: core.saved.clone(),
        files: Vec::new(),
    };
    let dir = writer.commit(manifest)?;
    Ok(SnapshotInfo {
        disk_bytes: disk_usage(&dir),
        dir,
        kind,
        ram_bytes: ram.size,
        ram_nonzero_pages: ram.nonzero_pages,
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// Bytes the files of `dir` occupy on disk.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

fn vcpu_file(index: u32, s: &VcpuArchState) -> VcpuFile {
    VcpuFile {
        index,
        regs: Hex::of(&s.regs),
        sregs: Hex::of(&s.sregs),
        xsave: Hex::of_bytes(&s.xsave),
        xcrs: s.xcrs.as_ref().map(Hex::of),
        debugregs: Hex::of(&s.debugregs),
        events: Hex::of(&s.events),
        mp_state: s.mp_state,
        lapic: Hex::of(&s.lapic),
        msrs: s.msrs.clone(),
        tsc_khz: s.tsc_khz,
        nested: s.nested.as_ref().map(|n| Hex::of_bytes(&n.to_bytes())),
        nested_flags: s.nested.as_ref().map(|n| n.flags()),
    }
}

fn decode_vcpu(f: &VcpuFile, file: &str, index: u32) -> Result<VcpuArchState, SnapshotError> {
    let bad = |problem: String| SnapshotError::Invalid {
        file: file.into(),
        problem,
    };
    if f.index != index {
        return Err(bad(format!("it holds vCPU {} instead of {index}", f.index)));
    }
    if f.msrs.len() > 4096 {
        return Err(bad(format!("{} MSRs is more than KVM has", f.msrs.len())));
    }
    let nested = match &f.nested {
        Some(h) => Some(
            crate::kvm::nested::NestedState::from_bytes(&h.bytes(file, "nested")?)
                .ok_or_else(|| bad("the nested state has the wrong size".into()))?,
        ),
        None => None,
    };
    Ok(VcpuArchState {
        regs: f.regs.decode(file, "regs")?,
        sregs: f.sregs.decode(file, "sregs")?,
        xsave: f.xsave.bytes(file, "xsave")?,
        xcrs: f
            .xcrs
            .as_ref()
            .map(|h| h.decode(file, "xcrs"))
            .transpose()?,
        debugregs: f.debugregs.decode(file, "debugregs")?,
        events: f.events.decode(file, "events")?,
        mp_state: f.mp_state,
        lapic: f.lapic.decode(file, "lapic")?,
        msrs: f.msrs.clone(),
        tsc_khz: f.tsc_khz,
        nested,
    })
}

/// How the restored guest keeps its TSC rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscPlan {
    /// The host runs it at the saved rate already.
    Same,
    /// TSC scaling at this rate (kHz).
    Scale(u32),
    /// At the host's rate, with the reenlightenment interrupt.
    Reenlighten,
}

/// What [`plan_tsc`] decides from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TscFacts {
    /// The guest's rate in the snapshot.
    pub saved_khz: u32,
    /// The rate a new vCPU gets on this host.
    pub host_khz: Option<u32>,
    /// `--tsc-khz`.
    pub requested_khz: Option<u32>,
    /// `KVM_CAP_TSC_CONTROL`.
    pub tsc_control: bool,
    /// The guest was offered hv-reenlightenment (CPUID 0x40000003.EAX[13]).
    pub reenlightenment_offered: bool,
    /// REENLIGHTENMENT_CONTROL as the guest left it.
    pub reenlightenment_control: u64,
}

fn within_tolerance(a: u32, b: u32) -> bool {
    let (a, b) = (u64::from(a), u64::from(b));
    a.abs_diff(b) * 1_000_000 <= b * TSC_TOLERANCE_PPM
}

/// The migration rule for the TSC rate (module doc).
pub fn plan_tsc(f: &TscFacts) -> Result<TscPlan, String> {
    let saved = f.saved_khz;
    if saved == 0 {
        // The saving host could not tell its TSC rate: there is nothing to keep or compare.
        return match f.requested_khz {
            Some(k) if f.tsc_control => Ok(TscPlan::Scale(k)),
            _ => Ok(TscPlan::Same),
        };
    }
    let target = f.requested_khz.unwrap_or(saved);
    if !within_tolerance(target, saved) {
        return Err(format!(
            "--tsc-khz {target} differs from the guest's TSC rate in the snapshot ({saved} \
             kHz); a running guest keeps the rate it calibrated: omit --tsc-khz or pass {saved}"
        ));
    }
    if f.host_khz.is_some_and(|h| within_tolerance(h, target)) {
        return Ok(TscPlan::Same);
    }
    if f.tsc_control {
        return Ok(TscPlan::Scale(target));
    }
    let host = f
        .host_khz
        .map_or("an unknown rate".to_string(), |h| format!("{h} kHz"));
    let enabled = f.reenlightenment_control & hyperv_tlfs::msr::REENLIGHTENMENT_ENABLED != 0;
    if f.reenlightenment_offered && enabled {
        return Ok(TscPlan::Reenlighten);
    }
    let why = if !f.reenlightenment_offered {
        "the guest was not offered hv-reenlightenment"
    } else {
        "the guest has not enabled REENLIGHTENMENT_CONTROL"
    };
    Err(format!(
        "the guest's TSC runs at {saved} kHz, this host's at {host}, this host's KVM has no TSC \
         scaling (KVM_CAP_TSC_CONTROL) and {why}, so the guest's clocks would run at the wrong \
         rate; restore on a host with the same TSC rate or with TSC scaling"
    ))
}

/// A verified, decoded snapshot on its way into a VM (`Vm::build` calls these in order).
pub(crate) struct Restore<'a> {
    reader: &'a SnapshotReader,
    vcpus: Vec<VcpuArchState>,
    vm_file: VmFile,
    requested_khz: Option<u32>,
    host_khz: Option<u32>,
    plan: TscPlan,
    notify: Option<Reenlightenment>,
}

/// Verifies and decodes every file of the snapshot and checks the host rules; returns the
/// configuration of the VM to build.
pub(crate) fn prepare(
    reader: &SnapshotReader,
    params: RestoreParams,
) -> Result<(VmConfig, Restore<'_>), SnapshotError> {
    let m = reader.manifest();
    if m.kind == SnapshotKind::SameHost {
        let here = host_identity(
            &HostProbe::probe()
                .map_err(|e| SnapshotError::Migration(format!("cannot probe this host: {e}")))?,
        );
        if here.machine_id != m.host.machine_id {
            return Err(SnapshotError::Migration(format!(
                "this is a same-host snapshot of machine '{}', and this is machine '{}'; take \
                 the snapshot with --for-migration to move a guest between hosts",
                m.host.machine_id, here.machine_id
            )));
        }
    }
    let extra_ports: Vec<[u16; 2]> = params.extra_pio.iter().map(|(b, l, _)| [*b, *l]).collect();
    let extra_msrs: Vec<[u32; 2]> = params
        .msr_handlers
        .iter()
        .map(|(r, _)| [*r.start(), *r.end()])
        .collect();
    if extra_ports != m.config.extra_ports || extra_msrs != m.config.extra_msrs {
        return Err(SnapshotError::MissingRuntimeDevices(format!(
            "ports {:x?}, MSRs {:x?}",
            m.config.extra_ports, m.config.extra_msrs
        )));
    }
    let mut vcpus = Vec::new();
    for index in 0..m.config.cpus {
        let (file, name): (VcpuFile, String) = reader.read_json(&format!("vcpu-{index}"))?;
        vcpus.push(decode_vcpu(&file, &name, index)?);
    }
    let (vm_file, vm_name): (VmFile, String) = reader.read_json("vm")?;
    if vm_file.irqchips.len() != IRQCHIP_COUNT as usize || vm_file.pit.is_some() != m.config.pit {
        return Err(SnapshotError::Invalid {
            file: vm_name,
            problem: "the interrupt controllers or the PIT do not match the configuration".into(),
        });
    }
    let hyperv = m
        .config
        .hyperv
        .as_ref()
        .map(|h| hv_config(h, &m.migration_blockers))
        .transpose()?;
    if hyperv
        .as_ref()
        .is_some_and(|h| h.backend == hv_model::Backend::User)
        != vm_file.hyperv_user.is_some()
    {
        return Err(SnapshotError::Invalid {
            file: vm_name,
            problem: "the user Hyper-V backend's state does not match the configuration".into(),
        });
    }
    let mut config = VmConfig::new(BootSource::Payload {
        image: Vec::new(),
        name: m.config.boot.clone(),
    });
    config.cpus = m.config.cpus;
    config.memory_mib = m.config.memory_mib;
    config.nested = m.config.nested;
    config.hyperv = hyperv;
    config.serial = params.serial;
    config.timeout = params.timeout;
    config.host_quirks = params.host_quirks;
    config.extra_pio = params.extra_pio;
    config.msr_handlers = params.msr_handlers;
    Ok((
        config,
        Restore {
            reader,
            vcpus,
            vm_file,
            requested_khz: params.tsc_khz,
            host_khz: None,
            plan: TscPlan::Same,
            notify: None,
        },
    ))
}

impl Restore<'_> {
    pub(crate) fn saved(&self) -> &SavedConfig {
        &self.reader.manifest().config
    }

    pub(crate) fn load_ram(&self, mem: &GuestMemory) -> Result<(), SnapshotError> {
        self.reader.load_ram(mem).map(|_| ())
    }

    /// With the kernel backend, what the guest used before the snapshot.
    pub(crate) fn kernel_usage(&self) -> Option<crate::hyperv::report::UsageReport> {
        self.vm_file.hyperv_kernel_usage.clone()
    }

    pub(crate) fn devices(&self) -> &PlatformState {
        &self.vm_file.devices
    }

    pub(crate) fn cpuid(&self, index: u32) -> Vec<kvm_cpuid_entry2> {
        self.saved().cpuid[index as usize]
            .iter()
            .map(|r| kvm_cpuid_entry2::from(*r))
            .collect()
    }

    /// The rate the restored guest's TSC runs at.
    pub(crate) fn guest_tsc_khz(&self) -> u32 {
        match self.plan {
            TscPlan::Same | TscPlan::Scale(_) => self.reader.manifest().guest_tsc_khz,
            TscPlan::Reenlighten => self.host_khz.unwrap_or(0),
        }
    }

    fn reenlightenment_control(&self) -> u64 {
        match &self.vm_file.hyperv_user {
            Some(u) => u.partition.reenlightenment_control,
            None => self.vcpus[0].msr(REENLIGHTENMENT_CONTROL).unwrap_or(0),
        }
    }

    /// Applies the TSC rule for this host.
    pub(crate) fn plan_tsc(
        &mut self,
        host_khz: Option<u32>,
        tsc_control: bool,
    ) -> Result<(), SnapshotError> {
        let offered = self.saved().cpuid.first().is_some_and(|t| {
            t.iter().any(|r| {
                r.0[0] == hyperv_tlfs::cpuid::LEAF_FEATURES
                    && r.0[3] & hyperv_tlfs::cpuid::privilege::REENLIGHTENMENT != 0
            })
        });
        let facts = TscFacts {
            saved_khz: self.reader.manifest().guest_tsc_khz,
            host_khz,
            requested_khz: self.requested_khz,
            tsc_control,
            reenlightenment_offered: offered,
            reenlightenment_control: self.reenlightenment_control(),
        };
        self.plan = plan_tsc(&facts).map_err(SnapshotError::Migration)?;
        self.host_khz = host_khz;
        if self.plan != TscPlan::Same {
            log::info!("restore: guest TSC rate {:?} ({facts:?})", self.plan);
        }
        Ok(())
    }

    /// Writes vCPU `index`'s saved state (after CPUID and the Hyper-V capabilities).
    pub(crate) fn restore_vcpu(
        &self,
        fd: &VcpuFd,
        index: u32,
        caps: &StateCaps,
    ) -> Result<(), SnapshotError> {
        let tsc = self.vcpus[0].msr(MSR_IA32_TSC);
        let khz = match self.plan {
            TscPlan::Scale(k) => Some(k),
            _ => None,
        };
        vcpu_state::restore(fd, index, &self.vcpus[index as usize], caps, tsc, khz)?;
        let kernel_backend = self.vm_file.hyperv_user.is_none() && self.saved().hyperv.is_some();
        if index == 0 && kernel_backend && self.plan == TscPlan::Reenlighten {
            let emulation = self.vcpus[0].msr(TSC_EMULATION_CONTROL).unwrap_or(0);
            if emulation & 1 != 0 {
                crate::vcpu::VcpuState::set_msr(fd, TSC_EMULATION_STATUS, 1).map_err(|source| {
                    SnapshotError::Kvm {
                        what: "KVM_SET_MSRS (TSC_EMULATION_STATUS)",
                        source,
                    }
                })?;
            }
        }
        Ok(())
    }

    /// The user backend continuing the saved one.
    pub(crate) fn user_backend(&mut self, p: BackendParams<'_>) -> Result<HvBackend, VmError> {
        let state: &UserBackendState =
            self.vm_file
                .hyperv_user
                .as_ref()
                .ok_or_else(|| SnapshotError::Invalid {
                    file: "vm".into(),
                    problem: "no user Hyper-V backend state".into(),
                })?;
        let rate = match self.plan {
            TscPlan::Reenlighten => RateChange::Reenlighten,
            _ => RateChange::Same,
        };
        // The saved time dilation factor wins over the configured one (UserBackend::restore).
        let (backend, notify) = UserBackend::restore(p.into_user(), state, rate).map_err(|e| {
            SnapshotError::Invalid {
                file: "vm".into(),
                problem: e.to_string(),
            }
        })?;
        self.notify = notify;
        let backend = Arc::new(backend);
        backend.resume_timers();
        Ok(HvBackend::User(backend))
    }

    /// The VM-wide state, after every vCPU's: PIC, IOAPIC, PIT, the KVM clock, then the
    /// reenlightenment interrupt.
    pub(crate) fn restore_vm(&self, vm: &VmFd, mem: &GuestMemory) -> Result<(), SnapshotError> {
        let kvm = |what| move |source| SnapshotError::Kvm { what, source };
        let file = "vm";
        for (chip_id, hex) in (0u32..).zip(&self.vm_file.irqchips) {
            let chip: kvm_irqchip = hex.decode(file, "irqchip")?;
            if chip.chip_id != chip_id {
                return Err(SnapshotError::Invalid {
                    file: file.into(),
                    problem: format!("interrupt controller {chip_id} has id {}", chip.chip_id),
                });
            }
            vm.set_irqchip(&chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        if let Some(pit) = &self.vm_file.pit {
            let pit: kvm_pit_state2 = pit.decode(file, "pit")?;
            vm.set_pit2(&pit).map_err(kvm("KVM_SET_PIT2"))?;
        }
        let saved: kvm_clock_data = self.vm_file.clock.decode(file, "clock")?;
        // The saved value, no KVM_CLOCK_REALTIME: guest time continues where it stopped.
        vm.set_clock(&kvm_clock_data {
            clock: saved.clock,
            ..Default::default()
        })
        .map_err(kvm("KVM_SET_CLOCK"))?;
        if self.plan == TscPlan::Reenlighten {
            let notify = match self.notify {
                Some(n) => Some(n),
                None => {
                    crate::hyperv::user::snapshot::reenlightenment(self.reenlightenment_control())
                }
            };
            if self.vm_file.hyperv_user.is_none() {
                // Kernel backend: KVM keeps its TSC page frozen while the guest has TSC
                // emulation on; invalidate it so the guest reads TIME_REF_COUNT, which KVM
                // then derives from the KVM clock, at the right rate.
                let page = self.vcpus[0].msr(REFERENCE_TSC).unwrap_or(0);
                if let Some(gpa) = hyperv_tlfs::overlay_page_gpa(page) {
                    let _ = crate::hyperv::user::clock::write_tsc_page(mem, gpa, None, 0);
                }
            }
            if let Some(n) = notify {
                if n.target_vp >= self.saved().cpus {
                    log::warn!(
                        "REENLIGHTENMENT_CONTROL names VP {}, which does not exist; no \
                         reenlightenment interrupt",
                        n.target_vp
                    );
                } else {
                    // A fixed, edge-triggered interrupt to the target VP's APIC (APIC ID =
                    // VP index in hvkvm).
                    let msi = kvm_msi {
                        address_lo: 0xfee0_0000 | (n.target_vp << 12),
                        data: u32::from(n.vector),
                        ..Default::default()
                    };
                    vm.signal_msi(msi)
                        .map_err(kvm("KVM_SIGNAL_MSI (reenlightenment)"))?;
                    log::info!(
                        "restore: reenlightenment interrupt {:#x} sent to VP {}",
                        n.vector,
                        n.target_vp
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> TscFacts {
        TscFacts {
            saved_khz: 2_000_000,
            host_khz: Some(2_000_000),
            requested_khz: None,
            tsc_control: false,
            reenlightenment_offered: false,
            reenlightenment_control: 0,
        }
    }

    #[test]
    fn the_tsc_rule_covers_every_case() {
        assert_eq!(plan_tsc(&facts()), Ok(TscPlan::Same));
        // Within KVM's 250 ppm: nothing to do.
        let near = TscFacts {
            host_khz: Some(2_000_400),
            ..facts()
        };
        assert_eq!(plan_tsc(&near), Ok(TscPlan::Same));
        let other = TscFacts {
            host_khz: Some(3_000_000),
            ..facts()
        };
        let e = plan_tsc(&other).unwrap_err();
        assert!(e.contains("not offered hv-reenlightenment"), "{e}");
        assert!(
            e.contains("2000000 kHz") && e.contains("3000000 kHz"),
            "{e}"
        );
        let scaled = TscFacts {
            tsc_control: true,
            ..other
        };
        assert_eq!(plan_tsc(&scaled), Ok(TscPlan::Scale(2_000_000)));
        let offered = TscFacts {
            reenlightenment_offered: true,
            ..other
        };
        let e = plan_tsc(&offered).unwrap_err();
        assert!(e.contains("not enabled REENLIGHTENMENT_CONTROL"), "{e}");
        let enabled = TscFacts {
            reenlightenment_control: hyperv_tlfs::msr::REENLIGHTENMENT_ENABLED | 0xec,
            ..offered
        };
        assert_eq!(plan_tsc(&enabled), Ok(TscPlan::Reenlighten));
        // Scaling wins over reenlightenment: the guest keeps its rate.
        assert_eq!(
            plan_tsc(&TscFacts {
                tsc_control: true,
                ..enabled
            }),
            Ok(TscPlan::Scale(2_000_000))
        );
        let wrong = TscFacts {
            requested_khz: Some(1_000_000),
            ..scaled
        };
        assert!(plan_tsc(&wrong).unwrap_err().contains("--tsc-khz 1000000"));
        let explicit = TscFacts {
            requested_khz: Some(2_000_000),
            ..scaled
        };
        assert_eq!(plan_tsc(&explicit), Ok(TscPlan::Scale(2_000_000)));
        let unknown = TscFacts {
            saved_khz: 0,
            ..other
        };
        assert_eq!(
            plan_tsc(&unknown),
            Ok(TscPlan::Same),
            "no rate recorded: nothing to keep"
        );
    }
}
