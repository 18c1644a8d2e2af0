//! Cases only the emulated Intel host can run: what `hvkvm probe` finds there, and a Linux L1
//! guest with VMX that runs hvkvm itself (L2).

use std::process::Command;

use serde_json::Value;

use super::{suite_cases, Case};
use crate::l1::L1;

/// The `vmx` suite (Intel host only).
pub fn cases() -> Vec<Case> {
    suite_cases!("vmx";
        probe_finds_vmx_nesting_and_in_kernel_hyperv,
        linux_l1_gets_vmx_and_runs_an_l2_payload,
    )
    .into_iter()
    .map(Case::intel_host_only)
    .collect()
}

fn hvkvm(args: &[&str]) -> String {
    let out = Command::new("hvkvm")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run hvkvm {args:?}: {e}"));
    assert!(
        out.status.success(),
        "hvkvm {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn cap(probe: &Value, list: &str, name: &str) -> i64 {
    probe[list]
        .as_array()
        .and_then(|caps| caps.iter().find(|c| c["name"] == name))
        .and_then(|c| c["value"].as_i64())
        .unwrap_or_else(|| panic!("probe has no {list} entry {name}"))
}

fn probe_finds_vmx_nesting_and_in_kernel_hyperv() {
    // The text goes to the console, so the session's log records what this host offers.
    print!("{}", hvkvm(&["probe"]));
    let probe: Value = serde_json::from_str(&hvkvm(&["probe", "--json"])).expect("probe JSON");
    assert_eq!(probe["kvm_module"], "kvm_intel");
    assert_eq!(probe["cpu_vendor"], "intel");
    assert_eq!(probe["vmx"], true);
    assert_eq!(
        probe["nested_param"], true,
        "kvm-intel loaded with nested=1"
    );
    for c in probe["hyperv_caps"].as_array().expect("hyperv_caps") {
        let name = c["name"].as_str().unwrap_or_default();
        // KVM offers direct TLB flush only when it runs on Hyper-V itself.
        if name != "KVM_CAP_HYPERV_DIRECT_TLBFLUSH" {
            assert!(c["value"].as_i64() > Some(0), "{name} is 0 on a VMX host");
        }
    }
    assert!(cap(&probe, "platform_caps", "KVM_CAP_NESTED_STATE") > 0);
    assert!(cap(&probe, "platform_caps", "KVM_CAP_TSC_CONTROL") > 0);
    for verdict in ["kernel backend", "nested eVMCS"] {
        let v = probe["verdicts"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == verdict))
            .unwrap_or_else(|| panic!("no verdict {verdict}"));
        assert_eq!(v["available"], true, "{verdict}: {}", v["reason"]);
    }
}

fn linux_l1_gets_vmx_and_runs_an_l2_payload() {
    let script = "test -c /dev/kvm || { echo 'no /dev/kvm in L1'; exit 10; }; \
                  hvkvm probe || exit 11; \
                  hvkvm run --payload \"$HVKVM_GUEST_DIR/exit_status\" --timeout 600; \
                  echo \"HVKVM-L2-STATUS: $?\"";
    let run = L1::default().run(&["sh", "-c", script]);
    assert_eq!(run.status, 0, "the command in L1 failed");
    assert!(
        run.has_line("KVM module", "kvm_intel"),
        "L1 has no kvm_intel"
    );
    assert!(run.has_line("VMX / SVM", "yes /"), "L1 does not see VMX");
    assert!(
        run.has_line("HVKVM-L2-STATUS:", " 42"),
        "the L2 payload did not exit with its status 42"
    );
}
