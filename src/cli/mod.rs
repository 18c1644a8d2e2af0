//! The command line: `hvkvm run`, `hvkvm demo`, `hvkvm probe`, `hvkvm bench …` (and
//! `hvkvm hv …`).

pub use hv_model::cli::error_chain;

pub mod bench;
pub mod ctl;
pub mod demo;
pub mod probe;
pub mod restore;
pub mod run;

use clap::{Parser, Subcommand};

/// hvkvm runs virtual machines on Linux KVM for guests that expect Hyper-V: Windows with the
/// Hyper-V role, WSL2/VBS, Linux's Hyper-V guest code, and small test payloads.
#[derive(Debug, Parser)]
#[command(name = "hvkvm", version, about, long_about = None, after_help = "\
Examples:
  hvkvm demo                                   the built-in Hyper-V guest on 2 vCPUs (--json)
  hvkvm probe                                  what this host's KVM can do
  hvkvm hv explain --profile windows           which Hyper-V enlightenments, and why
  hvkvm run --payload test.elf --cpus 2        run an ELF test payload
  hvkvm run --kernel vmlinuz --initrd initrd.cpio --cpus 2 --timeout 600
  hvkvm bench time-read --plot time.svg        TSC page vs TIME_REF_COUNT, as a plot
  hvkvm run --payload test.elf --api-socket /tmp/vm.sock   then: hvkvm ctl --api-socket
        /tmp/vm.sock pause; … snapshot /tmp/snap; later: hvkvm restore /tmp/snap")]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). HVKVM_LOG=level works too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a VM: an ELF test payload (--payload) or a Linux kernel (--kernel).
    Run(run::RunArgs),
    /// Boot hvkvm's built-in guest on 2 vCPUs with Hyper-V enlightenments: what it saw (VP
    /// index, reference TSC page), what it used, and what a reference-time read costs.
    Demo(demo::DemoArgs),
    /// Report what this host's KVM supports and which Hyper-V backends can work here.
    Probe(probe::ProbeArgs),
    /// Control a running hvkvm through its --api-socket: pause, resume, info, report,
    /// snapshot DIR.
    Ctl(ctl::CtlArgs),
    /// Resume a snapshot (written by `hvkvm ctl … snapshot DIR`) in this process.
    Restore(restore::RestoreArgs),
    /// Benchmarks that boot guests and report what an operation costs: time-read (per-read
    /// distributions, --json, --plot FILE.svg), nested-cpuid (an L2 exit with and without the
    /// enlightened VMCS).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Hyper-V enlightenments: explain a selection, export/import QEMU, libvirt, KubeVirt and
    /// Proxmox configurations, compute a fleet baseline.
    #[command(subcommand)]
    Hv(hv_model::cli::HvCommand),
}

/// Errors of any subcommand.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `run`.
    #[error(transparent)]
    Run(#[from] run::RunError),
    /// `probe`.
    #[error(transparent)]
    Probe(#[from] crate::kvm::ProbeError),
    /// `ctl`.
    #[error(transparent)]
    Ctl(#[from] ctl::CtlError),
    /// Writing output.
    #[error("cannot write output")]
    Output(#[from] std::io::Error),
    /// `hv`.
    #[error(transparent)]
    Hv(#[from] hv_model::cli::CliError),
    /// `bench`.
    #[error(transparent)]
    Bench(#[from] bench::BenchCliError),
    /// `demo`.
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
}

/// Runs the parsed command; returns the process exit status.
pub fn execute(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Run(args) => Ok(run::execute(args)?),
        Command::Demo(args) => demo::execute(args),
        Command::Probe(args) => probe::execute(args),
        Command::Ctl(args) => Ok(ctl::execute(args)?),
        Command::Restore(args) => Ok(restore::execute(args)?),
        Command::Bench(command) => Ok(bench::execute(command)?),
        Command::Hv(command) => {
            hv_model::cli::run(&command, &mut std::io::stdout().lock())?;
            Ok(0)
        }
    }
}
