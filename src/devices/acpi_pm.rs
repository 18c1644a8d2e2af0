//! ACPI PM1a event and control blocks: the path Linux uses to power off (`SLP_TYP = S5`,
//! `SLP_EN`). The FADT points at these ports; the DSDT's `_S5` package names the type value.

use super::{GuestRequest, PioDevice, PioOutcome};

/// The SLP_TYP value hvkvm's DSDT declares for S5.
pub const S5_SLP_TYP: u16 = 5;
const SLP_EN: u16 = 1 << 13;
const SCI_EN: u16 = 1 << 0;
/// Offset of PM1a_CNT within the 8-port block.
const CNT_OFFSET: u16 = 4;

/// PM1a_EVT (status, enable) at offset 0..4 and PM1a_CNT at offset 4..6.
#[derive(Debug)]
pub struct AcpiPm {
    status: u16,
    enable: u16,
    control: u16,
}

impl Default for AcpiPm {
    fn default() -> Self {
        // SCI_EN set: hvkvm has no SMI_CMD port, so the platform is always in ACPI mode.
        AcpiPm {
            status: 0,
            enable: 0,
            control: SCI_EN,
        }
    }
}

/// The saved PM1a registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmState {
    /// PM1a_STS.
    pub status: u16,
    /// PM1a_EN.
    pub enable: u16,
    /// PM1a_CNT.
    pub control: u16,
}

impl AcpiPm {
    /// The registers (snapshots).
    pub fn state(&self) -> PmState {
        PmState {
            status: self.status,
            enable: self.enable,
            control: self.control,
        }
    }

    /// PM1a continuing `state` (SCI_EN stays set: hvkvm is always in ACPI mode).
    pub fn from_state(state: &PmState) -> Self {
        AcpiPm {
            status: state.status,
            enable: state.enable,
            control: state.control | SCI_EN,
        }
    }

    fn register(&mut self, offset: u16) -> Option<&mut u16> {
        match offset & !1 {
            0 => Some(&mut self.status),
            2 => Some(&mut self.enable),
            CNT_OFFSET => Some(&mut self.control),
            _ => None,
        }
    }
}

impl PioDevice for AcpiPm {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = self.register(offset).map_or(0, |r| *r);
        let bytes = if offset & 1 == 1 {
            [(value >> 8) as u8, 0]
        } else {
            value.to_le_bytes()
        };
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> PioOutcome {
        let value = match data {
            [lo] if offset & 1 == 1 => u16::from(*lo) << 8,
            [lo] => u16::from(*lo),
            [lo, hi, ..] => u16::from_le_bytes([*lo, *hi]),
            [] => return PioOutcome::Done,
        };
        match offset & !1 {
            // Status bits are write-one-to-clear.
            0 => self.status &= !value,
            2 => self.enable = value,
            CNT_OFFSET => {
                if value & SLP_EN != 0 && (value >> 10) & 7 == S5_SLP_TYP {
                    return PioOutcome::Request(GuestRequest::PowerOff);
                }
                self.control = (value & !SLP_EN) | SCI_EN;
            }
            _ => {}
        }
        PioOutcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let mut pm = AcpiPm::default();
        let v = (S5_SLP_TYP << 10) | SLP_EN;
        assert_eq!(
            pm.write(4, &v.to_le_bytes()),
            PioOutcome::Request(GuestRequest::PowerOff)
        );
        // The high byte alone (how some code writes it) works too.
        assert_eq!(
            pm.write(5, &[(v >> 8) as u8]),
            PioOutcome::Request(GuestRequest::PowerOff)
        );
    }

    #[test]
    fn other_sleep_types_and_plain_writes_do_not() {
        let mut pm = AcpiPm::default();
        assert_eq!(
            pm.write(4, &((1 << 10) | SLP_EN).to_le_bytes()),
            PioOutcome::Done
        );
        assert_eq!(
            pm.write(4, &(S5_SLP_TYP << 10).to_le_bytes()),
            PioOutcome::Done
        );
        let mut data = [0u8; 2];
        pm.read(4, &mut data);
        assert_eq!(
            u16::from_le_bytes(data) & SCI_EN,
            SCI_EN,
            "always in ACPI mode"
        );
    }
}
