//! The run state shared by a VM's vCPU threads and the thread that waits for the VM.
//!
//! Besides running, paused and stopping, the pause protocol carries work for paused vCPUs: a
//! vCPU thread owns its `VcpuFd`, so whoever needs that vCPU's state (a snapshot) posts a
//! [`VcpuJob`] with [`VmControl::post_job`]; the parked thread runs it on its own thread and
//! answers through whatever channel the job carries. Only paused vCPUs take jobs, and the
//! exit path is unchanged: a running vCPU still checks one atomic per exit.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
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

/// Work a paused vCPU thread runs on its own thread with its vCPU fd and exit handler.
pub type VcpuJob =
    Box<dyn FnOnce(&mut kvm_ioctls::VcpuFd, &mut crate::vcpu::ExitHandler) + Send + 'static>;

/// Why a job could not be posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The VM is not paused.
    #[error("the VM is not paused (pause it first)")]
    NotPaused,
    /// No such vCPU thread.
    #[error("vCPU {0} has no thread")]
    NoVcpu(u32),
    /// A job for that vCPU is already waiting.
    #[error("vCPU {0} already has a request waiting")]
    Busy(u32),
}

struct Shared {
    state: RunState,
    reason: Option<StopReason>,
    syncs: Vec<SyncEvent>,
    prints: Vec<(u32, String)>,
    /// vCPU threads that have started.
    started_threads: usize,
    /// vCPU threads parked by a pause.
    parked_threads: usize,
    /// The VM's vCPU count, once known: a pause is complete only when that many are parked.
    vcpus: usize,
    /// One slot per vCPU for work its thread runs while parked.
    jobs: Vec<Option<VcpuJob>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("state", &self.state)
            .field("reason", &self.reason)
            .field("started_threads", &self.started_threads)
            .field("parked_threads", &self.parked_threads)
            .field(
                "jobs_waiting",
                &self.jobs.iter().filter(|j| j.is_some()).count(),
            )
            .finish_non_exhaustive()
    }
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
    /// Pause the VM at every ucall SYNC (the guest-test harness's snapshot mode).
    pause_on_sync: AtomicBool,
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
                vcpus: 0,
                jobs: Vec::new(),
            }),
            fast_state: AtomicU8::new(RunState::Running as u8),
            changed: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            pause_on_sync: AtomicBool::new(false),
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

    /// Sends the kick signal to vCPU `vcpu`'s thread (nothing if it has none yet, or no more).
    pub fn kick_vcpu(&self, vcpu: u32) {
        let threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, handle)) = threads.iter().find(|(v, _)| *v == vcpu) {
            if let Err(e) = handle.kill(kick_signal()) {
                if e.errno() != libc::ESRCH {
                    log::warn!("cannot kick vCPU {vcpu}: {e}");
                }
            }
        }
    }

    /// Whether the VM is stopping (a lock-free read).
    pub fn is_stopping(&self) -> bool {
        self.fast_state.load(Ordering::SeqCst) == RunState::Stopping as u8
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
            // Jobs nobody will run: dropping them tells their posters (their channels close).
            for job in s.jobs.iter_mut() {
                job.take();
            }
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

    /// Called by vCPU `vcpu`'s thread before KVM_RUN: blocks while paused, running the jobs
    /// posted for this vCPU through `serve`; returns the state to act on (Running or
    /// Stopping). The fast path (running) is one atomic load.
    pub fn wait_runnable(&self, vcpu: u32, serve: &mut dyn FnMut(VcpuJob)) -> RunState {
        if self.fast_state.load(Ordering::SeqCst) == RunState::Running as u8 {
            return RunState::Running;
        }
        let mut s = self.lock();
        if s.state == RunState::Paused {
            s.parked_threads += 1;
            self.changed.notify_all();
            while s.state == RunState::Paused {
                if let Some(job) = s.jobs.get_mut(vcpu as usize).and_then(Option::take) {
                    // Run it unlocked: it may take a while (a snapshot reads all the state).
                    drop(s);
                    serve(job);
                    s = self.lock();
                    continue;
                }
                s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            s.parked_threads -= 1;
        }
        s.state
    }

    /// Posts `job` for vCPU `vcpu`, which runs it on its own thread once it is parked (at
    /// once if it already is). The VM must be paused; the job's own channel carries its
    /// answer, and is closed without one if the VM stops first.
    pub fn post_job(&self, vcpu: u32, job: VcpuJob) -> Result<(), JobError> {
        let mut s = self.lock();
        if s.state != RunState::Paused {
            return Err(JobError::NotPaused);
        }
        let known = s.started_threads.max(s.vcpus);
        if s.jobs.len() < known {
            s.jobs.resize_with(known, || None);
        }
        let slot = s
            .jobs
            .get_mut(vcpu as usize)
            .ok_or(JobError::NoVcpu(vcpu))?;
        if slot.is_some() {
            return Err(JobError::Busy(vcpu));
        }
        *slot = Some(job);
        drop(s);
        self.changed.notify_all();
        Ok(())
    }

    /// Sets the VM's vCPU count (before its threads start): pauses then wait for every vCPU,
    /// including threads that have not started yet, and each vCPU has a job slot.
    pub fn set_vcpu_count(&self, vcpus: u32) {
        let mut s = self.lock();
        s.vcpus = vcpus as usize;
        s.jobs.resize_with(vcpus as usize, || None);
    }

    /// Called once by each vCPU thread as it starts.
    pub fn thread_started(&self) {
        self.lock().started_threads += 1;
    }

    /// Waits until every started vCPU thread is parked by a pause, up to `timeout`.
    pub fn wait_paused(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.parked_threads < s.started_threads.max(s.vcpus) && s.state == RunState::Paused {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.parked_threads == s.started_threads.max(s.vcpus)
    }

    /// Records a ucall SYNC (and pauses the VM when asked to pause at every SYNC).
    pub fn record_sync(&self, event: SyncEvent) {
        self.lock().syncs.push(event);
        if self.pause_on_sync.load(Ordering::Relaxed) {
            self.pause();
        }
    }

    /// How many ucall SYNCs were recorded (and not yet taken by [`VmControl::take_reports`]).
    pub fn sync_count(&self) -> usize {
        self.lock().syncs.len()
    }

    /// Makes every ucall SYNC pause the VM (the vCPU that made it completes the ucall first).
    pub fn set_pause_on_sync(&self, on: bool) {
        self.pause_on_sync.store(on, Ordering::Relaxed);
    }

    /// Waits while the VM runs, up to `timeout`; returns the state then.
    pub fn wait_while_running(&self, timeout: Option<Duration>) -> RunState {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut s = self.lock();
        while s.state == RunState::Running {
            s = match deadline {
                None => self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let Some(left) = d.checked_duration_since(Instant::now()) else {
                        break;
                    };
                    self.changed
                        .wait_timeout(s, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        s.state
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
            std::thread::spawn(move || c.wait_runnable(0, &mut |_| {}))
        };
        assert!(c.wait_paused(Duration::from_secs(5)));
        c.resume();
        assert_eq!(waiter.join().unwrap(), RunState::Running);
        c.pause();
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || c.wait_runnable(0, &mut |_| {}))
        };
        c.stop(StopReason::GuestDone);
        assert_eq!(waiter.join().unwrap(), RunState::Stopping);
    }

    #[test]
    fn a_paused_vcpu_runs_posted_jobs_and_stays_parked() {
        let c = Arc::new(VmControl::default());
        c.thread_started();
        assert_eq!(
            c.post_job(0, Box::new(|_, _| {})),
            Err(JobError::NotPaused),
            "a running VM takes no jobs"
        );
        c.pause();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut served = 0;
                let state = c.wait_runnable(0, &mut |job| {
                    served += 1;
                    drop(job);
                    tx.send(served).unwrap();
                });
                (state, served)
            })
        };
        assert!(c.wait_paused(Duration::from_secs(5)));
        c.post_job(0, Box::new(|_, _| {})).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
        assert!(
            c.wait_paused(Duration::from_secs(5)),
            "still parked after the job"
        );
        assert_eq!(c.post_job(3, Box::new(|_, _| {})), Err(JobError::NoVcpu(3)));
        c.post_job(0, Box::new(|_, _| {})).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(2));
        c.resume();
        assert_eq!(waiter.join().unwrap(), (RunState::Running, 2));
    }

    #[test]
    fn stopping_drops_waiting_jobs() {
        let c = VmControl::default();
        c.thread_started();
        c.pause();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        c.post_job(0, Box::new(move |_, _| drop(tx))).unwrap();
        c.stop(StopReason::PowerOff);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
