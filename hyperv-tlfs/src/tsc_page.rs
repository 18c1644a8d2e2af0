//! The reference TSC page (TLFS "Partition Reference TSC Mechanism"; reference §2.2).
//!
//! Reader protocol: read `tsc_sequence`; 0 means the page is invalid (read TIME_REF_COUNT
//! instead). Otherwise read scale and offset and the TSC, re-read the sequence and retry on a
//! change. Reference time = `((tsc * tsc_scale) >> 64) + tsc_offset`, in 100 ns units.
//! Writer protocol: sequence 0, scale and offset, then a new sequence that skips 0 and
//! 0xFFFFFFFF.

use memoffset::offset_of;
use static_assertions::const_assert_eq;

/// The defined part of the page (the rest of the 4 KiB page is reserved).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ReferenceTscPage {
    /// Sequence; 0 = invalid.
    pub tsc_sequence: u32,
    /// Reserved.
    pub reserved: u32,
    /// 64.64 fixed-point scale: 100 ns units per TSC tick.
    pub tsc_scale: u64,
    /// Added after scaling.
    pub tsc_offset: i64,
}

const_assert_eq!(core::mem::size_of::<ReferenceTscPage>(), 24);
const_assert_eq!(
    offset_of!(ReferenceTscPage, tsc_sequence),
    SEQUENCE_OFFSET as usize
);
const_assert_eq!(
    offset_of!(ReferenceTscPage, tsc_scale),
    SCALE_OFFSET as usize
);
const_assert_eq!(
    offset_of!(ReferenceTscPage, tsc_offset),
    OFFSET_OFFSET as usize
);

/// Offset of `tsc_sequence`.
pub const SEQUENCE_OFFSET: u64 = 0;
/// Offset of `tsc_scale`.
pub const SCALE_OFFSET: u64 = 8;
/// Offset of `tsc_offset`.
pub const OFFSET_OFFSET: u64 = 16;
/// The sequence that marks the page invalid.
pub const SEQUENCE_INVALID: u32 = 0;

/// Reference time at `tsc` with the page's parameters.
pub const fn reference_time(tsc: u64, scale: u64, offset: i64) -> u64 {
    let scaled = ((tsc as u128 * scale as u128) >> 64) as u64;
    scaled.wrapping_add(offset as u64)
}

/// The sequence that follows `previous`, skipping 0 (invalid) and 0xFFFFFFFF (as KVM does).
pub const fn next_sequence(previous: u32) -> u32 {
    match previous.wrapping_add(1) {
        0 | u32::MAX => 1,
        s => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_and_sequence() {
        // 1 GHz TSC: 0.01 units per tick = 2^64 / 100.
        let scale = ((1u128 << 64) / 100) as u64;
        assert_eq!(reference_time(1_000_000_000, scale, 0), 9_999_999);
        assert_eq!(reference_time(0, scale, -5), u64::MAX - 4);
        assert_eq!(next_sequence(u32::MAX - 1), 1);
        assert_eq!(next_sequence(u32::MAX), 1);
        assert_eq!(next_sequence(7), 8);
    }
}
