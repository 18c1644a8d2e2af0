//! A CMOS real-time clock at ports 0x70/0x71 reporting the host's UTC wall clock.
//!
//! Without it Linux spins on thousands of port reads waiting for an update cycle; it reads
//! the time once at boot and otherwise never touches it.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{PioDevice, PioOutcome};

const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// Status B: 24-hour mode, BCD encoding (DM bit clear).
const STATUS_B_24H: u8 = 1 << 1;
/// Status D: valid RAM and time.
const STATUS_D_VRT: u8 = 1 << 7;

/// The CMOS index/data pair.
#[derive(Debug)]
pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    now: fn() -> u64,
}

impl Default for Cmos {
    fn default() -> Self {
        Cmos::with_clock(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
    }
}

impl Cmos {
    /// A CMOS whose clock is `now()` seconds since the Unix epoch.
    pub fn with_clock(now: fn() -> u64) -> Self {
        Cmos {
            index: 0,
            nvram: [0; 128],
            now,
        }
    }

    /// The index and NVRAM (snapshots; the clock registers follow the host clock).
    pub fn state(&self) -> CmosState {
        CmosState {
            index: self.index,
            nvram: self.nvram.to_vec(),
        }
    }

    /// A CMOS continuing `state`.
    pub fn from_state(state: &CmosState) -> Result<Self, String> {
        let nvram: [u8; 128] = state
            .nvram
            .as_slice()
            .try_into()
            .map_err(|_| format!("the CMOS NVRAM has {} bytes, not 128", state.nvram.len()))?;
        Ok(Cmos {
            index: state.index & 0x7f,
            nvram,
            ..Cmos::default()
        })
    }

    fn register(&self, index: u8) -> u8 {
        let t = civil_time((self.now)());
        let bcd = |v: u32| (((v / 10) << 4) | (v % 10)) as u8;
        match index {
            0x00 => bcd(t.second),
            0x02 => bcd(t.minute),
            0x04 => bcd(t.hour),
            0x06 => bcd(t.weekday),
            0x07 => bcd(t.day),
            0x08 => bcd(t.month),
            0x09 => bcd(t.year % 100),
            REG_CENTURY => bcd(t.year / 100),
            // Update-in-progress clear, 32.768 kHz divider.
            REG_STATUS_A => 0x26,
            REG_STATUS_B => STATUS_B_24H,
            REG_STATUS_C => 0,
            REG_STATUS_D => STATUS_D_VRT,
            i => self.nvram[usize::from(i & 0x7f)],
        }
    }
}

impl PioDevice for Cmos {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = if offset == 1 {
            self.register(self.index)
        } else {
            self.index
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> PioOutcome {
        let Some(&value) = data.first() else {
            return PioOutcome::Done;
        };
        if offset == 0 {
            // Bit 7 is the NMI mask, not part of the index.
            self.index = value & 0x7f;
        } else if offset == 1 && self.index > REG_STATUS_D {
            self.nvram[usize::from(self.index)] = value;
        }
        PioOutcome::Done
    }
}

/// The saved CMOS.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CmosState {
    /// The selected register.
    pub index: u8,
    /// The 128 bytes of NVRAM.
    pub nvram: Vec<u8>,
}

struct CivilTime {
    year: u32,
    month: u32,
    day: u32,
    weekday: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

/// Converts Unix seconds to a UTC calendar date (proleptic Gregorian, days-from-civil inverse).
fn civil_time(unix: u64) -> CivilTime {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Shift the epoch to 0000-03-01 so leap days fall at the end of each 400-year era.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
    CivilTime {
        year,
        month,
        day,
        // 1970-01-01 was a Thursday; CMOS counts Sunday as 1.
        weekday: ((days + 4) % 7) as u32 + 1,
        hour: (secs / 3600) as u32,
        minute: (secs / 60 % 60) as u32,
        second: (secs % 60) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(cmos: &mut Cmos, index: u8) -> u8 {
        cmos.write(0, &[index]);
        let mut data = [0];
        cmos.read(1, &mut data);
        data[0]
    }

    #[test]
    fn reports_a_known_date_in_bcd() {
        // 2026-11-21 14:12:21 UTC, a Saturday.
        let mut cmos = Cmos::with_clock(|| 1_795_270_341);
        assert_eq!(read(&mut cmos, 0x09), 0x26);
        assert_eq!(read(&mut cmos, REG_CENTURY), 0x20);
        assert_eq!(read(&mut cmos, 0x08), 0x11);
        assert_eq!(read(&mut cmos, 0x07), 0x21);
        assert_eq!(read(&mut cmos, 0x04), 0x14);
        assert_eq!(read(&mut cmos, 0x02), 0x12);
        assert_eq!(read(&mut cmos, 0x00), 0x21);
        assert_eq!(read(&mut cmos, 0x06), 0x07);
        assert_eq!(
            read(&mut cmos, REG_STATUS_A) & 0x80,
            0,
            "never update-in-progress"
        );
    }

    #[test]
    fn leap_day_and_nmi_bit() {
        // 2024-02-29 00:00:00 UTC.
        let mut cmos = Cmos::with_clock(|| 1_709_164_800);
        assert_eq!(
            read(&mut cmos, 0x80 | 0x08),
            0x02,
            "NMI-mask bit is not part of the index"
        );
        assert_eq!(read(&mut cmos, 0x07), 0x29);
    }
}
