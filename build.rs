//! Builds the built-in demo guest from source (no prebuilt binaries in the repository) and
//! tells `cli::demo` where its ELF is; the L1 hypervisor of `hvkvm bench nested-cpuid`
//! (`bench::nested_cpuid`); also the `snapshot_soak` guest, which the snapshot CLI
//! tests (tests/snapshot_cli.rs) run, and `snapshot_fill`, the snapshot benchmark's guest.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = guest_build::build_guest_payloads(Some(&[
        "demo",
        "snapshot_soak",
        "snapshot_fill",
        "l1_hypervisor",
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
}
