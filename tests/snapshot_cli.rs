//! The snapshot commands end to end, as a user runs them: a 2-vCPU guest started with
//! `hvkvm run --api-socket`, paused and snapshotted mid-run with `hvkvm ctl`, its process
//! killed, and resumed by `hvkvm restore` in a new process; it must finish with intact memory
//! and reference time that never went backwards (the `snapshot_soak` guest asserts both).
//! Then the same snapshot damaged, and the control socket misused.
//!
//! Every child is bounded by hvkvm's `--timeout` and by a wall-clock limit here. Without a
//! usable /dev/kvm the test prints `SKIP: <reason>`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const HVKVM: &str = env!("CARGO_BIN_EXE_hvkvm");
const SOAK: &str = env!("HVKVM_SNAPSHOT_SOAK_ELF");
const LIMIT: Duration = Duration::from_secs(120);

fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP: /dev/kvm is not usable: {e}");
            false
        }
    }
}

fn ctl(sock: &Path, args: &[&str]) -> Output {
    let out = Command::new(HVKVM)
        .arg("ctl")
        .arg("--api-socket")
        .arg(sock)
        .args(args)
        .output()
        .expect("run hvkvm ctl");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{out:?}"
    );
    out
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child` with the wall-clock limit; kills it past the limit.
fn wait_bounded(mut child: Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("hvkvm did not end within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn pause_snapshot_kill_restore_through_the_cli() {
    if !kvm_usable() {
        return;
    }
    let scratch =
        Scratch(std::env::temp_dir().join(format!("hvkvm-snapcli-{}", std::process::id())));
    let dir = &scratch.0;
    std::fs::create_dir_all(dir).unwrap();
    let sock = dir.join("api.sock");
    let serial1 = dir.join("serial1.txt");
    let snap = dir.join("snap");
    let child = Command::new(HVKVM)
        .args([
            "run",
            "--payload",
            SOAK,
            "--cpus",
            "2",
            "--hv",
            "hv-time",
            "--timeout",
            "90",
        ])
        .arg("--api-socket")
        .arg(&sock)
        .arg("--serial-file")
        .arg(&serial1)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the guest's first second", || {
        std::fs::read_to_string(&serial1).is_ok_and(|s| s.contains("t=1"))
    });
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the socket is private");

    // A snapshot needs a paused VM; the refusal changes nothing.
    let out = ctl(&sock, &["snapshot", snap.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not paused"),
        "{out:?}"
    );

    // Misuse of the socket: garbage, an unknown command, a client that leaves mid-line.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"garbage\n{\"cmd\":\"reboot\"}\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..2 {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(
            line.contains("\"ok\":false") && line.contains("bad request"),
            "{line}"
        );
    }
    drop((s, r));
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"{\"cmd\":\"pau").unwrap();
    drop(s);

    let out = ctl(&sock, &["pause"]);
    assert!(out.status.success(), "{out:?}");
    let info = ctl(&sock, &["info", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["state"], "paused");
    assert_eq!(info["cpus"], 2);
    let report = ctl(&sock, &["report"]);
    assert!(
        String::from_utf8_lossy(&report.stdout).contains("TIME_REF_COUNT"),
        "{report:?}"
    );
    let out = ctl(&sock, &["snapshot", snap.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("snapshot written"),
        "{out:?}"
    );
    let info = ctl(&sock, &["info", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["state"], "paused", "a snapshot leaves the VM paused");

    // Kill the VM's process: only the snapshot survives.
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();
    let before = std::fs::read_to_string(&serial1).unwrap();
    assert!(!before.contains("soak done"), "{before}");

    let serial2 = dir.join("serial2.txt");
    let outcome = dir.join("outcome.json");
    let restored = Command::new(HVKVM)
        .arg("restore")
        .arg(&snap)
        .args(["--timeout", "90"])
        .arg("--api-socket")
        .arg(&sock)
        .arg("--serial-file")
        .arg(&serial2)
        .arg("--outcome-json")
        .arg(&outcome)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(restored);
    let after = std::fs::read_to_string(&serial2).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "restored guest:\n{after}");
    assert!(after.contains("soak done"), "{after}");
    let outcome: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&outcome).unwrap()).unwrap();
    let values = &outcome["syncs"][0]["values"];
    assert_eq!(values[0], 2, "both vCPUs finished: {outcome}");
    assert!(
        values[1].as_u64().unwrap() < 10_000_000,
        "no reference-time jump: {outcome}"
    );
    assert!(!sock.exists(), "the socket is removed when the VM ends");

    // The same snapshot, damaged: refused, naming the file.
    let vcpu1 = std::fs::read_dir(&snap)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-vcpu-1.json"))
        .unwrap();
    let mut bytes = std::fs::read(&vcpu1).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&vcpu1, bytes).unwrap();
    let out = Command::new(HVKVM)
        .arg("restore")
        .arg(&snap)
        .args(["--timeout", "30"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let name = vcpu1.file_name().unwrap().to_string_lossy().to_string();
    assert!(err.contains("damaged") && err.contains(&name), "{err}");

    // Refused: a socket path that is a plain file, and a directory that is not a snapshot.
    let plain = dir.join("plain");
    std::fs::write(&plain, b"x").unwrap();
    let out = Command::new(HVKVM)
        .args(["run", "--payload", SOAK, "--timeout", "5", "--api-socket"])
        .arg(&plain)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    let out = Command::new(HVKVM)
        .arg("restore")
        .arg(dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an hvkvm snapshot"));
}
