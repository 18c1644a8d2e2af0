//! What a VM is made of, validated before anything touches KVM.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::boot::linux::LinuxImage;
use crate::cpu::{CpuModel, CpuidEntry};
use crate::devices::bus::SharedPioDevice;
use crate::devices::serial::SerialSink;
use crate::host_quirks::QuirksMode;
use crate::vcpu::msr::SharedMsrHandler;

/// Largest vCPU count hvkvm accepts (the MADT's xAPIC entries hold 8-bit IDs).
pub const MAX_VCPUS: u32 = 255;

/// What to boot.
#[derive(Debug, Clone)]
pub enum BootSource {
    /// An ELF64 payload (the README's payload contract).
    Payload {
        /// The ELF file's bytes.
        image: Vec<u8>,
        /// A name for messages.
        name: String,
    },
    /// A Linux kernel.
    Linux(LinuxImage),
}

/// A complete VM description.
pub struct VmConfig {
    /// vCPU count.
    pub cpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// What to boot.
    pub boot: BootSource,
    /// CPU model.
    pub cpu_model: CpuModel,
    /// Give the guest VMX (nested virtualization), decided by `cpu::nested::resolve`.
    pub nested: bool,
    /// Extra CPUID leaves (replace leaves with the same function/index).
    pub cpuid_overrides: Vec<CpuidEntry>,
    /// Hypervisor leaves (0x4000_0000..) replacing KVM's, from the Hyper-V model; None keeps
    /// KVM's own. Part of the one CPUID table the guest gets, which the Hyper-V backend reads
    /// its features from.
    pub hypervisor_leaves: Option<Vec<CpuidEntry>>,
    /// Where COM1 output goes.
    pub serial: SerialSink,
    /// Stop the VM after this long.
    pub timeout: Option<Duration>,
    /// Host workaround selection.
    pub host_quirks: QuirksMode,
    /// Additional port-I/O devices (base, length, device).
    pub extra_pio: Vec<(u16, u16, SharedPioDevice)>,
    /// Additional user-space MSR handlers.
    pub msr_handlers: Vec<(RangeInclusive<u32>, SharedMsrHandler)>,
    /// The Hyper-V backend and its settings, when the guest gets Hyper-V enlightenments.
    pub hyperv: Option<crate::hyperv::HvConfig>,
    /// Time dilation factor of the user Hyper-V backend, overriding the host quirk's choice
    /// (`host_quirks::HostQuirks::time_dilation`); 1 turns it off.
    pub time_dilation: Option<u32>,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("cpus", &self.cpus)
            .field("memory_mib", &self.memory_mib)
            .field("cpu_model", &self.cpu_model)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad vCPU count.
    #[error("--cpus {0} is not supported: use 1 to {MAX_VCPUS}")]
    Cpus(u32),
    /// Timeout of zero.
    #[error("--timeout must be greater than zero")]
    ZeroTimeout,
    /// Time dilation outside 1..=1000.
    #[error("time dilation {0} is not supported: use 1 (off) to 1000")]
    TimeDilation(u32),
}

impl VmConfig {
    /// A VM with defaults: 1 vCPU, 256 MiB, baseline CPU, output to stdout, no timeout.
    pub fn new(boot: BootSource) -> Self {
        VmConfig {
            cpus: 1,
            memory_mib: 256,
            boot,
            cpu_model: CpuModel::default(),
            nested: false,
            cpuid_overrides: Vec::new(),
            hypervisor_leaves: None,
            serial: Box::new(crate::devices::serial::Unbuffered(std::io::stdout())),
            timeout: None,
            host_quirks: QuirksMode::Auto,
            extra_pio: Vec::new(),
            msr_handlers: Vec::new(),
            hyperv: None,
            time_dilation: None,
        }
    }

    /// Checks the parts that do not need the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cpus == 0 || self.cpus > MAX_VCPUS {
            return Err(ConfigError::Cpus(self.cpus));
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroTimeout);
        }
        if let Some(n) = self
            .time_dilation
            .filter(|n| !(1..=crate::host_quirks::MAX_TIME_DILATION).contains(n))
        {
            return Err(ConfigError::TimeDilation(n));
        }
        Ok(())
    }
}
