//! Just enough of the i8042 keyboard controller for the reset Linux and firmware use.

use super::{GuestRequest, PioDevice, PioOutcome};

/// Offset of the command/status port (0x64) from the data port (0x60).
const COMMAND_OFFSET: u16 = 4;
/// "Pulse output line 0": resets the CPU.
const CMD_RESET_CPU: u8 = 0xfe;

/// The device at ports 0x60..=0x64 (0x61..0x63 are not decoded: the PC speaker/NMI port 0x61
/// reads as zero, which Linux accepts).
#[derive(Debug, Default)]
pub struct I8042;

impl PioDevice for I8042 {
    fn read(&mut self, _: u16, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, so callers never wait.
        data.fill(0);
    }
    fn write(&mut self, offset: u16, data: &[u8]) -> PioOutcome {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            return PioOutcome::Request(GuestRequest::Reset);
        }
        PioOutcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_command_fe_on_port_64_resets() {
        let mut dev = I8042;
        assert_eq!(
            dev.write(4, &[0xfe]),
            PioOutcome::Request(GuestRequest::Reset)
        );
        assert_eq!(dev.write(0, &[0xfe]), PioOutcome::Done);
        assert_eq!(dev.write(4, &[0xd1]), PioOutcome::Done);
    }
}
