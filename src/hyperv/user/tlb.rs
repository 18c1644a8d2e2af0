//! Remote TLB flushes for the flush hypercalls: when HvFlushVirtualAddress* returns, no target
//! VP may still use a translation the caller removed.
//!
//! # The mechanism, and why it flushes
//! KVM has no ioctl that flushes another vCPU's TLB. What it does have: a host-initiated write
//! of EFER (KVM_SET_MSRS) that changes an MMU role bit (LME or NX) makes `set_efer()` call
//! `kvm_mmu_reset_context()`, which unloads every root of the vCPU's MMU (the current one and
//! the cached previous ones). The next `KVM_RUN` reloads a root in `kvm_mmu_load()`, which
//! syncs the shadow pages reachable from it (`kvm_mmu_sync_roots`, with shadow paging) and
//! flushes the TLB of the root it installs (`flush_tlb_current`: INVEPT single-context or an
//! ASID flush with TDP, a full flush with shadow paging). That is a complete flush of the
//! guest's linear translations before the vCPU runs guest code again. hvkvm writes EFER with NX
//! flipped and then EFER as it was: two resets, the architectural state unchanged, and no
//! guest code runs in between (roots are only loaded by `KVM_RUN`).
//!
//! A vCPU ioctl can only be issued while the vCPU is outside `KVM_RUN` (`vcpu->mutex`), so
//! each target flushes itself, on its own thread, before it re-enters
//! ([`FlushSlot::before_entry`]).
//!
//! Why not `KVM_SET_SREGS` with a changed CR3, which also resets the MMU (and since Linux 6.5
//! requests `KVM_REQ_TLB_FLUSH_GUEST` too): it rewrites every segment register and more from a
//! copy read just before, and on the kvm_pvm development hosts a Debian guest using the flush
//! hypercall heavily (no time dilation, ~350 flushes during boot) then crashed in user space
//! with a corrupted TLS base, twice in two boots; with the flush hypercall off it did not.
//! EFER is one MSR that nothing else changes while the vCPU is outside `KVM_RUN`.

//! # The handshake with the sender
//! Per target VP: `requested` (a counter senders bump), `completed` (the request count the
//! target last flushed for) and `in_guest` (the target is in, or about to enter, `KVM_RUN`).
//! - Target, before `KVM_RUN`: flush while `requested != completed`; then set `in_guest` and
//!   re-read `requested` (both SeqCst), flushing again if it moved.
//! - Target, after `KVM_RUN` returns (any exit): clear `in_guest`, wake waiting senders.
//! - Sender: bump `requested` (SeqCst) and read `in_guest` (SeqCst). These four SeqCst accesses
//!   form a Dekker pair: either the target's re-read sees the bump (it flushes before it runs
//!   guest code), or the sender sees `in_guest`. Then the sender kicks the target (a signal:
//!   inside `KVM_RUN` it returns EINTR, just before it `immediate_exit` makes it return at
//!   once) and waits until the target completed the request or left `KVM_RUN`. A target
//!   outside `KVM_RUN` runs no guest code until it has flushed, so the sender need not wait.
//!
//! The caller itself is outside `KVM_RUN` while it serves the hypercall; if it is a target it
//! flushes before it re-enters, like any other. Two VPs flushing each other never wait for
//! each other: each is outside `KVM_RUN` during its own hypercall.
//!
//! The cost is on the flush path only; the exit path pays one SeqCst store and two loads.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::link::VpLink;

/// The EFER MSR.
pub const MSR_EFER: u32 = 0xc000_0080;
/// EFER.NXE: the MMU role bit flipped to make KVM reset the MMU.
const EFER_NX: u64 = 1 << 11;
/// How long a sender waits before it kicks again (covers a kick that raced the target's
/// registration as a signal target).
const REKICK: Duration = Duration::from_millis(1);

/// One VP's flush state.
#[derive(Debug, Default)]
pub struct FlushSlot {
    requested: AtomicU64,
    completed: AtomicU64,
    in_guest: AtomicBool,
    waiters: AtomicU32,
    /// Flushes this VP performed (for the report).
    performed: AtomicU64,
    /// Nanoseconds this VP spent flushing (the register writes and their ioctls).
    flush_ns: AtomicU64,
    /// Nanoseconds senders waited for this VP.
    wait_ns: AtomicU64,
    lock: Mutex<()>,
    changed: Condvar,
}

/// A request made of one target: wait for it with [`FlushSlot::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl FlushSlot {
    /// Sender: asks this VP (number `vp`) to flush. `None` when it is outside `KVM_RUN` and will
    /// flush before it runs guest code; else it has been kicked and the sender must
    /// [`wait`](Self::wait) for the ticket.
    pub fn request(&self, vp: u32, link: &dyn VpLink) -> Option<Ticket> {
        let ticket = self.requested.fetch_add(1, SeqCst).wrapping_add(1);
        if !self.in_guest.load(SeqCst) {
            return None;
        }
        link.kick(vp);
        Some(Ticket(ticket))
    }

    fn answered(&self, ticket: Ticket) -> bool {
        !self.in_guest.load(SeqCst) || self.completed.load(SeqCst).wrapping_sub(ticket.0) < 1 << 63
    }

    /// Sender: waits until the target flushed for `ticket` or left `KVM_RUN` (or the VM
    /// stops, when no guest code runs again).
    pub fn wait(&self, vp: u32, ticket: Ticket, link: &dyn VpLink) {
        let start = std::time::Instant::now();
        self.waiters.fetch_add(1, SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while !self.answered(ticket) && !link.stopping() {
            let (g, timeout) = self
                .changed
                .wait_timeout(guard, REKICK)
                .unwrap_or_else(|p| p.into_inner());
            guard = g;
            if timeout.timed_out() && !self.answered(ticket) {
                link.kick(vp);
            }
        }
        drop(guard);
        self.waiters.fetch_sub(1, SeqCst);
        self.wait_ns
            .fetch_add(start.elapsed().as_nanos() as u64, SeqCst);
    }

    fn notify(&self) {
        if self.waiters.load(SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.changed.notify_all();
        }
    }

    /// Target, right before `KVM_RUN`: carries out every request so far with `flush`, then
    /// marks the VP as in the guest. An error from `flush` is returned (the VP must not run).
    pub fn before_entry<E>(&self, mut flush: impl FnMut() -> Result<(), E>) -> Result<(), E> {
        loop {
            let requested = self.requested.load(SeqCst);
            if requested != self.completed.load(SeqCst) {
                let start = std::time::Instant::now();
                flush()?;
                self.flush_ns
                    .fetch_add(start.elapsed().as_nanos() as u64, SeqCst);
                self.performed.fetch_add(1, SeqCst);
                self.completed.store(requested, SeqCst);
                self.notify();
                continue;
            }
            self.in_guest.store(true, SeqCst);
            if self.requested.load(SeqCst) == requested {
                return Ok(());
            }
            self.in_guest.store(false, SeqCst);
        }
    }

    /// Target, right after `KVM_RUN` returned (whatever the exit).
    pub fn after_exit(&self) {
        self.in_guest.store(false, SeqCst);
        self.notify();
    }

    /// Flushes this VP performed.
    pub fn performed(&self) -> u64 {
        self.performed.load(SeqCst)
    }

    /// Nanoseconds spent flushing, and senders spent waiting, for this VP.
    pub fn times_ns(&self) -> (u64, u64) {
        (self.flush_ns.load(SeqCst), self.wait_ns.load(SeqCst))
    }
}

/// The register writes that make KVM flush this vCPU's TLB (see the module documentation):
/// EFER with NX flipped, then EFER as it was.
pub fn flush_with_efer(
    get: impl FnOnce() -> Result<u64, kvm_ioctls::Error>,
    mut set: impl FnMut(u64) -> Result<(), kvm_ioctls::Error>,
) -> Result<(), kvm_ioctls::Error> {
    let efer = get()?;
    set(efer ^ EFER_NX)?;
    set(efer)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hyperv::user::link::RecordingLink;

    #[test]
    fn a_target_outside_the_guest_flushes_before_entry_and_nobody_waits() {
        let slot = FlushSlot::default();
        let link = RecordingLink::default();
        assert_eq!(slot.request(1, &link), None);
        assert!(link.kicks.lock().unwrap().is_empty());
        let mut flushes = 0;
        slot.before_entry(|| -> Result<(), ()> {
            flushes += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((flushes, slot.performed()), (1, 1));
        // Nothing new: no flush.
        slot.after_exit();
        slot.before_entry(|| -> Result<(), ()> { panic!("no request") })
            .unwrap();
    }

    #[test]
    fn a_target_in_the_guest_is_kicked_and_the_sender_waits_for_it() {
        let slot = Arc::new(FlushSlot::default());
        let link = Arc::new(RecordingLink::default());
        slot.before_entry(|| -> Result<(), ()> { Ok(()) }).unwrap();
        let ticket = slot.request(3, &*link).expect("in the guest: a ticket");
        assert_eq!(*link.kicks.lock().unwrap(), [3]);
        let target = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                // The kick makes KVM_RUN return; the VP flushes before it re-enters.
                slot.after_exit();
                slot.before_entry(|| -> Result<(), ()> { Ok(()) }).unwrap();
            })
        };
        slot.wait(3, ticket, &*link);
        target.join().unwrap();
        assert_eq!(slot.performed(), 1);
    }

    #[test]
    fn flush_writes_efer_with_nx_flipped_then_restored() {
        let mut writes = Vec::new();
        flush_with_efer(
            || Ok(0xd01),
            |v| {
                writes.push(v);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(writes, [0x501, 0xd01]);
    }
}
