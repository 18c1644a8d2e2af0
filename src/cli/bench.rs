//! `hvkvm bench`: benchmarks that boot guests and report what an operation costs.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::bench::nested_cpuid::{self, NestedBenchError};
use crate::bench::{self, BenchError, Report};

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Cost of one guest reference-time read: the TIME_REF_COUNT MSR at CPL0 (an exit to
    /// hvkvm's Hyper-V user backend) against the reference TSC page at CPL3 (no exit), with a
    /// bare rdtsc pair as the floor. Prints p10/median/p90 per method and their ratio.
    #[command(after_help = "\
Examples:
  hvkvm bench time-read                           100,000 reads per method, a table
  hvkvm bench time-read --json --plot time.svg    JSON on stdout, the CDF plot as SVG")]
    TimeRead(TimeReadArgs),
    /// Cycles per L2 CPUID round trip under an L1 hypervisor in the guest, with a classic VMCS
    /// (VMREAD/VMWRITE) and with the Hyper-V enlightened VMCS (VP assist page, clean fields), in
    /// one run; p10/median/p90 per mode, their ratio and the VMREAD/VMWRITE instructions L1
    /// executes per exit. Needs a host that can nest (Intel VMX, kvm_intel nested=1) with
    /// KVM's in-kernel Hyper-V. Inside an emulated CPU (Bochs) RDTSC counts instructions, so
    /// the figures there are path lengths, not cycles.
    #[command(after_help = "\
Examples:
  hvkvm bench nested-cpuid                     1000 round trips per mode, a table
  hvkvm bench nested-cpuid --iterations 200 --json")]
    NestedCpuid(NestedCpuidArgs),
    /// Boots Debian's kernel with the initramfs of scripts/linux-guest.sh to its /init (the
    /// "HVKVM-INIT: reached /init" line on COM1) and to poweroff, once per vCPU count, one
    /// boot at a time, with the command line `hvkvm run` would use. Prints wall and CPU
    /// seconds per boot, the host, and what to compare with (on kvm_pvm hosts, where QEMU
    /// cannot boot, the best figure known for that host kind, not measured in the same run).
    #[command(after_help = "\
Examples:
  hvkvm bench boot                              1 and 2 vCPUs from target/linux-guest
  hvkvm bench boot --cpus 1 --json              one boot, JSON with every exit counter
  hvkvm bench boot --linux-dir DIR --console-dir /tmp")]
    Boot(BootArgs),
}

/// Options of `hvkvm bench boot`.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// Directory with `vmlinuz` and `initramfs.cpio` (scripts/linux-guest.sh's output)
    /// [default: $HVKVM_LINUX_DIR, else target/linux-guest].
    #[arg(long, value_name = "DIR", conflicts_with = "payload")]
    pub linux_dir: Option<PathBuf>,
    /// Kernel command line instead of hvkvm's default (host-quirk additions still come
    /// first, and "nosmp" is added for one vCPU).
    #[arg(long, value_name = "TEXT", conflicts_with = "payload")]
    pub cmdline: Option<String>,
    /// Boot this ELF payload instead of Linux (to test the benchmark: it must print the
    /// marker line on COM1 and power off).
    #[arg(long, value_name = "FILE")]
    pub payload: Option<PathBuf>,
    /// vCPU counts to boot with, one boot each, in this order.
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_values_t = [1u32, 2],
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::vm::config::MAX_VCPUS)))]
    pub cpus: Vec<u32>,
    /// Limit per boot, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 1200.0,
          value_parser = crate::cli::run::parse_seconds)]
    pub timeout: f64,
    /// Write each boot's console to DIR/hvkvm-bench-boot-<N>cpu.log.
    #[arg(long, value_name = "DIR")]
    pub console_dir: Option<PathBuf>,
    /// Print the report as JSON (with every exit counter) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Output options of the benchmarks that report distributions.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print the report as JSON (with the histograms) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also draw the latency distribution of every series (CDF, one chart) as SVG to FILE.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// Options of `hvkvm bench time-read`.
#[derive(Debug, Args)]
pub struct TimeReadArgs {
    /// Reads per method (split into guest runs of at most 50,000).
    #[arg(long, value_name = "N", default_value_t = bench::time_read::DEFAULT_ITERATIONS,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub iterations: u64,
    /// Output.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Options of `hvkvm bench nested-cpuid`.
#[derive(Debug, Args)]
pub struct NestedCpuidArgs {
    /// Timed L2 CPUID round trips per mode (one guest run each).
    #[arg(long, value_name = "N", default_value_t = nested_cpuid::DEFAULT_ITERATIONS,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(nested_cpuid::MAX_ITERATIONS)))]
    pub iterations: u32,
    /// Print the report as one JSON object (the modes under "vmcs" and "evmcs").
    #[arg(long)]
    pub json: bool,
}

/// Errors of `hvkvm bench`.
#[derive(Debug, thiserror::Error)]
pub enum BenchCliError {
    /// A distribution benchmark failed.
    #[error(transparent)]
    Bench(#[from] BenchError),
    /// The nested benchmark failed.
    #[error("hvkvm bench nested-cpuid")]
    Nested(#[from] NestedBenchError),
    /// The guest for `bench boot` could not be read.
    #[error(transparent)]
    Input(#[from] input_file::InputError),
    /// Writing the report failed.
    #[error("cannot write the report")]
    Write(#[source] std::io::Error),
    /// The --plot file cannot be created (checked before the benchmark runs).
    #[error("cannot create the plot file '{}'; pass --plot a writable path", path.display())]
    PlotFile {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs `hvkvm bench …`.
pub fn execute(command: BenchCommand) -> Result<i32, BenchCliError> {
    match command {
        BenchCommand::TimeRead(args) => {
            check_plot_path(&args.output)?;
            let report = bench::time_read::run(args.iterations)?;
            emit(&report, &args.output)?;
        }
        BenchCommand::NestedCpuid(args) => {
            let report = nested_cpuid::run(args.iterations)?;
            let text = if args.json {
                report.to_json()
            } else {
                report.render()
            };
            write_out(&text)?;
        }
        BenchCommand::Boot(args) => {
            let guest = boot_guest(&args)?;
            let report = bench::boot::run(
                &guest,
                &args.cpus,
                std::time::Duration::from_secs_f64(args.timeout),
                args.console_dir.as_deref(),
            )?;
            let text = if args.json {
                report.to_json()
            } else {
                report.render()
            };
            write_out(&text)?;
            if report
                .rows
                .iter()
                .any(|r| !r.powered_off || r.to_init_s.is_none())
            {
                return Ok(1);
            }
        }
    }
    Ok(0)
}

/// A run can take minutes: find out first that its plot can be written.
fn check_plot_path(output: &OutputArgs) -> Result<(), BenchCliError> {
    if let Some(path) = &output.plot {
        std::fs::File::create(path).map_err(|source| BenchCliError::PlotFile {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

fn write_out(text: &str) -> Result<(), BenchCliError> {
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(BenchCliError::Write)
}

/// Prints `report` as a table or JSON and draws its plot when asked.
fn emit(report: &Report, output: &OutputArgs) -> Result<(), BenchCliError> {
    if let Some(path) = &output.plot {
        bench::plot::write_cdf(report, path)?;
    }
    let mut text = if output.json {
        report.to_json()
    } else {
        report.render()
    };
    if let (Some(path), false) = (&output.plot, output.json) {
        text.push_str(&format!("  plot: {}\n", path.display()));
    }
    write_out(&text)
}

/// Reads what `bench boot` boots.
fn boot_guest(args: &BootArgs) -> Result<bench::boot::BootGuest, BenchCliError> {
    let ram_role = |name: &'static str| {
        input_file::Role::new(
            name,
            512 << 20,
            "the benchmark's 512 MiB of guest RAM",
            "pass scripts/linux-guest.sh's output, or a smaller file",
        )
    };
    if let Some(path) = &args.payload {
        return Ok(bench::boot::BootGuest::Payload {
            image: input_file::read(path, &ram_role("payload"))?,
            name: path.display().to_string(),
        });
    }
    let dir = args
        .linux_dir
        .clone()
        .or_else(|| std::env::var_os("HVKVM_LINUX_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/linux-guest"));
    let kernel = dir.join("vmlinuz");
    Ok(bench::boot::BootGuest::Linux {
        kernel: input_file::read(&kernel, &ram_role("kernel"))?,
        initrd: input_file::read(&dir.join("initramfs.cpio"), &ram_role("initrd"))?,
        cmdline: args.cmdline.clone(),
        name: format!(
            "{} with {}",
            kernel.display(),
            dir.join("initramfs.cpio").display()
        ),
    })
}
