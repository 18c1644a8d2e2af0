//! The Hyper-V user-backend conformance tables (guest_tests::suites::hyperv_user) on this
//! machine's KVM, one test per matrix row. The same cases run inside the emulated Intel host in
//! tests/intel_host.rs.

fn main() -> std::process::ExitCode {
    guest_tests::harness::run_local(guest_tests::suites::hyperv_user::cases())
}
