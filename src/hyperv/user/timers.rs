//! The timer thread of one VM: it sleeps until the earliest synthetic-timer deadline of any
//! VP (a condition variable with a timeout, never a busy wait), fires what is due, and sleeps
//! again. An idle guest whose timers are far away costs one sleeping thread.
//!
//! The thread is started lazily, when a guest first arms a timer, and it holds only a weak
//! reference to the backend: it ends when the backend asks it to ([`TimerThread::stop`], from
//! the VM's shutdown) or when the backend is gone.
//!
//! Who calls whom: a VP that arms a timer (holding its own VP lock) calls
//! [`TimerThread::request`], which takes the scheduler's lock only to wake the thread; the
//! thread takes VP locks only while it does not hold the scheduler's lock. So the lock order
//! is VP → scheduler.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the thread works on: the VPs' timers and the reference clock.
pub trait TimerHost: Send + Sync + 'static {
    /// The reference time now (100 ns units).
    fn now(&self) -> u64;
    /// Fires every timer due at `now`; returns the earliest remaining deadline (u64::MAX: none).
    fn run_timers(&self, now: u64) -> u64;
    /// Host time until reference time `deadline`, from reference time `now`.
    fn wall_until(&self, now: u64, deadline: u64) -> Duration;
}

/// The scheduler shared by the backend and its timer thread.
///
/// Arming a timer is lock-free unless it must wake the thread: the VP lowers `requested`
/// (`fetch_min`) and takes the lock to notify only when its deadline is earlier than what the
/// thread sleeps toward (`sleeping_until`). The thread publishes `sleeping_until` and re-reads
/// `requested` under the lock before it waits; with SeqCst on both sides either the thread sees
/// the new deadline, or the VP sees the later `sleeping_until` and notifies after the thread
/// waits (it holds the lock until the wait releases it), so no wake-up is lost.
#[derive(Debug)]
pub struct TimerThread {
    /// The earliest deadline asked for since the thread last looked (u64::MAX: none).
    requested: AtomicU64,
    /// What the thread sleeps toward (u64::MAX: no deadline; 0: it is not asleep).
    sleeping_until: AtomicU64,
    stop: AtomicBool,
    started: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    handle: Mutex<Option<JoinHandle<()>>>,
    name: String,
}

impl TimerThread {
    /// A scheduler whose thread (named `name`) is not started yet.
    pub fn new(name: String) -> Arc<Self> {
        Arc::new(TimerThread {
            requested: AtomicU64::new(u64::MAX),
            sleeping_until: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            started: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            handle: Mutex::new(None),
            name,
        })
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A timer must fire at reference time `deadline`: wakes the thread if it sleeps longer,
    /// and starts it the first time.
    pub fn request<H: TimerHost>(self: &Arc<Self>, host: &Arc<H>, deadline: u64) {
        if self.stop.load(SeqCst) {
            return;
        }
        self.requested.fetch_min(deadline, SeqCst);
        if deadline < self.sleeping_until.load(SeqCst) {
            let _guard = self.lock();
            self.wake.notify_all();
        }
        if !self.started.load(SeqCst) && !self.started.swap(true, SeqCst) {
            self.start(Arc::downgrade(host));
        }
    }

    fn start<H: TimerHost>(self: &Arc<Self>, host: Weak<H>) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || me.run(host));
        match spawned {
            Ok(handle) => {
                *self.handle.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
            }
            Err(e) => {
                // Timers then never fire; the guest sees a stopped clock event, which is all
                // that can be done without a thread.
                log::error!("cannot start the synthetic timer thread: {e}");
            }
        }
    }

    fn run<H: TimerHost>(&self, host: Weak<H>) {
        crate::kvm::clock::set_precise_timer_slack();
        loop {
            let Some(h) = host.upgrade() else { return };
            self.requested.store(u64::MAX, SeqCst);
            let next = h.run_timers(h.now());
            let guard = self.lock();
            if self.stop.load(SeqCst) {
                return;
            }
            let target = next.min(self.requested.load(SeqCst));
            self.sleeping_until.store(target, SeqCst);
            let now = h.now();
            if target <= now || self.requested.load(SeqCst) < target {
                self.sleeping_until.store(0, SeqCst);
                continue;
            }
            let timeout = (target != u64::MAX).then(|| h.wall_until(now, target));
            drop(h);
            let _woken = match timeout {
                Some(t) => {
                    self.wake
                        .wait_timeout(guard, t)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.wake.wait(guard).unwrap_or_else(|p| p.into_inner()),
            };
            self.sleeping_until.store(0, SeqCst);
        }
    }

    /// Stops the thread and waits for it (unless called on the thread itself).
    pub fn stop(&self) {
        self.stop.store(true, SeqCst);
        {
            let _guard = self.lock();
            self.wake.notify_all();
        }
        let handle = self.handle.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }

    /// Whether the thread was started.
    pub fn started(&self) -> bool {
        self.started.load(SeqCst)
    }

    /// Whether the thread exists and has not ended.
    pub fn running(&self) -> bool {
        self.handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    use super::*;

    /// Reference time = microseconds since creation; one timer.
    struct Host {
        start: Instant,
        deadline: AtomicU64,
        fired_at: Mutex<Vec<u64>>,
    }

    impl TimerHost for Host {
        fn now(&self) -> u64 {
            self.start.elapsed().as_micros() as u64
        }
        fn run_timers(&self, now: u64) -> u64 {
            let d = self.deadline.load(Ordering::SeqCst);
            if now >= d {
                self.fired_at.lock().unwrap().push(now);
                self.deadline.store(u64::MAX, Ordering::SeqCst);
                return u64::MAX;
            }
            d
        }
        fn wall_until(&self, now: u64, deadline: u64) -> Duration {
            Duration::from_micros(deadline - now)
        }
    }

    #[test]
    fn fires_at_the_deadline_and_stops() {
        let host = Arc::new(Host {
            start: Instant::now(),
            deadline: AtomicU64::new(u64::MAX),
            fired_at: Mutex::new(Vec::new()),
        });
        let t = TimerThread::new("test-timers".into());
        assert!(!t.started());
        let d = host.now() + 20_000;
        host.deadline.store(d, Ordering::SeqCst);
        t.request(&host, d);
        assert!(t.started());
        let begin = Instant::now();
        while host.fired_at.lock().unwrap().is_empty() && begin.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let fired = host.fired_at.lock().unwrap().clone();
        assert_eq!(fired.len(), 1);
        assert!(fired[0] >= d, "not early");
        t.stop();
        // A request after stop is ignored; nothing hangs.
        t.request(&host, 0);
    }
}
