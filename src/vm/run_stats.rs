//! The `hvkvm run --stats` summary: where a run's time went, from the counters every VM keeps
//! (per-vCPU exits by kind and port group with host time, time inside KVM_RUN, loading steps,
//! the UART).

use std::fmt::Write;

use super::outcome::VmOutcome;
use crate::vcpu::stats::{CountTime, VcpuStatsSnapshot};

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Sums the per-vCPU rows of `pick` by name, in their order.
fn total(
    stats: &[VcpuStatsSnapshot],
    pick: fn(&VcpuStatsSnapshot) -> &[CountTime],
) -> Vec<CountTime> {
    let mut sum: Vec<CountTime> = Vec::new();
    for s in stats {
        for row in pick(s) {
            match sum.iter_mut().find(|t| t.name == row.name) {
                Some(t) => t.add(row),
                None => sum.push(row.clone()),
            }
        }
    }
    sum
}

fn table(out: &mut String, title: &str, rows: &[CountTime]) {
    let _ = writeln!(
        out,
        "  {title:<24} {:>12} {:>12} {:>12}",
        "count", "host ms", "µs each"
    );
    for r in rows.iter().filter(|r| r.count > 0) {
        let _ = writeln!(
            out,
            "    {:<22} {:>12} {:>12.1} {:>12.2}",
            r.name,
            r.count,
            r.host_ns as f64 / 1e6,
            r.host_ns as f64 / 1e3 / r.count as f64
        );
    }
}

/// The summary as text (several lines, each ending in a newline).
pub fn render(outcome: &VmOutcome) -> String {
    let mut out = String::new();
    let wall = outcome.elapsed.as_secs_f64();
    let _ = writeln!(out, "hvkvm: run statistics");
    let _ = writeln!(
        out,
        "  wall time {wall:.3} s; per vCPU: inside KVM_RUN (guest and KVM) / handling exits in \
         hvkvm / elsewhere (parked, starting, stopping, Hyper-V work before entries); the \
         thread's CPU time"
    );
    for (i, s) in outcome.vcpu_stats.iter().enumerate() {
        let (run, host) = (secs(s.kvm_run_ns), secs(s.host_ns()));
        let _ = writeln!(
            out,
            "    vCPU {i}: {run:.3} s / {host:.3} s / {:.3} s; CPU {:.3} s; {} exits ({:.1} per \
             ms in KVM_RUN)",
            (wall - run - host).max(0.0),
            secs(s.cpu_ns),
            s.exits,
            s.exits as f64 / (run * 1e3).max(1e-9)
        );
    }
    table(
        &mut out,
        "exits by kind",
        &total(&outcome.vcpu_stats, |s| &s.kinds),
    );
    let ports = total(&outcome.vcpu_stats, |s| &s.ports);
    table(&mut out, "port I/O by device", &ports);
    let serial = outcome.host_work.serial;
    let uart_exits = ports
        .iter()
        .find(|p| p.name == "serial")
        .map_or(0, |p| p.count);
    let per_byte = if serial.tx_bytes > 0 {
        format!("{:.2}", uart_exits as f64 / serial.tx_bytes as f64)
    } else {
        "-".into()
    };
    let _ = writeln!(
        out,
        "  UART: {} bytes sent, {uart_exits} exits to its ports ({per_byte} per byte), {} \
         interrupts raised on IRQ 4",
        serial.tx_bytes, serial.irqs
    );
    let _ = writeln!(out, "  host work before the guest ran:");
    for step in &outcome.host_work.steps {
        let _ = writeln!(
            out,
            "    {:<44} {:>10.1} ms",
            step.name,
            step.ns as f64 / 1e6
        );
    }
    let _ = writeln!(
        out,
        "  (interrupts KVM delivers itself, LAPIC timer and IPIs, never reach hvkvm and are \
         not counted)"
    );
    out
}
