//! The minimal platform every hvkvm guest sees, as port-I/O devices on one [`IoBus`].
//!
//! | ports          | device                                   |
//! |----------------|------------------------------------------|
//! | 0x3f8..0x400   | COM1 16550 UART (vm-superio), IRQ 4       |
//! | 0x60, 0x64     | i8042 stub: command 0xFE on 0x64 resets   |
//! | 0x70..0x72     | CMOS RTC (host wall clock)                |
//! | 0x80           | POST/io-delay port, ignored               |
//! | 0xf4           | test-exit: `out` of byte N ends the VM, status N |
//! | 0x600..0x608   | ACPI PM1a event and control blocks (S5 = poweroff) |
//! | 0x1000         | ucall port (guest-test channel, see `vcpu::ucall`) |
//! The PIC, IOAPIC, LAPIC and (optionally) PIT are KVM's in-kernel models.

pub mod acpi_pm;
pub mod bus;
pub mod cmos;
pub mod i8042;
pub mod serial;
pub mod test_exit;

pub use bus::{IoBus, PioDevice, PioOutcome};

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Something a guest asked the platform to do to the whole VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestRequest {
    /// ACPI S5 or equivalent.
    PowerOff,
    /// i8042 reset, Hyper-V reset MSR, …
    Reset,
    /// A byte written to the test-exit port.
    TestExit(u8),
    /// The guest reported a crash and `--on-guest-crash exit` ends the VM.
    GuestCrash,
    /// The guest reported a crash and `--on-guest-crash pause` pauses every vCPU.
    Pause,
}

/// The port of the COM1 UART.
pub const COM1_PORT: u16 = 0x3f8;
/// The IRQ line of COM1.
pub const COM1_IRQ: u32 = 4;
/// The test-exit port.
pub const TEST_EXIT_PORT: u16 = 0xf4;
/// Base of the ACPI PM1a event block (4 bytes); the control block follows at +4.
pub const PM1A_EVT_PORT: u16 = 0x600;
/// The ACPI PM1a control block (2 bytes).
pub const PM1A_CNT_PORT: u16 = 0x604;
/// The ACPI SCI interrupt (FADT SCI_INT).
pub const ACPI_SCI_IRQ: u16 = 9;
/// The guest-test ucall port.
pub const UCALL_PORT: u16 = 0x1000;

/// The saved state of the platform devices (for snapshots; the i8042 and the test-exit and
/// POST ports have none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformState {
    /// COM1.
    pub serial: serial::SerialState,
    /// The CMOS RTC's index and NVRAM.
    pub cmos: cmos::CmosState,
    /// The ACPI PM1a registers.
    pub pm: acpi_pm::PmState,
}

/// Typed handles on the platform devices that have state (the I/O bus holds the same
/// devices as trait objects).
#[derive(Debug, Clone)]
pub struct Platform {
    /// COM1.
    pub serial: Arc<Mutex<serial::SerialPort>>,
    /// The CMOS RTC.
    pub cmos: Arc<Mutex<cmos::Cmos>>,
    /// ACPI PM1a.
    pub pm: Arc<Mutex<acpi_pm::AcpiPm>>,
}

impl Platform {
    /// The devices' state now (call it while the VM is paused).
    pub fn save(&self) -> PlatformState {
        fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
            m.lock().unwrap_or_else(|p| p.into_inner())
        }
        PlatformState {
            serial: lock(&self.serial).state(),
            cmos: lock(&self.cmos).state(),
            pm: lock(&self.pm).state(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    fn trigger() -> serial::IrqFdTrigger {
        serial::IrqFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn device_state_round_trips_and_bad_state_is_refused() {
        let platform = Platform {
            serial: Arc::new(Mutex::new(serial::SerialPort::new(
                trigger(),
                Box::new(std::io::sink()),
            ))),
            cmos: Arc::new(Mutex::new(cmos::Cmos::default())),
            pm: Arc::new(Mutex::new(acpi_pm::AcpiPm::default())),
        };
        // Guest writes: UART scratch and line control, a CMOS NVRAM byte, PM1a enable.
        platform.serial.lock().unwrap().write(7, &[0x5a]);
        platform.serial.lock().unwrap().write(3, &[0x03]);
        platform.cmos.lock().unwrap().write(0, &[0x40]);
        platform.cmos.lock().unwrap().write(1, &[0x99]);
        platform.pm.lock().unwrap().write(2, &[0x20, 0x01]);
        let state = platform.save();
        let json = serde_json::to_string(&state).unwrap();
        let back: PlatformState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        let mut uart =
            serial::SerialPort::from_state(&back.serial, trigger(), Box::new(std::io::sink()))
                .unwrap();
        let mut b = [0u8];
        uart.read(7, &mut b);
        assert_eq!(b, [0x5a]);
        let mut cmos = cmos::Cmos::from_state(&back.cmos).unwrap();
        let mut b = [0u8];
        cmos.read(1, &mut b);
        assert_eq!(b, [0x99], "index and NVRAM restored");
        let mut pm = acpi_pm::AcpiPm::from_state(&back.pm);
        let mut b = [0u8; 2];
        pm.read(2, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x120);
        let mut bad = back.clone();
        bad.cmos.nvram.pop();
        assert!(cmos::Cmos::from_state(&bad.cmos).is_err());
        bad.serial.in_buffer = vec![0; 4096];
        assert!(
            serial::SerialPort::from_state(&bad.serial, trigger(), Box::new(std::io::sink()))
                .is_err(),
            "an over-full FIFO is refused"
        );
    }
}
