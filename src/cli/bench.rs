//! `hvkvm bench`: benchmarks that boot guests and report what an operation costs.

use std::io::Write;

use clap::{Args, Subcommand};

use crate::bench::nested_cpuid::{self, NestedBenchError};

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
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
    /// The nested benchmark failed.
    #[error("hvkvm bench nested-cpuid")]
    Nested(#[from] NestedBenchError),
    /// Writing the report failed.
    #[error("cannot write the report")]
    Write(#[source] std::io::Error),
}

/// Runs `hvkvm bench …`.
pub fn execute(command: BenchCommand) -> Result<i32, BenchCliError> {
    match command {
        BenchCommand::NestedCpuid(args) => {
            let report = nested_cpuid::run(args.iterations)?;
            let text = if args.json {
                report.to_json()
            } else {
                report.render()
            };
            std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .map_err(BenchCliError::Write)?;
            Ok(0)
        }
    }
}
