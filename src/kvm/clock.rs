//! The host time stamp counter, which guest TSCs are derived from.

/// Reads the host TSC.
pub fn host_tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects and is available on every x86-64 CPU hvkvm runs on
    // (KVM requires a TSC); it is only `unsafe` because it is an intrinsic.
    unsafe { core::arch::x86_64::_rdtsc() }
}
