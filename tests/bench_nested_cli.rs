//! `hvkvm bench nested-cpuid` as a user runs it: refused with the reason where the host cannot
//! nest (the development machines), both modes in one JSON object where it can (the emulated
//! Intel host, a real Intel host with kvm_intel nested=1).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HVKVM: &str = env!("CARGO_BIN_EXE_hvkvm");
/// Wall-clock bound of the child (inside the emulated Intel host a run takes seconds).
const LIMIT: Duration = Duration::from_secs(600);

fn probe_json() -> Option<serde_json::Value> {
    let out = Command::new(HVKVM)
        .args(["probe", "--json"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn verdict(doc: &serde_json::Value, name: &str) -> (bool, String) {
    let v = doc["verdicts"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("probe --json has a '{name}' verdict"));
    (
        v["available"].as_bool().expect("available is a bool"),
        v["reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// Runs hvkvm with `args`, killing it after [`LIMIT`]: (status code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let dir = std::env::temp_dir().join(format!("hvkvm-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(HVKVM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start hvkvm");
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("hvkvm {args:?} ran longer than {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p| std::fs::read_to_string(p).unwrap_or_default();
    let result = (status.code(), read(&out_path), read(&err_path));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[test]
fn nested_cpuid_reports_both_modes_or_says_why_not() {
    let Some(doc) = probe_json() else {
        eprintln!("SKIP: hvkvm probe failed (no usable /dev/kvm)");
        return;
    };
    let (nested, nested_reason) = verdict(&doc, "nested VMX");
    let (evmcs, evmcs_reason) = verdict(&doc, "nested eVMCS");
    let (code, stdout, stderr) = run(&["bench", "nested-cpuid", "--iterations", "20", "--json"]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if !(nested && evmcs) {
        assert_eq!(code, Some(1), "refused with status 1: {stderr}");
        let reason = if nested { evmcs_reason } else { nested_reason };
        assert!(
            stderr.contains("cannot run an L1 hypervisor"),
            "says what cannot run: {stderr}"
        );
        // The bench names the same host fact as probe (the first words of its reason).
        let key: String = reason
            .split_whitespace()
            .take(4)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            stderr.contains(&key),
            "names the reason '{reason}': {stderr}"
        );
        return;
    }
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(v["benchmark"], "nested-cpuid");
    for mode in ["vmcs", "evmcs"] {
        assert_eq!(v[mode]["round_trips"], 20, "{mode}: {stdout}");
        let median = v[mode]["median"].as_u64().expect("median");
        assert!(median > 0, "{mode}: {stdout}");
    }
    assert_eq!(v["vmcs"]["vmreads_per_exit"], 3.0, "{stdout}");
    assert_eq!(v["vmcs"]["vmwrites_per_exit"], 1.0, "{stdout}");
    assert_eq!(v["evmcs"]["vmreads_per_exit"], 0.0, "{stdout}");
    assert_eq!(v["evmcs"]["vmwrites_per_exit"], 0.0, "{stdout}");
    assert!(v["ratio"].as_f64().expect("ratio") > 0.0, "{stdout}");
}
