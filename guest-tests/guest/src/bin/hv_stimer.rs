//! Synthetic timers on every vCPU at once (at most 4), in the manner of kvm-unit-tests'
//! `hyperv_stimer`: message-mode timers on SINT 2 (vector 0xF1) and SINT 3 (vector 0xF2),
//! direct-mode timers on vector 0xE0. Needs hv-synic, hv-stimer, hv-stimer-direct, hv-time
//! (TIME_REF_COUNT). Each vCPU runs the stages below in order and SYNCs their results
//! (the SyncEvent's vCPU says which); vCPU 0 ends the run with DONE once every vCPU checked in.
//! P is the period, 10 ms (100,000 reference units); "ok" is 1 when the wait succeeded.
//!
//! - SYNC 1 periodic, timers 0 and 1: (ok, fires 0, fires 1, expirations off the period grid,
//!   malformed messages, 0)
//! - SYNC 2 one-shot, timer 0 at now + P: (ok, fires, expiration == COUNT, delivery ≥
//!   expiration, CONFIG.enable after, delivery − expiration)
//! - SYNC 3 auto-enable one-shot, timer 1 at now + 5 P: (ok, fires, CONFIG.enable after the
//!   COUNT write (1 set; 0 clear before the timer was due, which is wrong; 2 clear but read
//!   only once the timer was due, when it may already have fired and disabled itself),
//!   expiration == COUNT, 0, 0)
//! - SYNC 4 auto-enable periodic, timer 0: (ok, fires, off the grid, 0, 0, 0)
//! - SYNC 5 one-shot into a busy slot: (message_pending seen, fires while busy, ok after
//!   EOM, fires after, 0, 0)
//! - SYNC 6 direct one-shot, timer 2: (ok, interrupts, CONFIG.enable after, 0, 0, 0)
//! - SYNC 7 direct periodic, timer 3: (ok, interrupts, 0, 0, 0, 0)
//! - SYNC 8 a one-shot with COUNT in the past: (ok, fires, 0, 0, 0, 0)
//! - SYNC 9 after every timer stopped, 5 P later: (messages since, direct interrupts since,
//!   0, 0, 0, 0)
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

use hvkvm_guest::hyperv::Page;
use hvkvm_guest::synic::{self, direct_config, message_config, message_type};
use hvkvm_guest::{guest_assert, guest_done, guest_sync, intr, spin_wait, BootInfo};

hvkvm_guest::entry!(main);

const SINT_A: usize = 2;
const VEC_A: u8 = 0xf1;
const SINT_B: usize = 3;
const VEC_B: u8 = 0xf2;
const VEC_DIRECT: u8 = 0xe0;
const P: u64 = 100_000;
/// About 8 s at 2.5 GHz: the bound of every wait.
const LIMIT: u64 = 20_000_000_000;
const CPUS: usize = intr::MAX_CPUS;

static PAGES: [Page; CPUS] = [const { Page::zeroed() }; CPUS];

struct Stats {
    fires: AtomicU32,
    first_exp: AtomicU64,
    last_exp: AtomicU64,
    last_delivery: AtomicU64,
    off_grid: AtomicU32,
    /// The period for the grid check (0: one-shot).
    period: AtomicU64,
}

impl Stats {
    const fn new() -> Self {
        Stats {
            fires: AtomicU32::new(0),
            first_exp: AtomicU64::new(0),
            last_exp: AtomicU64::new(0),
            last_delivery: AtomicU64::new(0),
            off_grid: AtomicU32::new(0),
            period: AtomicU64::new(0),
        }
    }

    fn reset(&self, period: u64) {
        self.fires.store(0, SeqCst);
        self.off_grid.store(0, SeqCst);
        self.period.store(period, SeqCst);
    }

    fn fires(&self) -> u64 {
        u64::from(self.fires.load(SeqCst))
    }
}

static STATS: [[Stats; 4]; CPUS] = [const { [const { Stats::new() }; 4] }; CPUS];
static MALFORMED: [AtomicU32; CPUS] = [const { AtomicU32::new(0) }; CPUS];
static CHECKED_IN: AtomicU32 = AtomicU32::new(0);

fn on_sint(vector: u8, cpu: usize) {
    let sint = if vector == VEC_A { SINT_A } else { SINT_B };
    let (Some(page), Some(stats)) = (PAGES.get(cpu), STATS.get(cpu)) else {
        return;
    };
    let Some(m) = synic::take(page, sint) else {
        return;
    };
    let index = (m.words[0] & 0xffff_ffff) as usize;
    if m.message_type != message_type::TIMER_EXPIRED || m.payload_size < 24 || index >= 4 {
        MALFORMED[cpu].fetch_add(1, SeqCst);
        return;
    }
    let s = &stats[index];
    let (exp, delivery) = (m.words[1], m.words[2]);
    if s.fires.load(SeqCst) == 0 {
        s.first_exp.store(exp, SeqCst);
    }
    let period = s.period.load(SeqCst);
    if period != 0 && (exp - s.first_exp.load(SeqCst)) % period != 0 {
        s.off_grid.fetch_add(1, SeqCst);
    }
    s.last_exp.store(exp, SeqCst);
    s.last_delivery.store(delivery, SeqCst);
    s.fires.fetch_add(1, SeqCst);
}

/// Lets messages and interrupts already on their way arrive (after stopping timers): 2 P
/// with interrupts enabled.
fn settle() {
    let until = synic::now() + 2 * P;
    intr::wait_for(LIMIT, || synic::now() >= until);
}

fn enabled(n: usize) -> u64 {
    hvkvm_guest::x86::rdmsr(synic::config_msr(n)) & synic::CONFIG_ENABLE
}

fn main(boot: BootInfo) -> ! {
    let cpu = boot.cpu_index as usize;
    guest_assert!(cpu < CPUS, "at most 4 vCPUs");
    intr::install();
    intr::lapic_enable();
    intr::set_hook(VEC_A, on_sint);
    intr::set_hook(VEC_B, on_sint);
    let page = &PAGES[cpu];
    let stats = &STATS[cpu];
    synic::enable(page, None);
    synic::set_sint(SINT_A as u32, VEC_A);
    synic::set_sint(SINT_B as u32, VEC_B);

    // 1: two periodic timers at once.
    stats[0].reset(P);
    stats[1].reset(P);
    synic::start_timer(0, message_config(SINT_A as u64, true), P);
    synic::start_timer(1, message_config(SINT_B as u64, true), P);
    let ok = intr::wait_for(LIMIT, || stats[0].fires() >= 5 && stats[1].fires() >= 5);
    synic::stop_timer(0);
    synic::stop_timer(1);
    settle();
    let off = stats[0].off_grid.load(SeqCst) + stats[1].off_grid.load(SeqCst);
    guest_sync!(
        1,
        ok,
        stats[0].fires(),
        stats[1].fires(),
        off,
        MALFORMED[cpu].load(SeqCst),
        0
    );

    // 2: one-shot at an absolute time.
    stats[0].reset(0);
    let count = synic::now() + P;
    synic::start_timer(0, message_config(SINT_A as u64, false), count);
    let ok = intr::wait_for(LIMIT, || stats[0].fires() >= 1);
    let (exp, delivery) = (
        stats[0].last_exp.load(SeqCst),
        stats[0].last_delivery.load(SeqCst),
    );
    guest_sync!(
        2,
        ok,
        stats[0].fires(),
        exp == count,
        delivery >= exp,
        enabled(0),
        delivery.wrapping_sub(exp)
    );

    // 3: auto-enable one-shot: CONFIG without enable, then COUNT enables it.
    // The CONFIG read must come before the expiration to mean anything; a vCPU held up
    // longer than 5 P between the two MSR accesses (a loaded host, a snapshot taken at
    // another vCPU's SYNC) reads a timer that may have fired already, and says so.
    stats[1].reset(0);
    let count = synic::now() + 5 * P;
    synic::start_timer(
        1,
        synic::CONFIG_AUTO_ENABLE | (SINT_B as u64) << synic::CONFIG_SINTX_SHIFT,
        count,
    );
    let enable_bit = enabled(1);
    let read_before_due = synic::now() < count;
    let enabled_by_count = match (enable_bit != 0, read_before_due) {
        (true, _) => 1,
        (false, true) => 0,
        (false, false) => 2,
    };
    let ok = intr::wait_for(LIMIT, || stats[1].fires() >= 1);
    guest_sync!(
        3,
        ok,
        stats[1].fires(),
        enabled_by_count,
        stats[1].last_exp.load(SeqCst) == count,
        0,
        0
    );

    // 4: auto-enable periodic.
    stats[0].reset(P);
    synic::start_timer(
        0,
        synic::CONFIG_AUTO_ENABLE
            | synic::CONFIG_PERIODIC
            | (SINT_A as u64) << synic::CONFIG_SINTX_SHIFT,
        P,
    );
    let ok = intr::wait_for(LIMIT, || stats[0].fires() >= 5);
    synic::stop_timer(0);
    settle();
    guest_sync!(
        4,
        ok,
        stats[0].fires(),
        stats[0].off_grid.load(SeqCst),
        0,
        0,
        0
    );

    // 5: a one-shot whose slot is busy waits for the guest to free it and write EOM.
    stats[0].reset(0);
    synic::set_slot_type(page, SINT_A, message_type::TIMER_EXPIRED);
    synic::start_timer(0, message_config(SINT_A as u64, false), synic::now() + P);
    let pending = intr::wait_for(LIMIT, || {
        (synic::slot_header(page, SINT_A) >> (8 * synic::MESSAGE_FLAGS_OFFSET)) as u8
            & synic::MESSAGE_FLAG_PENDING
            != 0
    });
    let fires_busy = stats[0].fires();
    synic::set_slot_type(page, SINT_A, message_type::NONE);
    core::sync::atomic::fence(SeqCst);
    synic::eom();
    let ok = intr::wait_for(LIMIT, || stats[0].fires() >= 1);
    guest_sync!(5, pending, fires_busy, ok, stats[0].fires(), 0, 0);

    // 6: direct-mode one-shot.
    let before = intr::count(cpu, VEC_DIRECT);
    synic::start_timer(2, direct_config(VEC_DIRECT, false), synic::now() + P);
    let ok = intr::wait_for(LIMIT, || intr::count(cpu, VEC_DIRECT) > before);
    guest_sync!(
        6,
        ok,
        intr::count(cpu, VEC_DIRECT) - before,
        enabled(2),
        0,
        0,
        0
    );

    // 7: direct-mode periodic.
    let before = intr::count(cpu, VEC_DIRECT);
    synic::start_timer(3, direct_config(VEC_DIRECT, true), P);
    let ok = intr::wait_for(LIMIT, || intr::count(cpu, VEC_DIRECT) - before >= 5);
    synic::stop_timer(3);
    settle();
    guest_sync!(7, ok, intr::count(cpu, VEC_DIRECT) - before, 0, 0, 0, 0);

    // 8: a one-shot in the past expires at once.
    stats[0].reset(0);
    synic::start_timer(0, message_config(SINT_A as u64, false), 1);
    let ok = intr::wait_for(LIMIT, || stats[0].fires() >= 1);
    guest_sync!(8, ok, stats[0].fires(), 0, 0, 0, 0);

    // 9: nothing fires once every timer is stopped.
    for n in 0..4 {
        synic::stop_timer(n);
    }
    let messages: u64 = stats.iter().map(Stats::fires).sum();
    let direct = intr::count(cpu, VEC_DIRECT);
    let until = synic::now() + 5 * P;
    intr::wait_for(LIMIT, || synic::now() >= until);
    let messages_after: u64 = stats.iter().map(Stats::fires).sum();
    guest_sync!(
        9,
        messages_after - messages,
        intr::count(cpu, VEC_DIRECT) - direct,
        0,
        0,
        0,
        0
    );

    CHECKED_IN.fetch_add(1, SeqCst);
    if boot.is_bsp() {
        let all = spin_wait(|| u64::from(CHECKED_IN.load(SeqCst)) == boot.cpu_count);
        guest_assert!(all, "a vCPU did not finish");
        guest_done!();
    }
    intr::idle_forever()
}
