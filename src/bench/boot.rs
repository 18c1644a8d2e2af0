//! `hvkvm bench boot`: a guest from power-on to its `/init` and to poweroff, per vCPU count.
//!
//! The guest is Debian's kernel with the initramfs of `scripts/linux-guest.sh`, whose `/init`
//! prints [`INIT_MARKER`] first and powers off last; the times are taken when the marker
//! crosses the UART and when the VM stops. Besides wall time, each row has the CPU time the
//! whole hvkvm process used: on a shared host (the development machines have two cores and
//! several users) wall time grows with the load, CPU time much less.
//!
//! QEMU cannot boot a guest on the kvm_pvm development hosts, so the report names the best
//! figure known for this host kind instead (../shared/test-host.md) and says that it was not
//! measured in the same run.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{BenchError, HostInfo};
use crate::boot::linux::LinuxImage;
use crate::devices::serial::SerialSink;
use crate::host_quirks::{HostQuirks, QuirksMode};
use crate::kvm::clock::process_cpu_time_ns;
use crate::kvm::HostProbe;
use crate::vcpu::stats::VcpuStatsSnapshot;
use crate::vm::{self, BootSource, VmConfig};

/// The line the initramfs `/init` prints first.
pub const INIT_MARKER: &str = "HVKVM-INIT: reached /init";

/// The reference where no peer VMM can run in the same benchmark (kvm_pvm hosts).
pub const PVM_REFERENCE: &str = "not measured here (QEMU cannot boot a guest on a kvm_pvm host): \
     test-host.md's best figure for this host kind is a minimal C VMM at ~285-300 s to \
     poweroff on 1 and 2 vCPUs, with a 10x time-dilated Hyper-V clock (~400 s without)";

/// What to boot.
#[derive(Debug, Clone)]
pub enum BootGuest {
    /// A kernel and initramfs; `cmdline` None: what `hvkvm run` would use.
    Linux {
        /// The kernel (bzImage or vmlinux).
        kernel: Vec<u8>,
        /// The initramfs.
        initrd: Vec<u8>,
        /// The command line.
        cmdline: Option<String>,
        /// Where the kernel came from (for the report).
        name: String,
    },
    /// An ELF payload that prints the marker and powers off (tests of the benchmark itself).
    Payload {
        /// The image.
        image: Vec<u8>,
        /// Its name.
        name: String,
    },
}

/// One boot.
#[derive(Debug, Clone, Serialize)]
pub struct BootRow {
    /// vCPUs.
    pub cpus: u32,
    /// Wall seconds from the vCPUs' start until `/init` printed its marker (None: never).
    pub to_init_s: Option<f64>,
    /// Wall seconds until the VM stopped.
    pub to_stop_s: f64,
    /// How it stopped ("the guest powered off", ...).
    pub stop: String,
    /// Whether it stopped by powering off.
    pub powered_off: bool,
    /// CPU seconds hvkvm used (all threads) until the marker.
    pub cpu_to_init_s: Option<f64>,
    /// CPU seconds hvkvm used until the VM stopped.
    pub cpu_to_stop_s: f64,
    /// The host's 1-minute load average before and after the boot.
    pub load_before: Option<f64>,
    /// See `load_before`.
    pub load_after: Option<f64>,
    /// Exit counters per vCPU.
    pub vcpu_stats: Vec<VcpuStatsSnapshot>,
}

/// The benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    /// Where it ran.
    pub host: HostInfo,
    /// What was booted.
    pub guest: String,
    /// The kernel command line (None for a payload).
    pub cmdline_1cpu: Option<String>,
    /// One row per vCPU count, in the order asked.
    pub rows: Vec<BootRow>,
    /// What to compare with, and where that figure comes from.
    pub reference: String,
}

impl BootReport {
    /// The report as a table.
    pub fn render(&self) -> String {
        let mut s = String::from("hvkvm bench boot: power-on to /init and to poweroff\n");
        s.push_str(&format!("  host:  {}\n", self.host.describe()));
        s.push_str(&format!("  guest: {}\n", self.guest));
        if let Some(c) = &self.cmdline_1cpu {
            s.push_str(&format!("  command line (1 vCPU): {c}\n"));
        }
        s.push_str(&format!(
            "  {:>5} {:>10} {:>12} {:>12} {:>14} {:>10} {:>11}\n",
            "vCPUs", "/init s", "poweroff s", "CPU s /init", "CPU s stopped", "exits", "load 1 min"
        ));
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        for r in &self.rows {
            let exits: u64 = r.vcpu_stats.iter().map(|v| v.exits).sum();
            let stop = if r.powered_off {
                format!("{:.1}", r.to_stop_s)
            } else {
                format!("({:.1})", r.to_stop_s)
            };
            s.push_str(&format!(
                "  {:>5} {:>10} {:>12} {:>12} {:>14.1} {:>10} {:>11}\n",
                r.cpus,
                opt(r.to_init_s),
                stop,
                opt(r.cpu_to_init_s),
                r.cpu_to_stop_s,
                exits,
                format!("{}->{}", opt(r.load_before), opt(r.load_after)),
            ));
            if !r.powered_off {
                s.push_str(&format!("        did not power off: {}\n", r.stop));
            }
        }
        s.push_str(&format!("  reference: {}\n", self.reference));
        s
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

/// When the marker went past, by wall clock and process CPU time.
type Seen = Arc<Mutex<Option<(Instant, u64)>>>;

/// A serial sink that notes when [`INIT_MARKER`] passes and copies everything to `copy`.
struct MarkerSink {
    tail: Vec<u8>,
    seen: Seen,
    copy: SerialSink,
}

impl Write for MarkerSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.copy.write(buf)?;
        if self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            self.tail.extend_from_slice(&buf[..n]);
            let marker = INIT_MARKER.as_bytes();
            if self.tail.windows(marker.len()).any(|w| w == marker) {
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), process_cpu_time_ns()));
            }
            let keep = self.tail.len().saturating_sub(marker.len());
            self.tail.drain(..keep);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.copy.flush()
    }
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Boots `guest` once per entry of `cpus` (one at a time), each under `timeout`; the console
/// of each boot goes to `console_dir/hvkvm-bench-boot-<N>cpu.log` when given.
pub fn run(
    guest: &BootGuest,
    cpus: &[u32],
    timeout: Duration,
    console_dir: Option<&std::path::Path>,
) -> Result<BootReport, BenchError> {
    let host = HostProbe::probe()?;
    let quirks = HostQuirks::resolve(QuirksMode::Auto, host.is_pvm());
    let mut rows = Vec::new();
    for &n in cpus {
        let boot = match guest {
            BootGuest::Linux {
                kernel,
                initrd,
                cmdline,
                ..
            } => BootSource::Linux(LinuxImage {
                kernel: kernel.clone(),
                initrd: Some(initrd.clone()),
                cmdline: crate::cli::run::linux_cmdline(cmdline.as_deref(), quirks, n),
            }),
            BootGuest::Payload { image, name } => BootSource::Payload {
                image: image.clone(),
                name: name.clone(),
            },
        };
        let mut config = VmConfig::new(boot);
        config.cpus = n;
        config.memory_mib = 512;
        config.timeout = Some(timeout);
        let copy: SerialSink = match console_dir {
            Some(dir) => {
                let path: PathBuf = dir.join(format!("hvkvm-bench-boot-{n}cpu.log"));
                Box::new(
                    std::fs::File::create(&path).map_err(|source| BenchError::Console {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => Box::new(io::sink()),
        };
        let seen = Seen::default();
        config.serial = Box::new(MarkerSink {
            tail: Vec::new(),
            seen: seen.clone(),
            copy,
        });
        let load_before = load_average();
        let vm_err = |source| BenchError::Vm {
            payload: "boot",
            source,
        };
        let vm = vm::Vm::new(config).map_err(vm_err)?;
        let cpu_start = process_cpu_time_ns();
        let running = vm.start().map_err(vm_err)?;
        let start = running.started();
        let outcome = running.finish();
        let cpu_end = process_cpu_time_ns();
        let seen = *seen.lock().unwrap_or_else(|p| p.into_inner());
        let cpu = |ns: u64| ns.saturating_sub(cpu_start) as f64 / 1e9;
        rows.push(BootRow {
            cpus: n,
            to_init_s: seen.map(|(t, _)| t.duration_since(start).as_secs_f64()),
            to_stop_s: outcome.elapsed.as_secs_f64(),
            stop: outcome.reason.to_string(),
            powered_off: outcome.reason == vm::StopReason::PowerOff,
            cpu_to_init_s: seen.map(|(_, c)| cpu(c)),
            cpu_to_stop_s: cpu(cpu_end),
            load_before,
            load_after: load_average(),
            vcpu_stats: outcome.vcpu_stats,
        });
    }
    let (guest_name, cmdline_1cpu) = match guest {
        BootGuest::Linux { name, cmdline, .. } => (
            name.clone(),
            Some(crate::cli::run::linux_cmdline(
                cmdline.as_deref(),
                quirks,
                1,
            )),
        ),
        BootGuest::Payload { name, .. } => (format!("ELF payload {name}"), None),
    };
    Ok(BootReport {
        host: HostInfo::from_probe(&host),
        guest: guest_name,
        cmdline_1cpu,
        rows,
        reference: if host.is_pvm() {
            PVM_REFERENCE.to_string()
        } else {
            "none in this run: compare with QEMU on the same host (README, \"Linux boot\")"
                .to_string()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::run::linux_cmdline;

    #[test]
    fn the_marker_is_found_across_writes() {
        let seen = Seen::default();
        let mut sink = MarkerSink {
            tail: Vec::new(),
            seen: seen.clone(),
            copy: Box::new(io::sink()),
        };
        sink.write_all(b"[ 1.0] booting\nHVKVM-IN").unwrap();
        assert!(seen.lock().unwrap().is_none());
        for b in b"IT: reached /init\n" {
            sink.write_all(&[*b]).unwrap();
        }
        assert!(seen.lock().unwrap().is_some());
    }

    #[test]
    fn one_vcpu_gets_nosmp_once_and_quirks_come_first() {
        let c = linux_cmdline(Some("console=ttyS0 nosmp"), HostQuirks::NONE, 1);
        assert_eq!(c, "console=ttyS0 nosmp");
        let c = linux_cmdline(None, HostQuirks::PVM, 2);
        assert!(c.starts_with("noxsave "), "{c}");
        assert!(!c.contains("nosmp"), "{c}");
    }
}
