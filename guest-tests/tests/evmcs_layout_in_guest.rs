//! The eVMCS-layout guest case (guest_tests::suites::evmcs) on this machine's KVM.

fn main() -> std::process::ExitCode {
    guest_tests::harness::run_local(guest_tests::suites::evmcs::cases())
}
