//! COM1: vm-superio's 16550 UART, with its interrupt wired to IRQ 4 through an irqfd.
//!
//! Linux's serial console in user space waits for the THR-empty interrupt, so the UART
//! must really raise IRQ 4; the irqfd makes that a single eventfd write.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::{PioDevice, PioOutcome};
use crate::ratelimit::warn_ratelimited;

/// Raises an interrupt line by writing to an eventfd registered as a KVM irqfd, and counts how
/// often it did.
#[derive(Debug)]
pub struct IrqFdTrigger {
    fd: EventFd,
    raised: Arc<AtomicU64>,
}

impl IrqFdTrigger {
    /// A trigger writing to `fd`.
    pub fn new(fd: EventFd) -> Self {
        IrqFdTrigger {
            fd,
            raised: Arc::default(),
        }
    }
}

impl Trigger for IrqFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.raised.fetch_add(1, Ordering::Relaxed);
        self.fd.write(1)
    }
}

/// What the UART did for the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SerialStats {
    /// Bytes the guest transmitted (written to the sink).
    pub tx_bytes: u64,
    /// Interrupts raised on IRQ 4 (THR empty, data received).
    pub irqs: u64,
}

/// Counts the bytes passed to the sink.
struct CountingSink {
    sink: SerialSink,
    bytes: Arc<AtomicU64>,
}

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.sink.write(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

/// Where the guest's serial output goes.
pub type SerialSink = Box<dyn Write + Send>;

/// A clonable in-memory sink, for tests and for callers that inspect the output.
#[derive(Debug, Clone, Default)]
pub struct CaptureBuffer(Arc<Mutex<Vec<u8>>>);

impl CaptureBuffer {
    /// Everything written so far, lossily decoded.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for CaptureBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes every byte to two sinks (e.g. the console and a capture buffer).
pub struct Tee(pub SerialSink, pub SerialSink);

impl std::fmt::Debug for Tee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tee")
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

/// A sink that flushes after every byte, so a guest's output is visible as it happens.
#[derive(Debug)]
pub struct Unbuffered<W: Write>(pub W);

impl<W: Write> Write for Unbuffered<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.write(buf)?;
        self.0.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The COM1 device on the I/O bus.
pub struct SerialPort(Serial<IrqFdTrigger, NoEvents, CountingSink>, Counters);

/// The counters behind [`SerialStats`].
struct Counters {
    tx_bytes: Arc<AtomicU64>,
    irqs: Arc<AtomicU64>,
}

impl Counters {
    fn wrap(irq: &IrqFdTrigger, sink: SerialSink) -> (CountingSink, Counters) {
        let tx_bytes = Arc::new(AtomicU64::new(0));
        let sink = CountingSink {
            sink,
            bytes: tx_bytes.clone(),
        };
        let irqs = irq.raised.clone();
        (sink, Counters { tx_bytes, irqs })
    }
}

impl std::fmt::Debug for SerialPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialPort")
    }
}

impl SerialPort {
    /// A UART raising `irq` and writing to `sink`.
    pub fn new(irq: IrqFdTrigger, sink: SerialSink) -> Self {
        let (sink, counters) = Counters::wrap(&irq, sink);
        SerialPort(Serial::new(irq, sink), counters)
    }

    /// Bytes sent and interrupts raised so far.
    pub fn stats(&self) -> SerialStats {
        SerialStats {
            tx_bytes: self.1.tx_bytes.load(Ordering::Relaxed),
            irqs: self.1.irqs.load(Ordering::Relaxed),
        }
    }

    /// The UART's registers and receive FIFO (snapshots).
    pub fn state(&self) -> SerialState {
        let s = self.0.state();
        SerialState {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// A UART continuing `state` (re-raising its interrupt if one was pending).
    pub fn from_state(
        state: &SerialState,
        irq: IrqFdTrigger,
        sink: SerialSink,
    ) -> Result<Self, String> {
        let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification, line_control, line_status, modem_control, modem_status, scratch] =
            state.registers;
        let s = vm_superio::serial::SerialState {
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let (sink, counters) = Counters::wrap(&irq, sink);
        Serial::from_state(&s, irq, NoEvents, sink)
            .map(|serial| SerialPort(serial, counters))
            .map_err(|e| e.to_string())
    }
}

/// The saved UART: DLL, DLH, IER, IIR, LCR, LSR, MCR, MSR, SCR, and the receive FIFO.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialState {
    /// The registers in the order above.
    pub registers: [u8; 9],
    /// Bytes received and not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

impl PioDevice for SerialPort {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = self.0.read(offset as u8);
        data.fill(0);
        data[0] = value;
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> PioOutcome {
        if let Some(&byte) = data.first() {
            if let Err(e) = self.0.write(offset as u8, byte) {
                warn_ratelimited!("serial output failed: {e}");
            }
        }
        PioOutcome::Done
    }
}
