//! Port-I/O dispatch.

use std::sync::{Arc, Mutex};

use super::GuestRequest;
use crate::ratelimit::warn_ratelimited;

/// What a device asks for after an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PioOutcome {
    /// Nothing more to do; the vCPU continues.
    Done,
    /// The guest asked for something that affects the whole VM.
    Request(GuestRequest),
}

/// A device on the port-I/O bus. `offset` is relative to the device's base port.
pub trait PioDevice: Send {
    /// `in` from the device; fill `data` (1, 2 or 4 bytes).
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// `out` to the device.
    fn write(&mut self, offset: u16, data: &[u8]) -> PioOutcome;
}

/// A shared, lockable device.
pub type SharedPioDevice = Arc<Mutex<dyn PioDevice>>;

#[derive(Clone)]
struct Mapping {
    base: u16,
    len: u16,
    device: SharedPioDevice,
}

/// The port-I/O bus of one VM, shared by all vCPUs.
#[derive(Clone, Default)]
pub struct IoBus {
    mappings: Vec<Mapping>,
}

impl std::fmt::Debug for IoBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self
            .mappings
            .iter()
            .map(|m| format!("{:#x}+{}", m.base, m.len))
            .collect();
        f.debug_struct("IoBus").field("ranges", &ranges).finish()
    }
}

/// A port range that overlaps one already on the bus.
#[derive(Debug, thiserror::Error)]
#[error("port range {base:#x}+{len} overlaps a device already on the I/O bus")]
pub struct OverlapError {
    /// First port of the rejected range.
    pub base: u16,
    /// Length of the rejected range.
    pub len: u16,
}

impl IoBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at ports `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        device: SharedPioDevice,
    ) -> Result<(), OverlapError> {
        let end = u32::from(base) + u32::from(len);
        let overlaps = self.mappings.iter().any(|m| {
            let m_end = u32::from(m.base) + u32::from(m.len);
            u32::from(base) < m_end && u32::from(m.base) < end
        });
        if len == 0 || overlaps || end > 0x1_0000 {
            return Err(OverlapError { base, len });
        }
        self.mappings.push(Mapping { base, len, device });
        Ok(())
    }

    fn find(&self, port: u16) -> Option<&Mapping> {
        self.mappings
            .iter()
            .find(|m| port >= m.base && u32::from(port) < u32::from(m.base) + u32::from(m.len))
    }

    /// Dispatches an `in`. Unclaimed ports read as all ones, as on real hardware.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some(m) => lock(&m.device).read(port - m.base, data),
            None => {
                data.fill(0xff);
                log::trace!("in from unclaimed port {port:#x}");
            }
        }
    }

    /// Dispatches an `out`. Writes to unclaimed ports are dropped.
    pub fn write(&self, port: u16, data: &[u8]) -> PioOutcome {
        match self.find(port) {
            Some(m) => lock(&m.device).write(port - m.base, data),
            None => {
                log::trace!("out to unclaimed port {port:#x}");
                PioOutcome::Done
            }
        }
    }
}

/// Locks a device; a device whose lock was poisoned by a panicking vCPU thread is still used,
/// because its state is plain data that stays consistent between accesses.
fn lock(device: &SharedPioDevice) -> std::sync::MutexGuard<'_, dyn PioDevice + 'static> {
    device.lock().unwrap_or_else(|poisoned| {
        warn_ratelimited!("a device lock was poisoned by a panicked vCPU thread");
        poisoned.into_inner()
    })
}

/// A device that ignores writes and reads as zero (POST port 0x80, …).
#[derive(Debug, Default)]
pub struct Sink;

impl PioDevice for Sink {
    fn read(&mut self, _: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u16, _: &[u8]) -> PioOutcome {
        PioOutcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<(u16, u8)>);
    impl PioDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) -> PioOutcome {
            self.0.push((offset, data[0]));
            PioOutcome::Done
        }
    }

    #[test]
    fn dispatches_by_port_with_relative_offsets() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = IoBus::new();
        bus.insert(0x100, 8, dev.clone()).unwrap();
        let mut data = [0u8; 1];
        bus.read(0x103, &mut data);
        assert_eq!(data, [3]);
        bus.write(0x107, &[9]);
        assert_eq!(dev.lock().unwrap().0, vec![(7, 9)]);
        bus.read(0x108, &mut data);
        assert_eq!(data, [0xff], "unclaimed port reads as all ones");
    }

    #[test]
    fn rejects_overlaps_and_wraparound() {
        let mut bus = IoBus::new();
        bus.insert(0x100, 8, Arc::new(Mutex::new(Sink))).unwrap();
        assert!(bus.insert(0x107, 2, Arc::new(Mutex::new(Sink))).is_err());
        assert!(bus
            .insert(0xfff0, 0x20, Arc::new(Mutex::new(Sink)))
            .is_err());
        assert!(bus.insert(0x200, 0, Arc::new(Mutex::new(Sink))).is_err());
        assert!(bus.insert(0x108, 1, Arc::new(Mutex::new(Sink))).is_ok());
    }
}
