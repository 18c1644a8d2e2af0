//! `hvkvm demo`: boots the built-in guest with Hyper-V enlightenments and shows what it saw,
//! what it used, and what a reference-time read costs (see [`crate::demo`]).

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use clap::Args;

use super::CliError;
use crate::demo::view::{GuestView, TimeAdvance};
use crate::demo::{self, DemoOptions, DemoReport, Part, TimeTable};

/// Options of `hvkvm demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// vCPUs to boot (1 to 64).
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: u32,
    /// Give up on the guest after this many seconds.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS", value_parser = super::run::parse_seconds)]
    pub timeout: f64,
    /// Print everything as one JSON document on stdout (the guest's serial output included)
    /// instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `hvkvm demo`.
pub fn execute(args: DemoArgs) -> Result<i32, CliError> {
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(
            out,
            "hvkvm demo: booting the built-in guest on {} vCPU(s) with Hyper-V enlightenments…",
            args.cpus
        )?;
    }
    drop(out);
    let report = demo::run(DemoOptions {
        cpus: args.cpus,
        timeout: Duration::from_secs_f64(args.timeout),
        echo_serial: !args.json,
    })?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&report).unwrap_or_default();
        s.push('\n');
        s
    } else {
        render(&report)
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(report.exit_status())
}

fn ms(units_100ns: u64) -> String {
    format!("{:.3} ms", units_100ns as f64 / 1e4)
}

/// The text after the guest's own output.
pub fn render(r: &DemoReport) -> String {
    let mut s = String::new();
    let g = &r.guest;
    let _ = writeln!(s, "\nhvkvm demo: what the guest saw");
    let _ = writeln!(
        s,
        "  Hyper-V backend: {} ({}); offered: {}",
        r.backend,
        r.backend_reason,
        r.enlightenments.join(", ")
    );
    render_view(&mut s, &g.view, g.cpus);
    let _ = writeln!(s, "  booted:      {}", g.boot);
    let _ = writeln!(s, "  ended:       {}", g.ended);
    let _ = writeln!(s, "  run time:    {:.3} s", g.run_s);
    for (i, st) in g.vcpu_stats.iter().enumerate() {
        let _ = writeln!(
            s,
            "  vCPU {i} exits: {} ({} port I/O, {} MSR)",
            st.exits, st.io, st.msr
        );
    }
    match &r.synthetic_timer {
        Part::Measured(t) => {
            let at = t.fired_at_100ns.map_or("-".to_string(), ms);
            let late = t
                .late_100ns()
                .map_or("-".to_string(), |l| format!("{:.1} µs", l as f64 / 10.0));
            let _ = writeln!(
                s,
                "  synthetic timer 0 (direct mode, vector {:#x}, one-shot): due at {}, its interrupt came at {at} ({late} late)",
                t.vector,
                ms(t.due_100ns)
            );
        }
        Part::Skipped { reason } => {
            let _ = writeln!(s, "  synthetic timer: skipped: {reason}");
        }
        Part::Failed { error } => {
            let _ = writeln!(s, "  synthetic timer: FAILED: {error}");
        }
    }
    s.push('\n');
    match &r.hyperv_usage {
        Some(usage) => s.push_str(&usage.render()),
        None => s.push_str("Hyper-V usage report: none (the VM had no Hyper-V backend)\n"),
    }
    s.push('\n');
    match &r.time_read {
        Part::Measured(t) => render_time(&mut s, t),
        Part::Skipped { reason } => {
            let _ = writeln!(s, "Reference-time read cost: skipped: {reason}");
        }
        Part::Failed { error } => {
            let _ = writeln!(s, "Reference-time read cost: FAILED: {error}");
        }
    }
    match &r.nested {
        Part::Measured(n) => {
            s.push('\n');
            s.push_str(&n.render());
        }
        Part::Skipped { reason } => {
            let _ = writeln!(
                s,
                "Nested L2 CPUID, classic VMCS vs eVMCS: skipped: {reason}"
            );
        }
        Part::Failed { error } => {
            let _ = writeln!(s, "Nested L2 CPUID, classic VMCS vs eVMCS: FAILED: {error}");
        }
    }
    let t = &r.timings;
    let _ = writeln!(
        s,
        "\nhvkvm demo took {:.2} s: setup {:.2} s, guest {:.2} s, time table {:.2} s, nested {:.2} s",
        t.total_s, t.setup_s, t.guest_s, t.time_read_s, t.nested_s
    );
    s
}

fn render_view(s: &mut String, view: &GuestView, cpus: u32) {
    for v in &view.vcpus {
        let vp = v
            .vp_index
            .map_or("not offered".to_string(), |i| i.to_string());
        let _ = writeln!(
            s,
            "  vCPU {}: hypervisor \"{}\" (raw-cpuid: {}), leaves up to {:#x}, interface {}, VP index {vp}",
            v.vcpu, v.vendor, v.hypervisor, v.max_leaf, v.interface
        );
        match (&v.tsc_page, v.time_ref_count) {
            (Some(p), msr) => {
                let time = p.time_100ns.map_or("invalid".to_string(), ms);
                let msr = msr.map_or("not offered".to_string(), ms);
                let _ = writeln!(
                    s,
                    "    TSC page: sequence {}, scale {:#x}, offset {}, time {time}; TIME_REF_COUNT {msr}",
                    p.sequence, p.scale, p.offset
                );
            }
            (None, _) => {
                let _ = writeln!(s, "    TSC page: not offered");
            }
        }
    }
    if view.vcpus.len() < cpus as usize {
        let _ = writeln!(s, "  only {} of {cpus} vCPUs reported", view.vcpus.len());
    }
    if let Some(t) = &view.time {
        render_advance(s, t);
    }
}

fn render_advance(s: &mut String, t: &TimeAdvance) {
    let page = t.page_advance().map_or("-".to_string(), ms);
    let msr = t
        .time_ref_count
        .map_or("-".to_string(), |[a, b]| ms(b.wrapping_sub(a)));
    let tsc = match t.tsc_hz {
        Some(hz) if hz > 0 => format!(
            "{} TSC ticks = {:.3} ms at the {:.3} GHz TSC_FREQUENCY",
            t.tsc_ticks,
            t.tsc_ticks as f64 * 1e3 / hz as f64,
            hz as f64 / 1e9
        ),
        _ => format!("{} TSC ticks", t.tsc_ticks),
    };
    let _ = writeln!(
        s,
        "  reference time on vCPU 0 while the others reported: TSC page +{page}, TIME_REF_COUNT +{msr} ({tsc})"
    );
}

fn render_time(s: &mut String, t: &TimeTable) {
    let _ = writeln!(s, "Reference-time read cost, measured now: {}", t.title);
    let _ = writeln!(s, "  {} reads per method; {} per read:", t.reads, t.unit);
    let width = t.rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
    let _ = writeln!(
        s,
        "    {:<width$}  {:>9}  {:>9}  {:>9}  {:>10}",
        "", "p10", "median", "p90", "median ns"
    );
    for r in &t.rows {
        let ns = r.median_ns.map_or("-".to_string(), |n| format!("{n:.0}"));
        let _ = writeln!(
            s,
            "    {:<width$}  {:>9.0}  {:>9.0}  {:>9.0}  {:>10}",
            r.label, r.summary.p10, r.summary.median, r.summary.p90, ns
        );
    }
    let _ = writeln!(
        s,
        "  TIME_REF_COUNT MSR read / TSC page read (medians): {:.1}x",
        t.ratio
    );
    for n in &t.notes {
        let _ = writeln!(s, "  note: {n}");
    }
}
