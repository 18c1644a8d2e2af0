//! One virtual machine: build it from a [`VmConfig`], run it to a [`VmOutcome`].
//!
//! Threads: the caller's thread builds the VM, starts one thread per vCPU
//! (`vcpu::run_loop`), then waits on [`control::VmControl`] for a stop reason or the timeout.
//! Stopping kicks every vCPU out of KVM_RUN; a vCPU thread that still does not return within
//! [`STOP_GRACE`] is reported as stuck and abandoned, so a guest can never hang hvkvm.

pub mod config;
pub mod control;
pub mod handle;
pub mod link;
pub mod live_report;
pub mod outcome;
pub mod run_stats;
pub mod snapshot;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_enable_cap, kvm_mp_state, kvm_pit_config, KVM_CAP_X86_USER_SPACE_MSR,
    KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, KVM_MSR_EXIT_REASON_FILTER,
    KVM_MSR_EXIT_REASON_UNKNOWN, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

pub use config::{BootSource, ConfigError, VmConfig};
pub use handle::{RunEvent, RunningVm, VmHandle, VmInfo};
pub use outcome::{StopReason, SyncEvent, VmOutcome};
pub use snapshot::RestoreParams;

use crate::boot;
use crate::cpu::cpuid::{self, CX16_BIT};
use crate::devices::{self, bus::Sink, IoBus};
use crate::host_quirks::{EmulationAssist, HostQuirks};
use crate::hyperv::backend::{BackendParams, HvSetupError};
use crate::hyperv::HvBackend;
use crate::kvm::vcpu_state::StateCaps;
use crate::kvm::{kick, HostProbe};
use crate::memory::{self, GuestMemory};
use crate::snapshot::format::SavedConfig;
use crate::snapshot::SnapshotError;
use crate::vcpu::{msr::MsrBus, run_loop, stats::VcpuStats, ExitHandler};
use control::VmControl;

/// How long stopped vCPU threads get to leave KVM_RUN before they are reported stuck.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// Where KVM puts the real-mode TSS on Intel (three pages below the BIOS area at 4 GiB).
const TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors building or running a VM (host-side problems; guest behaviour is a [`StopReason`]).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Probing the host failed.
    #[error(transparent)]
    Probe(#[from] crate::kvm::ProbeError),
    /// The host lacks something hvkvm needs.
    #[error("this host's KVM lacks {0}, which hvkvm requires")]
    MissingCapability(&'static str),
    /// A KVM ioctl failed while building the VM.
    #[error("KVM refused {what}")]
    Kvm {
        /// Which step.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// ELF payload loading.
    #[error("cannot load the payload")]
    Payload(#[from] boot::payload::PayloadError),
    /// Linux loading.
    #[error("cannot load the Linux kernel")]
    Linux(#[from] boot::linux::LinuxError),
    /// Port range collision among devices.
    #[error(transparent)]
    IoBus(#[from] devices::bus::OverlapError),
    /// The CPUID table is too large for KVM.
    #[error("the CPUID table has too many entries for KVM_SET_CPUID2")]
    CpuidTooLarge,
    /// eventfd creation.
    #[error("cannot create an eventfd for the serial interrupt")]
    EventFd(#[source] std::io::Error),
    /// A vCPU thread could not be started.
    #[error("cannot start the thread of vCPU {0}")]
    Thread(u32, #[source] std::io::Error),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The Hyper-V backend could not be set up.
    #[error("cannot set up the Hyper-V backend")]
    HyperV(#[from] HvSetupError),
    /// A snapshot could not be restored.
    #[error("cannot restore the snapshot")]
    Restore(#[from] SnapshotError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// A built, not yet running VM.
pub struct Vm {
    // Field order is drop order: vCPU fds before the VM fd and guest memory (in `core`).
    vcpus: Vec<(VcpuFd, ExitHandler)>,
    core: Arc<VmCore>,
    timeout: Option<Duration>,
    serial_irq: EventFd,
}

/// What the thread waiting for a VM, the API socket and snapshots share: everything of a VM
/// but its vCPU fds, which their threads own.
pub(crate) struct VmCore {
    pub(crate) control: Arc<VmControl>,
    pub(crate) boot_description: String,
    pub(crate) stats: Vec<Arc<VcpuStats>>,
    pub(crate) hyperv: Option<HvBackend>,
    pub(crate) devices: devices::Platform,
    /// What a snapshot needs to rebuild this VM.
    pub(crate) saved: SavedConfig,
    /// Which vCPU state this host's KVM has, and the MSRs saved.
    pub(crate) caps: StateCaps,
    /// The guest's TSC rate (vCPU 0's).
    pub(crate) guest_tsc_khz: u32,
    /// Why this guest cannot move to another host (from the Hyper-V model).
    pub(crate) migration_blockers: Vec<String>,
    pub(crate) host: crate::snapshot::format::HostIdentity,
    pub(crate) started: Mutex<Option<Instant>>,
    /// Host work before the guest ran (loading steps, then the whole build).
    pub(crate) host_steps: Vec<boot::HostStep>,
    pub(crate) vm: Arc<VmFd>,
    pub(crate) mem: GuestMemory,
}

impl std::fmt::Debug for VmCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmCore")
            .field("boot", &self.boot_description)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("boot", &self.core.boot_description)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Creates the VM, its devices and vCPUs, and loads the guest.
    pub fn new(config: VmConfig) -> Result<Vm, VmError> {
        Vm::build(config, None)
    }

    /// Creates a VM continuing the snapshot `reader` opened (`vm::snapshot` has the rules).
    pub fn restore(
        reader: &crate::snapshot::SnapshotReader,
        params: RestoreParams,
    ) -> Result<Vm, VmError> {
        let (config, restore) = snapshot::prepare(reader, params)?;
        Vm::build(config, Some(restore))
    }

    fn build(config: VmConfig, mut restore: Option<snapshot::Restore<'_>>) -> Result<Vm, VmError> {
        let build_start = Instant::now();
        config.validate()?;
        kick::install_handler().map_err(VmError::Signal)?;
        live_report::install().map_err(VmError::Signal)?;
        let host = HostProbe::probe()?;
        let mut quirks = HostQuirks::resolve(config.host_quirks, host.is_pvm());
        if let Some(r) = &restore {
            // The VM's shape follows the snapshot, whatever this host would choose.
            quirks.no_pit = !r.saved().pit;
        }
        if host.cap("KVM_CAP_IRQCHIP") <= 0 {
            return Err(VmError::MissingCapability(
                "KVM_CAP_IRQCHIP (in-kernel irqchip)",
            ));
        }
        let kvm = Kvm::new().map_err(crate::kvm::ProbeError::OpenKvm)?;
        let vm = Arc::new(create_vm_fd(&kvm, &host, quirks, &config)?);

        let mem = memory::allocate(config.memory_mib)?;
        memory::register_with_kvm(&vm, &mem)?;
        let ram_size = config.memory_mib << 20;
        let plan = match (&restore, &config.boot) {
            (Some(r), _) => {
                r.load_ram(&mem)?;
                None
            }
            (None, BootSource::Payload { image, name }) => Some(boot::payload::load(
                &mem,
                ram_size,
                config.cpus,
                image,
                name,
            )?),
            (None, BootSource::Linux(image)) => {
                Some(boot::linux::load(&mem, ram_size, config.cpus, image)?)
            }
        };
        let boot_description = match (&plan, &restore) {
            (Some(p), _) => p.description.clone(),
            (None, Some(r)) => r.saved().boot.clone(),
            (None, None) => String::new(),
        };

        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm.register_irqfd(&serial_irq, devices::COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD (COM1)"))?;
        let trigger =
            devices::serial::IrqFdTrigger::new(serial_irq.try_clone().map_err(VmError::EventFd)?);
        let saved_devices = restore.as_ref().map(|r| r.devices());
        let extra_ports: Vec<[u16; 2]> =
            config.extra_pio.iter().map(|(b, l, _)| [*b, *l]).collect();
        let extra_msrs: Vec<[u32; 2]> = config
            .msr_handlers
            .iter()
            .map(|(r, _)| [*r.start(), *r.end()])
            .collect();
        let (io, platform) = build_io_bus(trigger, config.serial, config.extra_pio, saved_devices)?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let cpu = CpuSpec {
            supported: supported.as_slice(),
            model: config.cpu_model,
            nested: config.nested,
            hypervisor_leaves: config.hypervisor_leaves.as_deref(),
            overrides: &config.cpuid_overrides,
            quirks,
        };

        // The vCPUs with their CPUID (the snapshot's tables on restore).
        let mut fds = Vec::new();
        let mut tables = Vec::new();
        for index in 0..config.cpus {
            let fd = vm
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let table = match &restore {
                Some(r) => r.cpuid(index),
                None => cpu.table_for(index),
            };
            let kvm_table = cpuid::to_kvm(&table).map_err(|_| VmError::CpuidTooLarge)?;
            fd.set_cpuid2(&kvm_table)
                .map_err(kvm_err("KVM_SET_CPUID2"))?;
            fds.push(fd);
            tables.push(table);
        }
        let backend_kind = config.hyperv.as_ref().map(|h| h.backend);
        let kernel_backend = backend_kind == Some(hv_model::Backend::Kernel);
        let mut caps = StateCaps::probe(
            &kvm,
            &vm,
            if kernel_backend {
                hyperv_tlfs::msr::KVM_EMULATED
            } else {
                &[]
            },
            backend_kind.and_then(HvBackend::filters_msrs),
        )
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
        if kernel_backend {
            crate::hyperv::kernel::retain_restorable_msrs(&tables[0], &mut caps.msrs);
        }
        let host_tsc_khz = fds[0].get_tsc_khz().ok().or(host.tsc_khz);
        let control = Arc::new(VmControl::default());
        control.set_vcpu_count(config.cpus);
        let link: Arc<dyn crate::hyperv::user::link::VpLink> =
            Arc::new(link::VmLink::new(vm.clone(), control.clone()));
        let time_dilation = config.time_dilation.unwrap_or(match config.boot {
            // Test payloads check exact timing against real time; the quirk is for operating
            // systems' periodic housekeeping.
            BootSource::Payload { .. } => 1,
            BootSource::Linux(_) => quirks.time_dilation,
        });
        // The kernel backend's capabilities come before any MSR is written.
        let mut hyperv: Option<HvBackend> = None;
        if let Some(hv) = config
            .hyperv
            .as_ref()
            .filter(|h| h.backend == hv_model::Backend::Kernel)
        {
            let backend = HvBackend::new(BackendParams {
                config: hv,
                cpuid: &tables[0],
                vcpus: config.cpus,
                mem: mem.clone(),
                guest_tsc: 0,
                tsc_khz: host_tsc_khz.unwrap_or(0),
                link: link.clone(),
                time_dilation: 1,
            });
            for (index, fd) in (0u32..).zip(&fds) {
                backend.setup_vcpu(index, fd)?;
            }
            if let (HvBackend::Kernel(k), Some(earlier)) =
                (&backend, restore.as_ref().and_then(|r| r.kernel_usage()))
            {
                k.continue_report(earlier);
            }
            hyperv = Some(backend);
        }
        let guest_tsc_khz = match restore.as_mut() {
            Some(r) => {
                r.plan_tsc(host_tsc_khz, caps.tsc_control)?;
                for (index, fd) in (0u32..).zip(&fds) {
                    r.restore_vcpu(fd, index, &caps)?;
                }
                r.guest_tsc_khz()
            }
            None => {
                let plan = plan.as_ref().expect("a boot plan without a snapshot");
                for (fd, state) in fds.iter().zip(plan.vcpus.iter()) {
                    setup_vcpu(fd, state)?;
                }
                // 0: unknown (KVM_GET_TSC_KHZ fails on hosts with an unstable TSC); a snapshot
                // then records no rate to keep.
                host_tsc_khz.unwrap_or(0)
            }
        };
        if let Some(hv) = config
            .hyperv
            .as_ref()
            .filter(|h| h.backend == hv_model::Backend::User)
        {
            let (guest_tsc, _) = guest_tsc(&fds[0], &host)?;
            let params = BackendParams {
                config: hv,
                cpuid: &tables[0],
                vcpus: config.cpus,
                mem: mem.clone(),
                guest_tsc,
                tsc_khz: guest_tsc_khz,
                link,
                time_dilation,
            };
            hyperv = Some(match restore.as_mut() {
                Some(r) => r.user_backend(params)?,
                None => HvBackend::new(params),
            });
        }

        let mut vcpus = Vec::new();
        let mut stats = Vec::new();
        for (index, mut fd) in (0u32..).zip(fds) {
            let mut msrs = MsrBus::default();
            let hv_vp = hyperv
                .as_ref()
                .map(|backend| backend.attach_vcpu(index, &mut msrs));
            for (range, handler) in &config.msr_handlers {
                msrs.insert_shared(index, range.clone(), handler.clone());
            }
            let vcpu_stats = Arc::new(VcpuStats::default());
            stats.push(vcpu_stats.clone());
            let mut assist = quirks.emulation_assist.then(EmulationAssist::default);
            if let (Some(a), Some(_)) = (assist.as_mut(), &restore) {
                a.resume_after_restore(&mut fd, &mem);
            }
            let handler = ExitHandler {
                vcpu: index,
                io: io.clone(),
                msrs,
                mem: mem.clone(),
                control: control.clone(),
                stats: vcpu_stats,
                assist,
                hyperv: hv_vp,
            };
            vcpus.push((fd, handler));
        }
        if let Some(r) = restore.as_ref() {
            // VM-wide state last: interrupt controllers, PIT, then the clock, right before
            // the vCPUs may run; then the reenlightenment interrupt, if the rules call for it.
            r.restore_vm(&vm, &mem)?;
        }
        let saved = SavedConfig {
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            boot: boot_description.clone(),
            pit: !quirks.no_pit,
            nested: config.nested,
            cpuid: tables
                .iter()
                .map(|t| {
                    t.iter()
                        .map(crate::snapshot::format::CpuidRow::from)
                        .collect()
                })
                .collect(),
            hyperv: config.hyperv.as_ref().map(snapshot::saved_hyperv),
            extra_ports,
            extra_msrs,
        };
        let mut host_steps = plan.map(|p| p.host_steps).unwrap_or_default();
        host_steps.push(boot::HostStep {
            name: "build the VM (everything above included)",
            ns: build_start.elapsed().as_nanos() as u64,
        });
        let core = VmCore {
            control,
            boot_description,
            stats,
            hyperv,
            devices: platform,
            saved,
            caps,
            guest_tsc_khz,
            migration_blockers: config
                .hyperv
                .as_ref()
                .map(|h| h.migration_blockers.clone())
                .unwrap_or_default(),
            host: snapshot::host_identity(&host),
            started: Mutex::new(None),
            host_steps,
            vm,
            mem,
        };
        Ok(Vm {
            vcpus,
            core: Arc::new(core),
            timeout: config.timeout,
            serial_irq,
        })
    }

    /// The control block, e.g. to pause, resume or stop the VM from another thread.
    pub fn control(&self) -> Arc<VmControl> {
        self.core.control.clone()
    }

    /// A handle to control the VM while it runs (pause, resume, info, report, snapshot).
    pub fn handle(&self) -> VmHandle {
        VmHandle::new(self.core.clone())
    }

    /// Starts every vCPU thread; the VM runs until it stops or its timeout expires.
    pub fn start(self) -> Result<RunningVm, VmError> {
        let Vm {
            vcpus,
            core,
            timeout,
            serial_irq,
        } = self;
        let start = Instant::now();
        *core.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(start);
        for (fd, handler) in vcpus {
            let index = handler.vcpu;
            let thread_control = core.control.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || run_loop::run(fd, handler, thread_control))
                .map_err(|e| VmError::Thread(index, e))?;
            core.control.add_thread(index, Arc::new(handle));
        }
        Ok(RunningVm::new(core, start, timeout, serial_irq))
    }

    /// Runs every vCPU until the VM stops or the timeout expires.
    pub fn run(self) -> Result<VmOutcome, VmError> {
        Ok(self.start()?.finish())
    }
}

/// Builds and runs a VM in one call.
pub fn run(config: VmConfig) -> Result<VmOutcome, VmError> {
    Vm::new(config)?.run()
}

/// Sends guest writes of `trapped_writes`, and every access to `hyperv_range` (the user
/// backend's synthetic MSRs), to user space (KVM_X86_SET_MSR_FILTER, default allow). With the
/// range filtered, the user backend owns those MSRs even on hosts whose KVM would handle them.
fn set_msr_filter(
    vm: &VmFd,
    trapped_writes: &[u32],
    hyperv_range: Option<std::ops::RangeInclusive<u32>>,
) -> Result<(), VmError> {
    use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags};
    // A clear bit in a range's bitmap denies the access, which exits to user space.
    let deny_one = [0u8; 1];
    let deny_hyperv = [0u8; (hyperv_tlfs::msr::RANGE_LEN / 8) as usize];
    let mut ranges: Vec<MsrFilterRange<'_>> = trapped_writes
        .iter()
        .map(|&base| MsrFilterRange {
            flags: MsrFilterRangeFlags::WRITE,
            base,
            msr_count: 1,
            bitmap: &deny_one,
        })
        .collect();
    if let Some(range) = hyperv_range {
        let msr_count = range.end() - range.start() + 1;
        debug_assert_eq!(msr_count, hyperv_tlfs::msr::RANGE_LEN);
        ranges.push(MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base: *range.start(),
            msr_count,
            bitmap: &deny_hyperv,
        });
    }
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
        .map_err(kvm_err("KVM_X86_SET_MSR_FILTER"))
}

/// The VM file descriptor with its interrupt controllers, MSR exits and MSR filter.
fn create_vm_fd(
    kvm: &Kvm,
    host: &HostProbe,
    quirks: HostQuirks,
    config: &VmConfig,
) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(TSS_ADDRESS)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    if !quirks.no_pit {
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    }
    let hyperv_range = config
        .hyperv
        .as_ref()
        .and_then(|h| HvBackend::filters_msrs(h.backend));
    let needs_msr_exits = !config.msr_handlers.is_empty() || hyperv_range.is_some();
    if host.cap("KVM_CAP_X86_USER_SPACE_MSR") > 0 {
        let cap = kvm_enable_cap {
            cap: KVM_CAP_X86_USER_SPACE_MSR,
            args: [
                u64::from(KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_FILTER),
                0,
                0,
                0,
            ],
            ..Default::default()
        };
        vm.enable_cap(&cap)
            .map_err(kvm_err("KVM_CAP_X86_USER_SPACE_MSR"))?;
    } else if needs_msr_exits {
        return Err(VmError::MissingCapability(
            "KVM_CAP_X86_USER_SPACE_MSR (MSR handlers and the Hyper-V user backend need MSR exits)",
        ));
    }
    let trapped_writes: &[u32] = if quirks.emulation_assist {
        EmulationAssist::trapped_msr_writes()
    } else {
        &[]
    };
    if !trapped_writes.is_empty() || hyperv_range.is_some() {
        set_msr_filter(&vm, trapped_writes, hyperv_range)?;
    }

    Ok(vm)
}

/// The parts of a VM configuration that decide its CPUID: the one place the guest's CPUID
/// table is assembled (the Hyper-V backend reads its features from the result).
struct CpuSpec<'a> {
    supported: &'a [kvm_bindings::kvm_cpuid_entry2],
    model: crate::cpu::CpuModel,
    nested: bool,
    hypervisor_leaves: Option<&'a [crate::cpu::CpuidEntry]>,
    overrides: &'a [crate::cpu::CpuidEntry],
    quirks: HostQuirks,
}

impl CpuSpec<'_> {
    /// CPUID of vCPU `index`: the CPU model, VMX, the hypervisor leaves, explicit leaves,
    /// quirks.
    fn table_for(&self, index: u32) -> Vec<kvm_bindings::kvm_cpuid_entry2> {
        let mut table = cpuid::for_vcpu(self.supported, self.model, index, &[]);
        crate::cpu::nested::set_vmx(&mut table, self.nested);
        if let Some(leaves) = self.hypervisor_leaves {
            cpuid::replace_hypervisor_leaves(&mut table, leaves);
        }
        // Explicit leaves last, so they can also add to the hypervisor range.
        cpuid::apply_overrides(&mut table, self.overrides);
        if self.quirks.hide_cx16 {
            hide_cx16(&mut table);
        }
        table
    }
}

/// vCPU 0's TSC now and its rate in kHz (the Hyper-V reference clock starts from them).
fn guest_tsc(vcpu0: &VcpuFd, host: &HostProbe) -> Result<(u64, u32), VmError> {
    const MSR_IA32_TSC: u32 = 0x10;
    let guest_tsc = crate::vcpu::VcpuState::msr(vcpu0, MSR_IA32_TSC)
        .map_err(kvm_err("KVM_GET_MSRS (IA32_TSC)"))?;
    let tsc_khz = vcpu0
        .get_tsc_khz()
        .ok()
        .or(host.tsc_khz)
        .ok_or(VmError::MissingCapability(
            "KVM_GET_TSC_KHZ (the Hyper-V reference clock needs the TSC rate)",
        ))?;
    Ok((guest_tsc, tsc_khz))
}

fn hide_cx16(table: &mut [kvm_bindings::kvm_cpuid_entry2]) {
    for e in table.iter_mut().filter(|e| e.function == 1) {
        e.ecx &= !CX16_BIT;
    }
}

fn build_io_bus(
    trigger: devices::serial::IrqFdTrigger,
    serial: devices::serial::SerialSink,
    extra: Vec<(u16, u16, devices::bus::SharedPioDevice)>,
    saved: Option<&devices::PlatformState>,
) -> Result<(IoBus, devices::Platform), VmError> {
    use devices::{
        acpi_pm::AcpiPm, cmos::Cmos, i8042::I8042, serial::SerialPort, test_exit::TestExit,
    };
    let device = |device: &'static str| {
        move |problem: String| VmError::Restore(SnapshotError::Device { device, problem })
    };
    let platform = match saved {
        None => devices::Platform {
            serial: Arc::new(Mutex::new(SerialPort::new(trigger, serial))),
            cmos: Arc::new(Mutex::new(Cmos::default())),
            pm: Arc::new(Mutex::new(AcpiPm::default())),
        },
        Some(s) => devices::Platform {
            serial: Arc::new(Mutex::new(
                SerialPort::from_state(&s.serial, trigger, serial).map_err(device("UART"))?,
            )),
            cmos: Arc::new(Mutex::new(
                Cmos::from_state(&s.cmos).map_err(device("CMOS"))?,
            )),
            pm: Arc::new(Mutex::new(AcpiPm::from_state(&s.pm))),
        },
    };
    let mut bus = IoBus::new();
    bus.insert(devices::COM1_PORT, 8, platform.serial.clone())?;
    bus.insert(0x60, 5, Arc::new(Mutex::new(I8042)))?;
    bus.insert(0x70, 2, platform.cmos.clone())?;
    bus.insert(0x80, 1, Arc::new(Mutex::new(Sink)))?;
    bus.insert(devices::TEST_EXIT_PORT, 1, Arc::new(Mutex::new(TestExit)))?;
    bus.insert(devices::PM1A_EVT_PORT, 8, platform.pm.clone())?;
    for (base, len, device) in extra {
        bus.insert(base, len, device)?;
    }
    Ok((bus, platform))
}

/// Registers, LAPIC LINT pins and MP state of one vCPU.
fn setup_vcpu(fd: &VcpuFd, state: &boot::VcpuBootState) -> Result<(), VmError> {
    let sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let mut boot_sregs = state.sregs;
    // Keep what KVM initialised that the boot state does not define (APIC base, …).
    boot_sregs.apic_base = sregs.apic_base;
    boot_sregs.interrupt_bitmap = sregs.interrupt_bitmap;
    fd.set_sregs(&boot_sregs)
        .map_err(kvm_err("KVM_SET_SREGS"))?;
    fd.set_regs(&state.regs).map_err(kvm_err("KVM_SET_REGS"))?;
    let mut fpu = fd.get_fpu().map_err(kvm_err("KVM_GET_FPU"))?;
    fpu.fcw = 0x37f;
    fpu.mxcsr = 0x1f80;
    fd.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))?;
    set_lint_pins(fd)?;
    if state.runnable {
        // With the in-kernel irqchip, every vCPU but 0 starts waiting for SIPI.
        fd.set_mp_state(kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        })
        .map_err(kvm_err("KVM_SET_MP_STATE"))?;
    }
    Ok(())
}

/// LINT0 = ExtINT (the PIC), LINT1 = NMI, as firmware leaves them on a PC.
fn set_lint_pins(fd: &VcpuFd) -> Result<(), VmError> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 0x7 << 8;
    const DELIVERY_NMI: u32 = 0x4 << 8;
    let mut lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    let mut set = |offset: usize, mode: u32| {
        let reg = &mut lapic.regs[offset..offset + 4];
        let old = u32::from_le_bytes([reg[0] as u8, reg[1] as u8, reg[2] as u8, reg[3] as u8]);
        let new = (old & !0x700) | mode;
        for (dst, b) in reg.iter_mut().zip(new.to_le_bytes()) {
            *dst = b as _;
        }
    };
    set(LVT_LINT0, DELIVERY_EXTINT);
    set(LVT_LINT1, DELIVERY_NMI);
    fd.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))
}
