//! QEMU as the peer, inside the emulated Intel host (booted with `intel-host.sh --qemu`): for
//! every profile, Debian's QEMU runs the `cpuid_dump` payload with `-cpu host,vmx=on,<export>`
//! (`hvkvm hv export --format qemu`, against this host's `hvkvm probe --json`), hvkvm runs the
//! same payload with `--profile` on the kernel backend, and the two dumps must differ exactly
//! where `hvkvm hv explain` says they do (its JSON `qemu.cpuid_differences`, documented in
//! docs/enlightenments.md, "CPUID compared with QEMU").
//!
//! So a case fails when QEMU refuses an export or does not run the guest to its end, when the
//! dumps differ somewhere explain does not list, and when a listed difference did not occur.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use hv_model::profiles::Profile;
use serde_json::Value;

use super::Case;
use crate::cpuid_compare::{self, Dump, Expected, Reg};
use crate::guest_binary;

/// The QEMU release the exports target: Debian 12's, the one the image carries.
const QEMU_VERSION: &str = "7.2";
/// What the payload writes to the exit port (hvkvm exits with it, QEMU's isa-debug-exit with
/// 2 * it + 1).
const PAYLOAD_EXIT: i32 = 0x21;
/// Limit for one guest run, in the Intel host's (slow) time.
const RUN_TIMEOUT_S: &str = "300";

/// The `qemu` suite (Intel host only): one case per profile.
pub fn cases() -> Vec<Case> {
    Profile::ALL
        .into_iter()
        .map(|p| {
            Case::new(format!("qemu/cpuid_same_as_qemu/{}", p.name()), move || {
                compare_profile(p.name())
            })
            .intel_host_only()
        })
        .collect()
}

fn compare_profile(profile: &str) {
    assert!(
        on_path("qemu-system-x86_64"),
        "qemu-system-x86_64 is not in this Intel host: boot it with scripts/intel-host.sh --qemu"
    );
    let probe = probe_file();
    let flags = export(profile, probe);
    let explain = explain(profile, probe);
    let cpu = format!("host,vmx=on,{flags}");
    assert_eq!(
        explain["qemu"]["cpu"].as_str(),
        Some(format!("host,{flags}").as_str()),
        "hv explain and hv export disagree on the QEMU -cpu value"
    );
    let expected = expected_differences(&explain);
    let qemu = run_qemu(&cpu);
    let hvkvm = run_hvkvm(profile);
    let actual = cpuid_compare::diff(&hvkvm, &qemu);
    println!(
        "CPUID of profile {profile}: hvkvm --profile {profile} --cpu host (kernel backend) vs \
         QEMU {QEMU_VERSION} -cpu {cpu}"
    );
    print!("{}", cpuid_compare::table(&actual, &expected));
    let problems = cpuid_compare::check(&actual, &expected);
    assert!(
        problems.is_empty(),
        "CPUID of profile {profile} under hvkvm and QEMU {QEMU_VERSION}:\n  {}",
        problems.join("\n  ")
    );
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `hvkvm probe --json` of this host, written once per session.
fn probe_file() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let path = std::env::temp_dir().join("hvkvm-qemu-peer-probe.json");
        let json = stdout_of(Command::new("hvkvm").args(["probe", "--json"]));
        std::fs::write(&path, json).expect("write the probe file");
        path
    })
}

fn export(profile: &str, probe: &Path) -> String {
    let out = output(
        Command::new("hvkvm")
            .args([
                "hv",
                "export",
                "--format",
                "qemu",
                "--qemu-version",
                QEMU_VERSION,
            ])
            .args(["--profile", profile, "--host"])
            .arg(probe),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hv export failed: {stderr}");
    // What the export left out for this QEMU goes to the log.
    eprint!("{stderr}");
    String::from_utf8(out.stdout)
        .expect("UTF-8 export")
        .trim()
        .to_string()
}

fn explain(profile: &str, probe: &Path) -> Value {
    let text = stdout_of(
        Command::new("hvkvm")
            .args(["hv", "explain", "--json", "--qemu-version", QEMU_VERSION])
            .args(["--profile", profile, "--host"])
            .arg(probe),
    );
    serde_json::from_str(&text).expect("hv explain --json")
}

fn expected_differences(explain: &Value) -> Vec<Expected> {
    let list = explain["qemu"]["cpuid_differences"]
        .as_array()
        .expect("hv explain --json has qemu.cpuid_differences");
    list.iter()
        .map(|d| Expected {
            leaf: d["leaf"].as_u64().expect("leaf") as u32,
            reg: Reg::from_name(d["register"].as_str().expect("register")).expect("register"),
            mask: d["mask"].as_u64().expect("mask") as u32,
            reason: d["reason"].as_str().expect("reason").to_string(),
        })
        .collect()
}

fn parse_dump(who: &str, console: &str) -> Dump {
    Dump::parse(console)
        .unwrap_or_else(|e| panic!("{who}: {e}; the guest's console was:\n{console}"))
}

fn run_qemu(cpu: &str) -> Dump {
    let serial = std::env::temp_dir().join("hvkvm-qemu-peer-serial.txt");
    let _ = std::fs::remove_file(&serial);
    let out = output(
        Command::new("timeout")
            .arg(RUN_TIMEOUT_S)
            .arg("qemu-system-x86_64")
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-machine", "pc", "-accel", "kvm", "-cpu", cpu])
            .args(["-m", "64", "-smp", "1"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=1"])
            .arg("-kernel")
            .arg(guest_binary("cpuid_dump")),
    );
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(PAYLOAD_EXIT * 2 + 1),
        "QEMU {QEMU_VERSION} with -cpu {cpu} did not run the guest to its end ({}): {}\n\
         console:\n{console}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_dump("QEMU", &console)
}

fn run_hvkvm(profile: &str) -> Dump {
    let out = output(
        Command::new("hvkvm")
            .args([
                "run",
                "--cpu",
                "host",
                "--backend",
                "kernel",
                "--profile",
                profile,
            ])
            .args(["--timeout", RUN_TIMEOUT_S, "--payload"])
            .arg(guest_binary("cpuid_dump")),
    );
    let console = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(PAYLOAD_EXIT),
        "hvkvm --profile {profile} did not run the guest to its end ({}): {}\nconsole:\n{console}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_dump("hvkvm", &console)
}
