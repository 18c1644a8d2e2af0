//! `hvkvm bench`: benchmarks that run guests and report latency distributions.
//!
//! Every benchmark produces a [`Report`]: named [`Series`] of per-operation costs as
//! [`Histogram`]s, the host they ran on, derived figures (ratios) and notes. The plumbing here
//! turns any report into a table ([`Report::render`]), JSON ([`Report::to_json`]) and a
//! latency-distribution plot with every series on one chart ([`plot::write_cdf`]), so adding a
//! benchmark (`nested-cpuid`, `boot`, ...) means producing a `Report` and nothing more.
//!
//! Benchmarks so far: [`time_read`] (a `Report`), and [`nested_cpuid`], an L2 CPUID exit under
//! an L1 hypervisor in the guest, classic VMCS against the enlightened VMCS (its L1 computes
//! the percentiles itself and reports no histogram, so it has its own report type and no
//! plot yet).

pub mod boot;
pub mod histogram;
pub mod nested_cpuid;
pub mod plot;
pub mod progress;
pub mod time_read;

use serde::Serialize;

pub use histogram::Histogram;
pub use progress::Progress;

use std::time::Duration;

use crate::cpu::CpuidEntry;
use crate::hyperv::{cpuid_entries, resolve_for_vm, BackendChoice, CrashAction};
use crate::kvm::HostProbe;
use crate::vm::{self, BootSource, StopReason, VmConfig, VmOutcome};

/// A VM for a benchmark payload: 64 MiB, one vCPU, serial output dropped, `hv_list` on the
/// chosen Hyper-V backend (as `hvkvm run --backend B --hv LIST`), and the payload parameter
/// leaf 0x400000F0 = `params` (0x400000F1..F3 defined as zeros: an undefined leaf above the
/// hypervisor range's maximum may read as another leaf).
pub fn guest_config(
    host: &HostProbe,
    payload: &'static str,
    image: &[u8],
    hv_list: &'static str,
    backend: BackendChoice,
    params: [u32; 4],
    timeout: Duration,
) -> Result<VmConfig, BenchError> {
    let mut config = VmConfig::new(BootSource::Payload {
        image: image.to_vec(),
        name: payload.to_string(),
    });
    config.memory_mib = 64;
    config.timeout = Some(timeout);
    config.serial = Box::new(std::io::sink());
    let request = hv_model::parse_hv_list(hv_list).map_err(|e| BenchError::HyperV {
        what: hv_list,
        source: crate::hyperv::HyperVError::Model(e),
    })?;
    let resolution = resolve_for_vm(&request, host, backend)
        .map_err(|source| BenchError::HyperV {
            what: hv_list,
            source,
        })?
        .ok_or(BenchError::NoHyperV(hv_list))?;
    config.hypervisor_leaves = Some(cpuid_entries(&resolution));
    config.hyperv = crate::hyperv::HvConfig::from_resolution(&resolution, CrashAction::Log);
    if config.hyperv.is_none() {
        return Err(BenchError::NoHyperV(hv_list));
    }
    for (i, regs) in [params, [0; 4], [0; 4], [0; 4]].iter().enumerate() {
        config.cpuid_overrides.push(CpuidEntry {
            function: 0x4000_00f0 + i as u32,
            index: 0,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
        });
    }
    Ok(config)
}

/// Runs a benchmark VM; anything but the guest's DONE is an error.
pub fn run_to_done(payload: &'static str, config: VmConfig) -> Result<VmOutcome, BenchError> {
    let outcome = vm::run(config).map_err(|source| BenchError::Vm { payload, source })?;
    if outcome.reason != StopReason::GuestDone {
        return Err(BenchError::GuestFailed {
            payload,
            reason: outcome.reason.to_string(),
        });
    }
    Ok(outcome)
}

/// Why a benchmark could not run or report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A console log file could not be created.
    #[error("cannot create the console log '{}'", path.display())]
    Console {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host could not be probed (no usable /dev/kvm).
    #[error(transparent)]
    Probe(#[from] crate::kvm::ProbeError),
    /// The Hyper-V selection the benchmark needs cannot be provided here.
    #[error("the benchmark needs {what}, which this host cannot provide")]
    HyperV {
        /// What it needs.
        what: &'static str,
        /// Why not.
        #[source]
        source: crate::hyperv::HyperVError,
    },
    /// A setting the benchmark needs resolved to nothing.
    #[error("the benchmark needs {0}, but the selection resolved to no Hyper-V interface")]
    NoHyperV(&'static str),
    /// Building or running the guest failed.
    #[error("running the {payload} guest failed")]
    Vm {
        /// The benchmark payload.
        payload: &'static str,
        /// What failed.
        #[source]
        source: crate::vm::VmError,
    },
    /// The guest ended other than by reporting DONE.
    #[error("the {payload} guest did not finish: {reason}")]
    GuestFailed {
        /// The benchmark payload.
        payload: &'static str,
        /// How it ended.
        reason: String,
    },
    /// The guest's reports do not add up.
    #[error("the {payload} guest reported inconsistent results: {detail}")]
    BadReport {
        /// The benchmark payload.
        payload: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Writing the plot failed.
    #[error("cannot draw the plot '{path}'")]
    Plot {
        /// The SVG file.
        path: String,
        /// The plotting library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The host a report was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    /// CPU model name.
    pub cpu: String,
    /// The module serving /dev/kvm (kvm_intel, kvm_amd, kvm_pvm).
    pub kvm_module: String,
    /// Host TSC frequency in kHz, when KVM reports it.
    pub tsc_khz: Option<u32>,
    /// Whether guest code at CPL0 is run by KVM's instruction emulator (kvm_pvm hosts).
    pub cpl0_emulated: bool,
    /// Whether the host's x86 CPU is itself emulated (Bochs): RDTSC then counts emulated
    /// instructions, so cycle figures are path lengths and nanoseconds mean nothing.
    pub emulated_cpu: bool,
}

impl HostInfo {
    /// From a probe.
    pub fn from_probe(probe: &HostProbe) -> HostInfo {
        HostInfo {
            cpu: probe
                .cpu_model
                .clone()
                .unwrap_or_else(|| "unknown CPU".into()),
            kvm_module: probe.kvm_module.clone().unwrap_or_else(|| "unknown".into()),
            tsc_khz: probe.tsc_khz,
            cpl0_emulated: probe.is_pvm(),
            emulated_cpu: nested_cpuid::emulated_cpu(),
        }
    }

    /// One line for reports and plot titles.
    pub fn describe(&self) -> String {
        let mut s = format!("{}, /dev/kvm from {}", self.cpu, self.kvm_module);
        if let Some(khz) = self.tsc_khz {
            s.push_str(&format!(", TSC {:.3} GHz", f64::from(khz) / 1e6));
        }
        if self.cpl0_emulated {
            s.push_str(" (CPL0 guest code is emulated here)");
        }
        if self.emulated_cpu {
            s.push_str(" (an emulated CPU: RDTSC counts instructions)");
        }
        s
    }
}

/// One measured operation.
#[derive(Debug, Clone)]
pub struct Series {
    /// Short key for JSON ("tsc_page").
    pub key: &'static str,
    /// Human label ("reference TSC page (CPL3)").
    pub label: &'static str,
    /// Per-operation costs.
    pub histogram: Histogram,
    /// Sum of the exact costs, for the mean (the histogram's buckets are approximate).
    pub sum: u64,
}

/// Summary statistics of a series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Operations measured.
    pub samples: u64,
    /// 10th percentile.
    pub p10: f64,
    /// Median.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Mean of the exact values.
    pub mean: f64,
}

impl Series {
    /// p10, median, p90 and mean (`None` without samples).
    pub fn summary(&self) -> Option<Summary> {
        let samples = self.histogram.total();
        Some(Summary {
            samples,
            p10: self.histogram.quantile(0.1)?,
            median: self.histogram.quantile(0.5)?,
            p90: self.histogram.quantile(0.9)?,
            mean: self.sum as f64 / samples as f64,
        })
    }
}

/// A figure derived from the series ("MSR / TSC page median ratio").
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Short key for JSON.
    pub key: &'static str,
    /// Human label.
    pub label: String,
    /// The value.
    pub value: f64,
}

/// What a benchmark measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The benchmark's name (`time-read`).
    pub benchmark: &'static str,
    /// One line on what was measured.
    pub title: String,
    /// The unit of every series' values.
    pub unit: &'static str,
    /// Where.
    pub host: HostInfo,
    /// Operations per series asked for, and in how many guest runs.
    pub iterations: u64,
    /// Guest runs the iterations were split into.
    pub runs: u64,
    /// The measurements.
    pub series: Vec<Series>,
    /// Derived figures.
    pub figures: Vec<Figure>,
    /// Caveats worth printing with the numbers.
    pub notes: Vec<String>,
}

#[derive(Serialize)]
struct SeriesJson<'a> {
    key: &'a str,
    label: &'a str,
    #[serde(flatten)]
    summary: Option<Summary>,
    histogram: Vec<histogram::Bucket>,
}

#[derive(Serialize)]
struct ReportJson<'a> {
    benchmark: &'a str,
    title: &'a str,
    unit: &'a str,
    host: &'a HostInfo,
    iterations: u64,
    runs: u64,
    series: Vec<SeriesJson<'a>>,
    figures: &'a [Figure],
    notes: &'a [String],
}

impl Report {
    /// A plain-text table: one row per series (p10, median, p90, mean), then the figures and
    /// notes.
    pub fn render(&self) -> String {
        let mut s = format!("hvkvm bench {}: {}\n", self.benchmark, self.title);
        s.push_str(&format!("  host: {}\n", self.host.describe()));
        s.push_str(&format!(
            "  {} per series in {} guest run(s); {} per operation:\n",
            self.iterations, self.runs, self.unit
        ));
        let width = self.series.iter().map(|x| x.label.len()).max().unwrap_or(0);
        s.push_str(&format!(
            "    {:<width$}  {:>10}  {:>10}  {:>10}  {:>10}\n",
            "", "p10", "median", "p90", "mean"
        ));
        for series in &self.series {
            match series.summary() {
                Some(m) => s.push_str(&format!(
                    "    {:<width$}  {:>10.0}  {:>10.0}  {:>10.0}  {:>10.1}\n",
                    series.label, m.p10, m.median, m.p90, m.mean
                )),
                None => s.push_str(&format!("    {:<width$}  (no samples)\n", series.label)),
            }
        }
        for f in &self.figures {
            s.push_str(&format!("  {}: {:.1}\n", f.label, f.value));
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        s
    }

    /// The report as pretty JSON, histograms included.
    pub fn to_json(&self) -> String {
        let doc = ReportJson {
            benchmark: self.benchmark,
            title: &self.title,
            unit: self.unit,
            host: &self.host,
            iterations: self.iterations,
            runs: self.runs,
            series: self
                .series
                .iter()
                .map(|x| SeriesJson {
                    key: x.key,
                    label: x.label,
                    summary: x.summary(),
                    histogram: x.histogram.buckets(),
                })
                .collect(),
            figures: &self.figures,
            notes: &self.notes,
        };
        // Plain data with string keys and finite numbers: serialising cannot fail.
        let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_report() -> Report {
        let mut fast = Histogram::default();
        let mut slow = Histogram::default();
        for v in 0..1000u64 {
            fast.record(60 + v % 10);
            slow.record(30_000 + v * 7);
        }
        Report {
            benchmark: "test",
            title: "two series".into(),
            unit: "cycles",
            host: HostInfo {
                cpu: "Test CPU".into(),
                kvm_module: "kvm_pvm".into(),
                tsc_khz: Some(2_445_000),
                cpl0_emulated: true,
                emulated_cpu: false,
            },
            iterations: 1000,
            runs: 1,
            series: vec![
                Series {
                    key: "fast",
                    label: "fast path",
                    sum: (0..1000u64).map(|v| 60 + v % 10).sum(),
                    histogram: fast,
                },
                Series {
                    key: "slow",
                    label: "slow path",
                    sum: (0..1000u64).map(|v| 30_000 + v * 7).sum(),
                    histogram: slow,
                },
            ],
            figures: vec![Figure {
                key: "ratio",
                label: "slow / fast (medians)".into(),
                value: 530.0,
            }],
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn renders_a_row_per_series_and_json_with_histograms() {
        let r = sample_report();
        let text = r.render();
        assert!(
            text.contains("fast path") && text.contains("slow path"),
            "{text}"
        );
        assert!(text.contains("CPL0 guest code is emulated here"), "{text}");
        assert!(text.contains("slow / fast (medians): 530.0"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["series"][0]["key"], "fast");
        assert_eq!(json["series"][0]["samples"], 1000);
        let median = json["series"][1]["median"].as_f64().unwrap();
        assert!((32_000.0..=34_000.0).contains(&median), "{median}");
        assert!(json["series"][1]["histogram"].as_array().unwrap().len() >= 5);
        assert_eq!(json["host"]["cpl0_emulated"], true);
    }
}
