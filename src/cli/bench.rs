//! `hvkvm bench`: benchmarks that boot guests and report latency distributions.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

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
}

/// Output options every benchmark has.
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

/// Errors of `hvkvm bench`.
#[derive(Debug, thiserror::Error)]
pub enum BenchCliError {
    /// The benchmark failed.
    #[error(transparent)]
    Bench(#[from] BenchError),
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

/// Runs `hvkvm bench ...`.
pub fn execute(command: BenchCommand) -> Result<i32, BenchCliError> {
    let output = match &command {
        BenchCommand::TimeRead(args) => &args.output,
    };
    // A run can take minutes: find out first that its plot can be written.
    if let Some(path) = &output.plot {
        std::fs::File::create(path).map_err(|source| BenchCliError::PlotFile {
            path: path.clone(),
            source,
        })?;
    }
    let (report, output) = match command {
        BenchCommand::TimeRead(args) => (bench::time_read::run(args.iterations)?, args.output),
    };
    emit(&report, &output)?;
    Ok(0)
}

/// Prints `report` as a table or JSON and draws its plot when asked.
fn emit(report: &Report, output: &OutputArgs) -> Result<(), BenchCliError> {
    if let Some(path) = &output.plot {
        bench::plot::write_cdf(report, path)?;
    }
    let text = if output.json {
        report.to_json()
    } else {
        report.render()
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .map_err(BenchCliError::Write)?;
    if let (Some(path), false) = (&output.plot, output.json) {
        writeln!(out, "  plot: {}", path.display()).map_err(BenchCliError::Write)?;
    }
    Ok(())
}
