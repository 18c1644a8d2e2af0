//! Debian's kernel on 2 vCPUs, plain KVM against Hyper-V (`--profile linux --hv kvm=off`, user
//! backend): boot time to /init, host CPU of the idle guest, and the guest's mmap/munmap TLB
//! shootdown loop (`tlb_shootdown` in the initramfs) with and without the PV flush hypercall.
//!
//! Each configuration is one boot (minutes on hosts that emulate guest kernel code; run it
//! alone: `flock /tmp/hvkvm-heavy.lock cargo bench -p guest-tests --bench hyperv_linux`).
//! HVKVM_BENCH_LINUX picks configurations (comma-separated; default all):
//! - `kvm`: plain KVM guest;
//! - `hv`: Hyper-V, the host quirk's time dilation (10 on kvm_pvm hosts, else 1);
//! - `hv-nodilation`: Hyper-V, dilation 1;
//! - `hv-noflush`: Hyper-V with `-hv-tlbflush` (shootdowns by IPI; IPIs still by hypercall);
//! - `hv-nodilation-noflush`: both.
//!
//! HVKVM_BENCH_IDLE_S (default 20) is the idle phase in host seconds (the guest sleeps that
//! long divided by the dilation factor); HVKVM_BENCH_TLB (default 300) the shootdown
//! iterations. Needs scripts/linux-guest.sh's output (else SKIP).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest_tests::{error_chain, kvm_unavailable};
use hvkvm::boot::linux::LinuxImage;
use hvkvm::cli::run::{quirk_cmdline, DEFAULT_CMDLINE};
use hvkvm::host_quirks::{HostQuirks, QuirksMode};
use hvkvm::hyperv::{BackendChoice, CrashAction, HvConfig};
use hvkvm::kvm::HostProbe;
use hvkvm::vm::{self, BootSource, VmConfig};

/// Host CPU time of this process (utime + stime), from /proc/self/stat (USER_HZ = 100).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of the file are 12 and 13 after the command name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// A console line with the host time since the start and the process CPU time at its arrival.
type Marked = (String, Duration, Duration);

/// Per-thread CPU time at the idle phase's two markers.
type ThreadCpu = std::collections::BTreeMap<String, Duration>;

/// CPU time of this process's threads by name (vcpu0, vcpu1, hv-stimers, ...), from
/// /proc/self/task/*/stat.
fn thread_cpu() -> std::collections::BTreeMap<String, Duration> {
    let mut by_name = std::collections::BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let (Some(open), Some((head, rest))) = (stat.find('('), stat.rsplit_once(')')) else {
            continue;
        };
        let name = head[open + 1..].to_string();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        *by_name.entry(name).or_insert(Duration::ZERO) +=
            Duration::from_millis((ticks(11) + ticks(12)) * 10);
    }
    by_name
}

/// Console lines with the host time and process CPU time they arrived at.
#[derive(Clone)]
struct Markers {
    start: Instant,
    state: Arc<Mutex<(Vec<u8>, Vec<Marked>)>>,
    log: Arc<Mutex<std::fs::File>>,
    idle_threads: Arc<Mutex<Vec<ThreadCpu>>>,
}

impl Write for Markers {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.log.lock().unwrap().write_all(buf);
        let mut s = self.state.lock().unwrap();
        for &b in buf {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&s.0).trim_end().to_string();
                s.0.clear();
                if line.starts_with("HVKVM-IDLE:") {
                    self.idle_threads.lock().unwrap().push(thread_cpu());
                }
                if line.starts_with("HVKVM-") {
                    s.1.push((line, self.start.elapsed(), process_cpu()));
                }
            } else {
                s.0.push(b);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Result {
    name: &'static str,
    reason: String,
    init_s: Option<f64>,
    total_s: f64,
    idle_cpu_pct: Option<f64>,
    tlb_cycles: Option<u64>,
    stale: Option<String>,
    idle_by_thread: String,
    lines: Vec<String>,
}

fn boot(
    dir: &std::path::Path,
    name: &'static str,
    hv: Option<&str>,
    dilation: Option<u32>,
) -> Result {
    let host = HostProbe::probe().expect("probe");
    let quirks = HostQuirks::resolve(QuirksMode::Auto, host.is_pvm());
    let n = match (hv, dilation) {
        (None, _) => 1,
        (Some(_), Some(n)) => n,
        (Some(_), None) => quirks.time_dilation,
    };
    let idle_host_s = std::env::var("HVKVM_BENCH_IDLE_S")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(20);
    let tlb = std::env::var("HVKVM_BENCH_TLB").unwrap_or_else(|_| "300".into());
    let mut cmdline = DEFAULT_CMDLINE.to_string();
    if let Some(extra) = quirk_cmdline(quirks) {
        cmdline = format!("{extra} {cmdline}");
    }
    cmdline.push_str(&format!(
        " hvkvm.tlbbench={tlb} hvkvm.idle={}",
        (idle_host_s / n).max(1)
    ));
    let image = LinuxImage {
        kernel: std::fs::read(dir.join("vmlinuz")).unwrap(),
        initrd: Some(std::fs::read(dir.join("initramfs.cpio")).unwrap()),
        cmdline,
    };
    let mut config = VmConfig::new(BootSource::Linux(image));
    if let Some(list) = hv {
        let mut request = hv_model::parse_hv_list(list).unwrap();
        request.profile = Some(hv_model::Profile::Linux);
        let resolution = hvkvm::hyperv::resolve_for_vm(&request, &host, BackendChoice::User)
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)))
            .expect("a Hyper-V selection");
        config.hypervisor_leaves = Some(hvkvm::hyperv::cpuid_entries(&resolution));
        config.hyperv = HvConfig::from_resolution(&resolution, CrashAction::Log);
        config.time_dilation = dilation;
    }
    config.cpus = 2;
    config.memory_mib = 512;
    config.timeout = Some(Duration::from_secs(1500));
    let log = std::env::temp_dir().join(format!("hvkvm-bench-linux-{name}.log"));
    eprintln!("hyperv_linux: {name}: console in {}", log.display());
    let markers = Markers {
        start: Instant::now(),
        state: Arc::default(),
        log: Arc::new(Mutex::new(std::fs::File::create(&log).unwrap())),
        idle_threads: Arc::default(),
    };
    config.serial = Box::new(markers.clone());
    let outcome = vm::run(config).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let lines = markers.state.lock().unwrap().1.clone();
    let at = |prefix: &str| lines.iter().find(|(l, _, _)| l.starts_with(prefix));
    let idle = match (at("HVKVM-IDLE: begin"), at("HVKVM-IDLE: end")) {
        (Some((_, w0, c0)), Some((_, w1, c1))) => {
            Some((*c1 - *c0).as_secs_f64() / (*w1 - *w0).as_secs_f64() * 100.0)
        }
        _ => None,
    };
    let tlb_cycles = at("HVKVM-TLB:").and_then(|(l, _, _)| {
        l.split(", ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    });
    let idle_by_thread = match markers.idle_threads.lock().unwrap().as_slice() {
        [before, after, ..] => after
            .iter()
            .map(|(name, t)| {
                let t0 = before.get(name).copied().unwrap_or(Duration::ZERO);
                format!("{name} {} ms", t.saturating_sub(t0).as_millis())
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    };
    let stale = at("HVKVM-TLB-CHECK:").map(|(l, _, _)| l["HVKVM-TLB-CHECK: ".len()..].to_string());
    if let Some(report) = &outcome.hyperv {
        eprintln!("{}", report.render());
    }
    Result {
        name,
        reason: outcome.reason.to_string(),
        init_s: at("HVKVM-INIT: reached /init").map(|(_, w, _)| w.as_secs_f64()),
        total_s: outcome.elapsed.as_secs_f64(),
        idle_cpu_pct: idle,
        tlb_cycles,
        stale,
        idle_by_thread,
        lines: lines.into_iter().map(|(l, _, _)| l).collect(),
    }
}

fn main() {
    if let Some(reason) = kvm_unavailable() {
        println!("SKIP: {reason}");
        return;
    }
    let (dir, present) = guest_tests::linux_guest_dir();
    if !present {
        println!(
            "SKIP: no Linux guest in {}: run scripts/linux-guest.sh",
            dir.display()
        );
        return;
    }
    let wanted = std::env::var("HVKVM_BENCH_LINUX")
        .unwrap_or_else(|_| "kvm,hv,hv-nodilation,hv-noflush".into());
    let mut results = Vec::new();
    for which in wanted.split(',') {
        let r = match which.trim() {
            "kvm" => boot(&dir, "kvm", None, None),
            "hv" => boot(&dir, "hv", Some("kvm=off"), None),
            "hv-nodilation" => boot(&dir, "hv-nodilation", Some("kvm=off"), Some(1)),
            "hv-noflush" => boot(&dir, "hv-noflush", Some("kvm=off,-hv-tlbflush"), None),
            "hv-nodilation-noflush" => boot(
                &dir,
                "hv-nodilation-noflush",
                Some("kvm=off,-hv-tlbflush"),
                Some(1),
            ),
            other => {
                println!("unknown configuration '{other}'");
                continue;
            }
        };
        for l in &r.lines {
            println!("  {}: {l}", r.name);
        }
        results.push(r);
    }
    let host = HostProbe::probe().expect("probe");
    println!(
        "hyperv_linux: Debian kernel, 2 vCPUs, 512 MiB | host: {} | /dev/kvm: {}",
        host.cpu_model.as_deref().unwrap_or("unknown CPU"),
        host.kvm_module.as_deref().unwrap_or("unknown module"),
    );
    println!(
        "  {:<22} {:>10} {:>8} {:>16} {:>20}  {:<28} end",
        "config", "/init at s", "total s", "idle host CPU %", "shootdown cyc/iter", "remap check"
    );
    for r in &results {
        println!(
            "  {:<22} {:>10} {:>8.0} {:>16} {:>20}  {:<28} {}",
            r.name,
            r.init_s.map_or("-".into(), |s| format!("{s:.0}")),
            r.total_s,
            r.idle_cpu_pct.map_or("-".into(), |p| format!("{p:.2}")),
            r.tlb_cycles.map_or("-".into(), |c| c.to_string()),
            r.stale.as_deref().unwrap_or("-"),
            r.reason
        );
    }
    for r in &results {
        println!(
            "  {}: host CPU by thread during the idle phase: {}",
            r.name, r.idle_by_thread
        );
    }
}
