//! Finding (and where possible installing) the real tools the export checks run: a missing
//! tool is installed from Debian's packages when the tests run as root, else the check prints
//! `SKIP <check>: <reason>`; with `HVKVM_REQUIRE_TOOLS=1` a missing tool fails the test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use hv_model::Version;

/// Serialises installs: two tests must not run apt-get at once.
static INSTALL: Mutex<()> = Mutex::new(());

/// Whether a missing tool is a failure.
pub fn tools_required() -> bool {
    std::env::var("HVKVM_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// Reports a check that cannot run here: SKIP, or a failure under `HVKVM_REQUIRE_TOOLS=1`.
pub fn skip(check: &str, reason: &str) {
    if tools_required() {
        panic!("{check}: {reason} (HVKVM_REQUIRE_TOOLS=1 makes this a failure)");
    }
    eprintln!("SKIP {check}: {reason}");
}

/// The path of `bin` on $PATH (or in /usr/sbin), if any.
pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `bin`, installing Debian's `package` for it when missing and possible. `Err` says why not.
pub fn tool(bin: &str, package: &str) -> Result<PathBuf, String> {
    if let Some(p) = which(bin) {
        return Ok(p);
    }
    if which("apt-get").is_none() || !is_root() {
        return Err(format!(
            "{bin} is missing; install Debian's {package} (apt-get install {package})"
        ));
    }
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = which(bin) {
        return Ok(p);
    }
    eprintln!("installing Debian's {package} for {bin}");
    let install = || {
        Command::new("apt-get")
            .args([
                "-o",
                "DPkg::Lock::Timeout=600",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                package,
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
    };
    let mut out = install();
    if !out.as_ref().is_ok_and(|o| o.status.success()) {
        // A fresh machine has no package lists yet.
        let _ = Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600", "update", "-q"])
            .output();
        out = install();
    }
    match (out, which(bin)) {
        (_, Some(p)) => Ok(p),
        (Ok(o), None) => Err(format!(
            "{bin} is missing and apt-get install {package} failed: {}",
            tail(&String::from_utf8_lossy(&o.stderr), 3)
        )),
        (Err(e), None) => Err(format!("{bin} is missing and apt-get could not run: {e}")),
    }
}

/// Runs a command; `Err` when it cannot start.
pub fn run(program: &Path, args: &[&str]) -> Result<Output, String> {
    Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The first `MAJOR.MINOR[.PATCH]` in a tool's version banner.
pub fn version_in(banner: &str) -> Option<Version> {
    banner
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|w| w.contains('.'))
        .find_map(|w| w.trim_matches('.').parse().ok())
}

/// A scratch directory for one check, emptied first.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("real-tools-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn version_banners_parse() {
    assert_eq!(
        version_in("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
        Some(Version::new(7, 2))
    );
    assert_eq!(version_in("9.0.0\n"), Some(Version::new(9, 0)));
    assert_eq!(version_in("no digits"), None);
}
