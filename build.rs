//! Builds the guests hvkvm embeds from source (no prebuilt binaries in the repository): the demo
//! guest (`cli::demo`) and the benchmark payloads (`bench`; `hv_fuzz` for benches/hv_fuzz.rs),
//! and tells the crate where their ELF files are.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = guest_build::build_guest_payloads(Some(&["demo", "bench_time_dist", "hv_fuzz"]))
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "cargo:rustc-env=HVKVM_DEMO_ELF={}",
        dir.join("demo").display()
    );
    println!(
        "cargo:rustc-env=HVKVM_BENCH_TIME_DIST_ELF={}",
        dir.join("bench_time_dist").display()
    );
    println!("cargo:rustc-env=HVKVM_GUEST_DIR={}", dir.display());
}
