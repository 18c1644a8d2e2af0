//! Builds the built-in demo guest from source (no prebuilt binaries in the repository) and
//! tells `cli::demo` where its ELF is.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = guest_build::build_guest_payloads(Some(&["demo"])).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "cargo:rustc-env=HVKVM_DEMO_ELF={}",
        dir.join("demo").display()
    );
}
