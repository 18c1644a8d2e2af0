//! The `hyperv_ipi_flush` suite (guest_tests::suites::hyperv_ipi_flush) on this machine's KVM; its kernel-backend
//! twin runs inside the emulated Intel host (suites::hyperv_kernel).

fn main() -> std::process::ExitCode {
    guest_tests::harness::run_local(guest_tests::suites::hyperv_ipi_flush::cases())
}
