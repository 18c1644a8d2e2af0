//! Builds the guests hvkvm embeds from source (no prebuilt binaries in the repository), and
//! tells the crate where their ELF files are: the demo guest (`demo`); the L1 hypervisor
//! of `hvkvm bench nested-cpuid` (`bench::nested_cpuid`) and the payload of `hvkvm bench
//! time-read` (`bench::time_read`); the `snapshot_soak` guest, which the snapshot CLI tests
//! (tests/snapshot_cli.rs) run, and `snapshot_fill`, the snapshot benchmark's guest; and
//! `hv_fuzz`, the hostile guest benches/hv_fuzz.rs runs at full scale (`HVKVM_GUEST_DIR`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = guest_build::build_guest_payloads(Some(&[
        "demo",
        "snapshot_soak",
        "snapshot_fill",
        "l1_hypervisor",
        "bench_time_dist",
        "hv_fuzz",
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "cargo:rustc-env=HVKVM_DEMO_ELF={}",
        dir.join("demo").display()
    );
    println!(
        "cargo:rustc-env=HVKVM_SNAPSHOT_SOAK_ELF={}",
        dir.join("snapshot_soak").display()
    );
    println!(
        "cargo:rustc-env=HVKVM_SNAPSHOT_FILL_ELF={}",
        dir.join("snapshot_fill").display()
    );
    println!(
        "cargo:rustc-env=HVKVM_L1_HYPERVISOR_ELF={}",
        dir.join("l1_hypervisor").display()
    );
    println!(
        "cargo:rustc-env=HVKVM_BENCH_TIME_DIST_ELF={}",
        dir.join("bench_time_dist").display()
    );
    println!("cargo:rustc-env=HVKVM_GUEST_DIR={}", dir.display());
}
