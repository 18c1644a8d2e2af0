//! One synthetic timer's state machine (TLFS "Synthetic Timers"; reference §2.4), pure: the
//! caller passes the reference time and carries out expirations (see `vp.rs`), and the
//! backend's timer thread sleeps until the earliest [`Stimer::deadline`].
//!
//! Semantics follow KVM's `stimer_set_config`/`stimer_set_count`/`stimer_start`/
//! `stimer_expiration`:
//! - A non-zero CONFIG or COUNT needs the SynIC (`03.EAX[2]`), else #GP; direct mode needs
//!   `03.EDX[19]`, else #GP. Writing either MSR stops the timer and restarts it from scratch.
//! - COUNT = 0 disables the timer; a non-zero COUNT with `auto_enable` enables it.
//! - A CONFIG write with `enable`, message mode and SINT 0 clears `enable` when the timer was
//!   already enabled (KVM; it guards against a half-written configuration).
//! - One-shot: COUNT is an absolute reference time; in the past it expires at once. After a
//!   delivered expiration `enable` is cleared.
//! - Periodic: COUNT is the period; the first expiration is one period after the start.
//!   Missed expirations are not made up: the next one is the first point of the period grid
//!   after the time of delivery (KVM; the TLFS lets the hypervisor coalesce them).
//! - An expiration that cannot be delivered (message slot busy, no message page) stays
//!   pending and is retried on EOM, except a periodic timer's message to a busy slot, which is
//!   dropped (the next period brings the next one).
//!
//! Every arithmetic on guest values saturates: COUNT = u64::MAX is a timer that never fires.
//! A periodic timer expires at most once per [`MIN_PERIOD`] (100 µs), whatever its COUNT, so
//! that a guest cannot make hvkvm's timer thread spin (KVM bounds its LAPIC timer the same
//! way, `min_timer_period_us`; the TLFS sets no minimum, and real guests use periods of a
//! millisecond or more).

use hyperv_tlfs::stimer::{Config, CONFIG_ENABLE};

use crate::vcpu::msr::MsrFault;

/// The shortest period a periodic timer runs with (100 µs in reference units).
pub const MIN_PERIOD: u64 = 1000;

/// What the partition offers that timers depend on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerGates {
    /// `03.EAX[2]`: a SynIC exists (KVM: the VMM enabled it).
    pub synic: bool,
    /// `03.EDX[19]`: direct-mode timers.
    pub direct: bool,
}

/// One synthetic timer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stimer {
    config: u64,
    count: u64,
    /// Reference time of the next expiration; 0 while not armed.
    exp_time: u64,
    /// An expiration waits for delivery (retried on EOM).
    msg_pending: bool,
}

/// A timer as a snapshot holds it. The expiration is an absolute reference time, and
/// reference time continues across a restore: a timer due 3 ms after the snapshot fires 3 ms
/// after the restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StimerState {
    /// CONFIG.
    pub config: u64,
    /// COUNT.
    pub count: u64,
    /// The next expiration (0: not armed).
    pub exp_time: u64,
    /// An expiration waits for an EOM.
    pub msg_pending: bool,
}

impl Stimer {
    /// The state a snapshot keeps.
    pub fn save(&self) -> StimerState {
        StimerState {
            config: self.config,
            count: self.count,
            exp_time: self.exp_time,
            msg_pending: self.msg_pending,
        }
    }

    /// The timer `state` describes.
    pub fn from_state(state: &StimerState) -> Self {
        Stimer {
            config: state.config,
            count: state.count,
            exp_time: state.exp_time,
            msg_pending: state.msg_pending,
        }
    }

    /// CONFIG as the guest reads it.
    pub fn config(&self) -> u64 {
        self.config
    }

    /// COUNT as the guest reads it.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// CONFIG's fields.
    pub fn decoded(&self) -> Config {
        Config::decode(self.config)
    }

    /// The reference time this expiration was due (for the timer message).
    pub fn expiration_time(&self) -> u64 {
        self.exp_time
    }

    /// Whether an expiration waits for delivery.
    pub fn pending(&self) -> bool {
        self.msg_pending
    }

    /// WRMSR CONFIG at reference time `now`.
    pub fn write_config(
        &mut self,
        value: u64,
        gates: TimerGates,
        now: u64,
    ) -> Result<(), MsrFault> {
        if !gates.synic && value != 0 {
            return Err(MsrFault);
        }
        let new = Config::decode(value);
        if new.direct && !gates.direct {
            return Err(MsrFault);
        }
        let was_enabled = self.decoded().enable;
        self.stop();
        let mut value = value;
        if was_enabled && !new.direct && new.sintx == 0 {
            value &= !CONFIG_ENABLE;
        }
        self.config = value;
        self.start(now);
        Ok(())
    }

    /// WRMSR COUNT at reference time `now`.
    pub fn write_count(&mut self, value: u64, gates: TimerGates, now: u64) -> Result<(), MsrFault> {
        if !gates.synic && value != 0 {
            return Err(MsrFault);
        }
        self.stop();
        self.count = value;
        if value == 0 {
            self.config &= !CONFIG_ENABLE;
        } else if self.decoded().auto_enable {
            self.config |= CONFIG_ENABLE;
        }
        self.start(now);
        Ok(())
    }

    fn stop(&mut self) {
        self.exp_time = 0;
        self.msg_pending = false;
    }

    /// Arms an enabled timer with a non-zero count (KVM's `stimer_start`).
    fn start(&mut self, now: u64) {
        let c = self.decoded();
        if !c.enable || self.count == 0 {
            self.exp_time = 0;
            return;
        }
        if c.periodic {
            let period = self.count.max(MIN_PERIOD);
            if self.exp_time == 0 {
                self.exp_time = now.saturating_add(period);
            } else if now >= self.exp_time {
                // Skip the expirations missed meanwhile: next point of the period grid.
                let late = (now - self.exp_time) % period;
                self.exp_time = now.saturating_add(period - late);
            }
        } else {
            // Absolute; in the past (or now) it is due at once.
            self.exp_time = self.count;
        }
    }

    /// When the timer thread must look at this timer again: the expiration time while it is
    /// armed and nothing waits for delivery.
    pub fn deadline(&self) -> Option<u64> {
        (self.exp_time != 0 && !self.msg_pending).then_some(self.exp_time)
    }

    /// Whether an expiration is due at `now` (and not already waiting for delivery).
    pub fn due(&self, now: u64) -> bool {
        self.deadline().is_some_and(|t| now >= t)
    }

    /// The expiration was delivered (or, for a periodic timer's message to a busy slot,
    /// dropped) at `now`: a one-shot timer disables itself, a periodic one re-arms.
    pub fn delivered(&mut self, now: u64) {
        self.msg_pending = false;
        if self.decoded().periodic {
            self.start(now);
        } else {
            self.config &= !CONFIG_ENABLE;
            self.exp_time = 0;
        }
    }

    /// The expiration could not be delivered: it waits for an EOM.
    pub fn undelivered(&mut self) {
        self.msg_pending = true;
    }

    /// Whether an expiration waits for delivery and is still wanted (retried on EOM).
    pub fn retry_due(&self) -> bool {
        self.msg_pending && self.decoded().enable && self.exp_time != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperv_tlfs::stimer::{
        CONFIG_AUTO_ENABLE, CONFIG_DIRECT_MODE, CONFIG_PERIODIC, CONFIG_SINTX_SHIFT,
    };

    const ALL: TimerGates = TimerGates {
        synic: true,
        direct: true,
    };
    const SINT2: u64 = 2 << CONFIG_SINTX_SHIFT;

    #[test]
    fn gates_of_the_enforce_cpuid_matrix() {
        let mut t = Stimer::default();
        let none = TimerGates::default();
        assert_eq!(
            t.write_config(0, none, 0),
            Ok(()),
            "writing 0 is always fine"
        );
        assert_eq!(t.write_count(0, none, 0), Ok(()));
        assert_eq!(t.write_config(1 | SINT2, none, 0), Err(MsrFault));
        assert_eq!(t.write_count(5, none, 0), Err(MsrFault));
        let no_direct = TimerGates {
            synic: true,
            direct: false,
        };
        assert_eq!(
            t.write_config(CONFIG_DIRECT_MODE, no_direct, 0),
            Err(MsrFault)
        );
        assert_eq!(t.write_config(CONFIG_DIRECT_MODE, ALL, 0), Ok(()));
    }

    #[test]
    fn one_shot_expires_once_at_its_absolute_time() {
        let mut t = Stimer::default();
        t.write_count(1000, ALL, 0).unwrap();
        assert_eq!(t.deadline(), None, "not enabled yet");
        t.write_config(CONFIG_ENABLE | SINT2, ALL, 100).unwrap();
        assert_eq!(t.deadline(), Some(1000));
        assert!(!t.due(999) && t.due(1000));
        t.delivered(1003);
        assert_eq!(t.deadline(), None);
        assert_eq!(t.config() & CONFIG_ENABLE, 0, "one-shot disables itself");
        // In the past: due at once.
        t.write_config(CONFIG_ENABLE | SINT2, ALL, 5000).unwrap();
        assert!(t.due(5000));
    }

    #[test]
    fn auto_enable_and_count_zero() {
        let mut t = Stimer::default();
        t.write_config(CONFIG_AUTO_ENABLE | SINT2, ALL, 0).unwrap();
        t.write_count(300, ALL, 10).unwrap();
        assert_eq!(t.config() & CONFIG_ENABLE, CONFIG_ENABLE);
        assert_eq!(t.deadline(), Some(300));
        t.write_count(0, ALL, 20).unwrap();
        assert_eq!(t.config() & CONFIG_ENABLE, 0);
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn periodic_skips_missed_periods() {
        let mut t = Stimer::default();
        t.write_count(10_000, ALL, 0).unwrap();
        t.write_config(CONFIG_ENABLE | CONFIG_PERIODIC | SINT2, ALL, 1000)
            .unwrap();
        assert_eq!(t.deadline(), Some(11_000));
        t.delivered(11_000);
        assert_eq!(t.deadline(), Some(21_000));
        // Delivered 3.5 periods late: the grid continues at 61,000.
        t.delivered(56_000);
        assert_eq!(t.deadline(), Some(61_000));
        assert_eq!(t.config() & CONFIG_ENABLE, CONFIG_ENABLE);
    }

    #[test]
    fn reenabling_message_mode_with_sint0_disables() {
        let mut t = Stimer::default();
        t.write_count(100, ALL, 0).unwrap();
        t.write_config(CONFIG_ENABLE | SINT2, ALL, 0).unwrap();
        t.write_config(CONFIG_ENABLE, ALL, 0).unwrap();
        assert_eq!(t.config() & CONFIG_ENABLE, 0);
        // Direct mode with SINT 0 is fine.
        t.write_config(CONFIG_ENABLE | CONFIG_DIRECT_MODE, ALL, 0)
            .unwrap();
        t.write_config(CONFIG_ENABLE | CONFIG_DIRECT_MODE | 0xf0, ALL, 0)
            .unwrap();
        assert_eq!(t.decoded().apic_vector, 0x0f);
        assert!(t.decoded().enable);
    }

    #[test]
    fn undelivered_waits_and_absurd_counts_never_fire() {
        let mut t = Stimer::default();
        t.write_count(50, ALL, 0).unwrap();
        t.write_config(CONFIG_ENABLE | SINT2, ALL, 0).unwrap();
        t.undelivered();
        assert_eq!(t.deadline(), None);
        assert!(t.retry_due());
        t.delivered(60);
        assert!(!t.retry_due());
        // A 100 ns period runs at 100 µs.
        t.write_count(1, ALL, 0).unwrap();
        t.write_config(CONFIG_ENABLE | CONFIG_PERIODIC | CONFIG_DIRECT_MODE, ALL, 0)
            .unwrap();
        assert_eq!(t.deadline(), Some(MIN_PERIOD));
        t.write_count(u64::MAX, ALL, 10).unwrap();
        t.write_config(CONFIG_ENABLE | CONFIG_PERIODIC | SINT2, ALL, 10)
            .unwrap();
        assert_eq!(t.deadline(), Some(u64::MAX));
        assert!(!t.due(u64::MAX - 1));
    }
}
