//! Workarounds for hosts whose KVM cannot run an ordinary guest unaided, kept in one place and
//! switched on only where the host needs them.
//!
//! Today there is one such host kind: `/dev/kvm` served by the `kvm_pvm` module (page-table
//! based virtualization without VMX/SVM; see ../shared/test-host.md). There, guest code at CPL0
//! is executed by KVM's instruction emulator, which refuses a few instructions an ordinary
//! kernel uses. On VMX/SVM hosts none of this is active.

mod emulation;
mod insn_len;
mod syscall;

pub use emulation::EmulationAssist;

/// Whether to apply host workarounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuirksMode {
    /// Detect from the host (`kvm_pvm` loaded).
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl std::str::FromStr for QuirksMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(QuirksMode::Auto),
            "on" => Ok(QuirksMode::On),
            "off" => Ok(QuirksMode::Off),
            other => Err(format!(
                "unknown host-quirks mode '{other}': use auto, on or off"
            )),
        }
    }
}

/// The largest time dilation factor a VM may have (`VmConfig::time_dilation`, snapshots).
pub const MAX_TIME_DILATION: u32 = 1000;

/// What the workarounds change for a VM on such a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostQuirks {
    /// Skip the in-kernel PIT: each of its ticks costs milliseconds of emulated guest CPU,
    /// and Linux ticks on the LAPIC timer once the ACPI MADT describes it.
    pub no_pit: bool,
    /// Hide CMPXCHG16B, which the emulator cannot execute (CPUID is otherwise leaky there).
    pub hide_cx16: bool,
    /// Complete instructions the emulator refuses and repair SYSCALL (see [`EmulationAssist`]).
    pub emulation_assist: bool,
    /// Time dilation factor of the Hyper-V user backend (1: none). Where every guest kernel
    /// instruction is emulated, a guest's periodic work (its tick, timer-driven housekeeping)
    /// eats a large share of its CPU. With N > 1 the user backend tells the guest N times the
    /// real TSC and APIC timer rates (TSC_FREQUENCY, APIC_FREQUENCY) and runs the reference
    /// time, the TSC page and the synthetic timers N times slower: the guest's clock stays
    /// self-consistent, it just runs N times slower than the host's, so the guest's timers
    /// fire N times less often per host second. It applies to booted kernels (Linux), not to
    /// ELF test payloads, which check timing against real time (`VmConfig::time_dilation`
    /// overrides both). Guests without Hyper-V and the kernel backend are unaffected.
    /// test-host.md measured a 2-vCPU Debian boot at ~400 s without and
    /// ~250 s with N = 10 (N = 20 gave nothing more).
    pub time_dilation: u32,
}

impl HostQuirks {
    /// The set for a `kvm_pvm` host.
    pub const PVM: HostQuirks = HostQuirks {
        no_pit: true,
        hide_cx16: true,
        emulation_assist: true,
        time_dilation: 10,
    };
    /// Nothing.
    pub const NONE: HostQuirks = HostQuirks {
        no_pit: false,
        hide_cx16: false,
        emulation_assist: false,
        time_dilation: 1,
    };

    /// Resolves `mode` against the host (`is_pvm`: /dev/kvm is served by kvm_pvm).
    pub fn resolve(mode: QuirksMode, is_pvm: bool) -> HostQuirks {
        match (mode, is_pvm) {
            (QuirksMode::On, _) | (QuirksMode::Auto, true) => HostQuirks::PVM,
            _ => HostQuirks::NONE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quirks_follow_the_host_unless_forced() {
        assert_eq!(HostQuirks::resolve(QuirksMode::Auto, true), HostQuirks::PVM);
        assert_eq!(
            HostQuirks::resolve(QuirksMode::Auto, false),
            HostQuirks::NONE
        );
        assert_eq!(HostQuirks::resolve(QuirksMode::On, false), HostQuirks::PVM);
        assert_eq!(HostQuirks::resolve(QuirksMode::Off, true), HostQuirks::NONE);
    }
}
