//! Black-box tests of the `hvkvm` binary, written from README.md ("Payload contract", "Exit
//! status", "Running things") and `--help` only.
//!
//! Every child process is bounded twice: hvkvm gets `--timeout` where the command has one, and
//! `run_bounded` kills the child after `OUTER_LIMIT` regardless. Tests that need KVM print
//! `SKIP: <reason>` and return when `/dev/kvm` cannot be opened read/write; tests that need to
//! assemble a payload do the same when `cc` is missing.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Wall-clock limit for any child process, independent of hvkvm's own `--timeout`.
const OUTER_LIMIT: Duration = Duration::from_secs(60);
/// `--timeout` given to every `hvkvm run` / `hvkvm demo` in these tests.
const VM_TIMEOUT: &str = "30";
/// Status the contract payload exits with when every check passed.
const EXIT_OK: i32 = 0x2a;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const HVKVM: &str = env!("CARGO_BIN_EXE_hvkvm");

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn describe(&self) -> String {
        format!(
            "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// hvkvm must never panic, whatever it is given.
    fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked") && !self.stdout.contains("panicked"),
            "hvkvm panicked:\n{}",
            self.describe()
        );
        // A panic in Rust exits with 101; a signal has no code at all.
        assert!(
            self.code().is_some(),
            "hvkvm was killed by a signal:\n{}",
            self.describe()
        );
        assert_ne!(
            self.code(),
            Some(101),
            "hvkvm exited like a panic:\n{}",
            self.describe()
        );
    }
}

/// Runs `args` under hvkvm with stdout/stderr captured; kills it after `OUTER_LIMIT`.
fn run_hvkvm<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let mut cmd = Command::new(HVKVM);
    cmd.args(args);
    run_bounded(cmd)
}

fn run_bounded(mut cmd: Command) -> Run {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    // Drain both pipes on their own threads so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().expect("stdout piped");
    let mut err_pipe = child.stderr.take().expect("stderr piped");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > OUTER_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout =
                    String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
                let stderr =
                    String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
                panic!(
                    "{desc} still running after {OUTER_LIMIT:?}; killed it\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
                );
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("waiting for {desc}: {e}");
            }
        }
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Run {
        status,
        stdout,
        stderr,
    }
}

/// `Err(reason)` when `/dev/kvm` cannot be opened read/write (README "Host requirements").
fn kvm_usable() -> Result<(), String> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm is not usable: {e}"))
}

/// Skips (`SKIP: …`) without a usable /dev/kvm, or fails under HVKVM_REQUIRE_KVM=1
/// (scripts/test.sh), so CI cannot pass by skipping.
macro_rules! require_kvm {
    () => {
        if let Err(reason) = kvm_usable() {
            if std::env::var("HVKVM_REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("{reason} (HVKVM_REQUIRE_KVM=1 makes this a failure)");
            }
            println!("SKIP: {reason}");
            return;
        }
    };
}

/// A unique path in the temp directory; removed when dropped.
struct TempPath(PathBuf);

impl TempPath {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        TempPath(std::env::temp_dir().join(format!(
            "hvkvm-cli-{}-{n}-{nanos}-{tag}",
            std::process::id()
        )))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(MANIFEST_DIR).join(rel)
}

/// Assembles and links `source` with `script` into a static ELF in the temp directory.
/// `Err(reason)` when there is no C compiler; panics when the build itself fails.
fn link_payload(source: &Path, script: &Path, tag: &str) -> Result<TempPath, String> {
    let out = TempPath::new(&format!("{tag}.elf"));
    let mut cc = Command::new("cc");
    cc.args([
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-T",
    ])
    .arg(script)
    .arg(source)
    .arg("-o")
    .arg(out.path());
    let probe = Command::new("cc")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if probe.is_err() {
        return Err("no `cc` to assemble the test payload".into());
    }
    let run = run_bounded(cc);
    assert!(
        run.status.success(),
        "building {} with {} failed:\n{}",
        source.display(),
        script.display(),
        run.describe()
    );
    Ok(out)
}

/// tests/payloads/contract_check.S linked at 2 MiB with its own linker script.
fn contract_payload() -> Result<TempPath, String> {
    link_payload(
        &repo_path("tests/payloads/contract_check.S"),
        &repo_path("tests/payloads/contract_check.ld"),
        "contract_check",
    )
}

/// A throw-away payload from assembler text (AT&T syntax), linked at 2 MiB.
fn tiny_payload(tag: &str, asm: &str) -> Result<(TempPath, TempPath), String> {
    let src = TempPath::new(&format!("{tag}.S"));
    fs::write(src.path(), asm).expect("write temp payload source");
    let elf = link_payload(
        src.path(),
        &repo_path("tests/payloads/contract_check.ld"),
        tag,
    )?;
    Ok((src, elf))
}

macro_rules! require_payload {
    ($e:expr) => {
        match $e {
            Ok(p) => p,
            Err(reason) => {
                println!("SKIP: {reason}");
                return;
            }
        }
    };
}

fn ok_line(n: usize) -> String {
    format!("contract_check: {n} vCPUs OK\n")
}

fn run_contract(cpus: usize) {
    require_kvm!();
    let elf = require_payload!(contract_payload());
    let mut cmd = Command::new(HVKVM);
    cmd.arg("run").arg("--payload").arg(elf.path()).args([
        "--cpus",
        &cpus.to_string(),
        "--timeout",
        VM_TIMEOUT,
    ]);
    let run = run_bounded(cmd);
    run.assert_no_panic();
    assert_eq!(
        run.code(),
        Some(EXIT_OK),
        "contract_check failed on {cpus} vCPU(s):\n{}",
        run.describe()
    );
    assert!(
        run.stdout.contains(&ok_line(cpus)),
        "stdout lacks {:?}:\n{}",
        ok_line(cpus),
        run.describe()
    );
    assert!(!run.stdout.contains("FAIL"), "{}", run.describe());
}

#[test]
fn contract_payload_one_vcpu() {
    run_contract(1);
}

#[test]
fn contract_payload_three_vcpus() {
    run_contract(3);
}

#[test]
fn serial_file_receives_the_guest_output() {
    require_kvm!();
    let elf = require_payload!(contract_payload());
    let serial = TempPath::new("serial.txt");
    let mut cmd = Command::new(HVKVM);
    cmd.arg("run")
        .arg("--payload")
        .arg(elf.path())
        .args(["--cpus", "2", "--timeout", VM_TIMEOUT, "--serial-file"])
        .arg(serial.path());
    let run = run_bounded(cmd);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(EXIT_OK), "{}", run.describe());
    let text = fs::read_to_string(serial.path()).unwrap_or_else(|e| {
        panic!(
            "--serial-file {} not written: {e}\n{}",
            serial.path().display(),
            run.describe()
        )
    });
    assert!(text.contains(&ok_line(2)), "serial file holds {text:?}");
    assert!(
        !run.stdout.contains("contract_check"),
        "guest output went to stdout despite --serial-file:\n{}",
        run.describe()
    );
}

#[test]
fn outcome_json_reports_the_test_exit() {
    require_kvm!();
    let elf = require_payload!(contract_payload());
    let json_path = TempPath::new("outcome.json");
    let mut cmd = Command::new(HVKVM);
    cmd.arg("run")
        .arg("--payload")
        .arg(elf.path())
        .args(["--cpus", "2", "--timeout", VM_TIMEOUT, "--outcome-json"])
        .arg(json_path.path());
    let run = run_bounded(cmd);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(EXIT_OK), "{}", run.describe());
    let text = fs::read_to_string(json_path.path()).expect("--outcome-json file written");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    // README: "stop reason, exit counts, ucall reports".
    let reason = &v["reason"];
    assert_eq!(reason["kind"], "test_exit", "reason in {text}");
    assert_eq!(reason["status"], EXIT_OK, "reason in {text}");
    let stats = v["vcpu_stats"]
        .as_array()
        .unwrap_or_else(|| panic!("no per-vCPU exit counts in {text}"));
    assert_eq!(stats.len(), 2, "one exit-count record per vCPU in {text}");
    assert!(
        stats.iter().all(|s| s["exits"].is_u64()),
        "exit counts in {text}"
    );
    // vCPU 0 printed a line and wrote port 0xf4: it must have had port-I/O exits.
    assert!(stats[0]["exits"].as_u64().unwrap() > 0, "{text}");
}

#[test]
fn timeout_expires_with_status_124() {
    require_kvm!();
    let (_src, elf) = require_payload!(tiny_payload(
        "spin",
        ".globl _start\n.text\n_start:\n\tjmp _start\n.section .note.GNU-stack,\"\",@progbits\n"
    ));
    let mut cmd = Command::new(HVKVM);
    cmd.arg("run")
        .arg("--payload")
        .arg(elf.path())
        .args(["--timeout", "1"]);
    let start = Instant::now();
    let run = run_bounded(cmd);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(124), "{}", run.describe());
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "--timeout 1 took {:?}",
        start.elapsed()
    );
}

#[test]
fn exception_without_idt_is_a_triple_fault_121() {
    require_kvm!();
    let (_src, elf) = require_payload!(tiny_payload(
        "ud2",
        ".globl _start\n.text\n_start:\n\tud2\n.section .note.GNU-stack,\"\",@progbits\n"
    ));
    let mut cmd = Command::new(HVKVM);
    cmd.arg("run")
        .arg("--payload")
        .arg(elf.path())
        .args(["--timeout", VM_TIMEOUT]);
    let run = run_bounded(cmd);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(121), "{}", run.describe());
}

// ---- bad inputs: a clear error, a non-zero status, never a panic ----

/// Documented statuses for hvkvm's own errors: 1 (could not build/run the VM), 2 (bad command
/// line).
fn assert_clean_error(run: &Run, must_mention: &[&str]) {
    run.assert_no_panic();
    assert!(
        matches!(run.code(), Some(1) | Some(2)),
        "expected exit status 1 or 2:\n{}",
        run.describe()
    );
    let lower = run.stderr.to_lowercase();
    for word in must_mention {
        assert!(
            lower.contains(&word.to_lowercase()),
            "stderr does not mention {word:?}:\n{}",
            run.describe()
        );
    }
}

#[test]
fn missing_payload_file_is_named() {
    let missing = TempPath::new("does-not-exist.elf");
    let mut cmd = Command::new(HVKVM);
    cmd.arg("run")
        .arg("--payload")
        .arg(missing.path())
        .args(["--timeout", "5"]);
    let run = run_bounded(cmd);
    if kvm_usable().is_ok() {
        assert_clean_error(&run, &[&missing.path().display().to_string()]);
    } else {
        // Without KVM, hvkvm may legitimately complain about /dev/kvm first.
        assert_clean_error(&run, &[]);
    }
}

#[test]
fn non_elf_payload_is_refused() {
    let junk = TempPath::new("not-an-elf.bin");
    fs::write(junk.path(), b"this is not an ELF file\n").unwrap();
    let mut cmd = Command::new(HVKVM);
    cmd.arg("run")
        .arg("--payload")
        .arg(junk.path())
        .args(["--timeout", "5"]);
    let run = run_bounded(cmd);
    if kvm_usable().is_ok() {
        assert_clean_error(&run, &["ELF"]);
    } else {
        assert_clean_error(&run, &[]);
    }
}

#[test]
fn payload_below_one_mib_is_refused_naming_the_segment() {
    let script = TempPath::new("low.ld");
    let ld = fs::read_to_string(repo_path("tests/payloads/contract_check.ld")).unwrap();
    assert!(
        ld.contains("0x200000"),
        "contract_check.ld no longer links at 0x200000"
    );
    fs::write(script.path(), ld.replace("0x200000", "0x1000")).unwrap();
    let elf = require_payload!(link_payload(
        &repo_path("tests/payloads/contract_check.S"),
        script.path(),
        "low"
    ));
    let mut cmd = Command::new(HVKVM);
    cmd.arg("run")
        .arg("--payload")
        .arg(elf.path())
        .args(["--timeout", "5"]);
    let run = run_bounded(cmd);
    if kvm_usable().is_err() {
        assert_clean_error(&run, &[]);
        return;
    }
    // README: "segments elsewhere are refused with an error naming the segment".
    assert_clean_error(&run, &["segment", "0x1000"]);
    assert!(
        run.stderr.contains("1 MiB") || run.stderr.contains("0x100000"),
        "the error should say where segments must lie:\n{}",
        run.describe()
    );
}

/// A bad option value with an otherwise valid payload, so the option is what gets refused.
/// hvkvm may open /dev/kvm before it checks some values (`--memory` is checked after it); when
/// `checked_without_kvm` is false and KVM is not usable, only a clean error is required.
/// A bad `run` option: refused by the argument parser with status 2, before any VM exists.
fn bad_run_option(extra: &[&str], must_mention: &[&str]) {
    let elf = require_payload!(contract_payload());
    let mut cmd = Command::new(HVKVM);
    cmd.arg("run").arg("--payload").arg(elf.path());
    if !extra.contains(&"--timeout") {
        cmd.args(["--timeout", "5"]);
    }
    cmd.args(extra);
    let run = run_bounded(cmd);
    assert_clean_error(&run, must_mention);
    assert_eq!(
        run.code(),
        Some(2),
        "a bad command line is status 2:\n{}",
        run.describe()
    );
    assert!(
        !run.stdout.contains("contract_check"),
        "the guest ran:\n{}",
        run.describe()
    );
}

#[test]
fn zero_cpus_is_refused() {
    bad_run_option(&["--cpus", "0"], &["cpus"]);
}

#[test]
fn too_many_cpus_is_refused() {
    bad_run_option(&["--cpus", "256"], &["cpus"]);
}

#[test]
fn zero_timeout_is_refused() {
    bad_run_option(&["--timeout", "0"], &["timeout"]);
}

#[test]
fn one_mib_of_memory_is_refused() {
    bad_run_option(&["--memory", "1"], &["memory"]);
}

#[test]
fn payload_and_kernel_together_are_refused() {
    let elf = require_payload!(contract_payload());
    let mut cmd = Command::new(HVKVM);
    cmd.arg("run")
        .arg("--payload")
        .arg(elf.path())
        .arg("--kernel")
        .arg(elf.path())
        .args(["--timeout", "5"]);
    let run = run_bounded(cmd);
    assert_clean_error(&run, &["--payload", "--kernel"]);
    assert_eq!(
        run.code(),
        Some(2),
        "a bad command line is status 2:\n{}",
        run.describe()
    );
}

#[test]
fn unknown_subcommand_is_refused() {
    let run = run_hvkvm(&["frobnicate"]);
    assert_clean_error(&run, &["frobnicate"]);
    assert_eq!(
        run.code(),
        Some(2),
        "a bad command line is status 2:\n{}",
        run.describe()
    );
}

#[test]
fn help_lists_the_commands() {
    let run = run_hvkvm(&["--help"]);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    for word in ["run", "demo", "probe"] {
        assert!(
            run.stdout.contains(word),
            "--help lacks {word}:\n{}",
            run.describe()
        );
    }
}

// ---- probe and demo ----

#[test]
fn probe_json_reports_api_version_and_hyperv_caps() {
    require_kvm!();
    let run = run_hvkvm(&["probe", "--json"]);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let v: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("probe --json is not JSON ({e}):\n{}", run.describe()));
    assert_eq!(v["kvm_api_version"], 12, "{}", run.stdout);
    let caps = v["hyperv_caps"]
        .as_array()
        .unwrap_or_else(|| panic!("no hyperv_caps list:\n{}", run.stdout));
    assert!(!caps.is_empty(), "{}", run.stdout);
    for cap in caps {
        let name = cap["name"]
            .as_str()
            .unwrap_or_else(|| panic!("capability without a name: {cap}"));
        assert!(
            name.starts_with("KVM_CAP_") && name.contains("HYPERV"),
            "{name}"
        );
        assert!(cap["value"].is_u64() || cap["value"].is_i64(), "{cap}");
    }
    // README: "every KVM_CAP_HYPERV_*"; the base capability must be among them.
    assert!(
        caps.iter().any(|c| c["name"] == "KVM_CAP_HYPERV"),
        "{}",
        run.stdout
    );
}

/// The probe's "nested VMX" verdict: (available, reason).
fn nested_vmx_verdict() -> (bool, String) {
    let run = run_hvkvm(&["probe", "--json"]);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let doc: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("probe --json is not JSON ({e}):\n{}", run.describe()));
    let v = doc["verdicts"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == "nested VMX"))
        .unwrap_or_else(|| panic!("no 'nested VMX' verdict:\n{}", run.stdout));
    (
        v["available"].as_bool().expect("available is a bool"),
        v["reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// The number after `prefix` on the line that has it.
fn number_after(text: &str, prefix: &str) -> Option<f64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[test]
fn demo_shows_what_the_hyperv_guest_saw_used_and_what_a_read_costs() {
    require_kvm!();
    let run = run_hvkvm(&["demo", "--timeout", VM_TIMEOUT]);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let out = &run.stdout;
    // README: each vCPU sees "Microsoft Hv" and its own VP index; the TSC page is read.
    for i in 0..2 {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("vCPU {i}: hypervisor")))
            .unwrap_or_else(|| panic!("no summary line for vCPU {i}:\n{}", run.describe()));
        assert!(
            line.contains("\"Microsoft Hv\"") && line.contains("raw-cpuid: Hyper-V"),
            "{line}"
        );
        assert!(line.ends_with(&format!("VP index {i}")), "{line}");
    }
    assert!(out.contains("TSC page: sequence "), "{}", run.describe());
    assert!(
        out.contains("ended:") && out.contains("test-exit port"),
        "{}",
        run.describe()
    );
    // The usage report names the backend the guest ran on.
    let backend = ["user", "kernel"]
        .into_iter()
        .find(|b| out.contains(&format!("Hyper-V backend: {b} (")))
        .unwrap_or_else(|| panic!("no backend line:\n{}", run.describe()));
    assert!(
        out.contains(&format!("Hyper-V usage report ({backend} backend)")),
        "{}",
        run.describe()
    );
    // A synthetic timer fires where the backend offers direct-mode timers.
    if out.contains("hv-stimer-direct") {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(
                    "synthetic timer 0 (direct mode, vector 0xe0, one-shot): due at "
                ) && l.contains("its interrupt came at")),
            "{}",
            run.describe()
        );
    } else {
        assert!(
            out.contains("synthetic timer: skipped: "),
            "{}",
            run.describe()
        );
    }
    // The measured table and its ratio.
    let ratio = number_after(out, "TIME_REF_COUNT MSR read / TSC page read (medians): ")
        .unwrap_or_else(|| panic!("no ratio:\n{}", run.describe()));
    assert!(ratio > 0.0, "ratio {ratio}");
    // Nested figures, or the probe's reason why not.
    let (nesting, reason) = nested_vmx_verdict();
    if !nesting {
        assert!(
            out.contains(&format!(
                "Nested L2 CPUID, classic VMCS vs eVMCS: skipped: {reason}"
            )),
            "{}",
            run.describe()
        );
    }
}

#[test]
fn demo_json_is_the_same_content_as_one_document() {
    require_kvm!();
    let cpus = 3u64;
    let run = run_hvkvm(&["demo", "--json", "--cpus", "3", "--timeout", VM_TIMEOUT]);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    // stdout is one JSON document and nothing else.
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "demo --json is not one JSON document ({e}):\n{}",
            run.describe()
        )
    });
    let guest = &doc["guest"];
    assert_eq!(guest["exit_status"], 0, "{}", run.stdout);
    let vcpus = guest["vcpus"].as_array().expect("guest.vcpus");
    assert_eq!(vcpus.len() as u64, cpus, "{}", run.stdout);
    for (i, v) in vcpus.iter().enumerate() {
        assert_eq!(v["vcpu"], i as u64, "{v}");
        assert_eq!(v["vendor"], "Microsoft Hv", "{v}");
        assert_eq!(v["hypervisor"], "Hyper-V", "{v}");
        assert_eq!(v["interface"], "Hv#1", "{v}");
        assert_eq!(v["vp_index"], i as u64, "{v}");
        let page = &v["tsc_page"];
        assert_ne!(page["sequence"], 0, "{v}");
        assert!(page["time_100ns"].as_u64().is_some_and(|t| t > 0), "{v}");
    }
    // The TSC page's time advances (vCPU 0 read it before and after the others reported).
    let [first, last] = [0, 1].map(|i| {
        guest["time"]["tsc_page"][i]
            .as_u64()
            .unwrap_or_else(|| panic!("no guest.time.tsc_page:\n{}", run.stdout))
    });
    assert!(last > first, "TSC page time {first} -> {last}");
    // The serial output is in the document, not on stdout.
    let serial = guest["serial"].as_array().expect("guest.serial");
    assert!(
        serial
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("Microsoft Hv"))),
        "{}",
        run.stdout
    );
    // The usage report names the backend; on the user backend hvkvm saw every VP_INDEX read.
    let backend = doc["backend"].as_str().expect("backend");
    assert!(backend == "user" || backend == "kernel", "{backend}");
    let usage = &doc["hyperv_usage"];
    assert_eq!(usage["backend"], backend, "{}", run.stdout);
    assert!(usage["tsc_page"].as_u64().is_some(), "{}", run.stdout);
    if backend == "user" {
        assert_eq!(usage["msrs"]["VP_INDEX"]["reads"], cpus, "{}", run.stdout);
    }
    // The synthetic timer: its interrupt came, not before it was due; or why it was skipped.
    let timer = &doc["synthetic_timer"];
    let offered = doc["enlightenments"].as_array().expect("enlightenments");
    if offered.iter().any(|e| e == "hv-stimer-direct") {
        assert_eq!(timer["status"], "measured", "{}", run.stdout);
        let due = timer["due_100ns"].as_u64().expect("due_100ns");
        let at = timer["fired_at_100ns"].as_u64().expect("fired_at_100ns");
        assert!(
            at >= due,
            "the timer's interrupt came at {at}, before {due}"
        );
        assert!(
            timer["interrupts"].as_u64().is_some_and(|n| n >= 1),
            "{timer}"
        );
    } else {
        assert_eq!(timer["status"], "skipped", "{}", run.stdout);
        assert!(
            timer["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{timer}"
        );
    }
    // The measured table.
    let table = &doc["time_read"];
    assert_eq!(table["status"], "measured", "{}", run.stdout);
    let ratio = table["ratio"].as_f64().expect("time_read.ratio");
    assert!(ratio.is_finite() && ratio > 0.0, "ratio {ratio}");
    let keys: Vec<&str> = table["rows"]
        .as_array()
        .expect("time_read.rows")
        .iter()
        .filter_map(|r| r["key"].as_str())
        .collect();
    assert!(
        keys.contains(&"tsc_page") && keys.contains(&"time_ref_count_msr"),
        "{keys:?}"
    );
    // Nested: measured where the host can nest, else skipped with the probe's reason.
    let (nesting, reason) = nested_vmx_verdict();
    if !nesting {
        assert_eq!(doc["nested"]["status"], "skipped", "{}", run.stdout);
        assert_eq!(doc["nested"]["reason"], reason.as_str(), "{}", run.stdout);
    }
    // Seconds, not minutes.
    let total = doc["timings"]["total_s"].as_f64().expect("timings.total_s");
    assert!(total < 30.0, "the demo took {total} s");
}

// ---- reset: reboot by default, a clean exit with --no-reboot ----

/// `mov al, 0xfe; out 0x64, al; hlt`: an i8042 reset as soon as the payload starts.
const RESET_AT_ONCE: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4];

fn reset_payload() -> TempPath {
    let elf = TempPath::new("reset.elf");
    fs::write(
        elf.path(),
        hvkvm::boot::payload::elf_from_code(0x20_0000, RESET_AT_ONCE),
    )
    .unwrap();
    elf
}

#[test]
fn a_reset_reboots_until_the_timeout() {
    require_kvm!();
    let elf = reset_payload();
    let mut cmd = Command::new(HVKVM);
    cmd.arg("run")
        .arg("--payload")
        .arg(elf.path())
        .args(["--timeout", "1"]);
    let run = run_bounded(cmd);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(124), "{}", run.describe());
    assert!(
        run.stderr.contains("rebooting (boot 2"),
        "{}",
        run.describe()
    );
}

#[test]
fn no_reboot_ends_the_vm_on_reset() {
    require_kvm!();
    let elf = reset_payload();
    let mut cmd = Command::new(HVKVM);
    cmd.arg("run")
        .arg("--payload")
        .arg(elf.path())
        .args(["--no-reboot", "--timeout", "10"]);
    let run = run_bounded(cmd);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert!(
        run.stderr.contains("reset") && !run.stderr.contains("rebooting"),
        "{}",
        run.describe()
    );
}

/// A stand-in for a Linux boot, for `--stats` and `bench boot`: vCPU 0 writes the initramfs
/// marker line to COM1 byte by byte and powers off through ACPI PM1a; the others halt.
fn marker_payload() -> TempPath {
    const MARKER: &[u8] = b"HVKVM-INIT: reached /init\n";
    let mut print = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for &b in MARKER {
        print.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
    print.extend_from_slice(&[0x66, 0xba, 0x04, 0x06]); // mov dx, 0x604
    print.extend_from_slice(&[0x66, 0xb8, 0x00, 0x34]); // mov ax, S5 | SLP_EN
    print.extend_from_slice(&[0x66, 0xef]); // out dx, ax
    let mut code = vec![0x48, 0x85, 0xff, 0x75, print.len() as u8]; // test rdi, rdi; jnz halt
    code.extend_from_slice(&print);
    code.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // halt: hlt; jmp halt
    let elf = TempPath::new("marker.elf");
    fs::write(
        elf.path(),
        hvkvm::boot::payload::elf_from_code(0x20_0000, &code),
    )
    .unwrap();
    elf
}

#[test]
fn stats_show_exits_by_kind_and_device_and_the_uart() {
    require_kvm!();
    let elf = marker_payload();
    let mut cmd = Command::new(HVKVM);
    cmd.arg("run")
        .arg("--payload")
        .arg(elf.path())
        .args(["--stats", "--timeout", VM_TIMEOUT]);
    let run = run_bounded(cmd);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let err = &run.stderr;
    for want in [
        "run statistics",
        "inside KVM_RUN",
        "exits by kind",
        "port I/O by device",
        "UART: 26 bytes sent, 26 exits to its ports (1.00 per byte)",
        "host work before the guest ran",
    ] {
        assert!(err.contains(want), "'{want}' missing: {}", run.describe());
    }
    let row = |name: &str| {
        err.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
    };
    assert_eq!(row("io_out").as_deref(), Some("27"), "{}", run.describe());
    assert_eq!(row("serial").as_deref(), Some("26"), "{}", run.describe());
    assert_eq!(row("acpi_pm").as_deref(), Some("1"), "{}", run.describe());
}

#[test]
fn bench_boot_json_has_a_row_per_vcpu_count() {
    require_kvm!();
    let elf = marker_payload();
    let mut cmd = Command::new(HVKVM);
    cmd.args(["bench", "boot", "--payload"])
        .arg(elf.path())
        .args(["--cpus", "1,2", "--timeout", VM_TIMEOUT, "--json"]);
    let run = run_bounded(cmd);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let v: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.describe()));
    assert!(v["host"]["kvm_module"].is_string(), "{}", run.stdout);
    assert!(v["reference"].is_string(), "{}", run.stdout);
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{}", run.stdout);
    for (row, cpus) in rows.iter().zip([1, 2]) {
        assert_eq!(row["cpus"], cpus, "{}", run.stdout);
        assert_eq!(row["powered_off"], true, "{}", run.stdout);
        let init = row["to_init_s"].as_f64().expect("to_init_s");
        let stop = row["to_stop_s"].as_f64().expect("to_stop_s");
        assert!(init <= stop, "/init after the stop: {}", run.stdout);
        assert!(row["cpu_to_stop_s"].is_f64(), "{}", run.stdout);
        let stats = row["vcpu_stats"].as_array().expect("vcpu_stats");
        assert_eq!(stats.len(), cpus as usize, "{}", run.stdout);
        assert!(stats[0]["kinds"].is_array(), "{}", run.stdout);
    }
}
