//! Builds the built-in demo guest from source (no prebuilt binaries in the repository) and
//! tells `cli::demo` where its ELF is; also the `snapshot_soak` guest, which the snapshot CLI
//! tests (tests/snapshot_cli.rs) and the snapshot benchmark run.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = guest_build::build_guest_payloads(Some(&["demo", "snapshot_soak"]))
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "cargo:rustc-env=HVKVM_DEMO_ELF={}",
        dir.join("demo").display()
    );
    println!(
        "cargo:rustc-env=HVKVM_SNAPSHOT_SOAK_ELF={}",
        dir.join("snapshot_soak").display()
    );
}
