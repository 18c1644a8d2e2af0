//! "Boot a Linux L1 inside the emulated Intel host and run a command in it", for cases that
//! run there (nested VMX, the kernel backend inside L1, L2 payloads).
//!
//! The work is done by `hvkvm-l1` (scripts/intel-host-l1.sh), which exists only in the Intel
//! host's image: it boots Debian's kernel under hvkvm with `--cpu host` (so L1 sees VMX and
//! loads `kvm-intel nested=1`), with the Intel host's own initramfs (hvkvm, the payloads,
//! busybox) plus the command, and exits with the command's status. L1's console streams to the
//! Intel host's console with each line prefixed `L1| `.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How to boot the L1 guest.
#[derive(Debug, Clone)]
pub struct L1 {
    cpus: u32,
    memory_mib: u32,
    timeout: Duration,
    hvkvm_args: Vec<String>,
}

impl Default for L1 {
    /// 1 vCPU, 512 MiB, and a timeout of 30 minutes of the Intel host's time, which runs
    /// several times slower than wall time (the wall-clock limit is the session's).
    fn default() -> Self {
        L1 {
            cpus: 1,
            memory_mib: 512,
            timeout: Duration::from_secs(1800),
            hvkvm_args: Vec::new(),
        }
    }
}

/// What the L1 run gave.
#[derive(Debug)]
pub struct L1Run {
    /// The command's exit status inside L1; hvkvm's own status when L1 never reported (124:
    /// timeout), 125 when L1 ended without a report.
    pub status: i32,
    /// L1's whole console: its kernel's messages and the command's output.
    pub console: String,
}

impl L1 {
    /// Sets the number of vCPUs.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Sets L1's RAM.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Sets hvkvm's `--timeout` (in the Intel host's guest time).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds an option for `hvkvm run` (`--hv …`, `--profile …`).
    pub fn hvkvm_arg(mut self, arg: &str) -> Self {
        self.hvkvm_args.push(arg.to_string());
        self
    }

    /// Boots L1, runs `command` (argv) in it and returns its status and L1's console. Panics
    /// when not inside the Intel host or when hvkvm-l1 cannot be started.
    pub fn run(&self, command: &[&str]) -> L1Run {
        let tool = find_on_path("hvkvm-l1").unwrap_or_else(|| {
            panic!(
                "hvkvm-l1 is not on PATH: L1 guests boot only inside the emulated Intel host \
                 (scripts/intel-host.sh)"
            )
        });
        let console = std::env::temp_dir().join(format!("l1-console-{}", std::process::id()));
        let mut cmd = Command::new(tool);
        cmd.arg("--cpus")
            .arg(self.cpus.to_string())
            .arg("--memory")
            .arg(self.memory_mib.to_string())
            .arg("--timeout")
            .arg(self.timeout.as_secs().to_string())
            .arg("--console")
            .arg(&console);
        for arg in &self.hvkvm_args {
            cmd.arg("--arg").arg(arg);
        }
        // stdout and stderr stay the Intel host's console, so L1 streams into its log.
        let status = cmd
            .arg("--")
            .args(command)
            .status()
            .unwrap_or_else(|e| panic!("cannot run hvkvm-l1: {e}"));
        let text = std::fs::read(&console).unwrap_or_default();
        let _ = std::fs::remove_file(&console);
        L1Run {
            status: status.code().unwrap_or(-1),
            console: String::from_utf8_lossy(&text).replace('\r', ""),
        }
    }
}

impl L1Run {
    /// Whether some console line starts with `prefix` and contains `text`.
    pub fn has_line(&self, prefix: &str, text: &str) -> bool {
        self.console
            .lines()
            .any(|l| l.starts_with(prefix) && l.contains(text))
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
