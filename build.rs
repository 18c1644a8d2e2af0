//! Builds the guests hvkvm embeds from source (no prebuilt binaries in the repository): the
//! built-in demo (`cli::demo`) and the L1 hypervisor of `hvkvm bench nested-cpuid`
//! (`bench::nested_cpuid`), and tells the crate where their ELF files are.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = guest_build::build_guest_payloads(Some(&["demo", "l1_hypervisor"]))
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "cargo:rustc-env=HVKVM_DEMO_ELF={}",
        dir.join("demo").display()
    );
    println!(
        "cargo:rustc-env=HVKVM_L1_HYPERVISOR_ELF={}",
        dir.join("l1_hypervisor").display()
    );
}
