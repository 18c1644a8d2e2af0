//! Synthetic timers (TLFS "Synthetic Timers"; reference §2.4): four per VP, each a CONFIG and
//! a COUNT MSR. COUNT is in 100 ns reference-time units: an absolute expiration time for a
//! one-shot timer, the period for a periodic one.

/// Timers per VP.
pub const TIMER_COUNT: usize = 4;

/// CONFIG bit 0: enabled.
pub const CONFIG_ENABLE: u64 = 1 << 0;
/// CONFIG bit 1: periodic.
pub const CONFIG_PERIODIC: u64 = 1 << 1;
/// CONFIG bit 2: lazy (a missed periodic expiration is not made up).
pub const CONFIG_LAZY: u64 = 1 << 2;
/// CONFIG bit 3: auto-enable (a non-zero COUNT write sets `enable`).
pub const CONFIG_AUTO_ENABLE: u64 = 1 << 3;
/// CONFIG `[11:4]`: the APIC vector of a direct-mode timer.
pub const CONFIG_APIC_VECTOR_SHIFT: u32 = 4;
/// Mask of the APIC vector field (after shifting).
pub const CONFIG_APIC_VECTOR_MASK: u64 = 0xff;
/// CONFIG bit 12: direct mode (an APIC interrupt instead of a SynIC message).
pub const CONFIG_DIRECT_MODE: u64 = 1 << 12;
/// CONFIG `[19:16]`: the SINT a message-mode timer posts to.
pub const CONFIG_SINTX_SHIFT: u32 = 16;
/// Mask of the SINT field (after shifting).
pub const CONFIG_SINTX_MASK: u64 = 0xf;
/// Every bit CONFIG defines.
pub const CONFIG_VALID: u64 = 0xf_1fff;

/// The CONFIG MSR of timer `n`.
pub const fn config_msr(n: usize) -> u32 {
    crate::msr::STIMER0_CONFIG + 2 * n as u32
}

/// The COUNT MSR of timer `n`.
pub const fn count_msr(n: usize) -> u32 {
    crate::msr::STIMER0_COUNT + 2 * n as u32
}

/// A CONFIG value's fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    /// Enabled.
    pub enable: bool,
    /// Periodic (else one-shot).
    pub periodic: bool,
    /// Lazy.
    pub lazy: bool,
    /// Auto-enable on COUNT writes.
    pub auto_enable: bool,
    /// APIC vector (direct mode).
    pub apic_vector: u8,
    /// Direct mode.
    pub direct: bool,
    /// SINT (message mode).
    pub sintx: u8,
}

impl Config {
    /// Splits a CONFIG value (bits outside [`CONFIG_VALID`] are ignored here; the caller
    /// decides whether they #GP).
    pub const fn decode(raw: u64) -> Self {
        Config {
            enable: raw & CONFIG_ENABLE != 0,
            periodic: raw & CONFIG_PERIODIC != 0,
            lazy: raw & CONFIG_LAZY != 0,
            auto_enable: raw & CONFIG_AUTO_ENABLE != 0,
            apic_vector: ((raw >> CONFIG_APIC_VECTOR_SHIFT) & CONFIG_APIC_VECTOR_MASK) as u8,
            direct: raw & CONFIG_DIRECT_MODE != 0,
            sintx: ((raw >> CONFIG_SINTX_SHIFT) & CONFIG_SINTX_MASK) as u8,
        }
    }

    /// The CONFIG value.
    pub const fn encode(&self) -> u64 {
        (self.enable as u64)
            | (self.periodic as u64) << 1
            | (self.lazy as u64) << 2
            | (self.auto_enable as u64) << 3
            | (self.apic_vector as u64) << CONFIG_APIC_VECTOR_SHIFT
            | (self.direct as u64) << 12
            | ((self.sintx as u64) & CONFIG_SINTX_MASK) << CONFIG_SINTX_SHIFT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_msrs_interleave() {
        let c = Config {
            enable: true,
            periodic: true,
            lazy: false,
            auto_enable: true,
            apic_vector: 0xec,
            direct: true,
            sintx: 0xf,
        };
        assert_eq!(Config::decode(c.encode()), c);
        assert_eq!(c.encode() & !CONFIG_VALID, 0);
        assert_eq!(config_msr(3), 0x4000_00b6);
        assert_eq!(count_msr(3), crate::msr::STIMER3_COUNT);
    }
}
