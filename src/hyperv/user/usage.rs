//! Usage counters a vCPU keeps on its exit path: fixed-size, allocated once when the VM is
//! built, so counting an MSR access or a hypercall never allocates or formats. The
//! [`crate::hyperv::report::UsageReport`] is assembled from them when someone asks.

use hyperv_tlfs::msr::{RANGE_LEN, RANGE_START};

/// Refused accesses kept per VP (the rest are only counted).
pub const MAX_REFUSALS: usize = 32;

/// Reads, writes and #GPs of one MSR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsrUse {
    /// RDMSRs answered.
    pub reads: u64,
    /// WRMSRs accepted.
    pub writes: u64,
    /// Accesses answered with #GP.
    pub faults: u64,
}

/// Something the guest tried that was refused, kept as data and formatted only for a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// RDMSR answered with #GP.
    Rdmsr {
        /// MSR index.
        index: u32,
    },
    /// WRMSR answered with #GP.
    Wrmsr {
        /// MSR index.
        index: u32,
        /// The value.
        value: u64,
    },
    /// An overlay page (hypercall, TSC, assist, SynIC) was placed outside guest RAM.
    PageOutsideRam {
        /// The MSR that named it.
        index: u32,
        /// The page's GPA.
        gpa: u64,
    },
    /// A write that the TLFS says to ignore.
    Ignored {
        /// MSR index.
        index: u32,
        /// The value.
        value: u64,
        /// Why it is ignored.
        reason: &'static str,
    },
    /// A SINT was given a vector below 16 while unmasked.
    SintVector {
        /// Which SINT.
        sint: u8,
        /// The vector.
        vector: u8,
    },
    /// A SINT asked for AutoEOI, which the user backend cannot honour: its interrupts are
    /// delivered as ordinary ones (the guest was told not to use AutoEOI, `04.EAX[9]`).
    AutoEoi {
        /// Which SINT.
        sint: u8,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use hyperv_tlfs::msr::Name;
        match *self {
            Refusal::Rdmsr { index } => write!(f, "rdmsr {} (#GP)", Name(index)),
            Refusal::Wrmsr { index, value } => {
                write!(f, "wrmsr {} = {value:#x} (#GP)", Name(index))
            }
            Refusal::PageOutsideRam { index, gpa } => {
                write!(f, "{} page at {gpa:#x} is outside RAM", Name(index))
            }
            Refusal::Ignored {
                index,
                value,
                reason,
            } => write!(f, "wrmsr {} = {value:#x} ignored: {reason}", Name(index)),
            Refusal::SintVector { sint, vector } => {
                write!(f, "SINT{sint} vector {vector} is below 16 (#GP)")
            }
            Refusal::AutoEoi { sint } => write!(
                f,
                "SINT{sint} asks for AutoEOI, which the user backend cannot honour on KVM's \
                 in-kernel LAPIC: delivered as an ordinary interrupt (04.EAX[9] says not to \
                 use AutoEOI)"
            ),
        }
    }
}

/// A bounded log of refusals: the first [`MAX_REFUSALS`] verbatim, then a count.
#[derive(Debug, Clone)]
pub struct Refusals {
    kept: [Option<Refusal>; MAX_REFUSALS],
    len: usize,
    /// Refusals not kept.
    pub dropped: u64,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            kept: [None; MAX_REFUSALS],
            len: 0,
            dropped: 0,
        }
    }
}

impl Refusals {
    /// Records one (constant time, no allocation).
    pub fn push(&mut self, refusal: Refusal) {
        match self.kept.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(refusal);
                self.len += 1;
            }
            None => self.dropped += 1,
        }
    }

    /// The kept ones, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Refusal> {
        self.kept[..self.len].iter().flatten()
    }
}

use super::hypercall::{CALL_ROWS, STATUS_ROWS};

/// Things the user backend did for a VP, counted for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Event {
    /// A direct-mode synthetic timer interrupt.
    TimerDirect,
    /// A timer-expired message delivered to a SINT slot.
    TimerMessage,
    /// A periodic timer's message dropped because its slot was busy.
    TimerMessageDropped,
    /// A timer expiration left waiting for an EOM (slot busy or no message page).
    TimerPending,
    /// A message from hvkvm code delivered to a SINT slot.
    Message,
    /// A message from hvkvm code queued because its slot was busy.
    MessageQueued,
    /// An event flag set by hvkvm code.
    EventFlag,
    /// A SINT interrupt sent.
    SintInterrupt,
    /// An EOM write.
    EndOfMessage,
    /// A synthetic cluster IPI sent to this VP.
    IpiReceived,
    /// A remote TLB flush requested of this VP.
    FlushRequested,
    /// A flush request that had to wait for this VP to leave the guest.
    FlushWaited,
}

impl Event {
    /// Every event, in counter order.
    pub const ALL: [Event; 12] = [
        Event::TimerDirect,
        Event::TimerMessage,
        Event::TimerMessageDropped,
        Event::TimerPending,
        Event::Message,
        Event::MessageQueued,
        Event::EventFlag,
        Event::SintInterrupt,
        Event::EndOfMessage,
        Event::IpiReceived,
        Event::FlushRequested,
        Event::FlushWaited,
    ];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Event::TimerDirect => "stimer direct-mode interrupts",
            Event::TimerMessage => "stimer messages",
            Event::TimerMessageDropped => "stimer messages dropped (periodic, slot busy)",
            Event::TimerPending => "stimer expirations waiting for EOM",
            Event::Message => "messages from hvkvm delivered",
            Event::MessageQueued => "messages from hvkvm queued (slot busy)",
            Event::EventFlag => "event flags set by hvkvm",
            Event::SintInterrupt => "SINT interrupts",
            Event::EndOfMessage => "EOM writes",
            Event::IpiReceived => "synthetic cluster IPIs received",
            Event::FlushRequested => "remote TLB flushes requested",
            Event::FlushWaited => "remote TLB flushes waited for (VP in the guest)",
        }
    }
}

/// One VP's counters.
#[derive(Debug, Clone)]
pub struct VpUsage {
    /// Per MSR of the synthetic range, by `index - RANGE_START`.
    pub msrs: Box<[MsrUse; RANGE_LEN as usize]>,
    /// Hypercall results: `[call row][status row]`.
    pub hypercalls: Box<[[u64; STATUS_ROWS]; CALL_ROWS]>,
    /// Hypercalls answered with #UD.
    pub hypercall_ud: u64,
    /// What was refused.
    pub refusals: Refusals,
    /// [`Event`] counts, by `Event as usize`.
    pub events: [u64; Event::ALL.len()],
}

impl Default for VpUsage {
    fn default() -> Self {
        VpUsage {
            msrs: Box::new([MsrUse::default(); RANGE_LEN as usize]),
            hypercalls: Box::new([[0; STATUS_ROWS]; CALL_ROWS]),
            hypercall_ud: 0,
            refusals: Refusals::default(),
            events: [0; Event::ALL.len()],
        }
    }
}

impl VpUsage {
    /// Counts an access to MSR `index` (ignored outside the synthetic range).
    pub fn msr(&mut self, index: u32, write: bool, faulted: bool) {
        let Some(entry) = index
            .checked_sub(RANGE_START)
            .and_then(|i| self.msrs.get_mut(i as usize))
        else {
            return;
        };
        match (faulted, write) {
            (true, _) => entry.faults += 1,
            (false, true) => entry.writes += 1,
            (false, false) => entry.reads += 1,
        }
    }

    /// Counts an event.
    pub fn event(&mut self, event: Event) {
        self.events[event as usize] += 1;
    }

    /// Counts a hypercall's result.
    pub fn hypercall(&mut self, code: u16, status: u16) {
        let call = super::hypercall::call_row(code).min(CALL_ROWS - 1);
        let status = super::hypercall::status_row(status).min(STATUS_ROWS - 1);
        self.hypercalls[call][status] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_bounded_and_counted() {
        let mut r = Refusals::default();
        for i in 0..100 {
            r.push(Refusal::Rdmsr { index: i });
        }
        assert_eq!(r.iter().count(), MAX_REFUSALS);
        assert_eq!(r.dropped, 100 - MAX_REFUSALS as u64);
        assert_eq!(
            r.iter().next().map(|x| x.to_string()).as_deref(),
            Some("rdmsr 0x0 (#GP)")
        );
    }

    #[test]
    fn msr_counts_stay_in_range() {
        let mut u = VpUsage::default();
        u.msr(hyperv_tlfs::msr::TIME_REF_COUNT, false, false);
        u.msr(hyperv_tlfs::msr::TIME_REF_COUNT, true, true);
        u.msr(0x10, false, false); // not synthetic: ignored
        let e = u.msrs[0x20];
        assert_eq!((e.reads, e.writes, e.faults), (1, 0, 1));
    }
}
