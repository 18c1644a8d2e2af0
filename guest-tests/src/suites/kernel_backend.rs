//! The kernel backend (KVM's in-kernel Hyper-V), where only the emulated Intel host has it:
//! `hvkvm run` picks it by itself, crash reports go through `KVM_SYSTEM_EVENT_CRASH`, and
//! Debian's kernel with `--profile linux` runs its Hyper-V code on it, on two vCPUs (in the
//! two-CPU emulated host).

use std::process::Command;

use hvkvm::hyperv::{BackendChoice, CrashAction};
use hvkvm::vm::StopReason;

use super::{suite_cases, Case};
use crate::l1::L1;
use crate::GuestTest;

/// The `kernel_backend` suite (Intel host only).
pub fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = suite_cases!("kernel_backend";
        hv_flags_without_backend_use_the_kernel_backend,
        a_guest_crash_is_logged_with_its_five_parameters,
    )
    .into_iter()
    .map(Case::intel_host_only)
    .collect();
    cases.extend(
        suite_cases!("kernel_backend"; linux_on_2_vcpus_with_profile_linux_runs_its_hyperv_code)
            .into_iter()
            .map(Case::intel_host_two_cpus_only),
    );
    cases
}

fn hv_flags_without_backend_use_the_kernel_backend() {
    let guest = std::env::var("HVKVM_GUEST_DIR").expect("HVKVM_GUEST_DIR (set in the Intel host)");
    let out = Command::new("hvkvm")
        .args(["-v", "run", "--timeout", "120", "--hv-report", "--payload"])
        .arg(format!("{guest}/exit_status"))
        .args(["--hv", "hv-relaxed,hv-vpindex,hv-time,hv-crash"])
        .output()
        .expect("run hvkvm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    assert_eq!(out.status.code(), Some(42), "{stderr}");
    assert!(
        stderr.contains("Hyper-V backend: kernel"),
        "auto did not pick the kernel backend: {stderr}"
    );
    assert!(
        stderr.contains("Hyper-V usage report (kernel backend)"),
        "the report does not say which backend served the guest: {stderr}"
    );
}

fn a_guest_crash_is_logged_with_its_five_parameters() {
    let run = GuestTest::new("hv_crash")
        .hyperv_on(BackendChoice::Kernel, "hv-crash", CrashAction::Log)
        .run();
    run.expect_done();
    let [fault_mask, ctl, ctl_faulted, ..] = run.sync(1).values;
    assert_eq!((fault_mask, ctl_faulted), (0, 0));
    assert_eq!(ctl, 1 << 63, "the host set CRASH_CTL to CRASH_NOTIFY");
    let report = run.outcome.hyperv.as_ref().expect("a Hyper-V report");
    assert_eq!(report.backend, "kernel");
    assert_eq!(report.crashes, vec![[0x11, 0x22, 0x33, 0x44, 0x55]]);
    let run = GuestTest::new("hv_crash")
        .hyperv_on(BackendChoice::Kernel, "hv-crash", CrashAction::Exit)
        .run();
    assert_eq!(run.reason(), &StopReason::GuestCrash { vcpu: 0 });
}

fn linux_on_2_vcpus_with_profile_linux_runs_its_hyperv_code() {
    let script = "echo \"HVKVM-CPUS: $(grep -c ^processor /proc/cpuinfo)\"; \
                  echo \"HVKVM-CLOCKSOURCE: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)\"; \
                  for d in /sys/devices/system/clockevents/clockevent*/current_device; do \
                  echo \"HVKVM-CLOCKEVENT: $(cat $d)\"; done; \
                  dmesg | grep -i -E 'hyper-v|hypervisor detected'";
    // Two vCPUs, so that Linux sends IPIs and remote flushes at all; it runs in the host with
    // two emulated CPUs (on one, an overcommitted 2-vCPU L1 did not boot within 10 minutes).
    let run = L1::default()
        .cpus(2)
        .hvkvm_arg("--profile linux")
        .hvkvm_arg("--hv-report")
        .run(&["sh", "-c", script]);
    let lines: Vec<&str> = run.console.lines().collect();
    let tail = lines[lines.len().saturating_sub(60)..].join("\n");
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert_eq!(run.status, 0, "the command in L1 failed:\n{tail}");
    assert!(
        has("HVKVM-CPUS: 2"),
        "Linux did not bring up both vCPUs:\n{tail}"
    );
    assert!(has("Hypervisor detected: Microsoft Hyper-V"), "{tail}");
    assert!(
        has("HVKVM-CLOCKSOURCE: hyperv_clocksource_tsc_page"),
        "not on the TSC page:\n{tail}"
    );
    let hyperv_clockevents = lines
        .iter()
        .filter(|l| l.contains("HVKVM-CLOCKEVENT: Hyper-V clockevent"))
        .count();
    assert_eq!(
        hyperv_clockevents, 2,
        "not both vCPUs on the Hyper-V stimer clockevent:\n{tail}"
    );
    assert!(has("Using IPI hypercalls"), "no IPI hypercalls:\n{tail}");
    assert!(
        has("Using hypercall for remote TLB flush"),
        "no TLB-flush hypercall:\n{tail}"
    );
    assert!(has("Hyper-V usage report (kernel backend)"), "{tail}");
}
