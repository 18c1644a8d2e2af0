//! `hvkvm ctl`: talk to a running hvkvm's control socket (src/api has the protocol).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::api::{self, ApiError, Request};

/// How long `ctl` waits for an answer (a snapshot of a large guest takes a while).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// Options of `hvkvm ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The control socket of the running hvkvm (its --api-socket).
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `hvkvm ctl` commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Pause every vCPU (returns once they are all stopped).
    Pause,
    /// Resume a paused VM.
    Resume,
    /// What the VM is doing.
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The live Hyper-V usage report (what --hv-report prints at the end).
    Report {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a snapshot of the paused VM to DIR (it stays paused; `hvkvm restore DIR` resumes
    /// it in a new process). DIR must be new, empty, or an earlier snapshot, which is replaced
    /// atomically.
    Snapshot {
        /// The snapshot directory.
        dir: PathBuf,
        /// Allow restoring on another host; refused while the guest has migration blockers
        /// (hv-passthrough, hv-no-nonarch-coresharing=auto, hv-reenlightenment without a fixed
        /// TSC frequency). Without it the snapshot restores on this host only.
        #[arg(long)]
        for_migration: bool,
    },
}

/// Errors of `hvkvm ctl`.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The socket could not be used.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The VM refused the request.
    #[error("{0}")]
    Refused(String),
    /// The snapshot path could not be made absolute.
    #[error("cannot resolve the snapshot directory '{0}'")]
    Path(PathBuf, #[source] std::io::Error),
}

/// Runs `hvkvm ctl`; prints the answer.
pub fn execute(args: CtlArgs) -> Result<i32, CtlError> {
    let (request, json) = match args.command {
        CtlCommand::Pause => (Request::Pause, false),
        CtlCommand::Resume => (Request::Resume, false),
        CtlCommand::Info { json } => (Request::Info, json),
        CtlCommand::Report { json } => (Request::Report, json),
        CtlCommand::Snapshot { dir, for_migration } => {
            // The server runs in another directory: send an absolute path.
            let dir = std::path::absolute(&dir).map_err(|e| CtlError::Path(dir.clone(), e))?;
            (Request::Snapshot { dir, for_migration }, false)
        }
    };
    let answer = api::call(&args.api_socket, &request, ANSWER_TIMEOUT)?;
    if !answer.ok {
        return Err(CtlError::Refused(
            answer.error.unwrap_or_else(|| "the request failed".into()),
        ));
    }
    if json {
        let value = answer.result.unwrap_or_default();
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        let text = answer.text.unwrap_or_default();
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
    }
    Ok(0)
}
