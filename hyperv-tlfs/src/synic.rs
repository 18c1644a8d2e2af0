//! The synthetic interrupt controller (TLFS "Synthetic Interrupt Controller"; reference §2.4):
//! SINT and SCONTROL bits, the message page of 16 `HV_MESSAGE` slots, and the event-flags page
//! of 16 × 2048 flags.

use memoffset::offset_of;
use static_assertions::const_assert_eq;

use crate::le::{put, u32_at, u64_at};

/// Number of synthetic interrupt sources per VP.
pub const SINT_COUNT: usize = 16;
/// SCONTROL bit 0: the SynIC is enabled.
pub const SCONTROL_ENABLE: u64 = 1;
/// SVERSION reads this.
pub const SVERSION: u64 = 1;

/// SINTn: vector `[7:0]`.
pub const SINT_VECTOR_MASK: u64 = 0xff;
/// SINTn bit 16: masked.
pub const SINT_MASKED: u64 = 1 << 16;
/// SINTn bit 17: auto-EOI.
pub const SINT_AUTO_EOI: u64 = 1 << 17;
/// SINTn bit 18: polling (no interrupt; the guest polls the slot).
pub const SINT_POLLING: u64 = 1 << 18;
/// SINTn bit 19: as-intercept (root partition only).
pub const SINT_AS_INTERCEPT: u64 = 1 << 19;
/// SINTn bit 20: proxy (root partition only).
pub const SINT_PROXY: u64 = 1 << 20;
/// The value a SINT has after reset: masked, vector 0.
pub const SINT_RESET_VALUE: u64 = SINT_MASKED;
/// Lowest vector a SINT may use unmasked (0..15 are reserved by the architecture).
pub const SINT_VECTOR_MIN: u64 = 16;

/// `HV_MESSAGE_TYPE` values.
pub mod message_type {
    /// The slot is free.
    pub const NONE: u32 = 0x0000_0000;
    /// A synthetic timer expired (payload: [`super::TimerMessagePayload`]).
    pub const TIMER_EXPIRED: u32 = 0x8000_0010;
    /// Hypervisor message types have bit 31 set; guests may post only types without it.
    pub const HYPERVISOR_BIT: u32 = 0x8000_0000;
}

/// `HV_MESSAGE_FLAGS` bit 0: another message is waiting for this slot (write EOM when done).
pub const MESSAGE_FLAG_PENDING: u8 = 1;
/// Largest payload of one message.
pub const MESSAGE_PAYLOAD_BYTES: usize = 240;

/// `HV_MESSAGE_HEADER` (16 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct MessageHeader {
    /// `HV_MESSAGE_TYPE`.
    pub message_type: u32,
    /// Payload bytes used.
    pub payload_size: u8,
    /// [`MESSAGE_FLAG_PENDING`].
    pub message_flags: u8,
    /// Reserved, zero.
    pub reserved: u16,
    /// Sender: partition id or port id (0 for hypervisor messages).
    pub sender: u64,
}

const_assert_eq!(core::mem::size_of::<MessageHeader>(), 16);
const_assert_eq!(offset_of!(MessageHeader, message_type), 0);
const_assert_eq!(offset_of!(MessageHeader, payload_size), 4);
const_assert_eq!(offset_of!(MessageHeader, message_flags), 5);
const_assert_eq!(offset_of!(MessageHeader, reserved), 6);
const_assert_eq!(offset_of!(MessageHeader, sender), 8);

/// `HV_MESSAGE` (256 bytes): one slot of the message page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Message {
    /// The header.
    pub header: MessageHeader,
    /// The payload.
    pub payload: [u8; MESSAGE_PAYLOAD_BYTES],
}

const_assert_eq!(core::mem::size_of::<Message>(), MESSAGE_SIZE);
const_assert_eq!(offset_of!(Message, header), 0);
const_assert_eq!(offset_of!(Message, payload), 16);

/// Size of one message slot.
pub const MESSAGE_SIZE: usize = 256;
/// Offset of `message_type` in a slot: the guest frees a slot by writing 0 here.
pub const MESSAGE_TYPE_OFFSET: u64 = 0;
/// Offset of `message_flags` in a slot.
pub const MESSAGE_FLAGS_OFFSET: u64 = 5;

impl Message {
    /// A message of `message_type` with `payload` (truncated to 240 bytes).
    pub fn new(message_type: u32, payload: &[u8]) -> Self {
        let len = payload.len().min(MESSAGE_PAYLOAD_BYTES);
        let mut bytes = [0u8; MESSAGE_PAYLOAD_BYTES];
        bytes[..len].copy_from_slice(&payload[..len]);
        Message {
            header: MessageHeader {
                message_type,
                payload_size: len as u8,
                ..MessageHeader::default()
            },
            payload: bytes,
        }
    }

    /// Little-endian bytes, as the slot holds them.
    pub fn to_bytes(&self) -> [u8; MESSAGE_SIZE] {
        let mut b = [0u8; MESSAGE_SIZE];
        put(&mut b, 0, &self.header.message_type.to_le_bytes());
        b[4] = self.header.payload_size;
        b[5] = self.header.message_flags;
        put(&mut b, 6, &self.header.reserved.to_le_bytes());
        put(&mut b, 8, &self.header.sender.to_le_bytes());
        b[16..].copy_from_slice(&self.payload);
        b
    }

    /// Decodes a slot.
    pub fn from_bytes(b: &[u8; MESSAGE_SIZE]) -> Self {
        let mut payload = [0u8; MESSAGE_PAYLOAD_BYTES];
        payload.copy_from_slice(&b[16..]);
        Message {
            header: MessageHeader {
                message_type: u32_at(b, 0),
                payload_size: b[4],
                message_flags: b[5],
                reserved: crate::le::u16_at(b, 6),
                sender: u64_at(b, 8),
            },
            payload,
        }
    }
}

/// Offset of SINT `sint`'s slot in the message page.
pub const fn message_slot_offset(sint: usize) -> u64 {
    (sint * MESSAGE_SIZE) as u64
}

/// Event flags per SINT (2048 bits = 256 bytes); the page holds one block per SINT.
pub const EVENT_FLAGS_PER_SINT: u32 = 2048;
/// Bytes of one SINT's event flags.
pub const EVENT_FLAGS_BYTES: usize = 256;

/// Byte offset in the event-flags page and bit within that byte of flag `flag` of SINT `sint`.
pub const fn event_flag_position(sint: usize, flag: u32) -> (u64, u8) {
    let bit = sint as u64 * EVENT_FLAGS_BYTES as u64 * 8 + flag as u64;
    (bit / 8, 1 << (bit % 8))
}

/// Payload of [`message_type::TIMER_EXPIRED`] (`HV_TIMER_MESSAGE_PAYLOAD`, 24 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TimerMessagePayload {
    /// Which timer (0..3).
    pub timer_index: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// When the timer was due (reference time, 100 ns).
    pub expiration_time: u64,
    /// When the message was delivered (reference time, 100 ns).
    pub delivery_time: u64,
}

const_assert_eq!(core::mem::size_of::<TimerMessagePayload>(), 24);
const_assert_eq!(offset_of!(TimerMessagePayload, timer_index), 0);
const_assert_eq!(offset_of!(TimerMessagePayload, expiration_time), 8);
const_assert_eq!(offset_of!(TimerMessagePayload, delivery_time), 16);

impl TimerMessagePayload {
    /// Little-endian bytes.
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        put(&mut b, 0, &self.timer_index.to_le_bytes());
        put(&mut b, 4, &self.reserved.to_le_bytes());
        put(&mut b, 8, &self.expiration_time.to_le_bytes());
        put(&mut b, 16, &self.delivery_time.to_le_bytes());
        b
    }

    /// Decodes the first 24 bytes of a message payload.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        (b.len() >= 24).then(|| TimerMessagePayload {
            timer_index: u32_at(b, 0),
            reserved: u32_at(b, 4),
            expiration_time: u64_at(b, 8),
            delivery_time: u64_at(b, 16),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_bytes_round_trip() {
        let payload = TimerMessagePayload {
            timer_index: 2,
            reserved: 0,
            expiration_time: 0x1122_3344_5566,
            delivery_time: 0x7788_99aa,
        };
        let mut m = Message::new(message_type::TIMER_EXPIRED, &payload.to_bytes());
        m.header.message_flags = MESSAGE_FLAG_PENDING;
        let bytes = m.to_bytes();
        assert_eq!(&bytes[..4], &0x8000_0010u32.to_le_bytes());
        assert_eq!(bytes[4], 24);
        assert_eq!(bytes[MESSAGE_FLAGS_OFFSET as usize], 1);
        assert_eq!(Message::from_bytes(&bytes), m);
        assert_eq!(TimerMessagePayload::from_bytes(&m.payload), Some(payload));
    }

    #[test]
    fn slots_and_event_flags_tile_one_page() {
        assert_eq!(message_slot_offset(SINT_COUNT), crate::PAGE_SIZE);
        assert_eq!(event_flag_position(0, 0), (0, 1));
        assert_eq!(event_flag_position(1, 9), (257, 2));
        let (last, _) = event_flag_position(SINT_COUNT - 1, EVENT_FLAGS_PER_SINT - 1);
        assert_eq!(last, crate::PAGE_SIZE - 1);
    }
}
