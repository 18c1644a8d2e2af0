//! `hvkvm demo`: boots the built-in guest and explains what happened.

use std::time::Duration;

use clap::Args;

use super::run::{report, RunError};
use crate::devices::serial::{CaptureBuffer, Tee, Unbuffered};
use crate::vm::{self, BootSource, VmConfig};

/// The demo guest, built from guest-tests/guest/src/bin/demo.rs by build.rs.
pub static DEMO_ELF: &[u8] = include_bytes!(env!("HVKVM_DEMO_ELF"));

/// Options of `hvkvm demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// vCPUs to boot (1 to 64).
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: u32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS", value_parser = super::run::parse_seconds)]
    pub timeout: f64,
}

/// Runs `hvkvm demo`.
pub fn execute(args: DemoArgs) -> Result<i32, RunError> {
    let capture = CaptureBuffer::default();
    let mut config = VmConfig::new(BootSource::Payload {
        image: DEMO_ELF.to_vec(),
        name: "built-in demo".into(),
    });
    config.cpus = args.cpus;
    config.timeout = Some(Duration::from_secs_f64(args.timeout));
    config.serial = Box::new(Tee(
        Box::new(Unbuffered(std::io::stdout())),
        Box::new(capture.clone()),
    ));
    println!(
        "hvkvm demo: booting the built-in ELF guest on {} vCPU(s)…",
        args.cpus
    );
    let outcome = vm::run(config).map_err(|source| RunError::Vm {
        name: "built-in demo".into(),
        source,
    })?;
    println!("\nhvkvm demo: what happened");
    println!("  booted:      {}", outcome.boot);
    println!("  ended:       {}", outcome.reason);
    println!("  run time:    {:.3} s", outcome.elapsed.as_secs_f64());
    let lines = capture.contents().lines().count();
    println!("  serial:      {lines} line(s) from the guest on COM1 (above)");
    for (i, s) in outcome.vcpu_stats.iter().enumerate() {
        println!(
            "  vCPU {i}:      {} exits ({} port I/O, {} MSR, {} kicks), stopped at RIP {:#x}",
            s.exits, s.io, s.msr, s.interrupted, s.final_rip
        );
    }
    report(&outcome);
    Ok(outcome.reason.exit_status())
}
