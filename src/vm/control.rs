//! The run state shared by a VM's vCPU threads and the thread that waits for the VM.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::Killable;

use super::outcome::{StopReason, SyncEvent};
use crate::kvm::kick::kick_signal;

/// The VM-wide run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RunState {
    /// vCPUs run guest code.
    Running,
    /// vCPUs wait outside KVM_RUN until resumed.
    Paused,
    /// vCPUs leave their loops.
    Stopping,
}

#[derive(Debug)]
struct Shared {
    state: RunState,
    reason: Option<StopReason>,
    syncs: Vec<SyncEvent>,
    prints: Vec<(u32, String)>,
    /// vCPU threads that have started.
    started_threads: usize,
    /// vCPU threads parked by a pause.
    parked_threads: usize,
}

/// Shared control block of one VM.
#[derive(Debug)]
pub struct VmControl {
    shared: Mutex<Shared>,
    /// A copy of `shared.state`, written under the lock, so that a running vCPU can check it
    /// on every exit without taking the lock (the exit path is hot; the kick protocol makes
    /// a stale read harmless: a vCPU that misses a change is kicked out of KVM_RUN).
    fast_state: AtomicU8,
    changed: Condvar,
    threads: Mutex<Vec<(u32, Arc<JoinHandle<()>>)>>,
}

impl Default for VmControl {
    fn default() -> Self {
        VmControl {
            shared: Mutex::new(Shared {
                state: RunState::Running,
                reason: None,
                syncs: Vec::new(),
                prints: Vec::new(),
                started_threads: 0,
                parked_threads: 0,
            }),
            fast_state: AtomicU8::new(RunState::Running as u8),
            changed: Condvar::new(),
            threads: Mutex::new(Vec::new()),
        }
    }
}

impl VmControl {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state.
    pub fn state(&self) -> RunState {
        self.lock().state
    }

    fn set_state(&self, s: &mut Shared, state: RunState) {
        s.state = state;
        self.fast_state.store(state as u8, Ordering::SeqCst);
    }

    /// Registers a vCPU thread so it can be kicked. A thread registered after the VM began
    /// stopping (the registering thread can be starved while vCPUs run) is kicked at once, so
    /// it cannot miss the stop.
    pub fn add_thread(&self, vcpu: u32, handle: Arc<JoinHandle<()>>) {
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        threads.push((vcpu, handle));
        drop(threads);
        if self.state() != RunState::Running {
            self.kick_all();
        }
    }

    /// Sends the kick signal to every vCPU thread.
    pub fn kick_all(&self) {
        for (vcpu, handle) in self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if let Err(e) = handle.kill(kick_signal()) {
                // ESRCH: the thread has already exited; nothing to kick.
                if e.errno() != libc::ESRCH {
                    log::warn!("cannot kick vCPU {vcpu}: {e}");
                }
            }
        }
    }

    /// Records `reason` (if none yet) and stops every vCPU.
    pub fn stop(&self, reason: StopReason) {
        {
            let mut s = self.lock();
            if s.reason.is_none() {
                log::debug!("VM stopping: {reason}");
                s.reason = Some(reason);
            }
            self.set_state(&mut s, RunState::Stopping);
        }
        self.changed.notify_all();
        self.kick_all();
    }

    /// Pauses every vCPU (they finish their current exit, then wait).
    pub fn pause(&self) {
        {
            let mut s = self.lock();
            if s.state == RunState::Running {
                self.set_state(&mut s, RunState::Paused);
            }
        }
        self.changed.notify_all();
        self.kick_all();
    }

    /// Resumes paused vCPUs.
    pub fn resume(&self) {
        {
            let mut s = self.lock();
            if s.state == RunState::Paused {
                self.set_state(&mut s, RunState::Running);
            }
        }
        self.changed.notify_all();
    }

    /// Whether a pause is asked for (a lock-free check for vCPU threads).
    pub fn pausing(&self) -> bool {
        self.fast_state.load(Ordering::SeqCst) == RunState::Paused as u8
    }

    /// Called by a vCPU thread before KVM_RUN: blocks while paused, returns the state to act
    /// on (Running or Stopping).
    pub fn wait_runnable(&self) -> RunState {
        if self.fast_state.load(Ordering::SeqCst) == RunState::Running as u8 {
            return RunState::Running;
        }
        let mut s = self.lock();
        if s.state == RunState::Paused {
            s.parked_threads += 1;
            self.changed.notify_all();
            while s.state == RunState::Paused {
                s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            s.parked_threads -= 1;
        }
        s.state
    }

    /// Called once by each vCPU thread as it starts.
    pub fn thread_started(&self) {
        self.lock().started_threads += 1;
    }

    /// Waits until every started vCPU thread is parked by a pause, up to `timeout`.
    pub fn wait_paused(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.parked_threads < s.started_threads && s.state == RunState::Paused {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.parked_threads == s.started_threads
    }

    /// Records a ucall SYNC.
    pub fn record_sync(&self, event: SyncEvent) {
        self.lock().syncs.push(event);
    }

    /// Records a ucall PRINT.
    pub fn record_print(&self, vcpu: u32, text: String) {
        self.lock().prints.push((vcpu, text));
    }

    /// Waits until the VM is stopping or `timeout` passes; returns the reason if stopping.
    pub fn wait_for_stop(&self, timeout: Option<Duration>) -> Option<StopReason> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut s = self.lock();
        while s.state != RunState::Stopping {
            s = match deadline {
                None => self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.changed
                        .wait_timeout(s, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        s.reason.clone()
    }

    /// Takes the recorded syncs and prints.
    pub fn take_reports(&self) -> (Vec<SyncEvent>, Vec<(u32, String)>) {
        let mut s = self.lock();
        (std::mem::take(&mut s.syncs), std::mem::take(&mut s.prints))
    }

    /// Joins vCPU threads until `deadline`; returns the vCPUs whose threads are still running.
    pub fn join_threads(&self, grace: Duration) -> Vec<u32> {
        let deadline = Instant::now() + grace;
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let mut stuck = Vec::new();
        for (vcpu, handle) in threads {
            let mut next_kick = Instant::now();
            while !handle.is_finished() && Instant::now() < deadline {
                // Kicks are idempotent; repeating them covers a thread that was between its
                // state check and KVM_RUN in a way no single signal could reach.
                if Instant::now() >= next_kick {
                    let _ = handle.kill(kick_signal());
                    next_kick = Instant::now() + Duration::from_millis(50);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            if !handle.is_finished() {
                stuck.push(vcpu);
            }
        }
        stuck
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_reason_wins() {
        let c = VmControl::default();
        c.stop(StopReason::PowerOff);
        c.stop(StopReason::Reset);
        assert_eq!(
            c.wait_for_stop(Some(Duration::ZERO)),
            Some(StopReason::PowerOff)
        );
        assert_eq!(c.state(), RunState::Stopping);
    }

    #[test]
    fn wait_for_stop_times_out() {
        let c = VmControl::default();
        assert_eq!(c.wait_for_stop(Some(Duration::from_millis(10))), None);
    }

    #[test]
    fn pause_blocks_until_resume_and_stop_overrides_pause() {
        let c = Arc::new(VmControl::default());
        c.thread_started();
        c.pause();
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || c.wait_runnable())
        };
        assert!(c.wait_paused(Duration::from_secs(5)));
        c.resume();
        assert_eq!(waiter.join().unwrap(), RunState::Running);
        c.pause();
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || c.wait_runnable())
        };
        c.stop(StopReason::GuestDone);
        assert_eq!(waiter.join().unwrap(), RunState::Stopping);
    }
}
