//! `hvkvm bench time-read`: what one guest read of reference time costs, as a distribution.
//!
//! The guest (guest-tests/guest/src/bin/bench_time_dist.rs, built by build.rs and embedded)
//! times every read on its own, in guest TSC cycles between two `lfence; rdtsc`:
//! - the TIME_REF_COUNT MSR at CPL0 (RDMSR is privileged; every read exits to hvkvm's Hyper-V
//!   user backend, and on kvm_pvm hosts the CPL0 instructions around it are emulated);
//! - the reference TSC page at CPL3, as Linux's vDSO and Windows' QueryPerformanceCounter read
//!   it (no exit at all);
//! - two back-to-back `lfence; rdtsc` at CPL3: the floor every timed read includes.
//!
//! It runs with `--hv hv-time,hv-frequencies` on the user backend (`hvkvm demo` measures a
//! few thousand reads on the backend it demonstrates, through [`measure`]), in guest runs of at most
//! [`CHUNK`] reads per method (progress is shown between runs on a terminal), and the
//! histograms of all runs are merged.

use std::time::Duration;

use super::histogram::{self, Histogram};
use super::{BenchError, Figure, HostInfo, Progress, Report, Series};
use hv_model::Backend;

use crate::hyperv::BackendChoice;
use crate::kvm::HostProbe;
use crate::vm::{SyncEvent, VmOutcome};

/// The payload, built from guest-tests/guest/src/bin/bench_time_dist.rs by build.rs.
pub static PAYLOAD_ELF: &[u8] = include_bytes!(env!("HVKVM_BENCH_TIME_DIST_ELF"));
const PAYLOAD: &str = "bench_time_dist";
/// What the payload needs: REFERENCE_TSC and TIME_REF_COUNT, TSC_FREQUENCY.
const HV_LIST: &str = "hv-time,hv-frequencies";
/// Reads per method in one guest run (the payload stores at most 65,536 raw MSR deltas).
pub const CHUNK: u64 = 50_000;
/// Default reads per method.
pub const DEFAULT_ITERATIONS: u64 = 100_000;
/// One guest run may take this long (50,000 emulated MSR reads take about 1 s on kvm_pvm).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Method indices, as the payload numbers them.
const MSR: usize = 0;
const PAGE: usize = 1;
const RDTSC: usize = 2;

/// Runs the benchmark: `iterations` reads per method on the user backend, with progress on a
/// terminal.
pub fn run(iterations: u64) -> Result<Report, BenchError> {
    let host = HostProbe::probe()?;
    measure(&host, BackendChoice::User, iterations, true)
}

/// Measures `iterations` reads per method on `host` with the Hyper-V `backend` (`hvkvm demo`
/// uses the backend it demonstrates); `progress`: show progress between guest runs when stderr
/// is a terminal.
pub fn measure(
    host: &HostProbe,
    backend: BackendChoice,
    iterations: u64,
    progress: bool,
) -> Result<Report, BenchError> {
    let iterations = iterations.max(1);
    let runs = iterations.div_ceil(CHUNK);
    let progress = if progress {
        Progress::new("hvkvm bench time-read: guest runs", runs)
    } else {
        Progress::with_output("", runs, false)
    };
    let mut totals = Measured::default();
    let mut left = iterations;
    let mut served_by = Backend::User;
    for run in 0..runs {
        let n = left.min(CHUNK);
        left -= n;
        let (outcome, backend) = progress.during(run, &format!("{n} reads per method"), || {
            run_guest(host, backend, n)
        })?;
        served_by = backend;
        totals.merge(&parse(&outcome.syncs, n)?);
    }
    progress.finish();
    Ok(report(
        HostInfo::from_probe(host),
        served_by,
        iterations,
        runs,
        totals,
    ))
}

fn bad(detail: impl Into<String>) -> BenchError {
    BenchError::BadReport {
        payload: PAYLOAD,
        detail: detail.into(),
    }
}

/// One guest run of `n` reads per method; also says which backend served it.
fn run_guest(
    host: &HostProbe,
    backend: BackendChoice,
    n: u64,
) -> Result<(VmOutcome, Backend), BenchError> {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    let config = super::guest_config(
        host,
        PAYLOAD,
        PAYLOAD_ELF,
        HV_LIST,
        backend,
        [n, n, 0, 0],
        RUN_TIMEOUT,
    )?;
    let served_by = config
        .hyperv
        .as_ref()
        .map_or(Backend::User, |hv| hv.backend);
    Ok((super::run_to_done(PAYLOAD, config)?, served_by))
}

/// The three histograms and exact sums of one or more guest runs.
#[derive(Debug, Default)]
struct Measured {
    hist: [Histogram; 3],
    sums: [u64; 3],
    tsc_hz: u64,
}

impl Measured {
    fn merge(&mut self, other: &Measured) {
        for m in 0..3 {
            self.hist[m].merge(&other.hist[m]);
            self.sums[m] += other.sums[m];
        }
        self.tsc_hz = other.tsc_hz;
    }
}

/// Decodes one run's SYNCs (see the payload's doc for the protocol).
fn parse(syncs: &[SyncEvent], n: u64) -> Result<Measured, BenchError> {
    let one = |stage: u64| {
        let found: Vec<_> = syncs.iter().filter(|s| s.stage == stage).collect();
        match found.as_slice() {
            [s] => Ok(s.values),
            _ => Err(bad(format!(
                "expected one SYNC of stage {stage}, got {}",
                found.len()
            ))),
        }
    };
    let [cpl, tsc_hz, n_msr, n_page, buckets, sub_bits] = one(1)?;
    if cpl != 3 {
        return Err(bad(format!("the user part ran at CPL {cpl}, not 3")));
    }
    if buckets != histogram::BUCKETS as u64 || sub_bits != u64::from(histogram::SUB_BITS) {
        return Err(bad(format!(
            "histogram layout {buckets} buckets/{sub_bits} sub-bits, hvkvm expects {}/{}",
            histogram::BUCKETS,
            histogram::SUB_BITS
        )));
    }
    if n_msr != n || n_page != n || tsc_hz == 0 {
        return Err(bad(format!(
            "asked for {n} reads, got {n_msr} MSR and {n_page} page reads (TSC {tsc_hz} Hz)"
        )));
    }
    let mut measured = Measured {
        tsc_hz,
        ..Measured::default()
    };
    for sync in syncs {
        let Some(m) = sync.stage.checked_sub(10).filter(|m| *m < 3) else {
            continue;
        };
        for entry in sync.values.iter().filter(|v| **v != 0) {
            let (bucket, count) = ((entry >> 40) as usize, entry & ((1 << 40) - 1));
            if !measured.hist[m as usize].add(bucket, count) {
                return Err(bad(format!("bucket {bucket} out of range")));
            }
        }
    }
    let [msr_sum, page_sum, rdtsc_sum, _, _, _] = one(20)?;
    measured.sums = [msr_sum, page_sum, rdtsc_sum];
    for (m, h) in measured.hist.iter().enumerate() {
        if h.total() != n {
            return Err(bad(format!(
                "method {m}: the histogram holds {} reads, not {n}",
                h.total()
            )));
        }
    }
    Ok(measured)
}

fn report(host: HostInfo, backend: Backend, iterations: u64, runs: u64, m: Measured) -> Report {
    let [msr, page, rdtsc] = m.hist;
    let series = vec![
        Series {
            key: "time_ref_count_msr",
            label: match backend {
                Backend::User => "TIME_REF_COUNT MSR (CPL0 rdmsr, exits to hvkvm)",
                Backend::Kernel => "TIME_REF_COUNT MSR (CPL0 rdmsr, exits to KVM)",
            },
            histogram: msr,
            sum: m.sums[MSR],
        },
        Series {
            key: "tsc_page",
            label: "reference TSC page (CPL3, no exit)",
            histogram: page,
            sum: m.sums[PAGE],
        },
        Series {
            key: "rdtsc",
            label: "bare rdtsc pair (CPL3, the floor)",
            histogram: rdtsc,
            sum: m.sums[RDTSC],
        },
    ];
    let median = |i: usize| series[i].histogram.quantile(0.5).unwrap_or(f64::NAN);
    let mut figures = vec![Figure {
        key: "msr_over_tsc_page",
        label: "MSR read / TSC page read (medians), x".into(),
        value: median(MSR) / median(PAGE),
    }];
    if m.tsc_hz > 0 && !host.emulated_cpu {
        figures.push(Figure {
            key: "tsc_page_ns",
            label: "TSC page read, median, ns".into(),
            value: median(PAGE) * 1e9 / m.tsc_hz as f64,
        });
        figures.push(Figure {
            key: "msr_ns",
            label: "TIME_REF_COUNT MSR read, median, ns".into(),
            value: median(MSR) * 1e9 / m.tsc_hz as f64,
        });
    }
    let mut notes = vec![
        "each read is timed alone between two lfence+rdtsc, so every value includes one \
         rdtsc pair (the floor row); percentiles are exact below 32 cycles and within 6.25% \
         above (log-linear histogram buckets)"
            .to_string(),
    ];
    if host.emulated_cpu {
        notes.push(
            "this host's CPU is emulated (Bochs): RDTSC counts emulated instructions, so these \
             figures are path lengths in instructions, not cycles, and the ns figures mean \
             nothing"
                .to_string(),
        );
    }
    if host.cpl0_emulated {
        notes.push(
            "this host runs CPL0 guest code in KVM's instruction emulator (kvm_pvm): the MSR \
             read's cost includes the emulated rdmsr and rdtsc around it, far more than the \
             exit a VMX/SVM host would take; the CPL3 rows run natively"
                .to_string(),
        );
    }
    Report {
        benchmark: "time-read",
        title: format!(
            "cost of one guest reference-time read, Hyper-V {backend} backend ({HV_LIST})"
        ),
        unit: "guest TSC cycles",
        host,
        iterations,
        runs,
        series,
        figures,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(stage: u64, values: [u64; 6]) -> SyncEvent {
        SyncEvent {
            vcpu: 0,
            stage,
            values,
        }
    }

    fn entry(value: u64, count: u64) -> u64 {
        (Histogram::bucket_of(value) as u64) << 40 | count
    }

    #[test]
    fn decodes_the_payload_protocol() {
        let syncs = vec![
            sync(1, [3, 2_000_000_000, 4, 4, histogram::BUCKETS as u64, 4]),
            sync(10, [entry(30_000, 3), entry(40_000, 1), 0, 0, 0, 0]),
            sync(11, [entry(60, 4), 0, 0, 0, 0, 0]),
            sync(12, [entry(20, 2), entry(21, 2), 0, 0, 0, 0]),
            sync(20, [130_000, 240, 82, 1, 1, 1]),
        ];
        let m = parse_syncs(syncs, 4).unwrap();
        assert_eq!(
            m.hist.iter().map(Histogram::total).collect::<Vec<_>>(),
            [4, 4, 4]
        );
        let r = report(
            HostInfo {
                cpu: "c".into(),
                kvm_module: "kvm_pvm".into(),
                tsc_khz: None,
                cpl0_emulated: true,
                emulated_cpu: false,
            },
            Backend::User,
            4,
            1,
            m,
        );
        let ratio = r.figures[0].value;
        assert!((450.0..=560.0).contains(&ratio), "{ratio}");
        assert!(r.notes.iter().any(|n| n.contains("kvm_pvm")));
        assert_eq!(r.series[1].summary().unwrap().mean, 60.0);
    }

    #[test]
    fn inconsistent_reports_are_errors() {
        let header = sync(1, [3, 2_000_000_000, 4, 4, histogram::BUCKETS as u64, 4]);
        let sums = sync(20, [0; 6]);
        // Too few reads in a histogram.
        let err = parse_syncs(
            vec![
                header.clone(),
                sync(10, [entry(5, 3), 0, 0, 0, 0, 0]),
                sums.clone(),
            ],
            4,
        )
        .unwrap_err();
        assert!(err.to_string().contains("holds 3 reads, not 4"), "{err}");
        // A layout the host does not know.
        let odd = sync(1, [3, 1, 4, 4, 99, 4]);
        assert!(parse_syncs(vec![odd, sums.clone()], 4).is_err());
        // A user part that did not run at CPL3.
        let cpl0 = sync(1, [0, 1, 4, 4, histogram::BUCKETS as u64, 4]);
        assert!(parse_syncs(vec![cpl0, sums], 4)
            .unwrap_err()
            .to_string()
            .contains("CPL 0"));
    }

    fn parse_syncs(syncs: Vec<SyncEvent>, n: u64) -> Result<Measured, BenchError> {
        parse(&syncs, n)
    }
}
