//! Hyper-V reference time: a partition-wide 100 ns counter derived from the guest TSC, read
//! through TIME_REF_COUNT or the reference TSC page.
//!
//! Both paths use the same formula, the one the TLFS gives guests for the page:
//! `time = ((tsc * scale) >> 64) + offset`, so the MSR and the page always agree exactly.

use hyperv_tlfs::tsc_page::{next_sequence, OFFSET_OFFSET, SCALE_OFFSET, SEQUENCE_OFFSET};

use crate::memory::{Bytes, GuestAddress, GuestMemory};

/// 100 ns units per second.
const UNITS_PER_SECOND: u128 = 10_000_000;

/// The reference clock of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferenceClock {
    /// Guest TSC frequency in Hz.
    pub tsc_hz: u64,
    /// 64.64 fixed-point 100 ns units per TSC tick.
    pub scale: u64,
    /// Added after scaling, so that reference time 0 is when the partition started.
    pub offset: i64,
}

impl ReferenceClock {
    /// A clock that reads 0 at guest TSC `tsc_at_start`. `None` when the TSC is too slow for
    /// a 64.64 scale (≤ 10 MHz), in which case the TSC page stays invalid (sequence 0).
    pub fn new(tsc_hz: u64, tsc_at_start: u64) -> Option<Self> {
        if u128::from(tsc_hz) <= UNITS_PER_SECOND {
            return None;
        }
        let scale = ((UNITS_PER_SECOND << 64) / u128::from(tsc_hz)) as u64;
        let start = (u128::from(tsc_at_start) * u128::from(scale)) >> 64;
        Some(ReferenceClock {
            tsc_hz,
            scale,
            offset: (start as i64).wrapping_neg(),
        })
    }

    /// Reference time at guest TSC `tsc`.
    pub fn time_at(&self, tsc: u64) -> u64 {
        hyperv_tlfs::tsc_page::reference_time(tsc, self.scale, self.offset)
    }
}

/// Publishes `clock` in the TSC page at `gpa` following the writer protocol: invalidate
/// (sequence 0), write scale and offset, then a new sequence that skips 0 and 0xFFFFFFFF.
/// With `clock` None the page is left invalid. Returns the sequence written.
pub fn write_tsc_page(
    mem: &GuestMemory,
    gpa: u64,
    clock: Option<&ReferenceClock>,
    previous_sequence: u32,
) -> Result<u32, vm_memory::GuestMemoryError> {
    mem.write_obj(0u32, GuestAddress(gpa + SEQUENCE_OFFSET))?;
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    let Some(clock) = clock else { return Ok(0) };
    mem.write_obj(clock.scale, GuestAddress(gpa + SCALE_OFFSET))?;
    mem.write_obj(clock.offset, GuestAddress(gpa + OFFSET_OFFSET))?;
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    let sequence = next_sequence(previous_sequence);
    mem.write_obj(sequence, GuestAddress(gpa + SEQUENCE_OFFSET))?;
    Ok(sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_at_ten_million_units_per_second() {
        let hz = 2_445_434_000u64;
        let clock = ReferenceClock::new(hz, 5_000_000).unwrap();
        assert!(clock.time_at(5_000_000) <= 1, "starts at 0");
        let one_second = clock.time_at(5_000_000 + hz) - clock.time_at(5_000_000);
        assert!(
            (9_999_998..=10_000_001).contains(&one_second),
            "{one_second}"
        );
        let hour = clock.time_at(5_000_000 + 3600 * hz);
        assert!((hour as i64 - 36_000_000_000).abs() < 4, "{hour}");
    }

    #[test]
    fn slow_tsc_cannot_be_published() {
        assert!(ReferenceClock::new(10_000_000, 0).is_none());
        assert!(ReferenceClock::new(0, 0).is_none());
    }

    #[test]
    fn page_protocol_and_sequence_skip() {
        let mem = crate::memory::allocate(16).unwrap();
        let clock = ReferenceClock::new(1_000_000_000, 0).unwrap();
        let seq = write_tsc_page(&mem, 0x3000, Some(&clock), u32::MAX - 1).unwrap();
        assert_eq!(seq, 1, "skips 0xFFFFFFFF and 0");
        let read_seq: u32 = mem.read_obj(GuestAddress(0x3000)).unwrap();
        let scale: u64 = mem.read_obj(GuestAddress(0x3008)).unwrap();
        assert_eq!((read_seq, scale), (1, clock.scale));
        assert_eq!(write_tsc_page(&mem, 0x3000, None, 1).unwrap(), 0);
        let read_seq: u32 = mem.read_obj(GuestAddress(0x3000)).unwrap();
        assert_eq!(read_seq, 0, "invalid page tells the guest to use the MSR");
        assert!(write_tsc_page(&mem, 16 << 20, Some(&clock), 0).is_err());
    }
}
