//! `hvkvm restore`: resume a snapshot in this process.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::run::{parse_seconds, report, RunError};
use crate::devices::serial::{SerialSink, Unbuffered};
use crate::snapshot::SnapshotReader;
use crate::vm::{self, RestoreParams, Vm};

/// Options of `hvkvm restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot directory (`hvkvm ctl … snapshot DIR` wrote it).
    pub dir: PathBuf,
    /// Serve the control socket at PATH while the VM runs (see `hvkvm ctl`).
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Write the guest's serial output to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub serial_file: Option<PathBuf>,
    /// Stop the VM after this many seconds (exit status 124).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub timeout: Option<f64>,
    /// The guest's TSC rate in kHz (default: the snapshot's). The guest keeps its rate: with
    /// TSC scaling where the host runs at another one, else through reenlightenment if the
    /// guest enabled it; otherwise the restore is refused.
    #[arg(long, value_name = "KHZ")]
    pub tsc_khz: Option<u32>,
    /// Write how the VM ended as JSON to FILE (as `hvkvm run --outcome-json`).
    #[arg(long, value_name = "FILE")]
    pub outcome_json: Option<PathBuf>,
}

/// Runs `hvkvm restore`.
pub fn execute(args: RestoreArgs) -> Result<i32, RunError> {
    let name = args.dir.display().to_string();
    let vm_err = |source| RunError::Vm {
        name: name.clone(),
        source,
    };
    // Snapshot files are hostile input: SnapshotReader checks every size before reading and
    // every checksum before parsing.
    let reader = SnapshotReader::open(&args.dir).map_err(|e| vm_err(vm::VmError::Restore(e)))?;
    let serial: SerialSink = match &args.serial_file {
        Some(path) => Box::new(
            fs::File::create(path).map_err(|source| RunError::SerialFile {
                path: path.clone(),
                source,
            })?,
        ),
        None => Box::new(Unbuffered(std::io::stdout())),
    };
    let mut params = RestoreParams::new(serial);
    params.timeout = args.timeout.map(Duration::from_secs_f64);
    params.tsc_khz = args.tsc_khz;
    let server = args
        .api_socket
        .as_deref()
        .map(crate::api::ApiServer::start)
        .transpose()?;
    let vm = Vm::restore(&reader, params).map_err(vm_err)?;
    eprintln!(
        "hvkvm: restored '{}' ({} vCPUs, {} MiB) from {}",
        reader.manifest().config.boot,
        reader.manifest().config.cpus,
        reader.manifest().config.memory_mib,
        args.dir.display()
    );
    let running = vm.start().map_err(vm_err)?;
    if let Some(s) = &server {
        s.set_target(Some(running.handle()));
    }
    let outcome = running.finish();
    drop(server);
    report(&outcome);
    if let Some(path) = &args.outcome_json {
        let json = serde_json::to_string_pretty(&outcome).unwrap_or_default();
        fs::write(path, json).map_err(|source| RunError::OutcomeJson {
            path: path.clone(),
            source,
        })?;
    }
    Ok(outcome.reason.exit_status())
}
