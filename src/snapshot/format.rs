//! What a snapshot's files contain (docs/snapshot.md is the prose version of this module).
//!
//! Every type here is plain data with serde derives and `deny_unknown_fields`: a file that
//! parses is structurally what this hvkvm wrote, and [`Manifest::validate`] then checks the
//! values that size anything (vCPU count, RAM size, file sizes) before anything is allocated.

use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::SnapshotError;

/// The first word of every manifest: tells a snapshot from any other file.
pub const MAGIC: &str = "hvkvm-snapshot";
/// The format version this hvkvm writes and the newest it reads.
pub const VERSION: u32 = 1;
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest vCPU or VM state file accepted.
pub const MAX_STATE_FILE_BYTES: u64 = 16 << 20;
/// Guest page size of the RAM file's checksum and sparseness.
pub const PAGE_SIZE: u64 = 4096;

/// Whether the snapshot may be restored on another host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotKind {
    /// Only on the host that took it (the default; any guest configuration).
    SameHost,
    /// On any host that meets the migration rules (taken only without migration blockers).
    Migration,
}

impl std::fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnapshotKind::SameHost => "same-host",
            SnapshotKind::Migration => "migration",
        })
    }
}

/// The host a snapshot was taken on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostIdentity {
    /// /etc/machine-id (or the hostname where there is none).
    pub machine_id: String,
    /// The CPU model name.
    pub cpu_model: Option<String>,
    /// The module serving /dev/kvm.
    pub kvm_module: Option<String>,
    /// The host TSC rate KVM reports, in kHz.
    pub tsc_khz: Option<u32>,
}

/// One file of the snapshot, with its checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// What it is: `vm`, `vcpu-N` or `ram`.
    pub role: String,
    /// Its name in the snapshot directory.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its bytes in hex; for `ram`, of the non-zero pages (docs/snapshot.md).
    pub sha256: String,
}

/// A CPUID entry as KVM_SET_CPUID2 takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidRow(pub [u32; 7]);

impl From<&kvm_bindings::kvm_cpuid_entry2> for CpuidRow {
    fn from(e: &kvm_bindings::kvm_cpuid_entry2) -> Self {
        CpuidRow([e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx])
    }
}

impl From<CpuidRow> for kvm_bindings::kvm_cpuid_entry2 {
    fn from(r: CpuidRow) -> Self {
        let [function, index, flags, eax, ebx, ecx, edx] = r.0;
        kvm_bindings::kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }
}

/// The Hyper-V part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedHyperv {
    /// `user` or `kernel`.
    pub backend: String,
    /// Enlightenments offered, by QEMU name.
    pub offered: Vec<String>,
    /// hv-enforce-cpuid.
    pub enforce_cpuid: bool,
    /// `log`, `pause` or `exit`.
    pub on_crash: String,
}

/// The configuration a restored VM is built with (the CPUID tables exactly as the guest had
/// them, not re-derived from the restoring host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedConfig {
    /// vCPU count.
    pub cpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// What was booted, for messages.
    pub boot: String,
    /// Whether the VM has KVM's in-kernel PIT.
    pub pit: bool,
    /// Whether the guest had VMX.
    pub nested: bool,
    /// Per vCPU, its CPUID table.
    pub cpuid: Vec<Vec<CpuidRow>>,
    /// The Hyper-V configuration, when the guest had enlightenments.
    pub hyperv: Option<SavedHyperv>,
    /// Port ranges `[base, len]` of devices the embedding program added (not saved: it must
    /// supply them again to restore).
    pub extra_ports: Vec<[u16; 2]>,
    /// MSR ranges `[first, last]` of handlers the embedding program added (likewise).
    pub extra_msrs: Vec<[u32; 2]>,
}

/// The manifest: what the snapshot is, where it came from, and every file's checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MAGIC`].
    pub format: String,
    /// Format version.
    pub version: u32,
    /// The hvkvm that wrote it.
    pub hvkvm_version: String,
    /// Seconds since the Unix epoch when it was taken.
    pub created_unix: u64,
    /// Same-host or migration.
    pub kind: SnapshotKind,
    /// What stops this guest from moving to another host (empty for a migration snapshot).
    pub migration_blockers: Vec<String>,
    /// The host it was taken on.
    pub host: HostIdentity,
    /// The guest's TSC rate in kHz.
    pub guest_tsc_khz: u32,
    /// The VM configuration.
    pub config: SavedConfig,
    /// Every file, with its checksum.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// The entry of `role`.
    pub fn file(&self, role: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.role == role)
    }

    /// Checks the values that size or name anything, before anything is allocated or opened.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let bad = |problem: String| SnapshotError::Invalid {
            file: MANIFEST.into(),
            problem,
        };
        if self.format != MAGIC {
            return Err(bad(format!("format is '{}', not '{MAGIC}'", self.format)));
        }
        let c = &self.config;
        if c.cpus == 0 || c.cpus > crate::vm::config::MAX_VCPUS {
            return Err(bad(format!("{} vCPUs is out of range", c.cpus)));
        }
        let mem = crate::memory::layout::MIN_RAM_MIB..=crate::memory::layout::MAX_RAM_MIB;
        if !mem.contains(&c.memory_mib) {
            return Err(bad(format!("{} MiB of RAM is out of range", c.memory_mib)));
        }
        if c.cpuid.len() != c.cpus as usize {
            return Err(bad(format!(
                "{} CPUID tables for {} vCPUs",
                c.cpuid.len(),
                c.cpus
            )));
        }
        if c.cpuid
            .iter()
            .any(|t| t.len() > kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        {
            return Err(bad("a CPUID table is larger than KVM allows".into()));
        }
        let mut roles = vec!["vm".to_string(), "ram".to_string()];
        roles.extend((0..c.cpus).map(|i| format!("vcpu-{i}")));
        for role in &roles {
            let entry = self
                .file(role)
                .ok_or_else(|| bad(format!("no '{role}' file is listed")))?;
            let limit = if role == "ram" {
                c.memory_mib << 20
            } else {
                MAX_STATE_FILE_BYTES
            };
            if entry.size > limit || (role == "ram" && entry.size != limit) {
                return Err(bad(format!(
                    "'{}' is listed with {} bytes (expected {})",
                    entry.name,
                    entry.size,
                    if role == "ram" {
                        format!("{limit}")
                    } else {
                        format!("at most {limit}")
                    }
                )));
            }
            if !valid_name(&entry.name) {
                return Err(bad(format!("'{}' is not a snapshot file name", entry.name)));
            }
            if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("'{}' has no valid SHA-256", entry.name)));
            }
        }
        if self.files.len() != roles.len() {
            return Err(bad(format!(
                "{} files are listed, expected {}",
                self.files.len(),
                roles.len()
            )));
        }
        Ok(())
    }
}

/// A file name hvkvm writes: no path separators, no leading dot, short.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A KVM structure as hex text, its size checked on the way back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hex(pub String);

impl Hex {
    /// Encodes `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 15)] as char);
        }
        Hex(s)
    }

    /// Encodes a KVM structure.
    pub fn of<T: IntoBytes + Immutable>(value: &T) -> Self {
        Self::of_bytes(value.as_bytes())
    }

    /// Decodes the bytes; `what` names the field for the error.
    pub fn bytes(&self, file: &str, what: &str) -> Result<Vec<u8>, SnapshotError> {
        let s = self.0.as_bytes();
        let bad = || SnapshotError::Invalid {
            file: file.into(),
            problem: format!("{what} is not valid hex"),
        };
        if s.len() % 2 != 0 {
            return Err(bad());
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        s.chunks(2)
            .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(bad)
    }

    /// Decodes a KVM structure of exactly its size.
    pub fn decode<T: FromBytes>(&self, file: &str, what: &str) -> Result<T, SnapshotError> {
        let bytes = self.bytes(file, what)?;
        T::read_from_bytes(&bytes).map_err(|_| SnapshotError::Invalid {
            file: file.into(),
            problem: format!(
                "{what} has {} bytes, this hvkvm's KVM structure has {}",
                bytes.len(),
                std::mem::size_of::<T>()
            ),
        })
    }
}

/// One vCPU's file (`vcpu-N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuFile {
    /// The vCPU index.
    pub index: u32,
    /// `kvm_regs`.
    pub regs: Hex,
    /// `kvm_sregs`.
    pub sregs: Hex,
    /// The XSAVE area.
    pub xsave: Hex,
    /// `kvm_xcrs`, where the host has XCRs.
    pub xcrs: Option<Hex>,
    /// `kvm_debugregs`.
    pub debugregs: Hex,
    /// `kvm_vcpu_events`.
    pub events: Hex,
    /// `KVM_MP_STATE_*`.
    pub mp_state: u32,
    /// `kvm_lapic_state`.
    pub lapic: Hex,
    /// `[index, value]` of every MSR saved.
    pub msrs: Vec<(u32, u64)>,
    /// The vCPU's TSC rate.
    pub tsc_khz: Option<u32>,
    /// KVM's nested-state buffer, when the vCPU had VMX/SVM state.
    pub nested: Option<Hex>,
    /// `KVM_STATE_NESTED_*` flags of that state (eVMCS: 4), for people reading the file.
    pub nested_flags: Option<u16>,
}

/// The VM-wide file (`vm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmFile {
    /// `kvm_irqchip` of the master PIC, the slave PIC and the IOAPIC.
    pub irqchips: Vec<Hex>,
    /// `kvm_pit_state2`, when the VM has a PIT.
    pub pit: Option<Hex>,
    /// `kvm_clock_data` as KVM_GET_CLOCK returned it.
    pub clock: Hex,
    /// The platform devices.
    pub devices: crate::devices::PlatformState,
    /// The user Hyper-V backend's state.
    pub hyperv_user: Option<crate::hyperv::user::snapshot::UserBackendState>,
    /// With the kernel backend, what the guest used before the snapshot (its usage report
    /// then; KVM's own Hyper-V state is in each vCPU's MSRs), so the report of the restored
    /// guest covers its whole life.
    #[serde(default)]
    pub hyperv_kernel_usage: Option<crate::hyperv::report::UsageReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_checks_sizes() {
        let regs = kvm_bindings::kvm_regs {
            rip: 0x1234,
            rflags: 2,
            ..Default::default()
        };
        let h = Hex::of(&regs);
        let back: kvm_bindings::kvm_regs = h.decode("f", "regs").unwrap();
        assert_eq!(back, regs);
        let short = Hex(h.0[2..].to_string());
        assert!(short.decode::<kvm_bindings::kvm_regs>("f", "regs").is_err());
        let e = Hex("zz".into()).bytes("vcpu-0.json", "regs").unwrap_err();
        assert_eq!(e.to_string(), "vcpu-0.json: regs is not valid hex");
    }

    #[test]
    fn file_names_cannot_escape_the_directory() {
        assert!(valid_name("1a2b-vcpu-0.json"));
        for bad in ["", "../x", "a/b", ".hidden", "x\0y", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
