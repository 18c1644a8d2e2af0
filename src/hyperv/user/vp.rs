//! Per-VP synthetic MSRs and state: each VP's lives in its own [`VpState`], locked by that VP's
//! exits, by the VM's timer thread when one of its timers is due, and by hvkvm code that
//! delivers a message or event to it; never by a VM-wide lock.
//!
//! Besides the VP assist page this is the VP's SynIC ([`Synic`]) and its four synthetic timers
//! ([`Stimer`]), and the glue between them: a timer expiration becomes a direct interrupt or
//! a timer message in its SINT's slot; an EOM retries whatever waits for a slot.

use hyperv_tlfs::msr::*;
use hyperv_tlfs::stimer::TIMER_COUNT;
use hyperv_tlfs::synic::{message_type, Message, TimerMessagePayload, SINT_COUNT};
use hyperv_tlfs::{PAGE_ADDRESS_MASK, PAGE_ENABLE};

use super::connections::SynicError;
use super::link::VpLink;
use super::stimer::{Stimer, TimerGates};
use super::synic::{Delivery, EventError, Synic, SynicWrite, QUEUE_LIMIT};
use super::usage::{Event, Refusal, VpUsage};
use crate::memory::{self, GuestMemory};
use crate::ratelimit::warn_ratelimited;
use crate::vcpu::msr::MsrFault;

/// What VP-level operations need besides the VP's own state.
pub struct VpContext<'a> {
    /// The VP's index.
    pub vp: u32,
    /// Guest RAM.
    pub mem: &'a GuestMemory,
    /// Interrupts and kicks.
    pub link: &'a dyn VpLink,
    /// What the partition offers timers.
    pub gates: TimerGates,
    /// The reference time now.
    pub now: u64,
    /// Tells the timer thread that a timer is due at a reference time.
    pub arm: &'a dyn Fn(u64),
}

impl std::fmt::Debug for VpContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VpContext")
            .field("vp", &self.vp)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// One VP's Hyper-V state.
#[derive(Debug, Default)]
pub struct VpState {
    /// VP_ASSIST_PAGE as written.
    pub assist_page: u64,
    /// The synthetic interrupt controller.
    pub synic: Synic,
    /// The synthetic timers.
    pub timers: [Stimer; TIMER_COUNT],
    /// What this VP used.
    pub usage: VpUsage,
    /// AutoEOI use already noted, per SINT.
    auto_eoi_noted: u16,
}

impl VpState {
    /// Whether `index` is a per-VP MSR this module serves.
    pub fn owns(index: u32) -> bool {
        matches!(
            index,
            VP_INDEX | VP_RUNTIME | VP_ASSIST_PAGE | EOI | ICR | TPR | STIMER0_CONFIG
                ..=STIMER3_COUNT
        ) || Synic::owns(index)
    }

    /// RDMSR of a per-VP MSR by VP `vp`.
    pub fn read(&self, vp: u32, index: u32) -> Result<u64, MsrFault> {
        Ok(match index {
            VP_INDEX => u64::from(vp),
            // 100 ns units of this vCPU thread's CPU time: MSR exits are handled on the VP's
            // own thread.
            VP_RUNTIME => crate::kvm::clock::thread_cpu_time_ns() / 100,
            VP_ASSIST_PAGE => self.assist_page,
            STIMER0_CONFIG..=STIMER3_COUNT => {
                let t = &self.timers[((index - STIMER0_CONFIG) / 2) as usize];
                if (index - STIMER0_CONFIG) % 2 == 0 {
                    t.config()
                } else {
                    t.count()
                }
            }
            _ if Synic::owns(index) => return self.synic.read(index),
            // EOI is write-only; ICR and TPR alias the in-kernel LAPIC's registers, which user
            // space cannot make behave exactly like the APIC accesses (hv-vapic is not offered
            // by this backend, see hv-model).
            _ => return Err(MsrFault),
        })
    }

    /// WRMSR of a per-VP MSR.
    pub fn write(&mut self, index: u32, value: u64, ctx: &VpContext<'_>) -> Result<(), MsrFault> {
        match index {
            VP_ASSIST_PAGE => {
                if value & !(PAGE_ADDRESS_MASK | PAGE_ENABLE) != 0 {
                    return Err(MsrFault);
                }
                let gpa = value & PAGE_ADDRESS_MASK;
                if value & PAGE_ENABLE != 0 && !memory::range_is_ram(ctx.mem, gpa, 0x1000) {
                    self.usage.refusals.push(Refusal::PageOutsideRam {
                        index: VP_ASSIST_PAGE,
                        gpa,
                    });
                    return Err(MsrFault);
                }
                self.assist_page = value;
                Ok(())
            }
            STIMER0_CONFIG..=STIMER3_COUNT => {
                let i = ((index - STIMER0_CONFIG) / 2) as usize;
                let t = &mut self.timers[i];
                if (index - STIMER0_CONFIG) % 2 == 0 {
                    t.write_config(value, ctx.gates, ctx.now)?;
                } else {
                    t.write_count(value, ctx.gates, ctx.now)?;
                }
                if self.timers[i].due(ctx.now) {
                    self.expire(i, ctx);
                }
                if let Some(deadline) = self.timers[i].deadline() {
                    (ctx.arm)(deadline);
                }
                Ok(())
            }
            _ if Synic::owns(index) => {
                match self
                    .synic
                    .write(index, value, ctx.mem, &mut self.usage.refusals)?
                {
                    SynicWrite::Stored => {}
                    SynicWrite::EndOfMessage => {
                        self.usage.event(Event::EndOfMessage);
                        self.redeliver(ctx);
                    }
                }
                Ok(())
            }
            // Read-only (VP_INDEX, VP_RUNTIME) or not served (EOI, ICR, TPR).
            _ => Err(MsrFault),
        }
    }

    /// The GPA of the assist page, when enabled.
    pub fn assist_page_gpa(&self) -> Option<u64> {
        hyperv_tlfs::overlay_page_gpa(self.assist_page)
    }

    /// Raises SINT `sint`'s interrupt, if it is unmasked.
    fn raise(&mut self, sint: usize, ctx: &VpContext<'_>) {
        let Some(vector) = self.synic.sint_vector(sint) else {
            return;
        };
        if self.synic.auto_eoi(sint) && self.auto_eoi_noted & (1 << sint) == 0 {
            self.auto_eoi_noted |= 1 << sint;
            self.usage
                .refusals
                .push(Refusal::AutoEoi { sint: sint as u8 });
        }
        self.usage.event(Event::SintInterrupt);
        if let Err(e) = ctx.link.interrupt(ctx.vp, vector) {
            warn_ratelimited!("VP {}: cannot send SINT{sint} vector {vector}: {e}", ctx.vp);
        }
    }

    /// Timer `i` expired: a direct interrupt, or a timer message into its SINT's slot.
    fn expire(&mut self, i: usize, ctx: &VpContext<'_>) {
        let t = self.timers[i];
        let c = t.decoded();
        let delivered = if c.direct {
            self.usage.event(Event::TimerDirect);
            if let Err(e) = ctx.link.interrupt(ctx.vp, c.apic_vector) {
                warn_ratelimited!(
                    "VP {}: cannot send stimer{i} vector {}: {e}",
                    ctx.vp,
                    c.apic_vector
                );
            }
            true
        } else {
            let payload = TimerMessagePayload {
                timer_index: i as u32,
                reserved: 0,
                expiration_time: t.expiration_time(),
                delivery_time: ctx.now,
            };
            let message = Message::new(message_type::TIMER_EXPIRED, &payload.to_bytes());
            let sint = usize::from(c.sintx);
            match self.synic.try_deliver(ctx.mem, sint, &message, !c.periodic) {
                Delivery::Written => {
                    self.usage.event(Event::TimerMessage);
                    self.raise(sint, ctx);
                    true
                }
                // A periodic timer does not queue behind a busy slot: the next period brings
                // the next message (KVM).
                Delivery::Busy if c.periodic => {
                    self.usage.event(Event::TimerMessageDropped);
                    true
                }
                Delivery::Busy | Delivery::NoPage => false,
            }
        };
        if delivered {
            self.timers[i].delivered(ctx.now);
        } else {
            self.usage.event(Event::TimerPending);
            self.timers[i].undelivered();
        }
    }

    /// Fires every timer due at `ctx.now`; returns the earliest remaining deadline
    /// (u64::MAX: none). Called by the timer thread.
    pub fn run_timers(&mut self, ctx: &VpContext<'_>) -> u64 {
        let mut next = u64::MAX;
        for i in 0..TIMER_COUNT {
            if self.timers[i].due(ctx.now) {
                self.expire(i, ctx);
            }
            if let Some(deadline) = self.timers[i].deadline() {
                next = next.min(deadline);
            }
        }
        next
    }

    /// EOM: retries the oldest waiting message of every SINT and every timer expiration that
    /// waits for a slot (KVM retries on EOM and on the SINT vector's EOI; user space sees only
    /// the EOM).
    fn redeliver(&mut self, ctx: &VpContext<'_>) {
        for sint in 0..SINT_COUNT {
            // The head goes into the slot if it is free; the try for the next one then finds
            // the slot busy and sets `message_pending`, so that the guest writes EOM again.
            while let Some(message) = self.synic.queue(sint).and_then(|q| q.front().copied()) {
                match self.synic.try_deliver(ctx.mem, sint, &message, true) {
                    Delivery::Written => {
                        if let Some(q) = self.synic.queue(sint) {
                            q.pop_front();
                        }
                        self.usage.event(Event::Message);
                        self.raise(sint, ctx);
                    }
                    Delivery::Busy | Delivery::NoPage => break,
                }
            }
        }
        for i in 0..TIMER_COUNT {
            if self.timers[i].retry_due() {
                self.expire(i, ctx);
                if let Some(deadline) = self.timers[i].deadline() {
                    (ctx.arm)(deadline);
                }
            }
        }
    }

    /// A message from hvkvm code for SINT `sint`: into the slot now, or queued behind the
    /// messages already waiting (bounded).
    pub fn post_message(
        &mut self,
        sint: u8,
        message: &Message,
        ctx: &VpContext<'_>,
    ) -> Result<(), SynicError> {
        let index = usize::from(sint);
        let Some(queue) = self.synic.queue(index) else {
            return Err(SynicError::NoSint(sint));
        };
        if !queue.is_empty() {
            if queue.len() >= QUEUE_LIMIT {
                return Err(SynicError::QueueFull(queue.len()));
            }
            queue.push_back(*message);
            self.usage.event(Event::MessageQueued);
            return Ok(());
        }
        match self.synic.try_deliver(ctx.mem, index, message, true) {
            Delivery::Written => {
                self.usage.event(Event::Message);
                self.raise(index, ctx);
                Ok(())
            }
            Delivery::Busy => {
                if let Some(q) = self.synic.queue(index) {
                    q.push_back(*message);
                }
                self.usage.event(Event::MessageQueued);
                Ok(())
            }
            Delivery::NoPage => Err(SynicError::NotEnabled(ctx.vp)),
        }
    }

    /// An event from hvkvm code: sets flag `flag` of SINT `sint` and raises the SINT when the
    /// flag was clear.
    pub fn signal_event(
        &mut self,
        sint: u8,
        flag: u32,
        ctx: &VpContext<'_>,
    ) -> Result<(), SynicError> {
        let index = usize::from(sint);
        if index >= SINT_COUNT {
            return Err(SynicError::NoSint(sint));
        }
        match self.synic.set_event_flag(ctx.mem, index, flag) {
            Ok(newly_set) => {
                self.usage.event(Event::EventFlag);
                if newly_set {
                    self.raise(index, ctx);
                }
                Ok(())
            }
            Err(EventError::NoPage) => Err(SynicError::NotEnabled(ctx.vp)),
            Err(EventError::BadFlag(f)) => Err(SynicError::BadFlag(f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use hyperv_tlfs::stimer::{CONFIG_DIRECT_MODE, CONFIG_ENABLE, CONFIG_PERIODIC};
    use hyperv_tlfs::synic::MESSAGE_FLAGS_OFFSET;

    use super::*;
    use crate::hyperv::user::link::RecordingLink;
    use crate::memory::{Bytes, GuestAddress};

    const SIMP_GPA: u64 = 0x5000;

    struct Fixture {
        mem: GuestMemory,
        link: RecordingLink,
        armed: Cell<Vec<u64>>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                mem: memory::allocate(16).unwrap(),
                link: RecordingLink::default(),
                armed: Cell::new(Vec::new()),
            }
        }

        fn with<R>(&self, now: u64, f: impl FnOnce(&VpContext<'_>) -> R) -> R {
            let arm = |d: u64| {
                let mut v = self.armed.take();
                v.push(d);
                self.armed.set(v);
            };
            let ctx = VpContext {
                vp: 1,
                mem: &self.mem,
                link: &self.link,
                gates: TimerGates {
                    synic: true,
                    direct: true,
                },
                now,
                arm: &arm,
            };
            f(&ctx)
        }

        fn slot_type(&self, sint: u64) -> u32 {
            self.mem
                .read_obj(GuestAddress(SIMP_GPA + sint * 256))
                .unwrap()
        }
    }

    fn synic_on(vp: &mut VpState, f: &Fixture) {
        f.with(0, |ctx| {
            vp.write(SIMP, SIMP_GPA | 1, ctx).unwrap();
            vp.write(SCONTROL, 1, ctx).unwrap();
            vp.write(SINT0 + 2, 0x52, ctx).unwrap();
        });
    }

    #[test]
    fn read_only_vp_msrs_refuse_writes() {
        let f = Fixture::new();
        let mut vp = VpState::default();
        assert_eq!(vp.read(3, VP_INDEX), Ok(3));
        assert!(vp.read(0, VP_RUNTIME).is_ok());
        for index in [VP_INDEX, VP_RUNTIME, EOI, ICR, TPR] {
            assert_eq!(
                f.with(0, |ctx| vp.write(index, 0, ctx)),
                Err(MsrFault),
                "{}",
                Name(index)
            );
        }
    }

    #[test]
    fn assist_page_must_be_in_ram_with_no_reserved_bits() {
        let f = Fixture::new();
        let mut vp = VpState::default();
        f.with(0, |ctx| {
            assert_eq!(vp.write(VP_ASSIST_PAGE, 0x7000 | 1, ctx), Ok(()));
            assert_eq!(vp.assist_page_gpa(), Some(0x7000));
            assert_eq!(vp.write(VP_ASSIST_PAGE, (64 << 20) | 1, ctx), Err(MsrFault));
            assert_eq!(vp.write(VP_ASSIST_PAGE, 0x7000 | 2, ctx), Err(MsrFault));
            assert_eq!(vp.write(VP_ASSIST_PAGE, 0, ctx), Ok(()));
        });
        assert_eq!(vp.assist_page_gpa(), None);
        assert_eq!(vp.usage.refusals.iter().count(), 1);
    }

    #[test]
    fn message_mode_timer_posts_then_waits_for_eom_when_busy() {
        let f = Fixture::new();
        let mut vp = VpState::default();
        synic_on(&mut vp, &f);
        let config = CONFIG_ENABLE | (2 << 16);
        f.with(100, |ctx| {
            vp.write(STIMER0_COUNT + 2, 500, ctx).unwrap();
            vp.write(STIMER0_CONFIG + 2, config, ctx).unwrap();
        });
        assert_eq!(f.armed.take(), [500]);
        assert_eq!(f.with(499, |ctx| vp.run_timers(ctx)), 500);
        assert_eq!(f.with(510, |ctx| vp.run_timers(ctx)), u64::MAX);
        assert_eq!(f.link.take_interrupts(), [(1, 0x52)]);
        let mut bytes = [0u8; 256];
        f.mem
            .read_slice(&mut bytes, GuestAddress(SIMP_GPA + 2 * 256))
            .unwrap();
        let m = Message::from_bytes(&bytes);
        assert_eq!(m.header.message_type, message_type::TIMER_EXPIRED);
        let p = TimerMessagePayload::from_bytes(&m.payload).unwrap();
        assert_eq!(
            (p.timer_index, p.expiration_time, p.delivery_time),
            (1, 500, 510)
        );
        assert_eq!(vp.read(1, STIMER0_CONFIG + 2), Ok(config & !CONFIG_ENABLE));
        // Again, with the slot still busy: pending, then delivered on EOM once it is freed.
        f.with(600, |ctx| {
            vp.write(STIMER0_COUNT + 2, 700, ctx).unwrap();
            vp.write(STIMER0_CONFIG + 2, config, ctx).unwrap();
            vp.run_timers(&VpContext { now: 701, ..*ctx });
        });
        assert!(f.link.take_interrupts().is_empty());
        let flags: u8 = f
            .mem
            .read_obj(GuestAddress(SIMP_GPA + 2 * 256 + MESSAGE_FLAGS_OFFSET))
            .unwrap();
        assert_eq!(flags, 1, "message_pending set");
        f.mem
            .write_obj(0u32, GuestAddress(SIMP_GPA + 2 * 256))
            .unwrap();
        f.with(800, |ctx| vp.write(EOM, 0, ctx)).unwrap();
        assert_eq!(f.link.take_interrupts(), [(1, 0x52)]);
        assert_eq!(f.slot_type(2), message_type::TIMER_EXPIRED);
    }

    #[test]
    fn direct_periodic_timer_interrupts_every_period() {
        let f = Fixture::new();
        let mut vp = VpState::default();
        let config = CONFIG_ENABLE | CONFIG_PERIODIC | CONFIG_DIRECT_MODE | (0xec << 4);
        f.with(1000, |ctx| {
            vp.write(STIMER0_COUNT, 10_000, ctx).unwrap();
            vp.write(STIMER0_CONFIG, config, ctx).unwrap();
        });
        assert_eq!(f.with(11_000, |ctx| vp.run_timers(ctx)), 21_000);
        assert_eq!(f.with(45_000, |ctx| vp.run_timers(ctx)), 51_000);
        assert_eq!(f.link.take_interrupts(), [(1, 0xec), (1, 0xec)]);
        assert_eq!(vp.usage.events[Event::TimerDirect as usize], 2);
    }

    #[test]
    fn host_messages_queue_behind_a_busy_slot_and_events_raise_once() {
        let f = Fixture::new();
        let mut vp = VpState::default();
        synic_on(&mut vp, &f);
        let m = Message::new(0x77, b"hi");
        f.with(0, |ctx| {
            vp.post_message(2, &m, ctx).unwrap();
            vp.post_message(2, &m, ctx).unwrap();
        });
        assert_eq!(f.link.take_interrupts(), [(1, 0x52)]);
        f.mem
            .write_obj(0u32, GuestAddress(SIMP_GPA + 2 * 256))
            .unwrap();
        f.with(0, |ctx| vp.write(EOM, 0, ctx)).unwrap();
        assert_eq!(f.link.take_interrupts(), [(1, 0x52)]);
        assert!(!vp.synic.has_queued());
        // Three at once: each one taken leaves message_pending set while more wait.
        let flags = |f: &Fixture| -> u8 {
            f.mem
                .read_obj(GuestAddress(SIMP_GPA + 2 * 256 + MESSAGE_FLAGS_OFFSET))
                .unwrap()
        };
        f.mem
            .write_obj(0u32, GuestAddress(SIMP_GPA + 2 * 256))
            .unwrap();
        f.with(0, |ctx| {
            for _ in 0..3 {
                vp.post_message(2, &m, ctx).unwrap();
            }
        });
        assert_eq!(flags(&f), 1);
        for pending_after in [1, 0] {
            f.mem
                .write_obj(0u32, GuestAddress(SIMP_GPA + 2 * 256))
                .unwrap();
            f.with(0, |ctx| vp.write(EOM, 0, ctx)).unwrap();
            assert_eq!(f.slot_type(2), 0x77);
            assert_eq!(flags(&f), pending_after);
        }
        f.link.take_interrupts();
        assert_eq!(
            f.with(0, |ctx| vp.post_message(16, &m, ctx)),
            Err(SynicError::NoSint(16))
        );
        assert_eq!(
            f.with(0, |ctx| vp.signal_event(2, 5, ctx)),
            Err(SynicError::NotEnabled(1))
        );
        f.with(0, |ctx| vp.write(SIEFP, 0x6000 | 1, ctx)).unwrap();
        f.with(0, |ctx| {
            vp.signal_event(2, 5, ctx).unwrap();
            vp.signal_event(2, 5, ctx).unwrap();
        });
        assert_eq!(f.link.take_interrupts(), [(1, 0x52)]);
        // A masked SINT gets the message but no interrupt.
        f.with(0, |ctx| vp.write(SINT0 + 3, 0x10053, ctx)).unwrap();
        f.with(0, |ctx| vp.post_message(3, &m, ctx)).unwrap();
        assert!(f.link.take_interrupts().is_empty());
        assert_eq!(f.slot_type(3), 0x77);
    }
}
