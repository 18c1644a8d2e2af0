//! Output through the COM1 16550 UART at 0x3f8, without `core::fmt`.
//!
//! hvkvm forwards COM1 output to its stdout (or a file). Bytes are written as they are: no "\n" to
//! "\r\n" translation, so host tests can compare the output literally.

use crate::sync::SpinLock;
use crate::x86::{inb, outb};

/// COM1's base port.
pub const COM1: u16 = 0x3f8;
/// Line status register offset.
const LSR: u16 = 5;
/// LSR bit 5: transmitter holding register empty, ready for the next byte.
const LSR_THRE: u8 = 1 << 5;
/// How often to poll LSR for THRE before writing anyway. hvkvm's UART is always ready; the bound
/// only keeps a broken UART model from hanging the payload (costing a lost byte at worst).
const THRE_POLLS: u32 = 10_000;

/// A writer for a 16550 UART.
#[derive(Debug)]
pub struct Uart {
    base: u16,
}

impl Uart {
    /// The UART at COM1. Needs no initialisation: hvkvm's UART ignores baud rate and line settings.
    pub const fn com1() -> Self {
        Self { base: COM1 }
    }

    /// Writes one byte, after waiting for the transmitter to be ready.
    pub fn write_byte(&mut self, byte: u8) {
        let mut polls = 0;
        while inb(self.base + LSR) & LSR_THRE == 0 && polls < THRE_POLLS {
            polls += 1;
        }
        outb(self.base, byte);
    }

    /// Writes raw bytes.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_byte(b);
        }
    }

    /// Writes a string.
    pub fn write_str(&mut self, s: &str) {
        self.write_bytes(s.as_bytes());
    }

    /// Writes `value` in decimal.
    pub fn write_dec(&mut self, mut value: u64) {
        // u64::MAX has 20 digits. Filled from the end, like every itoa; written without indexing
        // so that no bounds-check panic path (which drags in core::fmt code) is generated.
        let mut buf = [0u8; 20];
        let mut len = 0;
        for slot in buf.iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
            len += 1;
            if value == 0 {
                break;
            }
        }
        self.write_bytes(buf.rchunks(len).next().unwrap_or(&[]));
    }

    /// Writes `value` as "0x" followed by lowercase hex digits, without leading zeros.
    pub fn write_hex(&mut self, value: u64) {
        self.write_str("0x");
        // Count significant nibbles with shifts (plain integer code; no bsr/lzcnt needed).
        let mut digits = 1;
        while digits < 16 && value >> (digits * 4) != 0 {
            digits += 1;
        }
        for i in (0..digits).rev() {
            let nibble = ((value >> (i * 4)) & 0xf) as u8;
            self.write_byte(if nibble < 10 {
                b'0' + nibble
            } else {
                b'a' + nibble - 10
            });
        }
    }
}

/// The console lock: vCPUs that print whole lines take it so that lines do not interleave.
pub static CONSOLE: SpinLock<Uart> = SpinLock::new(Uart::com1());

/// Prints `s` on COM1 under the console lock.
pub fn serial_print(s: &str) {
    CONSOLE.lock().write_str(s);
}
