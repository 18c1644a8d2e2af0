//! Cycles per guest time read: `hvkvm bench time-read` as a cargo bench (the TIME_REF_COUNT MSR
//! at CPL0 against the reference TSC page at CPL3, bare rdtsc as the floor; see
//! `hvkvm::bench::time_read`). `hvkvm bench time-read --json --plot FILE.svg` gives the same
//! with JSON and a plot.
//!
//! Prints `SKIP: ...` and exits 0 when /dev/kvm is not usable.

use hvkvm::bench::time_read;
use hvkvm::cli::error_chain;

fn main() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        println!("SKIP: /dev/kvm is not usable: {e}");
        return;
    }
    match time_read::run(time_read::DEFAULT_ITERATIONS) {
        Ok(report) => print!("{}", report.render()),
        Err(e) => {
            eprintln!("time_read: {}", error_chain(&e));
            std::process::exit(1);
        }
    }
}
