//! The foundation suite (guest_tests::suites::foundation) on this machine's KVM: boot contract,
//! serial, test-exit, SMP start, CPUID, MSR exits, faults, timeouts, pause/resume. The same
//! cases run inside the emulated Intel host in tests/intel_host.rs.

fn main() -> std::process::ExitCode {
    guest_tests::harness::run_local(guest_tests::suites::foundation::cases())
}
