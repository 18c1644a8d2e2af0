//! Timer lateness: how late a timer interrupt reaches a guest's handler, for the in-kernel
//! LAPIC's TSC-deadline timer, the user backend's direct-mode synthetic timer and its
//! message-mode synthetic timer, measured side by side in one guest (`bench_timer_lateness`,
//! samples interleaved). Prints p50/p99/max per timer and the ratios to the LAPIC timer (the
//! goal: synthetic timers' p99 at most 2× the LAPIC timer's).
//!
//! `cargo bench -p guest-tests --bench hyperv_timers` (SKIP without /dev/kvm). Environment:
//! HVKVM_BENCH_SAMPLES (per timer and round, default 60), HVKVM_BENCH_ROUNDS (default 3),
//! HVKVM_BENCH_DEADLINE_US (default 1000).

use std::time::Duration;

use guest_tests::{kvm_unavailable, GuestTest};
use hvkvm::hyperv::CrashAction;
use hvkvm::kvm::HostProbe;

const HV: &str = "hv-vpindex,hv-time,hv-synic,hv-stimer,hv-stimer-direct";
const NAMES: [&str; 3] = [
    "LAPIC TSC-deadline (in-kernel)",
    "stimer direct mode (user backend)",
    "stimer message mode (user backend)",
];

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    if let Some(reason) = kvm_unavailable() {
        println!("SKIP: {reason}");
        return;
    }
    let host = HostProbe::probe().expect("probe");
    let khz = u64::from(host.tsc_khz.expect("TSC rate"));
    let samples = env("HVKVM_BENCH_SAMPLES", 60);
    let rounds = env("HVKVM_BENCH_ROUNDS", 3);
    let deadline_cycles = env("HVKVM_BENCH_DEADLINE_US", 1000) * khz / 1000;
    let mut all: [Vec<u64>; 3] = Default::default();
    for _ in 0..rounds {
        let run = GuestTest::new("bench_timer_lateness")
            .hyperv(HV, CrashAction::Log)
            .params(&[[samples as u32, deadline_cycles as u32, 0, 0], [0; 4]])
            .timeout(Duration::from_secs(300))
            .run();
        run.expect_done();
        for (mode, out) in all.iter_mut().enumerate() {
            let mut got: Vec<u64> = run
                .syncs(100 + mode as u64)
                .iter()
                .flat_map(|s| s.values)
                .collect();
            got.truncate(samples as usize);
            out.extend(got);
        }
    }
    let us = |cycles: u64| cycles as f64 * 1000.0 / khz as f64;
    println!(
        "hyperv_timers: timer interrupt lateness at the guest handler, {} samples per timer \
         ({rounds} rounds, interleaved), deadline {} µs ahead",
        all[0].len(),
        deadline_cycles * 1000 / khz
    );
    println!(
        "  host: {} | /dev/kvm: {} | TSC {khz} kHz",
        host.cpu_model.as_deref().unwrap_or("unknown CPU"),
        host.kvm_module.as_deref().unwrap_or("unknown module"),
    );
    println!(
        "  {:<36} {:>10} {:>10} {:>10}",
        "timer", "p50 µs", "p99 µs", "max µs"
    );
    let mut p99 = [0u64; 3];
    for (mode, v) in all.iter_mut().enumerate() {
        v.sort_unstable();
        p99[mode] = percentile(v, 0.99);
        println!(
            "  {:<36} {:>10.1} {:>10.1} {:>10.1}",
            NAMES[mode],
            us(percentile(v, 0.5)),
            us(p99[mode]),
            us(*v.last().unwrap_or(&0))
        );
    }
    for mode in 1..3 {
        println!(
            "  {}: p99 is {:.2}x the LAPIC timer's (goal: at most 2x)",
            NAMES[mode],
            p99[mode] as f64 / p99[0].max(1) as f64
        );
    }
}
