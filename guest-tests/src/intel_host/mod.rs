//! The emulated Intel VMX host as a test host.
//!
//! A session is one run of `scripts/intel-host.sh` (Bochs booting Debian's kernel with
//! `kvm-intel nested=1`) whose command is `hvkvm-suites run --host NAME …`: every case of that
//! [`EmulatedHost`] runs in that one boot (a boot costs ~40 s), and each reports itself on the
//! emulated host's console ([`crate::report`]). [`Session`] follows that console and hands each
//! case's result to the test waiting for it, so every case is its own test line
//! (`tests/intel_host.rs`). There are two hosts: `intel-host` (one CPU, nearly every case) and
//! `intel-host-2cpu` (two CPUs, for a 2-vCPU L1 guest); their sessions run one after the other.
//!
//! Sessions are either started by the test itself or, in CI, by scripts/test.sh in the
//! background before the local tests (`HVKVM_INTEL_HOST_SESSION=DIR`, one subdirectory per
//! host), so that they run while those do; the test then only follows them. A session's files
//! are in its directory: the console `serial.log`, the script's own messages `script.log`,
//! `pid` while the script runs, and `exit-status` once it has ended.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod console;

use console::{End, Poller, State};

/// One way to boot the emulated Intel host: its name in test names and reports, and the
/// scripts/intel-host.sh options that make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmulatedHost {
    /// The host's name in test names and reports (`hvkvm-suites run --host NAME`).
    pub name: &'static str,
    /// Emulated processors (`--cpus`). Bochs runs them all on one host thread, so each is
    /// 1/N as fast.
    pub cpus: u32,
    /// QEMU in the image (`--qemu`), for the qemu suite.
    pub qemu: bool,
}

impl EmulatedHost {
    /// The scripts/intel-host.sh options that boot this host.
    pub fn script_options(&self) -> Vec<String> {
        let mut options = vec!["--cpus".to_string(), self.cpus.to_string()];
        if self.qemu {
            options.push("--qemu".to_string());
        }
        options
    }
}

/// Where every Intel-host case runs unless it needs more CPUs: one CPU at the emulator's full
/// speed, with QEMU in it for the qemu suite.
pub const INTEL_HOST: EmulatedHost = EmulatedHost {
    name: "intel-host",
    cpus: 1,
    qemu: true,
};

/// Two CPUs, for the cases that run a 2-vCPU L1 guest: on one emulated CPU such an L1 did not
/// boot within 10 minutes (an overcommitted SMP guest).
pub const INTEL_HOST_2CPU: EmulatedHost = EmulatedHost {
    name: "intel-host-2cpu",
    cpus: 2,
    qemu: false,
};

/// Every emulated host, in the order their sessions run.
pub const EMULATED_HOSTS: [EmulatedHost; 2] = [INTEL_HOST, INTEL_HOST_2CPU];

/// Follow the sessions started elsewhere (by scripts/test.sh): each host's session is in the
/// subdirectory of this directory named after the host.
pub const SESSION_ENV: &str = "HVKVM_INTEL_HOST_SESSION";

/// `1`: a missing prerequisite is a failure, not a skip (set by scripts/test.sh).
pub const REQUIRE_ENV: &str = "HVKVM_REQUIRE_INTEL_HOST";

/// The session's wall-clock limit in seconds, boot included.
pub const TIMEOUT_ENV: &str = "HVKVM_INTEL_HOST_TIMEOUT";

const DEFAULT_TIMEOUT_S: u64 = 1500;

/// How many console lines a failure message shows.
const SHOWN_LINES: usize = 25;

/// The repository root (scripts/intel-host.sh lives there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("guest-tests lies inside the repository")
        .to_path_buf()
}

/// Whether a missing prerequisite must fail the tests (`HVKVM_REQUIRE_INTEL_HOST=1`).
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).as_deref() == Ok("1")
}

/// The session's wall-clock limit (`HVKVM_INTEL_HOST_TIMEOUT`, default 1500 s).
pub fn timeout() -> Duration {
    let secs = std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_TIMEOUT_S);
    Duration::from_secs(secs)
}

/// Why the emulated Intel host cannot run here, if it cannot: the packages
/// scripts/intel-host.sh would install are missing. (The script itself installs them; a test
/// does not install packages behind the user's back.)
pub fn unavailable() -> Option<String> {
    let on_path = |cmd: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
            .unwrap_or(false)
    };
    let mut missing: Vec<&str> = ["bochs", "xorriso", "script", "flock", "zstd"]
        .into_iter()
        .filter(|c| !on_path(c))
        .collect();
    for file in [
        "/usr/share/bochs/BIOS-bochs-latest",
        "/usr/lib/ISOLINUX/isolinux.bin",
        "/usr/lib/syslinux/modules/bios/ldlinux.c32",
        "/bin/busybox",
        // The session boots with QEMU in it (--qemu) for the qemu suite.
        "/usr/bin/qemu-system-x86_64",
        "/usr/share/seabios/bios-256k.bin",
    ] {
        if !Path::new(file).is_file() {
            missing.push(file);
        }
    }
    let kernel = std::fs::read_dir("/boot").ok().is_some_and(|dir| {
        dir.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("vmlinuz-") && name.ends_with("-cloud-amd64")
        })
    });
    if !kernel {
        missing.push("/boot/vmlinuz-*-cloud-amd64");
    }
    (!missing.is_empty()).then(|| {
        format!(
            "the emulated Intel host needs {}: run scripts/intel-host.sh once (it installs \
             bochs, bochsbios, bochs-term, isolinux, syslinux-common, xorriso, busybox-static, \
             linux-image-cloud-amd64, qemu-system-x86, seabios and zstd), or scripts/test.sh",
            missing.join(", ")
        )
    })
}

/// A session being followed.
#[derive(Debug)]
pub struct Session {
    host: EmulatedHost,
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    started: Instant,
    child: Mutex<Option<Child>>,
    console_shown: AtomicBool,
}

impl Session {
    /// Starts scripts/intel-host.sh in `dir`, booting `host` with `hvkvm-suites run --host
    /// NAME` and `runner_args` (filters) as its command. Sessions started at once run one
    /// after the other: each waits for the host-cores lock.
    pub fn start(dir: &Path, host: EmulatedHost, runner_args: &[String]) -> io::Result<Session> {
        std::fs::create_dir_all(dir)?;
        for stale in ["exit-status", "serial.log", "pid"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let log = File::create(dir.join("script.log"))?;
        let child = Command::new("bash")
            .arg(repo_root().join("scripts/intel-host.sh"))
            .arg("--quiet")
            .args(host.script_options())
            .arg("--out")
            .arg(dir)
            .arg("--timeout")
            .arg(timeout().as_secs().to_string())
            .args(["--", "hvkvm-suites", "run", "--host", host.name])
            .args(runner_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let session = Session::follow(dir, host);
        *session.child.lock().unwrap() = Some(child);
        Ok(session)
    }

    /// Follows a session of `host` that someone else started in `dir`.
    pub fn follow(dir: &Path, host: EmulatedHost) -> Session {
        let state = Arc::new(Mutex::new(State::default()));
        let started = Instant::now();
        let poller = Poller {
            dir: dir.to_path_buf(),
            state: state.clone(),
            offset: 0,
            partial: String::new(),
            started,
        };
        thread::spawn(move || poller.run());
        Session {
            host,
            dir: dir.to_path_buf(),
            state,
            started,
            child: Mutex::new(None),
            console_shown: AtomicBool::new(false),
        }
    }

    /// The host this session boots.
    pub fn host(&self) -> EmulatedHost {
        self.host
    }

    /// Waits for case `name` (without the host prefix); `Err` is the failure message: the
    /// host, the case, why, and the Intel host's console lines that explain it.
    pub fn wait_for(&self, name: &str) -> Result<(), String> {
        loop {
            {
                let state = self.state.lock().unwrap();
                if let Some(seen) = state.results.get(name) {
                    if seen.report.passed {
                        return Ok(());
                    }
                    let why = seen.report.message.as_deref().unwrap_or("no message");
                    return Err(format!(
                        "{}: `{name}` failed inside the emulated Intel host: {why}\n{}",
                        self.host.name,
                        self.shown("its console output", &seen.lines)
                    ));
                }
                if let Some(end) = &state.end {
                    let running = state
                        .current
                        .as_ref()
                        .map(|(c, ..)| format!(", while `{c}` was running"))
                        .unwrap_or_default();
                    let head = format!(
                        "{}: `{name}` got no result: {}{running}",
                        self.host.name,
                        self.describe(end)
                    );
                    // The console once, with the first case that has no result; the others
                    // point there (a dead session would otherwise print it for every case).
                    if self.console_shown.swap(true, Ordering::Relaxed) {
                        return Err(format!("{head} (console shown above)"));
                    }
                    let recent: Vec<String> = state.recent.iter().cloned().collect();
                    return Err(format!(
                        "{head}\n{}{}",
                        self.shown("the last lines of its console", &recent),
                        self.script_tail()
                    ));
                }
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the first case starts or the session ends, showing on a terminal how long
    /// the boot has taken so far (the ~40 s or more before the first case are otherwise
    /// silent); without a terminal it returns at once and prints nothing. Afterwards each case
    /// reports itself as a test line.
    pub fn show_boot_progress(&self, cases: usize) {
        let progress =
            hvkvm::bench::Progress::new(format!("{} cases", self.host.name), cases as u64);
        if !progress.enabled() {
            return;
        }
        let now = format!(
            "booting the emulated Intel host (console: {})",
            self.dir.join("serial.log").display()
        );
        loop {
            {
                let state = self.state.lock().unwrap();
                if state.first_case_at.is_some() || state.end.is_some() {
                    break;
                }
            }
            progress.show(0, Some(&now));
            thread::sleep(Duration::from_millis(500));
        }
        progress.finish();
    }

    fn describe(&self, end: &End) -> String {
        match end {
            End::Exited(124) => format!(
                "the emulated Intel host ran past its wall-clock limit (intel-host.sh \
                 --timeout; {TIMEOUT_ENV}, {} s here)",
                timeout().as_secs()
            ),
            End::Exited(status) => format!("the emulated Intel host ended (status {status})"),
            End::Vanished(why) => why.clone(),
            End::GaveUp => format!(
                "no end of the session after {} s: stopped waiting",
                self.started.elapsed().as_secs()
            ),
        }
    }

    fn shown(&self, what: &str, lines: &[String]) -> String {
        let mut out = format!(
            "--- {what} ({}) ---\n",
            self.dir.join("serial.log").display()
        );
        if lines.is_empty() {
            out.push_str("    (none)\n");
        }
        let skip = lines.len().saturating_sub(SHOWN_LINES);
        for line in &lines[skip..] {
            let _ = writeln!(out, "    | {line}");
        }
        out
    }

    fn script_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("script.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return String::new();
        }
        let mut out = format!(
            "--- scripts/intel-host.sh said ({}) ---\n",
            self.dir.join("script.log").display()
        );
        for line in &lines[lines.len().saturating_sub(10)..] {
            let _ = writeln!(out, "    | {line}");
        }
        out
    }

    /// A table of the cases seen: wall time each, and the time before the first case (the
    /// Bochs boot, when this process started the session).
    pub fn timings(&self) -> String {
        let state = self.state.lock().unwrap();
        let mut out = format!("{} session in {}:\n", self.host.name, self.dir.display());
        if state.ended_before_followed {
            out.push_str("  (it had ended before this process followed it: no wall times)\n");
        } else if let Some(first) = state.first_case_at {
            let _ = writeln!(
                out,
                "  first case started {:.0} s after this process began following the session",
                first.duration_since(self.started).as_secs_f64()
            );
        }
        for name in &state.order {
            let seen = &state.results[name];
            let wall = if state.ended_before_followed {
                "     - s wall".to_string()
            } else {
                format!("{:>6.1} s wall", seen.wall.as_secs_f64())
            };
            let _ = writeln!(
                out,
                "  {wall}  {:>7} ms guest  {}  {name}",
                seen.report.millis,
                if seen.report.passed { "ok  " } else { "FAIL" }
            );
        }
        if let Some(end) = &state.end {
            let _ = writeln!(
                out,
                "  ended after {:.0} s: {}",
                self.started.elapsed().as_secs_f64(),
                self.describe(end)
            );
        }
        out
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            // The script ends itself (report, timeout); a test that stops following early must
            // not leave Bochs behind: the script's trap stops it on SIGTERM.
            if child.try_wait().ok().flatten().is_none() {
                let _ = Command::new("kill").arg(child.id().to_string()).status();
            }
            let _ = child.wait();
        }
    }
}
