//! `hvkvm run`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

use crate::boot::linux::LinuxImage;
use crate::cpu::CpuModel;
use crate::devices::serial::{SerialSink, Unbuffered};
use crate::host_quirks::{HostQuirks, QuirksMode};
use crate::kvm::HostProbe;
use crate::vm::{self, BootSource, VmConfig, VmOutcome};

/// The kernel command line used when `--cmdline` is not given.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 nokaslr panic=-1 reboot=k pci=off audit=0 cryptomgr.notests";

/// Options of `hvkvm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// ELF64 test payload to run (see "Payload contract" in README.md).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kernel", "initrd", "cmdline"], required_unless_present = "kernel")]
    pub payload: Option<PathBuf>,
    /// Linux kernel to boot: a bzImage (decompressed on the host) or a vmlinux ELF.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initramfs for the kernel (uncompressed cpio boots fastest).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 nokaslr panic=-1 reboot=k pci=off audit=0
    /// cryptomgr.notests", plus "nosmp" for one vCPU; host-quirk additions come first].
    #[arg(long, value_name = "TEXT", requires = "kernel")]
    pub cmdline: Option<String>,
    /// Number of vCPUs (1 to 255).
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::vm::config::MAX_VCPUS)))]
    pub cpus: u32,
    /// Guest RAM in MiB (16 to 61440; above 3 GiB the rest is mapped from 4 GiB up).
    #[arg(long, default_value_t = 256, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(
              crate::memory::layout::MIN_RAM_MIB..=crate::memory::layout::MAX_RAM_MIB))]
    pub memory: u64,
    /// CPU model: `baseline` (portable x86-64, no AVX/XSAVE) or `host` (all KVM supports).
    #[arg(long, default_value = "baseline", value_name = "MODEL")]
    pub cpu: CpuModel,
    /// Nested virtualization: give the guest VMX. `auto` (default): on where this host can
    /// nest (Intel, kvm_intel nested=1) and `--cpu host` is chosen; `on`: an error where it
    /// cannot; `off`: never.
    #[arg(long, value_enum, default_value_t = crate::cpu::nested::NestedMode::Auto)]
    pub nested: crate::cpu::nested::NestedMode,
    /// Write the guest's serial output to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub serial_file: Option<PathBuf>,
    /// Stop the VM after this many seconds (exit status 124).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub timeout: Option<f64>,
    /// Workarounds for hosts that cannot run ordinary guests unaided (kvm_pvm): auto, on, off.
    #[arg(long, default_value = "auto", value_name = "MODE")]
    pub host_quirks: QuirksMode,
    /// End the VM when the guest resets (exit status 0) instead of rebooting it.
    #[arg(long)]
    pub no_reboot: bool,
    /// Print where the run's time went when the VM ends: exits per kind and per device with
    /// hvkvm's host time, time inside KVM_RUN, loading steps, UART bytes and interrupts.
    #[arg(long)]
    pub stats: bool,
    /// Write how the VM ended (reason, exit counts, ucall reports) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub outcome_json: Option<PathBuf>,
    /// Hyper-V enlightenments for the guest.
    #[command(flatten)]
    pub hv: hv_model::cli::HvSelectionArgs,
    /// Hyper-V backend: auto, kernel (KVM's in-kernel emulation) or user
    /// (hvkvm's own).
    #[arg(long, value_enum, default_value_t = crate::hyperv::BackendChoice::Auto)]
    pub backend: crate::hyperv::BackendChoice,
    /// When the guest reports a crash (Hyper-V crash MSRs): log it and let the guest go on
    /// (so Windows can write its own dump), pause the VM, or exit (status 123).
    #[arg(long, value_enum, default_value_t = crate::hyperv::CrashAction::Log)]
    pub on_guest_crash: crate::hyperv::CrashAction,
    /// Print which Hyper-V MSRs and hypercalls the guest used when the VM ends.
    #[arg(long)]
    pub hv_report: bool,
    /// Write the Hyper-V usage report as JSON to FILE when the VM ends.
    #[arg(long, value_name = "FILE")]
    pub hv_report_json: Option<PathBuf>,
    /// Serve a control socket at PATH (mode 0600) while the VM runs: `hvkvm ctl --api-socket
    /// PATH pause|resume|info|report|snapshot DIR`.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
}

/// Errors of `hvkvm run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An input file could not be read (the error names the file, and the limit if it was
    /// too large).
    #[error(transparent)]
    Input(#[from] input_file::InputError),
    /// The payload breaks the payload contract (checked before creating the VM).
    #[error("cannot load the payload '{}'", path.display())]
    Payload {
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: crate::boot::payload::PayloadError,
    },
    /// The serial output file could not be created.
    #[error("cannot create the serial output file '{path}'")]
    SerialFile {
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Bad --timeout.
    #[error("--timeout {0} is not a positive number of seconds")]
    Timeout(f64),
    /// Building or running the VM.
    #[error("cannot run '{name}'")]
    Vm {
        /// The payload or kernel.
        name: String,
        /// What failed.
        #[source]
        source: vm::VmError,
    },
    /// `--hv`/`--profile` could not be honoured.
    #[error(transparent)]
    HyperV(#[from] crate::hyperv::HyperVError),
    /// `--nested on` on a host that cannot nest.
    #[error(transparent)]
    Nested(#[from] crate::cpu::nested::NestedUnavailable),
    /// `--hv` did not parse.
    #[error("bad --hv/--profile selection")]
    HvSelection(#[source] hv_model::ModelError),
    /// Probing the host failed.
    #[error(transparent)]
    Probe(#[from] crate::kvm::ProbeError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// Writing the outcome JSON.
    #[error("cannot write the outcome to '{path}'")]
    OutcomeJson {
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The longest time limit accepted, in seconds (about 31 years): far beyond any run, and
/// small enough that a `Duration` of it and a deadline `now + it` cannot overflow (both panic).
const MAX_SECONDS: f64 = 1e9;

/// Parses a positive, finite number of seconds, at most [`MAX_SECONDS`].
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t > MAX_SECONDS => Err(format!(
            "'{s}' seconds is more than the longest limit, {MAX_SECONDS:.0} s (about 31 years)"
        )),
        Ok(t) if t.is_finite() && t > 0.0 => Ok(t),
        _ => Err(format!("'{s}' is not a positive number of seconds")),
    }
}

/// The role of a file that is copied into guest RAM: at most `max_bytes`, which is the guest
/// RAM (`--memory`) or what is left of it.
fn ram_role(name: &'static str, max_bytes: u64, limit: String) -> input_file::Role {
    input_file::Role::new(
        name,
        max_bytes,
        limit,
        "it must fit in guest RAM: raise --memory, or check that this is the right file",
    )
}

/// What `hvkvm run` boots, read and checked.
enum Inputs {
    /// Kernel and initrd.
    Linux {
        kernel: Vec<u8>,
        initrd: Option<Vec<u8>>,
    },
    /// ELF payload and its name.
    Payload(Vec<u8>, String),
}

/// Reads the kernel and initrd; together they must fit in guest RAM.
fn read_linux_inputs(
    kernel: &Path,
    initrd: Option<&Path>,
    memory_mib: u64,
) -> Result<(Vec<u8>, Option<Vec<u8>>), RunError> {
    let ram = memory_mib << 20;
    let kernel = input_file::read(
        kernel,
        &ram_role(
            "kernel",
            ram,
            format!("the guest RAM (--memory {memory_mib})"),
        ),
    )?;
    let initrd = initrd
        .map(|path| {
            let left = ram - kernel.len() as u64;
            let limit = format!(
                "is left of the guest RAM (--memory {memory_mib}) after the kernel ({})",
                input_file::human(kernel.len() as u64)
            );
            input_file::read(path, &ram_role("initrd", left, limit))
        })
        .transpose()?;
    Ok((kernel, initrd))
}

/// Kernel command-line additions a host's quirks need (hiding CPU features the CPL0
/// emulator cannot execute but CPUID leaks, and skipping boot work that costs minutes there).
/// The initcalls skipped are self-tests and setup nothing in a test guest uses, each measured
/// with `initcall_debug` on a kvm_pvm host: the last three (BLAKE2s and KDF self-tests, the
/// perf PMUs' sysfs) took 18.8, 1.5 and 3.0 s of Debian 6.1's boot, and skipping them saved
/// 17 s of 352 s to poweroff (1 vCPU, two boots side by side, 2026-12-02).
pub fn quirk_cmdline(quirks: HostQuirks) -> Option<&'static str> {
    (quirks == HostQuirks::PVM).then_some(
        "noxsave clearcpuid=popcnt,smap,ssse3,sse4_1,sse4_2,pclmulqdq,aes,sha_ni,movbe,rdpid,fsgsbase \
         tsc=reliable no_timer_check mitigations=off init_on_alloc=0 rodata=off quiet \
         initcall_blacklist=ftrace_check_for_weak_functions,trace_eval_init,tracer_init_tracefs,\
bpf_key_sig_kfuncs_init,bpf_prog_test_run_init,bpf_rstat_kfunc_init,bpf_tcp_ca_kfunc_init,\
kfunc_init,cubictcp_register,load_system_certificate_list,\
blake2s_mod_init,crypto_kdf108_init,perf_event_sysfs_init",
    )
}

/// The command line `hvkvm run` gives a kernel: `base` (or hvkvm's default), after the host
/// quirks' additions, plus `nosmp` for one vCPU.
pub fn linux_cmdline(base: Option<&str>, quirks: HostQuirks, cpus: u32) -> String {
    let mut cmdline = base.unwrap_or(DEFAULT_CMDLINE).to_string();
    if let Some(extra) = quirk_cmdline(quirks) {
        // First, so that the caller's own parameters (later on the line) win.
        cmdline = format!("{extra} {cmdline}");
    }
    if cpus == 1 && !cmdline.split_whitespace().any(|w| w == "nosmp") {
        cmdline.push_str(" nosmp");
    }
    cmdline
}

/// Builds the VM configuration from the arguments. Input files, the payload's ELF layout and
/// the `--hv` selection are checked before the host is probed, so bad input is refused at
/// once, on any host.
pub fn config(args: &RunArgs) -> Result<VmConfig, RunError> {
    let inputs = if let Some(kernel) = &args.kernel {
        let (kernel, initrd) = read_linux_inputs(kernel, args.initrd.as_deref(), args.memory)?;
        Inputs::Linux { kernel, initrd }
    } else {
        let path = args.payload.as_deref().unwrap_or(Path::new(""));
        let limit = format!("the guest RAM (--memory {})", args.memory);
        let image = input_file::read(path, &ram_role("payload", args.memory << 20, limit))?;
        crate::boot::payload::check(&image, args.memory << 20, args.cpus).map_err(|source| {
            RunError::Payload {
                path: path.to_owned(),
                source,
            }
        })?;
        Inputs::Payload(image, path.display().to_string())
    };
    let request = args.hv.request().map_err(RunError::HvSelection)?;
    let host = HostProbe::probe()?;
    let boot = match inputs {
        Inputs::Linux { kernel, initrd } => {
            let quirks = HostQuirks::resolve(args.host_quirks, host.is_pvm());
            if let Some(extra) = quirk_cmdline(quirks) {
                log::info!("host quirks: adding to the kernel command line: {extra}");
            }
            let cmdline = linux_cmdline(args.cmdline.as_deref(), quirks, args.cpus);
            BootSource::Linux(LinuxImage {
                kernel,
                initrd,
                cmdline,
            })
        }
        Inputs::Payload(image, name) => BootSource::Payload { image, name },
    };
    let mut config = VmConfig::new(boot);
    if let Some(resolution) = crate::hyperv::resolve_for_vm(&request, &host, args.backend)? {
        for d in &resolution.decisions {
            let state = if d.on { "on" } else { "off" };
            log::info!("{}: {state} ({})", d.flag.name(), d.reason);
        }
        let leaves = crate::hyperv::cpuid_entries(&resolution);
        config.hypervisor_leaves = (!leaves.is_empty()).then_some(leaves);
        config.hyperv = crate::hyperv::HvConfig::from_resolution(&resolution, args.on_guest_crash);
    }
    config.cpus = args.cpus;
    config.memory_mib = args.memory;
    config.cpu_model = args.cpu;
    config.nested = crate::cpu::nested::resolve(args.nested, args.cpu, &host)?;
    if config.nested {
        log::info!("nested virtualization: the guest gets VMX");
    }
    config.host_quirks = args.host_quirks;
    config.timeout = match args.timeout {
        None => None,
        Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t)),
        Some(t) => return Err(RunError::Timeout(t)),
    };
    if let Some(path) = &args.serial_file {
        let file = fs::File::create(path).map_err(|source| RunError::SerialFile {
            path: path.clone(),
            source,
        })?;
        config.serial = Box::new(file) as SerialSink;
    } else {
        config.serial = Box::new(Unbuffered(std::io::stdout()));
    }
    Ok(config)
}

/// Prints the one-line summary of how the VM ended to stderr (and, for a timeout, where each
/// vCPU was).
pub fn report(outcome: &VmOutcome) {
    if matches!(outcome.reason, vm::StopReason::Timeout { .. }) {
        for (i, s) in outcome.vcpu_stats.iter().enumerate() {
            eprintln!(
                "hvkvm: vCPU {i} was at RIP {:#x} ({} exits)",
                s.final_rip, s.exits
            );
        }
    }
    eprintln!(
        "hvkvm: {}; ran {:.3} s (exit status {})",
        outcome.reason,
        outcome.elapsed.as_secs_f64(),
        outcome.reason.exit_status()
    );
}

/// Runs `hvkvm run`.
pub fn execute(args: RunArgs) -> Result<i32, RunError> {
    // From the start, so that an early SIGUSR1 (a live-report request) cannot end the process;
    // Vm::new installs it too (and reports a failure there).
    let _ = crate::vm::live_report::install();
    let name = args
        .payload
        .as_ref()
        .or(args.kernel.as_ref())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    // --timeout covers the whole run, reboots included.
    let deadline = args
        .timeout
        .map(|t| Instant::now() + Duration::from_secs_f64(t));
    let mut boot = 1u32;
    let server = args
        .api_socket
        .as_deref()
        .map(crate::api::ApiServer::start)
        .transpose()?;
    let outcome = loop {
        let mut config = config(&args)?;
        let boot_limit = deadline.map(|deadline| {
            let left = deadline.saturating_duration_since(Instant::now());
            left.max(Duration::from_millis(1))
        });
        if boot_limit.is_some() {
            config.timeout = boot_limit;
        }
        let vm_err = |source| RunError::Vm {
            name: name.clone(),
            source,
        };
        let running = vm::Vm::new(config)
            .and_then(vm::Vm::start)
            .map_err(vm_err)?;
        if let Some(s) = &server {
            s.set_target(Some(running.handle()));
        }
        let outcome = running.finish();
        if let Some(s) = &server {
            s.set_target(None);
        }
        if outcome.reason != vm::StopReason::Reset || args.no_reboot {
            break outcome;
        }
        if let (Some(deadline), Some(limit)) = (deadline, boot_limit) {
            if Instant::now() >= deadline {
                // Past the deadline each boot would get the 1 ms minimum, and a guest that
                // resets sooner would reboot for ever: the run ends here, as a timeout.
                let mut outcome = outcome;
                outcome.reason = vm::StopReason::Timeout {
                    after_ms: limit.as_millis() as u64,
                };
                break outcome;
            }
        }
        // A reset is a fresh VM from the same configuration, as after a power cycle.
        boot += 1;
        eprintln!(
            "hvkvm: the guest reset; rebooting (boot {boot}; --no-reboot ends the VM instead)"
        );
    };
    drop(server);
    report(&outcome);
    if args.stats {
        eprint!("{}", crate::vm::run_stats::render(&outcome));
    }
    if let Some(hv) = &outcome.hyperv {
        if args.hv_report {
            eprint!("{}", hv.render());
        }
        if let Some(path) = &args.hv_report_json {
            let json = serde_json::to_string_pretty(hv).unwrap_or_default();
            fs::write(path, json).map_err(|source| RunError::OutcomeJson {
                path: path.clone(),
                source,
            })?;
        }
    } else if args.hv_report || args.hv_report_json.is_some() {
        eprintln!("hvkvm: no Hyper-V usage report: the VM had no Hyper-V enlightenment (use --hv or --profile)");
    }
    if let Some(path) = &args.outcome_json {
        let json = serde_json::to_string_pretty(&outcome).unwrap_or_default();
        fs::write(path, json).map_err(|source| RunError::OutcomeJson {
            path: path.clone(),
            source,
        })?;
    }
    Ok(outcome.reason.exit_status())
}
