//! The in-guest hostile payload at full scale: `hv_fuzz` (guest-tests/guest/src/bin/hv_fuzz.rs)
//! with 50,000 random hypercalls and 50,000 random Hyper-V MSR accesses (plus its fixed sweep
//! of ~1,400 MSR accesses) against hvkvm's user backend, as the conformance test
//! `a_hostile_guest_cannot_crash_or_hang_the_vmm` runs it with 200 of each. Prints how many
//! inputs the guest issued, how they ended (value, #GP, #UD, status) and inputs per second;
//! fails unless the guest finished and every answer was architectural.
//!
//! `HVKVM_HV_FUZZ_INPUTS=N` sets the random inputs per kind; `HVKVM_HV_FUZZ_SEED=S` the seed.
//! Prints `SKIP: ...` and exits 0 when /dev/kvm is not usable.

use std::time::Duration;

use hvkvm::bench::{guest_config, run_to_done, Progress};
use hvkvm::cli::error_chain;
use hvkvm::hyperv::BackendChoice;
use hvkvm::kvm::HostProbe;

static HV_FUZZ_ELF: &[u8] = include_bytes!(concat!(env!("HVKVM_GUEST_DIR"), "/hv_fuzz"));
/// The selection the conformance test uses.
const HV_LIST: &str = "hv-relaxed,hv-vpindex,hv-runtime,hv-time,hv-frequencies,hv-crash,\
                       hv-reset,hv-reenlightenment,hv-spinlocks=0xfff";
const DEFAULT_INPUTS: u32 = 50_000;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.parse() {
        Ok(n) => Some(n),
        Err(_) => fail(&format!("{name}={v:?} is not a number")),
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
    let per_kind = env_u64("HVKVM_HV_FUZZ_INPUTS")
        .map_or(DEFAULT_INPUTS, |n| n.clamp(1, u32::MAX.into()) as u32);
    let seed = env_u64("HVKVM_HV_FUZZ_SEED").unwrap_or(0x005e_ed0f_4a11);
    let host = HostProbe::probe().unwrap_or_else(|e| fail(&error_chain(&e)));
    let config = guest_config(
        &host,
        "hv_fuzz",
        HV_FUZZ_ELF,
        HV_LIST,
        BackendChoice::User,
        [seed as u32, (seed >> 32) as u32, per_kind, per_kind],
        Duration::from_secs(600),
    )
    .unwrap_or_else(|e| fail(&error_chain(&e)));
    // One guest run of up to minutes: progress on a terminal, nothing otherwise.
    let progress = Progress::new("hv_fuzz bench: guest runs", 1);
    let outcome = progress
        .during(
            0,
            &format!("{per_kind} random hypercalls and {per_kind} random MSR accesses"),
            || run_to_done("hv_fuzz", config),
        )
        .unwrap_or_else(|e| {
            progress.finish();
            fail(&error_chain(&e))
        });
    progress.finish();
    let sync = |stage: u64| {
        outcome
            .syncs
            .iter()
            .find(|s| s.stage == stage)
            .map(|s| s.values)
            .unwrap_or_else(|| fail(&format!("no SYNC {stage}: {:?}", outcome.syncs)))
    };
    let [accesses, gp, hypercalls, ud, statuses, _] = sync(1);
    let [reads_ok, writes_ok, skipped, other_faults, page_enabled, successes] = sync(2);
    let defined: u64 = [0u64, 2, 3, 4, 5, 6, 7, 8].iter().map(|s| 1 << s).sum();
    if other_faults != 0 || statuses & !defined != 0 || page_enabled != 1 {
        fail(&format!(
            "non-architectural answers: {other_faults} faults other than #GP/#UD, status bits \
             {statuses:#b}, hypercall page enabled {page_enabled}"
        ));
    }
    let inputs = accesses + hypercalls;
    let secs = outcome.elapsed.as_secs_f64();
    println!("hv_fuzz: hostile Hyper-V MSR and hypercall inputs against the user backend");
    println!(
        "  host: {} | /dev/kvm: {}{}",
        host.cpu_model.as_deref().unwrap_or("unknown CPU"),
        host.kvm_module.as_deref().unwrap_or("unknown"),
        if host.is_pvm() {
            " (CPL0 guest code is emulated here: most of the time is the guest's own code)"
        } else {
            ""
        }
    );
    println!(
        "  {inputs} inputs ({hypercalls} hypercalls, {accesses} MSR accesses, {per_kind} random of \
         each kind, seed {seed:#x}) in {secs:.2} s: {:.0} inputs/s",
        inputs as f64 / secs
    );
    println!(
        "  MSR: {reads_ok} reads and {writes_ok} writes answered, {gp} #GP, {skipped} writes \
         skipped by the guest's GPA filter"
    );
    println!(
        "  hypercalls: {successes} SUCCESS, {ud} #UD, statuses seen {:?}",
        (0..64)
            .filter(|b| statuses & (1 << b) != 0)
            .collect::<Vec<_>>()
    );
}

fn fail(message: &str) -> ! {
    eprintln!("hv_fuzz: {message}");
    std::process::exit(1);
}
