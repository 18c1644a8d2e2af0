//! The SynIC end to end on one vCPU: HvPostMessage and HvSignalEvent to a connection the host
//! test registers (an "echo" on connection 0x1234: it posts the message back to SINT 4 of the
//! VP named in payload byte 0, type | 0x1000, and answers a signalled event by setting the
//! same flag number of SINT 4), message queueing behind a busy slot with EOM, masked SINTs and
//! the SINT vector rule. Needs hv-vpindex, hv-synic, hv-time. SINT 4 uses vector 0xD4.
//!
//! - SYNC 1: (PostMessage to unknown connection 0x999 status, SignalEvent to it status,
//!   PostMessage type 0 status, PostMessage 241 bytes status, 0, 0)
//! - SYNC 2 echo: (status, interrupts, received type, payload word 0, payload size, 0)
//! - SYNC 3 three messages at once: (statuses OR-ed, interrupts, messages taken in order
//!   (seq 1, 2, 3 = 3), EOMs written, 0, 0)
//! - SYNC 4 queue limit: (posts that succeeded of 20 while nothing is taken, first failure
//!   status, then all taken: messages taken, 0, 0, 0)
//! - SYNC 5 events: (SignalEvent status, interrupts (one per newly set flag: 2), flag 5 of
//!   SINT 4 set, other bits set, fast SignalEvent status, flag 9 set)
//! - SYNC 6 masked SINT 4: (post status, interrupts while masked (0), slot type, 0, 0, 0)
//! - SYNC 7 SINT rules: (SINT5 = vector 15 unmasked faulted, vector, SINT5 = 0x10000
//!   faulted, SINT5 read back, SVERSION, EOM read)
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};

use hvkvm_guest::hyperv::{self, hypercall, hypercall_fast, HypercallResult, Page};
use hvkvm_guest::idt::{rdmsr_safe, wrmsr_safe};
use hvkvm_guest::synic::{self, message_type};
use hvkvm_guest::{guest_assert, guest_done, guest_sync, intr, BootInfo};

hvkvm_guest::entry!(main);

const SINT: usize = 4;
const VECTOR: u8 = 0xd4;
const ECHO: u64 = 0x1234;
const POST_MESSAGE: u64 = 0x5c;
const SIGNAL_EVENT: u64 = 0x5d;
const LIMIT: u64 = 10_000_000_000;

static HYPERCALL_PAGE: Page = Page::ud2_filled();
static SIMP: Page = Page::zeroed();
static SIEFP: Page = Page::zeroed();
static INPUT: Page = Page::zeroed();

/// Whether the interrupt hook takes messages (else the test takes them itself).
static AUTO_TAKE: AtomicU32 = AtomicU32::new(1);
static TAKEN: AtomicU32 = AtomicU32::new(0);
static LAST_TYPE: AtomicU32 = AtomicU32::new(0);
static LAST_WORD: AtomicU32 = AtomicU32::new(0);
static LAST_SIZE: AtomicU32 = AtomicU32::new(0);

fn on_sint(_vector: u8, _cpu: usize) {
    if AUTO_TAKE.load(SeqCst) == 0 {
        return;
    }
    if let Some(m) = synic::take(&SIMP, SINT) {
        LAST_TYPE.store(m.message_type, SeqCst);
        LAST_WORD.store(m.words[0] as u32, SeqCst);
        LAST_SIZE.store(u32::from(m.payload_size), SeqCst);
        TAKEN.fetch_add(1, SeqCst);
    }
}

/// HvPostMessage to `connection` with `message_type` and `size` payload bytes, payload word 0 =
/// `word`.
fn post(connection: u64, message_type: u32, size: u32, word: u64) -> u16 {
    INPUT.write_u64(0, connection);
    INPUT.write_u64(8, u64::from(message_type) | u64::from(size) << 32);
    INPUT.write_u64(16, word);
    // SAFETY: the input page is ours; PostMessage has no output.
    let r = unsafe { hypercall(&HYPERCALL_PAGE, POST_MESSAGE, INPUT.addr(), 0) };
    r.map_or(u16::MAX, |rax| rax.status())
}

/// HvSignalEvent (slow) to `connection` with `flag`.
fn signal(connection: u64, flag: u64) -> u16 {
    INPUT.write_u64(0, connection | flag << 32);
    // SAFETY: as in `post`.
    let r = unsafe { hypercall(&HYPERCALL_PAGE, SIGNAL_EVENT, INPUT.addr(), 0) };
    r.map_or(u16::MAX, |rax| rax.status())
}

fn interrupts() -> u32 {
    intr::count(0, VECTOR)
}

/// Event flag `flag` of SINT 4, and whether any other bit of the page is set.
fn event_flag(flag: usize) -> (bool, bool) {
    let word = SIEFP.read_u64(SINT * 256 + (flag / 64) * 8);
    let bit = 1u64 << (flag % 64);
    let mut others = word & !bit != 0;
    for off in (0..4096).step_by(8) {
        if off != SINT * 256 + (flag / 64) * 8 && SIEFP.read_u64(off) != 0 {
            others = true;
        }
    }
    (word & bit != 0, others)
}

fn main(boot: BootInfo) -> ! {
    guest_assert!(boot.cpu_count == 1, "one vCPU");
    intr::install();
    intr::lapic_enable();
    intr::set_hook(VECTOR, on_sint);
    guest_assert!(hyperv::enable_hypercall_page(&HYPERCALL_PAGE).is_ok());
    synic::enable(&SIMP, Some(&SIEFP));
    synic::set_sint(SINT as u32, VECTOR);

    // 1: unknown connections and malformed messages.
    let unknown_post = post(0x999, 7, 8, 0);
    let unknown_signal = signal(0x999, 1);
    let zero_type = post(ECHO, 0, 8, 0);
    let too_big = post(ECHO, 7, 241, 0);
    guest_sync!(1, unknown_post, unknown_signal, zero_type, too_big, 0, 0);

    // 2: the echo comes back into SINT 4 (payload byte 0: VP 0).
    let before = interrupts();
    let status = post(ECHO, 7, 16, 0xab00);
    intr::wait_for(LIMIT, || TAKEN.load(SeqCst) >= 1);
    guest_sync!(
        2,
        status,
        interrupts() - before,
        LAST_TYPE.load(SeqCst),
        LAST_WORD.load(SeqCst),
        LAST_SIZE.load(SeqCst),
        0
    );

    // 3: three at once: the first lands, the others wait; each EOM brings the next.
    AUTO_TAKE.store(0, SeqCst);
    let before = interrupts();
    let mut statuses = 0u64;
    for seq in 1..=3u64 {
        statuses |= u64::from(post(ECHO, 7, 16, seq << 8));
    }
    let mut in_order = 0;
    let mut eoms = 0;
    for seq in 1..=3u64 {
        // Each message comes with its own interrupt: wait for it, then look at the slot.
        intr::wait_for(LIMIT, || u64::from(interrupts() - before) >= seq);
        let got = (synic::slot_header(&SIMP, SINT) as u32 != message_type::NONE)
            .then(|| SIMP.read_u64(SINT * 256 + 16));
        if got == Some(seq << 8) {
            in_order += 1;
        }
        let pending = synic::slot_header(&SIMP, SINT) >> 40 & 1;
        if synic::take(&SIMP, SINT).is_some() && pending == 1 {
            eoms += 1;
        }
    }
    intr::wait_for(LIMIT / 100, || false);
    guest_sync!(3, statuses, interrupts() - before, in_order, eoms, 0, 0);

    // 4: the host queue is bounded: 1 in the slot, 16 waiting, then the echo is refused.
    let mut succeeded = 0;
    let mut first_failure = 0;
    for seq in 0..20u64 {
        match post(ECHO, 7, 16, seq << 8) {
            0 => succeeded += 1,
            s if first_failure == 0 => first_failure = s,
            _ => {}
        }
    }
    let mut taken = 0;
    while intr::wait_for(LIMIT / 20, || {
        synic::slot_header(&SIMP, SINT) as u32 != message_type::NONE
    }) {
        if synic::take(&SIMP, SINT).is_some() {
            taken += 1;
        }
    }
    AUTO_TAKE.store(1, SeqCst);
    guest_sync!(4, succeeded, first_failure, taken, 0, 0, 0);

    // 5: events.
    let before = interrupts();
    let status = signal(ECHO, 5);
    intr::wait_for(LIMIT, || interrupts() > before);
    let (set, others) = event_flag(5);
    let fast = hypercall_fast(&HYPERCALL_PAGE, SIGNAL_EVENT, ECHO | 9 << 32, 0)
        .map_or(u16::MAX, |rax| rax.status());
    // Flag 9 was clear: a second interrupt.
    intr::wait_for(LIMIT, || interrupts() - before >= 2);
    let (set9, _) = event_flag(9);
    guest_sync!(5, status, interrupts() - before, set, others, fast, set9);

    // 6: a masked SINT gets the message but no interrupt.
    // SAFETY: masks SINT 4 (vector kept).
    unsafe {
        hvkvm_guest::x86::wrmsr(
            hyperv::SINT0 + SINT as u32,
            synic::SINT_MASKED | u64::from(VECTOR),
        )
    };
    AUTO_TAKE.store(0, SeqCst);
    let before = interrupts();
    let status = post(ECHO, 7, 16, 0x6600);
    intr::wait_for(LIMIT / 100, || false);
    guest_sync!(
        6,
        status,
        interrupts() - before,
        synic::slot_header(&SIMP, SINT) as u32,
        0,
        0,
        0
    );

    // 7: SINT vectors below 16 need the mask; SVERSION and EOM reads.
    // SAFETY: SINT 5 is unused by this payload.
    let low = unsafe { wrmsr_safe(hyperv::SINT0 + 5, 15) };
    // SAFETY: as above.
    let masked = unsafe { wrmsr_safe(hyperv::SINT0 + 5, 0x10000) };
    guest_sync!(
        7,
        low.is_err(),
        low.err().unwrap_or(0),
        masked.is_err(),
        rdmsr_safe(hyperv::SINT0 + 5).unwrap_or(u64::MAX),
        rdmsr_safe(hyperv::SVERSION).unwrap_or(u64::MAX),
        rdmsr_safe(hyperv::EOM).unwrap_or(u64::MAX)
    );
    guest_done!()
}
