//! Builds hvkvm's guest payloads (the `no_std` crate in `guest-tests/guest`) from a build script.
//!
//! The payloads are compiled from source as part of the normal cargo build; no binaries are kept
//! in the repository. A build script calls [`build_guest_payloads`], which
//! 1. runs `cargo build --release` on `guest-tests/guest/Cargo.toml` for the host triple with the
//!    bare-metal flags below ([`guest_rustflags`]), in a target directory under the caller's
//!    `OUT_DIR` (so concurrent build scripts never share one),
//! 2. checks every resulting ELF against hvkvm's payload contract ([`check_elf`]) and scans its
//!    disassembly for instructions KVM's emulator cannot execute ([`check_instructions`]),
//! 3. prints `cargo:rerun-if-changed` lines for the guest sources, and
//! 4. returns the directory that holds the ELF files (one per `src/bin/<name>.rs`, named `<name>`).
//!
//! Any failure comes back as an [`Error`] whose `Display` (and `Debug`) carries the guest
//! compiler's full output, so a build script can simply do
//! `build_guest_payloads(None).unwrap_or_else(|e| panic!("{e}"))`.
//!
//! Why these flags: the standard library of `x86_64-unknown-none` is not installed on hvkvm's
//! machines and `-Zbuild-std` is not available, so the guest is built for the host triple as a
//! freestanding static executable: static relocation model, no red zone (no interrupt handlers
//! today, but a payload may add an IDT), SSE off (the emulator that runs CPL0 code there cannot
//! execute SSE arithmetic), no C runtime, linked by gcc with `link.ld`. rustc warns that disabling
//! SSE2 on this target is being phased out; the guest does not use floating point, and the
//! instruction scan catches anything that would need it.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// The triple the guest is compiled for (the host's; see the crate documentation).
pub const GUEST_TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Where `link.ld` places the image; [`check_elf`] expects the first PT_LOAD there.
pub const IMAGE_BASE: u64 = 0x20_0000;

/// Lowest address a PT_LOAD segment may use (hvkvm keeps the first MiB for boot structures).
pub const MIN_LOAD_ADDR: u64 = 0x10_0000;

/// Environment variables of the outer build that must not leak into the guest build: they would
/// change its flags, target, target directory or compiler wrapper.
const SCRUBBED_ENV: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_INCREMENTAL",
    "CARGO_BUILD_INCREMENTAL",
    "CARGO_LLVM_COV",
    "CARGO_LLVM_COV_TARGET_DIR",
    "LLVM_PROFILE_FILE",
];

/// Prefixes of environment variables scrubbed the same way (per-target and per-profile settings,
/// and cargo's internal variables such as those of `cargo fix`).
const SCRUBBED_ENV_PREFIXES: &[&str] = &["CARGO_TARGET_", "CARGO_PROFILE_", "__CARGO"];

/// Mnemonics (and mnemonic prefixes) that KVM's instruction emulator cannot execute at CPL0 on
/// hvkvm's test hosts (see /work/shared/test-host.md), with the reason shown to the developer.
const FORBIDDEN_MNEMONIC_PREFIXES: &[(&str, &str)] = &[
    ("xsave", "XSAVE family"),
    ("xrstor", "XSAVE family"),
    ("xgetbv", "XGETBV"),
    ("xsetbv", "XSETBV"),
    ("rdtscp", "RDTSCP"),
    ("cmpxchg16b", "CMPXCHG16B (128-bit atomics)"),
    ("popcnt", "POPCNT"),
    ("lzcnt", "LZCNT"),
    ("mulx", "BMI2"),
    ("pdep", "BMI2"),
    ("pext", "BMI2"),
    ("shlx", "BMI2"),
    ("shrx", "BMI2"),
    ("sarx", "BMI2"),
    ("rorx", "BMI2"),
    ("bzhi", "BMI2"),
    ("andn", "BMI1 (VEX-encoded)"),
    ("bextr", "BMI1 (VEX-encoded)"),
    ("blsi", "BMI1 (VEX-encoded)"),
    ("blsmsk", "BMI1 (VEX-encoded)"),
    ("blsr", "BMI1 (VEX-encoded)"),
    ("ldmxcsr", "SSE state"),
    ("stmxcsr", "SSE state"),
    // Covers every VEX/EVEX instruction (vpxor, vmovdqu, ...) and vmcall/vmmcall, which hung the
    // vCPU on the test hosts.
    ("v", "VEX/EVEX-encoded or VMX/SVM instruction"),
    ("(bad)", "bytes objdump cannot decode"),
];

/// Payloads that are L1 hypervisors: they execute VMX instructions, which the scan otherwise
/// rejects with every other `v…` mnemonic. They run only where the guest has VMX (a VMX host
/// with nested virtualization, e.g. the emulated Intel host); there the instructions exit to
/// KVM's nested VMX rather than to an instruction emulator. `vmcall` stays forbidden for them too.
pub const VMX_PAYLOADS: &[&str] = &["l1_hypervisor"];

/// The VMX instructions a payload in [`VMX_PAYLOADS`] may use.
const VMX_MNEMONICS: &[&str] = &[
    "vmxon", "vmxoff", "vmclear", "vmptrld", "vmptrst", "vmread", "vmwrite", "vmlaunch",
    "vmresume", "invept", "invvpid",
];

/// Register-name fragments (AT&T syntax) whose presence in an operand means SSE/AVX/MMX/x87 use.
const FORBIDDEN_REGISTERS: &[(&str, &str)] = &[
    ("%xmm", "SSE register"),
    ("%ymm", "AVX register"),
    ("%zmm", "AVX-512 register"),
    ("%k", "AVX-512 mask register"),
    ("%mm", "MMX register"),
    ("%st", "x87 register (floating point)"),
];

/// Instruction prefixes objdump prints before the mnemonic.
const PREFIXES: &[&str] = &[
    "lock", "rep", "repe", "repz", "repne", "repnz", "data16", "data32", "addr16", "addr32", "cs",
    "ds", "es", "ss", "fs", "gs", "notrack", "bnd", "rex", "rex.w", "rex.b", "rex.x", "rex.r",
    "xacquire", "xrelease",
];

/// What can go wrong while building the guest payloads.
pub enum Error {
    /// `OUT_DIR` is not set: [`build_guest_payloads`] must run inside a build script.
    NoOutDir,
    /// An I/O operation failed.
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The guest `cargo build` failed; `output` is its complete stderr and stdout.
    Cargo {
        /// The command line, for reproducing by hand.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Everything it printed.
        output: String,
    },
    /// A built payload violates hvkvm's ELF payload contract.
    Elf {
        /// The ELF file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A built payload contains instructions the emulator cannot execute.
    ForbiddenInstructions {
        /// The ELF file.
        path: PathBuf,
        /// One line per offending instruction: address, instruction, reason.
        findings: Vec<String>,
    },
    /// objdump ran but failed.
    Objdump {
        /// The ELF file.
        path: PathBuf,
        /// What objdump printed.
        output: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoOutDir => write!(
                f,
                "guest-build: OUT_DIR is not set (call it from a build script)"
            ),
            Error::Io { what, source } => write!(f, "guest-build: {what}: {source}"),
            Error::Cargo {
                command,
                status,
                output,
            } => write!(
                f,
                "guest-build: building the guest payloads failed ({status})\n\
                 command: {command}\n\
                 ---- guest compiler output ----\n{output}\n---- end of guest compiler output ----"
            ),
            Error::Elf { path, problem } => {
                write!(
                    f,
                    "guest-build: {}: not a valid hvkvm payload: {problem}",
                    path.display()
                )
            }
            Error::ForbiddenInstructions { path, findings } => {
                writeln!(
                    f,
                    "guest-build: {} contains {} instruction(s) KVM's emulator cannot execute at CPL0 \
                     (see guest-tests/README.md, \"Instructions payloads must not use\"):",
                    path.display(),
                    findings.len()
                )?;
                for finding in findings.iter().take(50) {
                    writeln!(f, "  {finding}")?;
                }
                if findings.len() > 50 {
                    writeln!(f, "  ... and {} more", findings.len() - 50)?;
                }
                Ok(())
            }
            Error::Objdump { path, output } => {
                write!(
                    f,
                    "guest-build: objdump failed on {}:\n{output}",
                    path.display()
                )
            }
        }
    }
}

// Debug prints the same text as Display: `unwrap()`/`expect()` and `fn main() -> Result<..>` then
// show the guest compiler's output readably instead of as one escaped string.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The guest crate's directory (`guest-tests/guest`), located relative to this crate's sources.
pub fn guest_crate_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("guest");
    dir.canonicalize().unwrap_or(dir)
}

/// The rustc flags every guest crate is compiled with, given the absolute path of `link.ld`.
pub fn guest_rustflags(linker_script: &Path) -> Vec<String> {
    let mut flags: Vec<String> = [
        // Absolute addresses, no GOT/PLT: the image runs where it is linked.
        "-Crelocation-model=static",
        "-Ccode-model=small",
        // Nothing may scribble below RSP: an interrupt or exception frame would clobber it.
        "-Cno-redzone=yes",
        "-Cpanic=abort",
        // The baseline x86-64 CPU: no POPCNT, BMI, ... whatever the outer build is tuned for.
        "-Ctarget-cpu=x86-64",
        // No SSE (and hence no SSE2+, AVX: LLVM disables every feature that depends on SSE).
        "-Ctarget-feature=-sse,-sse2",
        // Freestanding static executable: no crt0, no libc, no PIE, no dynamic sections.
        "-Clink-arg=-nostartfiles",
        "-Clink-arg=-nostdlib",
        "-Clink-arg=-static",
        "-Clink-arg=-no-pie",
        "-Clink-arg=-Wl,--build-id=none",
        "-Clink-arg=-Wl,--gc-sections",
        "-Clink-arg=-Wl,-z,max-page-size=4096",
        "-Clink-arg=-Wl,-z,noexecstack",
        // A section link.ld does not place is a bug (TLS, .init_array, ...): fail the link.
        "-Clink-arg=-Wl,--orphan-handling=error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    flags.push(format!("-Clink-arg=-Wl,-T,{}", linker_script.display()));
    flags
}

/// The payload names: `src/bin/<name>.rs` and `src/bin/<name>/main.rs` of the guest crate.
pub fn list_payloads(guest_dir: &Path) -> Result<Vec<String>, Error> {
    let bin_dir = guest_dir.join("src").join("bin");
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(&bin_dir).map_err(io_err(format!("reading {}", bin_dir.display())))? {
        let entry = entry.map_err(io_err(format!("reading {}", bin_dir.display())))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() && path.join("main.rs").is_file() {
            names.insert(name);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            names.insert(stem.to_string());
        }
    }
    Ok(names.into_iter().collect())
}

/// A configurable guest build; [`build_guest_payloads`] covers the usual case.
#[derive(Debug, Clone)]
pub struct GuestBuild {
    guest_dir: PathBuf,
    target_dir: PathBuf,
    bins: Option<Vec<String>>,
    cargo_directives: bool,
    check_instructions: bool,
}

impl GuestBuild {
    /// A build of all payloads into `target_dir`.
    pub fn new(target_dir: impl Into<PathBuf>) -> Self {
        Self {
            guest_dir: guest_crate_dir(),
            target_dir: target_dir.into(),
            bins: None,
            cargo_directives: false,
            check_instructions: true,
        }
    }

    /// A build into `$OUT_DIR/guest-target` that prints `cargo:` directives (for build scripts).
    pub fn from_out_dir() -> Result<Self, Error> {
        let out_dir = std::env::var_os("OUT_DIR").ok_or(Error::NoOutDir)?;
        let mut build = Self::new(Path::new(&out_dir).join("guest-target"));
        build.cargo_directives = true;
        Ok(build)
    }

    /// Builds only these payloads (default: all of them).
    pub fn bins(mut self, bins: &[&str]) -> Self {
        self.bins = Some(bins.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Builds another guest crate (tests of this crate use it; default: `guest-tests/guest`).
    pub fn guest_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.guest_dir = dir.into();
        self
    }

    /// Whether to print `cargo:rerun-if-changed` / `cargo:warning` lines (default: only from
    /// [`GuestBuild::from_out_dir`]).
    pub fn cargo_directives(mut self, on: bool) -> Self {
        self.cargo_directives = on;
        self
    }

    /// Whether to scan the disassembly for forbidden instructions (default: on).
    pub fn check_instructions(mut self, on: bool) -> Self {
        self.check_instructions = on;
        self
    }

    /// The directory that will hold the ELF files.
    pub fn output_dir(&self) -> PathBuf {
        self.target_dir.join(GUEST_TRIPLE).join("release")
    }

    /// Builds, checks, and returns the directory holding the ELF files.
    pub fn build(&self) -> Result<PathBuf, Error> {
        let manifest = self.guest_dir.join("Cargo.toml");
        let linker_script = self.guest_dir.join("link.ld");
        if self.cargo_directives {
            // Directories are scanned recursively by cargo, so new files are noticed too.
            for path in [
                &manifest,
                &self.guest_dir.join("Cargo.lock"),
                &linker_script,
                &self.guest_dir.join("src"),
            ] {
                println!("cargo:rerun-if-changed={}", path.display());
            }
            println!("cargo:rerun-if-env-changed=OBJDUMP");
        }

        let bins = match &self.bins {
            Some(bins) => bins.clone(),
            None => list_payloads(&self.guest_dir)?,
        };

        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let mut cmd = Command::new(&cargo);
        cmd.arg("build")
            .arg("--release")
            .args(["--color", "never"])
            .arg("--manifest-path")
            .arg(&manifest)
            // An explicit --target keeps RUSTFLAGS away from build scripts and proc macros (the
            // guest has none today, but a dependency might).
            .args(["--target", GUEST_TRIPLE])
            .arg("--target-dir")
            .arg(&self.target_dir);
        match &self.bins {
            Some(_) => {
                for bin in &bins {
                    cmd.args(["--bin", bin]);
                }
            }
            None => {
                cmd.arg("--bins");
            }
        }
        for (key, _) in std::env::vars_os() {
            let key_str = key.to_string_lossy();
            if SCRUBBED_ENV.contains(&key_str.as_ref())
                || SCRUBBED_ENV_PREFIXES.iter().any(|p| key_str.starts_with(p))
            {
                cmd.env_remove(&key);
            }
        }
        cmd.env(
            "CARGO_ENCODED_RUSTFLAGS",
            guest_rustflags(&linker_script).join("\x1f"),
        );

        let command_line = format!("{cmd:?}");
        let output = cmd
            .output()
            .map_err(io_err(format!("running {}", Path::new(&cargo).display())))?;
        let mut log = String::from_utf8_lossy(&output.stderr).into_owned();
        log.push_str(&String::from_utf8_lossy(&output.stdout));
        fs::create_dir_all(&self.target_dir)
            .map_err(io_err(format!("creating {}", self.target_dir.display())))?;
        let log_path = self.target_dir.join("guest-build.log");
        // Best effort: the log is for humans, a failure to write it must not hide the real result.
        let _ = fs::write(&log_path, format!("{command_line}\n\n{log}"));
        if !output.status.success() {
            return Err(Error::Cargo {
                command: command_line,
                status: output.status,
                output: log,
            });
        }
        if self.cargo_directives {
            for warning in unexpected_warnings(&log) {
                println!(
                    "cargo:warning=guest payloads: {warning} (full output: {})",
                    log_path.display()
                );
            }
        }

        let out_dir = self.output_dir();
        let mut objdump_missing = false;
        for bin in &bins {
            let elf = out_dir.join(bin);
            check_elf(&elf)?;
            if self.check_instructions && !objdump_missing {
                match check_instructions_of(&elf, VMX_PAYLOADS.contains(&bin.as_str()))? {
                    InstructionCheck::Clean => {}
                    InstructionCheck::ObjdumpMissing => {
                        objdump_missing = true;
                        if self.cargo_directives {
                            println!(
                                "cargo:warning=guest payloads: objdump not found; the scan for \
                                 instructions KVM's emulator cannot execute was skipped"
                            );
                        }
                    }
                }
            }
            if self.cargo_directives {
                // Exactly the source files rustc read, including path dependencies (evmcs-layout).
                for dep in dep_info_sources(&out_dir.join(format!("{bin}.d"))) {
                    println!("cargo:rerun-if-changed={}", dep.display());
                }
            }
        }
        Ok(out_dir)
    }
}

/// Builds the guest payloads from a build script: all of them (`None`) or the named ones, into
/// `$OUT_DIR/guest-target`, and returns the directory holding the ELF files (`<dir>/<name>`).
pub fn build_guest_payloads(bins: Option<&[&str]>) -> Result<PathBuf, Error> {
    let mut build = GuestBuild::from_out_dir()?;
    if let Some(bins) = bins {
        build = build.bins(bins);
    }
    build.build()
}

/// Warning headlines in the guest build output other than the known, accepted one about
/// disabling SSE2 on this target.
fn unexpected_warnings(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| line.strip_prefix("warning: "))
        .filter(|w| !w.contains("must be enabled to ensure that the ABI of the current target"))
        .filter(|w| !(w.contains("generated") && w.contains("warning")))
        .map(str::to_string)
        .collect()
}

/// The source files listed in a cargo dep-info file (`target: src1 src2 ...`, spaces escaped).
fn dep_info_sources(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut sources = Vec::new();
    for line in text.lines() {
        let Some((_, deps)) = line.split_once(": ") else {
            continue;
        };
        let mut current = String::new();
        let mut chars = deps.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&' ') => {
                    current.push(' ');
                    chars.next();
                }
                ' ' => {
                    if !current.is_empty() {
                        sources.push(PathBuf::from(std::mem::take(&mut current)));
                    }
                }
                _ => current.push(c),
            }
        }
        if !current.is_empty() {
            sources.push(PathBuf::from(current));
        }
    }
    sources
}

/// A PT_LOAD segment of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// p_vaddr (== p_paddr).
    pub addr: u64,
    /// p_filesz.
    pub file_size: u64,
    /// p_memsz.
    pub mem_size: u64,
    /// p_flags (PF_X = 1, PF_W = 2, PF_R = 4).
    pub flags: u32,
}

/// What [`check_elf`] found in a valid payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfSummary {
    /// e_entry.
    pub entry: u64,
    /// The PT_LOAD segments, in file order.
    pub segments: Vec<LoadSegment>,
}

impl ElfSummary {
    /// One past the highest byte any segment occupies in guest memory.
    pub fn image_end(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.addr + s.mem_size)
            .max()
            .unwrap_or(0)
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Checks `path` against hvkvm's ELF payload contract: ELF64 little-endian x86-64 executable,
/// no PT_INTERP/PT_DYNAMIC/PT_TLS, PT_LOAD segments with p_paddr == p_vaddr at or above 1 MiB,
/// the first at [`IMAGE_BASE`], and e_entry inside an executable segment.
pub fn check_elf(path: &Path) -> Result<ElfSummary, Error> {
    let bytes = fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
    parse_payload_elf(&bytes).map_err(|problem| Error::Elf {
        path: path.to_path_buf(),
        problem,
    })
}

/// The byte-level part of [`check_elf`].
pub fn parse_payload_elf(b: &[u8]) -> Result<ElfSummary, String> {
    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const PT_TLS: u32 = 7;
    const PF_X: u32 = 1;
    let truncated = || "truncated ELF file".to_string();

    if b.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file".into());
    }
    if u16_at(b, 16).ok_or_else(truncated)? != 2 {
        return Err("not an executable (e_type != ET_EXEC): was it linked as PIE?".into());
    }
    if u16_at(b, 18).ok_or_else(truncated)? != 62 {
        return Err("not an x86-64 file".into());
    }
    let entry = u64_at(b, 24).ok_or_else(truncated)?;
    let phoff = u64_at(b, 32).ok_or_else(truncated)? as usize;
    let phentsize = u16_at(b, 54).ok_or_else(truncated)? as usize;
    let phnum = u16_at(b, 56).ok_or_else(truncated)? as usize;
    if phentsize < 56 {
        return Err(format!("odd program header size {phentsize}"));
    }

    let mut segments = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32_at(b, ph).ok_or_else(truncated)?;
        match p_type {
            PT_DYNAMIC | PT_INTERP => return Err("has dynamic-linking program headers".into()),
            PT_TLS => return Err("has a TLS segment (thread-locals are not supported)".into()),
            PT_LOAD => {}
            _ => continue,
        }
        let flags = u32_at(b, ph + 4).ok_or_else(truncated)?;
        let offset = u64_at(b, ph + 8).ok_or_else(truncated)?;
        let vaddr = u64_at(b, ph + 16).ok_or_else(truncated)?;
        let paddr = u64_at(b, ph + 24).ok_or_else(truncated)?;
        let file_size = u64_at(b, ph + 32).ok_or_else(truncated)?;
        let mem_size = u64_at(b, ph + 40).ok_or_else(truncated)?;
        if paddr != vaddr {
            return Err(format!(
                "PT_LOAD at {vaddr:#x} has p_paddr {paddr:#x} != p_vaddr"
            ));
        }
        if vaddr < MIN_LOAD_ADDR {
            return Err(format!(
                "PT_LOAD at {vaddr:#x} lies below {MIN_LOAD_ADDR:#x}"
            ));
        }
        if file_size > mem_size {
            return Err(format!("PT_LOAD at {vaddr:#x} has p_filesz > p_memsz"));
        }
        if offset
            .checked_add(file_size)
            .is_none_or(|end| end > b.len() as u64)
        {
            return Err(format!(
                "PT_LOAD at {vaddr:#x} extends past the end of the file"
            ));
        }
        segments.push(LoadSegment {
            addr: vaddr,
            file_size,
            mem_size,
            flags,
        });
    }
    let Some(first) = segments.iter().map(|s| s.addr).min() else {
        return Err("has no PT_LOAD segment".into());
    };
    if first != IMAGE_BASE {
        return Err(format!(
            "image starts at {first:#x}, not at {IMAGE_BASE:#x} (link.ld)"
        ));
    }
    if !segments
        .iter()
        .any(|s| s.flags & PF_X != 0 && (s.addr..s.addr + s.mem_size).contains(&entry))
    {
        return Err(format!(
            "entry point {entry:#x} is not inside an executable PT_LOAD segment"
        ));
    }
    Ok(ElfSummary { entry, segments })
}

/// Outcome of [`check_instructions`] when no forbidden instruction was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstructionCheck {
    /// The disassembly is clean.
    Clean,
    /// objdump (or `$OBJDUMP`) could not be started; nothing was checked.
    ObjdumpMissing,
}

/// Disassembles `path` with `objdump -d --no-show-raw-insn` (or `$OBJDUMP`) and fails if any
/// instruction is one KVM's emulator cannot execute ([`find_forbidden_instructions`]).
pub fn check_instructions(path: &Path) -> Result<InstructionCheck, Error> {
    check_instructions_of(path, false)
}

/// [`check_instructions`], with the VMX instructions allowed when `allow_vmx` (an L1
/// hypervisor payload, [`VMX_PAYLOADS`]).
pub fn check_instructions_of(path: &Path, allow_vmx: bool) -> Result<InstructionCheck, Error> {
    let objdump = std::env::var_os("OBJDUMP").unwrap_or_else(|| OsString::from("objdump"));
    let output = match Command::new(&objdump)
        .args(["-d", "--no-show-raw-insn"])
        .arg(path)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(InstructionCheck::ObjdumpMissing)
        }
        Err(e) => {
            return Err(Error::Io {
                what: format!("running {}", Path::new(&objdump).display()),
                source: e,
            })
        }
    };
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        return Err(Error::Objdump {
            path: path.to_path_buf(),
            output: text,
        });
    }
    let findings =
        find_forbidden_instructions_of(&String::from_utf8_lossy(&output.stdout), allow_vmx);
    if findings.is_empty() {
        Ok(InstructionCheck::Clean)
    } else {
        Err(Error::ForbiddenInstructions {
            path: path.to_path_buf(),
            findings,
        })
    }
}

/// Scans objdump's AT&T-syntax disassembly (`objdump -d --no-show-raw-insn`) and returns one line
/// per instruction that uses an SSE/AVX/MMX/x87 register or is on the forbidden list. The line
/// names the enclosing function, so the offending Rust code is easy to find.
pub fn find_forbidden_instructions(disassembly: &str) -> Vec<String> {
    find_forbidden_instructions_of(disassembly, false)
}

/// [`find_forbidden_instructions`]; with `allow_vmx` the VMX instructions (not `vmcall`) pass.
pub fn find_forbidden_instructions_of(disassembly: &str, allow_vmx: bool) -> Vec<String> {
    let mut findings = Vec::new();
    let mut function = String::new();
    for line in disassembly.lines() {
        // "0000000000200000 <_start>:" starts a function.
        if let Some(name) = line
            .strip_suffix(">:")
            .and_then(|l| l.split_once(" <"))
            .map(|(_, n)| n)
        {
            function = name.to_string();
            continue;
        }
        // "  200000:\tpush   %rbp" is an instruction.
        let Some((addr, insn)) = line.split_once(":\t") else {
            continue;
        };
        let addr = addr.trim();
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let insn = insn
            .split('#')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let mut tokens = insn.split_whitespace();
        let mnemonic = loop {
            match tokens.next() {
                Some(t) if PREFIXES.contains(&t) || t.starts_with('{') => continue,
                Some(t) => break t,
                None => break "",
            }
        };
        if allow_vmx && VMX_MNEMONICS.contains(&mnemonic.trim_end_matches('q')) {
            continue;
        }
        let reason = FORBIDDEN_MNEMONIC_PREFIXES
            .iter()
            .find(|(prefix, _)| mnemonic.starts_with(prefix))
            .map(|(_, why)| *why)
            // x87 (fld, fstp, fwait, ...): never expected; fxsave/fxrstor are fine (emulated).
            .or_else(|| {
                (mnemonic.starts_with('f') && !mnemonic.starts_with("fx"))
                    .then_some("x87 instruction")
            })
            .or_else(|| {
                FORBIDDEN_REGISTERS
                    .iter()
                    .find(|(reg, _)| insn.contains(reg))
                    .map(|(_, why)| *why)
            });
        if let Some(why) = reason {
            findings.push(format!("{addr}: {insn}   [{why}] in {function}"));
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_accepts_integer_code() {
        let dis = "\n0000000000200000 <_start>:\n  200000:\tmov    %rsp,%rcx\n  200003:\tjmp    200010 <x>\n\
                   0000000000200010 <x>:\n  200010:\tlock cmpxchg %rcx,0x10(%rip)        # 200400 <M>\n\
                   \x20 200018:\trep stos %al,%es:(%rdi)\n  20001a:\tmovups (%rax),%rcx\n\
                   \x20 20001e:\tout    %eax,(%dx)\n  20001f:\tcpuid\n  200021:\trdtsc\n  200023:\tbsf    %rax,%rcx\n";
        assert_eq!(find_forbidden_instructions(dis), Vec::<String>::new());
    }

    #[test]
    fn scan_flags_simd_and_forbidden_mnemonics() {
        let dis = "0000000000200000 <f>:\n  200000:\txorps  %xmm0,%xmm0\n  200003:\tvpxor  %ymm1,%ymm1,%ymm1\n\
                   \x20 200007:\tpopcnt %rax,%rax\n  20000c:\tlock cmpxchg16b (%rdi)\n  200011:\trdtscp\n\
                   \x20 200014:\txsaveq (%rsp)\n  200018:\tmulx   %rax,%rcx,%rdx\n  20001d:\tmovq   %rax,%mm0\n\
                   \x20 200021:\tvmcall\n  200024:\t(bad)\n  200025:\tfldt   (%rsp)\n";
        let found = find_forbidden_instructions(dis);
        assert_eq!(found.len(), 11, "{found:#?}");
        assert!(found[0].contains("SSE register") && found[0].ends_with("in f"));
        assert!(found[3].contains("CMPXCHG16B"), "{}", found[3]);
    }

    #[test]
    fn vmx_instructions_pass_only_for_l1_hypervisors() {
        let dis = "0000000000200000 <l1>:\n  200000:\tvmxon  (%rax)\n  200003:\tvmread %rax,%rcx\n\
                   \x20 200006:\tvmwrite %rcx,%rax\n  200009:\tvmlaunch\n  20000c:\tvmresume\n\
                   \x20 20000f:\tvmptrld (%rdi)\n  200012:\tvmclear (%rdi)\n  200015:\tvmcall\n";
        assert_eq!(find_forbidden_instructions(dis).len(), 8);
        let found = find_forbidden_instructions_of(dis, true);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].contains("vmcall"), "{}", found[0]);
        let avx = "0000000000200000 <f>:\n  200000:\tvpxor  %ymm1,%ymm1,%ymm1\n";
        assert_eq!(find_forbidden_instructions_of(avx, true).len(), 1);
    }

    fn elf_with(entry: u64, loads: &[(u64, u64, u64, u32)], extra_type: Option<u32>) -> Vec<u8> {
        let phnum = loads.len() + usize::from(extra_type.is_some());
        let mut b = vec![0u8; 64 + 56 * phnum + 16];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        for (i, &(vaddr, paddr, memsz, flags)) in loads.iter().enumerate() {
            let ph = 64 + 56 * i;
            b[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
            b[ph + 4..ph + 8].copy_from_slice(&flags.to_le_bytes());
            b[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
            b[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            b[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        if let Some(t) = extra_type {
            let ph = 64 + 56 * loads.len();
            b[ph..ph + 4].copy_from_slice(&t.to_le_bytes());
        }
        b
    }

    #[test]
    fn elf_contract() {
        let ok = elf_with(
            0x200000,
            &[
                (0x200000, 0x200000, 0x100, 5),
                (0x201000, 0x201000, 0x20, 6),
            ],
            None,
        );
        let summary = parse_payload_elf(&ok).unwrap();
        assert_eq!(summary.entry, 0x200000);
        assert_eq!(summary.image_end(), 0x201020);

        let paddr = elf_with(0x200000, &[(0x200000, 0x1000, 0x100, 5)], None);
        assert!(parse_payload_elf(&paddr).unwrap_err().contains("p_paddr"));
        let low = elf_with(
            0x200000,
            &[(0x200000, 0x200000, 0x100, 5), (0x8000, 0x8000, 0x10, 6)],
            None,
        );
        assert!(parse_payload_elf(&low).unwrap_err().contains("below"));
        let interp = elf_with(0x200000, &[(0x200000, 0x200000, 0x100, 5)], Some(3));
        assert!(parse_payload_elf(&interp).unwrap_err().contains("dynamic"));
        let entry = elf_with(
            0x201000,
            &[
                (0x200000, 0x200000, 0x100, 5),
                (0x201000, 0x201000, 0x20, 6),
            ],
            None,
        );
        assert!(parse_payload_elf(&entry)
            .unwrap_err()
            .contains("entry point"));
        assert!(parse_payload_elf(b"MZ").is_err());
    }

    #[test]
    fn dep_info_parsing() {
        let dir = std::env::temp_dir().join(format!("guest-build-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let d = dir.join("x.d");
        fs::write(
            &d,
            "/t/x: /a/src/main.rs /b\\ c/lib.rs\n\n/a/src/main.rs:\n",
        )
        .unwrap();
        assert_eq!(
            dep_info_sources(&d),
            vec![
                PathBuf::from("/a/src/main.rs"),
                PathBuf::from("/b c/lib.rs")
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn warnings_filter() {
        let log = "warning: target feature `sse2` must be enabled to ensure that the ABI of the current target can be implemented correctly\n\
                   warning: `hvkvm-guest` (lib) generated 1 warning\nwarning: unused variable: `x`\n";
        assert_eq!(
            unexpected_warnings(log),
            vec!["unused variable: `x`".to_string()]
        );
    }
}
