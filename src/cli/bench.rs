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
