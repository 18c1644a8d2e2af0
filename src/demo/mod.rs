//! `hvkvm demo`: the Hyper-V job in a few seconds.
//!
//! 1. The built-in guest (guest-tests/guest/src/bin/demo.rs) boots on N vCPUs with Hyper-V
//!    enlightenments ([`HV_LIST`]) on the backend `--backend auto` picks on this host: KVM's
//!    in-kernel Hyper-V where the kernel has it, hvkvm's user backend elsewhere. Each vCPU
//!    reports what it sees ([`view`]): the hypervisor leaf, its VP index, the reference TSC
//!    page and TIME_REF_COUNT.
//! 2. What the guest used of the Hyper-V interface: the VM's usage report
//!    ([`crate::hyperv::report::UsageReport`], as `hvkvm run --hv-report` prints it).
//! 3. A measured table: one TSC-page read against one TIME_REF_COUNT read, by
//!    `hvkvm bench time-read`'s guest and analysis ([`crate::bench::time_read::measure`]) with
//!    [`TIME_READS`] reads each, on the same backend.
//! 4. Where the host can nest, the L2 CPUID round trip with and without the enlightened VMCS
//!    ([`crate::bench::nested_cpuid`], [`NESTED_ROUNDS`] each); elsewhere the reason it is
//!    skipped. Nothing is ever estimated in place of a measurement.

pub mod view;

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::nested_cpuid::{self, Mode, NestedCpuidReport};
use crate::bench::{self, HostInfo, Summary};
use crate::devices::serial::{CaptureBuffer, SerialSink, Tee, Unbuffered};
use crate::hyperv::report::UsageReport;
use crate::hyperv::{self, BackendChoice, CrashAction, HvConfig};
use crate::kvm::HostProbe;
use crate::vcpu::stats::VcpuStatsSnapshot;
use crate::vm::{self, BootSource, VmConfig};
use view::{GuestView, TimerView};

/// The demo guest, built from guest-tests/guest/src/bin/demo.rs by build.rs.
pub static DEMO_ELF: &[u8] = include_bytes!(env!("HVKVM_DEMO_ELF"));

/// The enlightenments the demo guest gets (`--hv` syntax). KVM's own leaves are hidden so that
/// the guest sees Hyper-V alone, as a Windows or Linux Hyper-V guest expects.
pub const HV_LIST: &str = "hv-relaxed,hv-vpindex,hv-time,hv-frequencies,kvm=off";

/// Added to [`HV_LIST`] where this host's backend can provide them: the SynIC and synthetic
/// timers in direct mode (vCPU 0 arms one).
pub const HV_TIMER_LIST: &str = "hv-synic,hv-stimer,hv-stimer-direct";

/// Reads per method in the time table: enough for stable medians, and about 0.1 s of emulated
/// MSR reads on hosts that emulate CPL0 code.
pub const TIME_READS: u64 = 5_000;

/// L2 CPUID round trips per mode in the nested table.
pub const NESTED_ROUNDS: u32 = 100;

/// Serial lines kept in the report (the guest prints about 3 per vCPU).
const MAX_SERIAL_LINES: usize = 1000;

/// How to run the demo.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// vCPUs.
    pub cpus: u32,
    /// Limit for the guest run.
    pub timeout: Duration,
    /// Copy the guest's serial output to stdout while it runs.
    pub echo_serial: bool,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// No usable /dev/kvm.
    #[error(transparent)]
    Probe(#[from] crate::kvm::ProbeError),
    /// The demo's enlightenments cannot be provided here.
    #[error("cannot give the demo guest {HV_LIST} on this host")]
    HyperV(#[source] crate::hyperv::HyperVError),
    /// The selection resolved to no enlightenment at all.
    #[error("the demo's enlightenments ({HV_LIST}) resolved to nothing on this host")]
    NoHyperV,
    /// Building or running the guest.
    #[error("cannot run the built-in demo guest")]
    Vm(#[source] vm::VmError),
    /// The guest's reports do not add up.
    #[error(transparent)]
    View(#[from] view::ViewError),
}

/// The guest run.
#[derive(Debug, Clone, Serialize)]
pub struct GuestRun {
    /// vCPUs.
    pub cpus: u32,
    /// What was booted.
    pub boot: String,
    /// How the VM ended.
    pub ended: String,
    /// hvkvm's exit status for that ending.
    pub exit_status: i32,
    /// Wall time of the run, seconds.
    pub run_s: f64,
    /// What the guest printed on COM1, line by line.
    pub serial: Vec<String>,
    /// What each vCPU saw.
    #[serde(flatten)]
    pub view: GuestView,
    /// Exit counts per vCPU.
    pub vcpu_stats: Vec<VcpuStatsSnapshot>,
}

/// One row of the time table.
#[derive(Debug, Clone, Serialize)]
pub struct TimeRow {
    /// "tsc_page", "time_ref_count_msr", "rdtsc".
    pub key: &'static str,
    /// What was read, and how.
    pub label: &'static str,
    /// p10/median/p90/mean in `unit`.
    #[serde(flatten)]
    pub summary: Summary,
    /// The median in nanoseconds (None when the guest did not report its TSC rate).
    pub median_ns: Option<f64>,
}

/// TSC page against TIME_REF_COUNT, measured in this run.
#[derive(Debug, Clone, Serialize)]
pub struct TimeTable {
    /// What `hvkvm bench time-read` calls this measurement.
    pub title: String,
    /// Unit of the rows.
    pub unit: &'static str,
    /// Reads per method.
    pub reads: u64,
    /// The rows.
    pub rows: Vec<TimeRow>,
    /// MSR median / TSC page median.
    pub ratio: f64,
    /// Caveats.
    pub notes: Vec<String>,
}

impl TimeTable {
    fn from_report(report: &bench::Report) -> TimeTable {
        // Nanoseconds only where the TSC counts time (not on an emulated CPU).
        let tsc_hz = report
            .host
            .tsc_khz
            .filter(|_| !report.host.emulated_cpu)
            .map(|k| f64::from(k) * 1e3);
        let rows = report
            .series
            .iter()
            .filter_map(|s| {
                let summary = s.summary()?;
                Some(TimeRow {
                    key: s.key,
                    label: s.label,
                    summary,
                    median_ns: tsc_hz.map(|hz| summary.median * 1e9 / hz),
                })
            })
            .collect();
        let ratio = report
            .figures
            .iter()
            .find(|f| f.key == "msr_over_tsc_page")
            .map_or(f64::NAN, |f| f.value);
        TimeTable {
            title: report.title.clone(),
            unit: report.unit,
            reads: report.iterations,
            rows,
            ratio,
            notes: report.notes.clone(),
        }
    }
}

/// A part of the demo that may not run on every host.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Part<T> {
    /// Measured here.
    Measured(T),
    /// Not possible on this host, and why.
    Skipped {
        /// Why.
        reason: String,
    },
    /// It should have worked and did not.
    Failed {
        /// The error chain.
        error: String,
    },
}

impl<T> Part<T> {
    fn failed(&self) -> bool {
        matches!(self, Part::Failed { .. })
    }
}

/// Where the time went.
#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    /// Probing the host and resolving the enlightenments.
    pub setup_s: f64,
    /// The demo guest, boot to exit.
    pub guest_s: f64,
    /// The time-read measurement.
    pub time_read_s: f64,
    /// The nested measurement (0 when skipped).
    pub nested_s: f64,
    /// All of it.
    pub total_s: f64,
}

/// Everything `hvkvm demo` shows; `hvkvm demo --json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The host.
    pub host: HostInfo,
    /// The Hyper-V backend that served the guest ("user" or "kernel").
    pub backend: String,
    /// Why `--backend auto` chose it.
    pub backend_reason: &'static str,
    /// Enlightenments offered to the guest.
    pub enlightenments: Vec<String>,
    /// The guest run.
    pub guest: GuestRun,
    /// What the guest used of the Hyper-V interface.
    pub hyperv_usage: Option<UsageReport>,
    /// vCPU 0's synthetic timer (direct mode).
    pub synthetic_timer: Part<TimerView>,
    /// TSC page vs TIME_REF_COUNT.
    pub time_read: Part<TimeTable>,
    /// L2 CPUID with and without eVMCS.
    pub nested: Part<NestedCpuidReport>,
    /// Where the time went.
    pub timings: Timings,
}

impl DemoReport {
    /// hvkvm's exit status: the guest's, else 1 when a measurement that this host should
    /// support failed, else 0.
    pub fn exit_status(&self) -> i32 {
        if self.guest.exit_status != 0 {
            self.guest.exit_status
        } else if self.synthetic_timer.failed() || self.time_read.failed() || self.nested.failed() {
            1
        } else {
            0
        }
    }
}

/// Why there is no TSC page to time, when the demo guest found none: a kernel backend keeps the
/// page invalid (sequence 0) while the host's clock is not TSC-stable, and the guest must then
/// read TIME_REF_COUNT (TLFS). `None` when some vCPU read a valid page.
fn page_unusable(view: &GuestView) -> Option<String> {
    if view
        .vcpus
        .iter()
        .any(|v| v.tsc_page.as_ref().is_some_and(|p| p.time_100ns.is_some()))
    {
        return None;
    }
    Some(
        "the demo guest found no valid reference TSC page (sequence 0, or not offered), so \
         there is no page read to time against TIME_REF_COUNT here"
            .into(),
    )
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// Runs the demo.
pub fn run(options: DemoOptions) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let host = HostProbe::probe()?;
    let resolve = |list: &str| {
        let request = hv_model::parse_hv_list(list).map_err(hyperv::HyperVError::Model)?;
        hyperv::resolve_for_vm(&request, &host, BackendChoice::Auto)
    };
    // With the synthetic timer where the backend can provide it, else without it and why not.
    let (resolution, timer_unavailable) = match resolve(&format!("{HV_LIST},{HV_TIMER_LIST}")) {
        Ok(r) => (r, None),
        Err(e) => (
            resolve(HV_LIST).map_err(DemoError::HyperV)?,
            Some(crate::cli::error_chain(&e)),
        ),
    };
    let resolution = resolution.ok_or(DemoError::NoHyperV)?;
    let hv = HvConfig::from_resolution(&resolution, CrashAction::Log);
    let mut config = VmConfig::new(BootSource::Payload {
        image: DEMO_ELF.to_vec(),
        name: "built-in demo".into(),
    });
    config.cpus = options.cpus;
    config.timeout = Some(options.timeout);
    config.hypervisor_leaves = Some(hyperv::cpuid_entries(&resolution));
    config.hyperv = hv.clone();
    let capture = CaptureBuffer::default();
    config.serial = if options.echo_serial {
        Box::new(Tee(
            Box::new(Unbuffered(std::io::stdout())),
            Box::new(capture.clone()),
        )) as SerialSink
    } else {
        Box::new(capture.clone())
    };
    let setup_s = secs(started);

    let guest_started = Instant::now();
    let outcome = vm::run(config).map_err(DemoError::Vm)?;
    let guest_s = secs(guest_started);
    let view = view::decode(&outcome.syncs, options.cpus)?;
    let guest = GuestRun {
        cpus: options.cpus,
        boot: outcome.boot.clone(),
        ended: outcome.reason.to_string(),
        exit_status: outcome.reason.exit_status(),
        run_s: outcome.elapsed.as_secs_f64(),
        serial: capture
            .contents()
            .lines()
            .take(MAX_SERIAL_LINES)
            .map(str::to_string)
            .collect(),
        view,
        vcpu_stats: outcome.vcpu_stats.clone(),
    };

    let synthetic_timer = match (timer_unavailable, &guest.view.timer) {
        (Some(reason), _) => Part::Skipped { reason },
        (None, Some(t)) if t.fired_at_100ns.is_some() => Part::Measured(t.clone()),
        (None, Some(t)) => Part::Failed {
            error: format!(
                "synthetic timer 0 (direct mode, vector {:#x}) was armed for {} but its \
                 interrupt never reached the guest",
                t.vector, t.due_100ns
            ),
        },
        (None, None) => Part::Failed {
            error: "the guest did not report its synthetic timer (not offered in CPUID, or \
                    vCPU 0 never got there)"
                .into(),
        },
    };

    let time_started = Instant::now();
    let time_read = match page_unusable(&guest.view) {
        Some(reason) => Part::Skipped { reason },
        None => match bench::time_read::measure(&host, BackendChoice::Auto, TIME_READS, false) {
            Ok(report) => Part::Measured(TimeTable::from_report(&report)),
            Err(e) => Part::Failed {
                error: crate::cli::error_chain(&e),
            },
        },
    };
    let time_read_s = secs(time_started);

    let nested_started = Instant::now();
    let nested = match Mode::ALL
        .iter()
        .find_map(|&mode| nested_cpuid::unavailable(&host, mode))
    {
        Some(reason) => Part::Skipped { reason },
        None => match nested_cpuid::run(NESTED_ROUNDS) {
            Ok(report) => Part::Measured(report),
            Err(e) => Part::Failed {
                error: crate::cli::error_chain(&e),
            },
        },
    };
    let nested_s = secs(nested_started);

    Ok(DemoReport {
        host: HostInfo::from_probe(&host),
        backend: resolution.backend.to_string(),
        backend_reason: hyperv::setup::auto_reason(resolution.backend),
        enlightenments: hv.map(|h| h.offered).unwrap_or_default(),
        guest,
        hyperv_usage: outcome.hyperv,
        synthetic_timer,
        time_read,
        nested,
        timings: Timings {
            setup_s,
            guest_s,
            time_read_s,
            nested_s,
            total_s: secs(started),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::view::{TscPageView, VcpuView};
    use super::*;

    fn vcpu(time: Option<u64>) -> VcpuView {
        VcpuView {
            vcpu: 0,
            apic_id: 0,
            hypervisor: "Hyper-V",
            vendor: "Microsoft Hv".into(),
            max_leaf: 0x4000_0005,
            interface: "Hv#1".into(),
            vp_index: Some(0),
            privileges: Vec::new(),
            tsc_page: Some(TscPageView {
                sequence: u32::from(time.is_some()),
                scale: 1,
                offset: 0,
                time_100ns: time,
            }),
            time_ref_count: Some(1),
        }
    }

    #[test]
    fn the_time_table_is_skipped_without_a_valid_page() {
        let none = GuestView {
            vcpus: vec![vcpu(None), vcpu(None)],
            time: None,
            timer: None,
        };
        assert!(page_unusable(&none)
            .unwrap()
            .contains("no valid reference TSC page"));
        let empty = GuestView {
            vcpus: Vec::new(),
            time: None,
            timer: None,
        };
        assert!(page_unusable(&empty).is_some());
        let one = GuestView {
            vcpus: vec![vcpu(None), vcpu(Some(5))],
            time: None,
            timer: None,
        };
        assert_eq!(page_unusable(&one), None);
    }
}
