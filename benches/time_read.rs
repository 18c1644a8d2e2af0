//! Cycles per guest time read: the reference TSC page read at CPL3, as an application reads it
//! (Linux's vDSO, Windows' QueryPerformanceCounter), against the TIME_REF_COUNT MSR read at CPL0
//! (RDMSR is privileged: every read is an exit to hvkvm's user backend), with bare RDTSC at CPL3
//! as the floor. Prints the cycles and nanoseconds per read and the MSR/page ratio.
//!
//! The guest is the `bench_time_read` payload (guest-tests/guest/src/bin/bench_time_read.rs),
//! compiled by the guest-tests crate's build script. This bench does not depend on guest-tests:
//! it looks for the newest ELF under `<target>/*/build/guest-tests-*/out/guest-target/...` and,
//! when there is none (or it is older than the guest sources), runs `cargo build -p guest-tests`.
//!
//! Prints `SKIP: ...` and exits 0 when /dev/kvm is not usable.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use hvkvm::cli::error_chain;
use hvkvm::cpu::CpuidEntry;
use hvkvm::hyperv::{cpuid_entries, resolve_for_vm, BackendChoice, CrashAction, HvConfig};
use hvkvm::kvm::HostProbe;
use hvkvm::vm::{BootSource, StopReason, Vm, VmConfig, VmOutcome};

const PAYLOAD: &str = "bench_time_read";
/// Enlightenments the payload needs: REFERENCE_TSC + TIME_REF_COUNT, TSC_FREQUENCY.
const HV_LIST: &str = "hv-time,hv-frequencies";
/// TIME_REF_COUNT reads per run (CPL0: each one is an emulated RDMSR and an exit).
const N_MSR: u32 = 1_000;
/// TSC page reads (and bare RDTSCs) per run (CPL3: native).
const N_PAGE: u32 = 1_000_000;
const ROUNDS: usize = 5;
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const GUEST_ELF_SUBPATH: &str = "out/guest-target/x86_64-unknown-linux-gnu/release";

/// One round's numbers, from the payload's two SYNCs.
#[derive(Debug, Clone, Copy)]
struct Round {
    cpl: u64,
    tsc_hz: u64,
    msr_cycles: u64,
    n_msr: u64,
    page_cycles: u64,
    n_page: u64,
    rdtsc_cycles: u64,
    last_page: u64,
    last_msr: u64,
    sequence: u64,
    /// The MSR loop without the RDMSR, at CPL0 (emulated loop control).
    loop_cycles: u64,
    /// Wall time of the whole VM run.
    elapsed: Duration,
}

impl Round {
    fn msr_per_read(&self) -> f64 {
        self.msr_cycles as f64 / self.n_msr as f64
    }
    fn loop_per_iteration(&self) -> f64 {
        self.loop_cycles as f64 / self.n_msr as f64
    }
    fn page_per_read(&self) -> f64 {
        self.page_cycles as f64 / self.n_page as f64
    }
    fn rdtsc_per_read(&self) -> f64 {
        self.rdtsc_cycles as f64 / self.n_page as f64
    }
}

fn main() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        println!("SKIP: /dev/kvm is not usable: {e}");
        return;
    }
    let host = HostProbe::probe().unwrap_or_else(|e| fail(&format!("probing the host: {e}")));
    let elf_path = guest_elf();
    let image = std::fs::read(&elf_path)
        .unwrap_or_else(|e| fail(&format!("reading {}: {e}", elf_path.display())));

    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let outcome = run_once(&host, image.clone());
        rounds.push(parse(&outcome));
    }

    println!("time_read: guest time reads under hvkvm's Hyper-V user backend ({HV_LIST})");
    println!(
        "  host: {} | /dev/kvm: {} | host TSC {} kHz",
        host.cpu_model.as_deref().unwrap_or("unknown CPU"),
        host.kvm_module.as_deref().unwrap_or("unknown module"),
        host.tsc_khz.map_or("?".to_string(), |k| k.to_string()),
    );
    println!("  payload: {}", elf_path.display());
    let tsc_hz = rounds[0].tsc_hz;
    println!(
        "  guest TSC_FREQUENCY {tsc_hz} Hz; user-level CPL seen by the payload: {}",
        rounds[0].cpl
    );
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "  round {}: TIME_REF_COUNT {:.0} cyc/read ({} reads; CPL0 loop overhead {:.0} cyc), \
             TSC page {:.1} cyc/read, \
             rdtsc {:.1} cyc/read ({} reads); last page {} vs last MSR {} (100 ns), sequence {}; \
             VM run {:.0} ms",
            i + 1,
            r.msr_per_read(),
            r.n_msr,
            r.loop_per_iteration(),
            r.page_per_read(),
            r.rdtsc_per_read(),
            r.n_page,
            r.last_page,
            r.last_msr,
            r.sequence,
            r.elapsed.as_secs_f64() * 1e3,
        );
    }
    let net = |r: &Round| r.msr_per_read() - r.loop_per_iteration();
    let msr = median(rounds.iter().map(Round::msr_per_read));
    let overhead = median(rounds.iter().map(Round::loop_per_iteration));
    let msr_net = median(rounds.iter().map(net));
    let page = median(rounds.iter().map(Round::page_per_read));
    let rdtsc = median(rounds.iter().map(Round::rdtsc_per_read));
    let best_msr = min(rounds.iter().map(Round::msr_per_read));
    let best_page = min(rounds.iter().map(Round::page_per_read));
    let best_rdtsc = min(rounds.iter().map(Round::rdtsc_per_read));
    let ns = |cycles: f64| cycles * 1e9 / tsc_hz as f64;
    println!(
        "  per read, median of {ROUNDS} rounds (best round in brackets), guest TSC cycles and ns, \
         loop overhead included:"
    );
    println!(
        "    TIME_REF_COUNT MSR (CPL0 rdmsr -> VMM) {msr:>10.1} cyc {:>10.1} ns  [{best_msr:.1} cyc]",
        ns(msr)
    );
    println!(
        "      of which emulated loop control     {overhead:>10.1} cyc {:>10.1} ns  \
         (the same loop without RDMSR; the read alone: {msr_net:.0} cyc, {:.1} ns)",
        ns(overhead),
        ns(msr_net)
    );
    println!(
        "    reference TSC page (CPL3)             {page:>10.1} cyc {:>10.1} ns  [{best_page:.1} cyc]",
        ns(page)
    );
    println!(
        "    bare rdtsc (CPL3)                     {rdtsc:>10.1} cyc {:>10.1} ns  [{best_rdtsc:.1} cyc]",
        ns(rdtsc)
    );
    println!(
        "  ratio MSR / TSC page: {:.0}x (the MSR read alone, loop control subtracted: {:.0}x); \
         TSC page / bare rdtsc: {:.2}x",
        msr / page,
        msr_net / page,
        page / rdtsc
    );
}

/// Runs the payload once and returns its outcome; exits the process if it did not pass.
fn run_once(host: &HostProbe, image: Vec<u8>) -> VmOutcome {
    let mut config = VmConfig::new(BootSource::Payload {
        image,
        name: PAYLOAD.to_string(),
    });
    config.memory_mib = 64;
    config.timeout = Some(RUN_TIMEOUT);
    config.serial = Box::new(std::io::sink());

    // As `hvkvm run --hv hv-time,hv-frequencies` with the user backend.
    let request =
        hv_model::parse_hv_list(HV_LIST).unwrap_or_else(|e| fail(&format!("--hv {HV_LIST}: {e}")));
    let resolution = resolve_for_vm(&request, host, BackendChoice::User)
        .unwrap_or_else(|e| fail(&format!("--hv {HV_LIST}: {}", error_chain(&e))))
        .unwrap_or_else(|| fail(&format!("--hv {HV_LIST} resolved to nothing")));
    config.hypervisor_leaves = Some(cpuid_entries(&resolution));
    config.hyperv = HvConfig::from_resolution(&resolution, CrashAction::Log);
    if config.hyperv.is_none() {
        fail("the user backend is not enabled by the resolution");
    }
    // Payload parameters: 0x400000F0 EAX = N_MSR, EBX = N_PAGE (F1..F3 defined as zeros: an
    // undefined leaf above the hypervisor range's maximum may read as another leaf).
    for (i, regs) in [[N_MSR, N_PAGE, 0, 0], [0; 4], [0; 4], [0; 4]]
        .iter()
        .enumerate()
    {
        config.cpuid_overrides.push(CpuidEntry {
            function: 0x4000_00f0 + i as u32,
            index: 0,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
        });
    }

    let vm =
        Vm::new(config).unwrap_or_else(|e| fail(&format!("creating the VM: {}", error_chain(&e))));
    let outcome = vm
        .run()
        .unwrap_or_else(|e| fail(&format!("running the VM: {}", error_chain(&e))));
    if outcome.reason != StopReason::GuestDone {
        fail(&format!(
            "the payload did not pass: {} (after {:?}; SYNCs so far: {:?})",
            outcome.reason, outcome.elapsed, outcome.syncs
        ));
    }
    outcome
}

fn parse(outcome: &VmOutcome) -> Round {
    let stage = |n: u64| {
        let found: Vec<_> = outcome.syncs.iter().filter(|s| s.stage == n).collect();
        match found.as_slice() {
            [one] => one.values,
            _ => fail(&format!(
                "expected one SYNC of stage {n}, got {:?}",
                outcome.syncs
            )),
        }
    };
    let [cpl, tsc_hz, msr_cycles, n_msr, page_cycles, n_page] = stage(1);
    let [rdtsc_cycles, n_page2, last_page, last_msr, sequence, loop_cycles] = stage(2);
    if cpl != 3 {
        fail(&format!("the payload's user part ran at CPL {cpl}, not 3"));
    }
    if n_msr == 0 || n_page == 0 || n_page2 != n_page || tsc_hz == 0 {
        fail(&format!("inconsistent report: {:?}", outcome.syncs));
    }
    Round {
        cpl,
        tsc_hz,
        msr_cycles,
        n_msr,
        page_cycles,
        n_page,
        rdtsc_cycles,
        last_page,
        last_msr,
        sequence,
        loop_cycles,
        elapsed: outcome.elapsed,
    }
}

fn min(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(f64::INFINITY, f64::min)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The newest `bench_time_read` ELF built by guest-tests; builds guest-tests if there is none
/// or if it is older than the guest sources.
fn guest_elf() -> PathBuf {
    let guest = workspace_root().join("guest-tests/guest");
    // What the payload is built from: the runtime library (every source outside src/bin/), its
    // own source, the crate manifest and the linker script. Other payloads do not count.
    let sources_mtime = [
        newest_mtime(&guest.join("src"), Some(&guest.join("src/bin"))),
        mtime(&guest.join(format!("src/bin/{PAYLOAD}.rs"))),
        mtime(&guest.join("Cargo.toml")),
        mtime(&guest.join("link.ld")),
    ]
    .into_iter()
    .max()
    .flatten();
    if let Some((path, mtime)) = find_guest_elf() {
        if sources_mtime.is_none_or(|s| mtime >= s) {
            return path;
        }
        eprintln!(
            "time_read: {} is older than the guest sources; rebuilding",
            path.display()
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("time_read: building the guest payloads (cargo build -p guest-tests)");
    let status = Command::new(&cargo)
        .args(["build", "-p", "guest-tests"])
        .current_dir(workspace_root())
        .status()
        .unwrap_or_else(|e| fail(&format!("running {cargo:?} build -p guest-tests: {e}")));
    if !status.success() {
        fail(&format!("`cargo build -p guest-tests` failed ({status})"));
    }
    match find_guest_elf() {
        Some((path, _)) => path,
        None => fail(&format!(
            "no {PAYLOAD} ELF under {:?} even after `cargo build -p guest-tests`; \
             expected <target>/*/build/guest-tests-*/{GUEST_ELF_SUBPATH}/{PAYLOAD}",
            target_dirs()
        )),
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Candidate target directories: $CARGO_TARGET_DIR, the one this bench binary runs from
/// (`<target>/<profile>/deps/time_read-*`), `<workspace>/target`.
fn target_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        dirs.push(if dir.is_absolute() {
            dir
        } else {
            workspace_root().join(dir)
        });
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.ancestors().nth(3) {
            dirs.push(dir.to_path_buf());
        }
    }
    dirs.push(workspace_root().join("target"));
    dirs.dedup();
    dirs
}

/// `<target>/<profile>/build/guest-tests-*/out/guest-target/.../bench_time_read`, newest first.
fn find_guest_elf() -> Option<(PathBuf, SystemTime)> {
    let mut best: Option<(PathBuf, SystemTime)> = None;
    for target in target_dirs() {
        for profile in read_dir(&target) {
            for build in read_dir(&profile.join("build")) {
                let is_guest_tests = build
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("guest-tests-"));
                if !is_guest_tests {
                    continue;
                }
                let elf = build.join(GUEST_ELF_SUBPATH).join(PAYLOAD);
                let Some(mtime) = mtime(&elf) else {
                    continue;
                };
                if best.as_ref().is_none_or(|(_, t)| mtime > *t) {
                    best = Some((elf, mtime));
                }
            }
        }
    }
    best
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|it| it.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The newest modification time of the files under `dir`, leaving out the subtree `skip`.
fn newest_mtime(dir: &Path, skip: Option<&Path>) -> Option<SystemTime> {
    let mut newest = None;
    for path in read_dir(dir) {
        if Some(path.as_path()) == skip {
            continue;
        }
        let t = if path.is_dir() {
            newest_mtime(&path, skip)
        } else {
            mtime(&path)
        };
        newest = newest.max(t);
    }
    newest
}

fn mtime(path: &Path) -> Option<SystemTime> {
    path.metadata().and_then(|m| m.modified()).ok()
}

fn fail(message: &str) -> ! {
    eprintln!("time_read: {message}");
    std::process::exit(1);
}
