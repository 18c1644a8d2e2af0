//! Guest side of the SynIC and synthetic timers: enabling the message and event-flag pages,
//! SINTs, reading a message slot the way the TLFS asks (copy, free the slot, then EOM if a
//! message is pending), and timer programming. Layouts and numbers come from `hyperv-tlfs`.

use core::sync::atomic::{fence, Ordering};

use crate::hyperv::Page;
use crate::x86::{rdmsr, wrmsr};

use hyperv_tlfs::msr::{EOM, SCONTROL, SIEFP, SIMP, SINT0, TIME_REF_COUNT};
pub use hyperv_tlfs::stimer::{
    config_msr, count_msr, CONFIG_AUTO_ENABLE, CONFIG_DIRECT_MODE, CONFIG_ENABLE, CONFIG_PERIODIC,
    CONFIG_SINTX_SHIFT,
};
pub use hyperv_tlfs::synic::{
    message_type, TimerMessagePayload, MESSAGE_FLAGS_OFFSET, MESSAGE_FLAG_PENDING, MESSAGE_SIZE,
    SINT_MASKED,
};

// Every helper uses plain RDMSR/WRMSR (a fault ends the test as an unexpected exception):
// the `idt::*_safe` helpers share one recovery record and cannot be used by several vCPUs at
// once, and these are used by multi-vCPU payloads.

/// Enables the SynIC with `simp` as message page and `siefp` (if any) as event-flags page.
pub fn enable(simp: &Page, siefp: Option<&Page>) {
    // SAFETY: the pages are the payload's own; the VMM writes messages and flags into them.
    unsafe {
        wrmsr(SIMP, simp.addr() | 1);
        if let Some(p) = siefp {
            wrmsr(SIEFP, p.addr() | 1);
        }
        wrmsr(SCONTROL, 1);
    }
}

/// Sets SINT `sint` to `vector` (unmasked).
pub fn set_sint(sint: u32, vector: u8) {
    // SAFETY: routes the SINT's interrupts to `vector`, which the payload handles.
    unsafe { wrmsr(SINT0 + sint, u64::from(vector)) }
}

/// The reference time (TIME_REF_COUNT).
pub fn now() -> u64 {
    rdmsr(TIME_REF_COUNT)
}

/// Writes EOM.
pub fn eom() {
    // SAFETY: EOM only makes the VMM retry pending messages.
    unsafe { wrmsr(EOM, 0) };
}

/// The first u64 of SINT `sint`'s slot (type, size, flags).
pub fn slot_header(page: &Page, sint: usize) -> u64 {
    page.read_u64(sint * MESSAGE_SIZE)
}

/// Writes the message type of SINT `sint`'s slot (0 frees it; anything else fakes a busy
/// slot).
pub fn set_slot_type(page: &Page, sint: usize, message_type: u32) {
    // SAFETY: offset inside the page, 4-aligned.
    unsafe {
        page.as_ptr()
            .add(sint * MESSAGE_SIZE)
            .cast::<u32>()
            .write_volatile(message_type)
    };
}

/// A message copied out of a slot.
#[derive(Clone, Copy, Debug, Default)]
pub struct Received {
    /// Message type.
    pub message_type: u32,
    /// Payload size.
    pub payload_size: u8,
    /// The first 32 payload bytes as words.
    pub words: [u64; 4],
}

/// Takes the message in SINT `sint`'s slot, if any: copies it, frees the slot, and writes EOM
/// when the VMM flagged another one pending (TLFS message protocol).
pub fn take(page: &Page, sint: usize) -> Option<Received> {
    let base = sint * MESSAGE_SIZE;
    let header = page.read_u64(base);
    let message_type = header as u32;
    if message_type == message_type::NONE {
        return None;
    }
    let mut r = Received {
        message_type,
        payload_size: (header >> 32) as u8,
        words: [0; 4],
    };
    for (i, w) in r.words.iter_mut().enumerate() {
        *w = page.read_u64(base + 16 + 8 * i);
    }
    set_slot_type(page, sint, message_type::NONE);
    fence(Ordering::SeqCst);
    let flags = (page.read_u64(base) >> (8 * MESSAGE_FLAGS_OFFSET)) as u8;
    if flags & MESSAGE_FLAG_PENDING != 0 {
        eom();
    }
    Some(r)
}

/// Programs timer `n`: COUNT then CONFIG (or CONFIG then COUNT with `auto_enable`, which
/// enables the timer with the COUNT write).
pub fn start_timer(n: usize, config: u64, count: u64) {
    // SAFETY: timers only make the VMM deliver messages or interrupts the payload handles.
    unsafe {
        if config & CONFIG_AUTO_ENABLE != 0 {
            wrmsr(config_msr(n), config);
            wrmsr(count_msr(n), count);
        } else {
            wrmsr(count_msr(n), count);
            wrmsr(config_msr(n), config);
        }
    }
}

/// Stops timer `n` (CONFIG = 0).
pub fn stop_timer(n: usize) {
    // SAFETY: disabling a timer has no other effect.
    unsafe { wrmsr(config_msr(n), 0) };
}

/// A message-mode CONFIG for SINT `sint`.
pub const fn message_config(sint: u64, periodic: bool) -> u64 {
    CONFIG_ENABLE | (sint << CONFIG_SINTX_SHIFT) | if periodic { CONFIG_PERIODIC } else { 0 }
}

/// A direct-mode CONFIG for `vector`.
pub const fn direct_config(vector: u8, periodic: bool) -> u64 {
    CONFIG_ENABLE
        | CONFIG_DIRECT_MODE
        | ((vector as u64) << 4)
        | if periodic { CONFIG_PERIODIC } else { 0 }
}
