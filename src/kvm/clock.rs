//! The host time stamp counter, which guest TSCs are derived from.

/// Reads the host TSC.
pub fn host_tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects and is available on every x86-64 CPU hvkvm runs on
    // (KVM requires a TSC); it is only `unsafe` because it is an intrinsic.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// CPU time the calling thread has used, in nanoseconds (CLOCK_THREAD_CPUTIME_ID). A vCPU
/// thread's own run time is what Hyper-V's VP_RUNTIME reports.
pub fn thread_cpu_time_ns() -> u64 {
    cpu_time_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time the whole process (every thread) has used, in nanoseconds
/// (CLOCK_PROCESS_CPUTIME_ID): what a guest run cost the host, independent of other load.
pub fn process_cpu_time_ns() -> u64 {
    cpu_time_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_time_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid, exclusively borrowed `ts`; the
    // clock id is a constant every Linux kernel supports.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Asks the kernel to wake the calling thread's timed sleeps as close to their deadline as it
/// can (timer slack 1 ns instead of the default 50 µs): for the thread that delivers guest
/// timer interrupts. Best effort; the default slack only makes them later.
pub fn set_precise_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an unsigned long by value and only changes the calling
    // thread's timer slack; no pointers are involved.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        log::debug!("PR_SET_TIMERSLACK: {}", std::io::Error::last_os_error());
    }
}
