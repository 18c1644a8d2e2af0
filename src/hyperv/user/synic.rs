//! One VP's synthetic interrupt controller (TLFS "Synthetic Interrupt Controller"; reference
//! §2.1, §2.4): the SCONTROL, SVERSION, SIEFP, SIMP, EOM and SINT0–15 MSRs, and the two pages
//! the guest names with them: the message page (16 slots of one `HV_MESSAGE`) and the
//! event-flags page (16 × 2048 flags).
//!
//! Semantics follow KVM's `KVM_CAP_HYPERV_SYNIC2` (the TLFS where KVM is silent):
//! - SINTn: a vector below 16 is refused (#GP) unless the SINT is masked; nested Hyper-V
//!   writes 0x10000 (masked, vector 0) at boot, which must succeed. Other bits are stored.
//! - SIMP/SIEFP: stored as written; enabling does **not** zero the page (SYNIC2). A page
//!   outside RAM is accepted, as KVM does, and noted as a refusal; nothing is delivered to it.
//! - SVERSION reads 1 and #GPs on writes; EOM reads 0, and a write makes hvkvm retry every
//!   message waiting for a slot.
//!
//! The pages are guest memory, reached only through vm-memory: slot contents are copied, and
//! the two words the guest updates concurrently (a slot's header, an event-flags word) are
//! changed with atomic operations on guest memory, so that neither side loses an update:
//! - delivery: read the slot's header; if the slot is free, write the body, then publish the
//!   header with a compare-exchange (the guest owns the slot again only after it cleared the
//!   type); if it is busy, set `message_pending` with a compare-exchange, so that a guest that
//!   frees the slot concurrently either sees the flag (and writes EOM) or makes the exchange
//!   fail, after which hvkvm sees the free slot and delivers;
//! - events: one atomic OR per flag; the SINT is raised only when the flag was clear.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use hyperv_tlfs::msr::{EOM, SCONTROL, SIEFP, SIMP, SINT0, SINT15, SVERSION};
use hyperv_tlfs::synic::{
    event_flag_position, message_slot_offset, message_type, Message, EVENT_FLAGS_PER_SINT,
    MESSAGE_FLAG_PENDING, SCONTROL_ENABLE, SINT_AUTO_EOI, SINT_COUNT, SINT_MASKED,
    SINT_RESET_VALUE, SINT_VECTOR_MASK, SINT_VECTOR_MIN,
};
use hyperv_tlfs::PAGE_SIZE;

use super::usage::{Refusal, Refusals};
use crate::memory::{self, Bytes, GuestAddress, GuestMemory};
use crate::vcpu::msr::MsrFault;

/// Messages hvkvm code may queue per SINT while its slot is busy; more are refused.
pub const QUEUE_LIMIT: usize = 16;

/// Attempts at publishing one message while a hostile guest keeps changing the slot header.
const PUBLISH_ATTEMPTS: usize = 8;

/// Bit position of `message_flags` in the slot's first u64 (type u32, size u8, flags u8).
const FLAGS_SHIFT: u32 = 40;

/// What a SynIC MSR write asks of the VP beyond storing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynicWrite {
    /// Nothing more.
    Stored,
    /// EOM: retry every waiting message.
    EndOfMessage,
}

/// The result of putting a message into a SINT's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The message is in the slot; the SINT's interrupt is due.
    Written,
    /// The slot holds an unprocessed message (its `message_pending` flag is set when the
    /// caller will retry).
    Busy,
    /// No message page: the SynIC or SIMP is disabled, or the page is not guest RAM.
    NoPage,
}

/// Why an event could not be signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The SynIC or the event-flags page is disabled, or the page is not guest RAM.
    #[error("the SynIC event-flags page is not enabled or not in RAM")]
    NoPage,
    /// The flag number is 2048 or more.
    #[error("event flag {0} is out of range (0..2048)")]
    BadFlag(u32),
}

/// One VP's SynIC.
#[derive(Debug)]
pub struct Synic {
    scontrol: u64,
    siefp: u64,
    simp: u64,
    sint: [u64; SINT_COUNT],
    /// Messages from hvkvm code waiting for their slot, per SINT, oldest first.
    queues: [VecDeque<Message>; SINT_COUNT],
}

impl Default for Synic {
    fn default() -> Self {
        Synic {
            scontrol: 0,
            siefp: 0,
            simp: 0,
            sint: [SINT_RESET_VALUE; SINT_COUNT],
            queues: Default::default(),
        }
    }
}

/// A SynIC as a snapshot holds it: its MSRs and the messages hvkvm code queued (the pages
/// themselves are guest RAM, saved with it).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynicState {
    /// SCONTROL.
    pub scontrol: u64,
    /// SIEFP.
    pub siefp: u64,
    /// SIMP.
    pub simp: u64,
    /// SINT0..15.
    pub sint: Vec<u64>,
    /// Queued messages per SINT, oldest first: (message type, payload).
    pub queues: Vec<Vec<(u32, Vec<u8>)>>,
}

impl Synic {
    /// The state a snapshot keeps.
    pub fn save(&self) -> SynicState {
        SynicState {
            scontrol: self.scontrol,
            siefp: self.siefp,
            simp: self.simp,
            sint: self.sint.to_vec(),
            queues: self
                .queues
                .iter()
                .map(|q| {
                    q.iter()
                        .map(|m| {
                            let len = usize::from(m.header.payload_size).min(m.payload.len());
                            (m.header.message_type, m.payload[..len].to_vec())
                        })
                        .collect()
                })
                .collect(),
        }
    }

    /// The SynIC `state` describes. A snapshot is checked before it is used, but its values
    /// are taken as the guest could have written them: SINTs keep only what a write keeps,
    /// queues at most [`QUEUE_LIMIT`] messages of at most 240 bytes.
    pub fn from_state(state: &SynicState) -> Self {
        let mut synic = Synic {
            scontrol: state.scontrol,
            siefp: state.siefp,
            simp: state.simp,
            ..Synic::default()
        };
        for (slot, value) in synic.sint.iter_mut().zip(&state.sint) {
            *slot = *value;
        }
        for (queue, saved) in synic.queues.iter_mut().zip(&state.queues) {
            queue.extend(
                saved
                    .iter()
                    .take(QUEUE_LIMIT)
                    .map(|(message_type, payload)| Message::new(*message_type, payload)),
            );
        }
        synic
    }

    /// Whether `index` is a SynIC MSR.
    pub fn owns(index: u32) -> bool {
        matches!(
            index,
            SCONTROL | SVERSION | SIEFP | SIMP | EOM | SINT0..=SINT15
        )
    }

    /// RDMSR.
    pub fn read(&self, index: u32) -> Result<u64, MsrFault> {
        Ok(match index {
            SCONTROL => self.scontrol,
            SVERSION => hyperv_tlfs::synic::SVERSION,
            SIEFP => self.siefp,
            SIMP => self.simp,
            EOM => 0,
            SINT0..=SINT15 => self.sint[(index - SINT0) as usize],
            _ => return Err(MsrFault),
        })
    }

    /// WRMSR. `refusals` records what the guest got wrong.
    pub fn write(
        &mut self,
        index: u32,
        value: u64,
        mem: &GuestMemory,
        refusals: &mut Refusals,
    ) -> Result<SynicWrite, MsrFault> {
        match index {
            SCONTROL => self.scontrol = value,
            SVERSION => return Err(MsrFault),
            SIEFP | SIMP => {
                if let Some(gpa) = hyperv_tlfs::overlay_page_gpa(value) {
                    if !memory::range_is_ram(mem, gpa, PAGE_SIZE) {
                        // Accepted, as KVM does; deliveries to it fail.
                        refusals.push(Refusal::PageOutsideRam { index, gpa });
                    }
                }
                if index == SIMP {
                    self.simp = value;
                } else {
                    self.siefp = value;
                }
            }
            EOM => return Ok(SynicWrite::EndOfMessage),
            SINT0..=SINT15 => {
                let vector = value & SINT_VECTOR_MASK;
                if vector < SINT_VECTOR_MIN && value & SINT_MASKED == 0 {
                    refusals.push(Refusal::SintVector {
                        sint: (index - SINT0) as u8,
                        vector: vector as u8,
                    });
                    return Err(MsrFault);
                }
                self.sint[(index - SINT0) as usize] = value;
            }
            _ => return Err(MsrFault),
        }
        Ok(SynicWrite::Stored)
    }

    fn enabled(&self) -> bool {
        self.scontrol & SCONTROL_ENABLE != 0
    }

    /// The message page, while the SynIC and the SIMP are enabled.
    pub fn message_page(&self) -> Option<u64> {
        hyperv_tlfs::overlay_page_gpa(self.simp).filter(|_| self.enabled())
    }

    /// The event-flags page, while the SynIC and the SIEFP are enabled.
    pub fn event_page(&self) -> Option<u64> {
        hyperv_tlfs::overlay_page_gpa(self.siefp).filter(|_| self.enabled())
    }

    /// The vector SINT `sint` interrupts with: `None` while it is masked (or its vector is
    /// one a SINT may not use, which only a masked SINT can hold).
    pub fn sint_vector(&self, sint: usize) -> Option<u8> {
        let value = *self.sint.get(sint)?;
        let vector = value & SINT_VECTOR_MASK;
        (value & SINT_MASKED == 0 && vector >= SINT_VECTOR_MIN).then_some(vector as u8)
    }

    /// Whether SINT `sint` asks for AutoEOI (which the user backend cannot honour; the guest
    /// is told not to use it, see hv-model).
    pub fn auto_eoi(&self, sint: usize) -> bool {
        self.sint.get(sint).is_some_and(|v| v & SINT_AUTO_EOI != 0)
    }

    /// Puts `message` into SINT `sint`'s slot, or reports the slot busy. With `retry`, a busy
    /// slot gets its `message_pending` flag set, so that the guest writes EOM once it frees
    /// the slot; without it (periodic timers) the slot is left alone.
    pub fn try_deliver(
        &self,
        mem: &GuestMemory,
        sint: usize,
        message: &Message,
        retry: bool,
    ) -> Delivery {
        let Some(page) = self.message_page() else {
            return Delivery::NoPage;
        };
        if sint >= SINT_COUNT {
            return Delivery::NoPage;
        }
        let slot = page + message_slot_offset(sint);
        let bytes = message.to_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&bytes[..8]);
        let first = u64::from_le_bytes(first);
        for _ in 0..PUBLISH_ATTEMPTS {
            let Ok(header) = mem.load::<u64>(GuestAddress(slot), Ordering::SeqCst) else {
                return Delivery::NoPage;
            };
            let busy = header as u32 != message_type::NONE;
            let new = if busy {
                if !retry {
                    return Delivery::Busy;
                }
                let pending = header | u64::from(MESSAGE_FLAG_PENDING) << FLAGS_SHIFT;
                if pending == header {
                    return Delivery::Busy;
                }
                pending
            } else {
                // The slot is free: the body first, then the header that hands it over.
                if mem
                    .write_slice(&bytes[8..], GuestAddress(slot + 8))
                    .is_err()
                {
                    return Delivery::NoPage;
                }
                first
            };
            match memory::compare_exchange_u64(mem, slot, header, new) {
                Ok(Ok(_)) if busy => return Delivery::Busy,
                Ok(Ok(_)) => return Delivery::Written,
                // The guest changed the header meanwhile: look again.
                Ok(Err(_)) => continue,
                Err(_) => return Delivery::NoPage,
            }
        }
        // A guest that keeps rewriting the header: treat the slot as busy (EOM retries).
        Delivery::Busy
    }

    /// Sets event flag `flag` of SINT `sint`; `Ok(true)` when it was clear (the SINT's
    /// interrupt is then due).
    pub fn set_event_flag(
        &self,
        mem: &GuestMemory,
        sint: usize,
        flag: u32,
    ) -> Result<bool, EventError> {
        if flag >= EVENT_FLAGS_PER_SINT {
            return Err(EventError::BadFlag(flag));
        }
        let page = self.event_page().ok_or(EventError::NoPage)?;
        if sint >= SINT_COUNT {
            return Err(EventError::NoPage);
        }
        let (byte, _) = event_flag_position(sint, flag);
        let word = page + (byte & !7);
        let bit = 1u64 << (u64::from(flag) % 64);
        let old = memory::fetch_or_u64(mem, word, bit).map_err(|_| EventError::NoPage)?;
        Ok(old & bit == 0)
    }

    /// The queue of messages from hvkvm code waiting for SINT `sint`'s slot.
    pub fn queue(&mut self, sint: usize) -> Option<&mut VecDeque<Message>> {
        self.queues.get_mut(sint)
    }

    /// Whether any queue holds a message.
    pub fn has_queued(&self) -> bool {
        self.queues.iter().any(|q| !q.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperv_tlfs::synic::MESSAGE_FLAGS_OFFSET;

    const PAGE: u64 = 0x5000;
    const EVENTS: u64 = 0x7000;

    fn enabled(mem: &GuestMemory) -> Synic {
        let mut s = Synic::default();
        let mut r = Refusals::default();
        s.write(SIMP, PAGE | 1, mem, &mut r).unwrap();
        s.write(SIEFP, EVENTS | 1, mem, &mut r).unwrap();
        s.write(SCONTROL, 1, mem, &mut r).unwrap();
        s
    }

    #[test]
    fn msr_semantics_follow_kvm() {
        let mem = memory::allocate(16).unwrap();
        let mut s = Synic::default();
        let mut r = Refusals::default();
        assert_eq!(s.read(SVERSION), Ok(1));
        assert_eq!(s.write(SVERSION, 1, &mem, &mut r), Err(MsrFault));
        assert_eq!(s.read(EOM), Ok(0));
        assert_eq!(s.write(EOM, 0, &mem, &mut r), Ok(SynicWrite::EndOfMessage));
        assert_eq!(s.read(SINT0 + 3), Ok(SINT_MASKED), "SINTs start masked");
        // Nested Hyper-V's boot value: masked, vector 0.
        assert_eq!(
            s.write(SINT0, 0x10000, &mem, &mut r),
            Ok(SynicWrite::Stored)
        );
        assert_eq!(s.write(SINT0 + 1, 15, &mem, &mut r), Err(MsrFault));
        assert_eq!(s.write(SINT0 + 1, 16, &mem, &mut r), Ok(SynicWrite::Stored));
        assert_eq!(s.sint_vector(1), Some(16));
        assert_eq!(s.sint_vector(0), None);
        // Pages are not zeroed on enable (SYNIC2).
        mem.write_obj(0xabcdu64, GuestAddress(PAGE)).unwrap();
        s.write(SIMP, PAGE | 1, &mem, &mut r).unwrap();
        assert_eq!(mem.read_obj::<u64>(GuestAddress(PAGE)).unwrap(), 0xabcd);
        assert_eq!(s.message_page(), None, "SCONTROL still disabled");
        s.write(SCONTROL, 1, &mem, &mut r).unwrap();
        assert_eq!(s.message_page(), Some(PAGE));
        // A page outside RAM is accepted but noted.
        s.write(SIEFP, (64 << 20) | 1, &mem, &mut r).unwrap();
        let notes: Vec<String> = r.iter().map(ToString::to_string).collect();
        assert_eq!(
            notes,
            [
                "SINT1 vector 15 is below 16 (#GP)",
                "SIEFP page at 0x4000000 is outside RAM"
            ]
        );
        assert_eq!(s.set_event_flag(&mem, 0, 1), Err(EventError::NoPage));
    }

    #[test]
    fn delivery_sets_pending_when_busy_and_writes_when_free() {
        let mem = memory::allocate(16).unwrap();
        let s = enabled(&mem);
        let m = Message::new(0x42, &[1, 2, 3]);
        assert_eq!(s.try_deliver(&mem, 2, &m, true), Delivery::Written);
        let slot = PAGE + 2 * 256;
        let mut bytes = [0u8; 256];
        mem.read_slice(&mut bytes, GuestAddress(slot)).unwrap();
        assert_eq!(Message::from_bytes(&bytes), m);
        // Busy: no retry leaves it alone, retry sets the pending flag.
        assert_eq!(s.try_deliver(&mem, 2, &m, false), Delivery::Busy);
        let flags: u8 = mem
            .read_obj(GuestAddress(slot + MESSAGE_FLAGS_OFFSET))
            .unwrap();
        assert_eq!(flags, 0);
        assert_eq!(s.try_deliver(&mem, 2, &m, true), Delivery::Busy);
        let flags: u8 = mem
            .read_obj(GuestAddress(slot + MESSAGE_FLAGS_OFFSET))
            .unwrap();
        assert_eq!(flags, MESSAGE_FLAG_PENDING);
        // The guest frees the slot; the next delivery clears the flag with the new header.
        mem.write_obj(0u32, GuestAddress(slot)).unwrap();
        assert_eq!(s.try_deliver(&mem, 2, &m, true), Delivery::Written);
        let flags: u8 = mem
            .read_obj(GuestAddress(slot + MESSAGE_FLAGS_OFFSET))
            .unwrap();
        assert_eq!(flags, 0);
        assert_eq!(s.try_deliver(&mem, 16, &m, true), Delivery::NoPage);
        assert_eq!(
            Synic::default().try_deliver(&mem, 0, &m, true),
            Delivery::NoPage
        );
    }

    #[test]
    fn event_flags_are_set_once() {
        let mem = memory::allocate(16).unwrap();
        let s = enabled(&mem);
        assert_eq!(s.set_event_flag(&mem, 1, 70), Ok(true));
        assert_eq!(s.set_event_flag(&mem, 1, 70), Ok(false));
        let word: u64 = mem.read_obj(GuestAddress(EVENTS + 256 + 8)).unwrap();
        assert_eq!(word, 1 << 6);
        assert_eq!(s.set_event_flag(&mem, 15, 2047), Ok(true));
        let last: u8 = mem.read_obj(GuestAddress(EVENTS + 4095)).unwrap();
        assert_eq!(last, 0x80);
        assert_eq!(
            s.set_event_flag(&mem, 0, 2048),
            Err(EventError::BadFlag(2048))
        );
    }
}
