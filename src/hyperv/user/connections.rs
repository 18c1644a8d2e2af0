//! Connections: what HvPostMessage and HvSignalEvent reach. The TLFS connects a guest's
//! connection ID to a port of another partition (the root's VMBus, say); in hvkvm, code that
//! wants to talk to the guest registers an [`HvConnection`] for an ID before the VM starts.
//! A call for an unregistered ID gets `HV_STATUS_INVALID_CONNECTION_ID`.
//!
//! A handler answers from the calling VP's thread and may talk back to any VP through the
//! [`GuestSynic`] it is given: queue a message into a SINT's slot, or set an event flag.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyperv_tlfs::hypercall::{status, SIGNAL_EVENT_CONNECTION_MASK};

/// Largest connection ID (24 bits).
pub const MAX_CONNECTION_ID: u32 = SIGNAL_EVENT_CONNECTION_MASK as u32;

/// Why hvkvm code could not reach a guest SINT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SynicError {
    /// No such VP.
    #[error("VP {0} does not exist")]
    NoVp(u32),
    /// SINT number 16 or more.
    #[error("SINT {0} does not exist")]
    NoSint(u8),
    /// The message type is 0 (the free-slot marker) or the payload exceeds 240 bytes.
    #[error("invalid message: type {message_type:#x}, {size} payload bytes")]
    BadMessage {
        /// The type.
        message_type: u32,
        /// The payload size.
        size: usize,
    },
    /// The VP's SynIC, or the page it needs, is not enabled (or not in RAM).
    #[error("the SynIC page of VP {0} is not enabled")]
    NotEnabled(u32),
    /// Too many messages wait for that SINT's slot already.
    #[error("{0} messages already wait for this SINT")]
    QueueFull(usize),
    /// The event flag number is 2048 or more.
    #[error("event flag {0} is out of range")]
    BadFlag(u32),
}

/// How hvkvm code talks to a guest's SynIC.
pub trait GuestSynic {
    /// Delivers a message of `message_type` with `payload` into SINT `sint` of VP `vp`, now
    /// if its slot is free, else when the guest frees it (EOM); raises the SINT's interrupt
    /// when it lands.
    fn post_message(
        &self,
        vp: u32,
        sint: u8,
        message_type: u32,
        payload: &[u8],
    ) -> Result<(), SynicError>;

    /// Sets event flag `flag` of SINT `sint` of VP `vp`, raising the SINT's interrupt if the
    /// flag was clear.
    fn signal_event(&self, vp: u32, sint: u8, flag: u32) -> Result<(), SynicError>;
}

/// A connection's handler. Both methods return an `HV_STATUS` for the guest's hypercall.
pub trait HvConnection: Send + Sync + std::fmt::Debug {
    /// HvPostMessage from VP `vp`: a message of `message_type` (non-zero, bit 31 clear) with
    /// `payload` (at most 240 bytes). Default: `INVALID_CONNECTION_ID` (not a message port).
    fn post_message(
        &self,
        synic: &dyn GuestSynic,
        vp: u32,
        message_type: u32,
        payload: &[u8],
    ) -> u16 {
        let _ = (synic, vp, message_type, payload);
        status::INVALID_CONNECTION_ID
    }

    /// HvSignalEvent from VP `vp` with flag number `flag`. Default: `INVALID_CONNECTION_ID`
    /// (not an event port).
    fn signal_event(&self, synic: &dyn GuestSynic, vp: u32, flag: u16) -> u16 {
        let _ = (synic, vp, flag);
        status::INVALID_CONNECTION_ID
    }
}

/// Errors registering a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The ID does not fit in 24 bits.
    #[error("connection ID {0:#x} does not fit in 24 bits")]
    TooLarge(u32),
    /// The ID is taken.
    #[error("connection ID {0:#x} is already registered")]
    Taken(u32),
}

/// The connections of one VM, fixed before it starts.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    map: BTreeMap<u32, Arc<dyn HvConnection>>,
}

impl Connections {
    /// Registers `handler` for connection `id`.
    pub fn register(
        &mut self,
        id: u32,
        handler: Arc<dyn HvConnection>,
    ) -> Result<(), RegisterError> {
        if id > MAX_CONNECTION_ID {
            return Err(RegisterError::TooLarge(id));
        }
        if self.map.contains_key(&id) {
            return Err(RegisterError::Taken(id));
        }
        self.map.insert(id, handler);
        Ok(())
    }

    /// The handler of `id`.
    pub fn get(&self, id: u32) -> Option<&Arc<dyn HvConnection>> {
        self.map.get(&id)
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Nothing;
    impl HvConnection for Nothing {}

    #[test]
    fn ids_are_24_bit_and_unique() {
        let mut c = Connections::default();
        assert!(c.is_empty());
        c.register(1, Arc::new(Nothing)).unwrap();
        assert_eq!(
            c.register(1, Arc::new(Nothing)),
            Err(RegisterError::Taken(1))
        );
        assert_eq!(
            c.register(1 << 24, Arc::new(Nothing)),
            Err(RegisterError::TooLarge(1 << 24))
        );
        assert!(c.get(1).is_some() && c.get(2).is_none());
    }
}
