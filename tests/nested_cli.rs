//! `hvkvm run --nested on` and `hvkvm probe` on the question "can a guest get VMX here?".
//!
//! Where the host cannot nest (AMD, kvm_pvm, kvm_intel nested=0), `--nested on` must be refused
//! with the reason and a non-zero status before any VM exists. Where it can, this file has
//! nothing to check (the nested tests run inside the emulated Intel host) and prints SKIP.

use std::process::Command;

const HVKVM: &str = env!("CARGO_BIN_EXE_hvkvm");

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

fn nested_verdict(doc: &serde_json::Value) -> (bool, String) {
    let v = doc["verdicts"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == "nested VMX"))
        .expect("probe --json has a 'nested VMX' verdict");
    (
        v["available"].as_bool().expect("available is a bool"),
        v["reason"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn nested_on_is_refused_with_the_reason_where_the_host_cannot_nest() {
    let Some(doc) = probe_json() else {
        eprintln!("SKIP: hvkvm probe failed (no usable /dev/kvm)");
        return;
    };
    let (available, reason) = nested_verdict(&doc);
    if available {
        eprintln!("SKIP: this host can nest ({reason}); the nested tests run on it instead");
        return;
    }
    assert!(!reason.is_empty());
    // A real payload, so that the only thing wrong with the command line is `--nested on`.
    let payload = env!("HVKVM_DEMO_ELF");
    let out = Command::new(HVKVM)
        .args([
            "run",
            "--nested",
            "on",
            "--cpu",
            "host",
            "--timeout",
            "5",
            "--payload",
        ])
        .arg(payload)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(out.status.code().is_some(), "killed by a signal: {stderr}");
    assert!(stderr.contains("--nested on"), "names the option: {stderr}");
    assert!(
        stderr.contains(&reason),
        "names the reason '{reason}': {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
