//! Snapshots on disk: a directory with a checksummed manifest, one JSON file per vCPU, one
//! for the VM (interrupt controllers, PIT, clock, devices, the user Hyper-V backend) and a
//! sparse RAM file (docs/snapshot.md describes the format and the restore order).
//!
//! - [`format`]: what each file holds, as serde types, and the manifest's checks.
//! - [`store`]: writing atomically (a crash leaves the previous snapshot intact) and reading
//!   as hostile input (every size checked before reading, every checksum before parsing).
//!
//! Taking and restoring a VM's state is `crate::vm::snapshot`'s job; this module only knows
//! files. Snapshot files are read here with `std::fs` and explicit size limits
//! ([`store::SnapshotReader`]); that is the place to switch to the shared size-limited input
//! reader once `cli` has one.

pub mod format;
pub mod store;

pub use format::{Manifest, SnapshotKind, MANIFEST, VERSION};
pub use store::{SnapshotReader, SnapshotWriter};

use std::path::PathBuf;

/// What can go wrong taking, writing, reading or restoring a snapshot. Each message names the
/// file or step and the problem.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file system operation failed.
    #[error("cannot {what} '{path}'")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The directory holds something that is not an hvkvm snapshot.
    #[error(
        "'{path}' is not an hvkvm snapshot ({problem}); a snapshot directory starts with a \
         manifest.json whose first line is 'hvkvm-snapshot v1 sha256=…'"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Written by a newer hvkvm.
    #[error(
        "'{path}' is a snapshot of format version {found}, written by a newer hvkvm; this \
         hvkvm reads versions up to {VERSION}: restore it with that hvkvm or a newer one"
    )]
    NewerFormat {
        /// The manifest.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// A file does not match its checksum or size: the snapshot is damaged.
    #[error("the snapshot is damaged: {file}: {problem}; take a new snapshot")]
    Damaged {
        /// The file.
        file: String,
        /// What does not match.
        problem: String,
    },
    /// A file has the right checksum but content this hvkvm cannot use.
    #[error("{file}: {problem}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// The target directory is in use by something else.
    #[error(
        "'{0}' exists and is neither empty nor an hvkvm snapshot; choose a new directory \
         (hvkvm replaces only its own snapshots)"
    )]
    TargetInUse(PathBuf),
    /// The VM must be paused.
    #[error("the VM is not paused: pause it first (hvkvm ctl … pause)")]
    NotPaused,
    /// A vCPU did not hand over its state.
    #[error("vCPU {vcpu} did not hand over its state: {problem}")]
    Vcpu {
        /// The vCPU.
        vcpu: u32,
        /// What happened.
        problem: String,
    },
    /// A vCPU state ioctl failed.
    #[error(transparent)]
    VcpuState(#[from] crate::kvm::vcpu_state::VcpuStateError),
    /// A VM ioctl failed.
    #[error("{what} failed")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The guest cannot be snapshotted for migration.
    #[error(
        "this guest cannot be snapshotted for migration: {}. A same-host snapshot (without \
         --for-migration) is allowed: it restores on this host only",
        blockers.join("; ")
    )]
    MigrationBlocked {
        /// The blockers, each with its reason.
        blockers: Vec<String>,
    },
    /// The restoring host breaks a migration rule.
    #[error("cannot restore here: {0}")]
    Migration(String),
    /// The snapshot needs devices or MSR handlers the restoring program did not supply.
    #[error(
        "the snapshot's VM had devices added by the program that ran it ({0}); only that \
         program can restore it"
    )]
    MissingRuntimeDevices(String),
    /// A device's saved state was refused.
    #[error("the saved {device} state is invalid: {problem}")]
    Device {
        /// Which device.
        device: &'static str,
        /// Why.
        problem: String,
    },
}

impl SnapshotError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> SnapshotError {
        let path = path.into();
        move |source| SnapshotError::Io { what, path, source }
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    format::Hex::of_bytes(bytes).0
}
